//! `k3node up`: the cluster file made real, as named phases (k0sctl style): connect, preflight,
//! artifacts, upload, first server, token, further servers one at a time, agents in parallel,
//! wait for Ready, kubeconfig. A phase that fails stops the run; every host gets a result.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use serde::Serialize;

use super::agent::AgentError;
use super::fleet::{Fleet, Member};
use super::kubeconfig;
use super::node_config::{self, Position};
use super::preflight::{self as preflight_phase, PreflightOptions, PreflightRun};
use super::progress::Observer;
use super::target::{Payload, Target};
use crate::artifacts::{self, ArtifactOptions, DownloadProgress, K3sBinary};
use crate::cluster::ClusterFile;
use crate::protocol::k3s::{
    FileAction, FileChange, InstallReport, InstallRequest, KubeconfigAnswer, NodesAnswer, TokenAnswer,
};
use crate::protocol::preflight::Role;
use crate::protocol::{Request, Secret};

pub const K3S_PATH: &str = "/usr/local/bin/k3s";

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub dry_run: bool,
    pub concurrency: usize,
    /// Go on although preflight found failures.
    pub ignore_preflight: bool,
    pub ready_timeout: Duration,
    /// Where to merge the kubeconfig; None: $KUBECONFIG or ~/.kube/config.
    pub kubeconfig: Option<PathBuf>,
    pub artifacts: ArtifactOptions,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// Nothing changed, nothing restarted.
    Unchanged,
    /// Files changed without a restart being needed (scripts, links).
    Changed,
    /// Started or restarted because the binary, unit, env or config changed.
    Restarted,
    /// Dry run: this host would change.
    WouldChange,
    Failed,
    /// Not reached: an earlier phase failed.
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeResult {
    pub host: String,
    pub role: Role,
    pub version: Option<String>,
    pub state: NodeState,
    /// Whether the k3s binary was (or would be) uploaded.
    pub binary_uploaded: bool,
    pub changes: Vec<FileChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(serialize_with = "super::preflight::as_secs")]
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    pub name: &'static str,
    pub ok: bool,
    pub message: String,
    /// Time the phase's own work took; phases overlap (uploads run while the servers install).
    #[serde(serialize_with = "super::preflight::as_secs")]
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpRun {
    pub cluster: String,
    pub dry_run: bool,
    pub version: Option<String>,
    pub phases: Vec<PhaseResult>,
    pub nodes: Vec<NodeResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preflight: Option<PreflightRun>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
}

impl UpRun {
    pub fn succeeded(&self) -> bool {
        self.phases.iter().all(|p| p.ok)
            && self.nodes.iter().all(|n| !matches!(n.state, NodeState::Failed | NodeState::Skipped))
    }
}

/// A phase failed: the message says which hosts and why; the run stops there.
struct Stop(String);

/// What the server chain did, recorded into the run once every chain has finished.
#[derive(Default)]
struct ServerChain {
    uploads: Vec<(String, Result<bool, AgentError>)>,
    upload_time: Duration,
    installs: Vec<(String, Result<InstallReport, AgentError>, Duration)>,
    token_read: bool,
    token_error: Option<String>,
}

struct Run<'a> {
    cluster: &'a ClusterFile,
    phase_started: Instant,
    options: &'a UpOptions,
    observer: Arc<dyn Observer>,
    result: UpRun,
}

impl Run<'_> {
    fn phase(&mut self, name: &'static str, outcome: Result<String, Stop>) -> bool {
        let (ok, message) = match outcome {
            Ok(m) => (true, m),
            Err(Stop(m)) => (false, m),
        };
        let elapsed = self.phase_started.elapsed();
        self.phase_started = Instant::now();
        tracing::info!(phase = name, ok, ?elapsed, "{message}");
        self.result.phases.push(PhaseResult { name, ok, message, elapsed });
        ok
    }

    /// A phase whose work overlapped others: its own duration, not the time since the last phase.
    fn phase_timed(&mut self, name: &'static str, outcome: Result<String, Stop>, elapsed: Duration) -> bool {
        let ok = self.phase(name, outcome);
        if let Some(phase) = self.result.phases.last_mut() {
            phase.elapsed = elapsed;
        }
        ok
    }

    fn node(&mut self, host: &str) -> &mut NodeResult {
        self.result.nodes.iter_mut().find(|n| n.host == host).expect("every host has a result")
    }
}

/// Runs every phase on `fleet` (connected with [`Fleet::connect`], or [`Fleet::local`]).
pub async fn up(
    cluster: &ClusterFile,
    fleet: &Fleet,
    options: &UpOptions,
    observer: Arc<dyn Observer>,
    download: &dyn DownloadProgress,
) -> UpRun {
    let nodes = cluster
        .hosts
        .iter()
        .map(|h| NodeResult {
            host: h.name.clone(),
            role: h.role,
            version: None,
            state: NodeState::Skipped,
            binary_uploaded: false,
            changes: Vec::new(),
            error: None,
            elapsed: Duration::ZERO,
        })
        .collect();
    let mut run = Run {
        cluster,
        phase_started: Instant::now(),
        options,
        observer: observer.clone(),
        result: UpRun {
            cluster: cluster.name.clone(),
            dry_run: options.dry_run,
            version: None,
            phases: Vec::new(),
            nodes,
            preflight: None,
            kubeconfig: None,
        },
    };

    let connect = if fleet.failures().next().is_none() {
        Ok(format!("{} hosts connected, agents ready", fleet.members.len()))
    } else {
        for (m, e) in fleet.failures() {
            let node = run.node(&m.host.name);
            node.state = NodeState::Failed;
            node.error = Some(e.to_string());
        }
        Err(Stop(fleet.failures().map(|(_, e)| e.to_string()).collect::<Vec<_>>().join("; ")))
    };
    let connected = run.phase("connect", connect);
    // The fleet was connected before this run began; its slowest host is the phase's time.
    if let Some(phase) = run.result.phases.last_mut() {
        phase.elapsed = fleet.members.iter().map(|m| m.elapsed).max().unwrap_or_default();
    }
    if connected {
        phases(&mut run, fleet, download).await;
    }
    for n in &run.result.nodes {
        let ok = !matches!(n.state, NodeState::Failed | NodeState::Skipped);
        observer.done(&n.host, ok, &format!("{:?}", n.state).to_lowercase());
    }
    run.result
}

async fn phases(run: &mut Run<'_>, fleet: &Fleet, download: &dyn DownloadProgress) {
    let cluster = run.cluster;
    let options = run.options;

    // preflight: never install onto a host that cannot run k3s.
    let pf = preflight_phase::run(
        cluster,
        fleet,
        &PreflightOptions { fix: false, concurrency: options.concurrency },
        run.observer.clone(),
    )
    .await;
    let failing: Vec<String> = pf
        .hosts
        .iter()
        .filter_map(|h| {
            let report = pf.report(&h.host)?;
            let ids: Vec<&str> = report
                .checks
                .iter()
                .filter(|c| c.status == crate::protocol::preflight::Status::Fail)
                .map(|c| c.id.as_str())
                .collect();
            (!ids.is_empty()).then(|| format!("{}: {}", h.host, ids.join(", ")))
        })
        .collect();
    let outcome = if failing.is_empty() {
        Ok("every host passed".to_string())
    } else if options.ignore_preflight {
        Ok(format!("failures ignored (--ignore-preflight): {}", failing.join("; ")))
    } else {
        Err(Stop(format!(
            "{} (see `k3node preflight`; --fix repairs modules and sysctls, --ignore-preflight overrides)",
            failing.join("; ")
        )))
    };
    let node_ips: Vec<Option<String>> = fleet
        .members
        .iter()
        .map(|m| {
            pf.report(&m.host.name)
                .filter(|r| r.facts.addresses.contains(&m.host.address))
                .map(|_| m.host.address.clone())
        })
        .collect();
    run.result.preflight = Some(pf);
    if !run.phase("preflight", outcome) {
        return;
    }

    // artifacts: resolved and verified once, on this side.
    let binary = match fetch(cluster, options, download).await {
        Ok(b) => b,
        Err(Stop(m)) => {
            run.phase("artifacts", Err(Stop(m)));
            return;
        }
    };
    run.result.version = Some(binary.version.clone());
    run.phase("artifacts", Ok(format!("k3s {} ({}), sha256 {}", binary.version, binary.arch, &binary.sha256[..16])));

    let node_ip = |m: &Member| node_ips[fleet.members.iter().position(|x| x.index == m.index).unwrap_or(0)].clone();
    let first = fleet
        .members
        .iter()
        .find(|m| node_config::position(cluster, &m.host) == Position::FirstServer)
        .expect("validated: at least one server");
    let joining: Vec<&Member> =
        fleet.members.iter().filter(|m| node_config::position(cluster, &m.host) == Position::JoiningServer).collect();
    let agents: Vec<&Member> = fleet.members.iter().filter(|m| m.host.role == Role::Agent).collect();
    let payload = Payload::new(binary.path.clone(), binary.sha256.clone(), binary.size);
    let observer = run.observer.clone();
    // Agents start as soon as their own upload is done and every server is up: the token comes
    // through this channel (None while the servers are being installed).
    let (servers_done, servers_ready) = tokio::sync::watch::channel::<Option<Result<Secret, ()>>>(None);

    // The servers, one after the other: the first initialises the cluster and hands out the
    // token; further servers join it one at a time (etcd membership changes must not overlap).
    let server_chain = async {
        let mut out = ServerChain::default();
        let started = Instant::now();
        let chain = async {
            out.uploads.push((
                first.host.name.clone(),
                upload_binary(target(first), &binary, &payload, options.dry_run, observer.as_ref()).await,
            ));
            out.upload_time = started.elapsed();
            if out.uploads.last().is_some_and(|(_, r)| r.is_err()) {
                return None;
            }
            let request = install_request(cluster, first, &binary, None, node_ip(first), options);
            let (outcome, elapsed) = call_install(target(first), &first.host.name, request, observer.as_ref()).await;
            let ok = outcome.is_ok();
            out.installs.push((first.host.name.clone(), outcome, elapsed));
            if !ok {
                return None;
            }
            let token = match target(first).call::<TokenAnswer>(&Request::ReadToken, &mut |_| {}).await {
                Ok(answer) => answer.token,
                Err(_) if options.dry_run => Secret::new("<the first server's token>"),
                Err(e) => {
                    out.token_error = Some(format!("cannot read the join token from {}: {e}", first.host.name));
                    return None;
                }
            };
            out.token_read = true;
            for m in &joining {
                let uploaded = upload_binary(target(m), &binary, &payload, options.dry_run, observer.as_ref()).await;
                let failed = uploaded.is_err();
                out.uploads.push((m.host.name.clone(), uploaded));
                if failed {
                    return None;
                }
                let request = install_request(cluster, m, &binary, Some(&token), node_ip(m), options);
                let (outcome, elapsed) = call_install(target(m), &m.host.name, request, observer.as_ref()).await;
                let ok = outcome.is_ok();
                out.installs.push((m.host.name.clone(), outcome, elapsed));
                if !ok {
                    return None;
                }
            }
            Some(token)
        };
        let token = chain.await;
        let _ = servers_done.send(Some(token.clone().ok_or(())));
        out
    };
    let agent_chains = stream::iter(agents.iter().map(|m| {
        let (binary, payload, observer) = (&binary, &payload, observer.clone());
        let mut servers_ready = servers_ready.clone();
        async move {
            let uploaded = upload_binary(target(m), binary, payload, options.dry_run, observer.as_ref()).await;
            if uploaded.is_err() {
                return (m.host.name.clone(), uploaded, None);
            }
            observer.phase(&m.host.name, "waiting for the servers");
            let token = match servers_ready.wait_for(Option::is_some).await.map(|t| t.clone()) {
                Ok(Some(Ok(token))) => token,
                _ => return (m.host.name.clone(), uploaded, None),
            };
            let request = install_request(cluster, m, binary, Some(&token), node_ip(m), options);
            (
                m.host.name.clone(),
                uploaded,
                Some(call_install(target(m), &m.host.name, request, observer.as_ref()).await),
            )
        }
    }))
    .buffer_unordered(options.concurrency.max(1))
    .collect::<Vec<_>>();
    let (servers, agent_results) = tokio::join!(server_chain, agent_chains);

    // upload
    let mut uploads = servers.uploads;
    let mut agent_installs = Vec::new();
    for (host, uploaded, install) in agent_results {
        uploads.push((host.clone(), uploaded));
        if let Some(install) = install {
            agent_installs.push((host, install));
        }
    }
    let mut upload_errors = Vec::new();
    for (host, outcome) in uploads {
        match outcome {
            Ok(uploaded) => run.node(&host).binary_uploaded = uploaded,
            Err(e) => {
                let node = run.node(&host);
                node.state = NodeState::Failed;
                node.error = Some(e.to_string());
                upload_errors.push(e.to_string());
            }
        }
    }
    let uploaded = run.result.nodes.iter().filter(|n| n.binary_uploaded).count();
    let verb = if options.dry_run { "would upload" } else { "uploaded" };
    let outcome = if upload_errors.is_empty() {
        Ok(format!("{verb} to {uploaded} hosts, alongside the server installs"))
    } else {
        Err(Stop(upload_errors.join("; ")))
    };
    let upload_ok = run.phase_timed("upload", outcome, servers.upload_time);

    // first server, token, further servers
    let mut installs = servers.installs.into_iter();
    let Some((host, outcome, elapsed)) = installs.next() else { return };
    let outcome = record(run, &host, outcome, elapsed).map(|_| host).map_err(Stop);
    if !run.phase_timed("first server", outcome, elapsed) {
        return;
    }
    let token_outcome = match servers.token_error {
        Some(e) => Err(Stop(e)),
        None => Ok(format!("read from {}", first.host.name)),
    };
    if !run.phase_timed("token", token_outcome, Duration::ZERO) {
        return;
    }
    let mut failures = Vec::new();
    let mut servers_time = Duration::ZERO;
    for (host, outcome, elapsed) in installs {
        servers_time += elapsed;
        if let Err(e) = record(run, &host, outcome, elapsed) {
            failures.push(e);
        }
    }
    let outcome = if failures.is_empty() && servers.token_read {
        Ok(format!("{} joined", joining.len()))
    } else {
        Err(Stop(if failures.is_empty() { "a server could not be uploaded to".into() } else { failures.join("; ") }))
    };
    if !run.phase_timed("servers", outcome, servers_time) {
        return;
    }

    // agents, in parallel
    let mut failures = Vec::new();
    let mut agents_time = Duration::ZERO;
    for (host, (outcome, elapsed)) in agent_installs {
        agents_time = agents_time.max(elapsed);
        if let Err(e) = record(run, &host, outcome, elapsed) {
            failures.push(e);
        }
    }
    let outcome =
        if failures.is_empty() { Ok(format!("{} joined", agents.len())) } else { Err(Stop(failures.join("; "))) };
    if !run.phase_timed("agents", outcome, agents_time) || !upload_ok || options.dry_run {
        return;
    }
    run.phase_started = Instant::now();

    // every node Ready, as the first server sees them
    let outcome = wait_ready(run, target(first)).await;
    if !run.phase("ready", outcome) {
        return;
    }

    let outcome = merge_kubeconfig(run, target(first)).await;
    run.phase("kubeconfig", outcome);
}

fn target(m: &Member) -> &Target {
    &m.link.as_ref().expect("connect phase passed").target
}

async fn fetch(cluster: &ClusterFile, options: &UpOptions, download: &dyn DownloadProgress) -> Result<K3sBinary, Stop> {
    let version =
        artifacts::resolve_version(&cluster.k3s, &options.artifacts).await.map_err(|e| Stop(e.to_string()))?;
    let arch = crate::protocol::debian_arch(std::env::consts::ARCH).unwrap_or(std::env::consts::ARCH);
    artifacts::fetch_k3s(&cluster.k3s, &version, arch, &options.artifacts, download)
        .await
        .map_err(|e| Stop(e.to_string()))
}

async fn upload_binary(
    target: &Target,
    binary: &K3sBinary,
    payload: &Payload,
    dry_run: bool,
    observer: &dyn Observer,
) -> Result<bool, AgentError> {
    if target.file_sha256(K3S_PATH).await?.as_deref() == Some(binary.sha256.as_str()) {
        return Ok(false);
    }
    if !dry_run {
        observer.phase(target.host(), &format!("uploading k3s {}", binary.version));
        target.install_file(payload, K3S_PATH, 0o755).await?;
    }
    Ok(true)
}

fn install_request(
    cluster: &ClusterFile,
    m: &Member,
    binary: &K3sBinary,
    token: Option<&Secret>,
    node_ip: Option<String>,
    options: &UpOptions,
) -> InstallRequest {
    InstallRequest {
        role: m.host.role,
        node_name: m.host.name.clone(),
        binary_sha256: binary.sha256.clone(),
        config_yaml: Secret::new(node_config::config_yaml(cluster, &m.host, node_ip.as_deref())),
        env: node_config::env(cluster, &m.host, token),
        ready_timeout_secs: options.ready_timeout.as_secs(),
        dry_run: options.dry_run,
    }
}

async fn call_install(
    target: &Target,
    host: &str,
    request: InstallRequest,
    observer: &dyn Observer,
) -> (Result<InstallReport, AgentError>, Duration) {
    let started = Instant::now();
    observer.phase(host, if request.dry_run { "planning" } else { "installing" });
    let outcome = target.call::<InstallReport>(&Request::InstallK3s(request), &mut |m| observer.message(host, m)).await;
    (outcome, started.elapsed())
}

fn record(
    run: &mut Run<'_>,
    host: &str,
    outcome: Result<InstallReport, AgentError>,
    elapsed: Duration,
) -> Result<(), String> {
    let dry_run = run.options.dry_run;
    let node = run.node(host);
    node.elapsed += elapsed;
    match outcome {
        Ok(report) => {
            let changed = node.binary_uploaded || report.changes.iter().any(|c| c.action != FileAction::Unchanged);
            node.state = match (dry_run, report.restarted, changed) {
                (true, restart, changed) if restart || changed => NodeState::WouldChange,
                (true, _, _) => NodeState::Unchanged,
                (false, true, _) => NodeState::Restarted,
                (false, false, true) => NodeState::Changed,
                (false, false, false) => NodeState::Unchanged,
            };
            node.version = Some(report.version);
            node.changes = report.changes;
            Ok(())
        }
        Err(e) => {
            node.state = NodeState::Failed;
            node.error = Some(e.to_string());
            Err(e.to_string())
        }
    }
}

async fn wait_ready(run: &mut Run<'_>, first: &Target) -> Result<String, Stop> {
    let deadline = Instant::now() + run.options.ready_timeout;
    let wanted: Vec<String> = run.cluster.hosts.iter().map(|h| h.name.clone()).collect();
    loop {
        let answer = first.call::<NodesAnswer>(&Request::Nodes, &mut |_| {}).await;
        let not_ready: Vec<String> = match &answer {
            Ok(a) => wanted.iter().filter(|w| !a.nodes.iter().any(|n| &n.name == *w && n.ready)).cloned().collect(),
            Err(_) => wanted.clone(),
        };
        if not_ready.is_empty() {
            return Ok(format!("{} nodes Ready", wanted.len()));
        }
        if Instant::now() >= deadline {
            let timeout = run.options.ready_timeout;
            for host in &not_ready {
                let node = run.node(host);
                if node.state != NodeState::Failed {
                    node.state = NodeState::Failed;
                    node.error = Some(format!("not Ready after {timeout:?}"));
                }
            }
            let why = match answer {
                Err(e) => format!("; the first server could not list nodes: {e}"),
                Ok(_) => String::new(),
            };
            return Err(Stop(format!(
                "not Ready after {:?}: {}{why}",
                run.options.ready_timeout,
                not_ready.join(", ")
            )));
        }
        // Listing nodes is cheap; a coarse poll would add up to its interval to every run.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn merge_kubeconfig(run: &mut Run<'_>, first: &Target) -> Result<String, Stop> {
    let answer =
        first.call::<KubeconfigAnswer>(&Request::Kubeconfig, &mut |_| {}).await.map_err(|e| Stop(e.to_string()))?;
    let (path, server) = kubeconfig_target(run.cluster, run.options.kubeconfig.clone());
    kubeconfig::merge_into_file(&path, answer.kubeconfig.expose(), &run.cluster.name, &server)
        .map_err(|e| Stop(e.to_string()))?;
    let message = format!("context {} in {} ({server})", run.cluster.name, path.display());
    run.result.kubeconfig = Some(path);
    Ok(message)
}

/// Where the kubeconfig goes and which API address it names.
pub fn kubeconfig_target(cluster: &ClusterFile, path: Option<PathBuf>) -> (PathBuf, String) {
    let first = cluster.servers().next().expect("validated: at least one server");
    let server = match &cluster.k3s.api_endpoint {
        Some(endpoint) if endpoint.contains(':') && endpoint.parse::<std::net::Ipv6Addr>().is_err() => {
            format!("https://{endpoint}")
        }
        Some(endpoint) => format!("https://{endpoint}:6443"),
        None => node_config::join_url(first),
    };
    (path.unwrap_or_else(kubeconfig::default_path), server)
}
