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

use async_trait::async_trait;
use futures::stream::{self, StreamExt};

use crate::cluster::{ClusterFile, Host};
use crate::daemon::pki;
use crate::daemon::settings::{FleetMember, Settings, Tuning};
use crate::host::k3s::layout::DEFAULT_KUBECONFIG;
use crate::operator::engine::{Change, ChangeAction, HostError, HostState, Phase, PhaseRun, RunContext};
use crate::operator::link::{Link, LinkError};
use crate::protocol::health::{DaemonIdentity, DaemonReport, IdentityAnswer, InstallDaemon};
use crate::protocol::k3s::{FileAction, ServiceAction};
use crate::protocol::node::Role;
use crate::protocol::Secret;

pub struct Daemon;

/// What users tune in the daemon. Today the defaults; the cluster file's `spec.agent` will map
/// onto [`Tuning`] here (and nowhere else).
pub fn tuning(_cluster: &ClusterFile) -> Tuning {
    Tuning::default()
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
        tuning: tuning(cluster),
    }
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
        let jobs: Vec<(Host, Link)> = run.active().map(|(m, link)| (m.host.clone(), link.clone())).collect();
        let concurrency = run.options.concurrency.max(1);

        // 1. Identities.
        let identities: Vec<(Host, Link, Result<IdentityAnswer, LinkError>)> =
            stream::iter(jobs.into_iter().map(|(host, link)| async move {
                let answer = link.call(&DaemonIdentity { dry_run }).send().await;
                (host, link, answer)
            }))
            .buffered(concurrency)
            .collect()
            .await;

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
        PhaseRun::Done(format!("{verb} on {restarted} hosts, unchanged on {unchanged}; {ca}"))
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
