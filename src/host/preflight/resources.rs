//! CPU, memory, disk and swap, against k3s's documented minimums.

use std::path::Path;

use super::{describe_io, fail, human_bytes, pass, warn, Host, GIB, MIB, RANCHER_DIR};
use crate::protocol::preflight::{Check, Role};

/// k3s's documented minimums: a server needs 2 CPUs and 2 GiB, an agent 1 CPU and 512 MiB.
fn min_cpus(role: Role) -> u32 {
    match role {
        Role::Server => 2,
        Role::Agent => 1,
    }
}

fn min_memory_mib(role: Role) -> u64 {
    match role {
        Role::Server => 2048,
        Role::Agent => 512,
    }
}

/// MemTotal excludes what the kernel and firmware reserve (crashkernel, GPU memory on a Pi), so a
/// "2 GiB" VM shows about 1950 MiB: accept up to 5 % less than the nominal minimum.
const MEMORY_SLACK_PERCENT: u64 = 5;

const DISK_FAIL_BYTES: u64 = 2 * GIB;
const DISK_WARN_BYTES: u64 = 10 * GIB;

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Server => "server",
        Role::Agent => "agent",
    }
}

pub(super) fn checks(host: &Host, role: Role) -> Vec<Check> {
    vec![cpu(host, role), memory(host, role), disk(host), swap(host)]
}

/// Counts the CPUs of a kernel CPU list such as `0-3,6,8-9`.
pub(super) fn count_cpu_list(list: &str) -> Option<u32> {
    let mut count = 0u32;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                count = count.checked_add(b.checked_sub(a)?.checked_add(1)?)?;
            }
            None => {
                part.trim().parse::<u32>().ok()?;
                count = count.checked_add(1)?;
            }
        }
    }
    (count > 0).then_some(count)
}

fn online_cpus(host: &Host) -> Option<(u32, &'static str)> {
    if let Some(n) = host.read("/sys/devices/system/cpu/online").ok().as_deref().and_then(count_cpu_list) {
        return Some((n, "/sys/devices/system/cpu/online"));
    }
    let cpuinfo = host.read("/proc/cpuinfo").ok()?;
    let n = cpuinfo.lines().filter(|l| l.starts_with("processor")).count() as u32;
    (n > 0).then_some((n, "/proc/cpuinfo"))
}

fn cpu(host: &Host, role: Role) -> Check {
    let min = min_cpus(role);
    match online_cpus(host) {
        Some((n, _)) if n >= min => pass("cpu", format!("{n} CPUs online (k3s {} minimum: {min})", role_name(role))),
        Some((n, _)) => fail(
            "cpu",
            format!("{n} CPU online, below the k3s {} minimum of {min}", role_name(role)),
            format!("give the host at least {min} CPUs"),
        ),
        None => warn(
            "cpu",
            "cannot count CPUs: neither /sys/devices/system/cpu/online nor /proc/cpuinfo is readable",
            format!("check that /sys and /proc are mounted; k3s needs at least {min} CPUs here"),
        ),
    }
}

/// MemTotal from /proc/meminfo, in bytes.
pub(super) fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut fields = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") | None => value.checked_mul(1024),
        Some(_) => None,
    }
}

fn memory(host: &Host, role: Role) -> Check {
    let min_mib = min_memory_mib(role);
    let meminfo = match host.read("/proc/meminfo") {
        Ok(text) => text,
        Err(e) => {
            return warn(
                "memory",
                format!("cannot read /proc/meminfo: {}", describe_io(&e)),
                format!("check that /proc is mounted; k3s needs {min_mib} MiB here"),
            )
        }
    };
    let Some(total) = mem_total_bytes(&meminfo) else {
        return warn(
            "memory",
            "/proc/meminfo has no MemTotal line",
            format!("check the kernel's /proc/meminfo; k3s needs {min_mib} MiB here"),
        );
    };
    let total_mib = total / MIB;
    let threshold_mib = min_mib * (100 - MEMORY_SLACK_PERCENT) / 100;
    if total_mib >= threshold_mib {
        pass("memory", format!("{total_mib} MiB total (k3s {} minimum: {min_mib} MiB)", role_name(role)))
    } else {
        fail(
            "memory",
            format!("{total_mib} MiB total, below the k3s {} minimum of {min_mib} MiB", role_name(role)),
            format!("give the host at least {min_mib} MiB of memory"),
        )
    }
}

/// The path itself when it exists, else its nearest existing ancestor: before the first install
/// /var/lib/rancher does not exist yet, and its space is that of the filesystem it will live on.
fn nearest_existing<'p>(host: &Host, path: &'p Path) -> Option<&'p Path> {
    path.ancestors().find(|p| !p.as_os_str().is_empty() && host.sys.exists(p))
}

fn disk(host: &Host) -> Check {
    let target = Path::new(RANCHER_DIR);
    let Some(measured) = nearest_existing(host, target) else {
        return warn("disk", format!("no existing directory above {RANCHER_DIR}"), "check the host's filesystems");
    };
    let at = if measured == target {
        String::new()
    } else {
        format!(" (measured at {}, as {RANCHER_DIR} does not exist yet)", measured.display())
    };
    let space = match host.sys.disk_space(measured) {
        Ok(space) => space,
        Err(e) => {
            return warn(
                "disk",
                format!("cannot measure free space on {}: {}", measured.display(), describe_io(&e)),
                format!("make sure at least {} are free under {RANCHER_DIR}", human_bytes(DISK_WARN_BYTES)),
            )
        }
    };
    let found = format!(
        "{} available of {} for {RANCHER_DIR}{at}",
        human_bytes(space.available_bytes),
        human_bytes(space.total_bytes)
    );
    let fix = format!(
        "free space under {RANCHER_DIR}, or mount a larger volume there (k3s keeps images, containers and its datastore in it)"
    );
    if space.available_bytes < DISK_FAIL_BYTES {
        fail("disk", format!("{found}: less than the {} k3s needs to start", human_bytes(DISK_FAIL_BYTES)), fix)
    } else if space.available_bytes < DISK_WARN_BYTES {
        warn(
            "disk",
            format!(
                "{found}: less than {}, which a few images fill; the kubelet starts evicting pods at 85 % use",
                human_bytes(DISK_WARN_BYTES)
            ),
            fix,
        )
    } else {
        pass("disk", found)
    }
}

/// Active swap areas from /proc/swaps: (name, size in bytes).
pub(super) fn swap_entries(swaps: &str) -> Vec<(String, u64)> {
    swaps
        .lines()
        .skip(1) // header: Filename Type Size Used Priority
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            let _kind = fields.next()?;
            let size_kib: u64 = fields.next()?.parse().ok()?;
            Some((name.to_string(), size_kib.saturating_mul(1024)))
        })
        .collect()
}

fn swap(host: &Host) -> Check {
    let swaps = match host.read("/proc/swaps") {
        Ok(text) => text,
        // A kernel built without CONFIG_SWAP has no /proc/swaps, and no swap.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return pass("swap", "no swap (kernel without swap support)")
        }
        Err(e) => {
            return warn(
                "swap",
                format!("cannot read /proc/swaps: {}", describe_io(&e)),
                "check with `swapon --show` that swap is off",
            )
        }
    };
    let entries = swap_entries(&swaps);
    if entries.is_empty() {
        return pass("swap", "swap is off");
    }
    let list: Vec<String> = entries.iter().map(|(name, size)| format!("{name} ({})", human_bytes(*size))).collect();
    warn(
        "swap",
        format!(
            "swap is on: {}; the kubelet's memory limits and evictions assume no swap, pods get slow instead of restarted",
            list.join(", ")
        ),
        "swapoff -a and remove swap entries from /etc/fstab",
    )
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::host::system::fake::FakeSystem;
    use crate::protocol::preflight::Status;

    fn run(sys: &FakeSystem, role: Role) -> Vec<Check> {
        checks(&host(sys), role)
    }

    #[test]
    fn healthy_resources_pass_with_figures() {
        let checks = run(&healthy_host(), Role::Server);
        assert_eq!(find(&checks, "cpu").reason, "4 CPUs online (k3s server minimum: 2)");
        assert_eq!(find(&checks, "memory").reason, "7957 MiB total (k3s server minimum: 2048 MiB)");
        assert_eq!(
            find(&checks, "disk").reason,
            "50.0 GiB available of 100.0 GiB for /var/lib/rancher (measured at /var/lib, as /var/lib/rancher does not exist yet)"
        );
        assert_eq!(find(&checks, "swap").reason, "swap is off");
        assert!(checks.iter().all(|c| c.status == Status::Pass));
    }

    #[test]
    fn cpu_minimum_depends_on_role() {
        let one = healthy_host().file("/sys/devices/system/cpu/online", "0\n");
        let server = run(&one, Role::Server);
        let c = find(&server, "cpu");
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.reason, "1 CPU online, below the k3s server minimum of 2");
        assert_eq!(find(&run(&one, Role::Agent), "cpu").status, Status::Pass);
    }

    #[test]
    fn cpu_list_and_cpuinfo_fallback() {
        assert_eq!(count_cpu_list("0-3,6,8-9\n"), Some(7));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
        let sys = healthy_host().remove("/sys/devices/system/cpu/online").file(
            "/proc/cpuinfo",
            "processor\t: 0\nvendor_id\t: GenuineIntel\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\n",
        );
        assert_eq!(find(&run(&sys, Role::Server), "cpu").reason, "2 CPUs online (k3s server minimum: 2)");
        let none = healthy_host().remove("/sys/devices/system/cpu/online");
        assert_eq!(find(&run(&none, Role::Server), "cpu").status, Status::Warn);
    }

    #[test]
    fn memory_minimums_with_slack() {
        // A 2 GiB VM: 2013 MiB after the kernel's reservations passes a server.
        let vm_2g = healthy_host().file("/proc/meminfo", "MemTotal:        2061772 kB\nMemFree:  1000 kB\n");
        assert_eq!(find(&run(&vm_2g, Role::Server), "memory").status, Status::Pass);
        // 1 GiB: fine for an agent, not for a server.
        let vm_1g = healthy_host().file("/proc/meminfo", "MemTotal:        1004584 kB\n");
        let c = run(&vm_1g, Role::Server);
        let c = find(&c, "memory");
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.reason, "981 MiB total, below the k3s server minimum of 2048 MiB");
        assert_eq!(c.fix.as_deref(), Some("give the host at least 2048 MiB of memory"));
        assert_eq!(find(&run(&vm_1g, Role::Agent), "memory").status, Status::Pass);
        // 400 MiB fails an agent.
        let tiny = healthy_host().file("/proc/meminfo", "MemTotal:         409600 kB\n");
        assert_eq!(find(&run(&tiny, Role::Agent), "memory").status, Status::Fail);
        // Unreadable or malformed: a warning, not a panic.
        assert_eq!(find(&run(&healthy_host().remove("/proc/meminfo"), Role::Agent), "memory").status, Status::Warn);
        let bad = healthy_host().file("/proc/meminfo", "MemTotal: lots\n");
        assert_eq!(find(&run(&bad, Role::Agent), "memory").status, Status::Warn);
    }

    #[test]
    fn disk_thresholds_and_existing_dir() {
        let low = healthy_host().disk("/var/lib", GIB, 20 * GIB);
        let c = run(&low, Role::Server);
        let c = find(&c, "disk");
        assert_eq!(c.status, Status::Fail);
        assert!(c.reason.starts_with("1024 MiB available of 20.0 GiB"), "{c:?}");
        let tight = healthy_host().disk("/var/lib", 5 * GIB, 20 * GIB);
        assert_eq!(find(&run(&tight, Role::Server), "disk").status, Status::Warn);
        // Once k3s is installed the directory itself is measured.
        let installed = healthy_host().dir("/var/lib/rancher").disk("/var/lib/rancher", 30 * GIB, 40 * GIB);
        assert_eq!(
            find(&run(&installed, Role::Server), "disk").reason,
            "30.0 GiB available of 40.0 GiB for /var/lib/rancher"
        );
    }

    #[test]
    fn swap_on_warns_with_the_swapoff_fix() {
        let sys = healthy_host().file(
            "/proc/swaps",
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/swapfile                               file\t\t2097148\t\t0\t\t-2\n/dev/sda3                               partition\t1046524\t\t0\t\t-3\n",
        );
        let checks = run(&sys, Role::Agent);
        let c = find(&checks, "swap");
        assert_eq!(c.status, Status::Warn);
        assert!(c.reason.starts_with("swap is on: /swapfile (2047 MiB), /dev/sda3 (1021 MiB)"), "{c:?}");
        assert_eq!(c.fix.as_deref(), Some("swapoff -a and remove swap entries from /etc/fstab"));
        // No /proc/swaps at all: kernel without swap.
        assert_eq!(find(&run(&healthy_host().remove("/proc/swaps"), Role::Agent), "swap").status, Status::Pass);
    }
}
