//! Values that must never reach output, logs or errors (join tokens, kubeconfig keys, env files),
//! and the one place where the host helper removes them from what it writes back.

use serde::{Deserialize, Serialize};

pub const REDACTED: &str = "<redacted>";

/// config.yaml keys whose values are secrets (a datastore endpoint carries its password).
pub const SECRET_CONFIG_KEYS: [&str; 8] = [
    "token",
    "agent-token",
    "datastore-endpoint",
    "etcd-s3-access-key",
    "etcd-s3-proxy",
    "etcd-s3-secret-key",
    "etcd-s3-session-token",
    "vpn-auth",
];

/// Words that make a config key a secret when k3node does not know the key (extraConfig): a
/// value that might be a secret is masked rather than shown.
const SECRET_WORDS: [&str; 7] = ["token", "secret", "password", "credential", "auth", "access-key", "endpoint"];

/// k3s keys whose names contain one of [`SECRET_WORDS`] but whose values are not secrets (paths,
/// sockets, switches, a Secret's name); the cluster module's key table is checked against this.
pub const PUBLIC_CONFIG_KEYS: [&str; 13] = [
    "agent-token-file",
    "container-runtime-endpoint",
    "disable-default-registry-endpoint",
    "etcd-s3-config-secret",
    "etcd-s3-endpoint",
    "etcd-s3-endpoint-ca",
    "image-credential-provider-bin-dir",
    "image-credential-provider-config",
    "image-service-endpoint",
    "secrets-encryption",
    "secrets-encryption-provider",
    "token-file",
    "vpn-auth-file",
];

/// Whether a config.yaml key's value is a secret: one of [`SECRET_CONFIG_KEYS`], or a key
/// unknown to k3node whose name says it may be one (a `+` suffix appends to the same key).
pub fn secret_config_key(key: &str) -> bool {
    let key = key.trim_end_matches('+');
    SECRET_CONFIG_KEYS.contains(&key)
        || (!PUBLIC_CONFIG_KEYS.contains(&key) && SECRET_WORDS.iter().any(|word| key.contains(word)))
}

/// Env variables whose values are secrets: K3S_TOKEN, K3S_AGENT_TOKEN, K3S_CLUSTER_SECRET,
/// K3S_DATASTORE_ENDPOINT, ...PASSWORD, and the proxies (a proxy URL may carry `user:password@`).
/// K3S_URL and NO_PROXY are not.
pub fn secret_env_name(name: &str) -> bool {
    let upper = name.trim().to_ascii_uppercase();
    ["TOKEN", "PASSWORD", "SECRET", "DATASTORE_ENDPOINT", "CREDENTIAL"].iter().any(|w| upper.contains(w))
        || (upper.ends_with("_PROXY") && !upper.ends_with("NO_PROXY"))
}

/// The keys of registries.yaml whose (string) values are credentials, at any depth.
pub const REGISTRY_SECRET_KEYS: &[&str] = &["password", "auth", "identity_token"];

/// The credentials of a registries.yaml text, each with its key path
/// (`configs/registry.example:5000/auth/password`), in the file's order.
pub fn registries_secrets(text: &str) -> Vec<(String, String)> {
    fn walk(value: &serde_yaml_ng::Value, path: &str, out: &mut Vec<(String, String)>) {
        let serde_yaml_ng::Value::Mapping(map) = value else { return };
        for (key, value) in map {
            let Some(key) = key.as_str() else { continue };
            let here = if path.is_empty() { key.to_string() } else { format!("{path}/{key}") };
            match value {
                serde_yaml_ng::Value::String(v) if REGISTRY_SECRET_KEYS.contains(&key) => out.push((here, v.clone())),
                serde_yaml_ng::Value::Mapping(_) => walk(value, &here, out),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    if let Ok(value) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) {
        walk(&value, "", &mut out);
    }
    out
}

/// Serializes as the plain string (it travels inside the SSH channel, to the helper's stdin), but
/// formats as `<redacted>` with `{}` and `{:?}` so that no log line or error can carry it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself; every call site is a place where the secret is used, never shown.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Replaces every known secret value in free text (journal lines, command output, errors) by
/// `<redacted>`. The host helper builds one per request from [`super::Operation::secrets`] and
/// passes every line it writes through it.
#[derive(Debug, Default, Clone)]
pub struct Scrubber {
    secrets: Vec<String>,
}

impl Scrubber {
    pub fn new(values: impl IntoIterator<Item = String>) -> Scrubber {
        let mut secrets: Vec<String> = values.into_iter().collect();
        // A K10 token's password part is a secret on its own (it appears in URLs and logs alone).
        let parts: Vec<String> =
            secrets.iter().filter_map(|s| s.rsplit_once(':').map(|(_, pw)| pw.to_string())).collect();
        secrets.extend(parts);
        // Very short values would mask ordinary words; they are no secret worth the name anyway.
        secrets.retain(|s| s.len() >= 6);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Scrubber { secrets }
    }

    /// The secret values of a k3s config.yaml text (see [`secret_config_key`]).
    pub fn config_values(config_yaml: &str) -> Vec<String> {
        let mut values = Vec::new();
        if let Ok(serde_yaml_ng::Value::Mapping(map)) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(config_yaml) {
            for (key, value) in &map {
                if let (Some(key), serde_yaml_ng::Value::String(v)) = (key.as_str(), value) {
                    if secret_config_key(key) {
                        values.push(v.clone());
                    }
                }
            }
        }
        values
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_redacted_but_serializes_the_value() {
        let s = Secret::new("K10abc::server:pw");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"K10abc::server:pw\"");
    }

    #[test]
    fn scrubber_removes_secrets_and_token_passwords_from_free_text() {
        let mut values = vec!["K10abc::node:s3cretpw".to_string()];
        values.extend(Scrubber::config_values("agent-token: agenttoken123\nnode-name: n1\n"));
        let s = Scrubber::new(values);
        assert_eq!(
            s.scrub("token K10abc::node:s3cretpw bad; pw s3cretpw; agenttoken123 at https://10.0.0.1:6443"),
            "token <redacted> bad; pw <redacted>; <redacted> at https://10.0.0.1:6443"
        );
    }
}
