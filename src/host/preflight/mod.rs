//! Preflight checks run on the host (`k3node host preflight`).
//!
//! [`run`] applies the safe fixes first when asked (so that the report describes the host as it
//! is afterwards), then runs every check. Each check reports what it found with concrete values
//! and, unless it passed, the exact action that fixes it. A file that cannot be read is a check
//! result, never a panic: hosts are too varied (containers, minimal kernels) to assume anything.
//!
//! Checks are grouped by theme: `platform` (privileges, OS, arch, kernel), `resources` (CPU,
//! memory, disk, swap), `kernel` (cgroups, modules, sysctls, keys), `network` (ports, routes),
//! `software` (commands, conflicting runtimes, installed k3s) and `facts` (the host's
//! identity, which the operator compares across hosts).

mod facts;
mod fix;
mod kernel;
mod network;
mod platform;
mod resources;
mod software;
#[cfg(test)]
pub(crate) mod testutil;

use std::io;
use std::path::Path;

use crate::host::error::HostError;
use crate::host::serve::{Context, HostOperation};
use crate::host::system::{HostSystem, Uname};
use crate::protocol::preflight::{Check, PreflightReport, PreflightRequest, Status};

pub use crate::host::k3s::layout::{K3S_BIN, RANCHER_DIR};
/// Where `--fix` persists the kernel modules it loaded.
pub const MODULES_LOAD_FILE: &str = "/etc/modules-load.d/k3node.conf";
/// Where `--fix` persists the sysctls it set.
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/90-k3node.conf";

impl HostOperation for PreflightRequest {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<PreflightReport, HostError> {
        if self.fix {
            ctx.progress("applying safe fixes (modules, sysctls)");
        }
        Ok(run(ctx.sys, &self))
    }
}

/// Runs the preflight on this host: the safe fixes first when `req.fix`, then every check.
pub fn run(sys: &dyn HostSystem, req: &PreflightRequest) -> PreflightReport {
    let host = Host::new(sys);
    let fixes = if req.fix { fix::apply(&host) } else { fix::FixOutcome::default() };

    let mut checks = Vec::new();
    checks.extend(platform::checks(&host));
    checks.extend(resources::checks(&host, req.role));
    checks.extend(kernel::checks(&host));
    checks.extend(network::checks(&host, req));
    checks.extend(software::checks(&host, req));
    checks.extend(facts::checks(&host));
    fixes.annotate(&mut checks);

    let worst = checks.iter().map(|c| c.status).max().unwrap_or(Status::Pass);
    tracing::debug!(checks = checks.len(), ?worst, fixes = fixes.applied.len(), "preflight done");
    PreflightReport { facts: facts::gather(&host), checks, fixes_applied: fixes.applied }
}

/// What most checks need, read once per run.
pub(crate) struct Host<'a> {
    pub sys: &'a dyn HostSystem,
    pub uname: Uname,
    /// True when /usr/local/bin/k3s exists: ports and routes held by k3s itself are then expected.
    pub k3s_installed: bool,
}

impl<'a> Host<'a> {
    pub fn new(sys: &'a dyn HostSystem) -> Self {
        Host { sys, uname: sys.uname(), k3s_installed: sys.exists(Path::new(K3S_BIN)) }
    }

    pub fn read(&self, path: &str) -> io::Result<String> {
        self.sys.read_to_string(Path::new(path))
    }

    pub fn exists(&self, path: &str) -> bool {
        self.sys.exists(Path::new(path))
    }
}

pub(crate) fn pass(id: impl Into<String>, reason: impl Into<String>) -> Check {
    Check { id: id.into(), status: Status::Pass, reason: reason.into(), fix: None }
}

pub(crate) fn warn(id: impl Into<String>, reason: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { id: id.into(), status: Status::Warn, reason: reason.into(), fix: Some(fix.into()) }
}

pub(crate) fn fail(id: impl Into<String>, reason: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { id: id.into(), status: Status::Fail, reason: reason.into(), fix: Some(fix.into()) }
}

pub(crate) const MIB: u64 = 1024 * 1024;
pub(crate) const GIB: u64 = 1024 * MIB;

/// Sizes in reasons: whole MiB below 10 GiB (where the minimums live), GiB with one decimal above.
pub(crate) fn human_bytes(bytes: u64) -> String {
    if bytes < 10 * GIB {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    }
}

pub(crate) use super::describe_io;

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::host::system::RealSystem;
    use crate::protocol::preflight::Role;
    use std::collections::BTreeSet;

    #[test]
    fn healthy_server_passes_every_check() {
        let sys = healthy_host();
        let report = run(&sys, &request(Role::Server));
        let not_passing: Vec<_> = report.checks.iter().filter(|c| c.status != Status::Pass).collect();
        assert!(not_passing.is_empty(), "{not_passing:#?}");
        assert!(report.checks.iter().all(|c| c.fix.is_none()));
        assert!(report.fixes_applied.is_empty());
        assert!(sys.writes().is_empty());
    }

    #[test]
    fn check_ids_are_unique_and_stable_for_both_roles() {
        for role in [Role::Server, Role::Agent] {
            let report = run(&healthy_host(), &request(role));
            let ids: Vec<&str> = report.checks.iter().map(|c| c.id.as_str()).collect();
            let unique: BTreeSet<&str> = ids.iter().copied().collect();
            assert_eq!(unique.len(), ids.len(), "{ids:?}");
            for id in [
                "privileges",
                "os",
                "arch",
                "kernel",
                "cpu",
                "memory",
                "disk",
                "swap",
                "cgroup-memory",
                "module-overlay",
                "module-br_netfilter",
                "sysctl-net.ipv4.ip_forward",
                "sysctl-net.bridge.bridge-nf-call-iptables",
                "kernel-keys",
                "ports",
                "routes",
                "command-mount",
                "command-umount",
                "command-nsenter",
                "command-modprobe",
                "command-ip",
                "command-iptables",
                "conflicting-runtimes",
                "k3s-installed",
                "hostname",
                "machine-id",
            ] {
                assert!(unique.contains(id), "{role:?}: missing {id} in {ids:?}");
            }
        }
    }

    #[test]
    fn facts_come_from_the_host() {
        let report = run(&healthy_host(), &request(Role::Agent));
        assert_eq!(report.facts.hostname, "node1");
        assert_eq!(report.facts.machine_id, "4c4c4544004d3510804bb4c04f4b4e32");
        assert_eq!(report.facts.addresses, vec!["192.168.56.10".to_string(), "fd00:56::10".to_string()]);
        assert_eq!(report.facts.clock_unix_ms, 1_700_000_000_000);
    }

    #[test]
    fn report_serializes_as_the_protocol_says() {
        let report = run(&healthy_host().euid(1000), &request(Role::Server));
        let json = serde_json::to_value(&report).unwrap();
        let privileges = &json["checks"][0];
        assert_eq!(privileges["id"], "privileges");
        assert_eq!(privileges["status"], "fail");
        assert!(privileges["fix"].is_string());
        assert!(json["checks"][1].get("fix").is_none(), "pass checks carry no fix");
    }

    #[test]
    fn human_bytes_switches_units_at_ten_gib() {
        assert_eq!(human_bytes(512 * MIB), "512 MiB");
        assert_eq!(human_bytes(2 * GIB), "2048 MiB");
        assert_eq!(human_bytes(79 * GIB + GIB / 2), "79.5 GiB");
    }

    /// The real host this test runs on: the report must be complete and must not panic whatever
    /// the machine lacks (here: no /proc/modules, cgroup v1, foreign /proc/<pid>/fd unreadable).
    #[test]
    fn runs_on_this_machine() {
        let before = RealSystem::host().now_unix_ms();
        let report = run(&RealSystem::host(), &request(Role::Server));
        assert!(!report.facts.hostname.is_empty());
        assert!((report.facts.clock_unix_ms - before).abs() < 60_000);
        assert!(report.fixes_applied.is_empty());
        let ids: Vec<&str> = report.checks.iter().map(|c| c.id.as_str()).collect();
        let unique: BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
        for check in &report.checks {
            assert!(!check.reason.is_empty(), "{check:?}");
            assert_eq!(check.fix.is_none(), check.status == Status::Pass, "{check:?}");
        }
        // Kernels without loadable modules (this one) have overlay and br_netfilter built in.
        for id in ["module-overlay", "module-br_netfilter"] {
            let check = report.checks.iter().find(|c| c.id == id).unwrap();
            if !Path::new("/proc/modules").exists() && Path::new("/proc/sys/net/bridge").exists() {
                assert_eq!(check.status, Status::Pass, "{check:?}");
            }
        }
    }
}
