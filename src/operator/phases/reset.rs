//! `reset`: k3s removed from the run's hosts as its uninstall script does, agents first, then
//! servers, one host at a time (the servers the agents report to go last). Data is moved aside on
//! the host, never deleted. When only some hosts are reset, their Node objects are deleted
//! through a server that stays, so that they can join again under their names.

use async_trait::async_trait;

use crate::operator::engine::{Change, ChangeAction, HostError, HostState, Phase, PhaseRun, RunContext};
use crate::protocol::k3s::{DeleteNodes, ResetRequest};
use crate::protocol::node::Role;

pub struct ResetHosts {
    /// Leave k3node's own files (the helper, its state dir) on the hosts.
    pub keep_helper: bool,
}

#[async_trait]
impl Phase for ResetHosts {
    fn name(&self) -> &'static str {
        "reset"
    }

    fn applies(&self, _: &RunContext) -> bool {
        true
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        None
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let dry_run = run.options.dry_run;
        let mut order: Vec<_> =
            run.active().map(|(m, link)| (m.host.role, m.index, m.host.name.clone(), link.clone())).collect();
        order.sort_by_key(|(role, index, _, _)| (*role == Role::Server, *index));
        let observer = run.observer.clone();
        let (mut failures, mut done) = (Vec::new(), 0);
        for (_, _, name, link) in order {
            observer.phase(&name, if dry_run { "planning reset" } else { "resetting" });
            let request = ResetRequest { dry_run, keep_helper: self.keep_helper };
            let outcome = link.call(&request).progress(|m| observer.message(&name, m)).send().await;
            let result = run.host(&name);
            match outcome {
                Ok(report) => {
                    result.state = match (report.actions.is_empty(), dry_run) {
                        (true, _) => HostState::Unchanged,
                        (false, true) => HostState::WouldChange,
                        (false, false) => HostState::Changed,
                    };
                    result.changes = report
                        .actions
                        .into_iter()
                        .map(|a| Change { subject: a, action: ChangeAction::Done, detail: None })
                        .collect();
                    done += 1;
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
        PhaseRun::Done(format!("{} {}", crate::words::count(done, "host"), if dry_run { "planned" } else { "reset" }))
    }
}

/// Deletes the Node objects of the reset hosts through a server that was not reset.
pub struct ForgetNodes;

#[async_trait]
impl Phase for ForgetNodes {
    fn name(&self) -> &'static str {
        "forget nodes"
    }

    fn applies(&self, run: &RunContext) -> bool {
        run.slots.get::<StayingServer>().is_some()
    }

    fn dry_run(&self, run: &RunContext) -> Option<String> {
        let names: Vec<&str> = run.fleet.members.iter().map(|m| m.host.name.as_str()).collect();
        Some(format!("would delete the Node objects of {} through a remaining server", names.join(", ")))
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let names: Vec<String> =
            run.report.hosts.iter().filter(|h| h.state != HostState::Failed).map(|h| h.host.clone()).collect();
        let Some(link) = run.slots.get::<StayingServer>().map(|s| s.0.clone()) else {
            return PhaseRun::Failed(
                "no remaining server could be reached to delete the reset hosts' Node objects".into(),
            );
        };
        match link.call(&DeleteNodes { names, dry_run: false }).send().await {
            Ok(answer) if answer.deleted.is_empty() => PhaseRun::Done("no Node objects to delete".into()),
            Ok(answer) => PhaseRun::Done(format!("deleted Node {} (they can join again)", answer.deleted.join(", "))),
            Err(e) => PhaseRun::Failed(format!("{e}; delete them with `kubectl delete node` before they join again")),
        }
    }
}

/// A link to a server that stays while others are reset (set by the reset action).
pub struct StayingServer(pub crate::operator::link::Link);

/// Drops the cluster's context from the operator's kubeconfig when the whole cluster is reset.
pub struct ForgetContext {
    pub path: Option<std::path::PathBuf>,
    /// Every host of the cluster file is in this reset.
    pub whole_cluster: bool,
}

#[async_trait]
impl Phase for ForgetContext {
    fn name(&self) -> &'static str {
        "kubeconfig"
    }

    fn applies(&self, _: &RunContext) -> bool {
        self.whole_cluster
    }

    fn dry_run(&self, run: &RunContext) -> Option<String> {
        let path = self.path.clone().unwrap_or_else(crate::operator::kubeconfig::default_path);
        Some(format!("would remove context {} from {}", run.cluster.name, path.display()))
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let path = self.path.clone().unwrap_or_else(crate::operator::kubeconfig::default_path);
        match crate::operator::kubeconfig::remove_from_file(&path, &run.cluster.name) {
            Ok(true) => PhaseRun::Done(format!("context {} removed from {}", run.cluster.name, path.display())),
            Ok(false) => PhaseRun::Done(format!("no context {} in {}", run.cluster.name, path.display())),
            Err(e) => PhaseRun::Failed(e.to_string()),
        }
    }
}
