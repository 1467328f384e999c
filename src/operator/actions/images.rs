//! `k3node images import|stage`: connect, lock, then the images phase over the selected nodes.
//! The archives were read and checked before (see [`crate::images`]); a run only sends them.

use std::sync::Arc;

use super::execute;
use crate::cluster::ClusterFile;
use crate::operator::engine::{Phase, RunOptions, RunReport};
use crate::operator::fleet::Fleet;
use crate::operator::phases::images::{Archives, Import, NodeImages, Outcomes, Stage, StagedArchive};
use crate::operator::phases::{connect, lock};
use crate::operator::progress::Observer;

#[derive(Debug, Clone)]
pub struct ImagesOptions {
    pub dry_run: bool,
    pub concurrency: usize,
}

/// What to do with the archives.
pub enum Work {
    Import(Arc<Archives>),
    Stage(Arc<Vec<StagedArchive>>),
}

pub fn phases(work: Work, outcomes: Outcomes) -> Vec<Box<dyn Phase>> {
    let main: Box<dyn Phase> = match work {
        Work::Import(archives) => Box::new(Import { archives, outcomes }),
        Work::Stage(staged) => Box::new(Stage { staged, outcomes, preload_set: false }),
    };
    // Every selected node stands alone: one that cannot be reached fails, the others go on.
    vec![
        Box::new(connect::Connect { leave_out: connect::LeaveOut::Any }),
        Box::new(lock::Lock { mutating: true }),
        main,
    ]
}

/// Runs the import or the staging over `fleet`; the per-node outcomes come back beside the report.
pub async fn images(
    cluster: Arc<ClusterFile>,
    fleet: Fleet,
    work: Work,
    options: &ImagesOptions,
    observer: Arc<dyn Observer>,
) -> (RunReport, Vec<NodeImages>) {
    let command = match work {
        Work::Import(_) => "images import",
        Work::Stage(_) => "images stage",
    };
    let outcomes: Outcomes = Arc::default();
    let run_options = RunOptions { command, dry_run: options.dry_run, concurrency: options.concurrency };
    let report = execute(cluster, fleet, run_options, observer, phases(work, outcomes.clone()), |_| {}).await;
    let nodes = std::mem::take(&mut *outcomes.lock().unwrap_or_else(|e| e.into_inner()));
    (report, nodes)
}
