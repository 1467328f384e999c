//! Secrets out of everything shown: diffs of the env file and config.yaml, journal lines, errors.

use crate::protocol::Secret;

pub(super) const REDACTED: &str = "<redacted>";

/// config.yaml keys whose values are secrets (a datastore endpoint carries its password).
pub(super) const SECRET_CONFIG_KEYS: [&str; 7] = [
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
pub(super) fn secret_env_name(name: &str) -> bool {
    let upper = name.trim().to_ascii_uppercase();
    ["TOKEN", "PASSWORD", "SECRET", "DATASTORE_ENDPOINT"].iter().any(|w| upper.contains(w))
}

/// An env file's text with the values of secret variables replaced.
pub(super) fn mask_env(text: &str) -> String {
    map_lines(text, |line| match line.split_once('=') {
        Some((name, _)) if secret_env_name(name) => Some(format!("{name}={REDACTED}")),
        _ => None,
    })
}

/// config.yaml's text with the values of secret keys replaced, line by line so that the diff
/// stays readable (k3s's config is a flat mapping; a block scalar's lines are masked too).
pub(super) fn mask_config(text: &str) -> String {
    let mut in_secret_block = false;
    map_lines(text, |line| {
        let top_level = !line.starts_with([' ', '\t']) && !line.trim().is_empty();
        if in_secret_block {
            if !top_level {
                return Some(if line.trim().is_empty() { line.to_string() } else { format!("  {REDACTED}") });
            }
            in_secret_block = false;
        }
        if !top_level || line.starts_with('#') {
            return None;
        }
        let (key, value) = line.split_once(':')?;
        let bare_key = key.trim().trim_matches(['"', '\'']).trim_end_matches('+');
        if !SECRET_CONFIG_KEYS.contains(&bare_key) {
            return None;
        }
        let value = value.trim();
        if value.is_empty() || value.starts_with(['|', '>']) {
            in_secret_block = true;
        }
        Some(format!("{key}: {REDACTED}"))
    })
}

fn map_lines(text: &str, mut f: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (line, ""),
        };
        match f(body) {
            Some(masked) => out.push_str(&masked),
            None => out.push_str(body),
        }
        out.push_str(end);
    }
    out
}

/// `--- a/path`, `+++ b/path` unified diff of two (already masked) texts.
pub(super) fn unified_diff(path: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a{path}"), &format!("b{path}"))
        .to_string()
}

/// Replaces every known secret value in free text (journal lines, command output) by `<redacted>`.
#[derive(Debug, Default)]
pub(super) struct Scrubber {
    secrets: Vec<String>,
}

impl Scrubber {
    /// The secrets of an install request: secret env values and secret config.yaml values.
    pub fn for_request(env: &[(String, Secret)], config_yaml: &Secret) -> Scrubber {
        let mut secrets: Vec<String> =
            env.iter().filter(|(name, _)| secret_env_name(name)).map(|(_, v)| v.expose().to_string()).collect();
        if let Ok(serde_yaml_ng::Value::Mapping(map)) =
            serde_yaml_ng::from_str::<serde_yaml_ng::Value>(config_yaml.expose())
        {
            for key in SECRET_CONFIG_KEYS {
                for k in [key.to_string(), format!("{key}+")] {
                    if let Some(serde_yaml_ng::Value::String(v)) = map.get(k.as_str()) {
                        secrets.push(v.clone());
                    }
                }
            }
        }
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
    fn env_masks_tokens_and_passwords_but_not_the_url() {
        let text = "K3S_URL=https://10.0.0.1:6443\nK3S_TOKEN=K10abc::server:pw\nK3S_AGENT_TOKEN=\"x y\"\nHTTP_PROXY_PASSWORD=hunter2\nNO_PROXY=localhost\n";
        assert_eq!(
            mask_env(text),
            "K3S_URL=https://10.0.0.1:6443\nK3S_TOKEN=<redacted>\nK3S_AGENT_TOKEN=<redacted>\nHTTP_PROXY_PASSWORD=<redacted>\nNO_PROXY=localhost\n"
        );
    }

    #[test]
    fn config_masks_secret_keys_and_their_blocks() {
        let text = "cluster-init: true\ntoken: K10abc::server:pw\n\"agent-token\": 'agentpw'\nvpn-auth: |\n  name=tailscale,joinKey=tskey-123\n  more\ntls-san:\n  - k3s.example.com\ndatastore-endpoint: postgres://u:p@db/k3s\n# token: in a comment\ntoken-file: /etc/token\n";
        assert_eq!(
            mask_config(text),
            "cluster-init: true\ntoken: <redacted>\n\"agent-token\": <redacted>\nvpn-auth: <redacted>\n  <redacted>\n  <redacted>\ntls-san:\n  - k3s.example.com\ndatastore-endpoint: <redacted>\n# token: in a comment\ntoken-file: /etc/token\n"
        );
    }

    #[test]
    fn diff_has_a_and_b_headers() {
        let d = unified_diff("/etc/rancher/k3s/config.yaml", "a: 1\n", "a: 2\n");
        assert!(d.starts_with("--- a/etc/rancher/k3s/config.yaml\n+++ b/etc/rancher/k3s/config.yaml\n@@"), "{d}");
        assert!(d.contains("-a: 1\n+a: 2\n"), "{d}");
    }

    #[test]
    fn scrubber_removes_request_secrets_from_free_text() {
        let env = vec![
            ("K3S_URL".into(), Secret::new("https://10.0.0.1:6443")),
            ("K3S_TOKEN".into(), Secret::new("K10abc::node:s3cretpw")),
        ];
        let s = Scrubber::for_request(&env, &Secret::new("agent-token: agenttoken123\nnode-name: n1\n"));
        assert_eq!(
            s.scrub("token K10abc::node:s3cretpw bad; pw s3cretpw; agenttoken123 at https://10.0.0.1:6443"),
            "token <redacted> bad; pw <redacted>; <redacted> at https://10.0.0.1:6443"
        );
    }
}
