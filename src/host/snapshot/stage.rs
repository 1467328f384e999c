//! A restore's staging: the archive's entries written beside the paths they replace, while k3s
//! still runs, so that k3s is down only for the renames that put them in place.
//!
//! Each root a restore replaces ([`replaced_roots`]) gets its new content at
//! `<root>.k3node-staged-<stamp>`, in the same directory, hence on the same filesystem: moving it
//! in is one rename(2). Invariants:
//! - nothing but those staged paths is written, so a refused or damaged archive leaves the host as
//!   it was once [`Staging`] is dropped (it removes what it staged unless [`Staging::keep`] was
//!   called);
//! - a staged path a killed run left behind, or a check's that no restore took, is removed
//!   before staging begins (the host lock keeps a second restore out meanwhile), never one an
//!   unfinished restore still needs: a restore that finds one in progress does not stage;
//! - a restore takes a check's staging as it is ([`Staging::adopt`]): nothing is read or written
//!   again.

use std::io;
use std::path::{Path, PathBuf};

use super::archive::{ArchiveError, Entry, Manifest, Unpack};
use super::k3s;
use crate::host::k3s::{env_path, CONFIG_DIR, NODE_DIR, SERVER_DIR};
use crate::host::system::{remove_tree, AtomicFile, FileKind, HostSystem};
use crate::protocol::snapshot::MovedAside;

/// Staged paths are `<root>.<STAGED_LABEL>-<stamp>`.
const STAGED_LABEL: &str = "k3node-staged";

/// What a restore replaces: the server's part of the data dir, k3s's config, the node password,
/// the env file. (The agent's part of the data dir, with the images, stays.)
pub(super) fn replaced_roots(data_dir: &Path) -> Vec<PathBuf> {
    vec![data_dir.join(SERVER_DIR), PathBuf::from(CONFIG_DIR), PathBuf::from(NODE_DIR), env_path(k3s::SERVICE)]
}

/// Where `root` is staged with the time stamp `stamp`: `<root>.k3node-staged-<stamp>`.
pub(super) fn staged_path(root: &Path, stamp: &str) -> Option<PathBuf> {
    let name = format!("{}.{STAGED_LABEL}-{stamp}", root.file_name()?.to_string_lossy());
    Some(root.parent()?.join(name))
}

/// Every staged path beside a replaced root, of any time stamp.
pub fn leftovers(sys: &dyn HostSystem, data_dir: &Path) -> Result<Vec<PathBuf>, ArchiveError> {
    let mut found = Vec::new();
    for root in replaced_roots(data_dir) {
        let (Some(parent), Some(name)) = (root.parent(), root.file_name()) else { continue };
        let prefix = format!("{}.{STAGED_LABEL}-", name.to_string_lossy());
        let names = match sys.read_dir_names(parent) {
            Ok(names) => names,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(ArchiveError::Io { what: "cannot list", path: parent.into(), source }),
        };
        found.extend(names.iter().filter(|n| n.starts_with(&prefix)).map(|n| parent.join(n)));
    }
    found.sort();
    Ok(found)
}

/// The staged path of every replaced root; what it staged is removed on drop unless kept.
pub(super) struct Staging<'a> {
    sys: &'a dyn HostSystem,
    /// (root, its staged path)
    roots: Vec<(PathBuf, PathBuf)>,
    kept: bool,
}

impl<'a> Staging<'a> {
    /// Removes what an earlier, killed staging (or a check's staging no restore took) left
    /// beside the roots.
    fn new(sys: &'a dyn HostSystem, data_dir: &Path, stamp: &str) -> Result<Staging<'a>, ArchiveError> {
        for leftover in leftovers(sys, data_dir)? {
            remove_tree(sys, &leftover).map_err(|source| ArchiveError::Io {
                what: "cannot remove an earlier restore's staged copy",
                path: leftover.clone(),
                source,
            })?;
        }
        Ok(Staging::adopt(sys, data_dir, stamp))
    }

    /// The staging of `stamp` as an earlier request (a restore's check) left it.
    pub(super) fn adopt(sys: &'a dyn HostSystem, data_dir: &Path, stamp: &str) -> Staging<'a> {
        let roots = replaced_roots(data_dir)
            .into_iter()
            .filter_map(|root| staged_path(&root, stamp).map(|staged| (root, staged)))
            .collect();
        Staging { sys, roots, kept: false }
    }

    /// Where an entry at `host` (a path on the host) is staged; None outside every root.
    pub(super) fn path_of(&self, host: &Path) -> Option<PathBuf> {
        self.roots.iter().find_map(|(root, staged)| {
            host.strip_prefix(root).ok().map(|rest| {
                if rest.as_os_str().is_empty() {
                    staged.clone()
                } else {
                    staged.join(rest)
                }
            })
        })
    }

    /// (staged path, root) for every root that got something.
    pub(super) fn staged(&self) -> Vec<MovedAside> {
        self.roots
            .iter()
            .filter(|(_, staged)| self.sys.metadata(staged).is_ok())
            .map(|(root, staged)| MovedAside { from: staged.display().to_string(), to: root.display().to_string() })
            .collect()
    }

    /// What is staged stays, for the restore to move in.
    pub(super) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for (_, staged) in &self.roots {
            let _ = remove_tree(self.sys, staged);
        }
    }
}

/// Writes every entry at its staged path, with its mode and owner.
pub(super) struct Extract<'a> {
    sys: &'a dyn HostSystem,
    stamp: String,
    /// Made at the first entry, from the manifest's data dir.
    staging: Option<Staging<'a>>,
    pub restored: u64,
}

impl<'a> Extract<'a> {
    pub(super) fn new(sys: &'a dyn HostSystem, stamp: &str) -> Extract<'a> {
        Extract { sys, stamp: stamp.to_string(), staging: None, restored: 0 }
    }

    /// The staging, once an entry was staged.
    pub(super) fn into_staging(self) -> Option<Staging<'a>> {
        self.staging
    }

    /// Where `host` (a path on the host below a replaced root) is staged.
    pub(super) fn staged_path(&self, host: &Path) -> Option<PathBuf> {
        self.staging.as_ref().and_then(|s| s.path_of(host))
    }

    fn place(&mut self, manifest: &Manifest, entry: &Entry) -> Result<PathBuf, ArchiveError> {
        if self.staging.is_none() {
            self.staging = Some(Staging::new(self.sys, Path::new(&manifest.data_dir), &self.stamp)?);
        }
        let host = entry.host_path();
        self.staged_path(&host).ok_or_else(|| ArchiveError::Io {
            what: "cannot restore",
            path: host,
            source: io::Error::new(io::ErrorKind::InvalidInput, "it is not below what a restore replaces"),
        })
    }

    fn io<'p>(path: &'p Path, what: &'static str) -> impl FnOnce(io::Error) -> ArchiveError + 'p {
        move |source| ArchiveError::Io { what, path: path.to_path_buf(), source }
    }

    fn owner(&mut self, entry: &Entry, path: &Path) -> Result<(), ArchiveError> {
        self.sys.set_owner(path, entry.uid, entry.gid).map_err(Self::io(path, "cannot set the owner of"))?;
        self.restored += 1;
        Ok(())
    }

    /// Refuses to put a file or link where a directory is.
    fn not_a_dir(&self, path: &Path, what: &'static str) -> Result<(), ArchiveError> {
        if self.sys.metadata(path).is_ok_and(|m| m.kind == FileKind::Dir) {
            return Err(ArchiveError::Io {
                what,
                path: path.to_path_buf(),
                source: io::Error::from_raw_os_error(nix::libc::EISDIR),
            });
        }
        Ok(())
    }
}

impl Unpack for Extract<'_> {
    fn file(&mut self, manifest: &Manifest, entry: &Entry) -> Result<Option<Box<dyn AtomicFile>>, ArchiveError> {
        let path = self.place(manifest, entry)?;
        self.not_a_dir(&path, "cannot restore the file")?;
        Ok(Some(self.sys.create_atomic(&path, entry.mode).map_err(Self::io(&path, "cannot write"))?))
    }

    fn committed(&mut self, manifest: &Manifest, entry: &Entry) -> Result<(), ArchiveError> {
        let path = self.place(manifest, entry)?;
        self.owner(entry, &path)
    }

    fn dir(&mut self, manifest: &Manifest, entry: &Entry) -> Result<(), ArchiveError> {
        let path = self.place(manifest, entry)?;
        match self.sys.metadata(&path) {
            Ok(m) if m.kind == FileKind::Dir => {}
            Ok(_) => {
                return Err(ArchiveError::Io {
                    what: "cannot restore the directory",
                    path,
                    source: io::Error::from_raw_os_error(nix::libc::EEXIST),
                })
            }
            Err(_) => self.sys.create_dir_all(&path, entry.mode).map_err(Self::io(&path, "cannot create"))?,
        }
        self.sys.set_mode(&path, entry.mode).map_err(Self::io(&path, "cannot set the mode of"))?;
        self.owner(entry, &path)
    }

    fn symlink(&mut self, manifest: &Manifest, entry: &Entry) -> Result<(), ArchiveError> {
        let path = self.place(manifest, entry)?;
        self.not_a_dir(&path, "cannot restore the symlink")?;
        let target = entry.target.as_deref().unwrap_or_default();
        self.sys.symlink_atomic(Path::new(target), &path).map_err(Self::io(&path, "cannot create the symlink"))?;
        self.owner(entry, &path)
    }
}
