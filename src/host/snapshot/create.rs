//! `snapshot-create`: a consistent snapshot of this server while k3s keeps running.
//!
//! Order: check the request and the host (a server's token, k3s's version, which datastore);
//! sweep what a killed earlier run left in the snapshot directory; take the datastore (SQLite: an
//! image of the live database in one read transaction, held until the archive is written: the
//! bytes streamed into the archive from it, no copy on disk, then `PRAGMA integrity_check` in
//! that transaction before the archive is put in place; etcd: `k3s etcd-snapshot save` into a
//! work directory beside the archive, then etcd's appended hash); stage a copy of every other file while hashing it, so that the
//! manifest, written first in the archive, lists exactly the bytes that follow it (the datastore
//! is read once, hashed as it streams into the archive, and its sha256 follows it there); write
//! the archive under a temp name, then its sidecar, then rename the archive into place. A failure
//! at any point (a full disk among them) leaves no archive, no temp file and no work directory,
//! and k3s is never touched.
//!
//! What is taken (k3s-contract.md section 6): `server/token`, `server/tls/`, `server/cred/`,
//! `server/manifests/` without what k3s writes there itself, the datastore, /etc/rancher/k3s
//! (config.yaml, config.yaml.d/, registries.yaml), /etc/rancher/node/password and the service's
//! env file. Symlinks are kept as symlinks, and only when they point inside that set; devices,
//! fifos and sockets are refused.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::archive::{self, Entry, EntryKind, Manifest, Scope, FORMAT};
use super::{
    check_name_part, etcd, k3s, rfc3339, snapshot_dir, stamp, SnapshotError, WorkDir, ARCHIVE_MODE, DIR_MODE,
    VERIFY_LABEL, WORK_PREFIX,
};
use crate::digest::CopyError;
use crate::host::k3s::{
    env_path, CONFIG_DIR, CONFIG_DROPIN_DIR, CONFIG_FILE, ETCD_DATA_DIR, ETCD_SNAPSHOT_DIR, K3S_PACKAGED_MANIFESTS,
    MANIFESTS_DIR, NODE_DIR, NODE_PASSWORD_FILE, REGISTRIES_FILE, SERVER_DIR, SQLITE_DB, SQLITE_SIDECARS,
};
use crate::host::system::{DatabaseImage, FileKind, HostSystem, Metadata};
use crate::protocol::snapshot::{CreateSnapshot, Datastore, SnapshotCreated};

/// `k3s etcd-snapshot save` of a large database can take minutes.
const ETCD_SAVE_TIMEOUT: Duration = Duration::from_secs(600);
/// Room kept free beyond the database's size (what its part of the archive can take at worst)
/// when checking for space up front.
const SPACE_MARGIN: u64 = 16 << 20;

/// What creation needs to know of this server's k3s before it takes anything.
#[derive(Debug, Clone)]
pub struct Facts {
    pub settings: k3s::Settings,
    pub k3s_version: String,
    pub datastore: Datastore,
}

/// The host's facts: a server's token, k3s's version, the datastore in use.
pub fn facts(sys: &dyn HostSystem) -> Result<Facts, SnapshotError> {
    let settings = k3s::on_host(sys)?;
    let token = settings.data_dir.join(SERVER_DIR).join("token");
    if !sys.exists(&token) {
        return Err(SnapshotError::NotInstalled(format!(
            "{} does not exist: not a server, or k3s has not started yet",
            token.display()
        )));
    }
    let k3s_version = k3s::version(sys)?;
    let datastore = datastore_of(sys, &settings.data_dir)?;
    Ok(Facts { settings, k3s_version, datastore })
}

pub fn create(
    sys: &dyn HostSystem,
    req: &CreateSnapshot,
    progress: &mut dyn FnMut(&str),
) -> Result<SnapshotCreated, SnapshotError> {
    check_request(req)?;
    let facts = facts(sys)?;
    take(sys, req, &facts, progress)
}

fn check_request(req: &CreateSnapshot) -> Result<(), SnapshotError> {
    check_name_part(&req.name_prefix, "the name prefix")?;
    check_name_part(&req.node, "the node name")?;
    if req.cluster.trim().is_empty() {
        return Err(SnapshotError::BadRequest("the cluster name is empty".into()));
    }
    snapshot_dir(req.dir.as_deref()).map(|_| ())
}

/// The snapshot itself, once the facts are known.
pub fn take(
    sys: &dyn HostSystem,
    req: &CreateSnapshot,
    facts: &Facts,
    progress: &mut dyn FnMut(&str),
) -> Result<SnapshotCreated, SnapshotError> {
    check_request(req)?;
    let dir = snapshot_dir(req.dir.as_deref())?;
    let data_dir = facts.settings.data_dir.clone();
    let server = data_dir.join(SERVER_DIR);
    let token = server.join("token");
    let (datastore, k3s_version) = (facts.datastore, facts.k3s_version.clone());

    prepare_dir(sys, &dir, progress)?;
    let now = sys.now_unix_ms();
    let name = unique_name(sys, &dir, &format!("{}-{}-{}", req.name_prefix, req.node, stamp(now)));
    let work = WorkDir::new(sys, &dir, &name)?;

    let (database_path, database) = match datastore {
        Datastore::Sqlite => sqlite_image(sys, &data_dir, &dir, progress)?,
        Datastore::Etcd => etcd_copy(sys, &data_dir, &work.path, &req.name_prefix, progress)?,
    };

    progress("collecting k3s's server files and configuration");
    let scope = Scope::new(&data_dir, datastore, database_path.clone()).map_err(SnapshotError::Datastore)?;
    let mut files = Collector {
        sys,
        scope,
        work: work.path.join("files"),
        entries: Vec::new(),
        sources: BTreeMap::new(),
        image: None,
    };
    sys.create_dir_all(&files.work, DIR_MODE).map_err(io_err("cannot create", &files.work))?;
    files.anchor(&server)?;
    files.file(&token, true)?;
    files.tree(&server.join("tls"), &[])?;
    files.tree(&server.join("cred"), &[])?;
    files.tree(&data_dir.join(MANIFESTS_DIR), &K3S_PACKAGED_MANIFESTS)?;
    files.anchor(&server.join("db"))?;
    if datastore == Datastore::Etcd {
        files.anchor(&data_dir.join(ETCD_SNAPSHOT_DIR))?;
    }
    files.add_database(database);
    files.anchor(Path::new(CONFIG_DIR))?;
    files.file(Path::new(CONFIG_FILE), false)?;
    files.tree(Path::new(CONFIG_DROPIN_DIR), &[])?;
    files.file(Path::new(REGISTRIES_FILE), false)?;
    files.anchor(Path::new(NODE_DIR))?;
    files.file(Path::new(NODE_PASSWORD_FILE), false)?;
    files.file(&env_path(k3s::SERVICE), false)?;

    let manifest = Manifest {
        format: FORMAT.to_string(),
        cluster: req.cluster.clone(),
        node: req.node.clone(),
        datastore,
        k3s_version: k3s_version.clone(),
        k3node_version: env!("CARGO_PKG_VERSION").to_string(),
        created: rfc3339(now),
        data_dir: data_dir.display().to_string(),
        database: rel(&database_path),
        entries: std::mem::take(&mut files.entries),
    };
    // What creation makes must pass what a restore demands; a failure here is k3node's bug.
    manifest.validate().map_err(|e| SnapshotError::Datastore(format!("the snapshot's manifest is not valid: {e}")))?;

    let path = dir.join(format!("{name}{}", archive::EXTENSION));
    progress(&format!("writing {}", path.display()));
    let out = sys.create_atomic(&path, ARCHIVE_MODE).map_err(io_err("cannot create", &path))?;
    let mtime = now.div_euclid(1000).max(0) as u64;
    let (out, written) =
        archive::write(out, &manifest, &|entry| files.open(entry), mtime).map_err(io_err("cannot write", &path))?;
    // Before the archive is put in place: a failure drops it, unnamed.
    if let Some((_, image)) = &files.image {
        check_image(image.as_ref(), &database_path, progress)?;
    }
    // Ends the database's read transaction: k3s's checkpoints need not wait for the rest.
    drop(files);
    // The sidecar first: an archive never exists without it (a sidecar alone is ignored and swept).
    let sidecar = archive::sidecar_path(&path);
    let file_name = format!("{name}{}", archive::EXTENSION);
    sys.write_atomic(&sidecar, archive::sidecar_text(&written.sha256, &file_name).as_bytes(), ARCHIVE_MODE)
        .map_err(io_err("cannot write", &sidecar))?;
    if let Err(e) = out.commit() {
        let _ = sys.remove_file(&sidecar);
        return Err(io_err("cannot put in place", &path)(e));
    }
    drop(work);
    Ok(SnapshotCreated {
        name,
        path: path.display().to_string(),
        size: written.size,
        sha256: written.sha256,
        datastore,
        k3s_version,
        created: manifest.created,
        entries: manifest.entries.len() as u64,
    })
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io { what, path: path.to_path_buf(), source }
}

/// The archive path of a host path: without the leading `/`.
fn rel(host: &Path) -> String {
    host.strip_prefix("/").unwrap_or(host).display().to_string()
}

/// etcd when k3s has an etcd data dir (k3s then uses it, whatever else is there), else SQLite.
fn datastore_of(sys: &dyn HostSystem, data_dir: &Path) -> Result<Datastore, SnapshotError> {
    if sys.metadata(&data_dir.join(ETCD_DATA_DIR)).is_ok_and(|m| m.kind == FileKind::Dir) {
        return Ok(Datastore::Etcd);
    }
    if sys.exists(&data_dir.join(SQLITE_DB)) {
        return Ok(Datastore::Sqlite);
    }
    Err(SnapshotError::NotInstalled(format!(
        "{} holds neither etcd/ nor state.db: k3s has not started on this server yet",
        data_dir.join("server/db").display()
    )))
}

/// Creates the directory (0700) and removes what killed runs left in it: work dirs, temp files
/// of archives, sidecars without their archive.
fn prepare_dir(sys: &dyn HostSystem, dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), SnapshotError> {
    match sys.metadata(dir) {
        Ok(m) if m.kind == FileKind::Dir => {
            if m.mode & 0o077 != 0 {
                progress(&format!(
                    "warning: {} is open to other users (mode {:04o}); the archives themselves are 0600",
                    dir.display(),
                    m.mode
                ));
            }
        }
        Ok(_) => return Err(SnapshotError::BadRequest(format!("{} exists and is not a directory", dir.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            sys.create_dir_all(dir, DIR_MODE).map_err(io_err("cannot create", dir))?
        }
        Err(e) => return Err(io_err("cannot read", dir)(e)),
    }
    let names = sys.read_dir_names(dir).map_err(io_err("cannot list", dir))?;
    for name in &names {
        let path = dir.join(name);
        if let Some(label) = name.strip_prefix(WORK_PREFIX) {
            let verifier = label.strip_prefix(VERIFY_LABEL).and_then(|rest| rest.split('-').next());
            let running = verifier.is_some_and(|pid| sys.exists(&Path::new("/proc").join(pid)));
            if !running {
                let _ = sys.remove_dir_all(&path);
            }
        } else if name.starts_with('.') && name.ends_with(".k3node-tmp") {
            let _ = sys.remove_file(&path);
        } else if let Some(archive) = name.strip_suffix(".sha256") {
            if archive.ends_with(archive::EXTENSION) && !names.iter().any(|n| n == archive) {
                let _ = sys.remove_file(&path);
            }
        }
    }
    Ok(())
}

/// `base`, or `base-2`, `base-3`... when a snapshot of the same second exists.
fn unique_name(sys: &dyn HostSystem, dir: &Path, base: &str) -> String {
    let taken = |name: &str| {
        let archive = dir.join(format!("{name}{}", archive::EXTENSION));
        sys.exists(&archive) || sys.exists(&archive::sidecar_path(&archive))
    };
    let mut name = base.to_string();
    let mut n = 2;
    while taken(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// The SQLite datastore: an image of the live database in one read transaction (checked in it by
/// [`check_image`] once written), listed with the live file's mode and owner.
fn sqlite_image(
    sys: &dyn HostSystem,
    data_dir: &Path,
    dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(PathBuf, Database), SnapshotError> {
    let live = data_dir.join(SQLITE_DB);
    let meta = sys.metadata(&live).map_err(io_err("cannot read", &live))?;
    if meta.kind != FileKind::File {
        return Err(SnapshotError::Datastore(format!("{} is not a regular file", live.display())));
    }
    let wal = sys.metadata(&data_dir.join(SQLITE_SIDECARS[0])).map(|m| m.size).unwrap_or(0);
    if let Ok(space) = sys.disk_space(dir) {
        let needed = meta.size + wal + SPACE_MARGIN;
        if space.available_bytes < needed {
            return Err(SnapshotError::NoSpace {
                dir: dir.to_path_buf(),
                needed_mib: needed >> 20,
                available_mib: space.available_bytes >> 20,
            });
        }
    }
    progress(&format!("reading {} in one SQLite read transaction (k3s keeps writing)", live.display()));
    let image = sys.sqlite_image(&live).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData => SnapshotError::Datastore(format!(
            "{} cannot be read as an SQLite database: {}",
            live.display(),
            describe(&e)
        )),
        _ => io_err("cannot read", &live)(e),
    })?;
    let entry = file_entry(&live, &meta, image.size(), None);
    Ok((live, Database::Image(entry, image)))
}

/// `PRAGMA integrity_check` of the image, in its transaction. Run once its bytes are in the
/// archive, which read the pages in order: the check then finds them in the page cache (1 GiB
/// here: 0.3-0.4 s, against 5.6 s when it read them from disk itself, in its own order).
fn check_image(image: &dyn DatabaseImage, live: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), SnapshotError> {
    progress("checking the database as of that transaction (PRAGMA integrity_check)");
    let problems = match image.check() {
        Ok(problems) if problems.is_empty() => return Ok(()),
        Ok(problems) => problems,
        // SQLite stops its check at a page it cannot parse at all.
        Err(e) if e.kind() == io::ErrorKind::InvalidData => vec![describe(&e)],
        Err(e) => return Err(io_err("cannot check", live)(e)),
    };
    let shown: Vec<&str> = problems.iter().take(5).map(String::as_str).collect();
    Err(SnapshotError::Datastore(format!(
        "{} fails SQLite's integrity check ({}): the live database is damaged; no snapshot was written",
        live.display(),
        shown.join("; ")
    )))
}

/// A file's manifest entry at its host path, with the owner and permission bits it has there (the
/// datastore's without a sha256: it follows the datastore in the archive).
fn file_entry(at: &Path, meta: &Metadata, size: u64, sha256: Option<String>) -> Entry {
    Entry {
        path: rel(at),
        kind: EntryKind::File,
        size,
        mode: meta.mode & 0o777,
        uid: meta.uid,
        gid: meta.gid,
        sha256,
        target: None,
    }
}

fn describe(e: &io::Error) -> String {
    crate::host::error::describe_io(e)
}

/// The etcd datastore: `k3s etcd-snapshot save` into the work dir, checked; listed where k3s keeps
/// its snapshots (`<data dir>/server/db/snapshots`), where a restore puts it back.
fn etcd_copy(
    sys: &dyn HostSystem,
    data_dir: &Path,
    work: &Path,
    name: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<(PathBuf, Database), SnapshotError> {
    let into = work.join("etcd");
    sys.create_dir_all(&into, DIR_MODE).map_err(io_err("cannot create", &into))?;
    progress("taking an etcd snapshot (k3s etcd-snapshot save)");
    let file = etcd::save(sys, &into, name, ETCD_SAVE_TIMEOUT)?;
    progress(&format!("checking {} (etcd's integrity hash)", file.display()));
    etcd::check_file(sys, &file)?;
    let meta = sys.metadata(&file).map_err(io_err("cannot read", &file))?;
    let file_name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let at = data_dir.join(ETCD_SNAPSHOT_DIR).join(file_name);
    let entry = file_entry(&at, &meta, meta.size, None);
    Ok((at, Database::Staged(entry, file)))
}

/// The entries of the archive, in order (every directory before what it holds), with the
/// staged copy of every file.
struct Collector<'a> {
    sys: &'a dyn HostSystem,
    scope: Scope,
    /// Where staged copies go.
    work: PathBuf,
    entries: Vec<Entry>,
    /// The staged copy of each file, by entry path.
    sources: BTreeMap<String, PathBuf>,
    /// The SQLite datastore's image and its entry path: read from its transaction, not staged.
    image: Option<(String, Box<dyn DatabaseImage>)>,
}

/// The datastore as taken: an image of the live SQLite database, or a file staged in the work dir.
enum Database {
    Image(Entry, Box<dyn DatabaseImage>),
    Staged(Entry, PathBuf),
}

impl Collector<'_> {
    /// A directory that holds what follows: listed with its own mode and owner, or as k3s makes
    /// it (0700, root) when it does not exist here.
    fn anchor(&mut self, path: &Path) -> Result<(), SnapshotError> {
        let meta = match self.sys.metadata(path) {
            Ok(m) if m.kind == FileKind::Dir => m,
            Ok(_) => return Err(SnapshotError::Datastore(format!("{} is not a directory", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Metadata { kind: FileKind::Dir, size: 0, mode: DIR_MODE, uid: 0, gid: 0 }
            }
            Err(e) => return Err(io_err("cannot read", path)(e)),
        };
        self.push_dir(path, &meta);
        Ok(())
    }

    fn push_dir(&mut self, path: &Path, meta: &Metadata) {
        self.entries.push(Entry {
            path: rel(path),
            kind: EntryKind::Dir,
            size: 0,
            mode: meta.mode & 0o777,
            uid: meta.uid,
            gid: meta.gid,
            sha256: None,
            target: None,
        });
    }

    /// One file; a missing one is an error only when `required`.
    fn file(&mut self, path: &Path, required: bool) -> Result<(), SnapshotError> {
        match self.sys.metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && !required => Ok(()),
            Err(e) => Err(io_err("cannot read", path)(e)),
            Ok(meta) => self.item(path, &meta),
        }
    }

    /// A directory and everything in it (sorted by name), without the names in `skip` directly
    /// below it; a missing one is left out.
    fn tree(&mut self, root: &Path, skip: &[&str]) -> Result<(), SnapshotError> {
        let meta = match self.sys.metadata(root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("cannot read", root)(e)),
            Ok(m) => m,
        };
        if meta.kind != FileKind::Dir {
            return Err(SnapshotError::Datastore(format!(
                "{} is not a directory (k3s keeps one there); a snapshot cannot hold it",
                root.display()
            )));
        }
        self.push_dir(root, &meta);
        self.children(root, skip)
    }

    fn children(&mut self, dir: &Path, skip: &[&str]) -> Result<(), SnapshotError> {
        let mut names = self.sys.read_dir_names(dir).map_err(io_err("cannot list", dir))?;
        names.sort();
        for name in names.into_iter().filter(|n| !skip.contains(&n.as_str())) {
            let path = dir.join(&name);
            let meta = self.sys.metadata(&path).map_err(io_err("cannot read", &path))?;
            self.item(&path, &meta)?;
        }
        Ok(())
    }

    fn item(&mut self, path: &Path, meta: &Metadata) -> Result<(), SnapshotError> {
        match meta.kind {
            FileKind::File => self.stage(path, meta),
            FileKind::Dir => {
                self.push_dir(path, meta);
                self.children(path, &[])
            }
            FileKind::Symlink => {
                let target = self.sys.read_link(path).map_err(io_err("cannot read the link", path))?;
                let target = target.to_string_lossy().into_owned();
                let inside = archive::resolve_link(path, &target).is_some_and(|to| self.scope.holds(&to));
                if !inside {
                    return Err(SnapshotError::Datastore(format!(
                        "{} links to {target:?}, outside what a snapshot holds; a snapshot never follows a link out of k3s's files: replace the link with the file it points to",
                        path.display()
                    )));
                }
                self.entries.push(Entry {
                    path: rel(path),
                    kind: EntryKind::Symlink,
                    size: 0,
                    mode: meta.mode & 0o777,
                    uid: meta.uid,
                    gid: meta.gid,
                    sha256: None,
                    target: Some(target),
                });
                Ok(())
            }
            FileKind::Special => Err(SnapshotError::Datastore(format!(
                "{} is a device, fifo or socket: a snapshot cannot hold it; remove it, or move it out of k3s's files",
                path.display()
            ))),
        }
    }

    /// A copy of the file in the work dir, hashed as it is copied: the manifest lists exactly
    /// these bytes, whatever k3s writes to the original meanwhile.
    fn stage(&mut self, path: &Path, meta: &Metadata) -> Result<(), SnapshotError> {
        let copy = self.work.join(format!("{:06}", self.entries.len()));
        let mut from = self.sys.open_read(path).map_err(io_err("cannot read", path))?;
        let mut to = self.sys.create_atomic(&copy, ARCHIVE_MODE).map_err(io_err("cannot create", &copy))?;
        let (sha256, size) = crate::digest::copy_hashed(&mut from, &mut to, 1 << 17).map_err(|e| match e {
            CopyError::Read(e) => io_err("cannot read", path)(e),
            CopyError::Write(e) => io_err("cannot write", &copy)(e),
        })?;
        to.commit().map_err(io_err("cannot write", &copy))?;
        self.entries.push(file_entry(path, meta, size, Some(sha256)));
        self.sources.insert(rel(path), copy);
        Ok(())
    }

    /// The datastore, listed under its host path with its size; the archive's writer hashes it as
    /// it streams in (its sha256 follows it in the archive), so that it is read once.
    fn add_database(&mut self, database: Database) {
        let entry = match database {
            Database::Staged(entry, copy) => {
                self.sources.insert(entry.path.clone(), copy);
                entry
            }
            Database::Image(entry, image) => {
                self.image = Some((entry.path.clone(), image));
                entry
            }
        };
        self.entries.push(entry);
    }

    /// What the archive holds for the entry at `path`: its staged copy, or the database's image.
    fn open(&self, path: &str) -> io::Result<Box<dyn io::Read + '_>> {
        match &self.image {
            Some((at, image)) if at == path => image.bytes(),
            _ => {
                let source = self
                    .sources
                    .get(path)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no staged copy of {path}")))?;
                Ok(self.sys.open_read(source)?)
            }
        }
    }
}
