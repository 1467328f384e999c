//! install-daemon, daemon-identity and the removal steps against a fake host.

use super::*;
use crate::daemon::settings::Settings;
use crate::host::k3s::testutil::{self as k3s, SYSTEMCTL};
use crate::host::system::fake::FakeSystem;
use crate::protocol::Operation;

fn host() -> FakeSystem {
    k3s::stopped(FakeSystem::new().command("systemctl", SYSTEMCTL), UNIT_NAME)
}

fn request(sys: &FakeSystem, role: Role) -> InstallDaemon {
    let id = identity(sys, false).unwrap();
    let (ca, ca_key) = pki::generate_ca("t", time::OffsetDateTime::now_utc()).unwrap();
    let names = pki::node_names("n1", "10.0.0.1", role);
    let cert =
        pki::sign_node(&ca, ca_key.expose(), &id.csr_pem.unwrap(), "n1", role, &names, time::OffsetDateTime::now_utc())
            .unwrap();
    let settings = Settings::new("n1", role, &["10.0.0.1"]);
    InstallDaemon {
        role,
        node_name: "n1".into(),
        settings_yaml: settings.render(),
        ca_cert_pem: ca,
        ca_key: (role == Role::Server).then_some(ca_key),
        node_cert_pem: cert,
        dry_run: false,
    }
}

#[test]
fn the_node_key_is_made_once_on_the_host_and_only_a_request_leaves_it() {
    let sys = FakeSystem::new();
    assert_eq!(identity(&sys, true).unwrap().csr_pem, None, "a dry run makes no key");
    assert!(sys.contents(NODE_KEY).is_none());
    let first = identity(&sys, false).unwrap();
    let key = sys.contents(NODE_KEY).unwrap();
    assert_eq!(sys.state().modes.get(Path::new(NODE_KEY)).copied(), Some(0o600));
    assert!(first.csr_pem.unwrap().contains("CERTIFICATE REQUEST"));
    identity(&sys, false).unwrap();
    assert_eq!(sys.contents(NODE_KEY).unwrap(), key, "the key is kept");
}

#[test]
fn install_writes_settings_certificates_and_unit_then_a_rerun_restarts_nothing() {
    let sys = host();
    let req = request(&sys, Role::Server);
    let mut lines = Vec::new();
    let first = install(&sys, &req, &mut |m| lines.push(m.to_string())).unwrap();
    assert_eq!(first.service_action, ServiceAction::Start);
    assert_eq!(sys.contents(SETTINGS_PATH).as_deref(), Some(req.settings_yaml.as_str()));
    assert_eq!(sys.contents(UNIT_PATH).as_deref(), Some(UNIT_TEXT));
    // A server's hub gets its memory cap from its fleet's size (here none listed: the floor).
    assert!(sys
        .contents(HUB_MEMORY_DROPIN)
        .is_some_and(|d| d.contains("[Service]\nMemoryMax=128M\nUnsetEnvironment=MALLOC_ARENA_MAX\n")));
    assert_eq!(sys.state().modes.get(Path::new(CA_KEY)).copied(), Some(0o600));
    assert_eq!(sys.state().modes.get(Path::new(SETTINGS_PATH)).copied(), Some(0o600));
    let key_change = first.changes.iter().find(|c| c.path == CA_KEY).unwrap();
    assert_eq!(key_change.diff.as_deref(), Some("(secret, not shown)"));
    assert!(lines.contains(&format!("restarting {UNIT_NAME}")), "{lines:?}");
    let again = install(&sys, &req, &mut |_| {}).unwrap();
    assert_eq!(again.service_action, ServiceAction::None, "{again:?}");
    assert!(again.changes.iter().all(|c| c.action == FileAction::Unchanged), "{again:?}");
}

#[test]
fn an_agent_never_gets_the_ca_key_and_settings_for_another_node_are_refused() {
    let sys = host();
    let mut req = request(&sys, Role::Agent);
    install(&sys, &req, &mut |_| {}).unwrap();
    assert!(sys.contents(CA_KEY).is_none());
    assert!(sys.contents(HUB_MEMORY_DROPIN).is_none(), "an agent keeps the unit's own cap");
    req.node_name = "n2".into();
    let e = install(&sys, &req, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("they are for n1 (agent), this request for n2 (agent)"), "{e}");
}

#[test]
fn the_ca_key_never_reaches_an_answer_line() {
    let sys = host();
    let req = request(&sys, Role::Server);
    let key = req.ca_key.clone().unwrap();
    let line = String::from_utf8(crate::protocol::encode_request(&req, None)).unwrap();
    let mut out = Vec::new();
    crate::host::serve(InstallDaemon::NAME, &sys, &mut line.as_bytes(), &mut out);
    let answer = String::from_utf8(out).unwrap();
    assert!(answer.contains("\"type\":\"result\""), "{answer}");
    for secret_line in key.expose().lines().filter(|l| l.len() > 20) {
        assert!(!answer.contains(secret_line), "the CA key leaked: {answer}");
    }
}

#[test]
fn removal_stops_the_unit_drops_keys_and_moves_state_aside() {
    let sys = host()
        .output(SYSTEMCTL, &["daemon-reload"], 0, "", "")
        .file(UNIT_PATH, UNIT_TEXT)
        .file(HUB_MEMORY_DROPIN, &hub_memory_dropin(3))
        .file(NODE_KEY, "key")
        .file("/var/lib/k3node/hub.db", "db");
    let steps = removal_steps(&sys, &|p| PathBuf::from(format!("{}.aside", p.display())));
    let names: Vec<String> = steps.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        names,
        [
            "stop and disable k3node-agent.service",
            "remove /etc/systemd/system/k3node-agent.service",
            "remove /etc/systemd/system/k3node-agent.service.d",
            "reload systemd units",
            "remove /etc/k3node (the daemon's settings and keys)",
            "move /var/lib/k3node aside to /var/lib/k3node.aside",
        ]
    );
    for (name, work) in steps {
        work().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(!sys.exists(Path::new(UNIT_PATH)) && !sys.exists(Path::new(NODE_KEY)));
    assert!(!sys.exists(Path::new(HUB_MEMORY_DROPIN_DIR)));
    assert_eq!(sys.contents("/var/lib/k3node.aside/hub.db").as_deref(), Some("db"));
    assert!(removal_steps(&FakeSystem::new(), &|p| p.to_path_buf()).is_empty(), "nothing on a clean host");
}

#[test]
fn a_hubs_memory_cap_grows_with_its_fleet_from_the_units_own() {
    let cap = |nodes: usize| -> u64 {
        let text = hub_memory_dropin(nodes);
        let line = text.lines().find_map(|l| l.strip_prefix("MemoryMax=")).expect("a MemoryMax line");
        line.strip_suffix('M').and_then(|v| v.parse().ok()).expect("mebibytes")
    };
    assert!(UNIT_TEXT.contains("\nMemoryMax=128M\n"), "the floor is the unit's own cap");
    assert_eq!(cap(0), 128);
    assert_eq!(cap(100), 128);
    assert!(cap(10_000) > cap(5_000) && cap(5_000) > 128, "{} {}", cap(5_000), cap(10_000));
    assert!(hub_memory_dropin(10_000).contains("10000 nodes"));
}
