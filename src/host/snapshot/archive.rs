//! The snapshot archive: its format, its writer, and the one reader that checks everything.
//!
//! Format (`k3node-snapshot/2`): a tar stream compressed with zstd (one frame, with zstd's
//! content checksum), in a file `<name>.tar.zst`; beside it `<name>.tar.zst.sha256`, the archive's
//! sha256 as `sha256sum` writes it (`<hex>  <name>.tar.zst`). In the tar:
//! 1. `k3node-snapshot.json`, the [`Manifest`]: cluster, node, datastore, k3s and k3node versions,
//!    creation time, k3s's data dir, the datastore's file, and every entry with its path, kind,
//!    size, mode, owner, sha256 (files but the datastore's) and target (symlinks);
//! 2. the entries, in the manifest's order (every directory before what it holds), each at its
//!    path on the host without the leading `/` (`var/lib/rancher/k3s/server/token`);
//! 3. right after the datastore's entry, `k3node-snapshot.database.sha256`: its sha256 as
//!    `sha256sum` writes it (`<hex>  <entry path>`). The datastore is hashed while it streams into
//!    the archive, so that a snapshot reads it once (the manifest, written first, cannot know it).
//!
//! Format 1 (`k3node-snapshot/1`, written by earlier versions and still read) lists the
//! datastore's sha256 in the manifest too and has no such entry.
//!
//! Invariants of the reader ([`walk`]), which verify and restore both go through:
//! - nothing is accepted that the manifest does not list (but the datastore's sha256 where the
//!   format puts it), and every listed entry must come, with the kind, size, mode, owner, sha256
//!   and link target listed;
//! - the manifest itself only lists what a snapshot holds ([`Scope`]): no absolute path, no `..`,
//!   nothing outside k3s's server files and config, no symlink whose target leaves that set, no
//!   entry below a symlink or a file, no hard link, device or fifo, no setuid/setgid/sticky bit;
//! - a file's bytes reach their destination only once they match the manifest, or for the
//!   datastore of format 2 the sha256 entry after it ([`AtomicFile::commit`] after the check), and
//!   the archive's own sha256 must match its sidecar: a damaged or truncated archive is a checksum
//!   mismatch, a well-formed but unacceptable one a bad request, each naming the entry.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{copy_seeing, CopyError, HashingReader, HashingWriter, Running};
use crate::host::error::{describe_io, Failure};
use crate::host::k3s::{
    env_path, CONFIG_DIR, CONFIG_DROPIN_DIR, CONFIG_FILE, ETCD_SNAPSHOT_DIR, MANIFESTS_DIR, NODE_DIR,
    NODE_PASSWORD_FILE, REGISTRIES_FILE, SERVER_DIR, SQLITE_DB,
};
use crate::host::system::{AtomicFile, HostSystem};
use crate::protocol::snapshot::{Datastore, ManifestSummary};
use crate::protocol::ErrorKind;
use read_ahead::ReadAhead;

mod read_ahead;

/// The format this k3node writes.
pub const FORMAT: &str = "k3node-snapshot/2";
/// The format before the datastore's sha256 moved after it: read, no longer written.
pub const FORMAT_1: &str = "k3node-snapshot/1";
/// The first entry of every archive.
pub const MANIFEST_PATH: &str = "k3node-snapshot.json";
/// The entry right after the datastore's, in format 2: its sha256.
pub const DATABASE_SUM_PATH: &str = "k3node-snapshot.database.sha256";
/// `<64 hex>  <entry path>\n`, an entry path being at most a few hundred bytes.
const MAX_DATABASE_SUM: u64 = 4096;
pub const EXTENSION: &str = ".tar.zst";
pub const SIDECAR_EXTENSION: &str = ".tar.zst.sha256";
/// A manifest lists a few hundred entries; anything this large is not one.
const MAX_MANIFEST: u64 = 64 << 20;
const BUFFER: usize = 1 << 17;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The bytes are not the ones written: flipped, cut short, replaced.
    #[error("{}: {reason}; the archive cannot be trusted: pull or push it again, or use another snapshot", archive.display())]
    Damaged { archive: PathBuf, reason: String },
    /// Well-formed, but not something k3node restores: the reason names the entry.
    #[error("{}: {reason}; refusing the archive", archive.display())]
    Refused { archive: PathBuf, reason: String },
    #[error("{} does not exist", .0.display())]
    Missing(PathBuf),
    #[error("{what} {}: {}", path.display(), describe_io(source))]
    Io { what: &'static str, path: PathBuf, source: io::Error },
}

impl Failure for ArchiveError {
    fn kind(&self) -> ErrorKind {
        match self {
            ArchiveError::Damaged { .. } => ErrorKind::ChecksumMismatch,
            ArchiveError::Refused { .. } => ErrorKind::BadRequest,
            ArchiveError::Missing(_) => ErrorKind::NotInstalled,
            ArchiveError::Io { source, .. } => ErrorKind::of_io(source),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

impl std::fmt::Display for EntryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EntryKind::File => "a file",
            EntryKind::Dir => "a directory",
            EntryKind::Symlink => "a symlink",
        })
    }
}

/// One file, directory or symlink of the archive, as the manifest lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The host path without its leading `/`, as in the tar.
    pub path: String,
    pub kind: EntryKind,
    /// Bytes of a file; 0 otherwise.
    pub size: u64,
    /// Permission bits, written in octal (`"0600"`).
    #[serde(with = "octal")]
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A symlink's target, as the link holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Entry {
    /// Where the entry lives on a host.
    pub fn host_path(&self) -> PathBuf {
        Path::new("/").join(&self.path)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub cluster: String,
    pub node: String,
    pub datastore: Datastore,
    pub k3s_version: String,
    pub k3node_version: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// k3s's data dir (absolute) on the server the snapshot was taken on.
    pub data_dir: String,
    /// The entry holding the datastore: the SQLite copy, or the etcd snapshot.
    pub database: String,
    pub entries: Vec<Entry>,
}

impl Manifest {
    pub fn summary(&self) -> ManifestSummary {
        ManifestSummary {
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            datastore: self.datastore,
            k3s_version: self.k3s_version.clone(),
            k3node_version: self.k3node_version.clone(),
            created: self.created.clone(),
            data_dir: self.data_dir.clone(),
            entries: self.entries.len() as u64,
            bytes: self.entries.iter().map(|e| e.size).sum(),
        }
    }

    pub fn database_entry(&self) -> Option<&Entry> {
        self.entries.iter().find(|e| e.path == self.database)
    }

    /// Whether the datastore's sha256 follows its entry in the tar (format 2) instead of being listed.
    pub fn database_sum_follows(&self) -> bool {
        self.format == FORMAT
    }

    /// Everything [`walk`] demands of a manifest before it reads any entry.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT && self.format != FORMAT_1 {
            return Err(format!(
                "the manifest's format is {:?}; this k3node reads {FORMAT} and {FORMAT_1}",
                self.format
            ));
        }
        super::parse_rfc3339(&self.created).map_err(|e| format!("the manifest's creation time: {e}"))?;
        let data_dir = PathBuf::from(&self.data_dir);
        if !data_dir.is_absolute() || !data_dir.components().skip(1).all(|c| matches!(c, Component::Normal(_))) {
            return Err(format!("the manifest's data dir {:?} is not an absolute path without `..`", self.data_dir));
        }
        let scope = Scope::new(&data_dir, self.datastore, Path::new("/").join(&self.database))?;
        let database = self.database_entry().ok_or_else(|| format!("the manifest lists no entry {}", self.database))?;
        if database.kind != EntryKind::File {
            return Err(format!("the datastore entry {} is not a file", self.database));
        }
        let mut kinds: BTreeMap<&str, EntryKind> = BTreeMap::new();
        for entry in &self.entries {
            let at = |why: String| format!("entry {:?} {why}", entry.path);
            let host = relative_path(&entry.path).map_err(at)?;
            if entry.path == MANIFEST_PATH || entry.path == DATABASE_SUM_PATH {
                return Err(at("has the name of an entry of k3node's own".into()));
            }
            if kinds.insert(&entry.path, entry.kind).is_some() {
                return Err(at("is listed twice".into()));
            }
            if !scope.allows(&host, entry.kind) {
                return Err(at(format!("({}) is not among what a snapshot holds (k3s's server files below {}, /etc/rancher/k3s, /etc/rancher/node, the service's env file)", entry.kind, self.data_dir)));
            }
            if entry.mode & !0o777 != 0 {
                return Err(at(format!(
                    "has mode {:04o}: setuid, setgid and sticky bits are not restored",
                    entry.mode
                )));
            }
            match entry.kind {
                EntryKind::File => {
                    if self.database_sum_follows() && entry.path == self.database {
                        if entry.sha256.is_some() {
                            return Err(at(format!("lists a sha256: in {FORMAT} the datastore's follows it")));
                        }
                    } else if !entry.sha256.as_deref().is_some_and(is_lowercase_sha256) {
                        return Err(at("has no sha256 of 64 lowercase hex digits".into()));
                    }
                    if entry.target.is_some() {
                        return Err(at("is a file with a link target".into()));
                    }
                }
                EntryKind::Dir | EntryKind::Symlink => {
                    if entry.size != 0 || entry.sha256.is_some() {
                        return Err(at("is not a file but has a size or a sha256".into()));
                    }
                }
            }
            match (entry.kind, entry.target.as_deref()) {
                (EntryKind::Symlink, Some(target)) => {
                    let resolved = resolve_link(&host, target).ok_or_else(|| at("has an empty link target".into()))?;
                    if !scope.holds(&resolved) {
                        return Err(at(format!("links to {target:?}, which is outside what a snapshot holds")));
                    }
                }
                (EntryKind::Symlink, None) => return Err(at("is a symlink without a target".into())),
                (_, Some(_)) => return Err(at("has a link target but is no symlink".into())),
                _ => {}
            }
        }
        // Nothing may be written through a link, nor below a file.
        for entry in &self.entries {
            let mut parent = Path::new(&entry.path).parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                match kinds.get(p.to_str().unwrap_or_default()) {
                    Some(EntryKind::Symlink) => {
                        return Err(format!("entry {:?} lies below the symlink {:?}", entry.path, p.display()))
                    }
                    Some(EntryKind::File) => {
                        return Err(format!("entry {:?} lies below the file {:?}", entry.path, p.display()))
                    }
                    _ => {}
                }
                parent = p.parent();
            }
        }
        Ok(())
    }
}

fn is_lowercase_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What a snapshot may hold, for a data dir, a datastore and the datastore's file: the same set
/// decides what creation takes in (symlinks whose target leaves it are refused) and what a
/// restore lets out.
#[derive(Debug, Clone)]
pub struct Scope {
    /// Directories only (the parents of what is kept).
    anchors: Vec<PathBuf>,
    /// Files only.
    files: Vec<PathBuf>,
    /// A directory and anything below it.
    trees: Vec<PathBuf>,
}

impl Scope {
    /// `database` is the datastore's file: `<data dir>/server/db/state.db` for SQLite, a file
    /// directly in `<data dir>/server/db/snapshots` for etcd.
    pub fn new(data_dir: &Path, datastore: Datastore, database: PathBuf) -> Result<Scope, String> {
        let server = data_dir.join(SERVER_DIR);
        let mut anchors = vec![server.clone(), server.join("db"), PathBuf::from(CONFIG_DIR), PathBuf::from(NODE_DIR)];
        let expected_db = match datastore {
            Datastore::Sqlite => database == data_dir.join(SQLITE_DB),
            Datastore::Etcd => {
                anchors.push(data_dir.join(ETCD_SNAPSHOT_DIR));
                database.parent() == Some(&data_dir.join(ETCD_SNAPSHOT_DIR))
                    && database.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.'))
            }
        };
        if !expected_db {
            return Err(format!(
                "the datastore file {} is not where a {datastore} snapshot keeps it",
                database.display()
            ));
        }
        Ok(Scope {
            anchors,
            files: vec![
                server.join("token"),
                database,
                PathBuf::from(CONFIG_FILE),
                PathBuf::from(REGISTRIES_FILE),
                PathBuf::from(NODE_PASSWORD_FILE),
                env_path("k3s"),
            ],
            trees: vec![
                server.join("tls"),
                server.join("cred"),
                data_dir.join(MANIFESTS_DIR),
                PathBuf::from(CONFIG_DROPIN_DIR),
            ],
        })
    }

    pub fn allows(&self, path: &Path, kind: EntryKind) -> bool {
        match kind {
            EntryKind::Dir => self.anchors.iter().chain(&self.trees).any(|a| a == path) || self.in_tree(path),
            EntryKind::File => self.files.iter().any(|f| f == path) || self.in_tree(path),
            EntryKind::Symlink => self.in_tree(path),
        }
    }

    /// Whether a link may point at `path` (absolute, normalized): anything the snapshot holds.
    pub fn holds(&self, path: &Path) -> bool {
        self.anchors.iter().chain(&self.files).chain(&self.trees).any(|p| p == path) || self.in_tree(path)
    }

    fn in_tree(&self, path: &Path) -> bool {
        self.trees.iter().any(|t| path.starts_with(t) && path != t)
    }
}

/// The host path of an archive path: relative, every component a plain name.
fn relative_path(path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    if path.is_empty() || path.starts_with('/') {
        return Err("is an absolute path".into());
    }
    if path.ends_with('/') || path.contains("//") {
        return Err("is not a plain relative path".into());
    }
    for c in p.components() {
        match c {
            Component::Normal(_) => {}
            Component::ParentDir => return Err("contains `..`".into()),
            _ => return Err("is not a plain relative path".into()),
        }
    }
    Ok(Path::new("/").join(p))
}

/// Where a symlink at `link` (absolute) with `target` points, resolved without touching any
/// file (`..` above `/` stays at `/`, as the kernel does); None for an empty target.
pub fn resolve_link(link: &Path, target: &str) -> Option<PathBuf> {
    if target.is_empty() {
        return None;
    }
    let target = Path::new(target);
    let mut out = if target.is_absolute() { PathBuf::from("/") } else { crate::fsutil::parent_dir(link).to_path_buf() };
    for c in target.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// What [`write`] produced: the archive's size and sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub size: u64,
    pub sha256: String,
}

/// Writes the archive into `out` (not committed: the caller writes the sidecar first, then
/// commits, so that an archive never exists without its sidecar): the manifest, then each entry,
/// a file's bytes read from what `open` gives for its entry path (exactly the bytes the manifest
/// hashed), the datastore's hashed as it goes and its sha256 after it (format 2). `mtime` (Unix
/// seconds) is given to every entry: the manifest, not the tar headers, says what matters.
pub fn write<'s>(
    out: Box<dyn AtomicFile>,
    manifest: &Manifest,
    open: &dyn Fn(&str) -> io::Result<Box<dyn Read + 's>>,
    mtime: u64,
) -> io::Result<(Box<dyn AtomicFile>, Written)> {
    let mut encoder = zstd::stream::write::Encoder::new(HashingWriter::new(out), zstd::DEFAULT_COMPRESSION_LEVEL)?;
    encoder.include_checksum(true)?;
    let workers = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    encoder.multithread(workers)?;
    let mut tar = tar::Builder::new(encoder);
    tar.mode(tar::HeaderMode::Complete);

    let json = serde_json::to_vec_pretty(manifest).map_err(io::Error::other)?;
    let mut manifest_header = header(tar::EntryType::Regular, json.len() as u64, 0o600, 0, 0, mtime);
    tar.append_data(&mut manifest_header, MANIFEST_PATH, json.as_slice())?;
    for entry in &manifest.entries {
        match entry.kind {
            EntryKind::File => {
                let mut file = header(tar::EntryType::Regular, entry.size, entry.mode, entry.uid, entry.gid, mtime);
                // A source that does not have the listed size would make a tar that lies.
                let reader = open(&entry.path)?.take(entry.size);
                if !(manifest.database_sum_follows() && entry.path == manifest.database) {
                    tar.append_data(&mut file, &entry.path, reader)?;
                    continue;
                }
                let mut hashing = HashingReader::new(reader);
                tar.append_data(&mut file, &entry.path, &mut hashing)?;
                let (sha256, size) = hashing.finish();
                if size != entry.size {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} gave {size} bytes, the manifest lists {}", entry.path, entry.size),
                    ));
                }
                let text = sidecar_text(&sha256, &entry.path);
                let mut sum = header(tar::EntryType::Regular, text.len() as u64, 0o600, 0, 0, mtime);
                tar.append_data(&mut sum, DATABASE_SUM_PATH, text.as_bytes())?;
            }
            EntryKind::Dir => {
                let mut header = header(tar::EntryType::Directory, 0, entry.mode, entry.uid, entry.gid, mtime);
                tar.append_data(&mut header, &entry.path, io::empty())?;
            }
            EntryKind::Symlink => {
                let mut header = header(tar::EntryType::Symlink, 0, entry.mode, entry.uid, entry.gid, mtime);
                tar.append_link(&mut header, &entry.path, entry.target.as_deref().unwrap_or_default())?;
            }
        }
    }
    let encoder = tar.into_inner()?;
    let (out, sha256, size) = encoder.finish()?.finish();
    Ok((out, Written { size, sha256 }))
}

fn header(kind: tar::EntryType, size: u64, mode: u32, uid: u32, gid: u32, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(uid as u64);
    header.set_gid(gid as u64);
    header.set_mtime(mtime);
    header
}

/// `<archive>.sha256` beside `<archive>` (`x.tar.zst` -> `x.tar.zst.sha256`).
pub fn sidecar_path(archive: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sha256", archive.display()))
}

/// The sidecar's text for an archive file name, as sha256sum writes it.
pub fn sidecar_text(sha256: &str, archive_file_name: &str) -> String {
    format!("{sha256}  {archive_file_name}\n")
}

/// The sha256 the sidecar announces for `archive`.
pub fn read_sidecar(sys: &dyn HostSystem, archive: &Path) -> Result<String, ArchiveError> {
    let path = sidecar_path(archive);
    let damaged = |reason: String| ArchiveError::Damaged { archive: archive.to_path_buf(), reason };
    let text = match sys.read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(damaged(format!("its sha256 file {} is missing", path.display())))
        }
        Err(e) => return Err(ArchiveError::Io { what: "cannot read", path, source: e }),
    };
    let name = archive.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    sha256sum_line(&text, &name).ok_or_else(|| damaged(format!("{} is not `<sha256>  {name}`", path.display())))
}

/// The sha256 of a line as [`sidecar_text`] (and `sha256sum`) writes it for `name`, lowercased.
fn sha256sum_line(text: &str, name: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(sha), Some(file), None) if crate::digest::is_sha256_hex(sha) && file.trim_start_matches('*') == name => {
            Some(sha.to_ascii_lowercase())
        }
        _ => None,
    }
}

fn open(sys: &dyn HostSystem, archive: &Path) -> Result<Box<dyn Read + Send>, ArchiveError> {
    sys.open_read(archive).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ArchiveError::Missing(archive.to_path_buf()),
        _ => ArchiveError::Io { what: "cannot read", path: archive.to_path_buf(), source: e },
    })
}

/// Only the manifest (the first entry: only the start of the archive is read). Checked as
/// [`walk`] checks it; the entries are not.
pub fn read_manifest(sys: &dyn HostSystem, archive: &Path) -> Result<Manifest, ArchiveError> {
    let decoder = zstd::stream::read::Decoder::new(open(sys, archive)?).map_err(|e| ArchiveError::Io {
        what: "cannot decompress",
        path: archive.to_path_buf(),
        source: e,
    })?;
    let mut tar = tar::Archive::new(decoder);
    let mut entries = tar.entries().map_err(|e| damaged_by(archive, &e))?;
    first_manifest(archive, &mut entries)
}

/// The archive's sha256 against its sidecar, and its manifest: shows that the file is the one
/// `create` wrote (no flipped byte, no truncation) without reading its entries, which [`walk`]
/// checks. Returns the manifest, the archive's size and its sha256.
pub fn check_sum(sys: &dyn HostSystem, archive: &Path) -> Result<(Manifest, u64, String), ArchiveError> {
    let expected = read_sidecar(sys, archive)?;
    let mut raw = HashingReader::new(open(sys, archive)?);
    io::copy(&mut raw, &mut io::sink()).map_err(|source| ArchiveError::Io {
        what: "cannot read",
        path: archive.to_path_buf(),
        source,
    })?;
    let (actual, size) = raw.finish();
    if actual != expected {
        return Err(sum_mismatch(archive, &actual, &expected, String::new()));
    }
    Ok((read_manifest(sys, archive)?, size, actual))
}

/// The archive's bytes are not those its sidecar names; `detail` says what reading it found.
fn sum_mismatch(archive: &Path, actual: &str, expected: &str, detail: String) -> ArchiveError {
    ArchiveError::Damaged {
        archive: archive.to_path_buf(),
        reason: format!("its sha256 is {actual}, its sha256 file says {expected}{detail}"),
    }
}

fn damaged_by(archive: &Path, error: &io::Error) -> ArchiveError {
    ArchiveError::Damaged {
        archive: archive.to_path_buf(),
        reason: format!("it does not decode: {}", describe_io(error)),
    }
}

fn refused(archive: &Path, reason: String) -> ArchiveError {
    ArchiveError::Refused { archive: archive.to_path_buf(), reason }
}

fn first_manifest<R: Read>(archive: &Path, entries: &mut tar::Entries<'_, R>) -> Result<Manifest, ArchiveError> {
    let mut first = match entries.next() {
        None => return Err(refused(archive, "it holds no entry".into())),
        Some(e) => e.map_err(|e| damaged_by(archive, &e))?,
    };
    let path = String::from_utf8_lossy(&first.path_bytes()).into_owned();
    if path != MANIFEST_PATH || first.header().entry_type() != tar::EntryType::Regular {
        return Err(refused(archive, format!("its first entry is {path:?}, not the manifest {MANIFEST_PATH}")));
    }
    let size = first.header().size().map_err(|e| damaged_by(archive, &e))?;
    if size > MAX_MANIFEST {
        return Err(refused(archive, format!("its manifest is {size} bytes, more than a manifest can be")));
    }
    let mut json = Vec::with_capacity(size as usize);
    first.read_to_end(&mut json).map_err(|e| damaged_by(archive, &e))?;
    let manifest: Manifest =
        serde_json::from_slice(&json).map_err(|e| refused(archive, format!("its manifest is not valid: {e}")))?;
    manifest.validate().map_err(|e| refused(archive, e))?;
    Ok(manifest)
}

/// Where [`walk`] puts what it reads: each method is called once the entry's header matches the
/// manifest; a file's bytes go to the [`AtomicFile`] returned (None: only checked), which is
/// committed only when they match too, and `committed` follows.
pub trait Unpack {
    fn file(&mut self, manifest: &Manifest, entry: &Entry) -> Result<Option<Box<dyn AtomicFile>>, ArchiveError>;
    fn committed(&mut self, manifest: &Manifest, entry: &Entry) -> Result<(), ArchiveError>;
    fn dir(&mut self, manifest: &Manifest, entry: &Entry) -> Result<(), ArchiveError>;
    fn symlink(&mut self, manifest: &Manifest, entry: &Entry) -> Result<(), ArchiveError>;
}

/// Checks every byte and leaves nothing anywhere.
pub struct CheckOnly;

impl Unpack for CheckOnly {
    fn file(&mut self, _: &Manifest, _: &Entry) -> Result<Option<Box<dyn AtomicFile>>, ArchiveError> {
        Ok(None)
    }
    fn committed(&mut self, _: &Manifest, _: &Entry) -> Result<(), ArchiveError> {
        Ok(())
    }
    fn dir(&mut self, _: &Manifest, _: &Entry) -> Result<(), ArchiveError> {
        Ok(())
    }
    fn symlink(&mut self, _: &Manifest, _: &Entry) -> Result<(), ArchiveError> {
        Ok(())
    }
}

/// What [`walk`] read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Walked {
    pub manifest: Manifest,
    pub size: u64,
    pub sha256: String,
    /// The datastore's sha256, as its bytes had it (and the manifest or the entry after it said).
    pub database_sha256: String,
    /// For an etcd snapshot: what its own appended sha256 said.
    pub etcd_check: Option<String>,
}

/// Reads all of the archive, checks it as the module says, and hands every entry to `unpack`.
pub fn walk(sys: &dyn HostSystem, archive: &Path, unpack: &mut dyn Unpack) -> Result<Walked, ArchiveError> {
    let expected = read_sidecar(sys, archive)?;
    let raw = HashingReader::new(open(sys, archive)?);
    let decoder = zstd::stream::read::Decoder::new(raw).map_err(|e| ArchiveError::Io {
        what: "cannot decompress",
        path: archive.to_path_buf(),
        source: e,
    })?;
    let ahead = ReadAhead::new(decoder).map_err(|e| ArchiveError::Io {
        what: "cannot start a thread to read",
        path: archive.to_path_buf(),
        source: e,
    })?;
    let mut tar = tar::Archive::new(ahead);
    let outcome = walk_entries(archive, &mut tar, unpack);
    // Whatever happened, the archive's own hash decides whether it is damaged or was made so.
    let mut ahead = tar.into_inner();
    let trailing = if outcome.is_ok() { trailing_data(archive, &mut ahead) } else { Ok(()) };
    let mut raw = ahead.into_inner().finish().into_inner();
    let drained = io::copy(&mut raw, &mut io::sink());
    let (actual, _) = raw.finish();
    if let Err(e) = drained {
        return Err(ArchiveError::Io { what: "cannot read", path: archive.to_path_buf(), source: e });
    }
    if actual != expected {
        let first = match &outcome {
            Err(e) => format!(" (reading it: {})", inner_reason(e)),
            Ok(_) => String::new(),
        };
        return Err(sum_mismatch(archive, &actual, &expected, first));
    }
    let Contents { manifest, database_sha256, etcd_check } = outcome?;
    trailing?;
    let size = sys.file_size(archive).map_err(|e| ArchiveError::Io {
        what: "cannot stat",
        path: archive.to_path_buf(),
        source: e,
    })?;
    Ok(Walked { manifest, size, sha256: actual, database_sha256, etcd_check })
}

fn inner_reason(e: &ArchiveError) -> String {
    match e {
        ArchiveError::Damaged { reason, .. } | ArchiveError::Refused { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// After the tar's end: only the zero blocks of its end marker may follow.
fn trailing_data<R: Read>(archive: &Path, decoder: &mut R) -> Result<(), ArchiveError> {
    let mut buf = vec![0u8; BUFFER];
    loop {
        match decoder.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) if buf[..n].iter().all(|b| *b == 0) => continue,
            Ok(_) => return Err(refused(archive, "data follows the end of the tar archive".into())),
            Err(e) => return Err(damaged_by(archive, &e)),
        }
    }
}

/// What [`walk_entries`] read, before the archive's own hash is known.
struct Contents {
    manifest: Manifest,
    database_sha256: String,
    etcd_check: Option<String>,
}

fn walk_entries<R: Read>(
    archive: &Path,
    tar: &mut tar::Archive<R>,
    unpack: &mut dyn Unpack,
) -> Result<Contents, ArchiveError> {
    let mut entries = tar.entries().map_err(|e| damaged_by(archive, &e))?;
    let manifest = first_manifest(archive, &mut entries)?;
    let listed: BTreeMap<&str, &Entry> = manifest.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut etcd_check = None;
    let mut database_sha256 = String::new();
    while let Some(item) = entries.next() {
        let mut item = item.map_err(|e| damaged_by(archive, &e))?;
        let path = match std::str::from_utf8(&item.path_bytes()) {
            Ok(p) => p.to_string(),
            Err(_) => {
                let shown = String::from_utf8_lossy(&item.path_bytes()).into_owned();
                return Err(refused(archive, format!("entry {shown:?} has a name that is not UTF-8")));
            }
        };
        let at = |why: String| refused(archive, format!("entry {path:?} {why}"));
        let kind = match item.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink,
            tar::EntryType::Link => return Err(at("is a hard link (a snapshot holds none)".into())),
            tar::EntryType::Char | tar::EntryType::Block => return Err(at("is a device file".into())),
            tar::EntryType::Fifo => return Err(at("is a fifo".into())),
            other => return Err(at(format!("has the tar entry type {other:?}"))),
        };
        let Some(&entry) = listed.get(path.as_str()) else {
            // Checked as a path first, so that `..` and absolute names are called what they are.
            return Err(at(relative_path(&path).err().unwrap_or_else(|| "is not in the manifest".into())));
        };
        if !seen.insert(path.clone()) {
            return Err(at("appears twice".into()));
        }
        let header = item.header();
        let (mode, uid, gid) = (
            header.mode().map_err(|e| damaged_by(archive, &e))? & 0o7777,
            header.uid().map_err(|e| damaged_by(archive, &e))?,
            header.gid().map_err(|e| damaged_by(archive, &e))?,
        );
        if kind != entry.kind {
            return Err(at(format!("is {kind} in the tar but {} in the manifest", entry.kind)));
        }
        if (mode, uid, gid) != (entry.mode, entry.uid as u64, entry.gid as u64) {
            return Err(at(format!(
                "has mode {mode:04o} and owner {uid}:{gid} in the tar, {:04o} and {}:{} in the manifest",
                entry.mode, entry.uid, entry.gid
            )));
        }
        match kind {
            EntryKind::File => {
                let database = manifest.datastore == Datastore::Etcd && entry.path == manifest.database;
                let mut out = unpack.file(&manifest, entry)?;
                let (sha256, size, etcd) =
                    copy_checked(&mut item, out.as_mut(), database, entry.size).map_err(|e| match e {
                        CopyError::Read(e) => damaged_by(archive, &e),
                        CopyError::Write(e) => {
                            ArchiveError::Io { what: "cannot write", path: entry.host_path(), source: e }
                        }
                    })?;
                // validate() lets only format 2's datastore go without a listed sha256.
                let (expected, said) = match &entry.sha256 {
                    Some(listed) => (listed.clone(), "the manifest says"),
                    None => (
                        database_sum(archive, &mut entries, &entry.path)?,
                        "the manifest and the sha256 entry after it say",
                    ),
                };
                if size != entry.size || sha256 != expected {
                    return Err(ArchiveError::Damaged {
                        archive: archive.to_path_buf(),
                        reason: format!(
                            "entry {path:?} has {size} bytes with sha256 {sha256}; {said} {} bytes with sha256 {expected}",
                            entry.size
                        ),
                    });
                }
                if entry.path == manifest.database {
                    database_sha256 = sha256;
                }
                if let Some(check) = etcd {
                    etcd_check = Some(check.map_err(|why| ArchiveError::Damaged {
                        archive: archive.to_path_buf(),
                        reason: format!("entry {path:?}: {why}"),
                    })?);
                }
                if let Some(out) = out {
                    out.commit().map_err(|e| ArchiveError::Io {
                        what: "cannot put in place",
                        path: entry.host_path(),
                        source: e,
                    })?;
                    unpack.committed(&manifest, entry)?;
                }
            }
            EntryKind::Dir => unpack.dir(&manifest, entry)?,
            EntryKind::Symlink => {
                let target = item.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned());
                if target.as_deref() != entry.target.as_deref() {
                    return Err(at(format!(
                        "links to {:?} in the tar, to {:?} in the manifest",
                        target.unwrap_or_default(),
                        entry.target.as_deref().unwrap_or("")
                    )));
                }
                unpack.symlink(&manifest, entry)?;
            }
        }
    }
    if let Some(missing) = manifest.entries.iter().find(|e| !seen.contains(&e.path)) {
        let count = manifest.entries.iter().filter(|e| !seen.contains(&e.path)).count();
        return Err(refused(
            archive,
            format!("the tar lacks {count} of the manifest's entries, the first {:?}", missing.path),
        ));
    }
    Ok(Contents { manifest, database_sha256, etcd_check })
}

/// Format 2: the datastore's sha256, from the entry that must come right after the datastore's.
fn database_sum<R: Read>(
    archive: &Path,
    entries: &mut tar::Entries<'_, R>,
    database: &str,
) -> Result<String, ArchiveError> {
    let missing =
        || refused(archive, format!("entry {database:?} is not followed by its sha256 ({DATABASE_SUM_PATH})"));
    let mut item = match entries.next() {
        None => return Err(missing()),
        Some(item) => item.map_err(|e| damaged_by(archive, &e))?,
    };
    if item.path_bytes().as_ref() != DATABASE_SUM_PATH.as_bytes()
        || item.header().entry_type() != tar::EntryType::Regular
    {
        return Err(missing());
    }
    let size = item.header().size().map_err(|e| damaged_by(archive, &e))?;
    let mut text = Vec::new();
    (&mut item).take(MAX_DATABASE_SUM + 1).read_to_end(&mut text).map_err(|e| damaged_by(archive, &e))?;
    let text = std::str::from_utf8(&text).unwrap_or_default();
    sha256sum_line(text, database)
        .filter(|_| size <= MAX_DATABASE_SUM)
        .ok_or_else(|| refused(archive, format!("its {DATABASE_SUM_PATH} is not `<sha256>  {database}`")))
}

/// For an etcd snapshot: what its appended sha256 says (Ok: a description, Err: the problem).
type EtcdCheck = Option<Result<String, String>>;

/// Copies an entry's bytes into `out` (when given) while hashing them; for an etcd snapshot also
/// checks the sha256 etcd appends to it (see [`super::etcd::AppendedHash`]).
fn copy_checked(
    from: &mut dyn Read,
    out: Option<&mut Box<dyn AtomicFile>>,
    etcd: bool,
    listed_size: u64,
) -> Result<(String, u64, EtcdCheck), CopyError> {
    let mut running = Running::default();
    let mut etcd_hash = etcd.then(|| super::etcd::AppendedHash::new(listed_size));
    let mut sink = io::sink();
    let to: &mut dyn Write = match out {
        Some(out) => out,
        None => &mut sink,
    };
    copy_seeing(from, to, BUFFER, &mut |bytes| {
        running.update(bytes);
        if let Some(check) = etcd_hash.as_mut() {
            check.update(bytes);
        }
    })?;
    let (sha256, size) = running.finish();
    Ok((sha256, size, etcd_hash.map(|c| c.finish())))
}

mod octal {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{mode:04o}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() != 4 || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(serde::de::Error::custom(format!("mode {text:?} is not four octal digits")));
        }
        u32::from_str_radix(&text, 8).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
