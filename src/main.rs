use std::process::ExitCode;

use std::io::IsTerminal;

use clap::{CommandFactory, Parser, Subcommand};

mod commands;

/// Takes Linux hosts reachable over SSH to a verified k3s cluster.
#[derive(Debug, Parser)]
#[command(name = "k3node", version, about)]
struct Cli {
    /// More logs on stderr (-v: info, -vv: debug, -vvv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a commented starter cluster.yaml.
    Init(commands::init::InitArgs),
    /// Check a cluster file without touching any host.
    Validate(commands::validate::ValidateArgs),
    /// Check every host (or this machine) for what k3s needs, and optionally fix what is safe.
    Preflight(commands::preflight::PreflightArgs),
    /// Install or converge k3s on every host of the cluster file.
    Up(commands::up::UpArgs),
    /// Uninstall k3s from hosts (agents first); data is moved aside, not deleted.
    Reset(commands::reset::ResetArgs),
    /// Snapshots of the servers: create, list, verify, pull, prune.
    Snapshot(commands::snapshot::SnapshotArgs),
    /// Restore a snapshot onto the first server (the same host, or a fresh one), or roll back.
    Restore(commands::restore::RestoreArgs),
    /// The fleet's health as the hub on a server sees it (through SSH; works without the Kubernetes API).
    Status(commands::status::StatusArgs),
    /// A reader's certificate for the hubs' /metrics (Prometheus), signed with the cluster's hub CA.
    MetricsCert(commands::metrics_cert::MetricsCertArgs),
    /// Run the node daemon (and on a server the hub); started by systemd as k3node-agent.service.
    Agent(commands::agent::AgentArgs),
    /// Container images onto the nodes: import into k3s's containerd, or stage for import at start.
    Images(commands::images::ImagesArgs),
    /// Merge the cluster's admin kubeconfig into ~/.kube/config under the cluster's name.
    Kubeconfig(commands::kubeconfig::KubeconfigArgs),
    /// Print shell completions (bash, zsh, fish...).
    Completions(commands::completions::CompletionsArgs),
    /// Print the man page (roff).
    Man,
    /// Host agent operations, run by the operator side over SSH.
    #[command(hide = true)]
    Host(commands::host::HostArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Like every Unix tool: output piped into `head` ends the program quietly instead of panicking.
    // Not the daemon: with the default disposition, a hub closing its connection while the
    // agent writes to it (writev sends no MSG_NOSIGNAL) would kill the agent, and systemd counts
    // SIGPIPE as a clean exit, so it would not restart it.
    if !matches!(cli.command, Command::Agent(_)) {
        // SAFETY: no other thread exists yet, and the default disposition is async-signal-safe.
        let _ = unsafe {
            nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl)
        };
    }
    if let Command::Host(args) = &cli.command {
        // The agent's stdout is the protocol; logs would corrupt it.
        return commands::host::run(args);
    }
    init_tracing(cli.verbose);
    let verbose = cli.verbose;
    let result = match &cli.command {
        Command::Init(args) => commands::init::run(args).map(|_| true),
        Command::Validate(args) => commands::validate::run(args).map(|_| true),
        Command::Preflight(args) => runtime().and_then(|rt| rt.block_on(commands::preflight::run(args, verbose))),
        Command::Up(args) => runtime().and_then(|rt| rt.block_on(commands::up::run(args, verbose))),
        Command::Reset(args) => runtime().and_then(|rt| rt.block_on(commands::reset::run(args, verbose))),
        Command::Snapshot(args) => runtime().and_then(|rt| rt.block_on(commands::snapshot::run(args, verbose))),
        Command::Restore(args) => runtime().and_then(|rt| rt.block_on(commands::restore::run(args, verbose))),
        Command::Status(args) => runtime().and_then(|rt| rt.block_on(commands::status::run(args))),
        Command::MetricsCert(args) => runtime().and_then(|rt| rt.block_on(commands::metrics_cert::run(args))),
        Command::Agent(args) => commands::agent::run(args),
        Command::Images(args) => runtime().and_then(|rt| rt.block_on(commands::images::run(args, verbose))),
        Command::Kubeconfig(args) => runtime().and_then(|rt| rt.block_on(commands::kubeconfig::run(args))),
        Command::Completions(args) => commands::completions::run(args, Cli::command()).map(|_| true),
        Command::Man => commands::completions::man(Cli::command()).map(|_| true),
        Command::Host(_) => unreachable!("handled above"),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            commands::exit_code_for(&e)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Logs on stderr: `-v` info, `-vv` debug, `-vvv` trace, the SSH library's packet traces only
/// when asked for by target (`K3NODE_LOG=russh=trace`, or RUST_LOG); colours only on a terminal.
fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info,russh=warn",
        2 => "debug,russh=info",
        _ => "trace,russh=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("K3NODE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
