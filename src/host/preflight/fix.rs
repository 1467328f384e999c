//! `--fix`: what is safe to change on a host without asking, done before the checks run.
//!
//! Only kernel modules (overlay, br_netfilter) and the two forwarding sysctls: loading and
//! persisting them is what install guides ask for by hand, changes no existing behaviour
//! of the host, and is idempotent. Each change is applied now and persisted under /etc so
//! that it survives a reboot; a second run finds nothing to do and reports nothing.

use std::io;
use std::path::Path;

use super::kernel::{module_state, read_sysctl, sysctl_path, MODULES, SYSCTLS};
use super::{describe_io, Host, MODULES_LOAD_FILE, SYSCTL_FILE};
use crate::protocol::preflight::{Check, Status};

const MODULES_HEADER: &str = "# Kernel modules k3s needs, loaded at boot. Written by k3node preflight --fix.\n";
const SYSCTL_HEADER: &str = "# Kernel settings k3s needs. Written by k3node preflight --fix.\n";
const CONFIG_MODE: u32 = 0o644;

#[derive(Debug, Default)]
pub(super) struct FixOutcome {
    /// One line per change, for PreflightReport::fixes_applied.
    pub applied: Vec<String>,
    /// Fixes that failed: (check id, error), surfaced on that check.
    pub errors: Vec<(String, String)>,
}

impl FixOutcome {
    /// A failed fix fails its check, whatever the check found afterwards: a sysctl set at
    /// runtime but not persisted is lost at the next reboot.
    pub fn annotate(&self, checks: &mut Vec<Check>) {
        for (id, error) in &self.errors {
            match checks.iter_mut().find(|c| &c.id == id) {
                Some(check) => {
                    check.status = Status::Fail;
                    check.reason = format!("{}; --fix failed: {error}", check.reason);
                    // Recommending --fix again would only fail again.
                    check.fix = Some(format!("fix it by hand where it can be done; --fix could not: {error}"));
                }
                None => checks.push(Check {
                    id: format!("fix-{id}"),
                    status: Status::Fail,
                    reason: format!("--fix failed: {error}"),
                    fix: Some("apply the fix by hand".to_string()),
                }),
            }
        }
    }
}

pub(super) fn apply(host: &Host) -> FixOutcome {
    let mut out = FixOutcome::default();
    // Modules first: br_netfilter creates the bridge sysctl.
    for name in MODULES {
        if module_state(host, name).available() {
            continue;
        }
        let id = format!("module-{name}");
        match load_module(host, name) {
            Ok(()) => match persist_module(host, name) {
                Ok(true) => out.applied.push(format!("loaded module {name} (persisted in {MODULES_LOAD_FILE})")),
                Ok(false) => out.applied.push(format!("loaded module {name} (already listed in {MODULES_LOAD_FILE})")),
                Err(e) => {
                    out.applied.push(format!("loaded module {name} (not persisted)"));
                    out.errors.push((id, format!("could not add {name} to {MODULES_LOAD_FILE}: {}", describe_io(&e))));
                }
            },
            Err(e) => out.errors.push((id, e)),
        }
    }
    for sysctl in &SYSCTLS {
        let key = sysctl.key;
        let id = format!("sysctl-{key}");
        match read_sysctl(host, key) {
            Ok(v) if v == "1" => continue,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let why = match sysctl.module {
                    Some(m) => format!("{key} does not exist, as the {m} module could not be loaded"),
                    None => format!("{key} does not exist on this kernel"),
                };
                out.errors.push((id, why));
                continue;
            }
            Err(e) => {
                out.errors.push((id, format!("cannot read {key}: {}", describe_io(&e))));
                continue;
            }
        }
        let path = sysctl_path(key);
        if let Err(e) = host.sys.write_proc(&path, "1") {
            // A container's read-only /proc/sys ends here.
            out.errors.push((id, format!("cannot write 1 to {}: {}", path.display(), describe_io(&e))));
            continue;
        }
        match persist_sysctl(host, key) {
            Ok(true) => out.applied.push(format!("set {key}=1 (persisted in {SYSCTL_FILE})")),
            Ok(false) => out.applied.push(format!("set {key}=1 (already persisted in {SYSCTL_FILE})")),
            Err(e) => {
                out.applied.push(format!("set {key}=1 (not persisted)"));
                out.errors.push((id, format!("could not persist {key} in {SYSCTL_FILE}: {}", describe_io(&e))));
            }
        }
    }
    out
}

fn load_module(host: &Host, name: &str) -> Result<(), String> {
    let modprobe = host
        .sys
        .find_command("modprobe")
        .ok_or_else(|| format!("cannot load {name}: modprobe is not installed (package kmod)"))?;
    match host.sys.run(&modprobe, &[name]) {
        Ok(out) if out.success() => Ok(()),
        Ok(out) => Err(format!("modprobe {name} failed: {}", out.failure_summary())),
        Err(e) => Err(format!("cannot run {}: {e}", modprobe.display())),
    }
}

/// The file's current text; a missing file is empty, any other read error is an error
/// (overwriting a file we could not read would lose its lines).
fn read_config(host: &Host, path: &str) -> io::Result<String> {
    match host.sys.read_to_string(Path::new(path)) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

fn with_line(existing: &str, header: &str, line: &str) -> String {
    let mut text = if existing.is_empty() { header.to_string() } else { existing.to_string() };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    text
}

/// Adds the module to modules-load.d, keeping the file's other lines. Returns whether it wrote.
fn persist_module(host: &Host, name: &str) -> io::Result<bool> {
    let existing = read_config(host, MODULES_LOAD_FILE)?;
    // modules-load.d(5): one name per line, '#' and ';' start comments.
    let listed = existing
        .lines()
        .map(str::trim)
        .any(|l| !l.starts_with('#') && !l.starts_with(';') && l.replace('-', "_") == name.replace('-', "_"));
    if listed {
        return Ok(false);
    }
    let text = with_line(&existing, MODULES_HEADER, name);
    host.sys.write_atomic(Path::new(MODULES_LOAD_FILE), text.as_bytes(), CONFIG_MODE)?;
    Ok(true)
}

/// `key = value` of a sysctl.d line, if it is one (a leading '-' means "ignore errors").
fn sysctl_line(line: &str) -> Option<(String, String)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
        return None;
    }
    let (k, v) = line.split_once('=')?;
    let key = k.trim().trim_start_matches('-').replace('/', ".");
    Some((key, v.trim().to_string()))
}

/// Sets `key = 1` in the sysctl.d file: replaces a line with another value, else appends.
/// Returns whether it wrote.
fn persist_sysctl(host: &Host, key: &str) -> io::Result<bool> {
    let existing = read_config(host, SYSCTL_FILE)?;
    let wanted = format!("{key} = 1");
    let mut found = false;
    let mut changed = false;
    let mut lines: Vec<String> = Vec::new();
    for line in existing.lines() {
        match sysctl_line(line) {
            Some((k, v)) if k == key => {
                found = true;
                if v == "1" {
                    lines.push(line.to_string());
                } else {
                    lines.push(wanted.clone());
                    changed = true;
                }
            }
            _ => lines.push(line.to_string()),
        }
    }
    let text = if found {
        if !changed {
            return Ok(false);
        }
        let mut text = lines.join("\n");
        text.push('\n');
        text
    } else {
        with_line(&existing, SYSCTL_HEADER, &wanted)
    };
    host.sys.write_atomic(Path::new(SYSCTL_FILE), text.as_bytes(), CONFIG_MODE)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::host::preflight::run;
    use crate::host::system::fake::{FakeSystem, Write};
    use crate::protocol::preflight::Role;
    use std::path::PathBuf;

    const BRIDGE_SYSCTL: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

    /// A fresh host: modules loadable but not loaded, forwarding off. As on a real kernel,
    /// `modprobe br_netfilter` makes the bridge sysctl appear, set to 0.
    fn needs_fixing() -> FakeSystem {
        healthy_host()
            .file("/proc/modules", "ext4 1044480 1 - Live 0x0000000000000000\n")
            .file("/proc/filesystems", "nodev\tsysfs\n\text4\n")
            .remove("/proc/sys/net/bridge")
            .file("/proc/sys/net/ipv4/ip_forward", "0\n")
            .file(
                "/lib/modules/6.1.0-28-amd64/modules.dep",
                "kernel/fs/overlayfs/overlay.ko.xz:\nkernel/net/bridge/br_netfilter.ko.xz: kernel/net/bridge/bridge.ko.xz\n",
            )
            .output_with_effects(
                "/usr/sbin/modprobe",
                &["overlay"],
                0,
                "",
                "",
                &[("/proc/modules", "overlay 163840 0 - Live 0x0000000000000000\next4 1044480 1 - Live 0x0000000000000000\n")],
            )
            .output_with_effects(
                "/usr/sbin/modprobe",
                &["br_netfilter"],
                0,
                "",
                "",
                &[
                    ("/proc/modules", "br_netfilter 32768 0 - Live 0\nbridge 311296 1 br_netfilter, Live 0\noverlay 163840 0 - Live 0\n"),
                    (BRIDGE_SYSCTL, "0\n"),
                ],
            )
    }

    fn fix_request() -> crate::protocol::preflight::PreflightRequest {
        let mut req = request(Role::Server);
        req.fix = true;
        req
    }

    #[test]
    fn without_fix_nothing_is_written() {
        let sys = needs_fixing();
        let report = run(&sys, &request(Role::Server));
        assert!(report.fixes_applied.is_empty());
        assert!(sys.writes().is_empty());
        assert!(sys.runs().iter().all(|(p, _)| p != Path::new("/usr/sbin/modprobe")));
        // Unfixed, but k3s would set it at start: a warning (contract section 5).
        assert_eq!(find(&report.checks, "sysctl-net.ipv4.ip_forward").status, Status::Warn);
    }

    #[test]
    fn fix_loads_sets_and_persists_exactly_once() {
        let sys = needs_fixing();
        let report = run(&sys, &fix_request());
        assert_eq!(
            report.fixes_applied,
            vec![
                "loaded module overlay (persisted in /etc/modules-load.d/k3node.conf)",
                "loaded module br_netfilter (persisted in /etc/modules-load.d/k3node.conf)",
                "set net.ipv4.ip_forward=1 (persisted in /etc/sysctl.d/90-k3node.conf)",
                "set net.bridge.bridge-nf-call-iptables=1 (persisted in /etc/sysctl.d/90-k3node.conf)",
            ]
        );
        for id in [
            "module-overlay",
            "module-br_netfilter",
            "sysctl-net.ipv4.ip_forward",
            "sysctl-net.bridge.bridge-nf-call-iptables",
        ] {
            assert_eq!(find(&report.checks, id).status, Status::Pass, "{id}");
        }
        // Exactly these writes, in this order.
        let writes = sys.writes();
        let modules_final = format!("{MODULES_HEADER}overlay\nbr_netfilter\n");
        let sysctl_final = format!("{SYSCTL_HEADER}net.ipv4.ip_forward = 1\nnet.bridge.bridge-nf-call-iptables = 1\n");
        assert_eq!(
            writes,
            vec![
                Write::Atomic {
                    path: MODULES_LOAD_FILE.into(),
                    contents: format!("{MODULES_HEADER}overlay\n"),
                    mode: 0o644
                },
                Write::Atomic { path: MODULES_LOAD_FILE.into(), contents: modules_final.clone(), mode: 0o644 },
                Write::Proc { path: "/proc/sys/net/ipv4/ip_forward".into(), value: "1".into() },
                Write::Atomic {
                    path: SYSCTL_FILE.into(),
                    contents: format!("{SYSCTL_HEADER}net.ipv4.ip_forward = 1\n"),
                    mode: 0o644
                },
                Write::Proc { path: BRIDGE_SYSCTL.into(), value: "1".into() },
                Write::Atomic { path: SYSCTL_FILE.into(), contents: sysctl_final.clone(), mode: 0o644 },
            ]
        );
        let modprobes: Vec<_> = sys.runs().into_iter().filter(|(p, _)| p == Path::new("/usr/sbin/modprobe")).collect();
        assert_eq!(
            modprobes,
            vec![
                (PathBuf::from("/usr/sbin/modprobe"), vec!["overlay".to_string()]),
                (PathBuf::from("/usr/sbin/modprobe"), vec!["br_netfilter".to_string()]),
            ]
        );

        // Second run: nothing to do, nothing written, nothing run.
        let runs_before = sys.runs().len();
        let again = run(&sys, &fix_request());
        assert!(again.fixes_applied.is_empty(), "{:?}", again.fixes_applied);
        assert_eq!(sys.writes().len(), writes.len());
        assert!(sys.runs()[runs_before..].iter().all(|(p, _)| p != Path::new("/usr/sbin/modprobe")));
        assert_eq!(sys.contents(MODULES_LOAD_FILE).unwrap(), modules_final);
        assert_eq!(sys.contents(SYSCTL_FILE).unwrap(), sysctl_final);
    }

    #[test]
    fn persisting_keeps_other_lines_and_replaces_a_wrong_value() {
        let sys = needs_fixing()
            .file(MODULES_LOAD_FILE, "# mine\nvxlan\noverlay\n")
            .file(SYSCTL_FILE, "vm.max_map_count = 262144\nnet.ipv4.ip_forward=0\n");
        let report = run(&sys, &fix_request());
        assert!(report
            .fixes_applied
            .contains(&"loaded module overlay (already listed in /etc/modules-load.d/k3node.conf)".to_string()));
        assert_eq!(sys.contents(MODULES_LOAD_FILE).unwrap(), "# mine\nvxlan\noverlay\nbr_netfilter\n");
        assert_eq!(
            sys.contents(SYSCTL_FILE).unwrap(),
            "vm.max_map_count = 262144\nnet.ipv4.ip_forward = 1\nnet.bridge.bridge-nf-call-iptables = 1\n"
        );
    }

    #[test]
    fn runtime_reset_after_persisting_is_set_again() {
        let sys = needs_fixing();
        run(&sys, &fix_request());
        let sys = sys.file("/proc/sys/net/ipv4/ip_forward", "0\n");
        let report = run(&sys, &fix_request());
        assert_eq!(
            report.fixes_applied,
            vec!["set net.ipv4.ip_forward=1 (already persisted in /etc/sysctl.d/90-k3node.conf)"]
        );
    }

    #[test]
    fn failed_fixes_are_check_failures_not_panics() {
        // A container: modprobe cannot load anything and /proc/sys is read-only.
        let sys = needs_fixing()
            .output(
                "/usr/sbin/modprobe",
                &["overlay"],
                1,
                "",
                "modprobe: FATAL: Module overlay not found in directory /lib/modules/6.1.0-28-amd64\n",
            )
            .run_error("/usr/sbin/modprobe", &["br_netfilter"], "Permission denied")
            .deny("/proc/sys/net/ipv4/ip_forward");
        let report = run(&sys, &fix_request());
        assert!(report.fixes_applied.is_empty());
        assert!(sys.writes().is_empty());

        let overlay = find(&report.checks, "module-overlay");
        assert_eq!(overlay.status, Status::Fail);
        assert!(
            overlay.reason.contains("--fix failed: modprobe overlay failed: modprobe: FATAL: Module overlay not found in directory /lib/modules/6.1.0-28-amd64 (exit status 1)"),
            "{overlay:?}"
        );
        let br = find(&report.checks, "module-br_netfilter");
        assert!(br.reason.contains("--fix failed: cannot run /usr/sbin/modprobe: Permission denied"), "{br:?}");
        let fwd = find(&report.checks, "sysctl-net.ipv4.ip_forward");
        assert_eq!(fwd.status, Status::Fail);
        assert!(fwd.reason.contains("--fix failed: cannot read net.ipv4.ip_forward: Permission denied"), "{fwd:?}");
        let bridge = find(&report.checks, "sysctl-net.bridge.bridge-nf-call-iptables");
        assert!(bridge.reason.contains("--fix failed: net.bridge.bridge-nf-call-iptables does not exist, as the br_netfilter module could not be loaded"), "{bridge:?}");
    }

    #[test]
    fn read_only_proc_sys_and_missing_modprobe() {
        let sys = needs_fixing().without_command("modprobe").read_only("/proc/sys");
        let report = run(&sys, &fix_request());
        assert!(report.fixes_applied.is_empty());
        assert!(sys.writes().is_empty());
        let overlay = find(&report.checks, "module-overlay");
        assert_eq!(overlay.status, Status::Fail);
        assert!(
            overlay.reason.contains("--fix failed: cannot load overlay: modprobe is not installed (package kmod)"),
            "{overlay:?}"
        );
        let fwd = find(&report.checks, "sysctl-net.ipv4.ip_forward");
        assert_eq!(fwd.status, Status::Fail);
        assert!(
            fwd.reason
                .ends_with("--fix failed: cannot write 1 to /proc/sys/net/ipv4/ip_forward: Read-only file system"),
            "{fwd:?}"
        );
    }

    #[test]
    fn unpersistable_fix_still_fails_its_check() {
        let sys = needs_fixing().read_only("/etc/sysctl.d");
        let report = run(&sys, &fix_request());
        assert!(report.fixes_applied.contains(&"set net.ipv4.ip_forward=1 (not persisted)".to_string()));
        let fwd = find(&report.checks, "sysctl-net.ipv4.ip_forward");
        assert_eq!(fwd.status, Status::Fail);
        assert!(fwd.reason.starts_with("net.ipv4.ip_forward = 1; --fix failed: could not persist"), "{fwd:?}");
        assert!(fwd.fix.is_some());
    }

    #[test]
    fn annotate_adds_a_check_when_none_matches() {
        let mut checks = Vec::new();
        let outcome = FixOutcome { applied: vec![], errors: vec![("module-x".into(), "boom".into())] };
        outcome.annotate(&mut checks);
        assert_eq!(checks[0].id, "fix-module-x");
        assert_eq!(checks[0].status, Status::Fail);
    }
}
