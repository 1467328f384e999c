//! The host system boundary.
//!
//! Everything the host helper learns from or changes on the machine goes through [`HostSystem`],
//! so that each operation can be tested against the in-memory [`fake::FakeSystem`] with the exact
//! /proc and /sys contents of the case at hand, and only [`RealSystem`] touches the host.
//! /proc and /sys are read like any other file for that reason.
//!
//! Every method is required: an implementation that cannot do something says so in its own
//! words, instead of a default that answers "unsupported" at run time. The same contract tests
//! (`contract_tests`) run against [`RealSystem`] rooted in a temp dir and against the fake, so
//! that the fake stays honest about what the real thing does.

mod command;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
mod real;
mod sqlite;

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use real::RealSystem;
pub use sqlite::DatabaseImage;

/// Directories searched for commands besides `PATH`: sudo and SSH sessions often run with a
/// PATH that lacks the sbin directories where modprobe and iptables live.
pub const EXTRA_COMMAND_DIRS: &[&str] =
    &["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// A command the helper runs must never hang the operator's run: `k3s --version` on a broken
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

/// What a path names, the path itself (a symlink is not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// A device, a fifo or a socket.
    Special,
}

/// A path's own metadata (lstat): what it is, its size, permission bits and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    pub kind: FileKind,
    /// Bytes of a file; 0 for anything else.
    pub size: u64,
    /// Permission bits (mode & 0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub name: String,
    pub address: IpAddr,
    pub prefix_len: u8,
}

/// A file being written: bytes go to a temp file beside the destination, which replaces the
/// destination only on [`AtomicFile::commit`] (after an fsync). Dropped without a commit, it
/// leaves nothing behind and the destination as it was.
pub trait AtomicFile: Write + Send {
    fn commit(self: Box<Self>) -> io::Result<()>;
}

/// Held while a lock taken with [`HostSystem::try_lock`] is held; dropping it releases the lock.
pub trait LockGuard: Send {}

/// What the host helper may learn from and do to the machine.
pub trait HostSystem: Send + Sync {
    // Files.

    /// The file's bytes, streamed: binaries and archives are large.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>>;
    /// The file's text; bytes that are not UTF-8 become U+FFFD (comm names, cmdlines in /proc).
    fn read_to_string(&self, path: &Path) -> io::Result<String>;
    /// True for anything at `path` (file, directory, socket), following symlinks.
    fn exists(&self, path: &Path) -> bool;
    /// Entry names of a directory, unsorted.
    fn read_dir_names(&self, path: &Path) -> io::Result<Vec<String>>;
    fn read_link(&self, path: &Path) -> io::Result<PathBuf>;
    /// Permission bits (mode & 0o7777) of what `path` names, following symlinks.
    fn file_mode(&self, path: &Path) -> io::Result<u32>;
    /// Size in bytes of what `path` names, following symlinks.
    fn file_size(&self, path: &Path) -> io::Result<u64>;
    /// What `path` itself is, never following a symlink (lstat).
    fn metadata(&self, path: &Path) -> io::Result<Metadata>;
    /// Sets the permission bits of a file or directory; a symlink is refused (ELOOP), since
    /// chmod would change what it points to.
    fn set_mode(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Sets the owner of `path` itself (of a symlink, the link's own, as lchown does).
    fn set_owner(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;
    /// Replaces a regular file atomically (temp file, fsync, rename); parents are created (0755).
    fn write_atomic(&self, path: &Path, contents: &[u8], mode: u32) -> io::Result<()>;
    /// Starts a streamed atomic replacement of `path` (see [`AtomicFile`]).
    fn create_atomic(&self, path: &Path, mode: u32) -> io::Result<Box<dyn AtomicFile>>;
    /// Writes a kernel tunable in place: /proc/sys files cannot be renamed over.
    fn write_proc(&self, path: &Path, value: &str) -> io::Result<()>;
    /// Points `link` at `target` atomically: a symlink under a temp name, renamed over `link`.
    fn symlink_atomic(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// Creates a directory and its missing parents; a directory created here gets `mode`.
    fn create_dir_all(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Removes a file or a symlink (never what the symlink points to).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory tree. Callers make sure nothing is mounted below it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Renames within one filesystem (atomic), then flushes the directory entry.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn disk_space(&self, path: &Path) -> io::Result<DiskSpace>;
    /// Unmounts the topmost mount at `path`, forced (MNT_FORCE, as `umount -f`): a busy one
    /// stays mounted (EBUSY), never detached lazily, so that nothing is removed through it.
    fn unmount(&self, path: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (created when missing) without waiting: None when
    /// someone else holds it. The lock dies with its holder.
    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>>;

    // SQLite databases (k3s's kine datastore).

    /// The SQLite database at `db` (with what its -wal holds) as of one read transaction, held
    /// while the image lives: its writers go on meanwhile, and nothing is copied to disk.
    fn sqlite_image(&self, db: &Path) -> io::Result<Box<dyn DatabaseImage>>;
    /// `PRAGMA integrity_check` of the database at `db`: empty when it is sound, else SQLite's
    /// list of problems; a file that is not a database is InvalidData.
    fn sqlite_check(&self, db: &Path) -> io::Result<Vec<String>>;

    // Processes.

    fn effective_uid(&self) -> u32;
    /// An executable named `name` in PATH or [`EXTRA_COMMAND_DIRS`].
    fn find_command(&self, name: &str) -> Option<PathBuf>;
    /// Runs `program` directly (never through a shell) with stdin closed, in the C locale,
    /// killed after [`COMMAND_TIMEOUT`].
    fn run(&self, program: &Path, args: &[&str]) -> io::Result<CommandOutput>;
    /// Like [`HostSystem::run`], but killed after `timeout`, and with `stdin` written to the
    /// program's standard input (closed when None).
    fn run_with(
        &self,
        program: &Path,
        args: &[&str],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> io::Result<CommandOutput>;
    /// Like [`HostSystem::run_with`], but the program's standard input is streamed from `stdin`
    /// as it is read (an image archive is too large to hold). When reading `stdin` fails, the
    /// program is killed before its input ends, so that it never takes a cut stream for a whole
    /// one, and the read error is returned. A program that stops reading early ends the stream.
    fn run_streaming(
        &self,
        program: &Path,
        args: &[&str],
        stdin: &mut dyn Read,
        timeout: Duration,
    ) -> io::Result<CommandOutput>;
    /// Sends SIGKILL to a process.
    fn kill(&self, pid: i32) -> io::Result<()>;

    // The machine.

    fn uname(&self) -> Uname;
    fn interface_addresses(&self) -> io::Result<Vec<InterfaceAddress>>;

    // Time.

    fn now_unix_ms(&self) -> i64;
    /// Waits; the fake advances its clock instead, so that deadlines are testable without waiting.
    fn sleep(&self, duration: Duration);
}

/// `rm -rf` of one path: a directory with all it holds, or a file or symlink (never what a
/// symlink points to: the kind is lstat's). Callers make sure nothing is mounted at or below it.
pub fn remove_tree(sys: &dyn HostSystem, path: &Path) -> io::Result<()> {
    match sys.metadata(path)?.kind {
        FileKind::Dir => sys.remove_dir_all(path),
        _ => sys.remove_file(path),
    }
}

/// sha256 of a file's bytes (hex), streamed.
pub fn sha256_file(sys: &dyn HostSystem, path: &Path) -> io::Result<String> {
    crate::digest::sha256_reader(&mut sys.open_read(path)?)
}

#[cfg(test)]
mod contract_tests;
#[cfg(test)]
mod tests;
