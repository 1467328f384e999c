use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Why a k3s artifact could not be had. Every message names the URL or file, what was expected
/// and what was found, and what to do. URLs in messages never carry credentials or queries.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("no k3s release exists for architecture {arch:?}: k3s ships amd64, arm64, armhf (ARMv7) and s390x binaries; use a host of one of those")]
    UnknownArch { arch: String },

    #[error("{version:?} ({origin}) is not a k3s version: expected one like v1.31.4+k3s1; {hint}")]
    BadVersion { version: String, origin: String, hint: String },

    #[error("k3s channel {channel:?} did not resolve: {url} answered {found}, but a redirect (HTTP 301/302/307/308) with a Location ending in the version was expected; check k3s.channel and the channel URL, or pin k3s.version")]
    ChannelNoRedirect { channel: String, url: String, found: String },

    #[error("{what} does not exist: {url} answered HTTP 404 Not Found; {hint}")]
    NotFound { url: String, what: String, hint: String },

    #[error("GET {url} failed with HTTP {status} after {attempts} attempt(s); {hint}")]
    HttpStatus { url: String, status: u16, attempts: u32, hint: String },

    #[error("GET {url} failed after {attempts} attempt(s): {cause}; check the network path to the server (DNS, proxy variables, firewall), or use a mirror or an airgap dir; a cut-off download continues where it stopped when run again")]
    Network { url: String, attempts: u32, cause: String },

    #[error("checksum mismatch for {url}: expected sha256 {expected} (from {checksum_file}), found {actual}; the file is damaged or not the release's: nothing was cached or used; fetch it again, and if it persists, compare the mirror or airgap dir with the official release")]
    ChecksumMismatch {
        /// The binary's URL (a download) or path (an airgap dir).
        url: String,
        /// The checksum file's URL or path.
        checksum_file: String,
        expected: String,
        actual: String,
    },

    #[error("{file} has no sha256 line for {name:?} (it lists: {}); it is not the checksum file of this release and architecture, or it is incomplete: take sha256sum-<arch>.txt from the same k3s release as the binary", if .listed.is_empty() { "nothing".to_string() } else { .listed.join(", ") })]
    ChecksumEntryMissing { file: String, name: String, listed: Vec<String> },

    #[error("{file} is not a valid sha256sum file: line {line}: {reason}; expected lines `<sha256 hex>  <file name>` as in the release's sha256sum-<arch>.txt")]
    ChecksumFileMalformed { file: String, line: usize, reason: String },

    #[error("airgap dir {}: {} is missing; copy {name} of k3s {version} from the release (https://github.com/k3s-io/k3s/releases) into it: the dir needs the file and the release's sha256sum-<arch>.txt beside it", dir.display(), path.display())]
    AirgapFileMissing { dir: PathBuf, path: PathBuf, name: String, version: String },

    #[error("another k3node has held the download lock on {} for {}s; wait for it to finish, or stop it and run again", dir.display(), waited.as_secs())]
    CacheBusy { dir: PathBuf, waited: Duration },

    #[error("cannot {action} {}: {cause}; check that the directory is writable and has free space", path.display())]
    Io { action: &'static str, path: PathBuf, cause: io::Error },

    #[error("cannot set up the HTTP client: {cause}")]
    Client { cause: String },
}

impl ArtifactError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |cause| ArtifactError::Io { action, path, cause }
    }
}
