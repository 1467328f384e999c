//! The operator-side cache: `<cache_dir>/k3s/<version>/<arch>/` holds the binary (0755), the
//! airgap images bundle when one was asked for (0644), and the release's checksum file they
//! were verified against. An entry is used only while the binary still
//! hashes to the checksum file's entry; downloads stream into a partial file in the same dir
//! (named after the expected sha256, so a later run continues only the same file) and are renamed
//! into place after verification. A lock on the dir keeps two k3node runs from downloading into
//! it at once.

use std::fs::{File, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::checksum;
use super::names::ArchNames;
use super::{ArtifactError, Origin, ReleaseFile};

/// How long to wait for another k3node's download into the same dir.
const LOCK_WAIT: Duration = Duration::from_secs(30 * 60);

pub(super) fn entry_dir(cache_dir: &Path, version: &str, names: &ArchNames) -> PathBuf {
    cache_dir.join("k3s").join(version).join(names.arch)
}

/// The cached `file` (the binary, the airgap images), when it is there and still hashes to its
/// recorded checksum. A cached file that no longer matches is removed (and so will be downloaded
/// again).
pub(super) async fn lookup(
    dir: &Path,
    version: &str,
    names: &ArchNames,
    file: &str,
) -> Result<Option<ReleaseFile>, ArtifactError> {
    let bin = dir.join(file);
    let sums = dir.join(names.checksum_file);
    if !tokio::fs::try_exists(&bin).await.unwrap_or(false) {
        return Ok(None);
    }
    let expected = match tokio::fs::read(&sums).await {
        Ok(bytes) => String::from_utf8(bytes)
            .ok()
            .and_then(|t| checksum::expected_sha256(&t, &sums.display().to_string(), file).ok()),
        Err(_) => None,
    };
    let (actual, size) =
        crate::digest::sha256_file_async(&bin).await.map_err(ArtifactError::io("read the cached file", &bin))?;
    match expected {
        Some(expected) if expected == actual => {
            tracing::debug!(path = %bin.display(), sha256 = %actual, "using the cached {file}");
            Ok(Some(ReleaseFile {
                version: version.to_string(),
                arch: names.arch.to_string(),
                path: bin,
                sha256: actual,
                size,
                origin: Origin::Cache,
            }))
        }
        expected => {
            tracing::warn!(
                path = %bin.display(),
                expected = expected.as_deref().unwrap_or("(no checksum recorded)"),
                found = %actual,
                "the cached {file} does not match its checksum; downloading it again"
            );
            match tokio::fs::remove_file(&bin).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ArtifactError::io("remove the damaged cached file", &bin)(e)),
            }
            Ok(None)
        }
    }
}

/// An exclusive lock on `dir` (flock on the directory itself, so that nothing is left behind),
/// held until dropped. Waits for another holder, at most [`LOCK_WAIT`].
pub(super) async fn lock(dir: &Path) -> Result<Flock<File>, ArtifactError> {
    let mut file = File::open(dir).map_err(ArtifactError::io("open the cache dir", dir))?;
    let start = Instant::now();
    let mut told = false;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((f, Errno::EWOULDBLOCK)) => {
                if !told {
                    tracing::info!(dir = %dir.display(), "waiting for another k3node that is downloading into the cache");
                    told = true;
                }
                if start.elapsed() > LOCK_WAIT {
                    return Err(ArtifactError::CacheBusy { dir: dir.to_path_buf(), waited: start.elapsed() });
                }
                file = f;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err((_, errno)) => {
                return Err(ArtifactError::io("lock the cache dir", dir)(errno.into()));
            }
        }
    }
}

/// Partial downloads of `file` in `dir` other than `keep`: left by an interrupted run of another
/// release build (another expected sha256). Removed; another file's partial is left to resume.
pub(super) fn remove_stale_partials(dir: &Path, keep: &Path, file: &str) {
    let prefix = format!(".{file}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".partial") && path != keep {
            tracing::debug!(path = %path.display(), "removing a stale partial download");
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Moves a verified download into place: the checksum file first, then `file` (with `mode`),
/// each atomically; the dir is fsynced.
pub(super) async fn install(
    dir: &Path,
    names: &ArchNames,
    file: &str,
    mode: u32,
    partial: &Path,
    checksum_text: &[u8],
) -> Result<PathBuf, ArtifactError> {
    let dir = dir.to_path_buf();
    let names = *names;
    let file = file.to_string();
    let partial = partial.to_path_buf();
    let checksum_text = checksum_text.to_vec();
    tokio::task::spawn_blocking(move || {
        let sums = dir.join(names.checksum_file);
        crate::fsutil::write_atomic(&sums, &checksum_text, 0o644).map_err(ArtifactError::io("write", &sums))?;
        let bin = dir.join(&file);
        std::fs::set_permissions(&partial, Permissions::from_mode(mode))
            .map_err(ArtifactError::io("set the mode of", &partial))?;
        std::fs::rename(&partial, &bin).map_err(ArtifactError::io("move the download to", &bin))?;
        crate::fsutil::sync_dir(&dir).map_err(ArtifactError::io("sync", &dir))?;
        Ok(bin)
    })
    .await
    .map_err(|e| ArtifactError::io("install into", PathBuf::new())(std::io::Error::other(e)))?
}
