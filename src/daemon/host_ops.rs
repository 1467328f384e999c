//! The helper operations for the node daemon (run as `k3node host <operation>` on a host):
//! `daemon-identity` (the node's key, made here and never sent; its certificate request),
//! `install-daemon` (settings, certificates, unit; restart only on change), `health-status` (the
//! local hub's fleet view, over loopback), and the steps `reset` takes to remove the daemon.
//!
//! Like `install-k3s`: files are written atomically and only when their content differs, the CA
//! key only on servers (0600, masked from every answer line as a request secret), and the
//! service is restarted only when its unit, settings, certificates or binary changed, or it is
//! not running.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::pki;
use super::settings::{
    hub_memory_dropin, Settings, CA_CERT, CA_KEY, CONFIG_DIR, HUB_MEMORY_DROPIN, HUB_MEMORY_DROPIN_DIR, NODE_CERT,
    NODE_KEY, SETTINGS_PATH, STATE_DIR, TLS_DIR, UNIT_NAME, UNIT_PATH, UNIT_TEXT,
};
use crate::host::error::{describe_io, Failure, HostError};
use crate::host::k3s::systemd::{journal_tail, RunError, Systemd};
use crate::host::system::HostSystem;
use crate::host::{Context, HostOperation};
use crate::protocol::health::{
    DaemonIdentity, DaemonReport, FleetView, HealthStatus, IdentityAnswer, InstallDaemon, FLEET_PATH,
};
use crate::protocol::k3s::{FileAction, FileChange, ServiceAction};
use crate::protocol::node::Role;
use crate::protocol::{ErrorKind, Secret};

const SECRET_MODE: u32 = 0o600;
const PUBLIC_MODE: u32 = 0o644;
const TLS_DIR_MODE: u32 = 0o700;
/// `systemctl restart` of a Type=notify unit returns once it said READY=1.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DaemonOpError {
    #[error("{what} {}: {}", path.display(), describe_io(source))]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("the settings sent are not valid: {0}")]
    Settings(String),
    #[error("{NODE_KEY} is missing: the daemon-identity operation makes it before install-daemon")]
    NoKey,
    #[error("systemctl is not installed: k3node-agent runs as a systemd service, and this host has no systemd")]
    NoSystemd,
    #[error("{0}")]
    Systemd(String),
    #[error("k3node-agent did not start: {message}\nlast lines of `journalctl -u {UNIT_NAME}`:\n  {}", journal.join("\n  "))]
    Start { message: String, journal: Vec<String> },
    #[error("this host runs no hub: {0}")]
    NoHub(String),
    #[error("the hub on this server does not answer on 127.0.0.1:{port}: {message} (`systemctl status {UNIT_NAME}` on the server)")]
    HubDown { port: u16, message: String },
}

impl Failure for DaemonOpError {
    fn kind(&self) -> ErrorKind {
        match self {
            DaemonOpError::Io { source, .. } => ErrorKind::of_io(source),
            DaemonOpError::Settings(_) => ErrorKind::BadRequest,
            DaemonOpError::NoKey | DaemonOpError::NoSystemd | DaemonOpError::NoHub(_) => ErrorKind::NotInstalled,
            DaemonOpError::Pki(_) | DaemonOpError::Systemd(_) => ErrorKind::Failed,
            DaemonOpError::Start { .. } => ErrorKind::StartFailed,
            DaemonOpError::HubDown { .. } => ErrorKind::Unavailable,
        }
    }
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DaemonOpError + 'a {
    move |source| DaemonOpError::Io { what, path: path.to_path_buf(), source }
}

/// The file's text, None when there is none.
fn read_optional(sys: &dyn HostSystem, path: &str) -> Result<Option<String>, DaemonOpError> {
    match sys.read_to_string(Path::new(path)) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("cannot read", Path::new(path))(e)),
    }
}

impl HostOperation for DaemonIdentity {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<IdentityAnswer, HostError> {
        Ok(identity(ctx.sys, self.dry_run)?)
    }
}

pub fn identity(sys: &dyn HostSystem, dry_run: bool) -> Result<IdentityAnswer, DaemonOpError> {
    let key = match read_optional(sys, NODE_KEY)? {
        Some(key) => Some(Secret::new(key)),
        None if dry_run => None,
        None => {
            let key = pki::generate_node_key()?;
            sys.create_dir_all(Path::new(TLS_DIR), TLS_DIR_MODE)
                .map_err(io_error("cannot create", Path::new(TLS_DIR)))?;
            sys.write_atomic(Path::new(NODE_KEY), key.expose().as_bytes(), SECRET_MODE)
                .map_err(io_error("cannot write", Path::new(NODE_KEY)))?;
            Some(key)
        }
    };
    Ok(IdentityAnswer {
        csr_pem: key.map(|k| pki::certificate_request(k.expose())).transpose()?,
        node_cert_pem: read_optional(sys, NODE_CERT)?,
        ca_cert_pem: read_optional(sys, CA_CERT)?,
        ca_key: read_optional(sys, CA_KEY)?.map(Secret::new),
    })
}

impl HostOperation for InstallDaemon {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<DaemonReport, HostError> {
        let sys = ctx.sys;
        Ok(install(sys, &self, &mut |m| ctx.progress(m))?)
    }
}

/// One file as wanted, and what writing it changes.
struct Planned {
    path: &'static str,
    contents: String,
    mode: u32,
    action: FileAction,
    diff: Option<String>,
}

fn plan(
    sys: &dyn HostSystem,
    path: &'static str,
    contents: String,
    mode: u32,
    secret: bool,
) -> Result<Planned, DaemonOpError> {
    let current = read_optional(sys, path)?;
    let (action, diff) = match &current {
        None => (FileAction::Created, Some(if secret { "(secret, not shown)".into() } else { contents.clone() })),
        Some(old) if *old != contents => {
            let diff = if secret {
                "secret value changed (not shown)".to_string()
            } else {
                similar::TextDiff::from_lines(old.as_str(), contents.as_str())
                    .unified_diff()
                    .header(path, path)
                    .to_string()
            };
            (FileAction::Updated, Some(diff))
        }
        Some(_) => match sys.file_mode(Path::new(path)) {
            Ok(m) if m != mode => (FileAction::Updated, Some(format!("mode {m:04o} → {mode:04o}"))),
            _ => (FileAction::Unchanged, None),
        },
    };
    Ok(Planned { path, contents, mode, action, diff })
}

pub fn install(
    sys: &dyn HostSystem,
    req: &InstallDaemon,
    progress: &mut dyn FnMut(&str),
) -> Result<DaemonReport, DaemonOpError> {
    let settings = Settings::parse("the requested agent.yaml", &req.settings_yaml)
        .map_err(|e| DaemonOpError::Settings(e.to_string()))?;
    if settings.node != req.node_name || settings.role != req.role {
        return Err(DaemonOpError::Settings(format!(
            "they are for {} ({}), this request for {} ({})",
            settings.node, settings.role, req.node_name, req.role
        )));
    }
    let mut files = vec![
        plan(sys, SETTINGS_PATH, req.settings_yaml.clone(), SECRET_MODE, false)?,
        plan(sys, CA_CERT, req.ca_cert_pem.clone(), PUBLIC_MODE, false)?,
        plan(sys, NODE_CERT, req.node_cert_pem.clone(), PUBLIC_MODE, false)?,
        plan(sys, UNIT_PATH, UNIT_TEXT.to_string(), PUBLIC_MODE, false)?,
    ];
    if let (Role::Server, Some(key)) = (req.role, &req.ca_key) {
        files.push(plan(sys, CA_KEY, key.expose().to_string(), SECRET_MODE, true)?);
    }
    if settings.is_server() {
        files.push(plan(sys, HUB_MEMORY_DROPIN, hub_memory_dropin(settings.fleet.len()), PUBLIC_MODE, false)?);
    }
    if !req.dry_run && !sys.exists(Path::new(NODE_KEY)) {
        return Err(DaemonOpError::NoKey);
    }
    let systemd = Systemd::new(sys);
    let unit = systemd.status(UNIT_NAME);
    let mut reasons = Vec::new();
    let changed: Vec<&str> = files.iter().filter(|f| f.action != FileAction::Unchanged).map(|f| f.path).collect();
    if !unit.active {
        reasons.push(if unit.invocation_id.is_empty() && !unit.enabled {
            "first start".into()
        } else {
            "not running".into()
        });
    } else if !changed.is_empty() {
        reasons.push(format!("{} changed", changed.join(", ")));
    } else if crate::host::k3s::runs_a_replaced_binary(sys, &unit) {
        reasons.push("the k3node binary was replaced since it started".into());
    }
    let service_action = match (reasons.is_empty(), unit.active || unit.enabled) {
        (true, _) => ServiceAction::None,
        (false, false) => ServiceAction::Start,
        (false, true) => ServiceAction::Restart,
    };
    let mut changes: Vec<FileChange> =
        files.iter().map(|f| FileChange { path: f.path.to_string(), action: f.action, diff: f.diff.clone() }).collect();
    if !unit.enabled {
        changes.push(FileChange {
            path: format!("systemd: {UNIT_NAME}.service"),
            action: FileAction::Created,
            diff: Some(format!("systemctl enable {UNIT_NAME}")),
        });
    }
    let report = DaemonReport { changes, service_action, reasons };
    if req.dry_run {
        return Ok(report);
    }
    if !systemd.available() {
        return Err(DaemonOpError::NoSystemd);
    }
    sys.create_dir_all(Path::new(TLS_DIR), TLS_DIR_MODE).map_err(io_error("cannot create", Path::new(TLS_DIR)))?;
    // The unit last: a new unit never starts with old settings.
    files.sort_by_key(|f| f.path == UNIT_PATH);
    for f in files.iter().filter(|f| f.action != FileAction::Unchanged) {
        progress(&format!("writing {}", f.path));
        sys.write_atomic(Path::new(f.path), f.contents.as_bytes(), f.mode)
            .map_err(io_error("cannot write", Path::new(f.path)))?;
    }
    let unit_changed = changed.contains(&UNIT_PATH) || changed.contains(&HUB_MEMORY_DROPIN);
    if !unit.enabled {
        progress(&format!("enabling {UNIT_NAME}"));
        systemd.run_quick(&["enable", UNIT_NAME]).map_err(DaemonOpError::Systemd)?;
    } else if unit_changed || unit.needs_daemon_reload {
        systemd.run_quick(&["daemon-reload"]).map_err(DaemonOpError::Systemd)?;
    }
    if report.service_action != ServiceAction::None {
        progress(&format!("restarting {UNIT_NAME}"));
        match systemd.run(&["restart", UNIT_NAME], START_TIMEOUT) {
            Ok(_) => {}
            Err(e) => {
                let message = match e {
                    RunError::TimedOut => format!("it did not report ready within {} s", START_TIMEOUT.as_secs()),
                    RunError::Other(m) => m,
                };
                return Err(DaemonOpError::Start { message, journal: journal_tail(sys, UNIT_NAME, 15) });
            }
        }
    }
    Ok(report)
}

impl HostOperation for HealthStatus {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<FleetView, HostError> {
        Ok(fleet_view(ctx.sys)?)
    }
}

/// Asks this server's hub over loopback, with the node's own certificate.
pub fn fleet_view(sys: &dyn HostSystem) -> Result<FleetView, DaemonOpError> {
    let (settings, tls) = match super::load(sys, SETTINGS_PATH) {
        Ok(loaded) => loaded,
        Err(e) => return Err(DaemonOpError::NoHub(e.to_string())),
    };
    if !settings.is_server() {
        return Err(DaemonOpError::NoHub(format!("{} is an agent; the hubs run on the servers", settings.node)));
    }
    let port = settings.tuning.hub_port;
    let down = |message: String| DaemonOpError::HubDown { port, message };
    let config = tls.client_config().map_err(|e| down(e.to_string()))?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| down(e.to_string()))?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .timeout(Duration::from_secs(15))
            .no_proxy()
            .build()
            .map_err(|e| down(e.to_string()))?;
        let url = format!("https://127.0.0.1:{port}{FLEET_PATH}");
        let response = client.get(&url).send().await.map_err(|e| down(super::probes::describe_reqwest(&e)))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| down(super::probes::describe_reqwest(&e)))?;
        if !status.is_success() {
            return Err(down(format!("{status}: {}", String::from_utf8_lossy(&body))));
        }
        serde_json::from_slice(&body).map_err(|e| down(format!("its answer is not a fleet view: {e}")))
    })
}

/// A step of `reset`: what it does, in words, and the work.
pub type Step<'a> = (String, Box<dyn FnOnce() -> Result<(), String> + 'a>);

/// What `reset` does to remove the daemon (first, so that it does not report k3s going away):
/// stop and disable the unit, remove it, remove /etc/k3node (settings and keys: `up` makes them
/// again), and move its state (the buffer, the hub's store) aside like other data, through
/// `aside` (which names the place). Nothing when the daemon was never installed.
pub fn removal_steps<'a>(sys: &'a dyn HostSystem, aside: &dyn Fn(&Path) -> PathBuf) -> Vec<Step<'a>> {
    let mut steps: Vec<Step<'a>> = Vec::new();
    if sys.exists(Path::new(UNIT_PATH)) {
        steps.push((
            format!("stop and disable {UNIT_NAME}.service"),
            Box::new(move || {
                let systemd = Systemd::new(sys);
                systemd.run_quick(&["stop", UNIT_NAME])?;
                systemd.run_quick(&["disable", UNIT_NAME]).map(|_| ())
            }),
        ));
        steps.push((
            format!("remove {UNIT_PATH}"),
            Box::new(move || sys.remove_file(Path::new(UNIT_PATH)).map_err(|e| describe_io(&e))),
        ));
        if sys.exists(Path::new(HUB_MEMORY_DROPIN_DIR)) {
            steps.push((
                format!("remove {HUB_MEMORY_DROPIN_DIR}"),
                Box::new(move || sys.remove_dir_all(Path::new(HUB_MEMORY_DROPIN_DIR)).map_err(|e| describe_io(&e))),
            ));
        }
        steps.push((
            "reload systemd units".to_string(),
            Box::new(move || Systemd::new(sys).run_quick(&["daemon-reload"]).map(|_| ())),
        ));
    }
    if sys.exists(Path::new(CONFIG_DIR)) {
        steps.push((
            format!("remove {CONFIG_DIR} (the daemon's settings and keys)"),
            Box::new(move || sys.remove_dir_all(Path::new(CONFIG_DIR)).map_err(|e| describe_io(&e))),
        ));
    }
    let state = Path::new(STATE_DIR);
    if sys.exists(state) {
        if sys.read_dir_names(state).map(|n| n.is_empty()).unwrap_or(false) {
            steps.push((
                format!("remove {STATE_DIR}"),
                Box::new(move || sys.remove_dir_all(state).map_err(|e| describe_io(&e))),
            ));
        } else {
            let to = aside(state);
            steps.push((
                format!("move {STATE_DIR} aside to {}", to.display()),
                Box::new(move || sys.rename(state, &to).map_err(|e| describe_io(&e))),
            ));
        }
    }
    steps
}

#[cfg(test)]
mod tests;
