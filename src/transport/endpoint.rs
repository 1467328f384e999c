//! Where and as whom to connect: a host's address, port, user, keys and jump host, after the
//! user's OpenSSH client config has been applied.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use ssh2_config::{ParseRule, SshConfig};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The host's name in the cluster file; used in every message.
    pub host: String,
    /// What is dialled (after `HostName` from the SSH config).
    pub address: String,
    pub port: u16,
    pub user: String,
    /// Keys to try, in order; empty means OpenSSH's default key files.
    pub identity_files: Vec<PathBuf>,
    pub jump: Option<Box<Endpoint>>,
}

/// What the cluster file says about one connection, before the SSH config is consulted.
/// `None` fields were not set for this host and may come from the SSH config, then from `fallback_*`.
#[derive(Debug, Clone, Default)]
pub struct EndpointRequest {
    pub host: String,
    pub address: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub identity_file: Option<PathBuf>,
    pub jump: Option<Box<EndpointRequest>>,
    pub fallback_port: u16,
    pub fallback_user: String,
    pub fallback_identity_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read SSH config {}: {detail}", path.display())]
pub struct SshConfigError {
    pub path: PathBuf,
    pub detail: String,
}

/// The user's OpenSSH client config (HostName, User, Port, IdentityFile, ProxyJump are used).
#[derive(Default)]
pub struct ClientConfig {
    config: Option<SshConfig>,
}

impl ClientConfig {
    /// Reads `path`; a missing file is an empty config only when `required` is false.
    pub fn load(path: &Path, required: bool) -> Result<ClientConfig, SshConfigError> {
        let err = |detail: String| SshConfigError { path: path.to_path_buf(), detail };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(ClientConfig::default()),
            Err(e) => return Err(err(e.to_string())),
        };
        let config = SshConfig::default()
            .parse(&mut BufReader::new(file), ParseRule::ALLOW_UNKNOWN_FIELDS)
            .map_err(|e| err(e.to_string()))?;
        Ok(ClientConfig { config: Some(config) })
    }

    pub fn default_path() -> PathBuf {
        crate::home::home_or_root().join(".ssh/config")
    }

    /// Precedence: what the cluster file sets for this host, then the SSH config, then the cluster
    /// file's defaults. A jump host from the cluster file beats a ProxyJump from the SSH config.
    pub fn resolve(&self, request: &EndpointRequest) -> Endpoint {
        self.resolve_depth(request, 0)
    }

    fn resolve_depth(&self, req: &EndpointRequest, depth: usize) -> Endpoint {
        let params = self.config.as_ref().map(|c| c.query(&req.address));
        let from_config = |f: &dyn Fn(&ssh2_config::HostParams) -> Option<String>| params.as_ref().and_then(f);
        let address = from_config(&|p| p.host_name.clone()).unwrap_or_else(|| req.address.clone());
        let port = req.port.or_else(|| params.as_ref().and_then(|p| p.port)).unwrap_or(req.fallback_port);
        let user =
            req.user.clone().or_else(|| from_config(&|p| p.user.clone())).unwrap_or_else(|| req.fallback_user.clone());
        let mut identity_files: Vec<PathBuf> = req.identity_file.iter().cloned().collect();
        if identity_files.is_empty() {
            if let Some(files) = params.as_ref().and_then(|p| p.identity_file.clone()) {
                identity_files.extend(files.into_iter().map(|f| expand_tilde(&f)));
            }
        }
        if identity_files.is_empty() {
            identity_files.extend(req.fallback_identity_file.iter().cloned());
        }
        // Chains longer than a few hops are a config loop, not a network design.
        let jump = if depth >= 4 {
            None
        } else if let Some(jump) = &req.jump {
            Some(Box::new(self.resolve_depth(jump, depth + 1)))
        } else {
            params
                .as_ref()
                .and_then(|p| p.proxy_jump.as_ref())
                .and_then(|hops| hops.first())
                .filter(|hop| hop.as_str() != "none")
                .map(|hop| {
                    let jump_req = parse_proxy_jump(hop, req);
                    Box::new(self.resolve_depth(&jump_req, depth + 1))
                })
        };
        Endpoint { host: req.host.clone(), address, port, user, identity_files, jump }
    }
}

/// `[user@]host[:port]` from a ProxyJump line.
fn parse_proxy_jump(hop: &str, target: &EndpointRequest) -> EndpointRequest {
    let (user, rest) = match hop.split_once('@') {
        Some((u, r)) => (Some(u.to_string()), r),
        None => (None, hop),
    };
    let (address, port) = match rest.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.trim_matches(['[', ']']).to_string(), p.parse().ok()),
        _ => (rest.to_string(), None),
    };
    EndpointRequest {
        host: format!("{} (jump {address})", target.host),
        address,
        port,
        user,
        identity_file: None,
        jump: None,
        fallback_port: 22,
        fallback_user: target.user.clone().unwrap_or_else(|| target.fallback_user.clone()),
        fallback_identity_file: target.fallback_identity_file.clone(),
    }
}

pub fn expand_tilde(path: &Path) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) => crate::home::home_or_root().join(rest),
        Err(_) => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> ClientConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, text).unwrap();
        ClientConfig::load(&path, true).unwrap()
    }

    fn request(address: &str) -> EndpointRequest {
        EndpointRequest {
            host: "h1".into(),
            address: address.into(),
            fallback_port: 22,
            fallback_user: "root".into(),
            ..Default::default()
        }
    }

    #[test]
    fn ssh_config_supplies_hostname_user_port_key_and_proxyjump() {
        let cfg = config(
            "Host web1\n  HostName 10.1.0.5\n  User deploy\n  Port 2222\n  IdentityFile /keys/web\n  ProxyJump jumper@bastion.example:2200\n",
        );
        let ep = cfg.resolve(&request("web1"));
        assert_eq!((ep.address.as_str(), ep.port, ep.user.as_str()), ("10.1.0.5", 2222, "deploy"));
        assert_eq!(ep.identity_files, vec![PathBuf::from("/keys/web")]);
        let jump = ep.jump.expect("jump host");
        assert_eq!((jump.address.as_str(), jump.port, jump.user.as_str()), ("bastion.example", 2200, "jumper"));
    }

    #[test]
    fn cluster_file_per_host_values_beat_ssh_config() {
        let cfg = config("Host web1\n  User deploy\n  Port 2222\n");
        let mut req = request("web1");
        req.user = Some("admin".into());
        req.port = Some(22);
        let ep = cfg.resolve(&req);
        assert_eq!((ep.user.as_str(), ep.port), ("admin", 22));
        assert!(ep.jump.is_none());
    }

    #[test]
    fn unmatched_host_takes_cluster_defaults() {
        let cfg = config("Host other\n  User deploy\n");
        let mut req = request("10.0.0.9");
        req.fallback_user = "vagrant".into();
        req.fallback_identity_file = Some("/keys/default".into());
        let ep = cfg.resolve(&req);
        assert_eq!((ep.address.as_str(), ep.user.as_str(), ep.port), ("10.0.0.9", "vagrant", 22));
        assert_eq!(ep.identity_files, vec![PathBuf::from("/keys/default")]);
    }
}
