//! `images` and `stage-images`: container images onto the nodes of the run.
//!
//! [`Import`]: per node, in parallel (bounded by the run's concurrency), what k3s's
//! containerd already holds is listed first; images present at their digest are not sent again
//! (only pinned when their pin labels are missing), and the others travel in one stream put
//! together for that node from the archives' spools (see [`crate::images::wire`]). Every image is
//! checked present and pinned afterwards. A node that fails (k3s not running, a full disk, a cut
//! connection) fails alone; the others go on.
//!
//! [`Stage`]: the archives as one `.tar.zst` each into `<data-dir>/agent/images/` for k3s
//! to import at start; a node whose staged file already has the same sha256 gets nothing. `up`
//! runs it before k3s starts (`spec.images`, and k3s's own airgap images bundle when the cluster
//! wants it), so an airgapped cluster starts with its images.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use serde::Serialize;

use crate::images::wire::{self, Wire};
use crate::images::{human_bytes, Archive, Image, Input};
use crate::operator::engine::{Change, ChangeAction, HostError, HostState, Phase, PhaseRun, RunContext};
use crate::operator::link::{Link, LinkError};
use crate::protocol::files::Compression;
use crate::protocol::images::{self as proto, ImageInventory, NodeImage, PinImages, StagedDigest};

/// What became of one image on one node.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ImageState {
    /// Sent and imported in this run.
    Imported,
    /// Already there at its digest (pinned now if it was not).
    AlreadyPresent,
    /// Staged into the images directory in this run.
    Staged,
    /// Staged before, with the same bytes.
    AlreadyStaged,
    /// Dry run: would be imported or staged.
    WouldSend,
    Failed,
}

impl ImageState {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageState::Imported => "imported",
            ImageState::AlreadyPresent => "already present",
            ImageState::Staged => "staged",
            ImageState::AlreadyStaged => "already staged",
            ImageState::WouldSend => "would send",
            ImageState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageRow {
    pub name: String,
    /// The image's digest; none for a release bundle, whose images are not unpacked here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// A release bundle's own sha256 (the file's, checked against the release's checksum file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_sha256: Option<String>,
    pub state: ImageState,
    /// Set when its pin labels were missing and k3node added them.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pinned_now: bool,
}

/// One node's part: its images, and what went over the wire to it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeImages {
    pub host: String,
    pub images: Vec<ImageRow>,
    /// Bytes sent to the node (compressed, as on the wire); 0 when it had everything.
    pub sent_bytes: u64,
    /// Bytes of the image content those carried (uncompressed).
    pub image_bytes: u64,
    #[serde(serialize_with = "crate::operator::engine::report::as_secs")]
    pub elapsed: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Archives an earlier `up` preloaded that left the cluster file, removed from the images
    /// directory (or, in a dry run, that would be).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unstaged: Vec<String>,
}

impl NodeImages {
    fn new(host: &str) -> NodeImages {
        NodeImages {
            host: host.to_string(),
            images: Vec::new(),
            sent_bytes: 0,
            image_bytes: 0,
            elapsed: Duration::ZERO,
            error: None,
            unstaged: Vec::new(),
        }
    }
}

/// Where the phases leave their per-node outcomes for the command to show.
pub type Outcomes = Arc<Mutex<Vec<NodeImages>>>;

/// The archives of the run, read and checked before any host was touched.
pub struct Archives(pub Vec<Archive>);

impl Archives {
    fn images(&self) -> Vec<(&Archive, &Image)> {
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for archive in &self.0 {
            for image in &archive.images {
                if seen.insert(image.name.clone()) {
                    out.push((archive, image));
                }
            }
        }
        out
    }
}

pub struct Import {
    pub archives: Arc<Archives>,
    pub outcomes: Outcomes,
}

#[async_trait]
impl Phase for Import {
    fn name(&self) -> &'static str {
        "import"
    }

    fn applies(&self, _: &RunContext) -> bool {
        true
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        // It plans: each node lists what it holds and says what it would receive.
        None
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let dry_run = run.options.dry_run;
        let observer = run.observer.clone();
        let archives = self.archives.clone();
        let answers = run
            .on_each_host(|host, link| {
                let archives = archives.clone();
                let observer = observer.clone();
                async move {
                    let host = host.name;
                    let started = Instant::now();
                    observer.phase(&host, "listing images");
                    let outcome = import_node(&link, &archives, dry_run, observer.as_ref()).await;
                    let elapsed = started.elapsed();
                    match outcome {
                        Ok(mut node) => {
                            node.elapsed = elapsed;
                            (node, None)
                        }
                        Err((node, e)) => (NodeImages { elapsed, ..node }, Some(e)),
                    }
                }
            })
            .await;
        let outcomes: Vec<NodeImages> =
            answers.into_iter().map(|(_, (node, error))| record(run, node, error)).collect();
        summarize(&self.outcomes, outcomes, "imported", dry_run)
    }
}

/// Records a node's outcome into its host result; returns it.
fn record(run: &mut RunContext, node: NodeImages, error: Option<LinkError>) -> NodeImages {
    let dry_run = run.options.dry_run;
    let result = run.host(&node.host);
    result.elapsed += node.elapsed;
    for row in &node.images {
        let (action, detail) = match row.state {
            ImageState::Imported | ImageState::Staged => (ChangeAction::Created, row.state.as_str().to_string()),
            ImageState::WouldSend => (ChangeAction::Created, row.state.as_str().to_string()),
            ImageState::AlreadyPresent if row.pinned_now => {
                (ChangeAction::Updated, "already present; pinned now".to_string())
            }
            ImageState::AlreadyPresent | ImageState::AlreadyStaged => {
                (ChangeAction::Unchanged, row.state.as_str().to_string())
            }
            ImageState::Failed => continue,
        };
        result.changes.push(Change {
            subject: row.name.clone(),
            action,
            detail: Some(match (&row.digest, &row.file_sha256) {
                (Some(digest), _) => format!("{detail} ({digest})"),
                (None, Some(sha256)) => format!("{detail} (file sha256 {sha256})"),
                (None, None) => detail,
            }),
        });
    }
    for name in &node.unstaged {
        result.changes.push(Change {
            subject: name.clone(),
            action: ChangeAction::Removed,
            detail: Some("preloaded before, no longer in the cluster file: removed from the images directory (the images it brought stay in containerd)".into()),
        });
    }
    let changed = result.changes.iter().any(|c| c.action != ChangeAction::Unchanged);
    if node.sent_bytes > 0 {
        result.notes.push(format!(
            "{} sent ({} of images) in {:.1} s",
            human_bytes(node.sent_bytes),
            human_bytes(node.image_bytes),
            node.elapsed.as_secs_f64()
        ));
    }
    match &error {
        Some(e) => result.fail(HostError::from(e)),
        None if changed => result.raise(if dry_run { HostState::WouldChange } else { HostState::Changed }),
        None => {}
    }
    NodeImages { error: error.map(|e| e.to_string()), ..node }
}

fn summarize(sink: &Outcomes, mut nodes: Vec<NodeImages>, verb: &str, dry_run: bool) -> PhaseRun {
    nodes.sort_by(|a, b| a.host.cmp(&b.host));
    let failed: Vec<String> = nodes.iter().filter(|n| n.error.is_some()).map(|n| n.host.clone()).collect();
    let sent: u64 = nodes.iter().map(|n| n.sent_bytes).sum();
    let done = nodes
        .iter()
        .flat_map(|n| &n.images)
        .filter(|r| matches!(r.state, ImageState::Imported | ImageState::Staged | ImageState::WouldSend))
        .count();
    let count = nodes.len();
    let unstaged: usize = nodes.iter().map(|n| n.unstaged.len()).sum();
    sink.lock().unwrap_or_else(|e| e.into_inner()).extend(nodes);
    if !failed.is_empty() {
        return PhaseRun::Failed(format!("failed on {}", failed.join(", ")));
    }
    let verb = if dry_run { "would be sent" } else { verb };
    let mut message = format!(
        "{}: {} {verb}, {} sent",
        crate::words::count(count, "node"),
        crate::words::count(done, "image"),
        human_bytes(sent)
    );
    if unstaged > 0 {
        let verb = if dry_run { "would be removed" } else { "removed" };
        message.push_str(&format!("; {} no longer preloaded {verb}", crate::words::count(unstaged, "archive")));
    }
    PhaseRun::Done(message)
}

/// The rows of `images` on a node, all in one state.
fn rows(images: &[(&Archive, &Image)], state: ImageState) -> Vec<ImageRow> {
    images
        .iter()
        .map(|(_, i)| ImageRow {
            name: i.name.clone(),
            digest: Some(i.digest.clone()),
            file_sha256: None,
            state,
            pinned_now: false,
        })
        .collect()
}

type NodeError = (NodeImages, LinkError);

async fn import_node(
    link: &Link,
    archives: &Archives,
    dry_run: bool,
    observer: &dyn crate::operator::progress::Observer,
) -> Result<NodeImages, NodeError> {
    let host = link.host().to_string();
    let all = archives.images();
    let empty = |images: Vec<ImageRow>| NodeImages { images, ..NodeImages::new(&host) };
    let inventory = match link.call(&ImageInventory {}).send().await {
        Ok(inventory) => inventory,
        Err(e) => return Err((empty(rows(&all, ImageState::Failed)), e)),
    };
    let held: BTreeMap<&str, &proto::StoredImage> = inventory.images.iter().map(|i| (i.name.as_str(), i)).collect();
    let (mut present, mut missing) = (Vec::new(), Vec::new());
    for (archive, image) in &all {
        match held.get(image.name.as_str()) {
            Some(h) if h.digest == image.digest => present.push((*archive, *image, h.pinned)),
            _ => missing.push((*archive, *image)),
        }
    }
    let mut node = empty(Vec::new());
    for (_, image, pinned) in &present {
        node.images.push(ImageRow {
            name: image.name.clone(),
            digest: Some(image.digest.clone()),
            file_sha256: None,
            state: ImageState::AlreadyPresent,
            pinned_now: !pinned,
        });
    }
    if dry_run {
        node.images.extend(rows(&missing, ImageState::WouldSend));
        return Ok(node);
    }
    let unpinned: Vec<NodeImage> = present
        .iter()
        .filter(|(_, _, pinned)| !pinned)
        .map(|(_, i, _)| NodeImage { name: i.name.clone(), digest: i.digest.clone() })
        .collect();
    if !unpinned.is_empty() {
        observer.phase(&host, "pinning images");
        if let Err(e) = link.call(&PinImages { images: unpinned }).send().await {
            node.images.extend(rows(&missing, ImageState::Failed));
            return Err((node, e));
        }
    }
    if missing.is_empty() {
        return Ok(node);
    }
    let wire = Arc::new(wire::compose(&missing));
    observer.phase(&host, &format!("sending {} images ({})", missing.len(), human_bytes(wire.len)));
    let request = proto::ImportImages {
        images: missing.iter().map(|(_, i)| NodeImage { name: i.name.clone(), digest: i.digest.clone() }).collect(),
        image_bytes: wire.image_bytes,
        compression: Compression::Zstd,
    };
    let mut reader = wire.async_reader();
    let progress_host = host.clone();
    let sent = link.call(&request).upload(&mut reader).progress(|m| observer.message(&progress_host, m)).send().await;
    node.sent_bytes = wire.len;
    node.image_bytes = wire.image_bytes;
    match sent {
        Ok(_) => {
            node.images.extend(rows(&missing, ImageState::Imported));
            Ok(node)
        }
        Err(e) => {
            node.images.extend(rows(&missing, ImageState::Failed));
            Err((node, e))
        }
    }
}

/// One archive as it is staged: its file name on the nodes and its bytes.
#[derive(Clone)]
pub struct StagedArchive {
    pub file_name: String,
    pub bytes: StagedBytes,
    pub sha256: String,
    /// Each image's name and digest; a release bundle is one row, its file name without a digest.
    pub images: Vec<(String, Option<String>)>,
}

/// Where a staged archive's bytes are read from.
#[derive(Clone)]
pub enum StagedBytes {
    /// Put together from a checked archive's spool (`spec.images`, `k3node images stage`).
    Wire(Arc<Wire>),
    /// A file verified against its release checksum before (the airgap images bundle), sent as it is.
    File { path: PathBuf, size: u64 },
}

impl StagedBytes {
    /// Bytes on the wire.
    fn len(&self) -> u64 {
        match self {
            StagedBytes::Wire(wire) => wire.len,
            StagedBytes::File { size, .. } => *size,
        }
    }

    /// Bytes of image content carried (a release bundle's own size: it is not unpacked here).
    fn image_bytes(&self) -> u64 {
        match self {
            StagedBytes::Wire(wire) => wire.image_bytes,
            StagedBytes::File { size, .. } => *size,
        }
    }

    async fn reader(&self) -> std::io::Result<Box<dyn tokio::io::AsyncRead + Unpin + Send>> {
        Ok(match self {
            StagedBytes::Wire(wire) => Box::new(wire.async_reader()),
            StagedBytes::File { path, .. } => Box::new(tokio::fs::File::open(path).await?),
        })
    }
}

impl StagedArchive {
    /// Every image of `archive`, as `k3node-<name>.tar.zst`.
    pub fn new(archive: &Archive, name: &str) -> std::io::Result<StagedArchive> {
        let images: Vec<(&Archive, &Image)> = archive.images.iter().map(|i| (archive, i)).collect();
        let wire = Arc::new(wire::compose(&images));
        let sha256 = wire.sha256()?;
        Ok(StagedArchive {
            file_name: format!("k3node-{name}.tar.zst"),
            bytes: StagedBytes::Wire(wire),
            sha256,
            images: archive.images.iter().map(|i| (i.name.clone(), Some(i.digest.clone()))).collect(),
        })
    }

    /// A release file (the airgap images bundle), verified before, staged under its own name.
    pub fn release_file(file: &crate::artifacts::ReleaseFile) -> StagedArchive {
        let file_name = file.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        StagedArchive {
            images: vec![(file_name.clone(), None)],
            file_name,
            bytes: StagedBytes::File { path: file.path.clone(), size: file.size },
            sha256: file.sha256.clone(),
        }
    }

    /// The staging name of an input: `--name`, else the file's own name.
    pub fn name_for(input: &Input, given: Option<&str>) -> Option<String> {
        given.map(str::to_string).or_else(|| input.stem())
    }
}

pub struct Stage {
    pub staged: Arc<Vec<StagedArchive>>,
    pub outcomes: Outcomes,
    /// `up`'s preload: these archives are the node's whole preload set, and what an earlier
    /// preload staged outside it is removed (see `prune-staged`).
    pub preload_set: bool,
}

#[async_trait]
impl Phase for Stage {
    fn name(&self) -> &'static str {
        "stage"
    }

    fn applies(&self, _: &RunContext) -> bool {
        // `up`'s preload runs this phase itself, also with nothing to stage (to prune).
        !self.staged.is_empty()
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        None
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let dry_run = run.options.dry_run;
        let staged = self.staged.clone();
        let observer = run.observer.clone();
        let preload_set = self.preload_set;
        let answers = run
            .on_each_host(|host, link| {
                let staged = staged.clone();
                let observer = observer.clone();
                async move {
                    let host = host.name;
                    let started = Instant::now();
                    let mut node = NodeImages::new(&host);
                    let mut error = None;
                    for archive in staged.iter() {
                        let row_state = match stage_one(&link, archive, dry_run, observer.as_ref()).await {
                            Ok(Some(sent)) => {
                                node.sent_bytes += sent;
                                node.image_bytes += archive.bytes.image_bytes();
                                if dry_run {
                                    ImageState::WouldSend
                                } else {
                                    ImageState::Staged
                                }
                            }
                            Ok(None) => ImageState::AlreadyStaged,
                            Err(e) => {
                                error.get_or_insert(e);
                                ImageState::Failed
                            }
                        };
                        for (name, digest) in &archive.images {
                            node.images.push(ImageRow {
                                name: name.clone(),
                                digest: digest.clone(),
                                file_sha256: digest.is_none().then(|| archive.sha256.clone()),
                                state: row_state,
                                pinned_now: false,
                            });
                        }
                    }
                    if preload_set && error.is_none() {
                        let keep = staged.iter().map(|a| a.file_name.clone()).collect();
                        match link.call(&proto::PruneStaged { keep, dry_run }).send().await {
                            Ok(pruned) => node.unstaged = pruned.removed,
                            Err(e) => error = Some(e),
                        }
                    }
                    node.elapsed = started.elapsed();
                    (node, error)
                }
            })
            .await;
        let outcomes: Vec<NodeImages> =
            answers.into_iter().map(|(_, (node, error))| record(run, node, error)).collect();
        summarize(&self.outcomes, outcomes, "staged", dry_run)
    }
}

/// Stages one archive on a node; Some(bytes sent) when it was (or would be) sent.
async fn stage_one(
    link: &Link,
    archive: &StagedArchive,
    dry_run: bool,
    observer: &dyn crate::operator::progress::Observer,
) -> Result<Option<u64>, LinkError> {
    let there = link.call(&StagedDigest { file_name: archive.file_name.clone() }).send().await?;
    if there.sha256.as_deref() == Some(archive.sha256.as_str()) {
        return Ok(None);
    }
    let len = archive.bytes.len();
    if dry_run {
        return Ok(Some(len));
    }
    observer.phase(link.host(), &format!("staging {} ({})", archive.file_name, human_bytes(len)));
    let request =
        proto::StageImages { file_name: archive.file_name.clone(), size: len, sha256: archive.sha256.clone() };
    let mut reader = archive.bytes.reader().await.map_err(|source| LinkError::Local {
        host: link.host().to_string(),
        what: format!("cannot read {} to stage it", archive.file_name),
        source,
    })?;
    link.call(&request).upload(&mut reader).send().await?;
    Ok(Some(len))
}

/// Where `spec.images` archives are read from (for `up`).
pub fn spec_inputs(paths: &[PathBuf]) -> Vec<Input> {
    paths.iter().map(|p| Input::File(p.clone())).collect()
}

/// The release's airgap images bundle of this run, verified (put by the artifacts phase when
/// the cluster wants it).
pub struct AirgapBundle(pub crate::artifacts::ReleaseFile);

/// `up`'s preload: the archives of `spec.images`, read and checked, then staged on every node
/// before k3s starts there (so that it imports them at its start). An unchanged archive is read
/// again (to know it is unchanged) but sent nowhere.
pub struct Preload {
    /// `spec.images` as the command read and checked it before connecting; None: read here.
    pub read_before: Option<Arc<SpecImages>>,
}

/// The archives of `spec.images`, read and checked (every image, digest and blob), each ready
/// to be staged.
pub struct SpecImages(pub Vec<StagedArchive>);

impl std::fmt::Debug for SpecImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|a| &a.file_name)).finish()
    }
}

impl SpecImages {
    /// Reads every archive; an error names the entry (file:line) and what is wrong with it.
    pub fn read(sources: &[crate::cluster::ImageArchive]) -> Result<SpecImages, String> {
        let mut staged = Vec::new();
        for source in sources {
            let input = Input::File(source.path.clone());
            let archive = crate::images::read_input(&input).map_err(|e| format!("{}: spec.images: {e}", source.at))?;
            let name = input
                .stem()
                .ok_or_else(|| format!("{}: spec.images: {} has no file name", source.at, source.path.display()))?;
            staged.push(StagedArchive::new(&archive, &name).map_err(|e| format!("{}: {e}", source.path.display()))?);
        }
        Ok(SpecImages(staged))
    }

    /// [`SpecImages::read`] off the runtime's threads (archives may be gigabytes).
    pub async fn read_blocking(sources: Vec<crate::cluster::ImageArchive>) -> Result<Arc<SpecImages>, String> {
        match tokio::task::spawn_blocking(move || SpecImages::read(&sources)).await {
            Ok(read) => read.map(Arc::new),
            Err(e) => Err(format!("reading spec.images failed: {e}")),
        }
    }
}

#[async_trait]
impl Phase for Preload {
    fn name(&self) -> &'static str {
        "preload images"
    }

    fn applies(&self, _: &RunContext) -> bool {
        // Also with nothing to stage: what an earlier run preloaded may have to go.
        true
    }

    fn dry_run(&self, _: &RunContext) -> Option<String> {
        None
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let bundle = run.slots.get::<AirgapBundle>().map(|b| StagedArchive::release_file(&b.0));
        let spec_images = match &self.read_before {
            Some(read) => Ok(read.clone()),
            None => SpecImages::read_blocking(run.cluster.images.clone()).await,
        };
        let staged: Vec<StagedArchive> = match spec_images {
            Ok(spec_images) => bundle.into_iter().chain(spec_images.0.iter().cloned()).collect(),
            Err(message) => return PhaseRun::Failed(message),
        };
        let outcomes: Outcomes = Arc::default();
        Stage { staged: Arc::new(staged), outcomes, preload_set: true }.run(run).await
    }
}
