//! Rules that relate several fields: unique hosts, at least one server, and networks that do not
//! collide (k3s-contract.md section 3: CIDRs must not overlap each other nor the hosts, and
//! cluster-dns must lie inside service-cidr), plus what Kubernetes itself would refuse at start:
//! a pod network too small or too large to be cut into per-node ranges, and a cluster-dns
//! address the service allocator cannot hand out.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::diagnostic::Sink;
use super::k3s_config::parse_cidr;
use super::schema::Spans;
use super::{ClusterFile, DEFAULT_CLUSTER_CIDR, DEFAULT_SERVICE_CIDR};

const CONFIG: &str = "spec.k3s.config";

pub(crate) fn check(sink: &mut Sink, file: &ClusterFile, spans: &Spans) {
    hosts(sink, file, spans);
    networks(sink, file, spans);
    no_proxy(sink, file, spans);
}

/// A NO_PROXY the user wrote should keep node-to-node traffic off the proxy (docs.k3s.io,
/// "Configuring an HTTP proxy": the nodes' own addresses belong in NO_PROXY).
fn no_proxy(sink: &mut Sink, file: &ClusterFile, spans: &Spans) {
    let Some(at) = spans.env else { return };
    let env = &file.k3s.env;
    if !["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"].iter().any(|p| env.contains_key(*p)) {
        return;
    }
    let Some((name, given)) = ["NO_PROXY", "no_proxy"].iter().find_map(|n| env.get(*n).map(|v| (*n, v))) else {
        return;
    };
    for (i, address) in super::extra::hosts_outside_no_proxy(file, given.expose()) {
        sink.warning(
            at,
            format!("spec.k3s.env.{name}"),
            format!("{name} does not cover the address of spec.hosts[{i}] ({address}): nodes would reach it through the proxy"),
        )
        .hint("add the hosts' network (e.g. 192.168.0.0/16) or their addresses to NO_PROXY");
    }
}

fn hosts(sink: &mut Sink, file: &ClusterFile, spans: &Spans) {
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut addresses: BTreeMap<String, usize> = BTreeMap::new();
    for (i, (host, at)) in file.hosts.iter().zip(&spans.hosts).enumerate() {
        if let Some(pos) = at.name {
            if let Some(first) = names.insert(&host.name, i) {
                names.insert(&host.name, first);
                sink.error(
                    pos,
                    format!("spec.hosts[{i}].name"),
                    format!("duplicate host name {:?}, also used by spec.hosts[{first}]", host.name),
                )
                .hint("every host needs its own node name");
            }
        }
        if let Some(pos) = at.address {
            if let Some(first) = addresses.insert(canonical_address(&host.address), i) {
                addresses.insert(canonical_address(&host.address), first);
                sink.error(
                    pos,
                    format!("spec.hosts[{i}].address"),
                    format!("duplicate address {:?}, also used by spec.hosts[{first}]", host.address),
                )
                .hint("every host needs its own address: agents and servers reach each other by it");
            }
        }
    }
    let all_roles_known = spans.hosts.iter().all(|h| h.role_ok);
    if let Some(pos) = spans.hosts_key {
        if !file.hosts.is_empty() && all_roles_known && file.servers().next().is_none() {
            sink.error(pos, "spec.hosts", "no host has role: server")
                .hint("a cluster needs at least one server (it runs the control plane); set role: server on one host");
        }
    }
}

/// Equal addresses compare equal: `fd00::1` and `FD00:0::1`, `Node1.lab.` and `node1.lab`.
fn canonical_address(a: &str) -> String {
    match a.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => a.trim_end_matches('.').to_ascii_lowercase(),
    }
}

/// A network setting: its CIDRs, and where it was written (None: the k3s default).
struct Net {
    key: &'static str,
    nets: Vec<IpNet>,
    at: Option<super::diagnostic::Pos>,
}

impl Net {
    fn describe(&self, net: &IpNet) -> String {
        match self.at {
            Some(_) => format!("{} {net}", self.key),
            None => format!("{} {net} (the k3s default)", self.key),
        }
    }
}

/// The CIDRs of `key`, or its default; None when the key was given but invalid (already
/// reported: checking the default instead would produce confusing follow-up errors).
fn net(spans: &Spans, key: &'static str, default: &str) -> Option<Net> {
    if spans.config.invalid.contains(key) {
        return None;
    }
    let (text, at) = match (spans.config.values.get(key).and_then(|v| v.as_str()), spans.config.pos.get(key)) {
        (Some(t), Some(at)) => (t, Some(*at)),
        _ => (default, None),
    };
    let nets = text.split(',').map(|s| parse_cidr(s.trim()).ok()).collect::<Option<Vec<_>>>()?;
    Some(Net { key, nets, at })
}

fn overlap(a: &IpNet, b: &IpNet) -> bool {
    let (a, b) = (a.trunc(), b.trunc());
    a.contains(&b) || b.contains(&a)
}

/// Per-node pod ranges the kube-controller-manager cuts from cluster-cidr by default
/// (`--node-cidr-mask-size-ipv4` 24, `-ipv6` 64), and the most bits it can add to the cluster
/// prefix (`clusterSubnetMaxDiff` in kubernetes pkg/controller/nodeipam/ipam/cidrset).
const NODE_MASK_V4: u8 = 24;
const NODE_MASK_V6: u8 = 64;
const NODE_MASK_MAX_DIFF: u8 = 16;

/// A pod network must hold at least one per-node range and at most 2^16 of them; otherwise the
/// kube-controller-manager refuses to start and no node gets a pod range.
fn pod_network_size(sink: &mut Sink, spans: &Spans, cluster: &Net) {
    let Some(at) = cluster.at else { return };
    let custom_mask =
        spans.config.values.get("kube-controller-manager-arg").and_then(|v| v.as_array()).is_some_and(|args| {
            args.iter()
                .any(|a| a.as_str().is_some_and(|a| a.trim_start_matches('-').starts_with("node-cidr-mask-size")))
        });
    if custom_mask {
        // The user chose the per-node size; its limits are the controller's to check.
        return;
    }
    for n in &cluster.nets {
        let node_mask = if n.addr().is_ipv4() { NODE_MASK_V4 } else { NODE_MASK_V6 };
        let smallest = node_mask - NODE_MASK_MAX_DIFF;
        if n.prefix_len() > node_mask || n.prefix_len() < smallest {
            sink.error(
                at,
                format!("{CONFIG}.cluster-cidr"),
                format!(
                    "cluster-cidr {n} cannot be split into per-node /{node_mask} pod ranges: the prefix length must be from /{smallest} to /{node_mask}"
                ),
            )
            .hint(if n.addr().is_ipv4() {
                "each node gets a /24 of the pod network; e.g. 10.42.0.0/16 serves 256 nodes"
            } else {
                "each node gets a /64 of the pod network; e.g. fd00:42::/56 serves 256 nodes"
            });
        }
    }
}

/// Addresses of the service network the allocator never hands to a service of ours: the network
/// address itself, the IPv4 broadcast address, and the first address (the `kubernetes` API
/// service takes it).
fn reserved_service_address(net: &IpNet, ip: IpAddr) -> Option<&'static str> {
    let net = net.trunc();
    if ip == net.network() {
        return Some("is the service network's own address, which no service can take");
    }
    if ip.is_ipv4() && ip == net.broadcast() {
        return Some("is the service network's broadcast address, which no service can take");
    }
    if nth_address(&net.to_string(), 1) == Some(ip) {
        return Some("is the first address of service-cidr, which the `kubernetes` API service takes");
    }
    None
}

fn networks(sink: &mut Sink, file: &ClusterFile, spans: &Spans) {
    let cluster = net(spans, "cluster-cidr", DEFAULT_CLUSTER_CIDR);
    let service = net(spans, "service-cidr", DEFAULT_SERVICE_CIDR);
    if let Some(c) = &cluster {
        pod_network_size(sink, spans, c);
    }
    if let (Some(c), Some(s)) = (&cluster, &service) {
        // At least one of them is explicit: the defaults do not overlap.
        let (here, there) = if s.at.is_some() { (s, c) } else { (c, s) };
        for a in &here.nets {
            for b in there.nets.iter().filter(|b| overlap(a, b)) {
                if let Some(at) = here.at {
                    sink.error(
                        at,
                        format!("{CONFIG}.{}", here.key),
                        format!("{} overlaps {}", here.describe(a), there.describe(b)),
                    )
                    .hint("pod (cluster-cidr) and service (service-cidr) networks must be disjoint");
                }
            }
        }
    }
    if let (Some(s), Some(dns), Some(at)) =
        (&service, spans.config.values.get("cluster-dns").and_then(|v| v.as_str()), spans.config.pos.get("cluster-dns"))
    {
        for ip in dns.split(',').filter_map(|d| d.trim().parse::<IpAddr>().ok()) {
            let same_family: Vec<&IpNet> = s.nets.iter().filter(|n| n.addr().is_ipv4() == ip.is_ipv4()).collect();
            if let Some((n, why)) = same_family.iter().find_map(|n| {
                n.trunc().contains(&ip).then(|| reserved_service_address(n, ip)).flatten().map(|w| (n, w))
            }) {
                let hint = match nth_address(&n.trunc().to_string(), 10) {
                    Some(tenth) => format!(
                        "use another address of {}, e.g. {tenth} (what k3s picks when cluster-dns is unset)",
                        n.trunc()
                    ),
                    None => format!("use another address of {}", n.trunc()),
                };
                sink.error(*at, format!("{CONFIG}.cluster-dns"), format!("cluster-dns {ip} {why}")).hint(hint);
                continue;
            }
            if !same_family.iter().any(|n| n.trunc().contains(&ip)) {
                let inside = same_family.first().map_or_else(|| s.key.to_string(), |n| s.describe(n));
                let hint = match same_family.first().and_then(|n| nth_address(&n.to_string(), 10)) {
                    Some(s) => format!("the cluster DNS service address must come from service-cidr, e.g. {s}; or leave cluster-dns unset and k3s picks that one"),
                    None => "the cluster DNS service address must come from service-cidr".to_string(),
                };
                sink.error(*at, format!("{CONFIG}.cluster-dns"), format!("cluster-dns {ip} is not inside {inside}"))
                    .hint(hint);
            }
        }
    }
    if let (Some(s), None) = (&service, spans.config.values.get("cluster-dns")) {
        if let (Some(at), Some(first)) = (s.at, s.nets.first()) {
            if nth_address(&first.trunc().to_string(), 10).is_none() && !spans.config.invalid.contains("cluster-dns") {
                sink.error(
                    at,
                    format!("{CONFIG}.service-cidr"),
                    format!(
                        "service-cidr {first} is too small for the cluster DNS address k3s picks (its 10th address)"
                    ),
                )
                .hint("use a larger service network (e.g. a /16), or set cluster-dns to an address inside it");
            }
        }
    }
    for (i, (host, at)) in file.hosts.iter().zip(&spans.hosts).enumerate() {
        let (Some(pos), Some(ip)) = (at.address, host.ip()) else {
            continue;
        };
        for n in [&cluster, &service].into_iter().flatten() {
            for net in n.nets.iter().filter(|net| net.trunc().contains(&ip)) {
                sink.error(pos, format!("spec.hosts[{i}].address"), format!("address {ip} is inside {}", n.describe(net)))
                    .hint("the pod and service networks must not overlap the hosts' network: choose other CIDRs in spec.k3s.config");
            }
        }
    }
}

/// The `n`th address of a CIDR (k3s takes the 10th of the service CIDR for cluster DNS).
pub(crate) fn nth_address(cidr: &str, n: u32) -> Option<IpAddr> {
    let net = cidr.parse::<IpNet>().ok()?.trunc();
    let ip = match net.network() {
        IpAddr::V4(a) => IpAddr::V4(u32::from(a).checked_add(n)?.into()),
        IpAddr::V6(a) => IpAddr::V6(u128::from(a).checked_add(u128::from(n))?.into()),
    };
    net.contains(&ip).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth() {
        assert_eq!(nth_address("10.43.0.0/16", 10), Some("10.43.0.10".parse().unwrap()));
        assert_eq!(nth_address("10.96.0.0/12", 10), Some("10.96.0.10".parse().unwrap()));
        assert_eq!(nth_address("fd00:43::/112", 10), Some("fd00:43::a".parse().unwrap()));
        assert_eq!(nth_address("10.0.0.0/30", 10), None);
    }

    #[test]
    fn overlaps() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert!(overlap(&n("10.42.0.0/16"), &n("10.42.128.0/17")));
        assert!(overlap(&n("10.0.0.0/8"), &n("10.43.0.0/16")));
        assert!(!overlap(&n("10.42.0.0/16"), &n("10.43.0.0/16")));
        assert!(!overlap(&n("10.42.0.0/16"), &n("fd00::/64")));
        assert!(overlap(&n("10.42.0.1/16"), &n("10.42.5.0/24")));
    }

    #[test]
    fn canonical() {
        assert_eq!(canonical_address("FD00:0::1"), canonical_address("fd00::1"));
        assert_eq!(canonical_address("Node1.Lab."), "node1.lab");
    }
}
