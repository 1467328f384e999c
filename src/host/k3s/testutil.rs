//! Hosts as the fake sees them for install and reset tests: an uploaded k3s, systemd's commands
//! answering as on a host where k3s was never installed; each test changes what its case is about.

use crate::host::system::fake::FakeSystem;
use crate::protocol::k3s::InstallRequest;
use crate::protocol::preflight::Role;
use crate::protocol::Secret;

use super::K3S_BIN;

pub const SYSTEMCTL: &str = "/usr/bin/systemctl";
pub const JOURNALCTL: &str = "/usr/bin/journalctl";
/// The uploaded "binary" (the fake hashes file text).
pub const K3S_CONTENT: &str = "\x7fELF k3s v1.31.4+k3s1";
pub const VERSION_OUTPUT: &str = "k3s version v1.31.4+k3s1 (a1b2c3d4)\ngo version go1.22.9\n";
pub const SERVER_TOKEN: &str =
    "K10f0e1d2c3b4a5968778695a4b3c2d1e0f0e1d2c3b4a5968778695a4b3c2d1e0f::server:3c9f1b2a7d6e";
pub const NODE_TOKEN: &str = "K10f0e1d2c3b4a5968778695a4b3c2d1e0f0e1d2c3b4a5968778695a4b3c2d1e0f::node:9a8b7c6d5e4f";
pub const SERVER_URL: &str = "https://192.168.56.10:6443";
pub const NOW_MS: i64 = 1_735_787_045_000; // 2025-01-02T03:04:05Z

pub fn k3s_sha256() -> String {
    crate::digest::sha256_hex(K3S_CONTENT.as_bytes())
}

pub fn node_json(name: &str, ready: &str) -> String {
    format!(
        r#"{{"kind": "Node", "metadata": {{"name": "{name}"}}, "status": {{"conditions": [
            {{"type": "MemoryPressure", "status": "False"}},
            {{"type": "Ready", "status": "{ready}", "reason": "KubeletNotReady", "message": "container runtime network not ready"}}]}}}}"#
    )
}

pub fn kubectl_get_node(name: &str) -> Vec<&str> {
    vec!["kubectl", "get", "node", name, "-o", "json"]
}

/// A host with k3s uploaded and systemd, where k3s has never run.
pub fn host() -> FakeSystem {
    let sys = FakeSystem::new()
        .now(NOW_MS)
        .file(K3S_BIN, K3S_CONTENT)
        .output(K3S_BIN, &["--version"], 0, VERSION_OUTPUT, "")
        .command("systemctl", SYSTEMCTL)
        .command("journalctl", JOURNALCTL)
        .output(SYSTEMCTL, &["daemon-reload"], 0, "", "");
    let sys = stopped(sys, "k3s");
    let sys = stopped(sys, "k3s-agent");
    sys.output(K3S_BIN, &kubectl_get_node("server1"), 0, &node_json("server1", "True"), "")
}

/// `systemctl show` of the unit, as [`super::systemd::Systemd::status`] asks for it.
pub fn show_args(service: &str) -> Vec<&str> {
    vec!["show", super::systemd::STATUS_PROPERTIES, service]
}

/// What systemd says about `service`.
pub fn unit(sys: FakeSystem, service: &str, active: &str, enabled: &str, reload: &str, invocation: &str) -> FakeSystem {
    let main_pid = if active == "active" { "4242" } else { "0" };
    let text = format!(
        "ActiveState={active}\nUnitFileState={enabled}\nNeedDaemonReload={reload}\nInvocationID={invocation}\nMainPID={main_pid}\n"
    );
    sys.output(SYSTEMCTL, &show_args(service), 0, &text, "")
}

/// systemd's answers for a service that is not installed, or installed and stopped: once
/// restarted, it runs (with [`INVOCATION`]).
pub fn stopped(sys: FakeSystem, service: &str) -> FakeSystem {
    let before =
        "ActiveState=inactive\nUnitFileState=disabled\nNeedDaemonReload=no\nInvocationID=\nMainPID=0\n".to_string();
    let after = format!(
        "ActiveState=active\nUnitFileState=enabled\nNeedDaemonReload=no\nInvocationID={INVOCATION}\nMainPID=4242\n"
    );
    sys.output_seq(SYSTEMCTL, &show_args(service), &[(0, &before, ""), (0, &after, "")])
        .output(SYSTEMCTL, &["enable", service], 0, "", "")
        .output(SYSTEMCTL, &["restart", service], 0, "", "")
        .output(SYSTEMCTL, &["stop", service], 0, "", "")
        .output(SYSTEMCTL, &["disable", service], 0, "", "")
        .output(JOURNALCTL, &["-u", service, "-n", "20", "--no-pager", "-o", "cat"], 0, "", "")
}

/// The InvocationID systemd gives the running service in these tests.
pub const INVOCATION: &str = "6f1e0c5a9b6d4e1c8a7b3c2d1e0f9a8b";

/// systemd's answers once the service runs and is enabled (started with [`INVOCATION`]).
pub fn running(sys: FakeSystem, service: &str) -> FakeSystem {
    unit(sys, service, "active", "enabled", "no", INVOCATION)
}

pub fn server_request() -> InstallRequest {
    InstallRequest {
        role: Role::Server,
        node_name: "server1".into(),
        binary_sha256: k3s_sha256(),
        config_yaml: Secret::new(format!(
            "cluster-init: true\nnode-name: server1\ntoken: {SERVER_TOKEN}\ntls-san:\n  - 192.168.56.10\n"
        )),
        env: vec![],
        registries_yaml: None,
        ready_timeout_secs: 60,
        dry_run: false,
    }
}

pub fn agent_request() -> InstallRequest {
    InstallRequest {
        role: Role::Agent,
        node_name: "agent1".into(),
        binary_sha256: k3s_sha256(),
        config_yaml: Secret::new("node-name: agent1\n"),
        env: vec![("K3S_URL".into(), Secret::new(SERVER_URL)), ("K3S_TOKEN".into(), Secret::new(NODE_TOKEN))],
        registries_yaml: None,
        ready_timeout_secs: 60,
        dry_run: false,
    }
}
