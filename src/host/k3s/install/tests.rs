use std::path::PathBuf;

use super::*;
use crate::digest::sha256_hex;
use crate::host::k3s::testutil::*;
use crate::host::system::fake::{FakeSystem, Write};
use crate::protocol::AnswerLine;
use crate::protocol::Secret;

fn install_ok(sys: &FakeSystem, req: &InstallRequest) -> (InstallReport, Vec<String>) {
    let mut lines = Vec::new();
    let report =
        install(sys, req, &mut |m| lines.push(m.to_string())).unwrap_or_else(|e| panic!("install failed: {e}"));
    (report, lines)
}

/// The error's message as it leaves the host: through the serve boundary, secrets removed.
fn install_err(sys: &FakeSystem, req: &InstallRequest) -> String {
    let line = crate::protocol::encode_request(req, None);
    let mut out = Vec::new();
    crate::host::serve("install-k3s", sys, &mut line.as_slice(), &mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    match serde_json::from_str(text.lines().last().unwrap_or_default()) {
        Ok(AnswerLine::Error(e)) => e.message,
        other => panic!("install should fail: {other:?}"),
    }
}

/// `systemctl show` of the service's status, as the runs list shows it.
fn show(service: &str) -> String {
    show_args(service).join(" ")
}

fn change<'a>(report: &'a InstallReport, path: &str) -> &'a FileChange {
    report.changes.iter().find(|c| c.path == path).unwrap_or_else(|| panic!("no change for {path}: {report:#?}"))
}

fn systemctl_runs(sys: &FakeSystem) -> Vec<String> {
    sys.runs().into_iter().filter(|(p, _)| p == &PathBuf::from(SYSTEMCTL)).map(|(_, args)| args.join(" ")).collect()
}

/// Runs of commands that change the host: anything but the read-only queries.
fn state_changing_runs(sys: &FakeSystem) -> Vec<String> {
    sys.runs()
        .into_iter()
        .map(|(p, args)| format!("{} {}", p.display(), args.join(" ")))
        .filter(|run| {
            !(run.ends_with("k3s --version")
                || run.contains("systemctl show")
                || run.contains("kubectl get")
                || run.contains("journalctl"))
        })
        .collect()
}

fn written(sys: &FakeSystem, path: &str) -> Option<(String, u32)> {
    sys.writes().into_iter().find_map(|w| match w {
        Write::Atomic { path: p, contents, mode } if p == Path::new(path) => Some((contents, mode)),
        _ => None,
    })
}

#[test]
fn fresh_server_gets_the_contracts_files_and_starts() {
    let sys = host();
    let req = server_request();
    let (report, progress) = install_ok(&sys, &req);

    let (unit, mode) = written(&sys, "/etc/systemd/system/k3s.service").unwrap();
    assert_eq!(unit, unit_text(Role::Server));
    assert!(unit.ends_with("EnvironmentFile=-/etc/systemd/system/k3s.service.env\nKillMode=process\nDelegate=yes\nUser=root\n\
        # Having non-zero Limit*s causes performance problems due to accounting overhead\n\
        # in the kernel. We recommend using cgroups to do container-local accounting.\n\
        LimitNOFILE=1048576\nLimitNPROC=infinity\nLimitCORE=infinity\nTasksMax=infinity\nTimeoutStartSec=0\n\
        Restart=always\nRestartSec=5s\nExecStartPre=-/sbin/modprobe br_netfilter\nExecStartPre=-/sbin/modprobe overlay\n\
        ExecStart=/usr/local/bin/k3s \\\n    server \\\n\n"));
    assert_eq!(mode, 0o644);
    assert_eq!(written(&sys, CONFIG_FILE), Some((req.config_yaml.expose().to_string(), 0o600)));
    assert_eq!(written(&sys, "/etc/systemd/system/k3s.service.env"), Some((String::new(), 0o600)));
    let (killall, mode) = written(&sys, KILLALL_SCRIPT).unwrap();
    assert!(killall.starts_with("#!/bin/sh\n") && killall.contains("DATA_DIR='/var/lib/rancher/k3s'"));
    assert_eq!(mode, 0o755);
    assert_eq!(written(&sys, "/usr/local/bin/k3s-uninstall.sh").map(|(_, m)| m), Some(0o755));
    assert!(written(&sys, "/usr/local/bin/k3s-agent-uninstall.sh").is_none());

    let writes = sys.writes();
    assert_eq!(writes[0], Write::CreateDir { path: CONFIG_DIR.into(), mode: 0o755 });
    for name in ["kubectl", "crictl", "ctr"] {
        let link = PathBuf::from(format!("/usr/local/bin/{name}"));
        assert!(writes.contains(&Write::Symlink { link, target: "k3s".into() }), "{name}: {writes:#?}");
    }
    let record: Record =
        serde_json::from_str(&sys.contents("/var/lib/rancher/k3node/k3s.applied.json").unwrap()).unwrap();
    assert_eq!(record.binary_sha256, k3s_sha256());
    assert_eq!(
        record.config_sha256,
        sha256_hex(super::config::canonical(req.config_yaml.expose()).unwrap().as_bytes())
    );
    assert_eq!(record.invocation_id, INVOCATION, "the start k3node made is recorded");
    assert_eq!(sys.state().modes[&PathBuf::from("/var/lib/rancher/k3node/k3s.applied.json")], 0o600);
    assert!(
        matches!(writes.last(), Some(Write::Atomic { path, .. }) if path == &PathBuf::from("/var/lib/rancher/k3node/k3s.applied.json"))
    );

    assert_eq!(
        systemctl_runs(&sys),
        // `enable` reloads systemd itself: no separate daemon-reload for a new unit.
        vec![show("k3s"), "enable k3s".into(), "restart k3s".into(), show("k3s")]
    );
    assert!(sys
        .runs()
        .contains(&(K3S_BIN.into(), kubectl_get_node("server1").iter().map(|s| s.to_string()).collect())));

    assert_eq!(report.service, "k3s");
    assert_eq!(report.version, "v1.31.4+k3s1");
    assert!(report.restarted() && report.active);
    assert_eq!(change(&report, K3S_BIN).action, FileAction::Created);
    assert_eq!(change(&report, "/etc/systemd/system/k3s.service").action, FileAction::Created);
    assert_eq!(change(&report, "/usr/local/bin/kubectl").action, FileAction::Created);
    for line in [
        "verifying /usr/local/bin/k3s",
        "writing /etc/systemd/system/k3s.service",
        "restarting k3s",
        "waiting for node server1 to be Ready",
    ] {
        assert!(progress.iter().any(|p| p == line), "{line}: {progress:?}");
    }
    // The token went into the file, and nowhere else.
    let shown = serde_json::to_string(&report).unwrap() + &progress.join("\n");
    assert!(!shown.contains("3c9f1b2a7d6e"), "{shown}");
}

#[test]
fn agent_gets_its_own_unit_and_env_and_does_not_wait_for_the_api() {
    let sys = host();
    let (report, _) = install_ok(&sys, &agent_request());
    assert_eq!(report.service, "k3s-agent");
    let (unit, _) = written(&sys, "/etc/systemd/system/k3s-agent.service").unwrap();
    assert_eq!(unit, unit_text(Role::Agent));
    assert!(unit.contains("EnvironmentFile=-/etc/systemd/system/k3s-agent.service.env\n"));
    assert!(unit.ends_with("ExecStart=/usr/local/bin/k3s \\\n    agent \\\n\n"));
    assert_eq!(
        written(&sys, "/etc/systemd/system/k3s-agent.service.env"),
        Some((format!("K3S_TOKEN='{NODE_TOKEN}'\nK3S_URL='{SERVER_URL}'\n"), 0o600))
    );
    assert_eq!(written(&sys, CONFIG_FILE), Some(("node-name: agent1\n".into(), 0o600)));
    assert!(written(&sys, "/usr/local/bin/k3s-agent-uninstall.sh").is_some());
    assert!(written(&sys, "/etc/systemd/system/k3s.service").is_none());
    assert!(systemctl_runs(&sys).contains(&"restart k3s-agent".to_string()));
    assert!(!sys.runs().iter().any(|(_, args)| args.first().is_some_and(|a| a == "kubectl")));
    assert!(sys.contents("/var/lib/rancher/k3node/k3s-agent.applied.json").is_some());
}

#[test]
fn symlinks_only_where_no_such_command_exists() {
    let sys = host()
        .command("kubectl", "/usr/bin/kubectl")
        .link("/usr/local/bin/crictl", "/opt/cri-tools/crictl")
        .link("/usr/local/bin/ctr", "k3s");
    let (report, progress) = install_ok(&sys, &server_request());
    let links: Vec<Write> = sys.writes().into_iter().filter(|w| matches!(w, Write::Symlink { .. })).collect();
    assert!(links.is_empty(), "{links:?}");
    assert_eq!(change(&report, "/usr/local/bin/ctr").action, FileAction::Unchanged);
    assert!(!report.changes.iter().any(|c| c.path.ends_with("kubectl") || c.path.ends_with("crictl")));
    assert!(
        progress.contains(&"kubectl exists at /usr/bin/kubectl: not linking it to k3s".to_string()),
        "{progress:?}"
    );
    assert!(
        progress.contains(&"/usr/local/bin/crictl links to /opt/cri-tools/crictl: not linking it to k3s".to_string())
    );
    assert_eq!(sys.state().links[&PathBuf::from("/usr/local/bin/crictl")], PathBuf::from("/opt/cri-tools/crictl"));
}

#[test]
fn rerun_on_an_unchanged_host_writes_and_restarts_nothing() {
    let sys = host();
    install_ok(&sys, &server_request());
    let sys = running(sys, "k3s");
    let writes = sys.writes().len();
    let runs = sys.runs().len();

    let (report, _) = install_ok(&sys, &server_request());
    assert_eq!(sys.writes().len(), writes, "{:#?}", &sys.writes()[writes..]);
    assert!(!report.restarted());
    assert!(report.active);
    assert!(
        report.changes.iter().all(|c| c.action == FileAction::Unchanged && c.diff.is_none()),
        "{:#?}",
        report.changes
    );
    assert_eq!(report.changes.len(), 9, "binary, 5 files, 3 links");
    let new_runs: Vec<String> =
        sys.runs()[runs..].iter().map(|(p, a)| format!("{} {}", p.display(), a.join(" "))).collect();
    assert_eq!(
        new_runs,
        vec!["/usr/local/bin/k3s --version".to_string(), format!("/usr/bin/systemctl {}", show("k3s"))]
    );
}

#[test]
fn a_drop_in_added_or_changed_since_k3node_started_k3s_restarts_it_once() {
    let sys = host();
    install_ok(&sys, &server_request());
    let sys = running(sys, "k3s");
    let (report, _) = install_ok(&sys, &server_request());
    assert!(!report.restarted(), "nothing changed: {:?}", report.reasons);

    // Someone drops a file in config.yaml.d and does not restart k3s: it runs without it.
    let dropin = "/etc/rancher/k3s/config.yaml.d/50-labels.yaml";
    let sys = sys.file(dropin, "node-label:\n  - tier=gold\n");
    let (report, _) = install_ok(&sys, &server_request());
    assert!(report.restarted());
    assert_eq!(report.reasons, vec!["drop-ins in /etc/rancher/k3s/config.yaml.d changed since k3node started it"]);
    assert_eq!(report.foreign_dropins.len(), 1, "and it is still warned about: {:?}", report.foreign_dropins);

    // Restarted with it: converged, whatever its formatting becomes.
    let sys = running(sys, "k3s");
    let (report, _) = install_ok(&sys, &server_request());
    assert!(!report.restarted(), "{:?}", report.reasons);
    let sys = sys.file(dropin, "# reformatted\nnode-label: [tier=gold]\n");
    let (report, _) = install_ok(&sys, &server_request());
    assert!(!report.restarted(), "same meaning: {:?}", report.reasons);
    let sys = sys.file(dropin, "node-label: [tier=silver]\n");
    let (report, _) = install_ok(&sys, &server_request());
    assert!(report.restarted(), "a changed drop-in restarts");
}

#[test]
fn a_host_set_up_the_same_way_by_someone_else_is_taken_over_unchanged_without_a_restart() {
    let sys = host();
    install_ok(&sys, &server_request());
    let sys = running(sys, "k3s");
    // No record: k3node never started this k3s (install.sh did, with the same files).
    crate::host::system::HostSystem::remove_file(&sys, Path::new("/var/lib/rancher/k3node/k3s.applied.json")).unwrap();
    let (report, _) = install_ok(&sys, &server_request());
    assert!(!report.restarted(), "{:?}", report.reasons);
    assert!(report.changes.iter().all(|c| c.action == FileAction::Unchanged), "{:#?}", report.changes);
    assert!(sys.contents("/var/lib/rancher/k3node/k3s.applied.json").is_some(), "taken over: recorded");
}

#[test]
fn a_changed_config_restarts_without_daemon_reload() {
    let sys = host();
    install_ok(&sys, &server_request());
    let sys = running(sys, "k3s");
    let before = systemctl_runs(&sys).len();
    let writes = sys.writes().len();

    let mut req = server_request();
    req.config_yaml = Secret::new(format!("{}node-label:\n  - tier=gold\n", req.config_yaml.expose()));
    let (report, _) = install_ok(&sys, &req);
    assert!(report.restarted());
    let config = change(&report, CONFIG_FILE);
    assert_eq!(config.action, FileAction::Updated);
    let diff = config.diff.as_deref().unwrap();
    assert!(diff.starts_with("--- a/etc/rancher/k3s/config.yaml\n+++ b/etc/rancher/k3s/config.yaml\n"), "{diff}");
    assert!(diff.contains("+node-label:\n+  - tier=gold\n") && diff.contains(" token: <redacted>\n"), "{diff}");
    assert!(!diff.contains(SERVER_TOKEN));
    assert_eq!(change(&report, "/etc/systemd/system/k3s.service").action, FileAction::Unchanged);
    assert_eq!(systemctl_runs(&sys)[before..], [show("k3s"), "restart k3s".into(), show("k3s")]);
    let new_writes: Vec<PathBuf> = sys.writes()[writes..]
        .iter()
        .map(|w| match w {
            Write::Atomic { path, .. } => path.clone(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(new_writes, vec![PathBuf::from(CONFIG_FILE), PathBuf::from("/var/lib/rancher/k3node/k3s.applied.json")]);
}

const REGISTRIES: &str = "# Written by k3node\nconfigs:\n  mirror.example:5000:\n    auth:\n      password: reg1stry-pass\n      username: ci\nmirrors:\n  docker.io:\n    endpoint:\n    - https://mirror.example:5000\n";

#[test]
fn registries_yaml_is_written_0600_joins_the_restart_rule_and_its_credentials_stay_masked() {
    let sys = host();
    install_ok(&sys, &server_request());
    let sys = running(sys, "k3s");

    // Added: written 0600, and k3s restarts to read it.
    let mut req = server_request();
    req.registries_yaml = Some(Secret::new(REGISTRIES));
    let (report, _) = install_ok(&sys, &req);
    assert!(report.restarted());
    assert!(
        report.reasons.iter().any(|r| r == "registries.yaml changed since k3node started it"),
        "{:?}",
        report.reasons
    );
    assert_eq!(written(&sys, "/etc/rancher/k3s/registries.yaml"), Some((REGISTRIES.to_string(), 0o600)));
    let diff = change(&report, "/etc/rancher/k3s/registries.yaml").diff.clone().unwrap();
    assert!(diff.contains("+      password: <redacted>") && !diff.contains("reg1stry-pass"), "{diff}");

    // The same again: nothing written, no restart.
    let sys = running(sys, "k3s");
    let writes = sys.writes().len();
    let (report, _) = install_ok(&sys, &req);
    assert!(!report.restarted() && sys.writes().len() == writes, "{:?}", report.reasons);

    // A changed password: the diff says so without showing either value, and k3s restarts.
    req.registries_yaml = Some(Secret::new(REGISTRIES.replace("reg1stry-pass", "n3w-registry-pass")));
    req.dry_run = true;
    let (report, _) = install_ok(&sys, &req);
    let diff = change(&report, "/etc/rancher/k3s/registries.yaml").diff.clone().unwrap();
    assert!(report.restarted(), "a dry run says k3s would restart");
    assert!(
        diff.contains("password: <changed (masked)>") && !diff.contains("reg1stry") && !diff.contains("n3w-"),
        "{diff}"
    );
    assert_eq!(sys.writes().len(), writes, "a dry run writes nothing");

    // The cluster file dropping registries: the file is left alone, and that is no restart.
    let (report, _) = install_ok(&sys, &server_request());
    assert!(!report.restarted(), "{:?}", report.reasons);
    assert!(report.changes.iter().all(|c| c.path != "/etc/rancher/k3s/registries.yaml"));
    assert_eq!(sys.contents("/etc/rancher/k3s/registries.yaml").as_deref(), Some(REGISTRIES));
}

#[test]
fn a_new_binary_restarts_and_shows_the_hashes() {
    let sys = host();
    install_ok(&sys, &server_request());
    let sys = running(sys, "k3s").file(K3S_BIN, "k3s v1.31.5+k3s1");
    let mut req = server_request();
    req.binary_sha256 = crate::digest::sha256_hex(b"k3s v1.31.5+k3s1");
    let (report, _) = install_ok(&sys, &req);
    assert!(report.restarted());
    let binary = change(&report, K3S_BIN);
    assert_eq!(binary.action, FileAction::Updated);
    assert_eq!(binary.diff.as_deref(), Some(format!("sha256 {} → {}", k3s_sha256(), req.binary_sha256).as_str()));
}

#[test]
fn a_stopped_service_is_started_even_when_nothing_changed() {
    let sys = host();
    install_ok(&sys, &server_request());
    let sys = unit(sys, "k3s", "failed", "enabled", "no", INVOCATION);
    let writes = sys.writes().len();
    let (report, _) = install_ok(&sys, &server_request());
    assert!(report.restarted() && report.active);
    assert!(report.changes.iter().all(|c| c.action == FileAction::Unchanged));
    assert_eq!(sys.writes().len(), writes + 1, "only the record is rewritten");
}

#[test]
fn a_unit_systemd_has_not_reloaded_gets_a_daemon_reload() {
    let sys = host();
    install_ok(&sys, &server_request());
    let sys = unit(sys, "k3s", "active", "enabled", "yes", INVOCATION);
    let before = systemctl_runs(&sys).len();
    install_ok(&sys, &server_request());
    assert!(systemctl_runs(&sys)[before..].contains(&"daemon-reload".to_string()));
}

#[test]
fn a_secret_file_with_a_loose_mode_is_rewritten() {
    let sys = host();
    install_ok(&sys, &server_request());
    let sys = running(sys, "k3s").mode(CONFIG_FILE, 0o644);
    let (report, _) = install_ok(&sys, &server_request());
    let config = change(&report, CONFIG_FILE);
    assert_eq!(config.action, FileAction::Updated);
    assert_eq!(config.diff.as_deref(), Some("mode 0644 → 0600"));
    assert_eq!(sys.state().modes[&PathBuf::from(CONFIG_FILE)], 0o600);
}

#[test]
fn a_binary_with_the_wrong_hash_is_refused_before_anything() {
    let sys = host().file(K3S_BIN, "tampered");
    let err = install_err(&sys, &server_request());
    assert!(err.starts_with("/usr/local/bin/k3s has sha256 "), "{err}");
    assert!(
        err.contains(&format!("expected {}: refusing to install or run an unverified binary", k3s_sha256())),
        "{err}"
    );
    assert!(sys.writes().is_empty());
    assert!(sys.runs().is_empty(), "the binary must not even run: {:?}", sys.runs());

    let missing = host().remove(K3S_BIN);
    assert!(install_err(&missing, &server_request()).contains("is missing: the k3s binary must be uploaded"));
    let mut bad = server_request();
    bad.binary_sha256 = "abc".into();
    assert!(install_err(&host(), &bad).contains("is not 64 hex digits"));
}

#[test]
fn the_other_role_installed_is_refused() {
    let sys = host().file("/etc/systemd/system/k3s.service", &unit_text(Role::Server));
    let err = install_err(&sys, &agent_request());
    assert_eq!(
        err,
        "/etc/systemd/system/k3s.service is installed on this host (a server); it cannot also become an agent: \
         run `k3node reset` on this host first to convert it"
    );
    assert!(sys.writes().is_empty() && sys.runs().is_empty());
    let agent = host().file("/etc/systemd/system/k3s-agent.service", &unit_text(Role::Agent));
    assert!(install_err(&agent, &server_request()).contains("(an agent); it cannot also become a server"));
}

#[test]
fn a_failed_restart_shows_the_journal_and_the_likely_cause() {
    let journal = "Starting k3s agent v1.31.4+k3s1 (a1b2c3d4)\n\
        Using token K10f0e1d2c3b4a5968778695a4b3c2d1e0f0e1d2c3b4a5968778695a4b3c2d1e0f::node:9a8b7c6d5e4f\n\
        failed to get CA certs: Get \"https://192.168.56.10:6443/cacerts\": dial tcp 192.168.56.10:6443: connect: connection refused\n";
    let sys = host()
        .output(
            SYSTEMCTL,
            &["restart", "k3s-agent"],
            1,
            "",
            "Job for k3s-agent.service failed because the control process exited with error code.\n",
        )
        .output(JOURNALCTL, &["-u", "k3s-agent", "-n", "20", "--no-pager", "-o", "cat"], 0, journal, "");
    let err = install_err(&sys, &agent_request());
    assert!(
        err.starts_with(
            "k3s-agent did not start: systemctl restart k3s-agent failed: Job for k3s-agent.service failed"
        ),
        "{err}"
    );
    assert!(
        err.contains("\nlikely cause: cannot reach the server at https://192.168.56.10:6443: it is down, or port 6443 is blocked"),
        "{err}"
    );
    assert!(err.contains("\nlast lines of `journalctl -u k3s-agent`:\n  Starting k3s agent"), "{err}");
    assert!(err.contains("  Using token <redacted>\n"), "{err}");
    assert!(!err.contains("9a8b7c6d5e4f"), "{err}");
    assert!(sys.contents("/var/lib/rancher/k3node/k3s-agent.applied.json").is_none(), "no record of a failed start");
}

#[test]
fn a_stray_drop_in_is_warned_about_with_its_keys_and_its_server_is_the_one_the_diagnosis_names() {
    // Someone's drop-in points the agent at another server; k3s lets it win over config.yaml and K3S_URL.
    let journal = "Starting k3s agent v1.31.4+k3s1 (a1b2c3d4)\n\
        failed to get CA certs: Get \"https://10.0.0.99:6443/cacerts\": dial tcp 10.0.0.99:6443: connect: connection refused\n";
    let sys = host()
        .file("/etc/rancher/k3s/config.yaml.d/90-stray.yaml", "server: https://10.0.0.99:6443\nnode-label+:\n  - x=y\n")
        .file("/etc/rancher/k3s/config.yaml.d/README.txt", "not read by k3s\n")
        .output(SYSTEMCTL, &["restart", "k3s-agent"], 1, "", "Job for k3s-agent.service failed.\n")
        .output(JOURNALCTL, &["-u", "k3s-agent", "-n", "20", "--no-pager", "-o", "cat"], 0, journal, "");
    let mut lines = Vec::new();
    let err = install(&sys, &agent_request(), &mut |m| lines.push(m.to_string())).unwrap_err().to_string();
    assert!(
        lines.contains(&"warning: /etc/rancher/k3s/config.yaml.d/90-stray.yaml (not written by k3node) overrides config.yaml: node-label, server".to_string()),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains("README.txt")), "only .yaml/.yml files are drop-ins: {lines:?}");
    assert!(err.contains("likely cause: cannot reach the server at https://10.0.0.99:6443"), "{err}");
    assert!(!err.contains("at https://192.168.56.10:6443"), "the cluster file's server is not the one k3s used: {err}");

    // A dry run lists the drop-in in its report too (`up` shows it as a warning on the host).
    let dry = InstallRequest { dry_run: true, ..agent_request() };
    let (report, _) = install_ok(&sys, &dry);
    assert_eq!(report.foreign_dropins.len(), 1, "{:?}", report.foreign_dropins);
    assert!(report.foreign_dropins[0].contains("90-stray.yaml"), "{:?}", report.foreign_dropins);
}

#[test]
fn a_unit_refused_by_systemds_start_limit_is_reset_once_and_restarted() {
    let sys = host()
        .output_seq(
            SYSTEMCTL,
            &["restart", "k3s-agent"],
            &[(1, "", "Job for k3s-agent.service failed.\n"), (0, "", "")],
        )
        .output(SYSTEMCTL, &["show", "--property=Result", "--value", "k3s-agent"], 0, "start-limit-hit\n", "")
        .output(SYSTEMCTL, &["reset-failed", "k3s-agent"], 0, "", "");
    let (report, lines) = install_ok(&sys, &agent_request());
    assert!(report.restarted());
    let runs = systemctl_runs(&sys);
    let restarts: Vec<usize> =
        runs.iter().enumerate().filter(|(_, r)| r.as_str() == "restart k3s-agent").map(|(i, _)| i).collect();
    assert_eq!(restarts.len(), 2, "{runs:?}");
    assert!(runs[restarts[0]..restarts[1]].contains(&"reset-failed k3s-agent".to_string()), "{runs:?}");
    assert!(lines.iter().any(|l| l.contains("hit systemd's start limit")), "{lines:?}");
    assert!(sys.contents("/var/lib/rancher/k3node/k3s-agent.applied.json").is_some());
}

#[test]
fn a_failed_restart_for_another_reason_is_not_retried() {
    let sys = host().output(SYSTEMCTL, &["restart", "k3s-agent"], 1, "", "Job for k3s-agent.service failed.\n").output(
        SYSTEMCTL,
        &["show", "--property=Result", "--value", "k3s-agent"],
        0,
        "exit-code\n",
        "",
    );
    let err = install_err(&sys, &agent_request());
    assert!(err.starts_with("k3s-agent did not start"), "{err}");
    let runs = systemctl_runs(&sys);
    assert_eq!(runs.iter().filter(|r| r.as_str() == "restart k3s-agent").count(), 1, "{runs:?}");
    assert!(!runs.iter().any(|r| r.starts_with("reset-failed")), "{runs:?}");
}

#[test]
fn a_wrong_token_is_named_as_such() {
    let sys = host().output(SYSTEMCTL, &["restart", "k3s-agent"], 1, "", "Job failed\n").output(
        JOURNALCTL,
        &["-u", "k3s-agent", "-n", "20", "--no-pager", "-o", "cat"],
        0,
        "level=fatal msg=\"Error: token CA hash does not match the Cluster CA certificate hash: 1234 != 5678\"\n",
        "",
    );
    let err = install_err(&sys, &agent_request());
    assert!(
        err.contains(
            "likely cause: the join token does not match the server's CA: a wrong token, or the server was reinstalled"
        ),
        "{err}"
    );
}

#[test]
fn a_server_waits_for_its_node_to_be_ready() {
    let sys = host().output_seq(
        K3S_BIN,
        &kubectl_get_node("server1"),
        &[(0, &node_json("server1", "False"), ""), (0, &node_json("server1", "True"), "")],
    );
    let (report, _) = install_ok(&sys, &server_request());
    assert!(report.active);
    let polls = sys.runs().iter().filter(|(_, a)| a.first().is_some_and(|a| a == "kubectl")).count();
    assert_eq!(polls, 2);
    assert_eq!(sys.now_unix_ms(), NOW_MS + 250, "one poll interval waited");
}

#[test]
fn a_node_never_ready_fails_at_the_deadline() {
    let sys = host().output(K3S_BIN, &kubectl_get_node("server1"), 0, &node_json("server1", "False"), "").output(
        JOURNALCTL,
        &["-u", "k3s", "-n", "20", "--no-pager", "-o", "cat"],
        0,
        "E0102 flannel exited: listen udp :8472: bind: address already in use\n",
        "",
    );
    let mut req = server_request();
    req.ready_timeout_secs = 5;
    let err = install_err(&sys, &req);
    assert!(
        err.starts_with("node server1 was not Ready within 5 s: Ready=False (container runtime network not ready)"),
        "{err}"
    );
    assert!(err.contains("likely cause: a port k3s needs is taken by another program"), "{err}");
    let now = sys.now_unix_ms();
    assert!((NOW_MS + 5000..NOW_MS + 7000).contains(&now), "{now}");
    assert!(sys.contents("/var/lib/rancher/k3node/k3s.applied.json").is_none());
}

#[test]
fn dry_run_reports_masked_diffs_and_changes_nothing() {
    let sys = host();
    let mut req = agent_request();
    req.dry_run = true;
    let (report, _) = install_ok(&sys, &req);
    assert!(sys.writes().is_empty(), "{:#?}", sys.writes());
    assert!(state_changing_runs(&sys).is_empty(), "{:?}", state_changing_runs(&sys));
    assert!(report.restarted(), "a first install would start the service");
    assert!(!report.active);
    let env = change(&report, "/etc/systemd/system/k3s-agent.service.env");
    assert_eq!(env.action, FileAction::Created);
    assert_eq!(
        env.diff.as_deref().unwrap(),
        "--- a/etc/systemd/system/k3s-agent.service.env\n+++ b/etc/systemd/system/k3s-agent.service.env\n\
         @@ -0,0 +1,2 @@\n+K3S_TOKEN=<redacted>\n+K3S_URL='https://192.168.56.10:6443'\n"
    );
    let unit = change(&report, "/etc/systemd/system/k3s-agent.service").diff.clone().unwrap();
    assert!(unit.contains("+ExecStart=/usr/local/bin/k3s \\\n+    agent \\\n+\n"), "{unit}");
    assert_eq!(
        change(&report, "/usr/local/bin/kubectl").diff.as_deref(),
        Some("symlink /usr/local/bin/kubectl -> k3s")
    );
    let shown = serde_json::to_string(&report).unwrap();
    assert!(!shown.contains("9a8b7c6d5e4f"));
}

#[test]
fn dry_run_of_a_new_token_shows_that_a_secret_changed_and_the_restart() {
    let sys = host();
    install_ok(&sys, &agent_request());
    let sys = running(sys, "k3s-agent");
    let writes = sys.writes().len();
    let mut req = agent_request();
    req.env[1].1 =
        Secret::new("K10f0e1d2c3b4a5968778695a4b3c2d1e0f0e1d2c3b4a5968778695a4b3c2d1e0f::node:0000newpassword");
    req.dry_run = true;
    let (report, _) = install_ok(&sys, &req);
    assert_eq!(sys.writes().len(), writes);
    assert!(report.restarted() && report.active);
    let env = change(&report, "/etc/systemd/system/k3s-agent.service.env");
    assert_eq!(env.action, FileAction::Updated);
    // The changed secret says so, instead of showing as an unchanged line.
    let diff = env.diff.as_deref().unwrap();
    assert!(diff.contains("-K3S_TOKEN=<redacted>\n+K3S_TOKEN=<changed (masked)>\n"), "{diff}");
    assert!(!serde_json::to_string(&report).unwrap().contains("newpassword"));
}

#[test]
fn an_invalid_config_is_refused_before_any_write() {
    let sys = host();
    let mut req = server_request();
    req.config_yaml = Secret::new(format!("token: {SERVER_TOKEN}\n  - broken: [\n"));
    let err = install_err(&sys, &req);
    assert!(err.starts_with("/etc/rancher/k3s/config.yaml is not valid YAML"), "{err}");
    assert!(!err.contains("3c9f1b2a7d6e"));
    assert!(sys.writes().is_empty());
}

#[test]
fn version_is_the_second_word_of_the_first_line() {
    assert_eq!(parse_version(VERSION_OUTPUT).as_deref(), Some("v1.31.4+k3s1"));
    assert_eq!(parse_version("k3s version v1.32.0-rc2+k3s1 (abc)\n").as_deref(), Some("v1.32.0-rc2+k3s1"));
    assert_eq!(parse_version("garbage\n"), None);
    let sys = host().output(K3S_BIN, &["--version"], 126, "", "cannot execute binary file: Exec format error\n");
    assert!(install_err(&sys, &server_request()).contains("--version failed: cannot execute binary file"));
}
