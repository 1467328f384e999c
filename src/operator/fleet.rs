//! The first phases of every run: connect to each host (one SSH connection per host, kept for the
//! whole run) and make sure it runs this build as its agent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};

use super::agent::{self, AgentError, AgentInstall, SelfBinary};
use super::connect::Connector;
use super::progress::Observer;
use super::target::Target;
use crate::cluster::{ClusterFile, Host};
use crate::transport::Session;

/// One host of the cluster file and, once connected, its session.
pub struct Member {
    pub index: usize,
    pub host: Host,
    pub link: Result<Link, AgentError>,
    /// Time spent connecting and checking the agent.
    pub elapsed: Duration,
}

pub struct Link {
    pub target: Target,
    pub agent: AgentInstall,
}

pub struct Fleet {
    pub members: Vec<Member>,
}

impl Fleet {
    /// Connects to `hosts` (indices into the cluster file) in parallel, at most `concurrency` at once.
    /// A host that fails does not stop the others; its error is kept in its member.
    pub async fn connect(
        cluster: &ClusterFile,
        hosts: &[usize],
        connector: &Connector,
        me: &SelfBinary,
        concurrency: usize,
        observer: &Arc<dyn Observer>,
    ) -> Fleet {
        let tasks = hosts.iter().map(|&index| {
            let host = cluster.hosts[index].clone();
            let observer = observer.clone();
            async move {
                let started = Instant::now();
                let link = link(connector, index, me, observer.as_ref()).await;
                Member { index, host, link, elapsed: started.elapsed() }
            }
        });
        let members = stream::iter(tasks).buffered(concurrency.max(1)).collect().await;
        Fleet { members }
    }

    /// This machine as the only member (local mode): no SSH, no agent upload.
    pub fn local(cluster: &ClusterFile) -> Fleet {
        let members = cluster
            .hosts
            .iter()
            .enumerate()
            .map(|(index, host)| Member {
                index,
                host: host.clone(),
                link: Ok(Link { target: Target::Local(host.name.clone()), agent: AgentInstall::UpToDate }),
                elapsed: Duration::ZERO,
            })
            .collect();
        Fleet { members }
    }

    pub fn connected(&self) -> impl Iterator<Item = (&Member, &Link)> {
        self.members.iter().filter_map(|m| m.link.as_ref().ok().map(|l| (m, l)))
    }

    pub fn failures(&self) -> impl Iterator<Item = (&Member, &AgentError)> {
        self.members.iter().filter_map(|m| m.link.as_ref().err().map(|e| (m, e)))
    }

    pub async fn close(self) {
        for m in self.members {
            if let Ok(link) = m.link {
                link.target.close().await;
            }
        }
    }
}

async fn link(
    connector: &Connector,
    index: usize,
    me: &SelfBinary,
    observer: &dyn Observer,
) -> Result<Link, AgentError> {
    let endpoint = connector.endpoint(index);
    observer.phase(&endpoint.host, "connecting");
    let session = Session::connect(endpoint, &connector.options, &connector.keyring).await?;
    observer.phase(&endpoint.host, "checking agent");
    match agent::ensure_agent(&session, me).await {
        Ok(agent) => Ok(Link { target: Target::Ssh(session), agent }),
        Err(e) => {
            session.close().await;
            Err(e)
        }
    }
}
