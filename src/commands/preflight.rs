use std::path::PathBuf;
use std::sync::Arc;

use k3node::operator::fleet::Fleet;
use k3node::operator::preflight::{self, PreflightOptions};
use k3node::operator::progress::{Observer, Silent};

use super::render::{self, Output};

#[derive(Debug, clap::Args)]
pub struct PreflightArgs {
    /// The cluster file; without it the local machine is checked as a single-node server.
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    /// Apply the safe fixes (load kernel modules, set sysctls; both persisted under /etc).
    #[arg(long)]
    pub fix: bool,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub connect: super::ConnectArgs,
}

pub async fn run(args: &PreflightArgs) -> anyhow::Result<bool> {
    let Some(config) = &args.config else {
        return run_local(args).await;
    };
    let (cluster, connector, me) = args.connect.prepare(config).await?;
    let observer = render::observer(args.output, cluster.hosts.iter().map(|h| h.name.as_str()));
    let options = PreflightOptions { fix: args.fix, concurrency: args.connect.concurrency as usize };
    let observer_dyn: Arc<dyn Observer> = observer.clone();
    let all: Vec<usize> = (0..cluster.hosts.len()).collect();
    let fleet = Fleet::connect(&cluster, &all, &connector, &me, options.concurrency, &observer_dyn).await;
    let result = preflight::run(&cluster, &fleet, &options, observer_dyn).await;
    fleet.close().await;
    observer.finish();
    render::preflight(args.output, &result)?;
    Ok(result.passed())
}

/// This machine, through the same host code in-process (no SSH), as a single-node server.
async fn run_local(args: &PreflightArgs) -> anyhow::Result<bool> {
    let cluster = super::local_cluster(None, None)?;
    let fleet = Fleet::local(&cluster);
    let options = PreflightOptions { fix: args.fix, concurrency: 1 };
    let result = preflight::run(&cluster, &fleet, &options, Arc::new(Silent)).await;
    render::preflight(args.output, &result)?;
    Ok(result.passed())
}
