//! What k3s's agent does to the host at every start (contract section 5; k3s pkg/agent/syssetup):
//! loads the kernel modules it needs with `modprobe` and turns on the sysctls it needs, logging
//! as k3s does. Nothing here is fatal: a module that cannot be loaded is a warning, a sysctl that
//! cannot be set (a read-only /proc/sys in a container) is logged and k3s carries on.

use crate::{error, info, warn};

pub const MODULES: &[&str] = &["overlay", "nf_conntrack", "br_netfilter", "iptable_nat", "iptable_filter"];

/// (path under /proc/sys, value).
pub const SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/conf/all/forwarding", "1"),
    ("net/ipv4/conf/default/forwarding", "1"),
    ("net/bridge/bridge-nf-call-iptables", "1"),
];

fn load_module(name: &str) {
    if std::path::Path::new("/sys/module").join(name).exists() {
        info!("Module {name} was already loaded");
        return;
    }
    // `modprobe` from PATH, as k3s runs it.
    let ok = std::process::Command::new("modprobe")
        .arg("--")
        .arg(name)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        warn!("Failed to load kernel module {name} with modprobe");
    }
}

fn set_sysctl(entry: &str, value: &str) {
    let path = std::path::Path::new("/proc/sys").join(entry);
    let current = std::fs::read_to_string(&path).map(|v| v.trim().to_string()).unwrap_or_default();
    if current == value {
        return;
    }
    info!("Set sysctl '{entry}' to {value}");
    if let Err(e) = std::fs::write(&path, value) {
        // Go's error text, as k3s logs it.
        let why = match e.raw_os_error() {
            Some(nix::libc::EROFS) => "read-only file system".to_string(),
            Some(nix::libc::ENOENT) => "no such file or directory".to_string(),
            Some(nix::libc::EACCES) => "permission denied".to_string(),
            _ => e.to_string(),
        };
        error!("Failed to set sysctl: open {}: {why}", path.display());
    }
}

/// Modules first (br_netfilter creates the bridge sysctls), then the sysctls. Skipped when
/// `$K3S_STANDIN_NO_SYSSETUP` is set (test knob: tests that run the stand-in directly on a shared
/// machine must not change its kernel settings).
pub fn configure() {
    if std::env::var_os("K3S_STANDIN_NO_SYSSETUP").is_some() {
        info!("K3S_STANDIN_NO_SYSSETUP is set: not loading kernel modules nor setting sysctls");
        return;
    }
    for m in MODULES {
        load_module(m);
    }
    for (entry, value) in SYSCTLS {
        set_sysctl(entry, value);
    }
}
