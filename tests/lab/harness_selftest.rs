//! Self-tests of the lab harness (tests/lab/support): the hosts are real, distinct machines that
//! the code under test can reach, and the harness's network controls work.

use std::collections::HashSet;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use libtest_mimic::{Failed, Trial};

use crate::support::Lab;

/// The self-tests change the network of a host; they do not overlap each other.
static SERIAL: Mutex<()> = Mutex::new(());

type SelfTest = fn(&Lab) -> Result<()>;

/// A path every host of the shared lab keeps on the machine's filesystem (`LabSpec::own_disk`),
/// for the self-test of that feature alone: the scenarios keep everything on the overlay.
pub const OWN_DISK: &str = "/var/lib/k3nlab-own-disk";

pub fn trials(lab: &Arc<Lab>) -> Vec<Trial> {
    let tests: [(&str, SelfTest); 4] = [
        ("lab_harness::hosts_are_distinct_systemd_machines", hosts_are_distinct_systemd_machines),
        ("lab_harness::an_own_disk_path_is_the_machines_filesystem_shared_with_the_host", own_disk_is_shared),
        ("lab_harness::disconnect_cuts_off_and_reconnect_restores", disconnect_cuts_off_and_reconnect_restores),
        ("lab_harness::in_netns_thread_reaches_sshd", in_netns_thread_reaches_sshd),
    ];
    tests
        .into_iter()
        .map(|(name, test)| {
            let lab = Arc::clone(lab);
            crate::common::timed(name, move || {
                let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
                test(&lab).map_err(|e| Failed::from(format!("{e:?}")))
            })
        })
        .collect()
}

fn hosts_are_distinct_systemd_machines(lab: &Lab) -> Result<()> {
    ensure!(!lab.hosts().is_empty(), "the lab has no hosts");
    let mut machine_ids = HashSet::new();
    let mut host_keys = HashSet::new();
    let mut addresses = HashSet::new();
    for h in lab.hosts() {
        let out = h.sh("cat /proc/1/comm; hostname; cat /etc/machine-id; systemctl is-system-running || true; \
             sysctl -w net.ipv4.ip_forward=0 >/dev/null && echo sysctl-writable; \
             stat -c '%U %a' /home/ops/.ssh /home/ops/.ssh/authorized_keys /home/pw/.ssh/authorized_keys")?;
        let lines: Vec<&str> = out.lines().collect();
        ensure!(lines.len() == 8, "host {}: unexpected output {out:?}", h.name);
        ensure!(lines[0] == "systemd", "host {}: PID 1 is {:?}, not systemd", h.name, lines[0]);
        ensure!(lines[1] == h.name, "host {}: hostname is {:?}", h.name, lines[1]);
        ensure!(
            lines[2].len() == 32 && lines[2].bytes().all(|b| b.is_ascii_hexdigit()),
            "host {}: machine-id {:?}",
            h.name,
            lines[2]
        );
        ensure!(machine_ids.insert(lines[2].to_owned()), "host {}: machine-id {} is not unique", h.name, lines[2]);
        ensure!(matches!(lines[3], "running" | "degraded"), "host {}: system state {:?}", h.name, lines[3]);
        ensure!(lines[4] == "sysctl-writable", "host {}: sysctl -w net.ipv4.ip_forward failed", h.name);
        ensure!(
            lines[5..] == ["ops 700", "ops 600", "pw 600"],
            "host {}: ssh dir ownership/modes {:?}",
            h.name,
            &lines[5..]
        );
        ensure!(host_keys.insert(h.public_host_key()), "host {}: host key is not unique", h.name);
        ensure!(addresses.insert(h.address), "host {}: address {} is not unique", h.name, h.address);
        ensure!(
            h.public_host_key().starts_with("ssh-ed25519 AAAA"),
            "host {}: host key {:?}",
            h.name,
            h.public_host_key()
        );

        // The users the transport tests log in as.
        let uid = h.sh_as("ops", "sudo -n id -u")?;
        ensure!(uid.trim() == "0", "host {}: ops's passwordless sudo gave {uid:?}", h.name);
        match h.sh_as("pw", "sudo -n true") {
            Ok(_) => bail!("host {}: pw's sudo did not ask for a password", h.name),
            Err(e) => ensure!(format!("{e:#}").contains("password"), "host {}: pw's sudo: {e:#}", h.name),
        }
    }

    // known_hosts_line is what a strict client accepts, via the operator's path (command_in_netns).
    let first = &lab.hosts()[0];
    let known_hosts = lab.dir().join("selftest_known_hosts");
    std::fs::write(&known_hosts, format!("{}\n", lab.known_hosts_line(first)))?;
    let out = lab
        .command_in_netns(Path::new("ssh"))
        .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-i")
        .arg(lab.client_key())
        .arg(format!("root@{}", first.address))
        .arg("hostname")
        .output()
        .context("running ssh with a strict known_hosts file")?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == first.name,
        "strict ssh to {} with known_hosts_line failed ({}): {}",
        first.name,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn own_disk_is_shared(lab: &Lab) -> Result<()> {
    for h in lab.hosts() {
        let out = h.sh(&format!(
            "stat -f -c %T / {OWN_DISK}; mountpoint -q {OWN_DISK} && echo mountpoint; echo {name} > {OWN_DISK}/probe",
            name = h.name
        ))?;
        let lines: Vec<&str> = out.lines().collect();
        ensure!(lines.len() == 3, "host {}: unexpected output {out:?}", h.name);
        ensure!(lines[0] == "overlayfs", "host {}: its root is {:?}, not the overlay", h.name, lines[0]);
        ensure!(lines[1] != "overlayfs", "host {}: {OWN_DISK} is on the overlay", h.name);
        ensure!(lines[2] == "mountpoint", "host {}: {OWN_DISK} is not a mount point", h.name);
        // The machine sees the host's file where the harness keeps that disk, and through the root.
        let through_root = h.root.join(OWN_DISK.trim_start_matches('/'));
        for seen in [h.own_disk_source(OWN_DISK).join("probe"), through_root.join("probe")] {
            let text = std::fs::read_to_string(&seen).with_context(|| format!("reading {}", seen.display()))?;
            ensure!(text.trim() == h.name, "host {}: {} holds {text:?}", h.name, seen.display());
        }
        h.sh(&format!("rm {OWN_DISK}/probe"))?;
    }
    Ok(())
}

fn disconnect_cuts_off_and_reconnect_restores(lab: &Lab) -> Result<()> {
    let victim = lab.hosts().last().context("the lab has no hosts")?;
    let address = victim.address;
    let reachable = move || -> std::io::Result<()> {
        TcpStream::connect_timeout(&SocketAddr::from((address, 22)), Duration::from_secs(1)).map(drop)
    };
    lab.in_netns(reachable).with_context(|| format!("{} before disconnect", victim.name))?;

    victim.disconnect()?;
    let result = (|| -> Result<()> {
        // An ssh client with a 2 s connect timeout gives up in about that time: the host is gone.
        let started = Instant::now();
        let out = lab
            .command_in_netns(Path::new("ssh"))
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=2",
                "-o",
                "StrictHostKeyChecking=no",
            ])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-i"])
            .arg(lab.client_key())
            .arg(format!("root@{address}"))
            .arg("true")
            .output()?;
        let took = started.elapsed();
        ensure!(!out.status.success(), "ssh to disconnected host {} succeeded", victim.name);
        ensure!(
            took < Duration::from_secs(5),
            "ssh to disconnected host {} took {took:?} to fail: {}",
            victim.name,
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(lab.in_netns(reachable).is_err(), "port 22 of disconnected host {} still reachable", victim.name);
        if let Some(other) = lab.hosts().iter().find(|h| h.name != victim.name) {
            other.sh("true").with_context(|| format!("{} while {} is disconnected", other.name, victim.name))?;
        }
        Ok(())
    })();
    // Restore even when an assertion failed, so later tests find the host connected.
    let restored = victim.reconnect();
    result?;
    restored?;
    let name = victim.sh("hostname")?;
    ensure!(name.trim() == victim.name, "after reconnect, hostname {name:?}");
    Ok(())
}

fn in_netns_thread_reaches_sshd(lab: &Lab) -> Result<()> {
    for h in lab.hosts() {
        let address = h.address;
        let banner = lab.in_netns(move || -> std::io::Result<String> {
            let mut stream = TcpStream::connect_timeout(&SocketAddr::from((address, 22)), Duration::from_secs(3))?;
            stream.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut buf = [0u8; 64];
            let n = stream.read(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        });
        let banner = banner.with_context(|| format!("TCP to {}:22 from the lab netns", h.name))?;
        ensure!(banner.starts_with("SSH-2.0-OpenSSH"), "host {}: port 22 says {banner:?}", h.name);
    }
    // A panic on the netns thread reaches the caller.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        lab.in_netns(|| panic!("expected panic: in_netns must hand this to its caller"))
    }));
    ensure!(caught.is_err(), "in_netns swallowed a panic");
    Ok(())
}
