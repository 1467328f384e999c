//! Values that must never reach output, logs or errors (join tokens, kubeconfig keys, env files),
//! and the one place where the host helper removes them from what it writes back.

use serde::{Deserialize, Serialize};

pub const REDACTED: &str = "<redacted>";

/// config.yaml keys whose values are secrets (a datastore endpoint carries its password).
pub const SECRET_CONFIG_KEYS: [&str; 7] = [
    "token",
    "agent-token",
    "datastore-endpoint",
    "etcd-s3-access-key",
    "etcd-s3-secret-key",
    "etcd-s3-session-token",
    "vpn-auth",
];

/// Env variables whose values are secrets: K3S_TOKEN, K3S_AGENT_TOKEN, K3S_CLUSTER_SECRET,
/// K3S_DATASTORE_ENDPOINT, proxies' ...PASSWORD. K3S_URL is not one.
pub fn secret_env_name(name: &str) -> bool {
    let upper = name.trim().to_ascii_uppercase();
    ["TOKEN", "PASSWORD", "SECRET", "DATASTORE_ENDPOINT"].iter().any(|w| upper.contains(w))
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

    /// The secret values of a k3s config.yaml text (see [`SECRET_CONFIG_KEYS`]).
    pub fn config_values(config_yaml: &str) -> Vec<String> {
        let mut values = Vec::new();
        if let Ok(serde_yaml_ng::Value::Mapping(map)) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(config_yaml) {
            for key in SECRET_CONFIG_KEYS {
                for k in [key.to_string(), format!("{key}+")] {
                    if let Some(serde_yaml_ng::Value::String(v)) = map.get(k.as_str()) {
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
