//! The probes against a fake host: every measurement and every threshold, and honest failures
//! when a measurement is missing.

use std::sync::Mutex;

use super::*;
use crate::daemon::settings::Thresholds;
use crate::host::system::fake::FakeSystem;

const SYSTEMCTL: &str = "/usr/bin/systemctl";
const NOW_MS: i64 = 1_800_000_000_000;
const SHOW: &[&str] = &["show", "--property=LoadState,ActiveState,SubState,NRestarts,InvocationID", "k3s-agent"];

fn settings(role: Role) -> Settings {
    Settings::new("a1", role, &[])
}

fn stat(busy: u64, idle: u64) -> String {
    format!("cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 0 0 1 0 0 0 0 0 0\ncpu1 1 0 0 1 0 0 0 0 0 0\n")
}

fn certificate(days: i64) -> String {
    let now = time::OffsetDateTime::from_unix_timestamp(NOW_MS / 1000).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["n".to_string()]).unwrap();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
    params.self_signed(&key).unwrap().pem()
}

fn host() -> FakeSystem {
    FakeSystem::new()
        .now(NOW_MS)
        .file("/proc/stat", &stat(100, 900))
        .file("/proc/meminfo", "MemTotal:       4000000 kB\nMemFree:  1 kB\nMemAvailable:   2000000 kB\n")
        .file("/proc/loadavg", "0.50 0.40 0.30 1/100 1234\n")
        .disk("/", 50 << 30, 100 << 30)
        .disk("/var/lib/rancher", 50 << 30, 100 << 30)
        .command("systemctl", SYSTEMCTL)
        .output(
            SYSTEMCTL,
            SHOW,
            0,
            "LoadState=loaded\nActiveState=active\nSubState=running\nNRestarts=0\nInvocationID=abc\n",
            "",
        )
        .output(
            "/usr/local/bin/k3s",
            &["--version"],
            0,
            "k3s version v1.31.4+k3s1 (5ac18c0e)\ngo version go1.22.9\n",
            "",
        )
        .file("/var/lib/rancher/k3s/agent/client-kubelet.crt", &certificate(300))
        .file("/var/lib/rancher/k3s/agent/serving-kubelet.crt", &certificate(200))
}

fn find<'a>(c: &'a Collected, name: &str) -> &'a HealthCheck {
    c.checks.iter().find(|x| x.name == name).unwrap_or_else(|| panic!("no {name} check in {:?}", c.checks))
}

#[test]
fn a_healthy_agent_passes_every_local_check_with_what_was_measured() {
    let sys = host();
    let mut state = ProbeState::default();
    state.prime(&sys);
    sys.state().files.insert("/proc/stat".into(), stat(150, 1850).into_bytes());
    let c = collect_local(&sys, &settings(Role::Agent), &mut state);
    for check in &c.checks {
        assert_eq!(check.state, CheckState::Ok, "{check:?}");
    }
    assert_eq!(find(&c, "cpu").reason, "5.0% busy over the last interval");
    assert_eq!(find(&c, "memory").reason, "50% available (1.9 GiB of 3.8 GiB)");
    assert_eq!(find(&c, "load").reason, "load 0.50 on 2 CPUs (0.25 per CPU)");
    assert_eq!(find(&c, "k3s").reason, "k3s-agent.service v1.31.4+k3s1 is active (running)");
    assert!(find(&c, "certificates").reason.contains("serving-kubelet.crt in 200 days"), "{c:?}");
    assert_eq!(c.k3s_version.as_deref(), Some("v1.31.4+k3s1"));
    assert_eq!(c.gauges["memory_available_bytes"], 2_048_000_000.0);
    assert!(!c.checks.iter().any(|x| x.name == "clock"), "no clock check before a hub answered");
    assert!(!c.checks.iter().any(|x| x.name == "snapshot"), "agents keep no snapshots");
}

#[test]
fn thresholds_turn_measurements_into_warnings_and_failures() {
    let sys = host()
        .disk("/var/lib/rancher", 5 << 30, 100 << 30)
        .disk("/", 12 << 30, 100 << 30)
        .file("/var/lib/rancher/k3s/agent/serving-kubelet.crt", &certificate(3))
        .output(
            SYSTEMCTL,
            SHOW,
            0,
            "LoadState=loaded\nActiveState=active\nSubState=running\nNRestarts=5\nInvocationID=abc\n",
            "",
        );
    let mut state = ProbeState { clock_offset_ms: Some(-2500.0), ..Default::default() };
    let c = collect_local(&sys, &settings(Role::Agent), &mut state);
    assert_eq!(find(&c, "disk-rancher").state, CheckState::Fail);
    assert_eq!(find(&c, "disk-rancher").reason, "5.0% free under /var/lib/rancher (5.0 GiB of 100.0 GiB)");
    assert_eq!(find(&c, "disk-root").state, CheckState::Warn);
    assert_eq!(find(&c, "certificates").state, CheckState::Fail);
    assert_eq!(find(&c, "k3s").state, CheckState::Warn);
    assert!(find(&c, "k3s").reason.contains("restarted it 5 times"));
    assert_eq!(
        (find(&c, "clock").state, find(&c, "clock").reason.as_str()),
        (CheckState::Warn, "-2500 ms against the hub's clock")
    );
    assert_eq!(find(&c, "cpu").state, CheckState::Warn, "no earlier sample: not a healthy CPU");
}

#[test]
fn a_stopped_k3s_and_unreadable_proc_files_fail_with_their_reason() {
    let sys = host().remove("/proc/meminfo").output(
        SYSTEMCTL,
        SHOW,
        0,
        "LoadState=loaded\nActiveState=inactive\nSubState=dead\nNRestarts=0\nInvocationID=\n",
        "",
    );
    let c = collect_local(&sys, &settings(Role::Agent), &mut ProbeState::default());
    assert_eq!(find(&c, "k3s").state, CheckState::Fail);
    assert_eq!(find(&c, "k3s").reason, "k3s-agent.service is inactive (dead), restarted 0 times");
    assert_eq!(find(&c, "memory").state, CheckState::Fail);
    assert!(find(&c, "memory").reason.starts_with("cannot read /proc/meminfo"), "{c:?}");
    assert_eq!(c.gauges["k3s_active"], 0.0);
}

#[test]
fn a_server_judges_its_newest_snapshot_only_when_a_limit_is_set() {
    let sys = host()
        .dir("/var/lib/rancher/k3s/server/db/snapshots")
        .file(&format!("/var/lib/rancher/k3s/server/db/snapshots/on-demand-s1-{}", NOW_MS / 1000 - 7200), "");
    let mut s = settings(Role::Server);
    s.tuning.disabled_checks = vec!["k3s".into()];
    let c = collect_local(&sys, &s, &mut ProbeState::default());
    assert_eq!(find(&c, "snapshot").state, CheckState::Ok);
    assert!(find(&c, "snapshot").reason.ends_with("is 2.0 hours old (no age limit set)"), "{c:?}");
    assert!(!c.checks.iter().any(|x| x.name == "k3s"), "disabled checks do not run");
    s.tuning.thresholds = Thresholds { snapshot_age_warn_hours: Some(1.0), ..Thresholds::default() };
    let c = collect_local(&sys, &s, &mut ProbeState::default());
    assert_eq!(find(&c, "snapshot").state, CheckState::Warn);
}

struct FakeEndpoints {
    containerd: Result<(), String>,
    kubelet: Result<(u16, String), String>,
    asked: Mutex<Vec<String>>,
}

#[async_trait]
impl Endpoints for FakeEndpoints {
    async fn unix_connect(&self, path: &Path) -> Result<(), String> {
        self.asked.lock().unwrap().push(path.display().to_string());
        self.containerd.clone()
    }
    async fn http_get(&self, url: &str) -> Result<(u16, String), String> {
        self.asked.lock().unwrap().push(url.to_string());
        self.kubelet.clone()
    }
}

#[tokio::test]
async fn containerd_and_the_kubelet_are_asked_where_k3s_serves_them() {
    let ok = FakeEndpoints { containerd: Ok(()), kubelet: Ok((200, "ok".into())), asked: Mutex::default() };
    let mut c = Collected::default();
    collect_network(&ok, &settings(Role::Agent), &mut c).await;
    assert_eq!(*ok.asked.lock().unwrap(), [CONTAINERD_SOCKET, KUBELET_HEALTHZ]);
    assert!(c.checks.iter().all(|x| x.state == CheckState::Ok), "{c:?}");
    let down = FakeEndpoints {
        containerd: Err("Connection refused".into()),
        kubelet: Ok((500, "[-]ping failed".into())),
        asked: Mutex::default(),
    };
    let mut c = Collected::default();
    collect_network(&down, &settings(Role::Agent), &mut c).await;
    assert_eq!(find(&c, "containerd").reason, format!("cannot connect to {CONTAINERD_SOCKET}: Connection refused"));
    assert_eq!(find(&c, "kubelet").reason, format!("{KUBELET_HEALTHZ} answered 500: [-]ping failed"));
    assert_eq!(c.gauges["kubelet_up"], 0.0);
}

#[test]
fn snapshot_names_carry_their_time_as_k3s_and_k3node_write_them() {
    assert_eq!(snapshot_time("on-demand-server1-1735787045"), Some(1_735_787_045));
    assert_eq!(snapshot_time("etcd-snapshot-s1-1735787045.zip"), Some(1_735_787_045));
    assert_eq!(snapshot_time("notes.txt"), None);
    // k3node's own archives, and a second one taken in the same second.
    assert_eq!(snapshot_time("manual-server-1-20250102T030405Z.tar.zst"), Some(1_735_787_045));
    assert_eq!(snapshot_time("scheduled-server-1-20250102T030405Z-2.tar.zst.sha256"), Some(1_735_787_045));
}

#[test]
fn an_embedded_etcd_certificate_near_its_end_fails_a_servers_certificate_check() {
    let sys = host()
        .file("/var/lib/rancher/k3s/server/tls/serving-kube-apiserver.crt", &certificate(300))
        .file("/var/lib/rancher/k3s/server/tls/etcd/peer-server-client.crt", &certificate(2));
    let mut state = ProbeState::default();
    let c = collect_local(&sys, &settings(Role::Server), &mut state);
    let check = find(&c, "certificates");
    assert_eq!(check.state, CheckState::Fail, "{check:?}");
    assert!(check.reason.contains("peer-server-client.crt in 2 days"), "{check:?}");
}
