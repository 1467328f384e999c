//! Benchmarks of the node daemon and the hub (figures, not pass/fail).
//!
//! - footprint: `k3node-agent` on a lab agent at the default 10 s interval, next to Debian's
//!   `prometheus-node-exporter` on the same node in the same run: RSS and CPU share of one core
//!   over K3NODE_BENCH_FOOTPRINT_SECS (default 180). Target: RSS <= 10 MiB, CPU <= 0.2%.
//! - fan-in: one hub (its own process, loopback only) taking K3NODE_BENCH_NODES simulated nodes
//!   (default 10,000, each with its own certificate and connection) reporting every 10 s, i.e.
//!   1,000 reports/s, for K3NODE_BENCH_FANIN_SECS (default 60): p50/p99 ingest latency, the hub's
//!   CPU and RSS, store size, reports lost. Targets: p99 < 20 ms, none lost. Anchor: Debian's
//!   `prometheus-pushgateway` under the same load (the same nodes' gauges as text, plain HTTP).
//!
//! Run: `cargo bench --bench daemon` as root (the footprint part builds the lab of tests/lab).
//! `K3NODE_BENCH_ONLY=footprint|fanin` runs one part.

#[path = "../tests/lab/mirror.rs"]
mod mirror;
#[path = "../tests/lab/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k3node::daemon::pki::{self, TlsMaterial};
use k3node::daemon::settings::Settings;
use k3node::protocol::health::{BatchAnswer, CheckState, HealthCheck, Report, ReportBatch, HEALTH_PROTOCOL};
use k3node::protocol::node::Role;
use support::{Lab, LabSpec};

const K3NODE: &str = env!("CARGO_BIN_EXE_k3node");

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    if let Ok(dir) = std::env::var("K3NODE_BENCH_HUB_DIR") {
        return hub_process(Path::new(&dir));
    }
    let only = std::env::var("K3NODE_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "fanin" {
        fan_in();
    }
    if only.is_empty() || only == "footprint" {
        footprint();
    }
}

// ---------------------------------------------------------------- footprint

/// (RSS bytes, CPU ticks utime+stime) of a process on a lab host.
fn sample(host: &support::LabHost, pid: &str) -> (u64, u64) {
    let out = host.sh(&format!("grep VmRSS /proc/{pid}/status; cat /proc/{pid}/stat")).expect("sample");
    let rss_kib: u64 =
        out.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stat = out.lines().nth(1).unwrap_or("");
    let after = stat.rsplit_once(") ").map(|(_, s)| s).unwrap_or("");
    let fields: Vec<u64> = after.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    (rss_kib * 1024, fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0))
}

fn footprint() {
    let secs = env_u64("K3NODE_BENCH_FOOTPRINT_SECS", 180);
    let lab =
        Arc::new(Lab::start(LabSpec::new(&["h1", "h2"])).unwrap_or_else(|e| panic!("cannot build the lab: {e:#}")));
    let mirror = mirror::Mirror::start(&lab);
    mirror::publish(&mirror.root, mirror::VERSION, &mirror::release_binary(mirror::VERSION));
    let home = lab.dir().join("bench-home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let known = home.join(".ssh/known_hosts");
    let lines: Vec<String> = lab.hosts().iter().map(|h| lab.known_hosts_line(h)).collect();
    std::fs::write(&known, lines.join("\n") + "\n").unwrap();
    let file = home.join("cluster.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: bench\nspec:\n  ssh:\n    keyPath: {}\n    knownHosts: {}\n  hosts:\n    - name: h1\n      address: {}\n      role: server\n    - name: h2\n      address: {}\n      role: agent\n  k3s:\n    version: {}\n    source:\n      mirror: {}\n",
            lab.client_key().display(),
            known.display(),
            lab.host("h1").address,
            lab.host("h2").address,
            mirror::VERSION,
            mirror.url()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = lab.command_in_netns(Path::new(K3NODE)).args(args).env("HOME", &home).output().expect("k3node");
        assert!(
            out.status.success(),
            "k3node {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let f = file.to_str().unwrap();
    let _ = lab.command_in_netns(Path::new(K3NODE)).args(["preflight", "-c", f, "--fix"]).env("HOME", &home).output();
    run(&["up", "-c", f, "--ready-timeout", "120"]);
    let h2 = lab.host("h2");
    h2.sh("systemctl start prometheus-node-exporter").expect("prometheus-node-exporter is in the lab image");
    // Settle: the daemon's first reports, node_exporter's first scrape-free seconds.
    std::thread::sleep(Duration::from_secs(15));
    let pid = |unit: &str| h2.sh(&format!("systemctl show -p MainPID --value {unit}")).unwrap().trim().to_string();
    let (agent, exporter) = (pid("k3node-agent"), pid("prometheus-node-exporter"));
    let hub = pid_on(&lab, "h1", "k3node-agent");
    let ticks = h2.sh("getconf CLK_TCK").ok().and_then(|t| t.trim().parse::<f64>().ok()).unwrap_or(100.0);
    let start = Instant::now();
    let (a0, e0, h0) = (sample(h2, &agent), sample(h2, &exporter), sample(lab.host("h1"), &hub));
    let (mut a_max, mut e_max, mut h_max) = (a0.0, e0.0, h0.0);
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(5));
        a_max = a_max.max(sample(h2, &agent).0);
        e_max = e_max.max(sample(h2, &exporter).0);
        h_max = h_max.max(sample(lab.host("h1"), &hub).0);
    }
    let (a1, e1, h1) = (sample(h2, &agent), sample(h2, &exporter), sample(lab.host("h1"), &hub));
    // Where the agent's resident memory is: the binary's pages (file) or its own (anon).
    let rollup = h2.sh(&format!("grep -E '^(Rss|Pss_Anon|Pss_File|Pss_Shmem|Anonymous):' /proc/{agent}/smaps_rollup"));
    let threads = h2.sh(&format!("ls /proc/{agent}/task | wc -l")).unwrap_or_default();
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = |t0: u64, t1: u64| (t1 - t0) as f64 / ticks / elapsed * 100.0;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("footprint over {elapsed:.0} s at the 10 s interval (lab agent h2; same run):");
    println!(
        "  k3node agent (agent node)     RSS {:.1} MiB (max {:.1})  CPU {:.3}% of one core   target RSS <= 10 MiB, CPU <= 0.2%",
        mib(a1.0),
        mib(a_max),
        cpu(a0.1, a1.1)
    );
    println!(
        "    of which: {}; {} threads",
        rollup
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .chunks(3)
            .map(|c| c.join(" "))
            .collect::<Vec<_>>()
            .join(", "),
        threads.trim()
    );
    println!(
        "  prometheus-node-exporter      RSS {:.1} MiB (max {:.1})  CPU {:.3}% of one core   (anchor, not scraped)",
        mib(e1.0),
        mib(e_max),
        cpu(e0.1, e1.1)
    );
    println!(
        "  k3node agent + hub (server)   RSS {:.1} MiB (max {:.1})  CPU {:.3}% of one core",
        mib(h1.0),
        mib(h_max),
        cpu(h0.1, h1.1)
    );
    let _ = h2.sh("systemctl stop prometheus-node-exporter");
    run(&["reset", "-c", f, "--yes"]);
    drop(mirror);
}

fn pid_on(lab: &Lab, host: &str, unit: &str) -> String {
    lab.host(host).sh(&format!("systemctl show -p MainPID --value {unit}")).unwrap().trim().to_string()
}

// ---------------------------------------------------------------- fan-in

/// The hub alone, in its own process (so that its CPU and memory are its own): serves on
/// loopback until its stdin closes.
fn hub_process(dir: &Path) {
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
    let tls = TlsMaterial {
        ca_cert_pem: read("ca.crt"),
        node_cert_pem: read("hub.crt"),
        node_key_pem: k3node::protocol::Secret::new(read("hub.key")),
    };
    let settings = Settings::new("hub", Role::Server, &[]);
    let rt = k3node::daemon::runtime(true).unwrap();
    rt.block_on(async move {
        let open = || k3node::hub::Store::open(&dir.join("hub.db"), settings.tuning.history_per_node as u64).unwrap();
        let hub = k3node::hub::Hub::new(settings.clone(), open(), open());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap().port());
        std::io::stdout().flush().unwrap();
        tokio::spawn(k3node::hub::server::serve(hub, listener, Arc::new(tls.server_config().unwrap())));
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {}
        })
        .await
        .unwrap();
    });
}

fn proc_sample(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, s)| s.to_string()).unwrap_or_default();
    let f: Vec<u64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    (field("VmRSS:"), field("VmHWM:"), f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0))
}

fn gauges(i: u64) -> BTreeMap<String, f64> {
    [
        ("cpu_busy_ratio", 0.1),
        ("memory_available_bytes", 2e9),
        ("memory_total_bytes", 4e9),
        ("load1", 0.5),
        ("cpus", 2.0),
        ("root_free_bytes", 5e10),
        ("root_size_bytes", 1e11),
        ("rancher_free_bytes", 5e10),
        ("rancher_size_bytes", 1e11),
        ("k3s_active", 1.0),
        ("k3s_restarts", 0.0),
        ("containerd_up", 1.0),
        ("kubelet_up", 1.0),
        ("cert_expiry_seconds", 3e7),
        ("clock_offset_seconds", 0.001),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v + i as f64 * 0.0))
    .collect()
}

fn report(seq: u64) -> Report {
    let checks =
        ["cpu", "memory", "load", "disk-root", "disk-rancher", "k3s", "containerd", "kubelet", "certificates", "clock"]
            .iter()
            .map(|n| HealthCheck {
                name: n.to_string(),
                state: CheckState::Ok,
                reason: "a typical reason of some forty characters".into(),
            })
            .collect();
    Report {
        seq,
        at_ms: 0,
        interval_secs: 10,
        role: Role::Agent,
        k3s_version: Some("v1.31.4+k3s1".into()),
        checks,
        gauges: gauges(seq),
    }
}

struct Load {
    latencies_us: Mutex<Vec<u64>>,
    sent: AtomicU64,
    failed: AtomicU64,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

fn fan_in() {
    // One connection per simulated node in each process: this one (the load) holds the client
    // ends, the hub (or the pushgateway) the server ends; the children inherit the limit. Only
    // the soft limit is raised when the hard one allows it, which needs no privilege.
    let nodes = env_u64("K3NODE_BENCH_NODES", 10_000);
    let files = nodes + 2048;
    let nofile = nix::sys::resource::Resource::RLIMIT_NOFILE;
    let (_, hard) = nix::sys::resource::getrlimit(nofile).unwrap();
    if let Err(e) = nix::sys::resource::setrlimit(nofile, files, hard.max(files)) {
        // Without them, connections would fail with EMFILE part way and the figures would be wrong.
        eprintln!(
            "fan-in: cannot raise the open files limit to {files} ({e}): run the bench as root, \
             or lower K3NODE_BENCH_NODES"
        );
        std::process::exit(1);
    }
    let secs = env_u64("K3NODE_BENCH_FANIN_SECS", 60);
    let interval = 10u64;
    let dir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc();
    let (ca, ca_key) = pki::generate_ca("bench", now).unwrap();
    let issue = |name: &str, role: Role| {
        let key = pki::generate_node_key().unwrap();
        let csr = pki::certificate_request(key.expose()).unwrap();
        let cert =
            pki::sign_node(&ca, ca_key.expose(), &csr, name, role, &pki::node_names(name, "127.0.0.1", role), now)
                .unwrap();
        (cert, key)
    };
    let (hub_cert, hub_key) = issue("hub", Role::Server);
    std::fs::write(dir.path().join("ca.crt"), &ca).unwrap();
    std::fs::write(dir.path().join("hub.crt"), &hub_cert).unwrap();
    std::fs::write(dir.path().join("hub.key"), hub_key.expose()).unwrap();
    let made = Instant::now();
    let identities: Vec<(String, reqwest::Client)> = (0..nodes)
        .map(|i| {
            let name = format!("node-{i:05}");
            let (cert, key) = issue(&name, Role::Agent);
            let tls = TlsMaterial { ca_cert_pem: ca.clone(), node_cert_pem: cert, node_key_pem: key };
            let client = reqwest::Client::builder()
                .use_preconfigured_tls(tls.client_config().unwrap())
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            (name, client)
        })
        .collect();
    eprintln!("fan-in: {nodes} node identities in {:.1?}", made.elapsed());

    let mut hub = Command::new(std::env::current_exe().unwrap())
        .env("K3NODE_BENCH_HUB_DIR", dir.path())
        // As a server's unit runs it: its drop-in unsets the agent's MALLOC_ARENA_MAX.
        .env_remove("MALLOC_ARENA_MAX")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the hub process");
    let port: u16 = BufReader::new(hub.stdout.take().unwrap()).lines().next().unwrap().unwrap().trim().parse().unwrap();
    let metrics_client = identities[0].1.clone();
    let k3node_figures = drive(nodes, secs, interval, hub.id(), identities, move |name, first, last| {
        let batch = ReportBatch {
            protocol: HEALTH_PROTOCOL,
            node: name.to_string(),
            stream: "bench".into(),
            dropped_total: 0,
            reports: (first..=last).map(report).collect(),
        };
        (format!("https://127.0.0.1:{port}/v1/reports"), serde_json::to_vec(&batch).unwrap(), true)
    });
    let ingest = server_side_ingest(&metrics_client, port);
    drop(hub.stdin.take());
    let _ = hub.wait();
    let store = k3node::hub::Store::open(&dir.path().join("hub.db"), 360).unwrap();
    let stored: u64 = store.nodes().unwrap().iter().map(|n| n.reports_total).sum();
    let lost: u64 = store.nodes().unwrap().iter().map(|n| n.lost_total).sum();
    let size = store.size_bytes();

    // The anchor: the pushgateway taking the same nodes' gauges as text.
    let pg_port = 19091;
    let mut pushgateway = Command::new("prometheus-pushgateway")
        .args([format!("--web.listen-address=127.0.0.1:{pg_port}"), "--log.level=warn".into()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-pushgateway (apt-get install prometheus-pushgateway)");
    std::thread::sleep(Duration::from_secs(2));
    let plain: Vec<(String, reqwest::Client)> = (0..nodes)
        .map(|i| {
            let client = reqwest::Client::builder().pool_max_idle_per_host(1).timeout(Duration::from_secs(10)).build();
            (format!("node-{i:05}"), client.unwrap())
        })
        .collect();
    let pg_figures = drive(nodes, secs, interval, pushgateway.id(), plain, move |name, _, _| {
        let mut text = String::new();
        for (k, v) in gauges(0) {
            text.push_str(&format!("# TYPE k3node_node_{k} gauge\nk3node_node_{k} {v}\n"));
        }
        (format!("http://127.0.0.1:{pg_port}/metrics/job/k3node/instance/{name}"), text.into_bytes(), false)
    });
    let _ = pushgateway.kill();
    let _ = pushgateway.wait();

    println!(
        "hub fan-in: {nodes} nodes x {interval} s = {} reports/s for {secs} s, loopback, 2 cores shared with the load",
        nodes / interval
    );
    println!("  k3node hub (mTLS, SQLite)  {k3node_figures}");
    println!("     hub-side ingest (arrival to answer, its histogram): {ingest}");
    println!(
        "     stored {stored} reports, {lost} lost (gaps); store {:.1} MiB; target p99 < 20 ms, none lost",
        size as f64 / 1048576.0
    );
    println!("  prometheus-pushgateway     {pg_figures}   (anchor: plain HTTP, no TLS, no history)");
}

/// p50 and p99 of the hub's `k3node_hub_ingest_duration_seconds` histogram (bucket bounds).
fn server_side_ingest(client: &reqwest::Client, port: u16) -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let text = rt.block_on(async {
        let r = client.get(format!("https://127.0.0.1:{port}/metrics")).send().await.ok()?;
        r.text().await.ok()
    });
    let Some(text) = text else { return "metrics unavailable".into() };
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("k3node_hub_ingest_duration_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once('"')?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, rest.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some(&(_, count)) = buckets.last() else { return "no histogram".into() };
    let at = |p: f64| buckets.iter().find(|(_, c)| *c >= p * count).map(|(le, _)| *le * 1000.0).unwrap_or(f64::NAN);
    format!("{count} batches, p50 <= {} ms, p99 <= {} ms", at(0.5), at(0.99))
}

/// Sends one report per node every `interval` s (nodes spread evenly) for `secs`, and returns
/// the figures line: latency p50/p99, the server process's CPU and RSS, failures.
fn drive(
    nodes: u64,
    secs: u64,
    interval: u64,
    server_pid: u32,
    clients: Vec<(String, reqwest::Client)>,
    request: impl Fn(&str, u64, u64) -> (String, Vec<u8>, bool) + Send + Sync + 'static,
) -> String {
    let load =
        Arc::new(Load { latencies_us: Mutex::new(Vec::new()), sent: AtomicU64::new(0), failed: AtomicU64::new(0) });
    let request = Arc::new(request);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ticks = 100.0;
    let before = proc_sample(server_pid);
    let started = Instant::now();
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for (i, (name, client)) in clients.into_iter().enumerate() {
            let (load, request) = (load.clone(), request.clone());
            let phase = Duration::from_micros(i as u64 * interval * 1_000_000 / nodes);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(phase).await;
                let mut ticker = tokio::time::interval(Duration::from_secs(interval));
                // As the daemon's buffer does: what the hub has not confirmed goes again, with the new one.
                let (mut seq, mut unconfirmed) = (0, 1);
                while tokio::time::Instant::now() < deadline {
                    ticker.tick().await;
                    seq += 1;
                    let (url, body, is_hub) = request(&name, unconfirmed, seq);
                    let t = Instant::now();
                    let builder = if is_hub { client.post(&url) } else { client.put(&url) };
                    let ok = match builder.body(body).send().await {
                        Ok(r) if r.status().is_success() => match r.bytes().await {
                            Ok(b) if is_hub => {
                                serde_json::from_slice::<BatchAnswer>(&b).is_ok_and(|a| a.accepted_through == seq)
                            }
                            Ok(_) => true,
                            Err(_) => false,
                        },
                        _ => false,
                    };
                    load.sent.fetch_add(1, Ordering::Relaxed);
                    if ok {
                        unconfirmed = seq + 1;
                        load.latencies_us.lock().unwrap().push(t.elapsed().as_micros() as u64);
                    } else {
                        load.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        // A server that cannot keep up is not waited for beyond its requests' own timeout.
        let give_up = deadline + Duration::from_secs(15);
        for t in tasks {
            let _ = tokio::time::timeout_at(give_up, t).await;
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let after = proc_sample(server_pid);
    let mut lat = load.latencies_us.lock().unwrap().clone();
    lat.sort_unstable();
    format!(
        "sent {} ({:.0}/s), failed {}; latency p50 {:.2} ms, p99 {:.2} ms; server CPU {:.0}% of one core, RSS {:.1} MiB (peak {:.1})",
        load.sent.load(Ordering::Relaxed),
        load.sent.load(Ordering::Relaxed) as f64 / elapsed,
        load.failed.load(Ordering::Relaxed),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        (after.2 - before.2) as f64 / ticks / elapsed * 100.0,
        after.0 as f64 / 1048576.0,
        after.1 as f64 / 1048576.0
    )
}
