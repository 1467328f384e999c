//! Nodes as both sides speak of them: the role a host plays, and a node's readiness as
//! Kubernetes reports it (one parser for every place that reads a Node's Ready condition).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Server,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Node's `Ready` condition as read from its JSON (`status.conditions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// The condition exists and is not True: its status and the reason/message given.
    NotReady(String),
    /// The node has no Ready condition yet (just registered).
    Unreported,
}

impl Readiness {
    /// Reads the Ready condition of one Node object.
    pub fn of(node: &serde_json::Value) -> Readiness {
        let conditions = node["status"]["conditions"].as_array();
        match conditions.and_then(|cs| cs.iter().find(|c| c["type"] == "Ready")) {
            Some(c) if c["status"] == "True" => Readiness::Ready,
            Some(c) => Readiness::NotReady(format!(
                "Ready={} ({})",
                c["status"].as_str().unwrap_or("?"),
                c["message"].as_str().or(c["reason"].as_str()).unwrap_or("no reason given")
            )),
            None => Readiness::Unreported,
        }
    }

    pub fn is_ready(&self) -> bool {
        *self == Readiness::Ready
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub ready: bool,
    pub roles: Vec<String>,
    pub version: String,
}

impl NodeInfo {
    /// Name, readiness, roles from `node-role.kubernetes.io/<role>` labels (sorted) and the
    /// kubelet version of one Node object; None when it has no name.
    pub fn of(node: &serde_json::Value) -> Option<NodeInfo> {
        let name = node["metadata"]["name"].as_str()?.to_string();
        let mut roles: Vec<String> = node["metadata"]["labels"]
            .as_object()
            .map(|labels| {
                labels.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/")).map(str::to_string).collect()
            })
            .unwrap_or_default();
        roles.sort();
        let version = node["status"]["nodeInfo"]["kubeletVersion"].as_str().unwrap_or("").to_string();
        Some(NodeInfo { name, ready: Readiness::of(node).is_ready(), roles, version })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_comes_from_the_ready_condition_only() {
        let node = |conditions: &str| -> serde_json::Value {
            serde_json::from_str(&format!(r#"{{"metadata":{{"name":"n"}},"status":{{"conditions":{conditions}}}}}"#))
                .unwrap()
        };
        assert_eq!(
            Readiness::of(&node(r#"[{"type":"MemoryPressure","status":"False"},{"type":"Ready","status":"True"}]"#)),
            Readiness::Ready
        );
        assert_eq!(
            Readiness::of(&node(
                r#"[{"type":"Ready","status":"False","reason":"KubeletNotReady","message":"cni not ready"}]"#
            )),
            Readiness::NotReady("Ready=False (cni not ready)".into())
        );
        assert_eq!(Readiness::of(&node("[]")), Readiness::Unreported);
        assert_eq!(Readiness::of(&serde_json::json!({})), Readiness::Unreported);
    }
}
