//! Benchmark: `k3node images import` of a 200 MiB image (a compressible layer and a random one)
//! into the k3s stand-in's real containerd on lab hosts:
//! - to 1 node and to 4 nodes (target: 4 nodes take at most 1.3x the time of 1 node);
//! - against the baseline `cat image.tar | ssh node k3s ctr images import -`, node after node,
//!   measured in the same run (target: k3node at least 3x faster at 4 nodes);
//! - a re-run with everything present on the 4 nodes (target under 1 s).
//!
//! Between runs the image is removed from every node (`ctr images rm --sync`, which lets
//! containerd's garbage collector drop its content), so that each run imports it whole.
//!
//! Run: `cargo bench --bench images` as root (it builds a 4-host lab of tests/lab).
//! `K3NODE_IMAGES_MIB` sets the image size (default 200).

#[path = "../tests/lab/mirror.rs"]
mod mirror;
#[path = "../tests/lab/support/mod.rs"]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::{Lab, LabHost, LabSpec};

const K3NODE: &str = env!("CARGO_BIN_EXE_k3node");
const IMAGE: &str = "registry.bench/app:1";

struct Bench {
    lab: std::sync::Arc<Lab>,
    home: PathBuf,
    known_hosts: PathBuf,
}

impl Bench {
    fn k3node(&self, args: &[&str]) -> Output {
        self.lab.command_in_netns(Path::new(K3NODE)).args(args).env("HOME", &self.home).output().expect("k3node")
    }

    fn ssh(&self, h: &LabHost, command: &str, stdin: Option<&Path>) -> Output {
        let mut cmd = self.lab.command_in_netns(Path::new("ssh"));
        cmd.args(["-i", self.lab.client_key().to_str().unwrap(), "-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg(format!("root@{}", h.address))
            .arg(command);
        if let Some(path) = stdin {
            cmd.stdin(Stdio::from(std::fs::File::open(path).unwrap()));
        }
        cmd.output().expect("ssh")
    }

    /// One `k3node images import` run; its time, and the bytes it sent per node.
    fn import(&self, file: &Path, archive: &Path, hosts: &str, label: &str) -> (Duration, Vec<u64>) {
        let started = Instant::now();
        let out = self.k3node(&[
            "images",
            "import",
            "-c",
            file.to_str().unwrap(),
            "--hosts",
            hosts,
            "-o",
            "json",
            archive.to_str().unwrap(),
        ]);
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "{label}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let sent: Vec<u64> =
            json["images"].as_array().into_iter().flatten().map(|n| n["sent_bytes"].as_u64().unwrap_or(0)).collect();
        eprintln!("  {label}: {:.3} s, sent {:?} bytes", took.as_secs_f64(), sent);
        (took, sent)
    }

    /// The image gone from `hosts`, content included.
    fn remove(&self, hosts: &[&LabHost]) {
        for h in hosts {
            let out = self.ssh(h, &format!("k3s ctr -n k8s.io images rm --sync {IMAGE} >/dev/null 2>&1; k3s ctr -n k8s.io images ls -q | grep -c '^{IMAGE}$' || true"), None);
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "{}: the image is still there", h.name);
        }
    }
}

/// `size` bytes of xorshift output (incompressible).
fn random(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size);
    out
}

/// Text-like bytes (zstd shrinks them several times over).
fn compressible(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    let mut i = 0u64;
    while out.len() < size {
        out.extend_from_slice(format!("line {i}: the quick brown fox jumps over the lazy dog {}\n", i % 97).as_bytes());
        i += 1;
    }
    out.truncate(size);
    out
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A layer tar holding one file.
fn layer(name: &str, content: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, name, content).unwrap();
    builder.into_inner().unwrap()
}

/// An OCI layout tarball of one image named [`IMAGE`] with the given layers (uncompressed).
fn oci_archive(path: &Path, layers: &[Vec<u8>]) {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config), "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(l), "size": l.len()
        })).collect::<Vec<_>>()
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(&manifest),
            "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": IMAGE}}]
    }))
    .unwrap();
    let mut builder = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(path).unwrap()));
    let mut add = |name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, bytes).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    for blob in layers.iter().map(Vec::as_slice).chain([config.as_slice(), manifest.as_slice()]) {
        add(&format!("blobs/sha256/{}", sha(blob).trim_start_matches("sha256:")), blob);
    }
    add("index.json", &index);
    builder.into_inner().unwrap().flush().unwrap();
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mib: usize = std::env::var("K3NODE_IMAGES_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let lab = std::sync::Arc::new(
        Lab::start(LabSpec { hosts: (1..=4).map(|i| format!("h{i}")).collect(), ..LabSpec::default() }).unwrap_or_else(
            |e| {
                eprintln!("images bench: cannot build the lab: {e:#}");
                std::process::exit(1);
            },
        ),
    );
    let home = lab.dir().join("bench-images");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let known_hosts = home.join(".ssh/known_hosts");
    std::fs::write(&known_hosts, lab.hosts().iter().map(|h| lab.known_hosts_line(h) + "\n").collect::<String>())
        .unwrap();
    let server = mirror::Mirror::start(&lab);
    let binary = mirror::release_binary(mirror::VERSION);
    mirror::publish(&server.root, mirror::VERSION, &binary);
    let b = Bench { lab: lab.clone(), home: home.clone(), known_hosts };
    let hosts = lab.hosts();

    let mut yaml = format!(
        "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: bench\nspec:\n  ssh:\n    keyPath: {}\n    knownHosts: {}\n  hosts:\n",
        lab.client_key().display(),
        b.known_hosts.display()
    );
    for (i, h) in hosts.iter().enumerate() {
        let role = if i == 0 { "server" } else { "agent" };
        yaml.push_str(&format!("    - name: {}\n      address: {}\n      role: {role}\n", h.name, h.address));
    }
    yaml.push_str(&format!("  k3s:\n    version: {}\n    source:\n      mirror: {}\n", mirror::VERSION, server.url()));
    let file = home.join("cluster.yaml");
    std::fs::write(&file, yaml).unwrap();
    let fix = b.k3node(&["preflight", "-c", file.to_str().unwrap(), "--fix", "-o", "json"]);
    assert!(!fix.stdout.is_empty(), "preflight --fix: {}", String::from_utf8_lossy(&fix.stderr));
    let up = b.k3node(&["up", "-c", file.to_str().unwrap(), "--ready-timeout", "120", "-o", "json"]);
    assert!(up.status.success(), "up: {}", String::from_utf8_lossy(&up.stderr));

    eprintln!("images bench: writing a {mib} MiB image");
    let half = (mib << 20) / 2;
    let archive = home.join("app.tar");
    oci_archive(&archive, &[layer("text.log", &compressible(half)), layer("random.bin", &random(half, 42))]);
    let all: Vec<&LabHost> = hosts.iter().collect();
    let names = |n: usize| hosts.iter().take(n).map(|h| h.name.as_str()).collect::<Vec<_>>().join(",");

    b.remove(&all);
    let (one, _) = b.import(&file, &archive, &names(1), "k3node, 1 node");
    b.remove(&all);
    let (four, _) = b.import(&file, &archive, &names(4), "k3node, 4 nodes");
    let (rerun, sent) = b.import(&file, &archive, &names(4), "k3node, re-run on 4 nodes");
    assert!(sent.iter().all(|&s| s == 0), "the re-run sent image bytes: {sent:?}");
    b.remove(&all);
    let started = Instant::now();
    for h in &all {
        let out = b.ssh(h, "k3s ctr images import -", Some(&archive));
        assert!(out.status.success(), "baseline on {}: {}", h.name, String::from_utf8_lossy(&out.stderr));
    }
    let base = started.elapsed();
    eprintln!("  baseline, 4 nodes in sequence: {:.3} s", base.as_secs_f64());
    b.remove(&all);

    println!(
        "images benchmark, {mib} MiB image (half text, half random), lab hosts, k3s stand-in's containerd, same run:"
    );
    println!("  k3node images import, 1 node:                          {:>8.3} s", one.as_secs_f64());
    println!("  k3node images import, 4 nodes:                         {:>8.3} s", four.as_secs_f64());
    println!(
        "  scaling ratio (4 nodes / 1 node):                      {:>8.2}   (target <= 1.3)",
        four.as_secs_f64() / one.as_secs_f64()
    );
    println!("  baseline, cat | ssh k3s ctr images import -, 4 in turn: {:>7.3} s", base.as_secs_f64());
    println!(
        "  ratio baseline / k3node at 4 nodes:                    {:>8.2}x  (target >= 3x)",
        base.as_secs_f64() / four.as_secs_f64()
    );
    println!("  re-run, everything present on 4 nodes (0 bytes sent):  {:>8.3} s  (target < 1 s)", rerun.as_secs_f64());
    drop(server);
}
