//! `snapshot-restore` and `snapshot-rollback`: this host's step of a restore, and its undo.
//!
//! Restore, in order:
//! 1. read all of the archive and check it ([`verify::verify_and_stage`]), staging every entry
//!    beside what it replaces ([`stage`]: `<path>.k3node-staged-<UTC time>`, mode and owner as
//!    listed, each file only once it matches the manifest; the database checked where it is
//!    staged), with this host's own config.yaml in place of the archive's when the request
//!    carries one (a restore onto another host); check what it will make k3s run with (its
//!    config.yaml's data dir must be the manifest's; an etcd restore needs a server that did not
//!    join another, since k3s refuses `--cluster-reset` while `server` is set), and this host (a
//!    server's unit, no agent's; the archive's k3s version unless told otherwise). k3s still runs
//!    and nothing it uses has changed: a refusal removes what was staged. A dry run reads and
//!    checks without staging, and stops here with the plan. A check request (`stage_only`) stops
//!    here too, keeping what it staged and noting it in [`RESTORE_STAGED`]: the restore request
//!    that follows takes that note and, when it is of the same archive (path and sha256) with
//!    the same config.yaml and all still there, uses the staging as it is, reading the archive
//!    no more (step 1 is then the checks of what k3s will run with, on the staged config files);
//!    otherwise it stages again (which sweeps the unused staging);
//! 2. record the plan in [`RESTORE_RECORD`] (the archive, the time stamp, what moves where);
//! 3. stop k3s; move `<data dir>/server`, /etc/rancher/k3s, /etc/rancher/node and the service's
//!    env file aside to `<path>.k3node-restore-<UTC time>` (never deleted) and what was staged in
//!    their place (renames on one filesystem, so k3s is down for the stop, the renames and its
//!    start only); remove `state.db-wal`/`-shm` beside the restored `state.db`;
//! 4. etcd: `k3s server --cluster-reset --cluster-reset-restore-path=<snapshot>
//!    --token-file=<data dir>/server/token`, which must end with k3s's "restart without
//!    --cluster-reset flag now";
//! 5. `systemctl restart k3s`, then the node Ready; the record says "restored".
//!
//! A failure after step 2 says what is aside and how to go on: running the same restore again
//! finishes it (the record's plan is reused: what was moved aside stays where it went, what is
//! still staged moves in; the archive is checked again, not staged again), and
//! `snapshot-rollback` undoes it: k3s stops, the restored data moves aside to
//! `<path>.k3node-rollback-<UTC time>`, what is still staged is removed, the data the restore moved
//! aside comes back, and k3s starts again on it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::archive::{ArchiveError, Walked};
use super::stage::{replaced_roots, staged_path, Extract, Staging};
use super::{archive_name, archive_path, etcd, k3s, stamp, verify, SnapshotError};
use crate::host::k3s::{
    unit_path, CONFIG_DIR, CONFIG_DROPIN_DIR, CONFIG_FILE, RESTORE_RECORD, RESTORE_STAGED, SQLITE_DB, SQLITE_SIDECARS,
};
use crate::host::system::{remove_tree, HostSystem};
use crate::protocol::snapshot::{
    Datastore, MovedAside, RestoreReport, RestoreSnapshot, RollbackReport, RollbackRestore, StepTime,
};
use crate::protocol::Secret;

const RECORD_MODE: u32 = 0o600;
/// config.yaml may hold secrets (install writes it 0600 too).
const CONFIG_MODE: u32 = 0o600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum State {
    /// Begun and not finished: a re-run with the same archive finishes it.
    InProgress,
    Restored,
    RollingBack,
    RolledBack,
}

/// What a restore did (or is doing), kept on the host for re-runs and rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    archive: String,
    name: String,
    sha256: String,
    data_dir: String,
    state: State,
    /// The restore's time stamp, in every `.k3node-restore-<stamp>` name.
    stamp: String,
    moved: Vec<MovedAside>,
    /// What was staged (`from`) for which root (`to`), before k3s stopped.
    #[serde(default)]
    staged: Vec<MovedAside>,
    /// A rollback's time stamp, once one began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rollback_stamp: Option<String>,
}

/// What a check request (`stage_only`) staged while k3s ran, kept in [`RESTORE_STAGED`] for the
/// restore request that follows: that request takes it (the file goes as it is read) and moves
/// the staged data in without reading the archive again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Prepared {
    /// The archive's path on this host.
    archive: String,
    /// What the check's read of the archive established (the manifest, the archive's sha256).
    walked: Walked,
    /// The staging's time stamp, in every `.k3node-staged-<stamp>` name.
    stamp: String,
    /// What was staged (`from`) for which root (`to`).
    staged: Vec<MovedAside>,
    /// The request's own config.yaml was staged in place of the archive's.
    own_config: bool,
}

/// How step 1 reads the archive.
enum Read<'s> {
    /// Reads and checks it, staging nothing (a dry run; finishing an unfinished restore).
    Verify,
    /// Reads and checks it, staging every entry with this time stamp.
    Stage(&'s str),
    /// Uses what a check request staged: the archive is not read again.
    Staged(Box<Prepared>),
}

/// Present in any form (a dangling symlink too).
fn present(sys: &dyn HostSystem, path: &Path) -> bool {
    sys.metadata(path).is_ok()
}

fn read_record(sys: &dyn HostSystem) -> Result<Option<Record>, SnapshotError> {
    match sys.read_to_string(Path::new(RESTORE_RECORD)) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            SnapshotError::Conflict(format!(
                "{RESTORE_RECORD} cannot be read ({e}); it records an earlier restore: look at it, move it away, then run again"
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SnapshotError::Io { what: "cannot read", path: RESTORE_RECORD.into(), source }),
    }
}

fn write_record(sys: &dyn HostSystem, record: &Record) -> Result<(), SnapshotError> {
    write_json(sys, RESTORE_RECORD, record)
}

/// k3node's own notes on this host (a restore's record, a check's staging): JSON, 0600, atomic.
fn write_json(sys: &dyn HostSystem, path: &str, value: &impl Serialize) -> Result<(), SnapshotError> {
    let json = serde_json::to_string_pretty(value).expect("k3node's notes always serialize") + "\n";
    sys.write_atomic(Path::new(path), json.as_bytes(), RECORD_MODE).map_err(|source| SnapshotError::Io {
        what: "cannot write",
        path: path.into(),
        source,
    })
}

/// `<path>.k3node-<what>-<stamp>`, with `-2`, `-3`... when one of an earlier run in the same
/// second is there.
fn aside_name(sys: &dyn HostSystem, from: &Path, what: &str, stamp: &str) -> String {
    let base = format!("{}.k3node-{what}-{stamp}", from.display());
    let mut candidate = base.clone();
    let mut n = 2;
    while present(sys, Path::new(&candidate)) {
        candidate = format!("{base}-{n}");
        n += 1;
    }
    candidate
}

fn shown_moves(moves: &[MovedAside]) -> String {
    if moves.is_empty() {
        return "nothing was there to move aside".to_string();
    }
    moves.iter().map(|m| format!("{} -> {}", m.from, m.to)).collect::<Vec<_>>().join(", ")
}

pub fn restore(
    sys: &dyn HostSystem,
    req: &RestoreSnapshot,
    progress: &mut dyn FnMut(&str),
) -> Result<RestoreReport, SnapshotError> {
    let earlier = read_record(sys)?;
    // An unfinished restore's staged data must stay: a re-run checks the archive, it does not
    // stage it again. (An unfinished rollback refuses the restore once the archive is checked.)
    let unfinished = earlier.as_ref().is_some_and(|r| matches!(r.state, State::InProgress | State::RollingBack));
    let stamp = stamp(sys.now_unix_ms());
    let read = if req.dry_run || unfinished {
        Read::Verify
    } else {
        match take_prepared(sys, req)? {
            Some(prepared) if !req.stage_only => Read::Staged(Box::new(prepared)),
            _ => Read::Stage(&stamp),
        }
    };
    let started_ms = sys.now_unix_ms();
    let mut checked = check(sys, req, read, progress)?;
    let record = plan(sys, earlier, &checked, &stamp, progress)?;
    let staging = checked.staging.take();
    let manifest = &checked.walked.manifest;
    let report =
        |restored_entries: u64, rollback: String, staging: Vec<StepTime>, timings: Vec<StepTime>| RestoreReport {
            name: checked.name.clone(),
            datastore: manifest.datastore,
            k3s_version: manifest.k3s_version.clone(),
            actions: actions(&checked, &record, &req.node_name, unfinished),
            moved_aside: record.moved.clone(),
            restored_entries,
            rollback,
            staging,
            timings,
        };
    if req.dry_run {
        return Ok(report(
            manifest.entries.len() as u64,
            "nothing was changed (dry run)".into(),
            Vec::new(),
            Vec::new(),
        ));
    }
    // A check request's staging was timed by that request.
    let staged_here = checked.staged_before.is_none();
    let staged_steps = |staging: Option<Staging>| {
        let Some(staging) = staging else { return Vec::new() };
        // Recorded: from now on the staged data is the restore's, kept until moved in.
        staging.keep();
        if !staged_here {
            return Vec::new();
        }
        let millis = (sys.now_unix_ms() - started_ms).max(0) as u64;
        vec![StepTime { step: "verify and stage the archive".into(), millis }]
    };
    if req.stage_only {
        if let Some(staging) = &staging {
            write_json(
                sys,
                RESTORE_STAGED,
                &Prepared {
                    archive: checked.path.display().to_string(),
                    walked: checked.walked.clone(),
                    stamp: stamp.clone(),
                    staged: staging.staged(),
                    own_config: checked.config.is_some(),
                },
            )?;
        }
        let kept = "k3s still runs and nothing it uses changed: the archive is staged beside its files for the restore that follows";
        return Ok(report(manifest.entries.len() as u64, kept.into(), staged_steps(staging), Vec::new()));
    }
    write_record(sys, &record)?;
    let staged_steps = staged_steps(staging);
    let timings = carry_out(sys, req, &checked, &record, progress).map_err(|(step, e)| SnapshotError::Interrupted {
        source: Box::new(e),
        guidance: format!(
            "the restore of {} stopped while it was to {step}. What it replaced is aside: {}. \
             Run the same restore again to finish it, or roll it back (snapshot-rollback) to put the old data back.",
            checked.name,
            shown_moves(&record.moved)
        ),
    })?;
    write_record(sys, &Record { state: State::Restored, ..record.clone() })?;
    let rollback = format!(
        "the data this restore replaced is aside ({}); to undo the restore: snapshot-rollback",
        shown_moves(&record.moved)
    );
    Ok(report(manifest.entries.len() as u64, rollback, staged_steps, timings))
}

/// What a check request staged, taken: [`RESTORE_STAGED`] is removed as it is read (what it
/// lists is then this request's, or swept by the staging that follows). Some only when it is
/// of this very archive (path and sha256), with the same config.yaml of this host, and all of
/// it is still there.
fn take_prepared(sys: &dyn HostSystem, req: &RestoreSnapshot) -> Result<Option<Prepared>, SnapshotError> {
    let text = match sys.read_to_string(Path::new(RESTORE_STAGED)) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SnapshotError::Io { what: "cannot read", path: RESTORE_STAGED.into(), source }),
    };
    sys.remove_file(Path::new(RESTORE_STAGED)).map_err(|source| SnapshotError::Io {
        what: "cannot remove",
        path: RESTORE_STAGED.into(),
        source,
    })?;
    let Ok(prepared) = serde_json::from_str::<Prepared>(&text) else { return Ok(None) };
    let path = archive_path(&req.path)?;
    let own_config_fits = match &req.config_yaml {
        Some(config) => {
            prepared.own_config
                && staged_path(Path::new(CONFIG_DIR), &prepared.stamp)
                    .and_then(|dir| sys.read_to_string(&dir.join("config.yaml")).ok())
                    .is_some_and(|staged| staged == config.expose())
        }
        None => !prepared.own_config,
    };
    let fits = prepared.archive == path.display().to_string()
        && req.sha256.as_deref() == Some(prepared.walked.sha256.as_str())
        && own_config_fits
        && !prepared.staged.is_empty()
        && prepared.staged.iter().all(|s| present(sys, Path::new(&s.from)));
    Ok(fits.then_some(prepared))
}

/// What step 1 established about the archive and what k3s will run with.
struct Checked<'a> {
    path: PathBuf,
    name: String,
    walked: Walked,
    settings: k3s::Settings,
    data_dir: PathBuf,
    /// This host's own config.yaml, written in place of the archive's.
    config: Option<Secret>,
    /// What was staged (none in a dry run or when finishing an unfinished restore).
    staging: Option<Staging<'a>>,
    /// The time stamp of a check request's staging, when this request uses it.
    staged_before: Option<String>,
}

/// Step 1: everything that can refuse the restore, before anything k3s uses changes; the
/// archive is read as `read` says.
fn check<'a>(
    sys: &'a dyn HostSystem,
    req: &RestoreSnapshot,
    read: Read,
    progress: &mut dyn FnMut(&str),
) -> Result<Checked<'a>, SnapshotError> {
    let path = archive_path(&req.path)?;
    if req.node_name.trim().is_empty() {
        return Err(SnapshotError::BadRequest("the node name is empty".into()));
    }
    let refused = |reason: String| SnapshotError::Archive(ArchiveError::Refused { archive: path.clone(), reason });
    let (walked, settings, staging, staged_before) = match read {
        Read::Staged(prepared) => {
            progress(&format!(
                "using {} as verified and staged beside k3s's files at {}, while k3s ran",
                path.display(),
                prepared.stamp
            ));
            let staging = Staging::adopt(sys, Path::new(&prepared.walked.manifest.data_dir), &prepared.stamp);
            // What k3s will read once the staged data is in place.
            let (main, dropins) = staged_config(sys, &staging)?;
            let settings = k3s::settings_of(&main, &dropins)
                .map_err(|e| if req.config_yaml.is_some() { Unreadable::OwnConfig(e) } else { Unreadable::Archive(e) })
                .map_err(|e| e.into_error(&refused))?;
            (prepared.walked, settings, Some(staging), Some(prepared.stamp))
        }
        Read::Stage(stamp) => {
            progress(&format!("verifying all of {} and staging it beside k3s's files", path.display()));
            let (walked, checker) = verify::verify_and_stage(sys, &path, Extract::new(sys, stamp))?;
            let settings = read_settings(req, &checker).map_err(|e| e.into_error(&refused))?;
            let extract = checker.stage.expect("verify_and_stage stages");
            if let Some(config) = &req.config_yaml {
                let staged = extract.staged_path(Path::new(CONFIG_FILE)).expect("config.yaml is below a replaced root");
                progress(&format!("staging this host's own {CONFIG_FILE}"));
                write_config(sys, &staged, config)?;
            }
            (walked, settings, extract.into_staging(), None)
        }
        Read::Verify => {
            progress(&format!("verifying all of {}", path.display()));
            let (walked, checker) = verify::verify(sys, &path)?;
            let settings = read_settings(req, &checker).map_err(|e| e.into_error(&refused))?;
            (walked, settings, None, None)
        }
    };
    let manifest = &walked.manifest;
    let data_dir = PathBuf::from(&manifest.data_dir);
    if settings.data_dir != data_dir {
        return Err(refused(format!(
            "its configuration sets data-dir {}, but its files were taken from {}",
            settings.data_dir.display(),
            data_dir.display()
        )));
    }
    if let (Datastore::Etcd, Some(server)) = (manifest.datastore, &settings.server) {
        return Err(SnapshotError::Conflict(format!(
            "the snapshot's server joined another ({server} in its configuration), and k3s refuses \
             --cluster-reset while `server` is set: restore the snapshot of a server that started the \
             cluster (cluster-init), then let the others rejoin"
        )));
    }
    if present(sys, &unit_path("k3s-agent")) {
        return Err(SnapshotError::Conflict(
            "k3s-agent is installed on this host: a server's snapshot is restored onto a server \
             (run `k3node reset` on this host first to convert it)"
                .into(),
        ));
    }
    if !present(sys, &unit_path(k3s::SERVICE)) {
        return Err(SnapshotError::NotInstalled(format!(
            "{} is not installed: install k3s {} on this host first, then restore",
            unit_path(k3s::SERVICE).display(),
            manifest.k3s_version
        )));
    }
    let host_version = k3s::version(sys)?;
    if host_version != manifest.k3s_version {
        if !req.allow_version_mismatch {
            return Err(SnapshotError::VersionMismatch { archive: manifest.k3s_version.clone(), host: host_version });
        }
        progress(&format!(
            "warning: restoring a snapshot of k3s {} onto k3s {host_version}, as asked",
            manifest.k3s_version
        ));
    }
    Ok(Checked {
        name: archive_name(&path),
        path,
        walked,
        settings,
        data_dir,
        config: req.config_yaml.clone(),
        staging,
        staged_before,
    })
}

/// Why the settings k3s will run with cannot be read: this host's own config.yaml (bad input)
/// or the archive's (the archive is refused).
enum Unreadable {
    OwnConfig(String),
    Archive(String),
}

impl Unreadable {
    fn into_error(self, refused: &dyn Fn(String) -> SnapshotError) -> SnapshotError {
        match self {
            Unreadable::OwnConfig(e) => {
                SnapshotError::BadRequest(format!("the config.yaml given for this host cannot be read: {e}"))
            }
            Unreadable::Archive(e) => refused(format!("its k3s configuration: {e}")),
        }
    }
}

/// The settings of this host's own config.yaml with the archive's drop-ins, or of the archive's
/// config files, as k3s will read them.
fn read_settings(req: &RestoreSnapshot, checker: &verify::Checker) -> Result<k3s::Settings, Unreadable> {
    match &req.config_yaml {
        Some(config) => k3s::settings_of(config.expose(), &checker.dropins).map_err(Unreadable::OwnConfig),
        None => checker.settings().map_err(Unreadable::Archive),
    }
}

/// The staged config.yaml's text ("" when the archive has none) and its drop-ins' (name, text).
fn staged_config(sys: &dyn HostSystem, staging: &Staging) -> Result<(String, Vec<(String, String)>), SnapshotError> {
    let read = |path: &Path| {
        sys.read_to_string(path).map_err(|source| SnapshotError::Io { what: "cannot read", path: path.into(), source })
    };
    let main = match staging.path_of(Path::new(CONFIG_FILE)) {
        Some(path) if present(sys, &path) => read(&path)?,
        _ => String::new(),
    };
    let mut dropins = Vec::new();
    if let Some(dir) = staging.path_of(Path::new(CONFIG_DROPIN_DIR)).filter(|d| present(sys, d)) {
        let names = sys.read_dir_names(&dir).map_err(|source| SnapshotError::Io {
            what: "cannot list",
            path: dir.clone(),
            source,
        })?;
        // k3s reads only these (config::from_texts leaves the others out too).
        for name in names.into_iter().filter(|n| n.ends_with(".yaml") || n.ends_with(".yml")) {
            let text = read(&dir.join(&name))?;
            dropins.push((name, text));
        }
    }
    Ok((main, dropins))
}

/// This host's own config.yaml at `path` (its directory made when the archive had none).
fn write_config(sys: &dyn HostSystem, path: &Path, config: &Secret) -> Result<(), SnapshotError> {
    let dir = path.parent().unwrap_or(Path::new(CONFIG_DIR));
    sys.create_dir_all(dir, 0o755)
        .and_then(|()| sys.write_atomic(path, config.expose().as_bytes(), CONFIG_MODE))
        .map_err(|source| SnapshotError::Io { what: "cannot write", path: path.into(), source })
}

/// Step 2: a new plan, or the one of an interrupted run of this very archive.
fn plan(
    sys: &dyn HostSystem,
    earlier: Option<Record>,
    checked: &Checked,
    stamp: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Record, SnapshotError> {
    match earlier {
        Some(r) if r.state == State::InProgress && r.sha256 == checked.walked.sha256 => {
            if r.staged.is_empty() {
                return Err(SnapshotError::Conflict(format!(
                    "the restore of {} begun at {} was begun by an earlier k3node, which extracted \
                     after k3s stopped: finish it with that version, or roll it back",
                    r.name, r.stamp
                )));
            }
            progress(&format!("finishing the restore of {} begun at {}", r.name, r.stamp));
            Ok(r)
        }
        Some(r) if matches!(r.state, State::InProgress | State::RollingBack) => {
            let what = if r.state == State::InProgress { "restore" } else { "rollback of the restore" };
            Err(SnapshotError::Conflict(format!(
                "the {what} of {} begun at {} is not finished ({RESTORE_RECORD}): finish it first \
                 (the same request again), or roll it back",
                r.name, r.stamp
            )))
        }
        _ => {
            let moved = replaced_roots(&checked.data_dir)
                .into_iter()
                .filter(|from| present(sys, from))
                .map(|from| MovedAside {
                    to: aside_name(sys, &from, "restore", stamp),
                    from: from.display().to_string(),
                })
                .collect();
            Ok(Record {
                archive: checked.path.display().to_string(),
                name: checked.name.clone(),
                sha256: checked.walked.sha256.clone(),
                data_dir: checked.walked.manifest.data_dir.clone(),
                state: State::InProgress,
                stamp: stamp.to_string(),
                moved,
                staged: checked.staging.as_ref().map(|s| s.staged()).unwrap_or_default(),
                rollback_stamp: None,
            })
        }
    }
}

/// The steps the plan takes, as the report lists them; `finishing`: the plan of an unfinished
/// restore, whose staging is done.
fn actions(checked: &Checked, record: &Record, node: &str, finishing: bool) -> Vec<String> {
    let manifest = &checked.walked.manifest;
    let mut actions = Vec::new();
    if let Some(stamp) = &checked.staged_before {
        actions.push(format!(
            "use the {} entries of {} verified and staged beside what they replace (<path>.k3node-staged-{stamp}) while k3s ran",
            manifest.entries.len(),
            checked.path.display(),
        ));
    } else if !finishing {
        actions.push(format!(
            "verify and stage {} entries from {} beside what they replace (<path>.k3node-staged-{}), k3s still running",
            manifest.entries.len(),
            checked.path.display(),
            record.stamp
        ));
        if checked.config.is_some() {
            actions.push(format!("stage this host's own {CONFIG_FILE} in place of the archive's"));
        }
    }
    actions.push(format!("stop {}", k3s::SERVICE));
    actions.extend(record.moved.iter().map(|m| format!("move {} aside to {}", m.from, m.to)));
    actions.push("move the staged data in place".to_string());
    actions.push(match manifest.datastore {
        Datastore::Sqlite => format!("remove {}-wal and -shm if present", checked.data_dir.join(SQLITE_DB).display()),
        Datastore::Etcd => format!("k3s {}", etcd::reset_args(&database_of(checked), &checked.data_dir).join(" ")),
    });
    actions.push(format!("restart {}", k3s::SERVICE));
    actions.push(format!("wait for node {node} to be Ready"));
    actions
}

fn database_of(checked: &Checked) -> PathBuf {
    Path::new("/").join(&checked.walked.manifest.database)
}

/// Steps 3 to 5; a failure comes with the step it stopped at. Returns the steps' times.
fn carry_out(
    sys: &dyn HostSystem,
    req: &RestoreSnapshot,
    checked: &Checked,
    record: &Record,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<StepTime>, (&'static str, SnapshotError)> {
    let manifest = &checked.walked.manifest;
    let mut timer = StepTimer::new(sys);
    progress(&format!("stopping {}", k3s::SERVICE));
    k3s::stop(sys).map_err(|e| ("stop k3s", e))?;
    timer.done("stop k3s");
    let rename = |from: &Path, to: &Path, step: &'static str| {
        sys.rename(from, to)
            .map_err(|source| (step, SnapshotError::Io { what: "cannot move", path: from.into(), source }))
    };
    for root in replaced_roots(&checked.data_dir) {
        let root_text = root.display().to_string();
        if let Some(m) = record.moved.iter().find(|m| m.from == root_text) {
            // Moved by an interrupted run when its aside path is there.
            if !present(sys, Path::new(&m.to)) && present(sys, &root) {
                progress(&format!("moving {} aside to {}", m.from, m.to));
                rename(&root, Path::new(&m.to), "move the current data aside")?;
            }
        }
        if let Some(s) = record.staged.iter().find(|s| s.to == root_text) {
            // Moved in by an interrupted run when its staged path is gone.
            if present(sys, Path::new(&s.from)) {
                progress(&format!("moving {} in place of {}", s.from, s.to));
                rename(Path::new(&s.from), &root, "move the staged data in place")?;
            }
        }
    }
    if manifest.datastore == Datastore::Sqlite {
        for sidecar in SQLITE_SIDECARS.map(|s| checked.data_dir.join(s)) {
            if present(sys, &sidecar) {
                progress(&format!("removing {}", sidecar.display()));
                sys.remove_file(&sidecar).map_err(|source| {
                    let e = SnapshotError::Io { what: "cannot remove", path: sidecar.clone(), source };
                    ("remove the stale SQLite sidecars", e)
                })?;
            }
        }
    }
    timer.done("move the current data aside and the staged data in");
    let deadline_ms = sys.now_unix_ms() + (req.ready_timeout_secs.max(1) as i64) * 1000;
    if manifest.datastore == Datastore::Etcd {
        let database = database_of(checked);
        progress(&format!("k3s {}", etcd::reset_args(&database, &checked.data_dir).join(" ")));
        let remaining = Duration::from_millis((deadline_ms - sys.now_unix_ms()).max(1000) as u64);
        etcd::cluster_reset(sys, &database, &checked.data_dir, remaining).map_err(|e| ("reset the etcd cluster", e))?;
        timer.done("reset the etcd cluster");
    }
    k3s::start_and_wait(sys, &checked.settings, &req.node_name, deadline_ms, progress)
        .map_err(|e| ("start k3s and wait for the node", e))?;
    timer.done("start k3s and wait for the node");
    Ok(timer.steps)
}

/// The host clock's time per step, each from the end of the one before.
struct StepTimer<'a> {
    sys: &'a dyn HostSystem,
    since_ms: i64,
    steps: Vec<StepTime>,
}

impl<'a> StepTimer<'a> {
    fn new(sys: &'a dyn HostSystem) -> StepTimer<'a> {
        StepTimer { sys, since_ms: sys.now_unix_ms(), steps: Vec::new() }
    }

    fn done(&mut self, step: &str) {
        let now = self.sys.now_unix_ms();
        self.steps.push(StepTime { step: step.to_string(), millis: (now - self.since_ms).max(0) as u64 });
        self.since_ms = now;
    }
}

pub fn rollback(
    sys: &dyn HostSystem,
    req: &RollbackRestore,
    progress: &mut dyn FnMut(&str),
) -> Result<RollbackReport, SnapshotError> {
    let Some(record) = read_record(sys)? else {
        return Err(SnapshotError::NotInstalled(format!("no restore to roll back: {RESTORE_RECORD} does not exist")));
    };
    let mut report = RollbackReport {
        name: record.name.clone(),
        actions: Vec::new(),
        moved_aside: Vec::new(),
        moved_back: Vec::new(),
    };
    if record.state == State::RolledBack {
        return Ok(report);
    }
    if !present(sys, &unit_path(k3s::SERVICE)) {
        return Err(SnapshotError::NotInstalled(format!("{} is not installed", unit_path(k3s::SERVICE).display())));
    }
    let rollback_stamp = record.rollback_stamp.clone().unwrap_or_else(|| stamp(sys.now_unix_ms()));
    let aside_of = |from: &str| aside_name(sys, Path::new(from), "rollback", &rollback_stamp);

    // What the restore put in place goes aside; what it moved aside comes back. A root the
    // restore found empty is moved aside too, so that the host is as it was.
    let data_dir = PathBuf::from(&record.data_dir);
    let mut steps: Vec<(Option<MovedAside>, Option<MovedAside>)> = Vec::new();
    for root in replaced_roots(&data_dir) {
        let from = root.display().to_string();
        let back = record.moved.iter().find(|m| m.from == from).cloned();
        let back_pending = back.as_ref().is_some_and(|m| present(sys, Path::new(&m.to)));
        let restored_here = present(sys, &root) && (back.is_none() || back_pending);
        let aside = restored_here.then(|| MovedAside { from: from.clone(), to: aside_of(&from) });
        let back = back.filter(|_| back_pending).map(|m| MovedAside { from: m.to, to: m.from });
        steps.push((aside, back));
    }
    // What an interrupted restore staged and never moved in is its own copy of the archive.
    let unused: Vec<&str> =
        record.staged.iter().map(|s| s.from.as_str()).filter(|p| present(sys, Path::new(p))).collect();
    // k3s starts again when there was k3s data before the restore; on a host the restore found
    // empty there is nothing to start it on.
    let anything_back = !record.moved.is_empty();
    report.actions.push(format!("stop {}", k3s::SERVICE));
    for (aside, back) in &steps {
        if let Some(a) = aside {
            report.actions.push(format!("move {} (restored) aside to {}", a.from, a.to));
            report.moved_aside.push(a.clone());
        }
        if let Some(b) = back {
            report.actions.push(format!("move {} back to {}", b.from, b.to));
            report.moved_back.push(b.clone());
        }
    }
    report.actions.extend(unused.iter().map(|p| format!("remove {p} (staged, never moved in)")));
    if anything_back {
        report.actions.push(format!("restart {}", k3s::SERVICE));
        report.actions.push(format!("wait for node {} to be Ready", req.node_name));
    } else {
        report.actions.push(format!("leave {} stopped: there was no k3s data before the restore", k3s::SERVICE));
    }
    if req.dry_run {
        return Ok(report);
    }

    write_record(
        sys,
        &Record { state: State::RollingBack, rollback_stamp: Some(rollback_stamp.clone()), ..record.clone() },
    )?;
    let interrupted = |step: &str, e: SnapshotError| SnapshotError::Interrupted {
        source: Box::new(e),
        guidance: format!(
            "the rollback of the restore of {} stopped while it was to {step}; run the rollback again to finish it",
            record.name
        ),
    };
    progress(&format!("stopping {}", k3s::SERVICE));
    k3s::stop(sys).map_err(|e| interrupted("stop k3s", e))?;
    for (aside, back) in &steps {
        for m in aside.iter().chain(back.iter()) {
            progress(&format!("moving {} to {}", m.from, m.to));
            sys.rename(Path::new(&m.from), Path::new(&m.to)).map_err(|source| {
                interrupted(
                    "move the data",
                    SnapshotError::Io { what: "cannot move", path: m.from.clone().into(), source },
                )
            })?;
        }
    }
    for path in &unused {
        progress(&format!("removing {path}"));
        remove_tree(sys, Path::new(path)).map_err(|source| {
            interrupted(
                "remove the staged copy",
                SnapshotError::Io { what: "cannot remove", path: path.into(), source },
            )
        })?;
    }
    if anything_back {
        let settings = k3s::on_host(sys).map_err(|e| interrupted("read k3s's configuration", e))?;
        let deadline_ms = sys.now_unix_ms() + (req.ready_timeout_secs.max(1) as i64) * 1000;
        k3s::start_and_wait(sys, &settings, &req.node_name, deadline_ms, progress)
            .map_err(|e| interrupted("start k3s and wait for the node", e))?;
    }
    write_record(sys, &Record { state: State::RolledBack, rollback_stamp: Some(rollback_stamp), ..record.clone() })?;
    Ok(report)
}
