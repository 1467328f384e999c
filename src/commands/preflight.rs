use std::path::PathBuf;
use std::sync::Arc;

use k3node::operator::actions::preflight::{self, PreflightOptions};
use k3node::operator::bootstrap::Placement;
use k3node::operator::fleet::Fleet;
use k3node::operator::progress::{Observer, Silent};

use super::render::{self, Output, RenderOptions};

#[derive(Debug, clap::Args)]
pub struct PreflightArgs {
    /// The cluster file (default: ./cluster.yaml).
    #[arg(short = 'c', long = "config", conflicts_with = "local")]
    pub config: Option<PathBuf>,
    /// Check this machine itself, as a single-node server, without SSH.
    #[arg(long)]
    pub local: bool,
    /// Apply the safe fixes (load kernel modules, set sysctls; both persisted under /etc).
    #[arg(long)]
    pub fix: bool,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub connect: super::ConnectArgs,
}

pub async fn run(args: &PreflightArgs, verbose: u8) -> anyhow::Result<bool> {
    let options = PreflightOptions { fix: args.fix, concurrency: args.connect.concurrency as usize };
    if args.local {
        let cluster = Arc::new(super::local_cluster(None, None)?);
        if args.output == Output::Table {
            eprintln!("local mode: checking this machine ({}) as a k3s server, not over SSH", cluster.hosts[0].name);
        }
        let fleet = Fleet::local(&cluster);
        let report = preflight::preflight(cluster, fleet, &options, Arc::new(Silent)).await;
        render::report(args.output, &report, &RenderOptions { config: None, verbose })?;
        return Ok(report.succeeded());
    }
    let prepared = args.connect.prepare(&super::cluster_file(args.config.as_deref(), true)?).await?;
    let observer = render::observer(args.output, prepared.cluster.hosts.iter().map(|h| h.name.as_str()));
    let observer_dyn: Arc<dyn Observer> = observer.clone();
    // A check leaves nothing lasting on a host: the helper runs from a temporary copy unless
    // the installed one is current. Fixes change the host anyway, and install it.
    let placement = if args.fix { Placement::Installed } else { Placement::Temporary };
    let fleet = prepared.connect(&prepared.all_hosts(), placement, args.connect.concurrency, &observer_dyn).await;
    let report = preflight::preflight(prepared.cluster.clone(), fleet, &options, observer_dyn).await;
    observer.finish();
    render::report(args.output, &report, &RenderOptions { config: Some(prepared.config.clone()), verbose })?;
    Ok(report.succeeded())
}
