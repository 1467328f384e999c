//! Benchmark: a 2 GiB file through the helper, each way, over SSH to one lab host.
//! - upload (`receive-file`, framed, verified on the host) and download (`send-file`, framed,
//!   verified here; sent as a snapshot is, with its sha256 known so that only this side hashes
//!   it, and, on an extra line, hashed by the host as well), next to `cat file | ssh host 'cat > f'` and `ssh host 'cat f' > file`
//!   measured in the same run, each the median of 3 starting from a synced page cache (target: at
//!   least 0.8x of their throughput);
//! - peak RSS of the operator process and of the host's helper process (target: under 64 MiB each).
//!
//! The operator side runs as a child process of this benchmark (the same executable, told so by
//! an environment variable), so that its peak RSS is its own (/proc/self/status VmHWM). The
//! helper's peak is read from /proc while it runs (the lab hosts' processes are visible from here).
//!
//! Run: `cargo bench --bench transfer` as root (it builds a one-host lab of tests/lab).
//! `K3NODE_TRANSFER_MIB` sets the size (default 2048), `K3NODE_TRANSFER_RUNS` the runs (default 3).

#[path = "../tests/lab/support/mod.rs"]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Lab, LabSpec};

const K3NODE: &str = env!("CARGO_BIN_EXE_k3node");
const CHILD: &str = "K3NODE_TRANSFER_CHILD";
const REMOTE: &str = "/var/tmp/k3node-transfer.bin";
/// Each transfer is measured this many times (`K3NODE_TRANSFER_RUNS` for more), alternating with
/// its baseline; medians are printed.
const RUNS: usize = 3;

fn main() {
    if let Ok(mode) = std::env::var(CHILD) {
        return child(&mode);
    }
    let mib: u64 = std::env::var("K3NODE_TRANSFER_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(2048);
    let lab = Arc::new(Lab::start(LabSpec { hosts: vec!["h1".into()], ..LabSpec::default() }).unwrap_or_else(|e| {
        eprintln!("transfer bench: cannot build the lab: {e:#}");
        std::process::exit(1);
    }));
    let h1 = lab.host("h1");
    let home = lab.dir().join("operators/transfer");
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let known_hosts = home.join(".ssh/known_hosts");
    std::fs::write(&known_hosts, lab.known_hosts_line(h1) + "\n").unwrap();

    let source = home.join("source.bin");
    eprintln!("transfer bench: writing {mib} MiB of random data");
    write_random(&source, mib << 20);
    let size = mib << 20;
    let back = home.join("back.bin");

    let ssh = |command: &str, stdin: Option<&Path>, stdout: Option<&Path>| -> Duration {
        let mut cmd = lab.command_in_netns(Path::new("ssh"));
        cmd.args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i"])
            .arg(lab.client_key())
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .arg(format!("root@{}", h1.address))
            .arg(command);
        if let Some(path) = stdin {
            cmd.stdin(std::fs::File::open(path).unwrap());
        }
        if let Some(path) = stdout {
            cmd.stdout(std::fs::File::create(path).unwrap());
        }
        let started = Instant::now();
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "ssh {command}: {}", String::from_utf8_lossy(&out.stderr));
        started.elapsed()
    };
    let run_child = |mode: &str, helper: &AtomicU64| -> (Duration, u64) {
        let watching = Arc::new(AtomicBool::new(true));
        let peak = Arc::new(AtomicU64::new(0));
        let watcher = {
            let (watching, peak, op) =
                (watching.clone(), peak.clone(), if mode == "upload" { "receive-file" } else { "send-file" });
            std::thread::spawn(move || {
                while watching.load(Ordering::Relaxed) {
                    peak.fetch_max(helper_hwm_kib(op), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let started = Instant::now();
        let out: Output = lab
            .command_in_netns(&std::env::current_exe().unwrap())
            .env(CHILD, mode)
            .env("K3NODE_TRANSFER_ADDRESS", h1.address.to_string())
            .env("K3NODE_TRANSFER_KEY", lab.client_key())
            .env("K3NODE_TRANSFER_KNOWN_HOSTS", &known_hosts)
            .env("K3NODE_TRANSFER_SOURCE", &source)
            .env("K3NODE_TRANSFER_BACK", &back)
            .output()
            .unwrap();
        let took = started.elapsed();
        watching.store(false, Ordering::Relaxed);
        watcher.join().unwrap();
        assert!(out.status.success(), "{mode}: {}", String::from_utf8_lossy(&out.stderr));
        helper.store(peak.load(Ordering::Relaxed), Ordering::Relaxed);
        // The child prints the transfer's own time and its peak RSS.
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut words = text.split_whitespace();
        let transfer: f64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(took.as_secs_f64());
        let operator_kib: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        (Duration::from_secs_f64(transfer), operator_kib)
    };

    // Warm up the helper install (not measured) and the page cache for the source.
    let helper_peak = AtomicU64::new(0);
    let _ = run_child("hello", &helper_peak);
    let _ = std::fs::read(&source).map(|_| ());

    let mib_s = |d: Duration| size as f64 / (1 << 20) as f64 / d.as_secs_f64();
    // Every transfer starts from the same state: no destination file, and no dirty pages left by
    // the one before (the lab hosts share this kernel), whose writeback would slow the next one.
    // A download starts with the host's file in its page cache (read once): the lab hosts share
    // this machine's memory, and whether an earlier run's pages are still cached otherwise decides
    // between disk and memory speed, not what is measured.
    let settle = |remove_remote: bool| {
        match remove_remote {
            true => ssh(&format!("rm -f {REMOTE}"), None, None),
            false => ssh(&format!("cat {REMOTE} > /dev/null"), None, None),
        };
        let _ = std::fs::remove_file(&back);
        assert!(std::process::Command::new("sync").status().unwrap().success());
    };
    let median = |mut runs: Vec<Duration>| {
        runs.sort();
        runs[runs.len() / 2]
    };
    let (mut ssh_ups, mut k_ups, mut ssh_downs, mut k_downs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut hashed_downs = Vec::new();
    let mut synced_ups = Vec::new();
    let (mut op_up, mut op_down, mut helper_up, mut helper_down) = (0, 0, 0, 0);
    let runs: usize = std::env::var("K3NODE_TRANSFER_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(RUNS);
    // Each run takes the transfers of a direction in another order, so that whatever a transfer
    // leaves behind for the next (writeback, reclaimed page cache) does not favour one of them.
    for run in 0..runs {
        for turn in 0..3 {
            settle(true);
            match (run + turn) % 3 {
                0 => ssh_ups.push(ssh(&format!("cat > {REMOTE}"), Some(&source), None)),
                // What the helper guarantees (on disk before it is in place) costs a flush the plain copy skips.
                1 => synced_ups.push(ssh(&format!("cat > {REMOTE} && sync {REMOTE}"), Some(&source), None)),
                _ => {
                    let (took, op) = run_child("upload", &helper_peak);
                    k_ups.push(took);
                    op_up = op_up.max(op);
                    helper_up = helper_up.max(helper_peak.load(Ordering::Relaxed));
                }
            }
        }
        for turn in 0..3 {
            settle(false);
            let (downs, mode) = match (run + turn) % 3 {
                0 => {
                    ssh_downs.push(ssh(&format!("cat {REMOTE}"), None, Some(&back)));
                    continue;
                }
                1 => (&mut k_downs, "download"),
                _ => (&mut hashed_downs, "download-hashed"),
            };
            let (took, op) = run_child(mode, &helper_peak);
            downs.push(took);
            op_down = op_down.max(op);
            helper_down = helper_down.max(helper_peak.load(Ordering::Relaxed));
        }
    }
    let hashed_down = median(hashed_downs);
    let (ssh_up, k_up, ssh_down, k_down) = (median(ssh_ups), median(k_ups), median(ssh_downs), median(k_downs));
    let synced_up = median(synced_ups);
    let same = std::fs::metadata(&back).map(|m| m.len()).unwrap_or(0) == size;
    let _ = ssh(&format!("rm -f {REMOTE}"), None, None);
    let _ = std::fs::remove_file(&source);
    let _ = std::fs::remove_file(&back);

    println!("transfer of {mib} MiB over SSH to one lab host, median of {runs} (same run, same machine)");
    println!(
        "| direction | cat + ssh | k3node helper | ratio (>= 0.8) | operator peak RSS | helper peak RSS (< 64 MiB) |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| upload | {:.1} MiB/s | {:.1} MiB/s | {:.2} | {:.1} MiB | {:.1} MiB |",
        mib_s(ssh_up),
        mib_s(k_up),
        mib_s(k_up) / mib_s(ssh_up),
        op_up as f64 / 1024.0,
        helper_up as f64 / 1024.0
    );
    println!(
        "| download | {:.1} MiB/s | {:.1} MiB/s | {:.2} | {:.1} MiB | {:.1} MiB |",
        mib_s(ssh_down),
        mib_s(k_down),
        mib_s(k_down) / mib_s(ssh_down),
        op_down as f64 / 1024.0,
        helper_down as f64 / 1024.0
    );
    println!(
        "download of a file without a recorded sha256 (hashed by the host as well): {:.1} MiB/s, ratio {:.2}",
        mib_s(hashed_down),
        mib_s(hashed_down) / mib_s(ssh_down)
    );
    println!(
        "upload next to `cat > f && sync f` (the same durability as the helper's): {:.1} MiB/s, ratio {:.2}",
        mib_s(synced_up),
        mib_s(k_up) / mib_s(synced_up)
    );
    assert!(same, "the downloaded file has the wrong size");
}

/// 1 MiB of random bytes repeated with a counter mixed in: incompressible enough, cheap to make.
fn write_random(path: &Path, size: u64) {
    let mut block = vec![0u8; 1 << 20];
    let mut state: u64 = 0x9e3779b97f4a7c15;
    for b in block.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *b = state as u8;
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..size >> 20 {
        block[..8].copy_from_slice(&i.to_le_bytes());
        out.write_all(&block).unwrap();
    }
    out.flush().unwrap();
}

/// The largest VmHWM (KiB) of a running `k3node host <op>` process, 0 when none runs.
fn helper_hwm_kib(op: &str) -> u64 {
    let mut peak = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_helper =
            args.len() >= 3 && args[args.len() - 3..].iter().any(|a| *a == b"host") && args.contains(&op.as_bytes());
        if is_helper {
            peak = peak.max(status_kib(&entry.path().join("status"), "VmHWM:"));
        }
    }
    peak
}

fn status_kib(path: &Path, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The operator side: connects, makes the helper current, moves the file, prints its own peak RSS.
fn child(mode: &str) {
    use k3node::operator::bootstrap::{connect_helper, Helpers, Placement, SelfBinary};
    use k3node::operator::link::Link;
    use k3node::protocol::files::{Compression, ReceiveFile, SendFile};
    use k3node::transport::{ConnectOptions, Endpoint, HostKeyPolicy, Keyring, Session};

    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"));
    let key = PathBuf::from(var("K3NODE_TRANSFER_KEY"));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let took = rt.block_on(async {
        let endpoint = Endpoint {
            host: "h1".into(),
            address: var("K3NODE_TRANSFER_ADDRESS"),
            port: 22,
            user: "root".into(),
            identity_files: vec![key.clone()],
            jump: None,
        };
        let options = ConnectOptions {
            known_hosts: var("K3NODE_TRANSFER_KNOWN_HOSTS").into(),
            host_key_policy: HostKeyPolicy::Strict,
            use_agent: false,
            ..Default::default()
        };
        let keyring = Keyring::load(&[key], &[]).unwrap();
        let session = Session::connect(&endpoint, &options, &keyring).await.unwrap();
        let (sha256, _) = k3node::digest::sha256_file(Path::new(K3NODE)).unwrap();
        let me = Helpers::only(SelfBinary { path: K3NODE.into(), sha256, arch: "amd64".into() });
        let (link, _) = connect_helper(session, &me, Placement::Installed).await.unwrap();
        let link = Link::new(Arc::new(link));
        let source = PathBuf::from(var("K3NODE_TRANSFER_SOURCE"));
        let mut took = Duration::ZERO;
        match mode {
            "upload" => {
                let (sha256, size) = k3node::digest::sha256_file_async(&source).await.unwrap();
                let mut file = tokio::fs::File::open(&source).await.unwrap();
                let request = ReceiveFile {
                    path: REMOTE.into(),
                    size,
                    sha256: sha256.clone(),
                    mode: 0o600,
                    compression: Compression::None,
                };
                // The transfer alone: the file's sha256 is known before an upload starts (from the
                // release's checksums, or the archive's manifest).
                let started = Instant::now();
                link.call(&request).upload_verified(&mut file, size, &sha256).send().await.unwrap();
                took = started.elapsed();
            }
            "download" | "download-hashed" => {
                // As a snapshot pull sends an archive: its sha256 (recorded beside it) is known, the
                // host does not hash it again, this side hashes what arrives and checks it.
                // `download-hashed`: a file without a recorded sha256, hashed on both sides.
                let sha256 = match mode {
                    "download" => Some(k3node::digest::sha256_file_async(&source).await.unwrap().0),
                    _ => None,
                };
                let mut out = tokio::fs::File::create(var("K3NODE_TRANSFER_BACK")).await.unwrap();
                let started = Instant::now();
                link.call(&SendFile { path: REMOTE.into(), sha256 }).download(&mut out).send().await.unwrap();
                tokio::io::AsyncWriteExt::flush(&mut out).await.unwrap();
                took = started.elapsed();
            }
            _ => {}
        }
        link.close().await;
        took
    });
    println!("{} {}", took.as_secs_f64(), status_kib(Path::new("/proc/self/status"), "VmHWM:"));
}
