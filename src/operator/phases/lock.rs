//! `lock`: the run takes every host's lock before it changes anything, so that two runs never
//! work on one host at once. A host locked by another run stops this one (exit 1) with the
//! holder named; the locks go when the run ends ([`release`]), or when the operator dies.

use async_trait::async_trait;
use futures::future::join_all;

use crate::operator::engine::{HostError, Phase, PhaseRun, RunContext};
use crate::operator::link::HeldLock;
use crate::protocol::LockHolder;

/// The locks this run holds.
pub struct HeldLocks(pub Vec<HeldLock>);

pub struct Lock {
    /// Whether the run changes hosts at all (`preflight` without `--fix` does not).
    pub mutating: bool,
}

#[async_trait]
impl Phase for Lock {
    fn name(&self) -> &'static str {
        "lock"
    }

    fn applies(&self, _: &RunContext) -> bool {
        self.mutating
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        Some("no lock: a dry run changes nothing".into())
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let holder = LockHolder {
            token: format!("{:032x}", rand::random::<u128>()),
            operation: run.options.command.to_string(),
            from: origin(),
            started_at: now_rfc3339(),
            pid: 0,
        };
        let attempts: Vec<_> = run
            .active()
            .map(|(m, link)| {
                let (link, holder, name) = (link.clone(), holder.clone(), m.host.name.clone());
                async move { (name, link.hold_lock(holder).await) }
            })
            .collect();
        let mut held = Vec::new();
        let mut refused = Vec::new();
        for (name, outcome) in join_all(attempts).await {
            match outcome {
                Ok(lock) => held.push(lock),
                Err(e) => {
                    refused.push(e.to_string());
                    run.host(&name).fail(HostError::from(&e));
                }
            }
        }
        let count = held.len();
        run.slots.put(HeldLocks(held));
        if refused.is_empty() {
            PhaseRun::Done(format!("{} locked for this run", crate::words::count(count, "host")))
        } else {
            PhaseRun::Failed(refused.join("; "))
        }
    }
}

/// Releases the run's locks (at the end of the run, whatever happened).
pub async fn release(run: &mut RunContext) {
    if let Some(HeldLocks(locks)) = run.slots.take::<HeldLocks>() {
        for lock in locks {
            if let Err(e) = lock.release().await {
                tracing::warn!("releasing a host lock: {e}");
            }
        }
    }
}

/// `user@machine` of the operator, for whoever finds the lock taken.
fn origin() -> String {
    let user =
        nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.name).unwrap_or_else(|| "?".into());
    let machine = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "?".into());
    format!("{user}@{machine}")
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}
