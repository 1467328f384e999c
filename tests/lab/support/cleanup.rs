//! Finding and removing lab resources: nspawn processes, overlay mounts, netns, cgroups, run dirs.
//! Everything here only touches things named k3nlab* or living under LAB_ROOT.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::cmd::run;
use super::net::{list_netns, NETNS_PREFIX};
use super::LAB_ROOT;

/// Name of the cgroup (in the name=systemd and unified hierarchies) all lab hosts run under.
pub const CGROUP_NAME: &str = "k3nlab";

/// Collects errors of a best-effort teardown instead of stopping at the first one.
#[derive(Default)]
pub struct Problems(pub Vec<String>);

impl Problems {
    pub fn note<T>(&mut self, what: &str, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(format!("{what}: {e:#}"));
                None
            }
        }
    }
    pub fn into_result(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            bail!("lab cleanup incomplete:\n  {}", self.0.join("\n  "))
        }
    }
}

/// Everything a leftover lab can consist of, removed in dependency order.
pub fn remove_all_leftovers() -> Result<()> {
    let mut p = Problems::default();
    p.note("stopping leftover systemd-nspawn processes", stop_leftover_nspawns());
    for parent in p.note("finding lab cgroups", cgroup_parents()).unwrap_or_default() {
        let dir = parent.join(CGROUP_NAME);
        p.note(&format!("killing processes in {}", dir.display()), kill_cgroup_tree(&dir));
    }
    p.note("unmounting under /var/tmp/k3node-lab", unmount_under(Path::new(LAB_ROOT)));
    if let Some(names) = p.note("listing network namespaces", list_netns()) {
        for name in names.iter().filter(|n| n.starts_with(NETNS_PREFIX)) {
            p.note(&format!("deleting netns {name}"), delete_netns(name));
        }
    }
    for parent in cgroup_parents().unwrap_or_default() {
        let dir = parent.join(CGROUP_NAME);
        p.note(&format!("removing cgroup {}", dir.display()), remove_cgroup_tree(&dir));
    }
    p.note("removing nspawn runtime leftovers", remove_nspawn_runtime_leftovers());
    if let Ok(entries) = fs::read_dir(LAB_ROOT) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("run-") {
                p.note("removing old run dir", remove_run_dir(&entry.path()));
            }
        }
    }
    p.into_result()
}

/// pids of systemd-nspawn processes started for a lab (their command line has `-M k3nlab-...`).
pub fn find_lab_nspawns() -> Vec<Pid> {
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else { return pids };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_nspawn = args.first().is_some_and(|a| a.ends_with(b"systemd-nspawn"));
        let lab_machine = args.windows(2).any(|w| {
            (w[0] == b"-M" || w[0] == b"--machine") && w[1].starts_with(format!("{NETNS_PREFIX}-").as_bytes())
        }) || args.iter().any(|a| a.starts_with(format!("--machine={NETNS_PREFIX}-").as_bytes()));
        if is_nspawn && lab_machine {
            pids.push(Pid::from_raw(pid));
        }
    }
    pids
}

fn stop_leftover_nspawns() -> Result<()> {
    let pids = find_lab_nspawns();
    if pids.is_empty() {
        return Ok(());
    }
    eprintln!("k3node lab: stopping {} leftover systemd-nspawn process(es) {pids:?}", pids.len());
    for pid in &pids {
        let _ = kill(*pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in pids.iter().filter(|p| alive(**p)) {
        let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
        let _ = kill(*pid, Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<_> = pids.into_iter().filter(|p| alive(*p)).collect();
    if !left.is_empty() {
        bail!("systemd-nspawn processes {left:?} survive SIGKILL");
    }
    Ok(())
}

/// True while the process exists and is not a zombie.
pub fn alive(pid: Pid) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ..." -- comm may contain spaces and parentheses, the state follows the last ')'.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// The directories under which the lab makes its cgroup: the calling process's own cgroup in the
/// name=systemd v1 hierarchy and in the cgroup2 hierarchy (whichever are mounted). nspawn with
/// --keep-unit creates `payload`/`supervisor` cgroups below the cgroup it runs in, so every host must
/// run in a cgroup of its own or their systemds would share one.
pub fn cgroup_parents() -> Result<Vec<PathBuf>> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let own = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let own_path = |key: &str| -> Option<String> {
        own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            (controllers == key).then(|| path.to_owned())
        })
    };
    let mut parents = Vec::new();
    let mut seen_v2 = false;
    let mut seen_v1 = false;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let (root, mount_point, fstype, super_opts) = (left[3], left[4], right[0], right[2]);
        let key = if fstype == "cgroup2" && !seen_v2 {
            seen_v2 = true;
            ""
        } else if fstype == "cgroup" && !seen_v1 && super_opts.split(',').any(|o| o == "name=systemd") {
            seen_v1 = true;
            "name=systemd"
        } else {
            continue;
        };
        let Some(path) = own_path(key) else { continue };
        let rel = path.strip_prefix(root).unwrap_or(&path).trim_start_matches('/');
        parents.push(Path::new(mount_point).join(rel));
    }
    Ok(parents)
}

fn cgroup_dirs_depth_first(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                cgroup_dirs_depth_first(&entry.path(), out);
            }
        }
    }
    if dir.is_dir() {
        out.push(dir.to_owned());
    }
}

/// SIGKILLs every process in the cgroup tree at `dir` until it is empty (bounded).
pub fn kill_cgroup_tree(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut dirs = Vec::new();
        cgroup_dirs_depth_first(dir, &mut dirs);
        let mut pids = Vec::new();
        for d in &dirs {
            if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
                pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("processes {pids:?} in {} survive SIGKILL", dir.display());
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes the (empty) cgroup tree at `dir`, deepest first, retrying while processes finish exiting.
pub fn remove_cgroup_tree(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut dirs = Vec::new();
        cgroup_dirs_depth_first(dir, &mut dirs);
        let mut last_err = None;
        for d in &dirs {
            match fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => last_err = Some(format!("rmdir {}: {e}", d.display())),
            }
        }
        match last_err {
            None => return Ok(()),
            Some(e) if Instant::now() >= deadline => bail!(e),
            Some(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts `mount_point` (retrying while busy, lazily as a last resort).
pub fn unmount(mount_point: &Path) -> Result<()> {
    let mut last = None;
    for _ in 0..10 {
        match run(Command::new("umount").arg(mount_point)) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        if !mounts_under(mount_point).contains(&mount_point.to_path_buf()) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    run(Command::new("umount").arg("-l").arg(mount_point))
        .map(drop)
        .with_context(|| format!("after umount kept failing: {:#}", last.expect("at least one attempt")))
}

pub fn unmount_under(dir: &Path) -> Result<()> {
    let mut p = Problems::default();
    for m in mounts_under(dir) {
        p.note(&format!("unmounting {}", m.display()), unmount(&m));
    }
    p.into_result()
}

pub fn delete_netns(name: &str) -> Result<()> {
    run(Command::new("ip").args(["netns", "delete", name])).map(drop)
}

/// Removes a run dir, refusing while anything is still mounted below it.
pub fn remove_run_dir(dir: &Path) -> Result<()> {
    let mounted = mounts_under(dir);
    if !mounted.is_empty() {
        bail!("not removing {}: still mounted below it: {mounted:?}", dir.display());
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// nspawn keeps per-machine directories under /run/systemd/nspawn and sometimes fails to remove them.
fn remove_nspawn_runtime_leftovers() -> Result<()> {
    for sub in ["propagate", "unix-export", "locks"] {
        let Ok(entries) = fs::read_dir(Path::new("/run/systemd/nspawn").join(sub)) else { continue };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&format!("{NETNS_PREFIX}-")) {
                let path = entry.path();
                if !mounts_under(&path).is_empty() {
                    unmount_under(&path)?;
                }
                let r = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                r.with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    Ok(())
}
