//! `k3node snapshot create|list|verify|pull|prune`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use comfy_table::Cell;
use k3node::cluster::ClusterFile;
use k3node::operator::actions::snapshot::{self, SnapshotOutcome, Work};
use k3node::operator::bootstrap::Placement;
use k3node::operator::engine::{PhaseState, RunReport};
use k3node::operator::phases::install::first_server;
use k3node::operator::phases::snapshot::{datastore_of, ArchiveLine, Pick};
use k3node::operator::progress::Observer;
use k3node::protocol::node::Role;

use super::render::{self, Output};
use super::BadInput;

#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot on servers (the first server by default) while k3s keeps running.
    Create(SelectArgs),
    /// List the snapshots of the servers (all servers by default).
    List(SelectArgs),
    /// Read archives in full and check everything: their sha256, every file, the database.
    Verify(VerifyArgs),
    /// Stream snapshots to this machine (the first server's newest by default), verified here.
    Pull(PullArgs),
    /// Delete the snapshots a retention does not keep (default: spec.backup.retention).
    Prune(PruneArgs),
}

/// The cluster file and which servers.
#[derive(Debug, Clone, clap::Args)]
pub struct SelectArgs {
    /// The cluster file (default: ./cluster.yaml).
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    /// Only these servers (names from the cluster file, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub connect: super::ConnectArgs,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Archives: a file on this machine, or HOST:NAME (a snapshot on a server of the cluster file).
    #[arg(required = true)]
    pub archives: Vec<String>,
    #[command(flatten)]
    pub select: SelectArgs,
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Snapshots to pull: NAME (on the selected servers) or HOST:NAME; none: each selected
    /// server's newest.
    pub archives: Vec<String>,
    /// Where to put them (default: spec.backup.pullDir, else `snapshots` beside the cluster file).
    #[arg(long)]
    pub to: Option<PathBuf>,
    #[command(flatten)]
    pub select: SelectArgs,
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Keep the N newest of each server.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_last: Option<u32>,
    /// Keep those younger than this (a systemd time span: 36h, 14d, 2w).
    #[arg(long)]
    pub keep_newer_than: Option<String>,
    /// Only archives whose name starts with PREFIX- (`on-demand`, `scheduled`); default all.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Show what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub select: SelectArgs,
}

pub async fn run(args: &SnapshotArgs, verbose: u8) -> anyhow::Result<bool> {
    let _ = verbose;
    match &args.command {
        SnapshotCommand::Create(select) => on_servers(select, Work::Create, Default::First).await,
        SnapshotCommand::List(select) => on_servers(select, Work::List, Default::All).await,
        SnapshotCommand::Verify(a) => verify(a).await,
        SnapshotCommand::Pull(a) => pull(a).await,
        SnapshotCommand::Prune(a) => prune(a).await,
    }
}

/// Which servers a command works on when `--hosts` is not given.
#[derive(Clone, Copy)]
enum Default {
    First,
    All,
}

/// The servers named by `--hosts` (each must be a server of the cluster file), or the default.
fn servers(cluster: &ClusterFile, hosts: &[String], default: Default, config: &Path) -> anyhow::Result<Vec<usize>> {
    let mut indices = Vec::new();
    for name in hosts {
        let Some(i) = cluster.hosts.iter().position(|h| &h.name == name) else {
            return Err(BadInput(format!("--hosts: {name} is not a host of {}", config.display())).into());
        };
        if cluster.hosts[i].role != Role::Server {
            return Err(BadInput(format!("--hosts: {name} is an agent; snapshots are taken on servers")).into());
        }
        if !indices.contains(&i) {
            indices.push(i);
        }
    }
    if indices.is_empty() {
        indices = match default {
            Default::First => {
                let first = first_server(cluster);
                vec![cluster.hosts.iter().position(|h| h.name == first.name).expect("the first server is a host")]
            }
            Default::All => (0..cluster.hosts.len()).filter(|&i| cluster.hosts[i].role == Role::Server).collect(),
        };
    }
    Ok(indices)
}

async fn on_servers(select: &SelectArgs, work: Work, default: Default) -> anyhow::Result<bool> {
    let config = super::cluster_file(select.config.as_deref(), false)?;
    let prepared = select.connect.prepare(&config).await?;
    let indices = servers(&prepared.cluster, &select.hosts, default, &config)?;
    run_work(&prepared, &indices, work, select).await
}

async fn run_work(
    prepared: &super::Prepared,
    indices: &[usize],
    work: Work,
    select: &SelectArgs,
) -> anyhow::Result<bool> {
    let cluster = &prepared.cluster;
    let observer = render::observer(select.output, indices.iter().map(|&i| cluster.hosts[i].name.as_str()));
    let observer_dyn: Arc<dyn Observer> = observer.clone();
    // Reading leaves nothing lasting on a host; taking or deleting snapshots installs the helper.
    let placement = match &work {
        Work::Create | Work::Prune { dry_run: false, .. } => Placement::Installed,
        _ => Placement::Temporary,
    };
    let fleet = prepared.connect(indices, placement, select.connect.concurrency, &observer_dyn).await;
    let outcome = snapshot::run(cluster.clone(), fleet, &work, select.connect.concurrency as usize, observer_dyn).await;
    observer.finish();
    show(select.output, &outcome)?;
    Ok(outcome.succeeded())
}

/// `HOST:NAME` when HOST is a host of the cluster file.
fn on_host(cluster: &ClusterFile, text: &str) -> Option<(String, String)> {
    let (host, name) = text.split_once(':')?;
    (cluster.host(host).is_some() && !name.is_empty()).then(|| (host.to_string(), name.to_string()))
}

async fn verify(args: &VerifyArgs) -> anyhow::Result<bool> {
    let local: Vec<&String> = args.archives.iter().filter(|a| Path::new(a.as_str()).is_file()).collect();
    let remote: Vec<&String> = args.archives.iter().filter(|a| !Path::new(a.as_str()).is_file()).collect();
    let mut lines = Vec::new();
    let mut ok = true;
    for path in &local {
        match snapshot::verify_local(Path::new(path.as_str())).await {
            Ok(line) => lines.push(line),
            Err(e) => {
                ok = false;
                lines.push(ArchiveLine {
                    host: "local".into(),
                    name: path.to_string(),
                    path: path.to_string(),
                    size: 0,
                    sha256: None,
                    manifest: None,
                    state: "failed".into(),
                    check: None,
                    problem: Some(e.to_string()),
                });
            }
        }
    }
    let mut report = None;
    if !remote.is_empty() {
        let config = super::cluster_file(args.select.config.as_deref(), false).map_err(|_| {
            BadInput(format!(
                "{} is not a file here, and there is no cluster file for HOST:NAME (give one with -c FILE)",
                remote[0]
            ))
        })?;
        let prepared = args.select.connect.prepare(&config).await?;
        let mut wanted = Vec::new();
        for text in &remote {
            let Some(pair) = on_host(&prepared.cluster, text) else {
                return Err(BadInput(format!(
                    "{text} is neither a file here nor HOST:NAME with a host of {}",
                    config.display()
                ))
                .into());
            };
            wanted.push(pair);
        }
        let mut indices: Vec<usize> = Vec::new();
        for (host, _) in &wanted {
            let i = prepared.cluster.hosts.iter().position(|h| &h.name == host).expect("checked above");
            if !indices.contains(&i) {
                indices.push(i);
            }
        }
        let cluster = &prepared.cluster;
        let observer = render::observer(args.select.output, indices.iter().map(|&i| cluster.hosts[i].name.as_str()));
        let observer_dyn: Arc<dyn Observer> = observer.clone();
        let fleet =
            prepared.connect(&indices, Placement::Temporary, args.select.connect.concurrency, &observer_dyn).await;
        let outcome = snapshot::run(
            cluster.clone(),
            fleet,
            &Work::Verify(wanted),
            args.select.connect.concurrency as usize,
            observer_dyn,
        )
        .await;
        observer.finish();
        ok &= outcome.succeeded();
        lines.extend(outcome.snapshots);
        report = Some(outcome.report);
    }
    let any_refused = lines.iter().any(|l| l.state == "failed");
    match report {
        Some(report) => show(args.select.output, &SnapshotOutcome { report, snapshots: lines })?,
        None if args.select.output == Output::Json => {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "snapshots": lines }))?)
        }
        None => print_archives(&lines, "verified"),
    }
    if any_refused && ok {
        ok = false;
    }
    Ok(ok)
}

async fn pull(args: &PullArgs) -> anyhow::Result<bool> {
    let config = super::cluster_file(args.select.config.as_deref(), false)?;
    let prepared = args.select.connect.prepare(&config).await?;
    let cluster = prepared.cluster.clone();
    let mut wanted: Vec<(String, Pick)> = Vec::new();
    let mut named_hosts = Vec::new();
    let mut plain = Vec::new();
    for text in &args.archives {
        match on_host(&cluster, text) {
            Some((host, name)) => {
                named_hosts.push(host.clone());
                wanted.push((host, Pick::Named(name)));
            }
            None => plain.push(text.clone()),
        }
    }
    let selected = servers(&cluster, &args.select.hosts, Default::First, &config)?;
    if !plain.is_empty() || wanted.is_empty() {
        for &i in &selected {
            let host = cluster.hosts[i].name.clone();
            if plain.is_empty() {
                wanted.push((host, Pick::Newest));
            } else {
                wanted.extend(plain.iter().map(|n| (host.clone(), Pick::Named(n.clone()))));
            }
        }
    }
    let mut indices: Vec<usize> = Vec::new();
    for (host, _) in &wanted {
        let i = cluster.hosts.iter().position(|h| &h.name == host).expect("a host of the cluster file");
        if !indices.contains(&i) {
            indices.push(i);
        }
    }
    let to = args.to.clone().unwrap_or_else(|| cluster.backup.pull_dir.clone());
    run_work(&prepared, &indices, Work::Pull { wanted, to }, &args.select).await
}

async fn prune(args: &PruneArgs) -> anyhow::Result<bool> {
    let config = super::cluster_file(args.select.config.as_deref(), false)?;
    let prepared = args.select.connect.prepare(&config).await?;
    let cluster = prepared.cluster.clone();
    let keep_newer_than_secs = match &args.keep_newer_than {
        Some(text) => Some(
            k3node::cluster::timespan_us(text)
                .map_err(|e| BadInput(format!("--keep-newer-than: {e}")))?
                .div_ceil(1_000_000),
        ),
        None => None,
    };
    let (keep_last, keep_newer_than_secs) = match (args.keep_last, keep_newer_than_secs) {
        (None, None) => (cluster.backup.retention.keep_last, cluster.backup.retention.keep_newer_than_secs),
        given => given,
    };
    if let Some(prefix) = &args.prefix {
        if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(BadInput(format!("--prefix {prefix:?}: letters, digits, `.`, `_` and `-` only")).into());
        }
    }
    let work = Work::Prune {
        keep_last,
        keep_newer_than_secs,
        prefix: args.prefix.as_ref().map(|p| format!("{}-", p.trim_end_matches('-'))),
        dry_run: args.dry_run,
    };
    let indices = servers(&cluster, &args.select.hosts, Default::All, &config)?;
    run_work(&prepared, &indices, work, &args.select).await
}

/// The outcome as JSON, or the phases, the archives and what failed.
pub fn show(output: Output, outcome: &SnapshotOutcome) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(outcome)?);
        return Ok(());
    }
    print_phases(&outcome.report);
    let verb = match outcome.report.command {
        "snapshot create" => "created",
        "snapshot pull" => "pulled",
        "snapshot verify" => "verified",
        "snapshot prune" => "pruned",
        _ => "",
    };
    print_archives(&outcome.snapshots, verb);
    print_errors(&outcome.report);
    Ok(())
}

/// One line per phase that did something (what `up` prints, shorter).
pub fn print_phases(report: &RunReport) {
    for phase in &report.phases {
        let mark = match phase.state {
            PhaseState::Done => "✓",
            PhaseState::Failed => "✗",
            PhaseState::Planned => "·",
            PhaseState::NotApplicable | PhaseState::NotRun => continue,
        };
        println!("{mark} {:<14} {:>6.2}s  {}", phase.name, phase.elapsed.as_secs_f64(), phase.message);
    }
    if let Some(p) = report.phases.iter().find(|p| p.state == PhaseState::NotRun) {
        println!("- {:<14}          not run: an earlier phase failed", p.name);
    }
}

pub fn print_errors(report: &RunReport) {
    for host in &report.hosts {
        if let Some(e) = &host.error {
            println!("{} ({}): {}", host.host, e.kind, e.message);
        }
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        0 => "-".to_string(),
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b if b < 1 << 30 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
    }
}

fn print_archives(lines: &[ArchiveLine], verb: &str) {
    if lines.is_empty() {
        println!("no snapshots");
        return;
    }
    let mut t = render::table();
    t.set_header(["node", "name", "created", "size", "k3s", "datastore", "state"]);
    for l in lines {
        let state = match (&l.problem, &l.check) {
            (Some(p), _) => Cell::new(format!("{}: {p}", l.state)).fg(comfy_table::Color::Red),
            (None, Some(check)) => Cell::new(format!("{} ({check})", l.state)),
            (None, None) => Cell::new(&l.state),
        };
        let manifest = l.manifest.as_ref();
        t.add_row([
            Cell::new(&l.host),
            Cell::new(&l.name),
            Cell::new(manifest.map(|m| m.created.as_str()).unwrap_or("-")),
            Cell::new(size(l.size)),
            Cell::new(manifest.map(|m| m.k3s_version.as_str()).unwrap_or("-")),
            Cell::new(datastore_of(l)),
            state,
        ]);
    }
    println!("{t}");
    let paths: Vec<&ArchiveLine> =
        lines.iter().filter(|l| l.state != "failed" && (l.state == "pulled" || l.host == "local")).collect();
    for l in paths {
        println!("{verb} {}", l.path);
    }
}
