use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The cluster file to check.
    #[arg(short = 'c', long = "config", default_value = "cluster.yaml")]
    pub config: PathBuf,
}

pub fn run(args: &ValidateArgs) -> anyhow::Result<()> {
    let cluster = super::load_cluster(&args.config)?;
    let servers = cluster.servers().count();
    println!(
        "{}: valid: cluster {}, {} host(s): {} server(s), {} agent(s)",
        args.config.display(),
        cluster.name,
        cluster.hosts.len(),
        servers,
        cluster.hosts.len() - servers
    );
    Ok(())
}
