//! `reset`: uninstall k3s as k3s-killall.sh and k3s-uninstall.sh do (contract section 8), natively
//! and in their order, except that nothing is lost: the data dir, /etc/rancher/k3s and
//! /var/lib/kubelet are renamed to `<path>.k3node-reset-<UTC time>`, never deleted. What is
//! deleted is what install wrote or what k3s re-creates at start (runtime state under /run,
//! /var/lib/cni, iptables rules, network links), and what a restore staged beside k3s's files
//! and never moved in (copies of an archive's files; the archive itself moves aside with
//! k3node's state dir).
//!
//! Every step is reported as it is (or in a dry run would be) taken. Each step is computed from
//! the host as it is at that moment (the processes left once the services are stopped, the
//! mounts left once those are killed), so a re-run after a failure picks up where it stopped,
//! and a reset on a clean host has nothing to do.
//!
//! What it touches is exactly what the official scripts touch (contract section 8): of the
//! processes only the containerd-shims run from `<data-dir>/data/*/bin/` and their trees (never
//! a user's kubectl or crictl, which are k3s too); mounts are unmounted forced (`umount -f`, never
//! detached lazily) and their mount points removed, a busy one is left with its mount point and
//! named; nothing is ever removed through a mount that is still there.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use super::config::{self, ConfigError};
use super::systemd::Systemd;
use super::{
    describe_io, links_to_k3s, record_path, uninstall_script_path, Progress, BIN_DIR, CONFIG_DIR, K3S_BIN,
    KILLALL_SCRIPT, KUBELET_DIR, LINKED_COMMANDS, RECORD_DIR, RESTORE_STAGED, UNIT_DIR,
};
use crate::host::error::{Failure, HostError};
use crate::host::serve::{Context, HostOperation};
use crate::host::system::{self, HostSystem};
use crate::protocol::k3s::{ResetReport, ResetRequest};
use crate::protocol::{ErrorKind, HELPER_PATH};

#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error("{0}; cannot tell where k3s's data is, so nothing was touched")]
    Config(#[from] ConfigError),
    #[error("{unit} is installed but systemctl is missing: cannot stop it, so nothing was touched")]
    NoSystemctl { unit: String },
    /// Some steps failed; the others were done (the message lists both).
    #[error("{0}")]
    Steps(String),
}

impl Failure for ResetError {
    fn kind(&self) -> ErrorKind {
        match self {
            ResetError::NoSystemctl { .. } => ErrorKind::NotInstalled,
            ResetError::Config(_) | ResetError::Steps(_) => ErrorKind::Failed,
        }
    }

    /// A re-run goes on from where the steps stopped.
    fn retryable(&self) -> bool {
        matches!(self, ResetError::Steps(_))
    }
}

impl HostOperation for ResetRequest {
    fn run(self, ctx: &mut Context<'_, '_>) -> Result<ResetReport, HostError> {
        let sys = ctx.sys;
        Ok(reset(sys, &self, &mut |m| ctx.progress(m))?)
    }
}

const MOUNTINFO: &str = "/proc/self/mountinfo";
/// Directories whose mounts are undone (k3s's containerd state, pods' volumes, CSI plugins).
const MOUNT_DIRS: [&str; 3] = ["/run/k3s", "/var/lib/kubelet/pods", "/var/lib/kubelet/plugins"];
const NETNS_DIR: &str = "/run/netns";
const CNI_NETNS_PREFIX: &str = "cni-";
/// The CNI bridge; the pods' veths are its ports.
const CNI_BRIDGE: &str = "cni0";
const NETWORK_LINKS: [&str; 6] = ["cni0", "flannel.1", "flannel-v6.1", "kube-ipvs0", "flannel-wg", "flannel-wg-v6"];
const SYS_CLASS_NET: &str = "/sys/class/net";
/// Runtime state k3s and its CNI re-create: deleted.
const RUNTIME_DIRS: [&str; 3] = ["/run/k3s", "/run/flannel", "/var/lib/cni"];
const SERVICES: [&str; 2] = ["k3s", "k3s-agent"];

pub fn reset(sys: &dyn HostSystem, req: &ResetRequest, progress: Progress) -> Result<ResetReport, ResetError> {
    // Read first: /etc/rancher/k3s moves aside at the end, and with it the data-dir setting.
    let settings = config::on_host(sys)?;
    let mut run =
        Run { sys, dry_run: req.dry_run, progress, actions: Vec::new(), notes: Vec::new(), errors: Vec::new() };
    let systemd = Systemd::new(sys);
    let stamp = utc_stamp(sys.now_unix_ms());

    // 0. The node daemon first, so that it does not report k3s going away; its state (report
    //    buffer, hub store) is moved aside like the data below.
    for (action, work) in crate::daemon::host_ops::removal_steps(sys, &|path| aside_name(sys, path, &stamp)) {
        run.step(action, work);
    }

    // 1. Services: stopped and disabled first, so that nothing restarts what follows kills.
    let units = k3s_units(sys);
    let k3s_installed = !units.is_empty() || present(sys, Path::new(K3S_BIN));
    for unit in &units {
        if !systemd.available() {
            return Err(ResetError::NoSystemctl { unit: unit.clone() });
        }
        run.step(format!("stop and disable {unit}"), || {
            systemd.run_quick(&["stop", unit])?;
            systemd.run_quick(&["disable", unit]).map(|_| ())
        });
        if !run.errors.is_empty() {
            // Moving data aside under a running k3s would only make things worse.
            return Err(ResetError::Steps(run.failed()));
        }
    }

    // 2. What KillMode=process leaves running: the containerd-shims, and with them the
    //    containers, each with its whole process tree. Nothing else.
    for victim in shim_processes(sys, &settings.data_dir) {
        let others = victim.descendants.len();
        let action = match others {
            0 => format!("kill {} (pid {})", victim.exe.display(), victim.pid),
            n => format!("kill {} (pid {}) and the {n} processes it started", victim.exe.display(), victim.pid),
        };
        run.step(action, || {
            // Parents first: a killed process cannot start a replacement for a killed child.
            for pid in [&victim.pid].into_iter().chain(&victim.descendants) {
                match sys.kill(*pid) {
                    Err(e) if e.raw_os_error() != Some(nix::libc::ESRCH) => {
                        return Err(format!("pid {pid}: {}", describe_io(&e)))
                    }
                    _ => {}
                }
            }
            Ok(())
        });
    }

    // 3. Mounts, deepest first, each forced off and its mount point removed once nothing is
    //    mounted there any more; then the CNI network namespaces that were not mounts.
    let mounts = mounts_to_undo(sys);
    for mount in &mounts {
        let mount = mount.as_path();
        run.step(format!("unmount and remove {}", mount.display()), || {
            match sys.unmount(mount) {
                // EINVAL: not a mount point (any more), as after a re-run.
                Err(e) if e.raw_os_error() != Some(nix::libc::EINVAL) => {
                    return Err(format!("{}: it stays mounted, with its mount point", describe_io(&e)))
                }
                _ => {}
            }
            // A mount stacked on the same path, or one below that would not go, keeps it.
            if read_mounts(sys).iter().any(|m| m.starts_with(mount)) {
                return Ok(());
            }
            remove_tree(sys, mount)
        });
    }
    for netns in cni_netns(sys) {
        let path = Path::new(NETNS_DIR).join(&netns);
        if mounts.contains(&path) {
            continue; // went (or in a dry run would go) with its mount
        }
        run.step(format!("delete network namespace {netns}"), || remove_file(sys, &path));
    }

    // 4. Network links: the pods' veths enslaved to the CNI bridge, then the links flannel and
    //    kube-proxy made; and the routes k3s's tailscale integration advertised.
    let ip = sys.find_command("ip");
    let mut ports: Vec<String> =
        sys.read_dir_names(&Path::new(SYS_CLASS_NET).join(CNI_BRIDGE).join("brif")).unwrap_or_default();
    ports.sort();
    let ports = ports.into_iter().map(|port| (port, format!(" (a port of {CNI_BRIDGE})")));
    let links = ports.chain(NETWORK_LINKS.iter().map(|link| (link.to_string(), String::new())));
    for (link, what) in links {
        if !sys.exists(&Path::new(SYS_CLASS_NET).join(&link)) {
            continue;
        }
        run.step(format!("delete network link {link}{what}"), || {
            let ip = ip.as_deref().ok_or("the ip command (iproute2) is not installed")?;
            match sys.run(ip, &["link", "delete", &link]) {
                Ok(out) if out.success() => Ok(()),
                // Gone in the meantime (a veth goes with its peer): as good as deleted.
                Ok(_) if !sys.exists(&Path::new(SYS_CLASS_NET).join(&link)) => Ok(()),
                Ok(out) => Err(out.failure_summary()),
                Err(e) => Err(e.to_string()),
            }
        });
    }
    // As k3s-killall.sh does when tailscale is there; only when k3s was, so that a reset of a
    // clean host still changes nothing.
    if let Some(tailscale) = sys.find_command("tailscale").filter(|_| k3s_installed) {
        run.step("reset tailscale's advertised routes".to_string(), || {
            match sys.run(&tailscale, &["set", "--advertise-routes="]) {
                Ok(out) if out.success() => Ok(()),
                Ok(out) => Err(format!("tailscale set --advertise-routes= failed: {}", out.failure_summary())),
                Err(e) => Err(format!("cannot run tailscale: {e}")),
            }
        });
    }

    // 5. iptables rules of kube-proxy, the CNI and flannel.
    iptables(&mut run);

    // 6. Units, env files and k3node's records of them.
    for unit in &units {
        let unit_file = Path::new(UNIT_DIR).join(unit);
        let env_file = Path::new(UNIT_DIR).join(format!("{unit}.env"));
        for path in [unit_file, env_file] {
            if present(sys, &path) {
                run.step(format!("remove {}", path.display()), || remove_file(sys, &path));
            }
        }
    }
    for service in SERVICES {
        let record = record_path(service);
        if present(sys, &record) {
            run.step(format!("remove {}", record.display()), || remove_file(sys, &record));
        }
    }
    if !units.is_empty() {
        run.step("reload systemd units".to_string(), || systemd.run_quick(&["daemon-reload"]).map(|_| ()));
    }

    // 7. kubectl, crictl, ctr: only the links to k3s, never a command of the host's own.
    for name in LINKED_COMMANDS {
        let link = Path::new(BIN_DIR).join(name);
        if sys.read_link(&link).is_ok_and(|target| links_to_k3s(&target)) {
            run.step(format!("remove symlink {}", link.display()), || remove_file(sys, &link));
        }
    }

    // 8. The binary and the scripts.
    let files = [
        PathBuf::from(K3S_BIN),
        PathBuf::from(KILLALL_SCRIPT),
        uninstall_script_path("k3s"),
        uninstall_script_path("k3s-agent"),
    ];
    for path in files {
        if present(sys, &path) {
            run.step(format!("remove {}", path.display()), || remove_file(sys, &path));
        }
    }

    // 9. Runtime state: everything but what is still mounted (left as it is, and named).
    for dir in RUNTIME_DIRS {
        let dir = Path::new(dir);
        if !present(sys, dir) {
            continue;
        }
        run.step(format!("remove {}", dir.display()), || {
            let mut kept = Vec::new();
            remove_unmounted(sys, dir, &read_mounts(sys), &mut kept)?;
            match &kept[..] {
                [] => Ok(()),
                [one] => Err(format!("{} is still mounted, so it was left in place", one.display())),
                many => Err(format!(
                    "{} are still mounted, so they were left in place",
                    many.iter().map(|m| m.display().to_string()).collect::<Vec<_>>().join(", ")
                )),
            }
        });
    }

    // 9b. What a restore staged and never moved in (a run stopped between its check and its
    //     restore, or killed while staging): copies of an archive's files, k3s's config and
    //     the node password among them, beside the paths they were to replace.
    let mut staged = match crate::host::snapshot::staged_leftovers(sys, &settings.data_dir) {
        Ok(found) => found,
        Err(e) => {
            run.step("look for what a restore staged".to_string(), || Err(e.to_string()));
            Vec::new()
        }
    };
    staged.extend(present(sys, Path::new(RESTORE_STAGED)).then(|| PathBuf::from(RESTORE_STAGED)));
    for path in &staged {
        run.step(format!("remove {} (staged by a restore, never moved in)", path.display()), || remove_tree(sys, path));
    }

    // 10. Data: moved aside, never deleted, and self-contained once moved: a link into the data
    //     dir by absolute path (server/node-token -> /var/lib/rancher/k3s/server/token) would
    //     point into the next cluster's data after a reinstall, so it is made relative first.
    for (link, relative) in absolute_links_inside(sys, &settings.data_dir.join("server"), &settings.data_dir) {
        run.step(format!("relink {} to {} (relative)", link.display(), relative.display()), || {
            sys.symlink_atomic(&relative, &link).map_err(|e| describe_io(&e))
        });
    }
    let mut data = vec![settings.data_dir.clone(), PathBuf::from(CONFIG_DIR), PathBuf::from(KUBELET_DIR)];
    data.dedup();
    for from in data {
        if !present(sys, &from) {
            continue;
        }
        let to = aside_name(sys, &from, &stamp);
        run.step(format!("move {} aside to {}", from.display(), to.display()), || {
            sys.rename(&from, &to).map_err(|e| match e.raw_os_error() {
                Some(nix::libc::EBUSY) => {
                    format!("{}: it is a mount point; unmount it, or move it by hand", describe_io(&e))
                }
                Some(nix::libc::EXDEV) => format!("{} (it is on another filesystem than its parent?)", describe_io(&e)),
                _ => describe_io(&e),
            })
        });
    }

    // 11. k3node's own traces: its records (already gone), its state dir when empty (snapshots
    //     are moved aside like data, never deleted), and the helper binary itself.
    if !req.keep_helper {
        let state = Path::new(RECORD_DIR);
        if present(sys, state) {
            let empty = sys.read_dir_names(state).map(|n| n.is_empty()).unwrap_or(false);
            if empty {
                run.step(format!("remove {}", state.display()), || {
                    sys.remove_dir_all(state).map_err(|e| describe_io(&e))
                });
            } else {
                let to = aside_name(sys, state, &stamp);
                run.step(format!("move {} aside to {}", state.display(), to.display()), || {
                    sys.rename(state, &to).map_err(|e| describe_io(&e))
                });
            }
        }
        let helper = Path::new(HELPER_PATH);
        if present(sys, helper) {
            run.step(format!("remove {}", helper.display()), || remove_file(sys, helper));
        }
    }

    if !run.errors.is_empty() {
        return Err(ResetError::Steps(run.failed()));
    }
    let Run { mut actions, notes, .. } = run;
    // On a clean host the report stays empty: nothing to do, nothing worth a note.
    if !actions.is_empty() {
        actions.extend(notes);
    }
    Ok(ResetReport { actions })
}

struct Run<'a, 'p> {
    sys: &'a dyn HostSystem,
    dry_run: bool,
    progress: Progress<'p>,
    actions: Vec<String>,
    /// Said at the end of a report that has actions (a skipped iptables cleanup).
    notes: Vec<String>,
    errors: Vec<String>,
}

impl Run<'_, '_> {
    /// Reports `action` and, unless dry, does it; a failure is kept and the reset goes on (the
    /// steps are independent), failing at the end.
    fn step(&mut self, action: String, f: impl FnOnce() -> Result<(), String>) {
        if !self.dry_run {
            (self.progress)(&action);
            if let Err(e) = f() {
                self.errors.push(format!("{action}: {e}"));
            }
        }
        self.actions.push(action);
    }

    fn failed(&self) -> String {
        let done: Vec<&String> =
            self.actions.iter().filter(|a| !self.errors.iter().any(|e| e.starts_with(&format!("{a}: ")))).collect();
        let mut message = format!("reset did not finish:\n  {}", self.errors.join("\n  "));
        if !done.is_empty() {
            message.push_str(&format!("\ndone: {}", done.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; ")));
        }
        message.push_str("\nFix the cause and run `k3node reset` again: it goes on from where it stopped.");
        message
    }
}

/// Anything at the path, including a dangling symlink.
fn present(sys: &dyn HostSystem, path: &Path) -> bool {
    sys.exists(path) || sys.read_link(path).is_ok()
}

fn remove_file(sys: &dyn HostSystem, path: &Path) -> Result<(), String> {
    match sys.remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(describe_io(&e)),
        _ => Ok(()),
    }
}

/// [`system::remove_tree`], with nothing there counted as removed.
fn remove_tree(sys: &dyn HostSystem, path: &Path) -> Result<(), String> {
    match system::remove_tree(sys, path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(format!("{}: {}", path.display(), describe_io(&e))),
        _ => Ok(()),
    }
}

/// Removes the tree at `path` except what is mounted at or below it (`mounts`): a mount point
/// stays with everything it holds and is added to `kept`; nothing is removed through a mount.
fn remove_unmounted(
    sys: &dyn HostSystem,
    path: &Path,
    mounts: &[PathBuf],
    kept: &mut Vec<PathBuf>,
) -> Result<(), String> {
    if !mounts.iter().any(|m| m.starts_with(path)) {
        return remove_tree(sys, path);
    }
    if mounts.iter().any(|m| m == path) {
        kept.push(path.to_path_buf());
        return Ok(());
    }
    let mut names =
        sys.read_dir_names(path).map_err(|e| format!("cannot list {}: {}", path.display(), describe_io(&e)))?;
    names.sort();
    for name in names {
        remove_unmounted(sys, &path.join(name), mounts, kept)?;
    }
    Ok(())
}

/// k3s*.service unit files in /etc/systemd/system, sorted.
fn k3s_units(sys: &dyn HostSystem) -> Vec<String> {
    let mut units: Vec<String> = sys
        .read_dir_names(Path::new(UNIT_DIR))
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with("k3s") && n.ends_with(".service"))
        .collect();
    units.sort();
    units
}

#[derive(Debug, PartialEq, Eq)]
struct Victim {
    pid: i32,
    exe: PathBuf,
    /// Every process below it, each after its parent.
    descendants: Vec<i32>,
}

/// The containerd-shims k3s started: processes whose executable is one of its unpacked
/// `<data-dir>/data/*/bin/containerd-shim*` binaries, each with its descendants (the containers).
/// Never a process that is k3s itself (a user's kubectl, crictl or ctr) or another bundled tool.
fn shim_processes(sys: &dyn HostSystem, data_dir: &Path) -> Vec<Victim> {
    let own = sys.read_link(Path::new("/proc/self")).ok().and_then(|p| p.to_string_lossy().parse::<i32>().ok());
    let mut pids: Vec<i32> = sys
        .read_dir_names(Path::new("/proc"))
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n.parse().ok())
        .filter(|pid| Some(*pid) != own && *pid > 1)
        .collect();
    pids.sort();
    let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for pid in &pids {
        if let Some(ppid) = parent_of(sys, *pid) {
            children.entry(ppid).or_default().push(*pid);
        }
    }
    // /proc/<pid>/exe is resolved: a data dir that is a symlink is matched by its target too.
    let mut bin_roots = vec![data_dir.join("data")];
    if let Ok(target) = sys.read_link(data_dir) {
        bin_roots.push(crate::fsutil::parent_dir(data_dir).join(target).join("data"));
    }
    let is_shim = |exe: &Path| {
        bin_roots.iter().any(|root| {
            let Ok(rest) = exe.strip_prefix(root) else { return false };
            let parts: Vec<_> = rest.components().map(|c| c.as_os_str().to_string_lossy()).collect();
            matches!(&parts[..], [_, bin, name] if bin == "bin" && name.starts_with("containerd-shim"))
        })
    };
    let mut taken = BTreeSet::new();
    let mut victims = Vec::new();
    for pid in &pids {
        let Ok(exe) = sys.read_link(&PathBuf::from(format!("/proc/{pid}/exe"))) else { continue };
        let exe = PathBuf::from(exe.to_string_lossy().trim_end_matches(" (deleted)"));
        // A shim below another one goes with that one's tree.
        if !is_shim(&exe) || taken.contains(pid) {
            continue;
        }
        let mut descendants = Vec::new();
        let mut queue = vec![*pid];
        while let Some(parent) = queue.pop() {
            for child in children.get(&parent).into_iter().flatten() {
                if Some(*child) != own && taken.insert(*child) {
                    descendants.push(*child);
                    queue.push(*child);
                }
            }
        }
        taken.insert(*pid);
        victims.push(Victim { pid: *pid, exe, descendants });
    }
    victims
}

/// The ppid field of /proc/<pid>/stat (after the parenthesised command name, which may hold spaces).
fn parent_of(sys: &dyn HostSystem, pid: i32) -> Option<i32> {
    let stat = sys.read_to_string(&PathBuf::from(format!("/proc/{pid}/stat"))).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Mount points from /proc/self/mountinfo (field 5, octal escapes decoded), in order.
fn read_mounts(sys: &dyn HostSystem) -> Vec<PathBuf> {
    let text = sys.read_to_string(Path::new(MOUNTINFO)).unwrap_or_default();
    text.lines().filter_map(|l| l.split(' ').nth(4)).map(|m| PathBuf::from(unescape_mount(m))).collect()
}

fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let code = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts to undo, deepest first (reverse order sorts children before parents; a path
/// mounted twice appears twice, once per unmount).
fn mounts_to_undo(sys: &dyn HostSystem) -> Vec<PathBuf> {
    let netns_prefix = format!("{NETNS_DIR}/{CNI_NETNS_PREFIX}");
    let mut mounts: Vec<PathBuf> = read_mounts(sys)
        .into_iter()
        .filter(|m| MOUNT_DIRS.iter().any(|d| m.starts_with(d)) || m.to_string_lossy().starts_with(&netns_prefix))
        .collect();
    mounts.sort_by(|a, b| b.cmp(a));
    mounts
}

fn cni_netns(sys: &dyn HostSystem) -> Vec<String> {
    let mut names: Vec<String> = sys
        .read_dir_names(Path::new(NETNS_DIR))
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(CNI_NETNS_PREFIX))
        .collect();
    names.sort();
    names
}

/// iptables-save, without the lines naming KUBE-, CNI- or flannel, into iptables-restore (as
/// k3s-killall.sh does), for IPv4 and IPv6; only when there is something to remove.
fn iptables(run: &mut Run) {
    let sys = run.sys;
    for family in ["iptables", "ip6tables"] {
        let (save, restore) = (format!("{family}-save"), format!("{family}-restore"));
        let (Some(save_cmd), Some(restore_cmd)) = (sys.find_command(&save), sys.find_command(&restore)) else {
            run.notes.push(format!("{save} is not installed: no {family} rules to remove"));
            continue;
        };
        let rules = match sys.run(&save_cmd, &[]) {
            Ok(out) if out.success() => out.stdout,
            Ok(out) => {
                run.notes.push(format!("{save} failed ({}): {family} rules left as they are", out.failure_summary()));
                continue;
            }
            Err(e) => {
                run.notes.push(format!("cannot run {save} ({e}): {family} rules left as they are"));
                continue;
            }
        };
        let (kept, removed) = filter_rules(&rules);
        if removed == 0 {
            continue;
        }
        run.step(format!("remove {removed} KUBE-/CNI-/flannel {family} rules and chains"), || {
            match sys.run_with(&restore_cmd, &[], Some(kept.as_bytes()), crate::host::system::COMMAND_TIMEOUT) {
                Ok(out) if out.success() => Ok(()),
                Ok(out) => Err(format!("{restore} failed: {}", out.failure_summary())),
                Err(e) => Err(format!("cannot run {restore}: {e}")),
            }
        });
    }
}

/// The rules without the lines k3s's components own, and how many lines were dropped.
fn filter_rules(rules: &str) -> (String, usize) {
    let mut kept = String::with_capacity(rules.len());
    let mut removed = 0;
    for line in rules.lines() {
        if line.contains("KUBE-") || line.contains("CNI-") || line.to_ascii_lowercase().contains("flannel") {
            removed += 1;
        } else {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    (kept, removed)
}

/// Symlinks directly in `dir` whose absolute target lies inside `root`, with the relative
/// target that names the same file from the link's directory.
fn absolute_links_inside(sys: &dyn HostSystem, dir: &Path, root: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut names = sys.read_dir_names(dir).unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let link = dir.join(name);
            let target = sys.read_link(&link).ok()?;
            let inside = target.is_absolute() && target.starts_with(root);
            let relative = pathdiff(&target, dir)?;
            inside.then_some((link, relative))
        })
        .collect()
}

/// `target` relative to `base` (both absolute, without `..`).
fn pathdiff(target: &Path, base: &Path) -> Option<PathBuf> {
    let (t, b): (Vec<_>, Vec<_>) = (target.components().collect(), base.components().collect());
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// `<path>.k3node-reset-<stamp>`, with `-2`, `-3`... when a reset in the same second made one.
fn aside_name(sys: &dyn HostSystem, from: &Path, stamp: &str) -> PathBuf {
    let base = format!("{}.k3node-reset-{stamp}", from.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 2;
    while present(sys, &candidate) {
        candidate = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

/// `20250102T030405Z` for a Unix time in milliseconds (UTC; civil date from days since 1970).
fn utc_stamp(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests;
