//! `ready`: every node of the run Ready, as the first server sees them, within the deadline;
//! otherwise the nodes not Ready are named (and with them what the server said).

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::install::first_server;
use crate::operator::engine::{HostError, HostState, Phase, PhaseRun, RunContext};
use crate::protocol::k3s::ListNodes;
use crate::words::count;

pub struct Ready {
    pub timeout: Duration,
}

/// Listing nodes is cheap; a coarse poll would add up to its interval to every run.
const POLL: Duration = Duration::from_millis(250);

#[async_trait]
impl Phase for Ready {
    fn name(&self) -> &'static str {
        "ready"
    }

    fn applies(&self, _: &RunContext) -> bool {
        true
    }

    fn dry_run(&self, run: &RunContext) -> Option<String> {
        Some(format!("would wait up to {:?} for {} to be Ready", self.timeout, count(run.active().count(), "node")))
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let first = first_server(&run.cluster).name.clone();
        let Some(link) = run.fleet.member(&first).and_then(|m| m.link()).cloned() else {
            return PhaseRun::Failed(format!("{first} is not connected"));
        };
        let wanted: Vec<String> = run.active().map(|(m, _)| m.host.name.clone()).collect();
        let deadline = Instant::now() + self.timeout;
        loop {
            let answer = link.call(&ListNodes {}).send().await;
            let not_ready: Vec<String> = match &answer {
                Ok(a) => wanted.iter().filter(|w| !a.nodes.iter().any(|n| &n.name == *w && n.ready)).cloned().collect(),
                Err(_) => wanted.clone(),
            };
            if not_ready.is_empty() {
                return PhaseRun::Done(format!("{} Ready", count(wanted.len(), "node")));
            }
            if Instant::now() >= deadline {
                for host in &not_ready {
                    let result = run.host(host);
                    if result.state != HostState::Failed {
                        result.fail(HostError {
                            kind: "not-ready".into(),
                            message: format!("not Ready after {:?}", self.timeout),
                            retryable: true,
                        });
                    }
                }
                let why = match answer {
                    Err(e) => format!("; the first server could not list nodes: {e}"),
                    Ok(_) => String::new(),
                };
                return PhaseRun::Failed(format!("not Ready after {:?}: {}{why}", self.timeout, not_ready.join(", ")));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
