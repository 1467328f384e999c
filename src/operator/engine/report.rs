//! What a run reports: one result per phase, one per host, the same shape for every command
//! (`-o json` of preflight, up, reset and what comes after).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::operator::bootstrap::HelperState;
use crate::operator::link::LinkError;
use crate::protocol::k3s::{FileAction, FileChange};
use crate::protocol::node::Role;
use crate::protocol::preflight::{Check, HostFacts};

/// What happened to a host in this run.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum HostState {
    /// Nothing changed, nothing restarted.
    Unchanged,
    /// Files changed without a restart being needed (scripts, links), or fixes applied.
    Changed,
    /// k3s installed and started for the first time.
    Installed,
    /// Restarted because what it runs with changed, or it was not running.
    Restarted,
    /// Dry run: this host would change.
    WouldChange,
    Failed,
    /// Not worked on: an earlier phase failed, or it was left out (unreachable agent).
    Skipped,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Unchanged => "unchanged",
            HostState::Changed => "changed",
            HostState::Installed => "installed",
            HostState::Restarted => "restarted",
            HostState::WouldChange => "would-change",
            HostState::Failed => "failed",
            HostState::Skipped => "skipped",
        }
    }

    pub fn is_failure(self) -> bool {
        matches!(self, HostState::Failed | HostState::Skipped)
    }
}

/// Why a host failed: the kind (as the transport or the host module said it) and the words.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HostError {
    pub kind: String,
    pub message: String,
    pub retryable: bool,
}

impl From<&LinkError> for HostError {
    fn from(e: &LinkError) -> HostError {
        HostError { kind: e.kind().to_string(), message: e.to_string(), retryable: e.retryable() }
    }
}

/// One thing that changed (or in a dry run would change) on a host.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Change {
    /// A path, a service, or a step in words (reset's "stop and disable k3s.service").
    pub subject: String,
    pub action: ChangeAction,
    /// A diff (secrets masked), a hash change, a mode change...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChangeAction {
    Created,
    Updated,
    Unchanged,
    Removed,
    /// A step carried out (or in a dry run, that would be).
    Done,
}

impl From<&FileChange> for Change {
    fn from(c: &FileChange) -> Change {
        Change {
            subject: c.path.clone(),
            action: match c.action {
                FileAction::Created => ChangeAction::Created,
                FileAction::Updated => ChangeAction::Updated,
                FileAction::Unchanged => ChangeAction::Unchanged,
                FileAction::Removed => ChangeAction::Removed,
            },
            detail: c.diff.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HostResult {
    pub host: String,
    pub role: Role,
    pub address: String,
    pub state: HostState,
    /// The k3s version installed (up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// What connecting did to the host's helper.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helper: Option<HelperState>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    /// Preflight's checks (preflight, and up's preflight phase).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub facts: Option<HostFacts>,
    /// Warnings and notes worth the operator's attention (foreign drop-ins, fixes applied...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<HostError>,
    #[serde(serialize_with = "as_secs")]
    pub elapsed: Duration,
}

impl HostResult {
    pub fn new(host: &crate::cluster::Host) -> HostResult {
        HostResult {
            host: host.name.clone(),
            role: host.role,
            address: host.address.clone(),
            state: HostState::Skipped,
            version: None,
            helper: None,
            changes: Vec::new(),
            checks: Vec::new(),
            facts: None,
            notes: Vec::new(),
            error: None,
            elapsed: Duration::ZERO,
        }
    }

    /// Still worked on: neither failed nor left out. (A host no phase reached yet is `Skipped`
    /// without an error; one left out is `Skipped` with the reason as its error.)
    pub fn in_play(&self) -> bool {
        match self.state {
            HostState::Failed => false,
            HostState::Skipped => self.error.is_none(),
            _ => true,
        }
    }

    /// Records what a phase made of the host, keeping what an earlier phase made of it when that
    /// says more (an install outranks a restart, a restart a change, a change nothing): a later
    /// phase with nothing to do never hides an earlier one's change.
    pub fn raise(&mut self, state: HostState) {
        fn rank(state: HostState) -> u8 {
            match state {
                HostState::Unchanged | HostState::Skipped => 0,
                HostState::Changed | HostState::WouldChange => 1,
                HostState::Restarted => 2,
                HostState::Installed => 3,
                HostState::Failed => 4,
            }
        }
        if rank(state) >= rank(self.state) {
            self.state = state;
        }
    }

    /// Leaves the host out of the rest of the run, saying why.
    pub fn leave_out(&mut self, error: HostError) {
        self.state = HostState::Skipped;
        self.error = Some(error);
    }

    /// Marks the host failed, keeping the first error (later ones are consequences).
    pub fn fail(&mut self, error: HostError) {
        self.state = HostState::Failed;
        if self.error.is_none() {
            self.error = Some(error);
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseState {
    Done,
    Failed,
    /// Dry run: what it would do, not done.
    Planned,
    /// Nothing for it to do in this run.
    NotApplicable,
    /// An earlier phase failed.
    NotRun,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    pub name: &'static str,
    pub state: PhaseState,
    /// Kept for scripts reading earlier output: true unless the phase failed.
    pub ok: bool,
    pub message: String,
    /// Time the phase's own work took; parts of a composite phase overlap.
    #[serde(serialize_with = "as_secs")]
    pub elapsed: Duration,
}

impl PhaseResult {
    pub fn new(name: &'static str, state: PhaseState, message: impl Into<String>, elapsed: Duration) -> PhaseResult {
        PhaseResult { name, state, ok: state != PhaseState::Failed, message: message.into(), elapsed }
    }
}

/// Everything a run reports; `-o json` prints it as is.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub command: &'static str,
    pub cluster: String,
    pub dry_run: bool,
    /// Local mode: the one host is this machine, not reached over SSH.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
    /// The k3s version the run installed or would install.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub phases: Vec<PhaseResult>,
    pub hosts: Vec<HostResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
}

impl RunReport {
    /// Every phase done (or planned) and no host failed or left out.
    pub fn succeeded(&self) -> bool {
        self.phases.iter().all(|p| p.state != PhaseState::Failed) && self.hosts.iter().all(|h| !h.state.is_failure())
    }

    pub fn host(&self, name: &str) -> Option<&HostResult> {
        self.hosts.iter().find(|h| h.host == name)
    }
}

pub(crate) fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}
