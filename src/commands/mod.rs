//! One file per command: each parses its arguments and delegates to the library. Terminal
//! rendering lives here and nowhere else.

pub mod agent;
pub mod completions;
pub mod host;
pub mod images;
pub mod init;
pub mod kubeconfig;
pub mod metrics_cert;
pub mod preflight;
pub mod render;
pub mod reset;
pub mod restore;
pub mod snapshot;
pub mod status;
pub mod up;
pub mod validate;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use k3node::artifacts::ArtifactOptions;
use k3node::cluster::{self, ClusterFile};
use k3node::operator::bootstrap::{Helpers, Placement};
use k3node::operator::connect::{ConnectOverrides, Connector};
use k3node::operator::fleet::Fleet;
use k3node::operator::phases::images::SpecImages;
use k3node::operator::progress::Observer;

/// Exit status for bad input (invalid cluster file, bad arguments), distinct from a failed run.
pub const EXIT_BAD_INPUT: u8 = 2;

/// The cluster file a command reads when `-c` is not given.
pub const DEFAULT_CLUSTER_FILE: &str = "cluster.yaml";

/// An error caused by what the user gave us, not by a host.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

pub fn exit_code_for(error: &anyhow::Error) -> ExitCode {
    // Every way a cluster file can fail to load (missing, not a file, too large, invalid) is
    // the user's input, not a host's doing.
    let bad_input = error.downcast_ref::<BadInput>().is_some() || error.downcast_ref::<cluster::LoadError>().is_some();
    ExitCode::from(if bad_input { EXIT_BAD_INPUT } else { 1 })
}

/// Loads and validates the cluster file: every command does this before touching any host.
/// Its warnings (accepted, but probably not meant) go to stderr here, once, for every command.
/// `-` reads the cluster file from stdin.
pub fn load_cluster(path: &Path) -> anyhow::Result<ClusterFile> {
    let cluster = cluster::load(path)?;
    if !cluster.warnings.is_empty() {
        eprintln!("{}", cluster.warnings);
    }
    Ok(cluster)
}

/// How to reach the hosts; shared by every command that connects.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// How many hosts are worked on at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Record host keys not yet in known_hosts (trust on first use); changed keys are still refused.
    #[arg(long)]
    pub trust_new_host_keys: bool,
    /// Seconds to wait for a host to answer while connecting.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout: u64,
}

/// A validated cluster file and what connecting to its hosts needs, prepared before any host
/// is touched (keys loaded, passphrases asked once, this binary hashed for the helper).
pub struct Prepared {
    pub config: PathBuf,
    pub cluster: Arc<ClusterFile>,
    pub connector: Connector,
    pub helpers: Helpers,
}

impl ConnectArgs {
    pub async fn prepare(&self, config: &Path) -> anyhow::Result<Prepared> {
        let cluster = load_cluster(config)?;
        // A key file the cluster file names must be there before any host is reached (exit 2,
        // with the file:line of the setting).
        let mut cluster = cluster;
        let mut problems = cluster::check_key_files(&cluster);
        problems.0.extend(cluster::read_manifests(&mut cluster).0);
        problems.0.extend(cluster::check_image_archives(&cluster).0);
        if !problems.is_empty() {
            return Err(cluster::LoadError::Invalid(problems).into());
        }
        let overrides = ConnectOverrides {
            trust_new_host_keys: self.trust_new_host_keys,
            connect_timeout: Some(Duration::from_secs(self.connect_timeout)),
        };
        let connector = Connector::prepare(&cluster, &overrides)?;
        let helpers = Helpers::discover().await?;
        Ok(Prepared { config: config.to_path_buf(), cluster: Arc::new(cluster), connector, helpers })
    }
}

impl Prepared {
    /// Connects to the hosts at `indices` of the cluster file.
    pub async fn connect(
        &self,
        indices: &[usize],
        placement: Placement,
        concurrency: u16,
        observer: &Arc<dyn Observer>,
    ) -> Fleet {
        Fleet::connect(
            &self.cluster,
            indices,
            &self.connector,
            &self.helpers,
            placement,
            concurrency as usize,
            observer,
        )
        .await
    }

    pub fn all_hosts(&self) -> Vec<usize> {
        (0..self.cluster.hosts.len()).collect()
    }

    /// The servers' indices in the cluster file.
    pub fn server_hosts(&self) -> Vec<usize> {
        let hosts = self.cluster.hosts.iter().enumerate();
        hosts.filter(|(_, h)| h.role == k3node::protocol::node::Role::Server).map(|(i, _)| i).collect()
    }
}

/// The cluster file a command works on: `-c FILE`, else ./cluster.yaml. Without one, a command
/// that can also work on this machine says how (`--local`), instead of guessing.
pub fn cluster_file(given: Option<&Path>, local_hint: bool) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let default = PathBuf::from(DEFAULT_CLUSTER_FILE);
    if default.exists() {
        return Ok(default);
    }
    let mut message = format!(
        "no cluster file: ./{DEFAULT_CLUSTER_FILE} does not exist; give one with -c FILE (`k3node init` writes a starter)"
    );
    if local_hint {
        message.push_str(", or pass --local to work on this machine itself");
    }
    Err(BadInput(message).into())
}

/// `-c FILE` as the user should type it again in a hint.
pub fn config_flag(config: &Path) -> String {
    if config == Path::new(DEFAULT_CLUSTER_FILE) {
        String::new()
    } else {
        format!(" -c {}", shlex::try_quote(&config.to_string_lossy()).map(|q| q.into_owned()).unwrap_or_default())
    }
}

/// Where k3s releases are cached (`--cache-dir`) and which channel resolves a version.
pub fn artifact_options(cache_dir: Option<&PathBuf>, cluster: &ClusterFile) -> ArtifactOptions {
    let mut artifacts = ArtifactOptions::default();
    if let Some(dir) = cache_dir {
        artifacts.cache_dir = dir.clone();
    }
    if let Some(url) = &cluster.k3s.channel_url {
        artifacts.channel_url = url.clone();
    }
    artifacts
}

/// `spec.images`, read and checked. They are bad input like the rest of the cluster file, so
/// commands that stage them read them before any host is touched.
pub async fn spec_images(cluster: &ClusterFile) -> anyhow::Result<Option<Arc<SpecImages>>> {
    if cluster.images.is_empty() {
        return Ok(None);
    }
    Ok(Some(SpecImages::read_blocking(cluster.images.clone()).await.map_err(BadInput)?))
}

/// Local mode: a one-host cluster file for this machine, validated like any other.
pub fn local_cluster(k3s_version: Option<&str>, mirror: Option<&str>) -> anyhow::Result<ClusterFile> {
    let hostname = nix::unistd::gethostname()?.to_string_lossy().to_lowercase();
    let mut yaml = format!(
        "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: local\nspec:\n  hosts:\n    - name: {hostname}\n      address: 127.0.0.1\n      role: server\n"
    );
    if k3s_version.is_some() || mirror.is_some() {
        yaml.push_str("  k3s:\n");
    }
    if let Some(version) = k3s_version {
        yaml.push_str(&format!("    version: {version:?}\n"));
    }
    if let Some(mirror) = mirror {
        yaml.push_str(&format!("    source:\n      mirror: {mirror:?}\n"));
    }
    let cwd = std::env::current_dir()?;
    Ok(cluster::parse("(command line)", &cwd, &yaml)?)
}
