//! `/metrics`: the fleet in Prometheus's text format (0.0.4), built from the fleet view at each
//! scrape, so that a node that went away leaves no stale series behind. Names follow Prometheus's
//! conventions (a `k3node_` prefix, base units in the name, `_total` counters), checked with
//! `promtool check metrics` in the tests.

use std::collections::BTreeMap;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::protocol::health::{CheckState, FleetView, NodeState};

/// The gauges a report may carry that become `k3node_node_<name>{node}`, with their help.
pub const NODE_GAUGES: &[(&str, &str)] = &[
    ("cpu_busy_ratio", "Share of CPU time busy over the node's last interval (0-1)."),
    ("memory_available_bytes", "MemAvailable of the node."),
    ("memory_total_bytes", "MemTotal of the node."),
    ("load1", "1-minute load average of the node."),
    ("cpus", "CPUs of the node."),
    ("root_free_bytes", "Bytes free for unprivileged writers under / on the node."),
    ("root_size_bytes", "Size of the filesystem of / on the node."),
    ("rancher_free_bytes", "Bytes free for unprivileged writers under /var/lib/rancher on the node."),
    ("rancher_size_bytes", "Size of the filesystem of /var/lib/rancher on the node."),
    ("k3s_active", "1 when the node's k3s unit is active."),
    ("k3s_restarts", "Restarts of the node's k3s unit counted by systemd (NRestarts)."),
    ("containerd_up", "1 when k3s's containerd socket accepts connections."),
    ("kubelet_up", "1 when the kubelet's healthz answers ok."),
    ("cert_expiry_seconds", "Seconds until the first of the node's k3s certificates expires."),
    ("clock_offset_seconds", "The hub's clock minus the node's, in seconds."),
    ("snapshot_age_seconds", "Age of the newest snapshot on a server, in seconds."),
];

/// Upper bounds of the ingest histogram's buckets, seconds.
pub const INGEST_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// What the hub counts while it runs: requests by path and status code, and how long storing a
/// batch takes (from the request's arrival to the answer).
#[derive(Clone)]
pub struct HubCounters {
    pub requests: IntCounterVec,
    pub ingest: Histogram,
}

impl Default for HubCounters {
    fn default() -> Self {
        HubCounters::new()
    }
}

impl HubCounters {
    pub fn new() -> HubCounters {
        let requests = IntCounterVec::new(
            Opts::new("k3node_hub_requests_total", "Requests the hub answered, by path and HTTP status code."),
            &["path", "code"],
        )
        .expect("a valid metric");
        let ingest = Histogram::with_opts(
            HistogramOpts::new(
                "k3node_hub_ingest_duration_seconds",
                "Time from a batch's arrival to the hub's answer, for stored batches.",
            )
            .buckets(INGEST_BUCKETS.to_vec()),
        )
        .expect("a valid metric");
        HubCounters { requests, ingest }
    }
}

/// The text of one scrape: the fleet view, each node's gauges from its last report (by node
/// name; unknown gauge names are not exported), and the hub's own counters.
pub fn render(
    view: &FleetView,
    node_gauges: &BTreeMap<String, BTreeMap<String, f64>>,
    counters: &HubCounters,
) -> String {
    let registry = Registry::new();
    let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
        let g = GaugeVec::new(Opts::new(name, help), labels).expect("a valid metric");
        registry.register(Box::new(g.clone())).expect("registered once");
        g
    };
    let int_gauge_vec = |name: &str, help: &str, labels: &[&str]| {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric");
        registry.register(Box::new(g.clone())).expect("registered once");
        g
    };
    let counter_vec = |name: &str, help: &str| {
        let c = IntCounterVec::new(Opts::new(name, help), &["node"]).expect("a valid metric");
        registry.register(Box::new(c.clone())).expect("registered once");
        c
    };

    let state = int_gauge_vec(
        "k3node_node_state",
        "1 for the node's current state (ok, warn, fail, stale), 0 for the others.",
        &["node", "state"],
    );
    let check = int_gauge_vec(
        "k3node_node_check_state",
        "State of each check of the node's last report: 0 ok, 1 warn, 2 fail.",
        &["node", "check"],
    );
    let stale = int_gauge_vec("k3node_node_stale", "1 when the node has not reported for too long.", &["node"]);
    let age = gauge_vec(
        "k3node_node_last_report_age_seconds",
        "Seconds since the hub received the node's last report.",
        &["node"],
    );
    let received = counter_vec("k3node_node_reports_received_total", "Reports of the node the hub stored.");
    let lost = counter_vec("k3node_node_reports_lost_total", "Reports of the node the hub never received (gaps).");
    let dropped = counter_vec(
        "k3node_node_reports_dropped_total",
        "Reports the node dropped from its full buffer before this hub got them.",
    );
    let gauges: BTreeMap<&str, GaugeVec> = NODE_GAUGES
        .iter()
        .map(|(name, help)| (*name, gauge_vec(&format!("k3node_node_{name}"), help, &["node"])))
        .collect();

    for node in &view.nodes {
        let n = node.node.as_str();
        for s in [NodeState::Ok, NodeState::Warn, NodeState::Fail, NodeState::Stale] {
            state.with_label_values(&[n, s.as_str()]).set(i64::from(node.state == s));
        }
        stale.with_label_values(&[n]).set(i64::from(node.state == NodeState::Stale));
        if let Some(secs) = node.last_report_age_secs {
            age.with_label_values(&[n]).set(secs);
        }
        received.with_label_values(&[n]).inc_by(node.reports_total);
        lost.with_label_values(&[n]).inc_by(node.lost_total);
        dropped.with_label_values(&[n]).inc_by(node.dropped_total);
        if node.state == NodeState::Stale {
            continue;
        }
        for c in &node.checks {
            let value = match c.state {
                CheckState::Ok => 0,
                CheckState::Warn => 1,
                CheckState::Fail => 2,
            };
            check.with_label_values(&[n, c.name.as_str()]).set(value);
        }
    }
    for node in view.nodes.iter().filter(|n| n.state != NodeState::Stale) {
        for (name, value) in node_gauges.get(&node.node).into_iter().flatten() {
            if let Some(g) = gauges.get(name.as_str()) {
                g.with_label_values(&[node.node.as_str()]).set(*value);
            }
        }
    }
    registry.register(Box::new(counters.requests.clone())).expect("registered once");
    registry.register(Box::new(counters.ingest.clone())).expect("registered once");

    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out).expect("text encoding never fails");
    String::from_utf8(out).expect("the text format is UTF-8")
}

#[cfg(test)]
mod tests;
