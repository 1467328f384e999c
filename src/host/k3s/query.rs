//! What a server knows: its join token, its admin kubeconfig, the cluster's nodes.

use std::io;
use std::path::Path;

use super::{config, describe_io, DEFAULT_KUBECONFIG, K3S_BIN};
use crate::host::system::HostSystem;
use crate::protocol::k3s::{KubeconfigAnswer, NodeInfo, NodesAnswer, TokenAnswer};
use crate::protocol::Secret;

const NOT_STARTED: &str = "not a server, or k3s has not started yet";

/// `<data-dir>/server/token`.
pub fn read_token(sys: &dyn HostSystem) -> Result<TokenAnswer, String> {
    let settings = config::on_host(sys)?;
    let path = settings.data_dir.join("server/token");
    let token = read_secret(sys, &path)?;
    Ok(TokenAnswer { token: Secret::new(token) })
}

/// /etc/rancher/k3s/k3s.yaml, or where `write-kubeconfig` says.
pub fn kubeconfig(sys: &dyn HostSystem) -> Result<KubeconfigAnswer, String> {
    let settings = config::on_host(sys)?;
    let text = read_secret(sys, &settings.kubeconfig)?;
    Ok(KubeconfigAnswer { kubeconfig: Secret::new(text + "\n") })
}

/// The file's text, trimmed at the end; missing or empty is the "not a server" error.
fn read_secret(sys: &dyn HostSystem, path: &Path) -> Result<String, String> {
    let text = match sys.read_to_string(path) {
        Ok(text) => text.trim_end().to_string(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!("{} does not exist: {NOT_STARTED}", path.display()))
        }
        // The error's words only: the contents never reach a message.
        Err(e) => return Err(format!("cannot read {}: {}", path.display(), describe_io(&e))),
    };
    if text.is_empty() {
        return Err(format!("{} is empty: {NOT_STARTED}", path.display()));
    }
    Ok(text)
}

/// `k3s kubectl get nodes -o json`, as the server sees the cluster.
pub fn nodes(sys: &dyn HostSystem) -> Result<NodesAnswer, String> {
    if !sys.exists(Path::new(K3S_BIN)) {
        return Err(format!("{K3S_BIN} is not installed: {NOT_STARTED}"));
    }
    let settings = config::on_host(sys)?;
    let kubeconfig = settings.kubeconfig.to_string_lossy().into_owned();
    let mut args = vec!["kubectl"];
    if settings.kubeconfig != Path::new(DEFAULT_KUBECONFIG) {
        args.extend(["--kubeconfig", kubeconfig.as_str()]);
    }
    args.extend(["get", "nodes", "-o", "json"]);
    let out = sys.run(Path::new(K3S_BIN), &args).map_err(|e| format!("cannot run k3s kubectl: {e}"))?;
    if !out.success() {
        return Err(format!("k3s kubectl get nodes failed: {} ({NOT_STARTED}?)", out.failure_summary()));
    }
    parse_nodes(&out.stdout).map(|nodes| NodesAnswer { nodes })
}

/// A Kubernetes NodeList: name, the Ready condition, roles from `node-role.kubernetes.io/<role>`
/// labels (sorted), and the kubelet version.
pub(super) fn parse_nodes(json: &str) -> Result<Vec<NodeInfo>, String> {
    let list: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("k3s kubectl get nodes printed invalid JSON: {e}"))?;
    let items = list["items"].as_array().ok_or("k3s kubectl get nodes printed no NodeList (no items)")?;
    let mut nodes = Vec::new();
    for item in items {
        let name = item["metadata"]["name"].as_str().ok_or("a node in the NodeList has no name")?.to_string();
        let ready = item["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .is_some_and(|c| c["status"] == "True");
        let mut roles: Vec<String> = item["metadata"]["labels"]
            .as_object()
            .map(|labels| {
                labels.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/")).map(str::to_string).collect()
            })
            .unwrap_or_default();
        roles.sort();
        let version = item["status"]["nodeInfo"]["kubeletVersion"].as_str().unwrap_or("").to_string();
        nodes.push(NodeInfo { name, ready, roles, version });
    }
    Ok(nodes)
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
        let err = read_token(&FakeSystem::new()).unwrap_err();
        assert_eq!(err, "/var/lib/rancher/k3s/server/token does not exist: not a server, or k3s has not started yet");
        let empty = FakeSystem::new().file("/var/lib/rancher/k3s/server/token", "\n");
        assert!(read_token(&empty).unwrap_err().contains("is empty: not a server"));
        let denied =
            FakeSystem::new().file("/var/lib/rancher/k3s/server/token", TOKEN).deny("/var/lib/rancher/k3s/server");
        let err = read_token(&denied).unwrap_err();
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
        assert!(kubeconfig(&FakeSystem::new()).unwrap_err().contains("/etc/rancher/k3s/k3s.yaml does not exist"));
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
        assert!(nodes(&FakeSystem::new()).unwrap_err().contains("not installed"));
        let refused = FakeSystem::new().file(K3S_BIN, "").output(
            K3S_BIN,
            &["kubectl", "get", "nodes", "-o", "json"],
            1,
            "",
            "The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?\n",
        );
        let err = nodes(&refused).unwrap_err();
        assert!(err.contains("was refused") && err.contains("exit status 1"), "{err}");
        let custom = FakeSystem::new().file(K3S_BIN, "").file(CONFIG_FILE, "write-kubeconfig: /root/k.yaml\n").output(
            K3S_BIN,
            &["kubectl", "--kubeconfig", "/root/k.yaml", "get", "nodes", "-o", "json"],
            0,
            r#"{"items": []}"#,
            "",
        );
        assert_eq!(nodes(&custom).unwrap().nodes, vec![]);
        assert!(parse_nodes("{\"kind\": \"Status\"}").unwrap_err().contains("no items"));
    }
}
