//! `backup schedule` (in `up`): every server's snapshot timer made to match `spec.backup`: with a
//! schedule, `k3node-snapshot.timer` runs the helper on the server itself (no operator needed),
//! which takes a snapshot and keeps the retention; without one, a timer installed earlier is
//! removed. Like install, it changes and restarts nothing when the timer already matches.

use async_trait::async_trait;
use futures::stream::{self, StreamExt};

use crate::cluster::ClusterFile;
use crate::operator::engine::{Change, HostError, HostState, Phase, PhaseRun, RunContext};
use crate::protocol::k3s::FileAction;
use crate::protocol::node::Role;
use crate::protocol::snapshot::{InstallSchedule, Schedule, ScheduledSnapshot};

/// The name prefix of the timer's archives (what its retention prunes).
pub const SCHEDULED: &str = "scheduled";

pub struct BackupSchedule;

/// What the timer of `host` runs, per the cluster file (None: no schedule).
pub fn schedule_for(cluster: &ClusterFile, host: &str) -> Option<Schedule> {
    let calendar = cluster.backup.schedule.clone()?;
    let retention = cluster.backup.retention;
    Some(Schedule {
        on_calendar: calendar,
        randomized_delay_secs: cluster.backup.randomized_delay_secs,
        snapshot: ScheduledSnapshot {
            cluster: cluster.name.clone(),
            node: host.to_string(),
            name_prefix: SCHEDULED.into(),
            dir: None,
            keep_last: retention.keep_last,
            keep_newer_than_secs: retention.keep_newer_than_secs,
        },
    })
}

#[async_trait]
impl Phase for BackupSchedule {
    fn name(&self) -> &'static str {
        "backup schedule"
    }

    fn applies(&self, run: &RunContext) -> bool {
        run.active().any(|(m, _)| m.host.role == Role::Server)
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        // It plans: each server says what it would write, enable or remove.
        None
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let dry_run = run.options.dry_run;
        let cluster = run.cluster.clone();
        let servers: Vec<_> = run
            .active()
            .filter(|(m, _)| m.host.role == Role::Server)
            .map(|(m, link)| (m.host.name.clone(), link.clone()))
            .collect();
        let calls = servers.into_iter().map(|(name, link)| {
            let request = InstallSchedule { schedule: schedule_for(&cluster, &name), dry_run };
            async move {
                let answer = link.call(&request).send().await;
                (name, answer)
            }
        });
        let answers: Vec<_> = stream::iter(calls).buffered(run.options.concurrency.max(1)).collect().await;
        let (mut failures, mut changed) = (Vec::new(), Vec::new());
        for (name, answer) in answers {
            let result = run.host(&name);
            match answer {
                Ok(report) => {
                    let touched = report.changes.iter().any(|c| c.action != FileAction::Unchanged);
                    if touched || !report.actions.is_empty() {
                        changed.push(name.clone());
                        if result.state == HostState::Unchanged {
                            result.raise(if dry_run { HostState::WouldChange } else { HostState::Changed });
                        }
                    }
                    result.changes.extend(report.changes.iter().map(Change::from));
                    if !report.actions.is_empty() {
                        let verb = if dry_run { "would run" } else { "ran" };
                        result.notes.push(format!("snapshot timer: {verb} {}", report.actions.join(", ")));
                    }
                    if !report.next.is_empty() && report.next != "n/a" {
                        result.notes.push(format!("next scheduled snapshot: {}", report.next));
                    }
                }
                Err(e) => {
                    failures.push(format!("{name}: {}", e.kind()));
                    result.fail(HostError::from(&e));
                }
            }
        }
        if !failures.is_empty() {
            return PhaseRun::Failed(failures.join("; "));
        }
        let what = match &cluster.backup.schedule {
            Some(calendar) => format!("snapshots on {calendar:?}"),
            None => "no scheduled snapshots".to_string(),
        };
        let verb = if dry_run { "would change" } else { "changed" };
        match changed.is_empty() {
            true => PhaseRun::Done(format!("{what}: every server's timer matches")),
            false => PhaseRun::Done(format!("{what}: {verb} on {}", changed.join(", "))),
        }
    }
}
