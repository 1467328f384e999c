//! Benchmark: snapshot and restore of a server with about 1 GiB of datastore (plus its
//! certificates and manifests), on a lab host running the k3s stand-in, measured in the same run
//! as the seed's steps and as the limit:
//! - `k3node snapshot create` against `tar czf` of the same files (target: at least 3x faster, no
//!   larger), and against the limit: reading those files and zstd-compressing them (k3node's
//!   level and threads) to /dev/null (target: within 1.5x);
//! - `k3node restore` of an archive on the server itself (everything it checks included: the
//!   archive's sha256 against its sidecar in the archive phase, then the archive read in full
//!   once before k3s stops, by the check, which stages every file beside k3s's and checks the
//!   database's integrity where it is staged; then k3s stopped, its data moved aside and the
//!   staged data in, started, the node Ready) against the seed's
//!   `systemctl stop k3s; tar xzf; systemctl start k3s`, and against the limit: reading the
//!   archive and decompressing it to /dev/null (and, printed beside it, the same with the files
//!   written beside k3s's and synced to disk, which any restore has to do);
//! - k3s's downtime before its start: the host's stop and swap steps against the seed's
//!   `systemctl stop k3s; tar xzf`.
//!
//! The datastore is made quickly: k3s stopped, rows of kine's table appended with SQLite in one
//! transaction (JSON objects like a cluster's, half of each filled with random text so that it
//! compresses as real data does), k3s started again on it.
//!
//! The host's /var/lib/rancher is on the machine's filesystem (`LabSpec::own_disk`), as k3s's data
//! is on a server's disk: the host's overlay root would not write like it.
//!
//! Run: `cargo bench --bench snapshot` as root (it builds a one-host lab of tests/lab).
//! `K3NODE_SNAPSHOT_MIB` sets the datastore's size (default 1024).

#[path = "../tests/lab/mirror.rs"]
mod mirror;
#[path = "../tests/lab/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use support::{Lab, LabHost, LabSpec};

const K3NODE: &str = env!("CARGO_BIN_EXE_k3node");
/// What a snapshot holds, below the host's root (the seed's tar takes the same).
const FILES: &[&str] = &[
    "var/lib/rancher/k3s/server/token",
    "var/lib/rancher/k3s/server/tls",
    "var/lib/rancher/k3s/server/cred",
    "var/lib/rancher/k3s/server/manifests",
    "var/lib/rancher/k3s/server/db",
    "etc/rancher/k3s",
    "etc/rancher/node",
];

struct Bench {
    lab: std::sync::Arc<Lab>,
    home: PathBuf,
}

impl Bench {
    fn k3node(&self, args: &[&str]) -> Output {
        self.lab.command_in_netns(Path::new(K3NODE)).args(args).env("HOME", &self.home).output().expect("k3node")
    }

    fn json(&self, label: &str, args: &[&str]) -> (Duration, serde_json::Value) {
        let started = Instant::now();
        let out = self.k3node(args);
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "{label} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (took, serde_json::from_slice(&out.stdout).unwrap_or_default())
    }

    fn sh(&self, h: &LabHost, command: &str) -> Duration {
        let started = Instant::now();
        let out = h.sh(command);
        assert!(out.is_ok(), "{command}: {:#}", out.unwrap_err());
        started.elapsed()
    }
}

fn phase_secs(json: &serde_json::Value, name: &str) -> f64 {
    json["phases"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == name))
        .and_then(|p| p["elapsed"].as_f64())
        .unwrap_or(0.0)
}

/// Appends about `mib` MiB of kine rows (distinct keys: compaction keeps them) to the database.
fn grow(db: &Path, mib: u64) {
    const ROW: usize = 64 << 10;
    let conn = rusqlite::Connection::open(db).expect("the stand-in's state.db opens");
    conn.execute_batch("PRAGMA journal_mode=WAL; BEGIN").unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut random_text = |n: usize| {
        let mut s = String::with_capacity(n);
        while s.len() < n {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            s.push_str(&format!("{seed:016x}"));
        }
        s.truncate(n);
        s
    };
    let rows = (mib << 20) as usize / ROW;
    {
        let mut insert = conn
            .prepare("INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value) VALUES (?1, 1, 0, 0, 0, 0, ?2, NULL)")
            .unwrap();
        for i in 0..rows {
            let name = format!("/registry/configmaps/bench/data-{i:06}");
            let filler =
                "kind ConfigMap apiVersion v1 metadata namespace bench labels app bench tier data config.yaml ";
            let mut value = format!(
                "{{\"metadata\":{{\"name\":\"data-{i:06}\",\"uid\":\"{}\"}},\"data\":{{\"blob\":\"{}\",\"text\":\"",
                random_text(32),
                random_text(ROW / 2)
            );
            while value.len() < ROW - 4 {
                value.push_str(filler);
            }
            value.truncate(ROW - 4);
            value.push_str("\"}}");
            insert.execute(rusqlite::params![name, value.as_bytes()]).unwrap();
        }
    }
    conn.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
}

/// Bytes of what a snapshot holds, as the limit reads them.
fn tar_of_files(root: &Path) -> tar::Builder<zstd::stream::write::Encoder<'static, Counting>> {
    let mut encoder = zstd::stream::write::Encoder::new(Counting(0), zstd::DEFAULT_COMPRESSION_LEVEL).unwrap();
    encoder.include_checksum(true).unwrap();
    let workers = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    encoder.multithread(workers).unwrap();
    let mut tar = tar::Builder::new(encoder);
    for f in FILES {
        let path = root.join(f);
        if path.is_dir() {
            tar.append_dir_all(f, &path).unwrap();
        } else if path.is_file() {
            tar.append_path_with_name(&path, f).unwrap();
        }
    }
    tar
}

/// A sink that counts what it is given.
struct Counting(u64);

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every contender starts from written-back files (the page cache is left as it is: the machine
/// is shared, and each contender finds the files it reads cached alike).
fn write_back() {
    let _ = std::process::Command::new("sync").status();
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let size: u64 = std::env::var("K3NODE_SNAPSHOT_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    // k3s's data on the machine's filesystem, as on a server's disk, not on the host's overlay.
    let spec = LabSpec { own_disk: vec!["/var/lib/rancher".into()], ..LabSpec::new(&["h1"]) };
    let lab = std::sync::Arc::new(Lab::start(spec).unwrap_or_else(|e| {
        eprintln!("snapshot bench: cannot build the lab: {e:#}");
        std::process::exit(1);
    }));
    let h1 = lab.host("h1");
    let home = lab.dir().join("bench-snapshot");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let known_hosts = home.join(".ssh/known_hosts");
    std::fs::write(&known_hosts, lab.known_hosts_line(h1) + "\n").unwrap();
    let server = mirror::Mirror::start(&lab);
    mirror::publish(&server.root, mirror::VERSION, &mirror::release_binary(mirror::VERSION));
    let b = Bench { lab: lab.clone(), home: home.clone() };
    let file = home.join("cluster.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: bench\nspec:\n  ssh:\n    keyPath: {}\n    knownHosts: {}\n  hosts:\n    - name: h1\n      address: {}\n      role: server\n  k3s:\n    version: {}\n    source:\n      mirror: {}\n",
            lab.client_key().display(),
            known_hosts.display(),
            h1.address,
            mirror::VERSION,
            server.url()
        ),
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let _ = b.k3node(&["preflight", "-c", config, "--fix"]);
    b.json("up", &["up", "-c", config, "-o", "json", "--ready-timeout", "120"]);

    eprintln!("snapshot bench: growing the datastore to about {size} MiB");
    b.sh(h1, "systemctl stop k3s");
    let db = h1.root.join("var/lib/rancher/k3s/server/db/state.db");
    grow(&db, size);
    let manifests = h1.root.join("var/lib/rancher/k3s/server/manifests");
    for i in 0..20 {
        let text = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bench-{i}\n  namespace: default\ndata:\n  k: \"{}\"\n",
            "v".repeat(20_000)
        );
        std::fs::write(manifests.join(format!("bench-{i}.yaml")), text).unwrap();
    }
    b.sh(h1, "systemctl start k3s");
    let db_bytes = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    let files_bytes: u64 = FILES
        .iter()
        .map(|f| {
            let p = h1.root.join(f);
            walk_size(&p)
        })
        .sum();

    // Create: k3node, the seed's tar czf, the limit.
    write_back();
    let (create, json) = b.json("snapshot create", &["snapshot", "create", "-c", config, "-o", "json"]);
    let create_host = phase_secs(&json, "create");
    let name = json["snapshots"][0]["name"].as_str().unwrap().to_string();
    let archive_bytes = json["snapshots"][0]["size"].as_u64().unwrap_or(0);
    write_back();
    let list = FILES.join(" ");
    let seed_create =
        b.sh(h1, &format!("tar czf /var/tmp/seed.tgz --ignore-failed-read -C / {list} 2>/dev/null || [ $? -eq 1 ]"));
    let tgz_bytes = std::fs::metadata(h1.root.join("var/tmp/seed.tgz")).map(|m| m.len()).unwrap_or(0);
    write_back();
    let started = Instant::now();
    let tar = tar_of_files(&h1.root);
    let counted = tar.into_inner().unwrap().finish().unwrap().0;
    let create_limit = started.elapsed();

    // Restore: k3node, the seed's stop + tar xzf + start, the limit.
    write_back();
    let (restore, json) = b.json(
        "restore",
        &["restore", "-c", config, "--from", &format!("h1:{name}"), "--yes", "-o", "json", "--ready-timeout", "300"],
    );
    let restore_host = phase_secs(&json, "restore");
    let check_host = phase_secs(&json, "check");
    let archive_phase = phase_secs(&json, "archive");
    // The host's own time per step: k3s's start (the same work for both sides) apart.
    let step_secs = |name: &str| {
        let steps = json["restore"]["timings"].as_array().into_iter().chain(json["restore"]["staging"].as_array());
        steps
            .flatten()
            .find(|t| t["step"] == name)
            .and_then(|t| t["millis"].as_u64())
            .map(|ms| ms as f64 / 1000.0)
            .unwrap_or(0.0)
    };
    let (start_host, stage_host) =
        (step_secs("start k3s and wait for the node"), step_secs("verify and stage the archive"));
    // k3s down until its start: what the seed's `systemctl stop k3s && tar xzf` is beside.
    let down_host = step_secs("stop k3s") + step_secs("move the current data aside and the staged data in");
    // What the restore moved aside is not needed by the figures: the disk is.
    b.sh(h1, "rm -rf /var/lib/rancher/k3s/server.k3node-restore-* /etc/rancher/k3s.k3node-restore-* /etc/rancher/node.k3node-restore-* /etc/systemd/system/k3s.service.env.k3node-restore-*");
    write_back();
    let seed_unpack = b.sh(h1, "systemctl stop k3s && tar xzf /var/tmp/seed.tgz -C /");
    let seed_start = b.sh(h1, "systemctl start k3s");
    let seed_restore = seed_unpack + seed_start;
    b.sh(h1, "rm -f /var/tmp/seed.tgz");
    write_back();
    let archive = h1.root.join(format!("var/lib/rancher/k3node/snapshots/{name}.tar.zst"));
    let started = Instant::now();
    let mut decoder = zstd::stream::read::Decoder::new(std::fs::File::open(&archive).unwrap()).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut out = 0u64;
    loop {
        let n = decoder.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out += n as u64;
    }
    let restore_limit = started.elapsed();
    // The same with the files written where k3s's are, and on disk: what any restore must do, no
    // hash, no check, nothing staged.
    let unpack_into = h1.root.join("var/lib/rancher/k3node/bench-limit-unpack");
    write_back();
    let started = Instant::now();
    let decoder = zstd::stream::read::Decoder::new(std::fs::File::open(&archive).unwrap()).unwrap();
    tar::Archive::new(decoder).unpack(&unpack_into).unwrap();
    let synced = std::process::Command::new("sync").arg("-f").arg(&unpack_into).status().unwrap();
    assert!(synced.success(), "sync -f {}", unpack_into.display());
    let restore_write_limit = started.elapsed();
    std::fs::remove_dir_all(&unpack_into).unwrap();
    drop(server);

    let s = |d: Duration| d.as_secs_f64();
    println!("snapshot benchmark, one lab host running the k3s stand-in, same run:");
    println!("  datastore {:.0} MiB; everything a snapshot holds {:.0} MiB", mib(db_bytes), mib(files_bytes));
    println!("  create:");
    println!(
        "    k3node snapshot create (command)              {:>8.2} s  (on the host: {create_host:.2} s)",
        s(create)
    );
    println!("    seed: tar czf of the same files               {:>8.2} s", s(seed_create));
    println!(
        "    limit: read + zstd to /dev/null               {:>8.2} s  ({:.0} MiB out)",
        s(create_limit),
        mib(counted)
    );
    println!("    speedup over the seed                         {:>8.2}x  (target >= 3x)", s(seed_create) / s(create));
    println!(
        "    size: archive {:.0} MiB, seed tgz {:.0} MiB         {:>8.2}   (target <= 1)",
        mib(archive_bytes),
        mib(tgz_bytes),
        archive_bytes as f64 / tgz_bytes.max(1) as f64
    );
    println!(
        "    command / limit                               {:>8.2}x  (target <= 1.5x)",
        s(create) / s(create_limit)
    );
    println!("  restore:");
    println!(
        "    k3node restore (command)                      {:>8.2} s  (phases: archive {archive_phase:.2} s, check {check_host:.2} s, restore {restore_host:.2} s)",
        s(restore)
    );
    println!("    seed: stop k3s, tar xzf, start k3s            {:>8.2} s", s(seed_restore));
    println!(
        "    limit: read + zstd -d to /dev/null            {:>8.2} s  ({:.0} MiB out)",
        s(restore_limit),
        mib(out)
    );
    println!(
        "    speedup over the seed                         {:>8.2}x  (target >= 3x)",
        s(seed_restore) / s(restore)
    );
    println!(
        "    command / limit                               {:>8.2}x  (target <= 1.5x)",
        s(restore) / s(restore_limit)
    );
    let without_start = s(restore) - start_host;
    println!("  restore without k3s's start (k3node's host timings; the seed's start timed apart):");
    println!(
        "    k3node restore minus its start step           {:>8.2} s  (start {start_host:.2} s; verify-and-stage step {stage_host:.2} s)",
        without_start
    );
    println!(
        "    seed: stop k3s, tar xzf                       {:>8.2} s  (start {:.2} s)",
        s(seed_unpack),
        s(seed_start)
    );
    println!(
        "    speedup over the seed                         {:>8.2}x  (target >= 3x)",
        s(seed_unpack) / without_start
    );
    println!(
        "    verify-and-stage step / limit                 {:>8.2}x  (target <= 1.5x; the step also checks the database's integrity)",
        stage_host / s(restore_limit)
    );
    println!(
        "    limit with the writes: zstd -d, untar, sync   {:>8.2} s  (beside k3s's files, on the same disk)",
        s(restore_write_limit)
    );
    println!(
        "    verify-and-stage step / that limit            {:>8.2}x  (the step also hashes every file and checks the database)",
        stage_host / s(restore_write_limit)
    );
    println!("  k3s's downtime before its start (k3node: the host's stop and swap steps; the archive was verified and staged before):");
    println!("    k3node                                        {down_host:>8.2} s");
    println!("    seed: stop k3s, tar xzf                       {:>8.2} s", s(seed_unpack));
    println!("    speedup over the seed                         {:>8.2}x  (target >= 3x)", s(seed_unpack) / down_host);
}

fn walk_size(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            std::fs::read_dir(path).map(|rd| rd.filter_map(|e| e.ok()).map(|e| walk_size(&e.path())).sum()).unwrap_or(0)
        }
        Ok(m) if m.is_file() => m.len(),
        _ => 0,
    }
}
