//! From the cluster file to open SSH sessions: endpoints, keys, options.

use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::{Bastion, ClusterFile, Host, HostKeyCheck};
use crate::transport::{
    keys, ClientConfig, ConnectOptions, Endpoint, EndpointRequest, HostKeyPolicy, Keyring, SshConfigError,
    TransportError,
};

/// Connection settings the command line may override.
#[derive(Debug, Clone, Default)]
pub struct ConnectOverrides {
    /// `--trust-new-host-keys`: record unknown host keys (changed ones are still refused).
    pub trust_new_host_keys: bool,
    pub connect_timeout: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectSetupError {
    #[error(transparent)]
    SshConfig(#[from] SshConfigError),
    #[error(transparent)]
    Key(#[from] TransportError),
}

/// Everything needed to open a session to any host of the cluster, prepared once per run.
pub struct Connector {
    pub options: ConnectOptions,
    pub keyring: Keyring,
    endpoints: Vec<Endpoint>,
}

impl Connector {
    pub fn prepare(cluster: &ClusterFile, overrides: &ConnectOverrides) -> Result<Connector, ConnectSetupError> {
        let ssh = &cluster.ssh;
        let client_config = match &ssh.config_file {
            Some(path) => ClientConfig::load(path, true)?,
            None => ClientConfig::load(&ClientConfig::default_path(), false)?,
        };
        let endpoints: Vec<Endpoint> =
            cluster.hosts.iter().map(|h| client_config.resolve(&request_for(cluster, h))).collect();

        // Keys the user named must load (or the run stops before touching any host); OpenSSH's
        // default keys are used when present.
        let mut required = Vec::new();
        let mut all = Vec::new();
        for ep in &endpoints {
            collect_identity_files(ep, &mut all);
        }
        for path in all {
            if !required.contains(&path) {
                required.push(path);
            }
        }
        let keyring = Keyring::load(&required, &keys::default_identity_files())?;

        let policy = if overrides.trust_new_host_keys || ssh.host_key_check == HostKeyCheck::AcceptNew {
            HostKeyPolicy::AcceptNew
        } else {
            HostKeyPolicy::Strict
        };
        let mut options =
            ConnectOptions { known_hosts: ssh.known_hosts.clone(), host_key_policy: policy, ..Default::default() };
        if let Some(t) = overrides.connect_timeout {
            options.connect_timeout = t;
        }
        Ok(Connector { options, keyring, endpoints })
    }

    /// The endpoint of the cluster file's `index`-th host.
    pub fn endpoint(&self, index: usize) -> &Endpoint {
        &self.endpoints[index]
    }
}

fn collect_identity_files(ep: &Endpoint, out: &mut Vec<PathBuf>) {
    out.extend(ep.identity_files.iter().cloned());
    if let Some(jump) = &ep.jump {
        collect_identity_files(jump, out);
    }
}

fn request_for(cluster: &ClusterFile, host: &Host) -> EndpointRequest {
    let ssh = &cluster.ssh;
    EndpointRequest {
        host: host.name.clone(),
        address: host.address.clone(),
        port: host.ssh.port,
        user: host.ssh.user.clone(),
        identity_file: host.ssh.key_path.clone(),
        jump: host.bastion(ssh).map(|b| Box::new(bastion_request(cluster, host, b))),
        fallback_port: ssh.port,
        fallback_user: ssh.user.clone(),
        fallback_identity_file: ssh.key_path.clone(),
    }
}

fn bastion_request(cluster: &ClusterFile, host: &Host, bastion: &Bastion) -> EndpointRequest {
    let ssh = &cluster.ssh;
    EndpointRequest {
        host: format!("{} (bastion {})", host.name, bastion.address),
        address: bastion.address.clone(),
        port: Some(bastion.port),
        user: bastion.user.clone(),
        identity_file: bastion.key_path.clone(),
        jump: None,
        fallback_port: 22,
        fallback_user: ssh.user.clone(),
        fallback_identity_file: ssh.key_path.clone(),
    }
}
