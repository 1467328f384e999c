//! Kernel features k3s relies on: the memory cgroup, the overlay and br_netfilter modules, the
//! forwarding sysctls, and enough kernel keys for containerd.

use std::io;
use std::path::PathBuf;

use super::{describe_io, fail, pass, warn, Host, MODULES_LOAD_FILE, SYSCTL_FILE};
use crate::protocol::preflight::Check;

/// Modules k3s's unit loads at start (`ExecStartPre=-/sbin/modprobe ...`).
pub(super) const MODULES: [&str; 2] = ["overlay", "br_netfilter"];

pub(super) struct Sysctl {
    pub key: &'static str,
    /// The module that creates this tunable, when there is one.
    pub module: Option<&'static str>,
    pub why: &'static str,
}

pub(super) const SYSCTLS: [Sysctl; 2] = [
    Sysctl {
        key: "net.ipv4.ip_forward",
        module: None,
        why: "pod traffic to other nodes and out of the cluster is routed through the host",
    },
    Sysctl {
        key: "net.bridge.bridge-nf-call-iptables",
        module: Some("br_netfilter"),
        why: "Service and network-policy rules only see bridged pod traffic when it is passed to iptables",
    },
];

pub(super) fn checks(host: &Host) -> Vec<Check> {
    let mut checks = vec![cgroup_memory(host)];
    checks.extend(MODULES.iter().map(|m| module(host, m)));
    checks.extend(SYSCTLS.iter().map(|s| sysctl(host, s)));
    checks.push(kernel_keys(host));
    checks
}

// ---- cgroups ----

fn cgroup_memory(host: &Host) -> Check {
    const ID: &str = "cgroup-memory";
    // Pure cgroup v2: the root lists its available controllers.
    if let Ok(controllers) = host.read("/sys/fs/cgroup/cgroup.controllers") {
        if has_word(&controllers, "memory") {
            return pass(ID, "cgroup v2 with the memory controller");
        }
        return fail(
            ID,
            format!(
                "cgroup v2 without the memory controller (controllers: {}){}",
                controllers.trim(),
                cmdline_hint(host)
            ),
            memory_cgroup_fix(),
        );
    }
    // v1 or hybrid (v2 mounted at /sys/fs/cgroup/unified): the memory controller is a v1 one,
    // enabled when /proc/cgroups says so.
    let layout = if host.exists("/sys/fs/cgroup/unified") { "cgroup v1 (hybrid)" } else { "cgroup v1" };
    match host.read("/proc/cgroups") {
        Ok(text) => match v1_controller_enabled(&text, "memory") {
            Some(true) => pass(ID, format!("{layout} with the memory controller enabled")),
            Some(false) => fail(
                ID,
                format!("{layout}: the memory controller is disabled (/proc/cgroups){}", cmdline_hint(host)),
                memory_cgroup_fix(),
            ),
            None => fail(
                ID,
                format!("{layout}: the kernel has no memory controller (/proc/cgroups){}", cmdline_hint(host)),
                "use a kernel built with CONFIG_MEMCG (the distribution's standard kernel)",
            ),
        },
        Err(e) => fail(
            ID,
            format!(
                "no cgroup v2 at /sys/fs/cgroup and /proc/cgroups: {}; the kubelet cannot enforce memory limits",
                describe_io(&e)
            ),
            "mount cgroups (systemd does at boot) and enable the memory controller",
        ),
    }
}

fn has_word(text: &str, word: &str) -> bool {
    text.split_whitespace().any(|w| w == word)
}

/// `enabled` column of a /proc/cgroups row; None when the controller is not listed.
pub(super) fn v1_controller_enabled(proc_cgroups: &str, name: &str) -> Option<bool> {
    proc_cgroups.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.first() == Some(&name)).then(|| fields.get(3) == Some(&"1"))
    })
}

/// Why the controller may be off: Raspberry Pi OS and some cloud images disable it on the
/// kernel command line.
fn cmdline_hint(host: &Host) -> String {
    match host.read("/proc/cmdline") {
        Ok(cmdline) if has_word(&cmdline, "cgroup_disable=memory") => {
            "; the kernel command line has cgroup_disable=memory".to_string()
        }
        _ => String::new(),
    }
}

fn memory_cgroup_fix() -> String {
    "add `cgroup_memory=1 cgroup_enable=memory` to the kernel command line (Raspberry Pi OS: \
     /boot/firmware/cmdline.txt; GRUB: GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub) and reboot"
        .to_string()
}

// ---- modules ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ModuleState {
    Loaded,
    /// Built into the kernel; the string says how that was seen.
    BuiltIn(String),
    /// The feature the module provides is present, whatever provides it.
    Feature(String),
    /// Not loaded, but a module file exists: `modprobe` will work.
    Loadable(String),
    Missing,
}

impl ModuleState {
    pub fn available(&self) -> bool {
        matches!(self, ModuleState::Loaded | ModuleState::BuiltIn(_) | ModuleState::Feature(_))
    }
}

/// Module names use `_` and `-` interchangeably; the kernel reports `_`.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Module name of a path in modules.builtin / modules.dep: `kernel/fs/overlayfs/overlay.ko.xz`.
fn module_name_of(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file.split(".ko").next()?;
    (file.len() > stem.len()).then(|| normalize(stem))
}

pub(super) fn module_state(host: &Host, name: &str) -> ModuleState {
    let wanted = normalize(name);
    // /proc/modules is missing on kernels without loadable module support: not an error.
    if let Ok(modules) = host.read("/proc/modules") {
        if modules.lines().filter_map(|l| l.split_whitespace().next()).any(|m| normalize(m) == wanted) {
            return ModuleState::Loaded;
        }
    }
    let moddir = format!("/lib/modules/{}", host.uname.release);
    if let Ok(builtin) = host.read(&format!("{moddir}/modules.builtin")) {
        if builtin.lines().filter_map(module_name_of).any(|m| m == wanted) {
            return ModuleState::BuiltIn(format!("{moddir}/modules.builtin"));
        }
    }
    // Built-in modules with parameters appear under /sys/module although /proc/modules lacks them.
    let sys_module = format!("/sys/module/{wanted}");
    if host.exists(&sys_module) {
        return ModuleState::BuiltIn(sys_module);
    }
    match wanted.as_str() {
        "overlay" => {
            if let Ok(fs) = host.read("/proc/filesystems") {
                if fs.lines().any(|l| l.split_whitespace().last() == Some("overlay")) {
                    return ModuleState::Feature("/proc/filesystems lists overlay".to_string());
                }
            }
        }
        "br_netfilter" if host.exists("/proc/sys/net/bridge") => {
            return ModuleState::Feature("/proc/sys/net/bridge exists".to_string());
        }
        _ => {}
    }
    if let Ok(dep) = host.read(&format!("{moddir}/modules.dep")) {
        let found =
            dep.lines().filter_map(|l| l.split(':').next()).find(|p| module_name_of(p).as_deref() == Some(&wanted));
        if let Some(path) = found {
            return ModuleState::Loadable(format!("{moddir}/{path}"));
        }
    }
    ModuleState::Missing
}

fn module_purpose(name: &str) -> &'static str {
    match name {
        "overlay" => "containerd's default overlayfs snapshotter needs it",
        "br_netfilter" => "without it bridged pod traffic bypasses iptables and Services break",
        _ => "k3s needs it",
    }
}

pub(super) fn module_fix(name: &str) -> String {
    format!("modprobe {name} and add `{name}` to {MODULES_LOAD_FILE} (k3node preflight --fix does both)")
}

fn module(host: &Host, name: &str) -> Check {
    let id = format!("module-{name}");
    match module_state(host, name) {
        ModuleState::Loaded => pass(id, format!("{name} is loaded")),
        ModuleState::BuiltIn(how) => pass(id, format!("{name} is built into the kernel ({how})")),
        ModuleState::Feature(how) => pass(id, format!("{name} is available ({how})")),
        ModuleState::Loadable(path) => warn(
            id,
            format!(
                "{name} is not loaded ({path} exists); {}. k3s's unit loads it at start, but it is not persisted",
                module_purpose(name)
            ),
            module_fix(name),
        ),
        ModuleState::Missing => fail(
            id,
            format!(
                "{name} is not loaded, not built in and has no module file under /lib/modules/{}; {}",
                host.uname.release,
                module_purpose(name)
            ),
            format!(
                "install the kernel's modules package (e.g. linux-modules-extra-{}), then {}",
                host.uname.release,
                module_fix(name)
            ),
        ),
    }
}

// ---- sysctls ----

pub(super) fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

pub(super) fn read_sysctl(host: &Host, key: &str) -> io::Result<String> {
    host.sys.read_to_string(&sysctl_path(key)).map(|v| v.trim().to_string())
}

pub(super) fn sysctl_fix(key: &str) -> String {
    format!("sysctl -w {key}=1 and add `{key} = 1` to {SYSCTL_FILE} (k3node preflight --fix does both)")
}

/// k3s sets both forwarding sysctls (and loads br_netfilter) at every start (contract section 5),
/// as install.sh relies on: a 0 is worth a warning, and a failure only where nobody can set it.
fn sysctl(host: &Host, s: &Sysctl) -> Check {
    let id = format!("sysctl-{}", s.key);
    let path = sysctl_path(s.key);
    match read_sysctl(host, s.key) {
        Ok(v) if v == "1" => pass(id, format!("{} = 1", s.key)),
        Ok(v) if mounted_read_only(host, &path) => fail(
            id,
            format!(
                "{} = {v}, must be 1 ({}), and /proc/sys is read-only here: neither k3s nor --fix can set it",
                s.key, s.why
            ),
            format!("set {} = 1 where it can be set: on the machine that runs this container", s.key),
        ),
        Ok(v) => warn(id, format!("{} = {v}: k3s sets it to 1 at every start ({})", s.key, s.why), sysctl_fix(s.key)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match s.module {
            Some(module) => warn(
                id,
                format!(
                    "{} does not exist until the {module} module is loaded; k3s loads it and sets the value at every start ({})",
                    s.key, s.why
                ),
                format!("{}, then {}", module_fix(module), sysctl_fix(s.key)),
            ),
            None => fail(id, format!("{} does not exist: {}", s.key, s.why), sysctl_fix(s.key)),
        },
        Err(e) => fail(id, format!("cannot read {}: {}", path.display(), describe_io(&e)), sysctl_fix(s.key)),
    }
}

/// Whether the mount that holds `path` (the longest mount point above it in
/// /proc/self/mountinfo) is read-only, as /proc/sys is in most containers.
pub(super) fn mounted_read_only(host: &Host, path: &std::path::Path) -> bool {
    let info = host.read("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let point = fields.nth(4)?;
            let options = fields.next()?;
            Some((std::path::PathBuf::from(point), options.split(',').any(|o| o == "ro")))
        })
        .filter(|(point, _)| path.starts_with(point))
        .max_by_key(|(point, _)| point.as_os_str().len())
        .is_some_and(|(_, read_only)| read_only)
}

// ---- keys ----

/// k3s check-config: containerd creates a session keyring per container, and the default
/// root_maxkeys (200 on older kernels) runs out with a few dozen pods.
const ROOT_MAXKEYS_MIN: u64 = 10000;

fn kernel_keys(host: &Host) -> Check {
    const ID: &str = "kernel-keys";
    let fix = format!(
        "sysctl -w kernel.keys.root_maxkeys=1000000 and add `kernel.keys.root_maxkeys = 1000000` to {SYSCTL_FILE}"
    );
    match read_sysctl(host, "kernel.keys.root_maxkeys") {
        Ok(v) => match v.parse::<u64>() {
            Ok(n) if n > ROOT_MAXKEYS_MIN => pass(ID, format!("kernel.keys.root_maxkeys = {n}")),
            Ok(n) => warn(
                ID,
                format!(
                    "kernel.keys.root_maxkeys = {n}, not above {ROOT_MAXKEYS_MIN}: containers fail to start once the keys run out"
                ),
                fix,
            ),
            Err(_) => warn(ID, format!("kernel.keys.root_maxkeys has an unexpected value {v:?}"), fix),
        },
        Err(e) => warn(
            ID,
            format!(
                "kernel.keys.root_maxkeys: {} (kernel without key retention, CONFIG_KEYS?); containerd needs kernel keyrings",
                describe_io(&e)
            ),
            "use a kernel built with CONFIG_KEYS (the distribution's standard kernel)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::host::system::fake::FakeSystem;
    use crate::protocol::preflight::Status;

    fn run(sys: &FakeSystem) -> Vec<Check> {
        checks(&host(sys))
    }

    /// This repository's CI machine: cgroup v1 hybrid, no /proc/modules, everything built in.
    fn no_loadable_modules() -> FakeSystem {
        healthy_host()
            .uname("Linux", "vm", "6.18.44-fc-v595", "x86_64")
            .remove("/proc/modules")
            .remove("/sys/fs/cgroup/cgroup.controllers")
            .dir("/sys/fs/cgroup/unified")
            .file(
                "/proc/cgroups",
                "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t3\t1\t1\ncpu\t1\t1\t1\nmemory\t4\t42\t1\npids\t8\t1\t1\n",
            )
            .dir("/sys/module/overlay")
            .dir("/sys/module/bridge")
    }

    #[test]
    fn healthy_kernel_passes() {
        let checks = run(&healthy_host());
        assert_eq!(find(&checks, "cgroup-memory").reason, "cgroup v2 with the memory controller");
        assert_eq!(find(&checks, "module-overlay").reason, "overlay is loaded");
        assert_eq!(find(&checks, "module-br_netfilter").reason, "br_netfilter is loaded");
        assert_eq!(find(&checks, "sysctl-net.ipv4.ip_forward").reason, "net.ipv4.ip_forward = 1");
        assert_eq!(find(&checks, "kernel-keys").reason, "kernel.keys.root_maxkeys = 1000000");
        assert!(checks.iter().all(|c| c.status == Status::Pass), "{checks:#?}");
    }

    #[test]
    fn built_in_modules_pass_without_proc_modules() {
        let checks = run(&no_loadable_modules());
        let overlay = find(&checks, "module-overlay");
        assert_eq!(overlay.status, Status::Pass);
        assert_eq!(overlay.reason, "overlay is built into the kernel (/sys/module/overlay)");
        let br = find(&checks, "module-br_netfilter");
        assert_eq!(br.status, Status::Pass);
        assert_eq!(br.reason, "br_netfilter is available (/proc/sys/net/bridge exists)");
        assert_eq!(find(&checks, "cgroup-memory").reason, "cgroup v1 (hybrid) with the memory controller enabled");
    }

    #[test]
    fn built_in_modules_from_modules_builtin_and_filesystems() {
        let sys = no_loadable_modules().remove("/sys/module").file(
            "/lib/modules/6.18.44-fc-v595/modules.builtin",
            "kernel/fs/ext4/ext4.ko\nkernel/net/bridge/br_netfilter.ko\n",
        );
        let checks = run(&sys);
        assert_eq!(
            find(&checks, "module-br_netfilter").reason,
            "br_netfilter is built into the kernel (/lib/modules/6.18.44-fc-v595/modules.builtin)"
        );
        assert_eq!(find(&checks, "module-overlay").reason, "overlay is available (/proc/filesystems lists overlay)");
    }

    #[test]
    fn loadable_module_warns_and_missing_module_fails() {
        let sys = healthy_host()
            .file("/proc/modules", "ext4 1044480 1 - Live 0x0000000000000000\n")
            .file("/proc/filesystems", "nodev\tsysfs\n\text4\n")
            .remove("/proc/sys/net/bridge")
            .file(
                "/lib/modules/6.1.0-28-amd64/modules.dep",
                "kernel/fs/overlayfs/overlay.ko.xz:\nkernel/net/bridge/bridge.ko.xz: kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz\n",
            );
        let checks = run(&sys);
        let overlay = find(&checks, "module-overlay");
        assert_eq!(overlay.status, Status::Warn);
        assert!(
            overlay.reason.contains("/lib/modules/6.1.0-28-amd64/kernel/fs/overlayfs/overlay.ko.xz"),
            "{overlay:?}"
        );
        assert_eq!(
            overlay.fix.as_deref(),
            Some("modprobe overlay and add `overlay` to /etc/modules-load.d/k3node.conf (k3node preflight --fix does both)")
        );
        let br = find(&checks, "module-br_netfilter");
        assert_eq!(br.status, Status::Fail);
        assert!(br.reason.contains("not built in"), "{br:?}");
        assert!(br.fix.as_deref().unwrap().contains("modprobe br_netfilter"));
        // Its sysctl is missing too, and says why: k3s would load the module and set it.
        let bridge = find(&checks, "sysctl-net.bridge.bridge-nf-call-iptables");
        assert_eq!(bridge.status, Status::Warn);
        assert!(bridge.reason.contains("until the br_netfilter module is loaded; k3s loads it"), "{bridge:?}");
    }

    #[test]
    fn sysctl_zero_warns_that_k3s_sets_it_with_the_exact_fix() {
        let sys = healthy_host().file("/proc/sys/net/ipv4/ip_forward", "0\n");
        let checks = run(&sys);
        let c = find(&checks, "sysctl-net.ipv4.ip_forward");
        assert_eq!(c.status, Status::Warn);
        assert!(c.reason.starts_with("net.ipv4.ip_forward = 0: k3s sets it to 1 at every start"), "{c:?}");
        assert_eq!(
            c.fix.as_deref(),
            Some("sysctl -w net.ipv4.ip_forward=1 and add `net.ipv4.ip_forward = 1` to /etc/sysctl.d/90-k3node.conf (k3node preflight --fix does both)")
        );
    }

    #[test]
    fn sysctl_zero_on_a_read_only_proc_sys_fails_without_recommending_fix() {
        let mountinfo = "22 28 0:21 / /proc rw,nosuid,nodev,noexec - proc proc rw\n\
                         40 22 0:21 /sys /proc/sys ro,nosuid,nodev,noexec - proc proc rw\n";
        let sys = healthy_host().file("/proc/sys/net/ipv4/ip_forward", "0\n").file("/proc/self/mountinfo", mountinfo);
        let checks = run(&sys);
        let c = find(&checks, "sysctl-net.ipv4.ip_forward");
        assert_eq!(c.status, Status::Fail);
        assert!(c.reason.contains("/proc/sys is read-only here: neither k3s nor --fix can set it"), "{c:?}");
        assert!(!c.fix.as_deref().unwrap_or("").contains("--fix"), "{c:?}");
        // With /proc/sys/net mounted read-write (a container with its own network), it is settable.
        let writable = format!("{mountinfo}41 40 0:22 /sys/net /proc/sys/net rw,nosuid - proc proc rw\n");
        let sys = healthy_host().file("/proc/sys/net/ipv4/ip_forward", "0\n").file("/proc/self/mountinfo", &writable);
        assert_eq!(find(&run(&sys), "sysctl-net.ipv4.ip_forward").status, Status::Warn);
    }

    #[test]
    fn cgroup_memory_missing_or_disabled_fails() {
        let v2_without = healthy_host()
            .file("/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io pids\n")
            .file("/proc/cmdline", "console=serial0,115200 root=PARTUUID=1 rootwait cgroup_disable=memory\n");
        let c = run(&v2_without);
        let c = find(&c, "cgroup-memory");
        assert_eq!(c.status, Status::Fail);
        assert!(c.reason.contains("cgroup_disable=memory"), "{c:?}");
        assert!(c.fix.as_deref().unwrap().contains("cgroup_memory=1 cgroup_enable=memory"));

        let v1_disabled = healthy_host()
            .remove("/sys/fs/cgroup/cgroup.controllers")
            .file("/proc/cgroups", "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t2\t1\t1\nmemory\t0\t1\t0\n");
        let c = run(&v1_disabled);
        let c = find(&c, "cgroup-memory");
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.reason, "cgroup v1: the memory controller is disabled (/proc/cgroups)");

        let nothing = healthy_host().remove("/sys/fs/cgroup/cgroup.controllers");
        assert_eq!(find(&run(&nothing), "cgroup-memory").status, Status::Fail);
    }

    #[test]
    fn low_root_maxkeys_warns() {
        let c = run(&healthy_host().file("/proc/sys/kernel/keys/root_maxkeys", "200\n"));
        let c = find(&c, "kernel-keys");
        assert_eq!(c.status, Status::Warn);
        assert!(c.reason.starts_with("kernel.keys.root_maxkeys = 200"));
        let c = run(&healthy_host().remove("/proc/sys/kernel/keys"));
        assert_eq!(find(&c, "kernel-keys").status, Status::Warn);
    }

    #[test]
    fn module_names_from_paths() {
        assert_eq!(module_name_of("kernel/fs/overlayfs/overlay.ko.zst").as_deref(), Some("overlay"));
        assert_eq!(module_name_of("kernel/net/bridge/br_netfilter.ko").as_deref(), Some("br_netfilter"));
        assert_eq!(module_name_of("kernel/drivers/foo-bar.ko.xz").as_deref(), Some("foo_bar"));
        assert_eq!(module_name_of("modules.order"), None);
    }
}
