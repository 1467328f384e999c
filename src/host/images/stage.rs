//! Archives staged for k3s to import at start: `<data-dir>/agent/images/<name>` (contract
//! section 7). The upload is written under `<data-dir>/agent/.k3node-staging/` (outside the
//! directory k3s reads and, in newer releases, watches), checked against its size and sha256,
//! fsynced, and only then renamed into the images directory: k3s never sees half a file, and a
//! cut or corrupt upload leaves the directory as it was. Works before k3s is installed.
//!
//! What `up`'s preloads staged is recorded in `<data-dir>/agent/.k3node-preloaded` (a JSON list
//! of file names, written atomically): only those names are ever pruned when they leave the
//! cluster file, never an archive staged another way.

use std::io;
use std::path::{Path, PathBuf};

use super::ImagesError;
use crate::host::error::HostError;
use crate::host::serve::{Context, HostOperation};
use crate::host::system::HostSystem;
use crate::protocol::frame::FrameError;
use crate::protocol::images::{PruneStaged, Pruned, StageImages, Staged, StagedDigest, StagedDigestAnswer};

/// The suffixes k3s imports from its images directory (contract section 7).
pub const IMPORTED_SUFFIXES: [&str; 8] =
    [".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst", ".tar.lz4", ".tar.bz2", ".tbz"];

fn images_dir(sys: &dyn HostSystem) -> PathBuf {
    crate::host::k3s::data_dir(sys)
        .unwrap_or_else(|_| PathBuf::from(crate::host::k3s::layout::DEFAULT_DATA_DIR))
        .join("agent/images")
}

fn checked_name(name: &str) -> Result<&str, ImagesError> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 200
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !plain || !IMPORTED_SUFFIXES.iter().any(|s| name.ends_with(s)) {
        return Err(ImagesError::BadRequest(format!(
            "{name:?} is not a file name k3s imports from its images directory (a plain name ending in {})",
            IMPORTED_SUFFIXES.join(", ")
        )));
    }
    Ok(name)
}

impl HostOperation for StagedDigest {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<StagedDigestAnswer, HostError> {
        let path = images_dir(ctx.sys).join(checked_name(&self.file_name)?);
        let sha256 = match crate::host::system::sha256_file(ctx.sys, &path) {
            Ok(sha) => Some(sha),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(ImagesError::Io { what: "cannot read", path, source: e }.into()),
        };
        Ok(StagedDigestAnswer { path: path.display().to_string(), sha256 })
    }
}

impl HostOperation for StageImages {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<Staged, HostError> {
        let sys = ctx.sys;
        let name = checked_name(&self.file_name)?.to_string();
        let dir = images_dir(sys);
        let staging = dir.parent().unwrap_or(Path::new("/")).join(".k3node-staging");
        let io_error = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source: io::Error| match FrameError::of(&source) {
                Some(frame) => ImagesError::Stream(frame.clone()),
                None => ImagesError::Io { what, path, source },
            }
        };
        sys.create_dir_all(&staging, 0o700).map_err(io_error("cannot create", &staging))?;
        sys.create_dir_all(&dir, 0o755).map_err(io_error("cannot create", &dir))?;
        // Earlier uploads cut off (their writer killed) left their temp files: nobody writes
        // here now (the host lock is held), so they are leftovers.
        for leftover in sys.read_dir_names(&staging).unwrap_or_default() {
            let _ = sys.remove_file(&staging.join(leftover));
        }
        let temp = staging.join(&name);
        let mut file = sys.create_atomic(&temp, 0o600).map_err(io_error("cannot create a temp file for", &temp))?;
        let mut upload = ctx.upload();
        let written = io::copy(&mut upload, &mut file).map_err(io_error("cannot write", &temp))?;
        let actual = upload.verified().map(|(_, sha)| sha).unwrap_or_default();
        if written != self.size || actual != self.sha256 {
            return Err(ImagesError::Upload(format!(
                "received {written} bytes with sha256 {actual}, expected {} bytes with sha256 {}",
                self.size, self.sha256
            ))
            .into());
        }
        file.commit().map_err(io_error("cannot write", &temp))?;
        let dest = dir.join(&name);
        sys.rename(&temp, &dest).map_err(io_error("cannot move into place", &dest))?;
        Ok(Staged { path: dest.display().to_string() })
    }
}

fn preload_record(sys: &dyn HostSystem) -> PathBuf {
    images_dir(sys).parent().unwrap_or(Path::new("/")).join(".k3node-preloaded")
}

impl HostOperation for PruneStaged {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<Pruned, HostError> {
        let sys = ctx.sys;
        for name in &self.keep {
            checked_name(name)?;
        }
        let record = preload_record(sys);
        let before: Vec<String> = match sys.read_to_string(&record) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                ImagesError::BadRequest(format!(
                    "{} is not the list of names k3node writes ({e}); remove it and run again",
                    record.display()
                ))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(ImagesError::Io { what: "cannot read", path: record, source: e }.into()),
        };
        let dir = images_dir(sys);
        let mut removed = Vec::new();
        // Only plain names k3node could have staged: a record edited by hand reaches nothing else.
        for name in before.iter().filter(|n| !self.keep.contains(n) && checked_name(n).is_ok()) {
            let path = dir.join(name);
            if !sys.exists(&path) {
                continue;
            }
            if !self.dry_run {
                match sys.remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(ImagesError::Io { what: "cannot remove", path, source: e }.into()),
                }
            }
            removed.push(name.clone());
        }
        if !self.dry_run && before != self.keep {
            if self.keep.is_empty() {
                match sys.remove_file(&record) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(ImagesError::Io { what: "cannot remove", path: record, source: e }.into())
                    }
                    _ => {}
                }
            } else {
                let text = serde_json::to_string(&self.keep).unwrap_or_default();
                sys.create_dir_all(record.parent().unwrap_or(Path::new("/")), 0o755).map_err(|e| ImagesError::Io {
                    what: "cannot create",
                    path: record.clone(),
                    source: e,
                })?;
                sys.write_atomic(&record, text.as_bytes(), 0o600).map_err(|e| ImagesError::Io {
                    what: "cannot write",
                    path: record,
                    source: e,
                })?;
            }
        }
        Ok(Pruned { removed })
    }
}
