//! The fleet view: each node's state from its latest report, or `stale` when it has not reported
//! for `stale_after_intervals` of its own intervals (or never has). A stale node's last checks
//! are kept for diagnosis, but its state is never taken from them: an old "ok" is not health.
//! The fleet is the hub's list of expected nodes (the cluster file's hosts, from its settings):
//! a node removed from the cluster file leaves the view instead of staying stale forever.

use crate::daemon::settings::FleetMember;
use crate::protocol::health::{CheckState, FleetView, HealthCheck, NodeHealth, NodeState, HEALTH_PROTOCOL};

use super::store::NodeRow;

/// The name of the pseudo-check that says why a node is stale.
pub const REPORT_CHECK: &str = "report";

pub fn view(hub: &str, rows: &[NodeRow], expected: &[FleetMember], now_ms: i64, stale_after: u32) -> FleetView {
    // A node that left the cluster file is no longer expected: its old rows are not the fleet's.
    let member = |row: &&NodeRow| expected.is_empty() || expected.iter().any(|m| m.name == row.node);
    let mut nodes: Vec<NodeHealth> =
        rows.iter().filter(member).map(|row| node_health(row, now_ms, stale_after)).collect();
    for member in expected {
        if !nodes.iter().any(|n| n.node == member.name) {
            nodes.push(NodeHealth {
                node: member.name.clone(),
                role: Some(member.role),
                k3s_version: None,
                state: NodeState::Stale,
                problems: vec![HealthCheck {
                    name: REPORT_CHECK.into(),
                    state: CheckState::Fail,
                    reason: "never reported to this hub".into(),
                }],
                last_report_age_secs: None,
                checks: Vec::new(),
                last_seq: 0,
                reports_total: 0,
                lost_total: 0,
                dropped_total: 0,
            });
        }
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    FleetView { hub: hub.to_string(), protocol: HEALTH_PROTOCOL, generated_at_ms: now_ms, nodes }
}

/// Milliseconds after which a node that reports every `interval_secs` is stale.
pub fn stale_after_ms(interval_secs: u64, stale_after: u32) -> i64 {
    (interval_secs.max(1) * stale_after.max(1) as u64 * 1000) as i64
}

fn node_health(row: &NodeRow, now_ms: i64, stale_after: u32) -> NodeHealth {
    let age_ms = (now_ms - row.received_ms).max(0);
    let limit = stale_after_ms(row.report.interval_secs, stale_after);
    let stale = age_ms > limit;
    let mut problems: Vec<HealthCheck> = Vec::new();
    let state = if stale {
        problems.push(HealthCheck {
            name: REPORT_CHECK.into(),
            state: CheckState::Fail,
            reason: format!(
                "no report for {:.0} s ({} intervals of {} s)",
                age_ms as f64 / 1000.0,
                age_ms / (row.report.interval_secs.max(1) as i64 * 1000),
                row.report.interval_secs
            ),
        });
        NodeState::Stale
    } else {
        problems.extend(row.report.checks.iter().filter(|c| c.state != CheckState::Ok).cloned());
        NodeState::from(row.report.state())
    };
    NodeHealth {
        node: row.node.clone(),
        role: Some(row.role),
        k3s_version: row.report.k3s_version.clone(),
        state,
        problems,
        last_report_age_secs: Some(age_ms as f64 / 1000.0),
        checks: row.report.checks.clone(),
        last_seq: row.last_seq,
        reports_total: row.reports_total,
        lost_total: row.lost_total,
        dropped_total: row.dropped_total,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::protocol::health::Report;
    use crate::protocol::node::Role;

    fn row(node: &str, received_ms: i64, state: CheckState) -> NodeRow {
        NodeRow {
            node: node.into(),
            role: Role::Agent,
            received_ms,
            last_seq: 4,
            report: Report {
                seq: 4,
                at_ms: received_ms,
                interval_secs: 10,
                role: Role::Agent,
                k3s_version: Some("v1.31.4+k3s1".into()),
                checks: vec![
                    HealthCheck { name: "memory".into(), state: CheckState::Ok, reason: "50% available".into() },
                    HealthCheck { name: "disk-rancher".into(), state, reason: "3.0% free".into() },
                ],
                gauges: BTreeMap::new(),
            },
            reports_total: 4,
            lost_total: 0,
            dropped_total: 0,
            duplicates_total: 0,
        }
    }

    #[test]
    fn a_node_is_stale_after_three_of_its_intervals_and_its_old_ok_does_not_count() {
        let rows = [row("a", 0, CheckState::Ok)];
        let fresh = view("s1", &rows, &[], 30_000, 3);
        assert_eq!(fresh.nodes[0].state, NodeState::Ok);
        assert!(fresh.nodes[0].problems.is_empty());
        let stale = view("s1", &rows, &[], 30_001, 3);
        assert_eq!(stale.nodes[0].state, NodeState::Stale);
        assert_eq!(stale.nodes[0].problems[0].reason, "no report for 30 s (3 intervals of 10 s)");
    }

    #[test]
    fn failing_checks_are_the_problems_and_a_silent_expected_node_is_stale() {
        let rows = [row("a", 0, CheckState::Fail)];
        let expected =
            [FleetMember { name: "a".into(), role: Role::Agent }, FleetMember { name: "b".into(), role: Role::Agent }];
        let v = view("s1", &rows, &expected, 1000, 3);
        assert_eq!(v.nodes.len(), 2);
        assert_eq!(v.nodes[0].state, NodeState::Fail);
        assert_eq!(v.nodes[0].problems.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["disk-rancher"]);
        assert_eq!(v.nodes[1].state, NodeState::Stale);
        assert_eq!(v.nodes[1].problems[0].reason, "never reported to this hub");
    }

    #[test]
    fn a_node_removed_from_the_cluster_file_leaves_the_view() {
        let rows = [row("a", 0, CheckState::Ok), row("gone", 0, CheckState::Ok)];
        let expected = [FleetMember { name: "a".into(), role: Role::Agent }];
        let v = view("s1", &rows, &expected, 1_000_000, 3);
        assert_eq!(v.nodes.iter().map(|n| n.node.as_str()).collect::<Vec<_>>(), ["a"]);
    }
}
