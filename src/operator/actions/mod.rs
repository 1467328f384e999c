//! Commands as lists of phases ([`super::phases`]) run by the engine ([`super::engine`]).
//!
//! How to add a phase: write it in `phases/<name>.rs` (a struct implementing `Phase`: its name,
//! whether it applies, what it would do in a dry run, and its work over the `RunContext`; what
//! it needs from earlier phases it takes from `run.slots` by type, what later ones need it puts
//! there), then insert it into the list of the actions that need it. No other phase changes.

pub mod images;
pub mod preflight;
pub mod reset;
pub mod restore;
pub mod snapshot;
pub mod up;

use std::sync::Arc;

use super::engine::{run_phases, Phase, RunContext, RunOptions, RunReport};
use super::fleet::Fleet;
use super::phases::lock;
use super::progress::Observer;
use crate::cluster::ClusterFile;

/// Runs `phases` over `fleet` (after `setup` has put what the action knows into the context),
/// then releases the run's host locks and closes the links.
pub async fn execute(
    cluster: Arc<ClusterFile>,
    fleet: Fleet,
    options: RunOptions,
    observer: Arc<dyn Observer>,
    phases: Vec<Box<dyn Phase>>,
    setup: impl FnOnce(&mut RunContext),
) -> RunReport {
    let mut run = RunContext::new(cluster, fleet, options, observer);
    setup(&mut run);
    run_phases(&mut run, &phases).await;
    lock::release(&mut run).await;
    let RunContext { fleet, report, .. } = run;
    fleet.close().await;
    report
}
