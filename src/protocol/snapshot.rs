//! Snapshots of a k3s server and their restore: the host operations and their answers.
//!
//! An archive is `<dir>/<name>.tar.zst` with its sha256 beside it in `<name>.tar.zst.sha256`
//! (sha256sum's format); the format itself is described in `host::snapshot::archive`. Archives
//! travel with the file operations: `send-file` pulls one to the operator, `receive-file` pushes
//! one to a fresh host before `snapshot-restore`.

use serde::{Deserialize, Serialize};

use super::files::Compression;
use super::k3s::FileChange;
use super::{Operation, Scrubber, Secret};

/// What holds the cluster's state on the server the snapshot was taken on.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Datastore {
    /// kine on SQLite (`server/db/state.db`): read as of one SQLite read transaction.
    Sqlite,
    /// Embedded etcd (HA servers): taken with `k3s etcd-snapshot save`.
    Etcd,
}

impl Datastore {
    pub fn as_str(self) -> &'static str {
        match self {
            Datastore::Sqlite => "sqlite",
            Datastore::Etcd => "etcd",
        }
    }
}

impl std::fmt::Display for Datastore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `snapshot-create`: a consistent snapshot of this server, while k3s keeps running.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// The cluster's name (the cluster file's metadata.name), kept in the manifest.
    pub cluster: String,
    /// This host's node name, kept in the manifest and in the archive's name.
    pub node: String,
    /// The archive is named `<name_prefix>-<node>-<UTC time>.tar.zst` (letters, digits, `.`, `_`, `-`).
    pub name_prefix: String,
    /// Absolute directory for the archive; `/var/lib/rancher/k3node/snapshots` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotCreated {
    /// The archive's name without `.tar.zst`.
    pub name: String,
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub datastore: Datastore,
    pub k3s_version: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// Files, directories and links in the archive (the manifest's entries).
    pub entries: u64,
}

impl Operation for CreateSnapshot {
    const NAME: &'static str = "snapshot-create";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = SnapshotCreated;
    fn mutates(&self) -> bool {
        true
    }
}

/// What an archive's manifest says about it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestSummary {
    pub cluster: String,
    pub node: String,
    pub datastore: Datastore,
    pub k3s_version: String,
    pub k3node_version: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// k3s's data dir on the server it was taken on (where a restore puts the server's files).
    pub data_dir: String,
    pub entries: u64,
    /// Bytes of all files, uncompressed.
    pub bytes: u64,
}

/// `snapshot-list`: the archives in a directory, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListSnapshots {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotList {
    pub dir: String,
    pub snapshots: Vec<SnapshotSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub name: String,
    pub path: String,
    pub size: u64,
    /// From the sidecar file; None when it is missing or unreadable.
    pub sha256: Option<String>,
    /// None when the archive's manifest cannot be read (see `problem`).
    pub manifest: Option<ManifestSummary>,
    /// Why the archive is not usable as it is (no sidecar, unreadable manifest); checked fully by verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl Operation for ListSnapshots {
    const NAME: &'static str = "snapshot-list";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = SnapshotList;
    fn mutates(&self) -> bool {
        false
    }
}

/// `snapshot-verify`: reads all of an archive and checks everything it can.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VerifySnapshot {
    /// Absolute path of the `.tar.zst`.
    pub path: String,
    /// Only the archive's sha256 against its sidecar, and its manifest: for an archive that a
    /// restore's check reads in full on this same host before anything stops.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sum_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotVerified {
    pub name: String,
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub manifest: ManifestSummary,
    /// What the datastore's own check said (`PRAGMA integrity_check: ok`, the etcd snapshot's hash).
    pub database_check: String,
}

impl Operation for VerifySnapshot {
    const NAME: &'static str = "snapshot-verify";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = SnapshotVerified;
    fn mutates(&self) -> bool {
        false
    }
}

/// `snapshot-prune`: deletes the archives (and their sidecars) a retention policy does not keep.
/// An archive is kept when it is among the `keep_last` newest or created at or after
/// `keep_newer_than`; the newest archive is always kept, so that no policy empties the
/// directory. Archives whose manifest cannot be read are never deleted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PruneSnapshots {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Only archives whose name starts with this are considered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_newer_than: Option<String>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotsPruned {
    /// Names (without `.tar.zst`) deleted, or in a dry run to be deleted, oldest first.
    pub deleted: Vec<String>,
    pub kept: Vec<String>,
    /// Archives left alone because they cannot be read, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

impl Operation for PruneSnapshots {
    const NAME: &'static str = "snapshot-prune";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = SnapshotsPruned;
    fn mutates(&self) -> bool {
        !self.dry_run
    }
}

/// `snapshot-restore`: this host's step of a restore (the operator stops agents and other
/// servers around it). The archive is verified fully and staged beside k3s's files before anything
/// stops; the data it replaces is moved aside (`<path>.k3node-restore-<UTC time>`), never deleted,
/// and the staged data renamed in its place; an interrupted restore is
/// finished by running it again with the same archive, or undone with `snapshot-rollback`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RestoreSnapshot {
    /// Absolute path of the `.tar.zst` on this host (its sidecar beside it).
    pub path: String,
    /// The node whose Ready condition is waited for once k3s runs again.
    pub node_name: String,
    /// Restore even though this host's k3s is not the version the archive was taken with.
    pub allow_version_mismatch: bool,
    /// Seconds for the cluster reset (etcd), the start and the node to be Ready.
    pub ready_timeout_secs: u64,
    /// Verify the archive and report what would be done; change nothing.
    pub dry_run: bool,
    /// config.yaml for this host, staged in place of the archive's: a restore
    /// onto another host than the snapshot's (disaster recovery) runs k3s with this host's own
    /// identity (node name, node-ip), not the lost host's. Checked like the archive's before
    /// anything stops. Absent: the archive's config.yaml is restored as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_yaml: Option<Secret>,
    /// Check and stage only: the archive verified and staged beside k3s's files, everything the
    /// restore would refuse refused, and the staging kept for the restore that follows; k3s
    /// keeps running. (With `dry_run`, nothing is staged.)
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stage_only: bool,
    /// The archive's sha256 as the operator verified it: the restore uses what a `stage_only`
    /// request staged only for this very archive (otherwise it stages it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// A path moved out of the way, and where it went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MovedAside {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestoreReport {
    pub name: String,
    pub datastore: Datastore,
    pub k3s_version: String,
    /// Every step, in order, as taken (or in a dry run, as it would be taken).
    pub actions: Vec<String>,
    /// What the restored data replaced, and where it is now.
    pub moved_aside: Vec<MovedAside>,
    /// Files, directories and links written from the archive.
    pub restored_entries: u64,
    /// How to undo this restore.
    pub rollback: String,
    /// How long the steps before k3s stopped took on the host (reading, checking and staging the
    /// archive; none in a dry run or when an unfinished restore is finished).
    #[serde(default)]
    pub staging: Vec<StepTime>,
    /// How long each step took on the host, in order (none in a dry run): k3s is down from the
    /// first step's start to the last one's end.
    #[serde(default)]
    pub timings: Vec<StepTime>,
}

/// How long one step of a restore took on the host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepTime {
    pub step: String,
    pub millis: u64,
}

impl Operation for RestoreSnapshot {
    const NAME: &'static str = "snapshot-restore";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = RestoreReport;
    fn mutates(&self) -> bool {
        !self.dry_run
    }
    fn secrets(&self) -> Vec<String> {
        self.config_yaml.as_ref().map(|c| Scrubber::config_values(c.expose())).unwrap_or_default()
    }
}

/// `snapshot-receive`: an archive pushed to this host before a restore (from the operator, or
/// from the server that took it), streamed after the request like `receive-file`: written into
/// the snapshot directory (created 0700) as `<name>.tar.zst`, 0600, and put in place only when
/// its size and sha256 are the ones announced; its sidecar is written beside it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReceiveSnapshot {
    /// The archive's name, without `.tar.zst`.
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub compression: Compression,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotReceived {
    pub path: String,
}

impl Operation for ReceiveSnapshot {
    const NAME: &'static str = "snapshot-receive";
    const UPLOAD: bool = true;
    const DOWNLOAD: bool = false;
    type Answer = SnapshotReceived;
    fn mutates(&self) -> bool {
        true
    }
}

/// `snapshot-peer`: a step of a restore on a host of the cluster other than the one restored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RestorePeer {
    pub step: PeerStep,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PeerStep {
    /// Before the datastore is replaced: stop this host's k3s or k3s-agent, so that nothing
    /// talks to (or, for an HA server, votes on) the datastore while it changes.
    Stop,
    /// After an etcd restore on the first server (k3s-contract.md section 6): stop this server's
    /// k3s and move its `server/db` aside (`<path>.k3node-restore-<UTC time>`, never deleted), so
    /// that its next start joins the restored cluster as a new member.
    Rejoin,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerReport {
    /// The service the step concerned (`k3s`, `k3s-agent`), None when neither is installed.
    pub service: Option<String>,
    /// Every step taken (in a dry run: that would be taken), in order.
    pub actions: Vec<String>,
    pub moved_aside: Vec<MovedAside>,
}

impl Operation for RestorePeer {
    const NAME: &'static str = "snapshot-peer";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = PeerReport;
    fn mutates(&self) -> bool {
        !self.dry_run
    }
}

/// `snapshot-scheduled`: what the snapshot timer runs on a server, without an operator: a
/// snapshot, then the retention among the archives of the same name prefix. Its request is a
/// file on the host (see [`InstallSchedule`]), read on the helper's stdin.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScheduledSnapshot {
    pub cluster: String,
    pub node: String,
    /// The archives the timer makes and prunes: `<name_prefix>-<node>-<UTC time>.tar.zst`.
    pub name_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Archives younger than this many seconds are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_newer_than_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScheduledSnapshotDone {
    pub created: SnapshotCreated,
    pub pruned: SnapshotsPruned,
}

impl Operation for ScheduledSnapshot {
    const NAME: &'static str = "snapshot-scheduled";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = ScheduledSnapshotDone;
    fn mutates(&self) -> bool {
        true
    }
}

/// `snapshot-schedule`: the snapshot timer of this server made to match the cluster file:
/// `k3node-snapshot.service` and `.timer` (k3node's own unit files), a drop-in with the
/// calendar and the randomized delay, and the request the service runs; enabled and started.
/// Without a schedule, a timer installed earlier is stopped, disabled and removed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InstallSchedule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// systemd calendar event (`OnCalendar=`).
    pub on_calendar: String,
    pub randomized_delay_secs: u64,
    pub snapshot: ScheduledSnapshot,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScheduleReport {
    pub changes: Vec<FileChange>,
    /// What was done (or would be) to the timer: enabled and started, restarted, stopped...
    pub actions: Vec<String>,
    /// When the timer fires next, as systemd says it (empty when there is no timer).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub next: String,
}

impl Operation for InstallSchedule {
    const NAME: &'static str = "snapshot-schedule";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = ScheduleReport;
    fn mutates(&self) -> bool {
        !self.dry_run
    }
}

/// `snapshot-rollback`: undoes the last restore on this host: k3s stops, the restored data is
/// moved aside in turn (`<path>.k3node-rollback-<UTC time>`), the data the restore moved aside
/// comes back, k3s starts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RollbackRestore {
    pub node_name: String,
    pub ready_timeout_secs: u64,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RollbackReport {
    /// The archive whose restore was undone.
    pub name: String,
    pub actions: Vec<String>,
    /// The restored data, now out of the way.
    pub moved_aside: Vec<MovedAside>,
    /// The data put back where it was before the restore.
    pub moved_back: Vec<MovedAside>,
}

impl Operation for RollbackRestore {
    const NAME: &'static str = "snapshot-rollback";
    const UPLOAD: bool = false;
    const DOWNLOAD: bool = false;
    type Answer = RollbackReport;
    fn mutates(&self) -> bool {
        !self.dry_run
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_request, encode_request};

    #[test]
    fn optional_fields_are_absent_or_set_never_null_and_safety_fields_are_required() {
        let list = encode_request(&ListSnapshots { dir: None }, None);
        assert_eq!(String::from_utf8(list).unwrap(), "{\"op\":\"snapshot-list\",\"args\":{}}\n");
        let null = r#"{"op":"snapshot-list","args":{"dir":null}}"#;
        assert!(decode_request::<ListSnapshots>(null).unwrap_err().contains("ambiguous"));
        let no_dry_run = r#"{"op":"snapshot-prune","args":{"keep_last":3}}"#;
        assert!(decode_request::<PruneSnapshots>(no_dry_run).unwrap_err().contains("missing field `dry_run`"));
        let restore = r#"{"op":"snapshot-restore","args":{"path":"/a.tar.zst","node_name":"s1","ready_timeout_secs":60,"dry_run":false}}"#;
        let peer = r#"{"op":"snapshot-peer","args":{"step":"rejoin"}}"#;
        assert!(decode_request::<RestorePeer>(peer).unwrap_err().contains("missing field `dry_run`"));
        let schedule = r#"{"op":"snapshot-schedule","args":{"schedule":null,"dry_run":false}}"#;
        assert!(decode_request::<InstallSchedule>(schedule).unwrap_err().contains("ambiguous"));
        let err = decode_request::<RestoreSnapshot>(restore).unwrap_err();
        assert!(err.contains("missing field `allow_version_mismatch`"), "{err}");
        let typo = r#"{"op":"snapshot-rollback","args":{"node_name":"s1","ready_timeout_secs":60,"dry_run":false,"dryrun":true}}"#;
        assert!(decode_request::<RollbackRestore>(typo).unwrap_err().contains("unknown field"));
    }

    #[test]
    fn dry_runs_and_reads_take_no_lock_and_changes_do() {
        let prune = |dry_run| PruneSnapshots {
            dir: None,
            name_prefix: None,
            keep_last: Some(1),
            keep_newer_than: None,
            dry_run,
        };
        assert!(prune(false).mutates() && !prune(true).mutates());
        let create = CreateSnapshot { cluster: "c".into(), node: "n".into(), name_prefix: "k3node".into(), dir: None };
        assert!(create.mutates());
        assert!(
            !ListSnapshots { dir: None }.mutates() && !VerifySnapshot { path: "/a".into(), sum_only: false }.mutates()
        );
        let rollback = |dry_run| RollbackRestore { node_name: "n".into(), ready_timeout_secs: 1, dry_run };
        assert!(rollback(false).mutates() && !rollback(true).mutates());
        assert_eq!(serde_json::to_string(&Datastore::Etcd).unwrap(), "\"etcd\"");
    }
}
