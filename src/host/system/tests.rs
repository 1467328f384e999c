//! The real system's commands and files on this machine, and the fake's own behaviour.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

#[test]
fn real_run_captures_status_and_output_without_a_shell() {
    let sys = RealSystem::host();
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
    let sleep = RealSystem::host().find_command("sleep").expect("sleep");
    let started = std::time::Instant::now();
    let err = RealSystem::host().run_with(&sleep, &["10"], None, Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn real_system_basics() {
    let sys = RealSystem::host();
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
    let err = RealSystem::host().write_proc(&dir.path().join("missing"), "1").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
}

#[test]
fn real_file_operations_for_install_and_reset() {
    let sys = RealSystem::host();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bin = d.join("bin/k3s");
    sys.create_dir_all(&d.join("bin"), 0o755).unwrap();
    assert_eq!(sys.file_mode(&d.join("bin")).unwrap(), 0o755);
    sys.write_atomic(&bin, b"abc", 0o600).unwrap();
    assert_eq!(sys.file_mode(&bin).unwrap(), 0o600);
    assert_eq!(sha256_file(&sys, &bin).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

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
    let cat = RealSystem::host().find_command("cat").expect("cat");
    let out = RealSystem::host().run_with(&cat, &[], Some(b"*filter\nCOMMIT\n"), Duration::from_secs(5)).unwrap();
    assert_eq!(out.stdout, "*filter\nCOMMIT\n");
    // A program that reads nothing does not hurt the caller (no SIGPIPE).
    let t = RealSystem::host().find_command("true").expect("true");
    assert!(RealSystem::host()
        .run_with(&t, &[], Some(&vec![b'x'; 1 << 20]), Duration::from_secs(5))
        .unwrap()
        .success());
    let sleep = RealSystem::host().find_command("sleep").expect("sleep");
    let err = RealSystem::host().run_with(&sleep, &["10"], None, Duration::from_millis(200)).unwrap_err();
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

#[test]
fn real_run_streaming_feeds_stdin_as_it_is_read_and_kills_the_program_when_the_input_breaks() {
    let sys = RealSystem::host();
    let sh = sys.find_command("sh").expect("sh");
    // The whole stream arrives: 8 MiB through `wc -c`, never held in memory at once.
    let mut big = std::io::Read::take(std::io::repeat(b'x'), 8 << 20);
    let out = sys.run_streaming(&sh, &["-c", "wc -c"], &mut big, Duration::from_secs(20)).unwrap();
    assert_eq!(out.stdout.trim(), (8u64 << 20).to_string());
    // A broken input: the program is killed before it could see the end of its stdin and act
    // on a cut stream (here: write a marker once stdin ends).
    let marker = tempfile::tempdir().unwrap();
    let done = marker.path().join("saw-the-end");
    let script = format!("cat >/dev/null; touch {}", done.display());
    struct Broken(usize);
    impl std::io::Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "cut off"));
            }
            self.0 -= 1;
            buf[0] = b'y';
            Ok(1)
        }
    }
    let err = sys.run_streaming(&sh, &["-c", &script], &mut Broken(1000), Duration::from_secs(20)).unwrap_err();
    assert_eq!(err.to_string(), "cut off");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!done.exists(), "the program went on after its input broke");
    // A program that stops reading early ends the copy; its status tells.
    let mut endless = std::io::repeat(b'z');
    let out = sys
        .run_streaming(&sh, &["-c", "head -c 10 >/dev/null; exit 3"], &mut endless, Duration::from_secs(20))
        .unwrap();
    assert_eq!(out.status, Some(3));
}
