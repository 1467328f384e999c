//! Who and what the agent runs on: privileges, OS, architecture, kernel version.

use super::{describe_io, fail, pass, warn, Host};
use crate::protocol::debian_arch;
use crate::protocol::preflight::Check;

/// Oldest kernel k3s runs on at all.
const KERNEL_MIN: (u32, u32) = (3, 10);
/// Oldest kernel without known gaps for current k3s: older ones get a warning.
const KERNEL_RECOMMENDED: (u32, u32) = (4, 15);

pub(super) fn checks(host: &Host) -> Vec<Check> {
    vec![privileges(host), os(host), arch(host), kernel(host)]
}

fn privileges(host: &Host) -> Check {
    match host.sys.effective_uid() {
        0 => pass("privileges", "running as root (euid 0)"),
        uid => fail(
            "privileges",
            format!("running as uid {uid}: installing k3s, loading modules and setting sysctls need root"),
            "run as root, or let k3node use sudo (give the SSH user passwordless sudo)",
        ),
    }
}

fn os(host: &Host) -> Check {
    let sysname = &host.uname.sysname;
    if sysname != "Linux" {
        return fail("os", format!("operating system is {:?}, k3s runs only on Linux", sysname), "use a Linux host");
    }
    // os-release(5): /etc first, /usr/lib as the vendor fallback.
    let release = host.read("/etc/os-release").or_else(|_| host.read("/usr/lib/os-release"));
    match release {
        Ok(text) => match os_release_field(&text, "PRETTY_NAME").or_else(|| os_release_field(&text, "NAME")) {
            Some(name) => pass("os", format!("{name} (Linux)")),
            None => pass("os", "Linux (os-release names no distribution)"),
        },
        Err(e) => warn(
            "os",
            format!("Linux, but /etc/os-release: {}; the distribution cannot be told", describe_io(&e)),
            "install the distribution's os-release file (base-files / systemd package) so the host can be identified",
        ),
    }
}

/// A value from an os-release file, unquoted as the format allows ("...", '...' or bare).
pub(super) fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.trim().split_once('=')?;
        if k != key {
            return None;
        }
        let v = v.trim();
        let unquoted = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
            .unwrap_or(v);
        let value = unquoted.replace("\\\"", "\"").replace("\\\\", "\\");
        (!value.is_empty()).then_some(value)
    })
}

fn arch(host: &Host) -> Check {
    let machine = &host.uname.machine;
    match debian_arch(machine) {
        Some(arch) => pass("arch", format!("{machine} (k3s release architecture {arch})")),
        None => fail(
            "arch",
            format!(
                "machine architecture {:?} has no k3s release (k3s ships amd64, arm64, armhf (ARMv7) and s390x)",
                machine
            ),
            "use an x86_64, aarch64, ARMv7 or s390x host",
        ),
    }
}

/// Major and minor of a kernel release such as `6.1.0-28-amd64` or `5.15.0-1034-raspi`.
pub(super) fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn kernel(host: &Host) -> Check {
    let release = &host.uname.release;
    let Some(version) = kernel_version(release) else {
        return warn(
            "kernel",
            format!("kernel release {:?} cannot be parsed; k3s needs 3.10 or newer and is tested on 4.15+", release),
            "check `uname -r`; use a kernel 4.15 or newer",
        );
    };
    if version < KERNEL_MIN {
        fail(
            "kernel",
            format!("kernel {release} is older than 3.10, the oldest k3s (containerd, runc) runs on"),
            "upgrade to a kernel 4.15 or newer (the distribution's current kernel package)",
        )
    } else if version < KERNEL_RECOMMENDED {
        warn(
            "kernel",
            format!(
                "kernel {release} is older than 4.15: k3s starts, but flannel's VXLAN offloads, cgroup \
                 features the kubelet expects (pids, memory accounting) and overlayfs are buggy or missing there"
            ),
            "upgrade to a kernel 4.15 or newer (the distribution's current kernel package)",
        )
    } else {
        pass("kernel", format!("kernel {release}"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::protocol::preflight::Status;

    fn run(sys: &crate::host::system::fake::FakeSystem) -> Vec<Check> {
        checks(&host(sys))
    }

    #[test]
    fn healthy_platform_passes_with_concrete_values() {
        let checks = run(&healthy_host());
        assert_eq!(find(&checks, "privileges").reason, "running as root (euid 0)");
        assert_eq!(find(&checks, "os").reason, "Debian GNU/Linux 12 (bookworm) (Linux)");
        assert_eq!(find(&checks, "arch").reason, "x86_64 (k3s release architecture amd64)");
        assert_eq!(find(&checks, "kernel").reason, "kernel 6.1.0-28-amd64");
        assert!(checks.iter().all(|c| c.status == Status::Pass));
    }

    #[test]
    fn non_root_fails() {
        let checks = run(&healthy_host().euid(1000));
        let c = find(&checks, "privileges");
        assert_eq!(c.status, Status::Fail);
        assert!(c.reason.contains("uid 1000"), "{c:?}");
        assert!(c.fix.as_deref().unwrap().contains("sudo"));
    }

    #[test]
    fn arch_mapping() {
        for (machine, arch) in [("x86_64", "amd64"), ("aarch64", "arm64"), ("armv7l", "armhf"), ("s390x", "s390x")] {
            let checks = run(&healthy_host().uname("Linux", "n", "6.1.0", machine));
            let c = find(&checks, "arch");
            assert_eq!(c.status, Status::Pass);
            assert!(c.reason.ends_with(&format!("architecture {arch})")), "{c:?}");
        }
        for machine in ["riscv64", "i686", "armv6l", "ppc64le"] {
            let checks = run(&healthy_host().uname("Linux", "n", "6.1.0", machine));
            let c = find(&checks, "arch");
            assert_eq!(c.status, Status::Fail, "{machine}");
            assert!(c.reason.contains(machine));
        }
    }

    #[test]
    fn kernel_thresholds() {
        let status = |release: &str| {
            let checks = run(&healthy_host().uname("Linux", "n", release, "x86_64"));
            find(&checks, "kernel").clone()
        };
        assert_eq!(status("3.2.0-4-amd64").status, Status::Fail);
        let old = status("4.4.0-210-generic");
        assert_eq!(old.status, Status::Warn);
        assert!(old.reason.contains("4.4.0-210-generic") && old.reason.contains("flannel"), "{old:?}");
        assert_eq!(status("3.10.0-1160.el7.x86_64").status, Status::Warn);
        assert_eq!(status("4.15.0-1").status, Status::Pass);
        assert_eq!(status("6.18.44-fc-v595").status, Status::Pass);
        assert_eq!(status("weird").status, Status::Warn);
    }

    #[test]
    fn os_release_variants() {
        assert_eq!(
            os_release_field("PRETTY_NAME='Alpine Linux v3.20'\n", "PRETTY_NAME").unwrap(),
            "Alpine Linux v3.20"
        );
        assert_eq!(os_release_field("PRETTY_NAME=Fedora\n", "PRETTY_NAME").unwrap(), "Fedora");
        assert!(os_release_field("NAME=x\n", "PRETTY_NAME").is_none());

        let checks = run(&healthy_host().remove("/etc/os-release"));
        assert_eq!(find(&checks, "os").status, Status::Warn);
        let checks = run(&healthy_host().uname("FreeBSD", "n", "14.1-RELEASE", "amd64"));
        assert_eq!(find(&checks, "os").status, Status::Fail);
    }
}
