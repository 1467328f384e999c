//! Embedded etcd (HA servers), through k3s's own commands (contract section 6):
//! `k3s etcd-snapshot save` takes the snapshot, `k3s server --cluster-reset
//! --cluster-reset-restore-path=<file>` restores it.
//!
//! Invariants:
//! - The snapshot is taken into a private directory of k3node's (0700, `--dir`), so that the one
//!   file that appears there is the snapshot, whatever name k3s gives it
//!   (`<name>-<node>-<unix time>`), and k3s's own snapshot directory and retention are untouched.
//! - A snapshot is checked as etcd's restore checks it before anything relies on it: etcd appends
//!   the sha256 of the database to the snapshot ([`AppendedHash`]).
//! - The token never reaches a command line: the reset reads it from the restored
//!   `server/token` (`--token-file`).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::SnapshotError;
use crate::host::k3s::K3S_BIN;
use crate::host::system::{FileKind, HostSystem};

/// What k3s logs when a cluster reset is done (k3s's pkg/etcd/etcd.go, then it exits 0; older
/// releases said "Etcd is running, restart without --cluster-reset flag now").
pub const RESET_DONE: &str = "restart without --cluster-reset flag now";

/// The integrity hash etcd appends to a snapshot (etcdutl's snapshot restore checks the same): a
/// snapshot's size is a multiple of 512 (bbolt pages) plus 32, and its last 32 bytes are the
/// sha256 of everything before them. Fed the snapshot's bytes in order.
pub struct AppendedHash {
    size: u64,
    hasher: Sha256,
    /// The last 32 bytes seen so far: not hashed until more bytes follow them.
    tail: Vec<u8>,
}

const HASH_LEN: usize = 32;

impl AppendedHash {
    /// For a snapshot of `size` bytes.
    pub fn new(size: u64) -> Self {
        AppendedHash { size, hasher: Sha256::new(), tail: Vec::with_capacity(2 * HASH_LEN) }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        if bytes.len() >= HASH_LEN {
            self.hasher.update(&self.tail);
            let (body, tail) = bytes.split_at(bytes.len() - HASH_LEN);
            self.hasher.update(body);
            self.tail.clear();
            self.tail.extend_from_slice(tail);
        } else {
            self.tail.extend_from_slice(bytes);
            if self.tail.len() > HASH_LEN {
                let spill = self.tail.len() - HASH_LEN;
                self.hasher.update(&self.tail[..spill]);
                self.tail.drain(..spill);
            }
        }
    }

    /// Ok with a description, or why etcd's restore would refuse the snapshot.
    pub fn finish(self) -> Result<String, String> {
        if self.size % 512 != HASH_LEN as u64 {
            return Err(format!(
                "{} bytes is not an etcd snapshot with its integrity hash (etcd's restore refuses one without)",
                self.size
            ));
        }
        let actual = self.hasher.finalize();
        if actual.as_slice() != self.tail.as_slice() {
            return Err(format!(
                "etcd's integrity hash says {}, the database's sha256 is {}",
                hex::encode(&self.tail),
                hex::encode(actual)
            ));
        }
        Ok("etcd snapshot integrity hash: ok".to_string())
    }
}

/// Checks a snapshot file on the host as [`AppendedHash`] does.
pub fn check_file(sys: &dyn HostSystem, path: &Path) -> Result<String, SnapshotError> {
    let io_err = |source| SnapshotError::Io { what: "cannot read", path: path.to_path_buf(), source };
    let size = sys.file_size(path).map_err(io_err)?;
    let mut file = sys.open_read(path).map_err(io_err)?;
    let mut check = AppendedHash::new(size);
    let mut buf = vec![0u8; 1 << 17];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => check.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        }
    }
    check.finish().map_err(|why| SnapshotError::Datastore(format!("{}: {why}", path.display())))
}

/// `k3s etcd-snapshot save --name <name> --dir <dir>`: k3s asks the running server to take the
/// snapshot; returns the file it made in `dir` (which must be empty).
pub fn save(sys: &dyn HostSystem, dir: &Path, name: &str, timeout: Duration) -> Result<PathBuf, SnapshotError> {
    let dir_arg = dir.to_string_lossy().into_owned();
    let args = ["etcd-snapshot", "save", "--name", name, "--dir", dir_arg.as_str()];
    let out = sys.run_with(Path::new(K3S_BIN), &args, None, timeout).map_err(|e| {
        if e.kind() == io::ErrorKind::TimedOut {
            SnapshotError::Datastore(format!("k3s etcd-snapshot save did not finish within {} s", timeout.as_secs()))
        } else {
            SnapshotError::Datastore(format!("cannot run k3s etcd-snapshot save: {e}"))
        }
    })?;
    if !out.success() {
        return Err(SnapshotError::Datastore(format!(
            "k3s etcd-snapshot save failed: {} (is k3s running on this server?)",
            out.failure_summary()
        )));
    }
    let mut made = Vec::new();
    for name in sys.read_dir_names(dir).map_err(|e| SnapshotError::Io {
        what: "cannot list",
        path: dir.to_path_buf(),
        source: e,
    })? {
        let path = dir.join(&name);
        // etcdctl's `.part` while it writes; k3s's `.metadata` dir: neither is the snapshot.
        let is_file = sys.metadata(&path).is_ok_and(|m| m.kind == FileKind::File);
        if is_file && !name.starts_with('.') && !name.ends_with(".part") {
            made.push(path);
        }
    }
    match made.len() {
        1 => Ok(made.remove(0)),
        0 => Err(SnapshotError::Datastore(format!(
            "k3s etcd-snapshot save succeeded but left no snapshot in {}",
            dir.display()
        ))),
        _ => Err(SnapshotError::Datastore(format!(
            "k3s etcd-snapshot save left {} files in {}, expected one",
            made.len(),
            dir.display()
        ))),
    }
}

/// The arguments of `k3s server --cluster-reset` restoring `snapshot`, with the token read from
/// the restored `<data dir>/server/token`.
pub fn reset_args(snapshot: &Path, data_dir: &Path) -> Vec<String> {
    vec![
        "server".into(),
        "--cluster-reset".into(),
        format!("--cluster-reset-restore-path={}", snapshot.display()),
        format!("--token-file={}", data_dir.join("server/token").display()),
    ]
}

/// Runs the reset in the foreground (k3s exits once done) and checks it said so.
pub fn cluster_reset(
    sys: &dyn HostSystem,
    snapshot: &Path,
    data_dir: &Path,
    timeout: Duration,
) -> Result<(), SnapshotError> {
    let args = reset_args(snapshot, data_dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let shown = format!("k3s {}", args.join(" "));
    let out = sys.run_with(Path::new(K3S_BIN), &args, None, timeout).map_err(|e| {
        if e.kind() == io::ErrorKind::TimedOut {
            SnapshotError::Reset(format!("{shown} did not finish within {} s", timeout.as_secs()))
        } else {
            SnapshotError::Reset(format!("cannot run {shown}: {e}"))
        }
    })?;
    let said_done = out.stderr.contains(RESET_DONE) || out.stdout.contains(RESET_DONE);
    if out.success() && said_done {
        return Ok(());
    }
    let tail: Vec<&str> = out.stderr.lines().chain(out.stdout.lines()).filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(8)..].join("\n  ");
    let why =
        if out.success() { "exited without saying the reset was done".to_string() } else { out.failure_summary() };
    Err(SnapshotError::Reset(format!("{shown}: {why}; its last lines:\n  {tail}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::snapshot::testutil::fake_snapshot;

    fn check(bytes: &[u8], chunk: usize) -> Result<String, String> {
        let mut c = AppendedHash::new(bytes.len() as u64);
        for piece in bytes.chunks(chunk) {
            c.update(piece);
        }
        c.finish()
    }

    #[test]
    fn the_appended_hash_is_checked_however_the_bytes_arrive() {
        let snapshot = fake_snapshot(40, 3);
        for chunk in [1, 7, 31, 32, 33, 512, 4096, 1 << 20] {
            assert!(check(&snapshot, chunk).is_ok(), "chunks of {chunk}");
        }
        let mut flipped = snapshot.clone();
        flipped[1000] ^= 0x01;
        assert!(check(&flipped, 4096).unwrap_err().contains("integrity hash says"));
        let err = check(&snapshot[..snapshot.len() - 32], 4096).unwrap_err();
        assert!(err.contains("without"), "a snapshot without its hash: {err}");
    }

    #[test]
    fn a_real_etcd_snapshot_passes_the_check() {
        // etcd and etcdctl from Debian's etcd-server and etcd-client (the stand-in uses them too).
        for tool in ["etcd", "etcdctl"] {
            let pkg = if tool == "etcd" { "etcd-server" } else { "etcd-client" };
            assert!(
                crate::host::system::RealSystem::host().find_command(tool).is_some(),
                "{tool} is missing: apt-get install {pkg}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let port = 23790 + (std::process::id() % 200) as u16;
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{}", port + 1000);
        let mut etcd = std::process::Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let etcdctl = |args: &[&str]| {
            std::process::Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg("--endpoints")
                .arg(&client)
                .args(args)
                .output()
        };
        let mut up = false;
        for _ in 0..100 {
            if etcdctl(&["put", "/registry/k", "v"]).is_ok_and(|o| o.status.success()) {
                up = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let snapshot = dir.path().join("snap.db");
        let saved = up && etcdctl(&["snapshot", "save", snapshot.to_str().unwrap()]).is_ok_and(|o| o.status.success());
        let _ = etcd.kill();
        let _ = etcd.wait();
        assert!(saved, "etcd did not start or etcdctl snapshot save failed");
        let bytes = std::fs::read(&snapshot).unwrap();
        assert_eq!(check(&bytes, 1 << 16), Ok("etcd snapshot integrity hash: ok".to_string()));
    }
}
