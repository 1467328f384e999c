//! What snapshots need to know of, and do to, k3s on the host: its settings (data dir,
//! kubeconfig, `server`), its version, and its service (stop, restart, the node Ready).
//!
//! The settings are read as k3s reads them: config.yaml, then the drop-ins in name order, the
//! last value of a key winning; either from the host or from the files inside an archive (a
//! restore checks what k3s will run with before anything stops). The service is driven as
//! install does it: `systemctl restart` returns once k3s said READY=1 (Type=notify), then the
//! node must be Ready through `k3s kubectl`.
//!
//! The reading, the version and the Ready wait are host::k3s's own, shared with install.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::SnapshotError;
use crate::host::k3s::K3S_BIN;
use crate::host::system::{HostSystem, COMMAND_TIMEOUT};

/// The service a server runs as.
pub const SERVICE: &str = "k3s";
const JOURNAL_LINES: usize = 20;

/// k3s's settings as host::k3s reads them (data dir, kubeconfig, `server`, drop-ins).
pub(crate) use crate::host::k3s::config::Settings;

/// Settings from config.yaml's text and the drop-ins' (name, text), as k3s combines them.
pub fn settings_of(main: &str, dropins: &[(String, String)]) -> Result<Settings, String> {
    crate::host::k3s::config::from_texts(main, dropins).map_err(|e| e.0)
}

/// The host's settings (no config.yaml: the defaults).
pub fn on_host(sys: &dyn HostSystem) -> Result<Settings, SnapshotError> {
    crate::host::k3s::config::on_host(sys).map_err(|e| SnapshotError::Config(e.0))
}

/// `k3s --version` of the installed binary (`v1.31.4+k3s1`).
pub fn version(sys: &dyn HostSystem) -> Result<String, SnapshotError> {
    if !sys.exists(Path::new(K3S_BIN)) {
        return Err(SnapshotError::NotInstalled(format!("{K3S_BIN} is not installed")));
    }
    crate::host::k3s::installed_version(sys).map_err(SnapshotError::K3s)
}

fn systemctl(sys: &dyn HostSystem) -> Result<PathBuf, SnapshotError> {
    sys.find_command("systemctl")
        .ok_or_else(|| SnapshotError::NotInstalled("systemctl is not installed: k3s runs as a systemd service".into()))
}

/// `systemctl <args>`; a non-zero exit is an error naming the command.
pub fn run_systemctl(sys: &dyn HostSystem, args: &[&str], timeout: Duration) -> Result<(), SnapshotError> {
    let systemctl = systemctl(sys)?;
    let shown = format!("systemctl {}", args.join(" "));
    match sys.run_with(&systemctl, args, None, timeout) {
        Ok(out) if out.success() => Ok(()),
        Ok(out) => Err(SnapshotError::Service {
            what: format!("{shown} failed: {}", out.failure_summary()),
            timed_out: false,
            journal: journal(sys),
        }),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(SnapshotError::Service {
            what: format!("{shown} did not finish within {} s", timeout.as_secs()),
            timed_out: true,
            journal: journal(sys),
        }),
        Err(e) => Err(SnapshotError::Service {
            what: format!("cannot run {shown}: {e}"),
            timed_out: false,
            journal: Vec::new(),
        }),
    }
}

pub fn stop(sys: &dyn HostSystem) -> Result<(), SnapshotError> {
    run_systemctl(sys, &["stop", SERVICE], COMMAND_TIMEOUT.max(Duration::from_secs(120)))
}

/// `systemctl restart k3s`, then the node Ready, before `deadline_ms` on the system's clock.
pub fn start_and_wait(
    sys: &dyn HostSystem,
    settings: &Settings,
    node: &str,
    deadline_ms: i64,
    progress: &mut dyn FnMut(&str),
) -> Result<(), SnapshotError> {
    let remaining = || Duration::from_millis((deadline_ms - sys.now_unix_ms()).max(0) as u64);
    progress(&format!("restarting {SERVICE}"));
    run_systemctl(sys, &["restart", SERVICE], remaining().max(Duration::from_secs(1)))?;
    progress(&format!("waiting for node {node} to be Ready"));
    crate::host::k3s::wait_node_ready(sys, &settings.kubeconfig, node, deadline_ms).map_err(|why| {
        SnapshotError::Service {
            what: format!("node {node} was not Ready in time: {why}"),
            timed_out: true,
            journal: journal(sys),
        }
    })
}

/// The last lines of k3s's journal, for a failure; empty when journalctl is missing or fails.
fn journal(sys: &dyn HostSystem) -> Vec<String> {
    crate::host::k3s::systemd::journal_tail(sys, SERVICE, JOURNAL_LINES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::system::fake::FakeSystem;

    #[test]
    fn settings_follow_k3s_the_last_value_wins_and_errors_never_quote() {
        let dropins = vec![
            ("20-b.yaml".to_string(), "write-kubeconfig: /root/b.yaml\n".to_string()),
            ("10-a.yml".to_string(), "data-dir: /srv/a\nserver: https://10.0.0.1:6443\n".to_string()),
            ("notes.txt".to_string(), "data-dir: /ignored\n".to_string()),
        ];
        let s = settings_of("data-dir: /srv/k3s\ntoken: K10secret\n", &dropins).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/srv/a"));
        assert_eq!(s.kubeconfig, PathBuf::from("/root/b.yaml"));
        assert_eq!(s.server.as_deref(), Some("https://10.0.0.1:6443"));
        let err = settings_of("token: K10secret\n  bad: [\n", &[]).unwrap_err();
        assert!(err.contains("line") && !err.contains("K10secret"), "{err}");
        assert!(settings_of("data-dir: relative\n", &[]).unwrap_err().contains("absolute"));
        assert_eq!(settings_of("", &[]).unwrap().data_dir, PathBuf::from(crate::host::k3s::DEFAULT_DATA_DIR));
    }

    #[test]
    fn the_version_is_read_from_the_binary() {
        let sys = FakeSystem::new().file(K3S_BIN, "bin").output(
            K3S_BIN,
            &["--version"],
            0,
            "k3s version v1.31.4+k3s1 (a1b2c3d4)\ngo version go1.22.9\n",
            "",
        );
        assert_eq!(version(&sys).unwrap(), "v1.31.4+k3s1");
        let missing = version(&FakeSystem::new()).unwrap_err().to_string();
        assert!(missing.contains("not installed"), "{missing}");
    }
}
