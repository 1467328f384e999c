//! Benchmark: `k3node up` on lab hosts with the k3s stand-in served from a lab mirror.
//! - parallel scaling: 1 server + 1 agent against 1 server + 4 agents (target ratio <= 1.5);
//! - against a baseline doing seed 004's steps with OpenSSH, host by host (install the server,
//!   read node-token, install each agent), measured in the same run (target: k3node >= 2x faster);
//! - a no-op re-run on the 5 converged hosts (target under 2 s).
//!
//! Run: `cargo bench --bench up` as root (it builds the lab of tests/lab).

#[path = "../tests/lab/mirror.rs"]
mod mirror;
#[path = "../tests/lab/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use support::{Lab, LabHost, LabSpec};

const K3NODE: &str = env!("CARGO_BIN_EXE_k3node");
const RUNS: usize = 3;

struct Bench {
    lab: std::sync::Arc<Lab>,
    home: PathBuf,
    known_hosts: PathBuf,
    mirror_url: String,
}

impl Bench {
    fn k3node(&self, args: &[&str]) -> Output {
        self.lab.command_in_netns(Path::new(K3NODE)).args(args).env("HOME", &self.home).output().expect("k3node")
    }

    fn cluster(&self, agents: usize) -> PathBuf {
        let mut yaml = format!(
            "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: bench\nspec:\n  ssh:\n    keyPath: {}\n    knownHosts: {}\n  hosts:\n",
            self.lab.client_key().display(),
            self.known_hosts.display()
        );
        for (i, h) in self.lab.hosts().iter().take(agents + 1).enumerate() {
            yaml.push_str(&format!(
                "    - name: {}\n      address: {}\n      role: {}\n",
                h.name,
                h.address,
                if i == 0 { "server" } else { "agent" }
            ));
        }
        yaml.push_str(&format!(
            "  k3s:\n    version: {}\n    source:\n      mirror: {}\n",
            mirror::VERSION,
            self.mirror_url
        ));
        let path = self.home.join(format!("cluster-{agents}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        path
    }

    fn timed_up(&self, file: &Path, label: &str) -> Duration {
        let started = Instant::now();
        let cpu_before = children_cpu();
        let out = self.k3node(&["up", "-c", file.to_str().unwrap(), "--ready-timeout", "120", "-o", "json"]);
        let took = started.elapsed();
        let cpu = children_cpu() - cpu_before;
        assert!(
            out.status.success(),
            "{label}: up failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let phases: Vec<String> = json["phases"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| format!("{} {:.2}s", p["name"].as_str().unwrap_or("?"), p["elapsed"].as_f64().unwrap_or(0.0)))
            .collect();
        eprintln!("  {label}: {:.3} s, k3node CPU {:.2} s ({})", took.as_secs_f64(), cpu, phases.join(", "));
        took
    }

    fn reset(&self, file: &Path) {
        // The helper stays, as it was in place before the first run: these figures are about k3s.
        let out = self.k3node(&["reset", "-c", file.to_str().unwrap(), "--yes", "--keep-helper"]);
        assert!(out.status.success(), "reset failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn ssh(&self, h: &LabHost, command: &str) -> Output {
        self.lab
            .command_in_netns(Path::new("ssh"))
            .args([
                "-i",
                self.lab.client_key().to_str().unwrap(),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg(format!("root@{}", h.address))
            .arg(command)
            .output()
            .expect("ssh")
    }

    fn scp(&self, h: &LabHost, from: &Path, to: &str) {
        let out = self
            .lab
            .command_in_netns(Path::new("scp"))
            .args(["-q", "-i", self.lab.client_key().to_str().unwrap(), "-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg(from)
            .arg(format!("root@{}:{to}", h.address))
            .output()
            .expect("scp");
        assert!(out.status.success(), "scp: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// User + system CPU seconds of finished child processes (the operator's side of a run).
fn children_cpu() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(usage.user_time()) + secs(usage.system_time())
}

const UNIT: &str = "[Unit]\nDescription=Lightweight Kubernetes\nWants=network-online.target\nAfter=network-online.target\n[Install]\nWantedBy=multi-user.target\n[Service]\nType=notify\nEnvironmentFile=-/etc/systemd/system/SERVICE.service.env\nKillMode=process\nDelegate=yes\nRestart=always\nRestartSec=5s\nExecStart=/usr/local/bin/k3s MODE\n";

/// Seed 004's steps with OpenSSH, one host after the other, as its shell script does them.
fn baseline(b: &Bench, binary: &Path, agents: usize) -> Duration {
    let hosts = b.lab.hosts();
    let started = Instant::now();
    let server = &hosts[0];
    b.scp(server, binary, "/usr/local/bin/k3s");
    let unit = UNIT.replace("SERVICE", "k3s").replace("MODE", "server");
    let out = b.ssh(server, &format!("chmod 755 /usr/local/bin/k3s && printf '%s' '{unit}' > /etc/systemd/system/k3s.service && systemctl daemon-reload && systemctl enable --now k3s"));
    assert!(out.status.success(), "baseline server: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(b.ssh(server, "cat /var/lib/rancher/k3s/server/node-token").stdout).unwrap();
    for h in hosts.iter().skip(1).take(agents) {
        b.scp(h, binary, "/usr/local/bin/k3s");
        let unit = UNIT.replace("SERVICE", "k3s-agent").replace("MODE", "agent");
        let out = b.ssh(
            h,
            &format!(
                "chmod 755 /usr/local/bin/k3s && printf 'K3S_URL=https://{}:6443\\nK3S_TOKEN={}\\n' > /etc/systemd/system/k3s-agent.service.env && printf '%s' '{unit}' > /etc/systemd/system/k3s-agent.service && systemctl daemon-reload && systemctl enable --now k3s-agent",
                server.address,
                token.trim()
            ),
        );
        assert!(out.status.success(), "baseline agent {}: {}", h.name, String::from_utf8_lossy(&out.stderr));
    }
    // Wait until the server lists every node Ready, as the seed's validate script does.
    loop {
        let out = b.ssh(server, "k3s kubectl get nodes --no-headers");
        let text = String::from_utf8_lossy(&out.stdout);
        if text.lines().filter(|l| l.split_whitespace().nth(1) == Some("Ready")).count() == agents + 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "baseline never became Ready: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = started.elapsed();
    for h in hosts.iter().take(agents + 1) {
        let _ = b.ssh(h, "systemctl disable --now k3s k3s-agent 2>/dev/null; pkill -f /usr/local/bin/k3s; rm -rf /etc/systemd/system/k3s* /usr/local/bin/k3s /var/lib/rancher/k3s /etc/rancher/k3s; systemctl daemon-reload");
    }
    took
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let lab = std::sync::Arc::new(
        Lab::start(LabSpec { hosts: (1..=5).map(|i| format!("h{i}")).collect(), ..LabSpec::default() }).unwrap_or_else(
            |e| {
                eprintln!("bench: cannot build the lab: {e:#}");
                std::process::exit(1);
            },
        ),
    );
    let home = lab.dir().join("bench-up");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let known_hosts = home.join(".ssh/known_hosts");
    std::fs::write(&known_hosts, lab.hosts().iter().map(|h| lab.known_hosts_line(h) + "\n").collect::<String>())
        .unwrap();
    let server = mirror::Mirror::start(&lab);
    let binary = mirror::release_binary(mirror::VERSION);
    mirror::publish(&server.root, mirror::VERSION, &binary);
    let b = Bench { lab: lab.clone(), home, known_hosts, mirror_url: server.url() };

    let five = b.cluster(4);
    let two = b.cluster(1);
    // Agents in place and sysctls fixed first: the figures below are about installing k3s.
    let fix = b.k3node(&["preflight", "-c", five.to_str().unwrap(), "--fix", "-o", "json"]);
    assert!(!fix.stdout.is_empty(), "preflight --fix: {}", String::from_utf8_lossy(&fix.stderr));

    // Each configuration from clean hosts, 3 times (reset in between); the median is reported,
    // since 5 hosts and the operator share this machine's 2 cores and single runs vary.
    let median = |mut runs: Vec<Duration>| {
        runs.sort();
        runs[runs.len() / 2]
    };
    let one_agent = median(
        (0..RUNS)
            .map(|i| {
                let took = b.timed_up(&two, &format!("1 server + 1 agent, run {}", i + 1));
                b.reset(&two);
                took
            })
            .collect(),
    );
    let four_agents = median(
        (0..RUNS)
            .map(|i| {
                if i > 0 {
                    b.reset(&five);
                }
                b.timed_up(&five, &format!("1 server + 4 agents, run {}", i + 1))
            })
            .collect(),
    );
    let noop = median((0..RUNS).map(|i| b.timed_up(&five, &format!("no-op re-run {}", i + 1))).collect());
    b.reset(&five);
    let standin = server.root.join(mirror::VERSION).join("k3s");
    let base = baseline(&b, &standin, 4);

    println!("up benchmark, lab hosts (nspawn + sshd over veth), k3s stand-in from a lab mirror, same run:");
    println!("  k3node up, 1 server + 1 agent, median of {RUNS}:            {:>8.3} s", one_agent.as_secs_f64());
    println!("  k3node up, 1 server + 4 agents, median of {RUNS}:           {:>8.3} s", four_agents.as_secs_f64());
    println!(
        "  scaling ratio (4 agents / 1 agent):                    {:>8.2}   (target <= 1.5)",
        four_agents.as_secs_f64() / one_agent.as_secs_f64()
    );
    println!("  baseline, seed 004 steps with OpenSSH, 1 + 4, in sequence: {:>8.3} s", base.as_secs_f64());
    println!(
        "  ratio baseline / k3node at 4 agents:                   {:>8.2}x  (target >= 2x)",
        base.as_secs_f64() / four_agents.as_secs_f64()
    );
    println!(
        "  no-op re-run on 5 hosts, median of {RUNS}:                  {:>8.3} s  (target < 2 s)",
        noop.as_secs_f64()
    );
    drop(server);
}
