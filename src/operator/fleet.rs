//! The hosts of a run, each with its link: connected over SSH (one connection per host, kept for
//! the whole run, the helper made current), this machine in-process (local mode), or in-memory
//! hosts (tests and benchmarks).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};

use super::bootstrap::{connect_helper, HelperState, Helpers, Placement};
use super::connect::Connector;
use super::link::{InProcessLink, Link, LinkError};
use super::progress::Observer;
use crate::cluster::{ClusterFile, Host};
use crate::host::system::{HostSystem, RealSystem};
use crate::transport::Session;

/// One host of the cluster file and, once connected, its link.
pub struct Member {
    pub index: usize,
    pub host: Host,
    pub link: Result<Link, LinkError>,
    /// What connecting did to the host's helper (None in-process).
    pub helper: Option<HelperState>,
    /// The fingerprint of the host's SSH key (None in-process).
    pub host_key: Option<String>,
    /// Time spent connecting and checking the helper.
    pub elapsed: Duration,
}

impl Member {
    pub fn link(&self) -> Option<&Link> {
        self.link.as_ref().ok()
    }
}

pub struct Fleet {
    pub members: Vec<Member>,
    /// This machine, worked on in-process (local mode), not hosts over SSH.
    pub local: bool,
}

impl Fleet {
    /// Connects to `hosts` (indices into the cluster file) in parallel, at most `concurrency` at once.
    /// A host that fails does not stop the others; its error is kept in its member.
    pub async fn connect(
        cluster: &ClusterFile,
        hosts: &[usize],
        connector: &Connector,
        helpers: &Helpers,
        placement: Placement,
        concurrency: usize,
        observer: &Arc<dyn Observer>,
    ) -> Fleet {
        let tasks = hosts.iter().map(|&index| {
            let host = cluster.hosts[index].clone();
            let observer = observer.clone();
            async move {
                let started = Instant::now();
                let (link, helper, host_key) = match link(connector, index, helpers, placement, observer.as_ref()).await
                {
                    Ok((link, state, key)) => (Ok(link), Some(state), Some(key)),
                    Err(e) => (Err(e), None, None),
                };
                Member { index, host, link, helper, host_key, elapsed: started.elapsed() }
            }
        });
        let members = stream::iter(tasks).buffered(concurrency.max(1)).collect().await;
        Fleet { members, local: false }
    }

    /// This machine as the only member (local mode): no SSH, no helper upload.
    pub fn local(cluster: &ClusterFile) -> Fleet {
        let system: Arc<dyn HostSystem> = Arc::new(RealSystem::host());
        Fleet { local: true, ..Fleet::in_process(cluster, |_| system.clone()) }
    }

    /// Every host of the cluster file in-process, over the system `system_of(host)` gives.
    pub fn in_process(cluster: &ClusterFile, mut system_of: impl FnMut(&Host) -> Arc<dyn HostSystem>) -> Fleet {
        let members = cluster
            .hosts
            .iter()
            .enumerate()
            .map(|(index, host)| Member {
                index,
                host: host.clone(),
                link: Ok(Link::new(Arc::new(InProcessLink::new(host.name.clone(), system_of(host))))),
                helper: None,
                host_key: None,
                elapsed: Duration::ZERO,
            })
            .collect();
        Fleet { members, local: false }
    }

    pub fn failures(&self) -> impl Iterator<Item = (&Member, &LinkError)> {
        self.members.iter().filter_map(|m| m.link.as_ref().err().map(|e| (m, e)))
    }

    pub fn member(&self, host: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.host.name == host)
    }

    pub async fn close(self) {
        for m in self.members {
            if let Ok(link) = m.link {
                link.close().await;
            }
        }
    }
}

async fn link(
    connector: &Connector,
    index: usize,
    helpers: &Helpers,
    placement: Placement,
    observer: &dyn Observer,
) -> Result<(Link, HelperState, String), LinkError> {
    let endpoint = connector.endpoint(index);
    observer.phase(&endpoint.host, "connecting");
    let session = Session::connect(endpoint, &connector.options, &connector.keyring).await?;
    let host_key = session.host_key().to_string();
    observer.phase(&endpoint.host, "checking the helper");
    let (link, state) = connect_helper(session, helpers, placement).await?;
    Ok((Link::new(Arc::new(link)), state, host_key))
}
