//! `k3node snapshot create|list|verify|pull|prune`: connect to the servers of the run, lock them
//! when something changes (create, prune), then the one phase that does the work
//! ([`crate::operator::phases::snapshot`]). Every action answers with the run's report and the
//! archives it found.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::execute;
use crate::cluster::ClusterFile;
use crate::operator::engine::{Phase, RunOptions, RunReport};
use crate::operator::fleet::Fleet;
use crate::operator::link::LinkError;
use crate::operator::phases::snapshot::{self as phase, ArchiveLine, Archives, Pick};
use crate::operator::phases::{connect, lock};
use crate::operator::progress::Observer;

/// A snapshot command's answer: the run (phases, hosts) and the archives, in the order found.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotOutcome {
    #[serde(flatten)]
    pub report: RunReport,
    pub snapshots: Vec<ArchiveLine>,
}

impl SnapshotOutcome {
    pub fn succeeded(&self) -> bool {
        self.report.succeeded()
    }
}

/// What a snapshot command does on the servers of its fleet.
#[derive(Debug, Clone)]
pub enum Work {
    Create,
    List,
    /// (host, archive name or path on it).
    Verify(Vec<(String, String)>),
    Pull {
        wanted: Vec<(String, Pick)>,
        to: PathBuf,
    },
    Prune {
        keep_last: Option<u32>,
        keep_newer_than_secs: Option<u64>,
        prefix: Option<String>,
        dry_run: bool,
    },
}

impl Work {
    fn command(&self) -> &'static str {
        match self {
            Work::Create => "snapshot create",
            Work::List => "snapshot list",
            Work::Verify(_) => "snapshot verify",
            Work::Pull { .. } => "snapshot pull",
            Work::Prune { .. } => "snapshot prune",
        }
    }

    fn mutates(&self) -> bool {
        match self {
            Work::Create => true,
            Work::Prune { dry_run, .. } => !dry_run,
            _ => false,
        }
    }
}

pub fn phases(work: &Work, found: &Archives) -> Vec<Box<dyn Phase>> {
    let found = found.clone();
    let main: Box<dyn Phase> = match work.clone() {
        Work::Create => Box::new(phase::Create { prefix: phase::ON_DEMAND.into(), found }),
        Work::List => Box::new(phase::List { found }),
        Work::Verify(wanted) => Box::new(phase::Verify { wanted, found }),
        Work::Pull { wanted, to } => Box::new(phase::Pull { wanted, to, found }),
        Work::Prune { keep_last, keep_newer_than_secs, prefix, .. } => {
            Box::new(phase::Prune { keep_last, keep_newer_than_secs, prefix, found })
        }
    };
    vec![
        Box::new(connect::Connect { leave_out: connect::LeaveOut::None }),
        Box::new(lock::Lock { mutating: work.mutates() }),
        main,
    ]
}

/// Runs `work` over `fleet` (the servers it concerns).
pub async fn run(
    cluster: Arc<ClusterFile>,
    fleet: Fleet,
    work: &Work,
    concurrency: usize,
    observer: Arc<dyn Observer>,
) -> SnapshotOutcome {
    let dry_run = matches!(work, Work::Prune { dry_run: true, .. });
    let options = RunOptions { command: work.command(), dry_run, concurrency };
    let found: Archives = Arc::new(Mutex::new(Vec::new()));
    let report = execute(cluster, fleet, options, observer, phases(work, &found), |_| {}).await;
    let snapshots = std::mem::take(&mut *found.lock().unwrap_or_else(|e| e.into_inner()));
    SnapshotOutcome { report, snapshots }
}

/// `snapshot verify FILE`: an archive on this machine read in full, with no cluster file.
pub async fn verify_local(path: &Path) -> Result<ArchiveLine, LinkError> {
    let verified = phase::verify_local(path).await?;
    Ok(ArchiveLine::of_verified(phase::LOCAL, &verified, "verified"))
}

#[cfg(test)]
mod tests;
