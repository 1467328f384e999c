//! A healthy Debian 12 host as the fake sees it, with the /proc contents of a real one; each test
//! changes only what its case is about.

use super::Host;
use crate::host::system::fake::FakeSystem;
use crate::protocol::preflight::{Check, PreflightRequest, Role};

pub const TCP_HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     \n";
pub const TCP6_HEADER: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
pub const UDP_HEADER: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops            \n";

/// sshd listening on 0.0.0.0:22 (inode 15620), plus an established SSH session (not a listener).
pub const SSHD_TCP: &str = "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 15620 1 0000000000000000 100 0 0 10 0                     \n   1: 0A38A8C0:0016 0138A8C0:D4C2 01 00000000:00000000 02:0009A3C6 00000000     0        0 22817 4 0000000000000000 20 4 31 10 -1                    \n";
pub const SSHD_TCP6: &str = "   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 15631 1 0000000000000000 100 0 0 10 0\n";
/// dhclient bound to 0.0.0.0:68.
pub const DHCP_UDP: &str = "  283: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 14830 2 0000000000000000 0         \n";

pub fn healthy_host() -> FakeSystem {
    FakeSystem::new()
        .uname("Linux", "node1", "6.1.0-28-amd64", "x86_64")
        .euid(0)
        .now(1_700_000_000_000)
        .file(
            "/etc/os-release",
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
        )
        .file("/etc/machine-id", "4c4c4544004d3510804bb4c04f4b4e32\n")
        .file("/sys/devices/system/cpu/online", "0-3\n")
        .file("/proc/meminfo", "MemTotal:        8148940 kB\nMemFree:         6619432 kB\nMemAvailable:    7553268 kB\n")
        .dir("/var/lib")
        .disk("/var/lib", 50 * super::GIB, 100 * super::GIB)
        .file("/proc/swaps", "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n")
        .file("/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n")
        .file(
            "/proc/modules",
            "br_netfilter 32768 0 - Live 0x0000000000000000\nbridge 311296 1 br_netfilter, Live 0x0000000000000000\noverlay 163840 0 - Live 0x0000000000000000\next4 1044480 1 - Live 0x0000000000000000\n",
        )
        .file("/proc/filesystems", "nodev\tsysfs\nnodev\ttmpfs\nnodev\tproc\n\text4\nnodev\toverlay\n")
        .file("/proc/sys/net/ipv4/ip_forward", "1\n")
        .file("/proc/sys/net/bridge/bridge-nf-call-iptables", "1\n")
        .file("/proc/sys/kernel/keys/root_maxkeys", "1000000\n")
        .file("/proc/net/tcp", &format!("{TCP_HEADER}{SSHD_TCP}"))
        .file("/proc/net/tcp6", &format!("{TCP6_HEADER}{SSHD_TCP6}"))
        .file("/proc/net/udp", &format!("{UDP_HEADER}{DHCP_UDP}"))
        .file("/proc/net/udp6", UDP_HEADER)
        .file(
            "/proc/net/route",
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             eth0\t00000000\t0138A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
             eth0\t0038A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
        )
        .file(
            "/proc/net/ipv6_route",
            "fd000056000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
             fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
             00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo\n",
        )
        .interface("lo", "127.0.0.1", 8)
        .interface("eth0", "192.168.56.10", 24)
        .interface("lo", "::1", 128)
        .interface("eth0", "fd00:56::10", 64)
        .interface("eth0", "fe80::a00:27ff:fe4e:66a1", 64)
        .file("/proc/1/comm", "systemd\n")
        .link("/proc/1/fd/0", "/dev/null")
        .file("/proc/612/comm", "sshd\n")
        .link("/proc/612/fd/3", "socket:[15620]")
        .link("/proc/612/fd/4", "socket:[15631]")
        .command("mount", "/usr/bin/mount")
        .command("umount", "/usr/bin/umount")
        .command("nsenter", "/usr/bin/nsenter")
        .command("modprobe", "/usr/sbin/modprobe")
        .command("ip", "/usr/sbin/ip")
        .command("iptables", "/usr/sbin/iptables")
        .output("/usr/sbin/iptables", &["--version"], 0, "iptables v1.8.9 (nf_tables)\n", "")
}

/// The same host with k3s v1.31.4+k3s1 installed as a server.
pub fn with_k3s(sys: FakeSystem, version_line: &str) -> FakeSystem {
    sys.file(super::K3S_BIN, "")
        .file("/etc/systemd/system/k3s.service", "[Unit]\nDescription=Lightweight Kubernetes\n")
        .output(super::K3S_BIN, &["--version"], 0, &format!("{version_line}\ngo version go1.22.9\n"), "")
}

pub fn request(role: Role) -> PreflightRequest {
    PreflightRequest {
        role,
        k3s_version: Some("v1.31.4+k3s1".into()),
        cluster_cidr: "10.42.0.0/16".into(),
        service_cidr: "10.43.0.0/16".into(),
        fix: false,
        hub_port: crate::daemon::settings::DEFAULT_HUB_PORT,
    }
}

pub fn find<'a>(checks: &'a [Check], id: &str) -> &'a Check {
    checks.iter().find(|c| c.id == id).unwrap_or_else(|| panic!("no check {id} in {checks:#?}"))
}

pub fn host(sys: &FakeSystem) -> Host<'_> {
    Host::new(sys)
}
