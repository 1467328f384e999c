//! `k3node status`: the fleet at a glance, as the hub on a server sees it. Read through the SSH
//! connection to a server (the helper asks its local hub over loopback), so no port is opened to
//! the operator, and it works while the Kubernetes API is down.
//!
//! Exit status: 0 when every node is ok or warns, 1 when one fails or is stale (or no hub
//! answers), 2 for bad input.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use comfy_table::{presets::UTF8_BORDERS_ONLY, Cell, Color, ContentArrangement, Table};
use k3node::operator::bootstrap::Placement;
use k3node::operator::fleet::Fleet;
use k3node::operator::progress::{Observer, Silent};
use k3node::protocol::health::{FleetView, HealthStatus, NodeState};

use super::render::Output;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Show it again every few seconds until interrupted (Ctrl-C).
    #[arg(long)]
    pub watch: bool,
    /// Seconds between two views with --watch.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub every: u64,
    #[command(flatten)]
    pub connect: super::ConnectArgs,
}

pub async fn run(args: &StatusArgs) -> anyhow::Result<bool> {
    let config = super::cluster_file(args.config.as_deref(), false)?;
    let prepared = args.connect.prepare(&config).await?;
    let servers = prepared.server_hosts();
    let observer: Arc<dyn Observer> = Arc::new(Silent);
    // Reading needs no installed helper: a temporary one leaves the server as it was.
    let fleet = prepared.connect(&servers, Placement::Temporary, args.connect.concurrency, &observer).await;
    let outcome = loop {
        let view = ask(&fleet).await;
        match (&view, args.watch) {
            (Err(e), false) => break Err(anyhow::anyhow!("{e}")),
            (Ok(view), false) => {
                show(view, args.output)?;
                break Ok(healthy(view));
            }
            (view, true) => {
                if args.output == Output::Table && std::io::stdout().is_terminal() {
                    print!("\x1b[2J\x1b[H");
                }
                match view {
                    Ok(view) => show(view, args.output)?,
                    Err(e) => eprintln!("error: {e}"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(args.every)) => {}
                    _ = tokio::signal::ctrl_c() => break Ok(true),
                }
            }
        }
    };
    fleet.close().await;
    outcome
}

/// The first server whose hub answers; the reasons of every one that did not.
async fn ask(fleet: &Fleet) -> Result<FleetView, String> {
    let mut why = Vec::new();
    for member in &fleet.members {
        match &member.link {
            Ok(link) => match link.call(&HealthStatus {}).send().await {
                Ok(view) => return Ok(view),
                Err(e) => why.push(format!("{}: {e}", member.host.name)),
            },
            Err(e) => why.push(format!("{}: {e}", member.host.name)),
        }
    }
    Err(format!("no hub answered:\n  {}", why.join("\n  ")))
}

fn healthy(view: &FleetView) -> bool {
    view.nodes.iter().all(|n| matches!(n.state, NodeState::Ok | NodeState::Warn))
}

fn show(view: &FleetView, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(view)?),
        Output::Table => print!("{}", table(view)),
    }
    Ok(())
}

/// NODE ROLE K3S STATE LAST-REPORT PROBLEMS, then a line that sums it up.
pub fn table(view: &FleetView) -> String {
    let color = std::io::stdout().is_terminal();
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header(["NODE", "ROLE", "K3S", "STATE", "LAST REPORT", "PROBLEMS"]);
    for n in &view.nodes {
        let mut state = Cell::new(n.state.as_str());
        if color {
            state = state.fg(match n.state {
                NodeState::Ok => Color::Green,
                NodeState::Warn => Color::Yellow,
                NodeState::Fail | NodeState::Stale => Color::Red,
            });
        }
        let age = n.last_report_age_secs.map(|s| format!("{s:.0} s ago")).unwrap_or_else(|| "never".into());
        let problems = n
            .problems
            .iter()
            .map(|p| format!("{} {}: {}", p.state.as_str(), p.name, p.reason))
            .collect::<Vec<_>>()
            .join("\n");
        t.add_row(vec![
            Cell::new(&n.node),
            Cell::new(n.role.map(|r| r.as_str()).unwrap_or("-")),
            Cell::new(n.k3s_version.as_deref().unwrap_or("-")),
            state,
            Cell::new(age),
            Cell::new(problems),
        ]);
    }
    let count = |s: NodeState| view.nodes.iter().filter(|n| n.state == s).count();
    format!(
        "{t}\n{}: {} ok, {} warn, {} fail, {} stale (hub on {})\n",
        k3node::words::count(view.nodes.len(), "node"),
        count(NodeState::Ok),
        count(NodeState::Warn),
        count(NodeState::Fail),
        count(NodeState::Stale),
        view.hub
    )
}
