//! Rules that relate several fields: unique hosts, at least one server, and networks that do not
//! collide (k3s-contract.md section 3: CIDRs must not overlap each other nor the hosts, and
//! cluster-dns must lie inside service-cidr).

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

fn networks(sink: &mut Sink, file: &ClusterFile, spans: &Spans) {
    let cluster = net(spans, "cluster-cidr", DEFAULT_CLUSTER_CIDR);
    let service = net(spans, "service-cidr", DEFAULT_SERVICE_CIDR);
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
