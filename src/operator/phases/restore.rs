//! The phases of `k3node restore`, in the order `actions::restore` runs them:
//!
//! | phase | what |
//! |---|---|
//! | archive | the archive read in full where it is (this machine, or the server holding it): every entry, the database's own check; on the target itself, only its sha256 against its sidecar and its manifest, since `check` reads all of it there before anything stops (and `target` does before it installs k3s on a fresh host); it must be of this cluster, at a k3s version the run can install |
//! | target | a fresh host (disaster recovery) gets k3s at the snapshot's version first, as `up` installs a first server |
//! | push | the archive streamed to the target (from here, or from the server that has it), checked there against its sha256 |
//! | check | the target's restore up to the stop: the archive read in full there and staged beside k3s's files while k3s runs (on another host than the snapshot's, with its own config.yaml), everything the restore would refuse, refused (the staging removed); the staging kept for `restore`. A dry run reads and checks, staging nothing |
//! | stop | the other hosts' k3s stopped (agents first), so that nothing writes to a datastore that is being replaced |
//! | restore | the target's restore: what `check` staged used as it is (the archive is not read again; staged again first only when the target finds it is not this archive's), k3s stopped, its data moved aside and the staged data in, etcd's cluster reset, k3s started, the node Ready |
//! | rejoin | after an etcd restore, the other servers' `server/db` moved aside so that they join the restored cluster as new members |
//! | forget nodes | the lost server's Node (the snapshot's node, when it is neither the target nor a host of the cluster file) deleted |
//!
//! Then `install`, `ready` and `kubeconfig` as in `up`: every other host converged to the cluster
//! file (stopped services started, agents' env files pointing at the restored server with its
//! token, which is the snapshot's), every node Ready, the kubeconfig merged.
//!
//! Invariants: nothing on any host changes before `archive` and `check` have passed (a refused
//! archive is reported in [`Findings::bad_archive`], the command exits 2), but a fresh target's
//! k3s, installed once all of the archive was read, and the check's staging, beside k3s's
//! files; data is only ever
//! moved aside; a failed or interrupted restore says how to finish it (the same command again)
//! or undo it (`restore --rollback`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use super::artifacts::Release;
use super::install::{call_install, first_server, upload_binary};
use super::preflight::OwnAddresses;
use super::snapshot::{host_path, verify_local, ArchiveLine, LOCAL};
use crate::cluster::ClusterFile;
use crate::host::k3s::{unit_path, SNAPSHOT_DIR};
use crate::host::snapshot::archive::EXTENSION;
use crate::operator::engine::{Change, ChangeAction, HostError, HostState, Phase, PhaseRun, RunContext};
use crate::operator::link::{Link, LinkError};
use crate::operator::node_config;
use crate::operator::payload::Payload;
use crate::protocol::files::{Compression, FileDigest, SendFile};
use crate::protocol::k3s::{DeleteNodes, InstallRequest};
use crate::protocol::node::Role;
use crate::protocol::snapshot::{
    Datastore, ManifestSummary, PeerStep, ReceiveSnapshot, RestorePeer, RestoreReport, RestoreSnapshot, RollbackReport,
    RollbackRestore, StepTime, VerifySnapshot,
};
use crate::protocol::{ErrorKind, Secret};

/// Where the archive to restore is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file on this machine (a pulled snapshot).
    Local(PathBuf),
    /// An archive in a server's snapshot directory (`HOST:NAME`), or a path on it.
    OnHost { host: String, name: String },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Local(path) => write!(f, "{}", path.display()),
            Source::OnHost { host, name } => write!(f, "{host}:{name}"),
        }
    }
}

/// What the restore is asked to do.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: Source,
    /// The server restored onto (a host of the cluster file).
    pub target: String,
    pub allow_version_mismatch: bool,
    pub ready_timeout: Duration,
}

/// What the restore found and did, for the command (JSON and exit status).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreFindings {
    /// The archive as verified before anything changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveLine>,
    /// The archive (or what it asks for) was refused before anything changed: bad input.
    pub bad_archive: bool,
    /// The target had no k3s: it was installed first (disaster recovery).
    pub fresh_target: bool,
    /// The target's restore, as done (or, in a dry run, as planned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreReport>,
    /// The rollback's report (`restore --rollback`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackReport>,
    /// What to do when the restore stopped half-way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance: Option<String>,
}

pub type Findings = Arc<Mutex<RestoreFindings>>;

fn findings(f: &Findings) -> std::sync::MutexGuard<'_, RestoreFindings> {
    f.lock().unwrap_or_else(|e| e.into_inner())
}

/// The verified archive, for the phases after `archive`.
#[derive(Debug, Clone)]
pub struct Archive {
    pub name: String,
    pub sha256: String,
    pub size: u64,
    pub manifest: ManifestSummary,
    /// Its entries and database were read and checked (false: its sha256 and manifest only, on
    /// the target, whose check reads all of it).
    pub read_in_full: bool,
}

impl Archive {
    /// Where the archive is on the target once pushed.
    pub fn target_path(&self) -> String {
        format!("{SNAPSHOT_DIR}/{}{EXTENSION}", self.name)
    }
}

/// Whether the target had no k3s before this run.
struct Fresh(bool);

fn link_of(run: &RunContext, host: &str) -> Option<Link> {
    run.fleet.member(host).and_then(|m| m.link()).cloned()
}

/// Kinds that mean the archive itself (or what it asks for) is refused, not that a host failed.
fn refuses_archive(e: &LinkError) -> bool {
    matches!(e.host_kind(), Some(ErrorKind::BadRequest | ErrorKind::ChecksumMismatch | ErrorKind::NotInstalled))
}

/// `archive`: the archive read in full where it is, and checked against the cluster file.
pub struct CheckArchive {
    pub settings: Settings,
    pub findings: Findings,
}

#[async_trait]
impl Phase for CheckArchive {
    fn name(&self) -> &'static str {
        "archive"
    }

    fn applies(&self, _: &RunContext) -> bool {
        true
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        None
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        // On the target itself, the check phase reads all of it there before anything stops
        // (and the target phase before it installs k3s on a fresh host): here its sha256 against
        // its sidecar and its manifest are enough to plan the run.
        let sum_only = matches!(&self.settings.source, Source::OnHost { host, .. } if *host == self.settings.target);
        let verified = match &self.settings.source {
            Source::Local(path) => verify_local(path).await.map(|v| (LOCAL.to_string(), v)),
            Source::OnHost { host, name } => {
                let Some(link) = link_of(run, host) else {
                    findings(&self.findings).bad_archive = true;
                    return PhaseRun::Failed(format!("{host} is not connected: it holds the archive {name}"));
                };
                run.observer
                    .phase(host, if sum_only { "checking the archive's sha256" } else { "verifying the archive" });
                link.call(&VerifySnapshot { path: host_path(name), sum_only }).send().await.map(|v| (host.clone(), v))
            }
        };
        let (host, verified) = match verified {
            Ok(v) => v,
            Err(e) => {
                findings(&self.findings).bad_archive = refuses_archive(&e);
                return PhaseRun::Failed(format!("{}: {e}", self.settings.source));
            }
        };
        let read_in_full = !sum_only;
        let state = if read_in_full { "verified" } else { "sha256-checked" };
        findings(&self.findings).archive = Some(ArchiveLine::of_verified(&host, &verified, state));
        let manifest = verified.manifest.clone();
        let refuse = |why: String| {
            findings(&self.findings).bad_archive = true;
            PhaseRun::Failed(why)
        };
        if manifest.cluster != run.cluster.name {
            return refuse(format!(
                "{} is a snapshot of cluster {:?}, and {} describes cluster {:?}: restore it with that cluster's file",
                self.settings.source,
                manifest.cluster,
                run.cluster.source.display(),
                run.cluster.name
            ));
        }
        if let Err(why) = target_fits(&run.cluster, &self.settings.target, &manifest) {
            return refuse(why);
        }
        let version = match &run.cluster.k3s.version {
            Some(pinned) if *pinned != manifest.k3s_version && !self.settings.allow_version_mismatch => {
                return refuse(format!(
                    "the snapshot was taken with k3s {}, and the cluster file pins k3s {pinned}: set spec.k3s.version to {} to restore it as it was, or pass --allow-version-mismatch to restore it onto k3s {pinned} (a datastore may not start on another version)",
                    manifest.k3s_version, manifest.k3s_version
                ));
            }
            Some(pinned) => pinned.clone(),
            None => manifest.k3s_version.clone(),
        };
        // The rest of the run installs and converges at that version (the artifacts phase reads it here).
        let mut cluster = (*run.cluster).clone();
        cluster.k3s.version = Some(version.clone());
        cluster.k3s.channel = None;
        run.cluster = Arc::new(cluster);
        let message = format!(
            "{} {} ({}): {} datastore of node {}, k3s {}, taken {}; {}",
            verified.name,
            if read_in_full { "read in full" } else { "sha256 checked" },
            if host == LOCAL { "here".to_string() } else { format!("on {host}") },
            manifest.datastore,
            manifest.node,
            manifest.k3s_version,
            manifest.created,
            verified.database_check
        );
        run.slots.put(Archive {
            name: verified.name,
            sha256: verified.sha256,
            size: verified.size,
            manifest,
            read_in_full,
        });
        PhaseRun::Done(message)
    }
}

/// The target must be the server that starts the cluster: the only server with SQLite, the first
/// server (cluster-init) with etcd.
fn target_fits(cluster: &ClusterFile, target: &str, manifest: &ManifestSummary) -> Result<(), String> {
    let first = first_server(cluster);
    let servers = cluster.servers().count();
    match manifest.datastore {
        Datastore::Sqlite if servers > 1 => Err(format!(
            "the snapshot holds a SQLite datastore (a single-server cluster), and the cluster file has {servers} servers: restore it into a cluster file with one server"
        )),
        _ if first.name != target => Err(format!(
            "a snapshot is restored onto the first server, the one that starts the cluster ({}); to restore onto {target}, list it first among the servers of the cluster file",
            first.name
        )),
        _ => Ok(()),
    }
}

fn archive(run: &RunContext) -> Option<Archive> {
    run.slots.get::<Archive>().cloned()
}

/// This host's own config.yaml when the restore runs k3s on another host than the snapshot's
/// (or on a fresh one): the lost host's identity (node name, node-ip) must not come back there.
fn own_config(run: &RunContext, archive: &Archive, target: &str) -> Option<Secret> {
    let fresh = run.slots.get::<Fresh>().is_some_and(|f| f.0);
    if archive.manifest.node == target && !fresh {
        return None;
    }
    let host = run.cluster.host(target)?;
    let own = run.slots.get::<OwnAddresses>().and_then(|o| o.0.get(target).cloned());
    Some(Secret::new(node_config::config_yaml(&run.cluster, host, own.as_deref())))
}

/// What the target is asked: to check (a dry run), to check and stage, or to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    Check,
    Stage,
    Restore,
}

fn restore_request(run: &RunContext, settings: &Settings, archive: &Archive, ask: Ask) -> RestoreSnapshot {
    RestoreSnapshot {
        path: archive.target_path(),
        node_name: settings.target.clone(),
        allow_version_mismatch: settings.allow_version_mismatch,
        ready_timeout_secs: settings.ready_timeout.as_secs(),
        dry_run: ask == Ask::Check,
        config_yaml: own_config(run, archive, &settings.target),
        stage_only: ask == Ask::Stage,
        sha256: Some(archive.sha256.clone()),
    }
}

/// How long the check's staging took on the target (k3s running), for the restore's report.
struct CheckStaging(Vec<StepTime>);

/// `target`: a host without k3s gets it first, at the version of the run, as a first server.
pub struct PrepareTarget {
    pub settings: Settings,
    pub findings: Findings,
}

#[async_trait]
impl Phase for PrepareTarget {
    fn name(&self) -> &'static str {
        "target"
    }

    fn applies(&self, _: &RunContext) -> bool {
        true
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        None
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let target = self.settings.target.clone();
        let Some(link) = link_of(run, &target) else { return PhaseRun::Failed(format!("{target} is not connected")) };
        let unit = unit_path("k3s").display().to_string();
        let installed = match link.call(&FileDigest { path: unit }).send().await {
            Ok(d) => d.sha256.is_some(),
            Err(e) => {
                run.host(&target).fail(HostError::from(&e));
                return PhaseRun::Failed(e.to_string());
            }
        };
        run.slots.put(Fresh(!installed));
        if installed {
            return PhaseRun::Done(format!("k3s is installed on {target}"));
        }
        findings(&self.findings).fresh_target = true;
        if let Some(archive) = archive(run).filter(|a| !a.read_in_full) {
            // Nothing is installed on the strength of a sha256 alone: all of the archive first.
            run.observer.phase(&target, "verifying the archive");
            let request = VerifySnapshot { path: archive.target_path(), sum_only: false };
            if let Err(e) = link.call(&request).send().await {
                findings(&self.findings).bad_archive = refuses_archive(&e);
                run.host(&target).fail(HostError::from(&e));
                return PhaseRun::Failed(format!("{}: {e}", self.settings.source));
            }
            if let Some(line) = findings(&self.findings).archive.as_mut() {
                line.state = "verified".into();
            }
        }
        let Some(Release(binary)) = run.slots.get::<Release>() else {
            return PhaseRun::Failed("no verified k3s release (the artifacts phase did not run)".into());
        };
        let binary = binary.clone();
        let dry_run = run.options.dry_run;
        if dry_run {
            return PhaseRun::Done(format!(
                "{target} has no k3s: would install k3s {} there first (a first server), then restore onto it",
                binary.version
            ));
        }
        let Some(host) = run.cluster.host(&target).cloned() else {
            return PhaseRun::Failed(format!("{target} is not in the cluster file"));
        };
        let own = run.slots.get::<OwnAddresses>().and_then(|o| o.0.get(&target).cloned());
        let request = InstallRequest {
            role: Role::Server,
            node_name: target.clone(),
            binary_sha256: binary.sha256.clone(),
            config_yaml: Secret::new(node_config::config_yaml(&run.cluster, &host, own.as_deref())),
            env: Vec::new(),
            registries_yaml: node_config::registries_yaml(&run.cluster),
            ready_timeout_secs: self.settings.ready_timeout.as_secs(),
            dry_run: false,
        };
        let payload = Payload::new(binary.path.clone(), binary.sha256.clone(), binary.size);
        let observer = run.observer.clone();
        if let Err(e) = upload_binary(&link, &binary, &payload, false, observer.as_ref()).await {
            run.host(&target).fail(HostError::from(&e));
            return PhaseRun::Failed(format!("{target}: uploading k3s: {e}"));
        }
        let (outcome, elapsed) = call_install(&link, request, observer.as_ref()).await;
        let result = run.host(&target);
        result.elapsed += elapsed;
        match outcome {
            Ok(report) => {
                result.state = HostState::Installed;
                result.version = Some(report.version.clone());
                result.changes.extend(report.changes.iter().map(Change::from));
                result.notes.push(format!(
                    "k3s {} installed on this fresh host before the restore (its first, empty cluster is moved aside by the restore)",
                    report.version
                ));
                PhaseRun::Done(format!("k3s {} installed on {target} (a fresh host)", report.version))
            }
            Err(e) => {
                result.fail(HostError::from(&e));
                PhaseRun::Failed(format!("installing k3s on the fresh host {target}: {}", e.kind()))
            }
        }
    }
}

/// `push`: the archive onto the target, unless it is there already.
pub struct Push {
    pub settings: Settings,
}

#[async_trait]
impl Phase for Push {
    fn name(&self) -> &'static str {
        "push"
    }

    fn applies(&self, _: &RunContext) -> bool {
        true
    }

    fn dry_run(&self, run: &RunContext) -> Option<String> {
        let archive = archive(run)?;
        Some(match &self.settings.source {
            Source::OnHost { host, .. } if *host == self.settings.target => {
                format!("{} is on {host} already", archive.name)
            }
            source => format!(
                "would push {} ({} bytes) from {source} to {}",
                archive.name, archive.size, self.settings.target
            ),
        })
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let Some(archive) = archive(run) else { return PhaseRun::Failed("no verified archive".into()) };
        let target = &self.settings.target;
        let Some(link) = link_of(run, target) else { return PhaseRun::Failed(format!("{target} is not connected")) };
        if let Source::OnHost { host, name } = &self.settings.source {
            if host == target && host_path(name) == archive.target_path() {
                return PhaseRun::Done(format!("{} is on {target} already", archive.name));
            }
        }
        let there = link.call(&FileDigest { path: archive.target_path() }).send().await;
        if matches!(&there, Ok(d) if d.sha256.as_deref() == Some(archive.sha256.as_str())) {
            return PhaseRun::Done(format!("{} is on {target} already", archive.name));
        }
        let request = ReceiveSnapshot {
            name: archive.name.clone(),
            size: archive.size,
            sha256: archive.sha256.clone(),
            // The archive is zstd already: compressing it again would cost CPU for nothing.
            compression: Compression::None,
            dir: None,
        };
        run.observer.phase(target, &format!("receiving {}", archive.name));
        let pushed = match &self.settings.source {
            Source::Local(path) => match tokio::fs::File::open(path).await {
                Ok(mut file) => link
                    .call(&request)
                    .upload_verified(&mut file, archive.size, &archive.sha256)
                    .send()
                    .await
                    .map(|_| ()),
                Err(e) => {
                    return PhaseRun::Failed(format!("cannot read {}: {e}", path.display()));
                }
            },
            Source::OnHost { host, name } => {
                let Some(from) = link_of(run, host) else {
                    return PhaseRun::Failed(format!("{host} is not connected"));
                };
                relay(&from, &host_path(name), &archive.sha256, &link, &request).await
            }
        };
        match pushed {
            Ok(()) => PhaseRun::Done(format!(
                "{} ({} bytes) pushed to {target} and checked there",
                archive.name, archive.size
            )),
            Err(e) => {
                run.host(target).fail(HostError::from(&e));
                PhaseRun::Failed(format!("pushing {} to {target}: {e}", archive.name))
            }
        }
    }
}

/// Streams a file from one host to another through this machine, in memory-bounded frames.
/// Neither host hashes it on the way out and this side hashes it once: the download is checked
/// here against `sha256`, the upload by the target.
async fn relay(from: &Link, path: &str, sha256: &str, to: &Link, request: &ReceiveSnapshot) -> Result<(), LinkError> {
    let (mut writer, mut reader) = tokio::io::duplex(1 << 20);
    let download = async {
        let sent = from
            .call(&SendFile { path: path.to_string(), sha256: Some(sha256.to_string()) })
            .download(&mut writer)
            .send()
            .await;
        drop(writer);
        sent
    };
    let upload = to.call(request).upload_verified(&mut reader, request.size, sha256).send();
    let (sent, received) = tokio::join!(download, upload);
    // The sender's failure explains a cut upload best.
    sent?;
    received.map(|_| ())
}

/// `check`: the target's restore up to the stop (a real run stages the archive there, k3s running), so
/// that it refuses before anything stops.
pub struct Check {
    pub settings: Settings,
    pub findings: Findings,
}

#[async_trait]
impl Phase for Check {
    fn name(&self) -> &'static str {
        "check"
    }

    fn applies(&self, _: &RunContext) -> bool {
        true
    }

    fn dry_run(&self, run: &RunContext) -> Option<String> {
        // A fresh target has no k3s to check against yet (nor the archive, until the push).
        run.slots
            .get::<Fresh>()
            .filter(|f| f.0)
            .map(|_| "the target is fresh: its restore is checked once k3s is installed there".to_string())
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let Some(archive) = archive(run) else { return PhaseRun::Failed("no verified archive".into()) };
        let target = self.settings.target.clone();
        let Some(link) = link_of(run, &target) else { return PhaseRun::Failed(format!("{target} is not connected")) };
        if run.options.dry_run && !matches!(&self.settings.source, Source::OnHost { host, .. } if *host == target) {
            let there = link.call(&FileDigest { path: archive.target_path() }).send().await;
            if !matches!(&there, Ok(d) if d.sha256.as_deref() == Some(archive.sha256.as_str())) {
                return PhaseRun::Done(format!(
                    "the archive is not on {target} yet (a dry run pushes nothing): its restore there is checked at the real run"
                ));
            }
        }
        // A real run stages the archive in this same read, k3s still running, so that the
        // restore phase only stops k3s and swaps.
        let ask = if run.options.dry_run { Ask::Check } else { Ask::Stage };
        let request = restore_request(run, &self.settings, &archive, ask);
        let observer = run.observer.clone();
        observer.phase(&target, "checking the restore");
        match link.call(&request).progress(|m| observer.message(&target, m)).send().await {
            Ok(plan) => {
                let steps = plan.actions.join("; ");
                let staged = !plan.staging.is_empty();
                run.slots.put(CheckStaging(plan.staging.clone()));
                if run.options.dry_run {
                    let result = run.host(&target);
                    result.state = HostState::WouldChange;
                    result.changes.extend(plan.actions.iter().map(|a| Change {
                        subject: a.clone(),
                        action: ChangeAction::Done,
                        detail: None,
                    }));
                    findings(&self.findings).restore = Some(plan);
                }
                let what =
                    if staged { "verified and staged the archive (k3s running)" } else { "verified the archive" };
                PhaseRun::Done(format!("{target} {what} and would: {steps}"))
            }
            Err(e) => {
                findings(&self.findings).bad_archive = refuses_archive(&e);
                run.host(&target).fail(HostError::from(&e));
                PhaseRun::Failed(format!("{target} refuses the restore: {e}"))
            }
        }
    }
}

/// `stop`: every other host's k3s stopped (agents first) before the datastore is replaced.
pub struct StopPeers {
    pub settings: Settings,
}

#[async_trait]
impl Phase for StopPeers {
    fn name(&self) -> &'static str {
        "stop"
    }

    fn applies(&self, run: &RunContext) -> bool {
        run.active().any(|(m, _)| m.host.name != self.settings.target)
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        None
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let mut peers: Vec<(Role, usize, String, Link)> = run
            .active()
            .filter(|(m, _)| m.host.name != self.settings.target)
            .map(|(m, link)| (m.host.role, m.index, m.host.name.clone(), link.clone()))
            .collect();
        peers.sort_by_key(|(role, index, _, _)| (*role == Role::Server, *index));
        let dry_run = run.options.dry_run;
        peer_step(run, peers.into_iter().map(|(_, _, n, l)| (n, l)).collect(), PeerStep::Stop, dry_run).await
    }
}

/// Runs a peer step on each host in turn, recording what it did.
async fn peer_step(run: &mut RunContext, peers: Vec<(String, Link)>, step: PeerStep, dry_run: bool) -> PhaseRun {
    let observer = run.observer.clone();
    let (mut failures, mut done) = (Vec::new(), Vec::new());
    for (name, link) in peers {
        let request = RestorePeer { step, dry_run };
        let outcome = link.call(&request).progress(|m| observer.message(&name, m)).send().await;
        let result = run.host(&name);
        match outcome {
            Ok(report) => {
                if report.service.is_some() {
                    if result.state == HostState::Unchanged {
                        result.state = if dry_run { HostState::WouldChange } else { HostState::Changed };
                    }
                    done.push(name.clone());
                }
                result.changes.extend(report.actions.iter().map(|a| Change {
                    subject: a.clone(),
                    action: ChangeAction::Done,
                    detail: None,
                }));
                result.notes.extend(report.moved_aside.iter().map(|m| format!("{} moved aside to {}", m.from, m.to)));
            }
            Err(e) => {
                failures.push(format!("{name}: {}", e.kind()));
                result.fail(HostError::from(&e));
            }
        }
    }
    if !failures.is_empty() {
        return PhaseRun::Failed(failures.join("; "));
    }
    let verb = match (step, dry_run) {
        (PeerStep::Stop, false) => "stopped",
        (PeerStep::Stop, true) => "would stop",
        (PeerStep::Rejoin, false) => "set to rejoin",
        (PeerStep::Rejoin, true) => "would set to rejoin",
    };
    PhaseRun::Done(format!("{verb}: {}", if done.is_empty() { "none".to_string() } else { done.join(", ") }))
}

/// `restore`: the target's restore.
pub struct Restore {
    pub settings: Settings,
    pub findings: Findings,
    /// The command line that runs this restore again, and the one that rolls it back.
    pub again: String,
    pub rollback: String,
}

#[async_trait]
impl Phase for Restore {
    fn name(&self) -> &'static str {
        "restore"
    }

    fn applies(&self, _: &RunContext) -> bool {
        true
    }

    fn dry_run(&self, run: &RunContext) -> Option<String> {
        let name = archive(run).map(|a| a.name).unwrap_or_default();
        Some(format!("would restore {name} onto {} (the check phase lists each step)", self.settings.target))
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let Some(archive) = archive(run) else { return PhaseRun::Failed("no verified archive".into()) };
        let target = self.settings.target.clone();
        let Some(link) = link_of(run, &target) else { return PhaseRun::Failed(format!("{target} is not connected")) };
        let request = restore_request(run, &self.settings, &archive, Ask::Restore);
        let observer = run.observer.clone();
        observer.phase(&target, &format!("restoring {}", archive.name));
        let outcome = link.call(&request).progress(|m| observer.message(&target, m)).send().await;
        let check_staging = run.slots.get::<CheckStaging>().map(|c| c.0.clone()).unwrap_or_default();
        let result = run.host(&target);
        match outcome {
            Ok(mut report) => {
                if report.staging.is_empty() {
                    // The target used what the check staged.
                    report.staging = check_staging;
                }
                result.state = HostState::Restarted;
                result.version = Some(report.k3s_version.clone());
                result.changes.extend(report.actions.iter().map(|a| Change {
                    subject: a.clone(),
                    action: ChangeAction::Done,
                    detail: None,
                }));
                for m in &report.moved_aside {
                    result.notes.push(format!("the data at {} before the restore is now at {}", m.from, m.to));
                }
                let shown = |steps: &[StepTime]| {
                    let total: u64 = steps.iter().map(|t| t.millis).sum();
                    let each: Vec<String> =
                        steps.iter().map(|t| format!("{} {:.1} s", t.step, t.millis as f64 / 1000.0)).collect();
                    format!("{:.1} s: {}", total as f64 / 1000.0, each.join(", "))
                };
                if !report.staging.is_empty() {
                    result.notes.push(format!("while k3s still ran, {}", shown(&report.staging)));
                }
                if !report.timings.is_empty() {
                    result.notes.push(format!("k3s was down {}", shown(&report.timings)));
                }
                result.notes.push(format!("to undo this restore: {}", self.rollback));
                let message = format!(
                    "{} restored onto {target} ({} entries, {} datastore, k3s {})",
                    report.name, report.restored_entries, report.datastore, report.k3s_version
                );
                findings(&self.findings).restore = Some(report);
                PhaseRun::Done(message)
            }
            Err(e) => {
                let guidance = format!(
                    "the restore of {} on {target} did not finish; what it replaced is kept aside on {target} (see the error). \
                     To finish it: {} ; to undo it: {}",
                    archive.name, self.again, self.rollback
                );
                result.fail(HostError::from(&e));
                result.notes.push(guidance.clone());
                findings(&self.findings).guidance = Some(guidance);
                PhaseRun::Failed(format!("{target}: {}", e.kind()))
            }
        }
    }
}

/// `rejoin`: after an etcd restore, the other servers join the restored cluster as new members.
pub struct Rejoin {
    pub settings: Settings,
}

#[async_trait]
impl Phase for Rejoin {
    fn name(&self) -> &'static str {
        "rejoin"
    }

    fn applies(&self, run: &RunContext) -> bool {
        let etcd = archive(run).is_some_and(|a| a.manifest.datastore == Datastore::Etcd);
        etcd && run.active().any(|(m, _)| m.host.role == Role::Server && m.host.name != self.settings.target)
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        None
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let servers: Vec<(String, Link)> = run
            .active()
            .filter(|(m, _)| m.host.role == Role::Server && m.host.name != self.settings.target)
            .map(|(m, link)| (m.host.name.clone(), link.clone()))
            .collect();
        let dry_run = run.options.dry_run;
        peer_step(run, servers, PeerStep::Rejoin, dry_run).await
    }
}

/// `forget nodes`: the lost server's Node deleted through the restored one.
pub struct ForgetLost {
    pub settings: Settings,
}

impl ForgetLost {
    /// The snapshot's node, when nothing of the cluster file answers to its name any more.
    fn lost(&self, run: &RunContext) -> Option<String> {
        let node = archive(run)?.manifest.node;
        (node != self.settings.target && run.cluster.host(&node).is_none()).then_some(node)
    }
}

#[async_trait]
impl Phase for ForgetLost {
    fn name(&self) -> &'static str {
        "forget nodes"
    }

    fn applies(&self, run: &RunContext) -> bool {
        self.lost(run).is_some()
    }

    fn dry_run(&self, run: &RunContext) -> Option<String> {
        Some(format!(
            "would delete the Node {} (the snapshot's server, not in the cluster file) through {}",
            self.lost(run).unwrap_or_default(),
            self.settings.target
        ))
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let Some(lost) = self.lost(run) else { return PhaseRun::Done("nothing to forget".into()) };
        let target = &self.settings.target;
        let Some(link) = link_of(run, target) else { return PhaseRun::Failed(format!("{target} is not connected")) };
        match link.call(&DeleteNodes { names: vec![lost.clone()], dry_run: false }).send().await {
            Ok(answer) if answer.deleted.is_empty() => PhaseRun::Done(format!("no Node {lost} to delete")),
            Ok(_) => PhaseRun::Done(format!("deleted the Node {lost}: the lost server is gone from the cluster")),
            Err(e) => PhaseRun::Failed(format!("{e}; delete it with `kubectl delete node {lost}`")),
        }
    }
}

/// `rollback`: the target's last restore undone (`restore --rollback`).
pub struct Rollback {
    pub target: String,
    pub ready_timeout: Duration,
    pub findings: Findings,
}

#[async_trait]
impl Phase for Rollback {
    fn name(&self) -> &'static str {
        "rollback"
    }

    fn applies(&self, _: &RunContext) -> bool {
        true
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        None
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let target = self.target.clone();
        let Some(link) = link_of(run, &target) else { return PhaseRun::Failed(format!("{target} is not connected")) };
        let request = RollbackRestore {
            node_name: target.clone(),
            ready_timeout_secs: self.ready_timeout.as_secs(),
            dry_run: run.options.dry_run,
        };
        let observer = run.observer.clone();
        let outcome = link.call(&request).progress(|m| observer.message(&target, m)).send().await;
        let dry_run = run.options.dry_run;
        let result = run.host(&target);
        match outcome {
            Ok(report) => {
                if !report.actions.is_empty() {
                    result.state = if dry_run { HostState::WouldChange } else { HostState::Restarted };
                }
                result.changes.extend(report.actions.iter().map(|a| Change {
                    subject: a.clone(),
                    action: ChangeAction::Done,
                    detail: None,
                }));
                let message = if report.actions.is_empty() {
                    format!("the restore of {} was rolled back already", report.name)
                } else {
                    format!(
                        "the restore of {} {} on {target}",
                        report.name,
                        if dry_run { "would be undone" } else { "undone" }
                    )
                };
                findings(&self.findings).rollback = Some(report);
                PhaseRun::Done(message)
            }
            Err(e) => {
                result.fail(HostError::from(&e));
                PhaseRun::Failed(format!("{target}: {}", e.kind()))
            }
        }
    }
}
