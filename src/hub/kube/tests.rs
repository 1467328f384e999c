use super::*;
use crate::protocol::health::{CheckState, HealthCheck};

fn node(state: NodeState, age: Option<f64>) -> NodeHealth {
    NodeHealth {
        node: "a1".into(),
        role: None,
        k3s_version: None,
        state,
        problems: vec![HealthCheck {
            name: "k3s".into(),
            state: CheckState::Fail,
            reason: "k3s-agent.service is inactive (dead)".into(),
        }],
        last_report_age_secs: age,
        checks: vec![],
        last_seq: 1,
        reports_total: 1,
        lost_total: 0,
        dropped_total: 0,
    }
}

#[test]
fn the_condition_is_unknown_until_a_fresh_report_says_otherwise() {
    assert_eq!(desired(None).status, "Unknown");
    assert_eq!(desired(Some(&node(NodeState::Stale, None))).reason, "NoReport");
    let stale = desired(Some(&node(NodeState::Stale, Some(40.0))));
    assert_eq!((stale.status, stale.reason), ("Unknown", "ReportStale"));
    let failing = desired(Some(&node(NodeState::Fail, Some(1.0))));
    assert_eq!((failing.status, failing.reason), ("False", "ChecksFail"));
    assert_eq!(failing.message, "fail k3s: k3s-agent.service is inactive (dead)");
    assert_eq!(desired(Some(&node(NodeState::Ok, Some(1.0)))).status, "True");
    assert_eq!(desired(Some(&node(NodeState::Warn, Some(1.0)))).reason, "ChecksWarn");
}

#[test]
fn the_patch_carries_our_condition_and_deletes_our_retired_types_only() {
    let want = desired(Some(&node(NodeState::Ok, Some(1.0))));
    let body = patch_body(&want, "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z", &["K3nodeDiskPressure".to_string()]);
    let conditions = body["status"]["conditions"].as_array().unwrap();
    assert_eq!(conditions.len(), 2);
    assert_eq!(conditions[0]["type"], CONDITION_TYPE);
    assert_eq!(conditions[0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
    assert_eq!(conditions[0]["lastHeartbeatTime"], "2026-01-01T00:05:00Z");
    assert_eq!(conditions[1], serde_json::json!({"type": "K3nodeDiskPressure", "$patch": "delete"}));
    assert!(!body.to_string().contains("\"Ready\""));
}

#[test]
fn times_are_written_as_kubernetes_writes_them() {
    assert_eq!(k8s_time(1_735_787_045_999), "2025-01-02T03:04:05Z");
}
