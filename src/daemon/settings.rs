//! The daemon's settings: one file, `/etc/k3node/agent.yaml` (0600), written by `up` and read by
//! `k3node agent` at start. [`Tuning`] is the part a user chooses (the cluster file's
//! `spec.agent`: interval, hub port, thresholds...); the rest (`node`, `role`, `hubs`, `fleet`) is
//! derived by `up` from the cluster file. Every field of [`Tuning`] has a default, so a file
//! written by an older `up` still reads, and an empty `spec.agent` means the defaults.
//!
//! Every path the daemon and the hub use is here, once.

use serde::{Deserialize, Serialize};

use crate::protocol::node::Role;

pub const SETTINGS_PATH: &str = "/etc/k3node/agent.yaml";
pub const CONFIG_DIR: &str = "/etc/k3node";
pub const TLS_DIR: &str = "/etc/k3node/tls";
pub const CA_CERT: &str = "/etc/k3node/tls/ca.crt";
/// Servers only.
pub const CA_KEY: &str = "/etc/k3node/tls/ca.key";
pub const NODE_CERT: &str = "/etc/k3node/tls/node.crt";
/// Made on the node, never leaves it.
pub const NODE_KEY: &str = "/etc/k3node/tls/node.key";
/// The daemon's own state (systemd's StateDirectory=k3node).
pub const STATE_DIR: &str = "/var/lib/k3node";
pub const BUFFER_DIR: &str = "/var/lib/k3node/buffer";
pub const HUB_DB: &str = "/var/lib/k3node/hub.db";
pub const UNIT_NAME: &str = "k3node-agent";
pub const UNIT_PATH: &str = "/etc/systemd/system/k3node-agent.service";
/// Servers only: the hub's memory cap, sized for the fleet (see [`hub_memory_dropin`]).
pub const HUB_MEMORY_DROPIN_DIR: &str = "/etc/systemd/system/k3node-agent.service.d";
pub const HUB_MEMORY_DROPIN: &str = "/etc/systemd/system/k3node-agent.service.d/10-hub-memory.conf";
/// Outside every port k3s uses (contract section 5) and outside node_exporter's 9100.
pub const DEFAULT_HUB_PORT: u16 = 10270;
/// The unit file, as shipped in systemd/.
pub const UNIT_TEXT: &str = include_str!("../../systemd/k3node-agent.service");

/// What a user may tune (the cluster file's `spec.agent`), with the defaults of the README.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Tuning {
    /// Seconds between two collections (and reports).
    pub interval_secs: u64,
    /// The hub's HTTPS port on every server.
    pub hub_port: u16,
    /// A node is stale after this many intervals without a report.
    pub stale_after_intervals: u32,
    /// Reports kept on the node while no hub answers (oldest dropped, and counted, beyond it).
    pub buffer_max_reports: u32,
    /// Reports kept per node in the hub's history.
    pub history_per_node: u32,
    /// Seconds between two re-syncs of an unchanged Node condition (node-problem-detector: 300).
    pub condition_resync_secs: u64,
    /// Checks not run at all (`kubelet` on a server with `disable-agent`, for one).
    pub disabled_checks: Vec<String>,
    pub thresholds: Thresholds,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            interval_secs: 10,
            hub_port: DEFAULT_HUB_PORT,
            stale_after_intervals: 3,
            buffer_max_reports: 8640,
            history_per_node: 360,
            condition_resync_secs: 300,
            disabled_checks: Vec::new(),
            thresholds: Thresholds::default(),
        }
    }
}

/// Where a measurement turns a check to warn or fail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Thresholds {
    /// Free space (for unprivileged writers) under / and /var/lib/rancher, percent of the size:
    /// the kubelet evicts pods below 10% (nodefs.available), so that is the default failure.
    pub disk_free_warn_percent: f64,
    pub disk_free_fail_percent: f64,
    /// MemAvailable, percent of MemTotal.
    pub memory_available_warn_percent: f64,
    pub memory_available_fail_percent: f64,
    /// 1-minute load average divided by the number of CPUs.
    pub load_per_cpu_warn: f64,
    pub load_per_cpu_fail: f64,
    /// CPU busy over the last interval, percent.
    pub cpu_busy_warn_percent: f64,
    pub cpu_busy_fail_percent: f64,
    /// Days before the first of k3s's certificates expires.
    pub cert_expiry_warn_days: f64,
    pub cert_expiry_fail_days: f64,
    /// Clock offset against the hub, milliseconds (k0sctl fails a skew of 30 s).
    pub clock_offset_warn_ms: f64,
    pub clock_offset_fail_ms: f64,
    /// Restarts of the k3s unit (systemd's NRestarts) before a warning.
    pub k3s_restarts_warn: u32,
    /// Age of the newest snapshot on a server, hours; unset: the age is reported, never judged.
    pub snapshot_age_warn_hours: Option<f64>,
    pub snapshot_age_fail_hours: Option<f64>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            disk_free_warn_percent: 15.0,
            disk_free_fail_percent: 10.0,
            memory_available_warn_percent: 10.0,
            memory_available_fail_percent: 5.0,
            load_per_cpu_warn: 2.0,
            load_per_cpu_fail: 4.0,
            cpu_busy_warn_percent: 90.0,
            cpu_busy_fail_percent: 99.0,
            cert_expiry_warn_days: 30.0,
            cert_expiry_fail_days: 7.0,
            clock_offset_warn_ms: 1000.0,
            clock_offset_fail_ms: 30000.0,
            k3s_restarts_warn: 3,
            snapshot_age_warn_hours: None,
            snapshot_age_fail_hours: None,
        }
    }
}

/// A node the hub expects reports from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetMember {
    pub name: String,
    pub role: Role,
}

/// The whole settings file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    /// This node's name (the cluster file's host name, the Kubernetes node name).
    pub node: String,
    pub role: Role,
    /// The servers' addresses: a hub answers on each.
    pub hubs: Vec<String>,
    /// Servers only: every node of the cluster file, so that one that never reported shows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fleet: Vec<FleetMember>,
    /// Servers only: the kubeconfig the hub patches Node conditions with (k3s's admin one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
    #[serde(default)]
    pub tuning: Tuning,
}

/// Why the settings file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{path}: {message} (it is written by `k3node up`; run it again to rewrite the file)")]
    Invalid { path: String, message: String },
}

impl Settings {
    /// `node`'s settings reporting to `hubs`, with no fleet and no kubeconfig (an agent's, or a
    /// server's before `up` adds them) and the default tuning.
    pub fn new(node: &str, role: Role, hubs: &[&str]) -> Settings {
        Settings {
            node: node.to_string(),
            role,
            hubs: hubs.iter().map(|h| h.to_string()).collect(),
            fleet: Vec::new(),
            kubeconfig: None,
            tuning: Tuning::default(),
        }
    }

    pub fn parse(path: &str, text: &str) -> Result<Settings, SettingsError> {
        let settings: Settings = serde_yaml_ng::from_str(text)
            .map_err(|e| SettingsError::Invalid { path: path.to_string(), message: e.to_string() })?;
        settings.validate().map_err(|message| SettingsError::Invalid { path: path.to_string(), message })?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), String> {
        let t = &self.tuning;
        if self.node.is_empty() {
            return Err("node is empty".into());
        }
        if !(1..=3600).contains(&t.interval_secs) {
            return Err(format!("tuning.intervalSecs must be 1..3600, found {}", t.interval_secs));
        }
        if t.hub_port == 0 {
            return Err("tuning.hubPort must be 1..65535".into());
        }
        if t.stale_after_intervals == 0 || t.buffer_max_reports == 0 || t.history_per_node == 0 {
            return Err("tuning.staleAfterIntervals, bufferMaxReports and historyPerNode must be at least 1".into());
        }
        Ok(())
    }

    /// The file's text: a header that says who writes it, then the settings.
    pub fn render(&self) -> String {
        let body = serde_yaml_ng::to_string(self).expect("settings always serialize");
        format!("# Written by `k3node up` from the cluster file; edits are replaced by the next `up`.\n{body}")
    }

    pub fn is_server(&self) -> bool {
        self.role == Role::Server
    }

    pub fn check_enabled(&self, name: &str) -> bool {
        !self.tuning.disabled_checks.iter().any(|c| c == name)
    }
}

/// The unit's own cap (systemd/k3node-agent.service): what an agent needs, and a hub's floor.
const UNIT_MEMORY_MAX_MIB: u64 = 128;
/// What a hub holds per node of its fleet, with a quarter to spare: mostly one kept-alive
/// mutual-TLS connection (hyper's read and write buffers, rustls's record buffer and keys, the
/// task). Measured with `cargo bench --bench daemon` (fan-in, `K3NODE_BENCH_NODES`): RSS 65, 144
/// and 266 MiB at 2,000, 5,000 and 10,000 nodes, about 25 MiB per 1,000 over 15 MiB.
pub const HUB_MIB_PER_1000_NODES: u64 = 32;

/// The drop-in of a server: a memory cap that grows with the fleet, so that a large fleet's hub
/// is not killed by its own unit's MemoryMax (a small fleet keeps the unit's 128M); and malloc's
/// own arena count, because the unit's `MALLOC_ARENA_MAX=2` (right for an agent's one or two
/// threads) saves a hub nothing: at 10,000 nodes it held 266 MiB with it (3 runs) and 249-254
/// MiB without (4 runs; `cargo bench --bench daemon`). Its latency varied more between runs
/// (p99 10 to 150 ms) than with the setting.
pub fn hub_memory_dropin(fleet_size: usize) -> String {
    let max = UNIT_MEMORY_MAX_MIB.max(64 + (fleet_size as u64 * HUB_MIB_PER_1000_NODES).div_ceil(1000));
    format!(
        "# Written by k3node up: this server's hub keeps a connection and the latest report of each of\n\
         # the fleet's {fleet_size} nodes, so its memory cap grows with the fleet; its threads take\n\
         # malloc's own arena count.\n\
         [Service]\n\
         MemoryMax={max}M\n\
         UnsetEnvironment=MALLOC_ARENA_MAX\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Settings {
        Settings {
            fleet: vec![FleetMember { name: "n1".into(), role: Role::Server }],
            kubeconfig: Some("/etc/rancher/k3s/k3s.yaml".into()),
            ..Settings::new("n1", Role::Server, &["10.0.0.1"])
        }
    }

    #[test]
    fn rendered_settings_read_back_the_same() {
        let s = sample();
        let text = s.render();
        assert!(text.starts_with("# Written by `k3node up`"), "{text}");
        assert_eq!(Settings::parse("agent.yaml", &text).unwrap(), s);
    }

    #[test]
    fn a_file_without_tuning_takes_the_defaults_and_a_typo_is_refused() {
        let s = Settings::parse("a.yaml", "node: n2\nrole: agent\nhubs: [10.0.0.1]\n").unwrap();
        assert_eq!(s.tuning, Tuning::default());
        assert_eq!(s.tuning.interval_secs, 10);
        let e = Settings::parse("a.yaml", "node: n2\nrole: agent\nhubs: []\ntuning: {intervalSec: 2}\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `intervalSec`"), "{e}");
        assert!(e.to_string().contains("run it again"), "{e}");
    }

    #[test]
    fn an_interval_of_zero_is_refused() {
        let e = Settings::parse("a.yaml", "node: n2\nrole: agent\nhubs: []\ntuning: {intervalSecs: 0}\n").unwrap_err();
        assert!(e.to_string().contains("intervalSecs must be 1..3600"), "{e}");
    }
}
