//! The same cases against [`RealSystem`] (rooted in a temp dir) and [`fake::FakeSystem`]: where
//! the host operations rely on a behaviour, the fake must behave as the real system does.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::fake::FakeSystem;
use super::{sha256_file, HostSystem, RealSystem};

/// Runs `case` against both systems; the temp dir lives as long as the real one is used.
fn both(case: impl Fn(&dyn HostSystem, &str)) {
    let dir = tempfile::tempdir().unwrap();
    case(&RealSystem::rooted(dir.path()), "real");
    case(&FakeSystem::new(), "fake");
}

fn p(path: &str) -> PathBuf {
    PathBuf::from(path)
}

fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
}

#[test]
fn written_files_read_back_with_their_bytes_and_mode() {
    both(|sys, name| {
        let bytes: Vec<u8> = (0..=255u8).chain([0xff, 0xfe, 0]).collect();
        sys.write_atomic(&p("/etc/k3node/a.bin"), &bytes, 0o600).unwrap();
        let mut back = Vec::new();
        sys.open_read(&p("/etc/k3node/a.bin")).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, bytes, "{name}");
        assert_eq!(sys.file_mode(&p("/etc/k3node/a.bin")).unwrap(), 0o600, "{name}");
        assert_eq!(sys.file_size(&p("/etc/k3node/a.bin")).unwrap(), bytes.len() as u64, "{name}");
        assert!(sys.read_to_string(&p("/etc/k3node/a.bin")).unwrap().contains('\u{fffd}'), "{name}: lossy text");
        sys.write_atomic(&p("/etc/k3node/a.bin"), b"second", 0o644).unwrap();
        assert_eq!(sys.read_to_string(&p("/etc/k3node/a.bin")).unwrap(), "second", "{name}");
        assert_eq!(sys.file_mode(&p("/etc/k3node/a.bin")).unwrap(), 0o644, "{name}");
        assert_eq!(sys.read_dir_names(&p("/etc/k3node")).unwrap(), vec!["a.bin"], "{name}: no temp file left");
    });
}

#[test]
fn missing_paths_fail_with_enoent() {
    both(|sys, name| {
        for result in [
            sys.read_to_string(&p("/nope")).map(|_| ()),
            sys.open_read(&p("/nope")).map(|_| ()),
            sys.read_dir_names(&p("/nope")).map(|_| ()),
            sys.read_link(&p("/nope")).map(|_| ()),
            sys.file_mode(&p("/nope")).map(|_| ()),
            sys.remove_file(&p("/nope")),
            sys.rename(&p("/nope"), &p("/nope2")),
        ] {
            assert_eq!(errno(&result.unwrap_err()), Some(nix::libc::ENOENT), "{name}");
        }
        assert!(!sys.exists(&p("/nope")), "{name}");
    });
}

#[test]
fn a_streamed_write_replaces_the_file_only_on_commit() {
    both(|sys, name| {
        sys.write_atomic(&p("/var/lib/x/f"), b"old", 0o644).unwrap();
        let mut abandoned = sys.create_atomic(&p("/var/lib/x/f"), 0o600).unwrap();
        abandoned.write_all(b"half").unwrap();
        drop(abandoned);
        assert_eq!(sys.read_to_string(&p("/var/lib/x/f")).unwrap(), "old", "{name}: dropped writes change nothing");

        // Over 20 MiB in uneven writes: the real file starts its write-back every 8 MiB.
        let chunk: Vec<u8> = (0..10_007u32).map(|i| (i % 251) as u8).collect();
        let mut file = sys.create_atomic(&p("/var/lib/x/f"), 0o600).unwrap();
        for _ in 0..2_100 {
            file.write_all(&chunk).unwrap();
        }
        assert_eq!(sys.read_to_string(&p("/var/lib/x/f")).unwrap(), "old", "{name}: invisible before commit");
        file.commit().unwrap();
        assert_eq!(sys.file_size(&p("/var/lib/x/f")).unwrap(), 2_100 * 10_007, "{name}");
        assert_eq!(sys.file_mode(&p("/var/lib/x/f")).unwrap(), 0o600, "{name}");
        assert_eq!(sys.read_dir_names(&p("/var/lib/x")).unwrap(), vec!["f"], "{name}: no temp file left");
        let expected = crate::digest::sha256_hex(&chunk.repeat(2_100));
        assert_eq!(sha256_file(sys, &p("/var/lib/x/f")).unwrap(), expected, "{name}");
    });
}

#[test]
fn symlinks_are_replaced_atomically_and_removed_without_their_target() {
    both(|sys, name| {
        sys.write_atomic(&p("/usr/local/bin/k3s"), b"bin", 0o755).unwrap();
        sys.symlink_atomic(Path::new("k3s"), &p("/usr/local/bin/kubectl")).unwrap();
        sys.symlink_atomic(Path::new("k3s"), &p("/usr/local/bin/kubectl")).unwrap();
        assert_eq!(sys.read_link(&p("/usr/local/bin/kubectl")).unwrap(), p("k3s"), "{name}");
        assert_eq!(errno(&sys.read_link(&p("/usr/local/bin/k3s")).unwrap_err()), Some(nix::libc::EINVAL), "{name}");
        let mut names = sys.read_dir_names(&p("/usr/local/bin")).unwrap();
        names.sort();
        assert_eq!(names, vec!["k3s", "kubectl"], "{name}");
        sys.remove_file(&p("/usr/local/bin/kubectl")).unwrap();
        assert!(sys.exists(&p("/usr/local/bin/k3s")), "{name}");
    });
}

#[test]
fn directories_are_created_with_their_mode_renamed_and_removed_as_trees() {
    both(|sys, name| {
        sys.create_dir_all(&p("/var/lib/rancher/k3s/server"), 0o700).unwrap();
        assert_eq!(sys.file_mode(&p("/var/lib/rancher/k3s/server")).unwrap(), 0o700, "{name}");
        sys.write_atomic(&p("/var/lib/rancher/k3s/server/token"), b"t", 0o600).unwrap();
        sys.rename(&p("/var/lib/rancher/k3s"), &p("/var/lib/rancher/k3s.aside")).unwrap();
        assert!(!sys.exists(&p("/var/lib/rancher/k3s")), "{name}");
        assert_eq!(sys.read_to_string(&p("/var/lib/rancher/k3s.aside/server/token")).unwrap(), "t", "{name}");
        assert_eq!(
            errno(&sys.remove_file(&p("/var/lib/rancher/k3s.aside")).unwrap_err()),
            Some(nix::libc::EISDIR),
            "{name}"
        );
        sys.remove_dir_all(&p("/var/lib/rancher/k3s.aside")).unwrap();
        assert!(!sys.exists(&p("/var/lib/rancher/k3s.aside/server/token")), "{name}");
    });
}

#[test]
fn a_directory_stays_when_its_last_file_is_removed_or_moved_out() {
    both(|sys, name| {
        sys.write_atomic(&p("/var/lib/k3node-x/record.json"), b"{}", 0o600).unwrap();
        sys.remove_file(&p("/var/lib/k3node-x/record.json")).unwrap();
        assert!(sys.exists(&p("/var/lib/k3node-x")), "{name}: removed file");
        assert_eq!(sys.read_dir_names(&p("/var/lib/k3node-x")).unwrap(), Vec::<String>::new(), "{name}");

        sys.write_atomic(&p("/var/lib/k3node-y/a"), b"a", 0o600).unwrap();
        sys.rename(&p("/var/lib/k3node-y/a"), &p("/var/lib/k3node-x/a")).unwrap();
        assert!(sys.exists(&p("/var/lib/k3node-y")), "{name}: renamed file");
        assert_eq!(sys.read_dir_names(&p("/var/lib/k3node-y")).unwrap(), Vec::<String>::new(), "{name}");
    });
}

#[test]
fn a_file_renamed_over_another_replaces_it() {
    both(|sys, name| {
        sys.write_atomic(&p("/d/a"), b"new", 0o644).unwrap();
        sys.write_atomic(&p("/d/b"), b"old", 0o644).unwrap();
        sys.rename(&p("/d/a"), &p("/d/b")).unwrap();
        assert_eq!(sys.read_to_string(&p("/d/b")).unwrap(), "new", "{name}");
        assert_eq!(sys.read_dir_names(&p("/d")).unwrap(), vec!["b"], "{name}");
    });
}

#[test]
fn a_lock_is_exclusive_until_its_guard_is_dropped() {
    both(|sys, name| {
        let lock = p("/run/k3node/lock");
        let held = sys.try_lock(&lock).unwrap();
        assert!(held.is_some(), "{name}: a free lock is taken");
        assert!(sys.try_lock(&lock).unwrap().is_none(), "{name}: a held lock is refused");
        drop(held);
        assert!(sys.try_lock(&lock).unwrap().is_some(), "{name}: a released lock is free again");
    });
}

#[test]
fn metadata_describes_the_path_itself_and_modes_and_owners_stick() {
    use super::FileKind;
    both(|sys, name| {
        sys.write_atomic(&p("/srv/tls/ca.key"), b"0123456789", 0o600).unwrap();
        sys.create_dir_all(&p("/srv/tls/etcd"), 0o700).unwrap();
        sys.symlink_atomic(Path::new("ca.key"), &p("/srv/tls/link")).unwrap();
        let file = sys.metadata(&p("/srv/tls/ca.key")).unwrap();
        assert_eq!((file.kind, file.size, file.mode), (FileKind::File, 10, 0o600), "{name}");
        let dir = sys.metadata(&p("/srv/tls/etcd")).unwrap();
        assert_eq!((dir.kind, dir.size, dir.mode), (FileKind::Dir, 0, 0o700), "{name}");
        let link = sys.metadata(&p("/srv/tls/link")).unwrap();
        assert_eq!((link.kind, link.size), (FileKind::Symlink, 0), "{name}: the link, not its target");
        assert_eq!(errno(&sys.metadata(&p("/srv/nope")).unwrap_err()), Some(nix::libc::ENOENT), "{name}");

        sys.set_mode(&p("/srv/tls/ca.key"), 0o640).unwrap();
        sys.set_mode(&p("/srv/tls/etcd"), 0o750).unwrap();
        assert_eq!(sys.metadata(&p("/srv/tls/ca.key")).unwrap().mode, 0o640, "{name}");
        assert_eq!(sys.file_mode(&p("/srv/tls/etcd")).unwrap(), 0o750, "{name}");
        let through_link = sys.set_mode(&p("/srv/tls/link"), 0o777).unwrap_err();
        assert_eq!(errno(&through_link), Some(nix::libc::ELOOP), "{name}");
        assert_eq!(sys.metadata(&p("/srv/tls/ca.key")).unwrap().mode, 0o640, "{name}: the target is untouched");

        // (The tests run as root, as the README says: chown needs it.)
        sys.set_owner(&p("/srv/tls/ca.key"), 1234, 5678).unwrap();
        sys.set_owner(&p("/srv/tls/link"), 4321, 8765).unwrap();
        let (file, link) = (sys.metadata(&p("/srv/tls/ca.key")).unwrap(), sys.metadata(&p("/srv/tls/link")).unwrap());
        assert_eq!((file.uid, file.gid), (1234, 5678), "{name}");
        assert_eq!((link.uid, link.gid), (4321, 8765), "{name}: the link's own owner, not its target's");
        sys.rename(&p("/srv/tls"), &p("/srv/tls.aside")).unwrap();
        let moved = sys.metadata(&p("/srv/tls.aside/ca.key")).unwrap();
        assert_eq!((moved.mode, moved.uid, moved.gid), (0o640, 1234, 5678), "{name}: a rename keeps both");
    });
}

#[test]
fn a_fifo_is_neither_file_nor_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("srv")).unwrap();
    nix::unistd::mkfifo(&dir.path().join("srv/pipe"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let real = RealSystem::rooted(dir.path());
    let fake = FakeSystem::new().special("/srv/pipe");
    for (sys, name) in [(&real as &dyn HostSystem, "real"), (&fake, "fake")] {
        assert_eq!(sys.metadata(&p("/srv/pipe")).unwrap().kind, super::FileKind::Special, "{name}");
        assert!(sys.exists(&p("/srv/pipe")), "{name}");
        assert_eq!(sys.read_dir_names(&p("/srv")).unwrap(), vec!["pipe"], "{name}");
    }
}

/// A small WAL-mode database, as bytes, built by SQLite itself.
fn sqlite_bytes(rows: u32) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE kine (id INTEGER PRIMARY KEY, name TEXT, value BLOB)").unwrap();
    for i in 0..rows {
        conn.execute("INSERT INTO kine (name, value) VALUES (?1, ?2)", (format!("/registry/{i}"), vec![1u8; 100]))
            .unwrap();
    }
    drop(conn);
    std::fs::read(&path).unwrap()
}

#[test]
fn sqlite_images_are_the_database_checked_and_missing_or_foreign_files_fail_alike() {
    both(|sys, name| {
        let db = sqlite_bytes(50);
        sys.write_atomic(&p("/var/lib/db/state.db"), &db, 0o600).unwrap();
        let image = sys.sqlite_image(&p("/var/lib/db/state.db")).unwrap();
        assert!(image.check().unwrap().is_empty(), "{name}");
        let mut bytes = Vec::new();
        image.bytes().unwrap().read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, image.size(), "{name}");
        assert_eq!(bytes, db, "{name}: a checkpointed database's image is its file");
        drop(image);
        assert_eq!(sys.read_dir_names(&p("/var/lib/db")).unwrap(), vec!["state.db"], "{name}: nothing written");
        let missing = sys.sqlite_image(&p("/var/lib/db/nope.db")).err().unwrap();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound, "{name}: {missing}");
        assert!(!sys.exists(&p("/var/lib/db/nope.db")), "{name}: never created");
        sys.write_atomic(&p("/var/lib/db/text"), "plain text, no database".repeat(40).as_bytes(), 0o600).unwrap();
        let foreign = sys.sqlite_check(&p("/var/lib/db/text")).unwrap_err();
        assert_eq!(foreign.kind(), io::ErrorKind::InvalidData, "{name}: {foreign}");
        let foreign = sys.sqlite_image(&p("/var/lib/db/text")).err().unwrap();
        assert_eq!(foreign.kind(), io::ErrorKind::InvalidData, "{name}: {foreign}");
    });
}

#[test]
fn the_clock_moves_forward_by_at_least_what_was_slept() {
    both(|sys, name| {
        let before = sys.now_unix_ms();
        sys.sleep(std::time::Duration::from_millis(30));
        let after = sys.now_unix_ms();
        assert!(after - before >= 30, "{name}: {before} then {after} after sleeping 30 ms");
        // Unix milliseconds: after 2020 and before 2100, not seconds or nanoseconds.
        let unix_ms_2020_to_2100 = 1_577_836_800_000..4_102_444_800_000;
        assert!(name == "fake" || unix_ms_2020_to_2100.contains(&after), "{name}: {after} is not a Unix time in ms");
    });
}

#[test]
fn killing_a_process_that_does_not_exist_fails_with_esrch() {
    both(|sys, name| {
        // Above any pid_max (2^22 at most): no such process on any machine.
        let e = sys.kill(i32::MAX).unwrap_err();
        assert_eq!(errno(&e), Some(nix::libc::ESRCH), "{name}: {e}");
    });
}

#[test]
fn the_disk_space_of_a_missing_path_fails_with_enoent() {
    both(|sys, name| {
        let e = sys.disk_space(&p("/var/lib/not-there")).unwrap_err();
        assert_eq!(errno(&e), Some(nix::libc::ENOENT), "{name}: {e}");
    });
}

#[test]
fn unmounting_a_directory_where_nothing_is_mounted_fails_and_keeps_it() {
    both(|sys, name| {
        sys.create_dir_all(&p("/var/lib/kubelet/pods"), 0o755).unwrap();
        let e = sys.unmount(&p("/var/lib/kubelet/pods")).unwrap_err();
        // Not a mount point: EINVAL. Without CAP_SYS_ADMIN the kernel says EPERM first.
        let expected =
            if name == "real" && !nix::unistd::geteuid().is_root() { nix::libc::EPERM } else { nix::libc::EINVAL };
        assert_eq!(errno(&e), Some(expected), "{name}: {e}");
        assert!(sys.exists(&p("/var/lib/kubelet/pods")), "{name}: the directory stays");
    });
}

#[test]
fn running_a_program_that_does_not_exist_fails_with_not_found() {
    both(|sys, name| {
        let e = sys.run(&p("/nonexistent/bin/k3s"), &["--version"]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{name}: {e}");
        assert_eq!(sys.find_command("k3node-no-such-command"), None, "{name}");
    });
}
