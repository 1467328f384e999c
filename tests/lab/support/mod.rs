//! The lab: real hosts (systemd-nspawn containers with systemd as PID 1 and OpenSSH) on one machine,
//! each in its own network namespace, on a bridge in the lab netns `k3nlab` (172.30.77.0/24).
//! See ../shared/lab.md for the recipe and tests/lab/base-image.sh for the image the hosts boot.
//!
//! Needs root. One lab at a time per machine (a lock file serializes processes; names and addresses
//! are fixed). Every resource is removed when the `Lab` is dropped (also while unwinding from a
//! panic); whatever a killed run left behind is removed by the next `Lab::start` or by
//! `cleanup_leftovers()`. `Lab::start` never skips: when the lab cannot be built it returns an error
//! saying what failed (command, stderr, boot log tail), and the caller fails the test.
#![allow(dead_code)]

mod cleanup;
mod cmd;
mod host;
mod net;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use self::cleanup::{Problems, CGROUP_NAME};
use self::cmd::{file_tail, require_programs, tail};
use self::host::HostDirs;
use self::net::LAB_NETNS;

/// Per-run directories (and the lock file) live here.
pub const LAB_ROOT: &str = "/var/tmp/k3node-lab";
/// Time all hosts together get to boot until sshd answers and systemd says running/degraded
/// (K3NODE_LAB_BOOT_TIMEOUT=seconds overrides it, e.g. for a slow machine).
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// Time hosts get to power off after SIGTERM before they are SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long start() waits for another process's lab to go away (several developers' test runs
/// can queue on one machine).
const LOCK_WAIT: Duration = Duration::from_secs(3600);
/// Labs of this process that hold the lab lock and are not yet torn down.
static LIVE_LABS: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
pub struct LabSpec {
    /// Host names (1-32 chars of a-z, 0-9, inner '-'), e.g. ["h1", "h2", "h3"]; host i gets 172.30.77.(11+i).
    pub hosts: Vec<String>,
    /// Those of `hosts` that boot Debian bullseye (glibc 2.31) instead of bookworm.
    pub bullseye: Vec<String>,
    /// Directories (absolute, inside every host) kept on the machine's own filesystem instead of
    /// the host's overlay, as on a host whose data has a disk of its own: an empty directory
    /// of the run dir is bind-mounted there (seen the same from the machine, through `root`).
    /// For benchmarks: overlayfs does not write like a disk's filesystem (it ignores
    /// `sync_file_range`, for one).
    pub own_disk: Vec<String>,
}

impl LabSpec {
    pub fn new(hosts: &[&str]) -> LabSpec {
        LabSpec { hosts: hosts.iter().map(|h| h.to_string()).collect(), ..LabSpec::default() }
    }
}

pub struct LabHost {
    pub name: String,
    /// 172.30.77.11, .12, ... in the order of `LabSpec::hosts`.
    pub address: Ipv4Addr,
    /// The host's network namespace (`k3nlab-<name>`, under /run/netns).
    pub netns: String,
    /// The host's root filesystem (merged overlay) as seen from the machine; writable.
    pub root: PathBuf,
    key: PathBuf,
    dir: PathBuf,
}

impl LabHost {
    /// Runs a shell command on the host as root over OpenSSH; Ok(stdout) on exit 0, Err (with
    /// stderr) otherwise. Test setup and inspection only.
    /// Where the machine keeps this host's `LabSpec::own_disk` path `path`.
    pub fn own_disk_source(&self, path: &str) -> PathBuf {
        host::own_disk_source(&self.dir, path)
    }

    pub fn sh(&self, cmd: &str) -> Result<String> {
        self.sh_as("root", cmd)
    }

    /// As `sh`, logged in as `user` (root, ops or pw; all accept the lab client key).
    pub fn sh_as(&self, user: &str, cmd: &str) -> Result<String> {
        host::ssh_run(&self.key, user, self.address, cmd).with_context(|| format!("on lab host {}", self.name))
    }

    /// Replaces the host's ed25519 host key with a new one and restarts sshd; returns the new
    /// public key ("ssh-ed25519 AAAA...").
    pub fn rotate_host_key(&self) -> Result<String> {
        let key = host::install_host_key(&self.root, &self.dir, &self.name)
            .with_context(|| format!("new host key for lab host {}", self.name))?;
        self.restart_sshd()?;
        Ok(key)
    }

    /// Restarts sshd so that it reads its config and keys again, and returns once port 22 accepts
    /// connections. Never `reload`: sshd re-executes itself on SIGHUP, and `systemctl reload`
    /// returns before it listens again, so the next connection can be refused. Restart waits for
    /// the unit's READY=1 (Type=notify), sent after the listeners are bound; the session running
    /// it survives (KillMode=process).
    pub fn restart_sshd(&self) -> Result<()> {
        self.sh("systemctl restart ssh.service")?;
        net::wait_tcp(self.address, 22, Duration::from_secs(10))
            .with_context(|| format!("sshd on lab host {} after its restart", self.name))
    }

    /// Cuts the host off the network: its eth0 goes down (inside the host's netns). Connections to
    /// it then time out (no RST, no ICMP), as for a host whose cable was pulled.
    pub fn disconnect(&self) -> Result<()> {
        net::set_host_link(&self.netns, false).with_context(|| format!("disconnecting lab host {}", self.name))
    }

    /// Undoes `disconnect` and returns once the host's port 22 accepts connections again (≤ 10 s).
    pub fn reconnect(&self) -> Result<()> {
        net::set_host_link(&self.netns, true).with_context(|| format!("reconnecting lab host {}", self.name))?;
        net::wait_tcp(self.address, 22, Duration::from_secs(10))
            .with_context(|| format!("lab host {} after reconnect", self.name))
    }

    /// The host's current ed25519 host key, "ssh-ed25519 AAAA..." (read from its filesystem, so it
    /// follows `rotate_host_key`).
    pub fn public_host_key(&self) -> String {
        let path = self.root.join("etc/ssh/ssh_host_ed25519_key.pub");
        let line = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        host::key_type_and_blob(&line)
    }
}

struct Nspawn {
    host: String,
    child: Child,
    command: String,
}

pub struct Lab {
    hosts: Vec<LabHost>,
    run_dir: PathBuf,
    files_dir: PathBuf,
    client_key: PathBuf,
    // What to tear down, recorded as it is made (so a half-built lab is torn down too).
    nspawns: Vec<Nspawn>,
    mounts: Vec<PathBuf>,
    netns: Vec<String>,
    cgroups: Vec<PathBuf>,
    _lock: LiveLock,
}

/// The lab lock, counted in LIVE_LABS while held.
struct LiveLock(Flock<File>);

impl Drop for LiveLock {
    fn drop(&mut self) {
        LIVE_LABS.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Lab {
    /// Builds the lab (see the module docs); all hosts are booted and answer ssh when it returns.
    pub fn start(spec: LabSpec) -> Result<Lab> {
        let started = Instant::now();
        preflight(&spec)?;
        fs::create_dir_all(LAB_ROOT).with_context(|| format!("creating {LAB_ROOT}"))?;
        let lock = acquire_lock(LOCK_WAIT)?;
        LIVE_LABS.fetch_add(1, Ordering::SeqCst);
        let lock = LiveLock(lock);
        cleanup::remove_all_leftovers().context("removing what an earlier lab run left behind")?;
        let base = ensure_base_image("bookworm")?;
        let old_base = if spec.bullseye.is_empty() { None } else { Some(ensure_base_image("bullseye")?) };

        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let run_dir = Path::new(LAB_ROOT).join(format!("run-{stamp}-{}", std::process::id()));
        let files_dir = run_dir.join("files");
        let client_dir = run_dir.join("client");
        let mut lab = Lab {
            hosts: Vec::new(),
            client_key: client_dir.join("id_ed25519"),
            run_dir,
            files_dir,
            nspawns: Vec::new(),
            mounts: Vec::new(),
            netns: Vec::new(),
            cgroups: Vec::new(),
            _lock: lock,
        };
        // From here on an error drops `lab`, which tears down whatever was made.
        lab.build(&spec, &base, old_base.as_deref())?;
        eprintln!(
            "k3node lab: {} host(s) up in {:.1?} ({})",
            lab.hosts.len(),
            started.elapsed(),
            lab.run_dir.display()
        );
        Ok(lab)
    }

    fn build(&mut self, spec: &LabSpec, base: &Path, old_base: Option<&Path>) -> Result<()> {
        for d in [&self.run_dir, &self.files_dir, self.client_key.parent().expect("has parent")] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        host::keygen(&self.client_key, "k3node-lab-client").context("making the lab client key")?;
        let client_pub = fs::read_to_string(host::pub_path(&self.client_key)).context("reading the lab client key")?;

        self.netns.push(LAB_NETNS.to_owned());
        net::create_lab_netns().context("creating the lab network")?;

        let mut host_cgroups = Vec::new();
        for parent in cleanup::cgroup_parents()? {
            let lab_cg = parent.join(CGROUP_NAME);
            fs::create_dir_all(&lab_cg).with_context(|| format!("creating cgroup {}", lab_cg.display()))?;
            self.cgroups.push(lab_cg);
        }

        let all: Vec<(String, Ipv4Addr)> =
            spec.hosts.iter().enumerate().map(|(i, n)| (n.clone(), net::host_address(i))).collect();
        for (i, (name, address)) in all.iter().enumerate() {
            let netns = net::host_netns(name);
            let dirs = HostDirs::new(self.run_dir.join("hosts").join(name));
            fs::create_dir_all(&dirs.dir).with_context(|| format!("creating {}", dirs.dir.display()))?;
            self.netns.push(netns.clone());
            net::create_host_netns(i, &netns, *address).with_context(|| format!("network of lab host {name}"))?;
            let lower = match old_base {
                Some(old) if spec.bullseye.contains(name) => old,
                _ => base,
            };
            host::mount_overlay(lower, &dirs).with_context(|| format!("root filesystem of lab host {name}"))?;
            self.mounts.push(dirs.merged.clone());
            for path in &spec.own_disk {
                let mounted = host::mount_own_disk(&dirs, path)
                    .with_context(|| format!("{path} of lab host {name} on the machine's own filesystem"))?;
                self.mounts.push(mounted);
            }
            host::personalize(&dirs.merged, &dirs.dir, name, &client_pub, &all)
                .with_context(|| format!("preparing lab host {name}"))?;
            let cgs: Vec<PathBuf> = self.cgroups.iter().map(|c| c.join(name)).collect();
            for cg in &cgs {
                fs::create_dir_all(cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
            }
            host_cgroups.push(cgs);
            self.hosts.push(LabHost {
                name: name.clone(),
                address: *address,
                netns,
                root: dirs.merged.clone(),
                key: self.client_key.clone(),
                dir: dirs.dir.clone(),
            });
        }

        // Boot all hosts at once, then wait for them in parallel.
        let timeout = std::env::var("K3NODE_LAB_BOOT_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(BOOT_TIMEOUT);
        let deadline = Instant::now() + timeout;
        for (h, cgs) in self.hosts.iter().zip(&host_cgroups) {
            let dirs = HostDirs::new(h.dir.clone());
            let (child, command) =
                host::spawn_nspawn(&format!("{}-{}", net::NETNS_PREFIX, h.name), &h.netns, &dirs, cgs)
                    .with_context(|| format!("booting lab host {}", h.name))?;
            self.nspawns.push(Nspawn { host: h.name.clone(), child, command });
        }
        let mut waiters = Vec::new();
        for mut n in std::mem::take(&mut self.nspawns) {
            let h = self.host(&n.host);
            let (name, address, key, log) =
                (h.name.clone(), h.address, h.key.clone(), HostDirs::new(h.dir.clone()).boot_log);
            waiters.push(std::thread::spawn(move || {
                let r = net::enter_netns(LAB_NETNS)
                    .and_then(|()| host::wait_ready(&name, address, &key, (&mut n.child, &n.command), &log, deadline));
                (n, r)
            }));
        }
        let mut problems = Vec::new();
        for w in waiters {
            match w.join() {
                Ok((n, r)) => {
                    match r {
                        Ok(state) if state == "degraded" => {
                            let failed =
                                self.host(&n.host).sh("systemctl --failed --no-legend --plain").unwrap_or_default();
                            eprintln!(
                                "k3node lab: host {} is up but degraded; failed units:\n{}",
                                n.host,
                                failed.trim_end()
                            );
                        }
                        Ok(_) => {}
                        Err(e) => problems.push(format!("{e:#}")),
                    }
                    self.nspawns.push(n);
                }
                Err(_) => problems.push("a boot waiter thread panicked".to_owned()),
            }
        }
        if !problems.is_empty() {
            bail!("lab hosts did not come up:\n{}", problems.join("\n"));
        }
        Ok(())
    }

    pub fn hosts(&self) -> &[LabHost] {
        &self.hosts
    }

    /// The host named `name`; panics if there is none.
    pub fn host(&self, name: &str) -> &LabHost {
        self.hosts.iter().find(|h| h.name == name).unwrap_or_else(|| {
            let names: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
            panic!("no lab host named {name:?}; the lab has {names:?}")
        })
    }

    /// Private key (ed25519, no passphrase) authorized on every host for root, ops and pw.
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// "172.30.77.11 ssh-ed25519 AAAA..." for a known_hosts file (the host's current key).
    pub fn known_hosts_line(&self, host: &LabHost) -> String {
        format!("{} {}", host.address, host.public_host_key())
    }

    /// Per-run scratch dir for test files (removed with the lab).
    pub fn dir(&self) -> &Path {
        &self.files_dir
    }

    /// Name of the lab network namespace (/run/netns/k3nlab).
    pub fn netns(&self) -> &str {
        LAB_NETNS
    }

    /// Runs `f` on a new thread that has entered the lab netns (that thread only), so sockets it
    /// creates reach the hosts. Threads `f` spawns inherit the netns (e.g. a tokio runtime built
    /// inside `f`); an existing runtime's threads do not. Panics of `f` propagate.
    pub fn in_netns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let thread = std::thread::Builder::new()
            .name("k3nlab-netns".into())
            .spawn(move || {
                if let Err(e) = net::enter_netns(LAB_NETNS) {
                    panic!("{e:#}");
                }
                f()
            })
            .expect("spawning a thread");
        thread.join().unwrap_or_else(|payload| std::panic::resume_unwind(payload))
    }

    /// `ip netns exec k3nlab PROGRAM`: add arguments, then run it as the operator would.
    pub fn command_in_netns(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", LAB_NETNS]).arg(program);
        cmd
    }

    fn teardown(&mut self) -> Result<()> {
        let started = Instant::now();
        let mut p = Problems::default();
        // Orderly poweroff first (nspawn turns SIGTERM into a shutdown request to the host's systemd),
        // then SIGKILL to the nspawn process group and everything in the hosts' cgroups.
        for n in &self.nspawns {
            let _ = kill(Pid::from_raw(n.child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && self.nspawns.iter_mut().any(|n| matches!(n.child.try_wait(), Ok(None))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for n in &mut self.nspawns {
            if matches!(n.child.try_wait(), Ok(None)) {
                let log = HostDirs::new(Path::new(&self.run_dir).join("hosts").join(&n.host)).boot_log;
                eprintln!(
                    "k3node lab: host {} did not power off within {STOP_GRACE:?}, killing it; boot log tail:\n{}",
                    n.host,
                    file_tail(&log, 10)
                );
                let pid = n.child.id() as i32;
                let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        for cg in &self.cgroups {
            p.note(&format!("killing processes in {}", cg.display()), cleanup::kill_cgroup_tree(cg));
        }
        for mut n in self.nspawns.drain(..) {
            p.note(&format!("reaping systemd-nspawn of host {}", n.host), n.child.wait().map_err(Into::into));
        }
        for m in self.mounts.drain(..).rev() {
            p.note(&format!("unmounting {}", m.display()), cleanup::unmount(&m));
        }
        for ns in self.netns.drain(..).rev() {
            if net::netns_path(&ns).exists() {
                p.note(&format!("deleting netns {ns}"), cleanup::delete_netns(&ns));
            }
        }
        for cg in self.cgroups.drain(..) {
            p.note(&format!("removing cgroup {}", cg.display()), cleanup::remove_cgroup_tree(&cg));
        }
        p.note(&format!("removing {}", self.run_dir.display()), cleanup::remove_run_dir(&self.run_dir));
        // Anything missed above (e.g. a process started by a thread that panicked).
        p.note("final sweep", cleanup::remove_all_leftovers());
        eprintln!("k3node lab: torn down in {:.1?}", started.elapsed());
        p.into_result()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("k3node lab: teardown: {e:#}");
        }
    }
}

/// Removes every leftover of any earlier lab run: nspawn processes of lab machines (and anything in
/// the lab's cgroups), mounts under /var/tmp/k3node-lab, netns named k3nlab*, run dirs.
/// Fails if another process's lab is running. In a process that still has a live `Lab` (e.g. one a
/// trial leaked), it removes that lab's resources too: use it only when that `Lab` cannot be dropped.
pub fn cleanup_leftovers() -> Result<()> {
    fs::create_dir_all(LAB_ROOT).with_context(|| format!("creating {LAB_ROOT}"))?;
    let _lock = if LIVE_LABS.load(Ordering::SeqCst) > 0 { None } else { Some(acquire_lock(Duration::ZERO)?) };
    cleanup::remove_all_leftovers()
}

fn preflight(spec: &LabSpec) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab needs root (namespaces, mounts, systemd-nspawn); running as uid {}", nix::unistd::geteuid());
    }
    require_programs(&[
        ("ip", "iproute2"),
        ("mount", "mount"),
        ("umount", "mount"),
        ("systemd-nspawn", "systemd-container"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
    ])?;
    if spec.hosts.is_empty() {
        bail!("LabSpec has no hosts");
    }
    if spec.hosts.len() > net::MAX_HOSTS {
        bail!("LabSpec has {} hosts, the lab takes at most {}", spec.hosts.len(), net::MAX_HOSTS);
    }
    for (i, name) in spec.hosts.iter().enumerate() {
        host::validate_name(name)?;
        if spec.hosts[..i].contains(name) {
            bail!("LabSpec names host {name:?} twice");
        }
    }
    Ok(())
}

/// Takes the machine-wide lab lock (LAB_ROOT/lock), waiting up to `wait` for another process's lab.
fn acquire_lock(wait: Duration) -> Result<Flock<File>> {
    let path = Path::new(LAB_ROOT).join("lock");
    let deadline = Instant::now() + wait;
    let mut told = false;
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                lock.set_len(0)?;
                writeln!(&mut *lock, "{}", std::process::id())?;
                return Ok(lock);
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                if Instant::now() >= deadline {
                    bail!(
                        "another lab is running (process {}, lock {}); labs share names and addresses, run one at a time",
                        holder.trim(),
                        path.display()
                    );
                }
                if !told {
                    eprintln!("k3node lab: waiting for the lab of process {} to finish", holder.trim());
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Err((_, e)) => bail!("locking {}: {e}", path.display()),
        }
    }
}

fn cache_dir() -> PathBuf {
    std::env::var_os("K3NODE_LAB_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/cache/k3node-lab"))
}

/// tests/lab/base-image.sh, found from the crate root or from this file's location.
fn base_image_script() -> Option<PathBuf> {
    let from_manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab/base-image.sh");
    let from_here = Path::new(file!()).parent().and_then(Path::parent).map(|d| d.join("base-image.sh"));
    [Some(from_manifest), from_here].into_iter().flatten().find(|p| p.is_file())
}

/// The base image dir (building it with base-image.sh when its stamp is missing).
/// The cached image of `suite` (bookworm, bullseye), built with tests/lab/base-image.sh if missing.
fn ensure_base_image(suite: &str) -> Result<PathBuf> {
    let script = base_image_script();
    // The script owns the version; follow it so a bumped image is picked up.
    let version = script
        .as_ref()
        .and_then(|s| fs::read_to_string(s).ok())
        .and_then(|text| {
            text.lines().find_map(|l| l.trim().strip_prefix("LAB_BASE_VERSION=").map(|v| v.trim().to_owned()))
        })
        .unwrap_or_else(|| "1".to_owned());
    let base = match suite {
        "bookworm" => cache_dir().join(format!("base-v{version}")),
        other => cache_dir().join(format!("base-{other}-v{version}")),
    };
    let stamp = base.join(".k3node-lab-base");
    if stamp.is_file() {
        return Ok(base);
    }
    let Some(script) = script else {
        bail!("the lab base image {} is missing and tests/lab/base-image.sh cannot be found", base.display());
    };
    eprintln!("k3node lab: building the base image {} with {} (about a minute)", base.display(), script.display());
    let out = Command::new("bash")
        .arg(&script)
        .arg(suite)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}\n{}",
            script.display(),
            out.status,
            tail(&String::from_utf8_lossy(&out.stdout), 10),
            tail(&String::from_utf8_lossy(&out.stderr), 30)
        );
    }
    if !stamp.is_file() {
        bail!("{} succeeded but {} is still missing", script.display(), stamp.display());
    }
    Ok(base)
}
