use std::path::PathBuf;

use k3node::cluster;
use k3node::words::count;

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The cluster file to check (`-` reads it from stdin).
    #[arg(short = 'c', long = "config", default_value = "cluster.yaml")]
    pub config: PathBuf,
}

pub fn run(args: &ValidateArgs) -> anyhow::Result<()> {
    let mut file = super::load_cluster(&args.config)?;
    // Loading reads the cluster file only; validate also checks what it names on this machine:
    // the key files, the add-on manifests and the spec.images archives.
    let mut problems = cluster::check_key_files(&file);
    problems.0.extend(cluster::read_manifests(&mut file).0);
    problems.0.extend(cluster::check_image_archives(&file).0);
    if !problems.is_empty() {
        return Err(cluster::LoadError::Invalid(problems).into());
    }
    let servers = file.servers().count();
    let name = if args.config.as_os_str() == cluster::STDIN_PATH {
        cluster::STDIN_NAME.to_string()
    } else {
        cluster::escape_file_name(&args.config.display().to_string())
    };
    println!(
        "{name}: valid: cluster {}, {}: {}, {}",
        file.name,
        count(file.hosts.len(), "host"),
        count(servers, "server"),
        count(file.hosts.len() - servers, "agent")
    );
    Ok(())
}
