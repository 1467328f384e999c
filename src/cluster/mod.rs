//! The cluster file: see README.md, "cluster.yaml reference".
//!
//! [`load`] reads and validates the whole file before anything else happens: every problem is
//! collected (not just the first) with file, line, column and field path, so that an invalid file
//! never reaches a host. Loading reads the cluster file and nothing else (whether key files exist
//! is [`check_key_files`]'s job, called before connecting), but for the environment variables a
//! registry credential names (`{fromEnv: NAME}`). Any input, however
//! malformed or large, ends in a [`LoadError`] with a position, never a panic or a hang (see
//! source.rs and prescan.rs for the limits, and tests/fuzz for the proof).

mod agent;
mod backup;
mod calendar;
mod diagnostic;
mod extra;
pub mod k3s_config;
pub mod manifests;
mod paths;
mod prescan;
mod reader;
pub mod registries;
mod schema;
mod source;
mod starter;
mod syntax;
mod validate;

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

pub use crate::protocol::preflight::Role;
use crate::protocol::Secret;
pub use agent::{threshold_defaults, AgentSpec, CHECK_NAMES, K3S_PORTS};
pub use backup::{Backup, Retention, DEFAULT_KEEP_LAST};
pub use calendar::{calendar as check_calendar, timespan_us};
pub use diagnostic::{Diagnostic, Diagnostics, Location, Severity, MAX_KEPT_DIAGNOSTICS, MAX_SHOWN_DIAGNOSTICS};
pub use extra::{CLUSTER_WIDE_KEYS, FLAG_ENV, K3S_DOCS_NO_PROXY, MANAGED_ENV};
pub use prescan::MAX_NESTING;
pub use source::{escape_file_name, MAX_FILE_SIZE, STDIN_NAME, STDIN_PATH};
pub use starter::starter_file;

/// The only `apiVersion` this version of k3node reads.
pub const API_VERSION: &str = "k3node.io/v1alpha1";
pub const KIND: &str = "Cluster";
pub const DEFAULT_RELEASE_URL: &str = "https://github.com/k3s-io/k3s/releases/download";
pub const DEFAULT_CHANNEL: &str = "stable";
pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";
pub const DEFAULT_SERVICE_CIDR: &str = "10.43.0.0/16";
pub const DEFAULT_CLUSTER_DNS: &str = "10.43.0.10";

/// A validated cluster file, with defaults applied and paths resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterFile {
    /// The file it was read from (`-` for stdin).
    pub source: PathBuf,
    /// `metadata.name`: also the kubeconfig context name.
    pub name: String,
    pub ssh: SshDefaults,
    pub hosts: Vec<Host>,
    pub k3s: K3sSpec,
    /// What is accepted but probably not meant (a CIDR with host bits set, a key passed to k3s
    /// unchecked). Every command shows them on stderr before it starts (`load_cluster` in
    /// src/commands does: `if !f.warnings.is_empty() { eprintln!("{}", f.warnings) }`).
    pub warnings: Diagnostics,
    /// `spec.manifests` as written: what [`read_manifests`] reads.
    pub manifest_sources: Vec<manifests::ManifestSource>,
    /// The add-on manifests, once [`read_manifests`] has read and checked them.
    pub manifests: Vec<manifests::Manifest>,
    /// `spec.backup` (its defaults when absent).
    pub backup: Backup,
    /// `spec.agent` as written (every field unset when absent): the node daemon's settings.
    pub agent: AgentSpec,
    /// `spec.images`: image archives staged on every node before k3s starts (`up`), read and
    /// checked by the phase that stages them, before anything is sent.
    pub images: Vec<ImageArchive>,
}

/// A `spec.images` entry: an image archive file and where the cluster file names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageArchive {
    pub path: PathBuf,
    pub at: Location,
}

impl ClusterFile {
    pub fn servers(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(|h| h.role == Role::Server)
    }

    pub fn agents(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(|h| h.role == Role::Agent)
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

/// `spec.ssh`: what every host uses unless it says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SshDefaults {
    pub user: String,
    pub port: u16,
    pub key_path: Option<PathBuf>,
    /// Where `keyPath` was written, for messages about the key file (see [`check_key_files`]).
    pub key_path_at: Option<Location>,
    pub known_hosts: PathBuf,
    /// The OpenSSH client config to read: the given one, else ~/.ssh/config when it existed at
    /// load time, else none.
    pub config_file: Option<PathBuf>,
    pub host_key_check: HostKeyCheck,
    pub bastion: Option<Bastion>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyCheck {
    /// Only keys already in known_hosts are accepted.
    Strict,
    /// Trust on first use: an unknown key is added to known_hosts; a changed key is still refused.
    AcceptNew,
}

/// A jump host (OpenSSH's ProxyJump).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bastion {
    pub address: String,
    /// None: `spec.ssh.user`.
    pub user: Option<String>,
    pub port: u16,
    pub key_path: Option<PathBuf>,
    /// Where `keyPath` was written.
    pub key_path_at: Option<Location>,
}

impl Bastion {
    pub fn user_or<'a>(&'a self, d: &'a SshDefaults) -> &'a str {
        self.user.as_deref().unwrap_or(&d.user)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    /// The Kubernetes node name.
    pub name: String,
    /// IP address or DNS name, as written.
    pub address: String,
    pub role: Role,
    pub ssh: HostSsh,
    pub labels: BTreeMap<String, String>,
    /// `key[=value]:Effect`, validated.
    pub taints: Vec<String>,
    /// `hosts[].k3s.extraConfig`: config.yaml keys for this host only, over
    /// `spec.k3s.extraConfig` (see [`ClusterFile::extra_config_for`]).
    pub extra_config: BTreeMap<String, serde_json::Value>,
    /// `hosts[].env`: env file variables for this host only, over `spec.k3s.env` (see
    /// [`ClusterFile::env_for`]).
    #[serde(serialize_with = "redacted")]
    pub env: BTreeMap<String, Secret>,
}

/// Per-host overrides of [`SshDefaults`]; `None` means "the default".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostSsh {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub key_path: Option<PathBuf>,
    /// Where `keyPath` was written.
    pub key_path_at: Option<Location>,
    pub bastion: Option<Bastion>,
}

impl Host {
    pub fn ssh_user<'a>(&'a self, d: &'a SshDefaults) -> &'a str {
        self.ssh.user.as_deref().unwrap_or(&d.user)
    }

    pub fn ssh_port(&self, d: &SshDefaults) -> u16 {
        self.ssh.port.unwrap_or(d.port)
    }

    pub fn key_path<'a>(&'a self, d: &'a SshDefaults) -> Option<&'a Path> {
        self.ssh.key_path.as_deref().or(d.key_path.as_deref())
    }

    /// Where the key file [`Host::key_path`] returns was named in the cluster file.
    pub fn key_path_at<'a>(&'a self, d: &'a SshDefaults) -> Option<&'a Location> {
        if self.ssh.key_path.is_some() {
            self.ssh.key_path_at.as_ref()
        } else {
            d.key_path_at.as_ref()
        }
    }

    pub fn bastion<'a>(&'a self, d: &'a SshDefaults) -> Option<&'a Bastion> {
        self.ssh.bastion.as_ref().or(d.bastion.as_ref())
    }

    /// The address as an IP, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.parse().ok()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct K3sSpec {
    /// An exact version (`v1.31.4+k3s1`); exclusive with `channel`.
    pub version: Option<String>,
    /// A release channel; `stable` when neither version nor channel is given.
    pub channel: Option<String>,
    pub source: ArtifactSource,
    /// Validated config.yaml keys. Lists are arrays of strings; CIDR and IP keys are
    /// comma-separated strings; booleans and numbers are JSON booleans and numbers.
    pub config: BTreeMap<String, serde_json::Value>,
    /// Where channels resolve (default https://update.k3s.io/v1-release/channels); for mirrors and tests.
    pub channel_url: Option<String>,
    /// The address kubeconfigs point at (a load balancer or DNS name); default the first server's address.
    pub api_endpoint: Option<String>,
    /// `spec.k3s.extraConfig`: config.yaml keys k3node does not know, passed to every host
    /// unchecked (values typed as YAML wrote them).
    pub extra_config: BTreeMap<String, serde_json::Value>,
    /// `spec.k3s.env`: variables for every host's env file, after k3node's own.
    #[serde(serialize_with = "redacted")]
    pub env: BTreeMap<String, Secret>,
    /// `spec.k3s.registries`: every node's registries.yaml; None leaves that file alone.
    pub registries: Option<registries::Registries>,
    /// `spec.k3s.airgapImages`: stage the release's `k3s-airgap-images-<arch>.tar.zst` on every
    /// node before k3s starts (also done, without the switch, when the airgap dir holds it).
    pub airgap_images: bool,
}

/// Env values are secrets (a proxy URL may carry a password): a serialized cluster file shows
/// the names only.
fn redacted<S: Serializer>(env: &BTreeMap<String, Secret>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(env.keys().map(|k| (k, "<redacted>")))
}

impl K3sSpec {
    fn config_str(&self, key: &str) -> Option<&str> {
        self.config.get(key).and_then(|v| v.as_str())
    }

    pub fn cluster_cidr(&self) -> String {
        self.config_str("cluster-cidr").unwrap_or(DEFAULT_CLUSTER_CIDR).to_string()
    }

    pub fn service_cidr(&self) -> String {
        self.config_str("service-cidr").unwrap_or(DEFAULT_SERVICE_CIDR).to_string()
    }

    /// The configured cluster DNS, else what k3s picks: the 10th address of the (first) service
    /// CIDR, which is 10.43.0.10 for the default service CIDR.
    pub fn cluster_dns(&self) -> String {
        if let Some(dns) = self.config_str("cluster-dns") {
            return dns.to_string();
        }
        let first = self.service_cidr();
        let first = first.split(',').next().unwrap_or(DEFAULT_SERVICE_CIDR).trim().to_string();
        validate::nth_address(&first, 10).map_or_else(|| DEFAULT_CLUSTER_DNS.to_string(), |ip| ip.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ArtifactSource {
    /// GitHub-style releases: `<url>/<version>/<file>`. No trailing slash.
    Release { url: String },
    /// A mirror with the same layout as the releases. No trailing slash.
    Mirror { url: String },
    /// A local directory holding the k3s binary and `sha256sum-<arch>.txt`.
    AirgapDir { path: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be opened or read (missing, permission denied, a symlink loop).
    // Not a #[source]: the io error is already in the message, and anyhow would print it twice.
    #[error("cannot read cluster file {}: {cause} (`k3node init` writes a starter file)", escape_file_name(&path.display().to_string()))]
    Read { path: PathBuf, cause: io::Error },
    /// Not a regular file: a directory, a FIFO, a device. Reading those could block forever or
    /// never end.
    #[error("{} is {kind}, not a cluster file{}", escape_file_name(&path.display().to_string()), if *kind == "a named pipe (FIFO)" { "; to read the cluster file from a pipe, pass `-c -` and feed it on stdin" } else { "" })]
    NotAFile { path: PathBuf, kind: &'static str },
    /// Larger than [`MAX_FILE_SIZE`].
    #[error("{} is larger than {} KiB ({size} bytes or more); a cluster file is a few kilobytes: is this the right file?", escape_file_name(&path.display().to_string()), MAX_FILE_SIZE / 1024)]
    TooLarge { path: PathBuf, size: u64 },
    /// The content is not a valid cluster file; every problem, with its position.
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Reads and validates a cluster file. Relative paths in it are resolved against its directory.
/// [`STDIN_PATH`] (`-`) reads the file from stdin; relative paths then start at the current
/// directory. Whatever the input, the result is a value or a [`LoadError`]: all of its variants
/// mean bad input.
pub fn load(path: &Path) -> Result<ClusterFile, LoadError> {
    let bytes = source::read(path).map_err(|failure| match failure {
        source::ReadFailure::Io(cause) => LoadError::Read { path: path.to_path_buf(), cause },
        source::ReadFailure::NotRegular(kind) => LoadError::NotAFile { path: path.to_path_buf(), kind },
        source::ReadFailure::TooLarge(size) => LoadError::TooLarge { path: path.to_path_buf(), size },
    })?;
    let mut file = parse_bytes(&source::display_name(path), &source::base_dir(path), &bytes)?;
    file.source = path.to_path_buf();
    Ok(file)
}

/// Validates cluster file bytes: the text must be UTF-8 (see [`parse`] for the rest). This is
/// what [`load`] does after reading, and what the fuzz target exercises.
pub fn parse_bytes(display_name: &str, base_dir: &Path, bytes: &[u8]) -> Result<ClusterFile, LoadError> {
    let mut sink = diagnostic::Sink::new(display_name);
    match source::decode(&mut sink, bytes) {
        Some(text) => parse_text(sink, display_name, base_dir, &text),
        None => Err(LoadError::Invalid(sink.finish())),
    }
}

/// Validates cluster file text. `display_name` is how diagnostics name the file; `base_dir`
/// is what relative paths in it are relative to.
pub fn parse(display_name: &str, base_dir: &Path, text: &str) -> Result<ClusterFile, LoadError> {
    parse_bytes(display_name, base_dir, text.as_bytes())
}

/// Reads and checks the manifests `spec.manifests` names into `file.manifests` (every YAML
/// document parses and names its apiVersion, kind and metadata.name; no object twice). Like
/// [`check_key_files`], not part of [`load`]; commands that deliver manifests call it before they
/// connect. Empty when all is well.
pub fn read_manifests(file: &mut ClusterFile) -> Diagnostics {
    match manifests::read(&file.manifest_sources) {
        Ok(list) => {
            file.manifests = list;
            Diagnostics::default()
        }
        Err(problems) => problems,
    }
}

/// Checks that every key file the cluster file names (`keyPath` in spec.ssh, spec.ssh.bastion,
/// hosts[].ssh and hosts[].ssh.bastion) is a regular file k3node can read; each problem is an
/// error at the `keyPath` setting that names the file. Not part of [`load`], which reads the
/// cluster file and nothing else: `k3node validate` calls it, and so does every command before it
/// connects. Empty when all is well.
pub fn check_key_files(file: &ClusterFile) -> Diagnostics {
    let mut settings: Vec<(String, &Option<PathBuf>, &Option<Location>)> =
        vec![("spec.ssh.keyPath".into(), &file.ssh.key_path, &file.ssh.key_path_at)];
    if let Some(b) = &file.ssh.bastion {
        settings.push(("spec.ssh.bastion.keyPath".into(), &b.key_path, &b.key_path_at));
    }
    for (i, h) in file.hosts.iter().enumerate() {
        settings.push((format!("spec.hosts[{i}].ssh.keyPath"), &h.ssh.key_path, &h.ssh.key_path_at));
        if let Some(b) = &h.ssh.bastion {
            settings.push((format!("spec.hosts[{i}].ssh.bastion.keyPath"), &b.key_path, &b.key_path_at));
        }
    }
    let mut found = Vec::new();
    for (field, path, at) in settings {
        let Some(path) = path else { continue };
        let Some(problem) = key_file_problem(path) else { continue };
        let at = at.clone().unwrap_or_else(|| Location {
            file: escape_file_name(&file.source.display().to_string()),
            line: 1,
            column: 1,
        });
        let hint =
            "keyPath is relative to the cluster file's directory (the current directory for `-c -`); ~/ is your home"
                .to_string();
        found.push(at.diagnostic(Severity::Error, field, problem, Some(hint)));
    }
    found.sort_by_key(|d| (d.line, d.column));
    Diagnostics(found, 0)
}

/// Checks that every `spec.images` archive is a regular file k3node can read, each problem an
/// error at the list entry that names it. Their contents are read and checked by the phase that
/// stages them; this only keeps a misspelt path from being found after hosts were reached.
pub fn check_image_archives(file: &ClusterFile) -> Diagnostics {
    let mut found = Vec::new();
    for (i, archive) in file.images.iter().enumerate() {
        let shown = escape_file_name(&archive.path.display().to_string());
        let opened = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
                .open(&archive.path)
        };
        let problem = match opened.and_then(|f| f.metadata()) {
            Ok(meta) if meta.is_file() => continue,
            Ok(meta) if meta.is_dir() => format!("image archive {shown} is a directory, not a tarball"),
            Ok(_) => format!("image archive {shown} is not a regular file"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => format!("image archive {shown} does not exist"),
            Err(e) => format!("cannot read image archive {shown}: {e}"),
        };
        let hint = "paths are relative to the cluster file's directory; an archive is the output of `docker save`, `podman save` or `skopeo copy ... oci-archive:FILE:NAME`".to_string();
        found.push(archive.at.diagnostic(Severity::Error, format!("spec.images[{i}]"), problem, Some(hint)));
    }
    Diagnostics(found, 0)
}

/// Why `path` cannot serve as a key file, or None when it can be opened and read.
fn key_file_problem(path: &Path) -> Option<String> {
    let shown = escape_file_name(&path.display().to_string());
    // Non-blocking, like the cluster file: a FIFO named as key must not hang the check.
    let opened = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY).open(path)
    };
    match opened.and_then(|f| f.metadata()) {
        Ok(meta) if meta.is_file() => None,
        Ok(meta) if meta.is_dir() => Some(format!("key file {shown} is a directory")),
        Ok(_) => Some(format!("key file {shown} is not a regular file")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Some(format!("key file {shown} does not exist")),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            Some(format!("key file {shown} cannot be read: permission denied"))
        }
        Err(e) => Some(format!("cannot read key file {shown}: {e}")),
    }
}

fn parse_text(
    mut sink: diagnostic::Sink,
    display_name: &str,
    base_dir: &Path,
    text: &str,
) -> Result<ClusterFile, LoadError> {
    let source = base_dir.join(Path::new(display_name).file_name().unwrap_or_default());
    let file = schema::load_yaml(&mut sink, text).map(|root| {
        let home = paths::home_dir();
        let (file, spans) = schema::read(&mut sink, &root, base_dir, home.as_deref(), source);
        validate::check(&mut sink, &file, &spans);
        file
    });
    match file {
        Some(mut file) if !sink.has_errors() => {
            file.warnings = sink.finish();
            Ok(file)
        }
        _ => Err(LoadError::Invalid(sink.finish())),
    }
}
