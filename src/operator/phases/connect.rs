//! `connect`: every host reached over SSH (or in-process) with a current helper. The fleet is
//! connected before the run starts (so that a command can report a host it cannot reach in its
//! own words); this phase records what happened per host.
//!
//! A host that cannot be reached fails the run, except an agent under `--skip-unreachable`:
//! it is left out (reported skipped, with the reason) and the others converge. Servers must all
//! be reachable: an agent joins through them and HA needs every one.

use async_trait::async_trait;

use crate::operator::engine::{HostError, HostState, Phase, PhaseRun, RunContext};
use crate::protocol::node::Role;

pub struct Connect {
    pub leave_out: LeaveOut,
}

/// Which unreachable hosts a run goes on without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveOut {
    /// Any unreachable host stops the run.
    None,
    /// Unreachable agents are left out (`up --skip-unreachable`); servers must be reachable.
    Agents,
    /// Every reachable host is worked on (`preflight`, `reset`): each host stands alone.
    Any,
}

#[async_trait]
impl Phase for Connect {
    fn name(&self) -> &'static str {
        "connect"
    }

    fn applies(&self, _: &RunContext) -> bool {
        true
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        None
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let leave_out = self.leave_out;
        let mut failed = Vec::new();
        let mut left_out = Vec::new();
        let members: Vec<_> = run
            .fleet
            .members
            .iter()
            .map(|m| {
                (m.host.name.clone(), m.host.role, m.helper, m.elapsed, m.link.as_ref().err().map(HostError::from))
            })
            .collect();
        let mut slowest = std::time::Duration::ZERO;
        for (name, role, helper, elapsed, error) in members {
            slowest = slowest.max(elapsed);
            let result = run.host(&name);
            result.helper = helper;
            result.elapsed += elapsed;
            match error {
                None => result.state = HostState::Unchanged,
                Some(e) if leave_out == LeaveOut::Any || (leave_out == LeaveOut::Agents && role == Role::Agent) => {
                    left_out.push(format!("{name} ({})", e.kind));
                    result.leave_out(e);
                }
                Some(e) => {
                    failed.push(e.message.clone());
                    result.fail(e);
                }
            }
        }
        let reached = run.fleet.members.len() - failed.len() - left_out.len();
        if !failed.is_empty() {
            return PhaseRun::Failed(failed.join("; "));
        }
        let mut message = format!("{} connected, helpers ready", crate::words::count(reached, "host"));
        if !left_out.is_empty() {
            message.push_str(&format!("; not reached, left out: {}", left_out.join(", ")));
        }
        PhaseRun::Done(message)
    }
}
