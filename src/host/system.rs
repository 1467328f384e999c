//! The host system boundary.
//!
//! Everything the host agent learns from or changes on the machine goes through [`HostSystem`],
//! so that each check can be unit-tested against an in-memory [`fake::FakeSystem`] with the
//! exact /proc and /sys contents of the case at hand, and only [`RealSystem`] touches the host.
//! /proc and /sys are read with [`HostSystem::read_to_string`] like any other file for that reason.

use std::fs;
use std::io::{self, Read};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Directories searched for commands besides `PATH`: sudo and SSH sessions often run with a
/// PATH that lacks the sbin directories where modprobe and iptables live.
pub const EXTRA_COMMAND_DIRS: &[&str] =
    &["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// A command the agent runs must never hang the operator's run: `k3s --version` on a broken
/// binary or `modprobe` stuck on a wedged kernel are killed after this long.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes an unprivileged writer can still use (statvfs f_bavail), which is what k3s's
    /// kubelet eviction thresholds look at too.
    pub available_bytes: u64,
    pub total_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Uname {
    pub sysname: String,
    pub nodename: String,
    pub release: String,
    pub machine: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandOutput {
    /// Exit code; None when the process was killed by a signal.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// The most useful one-line description of a failure, for check reasons.
    pub fn failure_summary(&self) -> String {
        let detail = [self.stderr.trim(), self.stdout.trim()]
            .into_iter()
            .find(|s| !s.is_empty())
            .and_then(|s| s.lines().last())
            .unwrap_or("")
            .to_string();
        let status = match self.status {
            Some(code) => format!("exit status {code}"),
            None => "killed by a signal".to_string(),
        };
        if detail.is_empty() {
            status
        } else {
            format!("{detail} ({status})")
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub name: String,
    pub address: IpAddr,
    pub prefix_len: u8,
}

pub trait HostSystem: Send + Sync {
    fn read_to_string(&self, path: &Path) -> io::Result<String>;
    /// True for anything at `path` (file, directory, socket), following symlinks.
    fn exists(&self, path: &Path) -> bool;
    /// Entry names of a directory, unsorted.
    fn read_dir_names(&self, path: &Path) -> io::Result<Vec<String>>;
    fn read_link(&self, path: &Path) -> io::Result<PathBuf>;
    /// Replaces a regular file atomically (temp file, fsync, rename).
    fn write_atomic(&self, path: &Path, contents: &[u8], mode: u32) -> io::Result<()>;
    /// Writes a kernel tunable in place: /proc/sys files cannot be renamed over.
    fn write_proc(&self, path: &Path, value: &str) -> io::Result<()>;
    fn disk_space(&self, path: &Path) -> io::Result<DiskSpace>;
    fn uname(&self) -> Uname;
    fn effective_uid(&self) -> u32;
    /// An executable named `name` in PATH or [`EXTRA_COMMAND_DIRS`].
    fn find_command(&self, name: &str) -> Option<PathBuf>;
    /// Runs `program` directly (never through a shell) with stdin closed, in the C locale.
    fn run(&self, program: &Path, args: &[&str]) -> io::Result<CommandOutput>;
    fn interface_addresses(&self) -> io::Result<Vec<InterfaceAddress>>;
    fn now_unix_ms(&self) -> i64;

    // What installing and removing k3s needs besides the above. Each has a default that refuses
    // (or, for the harmless ones, falls back), so that a new implementor only writes what it uses.

    /// Like [`HostSystem::run`], but killed after `timeout` instead of [`COMMAND_TIMEOUT`], and
    /// with `stdin` written to the program's standard input (closed when None).
    fn run_with(
        &self,
        program: &Path,
        args: &[&str],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> io::Result<CommandOutput> {
        let _ = timeout;
        match stdin {
            None => self.run(program, args),
            Some(_) => Err(unsupported("run with stdin")),
        }
    }
    /// sha256 of a file's bytes (hex), streamed: binaries are large.
    fn sha256_file(&self, path: &Path) -> io::Result<String> {
        let _ = path;
        Err(unsupported("sha256_file"))
    }
    /// Permission bits (mode & 0o7777) of what `path` names, following symlinks.
    fn file_mode(&self, path: &Path) -> io::Result<u32> {
        let _ = path;
        Err(unsupported("file_mode"))
    }
    /// Points `link` at `target` atomically: a symlink under a temp name, renamed over `link`.
    fn symlink_atomic(&self, target: &Path, link: &Path) -> io::Result<()> {
        let _ = (target, link);
        Err(unsupported("symlink_atomic"))
    }
    /// Creates a directory and its missing parents; a directory created here gets `mode`.
    fn create_dir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        let _ = (path, mode);
        Err(unsupported("create_dir_all"))
    }
    /// Removes a file or a symlink (never what the symlink points to).
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let _ = path;
        Err(unsupported("remove_file"))
    }
    /// Removes a directory tree. Callers make sure nothing is mounted below it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let _ = path;
        Err(unsupported("remove_dir_all"))
    }
    /// Renames within one filesystem (atomic), then flushes the directory entry.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let _ = (from, to);
        Err(unsupported("rename"))
    }
    /// Unmounts the topmost mount at `path`, forced (MNT_FORCE, as `umount -f`): a busy one
    /// stays mounted (EBUSY), never detached lazily, so that nothing is removed through it.
    fn unmount(&self, path: &Path) -> io::Result<()> {
        let _ = path;
        Err(unsupported("unmount"))
    }
    /// Sends SIGKILL to a process.
    fn kill(&self, pid: i32) -> io::Result<()> {
        let _ = pid;
        Err(unsupported("kill"))
    }
    /// Waits; the fake advances its clock instead, so that deadlines are testable without waiting.
    fn sleep(&self, duration: Duration) {
        thread::sleep(duration)
    }
}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, format!("{what} is not supported by this HostSystem"))
}

/// The machine the agent runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealSystem;

impl HostSystem for RealSystem {
    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        // /proc and /sys files are not always valid UTF-8 (comm names, cmdlines): be lossy
        // rather than turn a stray byte into a missing fact.
        let bytes = fs::read(path)?;
        Ok(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn read_dir_names(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        fs::read_link(path)
    }

    fn write_atomic(&self, path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
        crate::fsutil::write_atomic(path, contents, mode)
    }

    fn write_proc(&self, path: &Path, value: &str) -> io::Result<()> {
        use std::io::Write;
        // No create, no truncate dance: a missing tunable must be an error, not a new file.
        let mut file = fs::OpenOptions::new().write(true).open(path)?;
        file.write_all(value.as_bytes())
    }

    fn disk_space(&self, path: &Path) -> io::Result<DiskSpace> {
        let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
        let fragment = st.fragment_size() as u64;
        Ok(DiskSpace {
            available_bytes: (st.blocks_available() as u64).saturating_mul(fragment),
            total_bytes: (st.blocks() as u64).saturating_mul(fragment),
        })
    }

    fn uname(&self) -> Uname {
        match nix::sys::utsname::uname() {
            Ok(u) => Uname {
                sysname: u.sysname().to_string_lossy().into_owned(),
                nodename: u.nodename().to_string_lossy().into_owned(),
                release: u.release().to_string_lossy().into_owned(),
                machine: u.machine().to_string_lossy().into_owned(),
            },
            // uname(2) cannot fail on Linux; empty fields make the checks say "unknown".
            Err(_) => Uname::default(),
        }
    }

    fn effective_uid(&self) -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn find_command(&self, name: &str) -> Option<PathBuf> {
        if name.is_empty() || name.contains('/') {
            return None;
        }
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        let dirs = std::env::split_paths(&path_var)
            .filter(|d| d.is_absolute())
            .chain(EXTRA_COMMAND_DIRS.iter().map(PathBuf::from));
        for dir in dirs {
            let candidate = dir.join(name);
            if let Ok(meta) = fs::metadata(&candidate) {
                if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                    return Some(candidate);
                }
            }
        }
        None
    }

    fn run(&self, program: &Path, args: &[&str]) -> io::Result<CommandOutput> {
        run_with_timeout(program, args, COMMAND_TIMEOUT)
    }

    fn interface_addresses(&self) -> io::Result<Vec<InterfaceAddress>> {
        let mut out = Vec::new();
        for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
            let Some(addr) = ifa.address.as_ref() else { continue };
            let (address, prefix_len) = if let Some(v4) = addr.as_sockaddr_in() {
                let bits = ifa.netmask.as_ref().and_then(|m| m.as_sockaddr_in()).map(|m| m.ip().to_bits().count_ones());
                (IpAddr::V4(v4.ip()), bits.unwrap_or(32))
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                let bits =
                    ifa.netmask.as_ref().and_then(|m| m.as_sockaddr_in6()).map(|m| m.ip().to_bits().count_ones());
                (IpAddr::V6(v6.ip()), bits.unwrap_or(128))
            } else {
                continue; // AF_PACKET entries: link-layer, no IP
            };
            out.push(InterfaceAddress { name: ifa.interface_name.clone(), address, prefix_len: prefix_len as u8 });
        }
        Ok(out)
    }

    fn now_unix_ms(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        }
    }

    fn run_with(
        &self,
        program: &Path,
        args: &[&str],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> io::Result<CommandOutput> {
        run_with_input(program, args, stdin, timeout)
    }

    fn sha256_file(&self, path: &Path) -> io::Result<String> {
        let mut file = fs::File::open(path)?;
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        io::copy(&mut file, &mut hasher)?;
        Ok(hex::encode(sha2::Digest::finalize(hasher)))
    }

    fn file_mode(&self, path: &Path) -> io::Result<u32> {
        Ok(fs::metadata(path)?.permissions().mode() & 0o7777)
    }

    fn symlink_atomic(&self, target: &Path, link: &Path) -> io::Result<()> {
        let dir = crate::fsutil::parent_dir(link);
        let name = link.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let nonce: u64 = rand::random();
        let tmp = dir.join(format!(".{name}.{nonce:016x}.k3node-tmp"));
        std::os::unix::fs::symlink(target, &tmp)?;
        if let Err(e) = fs::rename(&tmp, link) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        crate::fsutil::sync_dir(dir)
    }

    fn create_dir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        if path.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(path)?;
        // The umask may have narrowed the mode; the leaf gets exactly what was asked.
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)?;
        crate::fsutil::sync_dir(crate::fsutil::parent_dir(to))
    }

    fn unmount(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mount point contains a NUL byte"))?;
        // nix's mount module is not among the enabled features; umount2 is one plain syscall.
        // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
        let rc = unsafe { nix::libc::umount2(c_path.as_ptr(), nix::libc::MNT_FORCE) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn kill(&self, pid: i32) -> io::Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
            .map_err(io::Error::from)
    }
}

fn run_with_timeout(program: &Path, args: &[&str], timeout: Duration) -> io::Result<CommandOutput> {
    run_with_input(program, args, None, timeout)
}

fn run_with_input(program: &Path, args: &[&str], input: Option<&[u8]>, timeout: Duration) -> io::Result<CommandOutput> {
    // Input goes through an unnamed temp file rather than a pipe: a program that exits before
    // reading it all cannot raise SIGPIPE in the agent (whose SIGPIPE disposition is the default).
    let stdin = match input {
        None => Stdio::null(),
        Some(bytes) => {
            use std::io::{Seek, Write};
            let mut file = tempfile::tempfile()?;
            file.write_all(bytes)?;
            file.rewind()?;
            Stdio::from(file)
        }
    };
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().map(|s| thread::spawn(move || drain(s)));
    let stderr = child.stderr.take().map(|s| thread::spawn(move || drain(s)));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(timeout) {
        Ok(status) => status?,
        Err(_) => {
            // Unless the child exited in the instant since the timeout, the waiter has not reaped
            // it yet, so the pid still names it and cannot have been reused.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} did not finish within {} s and was killed", program.display(), timeout.as_secs_f32()),
            ));
        }
    };
    let join = |h: Option<thread::JoinHandle<Vec<u8>>>| {
        let bytes = h.and_then(|h| h.join().ok()).unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    };
    Ok(CommandOutput { status: status.code(), stdout: join(stdout), stderr: join(stderr) })
}

fn drain(mut r: impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    buf
}

/// In-memory [`HostSystem`] for unit tests: files, directories, symlinks, commands and their
/// outputs are declared up front; writes and runs are recorded for assertions.
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Mutex, MutexGuard};

    /// What a faked command does: its output, and files it creates or replaces when it succeeds
    /// (so that `modprobe br_netfilter` can make /proc/sys/net/bridge appear).
    #[derive(Debug, Clone)]
    pub struct FakeCommand {
        pub result: Result<CommandOutput, String>,
        pub effects: Vec<(PathBuf, String)>,
    }

    /// Every change the fake was asked to make, in order: a dry run must record none.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Write {
        Atomic { path: PathBuf, contents: String, mode: u32 },
        Proc { path: PathBuf, value: String },
        Symlink { link: PathBuf, target: PathBuf },
        CreateDir { path: PathBuf, mode: u32 },
        Remove { path: PathBuf },
        RemoveAll { path: PathBuf },
        Rename { from: PathBuf, to: PathBuf },
        Unmount { path: PathBuf },
        Kill { pid: i32 },
    }

    #[derive(Debug, Default)]
    pub struct State {
        pub files: BTreeMap<PathBuf, String>,
        pub dirs: BTreeSet<PathBuf>,
        pub links: BTreeMap<PathBuf, PathBuf>,
        /// Paths whose read fails with EACCES, as /proc/<pid>/fd of other users does.
        pub denied: BTreeSet<PathBuf>,
        /// Paths under which writes fail with EROFS, as /proc/sys in a container.
        pub read_only: BTreeSet<PathBuf>,
        pub commands: BTreeMap<String, PathBuf>,
        pub outputs: BTreeMap<(PathBuf, Vec<String>), FakeCommand>,
        /// Commands whose answers change from call to call: each call takes the next one, the
        /// last one repeats. Looked up before `outputs`.
        pub sequences: BTreeMap<(PathBuf, Vec<String>), std::collections::VecDeque<FakeCommand>>,
        /// Permission bits of files written (or declared with `mode`).
        pub modes: BTreeMap<PathBuf, u32>,
        /// Standard input given to commands run with `run_with`: (program, args, input).
        pub inputs: Vec<(PathBuf, Vec<String>, String)>,
        pub disks: BTreeMap<PathBuf, DiskSpace>,
        pub uname: Uname,
        pub euid: u32,
        pub interfaces: Vec<InterfaceAddress>,
        pub now_unix_ms: i64,
        pub writes: Vec<Write>,
        pub runs: Vec<(PathBuf, Vec<String>)>,
    }

    #[derive(Debug, Default)]
    pub struct FakeSystem {
        state: Mutex<State>,
    }

    impl FakeSystem {
        pub fn new() -> Self {
            Self::default()
        }

        pub fn state(&self) -> MutexGuard<'_, State> {
            // A test that panicked while holding the lock has failed already; keep going.
            self.state.lock().unwrap_or_else(|e| e.into_inner())
        }

        pub fn file(self, path: &str, contents: &str) -> Self {
            self.state().files.insert(PathBuf::from(path), contents.to_string());
            self
        }

        pub fn remove(self, path: &str) -> Self {
            {
                let mut st = self.state();
                let p = PathBuf::from(path);
                st.files.remove(&p);
                st.dirs.remove(&p);
                st.links.remove(&p);
                st.files.retain(|k, _| !k.starts_with(&p));
                st.dirs.retain(|k| !k.starts_with(&p));
                st.links.retain(|k, _| !k.starts_with(&p));
                st.modes.retain(|k, _| !k.starts_with(&p));
            }
            self
        }

        pub fn dir(self, path: &str) -> Self {
            self.state().dirs.insert(PathBuf::from(path));
            self
        }

        pub fn link(self, path: &str, target: &str) -> Self {
            self.state().links.insert(PathBuf::from(path), PathBuf::from(target));
            self
        }

        pub fn deny(self, path: &str) -> Self {
            self.state().denied.insert(PathBuf::from(path));
            self
        }

        pub fn read_only(self, path: &str) -> Self {
            self.state().read_only.insert(PathBuf::from(path));
            self
        }

        /// Makes `name` resolvable by find_command at `path` (the path also "exists").
        pub fn command(self, name: &str, path: &str) -> Self {
            {
                let mut st = self.state();
                st.commands.insert(name.to_string(), PathBuf::from(path));
                st.files.entry(PathBuf::from(path)).or_default();
            }
            self
        }

        pub fn without_command(self, name: &str) -> Self {
            {
                let mut st = self.state();
                if let Some(path) = st.commands.remove(name) {
                    st.files.remove(&path);
                }
            }
            self
        }

        pub fn output(self, program: &str, args: &[&str], status: i32, stdout: &str, stderr: &str) -> Self {
            self.output_with_effects(program, args, status, stdout, stderr, &[])
        }

        pub fn output_with_effects(
            self,
            program: &str,
            args: &[&str],
            status: i32,
            stdout: &str,
            stderr: &str,
            effects: &[(&str, &str)],
        ) -> Self {
            let cmd = FakeCommand {
                result: Ok(CommandOutput { status: Some(status), stdout: stdout.into(), stderr: stderr.into() }),
                effects: effects.iter().map(|(p, c)| (PathBuf::from(p), c.to_string())).collect(),
            };
            self.state().outputs.insert(key(program, args), cmd);
            self
        }

        /// A command answering `answers` (status, stdout, stderr) one call after the other.
        pub fn output_seq(self, program: &str, args: &[&str], answers: &[(i32, &str, &str)]) -> Self {
            let seq = answers
                .iter()
                .map(|(status, stdout, stderr)| FakeCommand {
                    result: Ok(CommandOutput {
                        status: Some(*status),
                        stdout: stdout.to_string(),
                        stderr: stderr.to_string(),
                    }),
                    effects: Vec::new(),
                })
                .collect();
            self.state().sequences.insert(key(program, args), seq);
            self
        }

        pub fn mode(self, path: &str, mode: u32) -> Self {
            self.state().modes.insert(PathBuf::from(path), mode);
            self
        }

        pub fn run_error(self, program: &str, args: &[&str], error: &str) -> Self {
            let cmd = FakeCommand { result: Err(error.to_string()), effects: Vec::new() };
            self.state().outputs.insert(key(program, args), cmd);
            self
        }

        pub fn disk(self, path: &str, available_bytes: u64, total_bytes: u64) -> Self {
            self.state().disks.insert(PathBuf::from(path), DiskSpace { available_bytes, total_bytes });
            self
        }

        pub fn uname(self, sysname: &str, nodename: &str, release: &str, machine: &str) -> Self {
            self.state().uname = Uname {
                sysname: sysname.into(),
                nodename: nodename.into(),
                release: release.into(),
                machine: machine.into(),
            };
            self
        }

        pub fn euid(self, euid: u32) -> Self {
            self.state().euid = euid;
            self
        }

        pub fn interface(self, name: &str, address: &str, prefix_len: u8) -> Self {
            let address = address.parse().expect("test interface address");
            self.state().interfaces.push(InterfaceAddress { name: name.into(), address, prefix_len });
            self
        }

        pub fn now(self, unix_ms: i64) -> Self {
            self.state().now_unix_ms = unix_ms;
            self
        }

        pub fn writes(&self) -> Vec<Write> {
            self.state().writes.clone()
        }

        pub fn runs(&self) -> Vec<(PathBuf, Vec<String>)> {
            self.state().runs.clone()
        }

        pub fn contents(&self, path: &str) -> Option<String> {
            self.state().files.get(Path::new(path)).cloned()
        }
    }

    fn key(program: &str, args: &[&str]) -> (PathBuf, Vec<String>) {
        (PathBuf::from(program), args.iter().map(|a| a.to_string()).collect())
    }

    // The fake fails with the errno the kernel would give, so reasons read as on a real host.
    fn not_found(_path: &Path) -> io::Error {
        io::Error::from(nix::errno::Errno::ENOENT)
    }

    fn denied(st: &State, path: &Path) -> Option<io::Error> {
        st.denied.iter().any(|d| path.starts_with(d)).then(|| io::Error::from(nix::errno::Errno::EACCES))
    }

    fn read_only(st: &State, path: &Path) -> Option<io::Error> {
        st.read_only.iter().any(|d| path.starts_with(d)).then(|| io::Error::from(nix::errno::Errno::EROFS))
    }

    impl State {
        fn remove_tree(&mut self, path: &Path) {
            self.files.retain(|k, _| !k.starts_with(path));
            self.dirs.retain(|k| !k.starts_with(path));
            self.links.retain(|k, _| !k.starts_with(path));
            self.modes.retain(|k, _| !k.starts_with(path));
        }

        fn run(&mut self, program: &Path, args: &[&str]) -> io::Result<CommandOutput> {
            let k = (program.to_path_buf(), args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
            self.runs.push(k.clone());
            let sequenced =
                self.sequences.get_mut(&k).and_then(
                    |seq| {
                        if seq.len() > 1 {
                            seq.pop_front()
                        } else {
                            seq.front().cloned()
                        }
                    },
                );
            let Some(cmd) = sequenced.or_else(|| self.outputs.get(&k).cloned()) else {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("fake: no output declared for {} {}", program.display(), args.join(" ")),
                ));
            };
            match cmd.result {
                Ok(out) => {
                    if out.success() {
                        for (path, contents) in cmd.effects {
                            self.files.insert(path, contents);
                        }
                    }
                    Ok(out)
                }
                Err(e) => Err(io::Error::other(e)),
            }
        }

        fn is_dir(&self, path: &Path) -> bool {
            self.dirs.contains(path)
                || self.dirs.iter().any(|d| d.starts_with(path) && d != path)
                || self.files.keys().any(|f| f.starts_with(path) && f != path)
                || self.links.keys().any(|l| l.starts_with(path) && l != path)
        }
    }

    impl HostSystem for FakeSystem {
        fn read_to_string(&self, path: &Path) -> io::Result<String> {
            let st = self.state();
            if let Some(e) = denied(&st, path) {
                return Err(e);
            }
            st.files.get(path).cloned().ok_or_else(|| not_found(path))
        }

        fn exists(&self, path: &Path) -> bool {
            let st = self.state();
            st.files.contains_key(path) || st.links.contains_key(path) || st.is_dir(path)
        }

        fn read_dir_names(&self, path: &Path) -> io::Result<Vec<String>> {
            let st = self.state();
            if let Some(e) = denied(&st, path) {
                return Err(e);
            }
            if !st.is_dir(path) {
                return Err(not_found(path));
            }
            let mut names = BTreeSet::new();
            let all = st.files.keys().chain(st.dirs.iter()).chain(st.links.keys());
            for p in all {
                if let Ok(rest) = p.strip_prefix(path) {
                    if let Some(first) = rest.components().next() {
                        names.insert(first.as_os_str().to_string_lossy().into_owned());
                    }
                }
            }
            Ok(names.into_iter().collect())
        }

        fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
            let st = self.state();
            if let Some(e) = denied(&st, path) {
                return Err(e);
            }
            st.links.get(path).cloned().ok_or_else(|| not_found(path))
        }

        fn write_atomic(&self, path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
            let mut st = self.state();
            if let Some(e) = denied(&st, path) {
                return Err(e);
            }
            if let Some(e) = read_only(&st, path) {
                return Err(e);
            }
            let contents = String::from_utf8_lossy(contents).into_owned();
            st.files.insert(path.to_path_buf(), contents.clone());
            st.modes.insert(path.to_path_buf(), mode);
            st.writes.push(Write::Atomic { path: path.to_path_buf(), contents, mode });
            Ok(())
        }

        fn write_proc(&self, path: &Path, value: &str) -> io::Result<()> {
            let mut st = self.state();
            if let Some(e) = denied(&st, path) {
                return Err(e);
            }
            if let Some(e) = read_only(&st, path) {
                return Err(e);
            }
            let Some(file) = st.files.get_mut(path) else { return Err(not_found(path)) };
            *file = format!("{}\n", value.trim_end());
            st.writes.push(Write::Proc { path: path.to_path_buf(), value: value.to_string() });
            Ok(())
        }

        fn disk_space(&self, path: &Path) -> io::Result<DiskSpace> {
            self.state().disks.get(path).copied().ok_or_else(|| not_found(path))
        }

        fn uname(&self) -> Uname {
            self.state().uname.clone()
        }

        fn effective_uid(&self) -> u32 {
            self.state().euid
        }

        fn find_command(&self, name: &str) -> Option<PathBuf> {
            self.state().commands.get(name).cloned()
        }

        fn run(&self, program: &Path, args: &[&str]) -> io::Result<CommandOutput> {
            self.state().run(program, args)
        }

        fn interface_addresses(&self) -> io::Result<Vec<InterfaceAddress>> {
            Ok(self.state().interfaces.clone())
        }

        fn now_unix_ms(&self) -> i64 {
            self.state().now_unix_ms
        }

        fn run_with(
            &self,
            program: &Path,
            args: &[&str],
            stdin: Option<&[u8]>,
            _timeout: Duration,
        ) -> io::Result<CommandOutput> {
            let mut st = self.state();
            if let Some(input) = stdin {
                let args = args.iter().map(|a| a.to_string()).collect();
                st.inputs.push((program.to_path_buf(), args, String::from_utf8_lossy(input).into_owned()));
            }
            st.run(program, args)
        }

        fn sha256_file(&self, path: &Path) -> io::Result<String> {
            let contents = self.read_to_string(path)?;
            Ok(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(contents.as_bytes())))
        }

        /// Only modes written or declared are known; any other file answers Unsupported.
        fn file_mode(&self, path: &Path) -> io::Result<u32> {
            let st = self.state();
            match st.modes.get(path) {
                Some(mode) => Ok(*mode),
                None if st.files.contains_key(path) => Err(io::Error::from(io::ErrorKind::Unsupported)),
                None => Err(not_found(path)),
            }
        }

        fn symlink_atomic(&self, target: &Path, link: &Path) -> io::Result<()> {
            let mut st = self.state();
            if let Some(e) = read_only(&st, link) {
                return Err(e);
            }
            st.links.insert(link.to_path_buf(), target.to_path_buf());
            st.writes.push(Write::Symlink { link: link.to_path_buf(), target: target.to_path_buf() });
            Ok(())
        }

        fn create_dir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
            let mut st = self.state();
            if st.is_dir(path) {
                return Ok(());
            }
            if let Some(e) = read_only(&st, path) {
                return Err(e);
            }
            st.dirs.insert(path.to_path_buf());
            st.modes.insert(path.to_path_buf(), mode);
            st.writes.push(Write::CreateDir { path: path.to_path_buf(), mode });
            Ok(())
        }

        fn remove_file(&self, path: &Path) -> io::Result<()> {
            let mut st = self.state();
            if let Some(e) = read_only(&st, path) {
                return Err(e);
            }
            if st.files.remove(path).is_none() && st.links.remove(path).is_none() {
                return Err(not_found(path));
            }
            st.modes.remove(path);
            st.writes.push(Write::Remove { path: path.to_path_buf() });
            Ok(())
        }

        fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
            let mut st = self.state();
            if let Some(e) = read_only(&st, path) {
                return Err(e);
            }
            if !st.is_dir(path) {
                return Err(not_found(path));
            }
            st.remove_tree(path);
            st.writes.push(Write::RemoveAll { path: path.to_path_buf() });
            Ok(())
        }

        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            let mut st = self.state();
            if let Some(e) = read_only(&st, from).or_else(|| read_only(&st, to)) {
                return Err(e);
            }
            let exists = st.files.contains_key(from) || st.links.contains_key(from) || st.is_dir(from);
            if !exists {
                return Err(not_found(from));
            }
            let moved = |p: &Path| to.join(p.strip_prefix(from).expect("filtered by prefix"));
            let files: Vec<_> =
                st.files.iter().filter(|(k, _)| k.starts_with(from)).map(|(k, v)| (k.clone(), v.clone())).collect();
            let dirs: Vec<_> = st.dirs.iter().filter(|k| k.starts_with(from)).cloned().collect();
            let links: Vec<_> =
                st.links.iter().filter(|(k, _)| k.starts_with(from)).map(|(k, v)| (k.clone(), v.clone())).collect();
            let modes: Vec<_> =
                st.modes.iter().filter(|(k, _)| k.starts_with(from)).map(|(k, v)| (k.clone(), *v)).collect();
            st.remove_tree(from);
            st.files.extend(files.into_iter().map(|(k, v)| (moved(&k), v)));
            st.dirs.extend(dirs.into_iter().map(|k| moved(&k)));
            st.links.extend(links.into_iter().map(|(k, v)| (moved(&k), v)));
            st.modes.extend(modes.into_iter().map(|(k, v)| (moved(&k), v)));
            st.writes.push(Write::Rename { from: from.to_path_buf(), to: to.to_path_buf() });
            Ok(())
        }

        /// Drops the last line of /proc/self/mountinfo whose mount point is `path`, as the
        /// kernel drops the topmost mount; EINVAL when nothing is mounted there.
        fn unmount(&self, path: &Path) -> io::Result<()> {
            let mut st = self.state();
            // A mount under a `read_only` path stands for one that will not go (busy).
            if let Some(e) = read_only(&st, path) {
                return Err(e);
            }
            let info = PathBuf::from("/proc/self/mountinfo");
            let text = st.files.get(&info).cloned().unwrap_or_default();
            let mut lines: Vec<&str> = text.lines().collect();
            let target = path.to_string_lossy();
            // Field 5, with the kernel's octal escapes of the characters that matter here.
            let mount_point = |l: &str| {
                l.split(' ').nth(4).map(|m| m.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\"))
            };
            let Some(i) = lines.iter().rposition(|l| mount_point(l).as_deref() == Some(target.as_ref())) else {
                return Err(io::Error::from(nix::errno::Errno::EINVAL));
            };
            lines.remove(i);
            let rest: String = lines.iter().map(|l| format!("{l}\n")).collect();
            st.files.insert(info, rest);
            st.writes.push(Write::Unmount { path: path.to_path_buf() });
            Ok(())
        }

        /// The process's /proc/<pid> entries vanish.
        fn kill(&self, pid: i32) -> io::Result<()> {
            let mut st = self.state();
            let dir = PathBuf::from(format!("/proc/{pid}"));
            if !st.is_dir(&dir) {
                return Err(io::Error::from(nix::errno::Errno::ESRCH));
            }
            st.remove_tree(&dir);
            st.writes.push(Write::Kill { pid });
            Ok(())
        }

        fn sleep(&self, duration: Duration) {
            self.state().now_unix_ms += duration.as_millis() as i64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_run_captures_status_and_output_without_a_shell() {
        let sys = RealSystem;
        let sh = sys.find_command("sh").expect("sh on the test machine");
        let out = sys.run(&sh, &["-c", "echo out; echo err >&2; exit 3"]).unwrap();
        assert_eq!(out.status, Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert_eq!(out.failure_summary(), "err (exit status 3)");
        // An argument with shell syntax reaches the program verbatim.
        let echo = sys.find_command("echo").expect("echo");
        assert_eq!(sys.run(&echo, &["$(id)", ";"]).unwrap().stdout, "$(id) ;\n");
    }

    #[test]
    fn real_run_kills_a_hung_command() {
        let sleep = RealSystem.find_command("sleep").expect("sleep");
        let started = std::time::Instant::now();
        let err = run_with_timeout(&sleep, &["10"], Duration::from_millis(200)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn real_system_basics() {
        let sys = RealSystem;
        assert!(!sys.uname().release.is_empty());
        assert!(sys.find_command("no-such-command-k3node").is_none());
        assert!(sys.find_command("../sh").is_none());
        let space = sys.disk_space(Path::new("/")).unwrap();
        assert!(space.total_bytes >= space.available_bytes && space.total_bytes > 0);
        let addrs = sys.interface_addresses().unwrap();
        assert!(addrs.iter().any(|a| a.address.is_loopback()));
        assert!(sys.now_unix_ms() > 1_600_000_000_000);
    }

    #[test]
    fn real_write_proc_refuses_to_create() {
        let dir = tempfile::tempdir().unwrap();
        let err = RealSystem.write_proc(&dir.path().join("missing"), "1").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn real_file_operations_for_install_and_reset() {
        let sys = RealSystem;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let bin = d.join("bin/k3s");
        sys.create_dir_all(&d.join("bin"), 0o755).unwrap();
        assert_eq!(sys.file_mode(&d.join("bin")).unwrap(), 0o755);
        sys.write_atomic(&bin, b"abc", 0o600).unwrap();
        assert_eq!(sys.file_mode(&bin).unwrap(), 0o600);
        assert_eq!(sys.sha256_file(&bin).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

        let link = d.join("bin/kubectl");
        sys.symlink_atomic(Path::new("k3s"), &link).unwrap();
        sys.symlink_atomic(Path::new("k3s"), &link).unwrap(); // replacing is atomic, not an error
        assert_eq!(sys.read_link(&link).unwrap(), PathBuf::from("k3s"));
        let mut names = sys.read_dir_names(&d.join("bin")).unwrap();
        names.sort();
        assert_eq!(names, vec!["k3s", "kubectl"], "no temp names left");
        sys.remove_file(&link).unwrap();
        assert!(bin.exists(), "removing a link leaves its target");

        sys.rename(&d.join("bin"), &d.join("bin.aside")).unwrap();
        assert_eq!(fs::read(d.join("bin.aside/k3s")).unwrap(), b"abc");
        sys.remove_dir_all(&d.join("bin.aside")).unwrap();
        assert!(!d.join("bin.aside").exists());
        assert_eq!(sys.unmount(d).unwrap_err().raw_os_error(), Some(nix::libc::EINVAL), "not a mount point");
    }

    #[test]
    fn real_run_with_gives_stdin_and_honours_the_timeout() {
        let cat = RealSystem.find_command("cat").expect("cat");
        let out = RealSystem.run_with(&cat, &[], Some(b"*filter\nCOMMIT\n"), Duration::from_secs(5)).unwrap();
        assert_eq!(out.stdout, "*filter\nCOMMIT\n");
        // A program that reads nothing does not hurt the caller (no SIGPIPE).
        let t = RealSystem.find_command("true").expect("true");
        assert!(RealSystem.run_with(&t, &[], Some(&vec![b'x'; 1 << 20]), Duration::from_secs(5)).unwrap().success());
        let sleep = RealSystem.find_command("sleep").expect("sleep");
        let err = RealSystem.run_with(&sleep, &["10"], None, Duration::from_millis(200)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn fake_sequences_and_clock() {
        let sys = fake::FakeSystem::new().now(1000).output_seq("/bin/x", &[], &[(1, "a", ""), (0, "b", "")]);
        assert_eq!(sys.run(Path::new("/bin/x"), &[]).unwrap().stdout, "a");
        assert_eq!(sys.run(Path::new("/bin/x"), &[]).unwrap().stdout, "b");
        assert_eq!(sys.run(Path::new("/bin/x"), &[]).unwrap().stdout, "b", "the last answer repeats");
        sys.sleep(Duration::from_millis(1500));
        assert_eq!(sys.now_unix_ms(), 2500);
    }

    #[test]
    fn fake_lists_implied_directories() {
        let sys = fake::FakeSystem::new().file("/proc/1/comm", "init\n").link("/proc/1/fd/3", "socket:[42]");
        let mut names = sys.read_dir_names(Path::new("/proc")).unwrap();
        names.sort();
        assert_eq!(names, vec!["1"]);
        assert_eq!(sys.read_dir_names(Path::new("/proc/1/fd")).unwrap(), vec!["3"]);
        assert!(sys.exists(Path::new("/proc/1")));
        assert!(!sys.exists(Path::new("/proc/2")));
        assert_eq!(sys.read_dir_names(Path::new("/proc/2")).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
