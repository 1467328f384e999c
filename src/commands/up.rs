use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k3node::artifacts::ArtifactOptions;
use k3node::operator::progress::Observer;
use k3node::operator::up::{self, UpOptions};

use super::render::{self, Output};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[arg(short = 'c', long = "config", default_value = "cluster.yaml")]
    pub config: PathBuf,
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
    let (cluster, connector, me) = args.connect.prepare(&args.config).await?;
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
    let result = up::up(&cluster, &connector, &me, &options, observer_dyn, download.as_ref()).await;
    observer.finish();
    render::up(args.output, &result)?;
    Ok(result.succeeded())
}
