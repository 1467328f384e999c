//! `k3node reset`: connect, lock, reset (agents first, data moved aside), then the reset hosts'
//! Node objects deleted through a remaining server, or, when the whole cluster went, its context
//! dropped from the operator's kubeconfig.

use std::path::PathBuf;
use std::sync::Arc;

use super::execute;
use crate::cluster::ClusterFile;
use crate::operator::engine::{Phase, RunOptions, RunReport};
use crate::operator::fleet::Fleet;
use crate::operator::link::Link;
use crate::operator::phases::{connect, lock, reset};
use crate::operator::progress::Observer;

#[derive(Debug, Clone)]
pub struct ResetOptions {
    pub dry_run: bool,
    pub concurrency: usize,
    pub keep_helper: bool,
    pub kubeconfig: Option<PathBuf>,
}

pub fn phases(options: &ResetOptions, whole_cluster: bool) -> Vec<Box<dyn Phase>> {
    vec![
        Box::new(connect::Connect { leave_out: connect::LeaveOut::Any }),
        Box::new(lock::Lock { mutating: true }),
        Box::new(reset::ResetHosts { keep_helper: options.keep_helper }),
        Box::new(reset::ForgetNodes),
        Box::new(reset::ForgetContext { path: options.kubeconfig.clone(), whole_cluster }),
    ]
}

/// Resets the hosts of `fleet`; `staying_server` is a link to a server not in the reset (when
/// there is one), through which the reset hosts' Node objects are deleted.
pub async fn reset(
    cluster: Arc<ClusterFile>,
    fleet: Fleet,
    staying_server: Option<Link>,
    options: &ResetOptions,
    observer: Arc<dyn Observer>,
) -> RunReport {
    let whole_cluster = fleet.members.len() == cluster.hosts.len();
    let run_options = RunOptions { command: "reset", dry_run: options.dry_run, concurrency: options.concurrency };
    let staying = staying_server.clone();
    let report = execute(cluster, fleet, run_options, observer, phases(options, whole_cluster), |run| {
        if let Some(link) = staying {
            run.slots.put(reset::StayingServer(link));
        }
    })
    .await;
    if let Some(link) = staying_server {
        link.close().await;
    }
    report
}
