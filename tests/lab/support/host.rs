//! One lab host: its root filesystem (an overlay over the base image), its boot, its ssh.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{setns, CloneFlags};

use super::cmd::{check, describe, file_tail, run};
use super::net::{self, open_netns, LAB_NETNS};

/// The paths of one host inside the run dir.
pub struct HostDirs {
    pub dir: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
    pub boot_log: PathBuf,
}

impl HostDirs {
    pub fn new(dir: PathBuf) -> HostDirs {
        HostDirs {
            upper: dir.join("upper"),
            work: dir.join("work"),
            merged: dir.join("merged"),
            boot_log: dir.join("boot.log"),
            dir,
        }
    }
}

pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        bail!("invalid lab host name {name:?}: use 1-32 characters a-z, 0-9 and inner '-'");
    }
    Ok(())
}

/// Where the machine keeps the host's own-disk `path`, in the host's dir.
pub fn own_disk_source(host_dir: &Path, path: &str) -> PathBuf {
    host_dir.join("disk").join(path.trim_start_matches('/'))
}

/// Bind-mounts an empty directory of the host's dir (`disk/<path>`) on `<merged>/<path>`:
/// nspawn takes the root's submounts with it, and the machine sees the same files there.
pub fn mount_own_disk(dirs: &HostDirs, path: &str) -> Result<PathBuf> {
    anyhow::ensure!(path.starts_with('/'), "own_disk: {path:?} is not an absolute path");
    let (source, target) = (own_disk_source(&dirs.dir, path), dirs.merged.join(path.trim_start_matches('/')));
    for d in [&source, &target] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    run(Command::new("mount").arg("--bind").arg(&source).arg(&target))?;
    Ok(target)
}

pub fn mount_overlay(base: &Path, dirs: &HostDirs) -> Result<()> {
    for d in [&dirs.upper, &dirs.work, &dirs.merged] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let opts = format!("lowerdir={},upperdir={},workdir={}", base.display(), dirs.upper.display(), dirs.work.display());
    run(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(&dirs.merged))?;
    Ok(())
}

fn write_file(path: &Path, content: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    // Write a sibling and rename: files of the base image are replaced, never written through.
    let file_name = path.file_name().expect("file path").to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.k3nlab-tmp"));
    (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(content)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            chown(&tmp, Some(uid), Some(gid))?;
        }
        drop(f);
        fs::rename(&tmp, path)
    })()
    .with_context(|| format!("writing {}", path.display()))
}

/// uid, gid and home of `user` per the host's /etc/passwd.
fn passwd_entry(root: &Path, user: &str) -> Result<(u32, u32, PathBuf)> {
    let passwd = fs::read_to_string(root.join("etc/passwd")).context("reading the host's /etc/passwd")?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 6 && f[0] == user {
            return Ok((f[2].parse()?, f[3].parse()?, PathBuf::from(f[5])));
        }
    }
    bail!("user {user} is missing from the base image (rebuild it with tests/lab/base-image.sh)")
}

/// Generates an ed25519 key pair (no passphrase) at `path` / `path`.pub.
pub fn keygen(path: &Path, comment: &str) -> Result<()> {
    let _ = fs::remove_file(path);
    let _ = fs::remove_file(pub_path(path));
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"]).arg(path))?;
    Ok(())
}

/// Where ssh-keygen puts the public half of the key at `path`.
pub fn pub_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// Installs a fresh ed25519 host key into the host's /etc/ssh (atomically) and returns
/// "ssh-ed25519 AAAA...".
pub fn install_host_key(root: &Path, scratch: &Path, name: &str) -> Result<String> {
    let tmp = scratch.join("ssh_host_ed25519_key");
    keygen(&tmp, &format!("root@{name}"))?;
    let private = fs::read(&tmp).context("reading the new host key")?;
    let public = fs::read(pub_path(&tmp)).context("reading the new host key")?;
    let _ = fs::remove_file(&tmp);
    let _ = fs::remove_file(pub_path(&tmp));
    let ssh = root.join("etc/ssh");
    write_file(&ssh.join("ssh_host_ed25519_key"), &private, 0o600, Some((0, 0)))?;
    write_file(&ssh.join("ssh_host_ed25519_key.pub"), &public, 0o644, Some((0, 0)))?;
    Ok(key_type_and_blob(&String::from_utf8_lossy(&public)))
}

/// "ssh-ed25519 AAAA..." from a public key line (drops the comment).
pub fn key_type_and_blob(line: &str) -> String {
    line.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// Writes the host's identity and access: hostname, machine-id, /etc/hosts, /etc/resolv.conf, host
/// key, and the lab client key in authorized_keys of root, ops and pw.
pub fn personalize(
    root: &Path,
    scratch: &Path,
    name: &str,
    client_pub: &str,
    all: &[(String, Ipv4Addr)],
) -> Result<()> {
    write_file(&root.join("etc/hostname"), format!("{name}\n").as_bytes(), 0o644, None)?;
    let machine_id = format!("{:032x}", rand::random::<u128>() | 1);
    write_file(&root.join("etc/machine-id"), format!("{machine_id}\n").as_bytes(), 0o444, None)?;
    let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (n, a) in all {
        hosts.push_str(&format!("{a}\t{n}\n"));
    }
    write_file(&root.join("etc/hosts"), hosts.as_bytes(), 0o644, None)?;
    // No name server: lookups must not send packets anywhere (the base image copied the machine's).
    let resolv = "# k3node lab: no DNS; the lab hosts are in /etc/hosts\noptions timeout:1 attempts:1\n";
    write_file(&root.join("etc/resolv.conf"), resolv.as_bytes(), 0o644, None)?;
    install_host_key(root, scratch, name)?;
    for user in ["root", "ops", "pw"] {
        let (uid, gid, home) = passwd_entry(root, user)?;
        let ssh_dir = root.join(home.strip_prefix("/").unwrap_or(&home)).join(".ssh");
        fs::create_dir_all(&ssh_dir).with_context(|| format!("creating {}", ssh_dir.display()))?;
        fs::set_permissions(&ssh_dir, fs::Permissions::from_mode(0o700))?;
        chown(&ssh_dir, Some(uid), Some(gid)).with_context(|| format!("chown {}", ssh_dir.display()))?;
        write_file(&ssh_dir.join("authorized_keys"), client_pub.as_bytes(), 0o600, Some((uid, gid)))?;
    }
    Ok(())
}

/// Starts `systemd-nspawn -b` for the host, detached in its own session, in its own cgroups
/// (`cgroups`: the dirs to join), console output to the boot log.
pub fn spawn_nspawn(machine: &str, netns: &str, dirs: &HostDirs, cgroups: &[PathBuf]) -> Result<(Child, String)> {
    let log = fs::File::create(&dirs.boot_log).with_context(|| format!("creating {}", dirs.boot_log.display()))?;
    let log2 = log.try_clone()?;
    let mut cmd = Command::new("systemd-nspawn");
    cmd.arg("-D")
        .arg(&dirs.merged)
        .args(["--register=no", "--keep-unit", "-M", machine])
        // --private-network together with an existing netns: nspawn then treats the netns as private,
        // keeps CAP_NET_ADMIN and mounts /proc/sys/net writable (sysctl -w net.* works inside).
        .arg("--private-network")
        .arg(format!("--network-namespace-path={}", net::netns_path(netns).display()))
        // The host keeps the /etc/resolv.conf written by personalize(); no journal linking to the machine.
        .args(["--resolv-conf=off", "--link-journal=no"])
        .arg("--setenv=SYSTEMD_COLORS=0")
        .arg("--boot")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let procs: Vec<CString> = cgroups
        .iter()
        .map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).expect("no NUL in cgroup path"))
        .collect();
    // SAFETY: only async-signal-safe calls (setsid, open, write, close) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            for p in &procs {
                let fd = nix::libc::open(p.as_ptr(), nix::libc::O_WRONLY | nix::libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = nix::libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                nix::libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
            }
            Ok(())
        });
    }
    let desc = describe(&cmd);
    let child = cmd.spawn().with_context(|| format!("cannot start `{desc}`"))?;
    Ok((child, desc))
}

/// An ssh command to `user@address` with the lab client key, run in the lab netns.
pub fn ssh_command(key: &Path, user: &str, address: Ipv4Addr, remote: &str, connect_timeout: u32) -> Result<Command> {
    let netns = open_netns(LAB_NETNS)?;
    let mut cmd = Command::new("ssh");
    cmd.arg("-F")
        .arg("/dev/null")
        .arg("-i")
        .arg(key)
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            &format!("ConnectTimeout={connect_timeout}"),
            "-o",
            "ServerAliveInterval=5",
            "-o",
            "ServerAliveCountMax=3",
        ])
        .arg(format!("{user}@{address}"))
        .arg("--")
        .arg(remote)
        .stdin(Stdio::null());
    // SAFETY: setns is a plain syscall, async-signal-safe.
    unsafe {
        cmd.pre_exec(move || setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(Into::into));
    }
    Ok(cmd)
}

/// Runs `remote` as `user` on the host; Ok(stdout) on exit 0.
pub fn ssh_run(key: &Path, user: &str, address: Ipv4Addr, remote: &str) -> Result<String> {
    let mut cmd = ssh_command(key, user, address, remote, 5)?;
    let out = cmd.output().with_context(|| format!("cannot start ssh to {user}@{address}"))?;
    check(&format!("ssh {user}@{address} {remote:?}"), &out)
}

/// Waits (on the calling thread, which must be in the lab netns) until the host's sshd answers and
/// `systemctl is-system-running` says running or degraded. Fails early when nspawn exits.
pub fn wait_ready(
    name: &str,
    address: Ipv4Addr,
    key: &Path,
    nspawn: (&mut Child, &str),
    boot_log: &Path,
    deadline: Instant,
) -> Result<String> {
    let (child, desc) = nspawn;
    let started = Instant::now();
    let mut last;
    loop {
        if let Some(status) = child.try_wait().context("checking systemd-nspawn")? {
            bail!(
                "host {name}: `{desc}` exited ({status}) while booting; last lines of {}:\n{}",
                boot_log.display(),
                file_tail(boot_log, 40)
            );
        }
        match net::tcp_open(address, 22, Duration::from_millis(500)) {
            Err(e) => last = format!("{address}:22: {e}"),
            Ok(()) => {
                let mut cmd = ssh_command(key, "root", address, "systemctl is-system-running", 3)?;
                let out = cmd.output().context("cannot start ssh")?;
                let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                match state.as_str() {
                    "running" | "degraded" => return Ok(state),
                    "" => last = format!("ssh: {}", String::from_utf8_lossy(&out.stderr).trim()),
                    _ => last = format!("system state {state}"),
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(anyhow!(
                "host {name} ({address}) not ready after {:.0?}: {last}; last lines of {}:\n{}",
                started.elapsed(),
                boot_log.display(),
                file_tail(boot_log, 40)
            ));
        }
        std::thread::sleep(Duration::from_millis(150));
    }
}
