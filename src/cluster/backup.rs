//! `spec.backup`: when the servers take snapshots on their own (a systemd timer that `up`
//! installs), what the timer and `snapshot prune` keep, and where `snapshot pull` puts archives.
//!
//! Invariants: a schedule is a calendar event systemd accepts (checked here, and again by the
//! host's own systemd when the timer is installed); a retention always keeps something (a count
//! of at least 1 or an age above 0), and without one the timer keeps the 5 newest, as k3s's
//! `etcd-snapshot-retention` does.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::calendar;
use super::diagnostic::Sink;
use super::reader::{self, mapping, no_hook, Entry, Fields};

/// What the timer keeps when the file says nothing (k3s's etcd-snapshot-retention default).
pub const DEFAULT_KEEP_LAST: u32 = 5;
/// The timer's `RandomizedDelaySec=` when the file says nothing: servers of one cluster do not
/// all snapshot in the same second.
pub const DEFAULT_RANDOMIZED_DELAY_SECS: u64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Backup {
    /// systemd calendar event (`OnCalendar=`); None: no timer (and `up` removes one it installed).
    pub schedule: Option<String>,
    /// The timer's `RandomizedDelaySec=`, in seconds.
    pub randomized_delay_secs: u64,
    pub retention: Retention,
    /// Where `snapshot pull` writes archives unless `--to` says otherwise.
    pub pull_dir: PathBuf,
}

/// An archive is kept when it is among the `keep_last` newest, or younger than
/// `keep_newer_than_secs`; the newest is always kept (see `host::snapshot::retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    pub keep_last: Option<u32>,
    pub keep_newer_than_secs: Option<u64>,
}

impl Backup {
    /// No `spec.backup`: no timer, the default retention, pulls into `<cluster file dir>/snapshots`.
    pub fn defaults(base_dir: &Path) -> Backup {
        Backup {
            schedule: None,
            randomized_delay_secs: DEFAULT_RANDOMIZED_DELAY_SECS,
            retention: Retention { keep_last: Some(DEFAULT_KEEP_LAST), keep_newer_than_secs: None },
            pull_dir: base_dir.join("snapshots"),
        }
    }
}

/// Reads `spec.backup` into `out` (which holds the defaults), reporting every problem.
pub(crate) fn read(
    sink: &mut Sink,
    e: &Entry<'_>,
    out: &mut Backup,
    resolve: &dyn Fn(&mut Sink, &Entry<'_>) -> Option<PathBuf>,
) {
    let Some(map) = mapping(sink, e, "with schedule, randomizedDelay, retention and pullDir") else {
        return;
    };
    let f = Fields::new(sink, map, &e.path, &["schedule", "randomizedDelay", "retention", "pullDir"], &no_hook);
    if let Some(e) = f.get("schedule") {
        if let Some(text) = reader::string(sink, e) {
            match calendar::calendar(&text) {
                Ok(()) => out.schedule = Some(text.trim().to_string()),
                Err(message) => {
                    let d = sink.error(e.value_pos(), &e.path, format!("not a systemd calendar event: {message}"));
                    if text.split_whitespace().count() == 5 {
                        d.hint("this looks like cron; systemd writes `0 3 * * *` as `*-*-* 03:00:00` (see `man systemd.time`, `systemd-analyze calendar`)");
                    } else {
                        d.hint("e.g. `daily`, `*-*-* 03:00:00`, `Mon..Fri 02:30`; check one with `systemd-analyze calendar`");
                    }
                }
            }
        }
    }
    if let Some(e) = f.get("randomizedDelay") {
        if let Some(us) = span(sink, e) {
            out.randomized_delay_secs = us / 1_000_000;
        }
    }
    if let Some(e) = f.get("retention") {
        if let Some(map) = mapping(sink, e, "with keepLast and/or keepNewerThan") {
            let r = Fields::new(sink, map, &e.path, &["keepLast", "keepNewerThan"], &no_hook);
            let mut retention = Retention { keep_last: None, keep_newer_than_secs: None };
            if let Some(e) = r.get("keepLast") {
                match reader::string(sink, e).map(|t| t.parse::<u32>()) {
                    Some(Ok(n)) if n >= 1 => retention.keep_last = Some(n),
                    Some(_) => {
                        sink.error(e.value_pos(), &e.path, "keepLast must be a whole number of at least 1")
                            .hint("retention never deletes the newest snapshot; to keep none, leave spec.backup out");
                    }
                    None => {}
                }
            }
            if let Some(e) = r.get("keepNewerThan") {
                match span(sink, e) {
                    Some(0) => {
                        sink.error(e.value_pos(), &e.path, "keepNewerThan must be longer than 0");
                    }
                    Some(us) => retention.keep_newer_than_secs = Some(us.div_ceil(1_000_000)),
                    None => {}
                }
            }
            if retention.keep_last.is_none() && retention.keep_newer_than_secs.is_none() {
                if r.get("keepLast").is_none() && r.get("keepNewerThan").is_none() {
                    sink.error(e.value_pos(), &e.path, "retention needs keepLast, keepNewerThan or both")
                        .hint(format!("without retention the timer keeps the {DEFAULT_KEEP_LAST} newest"));
                }
            } else {
                out.retention = retention;
            }
        }
    }
    if let Some(e) = f.get("pullDir") {
        if let Some(path) = resolve(sink, e) {
            out.pull_dir = path;
        }
    }
}

fn span(sink: &mut Sink, e: &Entry<'_>) -> Option<u64> {
    let text = reader::string(sink, e)?;
    match calendar::timespan_us(&text) {
        Ok(us) => Some(us),
        Err(message) => {
            sink.error(e.value_pos(), &e.path, message).hint("a systemd time span: 30s, 10min, 1h 30min, 14d");
            None
        }
    }
}
