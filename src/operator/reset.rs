//! `k3node reset`: k3s removed from hosts as its uninstall script does, agents first, then servers.
//! Data is moved aside on the host, never deleted.

use std::sync::Arc;

use serde::Serialize;

use super::agent::SelfBinary;
use super::connect::Connector;
use super::fleet::Fleet;
use super::progress::Observer;
use crate::cluster::ClusterFile;
use crate::protocol::k3s::{ResetReport, ResetRequest};
use crate::protocol::preflight::Role;
use crate::protocol::Request;

#[derive(Debug, Clone, Serialize)]
pub struct HostReset {
    pub host: String,
    pub role: Role,
    pub actions: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResetRun {
    pub cluster: String,
    pub dry_run: bool,
    pub hosts: Vec<HostReset>,
}

impl ResetRun {
    pub fn succeeded(&self) -> bool {
        self.hosts.iter().all(|h| h.error.is_none())
    }
}

/// Resets the hosts at `indices` of the cluster file: every agent, then every server, one at a
/// time so that the servers the agents report to go last.
pub async fn reset(
    cluster: &ClusterFile,
    indices: &[usize],
    connector: &Connector,
    me: &SelfBinary,
    dry_run: bool,
    concurrency: usize,
    observer: Arc<dyn Observer>,
) -> ResetRun {
    let mut ordered: Vec<usize> = indices.to_vec();
    ordered.sort_by_key(|&i| (cluster.hosts[i].role == Role::Server, i));
    let fleet = Fleet::connect(cluster, &ordered, connector, me, concurrency, &observer).await;
    let mut hosts = Vec::new();
    for member in &fleet.members {
        let name = member.host.name.clone();
        let outcome = match &member.link {
            Err(e) => Err(e.to_string()),
            Ok(link) => {
                observer.phase(&name, if dry_run { "planning reset" } else { "resetting" });
                link.target
                    .call::<ResetReport>(&Request::Reset(ResetRequest { dry_run }), &mut |m| observer.message(&name, m))
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        let (actions, error) = match outcome {
            Ok(report) => (report.actions, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        observer.done(&name, error.is_none(), &format!("{} actions", actions.len()));
        hosts.push(HostReset { host: name, role: member.host.role, actions, error });
    }
    fleet.close().await;
    ResetRun { cluster: cluster.name.clone(), dry_run, hosts }
}
