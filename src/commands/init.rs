use std::path::PathBuf;

use super::BadInput;

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Where to write the starter cluster file.
    #[arg(short = 'c', long = "config", default_value = "cluster.yaml")]
    pub config: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &InitArgs) -> anyhow::Result<()> {
    if args.config.exists() && !args.force {
        return Err(BadInput(format!("{} already exists; pass --force to overwrite it", args.config.display())).into());
    }
    k3node::fsutil::write_atomic(&args.config, k3node::cluster::starter_file().as_bytes(), 0o644)?;
    println!(
        "wrote {}: edit the hosts, then run `k3node preflight -c {}`",
        args.config.display(),
        args.config.display()
    );
    Ok(())
}
