//! What a server knows: its join token, its admin kubeconfig, the cluster's nodes; and deleting
//! stale Node objects through it.

use std::io;
use std::path::{Path, PathBuf};

use super::config::{self, ConfigError, Settings};
use super::{DEFAULT_KUBECONFIG, K3S_BIN};
use crate::host::error::{describe_io, Failure, HostError};
use crate::host::serve::{Context, HostOperation};
use crate::host::system::HostSystem;
use crate::protocol::k3s::{
    DeleteNodes, KubeconfigAnswer, ListNodes, NodesAnswer, NodesDeleted, ReadKubeconfig, ReadToken, TokenAnswer,
};
use crate::protocol::node::NodeInfo;
use crate::protocol::{ErrorKind, Secret};

const NOT_STARTED: &str = "not a server, or k3s has not started yet";

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{} {what}: {NOT_STARTED}", path.display())]
    NotServer { path: PathBuf, what: &'static str },
    #[error("cannot read {}: {}", path.display(), describe_io(source))]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The API did not answer: k3s is starting, stopped, or unreachable.
    #[error("{0}")]
    Api(String),
    #[error("{0}")]
    BadOutput(String),
}

impl Failure for QueryError {
    fn kind(&self) -> ErrorKind {
        match self {
            QueryError::NotServer { .. } => ErrorKind::NotInstalled,
            QueryError::Io { source, .. } => ErrorKind::of_io(source),
            QueryError::Config(_) | QueryError::BadOutput(_) => ErrorKind::Failed,
            QueryError::Api(_) => ErrorKind::Unavailable,
        }
    }
}

impl HostOperation for ReadToken {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<TokenAnswer, HostError> {
        Ok(read_token(ctx.sys)?)
    }
}

impl HostOperation for ReadKubeconfig {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<KubeconfigAnswer, HostError> {
        Ok(kubeconfig(ctx.sys)?)
    }
}

impl HostOperation for ListNodes {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<NodesAnswer, HostError> {
        Ok(nodes(ctx.sys)?)
    }
}

impl HostOperation for DeleteNodes {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<NodesDeleted, HostError> {
        let sys = ctx.sys;
        Ok(delete_nodes(sys, &self, &mut |m| ctx.progress(m))?)
    }
}

/// `<data-dir>/server/token`.
pub fn read_token(sys: &dyn HostSystem) -> Result<TokenAnswer, QueryError> {
    let settings = config::on_host(sys)?;
    let path = settings.data_dir.join("server/token");
    let token = read_secret(sys, &path)?;
    Ok(TokenAnswer { token: Secret::new(token) })
}

/// /etc/rancher/k3s/k3s.yaml, or where `write-kubeconfig` says.
pub fn kubeconfig(sys: &dyn HostSystem) -> Result<KubeconfigAnswer, QueryError> {
    let settings = config::on_host(sys)?;
    let text = read_secret(sys, &settings.kubeconfig)?;
    Ok(KubeconfigAnswer { kubeconfig: Secret::new(text + "\n") })
}

/// The file's text, trimmed at the end; missing or empty is the "not a server" error.
fn read_secret(sys: &dyn HostSystem, path: &Path) -> Result<String, QueryError> {
    let text = match sys.read_to_string(path) {
        Ok(text) => text.trim_end().to_string(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(QueryError::NotServer { path: path.to_path_buf(), what: "does not exist" })
        }
        // The error's words only: the contents never reach a message.
        Err(source) => return Err(QueryError::Io { path: path.to_path_buf(), source }),
    };
    if text.is_empty() {
        return Err(QueryError::NotServer { path: path.to_path_buf(), what: "is empty" });
    }
    Ok(text)
}

/// `k3s kubectl [--kubeconfig F] <args>` as the server's admin.
fn kubectl(sys: &dyn HostSystem, settings: &Settings, args: &[&str]) -> Result<String, QueryError> {
    let kubeconfig = settings.kubeconfig.to_string_lossy().into_owned();
    let mut full = vec!["kubectl"];
    if settings.kubeconfig != Path::new(DEFAULT_KUBECONFIG) {
        full.extend(["--kubeconfig", kubeconfig.as_str()]);
    }
    full.extend_from_slice(args);
    let out =
        sys.run(Path::new(K3S_BIN), &full).map_err(|e| QueryError::Api(format!("cannot run k3s kubectl: {e}")))?;
    if !out.success() {
        return Err(QueryError::Api(format!(
            "k3s kubectl {} failed: {} ({NOT_STARTED}?)",
            args.first().copied().unwrap_or(""),
            out.failure_summary()
        )));
    }
    Ok(out.stdout)
}

fn installed(sys: &dyn HostSystem) -> Result<Settings, QueryError> {
    if !sys.exists(Path::new(K3S_BIN)) {
        return Err(QueryError::NotServer { path: K3S_BIN.into(), what: "is not installed" });
    }
    Ok(config::on_host(sys)?)
}

/// `k3s kubectl get nodes -o json`, as the server sees the cluster.
pub fn nodes(sys: &dyn HostSystem) -> Result<NodesAnswer, QueryError> {
    let settings = installed(sys)?;
    let stdout = kubectl(sys, &settings, &["get", "nodes", "-o", "json"])?;
    parse_nodes(&stdout).map(|nodes| NodesAnswer { nodes })
}

/// Deletes the named Node objects that exist (k3s then drops their node-password secrets).
pub fn delete_nodes(
    sys: &dyn HostSystem,
    req: &DeleteNodes,
    progress: &mut dyn FnMut(&str),
) -> Result<NodesDeleted, QueryError> {
    let settings = installed(sys)?;
    let existing = parse_nodes(&kubectl(sys, &settings, &["get", "nodes", "-o", "json"])?)?;
    let deleted: Vec<String> = req.names.iter().filter(|n| existing.iter().any(|e| &e.name == *n)).cloned().collect();
    if req.dry_run || deleted.is_empty() {
        return Ok(NodesDeleted { deleted });
    }
    progress(&format!("deleting node {}", deleted.join(", ")));
    let mut args = vec!["delete", "node"];
    args.extend(deleted.iter().map(String::as_str));
    args.push("--ignore-not-found");
    kubectl(sys, &settings, &args)?;
    Ok(NodesDeleted { deleted })
}

/// A Kubernetes NodeList, read with the one Node parser ([`NodeInfo::of`]).
pub(super) fn parse_nodes(json: &str) -> Result<Vec<NodeInfo>, QueryError> {
    let list: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| QueryError::BadOutput(format!("k3s kubectl get nodes printed invalid JSON: {e}")))?;
    let items = list["items"]
        .as_array()
        .ok_or_else(|| QueryError::BadOutput("k3s kubectl get nodes printed no NodeList (no items)".into()))?;
    items
        .iter()
        .map(|item| {
            NodeInfo::of(item).ok_or_else(|| QueryError::BadOutput("a node in the NodeList has no name".into()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::k3s::CONFIG_FILE;
    use crate::host::system::fake::FakeSystem;

    const TOKEN: &str = "K10f0e1d2c3b4a5968778695a4b3c2d1e0f0e1d2c3b4a5968778695a4b3c2d1e0f::server:3c9f1b2a7d";

    #[test]
    fn token_from_the_default_or_configured_data_dir() {
        let sys = FakeSystem::new().file("/var/lib/rancher/k3s/server/token", &format!("{TOKEN}\n"));
        assert_eq!(read_token(&sys).unwrap().token.expose(), TOKEN);
        let moved = FakeSystem::new()
            .file(CONFIG_FILE, "data-dir: /srv/k3s\n")
            .file("/srv/k3s/server/token", TOKEN)
            .file("/var/lib/rancher/k3s/server/token", "stale");
        assert_eq!(read_token(&moved).unwrap().token.expose(), TOKEN);
    }

    #[test]
    fn missing_token_says_why() {
        let err = read_token(&FakeSystem::new()).unwrap_err().to_string();
        assert_eq!(err, "/var/lib/rancher/k3s/server/token does not exist: not a server, or k3s has not started yet");
        let empty = FakeSystem::new().file("/var/lib/rancher/k3s/server/token", "\n");
        assert!(read_token(&empty).unwrap_err().to_string().contains("is empty: not a server"));
        let denied =
            FakeSystem::new().file("/var/lib/rancher/k3s/server/token", TOKEN).deny("/var/lib/rancher/k3s/server");
        let err = read_token(&denied).unwrap_err().to_string();
        assert!(err.contains("Permission denied") && !err.contains("K10"), "{err}");
    }

    #[test]
    fn kubeconfig_from_default_or_write_kubeconfig() {
        let sys = FakeSystem::new().file(DEFAULT_KUBECONFIG, "apiVersion: v1\nkind: Config\n");
        assert_eq!(kubeconfig(&sys).unwrap().kubeconfig.expose(), "apiVersion: v1\nkind: Config\n");
        let moved = FakeSystem::new()
            .file(CONFIG_FILE, "write-kubeconfig: /root/k3s.yaml\n")
            .file("/root/k3s.yaml", "kind: Config");
        assert_eq!(kubeconfig(&moved).unwrap().kubeconfig.expose(), "kind: Config\n");
        assert!(kubeconfig(&FakeSystem::new())
            .unwrap_err()
            .to_string()
            .contains("/etc/rancher/k3s/k3s.yaml does not exist"));
    }

    pub(crate) const NODE_LIST: &str = r#"{
  "apiVersion": "v1", "kind": "List",
  "items": [
    {"metadata": {"name": "server1", "labels": {"kubernetes.io/hostname": "server1",
        "node-role.kubernetes.io/master": "true", "node-role.kubernetes.io/control-plane": "true",
        "node-role.kubernetes.io/etcd": "true"}},
     "status": {"conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                "nodeInfo": {"kubeletVersion": "v1.31.4+k3s1"}}},
    {"metadata": {"name": "agent1", "labels": {"kubernetes.io/hostname": "agent1"}},
     "status": {"conditions": [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}],
                "nodeInfo": {"kubeletVersion": "v1.31.4+k3s1"}}},
    {"metadata": {"name": "agent2"}, "status": {}}
  ]
}"#;

    #[test]
    fn nodes_are_parsed_from_kubectl() {
        let sys = FakeSystem::new().file(K3S_BIN, "").output(
            K3S_BIN,
            &["kubectl", "get", "nodes", "-o", "json"],
            0,
            NODE_LIST,
            "",
        );
        let nodes = nodes(&sys).unwrap().nodes;
        assert_eq!(
            nodes,
            vec![
                NodeInfo {
                    name: "server1".into(),
                    ready: true,
                    roles: vec!["control-plane".into(), "etcd".into(), "master".into()],
                    version: "v1.31.4+k3s1".into()
                },
                NodeInfo { name: "agent1".into(), ready: false, roles: vec![], version: "v1.31.4+k3s1".into() },
                NodeInfo { name: "agent2".into(), ready: false, roles: vec![], version: "".into() },
            ]
        );
    }

    #[test]
    fn nodes_failures_are_clear() {
        assert!(nodes(&FakeSystem::new()).unwrap_err().to_string().contains("not installed"));
        let refused = FakeSystem::new().file(K3S_BIN, "").output(
            K3S_BIN,
            &["kubectl", "get", "nodes", "-o", "json"],
            1,
            "",
            "The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?\n",
        );
        let err = nodes(&refused).unwrap_err().to_string();
        assert!(err.contains("was refused") && err.contains("exit status 1"), "{err}");
        let custom = FakeSystem::new().file(K3S_BIN, "").file(CONFIG_FILE, "write-kubeconfig: /root/k.yaml\n").output(
            K3S_BIN,
            &["kubectl", "--kubeconfig", "/root/k.yaml", "get", "nodes", "-o", "json"],
            0,
            r#"{"items": []}"#,
            "",
        );
        assert_eq!(nodes(&custom).unwrap().nodes, vec![]);
        assert!(parse_nodes("{\"kind\": \"Status\"}").unwrap_err().to_string().contains("no items"));
    }
}
