//! What snapshots need to know of, and do to, k3s on the host: its settings (data dir,
//! kubeconfig, `server`), its version, and its service (stop, restart, the node Ready).
//!
//! The settings are read as k3s reads them: config.yaml, then the drop-ins in name order, the
//! last value of a key winning; either from the host or from the files inside an archive (a
//! restore checks what k3s will run with before anything stops). The service is driven as
//! install does it: `systemctl restart` returns once k3s said READY=1 (Type=notify), then the
//! node must be Ready through `k3s kubectl`.
//!
//! (host::k3s reads config.yaml and drives systemd the same way, in modules private to it; see
//! the report that came with this module about sharing them.)

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::SnapshotError;
use crate::host::k3s::{CONFIG_DROPIN_DIR, CONFIG_FILE, DEFAULT_DATA_DIR, DEFAULT_KUBECONFIG, K3S_BIN};
use crate::host::system::{HostSystem, COMMAND_TIMEOUT};
use crate::protocol::node::Readiness;

/// The service a server runs as.
pub const SERVICE: &str = "k3s";
const POLL_INTERVAL: Duration = Duration::from_millis(250);
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(10);
const JOURNAL_LINES: &str = "20";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub kubeconfig: PathBuf,
    /// `server:`: the URL this server joined through, when it joined another.
    pub server: Option<String>,
}

/// Settings from config.yaml's text and the drop-ins' (name, text), as k3s combines them.
pub fn settings_of(main: &str, dropins: &[(String, String)]) -> Result<Settings, String> {
    let mut settings = Settings {
        data_dir: PathBuf::from(DEFAULT_DATA_DIR),
        kubeconfig: PathBuf::from(DEFAULT_KUBECONFIG),
        server: None,
    };
    let mut files = vec![(CONFIG_FILE.to_string(), main)];
    let mut sorted: Vec<&(String, String)> =
        dropins.iter().filter(|(n, _)| n.ends_with(".yaml") || n.ends_with(".yml")).collect();
    sorted.sort();
    files.extend(sorted.into_iter().map(|(n, t)| (format!("{CONFIG_DROPIN_DIR}/{n}"), t.as_str())));
    for (path, text) in files {
        // The parser's message can quote the file, which may hold a token: only the position is kept.
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| match e.location() {
            Some(at) => format!("{path} is not valid YAML (line {}, column {})", at.line(), at.column()),
            None => format!("{path} is not valid YAML"),
        })?;
        let map = match value {
            serde_yaml_ng::Value::Mapping(map) => map,
            serde_yaml_ng::Value::Null => continue,
            _ => return Err(format!("{path} is not a YAML mapping of k3s settings")),
        };
        let text_of = |key: &str| -> Result<Option<String>, String> {
            match map.get(key) {
                None | Some(serde_yaml_ng::Value::Null) => Ok(None),
                Some(serde_yaml_ng::Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(_) => Err(format!("{path}: {key} must be a non-empty string")),
            }
        };
        let absolute = |key: &str, value: String| -> Result<PathBuf, String> {
            let p = PathBuf::from(&value);
            if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(format!("{path}: {key} must be an absolute path without `..`, not {value:?}"));
            }
            Ok(p)
        };
        if let Some(dir) = text_of("data-dir")? {
            settings.data_dir = absolute("data-dir", dir)?;
        }
        if let Some(file) = text_of("write-kubeconfig")? {
            settings.kubeconfig = absolute("write-kubeconfig", file)?;
        }
        if let Some(server) = text_of("server")? {
            settings.server = Some(server);
        }
    }
    Ok(settings)
}

/// The host's settings (no config.yaml: the defaults).
pub fn on_host(sys: &dyn HostSystem) -> Result<Settings, SnapshotError> {
    let read = |path: &Path| match sys.read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SnapshotError::Io { what: "cannot read", path: path.to_path_buf(), source }),
    };
    let main = read(Path::new(CONFIG_FILE))?.unwrap_or_default();
    let mut dropins = Vec::new();
    for name in sys.read_dir_names(Path::new(CONFIG_DROPIN_DIR)).unwrap_or_default() {
        if let Some(text) = read(&Path::new(CONFIG_DROPIN_DIR).join(&name))? {
            dropins.push((name, text));
        }
    }
    settings_of(&main, &dropins).map_err(SnapshotError::Config)
}

/// `k3s --version` of the installed binary (`v1.31.4+k3s1`).
pub fn version(sys: &dyn HostSystem) -> Result<String, SnapshotError> {
    if !sys.exists(Path::new(K3S_BIN)) {
        return Err(SnapshotError::NotInstalled(format!("{K3S_BIN} is not installed")));
    }
    let out = sys
        .run(Path::new(K3S_BIN), &["--version"])
        .map_err(|e| SnapshotError::K3s(format!("cannot run {K3S_BIN} --version: {e}")))?;
    if !out.success() {
        return Err(SnapshotError::K3s(format!("{K3S_BIN} --version failed: {}", out.failure_summary())));
    }
    // `k3s version v1.31.4+k3s1 (a1b2c3d4)`
    let line = out.stdout.lines().next().unwrap_or_default();
    let mut words = line.split_whitespace();
    words
        .by_ref()
        .find(|w| *w == "version")
        .and_then(|_| words.next())
        .filter(|v| v.starts_with('v'))
        .map(str::to_string)
        .ok_or_else(|| SnapshotError::K3s(format!("{K3S_BIN} --version printed no k3s version: {line:?}")))
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
    let kubeconfig = settings.kubeconfig.to_string_lossy().into_owned();
    let mut args = vec!["kubectl"];
    if settings.kubeconfig != Path::new(DEFAULT_KUBECONFIG) {
        args.extend(["--kubeconfig", kubeconfig.as_str()]);
    }
    args.extend(["get", "node", node, "-o", "json"]);
    loop {
        let timeout = remaining().clamp(Duration::from_secs(1), KUBECTL_TIMEOUT);
        let why = match sys.run_with(Path::new(K3S_BIN), &args, None, timeout) {
            Ok(out) if out.success() => match serde_json::from_str::<serde_json::Value>(&out.stdout) {
                Ok(json) => match Readiness::of(&json) {
                    Readiness::Ready => return Ok(()),
                    Readiness::NotReady(why) => why,
                    Readiness::Unreported => "the node has no Ready condition yet".to_string(),
                },
                Err(_) => "k3s kubectl get node printed no JSON".to_string(),
            },
            Ok(out) => format!("k3s kubectl get node: {}", out.failure_summary()),
            Err(e) => format!("k3s kubectl: {e}"),
        };
        if sys.now_unix_ms() >= deadline_ms {
            return Err(SnapshotError::Service {
                what: format!("node {node} was not Ready in time: {why}"),
                timed_out: true,
                journal: journal(sys),
            });
        }
        sys.sleep(POLL_INTERVAL.min(remaining()).max(Duration::from_millis(1)));
    }
}

/// The last lines of k3s's journal, for a failure; empty when journalctl is missing or fails.
fn journal(sys: &dyn HostSystem) -> Vec<String> {
    let Some(journalctl) = sys.find_command("journalctl") else { return Vec::new() };
    match sys.run(&journalctl, &["-u", SERVICE, "-n", JOURNAL_LINES, "--no-pager", "-o", "cat"]) {
        Ok(out) if out.success() => out.stdout.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect(),
        _ => Vec::new(),
    }
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
        assert_eq!(settings_of("", &[]).unwrap().data_dir, PathBuf::from(DEFAULT_DATA_DIR));
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
