//! `k3node preflight`: connect, (lock when fixing), preflight. Every reachable host is checked;
//! one that cannot be reached is reported as such.

use std::sync::Arc;

use super::execute;
use crate::cluster::ClusterFile;
use crate::operator::engine::{Phase, RunOptions, RunReport};
use crate::operator::fleet::Fleet;
use crate::operator::phases::{connect, lock, preflight};
use crate::operator::progress::Observer;

#[derive(Debug, Clone)]
pub struct PreflightOptions {
    pub fix: bool,
    /// How many hosts are worked on at once.
    pub concurrency: usize,
}

pub fn phases(options: &PreflightOptions) -> Vec<Box<dyn Phase>> {
    vec![
        Box::new(connect::Connect { leave_out: connect::LeaveOut::Any }),
        Box::new(lock::Lock { mutating: options.fix }),
        Box::new(preflight::Preflight { fix: options.fix, ignore_failures: false }),
    ]
}

pub async fn preflight(
    cluster: Arc<ClusterFile>,
    fleet: Fleet,
    options: &PreflightOptions,
    observer: Arc<dyn Observer>,
) -> RunReport {
    let run_options = RunOptions { command: "preflight", dry_run: false, concurrency: options.concurrency };
    execute(cluster, fleet, run_options, observer, phases(options), |_| {}).await
}
