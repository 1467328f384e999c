//! Node health: what the node daemon reports to the hub, the fleet view the hub serves, and the
//! helper operations that install the daemon, give a node its identity and read the fleet.
//!
//! Versioning. The daemon and the hub are long-lived and upgraded host by host, so for a while
//! an agent may run another k3node than the hub it reports to. Every batch says which health
//! protocol it speaks ([`HEALTH_PROTOCOL`]); a hub accepts every version from
//! [`MIN_HEALTH_PROTOCOL`] to its own and refuses any other with 400 and its own range, and the
//! daemon then keeps the reports in its buffer (nothing is dropped because of a version skew)
//! until a hub that understands them answers. Within one version the shapes are strict (unknown
//! fields refused): a field is added by bumping the version, and the hub reads older versions
//! with defaults.
//!
//! Invariants:
//! - A report is about the node that sends it: the hub takes the node's name from its client
//!   certificate, never from the body, and refuses a body naming another node (403).
//! - Every report of a node has a sequence number, increasing by one within a `stream` (a
//!   stream is one life of the node's buffer), so the hub can tell a duplicate (delivered twice
//!   after a lost answer: ignored) from a gap (counted as lost).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::k3s::{FileChange, ServiceAction};
use super::node::Role;
use super::{Operation, Secret};

/// The health protocol this build speaks.
pub const HEALTH_PROTOCOL: u32 = 1;
/// The oldest health protocol this build's hub still reads.
pub const MIN_HEALTH_PROTOCOL: u32 = 1;
/// Where the daemon posts its batches.
pub const REPORTS_PATH: &str = "/v1/reports";
/// Where the fleet view is read (`k3node status`).
pub const FLEET_PATH: &str = "/v1/fleet";
/// Prometheus text format.
pub const METRICS_PATH: &str = "/metrics";
/// A batch larger than this is refused (413) before it is read.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// At most this many reports go in one batch.
pub const MAX_BATCH_REPORTS: usize = 100;

/// ok < warn < fail, as preflight's pass/warn/fail.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    Ok,
    Warn,
    Fail,
}

impl CheckState {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Ok => "ok",
            CheckState::Warn => "warn",
            CheckState::Fail => "fail",
        }
    }
}

/// One probe's verdict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `cpu`, `memory`, `load`, `disk-root`, `disk-rancher`, `k3s`, `containerd`, `kubelet`,
    /// `certificates`, `clock`, `snapshot`.
    pub name: String,
    pub state: CheckState,
    /// What was measured and, when not ok, what is wrong: "12% free (2.1 GiB of 17.5 GiB)".
    pub reason: String,
}

/// What a node found at one interval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub seq: u64,
    /// When the node collected it (its own clock, unix ms).
    pub at_ms: i64,
    /// The node's interval when it collected it: the hub's staleness is counted in these.
    pub interval_secs: u64,
    pub role: Role,
    /// `k3s --version` of the running k3s, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k3s_version: Option<String>,
    pub checks: Vec<HealthCheck>,
    /// Measurements in base units (bytes, seconds, ratios), named as the hub's metrics are:
    /// `memory_available_bytes`, `root_free_bytes`, `clock_offset_seconds`...
    #[serde(default)]
    pub gauges: BTreeMap<String, f64>,
}

impl Report {
    /// The worst state among the checks (ok when there is none).
    pub fn state(&self) -> CheckState {
        self.checks.iter().map(|c| c.state).max().unwrap_or(CheckState::Ok)
    }
}

/// What the daemon posts: its reports in order, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReportBatch {
    pub protocol: u32,
    pub node: String,
    /// One life of the node's buffer (random, made when the buffer is created).
    pub stream: String,
    /// Reports that fell out of the node's bounded buffer before this hub got them, in all.
    pub dropped_total: u64,
    pub reports: Vec<Report>,
}

/// The hub's answer to a batch it stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchAnswer {
    pub protocol: u32,
    /// Every report up to this sequence number is stored (or was already).
    pub accepted_through: u64,
    /// The hub's clock when it answered (unix ms): the node's clock offset is measured on it.
    pub hub_time_ms: i64,
}

/// The hub's answer to anything it refuses (400, 403, 413).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HubRefusal {
    pub error: String,
    /// The health protocols the hub reads, oldest and newest.
    pub protocols: (u32, u32),
}

/// A node as the hub sees it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Ok,
    Warn,
    Fail,
    /// No report for `stale_after_intervals` intervals, or never one.
    Stale,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ok => "ok",
            NodeState::Warn => "warn",
            NodeState::Fail => "fail",
            NodeState::Stale => "stale",
        }
    }
}

impl From<CheckState> for NodeState {
    fn from(s: CheckState) -> NodeState {
        match s {
            CheckState::Ok => NodeState::Ok,
            CheckState::Warn => NodeState::Warn,
            CheckState::Fail => NodeState::Fail,
        }
    }
}

/// One node of the fleet view.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeHealth {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k3s_version: Option<String>,
    pub state: NodeState,
    /// Why the state is not ok: the checks that warn or fail, or why the node is stale.
    pub problems: Vec<HealthCheck>,
    /// Seconds since the hub received the node's last report; None: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report_age_secs: Option<f64>,
    /// Every check of the last report.
    pub checks: Vec<HealthCheck>,
    pub last_seq: u64,
    pub reports_total: u64,
    /// Sequence numbers the hub never received (gaps), in all.
    pub lost_total: u64,
    /// Reports the node says fell out of its buffer, in all.
    pub dropped_total: u64,
}

/// The whole fleet as one hub sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetView {
    /// The node whose hub answered.
    pub hub: String,
    pub protocol: u32,
    /// The hub's clock (unix ms).
    pub generated_at_ms: i64,
    pub nodes: Vec<NodeHealth>,
}

/// Ensures the node has its daemon key (made on the host, never sent anywhere) and says what
/// identity it holds: a certificate request for its key, its certificate and the cluster's hub
/// CA as found on disk, and on a server the CA's key (so that `up` keeps one CA per cluster).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DaemonIdentity {
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdentityAnswer {
    /// PEM certificate request for the node's key; None in a dry run on a host without a key.
    pub csr_pem: Option<String>,
    pub node_cert_pem: Option<String>,
    pub ca_cert_pem: Option<String>,
    /// Only servers keep it.
    pub ca_key: Option<Secret>,
}

impl Operation for DaemonIdentity {
    const NAME: &'static str = "daemon-identity";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = IdentityAnswer;
    fn mutates(&self) -> bool {
        !self.dry_run
    }
}

/// Installs (or converges) `k3node-agent.service`: its settings, its certificates, the unit;
/// enabled, and restarted only when one of them (or the k3node binary) changed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InstallDaemon {
    pub role: Role,
    pub node_name: String,
    /// The whole of /etc/k3node/agent.yaml.
    pub settings_yaml: String,
    pub ca_cert_pem: String,
    /// Servers only: kept (0600) so that later runs sign with the same CA.
    pub ca_key: Option<Secret>,
    pub node_cert_pem: String,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DaemonReport {
    pub changes: Vec<FileChange>,
    pub service_action: ServiceAction,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

impl Operation for InstallDaemon {
    const NAME: &'static str = "install-daemon";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = DaemonReport;
    fn mutates(&self) -> bool {
        !self.dry_run
    }
    fn secrets(&self) -> Vec<String> {
        self.ca_key.iter().map(|k| k.expose().to_string()).collect()
    }
}

/// The fleet view of this server's hub, asked over loopback with the node's own certificate: no
/// port is opened to the operator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthStatus {}

impl Operation for HealthStatus {
    const NAME: &'static str = "health-status";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = FleetView;
    fn mutates(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_with_an_unknown_field_is_refused_within_one_protocol_version() {
        let good = r#"{"protocol":1,"node":"n1","stream":"s","dropped_total":0,"reports":[]}"#;
        assert!(serde_json::from_str::<ReportBatch>(good).is_ok());
        let extra = r#"{"protocol":1,"node":"n1","stream":"s","dropped_total":0,"reports":[],"x":1}"#;
        assert!(serde_json::from_str::<ReportBatch>(extra).unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn the_worst_check_is_the_reports_state() {
        let check = |state| HealthCheck { name: "x".into(), state, reason: String::new() };
        let mut report = Report {
            seq: 1,
            at_ms: 0,
            interval_secs: 10,
            role: Role::Agent,
            k3s_version: None,
            checks: vec![],
            gauges: BTreeMap::new(),
        };
        assert_eq!(report.state(), CheckState::Ok);
        report.checks = vec![check(CheckState::Warn), check(CheckState::Ok)];
        assert_eq!(report.state(), CheckState::Warn);
        report.checks.push(check(CheckState::Fail));
        assert_eq!(report.state(), CheckState::Fail);
    }
}
