//! The phase engine: a run is a list of named phases over a shared [`RunContext`] (k0sctl's
//! phase manager is the model). The runner runs them in order, records one result per phase,
//! and stops at the first failure; the phases that follow are recorded as not run. Every
//! command (preflight, up, reset, and what comes next) is such a list, and they share phases
//! (connect, lock, preflight) instead of copying them.
//!
//! Invariants:
//! - A phase only learns what earlier phases found through the context's typed [`Slots`], so a
//!   new phase never touches another phase's file.
//! - In a dry run a phase either plans (it runs and changes nothing: `RunOptions::dry_run`) or
//!   says what it would do ([`Phase::dry_run`]) and is not run at all.
//! - A dry run goes on past a phase whose failure only reports on the hosts (preflight's failed
//!   checks: [`Phase::failure_stops_a_dry_run`]), so the user sees the whole plan; the run still
//!   fails at the end.
//! - Work that must overlap for speed (uploads while the first server installs) is one composite
//!   phase that reports its parts ([`PhaseRun::Parts`]), not a serialised list.

pub mod report;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::{self, StreamExt};
use std::future::Future;

use super::fleet::{Fleet, Member};
use super::link::Link;
use super::progress::Observer;
use crate::cluster::{ClusterFile, Host};
pub use report::{Change, ChangeAction, HostError, HostResult, HostState, PhaseResult, PhaseState, RunReport};

/// What every run knows: the cluster, the hosts and their links, the options, the results so far.
pub struct RunContext {
    pub cluster: Arc<ClusterFile>,
    pub fleet: Fleet,
    pub options: RunOptions,
    pub observer: Arc<dyn Observer>,
    pub report: RunReport,
    /// What phases found, by type, for the phases after them.
    pub slots: Slots,
    phase_started: Instant,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `up`, `reset`, `preflight`...: names the run in the lock and the report.
    pub command: &'static str,
    pub dry_run: bool,
    /// How many hosts are worked on at once.
    pub concurrency: usize,
}

impl RunContext {
    pub fn new(
        cluster: Arc<ClusterFile>,
        fleet: Fleet,
        options: RunOptions,
        observer: Arc<dyn Observer>,
    ) -> RunContext {
        let hosts = fleet.members.iter().map(|m| HostResult::new(&m.host)).collect();
        let report = RunReport {
            command: options.command,
            cluster: cluster.name.clone(),
            dry_run: options.dry_run,
            local: fleet.local,
            version: None,
            phases: Vec::new(),
            hosts,
            kubeconfig: None,
        };
        RunContext { cluster, fleet, options, observer, report, slots: Slots::default(), phase_started: Instant::now() }
    }

    /// The result of `host` (every member of the fleet has one).
    pub fn host(&mut self, host: &str) -> &mut HostResult {
        self.report.hosts.iter_mut().find(|h| h.host == host).expect("every member has a result")
    }

    /// Members still worked on: connected, not failed, not left out.
    pub fn active(&self) -> impl Iterator<Item = (&Member, &Link)> {
        self.fleet.members.iter().filter_map(|m| {
            let link = m.link.as_ref().ok()?;
            let result = self.report.hosts.iter().find(|h| h.host == m.host.name)?;
            result.in_play().then_some((m, link))
        })
    }

    /// Runs `job` on every active member, at most `options.concurrency` at once, and gives the
    /// answers in the fleet's order (each with its host's name). The one way a phase fans out.
    pub async fn on_each_host<T, F, Fut>(&self, job: F) -> Vec<(String, T)>
    where
        F: Fn(Host, Link) -> Fut,
        Fut: Future<Output = T>,
    {
        let jobs: Vec<(Host, Link)> = self.active().map(|(m, link)| (m.host.clone(), link.clone())).collect();
        stream::iter(jobs.into_iter().map(|(host, link)| {
            let name = host.name.clone();
            let answer = job(host, link);
            async move { (name, answer.await) }
        }))
        .buffered(self.options.concurrency.max(1))
        .collect()
        .await
    }

    /// Time since the current phase started.
    pub fn phase_elapsed(&self) -> Duration {
        self.phase_started.elapsed()
    }
}

/// What a phase did.
pub enum PhaseRun {
    Done(String),
    Failed(String),
    /// A composite phase's parts, each with its own result (it failed if a part failed).
    Parts(Vec<PhaseResult>),
}

/// One step of a run.
#[async_trait]
pub trait Phase: Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether the phase has anything to do in this run (a lock in a dry run, kubeconfig in a
    /// reset of some hosts only...). A phase that does not apply is recorded as such.
    fn applies(&self, run: &RunContext) -> bool;
    /// In a dry run: None when the phase runs anyway (it plans and changes nothing), or what it
    /// would do, recorded instead of running it.
    fn dry_run(&self, run: &RunContext) -> Option<String>;
    async fn run(&self, run: &mut RunContext) -> PhaseRun;
    /// Whether this phase's failure ends a dry run. False for a phase whose failure says
    /// something about the hosts without leaving them unplannable (failed preflight checks).
    fn failure_stops_a_dry_run(&self) -> bool {
        true
    }
}

/// Runs `phases` in order over `run`; stops at the first failure (in a dry run, at the first
/// that [stops one](Phase::failure_stops_a_dry_run)).
pub async fn run_phases(run: &mut RunContext, phases: &[Box<dyn Phase>]) {
    let mut failed = false;
    for phase in phases {
        if failed {
            run.report.phases.push(PhaseResult::new(
                phase.name(),
                PhaseState::NotRun,
                "an earlier phase failed",
                Duration::ZERO,
            ));
            continue;
        }
        run.phase_started = Instant::now();
        if !phase.applies(run) {
            run.report.phases.push(PhaseResult::new(phase.name(), PhaseState::NotApplicable, "", Duration::ZERO));
            continue;
        }
        if run.options.dry_run {
            if let Some(message) = phase.dry_run(run) {
                run.report.phases.push(PhaseResult::new(phase.name(), PhaseState::Planned, message, Duration::ZERO));
                continue;
            }
        }
        let outcome = phase.run(run).await;
        let elapsed = run.phase_started.elapsed();
        let results = match outcome {
            PhaseRun::Done(message) => {
                let state = if run.options.dry_run { PhaseState::Planned } else { PhaseState::Done };
                vec![PhaseResult::new(phase.name(), state, message, elapsed)]
            }
            PhaseRun::Failed(message) => vec![PhaseResult::new(phase.name(), PhaseState::Failed, message, elapsed)],
            PhaseRun::Parts(parts) => parts,
        };
        for result in &results {
            tracing::info!(phase = result.name, state = ?result.state, elapsed = ?result.elapsed, "{}", result.message);
        }
        let stops = !run.options.dry_run || phase.failure_stops_a_dry_run();
        failed = stops && results.iter().any(|r| r.state == PhaseState::Failed);
        run.report.phases.extend(results);
    }
    // Hosts no phase got to are skipped; the observer learns how each host ended.
    for result in &run.report.hosts {
        run.observer.done(&result.host, !result.state.is_failure(), result.state.as_str());
    }
}

/// Values shared between phases, one per type (the k3s binary, the join token, the held locks).
#[derive(Default)]
pub struct Slots(HashMap<TypeId, Box<dyn Any + Send + Sync>>);

impl Slots {
    pub fn put<T: Any + Send + Sync>(&mut self, value: T) {
        self.0.insert(TypeId::of::<T>(), Box::new(value));
    }

    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.0.get(&TypeId::of::<T>()).and_then(|b| b.downcast_ref())
    }

    pub fn take<T: Any + Send + Sync>(&mut self) -> Option<T> {
        self.0.remove(&TypeId::of::<T>()).and_then(|b| b.downcast().ok()).map(|b| *b)
    }
}

#[cfg(test)]
mod tests;
