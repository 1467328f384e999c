//! In-memory [`HostSystem`] for tests (public with the `testing` feature, for tests/ and
//! benches/): files (as bytes), directories, symlinks, commands and their outputs are declared up
//! front; writes and runs are recorded for assertions. It behaves as the real system does where
//! the contract tests look (errno values, modes, atomic replacement, locks).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{AtomicFile, CommandOutput, DiskSpace, FileKind, HostSystem, InterfaceAddress, LockGuard, Metadata, Uname};

/// Mode of a file declared without one, as a umask of 022 leaves it.
const DEFAULT_FILE_MODE: u32 = 0o644;
const DEFAULT_DIR_MODE: u32 = 0o755;

/// What a faked command does: its output, and files it creates or replaces when it succeeds
/// (so that `modprobe br_netfilter` can make /proc/sys/net/bridge appear).
#[derive(Debug, Clone)]
pub struct FakeCommand {
    pub result: Result<CommandOutput, String>,
    pub effects: Vec<(PathBuf, Vec<u8>)>,
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
    Mode { path: PathBuf, mode: u32 },
    Owner { path: PathBuf, uid: u32, gid: u32 },
}

#[derive(Debug, Default)]
pub struct State {
    pub files: BTreeMap<PathBuf, Vec<u8>>,
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
    /// Owners (uid, gid) set or declared; anything else is root's.
    pub owners: BTreeMap<PathBuf, (u32, u32)>,
    /// Devices, fifos and sockets: they exist, and are neither files nor directories.
    pub special: BTreeSet<PathBuf>,
    /// Standard input given to commands run with `run_with`: (program, args, input).
    pub inputs: Vec<(PathBuf, Vec<String>, String)>,
    /// Standard input streamed to commands run with `run_streaming`: (program, args, bytes).
    pub streamed: Vec<(PathBuf, Vec<String>, Vec<u8>)>,
    pub disks: BTreeMap<PathBuf, DiskSpace>,
    pub uname: Uname,
    pub euid: u32,
    pub interfaces: Vec<InterfaceAddress>,
    pub now_unix_ms: i64,
    pub writes: Vec<Write>,
    pub runs: Vec<(PathBuf, Vec<String>)>,
    /// Paths locked with `try_lock` and not yet released.
    pub locks: BTreeSet<PathBuf>,
}

/// Cloning shares the state: a clone is the same host.
#[derive(Debug, Default, Clone)]
pub struct FakeSystem {
    state: Arc<Mutex<State>>,
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
        self.file_bytes(path, contents.as_bytes())
    }

    pub fn file_bytes(self, path: &str, contents: &[u8]) -> Self {
        self.state().files.insert(PathBuf::from(path), contents.to_vec());
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
            st.owners.retain(|k, _| !k.starts_with(&p));
            st.special.retain(|k| !k.starts_with(&p));
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
            effects: effects.iter().map(|(p, c)| (PathBuf::from(p), c.as_bytes().to_vec())).collect(),
        };
        // The latest declaration wins, over an earlier sequence too.
        let mut st = self.state();
        st.sequences.remove(&key(program, args));
        st.outputs.insert(key(program, args), cmd);
        drop(st);
        self
    }

    /// A command that, when it succeeds, writes `bytes` (any bytes, not only text) to `path`.
    pub fn output_writing(
        self,
        program: &str,
        args: &[&str],
        (status, stdout, stderr): (i32, &str, &str),
        path: &str,
        bytes: &[u8],
    ) -> Self {
        let cmd = FakeCommand {
            result: Ok(CommandOutput { status: Some(status), stdout: stdout.into(), stderr: stderr.into() }),
            effects: vec![(PathBuf::from(path), bytes.to_vec())],
        };
        let mut st = self.state();
        st.sequences.remove(&key(program, args));
        st.outputs.insert(key(program, args), cmd);
        drop(st);
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

    pub fn owner(self, path: &str, uid: u32, gid: u32) -> Self {
        self.state().owners.insert(PathBuf::from(path), (uid, gid));
        self
    }

    /// A device, fifo or socket at `path`.
    pub fn special(self, path: &str) -> Self {
        self.state().special.insert(PathBuf::from(path));
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

    /// Drops the declared interfaces (to declare others).
    pub fn no_interfaces(self) -> Self {
        self.state().interfaces.clear();
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

    /// A file's contents as text (lossy).
    pub fn contents(&self, path: &str) -> Option<String> {
        self.state().files.get(Path::new(path)).map(|b| String::from_utf8_lossy(b).into_owned())
    }

    pub fn bytes(&self, path: &str) -> Option<Vec<u8>> {
        self.state().files.get(Path::new(path)).cloned()
    }

    /// Every file, directory and link there is, with its mode, owner and (for a file) sha256:
    /// two listings are equal when the host holds the same.
    pub fn listing(&self) -> BTreeMap<PathBuf, String> {
        let st = self.state();
        let meta = |p: &Path| {
            let mode = st.modes.get(p).map(|m| format!("{m:04o}")).unwrap_or_default();
            let (uid, gid) = st.owners.get(p).copied().unwrap_or((0, 0));
            format!("mode {mode} owner {uid}:{gid}")
        };
        let files =
            st.files.iter().map(|(p, b)| (p.clone(), format!("file {} {}", crate::digest::sha256_hex(b), meta(p))));
        // A directory is there when declared or when something is below it.
        let ancestors = st.files.keys().chain(st.links.keys()).flat_map(|p| p.ancestors().skip(1));
        let all_dirs: BTreeSet<&Path> = st.dirs.iter().map(PathBuf::as_path).chain(ancestors).collect();
        let dirs = all_dirs.into_iter().map(|p| (p.to_path_buf(), format!("dir {}", meta(p))));
        let links = st.links.iter().map(|(p, t)| (p.clone(), format!("link to {} {}", t.display(), meta(p))));
        files.chain(dirs).chain(links).collect()
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
        self.owners.retain(|k, _| !k.starts_with(path));
        self.special.retain(|k| !k.starts_with(path));
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
            || self.special.iter().any(|l| l.starts_with(path) && l != path)
    }

    fn exists(&self, path: &Path) -> bool {
        self.files.contains_key(path)
            || self.links.contains_key(path)
            || self.special.contains(path)
            || self.is_dir(path)
    }

    /// A file's bytes and its WAL's, copied into a temp dir where SQLite can open them.
    fn sqlite_files(&self, db: &Path) -> io::Result<(tempfile::TempDir, PathBuf)> {
        if let Some(e) = denied(self, db) {
            return Err(e);
        }
        let bytes = self.files.get(db).ok_or_else(|| not_found(db))?;
        let dir = tempfile::tempdir()?;
        let real = dir.path().join("db");
        std::fs::write(&real, bytes)?;
        let wal = PathBuf::from(format!("{}-wal", db.display()));
        if let Some(wal_bytes) = self.files.get(&wal) {
            std::fs::write(dir.path().join("db-wal"), wal_bytes)?;
        }
        Ok((dir, real))
    }
}

/// A streamed write into the fake: lands in the file map only on commit.
struct FakeAtomicFile {
    state: Arc<Mutex<State>>,
    path: PathBuf,
    mode: u32,
    buffer: Vec<u8>,
}

impl std::io::Write for FakeAtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AtomicFile for FakeAtomicFile {
    fn commit(self: Box<Self>) -> io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.store(&self.path, self.buffer, self.mode);
        Ok(())
    }
}

struct FakeLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
}

impl LockGuard for FakeLock {}

impl Drop for FakeLock {
    fn drop(&mut self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).locks.remove(&self.path);
    }
}

impl State {
    fn store(&mut self, path: &Path, contents: Vec<u8>, mode: u32) {
        let shown = String::from_utf8_lossy(&contents).into_owned();
        self.files.insert(path.to_path_buf(), contents);
        self.modes.insert(path.to_path_buf(), mode);
        self.writes.push(Write::Atomic { path: path.to_path_buf(), contents: shown, mode });
    }
}

impl HostSystem for FakeSystem {
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        let st = self.state();
        if let Some(e) = denied(&st, path) {
            return Err(e);
        }
        if st.is_dir(path) {
            return Err(io::Error::from(nix::errno::Errno::EISDIR));
        }
        let bytes = st.files.get(path).cloned().ok_or_else(|| not_found(path))?;
        Ok(Box::new(io::Cursor::new(bytes)))
    }

    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        let mut text = String::new();
        let mut bytes = Vec::new();
        self.open_read(path)?.read_to_end(&mut bytes)?;
        text.push_str(&String::from_utf8_lossy(&bytes));
        Ok(text)
    }

    fn exists(&self, path: &Path) -> bool {
        self.state().exists(path)
    }

    fn read_dir_names(&self, path: &Path) -> io::Result<Vec<String>> {
        let st = self.state();
        if let Some(e) = denied(&st, path) {
            return Err(e);
        }
        if !st.is_dir(path) {
            return Err(if st.files.contains_key(path) {
                io::Error::from(nix::errno::Errno::ENOTDIR)
            } else {
                not_found(path)
            });
        }
        let mut names = BTreeSet::new();
        let all = st.files.keys().chain(st.dirs.iter()).chain(st.links.keys()).chain(st.special.iter());
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
        if st.links.contains_key(path) {
            return Ok(st.links[path].clone());
        }
        if st.files.contains_key(path) || st.is_dir(path) {
            return Err(io::Error::from(nix::errno::Errno::EINVAL));
        }
        Err(not_found(path))
    }

    fn file_mode(&self, path: &Path) -> io::Result<u32> {
        let st = self.state();
        match st.modes.get(path) {
            Some(mode) => Ok(*mode),
            None if st.files.contains_key(path) => Ok(DEFAULT_FILE_MODE),
            None if st.is_dir(path) => Ok(DEFAULT_DIR_MODE),
            None => Err(not_found(path)),
        }
    }

    fn file_size(&self, path: &Path) -> io::Result<u64> {
        let st = self.state();
        st.files.get(path).map(|b| b.len() as u64).ok_or_else(|| not_found(path))
    }

    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        let st = self.state();
        if let Some(e) = denied(&st, path) {
            return Err(e);
        }
        let (uid, gid) = st.owners.get(path).copied().unwrap_or((0, 0));
        let (kind, size, mode) = if st.links.contains_key(path) {
            (FileKind::Symlink, 0, 0o777)
        } else if st.special.contains(path) {
            (FileKind::Special, 0, st.modes.get(path).copied().unwrap_or(DEFAULT_FILE_MODE))
        } else if let Some(bytes) = st.files.get(path) {
            (FileKind::File, bytes.len() as u64, st.modes.get(path).copied().unwrap_or(DEFAULT_FILE_MODE))
        } else if st.is_dir(path) {
            (FileKind::Dir, 0, st.modes.get(path).copied().unwrap_or(DEFAULT_DIR_MODE))
        } else {
            return Err(not_found(path));
        };
        Ok(Metadata { kind, size, mode, uid, gid })
    }

    fn set_mode(&self, path: &Path, mode: u32) -> io::Result<()> {
        let mut st = self.state();
        if let Some(e) = read_only(&st, path) {
            return Err(e);
        }
        if st.links.contains_key(path) {
            return Err(io::Error::from(nix::errno::Errno::ELOOP));
        }
        if !st.exists(path) {
            return Err(not_found(path));
        }
        st.modes.insert(path.to_path_buf(), mode & 0o7777);
        st.writes.push(Write::Mode { path: path.to_path_buf(), mode: mode & 0o7777 });
        Ok(())
    }

    fn set_owner(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        let mut st = self.state();
        if let Some(e) = read_only(&st, path) {
            return Err(e);
        }
        if !st.exists(path) {
            return Err(not_found(path));
        }
        st.owners.insert(path.to_path_buf(), (uid, gid));
        st.writes.push(Write::Owner { path: path.to_path_buf(), uid, gid });
        Ok(())
    }

    fn write_atomic(&self, path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
        let mut st = self.state();
        if let Some(e) = denied(&st, path).or_else(|| read_only(&st, path)) {
            return Err(e);
        }
        st.store(path, contents.to_vec(), mode);
        Ok(())
    }

    fn create_atomic(&self, path: &Path, mode: u32) -> io::Result<Box<dyn AtomicFile>> {
        let st = self.state();
        if let Some(e) = denied(&st, path).or_else(|| read_only(&st, path)) {
            return Err(e);
        }
        Ok(Box::new(FakeAtomicFile { state: self.state.clone(), path: path.to_path_buf(), mode, buffer: Vec::new() }))
    }

    fn write_proc(&self, path: &Path, value: &str) -> io::Result<()> {
        let mut st = self.state();
        if let Some(e) = denied(&st, path).or_else(|| read_only(&st, path)) {
            return Err(e);
        }
        let Some(file) = st.files.get_mut(path) else { return Err(not_found(path)) };
        *file = format!("{}\n", value.trim_end()).into_bytes();
        st.writes.push(Write::Proc { path: path.to_path_buf(), value: value.to_string() });
        Ok(())
    }

    fn symlink_atomic(&self, target: &Path, link: &Path) -> io::Result<()> {
        let mut st = self.state();
        if let Some(e) = read_only(&st, link) {
            return Err(e);
        }
        st.files.remove(link);
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
            return Err(if st.is_dir(path) { io::Error::from(nix::errno::Errno::EISDIR) } else { not_found(path) });
        }
        // Its directory stays, empty or not, as on a real filesystem (here it may have been implied).
        st.dirs.extend(path.parent().map(Path::to_path_buf));
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
        if !st.exists(from) {
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
        let owners: Vec<_> =
            st.owners.iter().filter(|(k, _)| k.starts_with(from)).map(|(k, v)| (k.clone(), *v)).collect();
        let special: Vec<_> = st.special.iter().filter(|k| k.starts_with(from)).cloned().collect();
        // A file renamed over another replaces it, as rename(2) does.
        st.files.remove(to);
        st.links.remove(to);
        st.remove_tree(from);
        st.dirs.extend(from.parent().map(Path::to_path_buf));
        st.files.extend(files.into_iter().map(|(k, v)| (moved(&k), v)));
        st.dirs.extend(dirs.into_iter().map(|k| moved(&k)));
        st.links.extend(links.into_iter().map(|(k, v)| (moved(&k), v)));
        st.modes.extend(modes.into_iter().map(|(k, v)| (moved(&k), v)));
        st.owners.extend(owners.into_iter().map(|(k, v)| (moved(&k), v)));
        st.special.extend(special.into_iter().map(|k| moved(&k)));
        st.writes.push(Write::Rename { from: from.to_path_buf(), to: to.to_path_buf() });
        Ok(())
    }

    fn disk_space(&self, path: &Path) -> io::Result<DiskSpace> {
        self.state().disks.get(path).copied().ok_or_else(|| not_found(path))
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
        let text = st.files.get(&info).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
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
        st.files.insert(info, rest.into_bytes());
        st.writes.push(Write::Unmount { path: path.to_path_buf() });
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn LockGuard>>> {
        let mut st = self.state();
        if !st.locks.insert(path.to_path_buf()) {
            return Ok(None);
        }
        Ok(Some(Box::new(FakeLock { state: self.state.clone(), path: path.to_path_buf() })))
    }

    /// SQLite itself, on a temp copy of the fake's bytes (and its -wal), kept as long as the image.
    fn sqlite_image(&self, db: &Path) -> io::Result<Box<dyn super::DatabaseImage>> {
        let (dir, real) = self.state().sqlite_files(db)?;
        super::sqlite::image(&real, Some(dir))
    }

    fn sqlite_check(&self, db: &Path) -> io::Result<Vec<String>> {
        let (_dir, real) = self.state().sqlite_files(db)?;
        super::sqlite::integrity_check(&real)
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

    /// Reads the whole input first (a read error is returned, and the command is recorded as
    /// killed: it never answers), then answers as declared.
    fn run_streaming(
        &self,
        program: &Path,
        args: &[&str],
        stdin: &mut dyn Read,
        _timeout: Duration,
    ) -> io::Result<CommandOutput> {
        let mut input = Vec::new();
        let read = stdin.read_to_end(&mut input);
        let mut st = self.state();
        let key_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        st.streamed.push((program.to_path_buf(), key_args, input));
        read?;
        st.run(program, args)
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

    fn uname(&self) -> Uname {
        self.state().uname.clone()
    }

    fn interface_addresses(&self) -> io::Result<Vec<InterfaceAddress>> {
        Ok(self.state().interfaces.clone())
    }

    fn now_unix_ms(&self) -> i64 {
        self.state().now_unix_ms
    }

    fn sleep(&self, duration: Duration) {
        self.state().now_unix_ms += duration.as_millis() as i64;
    }
}
