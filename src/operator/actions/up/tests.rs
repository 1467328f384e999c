//! `up`'s phases over in-memory hosts (no lab, no root): the order of phases, a failing host
//! stopping the right phase, dry runs changing nothing, per-node states, and the join token in
//! no result or error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::artifacts::NoProgress;
use crate::host::k3s::testutil::{self as k3s, JOURNALCTL, SYSTEMCTL};
use crate::host::preflight::testutil::healthy_host;
use crate::host::system::fake::FakeSystem;
use crate::host::system::HostSystem;
use crate::operator::engine::{HostState, PhaseState};
use crate::operator::progress::Silent;
use crate::protocol::node::Role;

const TOKEN: &str = "K10f0e1d2c3b4a5968778695a4b3c2d1e0f0e1d2c3b4a5968778695a4b3c2d1e0f::server:5eCr3tPassw0rd";
const BINARY: &[u8] = b"\x7fELF a k3s release for the fake hosts";

/// A cluster of in-memory hosts, with the release in an airgap dir.
struct World {
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    cluster: Arc<ClusterFile>,
    hosts: BTreeMap<String, FakeSystem>,
}

fn node_list(names: &[&str]) -> String {
    let items: Vec<String> = names.iter().map(|n| k3s::node_json(n, "True")).collect();
    format!("{{\"kind\": \"List\", \"items\": [{}]}}", items.join(","))
}

/// A healthy host where k3s was never installed, answering as systemd and k3s would.
fn fresh_host(name: &str, ip: &str, role: Role, all: &[&str]) -> FakeSystem {
    let id = format!("{:0>32}", crate::digest::sha256_hex(name.as_bytes())[..32].to_string());
    let sys = healthy_host()
        .uname("Linux", name, "6.1.0-28-amd64", "x86_64")
        .file("/etc/machine-id", &format!("{id}\n"))
        .no_interfaces()
        .interface("lo", "127.0.0.1", 8)
        .interface("eth0", ip, 24)
        .now(k3s::NOW_MS)
        .command("systemctl", SYSTEMCTL)
        .command("journalctl", JOURNALCTL)
        .output("/usr/local/bin/k3s", &["--version"], 0, k3s::VERSION_OUTPUT, "");
    let sys = k3s::stopped(k3s::stopped(k3s::stopped(sys, "k3s"), "k3s-agent"), "k3node-agent");
    match role {
        Role::Server => sys
            .output_with_effects(
                SYSTEMCTL,
                &["restart", "k3s"],
                0,
                "",
                "",
                &[
                    ("/var/lib/rancher/k3s/server/token", &format!("{TOKEN}\n")),
                    ("/etc/rancher/k3s/k3s.yaml", K3S_YAML),
                ],
            )
            .output("/usr/local/bin/k3s", &k3s::kubectl_get_node(name), 0, &k3s::node_json(name, "True"), "")
            .output("/usr/local/bin/k3s", &["kubectl", "get", "nodes", "-o", "json"], 0, &node_list(all), ""),
        Role::Agent => sys,
    }
}

const K3S_YAML: &str = "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: Q0E=\n    server: https://127.0.0.1:6443\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\nusers:\n- name: default\n  user:\n    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\n";

fn world(hosts: &[(&str, &str, Role)]) -> World {
    let dir = tempfile::tempdir().unwrap();
    let airgap = dir.path().join("airgap");
    std::fs::create_dir(&airgap).unwrap();
    std::fs::write(airgap.join("k3s"), BINARY).unwrap();
    std::fs::write(airgap.join("sha256sum-amd64.txt"), format!("{}  k3s\n", crate::digest::sha256_hex(BINARY)))
        .unwrap();
    let mut yaml =
        String::from("apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: fake\nspec:\n  hosts:\n");
    for (name, ip, role) in hosts {
        yaml.push_str(&format!("    - name: {name}\n      address: {ip}\n      role: {role}\n"));
    }
    yaml.push_str(&format!("  k3s:\n    version: v1.31.4+k3s1\n    source:\n      airgapDir: {}\n", airgap.display()));
    let cluster = Arc::new(crate::cluster::parse("fake.yaml", dir.path(), &yaml).unwrap());
    let names: Vec<&str> = hosts.iter().map(|(n, _, _)| *n).collect();
    let hosts = hosts.iter().map(|(n, ip, role)| (n.to_string(), fresh_host(n, ip, *role, &names))).collect();
    World { kubeconfig: dir.path().join("kubeconfig"), _dir: dir, cluster, hosts }
}

fn options(world: &World, dry_run: bool) -> UpOptions {
    UpOptions {
        dry_run,
        concurrency: 4,
        ignore_preflight: false,
        skip_unreachable: false,
        ready_timeout: Duration::from_secs(5),
        kubeconfig: Some(world.kubeconfig.clone()),
        artifacts: crate::artifacts::ArtifactOptions::default(),
        spec_images: None,
    }
}

async fn run(world: &World, options: &UpOptions) -> RunReport {
    let hosts = world.hosts.clone();
    let fleet = Fleet::in_process(&world.cluster, |h| Arc::new(hosts[&h.name].clone()));
    up(world.cluster.clone(), fleet, options, Arc::new(Silent), Box::new(NoProgress)).await
}

fn three() -> World {
    world(&[("s1", "10.9.0.1", Role::Server), ("a1", "10.9.0.2", Role::Agent), ("a2", "10.9.0.3", Role::Agent)])
}

fn phases(report: &RunReport) -> Vec<(&'static str, PhaseState)> {
    report.phases.iter().map(|p| (p.name, p.state)).collect()
}

fn states(report: &RunReport) -> Vec<(&str, HostState)> {
    report.hosts.iter().map(|h| (h.host.as_str(), h.state)).collect()
}

#[tokio::test]
async fn a_fresh_cluster_goes_through_every_phase_in_order_and_is_installed() {
    let world = three();
    let report = run(&world, &options(&world, false)).await;
    use PhaseState::Done;
    assert_eq!(
        phases(&report),
        vec![
            ("connect", Done),
            ("lock", Done),
            ("preflight", Done),
            ("artifacts", Done),
            // No spec.images in this cluster file: nothing staged, nothing preloaded before to remove.
            ("preload images", Done),
            ("upload", Done),
            ("first server", Done),
            ("token", Done),
            ("servers", Done),
            ("agents", Done),
            ("ready", Done),
            ("manifests", Done),
            ("backup schedule", Done),
            ("daemon", Done),
            ("kubeconfig", Done),
        ],
        "{report:#?}"
    );
    assert!(report.succeeded());
    assert_eq!(
        states(&report),
        vec![("s1", HostState::Installed), ("a1", HostState::Installed), ("a2", HostState::Installed)]
    );
    assert_eq!(report.version.as_deref(), Some("v1.31.4+k3s1"));
    for (name, host) in &world.hosts {
        assert_eq!(host.bytes("/usr/local/bin/k3s").as_deref(), Some(BINARY), "{name}: the release was uploaded");
        assert!(host.state().locks.is_empty(), "{name}: the run released its lock");
    }
    let agent_env = world.hosts["a1"].contents("/etc/systemd/system/k3s-agent.service.env").unwrap();
    assert!(agent_env.contains("10.9.0.1:6443") && agent_env.contains("5eCr3tPassw0rd"), "{agent_env}");
    let kubeconfig = std::fs::read_to_string(&world.kubeconfig).unwrap();
    assert!(
        kubeconfig.contains("current-context: fake") && kubeconfig.contains("https://10.9.0.1:6443"),
        "{kubeconfig}"
    );
}

#[tokio::test]
async fn a_second_run_changes_and_restarts_nothing() {
    let world = three();
    assert!(run(&world, &options(&world, false)).await.succeeded());
    // What a run changes on a host, its lock's record under /run aside.
    let changes =
        |host: &FakeSystem| host.writes().into_iter().filter(|w| !format!("{w:?}").contains("/run/k3node/")).count();
    let writes: Vec<usize> = world.hosts.values().map(changes).collect();
    let report = run(&world, &options(&world, false)).await;
    assert!(report.succeeded(), "{report:#?}");
    assert_eq!(
        states(&report),
        vec![("s1", HostState::Unchanged), ("a1", HostState::Unchanged), ("a2", HostState::Unchanged)]
    );
    assert_eq!(world.hosts.values().map(changes).collect::<Vec<_>>(), writes, "no host was written to");
}

#[tokio::test]
async fn a_dry_run_plans_every_host_and_writes_nothing() {
    let world = three();
    let report = run(&world, &options(&world, true)).await;
    assert!(report.succeeded(), "{report:#?}");
    assert!(report.phases.iter().all(|p| p.state == PhaseState::Planned), "{:?}", phases(&report));
    let lock = &report.phases[1];
    assert_eq!((lock.name, lock.message.as_str()), ("lock", "no lock: a dry run changes nothing"));
    assert_eq!(
        states(&report),
        vec![("s1", HostState::WouldChange), ("a1", HostState::WouldChange), ("a2", HostState::WouldChange)]
    );
    for (name, host) in &world.hosts {
        assert!(host.writes().is_empty(), "{name}: {:?}", host.writes());
    }
    let s1 = report.host("s1").unwrap();
    let subjects: Vec<&str> = s1.changes.iter().map(|c| c.subject.as_str()).collect();
    for expected in [
        "/usr/local/bin/k3s",
        "/etc/rancher/k3s/config.yaml",
        "/etc/systemd/system/k3s.service",
        "/usr/local/bin/kubectl",
        "systemd: k3s.service",
    ] {
        assert!(subjects.contains(&expected), "{expected} missing from {subjects:?}");
    }
    assert!(s1.notes.iter().any(|n| n.starts_with("k3s would start")), "{:?}", s1.notes);
    assert!(!world.kubeconfig.exists());
}

/// `host`'s `unit` fails to start, and its journal says `journal`.
fn fail_start(world: &mut World, host: &str, unit: &str, journal: &str) {
    let system = world.hosts.remove(host).unwrap();
    let failed = format!("Job for {unit}.service failed.\n");
    let system = system.output(SYSTEMCTL, &["restart", unit], 1, "", &failed).output(
        JOURNALCTL,
        &["-u", unit, "-n", "20", "--no-pager", "-o", "cat"],
        0,
        journal,
        "",
    );
    world.hosts.insert(host.into(), system);
}

#[tokio::test]
async fn a_failing_agent_stops_the_run_at_agents_and_leaves_the_server_installed() {
    let mut world = three();
    let journal = format!("level=info msg=\"Using token {TOKEN}\"\nlevel=fatal msg=\"token CA hash does not match the Cluster CA certificate hash\"\n");
    fail_start(&mut world, "a2", "k3s-agent", &journal);
    let report = run(&world, &options(&world, false)).await;
    assert!(!report.succeeded());
    let by_name: BTreeMap<_, _> = phases(&report).into_iter().collect();
    assert_eq!(by_name["servers"], PhaseState::Done);
    assert_eq!(by_name["agents"], PhaseState::Failed);
    assert_eq!((by_name["ready"], by_name["kubeconfig"]), (PhaseState::NotRun, PhaseState::NotRun));
    assert_eq!(
        states(&report),
        vec![("s1", HostState::Installed), ("a1", HostState::Installed), ("a2", HostState::Failed)]
    );
    let error = report.host("a2").unwrap().error.clone().unwrap();
    assert_eq!(error.kind, "start-failed");
    assert!(error.message.contains("likely cause: the join token does not match"), "{}", error.message);
    // The token's secret part is in no result, no error, no message.
    let everything = serde_json::to_string(&report).unwrap();
    assert!(!everything.contains("5eCr3tPassw0rd"), "{everything}");
}

/// [`three`], with a1 below k3s's memory minimum: its preflight fails.
fn three_with_a1_short_of_memory() -> World {
    let mut world = three();
    let a1 =
        world.hosts.remove("a1").unwrap().file("/proc/meminfo", "MemTotal:  262144 kB\nMemAvailable:  131072 kB\n");
    world.hosts.insert("a1".into(), a1);
    world
}

#[tokio::test]
async fn a_preflight_failure_stops_the_run_before_anything_is_installed() {
    let world = three_with_a1_short_of_memory();
    let report = run(&world, &options(&world, false)).await;
    let by_name: BTreeMap<_, _> = phases(&report).into_iter().collect();
    assert_eq!(by_name["preflight"], PhaseState::Failed);
    assert_eq!(by_name["install"], PhaseState::NotRun, "{:?}", phases(&report));
    assert!(report.phases.iter().find(|p| p.name == "preflight").unwrap().message.contains("a1: memory"));
    for host in world.hosts.values() {
        assert!(host.bytes("/usr/local/bin/k3s").is_none(), "nothing was uploaded");
    }
}

#[tokio::test]
async fn a_dry_run_with_a_failed_preflight_shows_the_whole_plan_and_still_fails() {
    let world = three_with_a1_short_of_memory();
    let report = run(&world, &options(&world, true)).await;
    assert!(!report.succeeded(), "the failed checks fail the dry run");
    let by_name: BTreeMap<_, _> = phases(&report).into_iter().collect();
    assert_eq!(by_name["preflight"], PhaseState::Failed);
    assert!(report.phases.iter().find(|p| p.name == "preflight").unwrap().message.contains("a1: memory"));
    for phase in ["servers", "agents", "ready", "kubeconfig"] {
        assert_eq!(by_name[phase], PhaseState::Planned, "{phase}: {:?}", phases(&report));
    }
    // The host that failed its checks is planned like the others, and nothing was written.
    assert_eq!(report.host("a1").unwrap().state, HostState::WouldChange);
    assert!(report.host("a1").unwrap().changes.iter().any(|c| c.subject == "/etc/rancher/k3s/config.yaml"));
    for (name, host) in &world.hosts {
        assert!(host.writes().is_empty(), "{name}: {:?}", host.writes());
    }
}

#[tokio::test]
async fn a_changed_label_restarts_only_its_host() {
    let world = three();
    assert!(run(&world, &options(&world, false)).await.succeeded());
    let mut cluster = (*world.cluster).clone();
    cluster.hosts[1].labels.insert("tier".into(), "web".into());
    let world = World { cluster: Arc::new(cluster), ..world };
    let report = run(&world, &options(&world, false)).await;
    assert!(report.succeeded(), "{report:#?}");
    assert_eq!(
        states(&report),
        vec![("s1", HostState::Unchanged), ("a1", HostState::Restarted), ("a2", HostState::Unchanged)]
    );
    assert!(world.hosts["a1"].contents("/etc/rancher/k3s/config.yaml").unwrap().contains("tier=web"));
}

#[tokio::test]
async fn a_host_locked_by_another_run_stops_this_one_before_any_change() {
    let world = three();
    let holder = crate::protocol::LockHolder {
        token: "other".into(),
        operation: "up".into(),
        from: "bob@ci".into(),
        started_at: "2026-12-01T09:00:00Z".into(),
        pid: 0,
    };
    let _held = crate::host::lock::take(&world.hosts["a1"], &holder).unwrap();
    let report = run(&world, &options(&world, false)).await;
    let by_name: BTreeMap<_, _> = phases(&report).into_iter().collect();
    assert_eq!(by_name["lock"], PhaseState::Failed);
    assert_eq!(by_name["preflight"], PhaseState::NotRun);
    let error = report.host("a1").unwrap().error.clone().unwrap();
    assert_eq!(error.kind, "conflict");
    assert!(error.message.contains("`up` from bob@ci"), "{}", error.message);
    assert!(world.hosts["s1"].state().locks.is_empty(), "the locks this run took were released");
    assert!(world.hosts["s1"].bytes("/usr/local/bin/k3s").is_none());
    assert!(!Path::new(&world.kubeconfig).exists());
}

#[tokio::test]
async fn a_first_server_that_does_not_start_leaves_the_agents_skipped_and_without_k3s_services() {
    let mut world = three();
    let journal = "level=fatal msg=\"starting kubernetes: preparing server: bootstrap data already found and encrypted with different token\"\n";
    fail_start(&mut world, "s1", "k3s", journal);
    let report = run(&world, &options(&world, false)).await;
    assert!(!report.succeeded());
    let by_name: BTreeMap<_, _> = phases(&report).into_iter().collect();
    assert_eq!(by_name["first server"], PhaseState::Failed, "{:?}", phases(&report));
    assert_eq!(
        states(&report),
        vec![("s1", HostState::Failed), ("a1", HostState::Skipped), ("a2", HostState::Skipped)]
    );
    for agent in ["a1", "a2"] {
        let host = &world.hosts[agent];
        assert!(host.bytes("/etc/systemd/system/k3s-agent.service").is_none(), "{agent}: no service written");
        let error = report.host(agent).unwrap().error.clone().unwrap();
        assert_eq!(error.kind, "not-reached", "{agent}");
        assert!(error.message.contains("the servers did not come up"), "{agent}: {}", error.message);
    }
}

/// `run` with some hosts unreachable (their connection failed before the run, as over SSH).
async fn run_unreachable(world: &World, options: &UpOptions, unreachable: &[&str]) -> RunReport {
    let hosts = world.hosts.clone();
    let mut fleet = Fleet::in_process(&world.cluster, |h| Arc::new(hosts[&h.name].clone()));
    for member in fleet.members.iter_mut().filter(|m| unreachable.contains(&m.host.name.as_str())) {
        member.link = Err(crate::transport::TransportError::Unreachable {
            host: member.host.name.clone(),
            address: member.host.address.clone(),
            detail: "no route to host".into(),
        }
        .into());
    }
    up(world.cluster.clone(), fleet, options, Arc::new(Silent), Box::new(NoProgress)).await
}

#[tokio::test]
async fn an_unreachable_agent_stops_the_run_at_connect_unless_skip_unreachable_lets_the_others_converge() {
    let world = three();
    let report = run_unreachable(&world, &options(&world, false), &["a2"]).await;
    assert!(!report.succeeded());
    assert_eq!(report.phases[0].name, "connect");
    assert_eq!(report.phases[0].state, PhaseState::Failed);
    assert!(report.phases[1..].iter().all(|p| p.state != PhaseState::Done), "{:?}", phases(&report));
    for name in ["s1", "a1"] {
        assert!(!world.hosts[name].exists(Path::new("/usr/local/bin/k3s")), "{name} was touched");
    }

    let skipping = UpOptions { skip_unreachable: true, ..options(&world, false) };
    let report = run_unreachable(&world, &skipping, &["a2"]).await;
    assert!(!report.succeeded(), "a left-out host still makes the run fail (exit status non-zero)");
    assert!(report.phases.iter().all(|p| p.state != PhaseState::Failed), "{:?}", phases(&report));
    let connect = &report.phases[0];
    assert!(connect.message.contains("left out: a2 (unreachable)"), "{}", connect.message);
    let a2 = report.host("a2").unwrap();
    assert_eq!(a2.state, HostState::Skipped);
    let error = a2.error.as_ref().unwrap();
    assert_eq!(error.kind, "unreachable");
    assert!(error.message.contains("no route to host"), "{}", error.message);
    for name in ["s1", "a1"] {
        assert_eq!(report.host(name).unwrap().state, HostState::Installed, "{name} converged");
        assert!(world.hosts[name].exists(Path::new("/usr/local/bin/k3s")), "{name} got k3s");
    }
    assert!(!world.hosts["a2"].exists(Path::new("/usr/local/bin/k3s")));
}

#[tokio::test]
async fn skip_unreachable_never_leaves_out_a_server() {
    let world = three();
    let skipping = UpOptions { skip_unreachable: true, ..options(&world, false) };
    let report = run_unreachable(&world, &skipping, &["s1"]).await;
    assert!(!report.succeeded());
    assert_eq!(report.phases[0].state, PhaseState::Failed, "{:?}", phases(&report));
    assert_eq!(report.host("s1").unwrap().state, HostState::Failed);
    assert!(!world.hosts["a1"].exists(Path::new("/usr/local/bin/k3s")), "no agent installed without its server");
}

const BUNDLE: &str = "k3s-airgap-images-amd64.tar.zst";

/// Puts `file` (the airgap images bundle's bytes) into the world's airgap dir, and `listed` as
/// its sha256 in the release's checksum file; returns the dir.
fn airgap_bundle(world: &World, file: &[u8], listed: &[u8]) -> PathBuf {
    let airgap = world._dir.path().join("airgap");
    std::fs::write(airgap.join(BUNDLE), file).unwrap();
    let sums = format!("{}  k3s\n{}  {BUNDLE}\n", crate::digest::sha256_hex(BINARY), crate::digest::sha256_hex(listed));
    std::fs::write(airgap.join("sha256sum-amd64.txt"), sums).unwrap();
    airgap
}

#[tokio::test]
async fn the_airgap_images_bundle_in_the_airgap_dir_is_staged_on_every_node_before_k3s_and_only_once() {
    let world = three();
    let bundle = b"(\xb5/\xfd k3s's own images, as the release's zstd tar".to_vec();
    let name = BUNDLE;
    airgap_bundle(&world, &bundle, &bundle);

    let report = run(&world, &options(&world, false)).await;
    assert!(report.succeeded(), "{report:#?}");
    let names: Vec<&str> = report.phases.iter().map(|p| p.name).collect();
    let preload = names.iter().position(|n| *n == "preload images").unwrap();
    assert!(preload < names.iter().position(|n| *n == "first server").unwrap(), "{names:?}");
    assert_eq!(report.phases[preload].state, PhaseState::Done, "{:?}", report.phases[preload]);
    let staged = format!("/var/lib/rancher/k3s/agent/images/{name}");
    for (host, sys) in &world.hosts {
        assert_eq!(sys.bytes(&staged).as_deref(), Some(&bundle[..]), "{host}: staged as the release has it");
        // The file's sha256 is told as the file's, not as an image digest.
        let changes = &report.host(host).unwrap().changes;
        let row = changes.iter().find(|c| c.subject == name).unwrap_or_else(|| panic!("{host}: {changes:?}"));
        let shown = format!("staged (file sha256 {})", crate::digest::sha256_hex(&bundle));
        assert_eq!(row.detail.as_deref(), Some(shown.as_str()), "{host}");
    }

    // Again: the staged bundle has the release's sha256, so nothing is sent or written.
    let changes =
        |host: &FakeSystem| host.writes().into_iter().filter(|w| !format!("{w:?}").contains("/run/k3node/")).count();
    let writes: Vec<usize> = world.hosts.values().map(changes).collect();
    let report = run(&world, &options(&world, false)).await;
    assert!(report.succeeded(), "{report:#?}");
    assert!(report.phases[preload].message.contains("0 images staged, 0 B sent"), "{:?}", report.phases[preload]);
    assert_eq!(world.hosts.values().map(changes).collect::<Vec<_>>(), writes, "no host was written to");

    // A bundle that is not the release's is refused before anything is staged or installed.
    let world = three();
    airgap_bundle(&world, b"something else", &bundle);
    let report = run(&world, &options(&world, false)).await;
    assert!(!report.succeeded());
    let failed: Vec<_> = report.phases.iter().filter(|p| p.state == PhaseState::Failed).collect();
    assert_eq!(failed.len(), 1, "{:?}", phases(&report));
    assert_eq!(failed[0].name, "artifacts");
    assert!(failed[0].message.contains("checksum mismatch") && failed[0].message.contains(name), "{:?}", failed[0]);
    for (host, sys) in &world.hosts {
        assert_eq!(sys.bytes(&staged), None, "{host}");
        assert_eq!(sys.bytes("/usr/local/bin/k3s"), None, "{host}");
    }
}

#[tokio::test]
async fn a_preloaded_archive_that_left_the_cluster_file_is_removed_from_every_node_and_nothing_staged_otherwise() {
    let world = three();
    let bundle = b"(\xb5/\xfd the release's images";
    let name = BUNDLE;
    let airgap = airgap_bundle(&world, bundle, bundle);
    assert!(run(&world, &options(&world, false)).await.succeeded());
    let dir = "/var/lib/rancher/k3s/agent/images";
    // An archive staged by `k3node images stage` (or by hand) is no preload's business.
    for sys in world.hosts.values() {
        sys.write_atomic(Path::new(&format!("{dir}/k3node-by-hand.tar.zst")), b"staged another way", 0o644).unwrap();
    }

    // The bundle leaves the airgap dir: a dry run says it would go and removes nothing.
    std::fs::remove_file(airgap.join(name)).unwrap();
    let report = run(&world, &options(&world, true)).await;
    assert!(report.succeeded(), "{report:#?}");
    let preload = report.phases.iter().find(|p| p.name == "preload images").unwrap();
    assert!(preload.message.contains("3 archives no longer preloaded would be removed"), "{preload:?}");
    for (host, sys) in &world.hosts {
        assert!(sys.bytes(&format!("{dir}/{name}")).is_some(), "{host}: a dry run removed it");
    }

    let report = run(&world, &options(&world, false)).await;
    assert!(report.succeeded(), "{report:#?}");
    for (host, sys) in &world.hosts {
        assert_eq!(sys.bytes(&format!("{dir}/{name}")), None, "{host}: still staged");
        assert!(sys.bytes(&format!("{dir}/k3node-by-hand.tar.zst")).is_some(), "{host}: not a preload's");
        let result = report.hosts.iter().find(|h| &h.host == host).unwrap();
        assert_eq!(result.state, HostState::Changed, "{host}");
        assert!(
            result
                .changes
                .iter()
                .any(|c| c.subject == name && c.action == crate::operator::engine::ChangeAction::Removed),
            "{host}: {:?}",
            result.changes
        );
        assert_eq!(sys.bytes("/var/lib/rancher/k3s/agent/.k3node-preloaded"), None, "{host}: the empty set's record");
    }
    // And then there is nothing left to do.
    let report = run(&world, &options(&world, false)).await;
    assert_eq!(states(&report).iter().filter(|(_, s)| *s != HostState::Unchanged).count(), 0, "{report:#?}");
}
