//! Every path of k3s on a host, once: where install.sh puts things (contract sections 2, 3, 6,
//! 7, 8) and where k3node keeps its own records.

use std::path::{Path, PathBuf};

use crate::protocol::node::Role;

/// Where the operator uploads k3s and where install.sh puts it.
pub const K3S_BIN: &str = "/usr/local/bin/k3s";
pub const BIN_DIR: &str = "/usr/local/bin";
pub const UNIT_DIR: &str = "/etc/systemd/system";
pub const CONFIG_DIR: &str = "/etc/rancher/k3s";
pub const CONFIG_FILE: &str = "/etc/rancher/k3s/config.yaml";
/// Drop-ins read after config.yaml, in name order.
pub const CONFIG_DROPIN_DIR: &str = "/etc/rancher/k3s/config.yaml.d";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/rancher/k3s";
/// k3s's default data dir parent, whose free space preflight measures.
pub const RANCHER_DIR: &str = "/var/lib/rancher";
pub const DEFAULT_KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";
pub const KUBELET_DIR: &str = "/var/lib/kubelet";
/// The node's password (contract section 6), kept by every node.
pub const NODE_DIR: &str = "/etc/rancher/node";
pub const NODE_PASSWORD: &str = "/etc/rancher/node/password";
/// k3node's own state on a host: records of what each service was started with.
pub const RECORD_DIR: &str = "/var/lib/rancher/k3node";
pub const KILLALL_SCRIPT: &str = "/usr/local/bin/k3s-killall.sh";
/// Commands linked to k3s in [`BIN_DIR`] where the host has none of its own.
pub const LINKED_COMMANDS: [&str; 3] = ["kubectl", "crictl", "ctr"];

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

/// k3node's record of what `service` was last started with (`<service>.applied.json`).
pub fn record_path(service: &str) -> PathBuf {
    Path::new(RECORD_DIR).join(format!("{service}.applied.json"))
}

/// True when a link's target is the k3s binary (relative, as install.sh makes it, or absolute).
pub fn links_to_k3s(target: &Path) -> bool {
    target == Path::new("k3s") || target == Path::new(K3S_BIN)
}
