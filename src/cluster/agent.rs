//! `spec.agent`: the node daemon's settings (`k3node agent` on every host, the hub on servers).
//! The cluster module keeps what the file says, and only that ([`AgentSpec`], every field
//! optional); `up`'s daemon phase (`operator::phases::daemon::tuning`) maps it onto the daemon's
//! `Tuning`, with the daemon's defaults for what is unset.
//!
//! Invariants, checked here so that `tuning` cannot fail: the interval is whole seconds between
//! 1 s and 1 h; the hub port is 1024 or above and none that k3s uses (k3s-contract.md section 5,
//! and the ports `spec.k3s.config` moves k3s to); a node is stale after 2 intervals or more;
//! every disabled check is one the daemon runs ([`CHECK_NAMES`]); every threshold is a field of
//! the daemon's `Thresholds` (names as it serializes them), a finite number >= 0 (percentages at
//! most 100, restart counts whole), and each warn value is on the safe side of its fail value
//! once the defaults fill in what the file leaves unset.

use std::collections::BTreeMap;

use marked_yaml::Node;
use serde::Serialize;

use super::diagnostic::{Pos, Sink};
use super::reader::{self, did_you_mean, index, mapping, no_hook, sequence, Entry, Fields};
use super::{calendar, k3s_config};
pub use crate::daemon::probes::CHECK_NAMES;
use crate::daemon::settings::{Thresholds, Tuning};

/// The longest interval: a daemon that reports less than hourly is no health check.
pub const MAX_INTERVAL_SECS: u64 = 3600;
/// Fewer than 2 intervals would mark a node stale at every report that is a little late.
pub const MIN_STALE_AFTER_INTERVALS: u32 = 2;
/// Ports below this need privileges the daemon is not meant to have, and belong to other services.
pub const MIN_HUB_PORT: u16 = 1024;

/// The ports k3s listens on (k3s-contract.md section 5: inbound, then loopback-only), which the
/// hub must not take. The UDP ones cannot clash with the hub's TCP listener, but a firewall rule
/// or a reader seeing "8472" would take it for flannel's, so they are refused too.
pub const K3S_PORTS: &[(u16, &str)] = &[
    (6443, "supervisor and Kubernetes API"),
    (10250, "kubelet"),
    (8472, "flannel VXLAN, udp"),
    (51820, "flannel WireGuard, udp"),
    (51821, "flannel WireGuard IPv6, udp"),
    (2379, "embedded etcd clients"),
    (2380, "embedded etcd peers"),
    (5001, "embedded registry"),
    (2381, "etcd metrics, loopback"),
    (2382, "etcd, loopback"),
    (6444, "API server behind the supervisor, loopback"),
    (10010, "containerd CRI streaming, loopback"),
    (10248, "kubelet healthz, loopback"),
    (10249, "kube-proxy metrics, loopback"),
    (10256, "kube-proxy healthz, loopback"),
    (10257, "kube-controller-manager, loopback"),
    (10258, "cloud-controller-manager, loopback"),
    (10259, "kube-scheduler, loopback"),
];

/// Which way a measurement gets worse, for the warn/fail order of a threshold pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Worse {
    /// Free space, available memory, days left: a warning comes at a higher value than failure.
    Lower,
    /// Busy CPU, load, clock offset, age: a warning comes at a lower value than failure.
    Higher,
}

/// Each warn threshold with its fail threshold (names as `Thresholds` serializes them); a unit
/// test keeps this table and `Thresholds` in step.
const THRESHOLD_PAIRS: &[(&str, &str, Worse)] = &[
    ("diskFreeWarnPercent", "diskFreeFailPercent", Worse::Lower),
    ("memoryAvailableWarnPercent", "memoryAvailableFailPercent", Worse::Lower),
    ("loadPerCpuWarn", "loadPerCpuFail", Worse::Higher),
    ("cpuBusyWarnPercent", "cpuBusyFailPercent", Worse::Higher),
    ("certExpiryWarnDays", "certExpiryFailDays", Worse::Lower),
    ("clockOffsetWarnMs", "clockOffsetFailMs", Worse::Higher),
    ("snapshotAgeWarnHours", "snapshotAgeFailHours", Worse::Higher),
];

/// `spec.agent` as written: `None` (or an absent threshold) means "the daemon's default".
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// `interval`, in whole seconds.
    pub interval_secs: Option<u64>,
    pub hub_port: Option<u16>,
    /// `staleAfter`, in intervals.
    pub stale_after_intervals: Option<u32>,
    /// Names from [`CHECK_NAMES`], each once, in the file's order.
    pub disabled_checks: Option<Vec<String>>,
    /// Threshold name (camelCase, a field of the daemon's `Thresholds`) to its value; restart
    /// counts are whole numbers.
    pub thresholds: BTreeMap<String, f64>,
}

/// The daemon's thresholds by name (camelCase), in its field order, with their defaults (`None`:
/// unset by default). The names come from `Thresholds` itself, so the two never disagree.
pub fn threshold_defaults() -> Vec<(String, Option<f64>)> {
    let value = serde_yaml_ng::to_value(Thresholds::default()).expect("thresholds always serialize");
    let serde_yaml_ng::Value::Mapping(map) = value else { unreachable!("Thresholds is a struct") };
    map.into_iter().filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_f64()))).collect()
}

/// Reads `spec.agent` into `out`, reporting every problem. `k3s_config` is `spec.k3s.config`,
/// already read: the ports it gives k3s are not the hub's to take.
pub(crate) fn read(
    sink: &mut Sink,
    e: &Entry<'_>,
    out: &mut AgentSpec,
    k3s_config: &BTreeMap<String, serde_json::Value>,
) {
    let Some(map) = mapping(sink, e, "with interval, hubPort, staleAfter, disabledChecks and thresholds") else {
        return;
    };
    let f = Fields::new(
        sink,
        map,
        &e.path,
        &["interval", "hubPort", "staleAfter", "disabledChecks", "thresholds"],
        &no_hook,
    );
    if let Some(e) = f.get("interval") {
        out.interval_secs = interval(sink, e);
    }
    if let Some(e) = f.get("hubPort") {
        out.hub_port = hub_port(sink, e, k3s_config);
    }
    if let Some(e) = f.get("staleAfter") {
        match reader::string(sink, e).map(|t| t.trim().parse::<u32>()) {
            Some(Ok(n)) if n >= MIN_STALE_AFTER_INTERVALS => out.stale_after_intervals = Some(n),
            Some(_) => {
                sink.error(
                    e.value_pos(),
                    &e.path,
                    format!("staleAfter must be a whole number of intervals, at least {MIN_STALE_AFTER_INTERVALS}"),
                )
                .hint(format!(
                    "a node is stale after this many intervals without a report (default {}); fewer than {MIN_STALE_AFTER_INTERVALS} would flag every late report",
                    Tuning::default().stale_after_intervals
                ));
            }
            None => {}
        }
    }
    if let Some(e) = f.get("disabledChecks") {
        out.disabled_checks = disabled_checks(sink, e);
    }
    if let Some(e) = f.get("thresholds") {
        thresholds(sink, e, &mut out.thresholds);
    }
}

/// A systemd time span of whole seconds, 1 s to 1 h.
fn interval(sink: &mut Sink, e: &Entry<'_>) -> Option<u64> {
    let text = reader::string(sink, e)?;
    let us = match calendar::timespan_us(&text) {
        Ok(us) => us,
        Err(message) => {
            sink.error(e.value_pos(), &e.path, message).hint("a systemd time span: 10s, 30s, 1min, 5min");
            return None;
        }
    };
    let problem = if us < 1_000_000 {
        "the interval must be at least 1s"
    } else if us > MAX_INTERVAL_SECS * 1_000_000 {
        "the interval must be at most 1h"
    } else if us % 1_000_000 != 0 {
        "the interval must be a whole number of seconds"
    } else {
        return Some(us / 1_000_000);
    };
    sink.error(e.value_pos(), &e.path, format!("{problem}, found {:?}", text.trim()))
        .hint(format!("the daemon measures and reports every interval (default {}s)", Tuning::default().interval_secs));
    None
}

/// A port of 1024 or above that k3s does not use.
fn hub_port(sink: &mut Sink, e: &Entry<'_>, k3s_config: &BTreeMap<String, serde_json::Value>) -> Option<u16> {
    let port = reader::port(sink, e)?;
    let default_hint = format!(
        "the hub listens on this TCP port on every server; pick a free one (default {})",
        Tuning::default().hub_port
    );
    if port < MIN_HUB_PORT {
        sink.error(e.value_pos(), &e.path, format!("hubPort must be {MIN_HUB_PORT} or above, found {port}"))
            .hint(default_hint);
        return None;
    }
    if let Some((_, purpose)) = K3S_PORTS.iter().find(|(p, _)| *p == port) {
        sink.error(e.value_pos(), &e.path, format!("port {port} is k3s's ({purpose})")).hint(default_hint);
        return None;
    }
    let moved = k3s_config.iter().find(|(key, value)| {
        k3s_config::key_spec(key).is_some_and(|s| s.kind == k3s_config::Kind::Port)
            && value.as_u64() == Some(u64::from(port))
    });
    if let Some((key, _)) = moved {
        sink.error(e.value_pos(), &e.path, format!("port {port} is k3s's: spec.k3s.config.{key} sets it"))
            .hint(default_hint);
        return None;
    }
    Some(port)
}

fn disabled_checks(sink: &mut Sink, e: &Entry<'_>) -> Option<Vec<String>> {
    let list = sequence(sink, e, "of check names")?;
    let mut names: Vec<String> = Vec::new();
    let mut ok = true;
    for (i, item) in list.iter().enumerate() {
        let path = index(&e.path, i);
        let at = Pos::of_node(item);
        let Some(s) = reader::scalar(sink, item, &path, at) else {
            ok = false;
            continue;
        };
        let name = s.as_str().trim();
        if !CHECK_NAMES.contains(&name) {
            ok = false;
            let message = match did_you_mean(name, CHECK_NAMES) {
                Some(close) => format!("unknown check {name:?}, did you mean {close:?}?"),
                None => format!("unknown check {name:?}"),
            };
            sink.error(at, &path, message).hint(format!("the daemon's checks: {}", CHECK_NAMES.join(", ")));
        } else if names.iter().any(|n| n == name) {
            // Harmless, but a sign the list was edited carelessly.
            sink.warning(at, &path, format!("{name:?} is listed twice"));
        } else {
            names.push(name.to_string());
        }
    }
    ok.then_some(names)
}

fn thresholds(sink: &mut Sink, e: &Entry<'_>, out: &mut BTreeMap<String, f64>) {
    let Some(map) = mapping(sink, e, "of threshold names to numbers") else {
        return;
    };
    let defaults = threshold_defaults();
    let known: Vec<&str> = defaults.iter().map(|(name, _)| name.as_str()).collect();
    let f = Fields::new(sink, map, &e.path, &known, &no_hook);
    let mut entries: BTreeMap<&str, &Entry<'_>> = BTreeMap::new();
    for name in &known {
        let Some(e) = f.get(name) else { continue };
        entries.insert(name, e);
        if let Some(value) = threshold_value(sink, e, name) {
            out.insert(name.to_string(), value);
        }
    }
    let default_of = |name: &str| defaults.iter().find(|(n, _)| n == name).and_then(|(_, v)| *v);
    for (warn, fail, worse) in THRESHOLD_PAIRS {
        // Only a pair the file touches is judged, and only when both of its values are usable.
        let (warn_at, fail_at) = (entries.get(warn), entries.get(fail));
        let Some(at) = warn_at.or(fail_at) else { continue };
        if (warn_at.is_some() && !out.contains_key(*warn)) || (fail_at.is_some() && !out.contains_key(*fail)) {
            continue;
        }
        let (Some(w), Some(x)) =
            (out.get(*warn).copied().or(default_of(warn)), out.get(*fail).copied().or(default_of(fail)))
        else {
            continue;
        };
        let shown = |name: &str, v: f64| {
            let origin = if out.contains_key(name) { "" } else { ", the default" };
            format!("{name} ({v}{origin})")
        };
        let (wrong, relation, worse, order) = match worse {
            Worse::Lower => (w < x, "below", "lower", ">="),
            Worse::Higher => (w > x, "above", "higher", "<="),
        };
        if wrong {
            let message = format!("{} is {relation} {}", shown(warn, w), shown(fail, x));
            let hint = format!(
                "{worse} is worse for this measurement and a check warns before it fails: set {warn} {order} {fail}"
            );
            sink.error(at.key_pos(), &at.path, message).hint(hint);
        }
    }
}

/// A finite number >= 0; at most 100 for a percentage, whole for a count.
fn threshold_value(sink: &mut Sink, e: &Entry<'_>, name: &str) -> Option<f64> {
    let s = match e.value {
        Node::Scalar(s) => s,
        other => {
            sink.error(e.value_pos(), &e.path, format!("must be a number, found {}", reader::kind_name(other)));
            return None;
        }
    };
    let text = s.as_str().trim();
    let problem = match text.parse::<f64>() {
        Ok(v) if !v.is_finite() || v < 0.0 => format!("must be a number of 0 or more, found {text:?}"),
        Ok(v) if name.ends_with("Percent") && v > 100.0 => format!("must be a percentage (0 to 100), found {text}"),
        // The daemon counts restarts in a u32 (systemd's NRestarts).
        Ok(v) if name == "k3sRestartsWarn" && (v.fract() != 0.0 || v > f64::from(u32::MAX)) => {
            format!("must be a whole number of restarts, found {text}")
        }
        Ok(v) => return Some(v),
        Err(_) => format!("must be a number, found {text:?}"),
    };
    let hint = if name == "k3sRestartsWarn" {
        "restarts of the k3s unit (systemd's NRestarts) before a warning, e.g. `3`"
    } else {
        "a plain number, e.g. `15` or `2.5`, in the unit its name ends with (Percent, Days, Ms, Hours; load per CPU)"
    };
    sink.error(e.value_pos(), &e.path, problem).hint(hint);
    None
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::cluster::{parse, LoadError};

    fn with_agent(agent: &str) -> Result<AgentSpec, String> {
        let text = format!(
            "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: lab\nspec:\n  hosts:\n    - name: s1\n      address: 10.0.0.1\n      role: server\n  k3s:\n    config:\n      https-listen-port: 7443\n  agent:\n{agent}"
        );
        match parse("cluster.yaml", Path::new("/"), &text) {
            Ok(f) => Ok(f.agent),
            Err(LoadError::Invalid(d)) => Err(d.to_string()),
            Err(other) => Err(other.to_string()),
        }
    }

    #[test]
    fn the_pair_table_names_every_warn_and_fail_threshold_of_the_daemon() {
        let names: Vec<String> = threshold_defaults().into_iter().map(|(n, _)| n).collect();
        for (warn, fail, _) in THRESHOLD_PAIRS {
            assert!(names.iter().any(|n| n == warn) && names.iter().any(|n| n == fail), "{warn}/{fail} in {names:?}");
        }
        for name in names.iter().filter(|n| n.contains("Warn")) {
            let fail = name.replace("Warn", "Fail");
            if names.contains(&fail) {
                assert!(THRESHOLD_PAIRS.iter().any(|(w, _, _)| w == name), "{name} has no row in THRESHOLD_PAIRS");
            }
        }
    }

    #[test]
    fn every_field_is_read_as_written_and_unset_ones_stay_unset() {
        let a = with_agent("    interval: 1min\n    hubPort: 10300\n    staleAfter: 5\n    disabledChecks: [kubelet, snapshot]\n    thresholds:\n      diskFreeWarnPercent: 25\n      k3sRestartsWarn: 10\n").unwrap();
        assert_eq!(a.interval_secs, Some(60));
        assert_eq!(a.hub_port, Some(10300));
        assert_eq!(a.stale_after_intervals, Some(5));
        assert_eq!(a.disabled_checks, Some(vec!["kubelet".to_string(), "snapshot".to_string()]));
        assert_eq!(
            a.thresholds,
            BTreeMap::from([("diskFreeWarnPercent".into(), 25.0), ("k3sRestartsWarn".into(), 10.0)])
        );
        let empty = with_agent("    thresholds: {}\n").unwrap();
        assert_eq!(empty, AgentSpec::default());
    }

    #[test]
    fn intervals_outside_one_second_to_one_hour_or_not_whole_seconds_are_refused() {
        assert_eq!(with_agent("    interval: 1s\n").unwrap().interval_secs, Some(1));
        assert_eq!(with_agent("    interval: 1h\n").unwrap().interval_secs, Some(3600));
        assert_eq!(with_agent("    interval: 30\n").unwrap().interval_secs, Some(30), "a bare number is seconds");
        for (value, message) in [
            ("500ms", "at least 1s"),
            ("0", "at least 1s"),
            ("61min", "at most 1h"),
            ("1.5s", "whole number of seconds"),
            ("ten seconds", "time"),
        ] {
            let e = with_agent(&format!("    interval: {value}\n")).unwrap_err();
            assert!(e.contains("spec.agent.interval: ") && e.contains(message), "{value}: {e}");
        }
    }

    #[test]
    fn a_hub_port_k3s_uses_or_below_1024_is_refused_naming_its_owner() {
        for (port, owner) in [
            ("6443", "supervisor and Kubernetes API"),
            ("10250", "kubelet"),
            ("2380", "etcd peers"),
            ("7443", "spec.k3s.config.https-listen-port sets it"),
        ] {
            let e = with_agent(&format!("    hubPort: {port}\n")).unwrap_err();
            assert!(e.contains(&format!("port {port} is k3s's")) && e.contains(owner), "{port}: {e}");
        }
        assert!(with_agent("    hubPort: 443\n").unwrap_err().contains("1024 or above"));
        assert!(with_agent("    hubPort: 70000\n").unwrap_err().contains("out of range"));
        assert_eq!(with_agent("    hubPort: 1024\n").unwrap().hub_port, Some(1024));
    }

    #[test]
    fn stale_after_must_be_two_intervals_or_more() {
        assert_eq!(with_agent("    staleAfter: 2\n").unwrap().stale_after_intervals, Some(2));
        for value in ["1", "0", "2.5", "-3", "many"] {
            let e = with_agent(&format!("    staleAfter: {value}\n")).unwrap_err();
            assert!(e.contains("at least 2"), "{value}: {e}");
        }
    }

    #[test]
    fn disabled_checks_are_the_daemons_own_names_with_a_suggestion_for_a_typo() {
        let e = with_agent("    disabledChecks: [kubelett, disk_root, nope]\n").unwrap_err();
        assert!(e.contains("unknown check \"kubelett\", did you mean \"kubelet\"?"), "{e}");
        assert!(e.contains("unknown check \"disk_root\", did you mean \"disk-root\"?"), "{e}");
        assert!(e.contains("unknown check \"nope\"\n") && e.contains("the daemon's checks: cpu, memory"), "{e}");
        let text = "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: lab\nspec:\n  hosts:\n    - name: s1\n      address: 10.0.0.1\n      role: server\n  agent:\n    disabledChecks: [clock, clock]\n";
        let f = parse("cluster.yaml", Path::new("/"), text).unwrap();
        assert_eq!(f.agent.disabled_checks, Some(vec!["clock".to_string()]));
        assert!(f.warnings.to_string().contains("\"clock\" is listed twice"), "{}", f.warnings);
    }

    #[test]
    fn thresholds_are_non_negative_numbers_with_percentages_at_most_100_and_whole_restart_counts() {
        for (line, message) in [
            ("cpuBusyFailPercent: 101", "percentage (0 to 100)"),
            ("loadPerCpuWarn: -1", "0 or more"),
            ("loadPerCpuWarn: .nan", "must be a number"),
            ("loadPerCpuWarn: inf", "0 or more"),
            ("k3sRestartsWarn: 2.5", "whole number of restarts"),
            ("clockOffsetWarnMs: [1]", "must be a number, found a list"),
            ("diskFreeWarn: 20", "unknown field `diskFreeWarn`, did you mean `diskFreeWarnPercent`?"),
        ] {
            let e = with_agent(&format!("    thresholds:\n      {line}\n")).unwrap_err();
            assert!(e.contains(message), "{line}: {e}");
        }
    }

    #[test]
    fn a_warn_threshold_on_the_wrong_side_of_its_fail_threshold_is_refused_at_its_key() {
        // Against the default: disk free fails below 10%, so warning below 5% comes too late.
        let e = with_agent("    thresholds:\n      diskFreeWarnPercent: 5\n").unwrap_err();
        assert!(
            e.contains("cluster.yaml:15:7: spec.agent.thresholds.diskFreeWarnPercent: diskFreeWarnPercent (5) is below diskFreeFailPercent (10, the default)"),
            "{e}"
        );
        let e =
            with_agent("    thresholds:\n      cpuBusyWarnPercent: 80\n      cpuBusyFailPercent: 70\n").unwrap_err();
        assert!(e.contains("cpuBusyWarnPercent (80) is above cpuBusyFailPercent (70)"), "{e}");
        // Both moved together, and a single one whose partner is unset by default, are fine.
        let a = with_agent(
            "    thresholds:\n      loadPerCpuWarn: 6\n      loadPerCpuFail: 8\n      snapshotAgeWarnHours: 30\n",
        )
        .unwrap();
        assert_eq!(a.thresholds.len(), 3);
        // Equal values are allowed: the check goes straight from ok to fail.
        assert!(with_agent("    thresholds:\n      certExpiryWarnDays: 7\n").is_ok());
    }
}
