use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use super::*;
use crate::protocol::health::{HealthCheck, NodeHealth, HEALTH_PROTOCOL};
use crate::protocol::node::Role;

fn node(name: &str, state: NodeState) -> NodeHealth {
    NodeHealth {
        node: name.into(),
        role: Some(Role::Agent),
        k3s_version: Some("v1.31.4+k3s1".into()),
        state,
        problems: vec![],
        last_report_age_secs: Some(4.5),
        checks: vec![
            HealthCheck { name: "memory".into(), state: CheckState::Ok, reason: "r".into() },
            HealthCheck { name: "disk-rancher".into(), state: CheckState::Fail, reason: "r".into() },
        ],
        last_seq: 7,
        reports_total: 7,
        lost_total: 1,
        dropped_total: 0,
    }
}

fn sample() -> String {
    let view = FleetView {
        hub: "s1".into(),
        protocol: HEALTH_PROTOCOL,
        generated_at_ms: 0,
        nodes: vec![node("a1", NodeState::Fail), node("a2", NodeState::Stale)],
    };
    let gauges = BTreeMap::from([
        (
            "a1".to_string(),
            BTreeMap::from([("memory_available_bytes".to_string(), 1.5e9), ("no_such_gauge".to_string(), 1.0)]),
        ),
        ("a2".to_string(), BTreeMap::from([("memory_available_bytes".to_string(), 2.0e9)])),
    ]);
    let counters = HubCounters::new();
    counters.requests.with_label_values(&["/v1/reports", "200"]).inc();
    render(&view, &gauges, &counters)
}

#[test]
fn the_fleet_reads_as_per_node_series_and_a_stale_node_keeps_no_measurements() {
    let text = sample();
    assert!(text.contains("k3node_node_state{node=\"a1\",state=\"fail\"} 1"), "{text}");
    assert!(text.contains("k3node_node_stale{node=\"a2\"} 1"), "{text}");
    assert!(text.contains("k3node_node_check_state{check=\"disk-rancher\",node=\"a1\"} 2"), "{text}");
    assert!(text.contains("k3node_node_memory_available_bytes{node=\"a1\"} 1500000000"), "{text}");
    assert!(
        !text.contains("k3node_node_memory_available_bytes{node=\"a2\"}"),
        "a stale value is no measurement:\n{text}"
    );
    assert!(!text.contains("no_such_gauge"), "{text}");
    assert!(text.contains("k3node_node_reports_lost_total{node=\"a1\"} 1"), "{text}");
    assert!(text.contains("k3node_hub_requests_total{code=\"200\",path=\"/v1/reports\"} 1"), "{text}");
}

/// promtool (Debian's `prometheus` package) lints names, units, `_total` and help texts.
#[test]
fn metric_names_pass_promtool_check_metrics() {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!("promtool is needed for this test (apt-get install prometheus): {e}"),
    };
    child.stdin.take().unwrap().write_all(sample().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{}", sample());
}
