//! Syntax of the values the cluster file carries: names, addresses, labels, taints, versions, URLs.
//! Pure functions, so that the tricky rules are unit-tested on their own.

use std::net::IpAddr;

use super::reader::did_you_mean;

/// Why a value is refused, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    fn new(message: impl Into<String>) -> Self {
        Problem { message: message.into(), hint: None }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

type Check = Result<(), Problem>;

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// RFC 1123 label as Kubernetes uses it for names: lowercase, at most 63 characters.
pub(crate) fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| is_lower_alnum(c) || c == '-')
        && s.starts_with(is_lower_alnum)
        && s.ends_with(is_lower_alnum)
}

/// RFC 1123 subdomain as Kubernetes uses it (node names, label prefixes).
pub(crate) fn dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(dns_label)
}

pub(crate) fn cluster_name(s: &str) -> Check {
    if dns_label(s) {
        return Ok(());
    }
    let p = Problem::new(format!("{s:?} is not a valid cluster name"))
        .hint("use a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters (it becomes the kubeconfig context name)");
    Err(p)
}

pub(crate) fn node_name(s: &str) -> Check {
    if dns_subdomain(s) {
        return Ok(());
    }
    let hint = if dns_subdomain(&s.to_ascii_lowercase()) {
        "Kubernetes node names must be lowercase".to_string()
    } else {
        "use an RFC 1123 subdomain: lowercase letters, digits, '-' and '.', each part starting and ending with a letter or digit".to_string()
    };
    Err(Problem::new(format!("{s:?} is not a valid node name")).hint(hint))
}

/// An SSH target: an IP address, or a DNS name. Something that looks like an IP address but is
/// not one (`10.0.0.300`) is an error rather than a DNS name to look up.
pub(crate) fn address(s: &str) -> Check {
    let bad = || Problem::new(format!("{s:?} is not a valid IP address or DNS name"));
    if s.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if s.contains('@') {
        return Err(bad().hint("write only the address here; the SSH user goes in ssh.user"));
    }
    if s.starts_with('[') {
        return Err(bad().hint("write IPv6 addresses without brackets; the port goes in ssh.port"));
    }
    if s.contains("://") {
        return Err(bad().hint("write only the host name or IP address, without a scheme"));
    }
    if let Some((host, port)) = s.rsplit_once(':') {
        if !host.contains(':') && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad().hint("write only the address here; the port goes in ssh.port"));
        }
    }
    let looks_numeric = s.contains(':') || s.chars().all(|c| c.is_ascii_digit() || c == '.');
    if looks_numeric {
        return Err(bad());
    }
    if dns_name(s) {
        Ok(())
    } else {
        Err(bad())
    }
}

/// An RFC 1123 host name, case-insensitive, one trailing dot allowed.
fn dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    // An all-numeric last label would be read as an IPv4 address by resolvers (RFC 3696).
    let last_numeric = s.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    !s.is_empty() && s.len() <= 253 && s.split('.').all(label_ok) && !last_numeric
}

/// The name part of a Kubernetes qualified name, and a label value when non-empty.
fn k8s_name_part(s: &str) -> bool {
    let edge = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(edge)
        && s.ends_with(edge)
}

/// Kubernetes label key (`[prefix/]name`).
pub(crate) fn label_key(key: &str) -> Check {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if !dns_subdomain(p) {
            return Err(Problem::new(format!("label key {key:?} has an invalid prefix {p:?}"))
                .hint("the prefix before '/' must be a lowercase DNS subdomain such as example.com"));
        }
    }
    if !k8s_name_part(name) {
        return Err(Problem::new(format!("{key:?} is not a valid label key")).hint(
            "a label key is [prefix/]name, name at most 63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
        ));
    }
    Ok(())
}

/// Labels the kubelet sets on its own node (through k3s's `node-label`) must stay outside the
/// kubernetes.io and k8s.io namespaces, except for a short allow-list: otherwise the kubelet
/// refuses to start.
pub(crate) fn node_label_allowed(key: &str) -> Check {
    const ALLOWED: &[&str] = &[
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ];
    let Some((prefix, _)) = key.split_once('/') else {
        return Ok(());
    };
    let restricted = |ns: &str| prefix == ns || prefix.ends_with(&format!(".{ns}"));
    let namespace_ok = ["kubelet.kubernetes.io", "node.kubernetes.io"]
        .iter()
        .any(|ns| prefix == *ns || prefix.ends_with(&format!(".{ns}")));
    if (restricted("kubernetes.io") || restricted("k8s.io")) && !namespace_ok && !ALLOWED.contains(&key) {
        return Err(Problem::new(format!(
            "the kubelet refuses to set label {key:?} on its own node (kubernetes.io and k8s.io prefixes are reserved)"
        ))
        .hint("use your own prefix (e.g. example.com/role), a node.kubernetes.io/ label, or set it after install with kubectl label node"));
    }
    Ok(())
}

pub(crate) fn label_value(value: &str) -> Check {
    if value.is_empty() || k8s_name_part(value) {
        return Ok(());
    }
    Err(Problem::new(format!("{value:?} is not a valid label value")).hint(
        "a label value is empty or at most 63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
    ))
}

const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// `key[=value]:Effect`, as kubectl taint and the kubelet's --register-with-taints take it.
pub(crate) fn taint(s: &str) -> Check {
    let shape = || {
        Problem::new(format!("{s:?} is not a valid taint"))
            .hint("write key[=value]:Effect, e.g. dedicated=db:NoSchedule (Effect: NoSchedule, PreferNoSchedule or NoExecute)")
    };
    let Some((kv, effect)) = s.rsplit_once(':') else {
        return Err(shape());
    };
    if !TAINT_EFFECTS.contains(&effect) {
        let mut p = Problem::new(format!(
            "taint {s:?} has effect {effect:?}; the effect must be NoSchedule, PreferNoSchedule or NoExecute"
        ));
        if let Some(close) = did_you_mean(effect, TAINT_EFFECTS) {
            p = p.hint(format!("did you mean `{close}`?"));
        }
        return Err(p);
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, v),
        None => (kv, ""),
    };
    if key.is_empty() {
        return Err(shape());
    }
    label_key(key).map_err(|p| Problem::new(format!("taint {s:?}: {}", p.message)).hint(p.hint.unwrap_or_default()))?;
    label_value(value).map_err(|p| Problem::new(format!("taint {s:?}: {}", p.message)))?;
    Ok(())
}

/// `v1.31.4+k3s1`, also release candidates `v1.31.4-rc1+k3s1`.
pub(crate) fn k3s_version(s: &str) -> Check {
    let bad = || Problem::new(format!("{s:?} is not a k3s version"));
    let example = "k3s versions look like v1.31.4+k3s1 (see https://github.com/k3s-io/k3s/releases)";
    if is_channel(s) {
        return Err(bad().hint(format!("{s} is a channel: set k3s.channel: {s} instead of k3s.version")));
    }
    let Some(rest) = s.strip_prefix('v') else {
        return Err(bad().hint(format!("start with 'v': {example}")));
    };
    let Some((kube, k3s)) = rest.split_once('+') else {
        return Err(bad().hint(format!("the +k3sN suffix is missing: {example}")));
    };
    let number = |t: &str| !t.is_empty() && t.len() <= 9 && t.bytes().all(|b| b.is_ascii_digit());
    let k3s_ok = k3s.strip_prefix("k3s").is_some_and(number);
    let (core, pre) = match kube.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (kube, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    let core_ok = parts.len() == 3 && parts.iter().all(|p| number(p));
    let pre_ok = pre.is_none_or(|p| p.strip_prefix("rc").is_some_and(number));
    if k3s_ok && core_ok && pre_ok {
        Ok(())
    } else {
        Err(bad().hint(example))
    }
}

const CHANNELS: &[&str] = &["stable", "latest", "testing"];

fn is_channel(s: &str) -> bool {
    let minor_line = s.strip_prefix('v').is_some_and(|r| {
        let parts: Vec<&str> = r.split('.').collect();
        parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    });
    CHANNELS.contains(&s) || minor_line
}

/// A k3s release channel: stable, latest, testing, or a minor version line like v1.31.
pub(crate) fn k3s_channel(s: &str) -> Check {
    if is_channel(s) {
        return Ok(());
    }
    let mut p = Problem::new(format!("{s:?} is not a k3s channel"));
    p = match did_you_mean(s, CHANNELS) {
        Some(close) => p.hint(format!("did you mean `{close}`?")),
        None if k3s_version(s).is_ok() => p.hint("that is a version: set k3s.version instead of k3s.channel"),
        None => p.hint("channels are stable, latest, testing or a minor version line such as v1.31"),
    };
    Err(p)
}

/// An http(s) base URL, returned without trailing slashes (the installer appends paths).
pub(crate) fn base_url(s: &str) -> Result<String, Problem> {
    let rest = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://"));
    let Some(rest) = rest else {
        return Err(Problem::new(format!("{s:?} is not an http(s) URL"))
            .hint("write a URL starting with https:// (or http:// for a mirror on a trusted network)"));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Problem::new(format!("{s:?} is not a valid URL")));
    }
    if rest.contains(['?', '#']) {
        return Err(Problem::new(format!("{s:?}: a base URL cannot carry a query or fragment"))
            .hint("k3node appends /<version>/<file> to this URL"));
    }
    Ok(s.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(cluster_name("lab").is_ok());
        assert!(cluster_name("Lab").is_err());
        assert!(cluster_name("lab.example").is_err());
        assert!(cluster_name(&"a".repeat(64)).is_err());
        assert!(node_name("server-1.lab").is_ok());
        assert_eq!(node_name("Server-1").unwrap_err().hint.as_deref(), Some("Kubernetes node names must be lowercase"));
        assert!(node_name("-a").is_err());
        assert!(node_name("a_b").is_err());
    }

    #[test]
    fn addresses() {
        for ok in ["192.168.56.10", "::1", "fd00::10", "server-1", "k3s.example.com", "k3s.example.com.", "A.Example"] {
            assert!(address(ok).is_ok(), "{ok}");
        }
        for bad in ["10.0.0.300", "10.0.0", "1.2.3.4.5", "fe80::zz", "a_b", "-a", "host.123", "", "a..b"] {
            assert!(address(bad).is_err(), "{bad}");
        }
        assert!(address("root@10.0.0.1").unwrap_err().hint.unwrap().contains("ssh.user"));
        assert!(address("10.0.0.1:2222").unwrap_err().hint.unwrap().contains("ssh.port"));
        assert!(address("[::1]").unwrap_err().hint.unwrap().contains("brackets"));
    }

    #[test]
    fn labels() {
        assert!(label_key("tier").is_ok());
        assert!(label_key("example.com/tier").is_ok());
        assert!(label_key("Example.com/tier").is_err());
        assert!(label_key("tier!").is_err());
        assert!(label_key(&"a".repeat(64)).is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("db-1.x_y").is_ok());
        assert!(label_value("-db").is_err());
        assert!(label_value("a b").is_err());
        assert!(node_label_allowed("node-role.kubernetes.io/worker").is_err());
        assert!(node_label_allowed("k8s.io/x").is_err());
        assert!(node_label_allowed("node.kubernetes.io/pool").is_ok());
        assert!(node_label_allowed("topology.kubernetes.io/zone").is_ok());
        assert!(node_label_allowed("example.com/role").is_ok());
    }

    #[test]
    fn taints() {
        assert!(taint("dedicated=db:NoSchedule").is_ok());
        assert!(taint("example.com/gpu:NoExecute").is_ok());
        assert!(taint("a=:PreferNoSchedule").is_ok());
        assert!(taint("dedicated=db").is_err());
        assert!(taint(":NoSchedule").is_err());
        assert_eq!(taint("a=b:noschedule").unwrap_err().hint.as_deref(), Some("did you mean `NoSchedule`?"));
        assert!(taint("a=b c:NoSchedule").is_err());
    }

    #[test]
    fn versions_and_channels() {
        assert!(k3s_version("v1.31.4+k3s1").is_ok());
        assert!(k3s_version("v1.31.4-rc1+k3s1").is_ok());
        assert!(k3s_version("v1.31.4-beta1+k3s1").is_err());
        assert!(k3s_version("1.31.4+k3s1").unwrap_err().hint.unwrap().contains("start with 'v'"));
        assert!(k3s_version("v1.31.4").unwrap_err().hint.unwrap().contains("+k3sN"));
        assert!(k3s_version("v1.31+k3s1").is_err());
        assert!(k3s_version("latest").unwrap_err().hint.unwrap().contains("k3s.channel"));
        assert!(k3s_version("v1.31").unwrap_err().hint.unwrap().contains("k3s.channel"));
        assert!(k3s_version("v1.31.4+k3s").is_err());
        assert!(k3s_channel("stable").is_ok());
        assert!(k3s_channel("v1.31").is_ok());
        assert_eq!(k3s_channel("stabel").unwrap_err().hint.as_deref(), Some("did you mean `stable`?"));
        assert!(k3s_channel("v1.31.4+k3s1").unwrap_err().hint.unwrap().contains("k3s.version"));
    }

    #[test]
    fn urls() {
        assert_eq!(base_url("https://mirror.example/k3s/").unwrap(), "https://mirror.example/k3s");
        assert!(base_url("http://10.0.0.5:8080").is_ok());
        assert!(base_url("ftp://mirror").is_err());
        assert!(base_url("mirror.example").is_err());
        assert!(base_url("https://").is_err());
        assert!(base_url("https://a b").is_err());
    }
}
