//! `install-k3s`: converge the host's k3s files to the request, then (re)start the service only
//! when what it runs with changed.
//!
//! Order: refuse a host with the other role installed; verify the uploaded binary's sha256 (before
//! anything runs it); work out every change; in a dry run stop there. Otherwise write what
//! differs (atomically), link kubectl/crictl/ctr where the host has none, daemon-reload when the
//! unit changed, enable, restart when needed and wait (Type=notify, then on a server the node
//! Ready), and record what the service now runs with.
//!
//! The restart rule: restart iff the sha256 of the binary, unit, env file or config.yaml differs
//! from the record of the last successful start (/var/lib/rancher/k3node/<service>.applied.json),
//! there is no such record, or the service is not active.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::{self, Settings};
use super::files::{env_text, killall_script, uninstall_script, unit_text};
use super::mask::{mask_config, mask_env, unified_diff, Scrubber};
use super::systemd::{journal_tail, likely_cause, RunError, Systemd};
use super::{
    describe_io, env_path, links_to_k3s, record_path, service_name, uninstall_script_path, unit_path, Progress,
    BIN_DIR, CONFIG_DIR, CONFIG_FILE, DEFAULT_KUBECONFIG, K3S_BIN, KILLALL_SCRIPT, LINKED_COMMANDS,
};
use crate::host::system::{CommandOutput, HostSystem};
use crate::protocol::k3s::{FileAction, FileChange, InstallReport, InstallRequest};
use crate::protocol::preflight::Role;

const UNIT_MODE: u32 = 0o644;
const SECRET_MODE: u32 = 0o600;
const SCRIPT_MODE: u32 = 0o755;
const CONFIG_DIR_MODE: u32 = 0o755;
/// Lines of the journal quoted in a failure.
const JOURNAL_LINES: usize = 20;
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// One `kubectl get node` never takes longer than this, whatever is left of the deadline.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the running service was started with: compared on every run to decide on a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    binary_sha256: String,
    unit_sha256: String,
    env_sha256: String,
    config_sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Shown as is.
    Plain,
    /// Masked as an env file.
    Env,
    /// Masked as config.yaml.
    Config,
}

/// One file as the request wants it, and what writing it would change.
struct FilePlan {
    path: PathBuf,
    contents: String,
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

pub fn install(sys: &dyn HostSystem, req: &InstallRequest, progress: Progress) -> Result<InstallReport, String> {
    let scrubber = Scrubber::for_request(&req.env, &req.config_yaml);
    // Nothing in a message may carry a secret, whichever step produced it.
    install_inner(sys, req, progress, &scrubber).map_err(|e| scrubber.scrub(&e))
}

fn install_inner(
    sys: &dyn HostSystem,
    req: &InstallRequest,
    progress: Progress,
    scrubber: &Scrubber,
) -> Result<InstallReport, String> {
    let service = service_name(req.role);
    refuse_other_role(sys, req.role)?;

    progress("verifying /usr/local/bin/k3s");
    let binary_sha256 = verify_binary(sys, &req.binary_sha256)?;
    let version = k3s_version(sys)?;

    // Validates the config (and learns the data dir, which the scripts name) before any write.
    let settings = config::with_main(sys, req.config_yaml.expose())?;
    let env = env_text(&req.env)?;
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
        plans.push(plan_file(sys, path, contents, mode, kind, scrubber)?);
    }
    let [config_plan, env_plan, unit_plan, ..] = &plans[..] else { unreachable!("five plans") };

    let record = Record {
        binary_sha256: binary_sha256.clone(),
        unit_sha256: sha256_hex(&unit_plan.contents),
        env_sha256: sha256_hex(&env_plan.contents),
        config_sha256: sha256_hex(&config_plan.contents),
    };
    let previous = read_record(sys, service);
    let unit_changed = unit_plan.needs_write();
    let links = plan_links(sys, progress);

    let systemd = Systemd::new(sys);
    let was_active = systemd.is_active(service);
    let restart = previous.as_ref() != Some(&record) || !was_active;

    let mut changes = vec![binary_change(previous.as_ref(), &binary_sha256)];
    changes.extend(plans.iter().map(FilePlan::change));
    changes.extend(links.iter().map(|(link, action)| FileChange {
        path: link.display().to_string(),
        action: *action,
        diff: (*action == FileAction::Created).then(|| format!("symlink {} -> k3s", link.display())),
    }));

    if req.dry_run {
        return Ok(InstallReport { service: service.into(), changes, restarted: restart, version, active: was_active });
    }
    if !systemd.available() {
        return Err("systemctl is not installed: k3s runs as a systemd service, and this host has no systemd".into());
    }

    // config.yaml and the env file before the unit: a new unit never meets an old env file.
    if config_plan.needs_write() {
        create_dir(sys, Path::new(CONFIG_DIR))?;
    }
    for plan in plans.iter().filter(|p| p.needs_write()) {
        progress(&format!("writing {}", plan.path.display()));
        sys.write_atomic(&plan.path, plan.contents.as_bytes(), plan.mode)
            .map_err(|e| format!("cannot write {}: {}", plan.path.display(), describe_io(&e)))?;
    }
    for (link, action) in &links {
        if *action == FileAction::Created {
            progress(&format!("linking {} to k3s", link.display()));
            sys.symlink_atomic(Path::new("k3s"), link)
                .map_err(|e| format!("cannot create the symlink {}: {}", link.display(), describe_io(&e)))?;
        }
    }

    // `systemctl enable` reloads the manager itself, so a new unit needs no separate daemon-reload.
    if !systemd.is_enabled(service) {
        progress(&format!("enabling {service}"));
        systemd.run_quick(&["enable", service])?;
    } else if unit_changed || systemd.needs_daemon_reload(service) {
        progress("reloading systemd units");
        systemd.run_quick(&["daemon-reload"])?;
    }

    let mut active = was_active;
    if restart {
        start_and_wait(sys, &systemd, req, &settings, scrubber, progress)?;
        active = true;
        let json = serde_json::to_string_pretty(&record).expect("a record always serializes") + "\n";
        sys.write_atomic(&record_path(service), json.as_bytes(), SECRET_MODE).map_err(|e| {
            format!(
                "{service} is running, but its record {} cannot be written: {}",
                record_path(service).display(),
                describe_io(&e)
            )
        })?;
    }
    Ok(InstallReport { service: service.into(), changes, restarted: restart, version, active })
}

/// A host is a server or an agent, never both: converting one needs a reset first.
fn refuse_other_role(sys: &dyn HostSystem, role: Role) -> Result<(), String> {
    let (other, other_name, this_name) = match role {
        Role::Server => (Role::Agent, "an agent", "a server"),
        Role::Agent => (Role::Server, "a server", "an agent"),
    };
    let other_unit = unit_path(service_name(other));
    if sys.exists(&other_unit) {
        return Err(format!(
            "{} is installed on this host ({other_name}); it cannot also become {this_name}: \
             run `k3node reset` on this host first to convert it",
            other_unit.display()
        ));
    }
    Ok(())
}

/// The binary's sha256 must be the one the operator verified; nothing runs it before this.
fn verify_binary(sys: &dyn HostSystem, expected: &str) -> Result<String, String> {
    let expected = expected.trim().to_ascii_lowercase();
    if expected.len() != 64 || !expected.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("the expected sha256 of k3s {expected:?} is not 64 hex digits"));
    }
    let actual = match sys.sha256_file(Path::new(K3S_BIN)) {
        Ok(hash) => hash,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!("{K3S_BIN} is missing: the k3s binary must be uploaded before install-k3s"))
        }
        Err(e) => return Err(format!("cannot read {K3S_BIN} to verify it: {}", describe_io(&e))),
    };
    if actual != expected {
        return Err(format!(
            "{K3S_BIN} has sha256 {actual}, expected {expected}: refusing to install or run an unverified \
             binary (upload it again)"
        ));
    }
    Ok(actual)
}

/// `k3s version v1.31.4+k3s1 (a1b2c3d4)` -> `v1.31.4+k3s1`.
pub(super) fn parse_version(stdout: &str) -> Option<String> {
    let line = stdout.lines().next()?;
    let mut words = line.split_whitespace();
    words.by_ref().find(|w| *w == "version")?;
    words.next().filter(|v| v.starts_with('v')).map(str::to_string)
}

fn k3s_version(sys: &dyn HostSystem) -> Result<String, String> {
    let out = sys
        .run(Path::new(K3S_BIN), &["--version"])
        .map_err(|e| format!("cannot run {K3S_BIN} --version: {e} (is it a binary for this host's architecture?)"))?;
    if !out.success() {
        return Err(format!("{K3S_BIN} --version failed: {}", out.failure_summary()));
    }
    parse_version(&out.stdout).ok_or_else(|| {
        let first = out.stdout.lines().next().unwrap_or("").chars().take(120).collect::<String>();
        format!("{K3S_BIN} --version printed no k3s version: {first:?}")
    })
}

fn plan_file(
    sys: &dyn HostSystem,
    path: PathBuf,
    contents: String,
    mode: u32,
    kind: Kind,
    scrubber: &Scrubber,
) -> Result<FilePlan, String> {
    let current = match sys.read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read {}: {}", path.display(), describe_io(&e))),
    };
    let (action, diff) = match &current {
        None => (FileAction::Created, Some(shown_diff(&path, "", &contents, kind, scrubber))),
        Some(old) if *old != contents => (FileAction::Updated, Some(shown_diff(&path, old, &contents, kind, scrubber))),
        Some(_) => match sys.file_mode(&path) {
            // Same text, wrong mode (a world-readable env file): rewritten, which sets the mode.
            Ok(current_mode) if current_mode != mode => {
                (FileAction::Updated, Some(format!("mode {current_mode:04o} → {mode:04o}")))
            }
            _ => (FileAction::Unchanged, None),
        },
    };
    Ok(FilePlan { path, contents, mode, action, diff })
}

fn shown_diff(path: &Path, old: &str, new: &str, kind: Kind, scrubber: &Scrubber) -> String {
    let mask = |text: &str| match kind {
        Kind::Plain => text.to_string(),
        Kind::Env => mask_env(text),
        Kind::Config => mask_config(text),
    };
    let (old_masked, new_masked) = (mask(old), mask(new));
    if old_masked == new_masked {
        return format!("{}: secret values changed (not shown)", path.display());
    }
    scrubber.scrub(&unified_diff(&path.to_string_lossy(), &old_masked, &new_masked))
}

fn binary_change(previous: Option<&Record>, sha256: &str) -> FileChange {
    let (action, diff) = match previous {
        None => (FileAction::Created, None),
        Some(r) if r.binary_sha256 != sha256 => {
            (FileAction::Updated, Some(format!("sha256 {} → {sha256}", r.binary_sha256)))
        }
        Some(_) => (FileAction::Unchanged, None),
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

fn create_dir(sys: &dyn HostSystem, dir: &Path) -> Result<(), String> {
    sys.create_dir_all(dir, CONFIG_DIR_MODE)
        .map_err(|e| format!("cannot create {}: {}", dir.display(), describe_io(&e)))
}

fn read_record(sys: &dyn HostSystem, service: &str) -> Option<Record> {
    let text = sys.read_to_string(&record_path(service)).ok()?;
    // An unreadable record means "not known what it runs with": restart.
    serde_json::from_str(&text).ok()
}

fn sha256_hex(text: &str) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()))
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

    fn passed(&self) -> bool {
        self.sys.now_unix_ms() >= self.at_ms
    }
}

/// `systemctl restart` (returns once k3s said READY=1, as the unit is Type=notify), then on a
/// server the node Ready, all within request.ready_timeout_secs.
fn start_and_wait(
    sys: &dyn HostSystem,
    systemd: &Systemd,
    req: &InstallRequest,
    settings: &Settings,
    scrubber: &Scrubber,
    progress: Progress,
) -> Result<(), String> {
    let service = service_name(req.role);
    let secs = req.ready_timeout_secs.max(1);
    let deadline = Deadline { sys, at_ms: sys.now_unix_ms() + (secs as i64) * 1000, secs };
    let server_url = req
        .env
        .iter()
        .find(|(name, _)| name == "K3S_URL")
        .map(|(_, v)| v.expose().to_string())
        .or_else(|| settings.server.clone());
    let fail = |what: String| failure(sys, service, &what, server_url.as_deref(), scrubber);

    progress(&format!("restarting {service}"));
    let timeout = deadline.remaining().max(Duration::from_secs(1));
    match systemd.run(&["restart", service], timeout) {
        Ok(_) => {}
        Err(RunError::TimedOut) => {
            return Err(fail(format!("{service} did not report ready within {} s", deadline.secs)));
        }
        Err(RunError::Other(message)) => return Err(fail(format!("{service} did not start: {message}"))),
    }
    if req.role == Role::Agent {
        // An agent has no API of its own to ask; the operator watches it join from a server.
        return Ok(());
    }

    progress(&format!("waiting for node {} to be Ready", req.node_name));
    let mut args = vec!["kubectl"];
    let kubeconfig = settings.kubeconfig.to_string_lossy().into_owned();
    if settings.kubeconfig != Path::new(DEFAULT_KUBECONFIG) {
        args.extend(["--kubeconfig", kubeconfig.as_str()]);
    }
    args.extend(["get", "node", req.node_name.as_str(), "-o", "json"]);
    loop {
        let timeout = deadline.remaining().clamp(Duration::from_secs(1), KUBECTL_TIMEOUT);
        let status = match sys.run_with(Path::new(K3S_BIN), &args, None, timeout) {
            Ok(out) => node_status(&out),
            Err(e) => NodeStatus::Unknown(format!("k3s kubectl: {e}")),
        };
        if status == NodeStatus::Ready {
            return Ok(());
        }
        if deadline.passed() {
            let why = match status {
                NodeStatus::Ready => unreachable!("returned above"),
                NodeStatus::NotReady(why) | NodeStatus::Unknown(why) => why,
            };
            return Err(fail(format!("node {} was not Ready within {} s: {why}", req.node_name, deadline.secs)));
        }
        sys.sleep(POLL_INTERVAL.min(deadline.remaining()).max(Duration::from_millis(1)));
    }
}

#[derive(Debug, PartialEq, Eq)]
enum NodeStatus {
    Ready,
    NotReady(String),
    Unknown(String),
}

/// The Ready condition of `kubectl get node <name> -o json`.
fn node_status(out: &CommandOutput) -> NodeStatus {
    if !out.success() {
        return NodeStatus::Unknown(format!("k3s kubectl get node: {}", out.failure_summary()));
    }
    let Ok(node) = serde_json::from_str::<serde_json::Value>(&out.stdout) else {
        return NodeStatus::Unknown("k3s kubectl get node printed no JSON".into());
    };
    let conditions = node["status"]["conditions"].as_array().cloned().unwrap_or_default();
    match conditions.iter().find(|c| c["type"] == "Ready") {
        Some(c) if c["status"] == "True" => NodeStatus::Ready,
        Some(c) => NodeStatus::NotReady(format!(
            "Ready={} ({})",
            c["status"].as_str().unwrap_or("?"),
            c["message"].as_str().or(c["reason"].as_str()).unwrap_or("no reason given")
        )),
        None => NodeStatus::NotReady("the node has no Ready condition yet".into()),
    }
}

/// A failure's message: what failed, the likely cause when the journal shows one, and the
/// journal's last lines, all with secrets removed.
fn failure(sys: &dyn HostSystem, service: &str, what: &str, server_url: Option<&str>, scrubber: &Scrubber) -> String {
    let journal = journal_tail(sys, service, JOURNAL_LINES);
    let mut message = what.to_string();
    if let Some(cause) = likely_cause(&journal.join("\n"), server_url) {
        message.push_str(&format!("\nlikely cause: {cause}"));
    }
    if journal.is_empty() {
        message.push_str(&format!("\n(no journal lines: see `journalctl -u {service}` on the host)"));
    } else {
        message.push_str(&format!("\nlast lines of `journalctl -u {service}`:"));
        for line in &journal {
            message.push_str("\n  ");
            message.push_str(line);
        }
    }
    scrubber.scrub(&message)
}

#[cfg(test)]
mod tests;
