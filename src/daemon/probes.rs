//! What the daemon measures at every interval, and the thresholds that turn measurements into
//! checks (ok / warn / fail, like preflight's pass / warn / fail).
//!
//! Files, /proc and commands go through [`HostSystem`] (so every probe runs against the fake
//! host in tests); the two network probes (containerd's socket, the kubelet's healthz) go through
//! [`Endpoints`]. A probe that cannot measure says so as a failing check with the reason: a
//! missing measurement is never reported as healthy. The CPU's busy share needs two samples, so
//! the daemon primes [`ProbeState`] before its first report; the clock offset is only known once
//! a hub has answered, and until then the report has no clock check (not a passing one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

use super::settings::{Settings, NODE_CERT};
use crate::host::k3s::layout::{service_name, DEFAULT_DATA_DIR, K3S_BIN, RANCHER_DIR};
use crate::host::system::HostSystem;
use crate::protocol::health::{CheckState, HealthCheck};
use crate::protocol::node::Role;

/// k3s's containerd (contract section 7).
pub const CONTAINERD_SOCKET: &str = "/run/k3s/containerd/containerd.sock";
/// The kubelet's health endpoint (loopback, contract section 5).
pub const KUBELET_HEALTHZ: &str = "http://127.0.0.1:10248/healthz";
const NETWORK_TIMEOUT: Duration = Duration::from_secs(2);

/// Every check the daemon runs, by the name reports carry and `spec.agent.disabledChecks`
/// (`Tuning::disabled_checks`) uses. The cluster file refuses any other name.
pub const CHECK_NAMES: &[&str] = &[
    "cpu",
    "memory",
    "load",
    "disk-root",
    "disk-rancher",
    "k3s",
    "certificates",
    "clock",
    "snapshot",
    "containerd",
    "kubelet",
];

/// The two probes that need the network, real or fake.
#[async_trait]
pub trait Endpoints: Send + Sync {
    /// Ok when something accepts a connection on the unix socket.
    async fn unix_connect(&self, path: &Path) -> Result<(), String>;
    /// The status code and body of an HTTP GET.
    async fn http_get(&self, url: &str) -> Result<(u16, String), String>;
}

/// The machine's own sockets.
pub struct RealEndpoints {
    http: reqwest::Client,
}

impl RealEndpoints {
    pub fn new() -> RealEndpoints {
        let http = reqwest::Client::builder()
            .timeout(NETWORK_TIMEOUT)
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .expect("a plain HTTP client always builds");
        RealEndpoints { http }
    }
}

impl Default for RealEndpoints {
    fn default() -> Self {
        RealEndpoints::new()
    }
}

#[async_trait]
impl Endpoints for RealEndpoints {
    async fn unix_connect(&self, path: &Path) -> Result<(), String> {
        match tokio::time::timeout(NETWORK_TIMEOUT, tokio::net::UnixStream::connect(path)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(crate::host::describe_io(&e)),
            Err(_) => Err(format!("no answer within {} s", NETWORK_TIMEOUT.as_secs())),
        }
    }

    async fn http_get(&self, url: &str) -> Result<(u16, String), String> {
        let response = self.http.get(url).send().await.map_err(|e| describe_reqwest(&e))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| describe_reqwest(&e))?;
        Ok((status, body.chars().take(200).collect()))
    }
}

/// The innermost cause of a reqwest error ("Connection refused"), not its wrapper's words.
pub fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    let mut last = e.to_string();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    if e.is_timeout() {
        return "timed out".into();
    }
    last.split(" (os error").next().unwrap_or(&last).to_string()
}

/// What probes remember between intervals.
#[derive(Debug, Default, Clone)]
pub struct ProbeState {
    /// (busy, total) jiffies of /proc/stat's first line at the last sample.
    cpu: Option<(u64, u64)>,
    /// The k3s version, and the InvocationID of the k3s unit it was read for: it is read again
    /// only when k3s was (re)started.
    k3s_version: Option<(String, String)>,
    /// Offset of this node's clock behind the hub's, milliseconds (hub - node), once measured.
    pub clock_offset_ms: Option<f64>,
}

impl ProbeState {
    /// Takes the first CPU sample, so that the first report has a CPU check.
    pub fn prime(&mut self, sys: &dyn HostSystem) {
        self.cpu = cpu_sample(sys).ok();
    }
}

/// The checks and gauges of one collection.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Collected {
    pub checks: Vec<HealthCheck>,
    pub gauges: BTreeMap<String, f64>,
    pub k3s_version: Option<String>,
}

impl Collected {
    fn check(&mut self, name: &str, state: CheckState, reason: impl Into<String>) {
        self.checks.push(HealthCheck { name: name.to_string(), state, reason: reason.into() });
    }

    fn gauge(&mut self, name: &str, value: f64) {
        self.gauges.insert(name.to_string(), value);
    }
}

/// Everything measured through files and commands (run off the async runtime: it blocks).
pub fn collect_local(sys: &dyn HostSystem, settings: &Settings, state: &mut ProbeState) -> Collected {
    let mut out = Collected::default();
    let t = &settings.tuning.thresholds;
    let on = |name: &str| settings.check_enabled(name);

    if on("cpu") {
        match cpu_sample(sys) {
            Ok((busy, total)) => {
                if let Some((busy0, total0)) = state.cpu.filter(|(_, t0)| total > *t0) {
                    let ratio = (busy.saturating_sub(busy0)) as f64 / (total - total0) as f64;
                    let percent = ratio * 100.0;
                    out.gauge("cpu_busy_ratio", ratio);
                    let s = above(percent, t.cpu_busy_warn_percent, t.cpu_busy_fail_percent);
                    out.check("cpu", s, format!("{percent:.1}% busy over the last interval"));
                } else {
                    out.check("cpu", CheckState::Warn, "no earlier sample of /proc/stat to compare with");
                }
                state.cpu = Some((busy, total));
            }
            Err(e) => out.check("cpu", CheckState::Fail, e),
        }
    }

    if on("memory") {
        match meminfo(sys) {
            Ok((total, available)) => {
                out.gauge("memory_total_bytes", total as f64);
                out.gauge("memory_available_bytes", available as f64);
                let percent = if total == 0 { 0.0 } else { available as f64 * 100.0 / total as f64 };
                let s = below(percent, t.memory_available_warn_percent, t.memory_available_fail_percent);
                out.check("memory", s, format!("{percent:.0}% available ({} of {})", bytes(available), bytes(total)));
            }
            Err(e) => out.check("memory", CheckState::Fail, e),
        }
    }

    if on("load") {
        match (loadavg(sys), cpu_count(sys)) {
            (Ok(load1), Ok(cpus)) => {
                out.gauge("load1", load1);
                out.gauge("cpus", cpus as f64);
                let per_cpu = load1 / cpus.max(1) as f64;
                let s = above(per_cpu, t.load_per_cpu_warn, t.load_per_cpu_fail);
                out.check("load", s, format!("load {load1:.2} on {cpus} CPUs ({per_cpu:.2} per CPU)"));
            }
            (Err(e), _) | (_, Err(e)) => out.check("load", CheckState::Fail, e),
        }
    }

    for (check, path, gauge) in [("disk-root", "/", "root"), ("disk-rancher", RANCHER_DIR, "rancher")] {
        if !on(check) {
            continue;
        }
        match sys.disk_space(Path::new(path)) {
            Ok(space) => {
                out.gauge(&format!("{gauge}_free_bytes"), space.available_bytes as f64);
                out.gauge(&format!("{gauge}_size_bytes"), space.total_bytes as f64);
                let percent = if space.total_bytes == 0 {
                    0.0
                } else {
                    space.available_bytes as f64 * 100.0 / space.total_bytes as f64
                };
                let s = below(percent, t.disk_free_warn_percent, t.disk_free_fail_percent);
                out.check(
                    check,
                    s,
                    format!(
                        "{percent:.1}% free under {path} ({} of {})",
                        bytes(space.available_bytes),
                        bytes(space.total_bytes)
                    ),
                );
            }
            Err(e) => {
                out.check(check, CheckState::Fail, format!("cannot measure {path}: {}", crate::host::describe_io(&e)))
            }
        }
    }

    if on("k3s") {
        k3s_unit(sys, settings, state, &mut out);
    }
    if on("certificates") {
        certificates(sys, settings, &mut out);
    }
    if on("clock") {
        if let Some(offset) = state.clock_offset_ms {
            out.gauge("clock_offset_seconds", offset / 1000.0);
            let s = above(offset.abs(), t.clock_offset_warn_ms, t.clock_offset_fail_ms);
            out.check("clock", s, format!("{offset:+.0} ms against the hub's clock"));
        }
    }
    if settings.role == Role::Server && on("snapshot") {
        snapshot(sys, settings, &mut out);
    }
    out
}

/// The network probes.
pub async fn collect_network(endpoints: &dyn Endpoints, settings: &Settings, out: &mut Collected) {
    if settings.check_enabled("containerd") {
        match endpoints.unix_connect(Path::new(CONTAINERD_SOCKET)).await {
            Ok(()) => {
                out.gauge("containerd_up", 1.0);
                out.check("containerd", CheckState::Ok, format!("{CONTAINERD_SOCKET} answers"));
            }
            Err(e) => {
                out.gauge("containerd_up", 0.0);
                out.check("containerd", CheckState::Fail, format!("cannot connect to {CONTAINERD_SOCKET}: {e}"));
            }
        }
    }
    if settings.check_enabled("kubelet") {
        let (up, state, reason) = match endpoints.http_get(KUBELET_HEALTHZ).await {
            Ok((200, body)) if body.trim() == "ok" => (1.0, CheckState::Ok, format!("{KUBELET_HEALTHZ}: ok")),
            Ok((code, body)) => (0.0, CheckState::Fail, format!("{KUBELET_HEALTHZ} answered {code}: {}", body.trim())),
            Err(e) => (0.0, CheckState::Fail, format!("{KUBELET_HEALTHZ}: {e}")),
        };
        out.gauge("kubelet_up", up);
        out.check("kubelet", state, reason);
    }
}

/// Worse as the value grows past the thresholds.
fn above(value: f64, warn: f64, fail: f64) -> CheckState {
    if value >= fail {
        CheckState::Fail
    } else if value >= warn {
        CheckState::Warn
    } else {
        CheckState::Ok
    }
}

/// Worse as the value falls below the thresholds.
fn below(value: f64, warn: f64, fail: f64) -> CheckState {
    if value < fail {
        CheckState::Fail
    } else if value < warn {
        CheckState::Warn
    } else {
        CheckState::Ok
    }
}

/// 1.5 GiB, 312 MiB, 4 KiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn read(sys: &dyn HostSystem, path: &str) -> Result<String, String> {
    sys.read_to_string(Path::new(path)).map_err(|e| format!("cannot read {path}: {}", crate::host::describe_io(&e)))
}

/// (busy, total) jiffies from /proc/stat's aggregate line; idle and iowait are not busy.
fn cpu_sample(sys: &dyn HostSystem) -> Result<(u64, u64), String> {
    let text = read(sys, "/proc/stat")?;
    let line = text.lines().find(|l| l.starts_with("cpu ")).ok_or("/proc/stat has no aggregate cpu line")?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    if fields.len() < 4 {
        return Err(format!("/proc/stat's cpu line is too short: {line:?}"));
    }
    // user nice system idle iowait irq softirq steal; guest time is already in user.
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

fn cpu_count(sys: &dyn HostSystem) -> Result<usize, String> {
    let text = read(sys, "/proc/stat")?;
    let n =
        text.lines().filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)).count();
    if n == 0 {
        return Err("/proc/stat lists no CPU".into());
    }
    Ok(n)
}

/// (MemTotal, MemAvailable) in bytes.
fn meminfo(sys: &dyn HostSystem) -> Result<(u64, u64), String> {
    let text = read(sys, "/proc/meminfo")?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .ok_or_else(|| format!("/proc/meminfo has no {name}"))
    };
    Ok((field("MemTotal")?, field("MemAvailable")?))
}

fn loadavg(sys: &dyn HostSystem) -> Result<f64, String> {
    let text = read(sys, "/proc/loadavg")?;
    text.split_whitespace().next().and_then(|v| v.parse().ok()).ok_or_else(|| format!("/proc/loadavg: {text:?}"))
}

/// The k3s unit: active or not (fail), restarts (warn past the threshold), version.
fn k3s_unit(sys: &dyn HostSystem, settings: &Settings, state: &mut ProbeState, out: &mut Collected) {
    let service = service_name(settings.role);
    let Some(systemctl) = sys.find_command("systemctl") else {
        out.check("k3s", CheckState::Fail, "systemctl is not installed: cannot tell whether k3s runs");
        return;
    };
    let props = "--property=LoadState,ActiveState,SubState,NRestarts,InvocationID";
    let shown = match sys.run(&systemctl, &["show", props, service]) {
        Ok(o) if o.success() => o.stdout,
        Ok(o) => {
            out.check("k3s", CheckState::Fail, format!("systemctl show {service}: {}", o.failure_summary()));
            return;
        }
        Err(e) => {
            out.check("k3s", CheckState::Fail, format!("cannot run systemctl: {e}"));
            return;
        }
    };
    let prop =
        |key: &str| shown.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).unwrap_or("").trim().to_string();
    let (load, active, sub, invocation) =
        (prop("LoadState"), prop("ActiveState"), prop("SubState"), prop("InvocationID"));
    let restarts: u32 = prop("NRestarts").parse().unwrap_or(0);
    out.gauge("k3s_active", if active == "active" { 1.0 } else { 0.0 });
    out.gauge("k3s_restarts", restarts as f64);
    if load == "not-found" {
        out.check("k3s", CheckState::Fail, format!("{service}.service is not installed"));
        return;
    }
    if active != "active" {
        out.check(
            "k3s",
            CheckState::Fail,
            format!("{service}.service is {active} ({sub}), restarted {restarts} times"),
        );
        state.k3s_version = None;
        return;
    }
    if state.k3s_version.as_ref().is_none_or(|(id, _)| *id != invocation) {
        state.k3s_version = k3s_version(sys).map(|v| (invocation.clone(), v));
    }
    out.k3s_version = state.k3s_version.as_ref().map(|(_, v)| v.clone());
    let version = out.k3s_version.clone().unwrap_or_else(|| "unknown version".into());
    let t = settings.tuning.thresholds.k3s_restarts_warn;
    if restarts >= t {
        out.check(
            "k3s",
            CheckState::Warn,
            format!("{service}.service {version} runs, but systemd restarted it {restarts} times"),
        );
    } else {
        out.check("k3s", CheckState::Ok, format!("{service}.service {version} is active ({sub})"));
    }
}

/// `k3s version v1.31.4+k3s1 (5ac18c0e)` -> `v1.31.4+k3s1`.
fn k3s_version(sys: &dyn HostSystem) -> Option<String> {
    let out = sys.run(Path::new(K3S_BIN), &["--version"]).ok().filter(|o| o.success())?;
    let line = out.stdout.lines().next()?;
    let mut words = line.split_whitespace().skip_while(|w| *w != "version");
    words.next()?;
    words.next().filter(|v| v.starts_with('v')).map(str::to_string)
}

/// The certificates whose expiry stops a node: k3s's server/tls and, with embedded etcd, its
/// server/tls/etcd (servers), the agent's client and serving certificates, and the daemon's own.
fn certificate_files(sys: &dyn HostSystem, role: Role) -> Vec<PathBuf> {
    let data = Path::new(DEFAULT_DATA_DIR);
    let mut dirs = vec![data.join("agent")];
    if role == Role::Server {
        dirs.push(data.join("server/tls"));
        dirs.push(data.join("server/tls/etcd"));
    }
    let mut files: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|dir| {
            let mut names = sys.read_dir_names(dir).unwrap_or_default();
            names.sort();
            names.into_iter().filter(|n| n.ends_with(".crt")).map(move |n| dir.join(n))
        })
        .collect();
    files.push(PathBuf::from(NODE_CERT));
    files
}

fn certificates(sys: &dyn HostSystem, settings: &Settings, out: &mut Collected) {
    let now_s = sys.now_unix_ms() / 1000;
    let mut soonest: Option<(i64, PathBuf)> = None;
    let mut unreadable = Vec::new();
    for path in certificate_files(sys, settings.role) {
        let Ok(text) = sys.read_to_string(&path) else { continue };
        match earliest_not_after(text.as_bytes()) {
            Some(t) if soonest.as_ref().is_none_or(|(s, _)| t < *s) => soonest = Some((t, path)),
            Some(_) => {}
            None => unreadable.push(path.display().to_string()),
        }
    }
    let t = &settings.tuning.thresholds;
    match soonest {
        None => out.check(
            "certificates",
            CheckState::Warn,
            format!("no certificate found under {DEFAULT_DATA_DIR} (has k3s started on this node?)"),
        ),
        Some((not_after, path)) => {
            let left = not_after - now_s;
            let days = left as f64 / 86400.0;
            out.gauge("cert_expiry_seconds", left as f64);
            let s = below(days, t.cert_expiry_warn_days, t.cert_expiry_fail_days);
            let reason = if left <= 0 {
                format!("{} expired {:.0} days ago", path.display(), -days)
            } else {
                format!("the first to expire is {} in {days:.0} days", path.display())
            };
            out.check("certificates", s, reason);
        }
    }
    if !unreadable.is_empty() {
        tracing::warn!("certificate files that hold no readable certificate: {}", unreadable.join(", "));
    }
}

/// The earliest notAfter (unix seconds) of the PEM certificates in `pem`.
pub fn earliest_not_after(pem: &[u8]) -> Option<i64> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .filter_map(|p| p.parse_x509().ok().map(|c| c.validity().not_after.timestamp()))
        .min()
}

/// Where snapshots of a server are: k3s's etcd snapshots, and k3node's own.
pub const SNAPSHOT_DIRS: [&str; 2] = ["/var/lib/rancher/k3s/server/db/snapshots", "/var/lib/rancher/k3node/snapshots"];

/// A snapshot's time from its name: k3s names them `<name>-<node>-<unix seconds>` (with an
/// optional extension such as `.zip`), k3node `<prefix>-<node>-<YYYYMMDDTHHMMSSZ>.tar.zst`, with
/// `-2`, `-3`... after the stamp for a second snapshot in the same second.
fn snapshot_time(name: &str) -> Option<i64> {
    let stem = name.split('.').next()?;
    let mut parts = stem.rsplit('-');
    let mut last = parts.next()?;
    if last.len() < 4 && last.chars().all(|c| c.is_ascii_digit()) {
        last = parts.next()?;
    }
    let k3node_stamp = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    if let Ok(at) = time::PrimitiveDateTime::parse(last, &k3node_stamp) {
        return Some(at.assume_utc().unix_timestamp());
    }
    (last.len() >= 9 && last.chars().all(|c| c.is_ascii_digit())).then(|| last.parse().ok()).flatten()
}

fn snapshot(sys: &dyn HostSystem, settings: &Settings, out: &mut Collected) {
    let newest = SNAPSHOT_DIRS
        .iter()
        .flat_map(|dir| sys.read_dir_names(Path::new(dir)).unwrap_or_default())
        .filter_map(|n| snapshot_time(&n).map(|t| (t, n)))
        .max();
    let t = &settings.tuning.thresholds;
    let judged = t.snapshot_age_warn_hours.is_some() || t.snapshot_age_fail_hours.is_some();
    let Some((taken, name)) = newest else {
        let (state, note) = if judged { (CheckState::Warn, "") } else { (CheckState::Ok, " (no age limit set)") };
        out.check("snapshot", state, format!("no snapshot found{note}"));
        return;
    };
    let age_s = (sys.now_unix_ms() / 1000 - taken).max(0);
    out.gauge("snapshot_age_seconds", age_s as f64);
    let hours = age_s as f64 / 3600.0;
    let state = above(
        hours,
        t.snapshot_age_warn_hours.unwrap_or(f64::INFINITY),
        t.snapshot_age_fail_hours.unwrap_or(f64::INFINITY),
    );
    let note = if judged { "" } else { " (no age limit set)" };
    out.check("snapshot", state, format!("newest snapshot {name} is {hours:.1} hours old{note}"));
}

#[cfg(test)]
mod tests;
