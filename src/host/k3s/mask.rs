//! Secrets out of every diff shown: the env file's, config.yaml's and registries.yaml's secret
//! values are masked line by line, and a secret that changed says so instead of looking unchanged.

use crate::protocol::secret::{registries_secrets, secret_config_key, secret_env_name, REDACTED, REGISTRY_SECRET_KEYS};

/// What a masked secret that differs from the old file's shows.
pub(super) const CHANGED: &str = "<changed (masked)>";

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
        if !secret_config_key(key.trim().trim_matches(['"', '\''])) {
            return None;
        }
        let value = value.trim();
        if value.is_empty() || value.starts_with(['|', '>']) {
            in_secret_block = true;
        }
        Some(format!("{key}: {REDACTED}"))
    })
}

/// registries.yaml's text with its credentials (`password`, `auth`, `identity_token` at any
/// depth) replaced; a block scalar's lines are masked too. An `auth:` that opens a mapping is a
/// section, not a credential, and stays.
pub(super) fn mask_registries(text: &str) -> String {
    let mut block_indent: Option<usize> = None;
    map_lines(text, |line| {
        let indent = line.len() - line.trim_start().len();
        if let Some(level) = block_indent {
            if line.trim().is_empty() || indent > level {
                return (!line.trim().is_empty()).then(|| format!("{}{REDACTED}", &line[..indent]));
            }
            block_indent = None;
        }
        let (key, value) = line.trim_start().trim_start_matches("- ").split_once(':')?;
        if !REGISTRY_SECRET_KEYS.contains(&key.trim().trim_matches(['"', '\''])) {
            return None;
        }
        let value = value.trim();
        if value.is_empty() {
            return None;
        }
        if value.starts_with(['|', '>']) {
            block_indent = Some(indent);
        }
        Some(format!("{}{key}: {REDACTED}", &line[..indent]))
    })
}

/// The credentials of a registries.yaml, one entry per key name with every value of that name
/// (a changed password marks each `password:` line of the new file as changed).
pub(super) fn registries_secret_groups(text: &str) -> Vec<(String, String)> {
    let mut groups: Vec<(String, String)> = Vec::new();
    for (path, value) in registries_secrets(text) {
        let key = path.rsplit('/').next().unwrap_or("").to_string();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, all)) => {
                all.push('\n');
                all.push_str(&path);
                all.push('=');
                all.push_str(&value);
            }
            None => groups.push((key, format!("{path}={value}"))),
        }
    }
    groups
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

/// The masked old and new texts of a secret-bearing file, with every secret value that differs
/// between them shown as [`CHANGED`] on the new side.
pub(super) fn masked_pair(
    old: &str,
    new: &str,
    mask: fn(&str) -> String,
    secrets: fn(&str) -> Vec<(String, String)>,
) -> (String, String) {
    let (old_values, new_values) = (secrets(old), secrets(new));
    let changed: Vec<&String> = new_values
        .iter()
        .filter(|(k, v)| old_values.iter().any(|(ok, ov)| ok == k && ov != v))
        .map(|(k, _)| k)
        .collect();
    let old_masked = mask(old);
    let new_masked = map_lines(&mask(new), |line| {
        let key = line.split(['=', ':']).next().unwrap_or("").trim().trim_matches(['"', '\'']).trim_end_matches('+');
        changed.iter().any(|k| k.as_str() == key).then(|| line.replace(REDACTED, CHANGED))
    });
    (old_masked, new_masked)
}

/// The secret variables of an env file and their values.
pub(super) fn env_secrets(text: &str) -> Vec<(String, String)> {
    super::envfile::entries(text).into_iter().filter(|(name, _)| secret_env_name(name)).collect()
}

/// The secret keys of a config.yaml and their values (as YAML text, to compare).
pub(super) fn config_secrets(text: &str) -> Vec<(String, String)> {
    let Ok(serde_yaml_ng::Value::Mapping(map)) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else {
        return Vec::new();
    };
    map.iter()
        .filter_map(|(k, v)| {
            let key = k.as_str()?.trim_end_matches('+');
            secret_config_key(key).then(|| (key.to_string(), serde_yaml_ng::to_string(v).unwrap_or_default()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_masks_tokens_and_passwords_but_not_the_url() {
        let text = "K3S_URL=https://10.0.0.1:6443\nK3S_TOKEN=K10abc::server:pw\nK3S_AGENT_TOKEN=\"x y\"\nHTTP_PROXY_PASSWORD=hunter2\nHTTPS_PROXY='http://u:pw@proxy:3128'\nNO_PROXY=localhost\n";
        assert_eq!(
            mask_env(text),
            "K3S_URL=https://10.0.0.1:6443\nK3S_TOKEN=<redacted>\nK3S_AGENT_TOKEN=<redacted>\nHTTP_PROXY_PASSWORD=<redacted>\nHTTPS_PROXY=<redacted>\nNO_PROXY=localhost\n"
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
    fn registries_mask_every_credential_and_keep_the_rest() {
        let text = "mirrors:\n  docker.io:\n    endpoint:\n    - https://mirror.example:5000\nconfigs:\n  mirror.example:5000:\n    auth:\n      username: ci\n      password: hunter2-secret\n    tls:\n      ca_file: /etc/ssl/mirror.pem\n  other.example:\n    auth:\n      identity_token: |\n        line-one\n        line-two\n      auth: dXNlcjpwdw==\n";
        let masked = mask_registries(text);
        assert_eq!(
            masked,
            "mirrors:\n  docker.io:\n    endpoint:\n    - https://mirror.example:5000\nconfigs:\n  mirror.example:5000:\n    auth:\n      username: ci\n      password: <redacted>\n    tls:\n      ca_file: /etc/ssl/mirror.pem\n  other.example:\n    auth:\n      identity_token: <redacted>\n        <redacted>\n        <redacted>\n      auth: <redacted>\n"
        );
        let changed = text.replace("hunter2-secret", "hunter3-secret");
        let (old, new) = masked_pair(text, &changed, mask_registries, registries_secret_groups);
        assert!(old.contains("password: <redacted>") && new.contains("password: <changed (masked)>"), "{new}");
        assert!(new.contains("auth: <redacted>") && !new.contains("hunter"), "{new}");
    }

    #[test]
    fn diff_has_a_and_b_headers() {
        let d = unified_diff("/etc/rancher/k3s/config.yaml", "a: 1\n", "a: 2\n");
        assert!(d.starts_with("--- a/etc/rancher/k3s/config.yaml\n+++ b/etc/rancher/k3s/config.yaml\n@@"), "{d}");
        assert!(d.contains("-a: 1\n+a: 2\n"), "{d}");
    }

    #[test]
    fn a_changed_secret_is_marked_on_the_new_side_only() {
        let (old, new) = masked_pair(
            "K3S_URL='https://a:6443'\nK3S_TOKEN='one'\n",
            "K3S_URL='https://b:6443'\nK3S_TOKEN='two'\n",
            mask_env,
            env_secrets,
        );
        assert_eq!(old, "K3S_URL='https://a:6443'\nK3S_TOKEN=<redacted>\n");
        assert_eq!(new, "K3S_URL='https://b:6443'\nK3S_TOKEN=<changed (masked)>\n");
        let (_, same) =
            masked_pair("token: x\nnode-name: a\n", "token: x\nnode-name: b\n", mask_config, config_secrets);
        assert_eq!(same, "token: <redacted>\nnode-name: b\n");
        let (_, changed) = masked_pair("token: x\n", "token: y\n", mask_config, config_secrets);
        assert_eq!(changed, "token: <changed (masked)>\n");
    }
}
