//! The lab network: netns `k3nlab` with bridge br0 (the gateway), and per host a netns with a veth
//! whose other end is a port of br0. Nothing is connected to the machine's own network namespace.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

use super::cmd::ip;

/// Name of the netns the bridge lives in and the code under test runs in.
pub const LAB_NETNS: &str = "k3nlab";
/// Prefix of every netns (and nspawn machine name) the lab makes.
pub const NETNS_PREFIX: &str = "k3nlab";
pub const BRIDGE: &str = "br0";
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 77, 1);
pub const PREFIX_LEN: u8 = 24;
/// Host i (0-based) gets 172.30.77.(11 + i).
pub const FIRST_HOST_OCTET: u8 = 11;
pub const MAX_HOSTS: usize = 100;
/// Interface name inside every host.
pub const HOST_IFACE: &str = "eth0";

pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

pub fn host_netns(host: &str) -> String {
    format!("{NETNS_PREFIX}-{host}")
}

pub fn host_address(index: usize) -> Ipv4Addr {
    assert!(index < MAX_HOSTS, "at most {MAX_HOSTS} lab hosts");
    Ipv4Addr::new(172, 30, 77, FIRST_HOST_OCTET + index as u8)
}

/// Opens /run/netns/NAME (close-on-exec) for setns.
pub fn open_netns(name: &str) -> Result<File> {
    let path = netns_path(name);
    File::open(&path).with_context(|| format!("cannot open network namespace {}", path.display()))
}

/// Moves the calling thread (only this thread) into netns `name`.
pub fn enter_netns(name: &str) -> Result<()> {
    let file = open_netns(name)?;
    setns(file.as_fd(), CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into network namespace {name}"))?;
    Ok(())
}

/// Creates the lab netns with its bridge and gateway address.
pub fn create_lab_netns() -> Result<()> {
    ip(&["netns", "add", LAB_NETNS])?;
    ip(&["-n", LAB_NETNS, "link", "set", "lo", "up"])?;
    ip(&["-n", LAB_NETNS, "link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["-n", LAB_NETNS, "addr", "add", &format!("{GATEWAY}/{PREFIX_LEN}"), "dev", BRIDGE])?;
    ip(&["-n", LAB_NETNS, "link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// Creates host `index`'s netns with `eth0` (its address, default route via the gateway; the
/// gateway netns does not forward and has no uplink, so nothing leaves the lab) plugged into br0.
pub fn create_host_netns(index: usize, netns: &str, address: Ipv4Addr) -> Result<()> {
    let port = format!("k3nv{index}");
    ip(&["netns", "add", netns])?;
    ip(&["-n", netns, "link", "set", "lo", "up"])?;
    ip(&["link", "add", &port, "netns", LAB_NETNS, "type", "veth", "peer", "name", HOST_IFACE, "netns", netns])?;
    ip(&["-n", LAB_NETNS, "link", "set", &port, "master", BRIDGE, "up"])?;
    ip(&["-n", netns, "addr", "add", &format!("{address}/{PREFIX_LEN}"), "dev", HOST_IFACE])?;
    set_host_link(netns, true)
}

/// Brings the host's eth0 down (cut off) or up again (with its default route, which the kernel
/// drops when the link goes down).
pub fn set_host_link(netns: &str, up: bool) -> Result<()> {
    ip(&["-n", netns, "link", "set", HOST_IFACE, if up { "up" } else { "down" }])?;
    if up {
        ip(&["-n", netns, "route", "replace", "default", "via", &GATEWAY.to_string(), "dev", HOST_IFACE])?;
    }
    Ok(())
}

/// One TCP connect attempt (the calling thread must already be in the lab netns).
pub fn tcp_open(address: Ipv4Addr, port: u16, timeout: Duration) -> std::io::Result<()> {
    TcpStream::connect_timeout(&SocketAddr::from((address, port)), timeout).map(drop)
}

/// Waits (bounded) until `address:port` accepts TCP connections, probing from a thread in the lab netns.
pub fn wait_tcp(address: Ipv4Addr, port: u16, within: Duration) -> Result<()> {
    std::thread::spawn(move || -> Result<()> {
        enter_netns(LAB_NETNS)?;
        let deadline = Instant::now() + within;
        loop {
            let err = match tcp_open(address, port, Duration::from_millis(500)) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!("{address}:{port} still not reachable after {within:?}: {err}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Names of all existing network namespaces (`ip netns list`).
pub fn list_netns() -> Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect())
}
