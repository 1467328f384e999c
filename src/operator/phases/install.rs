//! `install`: k3s onto every host, as one composite phase so that the work overlaps where it can
//! while the documented order holds: the first server initialises the cluster and hands out the
//! token; further servers join one at a time (etcd membership changes must not overlap); agents
//! join in parallel. Meanwhile uploads run: the first server installs while the others upload,
//! and each agent starts as soon as its own upload is done and every server is up.
//!
//! It reports its parts as phases of their own: upload, first server, token, servers, agents.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::{self, StreamExt};

use super::artifacts::Release;
use super::preflight::OwnAddresses;
use crate::artifacts::ReleaseFile;
use crate::cluster::{ClusterFile, Host};
use crate::host::k3s::layout::{K3S_BIN, NODE_PASSWORD_FILE};
use crate::operator::engine::{Change, HostError, HostState, Phase, PhaseResult, PhaseRun, PhaseState, RunContext};
use crate::operator::link::{Link, LinkError};
use crate::operator::node_config::{self, Position};
use crate::operator::payload::Payload;
use crate::operator::progress::Observer;
use crate::protocol::files::FileDigest;
use crate::protocol::k3s::{
    DeleteNodes, FileAction, InstallReport, InstallRequest, ListNodes, ReadToken, ServiceAction,
};
use crate::protocol::node::Role;
use crate::protocol::Secret;

pub struct Install {
    pub ready_timeout: Duration,
}

/// The join token, once read from the first server.
pub struct JoinToken(pub Secret);

/// What one host's part of the install did.
struct HostOutcome {
    host: String,
    /// Whether the binary was (or would be) uploaded; Err when the upload failed.
    upload: Result<bool, LinkError>,
    install: Option<(Result<InstallReport, LinkError>, Duration)>,
}

/// What the server chain did, recorded into the run once every chain has finished.
#[derive(Default)]
struct ServerChain {
    hosts: Vec<HostOutcome>,
    upload_time: Duration,
    token: Option<Secret>,
    token_error: Option<String>,
}

#[async_trait]
impl Phase for Install {
    fn name(&self) -> &'static str {
        "install"
    }

    fn applies(&self, _: &RunContext) -> bool {
        true
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        // It plans: every host shows what it would write, link, enable and restart.
        None
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let Some(Release(binary)) = run.slots.get::<Release>() else {
            return PhaseRun::Failed("no verified k3s release (the artifacts phase did not run)".into());
        };
        let binary = binary.clone();
        let cluster = run.cluster.clone();
        let own = run.slots.get::<OwnAddresses>().cloned().unwrap_or_default();
        let dry_run = run.options.dry_run;
        let request = |host: &Host, token: Option<&Secret>| InstallRequest {
            role: host.role,
            node_name: host.name.clone(),
            binary_sha256: binary.sha256.clone(),
            config_yaml: Secret::new(node_config::config_yaml(
                &cluster,
                host,
                own.0.get(&host.name).map(String::as_str),
            )),
            env: node_config::env(&cluster, host, token),
            registries_yaml: node_config::registries_yaml(&cluster),
            ready_timeout_secs: self.ready_timeout.as_secs(),
            dry_run,
        };
        // Owned per host, so that the concurrent chains below borrow nothing of the run.
        let jobs: Vec<(Host, Link)> = run.active().map(|(m, link)| (m.host.clone(), link.clone())).collect();
        let position = |h: &Host| node_config::position(&cluster, h);
        let Some(first) = jobs.iter().find(|(h, _)| position(h) == Position::FirstServer).cloned() else {
            return PhaseRun::Failed("the first server is not among the hosts of this run".into());
        };
        let joining: Vec<(Host, Link)> =
            jobs.iter().filter(|(h, _)| position(h) == Position::JoiningServer).cloned().collect();
        let agents: Vec<(Host, Link)> = jobs.iter().filter(|(h, _)| h.role == Role::Agent).cloned().collect();
        let (server_count, agent_count) = (1 + joining.len(), agents.len());
        let payload = Payload::new(binary.path.clone(), binary.sha256.clone(), binary.size);
        let observer = run.observer.clone();
        // Agents start as soon as their own upload is done and every server is up: the token comes
        // through this channel (None while the servers are being installed).
        let (servers_done, servers_ready) = tokio::sync::watch::channel::<Option<Result<Secret, ()>>>(None);

        let server_chain = async {
            let mut out = ServerChain::default();
            let started = Instant::now();
            let chain = async {
                let (first_host, link) = &first;
                let upload = upload_binary(link, &binary, &payload, dry_run, observer.as_ref()).await;
                out.upload_time = started.elapsed();
                if upload.is_err() {
                    out.hosts.push(HostOutcome { host: first_host.name.clone(), upload, install: None });
                    return;
                }
                let install = call_install(link, request(first_host, None), observer.as_ref()).await;
                let ok = install.0.is_ok();
                out.hosts.push(HostOutcome { host: first_host.name.clone(), upload, install: Some(install) });
                if !ok {
                    return;
                }
                let token = match link.call(&ReadToken {}).send().await {
                    Ok(answer) => answer.token,
                    // A dry run on a fresh first server: there is no token yet, nor secret to show.
                    Err(_) if dry_run => Secret::new("<the first server's token>"),
                    Err(e) => {
                        out.token_error = Some(format!("cannot read the join token from {}: {e}", first_host.name));
                        return;
                    }
                };
                for (host, link) in &joining {
                    let upload = upload_binary(link, &binary, &payload, dry_run, observer.as_ref()).await;
                    if upload.is_err() {
                        out.hosts.push(HostOutcome { host: host.name.clone(), upload, install: None });
                        return;
                    }
                    forget_stale_node(&first.1, link, &host.name, dry_run, observer.as_ref()).await;
                    let install = call_install(link, request(host, Some(&token)), observer.as_ref()).await;
                    let ok = install.0.is_ok();
                    out.hosts.push(HostOutcome { host: host.name.clone(), upload, install: Some(install) });
                    if !ok {
                        return;
                    }
                }
                out.token = Some(token);
            };
            chain.await;
            let _ = servers_done.send(Some(out.token.clone().ok_or(())));
            out
        };
        let first_link = first.1.clone();
        // The Nodes the first server knows, asked once for all agents: a fresh cluster then costs
        // one listing, not a deletion attempt per joining agent.
        let known_nodes: tokio::sync::OnceCell<Option<Vec<String>>> = tokio::sync::OnceCell::new();
        let agent_chains = stream::iter(agents.into_iter().map(|(host, link)| {
            let (binary, payload, observer, request) = (&binary, &payload, observer.clone(), &request);
            let (first_link, known_nodes) = (&first_link, &known_nodes);
            let mut servers_ready = servers_ready.clone();
            async move {
                let upload = upload_binary(&link, binary, payload, dry_run, observer.as_ref()).await;
                if upload.is_err() {
                    return HostOutcome { host: host.name.clone(), upload, install: None };
                }
                observer.phase(&host.name, "waiting for the servers");
                let token = match servers_ready.wait_for(Option::is_some).await.map(|t| t.clone()) {
                    Ok(Some(Ok(token))) => token,
                    _ => return HostOutcome { host: host.name.clone(), upload, install: None },
                };
                let known = known_nodes
                    .get_or_init(|| async {
                        let answer = first_link.call(&ListNodes {}).send().await;
                        answer.ok().map(|a| a.nodes.into_iter().map(|n| n.name).collect())
                    })
                    .await;
                // Unknown to the server (and the listing worked): there is no stale Node to forget.
                if known.as_ref().is_none_or(|names| names.contains(&host.name)) {
                    forget_stale_node(first_link, &link, &host.name, dry_run, observer.as_ref()).await;
                }
                let install = call_install(&link, request(&host, Some(&token)), observer.as_ref()).await;
                HostOutcome { host: host.name.clone(), upload, install: Some(install) }
            }
        }))
        .buffer_unordered(run.options.concurrency.max(1))
        .collect::<Vec<_>>();
        let (servers, agent_outcomes) = tokio::join!(server_chain, agent_chains);
        if let Some(token) = &servers.token {
            run.slots.put(JoinToken(token.clone()));
        }
        let attempted: Vec<String> = servers
            .hosts
            .iter()
            .chain(&agent_outcomes)
            .filter(|o| o.install.is_some())
            .map(|o| o.host.clone())
            .collect();
        let uploaded: Vec<String> =
            agent_outcomes.iter().filter(|o| matches!(o.upload, Ok(true))).map(|o| o.host.clone()).collect();
        let outcome = record(run, servers, agent_outcomes, server_count, agent_count, binary.version.clone());
        // Hosts the install never got to (a server before them failed) were not converged: they
        // are left out, saying why, not reported as unchanged.
        for (host, _) in &jobs {
            let result = run.host(&host.name);
            if result.in_play() && !attempted.contains(&host.name) {
                let upload = if uploaded.contains(&host.name) { " (k3s was uploaded)" } else { "" };
                result.leave_out(HostError {
                    kind: "not-reached".into(),
                    message: format!("not installed: the servers did not come up{upload}"),
                    retryable: true,
                });
            }
        }
        outcome
    }
}

/// Turns what the chains did into per-host results and the five parts' results.
fn record(
    run: &mut RunContext,
    servers: ServerChain,
    agents: Vec<HostOutcome>,
    server_count: usize,
    agent_count: usize,
    version: String,
) -> PhaseRun {
    let dry_run = run.options.dry_run;
    let mut parts = Vec::new();

    // upload
    let mut upload_errors = Vec::new();
    let mut uploaded = 0;
    for outcome in servers.hosts.iter().chain(&agents) {
        match &outcome.upload {
            Ok(true) => uploaded += 1,
            Ok(false) => {}
            Err(e) => {
                upload_errors.push(format!("{}: {}", outcome.host, e.kind()));
                run.host(&outcome.host).fail(HostError::from(e));
            }
        }
    }
    let verb = if dry_run { "would upload" } else { "uploaded" };
    parts.push(part(
        "upload",
        dry_run,
        if upload_errors.is_empty() {
            Ok(format!("{verb} k3s to {}, alongside the server installs", crate::words::count(uploaded, "host")))
        } else {
            Err(upload_errors.join("; "))
        },
        servers.upload_time,
    ));

    let mut installs = servers.hosts.iter().filter_map(|o| o.install.as_ref().map(|i| (o, i)));
    let uploads_ok = parts[0].state != PhaseState::Failed;

    // first server
    let Some((first, (outcome, elapsed))) = installs.next() else {
        return finish(parts, &["first server", "token", "servers", "agents"]);
    };
    let first_state = record_host(run, first, outcome, *elapsed, &version);
    parts.push(part(
        "first server",
        dry_run,
        first_state.map(|s| format!("{} ({})", first.host, s.as_str())),
        *elapsed,
    ));
    if parts.last().is_some_and(|p| p.state == PhaseState::Failed) {
        return finish(parts, &["token", "servers", "agents"]);
    }

    // token
    parts.push(part(
        "token",
        dry_run,
        match &servers.token_error {
            Some(e) => Err(e.clone()),
            None => Ok(format!("read from {}", first.host)),
        },
        Duration::ZERO,
    ));
    if servers.token_error.is_some() {
        return finish(parts, &["servers", "agents"]);
    }

    // further servers
    let (mut failures, mut joined, mut time) = (Vec::new(), 0, Duration::ZERO);
    for (outcome, (install, elapsed)) in installs {
        time += *elapsed;
        match record_host(run, outcome, install, *elapsed, &version) {
            Ok(HostState::Installed) => joined += 1,
            Ok(_) => {}
            Err(e) => failures.push(e),
        }
    }
    let reached = servers.hosts.len();
    let servers_result = if !failures.is_empty() {
        Err(failures.join("; "))
    } else if reached < server_count && uploads_ok {
        Err("a server could not be reached by the chain".into())
    } else {
        Ok(joined_message(server_count - 1, joined, dry_run))
    };
    parts.push(part("servers", dry_run, servers_result, time));
    if parts.iter().any(|p| p.state == PhaseState::Failed) {
        return finish(parts, &["agents"]);
    }

    // agents
    let (mut failures, mut joined, mut time) = (Vec::new(), 0, Duration::ZERO);
    for outcome in &agents {
        let Some((install, elapsed)) = &outcome.install else { continue };
        time = time.max(*elapsed);
        match record_host(run, outcome, install, *elapsed, &version) {
            Ok(HostState::Installed) => joined += 1,
            Ok(_) => {}
            Err(e) => failures.push(e),
        }
    }
    parts.push(part(
        "agents",
        dry_run,
        if failures.is_empty() { Ok(joined_message(agent_count, joined, dry_run)) } else { Err(failures.join("; ")) },
        time,
    ));
    PhaseRun::Parts(parts)
}

/// "2 converged", "2 converged, 1 joined", or in a dry run "2 planned".
fn joined_message(total: usize, joined: usize, dry_run: bool) -> String {
    let hosts = |n: usize| crate::words::count(n, "host");
    match (dry_run, joined) {
        (true, _) => format!("{} planned", hosts(total)),
        (false, 0) => format!("{} converged", hosts(total)),
        (false, j) => format!("{} converged, {j} joined in this run", hosts(total)),
    }
}

fn part(name: &'static str, dry_run: bool, outcome: Result<String, String>, elapsed: Duration) -> PhaseResult {
    match outcome {
        Ok(message) => {
            PhaseResult::new(name, if dry_run { PhaseState::Planned } else { PhaseState::Done }, message, elapsed)
        }
        Err(message) => PhaseResult::new(name, PhaseState::Failed, message, elapsed),
    }
}

/// The parts not reached, after a failed one.
fn finish(mut parts: Vec<PhaseResult>, not_run: &[&'static str]) -> PhaseRun {
    for name in not_run {
        parts.push(PhaseResult::new(name, PhaseState::NotRun, "an earlier part failed", Duration::ZERO));
    }
    PhaseRun::Parts(parts)
}

/// One host's install into its result; its state, or the error's words.
fn record_host(
    run: &mut RunContext,
    outcome: &HostOutcome,
    install: &Result<InstallReport, LinkError>,
    elapsed: Duration,
    version: &str,
) -> Result<HostState, String> {
    let dry_run = run.options.dry_run;
    let uploaded = matches!(outcome.upload, Ok(true));
    let result = run.host(&outcome.host);
    result.elapsed += elapsed;
    match install {
        Ok(report) => {
            let changed = uploaded || report.changes.iter().any(|c| c.action != FileAction::Unchanged);
            result.raise(match (dry_run, report.service_action, changed) {
                (true, ServiceAction::None, false) => HostState::Unchanged,
                (true, _, _) => HostState::WouldChange,
                (false, ServiceAction::Start, _) => HostState::Installed,
                (false, ServiceAction::Restart, _) => HostState::Restarted,
                (false, ServiceAction::None, true) => HostState::Changed,
                (false, ServiceAction::None, false) => HostState::Unchanged,
            });
            result.version = Some(if report.version.is_empty() { version.to_string() } else { report.version.clone() });
            result.changes.extend(report.changes.iter().map(Change::from));
            if uploaded && dry_run {
                // The binary's line says what the upload would bring.
                if let Some(c) = result.changes.iter_mut().find(|c| c.subject == K3S_BIN) {
                    c.detail = Some(format!("k3s {version} would be uploaded"));
                }
            }
            match report.service_action {
                ServiceAction::None => {}
                action => {
                    let verb = match (dry_run, action) {
                        (true, ServiceAction::Start) => "would start",
                        (true, _) => "would restart",
                        (false, ServiceAction::Start) => "started",
                        (false, _) => "restarted",
                    };
                    result.notes.push(format!("{} {verb}: {}", report.service, report.reasons.join("; ")));
                }
            }
            result.notes.extend(report.foreign_dropins.iter().map(|d| format!("warning: {d}")));
            Ok(result.state)
        }
        // The phase's line names the host and the kind; the host's error (with the journal)
        // is shown once, with the host.
        Err(e) => {
            result.fail(HostError::from(e));
            Err(format!("{}: {}", outcome.host, e.kind()))
        }
    }
}

/// A host that lost its node password (/etc/rancher/node) while its Node object remains would be
/// refused by the server ("Node password rejected", contract section 6): its stale Node (and with
/// it the password secret) is deleted through the first server before it joins. Best effort: when
/// this cannot be done, the join's own diagnosis names the cause and the fix.
async fn forget_stale_node(first: &Link, link: &Link, name: &str, dry_run: bool, observer: &dyn Observer) {
    let has_password = link.call(&FileDigest { path: NODE_PASSWORD_FILE.into() }).send().await;
    if !matches!(has_password, Ok(ref d) if d.sha256.is_none()) {
        return;
    }
    let request = DeleteNodes { names: vec![name.to_string()], dry_run };
    if let Ok(answer) = first.call(&request).send().await {
        if !answer.deleted.is_empty() {
            let verb = if dry_run { "would delete" } else { "deleted" };
            observer.message(name, &format!("{verb} the stale Node {name}: its node password was lost"));
        }
    }
}

/// Uploads the binary where the host's differs; Ok(true) when it was (or would be) uploaded.
pub(crate) async fn upload_binary(
    link: &Link,
    binary: &ReleaseFile,
    payload: &Payload,
    dry_run: bool,
    observer: &dyn Observer,
) -> Result<bool, LinkError> {
    let digest = link.call(&FileDigest { path: K3S_BIN.into() }).send().await?;
    if digest.sha256.as_deref() == Some(binary.sha256.as_str()) {
        return Ok(false);
    }
    if !dry_run {
        observer.phase(link.host(), &format!("uploading k3s {}", binary.version));
        payload.install(link, K3S_BIN, 0o755).await?;
    }
    Ok(true)
}

pub(crate) async fn call_install(
    link: &Link,
    request: InstallRequest,
    observer: &dyn Observer,
) -> (Result<InstallReport, LinkError>, Duration) {
    let started = Instant::now();
    let host = link.host().to_string();
    observer.phase(&host, if request.dry_run { "planning" } else { "installing" });
    let outcome = link.call(&request).progress(|m| observer.message(&host, m)).send().await;
    (outcome, started.elapsed())
}

/// The cluster's first server (by the cluster file's order of servers).
pub fn first_server(cluster: &ClusterFile) -> &crate::cluster::Host {
    cluster.servers().next().expect("validated: at least one server")
}
