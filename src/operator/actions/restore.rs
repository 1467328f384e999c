//! `k3node restore`: a snapshot back onto the first server of the cluster, the same host or a
//! fresh one (disaster recovery), and the rest of the cluster brought back to it. The phases and
//! their order are [`crate::operator::phases::restore`]'s; `--rollback` undoes the last restore.
//!
//! connect, lock, archive, preflight, artifacts, target, push, check, stop, restore, rejoin,
//! forget nodes, install, ready, kubeconfig.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::execute;
use crate::artifacts::{ArtifactOptions, DownloadProgress};
use crate::cluster::ClusterFile;
use crate::operator::engine::{Phase, RunOptions, RunReport};
use crate::operator::fleet::Fleet;
use crate::operator::phases::restore::{self as phase, Findings, RestoreFindings, Settings};
use crate::operator::phases::{artifacts, connect, images, install, kubeconfig, lock, preflight, ready};
use crate::operator::progress::Observer;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub settings: Settings,
    pub dry_run: bool,
    pub concurrency: usize,
    pub ignore_preflight: bool,
    pub kubeconfig: Option<PathBuf>,
    pub artifacts: ArtifactOptions,
    /// `spec.images`, read and checked before any host was touched (None: the preload reads it).
    pub spec_images: Option<Arc<images::SpecImages>>,
    /// The command line that runs this restore again, and the one that rolls it back (shown
    /// when it stops half-way).
    pub again: String,
    pub rollback: String,
}

#[derive(Debug, Clone)]
pub struct RollbackOptions {
    pub target: String,
    pub dry_run: bool,
    pub concurrency: usize,
    pub ready_timeout: Duration,
    pub kubeconfig: Option<PathBuf>,
    pub artifacts: ArtifactOptions,
}

/// A restore's answer: the run and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreOutcome {
    #[serde(flatten)]
    pub report: RunReport,
    #[serde(flatten)]
    pub findings: RestoreFindings,
}

impl RestoreOutcome {
    pub fn succeeded(&self) -> bool {
        self.report.succeeded()
    }
}

pub fn phases(
    options: &RestoreOptions,
    findings: &Findings,
    download: Box<dyn DownloadProgress>,
) -> Vec<Box<dyn Phase>> {
    let s = options.settings.clone();
    let f = findings.clone();
    vec![
        Box::new(connect::Connect { leave_out: connect::LeaveOut::None }),
        Box::new(lock::Lock { mutating: true }),
        Box::new(phase::CheckArchive { settings: s.clone(), findings: f.clone() }),
        Box::new(preflight::Preflight { fix: false, ignore_failures: options.ignore_preflight }),
        Box::new(artifacts::Artifacts { options: options.artifacts.clone(), progress: download }),
        Box::new(images::Preload { read_before: options.spec_images.clone() }),
        Box::new(phase::PrepareTarget { settings: s.clone(), findings: f.clone() }),
        Box::new(phase::Push { settings: s.clone() }),
        Box::new(phase::Check { settings: s.clone(), findings: f.clone() }),
        Box::new(phase::StopPeers { settings: s.clone() }),
        Box::new(phase::Restore {
            settings: s.clone(),
            findings: f,
            again: options.again.clone(),
            rollback: options.rollback.clone(),
        }),
        Box::new(phase::Rejoin { settings: s.clone() }),
        Box::new(phase::ForgetLost { settings: s.clone() }),
        Box::new(install::Install { ready_timeout: s.ready_timeout }),
        Box::new(ready::Ready { timeout: s.ready_timeout }),
        Box::new(kubeconfig::Kubeconfig { path: options.kubeconfig.clone() }),
    ]
}

pub async fn restore(
    cluster: Arc<ClusterFile>,
    fleet: Fleet,
    options: &RestoreOptions,
    observer: Arc<dyn Observer>,
    download: Box<dyn DownloadProgress>,
) -> RestoreOutcome {
    let run_options = RunOptions { command: "restore", dry_run: options.dry_run, concurrency: options.concurrency };
    let findings: Findings = Arc::new(Mutex::new(RestoreFindings::default()));
    let report = execute(cluster, fleet, run_options, observer, phases(options, &findings, download), |_| {}).await;
    let findings = findings.lock().unwrap_or_else(|e| e.into_inner()).clone();
    RestoreOutcome { report, findings }
}

/// `restore --rollback`: the target's last restore undone, the rest of the cluster converged to it.
pub async fn rollback(
    cluster: Arc<ClusterFile>,
    fleet: Fleet,
    options: &RollbackOptions,
    observer: Arc<dyn Observer>,
    download: Box<dyn DownloadProgress>,
) -> RestoreOutcome {
    let run_options = RunOptions { command: "restore", dry_run: options.dry_run, concurrency: options.concurrency };
    let findings: Findings = Arc::new(Mutex::new(RestoreFindings::default()));
    let phases: Vec<Box<dyn Phase>> = vec![
        Box::new(connect::Connect { leave_out: connect::LeaveOut::None }),
        Box::new(lock::Lock { mutating: true }),
        Box::new(artifacts::Artifacts { options: options.artifacts.clone(), progress: download }),
        Box::new(phase::Rollback {
            target: options.target.clone(),
            ready_timeout: options.ready_timeout,
            findings: findings.clone(),
        }),
        Box::new(install::Install { ready_timeout: options.ready_timeout }),
        Box::new(ready::Ready { timeout: options.ready_timeout }),
        Box::new(kubeconfig::Kubeconfig { path: options.kubeconfig.clone() }),
    ];
    let report = execute(cluster, fleet, run_options, observer, phases, |_| {}).await;
    let findings = findings.lock().unwrap_or_else(|e| e.into_inner()).clone();
    RestoreOutcome { report, findings }
}

#[cfg(test)]
mod tests;
