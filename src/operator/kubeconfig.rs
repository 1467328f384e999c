//! The cluster's admin kubeconfig, fetched from a server, pointed at a reachable address, named
//! after the cluster and merged into the user's kubeconfig without touching other contexts.

use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("the server's kubeconfig is not what k3s writes: {0}")]
    Malformed(String),
    #[error("{}: not a kubeconfig k3node can merge into ({detail}); move it aside or pass --kubeconfig", path.display())]
    Existing { path: PathBuf, detail: String },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `$KUBECONFIG`'s first entry, else `~/.kube/config`.
pub fn default_path() -> PathBuf {
    if let Some(first) = std::env::var_os("KUBECONFIG").and_then(|v| std::env::split_paths(&v).next()) {
        if !first.as_os_str().is_empty() {
            return first;
        }
    }
    crate::home::home_or_root().join(".kube/config")
}

/// k3s.yaml names everything `default` and points at 127.0.0.1; this renames cluster, user and
/// context to `name` and points the cluster at `server_url`.
pub fn rewrite(k3s_yaml: &str, name: &str, server_url: &str) -> Result<Value, KubeconfigError> {
    let doc: Value = serde_yaml_ng::from_str(k3s_yaml).map_err(|e| KubeconfigError::Malformed(e.to_string()))?;
    let first = |key: &str| -> Result<Value, KubeconfigError> {
        doc.get(key)
            .and_then(Value::as_sequence)
            .and_then(|s| s.first())
            .cloned()
            .ok_or_else(|| KubeconfigError::Malformed(format!("no {key}")))
    };
    let mut cluster = first("clusters")?;
    let mut user = first("users")?;
    cluster["name"] = Value::from(name);
    cluster["cluster"]["server"] = Value::from(server_url);
    user["name"] = Value::from(name);
    let mut context_body = Mapping::new();
    context_body.insert("cluster".into(), name.into());
    context_body.insert("user".into(), name.into());
    let mut context = Mapping::new();
    context.insert("name".into(), name.into());
    context.insert("context".into(), Value::Mapping(context_body));

    let mut out = Mapping::new();
    out.insert("apiVersion".into(), "v1".into());
    out.insert("kind".into(), "Config".into());
    out.insert("clusters".into(), Value::Sequence(vec![cluster]));
    out.insert("users".into(), Value::Sequence(vec![user]));
    out.insert("contexts".into(), Value::Sequence(vec![Value::Mapping(context)]));
    out.insert("current-context".into(), name.into());
    Ok(Value::Mapping(out))
}

/// Merges `ours` (from [`rewrite`]) into `existing`: entries named like ours are replaced, all
/// others kept; the current context becomes ours.
pub fn merge(existing: Option<&str>, ours: &Value, path: &Path) -> Result<String, KubeconfigError> {
    let bad = |detail: String| KubeconfigError::Existing { path: path.to_path_buf(), detail };
    let mut doc = match existing.map(str::trim).filter(|t| !t.is_empty()) {
        None => ours.clone(),
        Some(text) => {
            let mut doc: Value = serde_yaml_ng::from_str(text).map_err(|e| bad(e.to_string()))?;
            if !doc.is_mapping() {
                return Err(bad("the top level is not a mapping".into()));
            }
            for key in ["clusters", "users", "contexts"] {
                let theirs = doc.get(key).cloned().unwrap_or(Value::Sequence(vec![]));
                let Value::Sequence(mut list) = theirs else { return Err(bad(format!("{key} is not a list"))) };
                for entry in ours[key].as_sequence().into_iter().flatten() {
                    list.retain(|e| e.get("name") != entry.get("name"));
                    list.push(entry.clone());
                }
                doc[key] = Value::Sequence(list);
            }
            doc["current-context"] = ours["current-context"].clone();
            doc
        }
    };
    if doc.get("apiVersion").is_none() {
        doc["apiVersion"] = "v1".into();
    }
    serde_yaml_ng::to_string(&doc).map_err(|e| bad(e.to_string()))
}

/// Rewrites and merges into `path` (atomically, 0600: it holds the admin key).
pub fn merge_into_file(path: &Path, k3s_yaml: &str, name: &str, server_url: &str) -> Result<(), KubeconfigError> {
    let ours = rewrite(k3s_yaml, name, server_url)?;
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(KubeconfigError::Existing { path: path.to_path_buf(), detail: e.to_string() }),
    };
    let text = merge(existing.as_deref(), &ours, path)?;
    crate::fsutil::write_atomic(path, text.as_bytes(), 0o600)
        .map_err(|source| KubeconfigError::Write { path: path.to_path_buf(), source })
}

/// Removes the cluster, user and context named `name` from the kubeconfig at `path` (a reset of
/// the whole cluster); the current context is unset when it was ours. True when anything changed.
pub fn remove_from_file(path: &Path, name: &str) -> Result<bool, KubeconfigError> {
    let bad = |detail: String| KubeconfigError::Existing { path: path.to_path_buf(), detail };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(bad(e.to_string())),
    };
    let mut doc: Value = serde_yaml_ng::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if !doc.is_mapping() {
        return Err(bad("the top level is not a mapping".into()));
    }
    let mut changed = false;
    for key in ["clusters", "users", "contexts"] {
        if let Some(Value::Sequence(list)) = doc.get_mut(key) {
            let before = list.len();
            list.retain(|e| e.get("name").and_then(Value::as_str) != Some(name));
            changed |= list.len() != before;
        }
    }
    if doc.get("current-context").and_then(Value::as_str) == Some(name) {
        doc["current-context"] = "".into();
        changed = true;
    }
    if changed {
        let text = serde_yaml_ng::to_string(&doc).map_err(|e| bad(e.to_string()))?;
        crate::fsutil::write_atomic(path, text.as_bytes(), 0o600)
            .map_err(|source| KubeconfigError::Write { path: path.to_path_buf(), source })?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K3S_YAML: &str = "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: Q0E=\n    server: https://127.0.0.1:6443\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\npreferences: {}\nusers:\n- name: default\n  user:\n    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\n";

    #[test]
    fn renames_and_points_at_the_server_and_keeps_other_contexts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, "apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster: {server: https://prod:6443}\nusers:\n- name: prod\n  user: {token: x}\ncontexts:\n- name: prod\n  context: {cluster: prod, user: prod}\ncurrent-context: prod\n").unwrap();
        merge_into_file(&path, K3S_YAML, "lab", "https://172.30.77.11:6443").unwrap();
        merge_into_file(&path, K3S_YAML, "lab", "https://172.30.77.11:6443").unwrap();
        let doc: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let names = |k: &str| {
            doc[k].as_sequence().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect::<Vec<_>>()
        };
        assert_eq!(names("clusters"), ["prod", "lab"]);
        assert_eq!(names("contexts"), ["prod", "lab"]);
        assert_eq!(doc["current-context"], "lab");
        assert_eq!(doc["clusters"][1]["cluster"]["server"], "https://172.30.77.11:6443");
        assert_eq!(doc["users"][1]["user"]["client-key-data"], "S0VZ");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn removing_a_cluster_keeps_the_other_contexts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, "apiVersion: v1\nkind: Config\nclusters:\n- name: prod\n  cluster: {server: https://prod:6443}\nusers:\n- name: prod\n  user: {token: x}\ncontexts:\n- name: prod\n  context: {cluster: prod, user: prod}\ncurrent-context: prod\n").unwrap();
        merge_into_file(&path, K3S_YAML, "lab", "https://172.30.77.11:6443").unwrap();
        assert!(remove_from_file(&path, "lab").unwrap());
        assert!(!remove_from_file(&path, "lab").unwrap(), "a second removal changes nothing");
        let doc: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(doc["contexts"].as_sequence().unwrap().len(), 1);
        assert_eq!(doc["clusters"][0]["name"], "prod");
        assert_eq!(doc["current-context"], "");
        assert!(!remove_from_file(&dir.path().join("missing"), "lab").unwrap());
    }

    #[test]
    fn refuses_to_merge_into_something_that_is_not_a_kubeconfig() {
        let err =
            merge(Some("- just\n- a list\n"), &rewrite(K3S_YAML, "lab", "https://x:6443").unwrap(), Path::new("/k"))
                .unwrap_err();
        assert!(err.to_string().contains("not a mapping"), "{err}");
    }
}
