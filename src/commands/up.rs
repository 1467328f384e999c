use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k3node::operator::actions::up::{self, UpOptions};
use k3node::operator::bootstrap::Placement;
use k3node::operator::fleet::Fleet;
use k3node::operator::progress::Observer;

use super::render::{self, Output, RenderOptions};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// The cluster file (default: ./cluster.yaml).
    #[arg(short = 'c', long = "config", conflicts_with = "local")]
    pub config: Option<PathBuf>,
    /// Install on this machine itself as a single-node server, without SSH and without a cluster file.
    #[arg(long)]
    pub local: bool,
    /// Local mode: the k3s version to install (default: the stable channel).
    #[arg(long, requires = "local")]
    pub k3s_version: Option<String>,
    /// Local mode: a mirror laid out like the GitHub releases.
    #[arg(long, requires = "local")]
    pub mirror: Option<String>,
    /// Show per host what would change (files with contents or diffs, links, services); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Install although preflight found failures.
    #[arg(long)]
    pub ignore_preflight: bool,
    /// Converge the reachable hosts when agents cannot be reached (they are reported skipped;
    /// the exit status is still 1). Servers must all be reachable.
    #[arg(long)]
    pub skip_unreachable: bool,
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

pub async fn run(args: &UpArgs, verbose: u8) -> anyhow::Result<bool> {
    let prepared = match args.local {
        true => None,
        false => Some(args.connect.prepare(&super::cluster_file(args.config.as_deref(), true)?).await?),
    };
    let cluster = match &prepared {
        Some(p) => p.cluster.clone(),
        None => Arc::new(super::local_cluster(args.k3s_version.as_deref(), args.mirror.as_deref())?),
    };
    let artifacts = super::artifact_options(args.cache_dir.as_ref(), &cluster);
    let spec_images = super::spec_images(&cluster).await?;
    let options = UpOptions {
        dry_run: args.dry_run,
        concurrency: args.connect.concurrency as usize,
        ignore_preflight: args.ignore_preflight,
        skip_unreachable: args.skip_unreachable,
        ready_timeout: Duration::from_secs(args.ready_timeout),
        kubeconfig: args.kubeconfig.clone(),
        artifacts,
        spec_images,
    };
    if args.local && args.output == Output::Table {
        eprintln!("local mode: installing k3s on this machine ({}), not over SSH", cluster.hosts[0].name);
    }
    let observer = render::observer(args.output, cluster.hosts.iter().map(|h| h.name.as_str()));
    let observer_dyn: Arc<dyn Observer> = observer.clone();
    let placement = if args.dry_run { Placement::Temporary } else { Placement::Installed };
    let fleet = match &prepared {
        Some(p) => p.connect(&p.all_hosts(), placement, args.connect.concurrency, &observer_dyn).await,
        None => Fleet::local(&cluster),
    };
    let report = up::up(cluster, fleet, &options, observer_dyn, render::download_progress(args.output)).await;
    observer.finish();
    let config = prepared.as_ref().map(|p| p.config.clone());
    render::report(args.output, &report, &RenderOptions { config, verbose })?;
    Ok(report.succeeded())
}
