//! `snapshot-verify`: all of an archive, read and checked, changing nothing on the host but a
//! temp file: the sidecar's sha256, every entry against the manifest ([`archive::walk`]), and the
//! datastore's own check (`PRAGMA integrity_check` on the SQLite copy extracted to a temp file
//! beside the archive, removed afterwards; etcd's appended hash, in the stream).
//!
//! A restore verifies through the same [`Checker`], which also keeps the archive's config files
//! (small) so that the restore can tell, before anything stops, what k3s will run with, and
//! stages every entry beside what it replaces ([`Extract`]) in the same read: the database is
//! then checked where it is staged, not in a temp copy.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::archive::{self, ArchiveError, Entry, Manifest, Unpack, Walked};
use super::stage::Extract;
use super::{archive_name, archive_path, k3s, SnapshotError, WorkDir};
use crate::host::k3s::{CONFIG_DROPIN_DIR, CONFIG_FILE};
use crate::host::system::{AtomicFile, HostSystem};
use crate::protocol::snapshot::{Datastore, SnapshotVerified, VerifySnapshot};

/// Config files larger than this are not k3s settings; they are checked, not kept.
const MAX_CONFIG: u64 = 1 << 20;

pub fn verify_request(
    sys: &dyn HostSystem,
    req: &VerifySnapshot,
    progress: &mut dyn FnMut(&str),
) -> Result<SnapshotVerified, SnapshotError> {
    let path = archive_path(&req.path)?;
    if req.sum_only {
        progress(&format!("checking the sha256 of {}", path.display()));
        let (manifest, size, sha256) = archive::check_sum(sys, &path)?;
        return Ok(SnapshotVerified {
            name: archive_name(&path),
            path: path.display().to_string(),
            size,
            sha256,
            manifest: manifest.summary(),
            database_check: "its sha256 only: its entries and database are read by the restore's check".into(),
        });
    }
    progress(&format!("reading all of {}", path.display()));
    let (walked, checker) = verify(sys, &path)?;
    Ok(SnapshotVerified {
        name: archive_name(&path),
        path: path.display().to_string(),
        size: walked.size,
        sha256: walked.sha256.clone(),
        manifest: walked.manifest.summary(),
        database_check: checker.database_check(&walked),
    })
}

/// Reads and checks all of the archive; fails on the first problem.
pub fn verify<'a>(sys: &'a dyn HostSystem, path: &Path) -> Result<(Walked, Checker<'a>), SnapshotError> {
    check(Checker::new(sys, path, None), path)
}

/// [`verify`], staging every entry through `extract` as it is checked.
pub fn verify_and_stage<'a>(
    sys: &'a dyn HostSystem,
    path: &Path,
    extract: Extract<'a>,
) -> Result<(Walked, Checker<'a>), SnapshotError> {
    check(Checker::new(sys, path, Some(extract)), path)
}

fn check<'a>(mut checker: Checker<'a>, path: &Path) -> Result<(Walked, Checker<'a>), SnapshotError> {
    let sys = checker.sys;
    let walked = archive::walk(sys, path, &mut checker)?;
    if walked.manifest.datastore == Datastore::Sqlite && checker.sqlite_ok.is_none() {
        // walk hands every listed file over, the database included; not reaching it is a bug.
        return Err(SnapshotError::Datastore(format!("{}: the database was never checked", path.display())));
    }
    Ok((walked, checker))
}

/// Checks every entry; extracts the SQLite database to a temp file for SQLite's own check (or
/// checks it where it is staged); keeps the config files' text.
pub struct Checker<'a> {
    sys: &'a dyn HostSystem,
    archive: PathBuf,
    work: Option<WorkDir<'a>>,
    /// A restore's staging of every entry.
    pub stage: Option<Extract<'a>>,
    /// Where the database is written for its check.
    database_at: Option<PathBuf>,
    /// Some(true) once the database passed `PRAGMA integrity_check`.
    sqlite_ok: Option<bool>,
    captured: Option<(String, Arc<Mutex<Vec<u8>>>)>,
    /// config.yaml's text, and the drop-ins' (file name, text).
    pub config: Option<String>,
    pub dropins: Vec<(String, String)>,
}

impl<'a> Checker<'a> {
    fn new(sys: &'a dyn HostSystem, archive: &Path, stage: Option<Extract<'a>>) -> Self {
        Checker {
            sys,
            archive: archive.to_path_buf(),
            work: None,
            stage,
            database_at: None,
            sqlite_ok: None,
            captured: None,
            config: None,
            dropins: Vec::new(),
        }
    }

    /// What the datastore's own check said.
    pub fn database_check(&self, walked: &Walked) -> String {
        match walked.manifest.datastore {
            Datastore::Sqlite => "PRAGMA integrity_check: ok".to_string(),
            Datastore::Etcd => walked.etcd_check.clone().unwrap_or_default(),
        }
    }

    /// The settings k3s will run with once the archive's config files are in place.
    pub fn settings(&self) -> Result<k3s::Settings, String> {
        k3s::settings_of(self.config.as_deref().unwrap_or(""), &self.dropins)
    }

    fn damaged(&self, reason: String) -> ArchiveError {
        ArchiveError::Damaged { archive: self.archive.clone(), reason }
    }
}

/// A file kept in memory (the config files): the checker reads it once committed.
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AtomicFile for Captured {
    fn commit(self: Box<Self>) -> io::Result<()> {
        Ok(())
    }
}

/// A config file staged and kept in memory at once.
struct Tee(Box<dyn AtomicFile>, Captured);

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        self.1.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl AtomicFile for Tee {
    fn commit(self: Box<Self>) -> io::Result<()> {
        self.0.commit()
    }
}

fn is_config(entry: &Entry) -> bool {
    let host = entry.host_path();
    entry.size <= MAX_CONFIG && (host == Path::new(CONFIG_FILE) || host.parent() == Some(Path::new(CONFIG_DROPIN_DIR)))
}

impl Unpack for Checker<'_> {
    fn file(&mut self, manifest: &Manifest, entry: &Entry) -> Result<Option<Box<dyn AtomicFile>>, ArchiveError> {
        let staged = match &mut self.stage {
            Some(extract) => extract.file(manifest, entry)?,
            None => None,
        };
        if manifest.datastore == Datastore::Sqlite && entry.path == manifest.database {
            if let Some(file) = staged {
                self.database_at = self.stage.as_ref().and_then(|x| x.staged_path(&entry.host_path()));
                return Ok(Some(file));
            }
            let dir = self.archive.parent().unwrap_or(Path::new("/")).to_path_buf();
            // Verifies take no lock: two may run at once, and a create sweeping the directory
            // meanwhile leaves the dir of a live process alone (see `super::VERIFY_LABEL`).
            let label = format!("{}{}-{:016x}", super::VERIFY_LABEL, std::process::id(), rand::random::<u64>());
            let work = WorkDir::new(self.sys, &dir, &label).map_err(|e| match e {
                SnapshotError::Io { what, path, source } => ArchiveError::Io { what, path, source },
                other => self.damaged(other.to_string()),
            })?;
            let db = work.path.join("state.db");
            let file = self.sys.create_atomic(&db, 0o600).map_err(|source| ArchiveError::Io {
                what: "cannot create a temp file to check the database in",
                path: db.clone(),
                source,
            })?;
            self.work = Some(work);
            self.database_at = Some(db);
            return Ok(Some(file));
        }
        if is_config(entry) {
            let buffer = Arc::new(Mutex::new(Vec::new()));
            self.captured = Some((entry.path.clone(), buffer.clone()));
            return Ok(Some(match staged {
                Some(file) => Box::new(Tee(file, Captured(buffer))),
                None => Box::new(Captured(buffer)),
            }));
        }
        Ok(staged)
    }

    fn committed(&mut self, manifest: &Manifest, entry: &Entry) -> Result<(), ArchiveError> {
        if let Some(extract) = &mut self.stage {
            extract.committed(manifest, entry)?;
        }
        if let Some((path, buffer)) = self.captured.take().filter(|(p, _)| *p == entry.path) {
            let text = String::from_utf8_lossy(&buffer.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
            let host = entry.host_path();
            if host == Path::new(CONFIG_FILE) {
                self.config = Some(text);
            } else {
                let name = Path::new(&path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                self.dropins.push((name, text));
            }
            return Ok(());
        }
        if manifest.datastore == Datastore::Sqlite && entry.path == manifest.database {
            // The temp copy's dir (if any) goes once checked.
            let _work = self.work.take();
            let db = self.database_at.take().expect("the database's place was chosen in file()");
            let problems = self.sys.sqlite_check(&db).map_err(|e| match e.kind() {
                io::ErrorKind::InvalidData => self.damaged(format!(
                    "its database {} is not an SQLite database: {}",
                    entry.path,
                    crate::host::error::describe_io(&e)
                )),
                _ => ArchiveError::Io { what: "cannot check", path: db.clone(), source: e },
            })?;
            if !problems.is_empty() {
                let shown: Vec<&str> = problems.iter().take(5).map(String::as_str).collect();
                return Err(self.damaged(format!(
                    "its database {} fails SQLite's integrity check: {}",
                    entry.path,
                    shown.join("; ")
                )));
            }
            self.sqlite_ok = Some(true);
        }
        Ok(())
    }

    fn dir(&mut self, manifest: &Manifest, entry: &Entry) -> Result<(), ArchiveError> {
        match &mut self.stage {
            Some(extract) => extract.dir(manifest, entry),
            None => Ok(()),
        }
    }

    fn symlink(&mut self, manifest: &Manifest, entry: &Entry) -> Result<(), ArchiveError> {
        match &mut self.stage {
            Some(extract) => extract.symlink(manifest, entry),
            None => Ok(()),
        }
    }
}
