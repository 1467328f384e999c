//! Network: the ports k3s listens on must be free (k3s-contract.md section 5), and no route or
//! address of the host may overlap the cluster and service CIDRs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::{describe_io, fail, pass, warn, Host};
use crate::protocol::preflight::{Check, PreflightRequest, Role, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

struct PortSpec {
    port: u16,
    proto: Proto,
    servers_only: bool,
    /// Fail unless the port only matters for an optional feature.
    when_busy: Status,
    purpose: &'static str,
}

const fn port(port: u16, proto: Proto, servers_only: bool, when_busy: Status, purpose: &'static str) -> PortSpec {
    PortSpec { port, proto, servers_only, when_busy, purpose }
}

use Proto::{Tcp, Udp};
use Status::{Fail as F, Warn as W};

/// k3s-contract.md section 5: inbound ports, then the loopback-only ones.
const PORTS: &[PortSpec] = &[
    port(6443, Tcp, true, F, "supervisor and Kubernetes API"),
    port(10250, Tcp, false, F, "kubelet"),
    port(2379, Tcp, true, F, "embedded etcd clients"),
    port(2380, Tcp, true, F, "embedded etcd peers"),
    port(5001, Tcp, false, W, "embedded registry, only used with embedded-registry"),
    port(8472, Udp, false, F, "flannel VXLAN"),
    // A host's own WireGuard VPN commonly uses 51820; it only clashes with flannel-backend
    // wireguard-native, which the request does not tell, hence a warning.
    port(51820, Udp, false, W, "flannel WireGuard, only used with flannel-backend wireguard-native"),
    port(51821, Udp, false, W, "flannel WireGuard IPv6, only used with flannel-backend wireguard-native"),
    port(2381, Tcp, true, F, "etcd metrics, loopback"),
    port(2382, Tcp, true, F, "etcd, loopback"),
    port(6444, Tcp, false, F, "API server behind the supervisor / agent load balancer, loopback"),
    port(10010, Tcp, false, F, "containerd CRI streaming, loopback"),
    port(10248, Tcp, false, F, "kubelet healthz, loopback"),
    port(10249, Tcp, false, F, "kube-proxy metrics, loopback"),
    port(10256, Tcp, false, F, "kube-proxy healthz, loopback"),
    port(10257, Tcp, true, F, "kube-controller-manager, loopback"),
    port(10258, Tcp, true, F, "cloud-controller-manager, loopback"),
    port(10259, Tcp, true, F, "kube-scheduler, loopback"),
];

/// Not k3s's: the hub of k3node's node agent, on every server, at the cluster file's port.
const fn hub(hub_port: u16) -> PortSpec {
    port(hub_port, Tcp, true, F, "k3node hub (node health reports)")
}

/// k3s's data dir: the containerd, runc and CNI binaries it extracts run from under here.
const K3S_DATA_DIR: &str = "/var/lib/rancher/k3s/";

pub(super) fn checks(host: &Host, req: &PreflightRequest) -> Vec<Check> {
    let mut checks = ports(host, req.role, req.hub_port);
    checks.push(routes(host, req));
    checks
}

// ---- ports ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Socket {
    pub proto: Proto,
    pub local: IpAddr,
    pub port: u16,
    pub inode: u64,
}

/// An IPv4 address as /proc/net prints it: the 32-bit network-order value as a native integer.
fn parse_proc_ipv4(hex: &str) -> Option<Ipv4Addr> {
    let v = u32::from_str_radix(hex, 16).ok()?;
    Some(Ipv4Addr::from(v.to_ne_bytes()))
}

/// An IPv6 address in /proc/net/tcp6 and udp6: four such 32-bit words.
fn parse_proc_ipv6_words(hex: &str) -> Option<Ipv6Addr> {
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for i in 0..4 {
        let word = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Some(Ipv6Addr::from(bytes))
}

/// An IPv6 address in /proc/net/ipv6_route: plain network byte order.
fn parse_proc_ipv6_plain(hex: &str) -> Option<Ipv6Addr> {
    (hex.len() == 32).then_some(())?;
    u128::from_str_radix(hex, 16).ok().map(Ipv6Addr::from)
}

/// Sockets of /proc/net/{tcp,tcp6,udp,udp6} that hold a port: TCP listeners (state 0A) and
/// bound UDP sockets (state 07). Established connections do not stop k3s from binding.
pub(super) fn parse_socket_table(text: &str, proto: Proto) -> Vec<Socket> {
    let wanted_state = match proto {
        Proto::Tcp => "0A",
        Proto::Udp => "07",
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (addr, port) = fields.get(1)?.split_once(':')?;
            if *fields.get(3)? != wanted_state {
                return None;
            }
            let local = match addr.len() {
                8 => IpAddr::V4(parse_proc_ipv4(addr)?),
                32 => IpAddr::V6(parse_proc_ipv6_words(addr)?),
                _ => return None,
            };
            let port = u16::from_str_radix(port, 16).ok()?;
            let inode = fields.get(9)?.parse().ok()?;
            Some(Socket { proto, local, port, inode })
        })
        .collect()
}

/// Every port-holding socket of the host; a table that cannot be read is reported as an error
/// (tcp6/udp6 are legitimately absent when IPv6 is disabled).
fn read_sockets(host: &Host) -> (Vec<Socket>, Vec<String>) {
    let mut sockets = Vec::new();
    let mut errors = Vec::new();
    for (file, proto, optional) in [
        ("/proc/net/tcp", Proto::Tcp, false),
        ("/proc/net/tcp6", Proto::Tcp, true),
        ("/proc/net/udp", Proto::Udp, false),
        ("/proc/net/udp6", Proto::Udp, true),
    ] {
        match host.read(file) {
            Ok(text) => sockets.extend(parse_socket_table(&text, proto)),
            Err(e) if optional && e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("{file}: {}", describe_io(&e))),
        }
    }
    (sockets, errors)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Owner {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<PathBuf>,
    /// A k3s process is among its ancestors (k3s starts containerd as a child).
    pub started_by_k3s: bool,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (pid {})", self.comm, self.pid)
    }
}

impl Owner {
    /// The k3s process, or a process k3s started (its containerd, from its data dir or not).
    fn is_k3s(&self) -> bool {
        self.comm.starts_with("k3s")
            || self.started_by_k3s
            || self.exe.as_deref().is_some_and(|exe| exe.starts_with(K3S_DATA_DIR) || exe == Path::new(super::K3S_BIN))
    }
}

/// Maps socket inodes to the processes holding them, through /proc/<pid>/fd/* links
/// `socket:[inode]`. Processes that vanish or cannot be inspected are skipped.
pub(super) fn socket_owners(host: &Host, inodes: &BTreeSet<u64>) -> BTreeMap<u64, Owner> {
    let mut owners = BTreeMap::new();
    let Ok(entries) = host.sys.read_dir_names(Path::new("/proc")) else { return owners };
    let mut pids: Vec<u32> = entries.iter().filter_map(|n| n.parse().ok()).collect();
    pids.sort_unstable();
    for pid in pids {
        if owners.len() == inodes.len() {
            break;
        }
        let fd_dir = PathBuf::from(format!("/proc/{pid}/fd"));
        let Ok(fds) = host.sys.read_dir_names(&fd_dir) else { continue };
        for fd in fds {
            let Ok(target) = host.sys.read_link(&fd_dir.join(&fd)) else { continue };
            let target = target.to_string_lossy();
            let Some(inode) = target.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) else { continue };
            let Ok(inode) = inode.parse::<u64>() else { continue };
            if inodes.contains(&inode) && !owners.contains_key(&inode) {
                let comm = host
                    .read(&format!("/proc/{pid}/comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_else(|_| "?".to_string());
                let exe = host.sys.read_link(Path::new(&format!("/proc/{pid}/exe"))).ok();
                let started_by_k3s = started_by_k3s(host, pid);
                owners.insert(inode, Owner { pid, comm, exe, started_by_k3s });
            }
        }
    }
    owners
}

/// Walks the parent chain (a few levels: k3s -> containerd, or k3s -> shim) looking for k3s.
fn started_by_k3s(host: &Host, pid: u32) -> bool {
    let mut current = pid;
    for _ in 0..4 {
        let Ok(stat) = host.read(&format!("/proc/{current}/stat")) else { return false };
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so split after the last ')'.
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            return false;
        };
        if ppid <= 1 {
            return false;
        }
        if host.read(&format!("/proc/{ppid}/comm")).is_ok_and(|c| c.trim().starts_with("k3s")) {
            return true;
        }
        current = ppid;
    }
    false
}

fn ports(host: &Host, role: Role, hub_port: u16) -> Vec<Check> {
    let hub = hub(hub_port);
    let specs: Vec<&PortSpec> =
        PORTS.iter().chain([&hub]).filter(|p| role == Role::Server || !p.servers_only).collect();
    let (sockets, errors) = read_sockets(host);

    let busy_inodes: BTreeSet<u64> = sockets
        .iter()
        .filter(|s| specs.iter().any(|p| p.port == s.port && p.proto == s.proto))
        .map(|s| s.inode)
        .collect();
    let owners = if busy_inodes.is_empty() { BTreeMap::new() } else { socket_owners(host, &busy_inodes) };

    let mut free = Vec::new();
    let mut busy_checks = Vec::new();
    for spec in &specs {
        let label = format!("{}/{}", spec.port, spec.proto);
        let holders: Vec<&Socket> = sockets.iter().filter(|s| s.port == spec.port && s.proto == spec.proto).collect();
        if holders.is_empty() {
            free.push(label);
            continue;
        }
        let id = format!("port-{label}");
        let mut found: Vec<&Owner> = holders.iter().filter_map(|s| owners.get(&s.inode)).collect();
        found.sort_by_key(|o| o.pid);
        found.dedup_by_key(|o| o.pid);
        if host.k3s_installed && !found.is_empty() && found.iter().all(|o| o.is_k3s()) {
            busy_checks.push(pass(id, format!("{label} is in use by k3s (already installed)")));
            continue;
        }
        // After an upgrade the running hub's executable reads "<path> (deleted)" until it restarts.
        let is_helper = |o: &&Owner| {
            o.exe.as_deref().is_some_and(|exe| {
                let exe = exe.to_string_lossy();
                exe.strip_suffix(" (deleted)").unwrap_or(&exe) == crate::protocol::HELPER_PATH
            })
        };
        if spec.port == hub_port && !found.is_empty() && found.iter().all(is_helper) {
            busy_checks.push(pass(id, format!("{label} is in use by k3node's hub (already installed)")));
            continue;
        }
        let by = if found.is_empty() {
            let inodes: Vec<String> = holders.iter().map(|s| s.inode.to_string()).collect();
            format!("a process k3node could not identify (socket inode {})", inodes.join(", "))
        } else {
            found.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(", ")
        };
        let addrs: BTreeSet<String> = holders.iter().map(|s| s.local.to_string()).collect();
        let addrs: Vec<String> = addrs.into_iter().collect();
        let reason =
            format!("{label} is already in use by {by} on {}; k3s needs it for the {}", addrs.join(", "), spec.purpose);
        let ss = match spec.proto {
            Proto::Tcp => "ss -ltnp",
            Proto::Udp => "ss -lunp",
        };
        let what = found.first().map(|o| o.to_string()).unwrap_or_else(|| "the process".to_string());
        let fix = format!("stop {what} or move it to another port (`{ss} 'sport = :{}'` shows it)", spec.port);
        busy_checks.push(match spec.when_busy {
            Status::Warn => warn(id, reason, fix),
            _ => fail(id, reason, fix),
        });
    }

    let summary = if errors.is_empty() {
        let count = if busy_checks.is_empty() {
            format!("all {} ports k3s needs {} are free", specs.len(), on_role(role))
        } else {
            format!("{} of the {} ports k3s needs {} are free", free.len(), specs.len(), on_role(role))
        };
        if free.is_empty() {
            pass(
                "ports",
                format!(
                    "none of the {} ports k3s needs {} is free: each has its own check",
                    specs.len(),
                    on_role(role)
                ),
            )
        } else {
            pass("ports", format!("{count}: {}", free.join(", ")))
        }
    } else {
        warn(
            "ports",
            format!("cannot list listening sockets ({}); the ports could not be checked", errors.join("; ")),
            "check that /proc is mounted, then list listeners with `ss -ltunp`",
        )
    };
    let mut checks = vec![summary];
    checks.extend(busy_checks);
    checks
}

fn on_role(role: Role) -> &'static str {
    match role {
        Role::Server => "on a server",
        Role::Agent => "on an agent",
    }
}

// ---- routes ----

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct HostNet {
    pub iface: String,
    pub net: IpNet,
}

/// One or two (dual-stack) comma-separated CIDRs, as k3s accepts them.
fn parse_cidrs(s: &str) -> Result<Vec<IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| c.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| format!("{c:?} is not a CIDR")))
        .collect()
}

/// Routes of /proc/net/route, without the default route (which "overlaps" everything).
pub(super) fn parse_ipv4_routes(text: &str) -> Vec<HostNet> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dest = parse_proc_ipv4(f.get(1)?)?;
            let mask = parse_proc_ipv4(f.get(7)?)?;
            let prefix = u32::from(mask).count_ones() as u8;
            if prefix == 0 {
                return None;
            }
            let net = IpNet::new(IpAddr::V4(dest), prefix).ok()?.trunc();
            Some(HostNet { iface: f.first()?.to_string(), net })
        })
        .collect()
}

/// Routes of /proc/net/ipv6_route, without default, link-local, multicast and loopback ones.
pub(super) fn parse_ipv6_routes(text: &str) -> Vec<HostNet> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dest = parse_proc_ipv6_plain(f.first()?)?;
            let prefix = u8::from_str_radix(f.get(1)?, 16).ok()?;
            let iface = f.get(9)?;
            if prefix == 0 || *iface == "lo" || !is_routable(&IpAddr::V6(dest)) {
                return None;
            }
            let net = IpNet::new(IpAddr::V6(dest), prefix).ok()?.trunc();
            Some(HostNet { iface: iface.to_string(), net })
        })
        .collect()
}

/// Addresses that say something about the host's networks: not loopback, link-local or multicast.
pub(super) fn is_routable(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local() && !a.is_multicast() && !a.is_unspecified(),
        IpAddr::V6(a) => {
            !a.is_loopback() && !a.is_multicast() && !a.is_unspecified() && (a.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn host_networks(host: &Host) -> (BTreeSet<HostNet>, Vec<String>) {
    let mut nets = BTreeSet::new();
    let mut errors = Vec::new();
    match host.read("/proc/net/route") {
        Ok(text) => nets.extend(parse_ipv4_routes(&text)),
        Err(e) => errors.push(format!("/proc/net/route: {}", describe_io(&e))),
    }
    // Absent when IPv6 is disabled.
    if let Ok(text) = host.read("/proc/net/ipv6_route") {
        nets.extend(parse_ipv6_routes(&text));
    }
    match host.sys.interface_addresses() {
        Ok(addrs) => {
            for a in addrs.iter().filter(|a| is_routable(&a.address)) {
                if let Ok(net) = IpNet::new(a.address, a.prefix_len) {
                    nets.insert(HostNet { iface: a.name.clone(), net: net.trunc() });
                }
            }
        }
        Err(e) => errors.push(format!("interface addresses: {}", describe_io(&e))),
    }
    (nets, errors)
}

fn routes(host: &Host, req: &PreflightRequest) -> Check {
    const ID: &str = "routes";
    let mut cidrs = Vec::new();
    for (name, value) in [("cluster-cidr", &req.cluster_cidr), ("service-cidr", &req.service_cidr)] {
        match parse_cidrs(value) {
            Ok(nets) => cidrs.extend(nets.into_iter().map(|n| (name, n))),
            Err(e) => return fail(ID, format!("{name}: {e}"), format!("set {name} to a CIDR such as 10.42.0.0/16")),
        }
    }
    let (nets, errors) = host_networks(host);
    let mut clashes = Vec::new();
    for hn in &nets {
        for (name, cidr) in &cidrs {
            if !overlaps(&hn.net, cidr) {
                continue;
            }
            // Once k3s runs, flannel's and kube-proxy's own routes and addresses (cni0,
            // flannel.1, host-gw routes to other nodes' pod subnets) lie inside its CIDRs.
            if host.k3s_installed && cidr.contains(&hn.net) {
                continue;
            }
            clashes.push(format!("{} has {}, which overlaps {name} {cidr}", hn.iface, hn.net));
        }
    }
    let wanted = cidrs.iter().map(|(n, c)| format!("{n} {c}")).collect::<Vec<_>>().join(", ");
    if !clashes.is_empty() {
        return fail(
            ID,
            format!("{}: pod or Service traffic would be misrouted", clashes.join("; ")),
            "choose a cluster-cidr / service-cidr in cluster.yaml that no host network uses (e.g. 10.52.0.0/16 \
             and 10.53.0.0/16), or remove the overlapping route",
        );
    }
    if !errors.is_empty() {
        return warn(
            ID,
            format!("cannot list the host's networks ({}); {wanted} not checked", errors.join("; ")),
            "check with `ip route` and `ip addr` that no network overlaps the cluster CIDRs",
        );
    }
    pass(ID, format!("no route or address of the host overlaps {wanted}"))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::host::system::fake::FakeSystem;

    fn run(sys: &FakeSystem, role: Role) -> Vec<Check> {
        let mut req = request(role);
        req.role = role;
        checks(&host(sys), &req)
    }

    /// nginx (pid 812) listening on 0.0.0.0:6443 (0x192B) and [::]:6443, inodes 31337/31338.
    fn with_nginx_on_6443(sys: FakeSystem) -> FakeSystem {
        sys.file(
            "/proc/net/tcp",
            &format!(
                "{TCP_HEADER}{SSHD_TCP}   2: 00000000:192B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0\n"
            ),
        )
        .file(
            "/proc/net/tcp6",
            &format!(
                "{TCP6_HEADER}{SSHD_TCP6}   1: 00000000000000000000000000000000:192B 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31338 1 0000000000000000 100 0 0 10 0\n"
            ),
        )
        .file("/proc/812/comm", "nginx\n")
        .link("/proc/812/exe", "/usr/sbin/nginx")
        .link("/proc/812/fd/0", "/dev/null")
        .link("/proc/812/fd/6", "socket:[31337]")
        .link("/proc/812/fd/7", "socket:[31338]")
    }

    #[test]
    fn parses_proc_net_tables() {
        let tcp = parse_socket_table(&format!("{TCP_HEADER}{SSHD_TCP}"), Proto::Tcp);
        assert_eq!(tcp, vec![Socket { proto: Proto::Tcp, local: "0.0.0.0".parse().unwrap(), port: 22, inode: 15620 }]);
        let local = parse_socket_table(
            &format!("{TCP_HEADER}   0: 0100007F:2834 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n"),
            Proto::Tcp,
        );
        assert_eq!(local[0].local, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(local[0].port, 10292);
        let v6 = parse_socket_table(
            &format!("{TCP6_HEADER}   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0\n"),
            Proto::Tcp,
        );
        assert_eq!(v6[0].local, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(v6[0].port, 8080);
        let udp = parse_socket_table(&format!("{UDP_HEADER}{DHCP_UDP}"), Proto::Udp);
        assert_eq!(udp[0].port, 68);
        assert!(parse_socket_table("garbage\nnot a line\n", Proto::Tcp).is_empty());
    }

    #[test]
    fn free_ports_fold_into_one_pass() {
        let checks = run(&healthy_host(), Role::Server);
        let ports = find(&checks, "ports");
        assert_eq!(ports.status, Status::Pass);
        assert!(
            ports.reason.starts_with("all 19 ports k3s needs on a server are free: 6443/tcp, 10250/tcp"),
            "{ports:?}"
        );
        assert!(!checks.iter().any(|c| c.id.starts_with("port-")));
        let agent = run(&healthy_host(), Role::Agent);
        assert!(
            find(&agent, "ports").reason.starts_with("all 10 ports k3s needs on an agent are free: 10250/tcp"),
            "{agent:?}"
        );
    }

    /// pid 812 listening on 0.0.0.0:`port`, running `exe`.
    fn listening(sys: FakeSystem, port: u16, comm: &str, exe: &str) -> FakeSystem {
        sys.file(
            "/proc/net/tcp",
            &format!(
                "{TCP_HEADER}{SSHD_TCP}   2: 00000000:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0\n"
            ),
        )
        .file("/proc/812/comm", &format!("{comm}\n"))
        .link("/proc/812/exe", exe)
        .link("/proc/812/fd/6", "socket:[31337]")
    }

    #[test]
    fn the_hub_port_is_the_cluster_files_and_a_hub_running_a_replaced_binary_is_still_ours() {
        let mut req = request(Role::Server);
        req.hub_port = 10300;
        let helper = crate::protocol::HELPER_PATH;
        let upgraded = listening(healthy_host(), 10300, "k3node", &format!("{helper} (deleted)"));
        let checks = checks(&host(&upgraded), &req);
        let c = find(&checks, "port-10300/tcp");
        assert_eq!(c.status, Status::Pass, "{c:?}");
        assert!(c.reason.contains("k3node's hub"), "{c:?}");
        let other = listening(healthy_host(), 10300, "nginx", "/usr/sbin/nginx");
        let checks = super::checks(&host(&other), &req);
        assert_eq!(find(&checks, "port-10300/tcp").status, Status::Fail);
        // The default port is then no concern of k3node's.
        let default = listening(healthy_host(), 10270, "nginx", "/usr/sbin/nginx");
        assert!(!super::checks(&host(&default), &req).iter().any(|c| c.id == "port-10270/tcp"));
    }

    #[test]
    fn busy_6443_fails_naming_the_owner() {
        let checks = run(&with_nginx_on_6443(healthy_host()), Role::Server);
        let c = find(&checks, "port-6443/tcp");
        assert_eq!(c.status, Status::Fail);
        assert!(c.reason.starts_with("6443/tcp is already in use by nginx (pid 812) on 0.0.0.0, ::"), "{c:?}");
        assert_eq!(
            c.fix.as_deref(),
            Some("stop nginx (pid 812) or move it to another port (`ss -ltnp 'sport = :6443'` shows it)")
        );
        assert!(find(&checks, "ports").reason.starts_with("18 of the 19 ports"));
        // An agent does not serve 6443: nothing to report.
        let agent = run(&with_nginx_on_6443(healthy_host()), Role::Agent);
        assert!(!agent.iter().any(|c| c.id == "port-6443/tcp"));
    }

    #[test]
    fn busy_port_with_unreadable_owner_still_fails() {
        let sys = with_nginx_on_6443(healthy_host()).deny("/proc/812/fd");
        let checks = run(&sys, Role::Server);
        let c = find(&checks, "port-6443/tcp");
        assert_eq!(c.status, Status::Fail);
        assert!(c.reason.contains("a process k3node could not identify (socket inode 31337, 31338)"), "{c:?}");
    }

    #[test]
    fn port_held_by_installed_k3s_passes() {
        let sys = with_k3s(with_nginx_on_6443(healthy_host()), "k3s version v1.31.4+k3s1 (a1b2c3d4)")
            .file("/proc/812/comm", "k3s-server\n")
            .link("/proc/812/exe", "/usr/local/bin/k3s");
        let checks = run(&sys, Role::Server);
        let c = find(&checks, "port-6443/tcp");
        assert_eq!(c.status, Status::Pass);
        assert_eq!(c.reason, "6443/tcp is in use by k3s (already installed)");
        // k3s's containerd, run from the data dir, counts as k3s too.
        let containerd = Owner {
            pid: 900,
            comm: "containerd".into(),
            exe: Some("/var/lib/rancher/k3s/data/abc/bin/containerd".into()),
            started_by_k3s: false,
        };
        assert!(containerd.is_k3s());
        // A system containerd binary started by k3s is k3s's as well.
        let child = with_k3s(with_nginx_on_6443(healthy_host()), "k3s version v1.31.4+k3s1 (a1b2c3d4)")
            .file("/proc/812/comm", "containerd\n")
            .link("/proc/812/exe", "/usr/bin/containerd")
            .file("/proc/812/stat", "812 (containerd) S 700 812 812 0 -1 4194560\n")
            .file("/proc/700/comm", "k3s-server\n");
        assert_eq!(find(&run(&child, Role::Server), "port-6443/tcp").status, Status::Pass);
        // Without k3s installed, a process calling itself k3s is still a conflict.
        let impostor = with_nginx_on_6443(healthy_host()).file("/proc/812/comm", "k3s-server\n");
        assert_eq!(find(&run(&impostor, Role::Server), "port-6443/tcp").status, Status::Fail);
    }

    #[test]
    fn busy_optional_udp_port_warns() {
        let wg = healthy_host()
            .file(
                "/proc/net/udp",
                &format!("{UDP_HEADER}{DHCP_UDP}  901: 00000000:CA6C 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 0 2 0000000000000000 0\n"),
            );
        let checks = run(&wg, Role::Agent);
        let c = find(&checks, "port-51820/udp");
        assert_eq!(c.status, Status::Warn);
        assert!(c.fix.as_deref().unwrap().contains("ss -lunp"));
        let vxlan = healthy_host().file(
            "/proc/net/udp",
            &format!("{UDP_HEADER}  17: 00000000:2118 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 0 2 0000000000000000 0\n"),
        );
        assert_eq!(find(&run(&vxlan, Role::Agent), "port-8472/udp").status, Status::Fail);
    }

    #[test]
    fn unreadable_socket_table_warns() {
        let checks = run(&healthy_host().remove("/proc/net/tcp"), Role::Server);
        assert_eq!(find(&checks, "ports").status, Status::Warn);
    }

    #[test]
    fn routes_pass_without_overlap() {
        let checks = run(&healthy_host(), Role::Server);
        let c = find(&checks, "routes");
        assert_eq!(c.status, Status::Pass, "{c:?}");
        assert_eq!(
            c.reason,
            "no route or address of the host overlaps cluster-cidr 10.42.0.0/16, service-cidr 10.43.0.0/16"
        );
    }

    #[test]
    fn overlapping_route_fails_naming_interface_and_network() {
        // A VPN pushing 10.0.0.0/8 through tun0.
        let sys = healthy_host().file(
            "/proc/net/route",
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             eth0\t00000000\t0138A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
             tun0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n",
        );
        let checks = run(&sys, Role::Server);
        let c = find(&checks, "routes");
        assert_eq!(c.status, Status::Fail);
        assert!(c.reason.contains("tun0 has 10.0.0.0/8, which overlaps cluster-cidr 10.42.0.0/16"), "{c:?}");
        assert!(c.reason.contains("tun0 has 10.0.0.0/8, which overlaps service-cidr 10.43.0.0/16"), "{c:?}");
    }

    #[test]
    fn overlapping_address_fails_unless_it_is_k3s_own() {
        let sys = healthy_host().interface("docker0", "10.43.5.1", 24);
        let c = run(&sys, Role::Server);
        let c = find(&c, "routes");
        assert_eq!(c.status, Status::Fail);
        assert!(c.reason.starts_with("docker0 has 10.43.5.0/24, which overlaps service-cidr 10.43.0.0/16"), "{c:?}");

        // Re-run on a k3s node: cni0 and flannel.1 live inside the cluster CIDR.
        let k3s = with_k3s(healthy_host(), "k3s version v1.31.4+k3s1 (a1b2c3d4)")
            .interface("cni0", "10.42.0.1", 24)
            .interface("flannel.1", "10.42.0.0", 32);
        assert_eq!(find(&run(&k3s, Role::Server), "routes").status, Status::Pass);
    }

    #[test]
    fn ipv6_routes_and_dual_stack_cidrs() {
        let routes = parse_ipv6_routes(
            "fd000056000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
             fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n",
        );
        assert_eq!(routes, vec![HostNet { iface: "eth0".into(), net: "fd00:56::/64".parse().unwrap() }]);
        let mut req = request(Role::Server);
        req.cluster_cidr = "10.42.0.0/16, fd00:56::/56".into();
        let checks = super::checks(&host(&healthy_host()), &req);
        let c = find(&checks, "routes");
        assert_eq!(c.status, Status::Fail);
        assert!(c.reason.contains("eth0 has fd00:56::/64, which overlaps cluster-cidr fd00:56::/56"), "{c:?}");
        req.cluster_cidr = "not-a-cidr".into();
        assert_eq!(find(&super::checks(&host(&healthy_host()), &req), "routes").status, Status::Fail);
    }
}
