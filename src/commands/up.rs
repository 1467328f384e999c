use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k3node::artifacts::ArtifactOptions;
use k3node::operator::fleet::Fleet;
use k3node::operator::progress::Observer;
use k3node::operator::up::{self, UpOptions};

use super::render::{self, Output};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// The cluster file; without it this machine becomes a single-node server (no SSH).
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    /// Local mode: the k3s version to install (default: the stable channel).
    #[arg(long, conflicts_with = "config")]
    pub k3s_version: Option<String>,
    /// Local mode: a mirror laid out like the GitHub releases.
    #[arg(long, conflicts_with = "config")]
    pub mirror: Option<String>,
    /// Show per host what would change (files with diffs, restarts); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Install although preflight found failures.
    #[arg(long)]
    pub ignore_preflight: bool,
    /// Seconds to wait for every node to be Ready.
    #[arg(long, default_value_t = 300)]
    pub ready_timeout: u64,
    /// The kubeconfig to merge the cluster's context into (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Where downloaded k3s releases are kept (default ~/.cache/k3node).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub connect: super::ConnectArgs,
}

pub async fn run(args: &UpArgs) -> anyhow::Result<bool> {
    let (cluster, fleet_source) = match &args.config {
        Some(config) => {
            let (cluster, connector, me) = args.connect.prepare(config).await?;
            (cluster, Some((connector, me)))
        }
        None => (super::local_cluster(args.k3s_version.as_deref(), args.mirror.as_deref())?, None),
    };
    let mut artifacts = ArtifactOptions::default();
    if let Some(dir) = &args.cache_dir {
        artifacts.cache_dir = dir.clone();
    }
    if let Some(url) = &cluster.k3s.channel_url {
        artifacts.channel_url = url.clone();
    }
    let options = UpOptions {
        dry_run: args.dry_run,
        concurrency: args.connect.concurrency as usize,
        ignore_preflight: args.ignore_preflight,
        ready_timeout: Duration::from_secs(args.ready_timeout),
        kubeconfig: args.kubeconfig.clone(),
        artifacts,
    };
    let observer = render::observer(args.output, cluster.hosts.iter().map(|h| h.name.as_str()));
    let observer_dyn: Arc<dyn Observer> = observer.clone();
    let download = render::download_progress(args.output);
    let fleet = match &fleet_source {
        Some((connector, me)) => {
            let all: Vec<usize> = (0..cluster.hosts.len()).collect();
            Fleet::connect(&cluster, &all, connector, me, options.concurrency, &observer_dyn).await
        }
        None => Fleet::local(&cluster),
    };
    let result = up::up(&cluster, &fleet, &options, observer_dyn, download.as_ref()).await;
    fleet.close().await;
    observer.finish();
    render::up(args.output, &result)?;
    Ok(result.succeeded())
}
