//! The escape hatches: `extraConfig` (config.yaml keys k3node does not know yet, like k0sctl's
//! installFlags) and `env` (variables of the k3s unit's env file, such as an HTTP proxy).
//!
//! Invariants:
//! - What k3node sets itself stays refused here too (the managed keys and variables), and a key
//!   is set in one place only: `spec.k3s.config` or `spec.k3s.extraConfig`, never both.
//! - `spec.k3s.extraConfig` holds only keys k3node does not know (known ones belong in
//!   `spec.k3s.config`, where they are checked with the cross-field rules); each is passed to k3s
//!   unchecked, with a warning. `hosts[].k3s.extraConfig` may also hold known keys for that host
//!   (checked by type), except the ones k3s requires to be equal on every server.
//! - Env values are secrets from the moment they are read (a proxy URL may carry a password):
//!   no message shows them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use marked_yaml::types::MarkedMappingNode;
use marked_yaml::Node;
use serde_json::Value;

use super::diagnostic::{Pos, Sink};
use super::k3s_config::{self, ConfigRead, KEYS_SOURCE_SHORT};
use super::reader::{child, index, is_null, is_plain, kind_name, Entry};
use super::{ClusterFile, Host, Role};
use crate::protocol::Secret;

/// Keys k3s requires to be equal on every server ("Critical Configuration Values" of
/// docs.k3s.io/cli/server): a per-host value would break joining or the cluster.
pub const CLUSTER_WIDE_KEYS: &[&str] = &[
    "cluster-cidr",
    "cluster-dns",
    "cluster-domain",
    "disable",
    "disable-cloud-controller",
    "disable-helm-controller",
    "disable-network-policy",
    "egress-selector-mode",
    "embedded-registry",
    "flannel-backend",
    "flannel-external-ip",
    "flannel-ipv6-masq",
    "secrets-encryption",
    "secrets-encryption-provider",
    "service-cidr",
];

/// Where the extraConfig being read sits.
pub(crate) enum ExtraScope {
    /// `spec.k3s.extraConfig`: every host.
    Cluster,
    /// `hosts[].k3s.extraConfig` of a host with this role (None: the role was invalid).
    Host(Option<Role>),
}

/// Reads an extraConfig mapping. `config` is what `spec.k3s.config` holds (keys set there may
/// not be repeated).
pub(crate) fn extra_config(
    sink: &mut Sink,
    map: &MarkedMappingNode,
    path: &str,
    config: &ConfigRead,
    scope: ExtraScope,
) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (key, value) in map.iter() {
        let name = key.as_str();
        let e = Entry { key, value, path: child(path, name) };
        if k3s_config::refused(sink, &e) {
            continue;
        }
        if config.values.contains_key(name) || config.invalid.contains(name) {
            sink.error(e.key_pos(), &e.path, format!("`{name}` is also set in spec.k3s.config"))
                .hint("set each key in one place: spec.k3s.config for every host, or hosts[].k3s.extraConfig for one");
            continue;
        }
        if matches!(scope, ExtraScope::Host(_)) && CLUSTER_WIDE_KEYS.contains(&name) {
            let instead = match k3s_config::key_spec(name) {
                Some(_) => "set it in spec.k3s.config",
                None => "set it in spec.k3s.extraConfig",
            };
            sink.error(
                e.key_pos(),
                &e.path,
                format!("`{name}` must be the same on every server, so it cannot be set per host"),
            )
            .hint(instead);
            continue;
        }
        if let Some(spec) = k3s_config::key_spec(name) {
            match scope {
                ExtraScope::Cluster => {
                    sink.error(e.key_pos(), &e.path, format!("k3node knows `{name}`: set it in spec.k3s.config")).hint(
                        "spec.k3s.extraConfig is for keys k3node does not know yet; spec.k3s.config checks the value",
                    );
                    continue;
                }
                ExtraScope::Host(Some(role)) if !spec.scope.applies_to(role) => {
                    let (only, this) = match role {
                        Role::Server => ("agents", "a server"),
                        Role::Agent => ("servers", "an agent"),
                    };
                    sink.error(
                        e.key_pos(),
                        &e.path,
                        format!("`{name}` only applies to {only}, and this host is {this}"),
                    );
                    continue;
                }
                ExtraScope::Host(_) => {
                    if let Some(v) = k3s_config::read_known(sink, &e, spec) {
                        out.insert(name.to_string(), v);
                    }
                    continue;
                }
            }
        }
        if !flag_name(name) {
            let hint = if name.starts_with('-') {
                "write k3s flags without the leading --"
            } else {
                "k3s config keys are flag names: lowercase letters, digits and '-'"
            };
            sink.error(e.key_pos(), &e.path, format!("{name:?} is not a k3s flag name")).hint(hint);
            continue;
        }
        if let Some(v) = raw_value(sink, &e) {
            sink.warning(
                e.key_pos(),
                &e.path,
                format!("`{name}` is not a key k3node knows ({KEYS_SOURCE_SHORT}); it is passed to k3s unchecked"),
            )
            .hint("k3s skips keys it does not know with a mere warning in its log: check the name against `k3s server --help` (or `k3s agent --help`) of the version you install");
            out.insert(name.to_string(), v);
        }
    }
    out
}

/// A k3s flag name as config.yaml takes it: `kube-apiserver-arg`, `v`.
fn flag_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= 100
}

/// A value passed through unchecked, typed as YAML writes it: plain `true`/`false` and integers
/// stay booleans and numbers (k3s reads config.yaml with its own YAML parser), everything else is
/// a string; a list of such values is a list. Mappings and nested lists are no k3s flag value.
fn raw_value(sink: &mut Sink, e: &Entry<'_>) -> Option<Value> {
    if e.is_null() {
        sink.error(e.key_pos(), &e.path, format!("`{}` has no value", e.key.as_str()))
            .hint("remove the key, or give it a value");
        return None;
    }
    match e.value {
        Node::Scalar(_) => scalar_value(sink, e.value, &e.path),
        Node::Sequence(seq) => {
            let mut items = Vec::new();
            for (i, item) in seq.iter().enumerate() {
                items.push(scalar_value(sink, item, &index(&e.path, i))?);
            }
            Some(Value::Array(items))
        }
        Node::Mapping(_) => {
            sink.error(e.value_pos(), &e.path, "a k3s config value is a single value or a list, found a mapping");
            None
        }
    }
}

fn scalar_value(sink: &mut Sink, node: &Node, path: &str) -> Option<Value> {
    let Node::Scalar(s) = node else {
        sink.error(Pos::of_node(node), path, format!("must be a single value, found {}", kind_name(node)));
        return None;
    };
    if is_null(node) {
        sink.error(Pos::of_node(node), path, "must not be empty");
        return None;
    }
    let text = s.as_str();
    if is_plain(s) {
        match text {
            "true" => return Some(Value::Bool(true)),
            "false" => return Some(Value::Bool(false)),
            _ => {}
        }
        if let Ok(n) = text.parse::<i64>() {
            if n.to_string() == text {
                return Some(Value::from(n));
            }
        }
    }
    Some(Value::String(text.to_string()))
}

/// Variables k3node writes itself, with where the intent belongs instead.
pub const MANAGED_ENV: &[(&str, &str)] = &[
    ("K3S_AGENT_TOKEN", "k3node generates the cluster tokens and hands them to joining nodes"),
    ("K3S_AGENT_TOKEN_FILE", "k3node generates the cluster tokens and hands them to joining nodes"),
    ("K3S_CLUSTER_INIT", "k3node decides which server initialises the cluster"),
    ("K3S_CLUSTER_RESET", "use `k3node restore` to reset a cluster from a snapshot"),
    ("K3S_CLUSTER_SECRET", "k3node generates the cluster tokens and hands them to joining nodes"),
    ("K3S_CONFIG_FILE", "k3node writes /etc/rancher/k3s/config.yaml from spec.k3s.config"),
    ("K3S_NODE_NAME", "the node name is spec.hosts[].name"),
    ("K3S_TOKEN", "k3node generates the cluster token and hands it to joining nodes"),
    ("K3S_TOKEN_FILE", "k3node generates the cluster token and hands it to joining nodes"),
    ("K3S_URL", "k3node joins every node to the first server in spec.hosts"),
];

/// Variables that set a k3s flag (the `EnvVar` of its definition): the flag belongs in
/// spec.k3s.config, where it is checked; set in both places, config.yaml would silently win.
pub const FLAG_ENV: &[(&str, &str)] = &[
    ("K3S_DATASTORE_CAFILE", "datastore-cafile"),
    ("K3S_DATASTORE_CERTFILE", "datastore-certfile"),
    ("K3S_DATASTORE_ENDPOINT", "datastore-endpoint"),
    ("K3S_DATASTORE_KEYFILE", "datastore-keyfile"),
    ("K3S_DATA_DIR", "data-dir"),
    ("K3S_DEBUG", "debug"),
    ("K3S_KUBECONFIG_GROUP", "write-kubeconfig-group"),
    ("K3S_KUBECONFIG_MODE", "write-kubeconfig-mode"),
    ("K3S_KUBECONFIG_OUTPUT", "write-kubeconfig"),
    ("K3S_LB_SERVER_PORT", "lb-server-port"),
    ("K3S_RESOLV_CONF", "resolv-conf"),
    ("K3S_SELINUX", "selinux"),
    ("K3S_SYSTEM_DEFAULT_REGISTRY", "system-default-registry"),
    ("K3S_VPN_AUTH", "vpn-auth"),
    ("K3S_VPN_AUTH_FILE", "vpn-auth-file"),
];

/// An env mapping (`NAME: value`), values kept as secrets.
pub(crate) fn env(sink: &mut Sink, map: &MarkedMappingNode, path: &str) -> BTreeMap<String, Secret> {
    let mut out = BTreeMap::new();
    for (key, value) in map.iter() {
        let name = key.as_str();
        let e = Entry { key, value, path: child(path, name) };
        if !env_name(name) {
            sink.error(e.key_pos(), &e.path, format!("{name:?} is not a valid environment variable name"))
                .hint("letters, digits and '_', not starting with a digit, e.g. HTTPS_PROXY");
            continue;
        }
        if let Some((_, hint)) = MANAGED_ENV.iter().find(|(n, _)| *n == name) {
            sink.error(e.key_pos(), &e.path, format!("`{name}` is managed by k3node and cannot be set here"))
                .hint(*hint);
            continue;
        }
        if let Some((_, flag)) = FLAG_ENV.iter().find(|(n, _)| *n == name) {
            sink.error(e.key_pos(), &e.path, format!("`{name}` sets the k3s flag `{flag}`"))
                .hint(format!("write `{flag}` in spec.k3s.config, where it is checked (config.yaml would win over the variable anyway)"));
            continue;
        }
        if name.starts_with("INSTALL_K3S_") {
            sink.error(
                e.key_pos(),
                &e.path,
                format!("`{name}` is read by get.k3s.io's install script, which k3node does not use"),
            )
            .hint("the version and download source are spec.k3s.version, spec.k3s.channel and spec.k3s.source");
            continue;
        }
        let text = match value {
            _ if e.is_null() => {
                sink.error(e.key_pos(), &e.path, format!("`{name}` has no value"))
                    .hint("write NAME: \"\" for an empty value, or remove the line");
                continue;
            }
            Node::Scalar(s) => s.as_str(),
            other => {
                sink.error(
                    e.value_pos(),
                    &e.path,
                    format!("an environment variable is a single value, found {}", kind_name(other)),
                );
                continue;
            }
        };
        // The message never shows the value: it may be a password.
        if text.contains(['\n', '\r', '\0']) {
            sink.error(
                e.value_pos(),
                &e.path,
                format!("the value of `{name}` contains a line break or NUL, which an env file cannot hold"),
            );
            continue;
        }
        out.insert(name.to_string(), Secret::new(text));
    }
    out
}

fn env_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 255
}

/// The proxy variables and the NO_PROXY that goes with them: the general ones (k3s, kubelet and
/// containerd read them) and containerd's own.
const PROXY_FAMILIES: &[(&[&str], &[&str])] = &[
    (&["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"], &["NO_PROXY", "no_proxy"]),
    (&["CONTAINERD_HTTP_PROXY", "CONTAINERD_HTTPS_PROXY"], &["CONTAINERD_NO_PROXY"]),
];

/// What docs.k3s.io ("Advanced Options and Configuration", section "Configuring an HTTP proxy")
/// shows as NO_PROXY: loopback and the private networks nodes usually sit in. k3s itself adds the
/// cluster's pod and service networks and its DNS domain for its own requests.
pub const K3S_DOCS_NO_PROXY: &[&str] = &["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];

impl ClusterFile {
    /// The env file variables of `host` that come from the cluster file: `spec.k3s.env`
    /// overridden by `hosts[].env`, and, where a proxy is set, NO_PROXY completed: when it is not
    /// given, the k3s docs' list ([`K3S_DOCS_NO_PROXY`]) plus the pod and service networks, the
    /// cluster domain and the hosts' addresses; when it is given, the pod and service networks
    /// appended if no entry covers them.
    pub fn env_for(&self, host: &Host) -> BTreeMap<String, Secret> {
        let mut env = self.k3s.env.clone();
        env.extend(host.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        for (proxies, no_proxy) in PROXY_FAMILIES {
            if !proxies.iter().any(|p| env.contains_key(*p)) {
                continue;
            }
            match no_proxy.iter().find(|n| env.contains_key(**n)) {
                Some(name) => {
                    let given = env[*name].expose().to_string();
                    env.insert(name.to_string(), Secret::new(with_cluster_networks(self, &given)));
                }
                None => {
                    env.insert(no_proxy[0].to_string(), Secret::new(default_no_proxy(self)));
                }
            }
        }
        env
    }

    /// `host`'s extraConfig keys over `spec.k3s.extraConfig`'s.
    pub fn extra_config_for(&self, host: &Host) -> BTreeMap<String, Value> {
        let mut extra = self.k3s.extra_config.clone();
        extra.extend(host.extra_config.iter().map(|(k, v)| (k.clone(), v.clone())));
        extra
    }
}

fn cluster_networks(file: &ClusterFile) -> Vec<String> {
    let mut nets: Vec<String> = Vec::new();
    for cidrs in [file.k3s.cluster_cidr(), file.k3s.service_cidr()] {
        nets.extend(cidrs.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()));
    }
    nets
}

fn cluster_domain(file: &ClusterFile) -> String {
    file.k3s.config.get("cluster-domain").and_then(|v| v.as_str()).unwrap_or("cluster.local").to_string()
}

/// Whether a NO_PROXY entry list already covers `target` (an IP, a CIDR or a name).
pub(crate) fn no_proxy_covers(entries: &[String], target: &str) -> bool {
    let target_net =
        target.parse::<IpNet>().ok().map(|n| n.trunc()).or_else(|| target.parse::<IpAddr>().ok().map(IpNet::from));
    entries.iter().any(|entry| {
        if entry == target || entry == "*" {
            return true;
        }
        match (entry.parse::<IpNet>().ok().or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from)), target_net) {
            (Some(e), Some(t)) => e.trunc().contains(&t),
            (None, None) => {
                let suffix = entry.trim_start_matches('.');
                !suffix.is_empty() && (target == suffix || target.ends_with(&format!(".{suffix}")))
            }
            _ => false,
        }
    })
}

fn split_entries(list: &str) -> Vec<String> {
    list.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect()
}

fn with_cluster_networks(file: &ClusterFile, given: &str) -> String {
    let mut entries = split_entries(given);
    for net in cluster_networks(file) {
        if !no_proxy_covers(&entries, &net) {
            entries.push(net);
        }
    }
    entries.join(",")
}

fn default_no_proxy(file: &ClusterFile) -> String {
    let mut entries: Vec<String> = K3S_DOCS_NO_PROXY.iter().map(|s| s.to_string()).collect();
    entries.push("localhost".to_string());
    for net in cluster_networks(file) {
        if !no_proxy_covers(&entries, &net) {
            entries.push(net);
        }
    }
    entries.push(".svc".to_string());
    entries.push(format!(".{}", cluster_domain(file)));
    let addresses = file.hosts.iter().map(|h| h.address.clone()).chain(file.k3s.api_endpoint.clone());
    for address in addresses {
        let address = address.trim_end_matches('.').to_ascii_lowercase();
        if !address.is_empty() && !no_proxy_covers(&entries, &address) {
            entries.push(address);
        }
    }
    entries.join(",")
}

/// Hosts a NO_PROXY the user wrote leaves to the proxy: nodes would talk to each other through
/// it. `(host index, address)`.
pub(crate) fn hosts_outside_no_proxy(file: &ClusterFile, given: &str) -> Vec<(usize, String)> {
    let entries = split_entries(given);
    file.hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            !h.address.is_empty() && !no_proxy_covers(&entries, &h.address.trim_end_matches('.').to_ascii_lowercase())
        })
        .map(|(i, h)| (i, h.address.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_coverage_understands_cidrs_addresses_and_domains() {
        let entries = split_entries("10.0.0.0/8, .example.com,192.168.1.5,lab.internal");
        assert!(no_proxy_covers(&entries, "10.42.0.0/16"));
        assert!(no_proxy_covers(&entries, "10.1.2.3"));
        assert!(!no_proxy_covers(&entries, "11.0.0.0/16"));
        assert!(no_proxy_covers(&entries, "node1.example.com"));
        assert!(no_proxy_covers(&entries, "example.com"));
        assert!(!no_proxy_covers(&entries, "badexample.com"));
        assert!(no_proxy_covers(&entries, "192.168.1.5"));
        assert!(no_proxy_covers(&entries, "x.lab.internal"));
        assert!(!no_proxy_covers(&entries, "fd00::1"));
        assert!(no_proxy_covers(&split_entries("*"), "anything"));
    }

    #[test]
    fn flag_names_and_env_names() {
        assert!(flag_name("secrets-encryption-provider") && flag_name("v"));
        assert!(!flag_name("--debug") && !flag_name("Debug") && !flag_name("a b") && !flag_name(""));
        assert!(env_name("HTTPS_PROXY") && env_name("_x1") && env_name("http_proxy"));
        assert!(!env_name("1X") && !env_name("A-B") && !env_name("") && !env_name("A B"));
    }
}
