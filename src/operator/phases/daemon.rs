//! `daemon`: the node daemon (`k3node-agent.service`) on every host, after k3s is Ready.
//!
//! 1. Each host makes its own key if it has none (it never leaves the host) and answers with a
//!    certificate request, the certificate and CA it holds, and on a server the CA's key.
//! 2. The cluster's hub CA is the one the first server (in the cluster file's order) that has
//!    one keeps; a cluster without one gets a new CA here.
//! 3. Each host's certificate is kept when it is signed by that CA, for its key and names, with
//!    more than 30 days left; otherwise a new one is signed here from its request.
//! 4. Each host gets its settings (the servers' addresses as hubs, the tuning, and on servers the
//!    fleet and the kubeconfig for Node conditions), the certificates, and the CA key on servers;
//!    the helper restarts the daemon only when something it runs with changed.
//!
//! A re-run on a converged cluster changes nothing and restarts nothing.

use std::collections::BTreeMap;

use async_trait::async_trait;
use futures::stream::{self, StreamExt};

use crate::cluster::{ClusterFile, Host};
use crate::daemon::pki;
use crate::daemon::settings::{FleetMember, Settings, Thresholds, Tuning};
use crate::host::k3s::layout::DEFAULT_KUBECONFIG;
use crate::operator::engine::{Change, ChangeAction, HostError, HostState, Phase, PhaseRun, RunContext};
use crate::operator::link::{Link, LinkError};
use crate::protocol::health::{DaemonIdentity, DaemonReport, IdentityAnswer, InstallDaemon};
use crate::protocol::k3s::{FileAction, ServiceAction};
use crate::protocol::node::Role;
use crate::protocol::Secret;

pub struct Daemon;

/// What users tune in the daemon: the cluster file's `spec.agent` mapped onto [`Tuning`] (here
/// and nowhere else), the daemon's defaults for what it leaves unset. The cluster module has
/// checked every value (see `cluster::AgentSpec`), so the mapping cannot fail.
pub fn tuning(cluster: &ClusterFile) -> Tuning {
    let spec = &cluster.agent;
    let defaults = Tuning::default();
    Tuning {
        interval_secs: spec.interval_secs.unwrap_or(defaults.interval_secs),
        hub_port: spec.hub_port.unwrap_or(defaults.hub_port),
        stale_after_intervals: spec.stale_after_intervals.unwrap_or(defaults.stale_after_intervals),
        disabled_checks: spec.disabled_checks.clone().unwrap_or(defaults.disabled_checks),
        thresholds: thresholds(&spec.thresholds),
        ..defaults
    }
}

/// The daemon's thresholds with those the file sets. They are named as [`Thresholds`]
/// serializes its fields, so they are applied through serde rather than a second list of names.
fn thresholds(set: &BTreeMap<String, f64>) -> Thresholds {
    let mut fields = match serde_json::to_value(Thresholds::default()) {
        Ok(serde_json::Value::Object(fields)) => fields,
        _ => unreachable!("Thresholds serializes as a struct"),
    };
    for (name, value) in set {
        // A whole number goes in as an integer: the restart count is a u32, which serde_json does
        // not read from a float, while the f64 fields read integers.
        let number = if value.fract() == 0.0 && *value >= 0.0 && *value <= u64::MAX as f64 {
            serde_json::Number::from(*value as u64)
        } else {
            serde_json::Number::from_f64(*value).expect("the cluster file only holds finite thresholds")
        };
        fields.insert(name.clone(), serde_json::Value::Number(number));
    }
    serde_json::from_value(serde_json::Value::Object(fields))
        .expect("the cluster file only holds thresholds the daemon knows, with values it reads")
}

/// The settings file of `host`.
pub fn settings_for(cluster: &ClusterFile, host: &Host) -> Settings {
    let server = host.role == Role::Server;
    Settings {
        node: host.name.clone(),
        role: host.role,
        hubs: cluster.servers().map(|s| s.address.clone()).collect(),
        fleet: if server {
            cluster.hosts.iter().map(|h| FleetMember { name: h.name.clone(), role: h.role }).collect()
        } else {
            Vec::new()
        },
        kubeconfig: server.then(|| DEFAULT_KUBECONFIG.to_string()),
        tuning: host_tuning(cluster, host),
    }
}

/// `spec.agent`'s tuning, less the checks of what k3s does not run on `host`: a server without
/// k3s's agent part has no kubelet and no containerd to judge.
fn host_tuning(cluster: &ClusterFile, host: &Host) -> Tuning {
    let mut tuning = tuning(cluster);
    if !crate::operator::node_config::runs_kubelet(cluster, host) {
        for check in ["containerd", "kubelet"] {
            if !tuning.disabled_checks.iter().any(|c| c == check) {
                tuning.disabled_checks.push(check.to_string());
            }
        }
    }
    tuning
}

#[async_trait]
impl Phase for Daemon {
    fn name(&self) -> &'static str {
        "daemon"
    }

    fn applies(&self, _: &RunContext) -> bool {
        true
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        // It plans: every host shows the files it would write and whether the daemon restarts.
        None
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let dry_run = run.options.dry_run;
        let cluster = run.cluster.clone();
        let concurrency = run.options.concurrency.max(1);

        // 1. Identities.
        let identities: Vec<(Host, Link, Result<IdentityAnswer, LinkError>)> = run
            .on_each_host(|host, link| async move {
                let answer = link.call(&DaemonIdentity { dry_run }).send().await;
                (host, link, answer)
            })
            .await
            .into_iter()
            .map(|(_, identity)| identity)
            .collect();

        // 2. The CA: the first server's that keeps one, else a new one.
        let now = time::OffsetDateTime::now_utc();
        let kept = cluster.servers().find_map(|server| {
            identities.iter().find(|(h, _, _)| h.name == server.name).and_then(|(_, _, a)| match a {
                Ok(IdentityAnswer { ca_cert_pem: Some(cert), ca_key: Some(key), .. }) => {
                    Some((cert.clone(), key.clone()))
                }
                _ => None,
            })
        });
        let (ca_cert, ca_key, ca_new) = match kept {
            Some((cert, key)) => (cert, key, false),
            None => match pki::generate_ca(&cluster.name, now) {
                Ok((cert, key)) => (cert, key, true),
                Err(e) => return PhaseRun::Failed(format!("cannot make the cluster's hub CA: {e}")),
            },
        };

        // 3 and 4. Certificates and installs.
        let installs = stream::iter(identities.into_iter().map(|(host, link, identity)| {
            let (cluster, ca_cert, ca_key) = (cluster.clone(), ca_cert.clone(), ca_key.clone());
            async move {
                let identity = match identity {
                    Ok(i) => i,
                    Err(e) => return (host, Err(e.to_string()), None),
                };
                let request = match request_for(&cluster, &host, &identity, &ca_cert, &ca_key, now, dry_run) {
                    Ok(r) => r,
                    Err(e) => return (host, Err(e), None),
                };
                let reissued = identity.node_cert_pem.as_deref() != Some(request.node_cert_pem.as_str());
                let outcome = link.call(&request).send().await.map_err(|e| e.to_string());
                (host, outcome, Some(reissued))
            }
        }))
        .buffered(concurrency)
        .collect::<Vec<_>>()
        .await;

        let mut failures = Vec::new();
        let (mut restarted, mut unchanged) = (0, 0);
        for (host, outcome, _) in installs {
            let result = run.host(&host.name);
            match outcome {
                Ok(report) => {
                    if record(result, &report, dry_run) {
                        restarted += 1;
                    } else {
                        unchanged += 1;
                    }
                }
                Err(message) => {
                    failures.push(format!("{}: {message}", host.name));
                    result.fail(HostError {
                        kind: "failed".into(),
                        message: format!("node daemon: {message}"),
                        retryable: true,
                    });
                }
            }
        }
        if !failures.is_empty() {
            return PhaseRun::Failed(failures.join("; "));
        }
        let verb = if dry_run { "would (re)start" } else { "(re)started" };
        let ca = if ca_new { "a new hub CA" } else { "the cluster's hub CA" };
        PhaseRun::Done(format!("{verb} on {}, unchanged on {unchanged}; {ca}", crate::words::count(restarted, "host")))
    }
}

/// The install request of one host: its certificate kept or signed anew.
fn request_for(
    cluster: &ClusterFile,
    host: &Host,
    identity: &IdentityAnswer,
    ca_cert: &str,
    ca_key: &Secret,
    now: time::OffsetDateTime,
    dry_run: bool,
) -> Result<InstallDaemon, String> {
    let names = pki::node_names(&host.name, &host.address, host.role);
    let node_cert_pem = match (&identity.csr_pem, &identity.node_cert_pem) {
        (Some(csr), Some(cert)) if pki::reissue_reason(cert, ca_cert, csr, &host.name, &names, now).is_none() => {
            cert.clone()
        }
        (Some(csr), _) => pki::sign_node(ca_cert, ca_key.expose(), csr, &host.name, host.role, &names, now)
            .map_err(|e| format!("cannot sign {}'s certificate: {e}", host.name))?,
        // A dry run on a host without a key yet: the certificate it would get.
        (None, _) if dry_run => "(a certificate signed for the node's new key)".to_string(),
        (None, _) => return Err("the host made no certificate request".into()),
    };
    Ok(InstallDaemon {
        role: host.role,
        node_name: host.name.clone(),
        settings_yaml: settings_for(cluster, host).render(),
        ca_cert_pem: ca_cert.to_string(),
        ca_key: (host.role == Role::Server).then(|| ca_key.clone()),
        node_cert_pem,
        dry_run,
    })
}

/// The daemon's part in a host's result; true when it was (or would be) restarted.
fn record(result: &mut crate::operator::engine::HostResult, report: &DaemonReport, dry_run: bool) -> bool {
    let changed = report.changes.iter().any(|c| c.action != FileAction::Unchanged);
    for change in report.changes.iter().filter(|c| c.action != FileAction::Unchanged) {
        result.changes.push(Change::from(change));
    }
    if report.service_action != ServiceAction::None {
        let verb = match (dry_run, report.service_action) {
            (true, _) => "would restart",
            (false, ServiceAction::Start) => "started",
            (false, _) => "restarted",
        };
        result.notes.push(format!("k3node-agent {verb}: {}", report.reasons.join("; ")));
    }
    if changed || report.service_action != ServiceAction::None {
        result.state = match (dry_run, result.state) {
            (true, _) => HostState::WouldChange,
            (false, HostState::Unchanged) => HostState::Changed,
            (false, other) => other,
        };
        if result.changes.is_empty() {
            result.changes.push(Change {
                subject: "k3node-agent.service".into(),
                action: ChangeAction::Done,
                detail: Some(report.reasons.join("; ")),
            });
        }
    }
    report.service_action != ServiceAction::None
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use async_trait::async_trait;

    use super::*;
    use crate::daemon::probes::{self, Collected, Endpoints, ProbeState, CHECK_NAMES};
    use crate::host::system::fake::FakeSystem;

    fn corpus(name: &str) -> ClusterFile {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/valid");
        crate::cluster::load(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn with_agent(agent: &str) -> ClusterFile {
        let text = format!(
            "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: lab\nspec:\n  hosts:\n    - name: s1\n      address: 10.0.0.1\n      role: server\n{agent}"
        );
        crate::cluster::parse("cluster.yaml", Path::new("/"), &text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn spec_agent_maps_onto_the_tuning_with_the_daemons_defaults_for_what_it_leaves_unset() {
        let t = tuning(&corpus("agent.yaml"));
        let d = Tuning::default();
        assert_eq!((t.interval_secs, t.hub_port, t.stale_after_intervals), (30, 10300, 4));
        assert_eq!(t.disabled_checks, ["kubelet", "containerd"]);
        assert_eq!((t.thresholds.disk_free_warn_percent, t.thresholds.disk_free_fail_percent), (20.0, 12.5));
        assert_eq!(
            (t.thresholds.load_per_cpu_warn, t.thresholds.load_per_cpu_fail),
            (d.thresholds.load_per_cpu_warn, 6.0)
        );
        assert_eq!(t.thresholds.k3s_restarts_warn, 5);
        assert_eq!(
            (t.thresholds.snapshot_age_warn_hours, t.thresholds.snapshot_age_fail_hours),
            (Some(26.0), Some(50.0))
        );
        // What spec.agent cannot say keeps the daemon's defaults.
        assert_eq!(
            (t.thresholds.cpu_busy_warn_percent, t.thresholds.cert_expiry_fail_days),
            (d.thresholds.cpu_busy_warn_percent, d.thresholds.cert_expiry_fail_days)
        );
        assert_eq!(
            (t.buffer_max_reports, t.history_per_node, t.condition_resync_secs),
            (d.buffer_max_reports, d.history_per_node, d.condition_resync_secs)
        );
        assert_eq!(tuning(&corpus("minimal.yaml")), d, "no spec.agent: the defaults");
    }

    #[test]
    fn every_threshold_the_cluster_file_accepts_reaches_the_tuning() {
        // Each threshold in turn, set to its partner's default (equal warn and fail values are
        // allowed) or, without one, to 7: never its own default, so the mapping shows.
        let defaults = crate::cluster::threshold_defaults();
        for (name, own) in &defaults {
            let partner =
                if name.contains("Warn") { name.replace("Warn", "Fail") } else { name.replace("Fail", "Warn") };
            let value = defaults.iter().find(|(n, _)| *n == partner).and_then(|(_, v)| *v).unwrap_or(7.0);
            assert_ne!(Some(value), *own, "{name}");
            let t = tuning(&with_agent(&format!("  agent:\n    thresholds:\n      {name}: {value}\n")));
            let fields = serde_json::to_value(&t.thresholds).unwrap();
            assert_eq!(fields[name].as_f64(), Some(value), "{name}: {fields}");
        }
    }

    #[test]
    fn a_change_of_spec_agent_changes_the_settings_file_and_no_change_keeps_it_byte_for_byte() {
        let before = with_agent("  agent:\n    interval: 10s\n");
        let host = before.host("s1").unwrap().clone();
        let same = with_agent("");
        assert_eq!(settings_for(&before, &host).render(), settings_for(&same, &host).render());
        let after = with_agent("  agent:\n    interval: 20s\n    thresholds:\n      cpuBusyWarnPercent: 80\n");
        let text = settings_for(&after, &host).render();
        assert_ne!(text, settings_for(&before, &host).render());
        let read = Settings::parse("agent.yaml", &text).unwrap();
        assert_eq!((read.tuning.interval_secs, read.tuning.thresholds.cpu_busy_warn_percent), (20, 80.0));
    }

    #[test]
    fn a_server_without_k3s_agent_part_is_not_judged_on_a_kubelet_or_containerd_it_does_not_run() {
        let text = "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: lab\nspec:\n  hosts:\n    - name: s1\n      address: 10.0.0.1\n      role: server\n    - name: a1\n      address: 10.0.0.2\n      role: agent\n  k3s:\n    config:\n      disable-agent: true\n  agent:\n    disabledChecks: [kubelet]\n";
        let cluster = crate::cluster::parse("cluster.yaml", Path::new("/"), text).unwrap_or_else(|e| panic!("{e}"));
        let checks = |name: &str| settings_for(&cluster, cluster.host(name).unwrap()).tuning.disabled_checks;
        assert_eq!(checks("s1"), ["kubelet", "containerd"], "each once, the cluster file's first");
        assert_eq!(checks("a1"), ["kubelet"], "an agent runs both: only what the file says");
        let plain = with_agent("");
        assert!(settings_for(&plain, plain.host("s1").unwrap()).tuning.disabled_checks.is_empty());
    }

    struct Unreachable;

    #[async_trait]
    impl Endpoints for Unreachable {
        async fn unix_connect(&self, _: &Path) -> Result<(), String> {
            Err("Connection refused".into())
        }
        async fn http_get(&self, _: &str) -> Result<(u16, String), String> {
            Err("Connection refused".into())
        }
    }

    #[tokio::test]
    async fn the_check_names_the_cluster_file_accepts_are_exactly_those_the_probes_report() {
        // A server whose every probe fails still reports every check (by its reason), once a hub
        // measured its clock.
        let settings = Settings::new("s1", Role::Server, &[]);
        let mut state = ProbeState::default();
        state.clock_offset_ms = Some(5.0);
        let mut c: Collected = probes::collect_local(&FakeSystem::new(), &settings, &mut state);
        probes::collect_network(&Unreachable, &settings, &mut c).await;
        let mut reported: Vec<&str> = c.checks.iter().map(|x| x.name.as_str()).collect();
        let mut accepted = CHECK_NAMES.to_vec();
        reported.sort();
        accepted.sort();
        assert_eq!(reported, accepted);
    }
}
