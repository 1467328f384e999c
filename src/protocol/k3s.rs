//! Requests and answers for installing, inspecting and removing k3s on a host.

use serde::{Deserialize, Serialize};

use super::preflight::Role;
use super::secret::Secret;

/// Install (or converge) k3s on the host. The k3s binary has already been uploaded and verified
/// by the operator at `/usr/local/bin/k3s`; the agent verifies its sha256 again before using it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstallRequest {
    pub role: Role,
    /// Node name (the cluster file's host name): where readiness is waited for.
    pub node_name: String,
    pub binary_sha256: String,
    /// Full text of /etc/rancher/k3s/config.yaml (written 0600). May hold secrets.
    pub config_yaml: Secret,
    /// `NAME=value` lines of /etc/systemd/system/<service>.service.env (written 0600): K3S_URL,
    /// K3S_TOKEN for joining hosts, proxies. Holds the join token.
    pub env: Vec<(String, Secret)>,
    /// Seconds to wait for the unit to be active (Type=notify) and, on servers, the node Ready.
    pub ready_timeout_secs: u64,
    /// Report what would change (with diffs, secrets masked) and change nothing.
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileAction {
    Created,
    Updated,
    Unchanged,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileChange {
    pub path: String,
    pub action: FileAction,
    /// Unified diff of the change with secret values masked (for the binary: `sha256 X → Y`); None when unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstallReport {
    /// `k3s` or `k3s-agent`.
    pub service: String,
    pub changes: Vec<FileChange>,
    /// True when the service was (or, in a dry run, would be) started or restarted.
    pub restarted: bool,
    /// `k3s --version` of the installed binary, e.g. `v1.31.4+k3s1`.
    pub version: String,
    pub active: bool,
}

/// The server's join token, read from server/token (servers only).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenAnswer {
    pub token: Secret,
}

/// /etc/rancher/k3s/k3s.yaml of a server (holds the admin client key).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KubeconfigAnswer {
    pub kubeconfig: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub ready: bool,
    pub roles: Vec<String>,
    pub version: String,
}

/// The cluster's nodes as a server sees them (`k3s kubectl get nodes -o json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodesAnswer {
    pub nodes: Vec<NodeInfo>,
}

/// Uninstall as k3s-uninstall.sh does (contract section 8).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResetRequest {
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResetReport {
    /// What was (or would be) stopped, unmounted, deleted, in order.
    pub actions: Vec<String>,
}
