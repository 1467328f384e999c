//! `k3node agent`: the node daemon, as systemd runs it (`k3node-agent.service`); on a server
//! it is the hub too. It runs until SIGTERM.

use std::path::PathBuf;

use k3node::daemon::settings::SETTINGS_PATH;

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The settings file `k3node up` writes.
    #[arg(long = "settings", default_value = SETTINGS_PATH)]
    pub settings: PathBuf,
}

pub fn run(args: &AgentArgs) -> anyhow::Result<bool> {
    k3node::daemon::run(&args.settings.to_string_lossy())?;
    Ok(true)
}
