//! A k3s release mirror for the lab: the stand-in laid out like the GitHub release
//! (`<base>/<version>/k3s` + `sha256sum-amd64.txt`), served over real HTTP inside the lab network.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::support::Lab;

pub const VERSION: &str = "v1.31.4+k3s1";
pub const ADDRESS: &str = "172.30.77.1:8080";

/// The stand-in's binary, named by `K3NODE_LAB_STANDIN` (CI names the one `cargo test --workspace`
/// has just built: building it again alone, with its own package's features, would rebuild most
/// dependencies, minutes on a fresh checkout), or else built once per run (it is test support, in
/// its own package).
pub fn standin_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(named) = std::env::var_os("K3NODE_LAB_STANDIN") {
                let named = PathBuf::from(named);
                assert!(named.is_file(), "K3NODE_LAB_STANDIN names {}, which is not a file", named.display());
                return named;
            }
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let status = std::process::Command::new(env!("CARGO"))
                .args(["build", "--locked", "-p", "k3s-standin"])
                .current_dir(root)
                .status()
                .expect("cargo build -p k3s-standin");
            assert!(status.success(), "building the k3s stand-in failed");
            let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
            target.join("debug/k3s-standin")
        })
        .clone()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The stand-in with a version trailer, as the release of `version` would be.
pub fn release_binary(version: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(standin_binary()).expect("stand-in binary");
    if version != VERSION {
        bytes.extend_from_slice(format!("\nK3S_STANDIN_VERSION={version}\n").as_bytes());
    }
    bytes
}

/// Writes `<root>/<version>/k3s` and its checksum file; returns the binary's sha256.
pub fn publish(root: &Path, version: &str, binary: &[u8]) -> String {
    let dir = root.join(version);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("k3s"), binary).unwrap();
    let sha = sha256_hex(binary);
    std::fs::write(
        dir.join("sha256sum-amd64.txt"),
        format!("{sha}  k3s\n{}  k3s-airgap-images-amd64.tar.zst\n", "0".repeat(64)),
    )
    .unwrap();
    sha
}

/// Writes `<root>/<version>/k3s-airgap-images-amd64.tar.zst` and puts its sha256 in the
/// release's checksum file (written by [`publish`] before).
// The benches include this module too; only the lab's images scenario publishes a bundle.
#[allow(dead_code)]
pub fn publish_airgap_images(root: &Path, version: &str, bundle: &[u8]) {
    let name = "k3s-airgap-images-amd64.tar.zst";
    let dir = root.join(version);
    std::fs::write(dir.join(name), bundle).unwrap();
    let sums = std::fs::read_to_string(dir.join("sha256sum-amd64.txt")).unwrap();
    let mut lines: Vec<String> =
        sums.lines().filter(|l| !l.ends_with(&format!("  {name}"))).map(str::to_string).collect();
    lines.push(format!("{}  {name}", sha256_hex(bundle)));
    std::fs::write(dir.join("sha256sum-amd64.txt"), lines.join("\n") + "\n").unwrap();
}

pub struct Mirror {
    pub root: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Mirror {
    pub fn start(lab: &Arc<Lab>) -> Mirror {
        let root = lab.dir().join("mirror");
        std::fs::create_dir_all(&root).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let serve_root = Arc::new(root.clone());
        let lab2 = lab.clone();
        let thread = std::thread::spawn(move || {
            lab2.in_netns(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind(ADDRESS).await.expect("bind mirror");
                    ready_tx.send(()).unwrap();
                    let app = Router::new().route("/{*path}", axum::routing::get(serve)).with_state(serve_root);
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await
                        .unwrap();
                })
            })
        });
        ready_rx.recv().expect("mirror started");
        Mirror { root, shutdown: Some(tx), thread: Some(thread) }
    }

    pub fn url(&self) -> String {
        format!("http://{ADDRESS}")
    }
}

async fn serve(State(root): State<Arc<PathBuf>>, UrlPath(path): UrlPath<String>) -> Result<Vec<u8>, StatusCode> {
    if path.split('/').any(|p| p == ".." || p.is_empty()) {
        return Err(StatusCode::BAD_REQUEST);
    }
    tokio::fs::read(root.join(&path)).await.map_err(|_| StatusCode::NOT_FOUND)
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
