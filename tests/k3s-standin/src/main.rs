//! k3s stand-in: test support for k3node, never shipped. Behaves like k3s on the interfaces
//! k3node touches (see shared/k3s-contract.md and this package's README.md).

mod agent;
mod api;
mod clients;
mod config;
mod containerd;
mod datastore;
mod deploy;
mod etcd;
mod kine;
mod kubeapi;
mod kubectl;
mod kubelet;
mod logx;
mod netinfo;
mod node;
mod nodepass;
mod notify;
mod patch;
mod pki;
mod resources;
mod selectors;
mod server;
mod snapshot;
mod store;
mod syssetup;
mod tables;
mod timefmt;
mod token;
mod version;

use config::{Cmd, Config};
use std::path::Path;

const USAGE: &str = "NAME:
   k3s - Kubernetes, but small and simple (k3s stand-in for k3node's tests)

USAGE:
   k3s [global options] command [command options]

COMMANDS:
   server         Run management server
   agent          Run node agent
   kubectl        Run kubectl
   crictl         Run crictl (not supported by the stand-in)
   ctr            Run ctr
   check-config   Run config check (not supported by the stand-in)
   token          Manage tokens (not supported by the stand-in)
   etcd-snapshot  Manage etcd snapshots

GLOBAL OPTIONS:
   --debug        (logging) Turn on debug logs [$K3S_DEBUG]
   --help, -h     show help
   --version, -v  print the version
";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

/// `k3s ctr ...`: the host's ctr with k3s's socket and namespace as defaults (explicit
/// -a/--address, -n/--namespace or CONTAINERD_ADDRESS/CONTAINERD_NAMESPACE win).
fn ctr(args: &[String]) -> i32 {
    use std::os::unix::process::CommandExt;
    let Some(bin) = containerd::find_external("ctr") else {
        eprintln!("ctr not found on PATH (the k3s stand-in runs the host's ctr)");
        return 1;
    };
    let mut cmd = std::process::Command::new(bin);
    if std::env::var_os("CONTAINERD_ADDRESS").is_none() {
        cmd.env("CONTAINERD_ADDRESS", containerd::socket_path());
    }
    if std::env::var_os("CONTAINERD_NAMESPACE").is_none() {
        cmd.env("CONTAINERD_NAMESPACE", "k8s.io");
    }
    let err = cmd.args(args).exec();
    eprintln!("failed to run ctr: {err}");
    1
}

fn unsupported(what: &str) -> i32 {
    eprintln!("k3s {what}: not supported by the stand-in");
    1
}

fn server_or_agent(cmd: Cmd, args: &[String], global_debug: bool) -> i32 {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{}", config::usage(cmd));
        return 0;
    }
    let env = |n: &str| std::env::var(n).ok();
    let cfg = match Config::resolve(cmd, args, &env, Path::new(config::DEFAULT_CONFIG)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Incorrect Usage: {e}\n");
            print!("{}", config::usage(cmd));
            logx::fatal(&format!("Error: {e}"));
        }
    };
    logx::set_debug(global_debug || cfg.bool("debug"));
    for w in &cfg.warnings {
        warn!("{w}");
    }
    for (k, src) in &cfg.sources {
        debug!("config {k} from {src}");
    }
    let rt = runtime();
    let code = match cmd {
        Cmd::Server => rt.block_on(server::run(cfg)),
        Cmd::Agent => rt.block_on(agent::run(cfg)),
        Cmd::EtcdSnapshot => rt.block_on(snapshot::cli(args)),
    };
    // Blocking tasks may still wait on a datastore that is gone (an etcd without quorum): the
    // process exits now, as k3s does, instead of waiting for their timeouts.
    rt.shutdown_background();
    code
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let argv0 = args
        .first()
        .map(|a| Path::new(a).file_name().and_then(|n| n.to_str()).unwrap_or("k3s").to_string())
        .unwrap_or_default();
    let rest = if args.is_empty() { &[][..] } else { &args[1..] };
    let code = match argv0.as_str() {
        "kubectl" => runtime().block_on(kubectl::run(rest)),
        "ctr" => ctr(rest),
        "crictl" => unsupported("crictl"),
        _ => dispatch(rest),
    };
    std::process::exit(code);
}

fn dispatch(args: &[String]) -> i32 {
    let mut debug = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--version" | "-v" => {
                version::print_version();
                return 0;
            }
            "--help" | "-h" => {
                print!("{USAGE}");
                return 0;
            }
            "--debug" => debug = true,
            "--data-dir" | "-d" => i += 1,
            s if s.starts_with('-') => {
                eprintln!("Incorrect Usage: flag provided but not defined: {s}");
                return 1;
            }
            _ => break,
        }
        i += 1;
    }
    if args.is_empty() || i >= args.len() {
        print!("{USAGE}");
        return 0;
    }
    let rest = &args[i + 1..];
    match args[i].as_str() {
        "server" => server_or_agent(Cmd::Server, rest, debug),
        "agent" => server_or_agent(Cmd::Agent, rest, debug),
        "kubectl" => runtime().block_on(kubectl::run(rest)),
        "ctr" => ctr(rest),
        "crictl" => unsupported("crictl"),
        "etcd-snapshot" => runtime().block_on(snapshot::cli(rest)),
        other @ ("check-config" | "token" | "secrets-encrypt" | "certificate" | "completion") => unsupported(other),
        other => {
            eprintln!("No help topic for '{other}'");
            3
        }
    }
}
