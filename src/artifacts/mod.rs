//! k3s release artifacts on the operator side (k3s-contract.md section 1): a channel resolved to
//! a version, and the k3s binary for an architecture, downloaded once into a local cache (or taken
//! from an airgap dir) and verified against the release's `sha256sum-<arch>.txt`.
//!
//! Trust: a binary is only ever handed out after its sha256 was computed here and found equal to
//! the checksum file's entry for exactly its file name. That holds for a fresh download, for every
//! use of a cached binary (it is hashed again each time: cheap next to a download, and a damaged
//! cache is noticed and downloaded again), and for an airgap dir. The checksum file comes from the
//! same source as the binary, so this detects damage and partial files, not a compromised source.
//!
//! Cache layout: `<cache_dir>/k3s/<version>/<arch>/{k3s[-arm64|-armhf|-s390x], sha256sum-<arch>.txt}`.
//! A cache hit makes no HTTP request at all. Downloads stream into a partial file in that dir,
//! are hashed while streaming, fsynced, and renamed into place only once verified: a failed or
//! mismatching download leaves no binary behind. An interrupted download (this run or an earlier
//! one) continues with an HTTP Range request when the server supports it.
//!
//! Airgap dirs are used in place, after verification; nothing is copied into the cache (the dir
//! is already local, and a copy would only be a second thing to keep in sync). The version of an
//! airgap binary is taken on trust from the caller: a checksum file proves the bytes match the
//! file, not which release they are.
//!
//! The library prints nothing: progress goes to a [`DownloadProgress`], diagnostics to `tracing`
//! (URLs there and in errors never carry user info or queries).

mod cache;
mod checksum;
mod error;
mod http;
pub mod names;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::cluster::{ArtifactSource, K3sSpec};

pub use checksum::{expected_sha256, parse as parse_checksum_file, ChecksumEntry};
pub use error::ArtifactError;
pub use names::{arch_names, is_k3s_version, release_file_url, ArchNames};

pub const DEFAULT_RELEASE_URL: &str = "https://github.com/k3s-io/k3s/releases/download";
pub const DEFAULT_CHANNEL_URL: &str = "https://update.k3s.io/v1-release/channels";
/// The channel used when the cluster file names neither a version nor a channel.
pub const DEFAULT_CHANNEL: &str = crate::cluster::DEFAULT_CHANNEL;

/// No checksum file is anywhere near this big (a real one is a few hundred bytes).
const CHECKSUM_FILE_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct ArtifactOptions {
    /// Where downloads are kept: `$XDG_CACHE_HOME/k3node`, else `~/.cache/k3node`.
    pub cache_dir: PathBuf,
    /// Base URL of the channel server, without trailing slash: `<channel_url>/<channel>` redirects
    /// to the channel's current release.
    pub channel_url: String,
    /// Further attempts after a network error, a stall or an HTTP 5xx (never after a 404).
    /// A download attempt that got at least 4 MiB further does not count.
    pub retries: u32,
    /// Bound on connecting, on waiting for a response, and on a stall (no byte received) in the
    /// middle of a body. A long download that keeps moving is never cut.
    pub timeout: Duration,
    /// Wait before the first retry; doubled for each further one (at most 30 s).
    pub backoff: Duration,
}

impl Default for ArtifactOptions {
    fn default() -> Self {
        ArtifactOptions {
            cache_dir: default_cache_dir(),
            channel_url: DEFAULT_CHANNEL_URL.to_string(),
            retries: 3,
            timeout: Duration::from_secs(30),
            backoff: Duration::from_secs(1),
        }
    }
}

/// `$XDG_CACHE_HOME/k3node` when that is set to an absolute path, else `~/.cache/k3node`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from) {
        if xdg.is_absolute() {
            return xdg.join("k3node");
        }
    }
    let home = crate::home::home_dir().unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("k3node")
}

/// Receives download progress. Calls come from the task that runs the download.
///
/// Per download: `started` (again after a retry, with the bytes already on disk reported at once
/// through `advanced`), `advanced` with each chunk's size (a delta), and `finished` once at the
/// end, whether it succeeded or not (the returned result says which). Cache hits and airgap
/// files report nothing.
pub trait DownloadProgress: Send + Sync {
    /// `what` is e.g. "k3s v1.31.4+k3s1 (arm64)"; `total` the size when the server says it.
    fn started(&self, what: &str, total: Option<u64>);
    fn advanced(&self, bytes: u64);
    fn finished(&self);
}

/// For callers that want no progress.
pub struct NoProgress;

impl DownloadProgress for NoProgress {
    fn started(&self, _: &str, _: Option<u64>) {}
    fn advanced(&self, _: u64) {}
    fn finished(&self) {}
}

/// Which file of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseArtifact {
    /// The k3s binary (`k3s`, `k3s-arm64`, ...): kept 0755.
    Binary,
    /// The airgap images bundle (`k3s-airgap-images-<arch>.tar.zst`): kept 0644.
    AirgapImages,
}

impl ReleaseArtifact {
    pub fn file_name(self, names: &ArchNames) -> &'static str {
        match self {
            ReleaseArtifact::Binary => names.binary,
            ReleaseArtifact::AirgapImages => names.airgap_images,
        }
    }

    fn mode(self) -> u32 {
        match self {
            ReleaseArtifact::Binary => 0o755,
            ReleaseArtifact::AirgapImages => 0o644,
        }
    }

    fn describe(self, version: &str, arch: &str) -> String {
        match self {
            ReleaseArtifact::Binary => format!("k3s {version} ({arch})"),
            ReleaseArtifact::AirgapImages => format!("k3s {version} airgap images ({arch})"),
        }
    }
}

/// A file of a k3s release on the operator's disk (the binary, the airgap images bundle),
/// verified against the release's checksum file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseFile {
    pub version: String,
    /// amd64, arm64, armhf or s390x.
    pub arch: String,
    pub path: PathBuf,
    /// Lowercase hex, as computed from the file (and equal to the checksum file's entry).
    pub sha256: String,
    pub size: u64,
    /// Where it came from this time.
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Origin {
    /// Already in the cache (and still matching its checksum): no HTTP request was made.
    Cache,
    /// Downloaded now from this URL (credentials and query removed).
    Downloaded { url: String },
    /// The file in the airgap dir, used in place.
    Airgap,
}

/// The version to install: the pinned `k3s.version`, else the channel's current release (default
/// channel `stable`), read from the redirect that `<channel_url>/<channel>` answers with (its
/// Location's last path segment, URL-decoded). A pinned version makes no HTTP request.
pub async fn resolve_version(spec: &K3sSpec, opts: &ArtifactOptions) -> Result<String, ArtifactError> {
    if let Some(version) = &spec.version {
        check_version(version, "k3s.version in the cluster file")?;
        return Ok(version.clone());
    }
    let channel = spec.channel.as_deref().unwrap_or(DEFAULT_CHANNEL);
    let url = format!("{}/{}", opts.channel_url.trim_end_matches('/'), names::encode_path_segment(channel));
    let version = http::Http::new(opts)?.channel_version(&url, channel).await?;
    tracing::info!(channel, version = %version, "resolved the k3s channel");
    Ok(version)
}

fn check_version(version: &str, origin: &str) -> Result<(), ArtifactError> {
    if is_k3s_version(version) {
        return Ok(());
    }
    Err(ArtifactError::BadVersion {
        version: version.to_string(),
        origin: origin.to_string(),
        hint: "pick one from https://github.com/k3s-io/k3s/releases".into(),
    })
}

/// The verified k3s binary of `version` for `arch` (amd64, arm64, armhf, s390x).
///
/// Release and mirror sources share one layout: `<base>/<version, + as %2B>/<file>`. The binary
/// comes from the cache when it is there and still hashes to its recorded checksum; else the
/// checksum file is fetched, the binary downloaded (resumed, retried), verified, and cached.
/// An airgap dir's binary and checksum file are verified and used in place.
pub async fn fetch_k3s(
    spec: &K3sSpec,
    version: &str,
    arch: &str,
    opts: &ArtifactOptions,
    progress: &dyn DownloadProgress,
) -> Result<ReleaseFile, ArtifactError> {
    fetch(spec, version, &arch_names(arch)?, ReleaseArtifact::Binary, opts, progress).await
}

/// The release's airgap images bundle for `arch`, when the cluster wants it: with
/// `spec.k3s.airgapImages`, or when the airgap dir holds it. Fetched, cached and verified as
/// the binary is ([`fetch_k3s`]).
pub async fn fetch_airgap_images(
    spec: &K3sSpec,
    version: &str,
    arch: &str,
    opts: &ArtifactOptions,
    progress: &dyn DownloadProgress,
) -> Result<Option<ReleaseFile>, ArtifactError> {
    let names = arch_names(arch)?;
    let in_airgap_dir = match &spec.source {
        ArtifactSource::AirgapDir { path } => {
            tokio::fs::metadata(path.join(names.airgap_images)).await.is_ok_and(|m| m.is_file())
        }
        _ => false,
    };
    if !spec.airgap_images && !in_airgap_dir {
        return Ok(None);
    }
    fetch(spec, version, &names, ReleaseArtifact::AirgapImages, opts, progress).await.map(Some)
}

async fn fetch(
    spec: &K3sSpec,
    version: &str,
    names: &ArchNames,
    artifact: ReleaseArtifact,
    opts: &ArtifactOptions,
    progress: &dyn DownloadProgress,
) -> Result<ReleaseFile, ArtifactError> {
    check_version(version, "the version asked for")?;
    match &spec.source {
        ArtifactSource::AirgapDir { path } => from_airgap(path, version, names, artifact).await,
        ArtifactSource::Release { url } | ArtifactSource::Mirror { url } => {
            from_release(url, version, names, artifact, opts, progress).await
        }
    }
}

async fn from_release(
    base: &str,
    version: &str,
    names: &ArchNames,
    artifact: ReleaseArtifact,
    opts: &ArtifactOptions,
    progress: &dyn DownloadProgress,
) -> Result<ReleaseFile, ArtifactError> {
    let dir = cache::entry_dir(&opts.cache_dir, version, names);
    let file = artifact.file_name(names);
    if let Some(hit) = cache::lookup(&dir, version, names, file).await? {
        return Ok(hit);
    }
    tokio::fs::create_dir_all(&dir).await.map_err(ArtifactError::io("create the cache dir", &dir))?;
    let _lock = cache::lock(&dir).await?;
    // Another k3node may have finished the same download while this one waited for the lock.
    if let Some(hit) = cache::lookup(&dir, version, names, file).await? {
        return Ok(hit);
    }

    let http = http::Http::new(opts)?;
    let sums_url = release_file_url(base, version, names.checksum_file);
    let shown_sums_url = names::redact_url(&sums_url);
    let sums = http
        .get_small(
            &sums_url,
            &format!("k3s {version} for {} (its checksum file {})", names.arch, names.checksum_file),
            CHECKSUM_FILE_LIMIT,
        )
        .await?;
    let sums_text = std::str::from_utf8(&sums).map_err(|_| ArtifactError::ChecksumFileMalformed {
        file: shown_sums_url.clone(),
        line: 0,
        reason: "it is not text (not UTF-8)".into(),
    })?;
    let expected = expected_sha256(sums_text, &shown_sums_url, file)?;

    let bin_url = release_file_url(base, version, file);
    let shown_bin_url = names::redact_url(&bin_url);
    let partial = dir.join(format!(".{file}.{expected}.partial"));
    cache::remove_stale_partials(&dir, &partial, file);
    let what = artifact.describe(version, names.arch);

    let mut resume = true;
    let got = loop {
        let got = match http.download(&bin_url, &partial, resume, &expected, &what, progress).await {
            Ok(got) => got,
            Err(e) => {
                // Keep a partial download only for a later run to continue after a network
                // failure; after a 404 or another final answer there is nothing to continue.
                let keep = matches!(e, ArtifactError::Network { .. } | ArtifactError::HttpStatus { status: 500.., .. })
                    && tokio::fs::metadata(&partial).await.is_ok_and(|m| m.len() > 0);
                if !keep {
                    let _ = tokio::fs::remove_file(&partial).await;
                }
                return Err(e);
            }
        };
        if got.sha256 == expected {
            break got;
        }
        let _ = tokio::fs::remove_file(&partial).await;
        if got.resumed {
            // The kept bytes may be what went wrong (a file replaced on the server between two
            // runs): one more time from zero before calling it a mismatch.
            tracing::warn!(url = %shown_bin_url, expected = %expected, found = %got.sha256,
                "a resumed download does not match its checksum; downloading it again from the start");
            resume = false;
            continue;
        }
        return Err(ArtifactError::ChecksumMismatch {
            url: shown_bin_url,
            checksum_file: shown_sums_url,
            expected,
            actual: got.sha256,
        });
    };
    let path = cache::install(&dir, names, file, artifact.mode(), &partial, &sums).await?;
    tracing::info!(url = %shown_bin_url, path = %path.display(), sha256 = %got.sha256, "downloaded and verified {file}");
    Ok(ReleaseFile {
        version: version.to_string(),
        arch: names.arch.to_string(),
        path,
        sha256: got.sha256,
        size: got.size,
        origin: Origin::Downloaded { url: shown_bin_url },
    })
}

async fn from_airgap(
    dir: &Path,
    version: &str,
    names: &ArchNames,
    artifact: ReleaseArtifact,
) -> Result<ReleaseFile, ArtifactError> {
    let file = artifact.file_name(names);
    let bin = dir.join(file);
    let sums = dir.join(names.checksum_file);
    for (path, name) in [(&bin, file), (&sums, names.checksum_file)] {
        if !tokio::fs::metadata(path).await.is_ok_and(|m| m.is_file()) {
            return Err(ArtifactError::AirgapFileMissing {
                dir: dir.to_path_buf(),
                path: path.clone(),
                name: name.to_string(),
                version: version.to_string(),
            });
        }
    }
    let shown_sums = sums.display().to_string();
    let text = tokio::fs::read(&sums).await.map_err(ArtifactError::io("read", &sums))?;
    let text = String::from_utf8(text).map_err(|_| ArtifactError::ChecksumFileMalformed {
        file: shown_sums.clone(),
        line: 0,
        reason: "it is not text (not UTF-8)".into(),
    })?;
    let expected = expected_sha256(&text, &shown_sums, file)?;
    let (actual, size) = crate::digest::sha256_file_async(&bin).await.map_err(ArtifactError::io("read", &bin))?;
    if actual != expected {
        return Err(ArtifactError::ChecksumMismatch {
            url: bin.display().to_string(),
            checksum_file: shown_sums,
            expected,
            actual,
        });
    }
    Ok(ReleaseFile {
        version: version.to_string(),
        arch: names.arch.to_string(),
        path: bin,
        sha256: actual,
        size,
        origin: Origin::Airgap,
    })
}
