//! The node daemon, `k3node agent`, run by systemd (`k3node-agent.service`) on every node.
//!
//! Every interval it collects the node's health ([`probes`]), writes the report to its bounded
//! on-disk [`buffer`] first, then delivers what each hub has not confirmed yet, in order
//! ([`reporter`]). On a server it also runs the [`crate::hub`].
//!
//! Invariants:
//! - Nothing is reported before it was measured: the first report comes after the first
//!   collection, and a probe that cannot measure reports a failure with its reason.
//! - A report is confirmed by a hub only after the hub stored it; until then it stays in the
//!   buffer, across restarts of the daemon and of the hub.
//! - systemd hears `READY=1` once the settings and certificates are loaded (and the hub listens),
//!   and a watchdog ping only while the loop makes progress, so a hung loop is restarted.
//! - The agent's part stays small (one thread, a few MiB); the hub's heavier parts (SQLite, the
//!   Kubernetes client) exist only on servers, and the Kubernetes client only once needed.
//!
//! Modules: [`settings`] (the file and every path), [`probes`], [`buffer`], [`reporter`],
//! [`pki`] (CA, node certificates, TLS configurations), [`host_ops`] (the helper operations
//! that install, identify, query and remove the daemon), [`working_set`] (an agent keeps
//! resident only the binary's pages it uses).

pub mod buffer;
pub mod host_ops;
pub mod pki;
pub mod probes;
pub mod reporter;
pub mod settings;
pub mod working_set;

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::host::system::{HostSystem, RealSystem};
use crate::protocol::health::Report;
use crate::protocol::Secret;
use settings::{Settings, SettingsError, CA_CERT, NODE_CERT, NODE_KEY};

/// Why the daemon cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot read {path}: {message}; `k3node up` writes it")]
    Missing { path: String, message: String },
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Tls(#[from] pki::TlsError),
    #[error(transparent)]
    Buffer(#[from] buffer::BufferError),
    #[error(transparent)]
    Store(#[from] crate::hub::StoreError),
    #[error("the hub cannot listen on port {port}: {message} (is another hub running, or the port taken? `ss -ltnp 'sport = :{port}'`)")]
    Listen { port: u16, message: String },
    #[error("cannot start the runtime: {0}")]
    Runtime(String),
}

fn read(sys: &dyn HostSystem, path: &str) -> Result<String, DaemonError> {
    sys.read_to_string(Path::new(path))
        .map_err(|e| DaemonError::Missing { path: path.to_string(), message: crate::host::describe_io(&e) })
}

/// The settings and the node's TLS material, as `up` left them.
pub fn load(sys: &dyn HostSystem, settings_path: &str) -> Result<(Settings, pki::TlsMaterial), DaemonError> {
    let settings = Settings::parse(settings_path, &read(sys, settings_path)?)?;
    let tls = pki::TlsMaterial {
        ca_cert_pem: read(sys, CA_CERT)?,
        node_cert_pem: read(sys, NODE_CERT)?,
        node_key_pem: Secret::new(read(sys, NODE_KEY)?),
    };
    Ok((settings, tls))
}

/// Runs the daemon until SIGTERM; Err when it cannot start.
pub fn run(settings_path: &str) -> Result<(), DaemonError> {
    let sys: &'static RealSystem = Box::leak(Box::new(RealSystem::host()));
    let (settings, tls) = load(sys, settings_path)?;
    runtime(settings.is_server())
        .map_err(|e| DaemonError::Runtime(e.to_string()))?
        .block_on(main_loop(sys, settings, tls))
}

/// The daemon's runtime (also the hub benchmark's): the agent needs one thread; a hub answers
/// many nodes at once.
pub fn runtime(hub: bool) -> std::io::Result<tokio::runtime::Runtime> {
    if hub {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).max_blocking_threads(4).enable_all().build()
    } else {
        tokio::runtime::Builder::new_current_thread().max_blocking_threads(2).enable_all().build()
    }
}

async fn main_loop(sys: &'static dyn HostSystem, settings: Settings, tls: pki::TlsMaterial) -> Result<(), DaemonError> {
    if settings.is_server() {
        start_hub(&settings, &tls).await?;
    }
    let client = reporter::HubClient::new(&settings, &tls)?;
    let mut buffer = buffer::Buffer::open(
        sys,
        Path::new(settings::BUFFER_DIR),
        &settings.hubs,
        settings.tuning.buffer_max_reports as usize,
    )?;
    let endpoints = probes::RealEndpoints::new();
    let mut state = probes::ProbeState::default();
    state.prime(sys);

    let progress = Arc::new(AtomicI64::new(crate::hub::now_ms()));
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tokio::spawn(watchdog(progress.clone(), settings.tuning.interval_secs));
    tracing::info!(
        "k3node agent: node {} ({}), every {} s, hubs {}",
        settings.node,
        settings.role,
        settings.tuning.interval_secs,
        settings.hubs.join(", ")
    );

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| DaemonError::Runtime(e.to_string()))?;
    let mut ticker = tokio::time::interval(Duration::from_secs(settings.tuning.interval_secs));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The CPU probe compares with the sample taken above.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Startup and the first report touched much of the binary; an agent's loop needs little of
    // it (a hub's requests need more, and a fault there would cost latency).
    let mut shed_pages = !settings.is_server();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = terminate.recv() => break,
        }
        let report = collect(sys, &endpoints, &settings, &mut state).await;
        if let Err(e) = buffer.append(report) {
            // A full disk: the report is lost, and the next one will say why (disk checks).
            tracing::error!("{e}");
        }
        let outcome = client.deliver(&mut buffer).await;
        if let Some(offset) = outcome.clock_offset_ms {
            state.clock_offset_ms = Some(offset);
        }
        let _ = sd_notify::notify(
            false,
            &[sd_notify::NotifyState::Status(&format!(
                "last report {}; {} waiting in the buffer",
                buffer.next_seq() - 1,
                buffer.len()
            ))],
        );
        progress.store(crate::hub::now_ms(), Ordering::Relaxed);
        if std::mem::take(&mut shed_pages) {
            working_set::shed_binary_pages();
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    Ok(())
}

/// One collection: the local probes, then the network ones. On a server the local probes run
/// off the runtime (they block, and the hub shares it); the agent's runtime has nothing else to
/// do meanwhile, so it runs them in place rather than keep a thread pool for them.
pub async fn collect(
    sys: &'static dyn HostSystem,
    endpoints: &dyn probes::Endpoints,
    settings: &Settings,
    state: &mut probes::ProbeState,
) -> Report {
    let mut collected = if settings.is_server() {
        let (owned_settings, mut owned_state) = (settings.clone(), state.clone());
        let (collected, new_state) = tokio::task::spawn_blocking(move || {
            let collected = probes::collect_local(sys, &owned_settings, &mut owned_state);
            (collected, owned_state)
        })
        .await
        .unwrap_or_else(|_| (probes::Collected::default(), state.clone()));
        *state = new_state;
        collected
    } else {
        probes::collect_local(sys, settings, state)
    };
    probes::collect_network(endpoints, settings, &mut collected).await;
    Report {
        seq: 0,
        at_ms: sys.now_unix_ms(),
        interval_secs: settings.tuning.interval_secs,
        role: settings.role,
        k3s_version: collected.k3s_version,
        checks: collected.checks,
        gauges: collected.gauges,
    }
}

async fn start_hub(settings: &Settings, tls: &pki::TlsMaterial) -> Result<(), DaemonError> {
    match raise_open_files_limit() {
        Ok(limit) => tracing::info!("hub: up to {limit} open files (a connection per node)"),
        Err(e) => tracing::warn!("hub: cannot raise the open files limit ({e}): a large fleet may be refused"),
    }
    let history = settings.tuning.history_per_node as u64;
    let open = move || crate::hub::Store::open(Path::new(settings::HUB_DB), history);
    let (reader, writer) = tokio::task::spawn_blocking(move || Ok::<_, crate::hub::StoreError>((open()?, open()?)))
        .await
        .map_err(|e| DaemonError::Runtime(e.to_string()))??;
    let port = settings.tuning.hub_port;
    let listener =
        hub_listener(port).map_err(|e| DaemonError::Listen { port, message: crate::host::describe_io(&e) })?;
    let hub = crate::hub::Hub::new(settings.clone(), reader, writer);
    tokio::spawn(crate::hub::server::serve(hub.clone(), listener, Arc::new(tls.server_config()?)));
    tokio::spawn(crate::hub::kube::run(hub));
    Ok(())
}

/// The hub keeps a connection per node: under systemd's soft limit of 1,024 open files, a
/// fleet of about a thousand nodes would be refused (EMFILE). The soft limit is raised to the
/// hard one (524,288 under systemd), which needs no privilege; returns the limit now.
pub(crate) fn raise_open_files_limit() -> nix::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    // An unlimited hard limit is not a soft limit the kernel takes: its own maximum (nr_open).
    let wanted = hard.min(1 << 20);
    if soft < wanted {
        setrlimit(Resource::RLIMIT_NOFILE, wanted, hard)?;
    }
    Ok(wanted.max(soft))
}

/// The hub's socket on every address of the host: `[::]` with IPv4 mapped in (so that servers
/// listed by an IPv6 address are reachable as well as IPv4 ones), or `0.0.0.0` on a kernel
/// without IPv6.
pub(crate) fn hub_listener(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let dual = || -> std::io::Result<tokio::net::TcpListener> {
        let socket = tokio::net::TcpSocket::new_v6()?;
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv6V6Only, &false)?;
        socket.set_reuseaddr(true)?;
        socket.bind(std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)))?;
        socket.listen(1024)
    };
    match dual() {
        Err(e) if e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            socket.bind(std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)))?;
            socket.listen(1024)
        }
        other => other,
    }
}

/// Pings systemd's watchdog while the loop makes progress (a loop slower than two intervals
/// and half a minute counts as hung).
async fn watchdog(progress: Arc<AtomicI64>, interval_secs: u64) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 3).max(Duration::from_millis(500));
    let allowed_ms = (interval_secs as i64 * 2 + 30) * 1000;
    loop {
        tokio::time::sleep(every).await;
        if crate::hub::now_ms() - progress.load(Ordering::Relaxed) < allowed_ms {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        }
    }
}
