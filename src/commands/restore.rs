//! `k3node restore`: a snapshot back onto the cluster's first server (the same host, or a fresh
//! one after a disaster), or `--rollback` of the last restore.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k3node::operator::actions::restore::{self, RestoreOptions, RestoreOutcome, RollbackOptions};
use k3node::operator::bootstrap::Placement;
use k3node::operator::engine::PhaseState;
use k3node::operator::phases::install::first_server;
use k3node::operator::phases::restore::{Settings, Source};
use k3node::operator::progress::Observer;
use k3node::protocol::node::Role;

use super::render::{self, Output};
use super::snapshot::{print_errors, print_phases};
use super::BadInput;

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The cluster file (default: ./cluster.yaml).
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    /// The snapshot: a file on this machine (a pulled archive), or HOST:NAME (on a server).
    #[arg(long, required_unless_present = "rollback", conflicts_with = "rollback")]
    pub from: Option<String>,
    /// The server to restore onto (default: the first server of the cluster file). A host without
    /// k3s gets it first, at the snapshot's version: disaster recovery onto a fresh host.
    #[arg(long)]
    pub to: Option<String>,
    /// Undo the last restore on the target (its data before the restore comes back).
    #[arg(long)]
    pub rollback: bool,
    /// Restore although the snapshot's k3s version is not the one the cluster file pins.
    #[arg(long)]
    pub allow_version_mismatch: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Verify the archive and show every step; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Restore although preflight found failures.
    #[arg(long)]
    pub ignore_preflight: bool,
    /// Seconds for each node to be Ready again.
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

pub async fn run(args: &RestoreArgs, verbose: u8) -> anyhow::Result<bool> {
    let _ = verbose;
    let config = super::cluster_file(args.config.as_deref(), false)?;
    let prepared = args.connect.prepare(&config).await?;
    let cluster = prepared.cluster.clone();
    let target = match &args.to {
        Some(name) => match cluster.host(name) {
            Some(h) if h.role == Role::Server => name.clone(),
            Some(_) => {
                return Err(BadInput(format!("--to {name}: an agent; a snapshot is restored onto a server")).into())
            }
            None => return Err(BadInput(format!("--to {name}: not a host of {}", config.display())).into()),
        },
        None => first_server(&cluster).name.clone(),
    };
    let source = match &args.from {
        None => None,
        Some(text) if Path::new(text).is_file() => Some(Source::Local(PathBuf::from(text))),
        Some(text) => match text.split_once(':') {
            Some((host, name)) if cluster.host(host).is_some() && !name.is_empty() => {
                Some(Source::OnHost { host: host.to_string(), name: name.to_string() })
            }
            _ => {
                return Err(BadInput(format!(
                    "--from {text}: neither a file here nor HOST:NAME with a host of {}",
                    config.display()
                ))
                .into())
            }
        },
    };
    // Staged onto a fresh target, as `up` does; bad ones refused before the question is asked.
    let spec_images = match source {
        Some(_) => super::spec_images(&cluster).await?,
        None => None,
    };
    let flag = super::config_flag(&config);
    if !args.dry_run && !args.yes {
        let what = match &source {
            Some(s) => format!("restore {s} onto {target}: k3s there stops and its data is moved aside (not deleted), and every other host's k3s stops until it is back"),
            None => format!("roll back the last restore on {target} (the restored data is moved aside, the data before it comes back)"),
        };
        confirm(&what)?;
    }
    let artifacts = super::artifact_options(args.cache_dir.as_ref(), &cluster);
    let observer = render::observer(args.output, cluster.hosts.iter().map(|h| h.name.as_str()));
    let observer_dyn: Arc<dyn Observer> = observer.clone();
    let placement = if args.dry_run { Placement::Temporary } else { Placement::Installed };
    let fleet = prepared.connect(&prepared.all_hosts(), placement, args.connect.concurrency, &observer_dyn).await;
    let ready_timeout = Duration::from_secs(args.ready_timeout);
    let rollback_line = format!("k3node restore{flag} --rollback --to {target} --yes");
    let outcome = match source {
        Some(source) => {
            let again = format!("k3node restore{flag} --from {source} --to {target} --yes");
            let options = RestoreOptions {
                settings: Settings {
                    source,
                    target: target.clone(),
                    allow_version_mismatch: args.allow_version_mismatch,
                    ready_timeout,
                },
                dry_run: args.dry_run,
                concurrency: args.connect.concurrency as usize,
                ignore_preflight: args.ignore_preflight,
                kubeconfig: args.kubeconfig.clone(),
                artifacts,
                spec_images,
                again,
                rollback: rollback_line,
            };
            restore::restore(cluster, fleet, &options, observer_dyn, render::download_progress(args.output)).await
        }
        None => {
            let options = RollbackOptions {
                target: target.clone(),
                dry_run: args.dry_run,
                concurrency: args.connect.concurrency as usize,
                ready_timeout,
                kubeconfig: args.kubeconfig.clone(),
                artifacts,
            };
            restore::rollback(cluster, fleet, &options, observer_dyn, render::download_progress(args.output)).await
        }
    };
    observer.finish();
    show(args.output, &outcome)?;
    if outcome.findings.bad_archive {
        return Err(BadInput("the snapshot was refused before anything changed on any host (see above)".into()).into());
    }
    Ok(outcome.succeeded())
}

fn confirm(what: &str) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(BadInput(format!("this would {what}; pass --yes to confirm when not on a terminal")).into());
    }
    eprint!("This will {what}. Go on? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        return Err(BadInput("nothing done".into()).into());
    }
    Ok(())
}

fn show(output: Output, outcome: &RestoreOutcome) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(outcome)?);
        return Ok(());
    }
    let report = &outcome.report;
    println!();
    print_phases(report);
    for host in &report.hosts {
        let shown = report.dry_run || !host.changes.is_empty() || !host.notes.is_empty();
        if !shown || (host.changes.is_empty() && host.notes.is_empty()) {
            continue;
        }
        println!("\n{}{}:", host.host, if report.dry_run { " would" } else { "" });
        for change in &host.changes {
            println!("  {}", change.subject);
        }
        for note in &host.notes {
            println!("  {note}");
        }
    }
    let mut t = render::table();
    t.set_header(["node", "role", "k3s", "state", "time"]);
    for host in &report.hosts {
        t.add_row([
            comfy_table::Cell::new(&host.host),
            comfy_table::Cell::new(host.role.as_str()),
            comfy_table::Cell::new(host.version.as_deref().unwrap_or("-")),
            render::state_cell(host.state),
            comfy_table::Cell::new(format!("{:.1}s", host.elapsed.as_secs_f64())),
        ]);
    }
    println!("\n{t}");
    print_errors(report);
    let findings = &outcome.findings;
    if let Some(guidance) = &findings.guidance {
        println!("{guidance}");
    }
    let verdict = match (report.succeeded(), report.dry_run) {
        (true, true) => "dry run: nothing was changed".to_string(),
        (true, false) => match (&findings.restore, &findings.rollback) {
            (Some(r), _) => format!("restored {} ({} datastore, k3s {})", r.name, r.datastore, r.k3s_version),
            (None, Some(r)) => format!("the restore of {} is rolled back", r.name),
            (None, None) => "done".to_string(),
        },
        (false, _) => {
            let phase =
                report.phases.iter().find(|p| p.state == PhaseState::Failed).map(|p| p.name).unwrap_or("a host");
            let mut line = format!("restore FAILED at {phase}");
            if findings.bad_archive {
                line.push_str(": the snapshot was refused before anything changed");
            }
            line
        }
    };
    println!("{verdict}");
    Ok(())
}
