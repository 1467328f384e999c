//! The host's identity, which the operator compares across hosts (unique hostname, machine-id
//! and address; clock skew), and the host-local checks on it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::network::is_routable;
use super::{describe_io, fail, pass, warn, Host};
use crate::protocol::preflight::{Check, HostFacts};

pub(super) fn gather(host: &Host) -> HostFacts {
    HostFacts {
        hostname: host.uname.nodename.clone(),
        machine_id: machine_id(host).unwrap_or_default(),
        addresses: addresses(host),
        clock_unix_ms: host.sys.now_unix_ms(),
    }
}

fn machine_id(host: &Host) -> Option<String> {
    // systemd's file, then D-Bus's copy on hosts without systemd.
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| host.read(p).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
}

/// Non-loopback, non-link-local addresses, in a stable order and without duplicates.
fn addresses(host: &Host) -> Vec<String> {
    let Ok(addrs) = host.sys.interface_addresses() else { return Vec::new() };
    let unique: BTreeSet<IpAddr> = addrs.iter().map(|a| a.address).filter(is_routable).collect();
    unique.iter().map(IpAddr::to_string).collect()
}

pub(super) fn checks(host: &Host) -> Vec<Check> {
    vec![hostname(host), machine_id_check(host)]
}

/// Kubernetes node names are DNS-1123 subdomains: lowercase alphanumerics, '-' and '.',
/// starting and ending with an alphanumeric, at most 253 characters, labels at most 63.
fn is_dns1123_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn hostname(host: &Host) -> Check {
    const ID: &str = "hostname";
    let name = host.uname.nodename.as_str();
    if name.is_empty() || name == "(none)" {
        return fail(
            ID,
            "the host has no hostname; k3s names the node after it",
            "hostnamectl set-hostname <name>, or set the host's node-name in cluster.yaml",
        );
    }
    let lower = name.to_ascii_lowercase();
    if !is_dns1123_subdomain(&lower) {
        return fail(
            ID,
            format!("hostname {name:?} is not a valid Kubernetes node name (lowercase letters, digits, '-' and '.')"),
            "hostnamectl set-hostname <valid-name>, or set the host's node-name in cluster.yaml",
        );
    }
    if lower != name {
        return warn(
            ID,
            format!("hostname {name:?} has capitals; the node will be named {lower:?}"),
            format!("hostnamectl set-hostname {lower}, or set the host's node-name in cluster.yaml"),
        );
    }
    if name == "localhost" || name.starts_with("localhost.") {
        return warn(
            ID,
            format!("hostname is {name:?}, which every unconfigured host shares; node names must be unique"),
            "hostnamectl set-hostname <unique-name>, or set the host's node-name in cluster.yaml",
        );
    }
    pass(ID, name.to_string())
}

fn machine_id_check(host: &Host) -> Check {
    const ID: &str = "machine-id";
    match machine_id(host) {
        Some(id) => pass(ID, id),
        None => {
            let why = match host.read("/etc/machine-id") {
                Ok(_) => "/etc/machine-id is empty".to_string(),
                Err(e) => format!("/etc/machine-id: {}", describe_io(&e)),
            };
            warn(
                ID,
                format!("{why}; cloned hosts cannot be told apart, and systemd and flannel rely on it"),
                "systemd-machine-id-setup (on a cloned image: rm /etc/machine-id first)",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::protocol::preflight::Status;

    #[test]
    fn facts_skip_loopback_and_link_local() {
        let sys = healthy_host().interface("eth1", "192.168.56.10", 24).interface("eth1", "169.254.3.4", 16);
        let facts = gather(&host(&sys));
        assert_eq!(facts.hostname, "node1");
        assert_eq!(facts.machine_id, "4c4c4544004d3510804bb4c04f4b4e32");
        assert_eq!(facts.addresses, vec!["192.168.56.10", "fd00:56::10"]);
        assert_eq!(facts.clock_unix_ms, 1_700_000_000_000);
    }

    #[test]
    fn hostname_rules() {
        let check = |name: &str| hostname(&host(&healthy_host().uname("Linux", name, "6.1.0", "x86_64")));
        assert_eq!(check("node1").status, Status::Pass);
        assert_eq!(check("node-1.lab.example").status, Status::Pass);
        assert_eq!(check("Node1").status, Status::Warn);
        assert_eq!(check("localhost").status, Status::Warn);
        assert_eq!(check("node_1").status, Status::Fail);
        assert_eq!(check("").status, Status::Fail);
        assert_eq!(check("-node").status, Status::Fail);
    }

    #[test]
    fn machine_id_missing_warns_and_falls_back_to_dbus() {
        let sys = healthy_host().file("/etc/machine-id", "\n");
        let c = machine_id_check(&host(&sys));
        assert_eq!(c.status, Status::Warn);
        assert!(c.reason.starts_with("/etc/machine-id is empty"));
        assert_eq!(gather(&host(&sys)).machine_id, "");
        let dbus = sys.file("/var/lib/dbus/machine-id", "0123456789abcdef0123456789abcdef\n");
        assert_eq!(gather(&host(&dbus)).machine_id, "0123456789abcdef0123456789abcdef");
    }
}
