//! The cluster file: see README.md, "cluster.yaml reference".
//!
//! [`load`] reads and validates the whole file before anything else happens: every problem is
//! collected (not just the first) with file, line, column and field path, so that an invalid file
//! never reaches a host.

mod backup;
mod calendar;
mod diagnostic;
pub mod k3s_config;
mod paths;
mod reader;
mod schema;
mod starter;
mod syntax;
mod validate;

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use crate::protocol::preflight::Role;
pub use backup::{Backup, Retention, DEFAULT_KEEP_LAST};
pub use calendar::{calendar as check_calendar, timespan_us};
pub use diagnostic::{Diagnostic, Diagnostics};
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
    /// The file it was read from.
    pub source: PathBuf,
    /// `metadata.name`: also the kubeconfig context name.
    pub name: String,
    pub ssh: SshDefaults,
    pub hosts: Vec<Host>,
    pub k3s: K3sSpec,
    /// `spec.backup` (its defaults when absent).
    pub backup: Backup,
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
}

/// Per-host overrides of [`SshDefaults`]; `None` means "the default".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostSsh {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub key_path: Option<PathBuf>,
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
    // Not a #[source]: the io error is already in the message, and anyhow would print it twice.
    #[error("cannot read cluster file {}: {cause} (`k3node init` writes a starter file)", path.display())]
    Read { path: PathBuf, cause: io::Error },
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Reads and validates a cluster file. Relative paths in it are resolved against its directory.
pub fn load(path: &Path) -> Result<ClusterFile, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|cause| LoadError::Read { path: path.to_path_buf(), cause })?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut file = parse(&path.display().to_string(), &dir, &text)?;
    file.source = path.to_path_buf();
    Ok(file)
}

/// Validates cluster file text. `display_name` is how diagnostics name the file; `base_dir`
/// is what relative paths in it are relative to.
pub fn parse(display_name: &str, base_dir: &Path, text: &str) -> Result<ClusterFile, LoadError> {
    let mut sink = diagnostic::Sink::new(display_name);
    let source = base_dir.join(Path::new(display_name).file_name().unwrap_or_default());
    let file = schema::load_yaml(&mut sink, text).map(|root| {
        let home = paths::home_dir();
        let (file, spans) = schema::read(&mut sink, &root, base_dir, home.as_deref(), source);
        validate::check(&mut sink, &file, &spans);
        file
    });
    match file {
        Some(file) if sink.is_empty() => Ok(file),
        _ => Err(LoadError::Invalid(sink.finish())),
    }
}
