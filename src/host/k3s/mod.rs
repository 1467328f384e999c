//! k3s on the host: `install-k3s`, `read-token`, `kubeconfig`, `nodes` and `reset`.
//!
//! The result on the host is what the official installer leaves (k3s-contract.md sections 2, 3
//! and 8): the same unit, env file, config file, symlinks and scripts at the same paths, so that
//! k3s, kubectl and an operator cannot tell the two apart. Everything is done natively through
//! [`HostSystem`]: files written atomically and only when their content differs, systemd driven
//! with `systemctl`, never a shell. Secrets (the env file, config.yaml's token keys) are masked
//! in every diff, message and error.
//!
//! - `install`: converge the files, then restart the service only when what it runs with changed
//!   (recorded in [`RECORD_DIR`]) or it is not running; wait for it (and on a server for the node
//!   to be Ready), with a diagnosis from the journal when it fails.
//! - `reset`: uninstall as k3s-uninstall.sh does, except that data is moved aside, never deleted.
//! - `query`: the token, the kubeconfig and the node list of a server.

pub(crate) mod config;
mod envfile;
/// The text of the unit, env file and scripts; public only for the lab tests, which put these
/// files on real hosts without installing k3s.
#[doc(hidden)]
pub mod files;
mod install;
pub mod layout;
mod mask;
mod query;
mod reset;
pub(crate) mod systemd;
#[cfg(test)]
pub(crate) mod testutil;

pub(crate) use install::runs_a_replaced_binary;
pub use install::InstallError;
pub use layout::*;
pub use query::QueryError;
pub use reset::ResetError;

/// The data dir k3s on this host uses (config.yaml and its drop-ins, else the default).
pub fn data_dir(sys: &dyn crate::host::system::HostSystem) -> Result<std::path::PathBuf, config::ConfigError> {
    Ok(config::on_host(sys)?.data_dir)
}

/// `k3s --version` of the installed binary (`v1.31.4+k3s1`), or why it cannot be told.
pub(crate) fn installed_version(sys: &dyn crate::host::system::HostSystem) -> Result<String, String> {
    let out = sys
        .run(std::path::Path::new(K3S_BIN), &["--version"])
        .map_err(|e| format!("cannot run {K3S_BIN} --version: {e} (is it a binary for this host's architecture?)"))?;
    if !out.success() {
        return Err(format!("{K3S_BIN} --version failed: {}", out.failure_summary()));
    }
    install::parse_version(&out.stdout).ok_or_else(|| {
        let first = out.stdout.lines().next().unwrap_or("").chars().take(120).collect::<String>();
        format!("{K3S_BIN} --version printed no k3s version: {first:?}")
    })
}

/// Polls `k3s kubectl get node <node>` (through `kubeconfig`) until the node is Ready or the
/// system's clock passes `deadline_ms`; the error is what was last seen.
pub(crate) fn wait_node_ready(
    sys: &dyn crate::host::system::HostSystem,
    kubeconfig: &std::path::Path,
    node: &str,
    deadline_ms: i64,
) -> Result<(), String> {
    use crate::protocol::node::Readiness;
    use std::time::Duration;
    const POLL: Duration = Duration::from_millis(250);
    // One `kubectl get node` never takes longer than this, whatever is left of the deadline.
    const KUBECTL_TIMEOUT: Duration = Duration::from_secs(10);
    let remaining = || Duration::from_millis((deadline_ms - sys.now_unix_ms()).max(0) as u64);
    let shown = kubeconfig.to_string_lossy().into_owned();
    let mut args = vec!["kubectl"];
    if kubeconfig != std::path::Path::new(DEFAULT_KUBECONFIG) {
        args.extend(["--kubeconfig", shown.as_str()]);
    }
    args.extend(["get", "node", node, "-o", "json"]);
    loop {
        let timeout = remaining().clamp(Duration::from_secs(1), KUBECTL_TIMEOUT);
        let why = match sys.run_with(std::path::Path::new(K3S_BIN), &args, None, timeout) {
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
            return Err(why);
        }
        sys.sleep(POLL.min(remaining()).max(Duration::from_millis(1)));
    }
}

/// A unified diff of a plain (secret-free) file, as install-k3s shows them.
pub fn diff_text(path: &std::path::Path, old: &str, new: &str) -> String {
    mask::unified_diff(&path.to_string_lossy(), old, new)
}

/// Called with one short line per step ("writing unit", "restarting k3s"...).
pub type Progress<'a> = &'a mut dyn FnMut(&str);

use super::describe_io;

#[cfg(test)]
mod tests {
    use crate::host::system::fake::FakeSystem;
    use crate::protocol::{AnswerLine, ErrorKind, WireError};

    fn serve(operation: &str, request: &str) -> Vec<AnswerLine> {
        let mut out = Vec::new();
        crate::host::serve(operation, &FakeSystem::new(), &mut format!("{request}\n").as_bytes(), &mut out);
        String::from_utf8_lossy(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// The helper's operations reach this module (on an empty host).
    #[test]
    fn serve_dispatches_to_the_k3s_operations() {
        let token = serve("read-token", r#"{"op":"read-token","args":{}}"#);
        let [AnswerLine::Error(WireError { kind: ErrorKind::NotInstalled, message, .. })] = &token[..] else {
            panic!("{token:?}")
        };
        assert!(message.ends_with("does not exist: not a server, or k3s has not started yet"), "{message}");
        let nodes = serve("nodes", r#"{"op":"nodes","args":{}}"#);
        assert!(
            matches!(&nodes[..], [AnswerLine::Error(WireError { kind: ErrorKind::NotInstalled, .. })]),
            "{nodes:?}"
        );
        let install = serve(
            "install-k3s",
            r#"{"op":"install-k3s","args":{"role":"server","node_name":"n1","binary_sha256":"00","config_yaml":"","env":[],"ready_timeout_secs":1,"dry_run":true}}"#,
        );
        // Progress lines first (through the callback), then the one error line.
        let [AnswerLine::Progress { message: step }, AnswerLine::Error(WireError { kind: ErrorKind::BadRequest, message, .. })] =
            &install[..]
        else {
            panic!("{install:?}")
        };
        assert_eq!(step, "verifying /usr/local/bin/k3s");
        assert!(message.contains("not 64 hex digits"), "{message}");
    }
}
