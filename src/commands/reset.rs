use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use k3node::operator::actions::reset::{self, ResetOptions};
use k3node::operator::bootstrap::Placement;
use k3node::operator::progress::{Observer, Silent};
use k3node::protocol::node::Role;

use super::render::{self, Output, RenderOptions};
use super::BadInput;

#[derive(Debug, clap::Args)]
pub struct ResetArgs {
    #[arg(short = 'c', long = "config", default_value = "cluster.yaml")]
    pub config: PathBuf,
    /// Only these hosts (names from the cluster file, comma-separated); default all.
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Show what would be removed and moved aside; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Leave k3node's own files (its helper binary and state) on the hosts.
    #[arg(long)]
    pub keep_helper: bool,
    /// The kubeconfig whose context for this cluster is removed when every host is reset.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub connect: super::ConnectArgs,
}

pub async fn run(args: &ResetArgs, verbose: u8) -> anyhow::Result<bool> {
    let prepared = args.connect.prepare(&args.config).await?;
    let cluster = &prepared.cluster;
    let mut indices = Vec::new();
    for name in &args.hosts {
        let i = cluster
            .hosts
            .iter()
            .position(|h| &h.name == name)
            .ok_or_else(|| BadInput(format!("--hosts: {name} is not a host of {}", args.config.display())))?;
        indices.push(i);
    }
    if indices.is_empty() {
        indices = prepared.all_hosts();
    }
    if !args.dry_run && !args.yes {
        let names: Vec<&str> = indices.iter().map(|&i| cluster.hosts[i].name.as_str()).collect();
        if !std::io::stdin().is_terminal() {
            return Err(BadInput(format!(
                "reset would uninstall k3s from {}; pass --yes to confirm when not on a terminal",
                names.join(", ")
            ))
            .into());
        }
        eprint!("Uninstall k3s from {} (data is moved aside, not deleted)? [y/N] ", names.join(", "));
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing done");
            return Ok(false);
        }
    }
    let observer = render::observer(args.output, indices.iter().map(|&i| cluster.hosts[i].name.as_str()));
    let observer_dyn: Arc<dyn Observer> = observer.clone();
    let placement = if args.dry_run { Placement::Temporary } else { Placement::Installed };
    // Servers that stay: the reset hosts' Node objects are deleted through the first of them.
    let staying = (0..cluster.hosts.len()).find(|i| !indices.contains(i) && cluster.hosts[*i].role == Role::Server);
    let staying_link = match staying {
        Some(i) if !args.dry_run => {
            let silent: Arc<dyn Observer> = Arc::new(Silent);
            let fleet = prepared.connect(&[i], Placement::Installed, 1, &silent).await;
            fleet.members.into_iter().next().and_then(|m| m.link.ok())
        }
        _ => None,
    };
    let fleet = prepared.connect(&indices, placement, args.connect.concurrency, &observer_dyn).await;
    let options = ResetOptions {
        dry_run: args.dry_run,
        concurrency: args.connect.concurrency as usize,
        keep_helper: args.keep_helper,
        kubeconfig: args.kubeconfig.clone(),
    };
    let report = reset::reset(cluster.clone(), fleet, staying_link, &options, observer_dyn).await;
    observer.finish();
    render::report(args.output, &report, &RenderOptions { config: Some(args.config.clone()), verbose })?;
    Ok(report.succeeded())
}
