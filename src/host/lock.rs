//! The host lock: two runs (two operators, or an operator and a scheduled job) never change one
//! host at the same time.
//!
//! It is an exclusive `flock` on [`LOCK_FILE`], so a lock whose holder died is no lock (the
//! kernel releases it with the process). A run holds it for its whole length through the `lock`
//! operation (a helper process that waits for the operator's stdin to close); the run's own
//! mutating operations carry the run's token and pass. A mutating operation that comes without
//! a run takes the lock for its own duration. Whoever finds it taken learns who holds it from
//! [`HOLDER_FILE`] (operation, origin, start time, pid).

use std::path::Path;

use super::error::{describe_io, Failure, HostError};
use super::serve::{Context, HostOperation};
use super::system::{HostSystem, LockGuard};
use crate::protocol::{ErrorKind, HoldLock, LockHolder, LockReleased};

pub const LOCK_FILE: &str = "/run/k3node/lock";
pub const HOLDER_FILE: &str = "/run/k3node/lock.holder.json";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another k3node run is working on this host: {}; wait for it to finish, then run again", describe(.0))]
    Held(Option<LockHolder>),
    #[error("cannot use the host lock {LOCK_FILE}: {}", describe_io(.0))]
    Io(#[from] std::io::Error),
}

fn describe(holder: &Option<LockHolder>) -> String {
    match holder {
        Some(holder) => holder.to_string(),
        None => "its holder did not say who it is".into(),
    }
}

impl Failure for LockError {
    fn kind(&self) -> ErrorKind {
        match self {
            LockError::Held(_) => ErrorKind::Conflict,
            LockError::Io(e) => ErrorKind::of_io(e),
        }
    }
}

/// For one mutating operation: passes when the caller's run holds the lock (None), or takes it
/// for the operation's duration (Some guard).
pub fn enter(sys: &dyn HostSystem, token: Option<&str>) -> Result<Option<Box<dyn LockGuard>>, LockError> {
    if let Some(guard) = sys.try_lock(Path::new(LOCK_FILE))? {
        return Ok(Some(guard));
    }
    let holder = read_holder(sys);
    match (&holder, token) {
        (Some(h), Some(t)) if h.token == t => Ok(None),
        _ => Err(LockError::Held(holder)),
    }
}

/// Takes the lock for a run and records who holds it.
pub fn take(sys: &dyn HostSystem, holder: &LockHolder) -> Result<Held, LockError> {
    let guard = sys.try_lock(Path::new(LOCK_FILE))?.ok_or_else(|| LockError::Held(read_holder(sys)))?;
    let mut holder = holder.clone();
    holder.pid = std::process::id();
    let text = serde_json::to_vec_pretty(&holder).expect("a holder always serializes");
    sys.write_atomic(Path::new(HOLDER_FILE), &text, 0o644)?;
    Ok(Held { _guard: guard, sys_holder_file: HOLDER_FILE })
}

/// The lock of a run; released (and its holder record removed) when dropped.
pub struct Held {
    _guard: Box<dyn LockGuard>,
    sys_holder_file: &'static str,
}

impl Held {
    pub fn release(self, sys: &dyn HostSystem) {
        let _ = sys.remove_file(Path::new(self.sys_holder_file));
    }
}

fn read_holder(sys: &dyn HostSystem) -> Option<LockHolder> {
    serde_json::from_str(&sys.read_to_string(Path::new(HOLDER_FILE)).ok()?).ok()
}

impl HostOperation for HoldLock {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<LockReleased, HostError> {
        let held = take(ctx.sys, &self.holder)?;
        ctx.ready();
        ctx.wait_for_end_of_input();
        held.release(ctx.sys);
        Ok(LockReleased {})
    }
}
