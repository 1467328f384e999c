//! `manifests`: the cluster file's add-on manifests (`spec.manifests`, read and checked when the
//! cluster file was loaded) delivered to every server's auto-deploy directory, where k3s applies
//! them. Only changed files are written; files dropped from the list are removed from the servers.

use async_trait::async_trait;

use crate::operator::engine::{Change, HostError, HostState, Phase, PhaseRun, RunContext};
use crate::protocol::k3s::FileAction;
use crate::protocol::manifests::{ManifestFile, SyncManifests};
use crate::protocol::node::Role;

pub struct Manifests;

#[async_trait]
impl Phase for Manifests {
    fn name(&self) -> &'static str {
        "manifests"
    }

    /// Always: a list emptied since the last run still has files to remove.
    fn applies(&self, _: &RunContext) -> bool {
        true
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        // It plans: each server shows the diffs it would get.
        None
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let dry_run = run.options.dry_run;
        let files: Vec<ManifestFile> = run
            .cluster
            .manifests
            .iter()
            .map(|m| ManifestFile { name: m.name.clone(), content: m.content.clone() })
            .collect();
        let servers: Vec<_> = run
            .active()
            .filter(|(m, _)| m.host.role == Role::Server)
            .map(|(m, l)| (m.host.name.clone(), l.clone()))
            .collect();
        let request = SyncManifests { files, dry_run };
        let (mut changed, mut failures) = (0, Vec::new());
        for (name, link) in servers {
            let outcome = link.call(&request).send().await;
            let result = run.host(&name);
            match outcome {
                Ok(report) => {
                    let real: Vec<Change> =
                        report.changes.iter().filter(|c| c.action != FileAction::Unchanged).map(Change::from).collect();
                    if !real.is_empty() {
                        changed += 1;
                        if result.state == HostState::Unchanged {
                            result.raise(if dry_run { HostState::WouldChange } else { HostState::Changed });
                        }
                    }
                    result.changes.extend(real);
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
        let count = run.cluster.manifests.len();
        let verb = if dry_run { "would change" } else { "changed on" };
        PhaseRun::Done(format!("{count} manifests; {verb} {changed} servers"))
    }
}
