use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k3node::host::system::RealSystem;
use k3node::operator::fleet::Fleet;
use k3node::operator::preflight::{self, HostOutcome, HostPreflight, PreflightOptions, PreflightRun};
use k3node::operator::progress::Observer;
use k3node::protocol::preflight::{PreflightRequest, Role};

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
        return Ok(run_local(args));
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

fn run_local(args: &PreflightArgs) -> bool {
    let request = PreflightRequest {
        role: Role::Server,
        k3s_version: None,
        cluster_cidr: k3node::cluster::DEFAULT_CLUSTER_CIDR.into(),
        service_cidr: k3node::cluster::DEFAULT_SERVICE_CIDR.into(),
        fix: args.fix,
    };
    let report = k3node::host::preflight::run(&RealSystem, &request);
    let hostname = report.facts.hostname.clone();
    let result = PreflightRun {
        cluster: "local".into(),
        hosts: vec![HostPreflight {
            host: hostname,
            address: "local".into(),
            role: Role::Server,
            agent: None,
            outcome: HostOutcome::Report(report),
            elapsed: Duration::ZERO,
        }],
    };
    if let Err(e) = render::preflight(args.output, &result) {
        eprintln!("error: {e}");
        return false;
    }
    result.passed()
}
