//! Operations that install, inspect and remove k3s on a host.

use serde::{Deserialize, Serialize};

use super::node::{NodeInfo, Role};
use super::secret::{secret_env_name, Scrubber, Secret};
use super::Operation;

/// Install (or converge) k3s on the host. The k3s binary has already been uploaded and verified
/// by the operator at `/usr/local/bin/k3s`; the helper verifies its sha256 again before using it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
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
    /// Full text of /etc/rancher/k3s/registries.yaml (written 0600; holds registry credentials).
    /// None: k3node does not manage that file, and leaves it as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registries_yaml: Option<Secret>,
    /// Seconds to wait for the unit to be active (Type=notify) and, on servers, the node Ready.
    pub ready_timeout_secs: u64,
    /// Report what would change (with diffs, secrets masked) and change nothing.
    pub dry_run: bool,
}

impl Operation for InstallRequest {
    const NAME: &'static str = "install-k3s";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = InstallReport;
    fn mutates(&self) -> bool {
        !self.dry_run
    }
    fn secrets(&self) -> Vec<String> {
        let mut values: Vec<String> =
            self.env.iter().filter(|(name, _)| secret_env_name(name)).map(|(_, v)| v.expose().to_string()).collect();
        values.extend(Scrubber::config_values(self.config_yaml.expose()));
        if let Some(registries) = &self.registries_yaml {
            values.extend(super::secret::registries_secrets(registries.expose()).into_iter().map(|(_, v)| v));
        }
        values
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileAction {
    Created,
    Updated,
    Unchanged,
    Removed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileChange {
    pub path: String,
    pub action: FileAction,
    /// Unified diff of the change with secret values masked (for the binary: `sha256 X → Y`); None when unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// What happens (or in a dry run would happen) to the k3s service.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceAction {
    /// Left running as it was.
    None,
    /// Started for the first time on this host.
    Start,
    /// Restarted because what it runs with changed, or because it was not running.
    Restart,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstallReport {
    /// `k3s` or `k3s-agent`.
    pub service: String,
    pub changes: Vec<FileChange>,
    pub service_action: ServiceAction,
    /// Why the service is (or would be) started or restarted; empty when it is left alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// `k3s --version` of the installed binary, e.g. `v1.31.4+k3s1`.
    pub version: String,
    pub active: bool,
    /// Files in /etc/rancher/k3s/config.yaml.d that k3node did not write, with the keys of
    /// config.yaml they override: they change what k3s runs with behind k3node's back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign_dropins: Vec<String>,
}

impl InstallReport {
    pub fn restarted(&self) -> bool {
        self.service_action != ServiceAction::None
    }
}

/// The server's join token, read from server/token (servers only).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReadToken {}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenAnswer {
    pub token: Secret,
}

impl Operation for ReadToken {
    const NAME: &'static str = "read-token";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = TokenAnswer;
    fn mutates(&self) -> bool {
        false
    }
}

/// /etc/rancher/k3s/k3s.yaml of a server (holds the admin client key).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReadKubeconfig {}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KubeconfigAnswer {
    pub kubeconfig: Secret,
}

impl Operation for ReadKubeconfig {
    const NAME: &'static str = "kubeconfig";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = KubeconfigAnswer;
    fn mutates(&self) -> bool {
        false
    }
}

/// The cluster's nodes as a server sees them (`k3s kubectl get nodes -o json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListNodes {}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodesAnswer {
    pub nodes: Vec<NodeInfo>,
}

impl Operation for ListNodes {
    const NAME: &'static str = "nodes";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = NodesAnswer;
    fn mutates(&self) -> bool {
        false
    }
}

/// Deletes Node objects (and with them their node-password secrets) through a server, so that a
/// host reinstalled under an old name can register again (contract section 6).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeleteNodes {
    pub names: Vec<String>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodesDeleted {
    /// The names that existed and were (or would be) deleted.
    pub deleted: Vec<String>,
}

impl Operation for DeleteNodes {
    const NAME: &'static str = "delete-nodes";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = NodesDeleted;
    fn mutates(&self) -> bool {
        !self.dry_run
    }
}

/// Uninstall as k3s-uninstall.sh does (contract section 8), data moved aside.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    pub dry_run: bool,
    /// Leave k3node's own files (the helper binary, /var/lib/rancher/k3node) on the host.
    pub keep_helper: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResetReport {
    /// What was (or would be) stopped, unmounted, deleted, moved, in order.
    pub actions: Vec<String>,
}

impl Operation for ResetRequest {
    const NAME: &'static str = "reset";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = ResetReport;
    fn mutates(&self) -> bool {
        !self.dry_run
    }
}
