use std::path::PathBuf;
use std::sync::Arc;

use k3node::operator::fleet::Fleet;
use k3node::operator::progress::{Observer, Silent};
use k3node::operator::{kubeconfig, up};
use k3node::protocol::k3s::KubeconfigAnswer;
use k3node::protocol::Request;

use super::BadInput;

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
    let (cluster, connector, me) = args.connect.prepare(&args.config).await?;
    let first = cluster
        .hosts
        .iter()
        .position(|h| h.role == k3node::protocol::preflight::Role::Server)
        .ok_or_else(|| BadInput("no server".into()))?;
    let observer: Arc<dyn Observer> = Arc::new(Silent);
    let fleet = Fleet::connect(&cluster, &[first], &connector, &me, 1, &observer).await;
    let answer = match &fleet.members[0].link {
        Ok(link) => {
            link.target.call::<KubeconfigAnswer>(&Request::Kubeconfig, &mut |_| {}).await.map_err(anyhow::Error::from)
        }
        Err(e) => Err(anyhow::anyhow!("{e}")),
    };
    fleet.close().await;
    let (path, server) = up::kubeconfig_target(&cluster, args.kubeconfig.clone());
    kubeconfig::merge_into_file(&path, answer?.kubeconfig.expose(), &cluster.name, &server)?;
    println!("merged context {} into {} (server {server})", cluster.name, path.display());
    Ok(true)
}
