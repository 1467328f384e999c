use std::path::PathBuf;
use std::time::Duration;

use k3node::host::system::RealSystem;
use k3node::operator::agent::SelfBinary;
use k3node::operator::connect::{ConnectOverrides, Connector};
use k3node::operator::preflight::{self, HostOutcome, HostPreflight, PreflightOptions, PreflightRun};
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

pub async fn run(args: &PreflightArgs) -> anyhow::Result<bool> {
    let Some(config) = &args.config else {
        return Ok(run_local(args));
    };
    let cluster = super::load_cluster(config)?;
    let overrides = ConnectOverrides {
        trust_new_host_keys: args.trust_new_host_keys,
        connect_timeout: Some(Duration::from_secs(args.connect_timeout)),
    };
    let connector = Connector::prepare(&cluster, &overrides)?;
    let me = SelfBinary::current().await?;
    let observer = render::observer(args.output, cluster.hosts.iter().map(|h| h.name.as_str()));
    let options = PreflightOptions { fix: args.fix, concurrency: args.concurrency as usize };
    let result = preflight::run(&cluster, &connector, &me, &options, observer.clone()).await;
    observer.finish();
    render::preflight(args.output, &result)?;
    Ok(result.passed())
}

fn run_local(args: &PreflightArgs) -> bool {
    let request = PreflightRequest {
        role: Role::Server,
        k3s_version: None,
        cluster_cidr: "10.42.0.0/16".into(),
        service_cidr: "10.43.0.0/16".into(),
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
