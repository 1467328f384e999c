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
/// The text of the unit, env file and scripts; public only for the lab tests, which put these
/// files on real hosts without installing k3s.
#[doc(hidden)]
pub mod files;
mod install;
mod mask;
mod query;
mod reset;
mod systemd;
#[cfg(test)]
mod testutil;

use std::path::{Path, PathBuf};

use crate::protocol::preflight::Role;

pub use install::install;
pub use query::{kubeconfig, nodes, read_token};
pub use reset::reset;

/// Where the operator uploads k3s and where install.sh puts it.
pub const K3S_BIN: &str = "/usr/local/bin/k3s";
pub const BIN_DIR: &str = "/usr/local/bin";
pub const UNIT_DIR: &str = "/etc/systemd/system";
pub const CONFIG_DIR: &str = "/etc/rancher/k3s";
pub const CONFIG_FILE: &str = "/etc/rancher/k3s/config.yaml";
/// Drop-ins read after config.yaml, in name order.
pub const CONFIG_DROPIN_DIR: &str = "/etc/rancher/k3s/config.yaml.d";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/rancher/k3s";
pub const DEFAULT_KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";
pub const KUBELET_DIR: &str = "/var/lib/kubelet";
/// k3node's own record of what each service was last started with (`<service>.applied.json`).
pub const RECORD_DIR: &str = "/var/lib/rancher/k3node";
pub const KILLALL_SCRIPT: &str = "/usr/local/bin/k3s-killall.sh";
/// Commands linked to k3s in [`BIN_DIR`] where the host has none of its own.
pub const LINKED_COMMANDS: [&str; 3] = ["kubectl", "crictl", "ctr"];

/// Called with one short line per step ("writing unit", "restarting k3s"...).
pub type Progress<'a> = &'a mut dyn FnMut(&str);

/// `k3s` for a server, `k3s-agent` for an agent, as install.sh names them.
pub fn service_name(role: Role) -> &'static str {
    match role {
        Role::Server => "k3s",
        Role::Agent => "k3s-agent",
    }
}

pub fn unit_path(service: &str) -> PathBuf {
    Path::new(UNIT_DIR).join(format!("{service}.service"))
}

pub fn env_path(service: &str) -> PathBuf {
    Path::new(UNIT_DIR).join(format!("{service}.service.env"))
}

pub fn uninstall_script_path(service: &str) -> PathBuf {
    Path::new(BIN_DIR).join(format!("{service}-uninstall.sh"))
}

pub fn record_path(service: &str) -> PathBuf {
    Path::new(RECORD_DIR).join(format!("{service}.applied.json"))
}

/// True when `link`'s target is the k3s binary (relative, as install.sh makes it, or absolute).
fn links_to_k3s(target: &Path) -> bool {
    target == Path::new("k3s") || target == Path::new(K3S_BIN)
}

use super::describe_io;

#[cfg(test)]
mod tests {
    use crate::protocol::{AgentErrorKind, AgentLine};

    fn serve(operation: &str, request: &str) -> Vec<AgentLine> {
        let mut out = Vec::new();
        crate::host::serve(operation, &mut format!("{request}\n").as_bytes(), &mut out);
        String::from_utf8_lossy(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// The agent's operations reach this module (on this machine, which runs no k3s).
    #[test]
    fn serve_dispatches_to_the_k3s_operations() {
        if std::path::Path::new(super::K3S_BIN).exists() || std::path::Path::new(super::CONFIG_DIR).exists() {
            return; // a machine with k3s answers differently; the fakes cover the logic
        }
        let token = serve("read-token", r#"{"op":"read_token"}"#);
        let [AgentLine::Error { kind: AgentErrorKind::Failed, message }] = &token[..] else { panic!("{token:?}") };
        assert!(message.ends_with("does not exist: not a server, or k3s has not started yet"), "{message}");
        let nodes = serve("nodes", r#"{"op":"nodes"}"#);
        assert!(matches!(&nodes[..], [AgentLine::Error { kind: AgentErrorKind::Failed, .. }]), "{nodes:?}");
        let install = serve(
            "install-k3s",
            r#"{"op":"install_k3s","role":"server","node_name":"n1","binary_sha256":"00","config_yaml":"","env":[],"ready_timeout_secs":1,"dry_run":true}"#,
        );
        // Progress lines first (through the callback), then the one error line.
        let [AgentLine::Progress { message: step }, AgentLine::Error { message, .. }] = &install[..] else {
            panic!("{install:?}")
        };
        assert_eq!(step, "verifying /usr/local/bin/k3s");
        assert!(message.contains("not 64 hex digits"), "{message}");
    }
}
