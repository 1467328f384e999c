use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use k3node::operator::progress::Observer;
use k3node::operator::reset;

use super::render::{self, Output};
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
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub connect: super::ConnectArgs,
}

pub async fn run(args: &ResetArgs) -> anyhow::Result<bool> {
    let (cluster, connector, me) = args.connect.prepare(&args.config).await?;
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
        indices = (0..cluster.hosts.len()).collect();
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
    let result = reset::reset(
        &cluster,
        &indices,
        &connector,
        &me,
        args.dry_run,
        args.connect.concurrency as usize,
        observer_dyn,
    )
    .await;
    observer.finish();
    render::reset(args.output, &result)?;
    Ok(result.succeeded())
}
