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

mod config;
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
