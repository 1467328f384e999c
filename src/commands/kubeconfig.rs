use std::path::PathBuf;
use std::sync::Arc;

use k3node::operator::bootstrap::Placement;
use k3node::operator::kubeconfig;
use k3node::operator::phases::install::first_server;
use k3node::operator::phases::kubeconfig::target;
use k3node::operator::progress::{Observer, Silent};
use k3node::protocol::k3s::ReadKubeconfig;

#[derive(Debug, clap::Args)]
pub struct KubeconfigArgs {
    #[arg(short = 'c', long = "config", default_value = "cluster.yaml")]
    pub config: PathBuf,
    /// The kubeconfig to merge into (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub connect: super::ConnectArgs,
}

/// Fetches the admin kubeconfig from the first server and merges it under the cluster's name.
pub async fn run(args: &KubeconfigArgs) -> anyhow::Result<bool> {
    let prepared = args.connect.prepare(&args.config).await?;
    let cluster = &prepared.cluster;
    let first =
        cluster.hosts.iter().position(|h| h.name == first_server(cluster).name).expect("the first server is a host");
    let observer: Arc<dyn Observer> = Arc::new(Silent);
    // Reading needs no installed helper: a temporary one leaves the host as it was.
    let fleet = prepared.connect(&[first], Placement::Temporary, 1, &observer).await;
    let answer = match &fleet.members[0].link {
        Ok(link) => link.call(&ReadKubeconfig {}).send().await.map_err(anyhow::Error::from),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    };
    fleet.close().await;
    let (path, server) = target(cluster, args.kubeconfig.clone());
    kubeconfig::merge_into_file(&path, answer?.kubeconfig.expose(), &cluster.name, &server)?;
    println!("merged context {} into {} (server {server})", cluster.name, path.display());
    Ok(true)
}
