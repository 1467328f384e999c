//! What each host's /etc/rancher/k3s/config.yaml and service env file say, derived from the
//! cluster file. Deterministic, so that an unchanged cluster file renders byte-identical files
//! and re-runs restart nothing: keys and variables come out sorted, k3node's own env variables
//! first. The cluster file's escape hatches (`extraConfig`, `env`) are merged in here; they can
//! never override what k3node manages (the loader refuses those keys and names).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::cluster::k3s_config::key_spec;
use crate::cluster::{ClusterFile, Host};
use crate::protocol::preflight::Role;
use crate::protocol::Secret;

/// The role a host plays in the join sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The first server: it initialises the cluster (embedded etcd when there are several servers).
    FirstServer,
    JoiningServer,
    Agent,
}

pub fn position(cluster: &ClusterFile, host: &Host) -> Position {
    match host.role {
        Role::Agent => Position::Agent,
        Role::Server if cluster.servers().next().is_some_and(|first| first.name == host.name) => Position::FirstServer,
        Role::Server => Position::JoiningServer,
    }
}

pub fn join_url(first_server: &Host) -> String {
    format!("https://{}", authority(first_server, 6443))
}

/// `host`'s address and `port` as a URL or a scrape target writes them (an IPv6 address in brackets).
pub fn authority(host: &Host, port: u16) -> String {
    match host.ip() {
        Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{}:{port}", host.address),
    }
}

/// Whether k3s runs its agent part on `host` (kubelet, containerd): always but on a server
/// told `disable-agent`, by `spec.k3s.config` or an `extraConfig`, as [`config_yaml`] merges them.
pub fn runs_kubelet(cluster: &ClusterFile, host: &Host) -> bool {
    if host.role != Role::Server {
        return true;
    }
    let mut disabled = cluster.k3s.config.get("disable-agent").cloned();
    if let Some(v) = cluster.extra_config_for(host).remove("disable-agent") {
        disabled = Some(v);
    }
    !disabled.is_some_and(|v| v.as_bool() == Some(true) || v.as_str() == Some("true"))
}

/// config.yaml for `host`. `node_ip` is set when the host's address is one of its own interface
/// addresses: on multi-homed hosts (Vagrant's NAT interface) k3s would otherwise pick the wrong one.
pub fn config_yaml(cluster: &ClusterFile, host: &Host, node_ip: Option<&str>) -> String {
    let first = cluster.servers().next().expect("validated: at least one server");
    let mut config: BTreeMap<String, Value> = BTreeMap::new();
    for (key, value) in &cluster.k3s.config {
        if key_spec(key).is_none_or(|k| k.scope.applies_to(host.role)) {
            config.insert(key.clone(), value.clone());
        }
    }
    // Unknown keys go to every host (k3s skips, with a warning, a key its command does not take);
    // a host's known keys were checked against its role when the file was read.
    for (key, value) in cluster.extra_config_for(host) {
        config.insert(key, value);
    }
    config.insert("node-name".into(), host.name.clone().into());
    if let Some(ip) = node_ip {
        config.entry("node-ip".into()).or_insert_with(|| ip.into());
    }
    if !host.labels.is_empty() {
        config.insert("node-label".into(), host.labels.iter().map(|(k, v)| Value::from(format!("{k}={v}"))).collect());
    }
    if !host.taints.is_empty() {
        config.insert("node-taint".into(), host.taints.iter().cloned().map(Value::from).collect());
    }
    match position(cluster, host) {
        Position::FirstServer if cluster.servers().count() > 1 => {
            config.insert("cluster-init".into(), true.into());
        }
        Position::JoiningServer => {
            config.insert("server".into(), join_url(first).into());
        }
        _ => {}
    }
    if host.role == Role::Server {
        // kubeconfigs point at the API endpoint; the serving certificate must name it.
        if let Some(endpoint) = &cluster.k3s.api_endpoint {
            let sans = config.entry("tls-san".into()).or_insert_with(|| Value::Array(vec![]));
            if let Value::Array(list) = sans {
                if !list.iter().any(|v| v.as_str() == Some(endpoint.as_str())) {
                    list.push(endpoint.clone().into());
                }
            }
        }
    }
    let body = serde_yaml_ng::to_string(&config).expect("a map of JSON values always renders");
    format!(
        "# Written by k3node from the cluster file of cluster {}; edit that file, not this one.\n{body}",
        cluster.name
    )
}

/// registries.yaml, the same on every node; None when the cluster file has no
/// `spec.k3s.registries` (k3node then leaves that file alone).
pub fn registries_yaml(cluster: &ClusterFile) -> Option<Secret> {
    cluster.k3s.registries.as_ref().map(|r| Secret::new(r.render(&cluster.name)))
}

/// The env file: joining hosts get the URL and token here (0600), never on a command line; then
/// the cluster file's variables (`spec.k3s.env` and `hosts[].env`, NO_PROXY completed, see
/// [`ClusterFile::env_for`]), sorted by name.
pub fn env(cluster: &ClusterFile, host: &Host, token: Option<&Secret>) -> Vec<(String, Secret)> {
    let first = cluster.servers().next().expect("validated: at least one server");
    let mut vars = match (position(cluster, host), token) {
        (Position::FirstServer, _) | (_, None) => Vec::new(),
        (Position::JoiningServer, Some(token)) => vec![("K3S_TOKEN".into(), token.clone())],
        (Position::Agent, Some(token)) => {
            vec![("K3S_URL".into(), Secret::new(join_url(first))), ("K3S_TOKEN".into(), token.clone())]
        }
    };
    vars.extend(cluster.env_for(host));
    vars
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cluster(extra_hosts: &str) -> ClusterFile {
        let text = format!(
            "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: lab\nspec:\n  hosts:\n    - name: s1\n      address: 10.0.0.1\n      role: server\n      labels: {{tier: db}}\n      taints: [\"dedicated=db:NoSchedule\"]\n{extra_hosts}  k3s:\n    apiEndpoint: k3s.example\n    config:\n      cluster-cidr: 10.42.0.0/16\n      disable: [traefik]\n      kube-apiserver-arg: [request-timeout=300s]\n      kubelet-arg: [max-pods=50]\n"
        );
        crate::cluster::parse("cluster.yaml", Path::new("/"), &text).unwrap()
    }

    #[test]
    fn agents_get_no_server_only_keys_and_join_through_the_env_file() {
        let c = cluster("    - name: a1\n      address: 10.0.0.2\n      role: agent\n");
        let agent = c.host("a1").unwrap();
        let yaml = config_yaml(&c, agent, Some("10.0.0.2"));
        assert!(
            !yaml.contains("cluster-cidr") && !yaml.contains("kube-apiserver-arg") && !yaml.contains("disable"),
            "{yaml}"
        );
        assert!(
            yaml.contains("kubelet-arg") && yaml.contains("node-name: a1") && yaml.contains("node-ip: 10.0.0.2"),
            "{yaml}"
        );
        let env = env(&c, agent, Some(&Secret::new("K10x::server:pw")));
        assert_eq!(env[0], ("K3S_URL".to_string(), Secret::new("https://10.0.0.1:6443")));
        assert_eq!(env[1].1.expose(), "K10x::server:pw");
        assert!(!yaml.contains("K10x"));
    }

    #[test]
    fn an_ipv6_address_is_bracketed_before_its_port_and_others_are_written_as_they_are() {
        let c = cluster("    - name: s2\n      address: fd00::3\n      role: server\n    - name: s3\n      address: s3.lab\n      role: server\n");
        assert_eq!(authority(c.host("s1").unwrap(), 10270), "10.0.0.1:10270");
        assert_eq!(authority(c.host("s2").unwrap(), 10270), "[fd00::3]:10270");
        assert_eq!(authority(c.host("s3").unwrap(), 6443), "s3.lab:6443");
        assert_eq!(join_url(c.host("s2").unwrap()), "https://[fd00::3]:6443");
    }

    #[test]
    fn first_of_several_servers_inits_and_the_others_join_it() {
        let c = cluster("    - name: s2\n      address: 10.0.0.3\n      role: server\n");
        let first = config_yaml(&c, c.host("s1").unwrap(), None);
        let second = config_yaml(&c, c.host("s2").unwrap(), None);
        assert!(first.contains("cluster-init: true") && !first.contains("server:"), "{first}");
        assert!(first.contains("node-label:\n- tier=db") && first.contains("dedicated=db:NoSchedule"), "{first}");
        assert!(first.contains("k3s.example"), "api endpoint in tls-san: {first}");
        assert!(second.contains("server: https://10.0.0.1:6443") && !second.contains("cluster-init"), "{second}");
        assert_eq!(config_yaml(&c, c.host("s1").unwrap(), None), first, "rendering is deterministic");
    }

    #[test]
    fn extra_config_and_env_reach_each_host_sorted_after_k3nodes_own() {
        let text = "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: lab\nspec:\n  hosts:\n    - name: s1\n      address: 10.0.0.1\n      role: server\n      k3s:\n        extraConfig:\n          flannel-iface: eth1\n          kube-apiserver-burst: 800\n    - name: a1\n      address: 203.0.113.9\n      role: agent\n      env:\n        HTTPS_PROXY: http://a1-proxy:3128\n  k3s:\n    extraConfig:\n      kube-apiserver-burst: 400\n      secrets-encryption-provider: secretbox\n    env:\n      HTTPS_PROXY: http://user:pw@proxy:3128\n      A_FIRST: \"1\"\n";
        let c = crate::cluster::parse("cluster.yaml", Path::new("/"), text).unwrap_or_else(|e| panic!("{e}"));
        let server = config_yaml(&c, c.host("s1").unwrap(), None);
        assert!(server.contains("flannel-iface: eth1\n"), "{server}");
        assert!(server.contains("kube-apiserver-burst: 800\n"), "the host's value wins: {server}");
        assert!(server.contains("secrets-encryption-provider: secretbox\n"), "{server}");
        let agent_yaml = config_yaml(&c, c.host("a1").unwrap(), None);
        assert!(
            agent_yaml.contains("kube-apiserver-burst: 400\n") && !agent_yaml.contains("flannel-iface"),
            "{agent_yaml}"
        );

        let agent = env(&c, c.host("a1").unwrap(), Some(&Secret::new("K10x::server:pw")));
        let names: Vec<&str> = agent.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["K3S_URL", "K3S_TOKEN", "A_FIRST", "HTTPS_PROXY", "NO_PROXY"]);
        assert_eq!(agent[3].1.expose(), "http://a1-proxy:3128", "the host's own proxy wins");
        // No NO_PROXY given: the k3s docs' list, the pod and service networks (inside 10.0.0.0/8
        // already), the cluster domain, and the address outside every listed range.
        assert_eq!(
            agent[4].1.expose(),
            "127.0.0.0/8,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,localhost,.svc,.cluster.local,203.0.113.9"
        );
        let server_env = env(&c, c.host("s1").unwrap(), None);
        assert_eq!(
            server_env.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["A_FIRST", "HTTPS_PROXY", "NO_PROXY"]
        );
        assert_eq!(format!("{:?}", server_env[1].1), "<redacted>");
        assert_eq!(env(&c, c.host("s1").unwrap(), None), server_env, "rendering is deterministic");
    }

    #[test]
    fn a_given_no_proxy_gets_the_pod_and_service_networks_appended_when_missing() {
        let text = "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: lab\nspec:\n  hosts:\n    - name: s1\n      address: 192.168.56.10\n      role: server\n  k3s:\n    config:\n      cluster-cidr: 172.20.0.0/16\n      service-cidr: 10.43.0.0/16\n    env:\n      HTTP_PROXY: http://proxy:3128\n      NO_PROXY: 192.168.56.0/24, 10.0.0.0/8 ,.corp.example\n      CONTAINERD_HTTPS_PROXY: http://mirror:3128\n";
        let c = crate::cluster::parse("cluster.yaml", Path::new("/"), text).unwrap_or_else(|e| panic!("{e}"));
        let vars: BTreeMap<String, String> =
            env(&c, c.host("s1").unwrap(), None).into_iter().map(|(n, v)| (n, v.expose().to_string())).collect();
        assert_eq!(vars["NO_PROXY"], "192.168.56.0/24,10.0.0.0/8,.corp.example,172.20.0.0/16");
        assert!(vars["CONTAINERD_NO_PROXY"].starts_with("127.0.0.0/8,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,"));
        assert!(c.warnings.is_empty(), "{}", c.warnings);
    }
}
