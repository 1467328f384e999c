//! The host's addresses: the node IP k3s would pick, and every local address (serving cert SANs).

use std::net::IpAddr;

/// All addresses of all interfaces (including loopback).
pub fn local_ips() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(addr) = a.address else { continue };
            if let Some(v4) = addr.as_sockaddr_in() {
                out.push(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                let ip = v6.ip();
                if (ip.segments()[0] & 0xffc0) != 0xfe80 {
                    out.push(IpAddr::V6(ip));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn default_route_iface() -> Option<String> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    text.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.len() > 2 && cols[1] == "00000000").then(|| cols[0].to_string())
    })
}

/// The IPv4 address of the default-route interface, else the first non-loopback IPv4, else 127.0.0.1.
pub fn primary_ipv4() -> String {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return "127.0.0.1".into();
    };
    let v4: Vec<(String, std::net::Ipv4Addr)> =
        addrs.filter_map(|a| Some((a.interface_name.clone(), a.address?.as_sockaddr_in()?.ip()))).collect();
    if let Some(iface) = default_route_iface() {
        if let Some((_, ip)) = v4.iter().find(|(n, _)| *n == iface) {
            return ip.to_string();
        }
    }
    v4.iter().find(|(_, ip)| !ip.is_loopback()).map(|(_, ip)| ip.to_string()).unwrap_or_else(|| "127.0.0.1".into())
}
