//! `install-k3s`: converge the host's k3s files to the request, then (re)start the service only
//! when what it runs with changed.
//!
//! Order: refuse a host with the other role installed; verify the uploaded binary's sha256 (before
//! anything runs it); work out every change; in a dry run stop there (a fresh host, where the
//! binary is not uploaded yet, is planned all the same). Otherwise write what differs
//! (atomically), link kubectl/crictl/ctr where the host has none, daemon-reload when the unit
//! changed, enable, restart when needed and wait (Type=notify, then on a server the node Ready),
//! and record what the service now runs with.
//!
//! The restart rule compares *meanings*, not bytes: the binary's and unit's sha256, the env
//! file's variables, registries.yaml's tree (when the request manages it) and config.yaml's keys and values (as k3s reads them, so a file rewritten only
//! for its formatting never restarts k3s). The service is (re)started when:
//! - it is not active; or
//! - k3node started it (the record's InvocationID is the running one) with other settings than
//!   the request's, or with other config.yaml.d drop-ins than there are now (not k3node's files,
//!   but k3s runs with them); or
//! - someone else started it (another InvocationID, or no record: a host install.sh set up) and
//!   the files on disk do not mean what the request means: it may run with those.
//!
//! The record (/var/lib/rancher/k3node/<service>.applied.json) is written after every start, and
//! when k3node takes over a running service without restarting it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::{self, ConfigError, Settings};
use super::envfile;
use super::files::{env_text, killall_script, uninstall_script, unit_text};
use super::mask::{
    config_secrets, env_secrets, mask_config, mask_env, mask_registries, masked_pair, registries_secret_groups,
    unified_diff,
};
use super::systemd::{journal_tail, likely_cause, RunError, Systemd, UnitStatus};
use super::{
    env_path, links_to_k3s, record_path, service_name, uninstall_script_path, unit_path, Progress, BIN_DIR, CONFIG_DIR,
    CONFIG_DROPIN_DIR, CONFIG_FILE, K3S_BIN, KILLALL_SCRIPT, LINKED_COMMANDS, REGISTRIES_FILE,
};
use crate::host::error::{describe_io, Failure, HostError};
use crate::host::serve::{Context, HostOperation};
use crate::host::system::{sha256_file, HostSystem};
use crate::protocol::k3s::{FileAction, FileChange, InstallReport, InstallRequest, ServiceAction};
use crate::protocol::node::Role;
use crate::protocol::ErrorKind;

const UNIT_MODE: u32 = 0o644;
const SECRET_MODE: u32 = 0o600;
const SCRIPT_MODE: u32 = 0o755;
const CONFIG_DIR_MODE: u32 = 0o755;
/// systemd's `Result` of a unit refused for being started too often.
const START_LIMIT_HIT: &str = "start-limit-hit";
/// Lines of the journal quoted in a failure.
const JOURNAL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{unit} is installed on this host ({other}); it cannot also become {this}: run `k3node reset` on this host first to convert it")]
    OtherRole { unit: String, other: &'static str, this: &'static str },
    #[error("the expected sha256 of k3s {0:?} is not 64 hex digits")]
    BadSha256(String),
    #[error("{K3S_BIN} is missing: the k3s binary must be uploaded before install-k3s")]
    BinaryMissing,
    #[error("{K3S_BIN} has sha256 {actual}, expected {expected}: refusing to install or run an unverified binary (upload it again)")]
    BinaryMismatch { actual: String, expected: String },
    #[error("{what} {}: {}", path.display(), describe_io(source))]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("{0}")]
    Version(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("env: {0}")]
    Env(String),
    #[error("systemctl is not installed: k3s runs as a systemd service, and this host has no systemd")]
    NoSystemd,
    #[error("{0}")]
    Systemd(String),
    #[error("{0}")]
    Start(StartFailure),
}

impl Failure for InstallError {
    fn kind(&self) -> ErrorKind {
        match self {
            InstallError::OtherRole { .. } => ErrorKind::Conflict,
            InstallError::BadSha256(_) | InstallError::Env(_) => ErrorKind::BadRequest,
            InstallError::BinaryMissing | InstallError::NoSystemd => ErrorKind::NotInstalled,
            InstallError::BinaryMismatch { .. } => ErrorKind::ChecksumMismatch,
            InstallError::Io { source, .. } => ErrorKind::of_io(source),
            InstallError::Version(_) | InstallError::Config(_) | InstallError::Systemd(_) => ErrorKind::Failed,
            InstallError::Start(f) if f.timed_out => ErrorKind::Timeout,
            InstallError::Start(_) => ErrorKind::StartFailed,
        }
    }

    fn retryable(&self) -> bool {
        // Another role installed stays so until a reset.
        !matches!(self, InstallError::OtherRole { .. }) && self.kind().retryable_by_default()
    }
}

/// k3s did not start or did not become Ready: what, the likely cause, and the journal.
#[derive(Debug)]
pub struct StartFailure {
    pub what: String,
    pub timed_out: bool,
    pub cause: Option<String>,
    pub service: String,
    pub journal: Vec<String>,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)?;
        if let Some(cause) = &self.cause {
            write!(f, "\nlikely cause: {cause}")?;
        }
        if self.journal.is_empty() {
            write!(f, "\n(no journal lines: see `journalctl -u {}` on the host)", self.service)?;
        } else {
            write!(f, "\nlast lines of `journalctl -u {}`:", self.service)?;
            for line in &self.journal {
                write!(f, "\n  {line}")?;
            }
        }
        Ok(())
    }
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> InstallError + 'a {
    move |source| InstallError::Io { what, path: path.to_path_buf(), source }
}

/// What the running service was started with: compared on every run to decide on a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    binary_sha256: String,
    unit_sha256: String,
    /// Of the env file's variables ([`envfile::canonical`]), not its bytes.
    env_sha256: String,
    /// Of config.yaml's meaning ([`config::canonical`]), not its bytes.
    config_sha256: String,
    /// Of registries.yaml's meaning, when k3node manages that file (None: it does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registries_sha256: Option<String>,
    /// systemd's InvocationID of the start k3node made (or took over); empty when unknown.
    #[serde(default)]
    invocation_id: String,
    /// Of the config.yaml.d drop-ins' names and meanings (none: the digest of nothing). They are
    /// not k3node's, but k3s runs with them; None in records written before they were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dropins_sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Shown as is.
    Plain,
    /// Masked as an env file.
    Env,
    /// Masked as config.yaml.
    Config,
    /// Masked as registries.yaml.
    Registries,
}

/// One file as the request wants it, what is on disk, and what writing it would change.
struct FilePlan {
    path: PathBuf,
    contents: String,
    current: Option<String>,
    mode: u32,
    action: FileAction,
    diff: Option<String>,
}

impl FilePlan {
    fn change(&self) -> FileChange {
        FileChange { path: self.path.display().to_string(), action: self.action, diff: self.diff.clone() }
    }

    fn needs_write(&self) -> bool {
        self.action != FileAction::Unchanged
    }
}

impl HostOperation for InstallRequest {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<InstallReport, HostError> {
        let sys = ctx.sys;
        Ok(install(sys, &self, &mut |m| ctx.progress(m))?)
    }
}

pub fn install(sys: &dyn HostSystem, req: &InstallRequest, progress: Progress) -> Result<InstallReport, InstallError> {
    let service = service_name(req.role);
    refuse_other_role(sys, req.role)?;

    progress("verifying /usr/local/bin/k3s");
    let expected = expected_sha256(&req.binary_sha256)?;
    let on_disk = match sha256_file(sys, Path::new(K3S_BIN)) {
        Ok(hash) => Some(hash),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error("cannot read", Path::new(K3S_BIN))(e)),
    };
    let binary_ready = on_disk.as_deref() == Some(expected.as_str());
    if !binary_ready && !req.dry_run {
        return Err(match on_disk {
            None => InstallError::BinaryMissing,
            Some(actual) => InstallError::BinaryMismatch { actual, expected },
        });
    }
    // Only a verified binary ever runs; in a dry run before the upload its version is not known here.
    let version = if binary_ready { k3s_version(sys)? } else { String::new() };

    // Validates the config (and learns the data dir, which the scripts name) before any write.
    let settings = config::with_main(sys, req.config_yaml.expose())?;
    let env = env_text(&req.env).map_err(|e| InstallError::Env(e.trim_start_matches("env: ").to_string()))?;
    let unit = unit_text(req.role);
    let wanted = [
        (PathBuf::from(CONFIG_FILE), req.config_yaml.expose().to_string(), SECRET_MODE, Kind::Config),
        (env_path(service), env, SECRET_MODE, Kind::Env),
        (unit_path(service), unit, UNIT_MODE, Kind::Plain),
        (PathBuf::from(KILLALL_SCRIPT), killall_script(&settings.data_dir), SCRIPT_MODE, Kind::Plain),
        (uninstall_script_path(service), uninstall_script(req.role, &settings.data_dir), SCRIPT_MODE, Kind::Plain),
    ];
    let mut plans = Vec::new();
    for (path, contents, mode, kind) in wanted {
        plans.push(plan_file(sys, path, contents, mode, kind)?);
    }
    let registries_plan = match &req.registries_yaml {
        Some(registries) => {
            let path = PathBuf::from(REGISTRIES_FILE);
            Some(plan_file(sys, path, registries.expose().to_string(), SECRET_MODE, Kind::Registries)?)
        }
        None => None,
    };
    // (wanted, on disk) meanings of registries.yaml, when k3node manages it.
    let registries_digests =
        registries_plan.as_ref().map(|p| (registries_digest(&p.contents), p.current.as_deref().map(registries_digest)));
    plans.extend(registries_plan);
    let [config_plan, env_plan, unit_plan, ..] = &plans[..] else { unreachable!("five plans") };

    let mut wanted_record = record_of(&expected, &unit_plan.contents, &env_plan.contents, &config_plan.contents);
    // What the files on disk mean now, for a service someone else started.
    let mut disk_record = record_of(
        on_disk.as_deref().unwrap_or(""),
        unit_plan.current.as_deref().unwrap_or(""),
        env_plan.current.as_deref().unwrap_or(""),
        config_plan.current.as_deref().unwrap_or(""),
    );
    if let Some((wanted, on_disk)) = registries_digests {
        wanted_record.registries_sha256 = Some(wanted);
        disk_record.registries_sha256 = on_disk;
    }
    // k3node writes no drop-ins: the ones there now are what a (re)start runs with.
    wanted_record.dropins_sha256 = Some(dropins_digest(sys, &settings));
    disk_record.dropins_sha256 = wanted_record.dropins_sha256.clone();
    let previous = read_record(sys, service);
    let links = plan_links(sys, progress);
    let systemd = Systemd::new(sys);
    let unit_status = systemd.status(service);
    let (mut service_action, mut reasons) =
        restart_decision(&unit_status, previous.as_ref(), &wanted_record, &disk_record);
    if service_action == ServiceAction::None && runs_a_replaced_binary(sys, &unit_status) {
        // The upload replaced the file the running k3s was started from.
        (service_action, reasons) = (ServiceAction::Restart, vec!["binary replaced since it started".to_string()]);
    }

    let mut changes =
        vec![binary_change(previous.as_ref(), on_disk.as_deref(), &expected, unit_plan.current.is_some())];
    changes.extend(plans.iter().map(FilePlan::change));
    changes.extend(links.iter().map(|(link, action)| FileChange {
        path: link.display().to_string(),
        action: *action,
        diff: (*action == FileAction::Created).then(|| format!("symlink {} -> k3s", link.display())),
    }));
    if !unit_status.enabled {
        changes.push(FileChange {
            path: format!("systemd: {service}.service"),
            action: FileAction::Created,
            diff: Some(format!("systemctl enable {service}")),
        });
    }
    let foreign_dropins = describe_dropins(&settings);
    for note in &foreign_dropins {
        progress(&format!("warning: {note}"));
    }
    let report = |service_action, reasons, version, active| InstallReport {
        service: service.into(),
        changes: changes.clone(),
        service_action,
        reasons,
        version,
        active,
        foreign_dropins: foreign_dropins.clone(),
    };

    if req.dry_run {
        return Ok(report(service_action, reasons, version, unit_status.active));
    }
    if !systemd.available() {
        return Err(InstallError::NoSystemd);
    }

    // config.yaml and the env file before the unit: a new unit never meets an old env file.
    if plans.iter().any(|p| p.needs_write() && p.path.starts_with(CONFIG_DIR)) {
        sys.create_dir_all(Path::new(CONFIG_DIR), CONFIG_DIR_MODE)
            .map_err(io_error("cannot create", Path::new(CONFIG_DIR)))?;
    }
    for plan in plans.iter().filter(|p| p.needs_write()) {
        progress(&format!("writing {}", plan.path.display()));
        sys.write_atomic(&plan.path, plan.contents.as_bytes(), plan.mode)
            .map_err(io_error("cannot write", &plan.path))?;
    }
    for (link, action) in &links {
        if *action == FileAction::Created {
            progress(&format!("linking {} to k3s", link.display()));
            sys.symlink_atomic(Path::new("k3s"), link).map_err(io_error("cannot create the symlink", link))?;
        }
    }

    // `systemctl enable` reloads the manager itself, so a new unit needs no separate daemon-reload.
    if !unit_status.enabled {
        progress(&format!("enabling {service}"));
        systemd.run_quick(&["enable", service]).map_err(InstallError::Systemd)?;
    } else if unit_plan.needs_write() || unit_status.needs_daemon_reload {
        progress("reloading systemd units");
        systemd.run_quick(&["daemon-reload"]).map_err(InstallError::Systemd)?;
    }

    let mut active = unit_status.active;
    let mut record = wanted_record;
    if service_action != ServiceAction::None {
        start_and_wait(sys, &systemd, req, &settings, progress)?;
        active = true;
        record.invocation_id = systemd.status(service).invocation_id;
        write_record(sys, service, &record)?;
    } else if previous.as_ref() != Some(&Record { invocation_id: unit_status.invocation_id.clone(), ..record.clone() })
    {
        // Taken over (or its files rewritten only in form): what it runs with is now known.
        record.invocation_id = unit_status.invocation_id;
        write_record(sys, service, &record)?;
    }
    Ok(report(service_action, reasons, version, active))
}

/// registries.yaml's meaning: its tree with keys sorted, whatever the formatting.
fn registries_digest(text: &str) -> String {
    let meaning = serde_yaml_ng::from_str::<serde_json::Value>(text)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| format!("unreadable:{text}"));
    crate::digest::sha256_hex(meaning.as_bytes())
}

fn record_of(binary: &str, unit: &str, env: &str, config: &str) -> Record {
    let digest = crate::digest::sha256_hex;
    Record {
        binary_sha256: binary.to_string(),
        unit_sha256: digest(unit.as_bytes()),
        env_sha256: digest(envfile::canonical(env).as_bytes()),
        // A config k3s cannot read means nothing the request means.
        config_sha256: digest(config::canonical(config).unwrap_or_else(|| format!("unreadable:{config}")).as_bytes()),
        registries_sha256: None,
        invocation_id: String::new(),
        dropins_sha256: None,
    }
}

/// The drop-ins' names and meanings, in the order k3s reads them.
fn dropins_digest(sys: &dyn HostSystem, settings: &Settings) -> String {
    let mut meaning = String::new();
    for (path, _) in &settings.dropins {
        let text = sys.read_to_string(path).unwrap_or_default();
        let canonical = config::canonical(&text).unwrap_or_else(|| format!("unreadable:{text}"));
        meaning.push_str(&format!("{}\n{canonical}\n", path.display()));
    }
    crate::digest::sha256_hex(meaning.as_bytes())
}

/// Whether (and why) the service starts: see the module's restart rule.
fn restart_decision(
    unit: &UnitStatus,
    previous: Option<&Record>,
    wanted: &Record,
    on_disk: &Record,
) -> (ServiceAction, Vec<String>) {
    let mut reasons = Vec::new();
    let never_started = previous.is_none() && !unit.active;
    if !unit.active {
        reasons.push(if never_started { "first start".to_string() } else { "not running".to_string() });
    } else {
        let ours = previous.filter(|r| r.invocation_id == unit.invocation_id);
        let started_with = match ours {
            Some(record) => record,
            None => on_disk,
        };
        let source = if ours.is_some() { "since k3node started it" } else { "on disk, where it was started from" };
        for (what, was, wants) in [
            ("binary", &started_with.binary_sha256, &wanted.binary_sha256),
            ("unit", &started_with.unit_sha256, &wanted.unit_sha256),
            ("env file", &started_with.env_sha256, &wanted.env_sha256),
            ("config.yaml", &started_with.config_sha256, &wanted.config_sha256),
        ] {
            if was != wants {
                reasons.push(format!("{what} changed {source}"));
            }
        }
        // Compared only when k3node manages the file; a file it leaves alone is not its to restart for.
        if wanted.registries_sha256.is_some() && started_with.registries_sha256 != wanted.registries_sha256 {
            reasons.push(format!("registries.yaml changed {source}"));
        }
        // Someone else's drop-ins are theirs, but a k3s that k3node started must not keep running
        // on drop-ins that changed since: `up` would say converged while k3s runs other settings.
        if let (Some(was), Some(now)) = (&started_with.dropins_sha256, &wanted.dropins_sha256) {
            if was != now {
                reasons.push(format!("drop-ins in {CONFIG_DROPIN_DIR} changed {source}"));
            }
        }
    }
    let action = match (reasons.is_empty(), never_started) {
        (true, _) => ServiceAction::None,
        (false, true) => ServiceAction::Start,
        (false, false) => ServiceAction::Restart,
    };
    (action, reasons)
}

/// True when the service's main process runs an executable that was since replaced on disk.
pub(crate) fn runs_a_replaced_binary(sys: &dyn HostSystem, unit: &UnitStatus) -> bool {
    unit.main_pid > 0
        && sys
            .read_link(&PathBuf::from(format!("/proc/{}/exe", unit.main_pid)))
            .is_ok_and(|exe| exe.to_string_lossy().ends_with(" (deleted)"))
}

fn write_record(sys: &dyn HostSystem, service: &str, record: &Record) -> Result<(), InstallError> {
    let json = serde_json::to_string_pretty(record).expect("a record always serializes") + "\n";
    let path = record_path(service);
    sys.write_atomic(&path, json.as_bytes(), SECRET_MODE).map_err(|source| InstallError::Io {
        what: "k3s runs, but k3node cannot write its record",
        path,
        source,
    })
}

/// Drop-ins k3node did not write: each with the keys it overrides.
fn describe_dropins(settings: &Settings) -> Vec<String> {
    settings
        .dropins
        .iter()
        .map(|(path, keys)| {
            let keys = if keys.is_empty() { "no keys".to_string() } else { keys.join(", ") };
            format!("{} (not written by k3node) overrides config.yaml: {keys}", path.display())
        })
        .collect()
}

/// A host is a server or an agent, never both: converting one needs a reset first.
fn refuse_other_role(sys: &dyn HostSystem, role: Role) -> Result<(), InstallError> {
    let (other, other_name, this_name) = match role {
        Role::Server => (Role::Agent, "an agent", "a server"),
        Role::Agent => (Role::Server, "a server", "an agent"),
    };
    let other_unit = unit_path(service_name(other));
    if sys.exists(&other_unit) {
        return Err(InstallError::OtherRole {
            unit: other_unit.display().to_string(),
            other: other_name,
            this: this_name,
        });
    }
    Ok(())
}

fn expected_sha256(given: &str) -> Result<String, InstallError> {
    let expected = given.trim().to_ascii_lowercase();
    if !crate::digest::is_sha256_hex(&expected) {
        return Err(InstallError::BadSha256(expected));
    }
    Ok(expected)
}

/// `k3s version v1.31.4+k3s1 (a1b2c3d4)` -> `v1.31.4+k3s1`.
pub(super) fn parse_version(stdout: &str) -> Option<String> {
    let line = stdout.lines().next()?;
    let mut words = line.split_whitespace();
    words.by_ref().find(|w| *w == "version")?;
    words.next().filter(|v| v.starts_with('v')).map(str::to_string)
}

fn k3s_version(sys: &dyn HostSystem) -> Result<String, InstallError> {
    super::installed_version(sys).map_err(InstallError::Version)
}

fn plan_file(
    sys: &dyn HostSystem,
    path: PathBuf,
    contents: String,
    mode: u32,
    kind: Kind,
) -> Result<FilePlan, InstallError> {
    let current = match sys.read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error("cannot read", &path)(e)),
    };
    let (action, diff) = match &current {
        None => (FileAction::Created, Some(shown_diff(&path, "", &contents, kind))),
        Some(old) if *old != contents => (FileAction::Updated, Some(shown_diff(&path, old, &contents, kind))),
        Some(_) => match sys.file_mode(&path) {
            // Same text, wrong mode (a world-readable env file): rewritten, which sets the mode.
            Ok(current_mode) if current_mode != mode => {
                (FileAction::Updated, Some(format!("mode {current_mode:04o} → {mode:04o}")))
            }
            _ => (FileAction::Unchanged, None),
        },
    };
    Ok(FilePlan { path, contents, current, mode, action, diff })
}

fn shown_diff(path: &Path, old: &str, new: &str, kind: Kind) -> String {
    let (old_masked, new_masked) = match kind {
        Kind::Plain => (old.to_string(), new.to_string()),
        Kind::Env => masked_pair(old, new, mask_env, env_secrets),
        Kind::Config => masked_pair(old, new, mask_config, config_secrets),
        Kind::Registries => masked_pair(old, new, mask_registries, registries_secret_groups),
    };
    if old_masked == new_masked {
        return format!("{}: secret values changed (not shown)", path.display());
    }
    unified_diff(&path.to_string_lossy(), &old_masked, &new_masked)
}

/// `installed`: the service's unit was there before this run (k3s installed by someone).
fn binary_change(previous: Option<&Record>, on_disk: Option<&str>, sha256: &str, installed: bool) -> FileChange {
    let (action, diff) = match (on_disk, previous) {
        (None, _) => (FileAction::Created, Some(format!("upload k3s, sha256 {sha256}"))),
        (Some(current), _) if current != sha256 => (FileAction::Updated, Some(format!("sha256 {current} → {sha256}"))),
        // The wanted binary, on a host install.sh set up: taken over as it is.
        (Some(_), None) if installed => (FileAction::Unchanged, None),
        // Uploaded by this run for a first install.
        (Some(_), None) => (FileAction::Created, None),
        (Some(_), Some(r)) if r.binary_sha256 != sha256 => {
            (FileAction::Updated, Some(format!("sha256 {} → {sha256}", r.binary_sha256)))
        }
        (Some(_), Some(_)) => (FileAction::Unchanged, None),
    };
    FileChange { path: K3S_BIN.into(), action, diff }
}

/// kubectl, crictl, ctr: linked to k3s where the host has no such command. A link that already
/// points at k3s is ours (Unchanged); anything else by that name is left alone and not listed.
fn plan_links(sys: &dyn HostSystem, progress: Progress) -> Vec<(PathBuf, FileAction)> {
    let mut links = Vec::new();
    for name in LINKED_COMMANDS {
        let link = Path::new(BIN_DIR).join(name);
        match sys.read_link(&link) {
            Ok(target) if links_to_k3s(&target) => links.push((link, FileAction::Unchanged)),
            Ok(target) => progress(&format!("{} links to {}: not linking it to k3s", link.display(), target.display())),
            Err(_) if sys.exists(&link) => progress(&format!("{} exists: not linking it to k3s", link.display())),
            Err(_) => match sys.find_command(name) {
                Some(found) => progress(&format!("{name} exists at {}: not linking it to k3s", found.display())),
                None => links.push((link, FileAction::Created)),
            },
        }
    }
    links
}

fn read_record(sys: &dyn HostSystem, service: &str) -> Option<Record> {
    let text = sys.read_to_string(&record_path(service)).ok()?;
    // An unreadable record means "not known what it runs with".
    serde_json::from_str(&text).ok()
}

/// Time left until a deadline on the system's clock (the fake's clock in tests).
struct Deadline<'a> {
    sys: &'a dyn HostSystem,
    at_ms: i64,
    secs: u64,
}

impl Deadline<'_> {
    fn remaining(&self) -> Duration {
        Duration::from_millis((self.at_ms - self.sys.now_unix_ms()).max(0) as u64)
    }
}

/// `systemctl restart` (returns once k3s said READY=1, as the unit is Type=notify), then on a
/// server the node Ready, all within request.ready_timeout_secs.
fn start_and_wait(
    sys: &dyn HostSystem,
    systemd: &Systemd,
    req: &InstallRequest,
    settings: &Settings,
    progress: Progress,
) -> Result<(), InstallError> {
    let service = service_name(req.role);
    let secs = req.ready_timeout_secs.max(1);
    let deadline = Deadline { sys, at_ms: sys.now_unix_ms() + (secs as i64) * 1000, secs };
    // As k3s reads it: the config files (drop-ins included) beat the environment.
    let server_url = settings
        .server
        .clone()
        .or_else(|| req.env.iter().find(|(name, _)| name == "K3S_URL").map(|(_, v)| v.expose().to_string()));
    let fail = |what: String, timed_out: bool| {
        let journal = journal_tail(sys, service, JOURNAL_LINES);
        InstallError::Start(StartFailure {
            cause: likely_cause(&journal.join("\n"), server_url.as_deref()),
            what,
            timed_out,
            service: service.to_string(),
            journal,
        })
    };

    progress(&format!("restarting {service}"));
    let restart = || systemd.run(&["restart", service], deadline.remaining().max(Duration::from_secs(1)));
    let mut outcome = restart();
    if matches!(outcome, Err(RunError::Other(_))) && systemd.result(service) == START_LIMIT_HIT {
        // Restarted by hand several times in a few seconds, the unit is refused by systemd's start
        // limit (StartLimitBurst, which install.sh's unit leaves at systemd's default), not by k3s.
        // This restart is wanted: lift the limit once and try again.
        progress(&format!("{service} hit systemd's start limit (started too often in a short time): resetting it"));
        systemd.run_quick(&["reset-failed", service]).map_err(InstallError::Systemd)?;
        outcome = restart();
    }
    match outcome {
        Ok(_) => {}
        Err(RunError::TimedOut) => {
            return Err(fail(format!("{service} did not report ready within {} s", deadline.secs), true));
        }
        Err(RunError::Other(message)) => return Err(fail(format!("{service} did not start: {message}"), false)),
    }
    if req.role == Role::Agent {
        // An agent has no API of its own to ask; the operator watches it join from a server.
        return Ok(());
    }

    progress(&format!("waiting for node {} to be Ready", req.node_name));
    super::wait_node_ready(sys, &settings.kubeconfig, &req.node_name, deadline.at_ms)
        .map_err(|why| fail(format!("node {} was not Ready within {} s: {why}", req.node_name, deadline.secs), true))
}

#[cfg(test)]
mod tests;
