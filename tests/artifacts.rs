//! k3s release artifacts over real HTTP: a server on 127.0.0.1, started by each test, serves a
//! fake release tree from a temp dir (a few MB of bytes as `k3s` and a correct
//! `sha256sum-amd64.txt`), counts the requests it gets and injects faults (HTTP errors, a
//! connection closed mid-body, a stall, no Range support) on demand.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Router;
use k3node::artifacts::{
    fetch_airgap_images, fetch_k3s, resolve_version, ArtifactError, ArtifactOptions, DownloadProgress, NoProgress,
    Origin, ReleaseFile,
};
use k3node::cluster::{self, ArtifactSource, K3sSpec};
use sha2::{Digest, Sha256};

const VERSION: &str = "v1.31.4+k3s1";
const VERSION_IN_URL: &str = "v1.31.4%2Bk3s1";
const SIZE: usize = 3 * 1024 * 1024 + 12345;
const CUT: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// The fake release server

#[derive(Debug, Clone)]
enum Fault {
    /// Answer with this status instead of the file.
    Status(u16),
    /// Announce the whole length, send this many bytes, then close the connection.
    CutAfter(usize),
    /// Announce the whole length, send this many bytes, then send nothing, ever.
    StallAfter(usize),
}

#[derive(Debug, Clone)]
struct Seen {
    /// As sent, still percent-encoded.
    raw_path: String,
    range: Option<String>,
}

struct Server {
    /// Served at /release/<version>/<file>.
    root: PathBuf,
    log: Mutex<Vec<Seen>>,
    /// Per file name, faults to inject on its next requests, in order.
    faults: Mutex<HashMap<String, VecDeque<Fault>>>,
    ranges: AtomicBool,
}

struct Fixture {
    server: Arc<Server>,
    base: String,
    _root: tempfile::TempDir,
    cache: tempfile::TempDir,
    /// The fake k3s binary (amd64).
    k3s: Vec<u8>,
}

impl Fixture {
    async fn start() -> Fixture {
        let root = tempfile::tempdir().unwrap();
        let k3s = fake_binary(SIZE, 1);
        let server = Arc::new(Server {
            root: root.path().to_path_buf(),
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(HashMap::new()),
            ranges: AtomicBool::new(true),
        });
        let f = Fixture {
            base: serve(server.clone()).await,
            server,
            _root: root,
            cache: tempfile::tempdir().unwrap(),
            k3s,
        };
        f.put(VERSION, "k3s", &f.k3s);
        f.put(
            VERSION,
            "sha256sum-amd64.txt",
            sums(&[("k3s", &f.k3s), ("k3s-airgap-images-amd64.tar.zst", b"images")]).as_bytes(),
        );
        f
    }

    fn put(&self, version: &str, file: &str, bytes: &[u8]) {
        let dir = self.server.root.join(version);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), bytes).unwrap();
    }

    fn fault(&self, file: &str, faults: &[Fault]) {
        self.server.faults.lock().unwrap().entry(file.to_string()).or_default().extend(faults.iter().cloned());
    }

    fn seen(&self) -> Vec<Seen> {
        self.server.log.lock().unwrap().clone()
    }

    /// Requests for a file of the release (its last path segment).
    fn seen_file(&self, file: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.raw_path.starts_with("/release/") && s.raw_path.rsplit('/').next() == Some(file))
            .collect()
    }

    fn opts(&self) -> ArtifactOptions {
        ArtifactOptions {
            cache_dir: self.cache.path().to_path_buf(),
            channel_url: format!("{}/channels", self.base),
            retries: 3,
            timeout: Duration::from_secs(5),
            backoff: Duration::from_millis(10),
        }
    }

    fn release_spec(&self) -> K3sSpec {
        spec(ArtifactSource::Release { url: format!("{}/release", self.base) })
    }

    fn cache_entry(&self, arch: &str) -> PathBuf {
        self.cache.path().join("k3s").join(VERSION).join(arch)
    }

    async fn fetch(&self, arch: &str) -> Result<ReleaseFile, ArtifactError> {
        fetch_k3s(&self.release_spec(), VERSION, arch, &self.opts(), &NoProgress).await
    }
}

async fn serve(server: Arc<Server>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(handle).with_state(server);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn handle(State(server): State<Arc<Server>>, req: Request) -> Response {
    let raw_path = req.uri().path().to_string();
    let range = req.headers().get("range").map(|v| v.to_str().unwrap().to_string());
    server.log.lock().unwrap().push(Seen { raw_path: raw_path.clone(), range: range.clone() });
    if let Some(channel) = raw_path.strip_prefix("/channels/") {
        return match channel {
            "stable" | "v1.31" => redirect(&format!("/k3s-io/k3s/releases/tag/{VERSION_IN_URL}")),
            "latest" => redirect("https://github.com/k3s-io/k3s/releases/tag/v1.32.0-rc1+k3s2"),
            "broken" => redirect("/k3s-io/k3s/releases/tag/not-a-version"),
            "flat" => status(200),
            _ => status(404),
        };
    }
    let Some(rel) = raw_path.strip_prefix("/release/") else {
        return status(404);
    };
    let rel = percent_decode(rel);
    if rel.split('/').any(|s| s == ".." || s.is_empty()) {
        return status(400);
    }
    let name = rel.rsplit('/').next().unwrap().to_string();
    let fault = server.faults.lock().unwrap().get_mut(&name).and_then(|q| q.pop_front());
    if let Some(Fault::Status(code)) = fault {
        return status(code);
    }
    let Ok(bytes) = std::fs::read(server.root.join(&rel)) else {
        return status(404);
    };
    let total = bytes.len();
    let mut start = 0;
    let mut builder = Response::builder().header("accept-ranges", "bytes");
    if let Some(r) = range.filter(|_| server.ranges.load(Ordering::SeqCst)) {
        let from: usize = r
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse().ok())
            .expect("the client only asks for open-ended ranges");
        if from >= total {
            return Response::builder()
                .status(416)
                .header("content-range", format!("bytes */{total}"))
                .body(Body::empty())
                .unwrap();
        }
        start = from;
        builder = builder.status(206).header("content-range", format!("bytes {from}-{}/{total}", total - 1));
    }
    let body = bytes[start..].to_vec();
    let builder = builder.header("content-length", body.len());
    let body = match fault {
        Some(Fault::CutAfter(n)) => {
            let head = Bytes::from(body[..n].to_vec());
            Body::from_stream(futures::stream::iter(vec![
                Ok(head),
                Err(std::io::Error::other("connection cut by the test")),
            ]))
        }
        Some(Fault::StallAfter(n)) => {
            let head = Bytes::from(body[..n].to_vec());
            let first = futures::stream::iter(vec![Ok::<_, std::io::Error>(head)]);
            Body::from_stream(futures::StreamExt::chain(first, futures::stream::pending()))
        }
        _ => Body::from(body),
    };
    builder.body(body).unwrap()
}

fn status(code: u16) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .body(Body::from(format!("status {code}\n")))
        .unwrap()
}

fn redirect(location: &str) -> Response {
    Response::builder().status(302).header("location", location).body(Body::empty()).unwrap()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Deterministic, incompressible-looking bytes.
fn fake_binary(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A checksum file as sha256sum writes it.
fn sums(files: &[(&str, &[u8])]) -> String {
    files.iter().map(|(name, bytes)| format!("{}  {name}\n", sha256(bytes))).collect()
}

/// A K3sSpec as the cluster file yields it (parsed, so that it stays whatever the struct becomes),
/// with the given source.
fn spec(source: ArtifactSource) -> K3sSpec {
    let text = "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: t\nspec:\n  hosts:\n    \
                - name: server-1\n      address: 192.168.56.10\n      role: server\n";
    let mut spec = cluster::parse("cluster.yaml", Path::new("/"), text).expect("minimal cluster file").k3s;
    spec.source = source;
    spec.version = None;
    spec.channel = None;
    spec
}

/// Files (not dirs) under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    bytes: Mutex<u64>,
}

impl DownloadProgress for Recorder {
    fn started(&self, what: &str, total: Option<u64>) {
        *self.bytes.lock().unwrap() = 0;
        self.events.lock().unwrap().push(format!("started {what} {total:?}"));
    }
    fn advanced(&self, bytes: u64) {
        *self.bytes.lock().unwrap() += bytes;
    }
    fn finished(&self) {
        self.events.lock().unwrap().push("finished".into());
    }
}

// ---------------------------------------------------------------------------------------------
// Version resolution

#[tokio::test]
async fn channel_resolves_through_the_redirect() {
    let f = Fixture::start().await;
    let mut s = f.release_spec();
    // No version, no channel: stable.
    assert_eq!(resolve_version(&s, &f.opts()).await.unwrap(), VERSION);
    s.channel = Some("v1.31".into());
    assert_eq!(resolve_version(&s, &f.opts()).await.unwrap(), VERSION);
    // An absolute Location with a literal +, and a release candidate.
    s.channel = Some("latest".into());
    assert_eq!(resolve_version(&s, &f.opts()).await.unwrap(), "v1.32.0-rc1+k3s2");
    let paths: Vec<String> = f.seen().into_iter().map(|s| s.raw_path).collect();
    assert_eq!(paths, ["/channels/stable", "/channels/v1.31", "/channels/latest"]);
}

#[tokio::test]
async fn channel_errors_are_clear() {
    let f = Fixture::start().await;
    let mut s = f.release_spec();
    s.channel = Some("nope".into());
    let e = resolve_version(&s, &f.opts()).await.unwrap_err();
    assert!(matches!(e, ArtifactError::NotFound { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("channel \"nope\" does not exist") && msg.contains("/channels/nope"), "{msg}");
    // A 404 is an answer: asked once.
    assert_eq!(f.seen().len(), 1);

    s.channel = Some("broken".into());
    let msg = resolve_version(&s, &f.opts()).await.unwrap_err().to_string();
    assert!(msg.contains("\"not-a-version\"") && msg.contains("is not a k3s version"), "{msg}");

    s.channel = Some("flat".into());
    let e = resolve_version(&s, &f.opts()).await.unwrap_err();
    assert!(matches!(e, ArtifactError::ChannelNoRedirect { .. }), "{e:?}");
    assert!(e.to_string().contains("answered HTTP 200 OK"), "{e}");
}

#[tokio::test]
async fn a_pinned_version_skips_the_channel() {
    let f = Fixture::start().await;
    let mut s = f.release_spec();
    s.version = Some("v1.30.2+k3s2".into());
    assert_eq!(resolve_version(&s, &f.opts()).await.unwrap(), "v1.30.2+k3s2");
    assert!(f.seen().is_empty(), "{:?}", f.seen());
}

// ---------------------------------------------------------------------------------------------
// Download, verification, cache

#[tokio::test]
async fn downloads_verifies_and_caches() {
    let f = Fixture::start().await;
    let progress = Recorder::default();
    let bin = fetch_k3s(&f.release_spec(), VERSION, "amd64", &f.opts(), &progress).await.unwrap();
    assert_eq!(bin.version, VERSION);
    assert_eq!(bin.arch, "amd64");
    assert_eq!(bin.sha256, sha256(&f.k3s));
    assert_eq!(bin.size, SIZE as u64);
    assert_eq!(bin.path, f.cache_entry("amd64").join("k3s"));
    assert_eq!(bin.origin, Origin::Downloaded { url: format!("{}/release/{VERSION_IN_URL}/k3s", f.base) });
    assert_eq!(std::fs::read(&bin.path).unwrap(), f.k3s);
    assert_eq!(std::fs::metadata(&bin.path).unwrap().permissions().mode() & 0o777, 0o755);
    // The + is sent as %2B; the checksum file first, then the binary, once each.
    let paths: Vec<String> = f.seen().into_iter().map(|s| s.raw_path).collect();
    assert_eq!(
        paths,
        [format!("/release/{VERSION_IN_URL}/sha256sum-amd64.txt"), format!("/release/{VERSION_IN_URL}/k3s")]
    );
    assert_eq!(
        *progress.events.lock().unwrap(),
        [format!("started k3s {VERSION} (amd64) Some({SIZE})"), "finished".to_string()]
    );
    assert_eq!(*progress.bytes.lock().unwrap(), SIZE as u64);
    // Only the binary and its checksum file are left: no temp files.
    assert_eq!(
        files_under(f.cache.path()),
        [format!("k3s/{VERSION}/amd64/k3s"), format!("k3s/{VERSION}/amd64/sha256sum-amd64.txt")]
    );

    // Again: from the cache, verified, without a single request.
    let progress = Recorder::default();
    let again = fetch_k3s(&f.release_spec(), VERSION, "amd64", &f.opts(), &progress).await.unwrap();
    assert_eq!(again.origin, Origin::Cache);
    assert_eq!((again.path.clone(), again.sha256.clone()), (bin.path, bin.sha256));
    assert_eq!(f.seen().len(), 2);
    assert!(progress.events.lock().unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_fetches_download_once() {
    let f = Fixture::start().await;
    let (a, b) = tokio::join!(f.fetch("amd64"), f.fetch("amd64"));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.sha256.clone(), a.path.clone()), (b.sha256.clone(), b.path.clone()));
    let mut origins = [a.origin, b.origin].map(|o| matches!(o, Origin::Cache));
    origins.sort();
    assert_eq!(origins, [false, true], "one downloads, the other waits and takes the cache");
    assert_eq!(f.seen_file("k3s").len(), 1);
}

#[tokio::test]
async fn a_tampered_cached_binary_is_downloaded_again() {
    let f = Fixture::start().await;
    let bin = f.fetch("amd64").await.unwrap();
    let mut bytes = std::fs::read(&bin.path).unwrap();
    bytes[SIZE / 2] ^= 0x01;
    std::fs::write(&bin.path, &bytes).unwrap();

    let again = f.fetch("amd64").await.unwrap();
    assert!(matches!(again.origin, Origin::Downloaded { .. }), "{:?}", again.origin);
    assert_eq!(std::fs::read(&again.path).unwrap(), f.k3s);
    assert_eq!(f.seen_file("k3s").len(), 2);
    assert_eq!(f.fetch("amd64").await.unwrap().origin, Origin::Cache);
}

#[tokio::test]
async fn a_tampered_binary_on_the_server_is_refused_and_nothing_is_cached() {
    let f = Fixture::start().await;
    let mut bad = f.k3s.clone();
    bad[100] ^= 0xff;
    f.put(VERSION, "k3s", &bad);
    let e = f.fetch("amd64").await.unwrap_err();
    let ArtifactError::ChecksumMismatch { url, expected, actual, .. } = &e else { panic!("{e:?}") };
    assert_eq!(url, &format!("{}/release/{VERSION_IN_URL}/k3s", f.base));
    assert_eq!(expected, &sha256(&f.k3s));
    assert_eq!(actual, &sha256(&bad));
    let msg = e.to_string();
    assert!(
        msg.contains(&sha256(&f.k3s)) && msg.contains(&sha256(&bad)) && msg.contains("nothing was cached"),
        "{msg}"
    );
    assert!(files_under(f.cache.path()).is_empty(), "{:?}", files_under(f.cache.path()));
}

#[tokio::test]
async fn a_checksum_file_with_a_wrong_hash_is_refused() {
    let f = Fixture::start().await;
    f.put(VERSION, "sha256sum-amd64.txt", sums(&[("k3s", b"something else")]).as_bytes());
    let e = f.fetch("amd64").await.unwrap_err();
    assert!(matches!(e, ArtifactError::ChecksumMismatch { .. }), "{e:?}");
    assert!(e.to_string().contains("sha256sum-amd64.txt"), "{e}");
    assert!(files_under(f.cache.path()).is_empty());
    // A later fetch against a fixed release succeeds.
    f.put(VERSION, "sha256sum-amd64.txt", sums(&[("k3s", &f.k3s)]).as_bytes());
    assert!(matches!(f.fetch("amd64").await.unwrap().origin, Origin::Downloaded { .. }));
}

#[tokio::test]
async fn a_checksum_file_without_the_entry_is_a_clear_error() {
    let f = Fixture::start().await;
    f.put(
        VERSION,
        "sha256sum-amd64.txt",
        sums(&[("k3s-airgap-images-amd64.tar", b"x"), ("k3s-arm64", b"y")]).as_bytes(),
    );
    let e = f.fetch("amd64").await.unwrap_err();
    assert!(matches!(e, ArtifactError::ChecksumEntryMissing { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("{}/release/{VERSION_IN_URL}/sha256sum-amd64.txt", f.base))
            && msg.contains("no sha256 line for \"k3s\"")
            && msg.contains("k3s-arm64"),
        "{msg}"
    );
    // The binary was not even asked for.
    assert!(f.seen_file("k3s").is_empty());

    f.put(VERSION, "sha256sum-amd64.txt", b"<html>rate limited</html>\n");
    let e = f.fetch("amd64").await.unwrap_err();
    assert!(matches!(e, ArtifactError::ChecksumFileMalformed { line: 1, .. }), "{e:?}");
    assert!(files_under(f.cache.path()).is_empty());
}

#[tokio::test]
async fn not_found_says_it_does_not_exist_without_retrying() {
    let f = Fixture::start().await;
    // No such release: the checksum file is the first 404.
    let e = fetch_k3s(&f.release_spec(), "v1.99.0+k3s1", "amd64", &f.opts(), &NoProgress).await.unwrap_err();
    assert!(matches!(e, ArtifactError::NotFound { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("k3s v1.99.0+k3s1 for amd64 (its checksum file sha256sum-amd64.txt) does not exist"), "{msg}");
    assert!(msg.contains("v1.99.0%2Bk3s1/sha256sum-amd64.txt answered HTTP 404"), "{msg}");
    assert_eq!(f.seen().len(), 1);

    // The release exists but not this binary.
    f.put(VERSION, "sha256sum-s390x.txt", sums(&[("k3s-s390x", b"z")]).as_bytes());
    let e = f.fetch("s390x").await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&format!("k3s {VERSION} (s390x) does not exist")), "{msg}");
    assert_eq!(f.seen_file("k3s-s390x").len(), 1);
    assert!(files_under(f.cache.path()).is_empty(), "{:?}", files_under(f.cache.path()));
}

#[tokio::test]
async fn server_errors_are_retried() {
    let f = Fixture::start().await;
    f.fault("k3s", &[Fault::Status(500), Fault::Status(500)]);
    let bin = f.fetch("amd64").await.unwrap();
    assert_eq!(bin.sha256, sha256(&f.k3s));
    assert_eq!(f.seen_file("k3s").len(), 3);

    // Retries run out: the last status is reported, with the attempts.
    let f = Fixture::start().await;
    f.fault("sha256sum-amd64.txt", &[Fault::Status(503), Fault::Status(502), Fault::Status(500)]);
    let mut opts = f.opts();
    opts.retries = 2;
    let e = fetch_k3s(&f.release_spec(), VERSION, "amd64", &opts, &NoProgress).await.unwrap_err();
    assert!(matches!(e, ArtifactError::HttpStatus { status: 500, attempts: 3, .. }), "{e:?}");
    assert!(e.to_string().contains("HTTP 500"), "{e}");
}

#[tokio::test]
async fn an_interrupted_download_resumes_with_a_range_request() {
    let f = Fixture::start().await;
    f.fault("k3s", &[Fault::CutAfter(CUT)]);
    let progress = Recorder::default();
    let bin = fetch_k3s(&f.release_spec(), VERSION, "amd64", &f.opts(), &progress).await.unwrap();
    assert_eq!(bin.sha256, sha256(&f.k3s));
    assert_eq!(std::fs::read(&bin.path).unwrap(), f.k3s);
    let seen = f.seen_file("k3s");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range, None);
    assert_eq!(seen[1].range.as_deref(), Some(format!("bytes={CUT}-").as_str()));
    // Progress restarted for the second attempt and counted the kept bytes.
    let events = progress.events.lock().unwrap().clone();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(*progress.bytes.lock().unwrap(), SIZE as u64);
    assert_eq!(files_under(&f.cache_entry("amd64")), ["k3s", "sha256sum-amd64.txt"]);
}

#[tokio::test]
async fn a_partial_download_of_an_earlier_run_is_continued() {
    let f = Fixture::start().await;
    f.fault("k3s", &[Fault::CutAfter(CUT)]);
    let mut opts = f.opts();
    opts.retries = 0;
    let e = fetch_k3s(&f.release_spec(), VERSION, "amd64", &opts, &NoProgress).await.unwrap_err();
    assert!(matches!(e, ArtifactError::Network { attempts: 1, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("/k3s failed after 1 attempt(s): the connection broke after {CUT} of {SIZE} bytes")),
        "{msg}"
    );
    // The partial file stays for the next run, and is not a usable binary.
    let left = files_under(&f.cache_entry("amd64"));
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with(".k3s.") && left[0].ends_with(".partial"), "{left:?}");

    let bin = f.fetch("amd64").await.unwrap();
    assert_eq!(bin.sha256, sha256(&f.k3s));
    let seen = f.seen_file("k3s");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].range.as_deref(), Some(format!("bytes={CUT}-").as_str()));
    assert_eq!(files_under(&f.cache_entry("amd64")), ["k3s", "sha256sum-amd64.txt"]);
}

#[tokio::test]
async fn a_complete_partial_is_used_and_an_overlong_one_restarted() {
    // An earlier run died between the download and the rename: no request for the binary.
    let f = Fixture::start().await;
    let dir = f.cache_entry("amd64");
    std::fs::create_dir_all(&dir).unwrap();
    let partial = dir.join(format!(".k3s.{}.partial", sha256(&f.k3s)));
    std::fs::write(&partial, &f.k3s).unwrap();
    let bin = f.fetch("amd64").await.unwrap();
    assert_eq!(bin.sha256, sha256(&f.k3s));
    assert!(f.seen_file("k3s").is_empty(), "{:?}", f.seen());
    assert_eq!(files_under(&dir), ["k3s", "sha256sum-amd64.txt"]);

    // A partial longer than the file: the server cannot continue it (416), so it starts over.
    let f = Fixture::start().await;
    let dir = f.cache_entry("amd64");
    std::fs::create_dir_all(&dir).unwrap();
    let mut long = f.k3s.clone();
    long.extend_from_slice(b"garbage");
    std::fs::write(dir.join(format!(".k3s.{}.partial", sha256(&f.k3s))), &long).unwrap();
    // And one of another build of the release is cleaned up.
    std::fs::write(dir.join(format!(".k3s.{}.partial", sha256(b"old"))), b"old").unwrap();
    let bin = f.fetch("amd64").await.unwrap();
    assert_eq!(std::fs::read(&bin.path).unwrap(), f.k3s);
    let seen = f.seen_file("k3s");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range.as_deref(), Some(format!("bytes={}-", long.len()).as_str()));
    assert_eq!(seen[1].range, None);
    assert_eq!(files_under(&dir), ["k3s", "sha256sum-amd64.txt"]);
}

#[tokio::test]
async fn without_range_support_the_download_restarts() {
    let f = Fixture::start().await;
    f.server.ranges.store(false, Ordering::SeqCst);
    f.fault("k3s", &[Fault::CutAfter(CUT)]);
    let bin = f.fetch("amd64").await.unwrap();
    assert_eq!(std::fs::read(&bin.path).unwrap(), f.k3s);
    let seen = f.seen_file("k3s");
    assert_eq!(seen.len(), 2);
    assert!(seen[1].range.is_some(), "asked for a range, got the whole file");
}

#[tokio::test]
async fn a_resumed_download_that_does_not_verify_is_restarted_from_zero() {
    // The release was rebuilt between two runs: the kept bytes belong to the old binary.
    let f = Fixture::start().await;
    f.fault("k3s", &[Fault::CutAfter(CUT)]);
    let mut opts = f.opts();
    opts.retries = 0;
    fetch_k3s(&f.release_spec(), VERSION, "amd64", &opts, &NoProgress).await.unwrap_err();
    let partial = f.cache_entry("amd64").join(&files_under(&f.cache_entry("amd64"))[0]);
    let mut kept = std::fs::read(&partial).unwrap();
    kept[10] ^= 1; // inside the kept prefix
    std::fs::write(&partial, &kept).unwrap();

    let bin = f.fetch("amd64").await.unwrap();
    assert_eq!(std::fs::read(&bin.path).unwrap(), f.k3s);
    let seen = f.seen_file("k3s");
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[1].range.is_some() && seen[2].range.is_none(), "{seen:?}");
}

#[tokio::test]
async fn a_stalled_download_is_detected_and_resumed() {
    let f = Fixture::start().await;
    f.fault("k3s", &[Fault::StallAfter(CUT)]);
    let mut opts = f.opts();
    opts.timeout = Duration::from_secs(1);
    opts.retries = 0;
    let started = std::time::Instant::now();
    let e = fetch_k3s(&f.release_spec(), VERSION, "amd64", &opts, &NoProgress).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert!(e.to_string().contains("stalled"), "{e}");

    f.fault("k3s", &[Fault::StallAfter(CUT)]);
    opts.retries = 1;
    let bin = fetch_k3s(&f.release_spec(), VERSION, "amd64", &opts, &NoProgress).await.unwrap();
    assert_eq!(bin.sha256, sha256(&f.k3s));
    let seen = f.seen_file("k3s");
    assert_eq!(seen.len(), 3, "{seen:?}");
    // The second run continued what the first kept, and its own retry continued again.
    assert_eq!(seen[1].range.as_deref(), Some(format!("bytes={CUT}-").as_str()));
    assert_eq!(seen[2].range.as_deref(), Some(format!("bytes={}-", 2 * CUT).as_str()));
}

#[tokio::test]
async fn an_unreachable_server_fails_after_the_retries() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cache = tempfile::tempdir().unwrap();
    let opts = ArtifactOptions {
        cache_dir: cache.path().to_path_buf(),
        channel_url: format!("http://127.0.0.1:{port}/channels"),
        retries: 2,
        timeout: Duration::from_secs(2),
        backoff: Duration::from_millis(10),
    };
    let s = spec(ArtifactSource::Mirror { url: format!("http://127.0.0.1:{port}/mirror") });
    let e = resolve_version(&s, &opts).await.unwrap_err();
    assert!(matches!(e, ArtifactError::Network { attempts: 3, .. }), "{e:?}");
    let e = fetch_k3s(&s, VERSION, "arm64", &opts, &NoProgress).await.unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&format!("http://127.0.0.1:{port}/mirror/{VERSION_IN_URL}/sha256sum-arm64.txt")), "{msg}");
    assert!(msg.contains("after 3 attempt(s)"), "{msg}");
}

#[tokio::test]
async fn credentials_in_a_mirror_url_never_reach_messages() {
    let f = Fixture::start().await;
    let s =
        spec(ArtifactSource::Mirror { url: format!("{}/release", f.base.replace("http://", "http://user:s3cret@")) });
    let e = fetch_k3s(&s, "v1.99.0+k3s1", "amd64", &f.opts(), &NoProgress).await.unwrap_err();
    let msg = format!("{e} {e:?}");
    assert!(!msg.contains("s3cret") && msg.contains("does not exist"), "{msg}");
    // ...while the mirror still gets them.
    let bin = fetch_k3s(&s, VERSION, "amd64", &f.opts(), &NoProgress).await.unwrap();
    let Origin::Downloaded { url } = &bin.origin else { panic!() };
    assert!(!url.contains("s3cret"), "{url}");
}

#[tokio::test]
async fn arm_architectures_use_their_own_names() {
    let f = Fixture::start().await;
    let arm64 = fake_binary(200_000, 2);
    let armhf = fake_binary(150_000, 3);
    f.put(VERSION, "k3s-arm64", &arm64);
    f.put(VERSION, "sha256sum-arm64.txt", sums(&[("k3s-arm64", &arm64), ("k3s", &f.k3s)]).as_bytes());
    f.put(VERSION, "k3s-armhf", &armhf);
    // The checksum file of armhf is named after "arm".
    f.put(VERSION, "sha256sum-arm.txt", sums(&[("k3s-armhf", &armhf), ("k3s-arm64", &arm64)]).as_bytes());

    let a = f.fetch("arm64").await.unwrap();
    assert_eq!((a.arch.as_str(), a.sha256.clone()), ("arm64", sha256(&arm64)));
    assert_eq!(a.path, f.cache_entry("arm64").join("k3s-arm64"));
    let h = f.fetch("armhf").await.unwrap();
    assert_eq!((h.arch.as_str(), h.sha256.clone()), ("armhf", sha256(&armhf)));
    assert_eq!(h.path, f.cache_entry("armhf").join("k3s-armhf"));

    let paths: Vec<String> = f.seen().into_iter().map(|s| s.raw_path).collect();
    let p = |file: &str| format!("/release/{VERSION_IN_URL}/{file}");
    assert_eq!(paths, [p("sha256sum-arm64.txt"), p("k3s-arm64"), p("sha256sum-arm.txt"), p("k3s-armhf")]);
    assert_eq!(files_under(&f.cache_entry("armhf")), ["k3s-armhf", "sha256sum-arm.txt"]);

    let e = f.fetch("x86_64").await.unwrap_err();
    assert!(matches!(e, ArtifactError::UnknownArch { .. }), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// Airgap dir

#[tokio::test]
async fn an_airgap_dir_is_verified_and_used_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let k3s = fake_binary(500_000, 4);
    std::fs::write(dir.path().join("k3s"), &k3s).unwrap();
    std::fs::write(dir.path().join("sha256sum-amd64.txt"), sums(&[("k3s", &k3s)])).unwrap();
    let opts = ArtifactOptions {
        cache_dir: cache.path().to_path_buf(),
        // Nothing listens there: an airgap fetch must not go to the network.
        channel_url: "http://127.0.0.1:9/channels".into(),
        ..ArtifactOptions::default()
    };
    let s = spec(ArtifactSource::AirgapDir { path: dir.path().to_path_buf() });
    let bin = fetch_k3s(&s, VERSION, "amd64", &opts, &NoProgress).await.unwrap();
    assert_eq!(bin.origin, Origin::Airgap);
    assert_eq!(bin.path, dir.path().join("k3s"));
    assert_eq!((bin.sha256, bin.size), (sha256(&k3s), k3s.len() as u64));
    assert!(files_under(cache.path()).is_empty());
}

#[tokio::test]
async fn an_airgap_dir_with_a_bad_checksum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let k3s = fake_binary(100_000, 5);
    std::fs::write(dir.path().join("k3s-arm64"), &k3s).unwrap();
    std::fs::write(dir.path().join("sha256sum-arm64.txt"), sums(&[("k3s-arm64", b"other")])).unwrap();
    let opts = ArtifactOptions { cache_dir: dir.path().join("cache"), ..ArtifactOptions::default() };
    let s = spec(ArtifactSource::AirgapDir { path: dir.path().to_path_buf() });
    let e = fetch_k3s(&s, VERSION, "arm64", &opts, &NoProgress).await.unwrap_err();
    let ArtifactError::ChecksumMismatch { url, actual, .. } = &e else { panic!("{e:?}") };
    assert_eq!(url, &dir.path().join("k3s-arm64").display().to_string());
    assert_eq!(actual, &sha256(&k3s));

    // A dir without the checksum file says what is missing.
    std::fs::remove_file(dir.path().join("sha256sum-arm64.txt")).unwrap();
    let e = fetch_k3s(&s, VERSION, "arm64", &opts, &NoProgress).await.unwrap_err();
    assert!(matches!(e, ArtifactError::AirgapFileMissing { .. }), "{e:?}");
    assert!(e.to_string().contains("sha256sum-arm64.txt is missing"), "{e}");
}

#[tokio::test]
async fn the_airgap_images_bundle_is_fetched_only_when_asked_then_verified_and_cached_beside_the_binary() {
    let f = Fixture::start().await;
    let bundle = fake_binary(700_000, 7);
    let name = "k3s-airgap-images-amd64.tar.zst";
    f.put(VERSION, name, &bundle);
    f.put(VERSION, "sha256sum-amd64.txt", sums(&[("k3s", &f.k3s), (name, &bundle)]).as_bytes());

    // Not asked for: nothing fetched.
    let mut s = f.release_spec();
    assert_eq!(fetch_airgap_images(&s, VERSION, "amd64", &f.opts(), &NoProgress).await.unwrap(), None);
    assert!(f.seen().is_empty(), "{:?}", f.seen());

    s.airgap_images = true;
    let progress = Recorder::default();
    let got = fetch_airgap_images(&s, VERSION, "amd64", &f.opts(), &progress).await.unwrap().expect("asked for");
    assert_eq!(got.path, f.cache_entry("amd64").join(name));
    assert_eq!((got.sha256.clone(), got.size), (sha256(&bundle), bundle.len() as u64));
    assert_eq!(got.origin, Origin::Downloaded { url: format!("{}/release/{VERSION_IN_URL}/{name}", f.base) });
    assert_eq!(std::fs::read(&got.path).unwrap(), bundle);
    assert_eq!(std::fs::metadata(&got.path).unwrap().permissions().mode() & 0o777, 0o644, "data, not a program");
    assert_eq!(
        *progress.events.lock().unwrap(),
        [format!("started k3s {VERSION} airgap images (amd64) Some({})", bundle.len()), "finished".to_string()]
    );
    // The binary shares the cache entry and its checksum file; each is fetched once.
    let bin = f.fetch("amd64").await.unwrap();
    assert_eq!(std::fs::read(&bin.path).unwrap(), f.k3s);
    let again = fetch_airgap_images(&s, VERSION, "amd64", &f.opts(), &NoProgress).await.unwrap().unwrap();
    assert_eq!(again.origin, Origin::Cache);
    assert_eq!((f.seen_file(name).len(), f.seen_file("k3s").len()), (1, 1));
    assert_eq!(
        files_under(f.cache.path()),
        [
            format!("k3s/{VERSION}/amd64/k3s"),
            format!("k3s/{VERSION}/amd64/{name}"),
            format!("k3s/{VERSION}/amd64/sha256sum-amd64.txt")
        ]
    );
}

#[tokio::test]
async fn a_damaged_airgap_images_bundle_on_the_server_is_refused_and_nothing_is_cached() {
    let f = Fixture::start().await;
    let name = "k3s-airgap-images-amd64.tar.zst";
    // The fixture's checksum file lists the bundle as other bytes than these.
    f.put(VERSION, name, &fake_binary(300_000, 8));
    let mut s = f.release_spec();
    s.airgap_images = true;
    let e = fetch_airgap_images(&s, VERSION, "amd64", &f.opts(), &NoProgress).await.unwrap_err();
    let ArtifactError::ChecksumMismatch { url, .. } = &e else { panic!("{e:?}") };
    assert!(url.ends_with(name), "{url}");
    assert!(!files_under(f.cache.path()).iter().any(|p| p.contains(name)), "{:?}", files_under(f.cache.path()));
}

#[tokio::test]
async fn an_airgap_dir_holding_the_bundle_gives_it_without_the_switch_and_verifies_it() {
    let dir = tempfile::tempdir().unwrap();
    let name = "k3s-airgap-images-arm64.tar.zst";
    let k3s = fake_binary(100_000, 9);
    let bundle = fake_binary(200_000, 10);
    std::fs::write(dir.path().join("k3s-arm64"), &k3s).unwrap();
    std::fs::write(dir.path().join(name), &bundle).unwrap();
    std::fs::write(dir.path().join("sha256sum-arm64.txt"), sums(&[("k3s-arm64", &k3s), (name, &bundle)])).unwrap();
    let opts = ArtifactOptions { cache_dir: dir.path().join("cache"), ..ArtifactOptions::default() };
    let s = spec(ArtifactSource::AirgapDir { path: dir.path().to_path_buf() });
    assert!(!s.airgap_images);
    let got = fetch_airgap_images(&s, VERSION, "arm64", &opts, &NoProgress).await.unwrap().expect("in the dir");
    assert_eq!((got.path.clone(), got.origin.clone()), (dir.path().join(name), Origin::Airgap));
    assert_eq!(got.sha256, sha256(&bundle));

    // Damaged in the dir: refused, naming the file.
    std::fs::write(dir.path().join(name), b"not the bundle").unwrap();
    let e = fetch_airgap_images(&s, VERSION, "arm64", &opts, &NoProgress).await.unwrap_err();
    assert!(matches!(e, ArtifactError::ChecksumMismatch { .. }) && e.to_string().contains(name), "{e}");

    // Asked for but not in the dir: says what to copy where.
    std::fs::remove_file(dir.path().join(name)).unwrap();
    let mut asked = s.clone();
    asked.airgap_images = true;
    let e = fetch_airgap_images(&asked, VERSION, "arm64", &opts, &NoProgress).await.unwrap_err();
    assert!(e.to_string().contains(&format!("{name} is missing")), "{e}");
    assert_eq!(fetch_airgap_images(&s, VERSION, "arm64", &opts, &NoProgress).await.unwrap(), None);
}
