//! Scheduled snapshots, on the host: the timer that takes them (`snapshot-schedule`, run by
//! `up`) and what it runs (`snapshot-scheduled`, run by systemd, no operator involved).
//!
//! The timer is k3node's own two units (`systemd/k3node-snapshot.service` and `.timer` of the
//! repository, compiled in), a drop-in with the cluster's calendar and randomized delay, and the
//! request line the service feeds the helper on its stdin (0600: it names the cluster and the
//! node, and the helper checks it as strictly as any request). Files are written atomically and
//! only when their bytes differ; systemd reloads, enables, starts or restarts the timer only
//! when that changes something, so a re-run of `up` leaves a converged timer alone. Without a
//! schedule, a timer installed earlier is stopped, disabled and its files removed.
//!
//! The service runs under the host lock like any change (an operator's run on the host makes a
//! scheduled snapshot wait for the next time), takes a snapshot with the prefix `scheduled`, then
//! prunes only the archives of that prefix: on-demand snapshots are the operator's to prune.

use std::path::{Path, PathBuf};

use super::{create, retention, SnapshotError};
use crate::host::k3s::systemd::Systemd;
use crate::host::k3s::{RECORD_DIR, UNIT_DIR};
use crate::host::system::{HostSystem, COMMAND_TIMEOUT};
use crate::protocol::encode_request;
use crate::protocol::k3s::{FileAction, FileChange};
use crate::protocol::snapshot::{
    CreateSnapshot, InstallSchedule, PruneSnapshots, Schedule, ScheduleReport, ScheduledSnapshot, ScheduledSnapshotDone,
};

pub const SERVICE_UNIT: &str = "k3node-snapshot.service";
pub const TIMER_UNIT: &str = "k3node-snapshot.timer";
const SERVICE_TEXT: &str = include_str!("../../../systemd/k3node-snapshot.service");
const TIMER_TEXT: &str = include_str!("../../../systemd/k3node-snapshot.timer");
/// The service's request line (see the unit's `StandardInput=`).
pub const REQUEST_FILE: &str = "/var/lib/rancher/k3node/snapshot-schedule.json";
const UNIT_MODE: u32 = 0o644;
const REQUEST_MODE: u32 = 0o600;

fn unit_file(name: &str) -> PathBuf {
    Path::new(UNIT_DIR).join(name)
}

fn dropin_file() -> PathBuf {
    Path::new(UNIT_DIR).join(format!("{TIMER_UNIT}.d")).join("schedule.conf")
}

/// `snapshot-scheduled`: a snapshot, then the retention among the archives of its prefix.
pub fn scheduled(
    sys: &dyn HostSystem,
    req: &ScheduledSnapshot,
    progress: &mut dyn FnMut(&str),
) -> Result<ScheduledSnapshotDone, SnapshotError> {
    if req.keep_last.is_none() && req.keep_newer_than_secs.is_none() {
        return Err(SnapshotError::BadRequest(
            "a scheduled snapshot needs a retention (keep_last, keep_newer_than_secs): without one, the archives would fill the disk".into(),
        ));
    }
    let create = CreateSnapshot {
        cluster: req.cluster.clone(),
        node: req.node.clone(),
        name_prefix: req.name_prefix.clone(),
        dir: req.dir.clone(),
    };
    let created = create::create(sys, &create, progress)?;
    progress(&format!("snapshot {} written ({} bytes)", created.name, created.size));
    let keep_newer_than = req.keep_newer_than_secs.map(|secs| {
        let cutoff = sys.now_unix_ms() - (secs.min(i64::MAX as u64 / 2000) as i64) * 1000;
        super::rfc3339(cutoff)
    });
    let prune = PruneSnapshots {
        dir: req.dir.clone(),
        name_prefix: Some(format!("{}-", req.name_prefix)),
        keep_last: req.keep_last,
        keep_newer_than,
        dry_run: false,
    };
    let pruned = retention::prune(sys, &prune, progress)?;
    Ok(ScheduledSnapshotDone { created, pruned })
}

/// The files of the timer as the request wants them: (path, bytes, mode).
fn wanted(schedule: &Schedule) -> Vec<(PathBuf, Vec<u8>, u32)> {
    let dropin = format!(
        "# Written by k3node from spec.backup of cluster {}; edit the cluster file, not this one.\n[Timer]\nOnCalendar=\nOnCalendar={}\nRandomizedDelaySec={}s\n",
        schedule.snapshot.cluster, schedule.on_calendar, schedule.randomized_delay_secs
    );
    vec![
        (unit_file(SERVICE_UNIT), SERVICE_TEXT.as_bytes().to_vec(), UNIT_MODE),
        (unit_file(TIMER_UNIT), TIMER_TEXT.as_bytes().to_vec(), UNIT_MODE),
        (dropin_file(), dropin.into_bytes(), UNIT_MODE),
        (PathBuf::from(REQUEST_FILE), encode_request(&schedule.snapshot, None), REQUEST_MODE),
    ]
}

/// `snapshot-schedule`: the timer converged to the request (see the module docs).
pub fn install(
    sys: &dyn HostSystem,
    req: &InstallSchedule,
    progress: &mut dyn FnMut(&str),
) -> Result<ScheduleReport, SnapshotError> {
    match &req.schedule {
        Some(schedule) => converge(sys, schedule, req.dry_run, progress),
        None => remove(sys, req.dry_run, progress),
    }
}

fn converge(
    sys: &dyn HostSystem,
    schedule: &Schedule,
    dry_run: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<ScheduleReport, SnapshotError> {
    check_request(sys, schedule)?;
    let systemd = Systemd::new(sys);
    if !systemd.available() {
        return Err(SnapshotError::NotInstalled(
            "systemctl is not installed: scheduled snapshots run as a systemd timer".into(),
        ));
    }
    let mut changes = Vec::new();
    let mut to_write = Vec::new();
    for (path, bytes, mode) in wanted(schedule) {
        let action = match sys.open_read(&path) {
            Ok(mut file) => {
                let mut old = Vec::new();
                std::io::Read::read_to_end(&mut file, &mut old).map_err(io_err("cannot read", &path))?;
                let same_mode = sys.file_mode(&path).is_ok_and(|m| m & 0o7777 == mode);
                if old == bytes && same_mode {
                    FileAction::Unchanged
                } else {
                    FileAction::Updated
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileAction::Created,
            Err(e) => return Err(io_err("cannot read", &path)(e)),
        };
        let shown = path.display().to_string();
        // The request file names the cluster and node only, but it is k3node's private input: no diff.
        let diff = (action != FileAction::Unchanged && path != Path::new(REQUEST_FILE))
            .then(|| String::from_utf8_lossy(&bytes).into_owned());
        changes.push(FileChange { path: shown, action, diff });
        if action != FileAction::Unchanged {
            to_write.push((path, bytes, mode));
        }
    }
    let units_changed = to_write.iter().any(|(p, _, _)| p != Path::new(REQUEST_FILE));
    let status = systemd.status(TIMER_UNIT);
    let mut actions = Vec::new();
    if units_changed || status.needs_daemon_reload {
        actions.push("systemctl daemon-reload".to_string());
    }
    if !status.enabled {
        actions.push(format!("systemctl enable {TIMER_UNIT}"));
    }
    if !status.active {
        actions.push(format!("systemctl start {TIMER_UNIT}"));
    } else if units_changed {
        actions.push(format!("systemctl restart {TIMER_UNIT} (its schedule changed)"));
    }
    if dry_run {
        return Ok(ScheduleReport { changes, actions, next: String::new() });
    }
    for (path, bytes, mode) in &to_write {
        progress(&format!("writing {}", path.display()));
        let parent = crate::fsutil::parent_dir(path);
        let dir_mode = if parent == Path::new(RECORD_DIR) { 0o700 } else { 0o755 };
        sys.create_dir_all(parent, dir_mode).map_err(io_err("cannot create", parent))?;
        sys.write_atomic(path, bytes, *mode).map_err(io_err("cannot write", path))?;
    }
    let quick = |args: &[&str]| systemd.run_quick(args).map_err(SnapshotError::K3s);
    if units_changed || status.needs_daemon_reload {
        quick(&["daemon-reload"])?;
    }
    if !status.enabled {
        quick(&["enable", TIMER_UNIT])?;
    }
    if !status.active {
        quick(&["start", TIMER_UNIT])?;
    } else if units_changed {
        quick(&["restart", TIMER_UNIT])?;
    }
    let next = next_elapse(&systemd);
    Ok(ScheduleReport { changes, actions, next })
}

/// The schedule as the host's own systemd reads it, and names the helper checks.
fn check_request(sys: &dyn HostSystem, schedule: &Schedule) -> Result<(), SnapshotError> {
    if schedule.on_calendar.contains('\n') || schedule.on_calendar.trim().is_empty() {
        return Err(SnapshotError::BadRequest(format!("{:?} is not a calendar event", schedule.on_calendar)));
    }
    super::check_name_part(&schedule.snapshot.name_prefix, "the name prefix")?;
    super::check_name_part(&schedule.snapshot.node, "the node name")?;
    if schedule.snapshot.cluster.contains('\n') {
        return Err(SnapshotError::BadRequest("the cluster name holds a line break".into()));
    }
    super::snapshot_dir(schedule.snapshot.dir.as_deref())?;
    if schedule.snapshot.keep_last.is_none() && schedule.snapshot.keep_newer_than_secs.is_none() {
        return Err(SnapshotError::BadRequest("a schedule needs a retention".into()));
    }
    if let Some(analyze) = sys.find_command("systemd-analyze") {
        let out = sys
            .run_with(&analyze, &["calendar", "--", &schedule.on_calendar], None, COMMAND_TIMEOUT)
            .map_err(|e| SnapshotError::K3s(format!("cannot run systemd-analyze calendar: {e}")))?;
        if !out.success() {
            return Err(SnapshotError::BadRequest(format!(
                "this host's systemd refuses the schedule {:?}: {}",
                schedule.on_calendar,
                out.failure_summary()
            )));
        }
    }
    Ok(())
}

/// When the timer fires next, as systemd shows it; empty when it cannot say.
fn next_elapse(systemd: &Systemd<'_>) -> String {
    systemd
        .run_quick(&["show", "--property=NextElapseUSecRealtime", "--value", TIMER_UNIT])
        .map(|out| out.stdout.trim().to_string())
        .unwrap_or_default()
}

fn remove(
    sys: &dyn HostSystem,
    dry_run: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<ScheduleReport, SnapshotError> {
    let paths = [unit_file(SERVICE_UNIT), unit_file(TIMER_UNIT), dropin_file(), PathBuf::from(REQUEST_FILE)];
    let present: Vec<&PathBuf> = paths.iter().filter(|p| sys.metadata(p).is_ok()).collect();
    let mut report = ScheduleReport { changes: Vec::new(), actions: Vec::new(), next: String::new() };
    if present.is_empty() {
        return Ok(report);
    }
    let systemd = Systemd::new(sys);
    let status = systemd.status(TIMER_UNIT);
    let timer_known = present.iter().any(|p| **p == unit_file(TIMER_UNIT));
    if timer_known && (status.active || status.enabled) {
        report.actions.push(format!("systemctl disable --now {TIMER_UNIT}"));
    }
    report.changes = present
        .iter()
        .map(|p| FileChange { path: p.display().to_string(), action: FileAction::Removed, diff: None })
        .collect();
    report.actions.push("systemctl daemon-reload".into());
    if dry_run {
        return Ok(report);
    }
    let quick = |args: &[&str]| systemd.run_quick(args).map_err(SnapshotError::K3s);
    if timer_known && (status.active || status.enabled) {
        progress(&format!("stopping and disabling {TIMER_UNIT}"));
        quick(&["disable", "--now", TIMER_UNIT])?;
    }
    for path in &present {
        progress(&format!("removing {}", path.display()));
        sys.remove_file(path).map_err(io_err("cannot remove", path))?;
    }
    let _ = sys.remove_dir_all(crate::fsutil::parent_dir(&dropin_file()));
    if systemd.available() {
        quick(&["daemon-reload"])?;
    }
    Ok(report)
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io { what, path: path.to_path_buf(), source }
}
