//! The machine the helper runs on.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::command::{run_with_input, run_with_timeout};
use super::{
    AtomicFile, CommandOutput, DiskSpace, FileKind, HostSystem, InterfaceAddress, LockGuard, Metadata, Uname,
    COMMAND_TIMEOUT, EXTRA_COMMAND_DIRS,
};

/// The real machine. File paths are taken below `root` (`/` on a host; a temp dir in the
/// contract tests, so that they exercise the real file code without touching the machine).
/// Symlink targets, commands, the network and the clock are the machine's own.
#[derive(Debug, Clone)]
pub struct RealSystem {
    root: PathBuf,
}

impl Default for RealSystem {
    fn default() -> Self {
        RealSystem { root: PathBuf::from("/") }
    }
}

impl RealSystem {
    /// The host itself.
    pub fn host() -> RealSystem {
        RealSystem::default()
    }

    /// File operations below `root` instead of `/`.
    pub fn rooted(root: &Path) -> RealSystem {
        RealSystem { root: root.to_path_buf() }
    }

    fn at(&self, path: &Path) -> PathBuf {
        if self.root == Path::new("/") {
            return path.to_path_buf();
        }
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }
}

struct RealAtomicFile {
    tmp: tempfile::NamedTempFile,
    dest: PathBuf,
    mode: u32,
    /// Bytes written, and how many of them the kernel was already asked to write back.
    written: u64,
    written_back: u64,
}

/// How many written bytes make the kernel start writing them back (see `start_write_back`).
const WRITE_BEHIND_BYTES: u64 = 8 << 20;

impl RealAtomicFile {
    /// Asks the kernel to start writing back what was written since the last call, without
    /// waiting for it. The commit's fsync then finds little left: writing 1 GiB with this took
    /// its fsync from 0.66 s to 0.01 s here, the disk working while the writer computed. An
    /// error only forgoes that head start (a filesystem may refuse the call): the fsync still
    /// writes and checks everything.
    fn start_write_back(&mut self) {
        use std::os::fd::AsRawFd;
        let (from, len) = (self.written_back as i64, (self.written - self.written_back) as i64);
        // SAFETY: a plain syscall on a descriptor this value owns; no memory is passed.
        let _ = unsafe {
            nix::libc::sync_file_range(self.tmp.as_file().as_raw_fd(), from, len, nix::libc::SYNC_FILE_RANGE_WRITE)
        };
        self.written_back = self.written;
    }
}

impl Write for RealAtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.tmp.write(buf)?;
        self.written += n as u64;
        if self.written - self.written_back >= WRITE_BEHIND_BYTES {
            self.start_write_back();
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tmp.flush()
    }
}

impl AtomicFile for RealAtomicFile {
    fn commit(self: Box<Self>) -> io::Result<()> {
        let RealAtomicFile { tmp, dest, mode, .. } = *self;
        tmp.as_file().set_permissions(fs::Permissions::from_mode(mode))?;
        tmp.as_file().sync_all()?;
        tmp.persist(&dest).map_err(|e| e.error)?;
        crate::fsutil::sync_dir(crate::fsutil::parent_dir(&dest))
    }
}

struct HeldFlock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

impl LockGuard for HeldFlock {}

impl HostSystem for RealSystem {
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(fs::File::open(self.at(path))?))
    }

    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        // /proc and /sys files are not always valid UTF-8 (comm names, cmdlines): be lossy
        // rather than turn a stray byte into a missing fact.
        let bytes = fs::read(self.at(path))?;
        Ok(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    fn exists(&self, path: &Path) -> bool {
        self.at(path).exists()
    }

    fn read_dir_names(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(self.at(path))? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        fs::read_link(self.at(path))
    }

    fn file_mode(&self, path: &Path) -> io::Result<u32> {
        Ok(fs::metadata(self.at(path))?.permissions().mode() & 0o7777)
    }

    fn file_size(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(self.at(path))?.len())
    }

    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::symlink_metadata(self.at(path))?;
        let file_type = meta.file_type();
        let kind = if file_type.is_file() {
            FileKind::File
        } else if file_type.is_dir() {
            FileKind::Dir
        } else if file_type.is_symlink() {
            FileKind::Symlink
        } else {
            FileKind::Special
        };
        Ok(Metadata {
            kind,
            size: if kind == FileKind::File { meta.len() } else { 0 },
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        })
    }

    fn set_mode(&self, path: &Path, mode: u32) -> io::Result<()> {
        let path = self.at(path);
        if fs::symlink_metadata(&path)?.file_type().is_symlink() {
            return Err(io::Error::from_raw_os_error(nix::libc::ELOOP));
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
    }

    fn set_owner(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::lchown(self.at(path), Some(uid), Some(gid))
    }

    fn write_atomic(&self, path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
        crate::fsutil::write_atomic(&self.at(path), contents, mode)
    }

    fn create_atomic(&self, path: &Path, mode: u32) -> io::Result<Box<dyn AtomicFile>> {
        let dest = self.at(path);
        let dir = crate::fsutil::parent_dir(&dest);
        fs::create_dir_all(dir)?;
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = tempfile::Builder::new().prefix(&format!(".{name}.")).suffix(".k3node-tmp").tempfile_in(dir)?;
        Ok(Box::new(RealAtomicFile { tmp, dest, mode, written: 0, written_back: 0 }))
    }

    fn write_proc(&self, path: &Path, value: &str) -> io::Result<()> {
        // No create, no truncate dance: a missing tunable must be an error, not a new file.
        let mut file = fs::OpenOptions::new().write(true).open(self.at(path))?;
        file.write_all(value.as_bytes())
    }

    fn symlink_atomic(&self, target: &Path, link: &Path) -> io::Result<()> {
        let link = self.at(link);
        let dir = crate::fsutil::parent_dir(&link);
        let name = link.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let nonce: u64 = rand::random();
        let tmp = dir.join(format!(".{name}.{nonce:016x}.k3node-tmp"));
        std::os::unix::fs::symlink(target, &tmp)?;
        if let Err(e) = fs::rename(&tmp, &link) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        crate::fsutil::sync_dir(dir)
    }

    fn create_dir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        let path = self.at(path);
        if path.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(&path)?;
        // The umask may have narrowed the mode; the leaf gets exactly what was asked.
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(self.at(path))
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(self.at(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let to = self.at(to);
        fs::rename(self.at(from), &to)?;
        crate::fsutil::sync_dir(crate::fsutil::parent_dir(&to))
    }

    fn disk_space(&self, path: &Path) -> io::Result<DiskSpace> {
        let st = nix::sys::statvfs::statvfs(&self.at(path)).map_err(io::Error::from)?;
        let fragment = st.fragment_size() as u64;
        Ok(DiskSpace {
            available_bytes: (st.blocks_available() as u64).saturating_mul(fragment),
            total_bytes: (st.blocks() as u64).saturating_mul(fragment),
        })
    }

    fn unmount(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let path = self.at(path);
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

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        use nix::fcntl::{Flock, FlockArg};
        let path = self.at(path);
        fs::create_dir_all(crate::fsutil::parent_dir(&path))?;
        let file = fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => Ok(Some(Box::new(HeldFlock(held)))),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(io::Error::from(errno)),
        }
    }

    fn sqlite_image(&self, db: &Path) -> io::Result<Box<dyn super::DatabaseImage>> {
        super::sqlite::image(&self.at(db), None)
    }

    fn sqlite_check(&self, db: &Path) -> io::Result<Vec<String>> {
        super::sqlite::integrity_check(&self.at(db))
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

    fn run_with(
        &self,
        program: &Path,
        args: &[&str],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> io::Result<CommandOutput> {
        run_with_input(program, args, stdin, timeout)
    }

    fn run_streaming(
        &self,
        program: &Path,
        args: &[&str],
        stdin: &mut dyn Read,
        timeout: Duration,
    ) -> io::Result<CommandOutput> {
        super::command::run_streaming(program, args, stdin, timeout)
    }

    fn kill(&self, pid: i32) -> io::Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
            .map_err(io::Error::from)
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

    fn interface_addresses(&self) -> io::Result<Vec<InterfaceAddress>> {
        let mut out = Vec::new();
        for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
            let Some(addr) = ifa.address.as_ref() else { continue };
            let (address, prefix_len) = if let Some(v4) = addr.as_sockaddr_in() {
                let bits = ifa.netmask.as_ref().and_then(|m| m.as_sockaddr_in()).map(|m| m.ip().to_bits().count_ones());
                (std::net::IpAddr::V4(v4.ip()), bits.unwrap_or(32))
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                let bits =
                    ifa.netmask.as_ref().and_then(|m| m.as_sockaddr_in6()).map(|m| m.ip().to_bits().count_ones());
                (std::net::IpAddr::V6(v6.ip()), bits.unwrap_or(128))
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

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration)
    }
}
