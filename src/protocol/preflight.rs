//! Preflight request and report, shared by the host agent (which runs the checks) and the
//! operator side (which adds the cross-host checks and renders the table).

use serde::{Deserialize, Serialize};

use super::Operation;

pub use super::node::Role;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PreflightRequest {
    pub role: Role,
    /// The k3s version the cluster file asks for (`v1.31.4+k3s1`), to refuse a downgrade.
    pub k3s_version: Option<String>,
    pub cluster_cidr: String,
    pub service_cidr: String,
    /// Apply the safe fixes (modules, sysctls) before checking.
    pub fix: bool,
    /// The port of k3node's hub on servers (`spec.agent.hubPort`), checked like k3s's own.
    pub hub_port: u16,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Check {
    /// Stable identifier, kubeadm-style where one exists: `os`, `kernel`, `cpu`, `memory`,
    /// `disk`, `swap`, `cgroup-memory`, `module-overlay`, `sysctl-ip_forward`, `port-6443/tcp`...
    pub id: String,
    pub status: Status,
    /// What was found, in words an operator understands.
    pub reason: String,
    /// What to do about it; empty on pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Facts the operator compares across hosts (uniqueness, clock skew).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostFacts {
    pub hostname: String,
    pub machine_id: String,
    /// Every non-loopback address of the host.
    pub addresses: Vec<String>,
    /// The host's wall clock when it answered, in milliseconds since the Unix epoch.
    pub clock_unix_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PreflightReport {
    pub checks: Vec<Check>,
    pub facts: HostFacts,
    /// One line per change `--fix` made on the host (empty without --fix or when nothing needed fixing).
    pub fixes_applied: Vec<String>,
}

impl Operation for PreflightRequest {
    const NAME: &'static str = "preflight";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = PreflightReport;
    /// Only `--fix` changes the host (modules, sysctls and their files under /etc).
    fn mutates(&self) -> bool {
        self.fix
    }
}
