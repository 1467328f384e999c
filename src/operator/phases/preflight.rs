//! `preflight`: every host checked by its helper, in parallel, then across hosts (unique
//! identities, clock skew). In `up` a failed check stops the run unless overridden; in a dry run
//! it fails the run but the plan goes on, so the user sees both; the `preflight` command reports
//! them all.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::stream::{self, StreamExt};

use crate::cluster::ClusterFile;
use crate::operator::cross_host::{cross_host_checks, HostAnswer};
use crate::operator::engine::{HostError, HostState, Phase, PhaseRun, RunContext};
use crate::operator::link::{Link, LinkError};
use crate::protocol::node::Role;
use crate::protocol::preflight::{PreflightReport, PreflightRequest, Status};

pub struct Preflight {
    /// Apply the safe fixes first (modules, sysctls).
    pub fix: bool,
    /// Failed checks are reported but do not fail the phase (`up --ignore-preflight`).
    pub ignore_failures: bool,
}

/// Addresses from the cluster file that are the host's own (k3s's `node-ip` on multi-homed hosts).
#[derive(Debug, Default, Clone)]
pub struct OwnAddresses(pub BTreeMap<String, String>);

pub fn request_for(cluster: &ClusterFile, role: Role, fix: bool) -> PreflightRequest {
    PreflightRequest {
        role,
        k3s_version: cluster.k3s.version.clone(),
        cluster_cidr: cluster.k3s.cluster_cidr(),
        service_cidr: cluster.k3s.service_cidr(),
        fix,
        hub_port: cluster.agent.hub_port.unwrap_or(crate::daemon::settings::DEFAULT_HUB_PORT),
    }
}

#[async_trait]
impl Phase for Preflight {
    fn name(&self) -> &'static str {
        "preflight"
    }

    fn applies(&self, _: &RunContext) -> bool {
        true
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        None
    }

    fn failure_stops_a_dry_run(&self) -> bool {
        false
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let cluster = run.cluster.clone();
        let observer = run.observer.clone();
        let fix = self.fix && !run.options.dry_run;
        let tasks: Vec<_> = run
            .active()
            .map(|(m, link)| {
                let request = request_for(&cluster, m.host.role, fix);
                let (link, name, address, observer) =
                    (link.clone(), m.host.name.clone(), m.host.address.clone(), observer.clone());
                let host_key = m.host_key.clone();
                async move {
                    let started = Instant::now();
                    observer.phase(&name, if fix { "fixing and checking" } else { "checking" });
                    let outcome = check_host(&link, &request, observer.as_ref()).await;
                    (name, address, host_key, outcome, started.elapsed())
                }
            })
            .collect();
        let answers: Vec<_> = stream::iter(tasks).buffered(run.options.concurrency.max(1)).collect().await;

        let mut reports: Vec<(String, String, Option<String>, PreflightReport, i64)> = Vec::new();
        let mut unreachable = Vec::new();
        for (name, address, host_key, outcome, elapsed) in answers {
            let result = run.host(&name);
            result.elapsed += elapsed;
            match outcome {
                Ok((report, offset)) => reports.push((name, address, host_key, report, offset)),
                Err(e) => {
                    unreachable.push(e.to_string());
                    result.fail(HostError::from(&e));
                }
            }
        }
        let cross = {
            let answers: Vec<HostAnswer> = reports
                .iter()
                .map(|(host, address, host_key, report, offset)| HostAnswer {
                    host,
                    address,
                    facts: &report.facts,
                    clock_offset_ms: *offset,
                    host_key: host_key.as_deref(),
                })
                .collect();
            cross_host_checks(&answers)
        };
        let dry_run = run.options.dry_run;
        let mut own = OwnAddresses::default();
        let mut failing = Vec::new();
        for ((name, address, _, mut report, _), checks) in reports.into_iter().zip(cross) {
            report.checks.extend(checks);
            if report.facts.addresses.contains(&address) {
                own.0.insert(name.clone(), address);
            }
            let failed: Vec<String> = report
                .checks
                .iter()
                .filter(|c| c.status == Status::Fail)
                .map(|c| format!("{} ({})", c.id, c.reason))
                .collect();
            let result = run.host(&name);
            result.notes.extend(report.fixes_applied.iter().map(|f| format!("fixed: {f}")));
            if !report.fixes_applied.is_empty() && result.state == HostState::Unchanged {
                result.state = HostState::Changed;
            }
            result.checks = report.checks;
            result.facts = Some(report.facts);
            if !failed.is_empty() {
                failing.push(format!("{name}: {}", failed.join(", ")));
                // A dry run still plans a host that failed its checks.
                if !self.ignore_failures && !dry_run {
                    result.fail(HostError {
                        kind: "preflight".into(),
                        message: format!("preflight failed: {}", failed.join("; ")),
                        retryable: false,
                    });
                }
            }
        }
        run.slots.put(own);
        if !unreachable.is_empty() {
            return PhaseRun::Failed(unreachable.join("; "));
        }
        match (failing.is_empty(), self.ignore_failures) {
            (true, _) => PhaseRun::Done("every host passed".into()),
            (false, true) => PhaseRun::Done(format!("failures ignored (--ignore-preflight): {}", failing.join("; "))),
            (false, false) => PhaseRun::Failed(failing.join("; ")),
        }
    }
}

async fn check_host(
    link: &Link,
    request: &PreflightRequest,
    observer: &dyn crate::operator::progress::Observer,
) -> Result<(PreflightReport, i64), LinkError> {
    let host = link.host().to_string();
    let sent = now_ms();
    let report = link.call(request).progress(|m| observer.message(&host, m)).send().await?;
    let received = now_ms();
    // The host read its clock somewhere between send and receive; the midpoint halves the error.
    let offset = report.facts.clock_unix_ms - (sent + received) / 2;
    Ok((report, offset))
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
