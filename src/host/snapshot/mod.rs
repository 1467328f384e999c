//! Snapshots of a k3s server and their restore, on the host: `snapshot-create`, `snapshot-list`,
//! `snapshot-verify`, `snapshot-prune`, `snapshot-restore`, `snapshot-rollback`
//! (k3s-contract.md section 6).
//!
//! - [`create`]: a consistent snapshot while k3s keeps running: the datastore as of one SQLite
//!   read transaction (checked with `PRAGMA integrity_check`) or `k3s etcd-snapshot save` (checked
//!   with etcd's appended hash), plus everything a restore needs (token, tls, cred, the user's
//!   manifests, /etc/rancher/k3s, the node password, the service's env file), in one archive
//!   ([`archive`]) written atomically, 0600, with its sha256 beside it.
//! - [`retention`]: the archives of a directory, and pruning them by count and age.
//! - [`verify`]: reads all of an archive: its sha256, every entry against the manifest, the
//!   datastore's own check.
//! - [`restore`]: this host's step of a restore, and its rollback; [`peer`]: the other hosts'
//!   steps (stop before, a server's db aside after an etcd restore).
//! - [`schedule`]: the snapshot timer (`up` installs it) and what it runs.
//!
//! Invariants: snapshots never stop or restart k3s; a restore verifies the whole archive before
//! anything stops, moves what it replaces aside (never deletes it), and can be run again or
//! rolled back after an interruption; nothing a snapshot holds (the token, keys) ever reaches a
//! message.

pub mod archive;
mod create;
mod etcd;
mod k3s;
mod peer;
mod restore;
mod retention;
pub mod schedule;
mod stage;
mod verify;

use std::io;
use std::path::{Path, PathBuf};

use crate::host::error::{describe_io, Failure, HostError};
use crate::host::k3s::SNAPSHOT_DIR;
use crate::host::serve::{Context, HostOperation};
use crate::protocol::snapshot::{
    CreateSnapshot, InstallSchedule, ListSnapshots, PeerReport, PruneSnapshots, ReceiveSnapshot, RestorePeer,
    RestoreReport, RestoreSnapshot, RollbackReport, RollbackRestore, ScheduleReport, ScheduledSnapshot,
    ScheduledSnapshotDone, SnapshotCreated, SnapshotList, SnapshotReceived, SnapshotVerified, SnapshotsPruned,
    VerifySnapshot,
};
use crate::protocol::ErrorKind;

pub use archive::ArchiveError;
pub use stage::leftovers as staged_leftovers;

/// Mode of the snapshot directory and of the archives in it: they hold the cluster's token and CA keys.
pub const DIR_MODE: u32 = 0o700;
pub const ARCHIVE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    BadRequest(String),
    /// What the operation needs is not on this host (k3s, a server's data, the archive).
    #[error("{0}")]
    NotInstalled(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    K3s(String),
    #[error("{0}")]
    Datastore(String),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("{what} {}: {}", path.display(), describe_io(source))]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("not enough space in {} for the snapshot: about {needed_mib} MiB may be needed for the archive (the database's size, if it does not compress), {available_mib} MiB are available; free space there, or snapshot into another directory", dir.display())]
    NoSpace { dir: PathBuf, needed_mib: u64, available_mib: u64 },
    #[error("the archive was taken with k3s {archive}, this host runs k3s {host}: install k3s {archive} first, or allow the mismatch (a datastore restored onto another k3s version may not start)")]
    VersionMismatch { archive: String, host: String },
    #[error("{0}")]
    Conflict(String),
    /// k3s's service did not stop, start or become Ready.
    #[error("{what}{}", journal_text(journal))]
    Service { what: String, timed_out: bool, journal: Vec<String> },
    /// `k3s server --cluster-reset` did not say it was done.
    #[error("{0}")]
    Reset(String),
    /// A restore (or rollback) failed after it began to change the host: the step, and how to
    /// finish or undo it.
    #[error("{source}\n{guidance}")]
    Interrupted { source: Box<SnapshotError>, guidance: String },
}

fn journal_text(journal: &[String]) -> String {
    if journal.is_empty() {
        return String::new();
    }
    let mut text = format!("\nlast lines of `journalctl -u {}`:", k3s::SERVICE);
    for line in journal {
        text.push_str("\n  ");
        text.push_str(line);
    }
    text
}

impl Failure for SnapshotError {
    fn kind(&self) -> ErrorKind {
        match self {
            SnapshotError::BadRequest(_) => ErrorKind::BadRequest,
            SnapshotError::NotInstalled(_) => ErrorKind::NotInstalled,
            SnapshotError::Config(_) | SnapshotError::K3s(_) | SnapshotError::Datastore(_) => ErrorKind::Failed,
            SnapshotError::Archive(e) => e.kind(),
            SnapshotError::Io { source, .. } => ErrorKind::of_io(source),
            SnapshotError::NoSpace { .. } => ErrorKind::NoSpace,
            SnapshotError::VersionMismatch { .. } | SnapshotError::Conflict(_) => ErrorKind::Conflict,
            SnapshotError::Service { timed_out: true, .. } => ErrorKind::Timeout,
            SnapshotError::Service { .. } | SnapshotError::Reset(_) => ErrorKind::StartFailed,
            SnapshotError::Interrupted { source, .. } => source.kind(),
        }
    }

    fn retryable(&self) -> bool {
        match self {
            // Neither goes away by itself.
            SnapshotError::VersionMismatch { .. } | SnapshotError::Conflict(_) => false,
            // Running it again is how an interrupted restore is finished.
            SnapshotError::Interrupted { .. } => true,
            other => other.kind().retryable_by_default(),
        }
    }
}

impl HostOperation for CreateSnapshot {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<SnapshotCreated, HostError> {
        let sys = ctx.sys;
        Ok(create::create(sys, &self, &mut |m| ctx.progress(m))?)
    }
}

impl HostOperation for ListSnapshots {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<SnapshotList, HostError> {
        Ok(retention::list(ctx.sys, &self)?)
    }
}

impl HostOperation for VerifySnapshot {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<SnapshotVerified, HostError> {
        let sys = ctx.sys;
        Ok(verify::verify_request(sys, &self, &mut |m| ctx.progress(m))?)
    }
}

impl HostOperation for PruneSnapshots {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<SnapshotsPruned, HostError> {
        let sys = ctx.sys;
        Ok(retention::prune(sys, &self, &mut |m| ctx.progress(m))?)
    }
}

impl HostOperation for RestoreSnapshot {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<RestoreReport, HostError> {
        let sys = ctx.sys;
        Ok(restore::restore(sys, &self, &mut |m| ctx.progress(m))?)
    }
}

impl HostOperation for RollbackRestore {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<RollbackReport, HostError> {
        let sys = ctx.sys;
        Ok(restore::rollback(sys, &self, &mut |m| ctx.progress(m))?)
    }
}

impl HostOperation for ReceiveSnapshot {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<SnapshotReceived, HostError> {
        let dir = snapshot_dir(self.dir.as_deref())?;
        check_name_part(&self.name, "the archive's name")?;
        let sys = ctx.sys;
        sys.create_dir_all(&dir, DIR_MODE).map_err(|source| SnapshotError::Io {
            what: "cannot create",
            path: dir.clone(),
            source,
        })?;
        let file_name = format!("{}{}", self.name, archive::EXTENSION);
        let path = dir.join(&file_name);
        if !crate::digest::is_sha256_hex(&self.sha256) {
            return Err(SnapshotError::BadRequest(format!("{:?} is not a sha256", self.sha256)).into());
        }
        // The sidecar first: an archive never exists without one (a lone sidecar is swept).
        let sidecar = archive::sidecar_path(&path);
        sys.write_atomic(&sidecar, archive::sidecar_text(&self.sha256, &file_name).as_bytes(), ARCHIVE_MODE)
            .map_err(|source| SnapshotError::Io { what: "cannot write", path: sidecar.clone(), source })?;
        let receive = crate::protocol::files::ReceiveFile {
            path: path.display().to_string(),
            size: self.size,
            sha256: self.sha256,
            mode: ARCHIVE_MODE,
            compression: self.compression,
        };
        let received = receive.run(ctx)?;
        Ok(SnapshotReceived { path: received.path })
    }
}

impl HostOperation for RestorePeer {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<PeerReport, HostError> {
        let sys = ctx.sys;
        Ok(peer::run(sys, &self, &mut |m| ctx.progress(m))?)
    }
}

impl HostOperation for ScheduledSnapshot {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<ScheduledSnapshotDone, HostError> {
        let sys = ctx.sys;
        Ok(schedule::scheduled(sys, &self, &mut |m| ctx.progress(m))?)
    }
}

impl HostOperation for InstallSchedule {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<ScheduleReport, HostError> {
        let sys = ctx.sys;
        Ok(schedule::install(sys, &self, &mut |m| ctx.progress(m))?)
    }
}

/// The request's directory (absolute, no `..`), or the default one.
fn snapshot_dir(dir: Option<&str>) -> Result<PathBuf, SnapshotError> {
    let Some(dir) = dir else { return Ok(PathBuf::from(SNAPSHOT_DIR)) };
    absolute(dir, "the snapshot directory")
}

fn absolute(path: &str, what: &str) -> Result<PathBuf, SnapshotError> {
    let p = PathBuf::from(path);
    if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(SnapshotError::BadRequest(format!("{what} must be an absolute path without `..`, not {path:?}")));
    }
    Ok(p)
}

/// An archive's path as a request gives it: absolute, ending in `.tar.zst`.
fn archive_path(path: &str) -> Result<PathBuf, SnapshotError> {
    let p = absolute(path, "the archive")?;
    if !path.ends_with(archive::EXTENSION) {
        return Err(SnapshotError::BadRequest(format!("the archive {path:?} is not a {} file", archive::EXTENSION)));
    }
    Ok(p)
}

/// The archive's name: its file name without `.tar.zst`.
fn archive_name(path: &Path) -> String {
    let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    file.strip_suffix(archive::EXTENSION).unwrap_or(&file).to_string()
}

/// A name part (prefix, node): what a file name may hold without quoting.
fn check_name_part(value: &str, what: &str) -> Result<(), SnapshotError> {
    let ok = !value.is_empty()
        && value.len() <= 100
        && !value.starts_with(['.', '-'])
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SnapshotError::BadRequest(format!(
            "{what} {value:?} must be 1 to 100 letters, digits, `.`, `_` or `-`, not starting with `.` or `-`"
        )))
    }
}

/// RFC 3339 in UTC, to the second (`2025-01-02T03:04:05Z`).
fn rfc3339(unix_ms: i64) -> String {
    let at =
        time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000)).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// `20250102T030405Z`: a UTC time for file names.
fn stamp(unix_ms: i64) -> String {
    let at =
        time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000)).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    at.format(&format).unwrap_or_default()
}

/// Unix seconds of an RFC 3339 time.
fn parse_rfc3339(text: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))
}

/// A directory of k3node's own work below the snapshot directory, removed when dropped (also
/// when what used it failed): the staged files of a snapshot, the database checked by verify.
struct WorkDir<'a> {
    sys: &'a dyn crate::host::system::HostSystem,
    path: PathBuf,
}

/// Work dirs start with this; one left by a killed run is removed by the next create (under the
/// host lock no other create runs).
const WORK_PREFIX: &str = ".k3node-work-";
/// A verify's work dir is `.k3node-work-verify-<pid>-<nonce>`: verifies take no lock, so a
/// create sweeps one only once its process is gone.
const VERIFY_LABEL: &str = "verify-";

impl<'a> WorkDir<'a> {
    /// `<parent>/.k3node-work-<label>`.
    fn new(
        sys: &'a dyn crate::host::system::HostSystem,
        parent: &Path,
        label: &str,
    ) -> Result<WorkDir<'a>, SnapshotError> {
        let path = parent.join(format!("{WORK_PREFIX}{label}"));
        sys.create_dir_all(&path, DIR_MODE).map_err(|e| SnapshotError::Io {
            what: "cannot create",
            path: path.clone(),
            source: e,
        })?;
        Ok(WorkDir { sys, path })
    }
}

impl Drop for WorkDir<'_> {
    fn drop(&mut self) {
        let _ = self.sys.remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod real_tests;
#[cfg(test)]
mod steps_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;
