//! systemd through `systemctl` and `journalctl` (never a shell), and what a failing k3s's journal
//! says about why it fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::host::system::{CommandOutput, HostSystem, COMMAND_TIMEOUT};

/// The properties [`Systemd::status`] reads.
pub(super) const STATUS_PROPERTIES: &str = "--property=ActiveState,UnitFileState,NeedDaemonReload,InvocationID,MainPID";

/// A unit as systemd sees it now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UnitStatus {
    /// `active`, and only that: `activating` (a Type=notify unit not ready yet) is not running.
    pub active: bool,
    pub enabled: bool,
    /// systemd holds an older version of the unit than the file on disk (an earlier run wrote it
    /// and was interrupted before daemon-reload).
    pub needs_daemon_reload: bool,
    /// Changes at every start of the unit: tells whether someone (re)started it since k3node did.
    pub invocation_id: String,
    /// The running main process (0 when none).
    pub main_pid: u32,
}

pub(crate) struct Systemd<'a> {
    sys: &'a dyn HostSystem,
    systemctl: Option<PathBuf>,
}

impl<'a> Systemd<'a> {
    pub fn new(sys: &'a dyn HostSystem) -> Self {
        Systemd { sys, systemctl: sys.find_command("systemctl") }
    }

    pub fn available(&self) -> bool {
        self.systemctl.is_some()
    }

    fn systemctl(&self) -> Result<&Path, String> {
        self.systemctl.as_deref().ok_or_else(|| {
            "systemctl is not installed: k3s runs as a systemd service, and this host has no systemd".to_string()
        })
    }

    /// What systemd knows of `service`, in one `systemctl show`; a unit systemd cannot be asked
    /// about reads as inactive, disabled, loaded and never started.
    pub fn status(&self, service: &str) -> UnitStatus {
        let mut status = UnitStatus::default();
        let Some(systemctl) = self.systemctl.as_deref() else { return status };
        let Ok(out) = self.sys.run(systemctl, &["show", STATUS_PROPERTIES, service]) else { return status };
        for line in out.stdout.lines() {
            let Some((key, value)) = line.split_once('=') else { continue };
            let value = value.trim();
            match key {
                "ActiveState" => status.active = value == "active",
                "UnitFileState" => status.enabled = value == "enabled",
                "NeedDaemonReload" => status.needs_daemon_reload = value == "yes",
                "InvocationID" => status.invocation_id = value.to_string(),
                "MainPID" => status.main_pid = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        status
    }

    /// Why the unit last stopped or failed to start, as systemd words it (`Result`: `success`,
    /// `exit-code`, `start-limit-hit`...); empty when systemd cannot be asked.
    pub fn result(&self, service: &str) -> String {
        let Some(systemctl) = self.systemctl.as_deref() else { return String::new() };
        match self.sys.run(systemctl, &["show", "--property=Result", "--value", service]) {
            Ok(out) if out.success() => out.stdout.trim().to_string(),
            _ => String::new(),
        }
    }

    /// Runs `systemctl <args>`; a non-zero exit is an error naming the command.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Result<CommandOutput, RunError> {
        let systemctl = self.systemctl().map_err(RunError::Other)?;
        match self.sys.run_with(systemctl, args, None, timeout) {
            Ok(out) if out.success() => Ok(out),
            Ok(out) => Err(RunError::Other(format!("systemctl {} failed: {}", args.join(" "), out.failure_summary()))),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(RunError::TimedOut),
            Err(e) => Err(RunError::Other(format!("cannot run systemctl {}: {e}", args.join(" ")))),
        }
    }

    pub fn run_quick(&self, args: &[&str]) -> Result<CommandOutput, String> {
        self.run(args, COMMAND_TIMEOUT).map_err(|e| match e {
            RunError::TimedOut => {
                format!("systemctl {} did not finish within {} s", args.join(" "), COMMAND_TIMEOUT.as_secs())
            }
            RunError::Other(message) => message,
        })
    }
}

#[derive(Debug)]
pub(crate) enum RunError {
    TimedOut,
    Other(String),
}

/// The last `lines` lines of the service's journal (`journalctl -u <service> -n N --no-pager -o cat`);
/// empty when journalctl is missing or fails.
pub(crate) fn journal_tail(sys: &dyn HostSystem, service: &str, lines: usize) -> Vec<String> {
    let Some(journalctl) = sys.find_command("journalctl") else { return Vec::new() };
    let n = lines.to_string();
    match sys.run(&journalctl, &["-u", service, "-n", &n, "--no-pager", "-o", "cat"]) {
        Ok(out) if out.success() => out.stdout.lines().map(str::to_string).filter(|l| !l.trim().is_empty()).collect(),
        _ => Vec::new(),
    }
}

/// What a k3s journal's lines most likely mean, for the errors k3s users hit most.
pub(super) fn likely_cause(journal: &str, server_url: Option<&str>) -> Option<String> {
    let text = journal.to_ascii_lowercase();
    let has = |needle: &str| text.contains(needle);
    if has("token ca hash does not match") {
        return Some(
            "the join token does not match the server's CA: a wrong token, or the server was reinstalled \
             after the token was read (read it again from the server)"
                .into(),
        );
    }
    if has("node password rejected") {
        return Some(
            "the server already has a node of this name with another node password: a duplicate hostname, \
             or this host was reinstalled while its old Node object remains (kubectl delete node <name> on the server)"
                .into(),
        );
    }
    if has("critical configuration value mismatch") {
        return Some(
            "this server's config differs from the first server's in a value that must be equal on every \
             server (cluster-cidr, service-cidr, cluster-dns, cluster-domain, flannel-backend, agent-token, \
             secrets-encryption)"
                .into(),
        );
    }
    if has("address already in use") {
        return Some("a port k3s needs is taken by another program (run `k3node preflight` to see which)".into());
    }
    if has("connection refused") || has("no route to host") || has("network is unreachable") || has("i/o timeout") {
        let at = server_url.map(|u| format!(" at {u}")).unwrap_or_default();
        return Some(format!(
            "cannot reach the server{at}: it is down, or port 6443 is blocked between this host and it"
        ));
    }
    if has("401 unauthorized") || has("unauthorized: ") {
        return Some("the server refused the join token: a wrong or outdated token".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_recognised() {
        let cases = [
            ("level=fatal msg=\"starting kubernetes: preparing server: token CA hash does not match the Cluster CA certificate hash: abc != def\"", "wrong token"),
            ("Waiting to retrieve agent configuration; server is not ready: Node password rejected, duplicate hostname", "duplicate hostname"),
            ("failed to validate server configuration: critical configuration value mismatch between servers", "cluster-cidr"),
            ("listen tcp :6443: bind: address already in use", "k3node preflight"),
            ("dial tcp 192.168.56.10:6443: connect: connection refused", "at https://192.168.56.10:6443: it is down"),
            ("dial tcp 192.168.56.10:6443: connect: no route to host", "port 6443 is blocked"),
        ];
        for (line, expect) in cases {
            let cause = likely_cause(line, Some("https://192.168.56.10:6443")).unwrap_or_default();
            assert!(cause.contains(expect), "{line}: {cause}");
        }
        assert_eq!(likely_cause("Running kubelet", None), None);
    }
}
