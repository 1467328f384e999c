//! `k3node preflight`: every host checked by its agent, in parallel, then across hosts.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::{self, StreamExt};
use serde::Serialize;

use super::agent::{AgentError, AgentInstall};
use super::cross_host::{cross_host_checks, HostAnswer};
use super::fleet::{Fleet, Link};
use super::progress::Observer;
use crate::cluster::ClusterFile;
use crate::protocol::preflight::{PreflightReport, PreflightRequest, Role, Status};
use crate::protocol::Request;

#[derive(Debug, Clone)]
pub struct PreflightOptions {
    pub fix: bool,
    /// How many hosts are worked on at once.
    pub concurrency: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostPreflight {
    pub host: String,
    pub address: String,
    pub role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentInstall>,
    #[serde(flatten)]
    pub outcome: HostOutcome,
    #[serde(serialize_with = "as_secs")]
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostOutcome {
    Report(PreflightReport),
    /// The host could not be checked at all (connection, auth, agent).
    Error {
        kind: String,
        message: String,
    },
}

impl HostOutcome {
    fn from_error(e: &AgentError) -> HostOutcome {
        HostOutcome::Error { kind: e.kind().to_string(), message: e.to_string() }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PreflightRun {
    pub cluster: String,
    pub hosts: Vec<HostPreflight>,
}

impl PreflightRun {
    /// True when no host failed to answer and no check failed.
    pub fn passed(&self) -> bool {
        self.hosts.iter().all(|h| match &h.outcome {
            HostOutcome::Report(r) => r.checks.iter().all(|c| c.status != Status::Fail),
            HostOutcome::Error { .. } => false,
        })
    }

    pub fn report(&self, host: &str) -> Option<&PreflightReport> {
        self.hosts.iter().find(|h| h.host == host).and_then(|h| match &h.outcome {
            HostOutcome::Report(r) => Some(r),
            HostOutcome::Error { .. } => None,
        })
    }
}

pub fn request_for(cluster: &ClusterFile, role: Role, fix: bool) -> PreflightRequest {
    PreflightRequest {
        role,
        k3s_version: cluster.k3s.version.clone(),
        cluster_cidr: cluster.k3s.cluster_cidr(),
        service_cidr: cluster.k3s.service_cidr(),
        fix,
    }
}

/// Runs preflight on every member of `fleet` (connected or not: a member that could not be
/// reached is reported as such), then the cross-host checks over those that answered.
pub async fn run(
    cluster: &ClusterFile,
    fleet: &Fleet,
    options: &PreflightOptions,
    observer: Arc<dyn Observer>,
) -> PreflightRun {
    let tasks = fleet.members.iter().map(|member| {
        let observer = observer.clone();
        let request = request_for(cluster, member.host.role, options.fix);
        async move {
            let started = Instant::now();
            let (agent, outcome, offset) = match &member.link {
                Err(e) => (None, HostOutcome::from_error(e), 0),
                Ok(link) => match check_host(link, &member.host.name, &request, observer.as_ref()).await {
                    Ok((report, offset)) => (Some(link.agent), HostOutcome::Report(report), offset),
                    Err(e) => (Some(link.agent), HostOutcome::from_error(&e), 0),
                },
            };
            let hp = HostPreflight {
                host: member.host.name.clone(),
                address: member.host.address.clone(),
                role: member.host.role,
                agent,
                outcome,
                elapsed: member.elapsed + started.elapsed(),
            };
            (hp, offset)
        }
    });
    let mut results: Vec<(HostPreflight, i64)> =
        stream::iter(tasks).buffered(options.concurrency.max(1)).collect().await;

    let answered: Vec<usize> =
        (0..results.len()).filter(|i| matches!(results[*i].0.outcome, HostOutcome::Report(_))).collect();
    let cross = {
        let answers: Vec<HostAnswer> = answered
            .iter()
            .map(|&i| {
                let (hp, offset) = &results[i];
                let HostOutcome::Report(report) = &hp.outcome else { unreachable!("filtered above") };
                HostAnswer { host: &hp.host, address: &hp.address, facts: &report.facts, clock_offset_ms: *offset }
            })
            .collect();
        cross_host_checks(&answers)
    };
    for (&i, checks) in answered.iter().zip(cross) {
        if let HostOutcome::Report(report) = &mut results[i].0.outcome {
            report.checks.extend(checks);
        }
    }
    let hosts: Vec<HostPreflight> = results.into_iter().map(|(hp, _)| hp).collect();
    for hp in &hosts {
        let (ok, summary) = summarize(hp);
        observer.done(&hp.host, ok, &summary);
    }
    PreflightRun { cluster: cluster.name.clone(), hosts }
}

async fn check_host(
    link: &Link,
    host: &str,
    request: &PreflightRequest,
    observer: &dyn Observer,
) -> Result<(PreflightReport, i64), AgentError> {
    observer.phase(host, if request.fix { "fixing and checking" } else { "checking" });
    let sent = now_ms();
    let report = link
        .target
        .call::<PreflightReport>(&Request::Preflight(request.clone()), &mut |m| observer.message(host, m))
        .await?;
    let received = now_ms();
    // The host read its clock somewhere between send and receive; the midpoint halves the error.
    let offset = report.facts.clock_unix_ms - (sent + received) / 2;
    Ok((report, offset))
}

fn summarize(hp: &HostPreflight) -> (bool, String) {
    match &hp.outcome {
        HostOutcome::Error { message, .. } => (false, message.clone()),
        HostOutcome::Report(r) => {
            let count = |s| r.checks.iter().filter(|c| c.status == s).count();
            let (fail, warn) = (count(Status::Fail), count(Status::Warn));
            (fail == 0, format!("{} checks: {} failed, {} warnings", r.checks.len(), fail, warn))
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub(crate) fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}
