use std::path::PathBuf;
use std::sync::Arc;

use comfy_table::{presets::UTF8_BORDERS_ONLY, Cell, Color, ContentArrangement, Table};
use k3node::images::{self, human_bytes, Archive, Input};
use k3node::operator::actions::images::{self as action, ImagesOptions, Work};
use k3node::operator::bootstrap::Placement;
use k3node::operator::engine::RunReport;
use k3node::operator::phases::images::{Archives, ImageState, NodeImages, StagedArchive};
use k3node::operator::progress::Observer;
use k3node::protocol::node::Role;

use super::render::{self, Output};
use super::BadInput;

#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    pub command: ImagesCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImagesCommand {
    /// Import image archives into k3s's containerd on every selected node (skipping images already there).
    Import(ImportArgs),
    /// Stage image archives into k3s's images directory, imported by k3s at its start (airgap preload).
    Stage(StageArgs),
}

#[derive(Debug, clap::Args)]
pub struct Selection {
    /// The cluster file (default: ./cluster.yaml).
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    /// Only these nodes (names from the cluster file, comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "role")]
    pub hosts: Vec<String>,
    /// Only the nodes of this role.
    #[arg(long, value_parser = ["server", "agent"])]
    pub role: Option<String>,
    /// Show per node what would be sent; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub connect: super::ConnectArgs,
    /// OCI layout or docker-archive tarballs (plain, gzip or zstd); `-` reads one from stdin.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub selection: Selection,
}

#[derive(Debug, clap::Args)]
pub struct StageArgs {
    /// The staged file's name on the nodes (`k3node-NAME.tar.zst`); needed for stdin, default the file's name.
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub selection: Selection,
}

pub async fn run(args: &ImagesArgs, verbose: u8) -> anyhow::Result<bool> {
    match &args.command {
        ImagesCommand::Import(a) => go(&a.selection, None, false, verbose).await,
        ImagesCommand::Stage(a) => go(&a.selection, a.name.as_deref(), true, verbose).await,
    }
}

/// Every input read and checked, before any host is reached.
pub fn read_inputs(files: &[String]) -> anyhow::Result<Vec<(Input, Archive)>> {
    let inputs: Vec<Input> = files.iter().map(|f| Input::parse(f)).collect();
    if inputs.iter().filter(|i| **i == Input::Stdin).count() > 1 {
        return Err(BadInput("`-` (stdin) can be given once".into()).into());
    }
    let mut out = Vec::new();
    for input in inputs {
        let archive = images::read_input(&input).map_err(|e| BadInput(e.to_string()))?;
        out.push((input, archive));
    }
    let refs: Vec<&Archive> = out.iter().map(|(_, a)| a).collect();
    images::check_names(&refs).map_err(|e| BadInput(e.to_string()))?;
    Ok(out)
}

async fn go(selection: &Selection, name: Option<&str>, stage: bool, verbose: u8) -> anyhow::Result<bool> {
    let config = super::cluster_file(selection.config.as_deref(), false)?;
    let prepared = selection.connect.prepare(&config).await?;
    let cluster = prepared.cluster.clone();
    let mut indices = Vec::new();
    for host in &selection.hosts {
        let i = cluster
            .hosts
            .iter()
            .position(|h| &h.name == host)
            .ok_or_else(|| BadInput(format!("--hosts: {host} is not a host of {}", config.display())))?;
        indices.push(i);
    }
    if indices.is_empty() {
        indices = (0..cluster.hosts.len())
            .filter(|&i| match selection.role.as_deref() {
                Some("server") => cluster.hosts[i].role == Role::Server,
                Some("agent") => cluster.hosts[i].role == Role::Agent,
                _ => true,
            })
            .collect();
    }
    if indices.is_empty() {
        return Err(BadInput(format!(
            "no host of {} is an {}",
            config.display(),
            selection.role.as_deref().unwrap_or("?")
        ))
        .into());
    }
    let inputs = read_inputs(&selection.files)?;
    if selection.output == Output::Table {
        for (_, archive) in &inputs {
            eprintln!("{}", describe(archive));
        }
    }
    let work = if stage {
        if inputs.len() > 1 && name.is_some() {
            return Err(BadInput("--name names one archive: stage several files without it".into()).into());
        }
        let mut staged = Vec::new();
        for (input, archive) in &inputs {
            let Some(file_name) = StagedArchive::name_for(input, name) else {
                return Err(BadInput(format!("{}: give the staged file a name with --name", input.display())).into());
            };
            if !file_name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                || file_name.starts_with('.')
            {
                return Err(BadInput(format!("--name {file_name:?}: use letters, digits, '.', '_' and '-'")).into());
            }
            staged.push(StagedArchive::new(archive, &file_name).map_err(|e| anyhow::anyhow!("{}: {e}", archive.file))?);
        }
        Work::Stage(Arc::new(staged))
    } else {
        Work::Import(Arc::new(Archives(inputs.into_iter().map(|(_, a)| a).collect())))
    };
    let observer = render::observer(selection.output, indices.iter().map(|&i| cluster.hosts[i].name.as_str()));
    let observer_dyn: Arc<dyn Observer> = observer.clone();
    let placement = if selection.dry_run { Placement::Temporary } else { Placement::Installed };
    let fleet = prepared.connect(&indices, placement, selection.connect.concurrency, &observer_dyn).await;
    let options = ImagesOptions { dry_run: selection.dry_run, concurrency: selection.connect.concurrency as usize };
    let (report, nodes) = action::images(cluster, fleet, work, &options, observer_dyn).await;
    observer.finish();
    show(selection.output, &report, &nodes, verbose)?;
    Ok(report.succeeded())
}

/// One line per archive: what it holds, learnt before anything is sent.
fn describe(archive: &Archive) -> String {
    let mut text = format!(
        "{}: {}, {} read, {} images",
        archive.file,
        archive.format,
        human_bytes(archive.bytes_read),
        archive.images.len()
    );
    for image in &archive.images {
        let mut platforms = image.platforms.join(",");
        if !image.missing_platforms.is_empty() {
            platforms.push_str(&format!(" (not held: {})", image.missing_platforms.join(",")));
        }
        text.push_str(&format!("\n  {} {} {} {}", image.name, image.digest, platforms, human_bytes(image.size)));
    }
    text
}

fn show(output: Output, report: &RunReport, nodes: &[NodeImages], verbose: u8) -> anyhow::Result<()> {
    if output == Output::Json {
        let mut value = serde_json::to_value(report)?;
        value["images"] = serde_json::to_value(nodes)?;
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_content_arrangement(ContentArrangement::Dynamic);
    if table.width().is_none() {
        table.set_width(140);
    }
    table.set_header(["NODE", "IMAGE", "STATE", "SENT", "TIME"]);
    for node in nodes {
        for (i, row) in node.images.iter().enumerate() {
            let state = match row.state {
                ImageState::Failed => Cell::new(row.state.as_str()).fg(Color::Red),
                ImageState::Imported | ImageState::Staged | ImageState::WouldSend => {
                    Cell::new(row.state.as_str()).fg(Color::Yellow)
                }
                _ => Cell::new(if row.pinned_now { "already present, pinned now" } else { row.state.as_str() })
                    .fg(Color::Green),
            };
            let (sent, time) = if i == 0 {
                (human_bytes(node.sent_bytes), format!("{:.1}s", node.elapsed.as_secs_f64()))
            } else {
                (String::new(), String::new())
            };
            table.add_row(vec![
                Cell::new(if i == 0 { node.host.as_str() } else { "" }),
                Cell::new(&row.name),
                state,
                Cell::new(sent),
                Cell::new(time),
            ]);
        }
    }
    if !nodes.is_empty() {
        println!("{table}");
    }
    // The common run report: phases, and the errors of failed or unreachable nodes.
    render::report(output, report, &render::RenderOptions { config: None, verbose })?;
    Ok(())
}
