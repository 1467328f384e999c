//! The phases of `k3node snapshot`: create, list, verify, pull and prune across the servers of
//! the run (each server's helper does the work; see `host::snapshot`).
//!
//! Every phase records what it found per archive into [`Archives`], which the action hands back
//! to the command for its table or JSON, and per host into the run's report (a host whose call
//! failed is failed, with the helper's error kind). A pull writes only verified archives: the
//! download goes to a temp file beside its destination, is checked against the sha256 the
//! server's sidecar announced, then read in full by the same verify the hosts run (every entry's
//! hash, the database's own check), and only then renamed into place after its sidecar.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::{self, StreamExt};
use serde::Serialize;

use crate::host::k3s::SNAPSHOT_DIR;
use crate::host::snapshot::archive::{self, EXTENSION};
use crate::host::system::RealSystem;
use crate::operator::engine::{Change, ChangeAction, HostError, HostState, Phase, PhaseRun, RunContext};
use crate::operator::link::{InProcessLink, Link, LinkError};
use crate::protocol::files::SendFile;
use crate::protocol::snapshot::{
    CreateSnapshot, Datastore, ListSnapshots, ManifestSummary, PruneSnapshots, SnapshotSummary, SnapshotVerified,
    VerifySnapshot,
};

/// The name prefix of the archives `snapshot create` takes (the timer's are `scheduled`).
pub const ON_DEMAND: &str = "on-demand";
/// The host name an archive on this machine is reported under.
pub const LOCAL: &str = "local";

/// One archive as a snapshot command reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ArchiveLine {
    /// Where it is: a host of the cluster file, or `local` for a file on this machine.
    pub host: String,
    pub name: String,
    pub path: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<ManifestSummary>,
    /// What the command did with it: created, listed, verified, pulled, deleted, kept,
    /// would-delete, skipped, failed.
    pub state: String,
    /// What the datastore's own check said (verify, pull).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// Why it cannot be used as it is, or why the command failed on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl ArchiveLine {
    fn of_summary(host: &str, s: &SnapshotSummary, state: &str) -> ArchiveLine {
        ArchiveLine {
            host: host.to_string(),
            name: s.name.clone(),
            path: s.path.clone(),
            size: s.size,
            sha256: s.sha256.clone(),
            manifest: s.manifest.clone(),
            state: state.to_string(),
            check: None,
            problem: s.problem.clone(),
        }
    }

    pub fn of_verified(host: &str, v: &SnapshotVerified, state: &str) -> ArchiveLine {
        ArchiveLine {
            host: host.to_string(),
            name: v.name.clone(),
            path: v.path.clone(),
            size: v.size,
            sha256: Some(v.sha256.clone()),
            manifest: Some(v.manifest.clone()),
            state: state.to_string(),
            check: Some(v.database_check.clone()),
            problem: None,
        }
    }

    fn failed(host: &str, name: &str, path: &str, error: &str) -> ArchiveLine {
        ArchiveLine {
            host: host.to_string(),
            name: name.to_string(),
            path: path.to_string(),
            size: 0,
            sha256: None,
            manifest: None,
            state: "failed".into(),
            check: None,
            problem: Some(error.to_string()),
        }
    }
}

/// What the phases of a run found, in order, for the command to show.
pub type Archives = Arc<Mutex<Vec<ArchiveLine>>>;

fn push(found: &Archives, line: ArchiveLine) {
    found.lock().unwrap_or_else(|e| e.into_inner()).push(line);
}

/// The path of an archive on a host: an absolute path as given, else a name in the snapshot
/// directory (with or without `.tar.zst`).
pub fn host_path(name: &str) -> String {
    if name.starts_with('/') {
        return name.to_string();
    }
    let name = name.strip_suffix(EXTENSION).unwrap_or(name);
    format!("{SNAPSHOT_DIR}/{name}{EXTENSION}")
}

/// The archive's name (its file name without `.tar.zst`).
pub fn name_of(path: &str) -> String {
    let file = Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    file.strip_suffix(EXTENSION).unwrap_or(&file).to_string()
}

/// The members of the run still worked on, with their links (owned: the calls run concurrently).
fn members(run: &RunContext) -> Vec<(String, Link)> {
    run.active().map(|(m, link)| (m.host.name.clone(), link.clone())).collect()
}

fn fail_host(run: &mut RunContext, host: &str, e: &LinkError) -> String {
    run.host(host).fail(HostError::from(e));
    format!("{host}: {}", e.kind())
}

fn outcome(failures: Vec<String>, done: String) -> PhaseRun {
    if failures.is_empty() {
        PhaseRun::Done(done)
    } else {
        PhaseRun::Failed(failures.join("; "))
    }
}

/// `snapshot create`: one snapshot on each server of the run, while k3s keeps running.
pub struct Create {
    pub prefix: String,
    pub found: Archives,
}

#[async_trait]
impl Phase for Create {
    fn name(&self) -> &'static str {
        "create"
    }

    fn applies(&self, _: &RunContext) -> bool {
        true
    }

    fn dry_run(&self, run: &RunContext) -> Option<String> {
        let hosts: Vec<String> = members(run).into_iter().map(|(h, _)| h).collect();
        Some(format!("would take a snapshot on {}", hosts.join(", ")))
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let cluster = run.cluster.name.clone();
        let observer = run.observer.clone();
        let answers = run
            .on_each_host(|host, link| {
                let request = CreateSnapshot {
                    cluster: cluster.clone(),
                    node: host.name.clone(),
                    name_prefix: self.prefix.clone(),
                    dir: None,
                };
                let observer = observer.clone();
                async move {
                    observer.phase(&host.name, "taking a snapshot");
                    link.call(&request).progress(|m| observer.message(&host.name, m)).send().await
                }
            })
            .await;
        let (mut failures, mut made) = (Vec::new(), Vec::new());
        for (host, answer) in answers {
            match answer {
                Ok(c) => {
                    let result = run.host(&host);
                    result.state = HostState::Changed;
                    result.changes.push(Change {
                        subject: c.path.clone(),
                        action: ChangeAction::Created,
                        detail: Some(format!(
                            "{} bytes, sha256 {}, {} datastore, k3s {}",
                            c.size, c.sha256, c.datastore, c.k3s_version
                        )),
                    });
                    made.push(format!("{host}: {}", c.name));
                    push(
                        &self.found,
                        ArchiveLine {
                            host: host.clone(),
                            name: c.name,
                            path: c.path,
                            size: c.size,
                            sha256: Some(c.sha256),
                            manifest: Some(ManifestSummary {
                                cluster: cluster.clone(),
                                node: host,
                                datastore: c.datastore,
                                k3s_version: c.k3s_version,
                                k3node_version: env!("CARGO_PKG_VERSION").into(),
                                created: c.created,
                                data_dir: String::new(),
                                entries: c.entries,
                                bytes: 0,
                            }),
                            state: "created".into(),
                            check: None,
                            problem: None,
                        },
                    );
                }
                Err(e) => failures.push(fail_host(run, &host, &e)),
            }
        }
        made.sort();
        outcome(failures, format!("{} taken: {}", crate::words::count(made.len(), "snapshot"), made.join(", ")))
    }
}

/// `snapshot list`: the archives of every server of the run, newest first per server.
pub struct List {
    pub found: Archives,
}

#[async_trait]
impl Phase for List {
    fn name(&self) -> &'static str {
        "list"
    }

    fn applies(&self, _: &RunContext) -> bool {
        true
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        None
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let mut answers =
            run.on_each_host(|_, link| async move { link.call(&ListSnapshots { dir: None }).send().await }).await;
        answers.sort_by(|a, b| a.0.cmp(&b.0));
        let (mut failures, mut count) = (Vec::new(), 0);
        for (host, answer) in answers {
            match answer {
                Ok(list) => {
                    for s in &list.snapshots {
                        push(&self.found, ArchiveLine::of_summary(&host, s, "listed"));
                    }
                    count += list.snapshots.len();
                }
                Err(e) => failures.push(fail_host(run, &host, &e)),
            }
        }
        outcome(failures, crate::words::count(count, "snapshot"))
    }
}

/// `snapshot verify HOST:NAME...`: each named archive read in full on its host.
pub struct Verify {
    /// (host, name or absolute path on that host).
    pub wanted: Vec<(String, String)>,
    pub found: Archives,
}

#[async_trait]
impl Phase for Verify {
    fn name(&self) -> &'static str {
        "verify"
    }

    fn applies(&self, _: &RunContext) -> bool {
        !self.wanted.is_empty()
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        None
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let links: Vec<(String, Link)> = members(run);
        let observer = run.observer.clone();
        let jobs: Vec<(String, String, Link)> = self
            .wanted
            .iter()
            .filter_map(|(host, name)| {
                let link = links.iter().find(|(h, _)| h == host)?.1.clone();
                Some((host.clone(), host_path(name), link))
            })
            .collect();
        let calls = jobs.into_iter().map(|(host, path, link)| {
            let observer = observer.clone();
            async move {
                observer.phase(&host, &format!("verifying {}", name_of(&path)));
                let answer = link.call(&VerifySnapshot { path: path.clone(), sum_only: false }).send().await;
                (host, path, answer)
            }
        });
        let answers: Vec<_> = stream::iter(calls).buffered(run.options.concurrency.max(1)).collect().await;
        let (mut failures, mut verified) = (Vec::new(), 0);
        for (host, path, answer) in answers {
            match answer {
                Ok(v) => {
                    verified += 1;
                    push(&self.found, ArchiveLine::of_verified(&host, &v, "verified"));
                }
                Err(e) => {
                    push(&self.found, ArchiveLine::failed(&host, &name_of(&path), &path, &e.to_string()));
                    failures.push(fail_host(run, &host, &e));
                }
            }
        }
        outcome(failures, format!("{} read in full and verified", crate::words::count(verified, "archive")))
    }
}

/// Which archives a pull takes from a host: named ones, or its newest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    Named(String),
    Newest,
}

/// `snapshot pull`: archives streamed to this machine, verified here, then put in place.
pub struct Pull {
    /// (host, what to take from it).
    pub wanted: Vec<(String, Pick)>,
    pub to: PathBuf,
    pub found: Archives,
}

#[async_trait]
impl Phase for Pull {
    fn name(&self) -> &'static str {
        "pull"
    }

    fn applies(&self, _: &RunContext) -> bool {
        !self.wanted.is_empty()
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        None
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let links = members(run);
        let observer = run.observer.clone();
        let (mut failures, mut pulled) = (Vec::new(), Vec::new());
        // One at a time: a pull is bound by the network and the disk here, not by the hosts.
        for (host, pick) in &self.wanted {
            let Some(link) = links.iter().find(|(h, _)| h == host).map(|(_, l)| l.clone()) else { continue };
            observer.phase(host, "pulling");
            match pull_one(&link, pick, &self.to, &|m| observer.message(host, m)).await {
                Ok(line) => {
                    pulled.push(format!("{host}: {}", line.name));
                    run.host(host).notes.push(format!("pulled {} to {}", line.name, line.path));
                    push(&self.found, line);
                }
                Err(PullError::Link(e)) => {
                    let name = match pick {
                        Pick::Named(n) => n.clone(),
                        Pick::Newest => "(newest)".into(),
                    };
                    push(&self.found, ArchiveLine::failed(host, &name, "", &e.to_string()));
                    failures.push(fail_host(run, host, &e));
                }
                Err(PullError::Local(message)) => {
                    run.host(host).fail(HostError {
                        kind: "local-io".into(),
                        message: message.clone(),
                        retryable: false,
                    });
                    failures.push(format!("{host}: {message}"));
                }
            }
        }
        outcome(
            failures,
            format!(
                "{} pulled into {}: {}",
                crate::words::count(pulled.len(), "archive"),
                self.to.display(),
                pulled.join(", ")
            ),
        )
    }
}

enum PullError {
    Link(LinkError),
    Local(String),
}

impl From<LinkError> for PullError {
    fn from(e: LinkError) -> Self {
        PullError::Link(e)
    }
}

/// Lists the host's archives, picks one, downloads, checks and verifies it, puts it in place.
async fn pull_one(
    link: &Link,
    pick: &Pick,
    to: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<ArchiveLine, PullError> {
    let list = link.call(&ListSnapshots { dir: None }).send().await?;
    let chosen = match pick {
        Pick::Named(name) => {
            let name = name_of(&host_path(name));
            list.snapshots
                .iter()
                .find(|s| s.name == name)
                .ok_or_else(|| PullError::Local(format!("{}: no snapshot {name} in {}", link.host(), list.dir)))?
        }
        Pick::Newest => list
            .snapshots
            .iter()
            .find(|s| s.manifest.is_some() && s.problem.is_none())
            .ok_or_else(|| PullError::Local(format!("{}: no usable snapshot in {}", link.host(), list.dir)))?,
    };
    let Some(expected) = chosen.sha256.clone() else {
        return Err(PullError::Local(format!(
            "{}: {} has no readable sha256 file beside it ({}); verify it on the host",
            link.host(),
            chosen.name,
            chosen.problem.clone().unwrap_or_default()
        )));
    };
    let local = |what: &str, e: std::io::Error| PullError::Local(format!("{what}: {e}"));
    let to = std::path::absolute(to).map_err(|e| local("the pull directory", e))?;
    create_private_dir(&to).map_err(|e| local(&format!("cannot create {}", to.display()), e))?;
    let file_name = format!("{}{EXTENSION}", chosen.name);
    let dest = to.join(&file_name);
    // The download's name ends in .tar.zst too: verify reads the sidecar beside it.
    let temp = to.join(format!(".{}.k3node-pull{EXTENSION}", chosen.name));
    let temp_sidecar = archive::sidecar_path(&temp);
    let cleanup = || {
        let _ = std::fs::remove_file(&temp);
        let _ = std::fs::remove_file(&temp_sidecar);
    };
    cleanup();
    let result = async {
        progress(&format!("downloading {} ({} bytes)", chosen.name, chosen.size));
        let mut file = open_private(&temp).await.map_err(|e| local(&format!("cannot create {}", temp.display()), e))?;
        // Sent as its sha256 file says, not hashed again there: this side hashes what arrives.
        let request = SendFile { path: chosen.path.clone(), sha256: Some(expected.clone()) };
        let sent = match link.call(&request).download(&mut file).send().await {
            Err(LinkError::DownloadMismatch { detail, .. }) => {
                return Err(PullError::Local(format!(
                "{}: {} is not what its sha256 file on the host says ({detail}): the archive on the host is damaged",
                link.host(),
                chosen.name,
            )))
            }
            other => other?,
        };
        file.sync_all().await.map_err(|e| local(&format!("cannot write {}", temp.display()), e))?;
        drop(file);
        if sent.sha256 != expected {
            return Err(PullError::Local(format!(
                "{}: {} has sha256 {}, its sha256 file on the host says {expected}: the archive on the host is damaged",
                link.host(),
                chosen.name,
                sent.sha256
            )));
        }
        let temp_name = temp.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        crate::fsutil::write_atomic(&temp_sidecar, archive::sidecar_text(&expected, &temp_name).as_bytes(), 0o600)
            .map_err(|e| local("cannot write the sidecar", e))?;
        progress(&format!("verifying {} here", chosen.name));
        let verified = verify_local(&temp).await.map_err(PullError::Link)?;
        crate::fsutil::write_atomic(
            &archive::sidecar_path(&dest),
            archive::sidecar_text(&expected, &file_name).as_bytes(),
            0o600,
        )
        .map_err(|e| local("cannot write the sidecar", e))?;
        std::fs::rename(&temp, &dest).map_err(|e| local(&format!("cannot put {} in place", dest.display()), e))?;
        crate::fsutil::sync_dir(&to).map_err(|e| local("cannot sync the pull directory", e))?;
        let mut line = ArchiveLine::of_verified(link.host(), &verified, "pulled");
        line.name = chosen.name.clone();
        line.path = dest.display().to_string();
        Ok(line)
    }
    .await;
    cleanup();
    result
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

async fn open_private(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).await
}

/// Verifies an archive on this machine with the helper's own code (in this process), as
/// `snapshot verify FILE` and a pull do: every byte read, every entry and the database checked.
pub async fn verify_local(path: &Path) -> Result<SnapshotVerified, LinkError> {
    let path = std::path::absolute(path).map_err(|e| LinkError::Local {
        host: LOCAL.into(),
        what: format!("cannot resolve {}", path.display()),
        source: e,
    })?;
    let link = Link::new(Arc::new(InProcessLink::new(LOCAL, Arc::new(RealSystem::host()))));
    link.call(&VerifySnapshot { path: path.display().to_string(), sum_only: false }).send().await
}

/// `snapshot prune`: each server's archives of a prefix beyond the retention deleted.
pub struct Prune {
    pub keep_last: Option<u32>,
    pub keep_newer_than_secs: Option<u64>,
    /// Only archives whose name starts with this (`on-demand-`, `scheduled-`); None: all.
    pub prefix: Option<String>,
    pub found: Archives,
}

#[async_trait]
impl Phase for Prune {
    fn name(&self) -> &'static str {
        "prune"
    }

    fn applies(&self, _: &RunContext) -> bool {
        true
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        // A dry run asks the hosts what they would delete.
        None
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let dry_run = run.options.dry_run;
        let keep_newer_than = self.keep_newer_than_secs.map(|secs| {
            let cutoff =
                time::OffsetDateTime::now_utc() - time::Duration::seconds(secs.min(i64::MAX as u64 / 2) as i64);
            cutoff
                .replace_nanosecond(0)
                .unwrap_or(cutoff)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        });
        let request = PruneSnapshots {
            dir: None,
            name_prefix: self.prefix.clone(),
            keep_last: self.keep_last,
            keep_newer_than,
            dry_run,
        };
        let observer = run.observer.clone();
        let mut answers = run
            .on_each_host(|host, link| {
                let (request, observer) = (request.clone(), observer.clone());
                async move { link.call(&request).progress(|m| observer.message(&host.name, m)).send().await }
            })
            .await;
        answers.sort_by(|a, b| a.0.cmp(&b.0));
        let (mut failures, mut deleted) = (Vec::new(), 0);
        for (host, answer) in answers {
            match answer {
                Ok(p) => {
                    let state = if dry_run { "would-delete" } else { "deleted" };
                    for name in &p.deleted {
                        push(&self.found, line_named(&host, name, state));
                    }
                    for name in &p.kept {
                        push(&self.found, line_named(&host, name, "kept"));
                    }
                    for why in &p.skipped {
                        let mut line = line_named(&host, why.split(':').next().unwrap_or(why), "skipped");
                        line.problem = Some(why.clone());
                        push(&self.found, line);
                    }
                    deleted += p.deleted.len();
                    let result = run.host(&host);
                    result.state = match (p.deleted.is_empty(), dry_run) {
                        (true, _) => HostState::Unchanged,
                        (false, true) => HostState::WouldChange,
                        (false, false) => HostState::Changed,
                    };
                    result.changes.extend(p.deleted.iter().map(|n| Change {
                        subject: host_path(n),
                        action: ChangeAction::Removed,
                        detail: None,
                    }));
                }
                Err(e) => failures.push(fail_host(run, &host, &e)),
            }
        }
        let verb = if dry_run { "would delete" } else { "deleted" };
        outcome(failures, format!("{verb} {}", crate::words::count(deleted, "archive")))
    }
}

fn line_named(host: &str, name: &str, state: &str) -> ArchiveLine {
    ArchiveLine {
        host: host.to_string(),
        name: name.to_string(),
        path: host_path(name),
        size: 0,
        sha256: None,
        manifest: None,
        state: state.to_string(),
        check: None,
        problem: None,
    }
}

/// The datastore of a summary, for tables ("-" when unknown).
pub fn datastore_of(line: &ArchiveLine) -> &'static str {
    match line.manifest.as_ref().map(|m| m.datastore) {
        Some(Datastore::Sqlite) => "sqlite",
        Some(Datastore::Etcd) => "etcd",
        None => "-",
    }
}
