//! Benchmark: `k3node preflight` on 5 lab hosts against a baseline doing the same checks the way
//! a shell script does, with OpenSSH `ssh host cmd`, one command per check, host by host.
//! Both are measured in the same run; prints times and ratios (targets: >= 5x faster than the
//! baseline; a warm run, agent already on the hosts, under 1 s for 5 hosts).
//!
//! Run: `cargo bench --bench preflight` as root (it builds the lab of tests/lab).

#[path = "../tests/lab/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{Lab, LabHost, LabSpec};

const K3NODE: &str = env!("CARGO_BIN_EXE_k3node");
const WARM_RUNS: usize = 5;

/// What a preflight script asks each host, one ssh round trip per check (as in the seeds' scripts).
const BASELINE_CHECKS: &[&str] = &[
    "id -u",
    "cat /etc/os-release",
    "uname -m",
    "uname -r",
    "nproc",
    "grep MemTotal /proc/meminfo",
    "df -B1 --output=avail /var/lib",
    "cat /proc/swaps",
    "cat /proc/cgroups",
    "grep -w overlay /proc/filesystems",
    "test -d /proc/sys/net/bridge",
    "cat /proc/sys/net/ipv4/ip_forward",
    "cat /proc/sys/net/bridge/bridge-nf-call-iptables",
    "cat /proc/sys/kernel/keys/root_maxkeys",
    "cat /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6",
    "cat /proc/net/route",
    "command -v mount umount nsenter modprobe ip iptables",
    "ls /run/docker.sock /run/containerd/containerd.sock",
    "test -x /usr/local/bin/k3s",
    "hostname",
    "cat /etc/machine-id",
    "ip -o addr",
    "date +%s%N",
];

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing: run only when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let lab = Lab::start(LabSpec { hosts: (1..=5).map(|i| format!("h{i}")).collect(), ..LabSpec::default() })
        .unwrap_or_else(|e| {
            eprintln!("bench: cannot build the lab: {e:#}");
            std::process::exit(1);
        });
    let home = lab.dir().join("bench-operator");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let known_hosts = home.join(".ssh/known_hosts");
    let lines: Vec<String> = lab.hosts().iter().map(|h| lab.known_hosts_line(h)).collect();
    std::fs::write(&known_hosts, lines.join("\n") + "\n").unwrap();
    let cluster = home.join("cluster.yaml");
    let mut yaml = format!(
        "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: bench\nspec:\n  ssh:\n    keyPath: {}\n    knownHosts: {}\n  hosts:\n",
        lab.client_key().display(),
        known_hosts.display()
    );
    for (i, h) in lab.hosts().iter().enumerate() {
        yaml.push_str(&format!(
            "    - name: {}\n      address: {}\n      role: {}\n",
            h.name,
            h.address,
            if i == 0 { "server" } else { "agent" }
        ));
    }
    std::fs::write(&cluster, yaml).unwrap();
    for h in lab.hosts() {
        h.sh("rm -f /usr/local/bin/k3node").unwrap();
    }

    let k3node = |label: &str| -> Duration {
        let started = Instant::now();
        let out = lab
            .command_in_netns(Path::new(K3NODE))
            .args(["preflight", "-c", cluster.to_str().unwrap(), "-o", "json"])
            .env("HOME", &home)
            .output()
            .unwrap();
        let took = started.elapsed();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!("{label}: k3node gave no JSON: {}", String::from_utf8_lossy(&out.stderr));
        });
        let checked = json["hosts"]
            .as_array()
            .map(|a| a.iter().filter(|h| h["checks"].as_array().is_some_and(|c| !c.is_empty())).count())
            .unwrap_or(0);
        assert_eq!(checked, 5, "{label}: not every host was checked: {json}");
        took
    };

    let cold = k3node("cold");
    // Preflight leaves nothing on a host, so "warm" is the state after `up`: this build installed
    // as the helper, where `up` puts it.
    for h in lab.hosts() {
        let dest = h.root.join(k3node::protocol::HELPER_PATH.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(K3NODE, &dest).unwrap();
    }
    let mut warm: Vec<Duration> = (0..WARM_RUNS).map(|i| k3node(&format!("warm {i}"))).collect();
    warm.sort();
    let warm_median = warm[WARM_RUNS / 2];

    let baseline_started = Instant::now();
    for h in lab.hosts() {
        for check in BASELINE_CHECKS {
            baseline_ssh(&lab, h, &known_hosts, check);
        }
    }
    let baseline = baseline_started.elapsed();

    let checks_per_host = BASELINE_CHECKS.len();
    println!("preflight benchmark, 5 lab hosts (nspawn + sshd over veth), same run:");
    println!(
        "  baseline: OpenSSH `ssh host cmd`, {checks_per_host} commands per host, host by host: {:>8.3} s",
        baseline.as_secs_f64()
    );
    println!("  k3node cold (a temporary helper on every host):                 {:>8.3} s", cold.as_secs_f64());
    println!(
        "  k3node warm (agent in place), median of {WARM_RUNS}:                      {:>8.3} s  (min {:.3}, max {:.3})",
        warm_median.as_secs_f64(),
        warm[0].as_secs_f64(),
        warm[WARM_RUNS - 1].as_secs_f64()
    );
    println!(
        "  ratio baseline / k3node warm: {:.1}x (target >= 5x)",
        baseline.as_secs_f64() / warm_median.as_secs_f64()
    );
    println!("  ratio baseline / k3node cold: {:.1}x", baseline.as_secs_f64() / cold.as_secs_f64());
    println!("  warm run under 1 s for 5 hosts: {}", if warm_median < Duration::from_secs(1) { "yes" } else { "NO" });
}

fn baseline_ssh(lab: &Lab, host: &LabHost, known_hosts: &Path, command: &str) {
    // The exit status is ignored: some checks fail by design (no docker socket); a script would read it.
    let _ = lab
        .command_in_netns(Path::new("ssh"))
        .args(["-i", lab.client_key().to_str().unwrap(), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg(format!("root@{}", host.address))
        .arg(command)
        .output()
        .expect("ssh");
}
