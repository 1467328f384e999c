//! `kubeconfig`: the cluster's admin kubeconfig fetched from the first server, pointed at the
//! API endpoint, merged into the operator's kubeconfig under the cluster's name (0600), without
//! touching other contexts.

use std::path::PathBuf;

use async_trait::async_trait;

use super::install::first_server;
use crate::cluster::ClusterFile;
use crate::operator::engine::{Phase, PhaseRun, RunContext};
use crate::operator::{kubeconfig, node_config};
use crate::protocol::k3s::ReadKubeconfig;

pub struct Kubeconfig {
    /// Where to merge; None: $KUBECONFIG or ~/.kube/config.
    pub path: Option<PathBuf>,
}

#[async_trait]
impl Phase for Kubeconfig {
    fn name(&self) -> &'static str {
        "kubeconfig"
    }

    fn applies(&self, _: &RunContext) -> bool {
        true
    }

    fn dry_run(&self, run: &RunContext) -> Option<String> {
        let (path, server) = target(&run.cluster, self.path.clone());
        Some(format!("would merge context {} into {} ({server})", run.cluster.name, path.display()))
    }

    async fn run(&self, run: &mut RunContext) -> PhaseRun {
        let first = first_server(&run.cluster).name.clone();
        let Some(link) = run.fleet.member(&first).and_then(|m| m.link()).cloned() else {
            return PhaseRun::Failed(format!("{first} is not connected"));
        };
        let answer = match link.call(&ReadKubeconfig {}).send().await {
            Ok(a) => a,
            Err(e) => return PhaseRun::Failed(e.to_string()),
        };
        let (path, server) = target(&run.cluster, self.path.clone());
        if let Err(e) = kubeconfig::merge_into_file(&path, answer.kubeconfig.expose(), &run.cluster.name, &server) {
            return PhaseRun::Failed(e.to_string());
        }
        let message = format!("context {} in {} ({server})", run.cluster.name, path.display());
        run.report.kubeconfig = Some(path);
        PhaseRun::Done(message)
    }
}

/// Where the kubeconfig goes and which API address it names.
pub fn target(cluster: &ClusterFile, path: Option<PathBuf>) -> (PathBuf, String) {
    let first = first_server(cluster);
    let server = match &cluster.k3s.api_endpoint {
        Some(endpoint) if endpoint.contains(':') && endpoint.parse::<std::net::Ipv6Addr>().is_err() => {
            format!("https://{endpoint}")
        }
        Some(endpoint) => format!("https://{endpoint}:6443"),
        None => node_config::join_url(first),
    };
    (path.unwrap_or_else(kubeconfig::default_path), server)
}
