//! `k3node up`: the cluster file made real. connect, lock, preflight, artifacts, preload images
//! (`spec.images`, staged before k3s starts), install (upload, first server, token, servers,
//! agents), ready, manifests, backup schedule (the servers' snapshot timer), daemon (the node
//! agent), kubeconfig.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::execute;
use crate::artifacts::{ArtifactOptions, DownloadProgress};
use crate::cluster::ClusterFile;
use crate::operator::engine::{Phase, RunOptions, RunReport};
use crate::operator::fleet::Fleet;
use crate::operator::phases::{
    artifacts, connect, daemon, images, install, kubeconfig, lock, manifests, preflight, ready, schedule,
};
use crate::operator::progress::Observer;

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub dry_run: bool,
    pub concurrency: usize,
    /// Go on although preflight found failures.
    pub ignore_preflight: bool,
    /// Converge the reachable hosts when agents cannot be reached (they are reported skipped).
    pub skip_unreachable: bool,
    pub ready_timeout: Duration,
    /// Where to merge the kubeconfig; None: $KUBECONFIG or ~/.kube/config.
    pub kubeconfig: Option<PathBuf>,
    pub artifacts: ArtifactOptions,
    /// `spec.images`, read and checked before any host was touched (None: the preload reads it).
    pub spec_images: Option<Arc<images::SpecImages>>,
}

pub fn phases(options: &UpOptions, download: Box<dyn DownloadProgress>) -> Vec<Box<dyn Phase>> {
    let leave_out = if options.skip_unreachable { connect::LeaveOut::Agents } else { connect::LeaveOut::None };
    vec![
        Box::new(connect::Connect { leave_out }),
        Box::new(lock::Lock { mutating: true }),
        Box::new(preflight::Preflight { fix: false, ignore_failures: options.ignore_preflight }),
        Box::new(artifacts::Artifacts { options: options.artifacts.clone(), progress: download }),
        Box::new(images::Preload { read_before: options.spec_images.clone() }),
        Box::new(install::Install { ready_timeout: options.ready_timeout }),
        Box::new(ready::Ready { timeout: options.ready_timeout }),
        Box::new(manifests::Manifests),
        Box::new(schedule::BackupSchedule),
        Box::new(daemon::Daemon),
        Box::new(kubeconfig::Kubeconfig { path: options.kubeconfig.clone() }),
    ]
}

/// Runs `up` over `fleet` (connected with [`Fleet::connect`], [`Fleet::local`] or in-process).
pub async fn up(
    cluster: Arc<ClusterFile>,
    fleet: Fleet,
    options: &UpOptions,
    observer: Arc<dyn Observer>,
    download: Box<dyn DownloadProgress>,
) -> RunReport {
    let run_options = RunOptions { command: "up", dry_run: options.dry_run, concurrency: options.concurrency };
    execute(cluster, fleet, run_options, observer, phases(options, download), |_| {}).await
}

#[cfg(test)]
mod tests;
