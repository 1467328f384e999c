//! The host steps the operator's restore and `up` rely on besides create and restore: the other
//! hosts' steps of a restore, a restore onto another host with that host's own config.yaml, the
//! snapshot timer and what it runs.

use std::path::Path;

use super::testutil::*;
use super::*;
use crate::host::k3s::{K3S_BIN, UNIT_DIR};
use crate::host::system::fake::{FakeSystem, Write};
use crate::host::system::HostSystem;
use crate::protocol::k3s::FileAction;
use crate::protocol::snapshot::{PeerStep, Schedule};
use crate::protocol::Secret;

fn runs(sys: &FakeSystem) -> Vec<String> {
    sys.runs().iter().map(|(p, a)| format!("{} {}", p.display(), a.join(" "))).collect()
}

#[test]
fn a_peer_stop_stops_whichever_k3s_service_the_host_runs_and_a_bare_host_is_left_alone() {
    let agent = with_k3s(FakeSystem::new()).file("/etc/systemd/system/k3s-agent.service", "[Unit]\n").output(
        SYSTEMCTL,
        &["stop", "k3s-agent"],
        0,
        "",
        "",
    );
    let report = peer::run(&agent, &RestorePeer { step: PeerStep::Stop, dry_run: false }, &mut |_| {}).unwrap();
    assert_eq!(report.service.as_deref(), Some("k3s-agent"));
    assert_eq!(runs(&agent), vec![format!("{SYSTEMCTL} stop k3s-agent")]);

    let bare = FakeSystem::new();
    let report = peer::run(&bare, &RestorePeer { step: PeerStep::Stop, dry_run: false }, &mut |_| {}).unwrap();
    assert_eq!(report.service, None);
    assert!(bare.runs().is_empty() && bare.writes().is_empty());
}

#[test]
fn a_rejoining_server_stops_and_moves_its_db_aside_once_and_a_dry_run_only_says_so() {
    let server = fake_etcd_server();
    let planned = peer::run(&server, &RestorePeer { step: PeerStep::Rejoin, dry_run: true }, &mut |_| {}).unwrap();
    let aside = format!("{SERVER}/db.k3node-restore-{STAMP}");
    assert_eq!(planned.actions, vec!["stop k3s".to_string(), format!("move {SERVER}/db aside to {aside}")]);
    assert!(server.writes().iter().all(|w| !format!("{w:?}").contains("k3node-restore")), "a dry run moved nothing");
    let done = peer::run(&server, &RestorePeer { step: PeerStep::Rejoin, dry_run: false }, &mut |_| {}).unwrap();
    assert_eq!(done.moved_aside.len(), 1);
    assert!(server.exists(Path::new(&format!("{aside}/etcd/member/snap/db"))), "the old member's data is kept");
    assert!(!server.exists(Path::new(&format!("{SERVER}/db"))));
    assert!(runs(&server).contains(&format!("{SYSTEMCTL} stop k3s")));
    // Again (an interrupted restore run again): nothing more to move.
    let again = peer::run(&server, &RestorePeer { step: PeerStep::Rejoin, dry_run: false }, &mut |_| {}).unwrap();
    assert!(again.moved_aside.is_empty(), "{again:?}");

    let agent = FakeSystem::new().file("/etc/systemd/system/k3s-agent.service", "[Unit]\n");
    let err = peer::run(&agent, &RestorePeer { step: PeerStep::Rejoin, dry_run: false }, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("only a server rejoins"), "{err}");
}

#[test]
fn a_restore_onto_another_host_runs_k3s_with_that_hosts_own_config_checked_before_anything_stops() {
    let source = fake_server();
    let (created, _) = {
        let mut lines = Vec::new();
        let c = create::create(&source, &create_request(), &mut |m| lines.push(m.to_string())).unwrap();
        (c, lines)
    };
    let target = fake_target().output(
        K3S_BIN,
        &["kubectl", "get", "node", "server2", "-o", "json"],
        0,
        &ready_node("server2"),
        "",
    );
    carry(&source, &target, &created.path);
    let own = "# Written by k3node\nnode-name: server2\nnode-ip: 10.0.0.2\n";
    let request = RestoreSnapshot {
        path: created.path.clone(),
        node_name: "server2".into(),
        allow_version_mismatch: false,
        ready_timeout_secs: 60,
        dry_run: false,
        config_yaml: Some(Secret::new(own)),
        stage_only: false,
        sha256: None,
    };
    let report = restore::restore(&target, &request, &mut |_| {}).unwrap();
    assert_eq!(target.contents("/etc/rancher/k3s/config.yaml").as_deref(), Some(own));
    assert_eq!(target.file_mode(Path::new("/etc/rancher/k3s/config.yaml")).unwrap(), 0o600);
    // Everything else is the snapshot's: token, CA, node password, drop-ins.
    assert_eq!(target.contents(&format!("{SERVER}/token")), Some(token_text()));
    assert!(target.exists(Path::new("/etc/rancher/k3s/config.yaml.d/10-extra.yaml")));
    assert!(report.actions.iter().any(|a| a.contains("own /etc/rancher/k3s/config.yaml")), "{:?}", report.actions);

    // A config.yaml k3s would run elsewhere than the snapshot's data is refused before anything stops.
    let target = fake_target();
    carry(&source, &target, &created.path);
    let before = target.listing();
    let request = RestoreSnapshot { config_yaml: Some(Secret::new("data-dir: /srv/k3s\n")), ..request };
    let err = restore::restore(&target, &request, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("data-dir /srv/k3s"), "{err}");
    assert!(!runs(&target).iter().any(|r| r.contains("stop k3s")));
    // The archive was staged in full before the refusal, and its staging removed.
    assert!(target
        .writes()
        .iter()
        .any(|w| matches!(w, Write::RemoveAll { path } if path.ends_with(format!("server.k3node-staged-{STAMP}")))));
    assert_eq!(target.listing(), before);
}

const SYSTEMD_ANALYZE: &str = "/usr/bin/systemd-analyze";
const SHOW_TIMER: &[&str] =
    &["show", "--property=ActiveState,UnitFileState,NeedDaemonReload,InvocationID,MainPID", "k3node-snapshot.timer"];
const NEXT: &[&str] = &["show", "--property=NextElapseUSecRealtime", "--value", "k3node-snapshot.timer"];

fn schedule(calendar: &str) -> InstallSchedule {
    InstallSchedule {
        schedule: Some(Schedule {
            on_calendar: calendar.into(),
            randomized_delay_secs: 300,
            snapshot: ScheduledSnapshot {
                cluster: "lab".into(),
                node: "server1".into(),
                name_prefix: "scheduled".into(),
                dir: None,
                keep_last: Some(3),
                keep_newer_than_secs: None,
            },
        }),
        dry_run: false,
    }
}

/// A server with systemd and systemd-analyze; the timer not installed yet.
fn timer_host(timer_state: &str) -> FakeSystem {
    with_k3s(FakeSystem::new())
        .command("systemd-analyze", SYSTEMD_ANALYZE)
        .output(SYSTEMD_ANALYZE, &["calendar", "--", "*-*-* 03:00:00"], 0, "", "")
        .output(SYSTEMD_ANALYZE, &["calendar", "--", "Mon 03:00"], 0, "", "")
        .output(
            SYSTEMD_ANALYZE,
            &["calendar", "--", "*-*-* 25:00"],
            1,
            "",
            "Failed to parse calendar specification '*-*-* 25:00': Invalid argument\n",
        )
        .output(SYSTEMCTL, SHOW_TIMER, 0, timer_state, "")
        .output(SYSTEMCTL, &["daemon-reload"], 0, "", "")
        .output(SYSTEMCTL, &["enable", "k3node-snapshot.timer"], 0, "", "")
        .output(SYSTEMCTL, &["start", "k3node-snapshot.timer"], 0, "", "")
        .output(SYSTEMCTL, &["restart", "k3node-snapshot.timer"], 0, "", "")
        .output(SYSTEMCTL, &["disable", "--now", "k3node-snapshot.timer"], 0, "", "")
        .output(SYSTEMCTL, NEXT, 0, "Thu 2025-01-02 03:00:00 UTC\n", "")
}

const INACTIVE: &str = "ActiveState=inactive\nUnitFileState=disabled\nNeedDaemonReload=no\nInvocationID=\nMainPID=0\n";
const ACTIVE: &str = "ActiveState=active\nUnitFileState=enabled\nNeedDaemonReload=no\nInvocationID=\nMainPID=0\n";

#[test]
fn the_timer_is_installed_enabled_and_started_then_left_alone_then_restarted_on_a_new_schedule_then_removed() {
    let sys = timer_host(INACTIVE);
    let report = schedule::install(&sys, &schedule("*-*-* 03:00:00"), &mut |_| {}).unwrap();
    let created: Vec<(&str, FileAction)> = report.changes.iter().map(|c| (c.path.as_str(), c.action)).collect();
    assert_eq!(
        created,
        vec![
            ("/etc/systemd/system/k3node-snapshot.service", FileAction::Created),
            ("/etc/systemd/system/k3node-snapshot.timer", FileAction::Created),
            ("/etc/systemd/system/k3node-snapshot.timer.d/schedule.conf", FileAction::Created),
            ("/var/lib/rancher/k3node/snapshot-schedule.json", FileAction::Created),
        ]
    );
    let service = sys.contents(&format!("{UNIT_DIR}/k3node-snapshot.service")).unwrap();
    assert!(service.contains("ExecStart=/usr/local/bin/k3node host snapshot-scheduled"), "{service}");
    assert!(service.contains("StandardInput=file:/var/lib/rancher/k3node/snapshot-schedule.json"), "{service}");
    let timer = sys.contents(&format!("{UNIT_DIR}/k3node-snapshot.timer")).unwrap();
    assert!(timer.contains("Persistent=true") && timer.contains("RandomizedDelaySec="), "{timer}");
    let dropin = sys.contents(&format!("{UNIT_DIR}/k3node-snapshot.timer.d/schedule.conf")).unwrap();
    assert!(dropin.contains("OnCalendar=\nOnCalendar=*-*-* 03:00:00\nRandomizedDelaySec=300s\n"), "{dropin}");
    // The request the service feeds the helper is one the helper decodes strictly.
    let line = sys.contents(schedule::REQUEST_FILE).unwrap();
    let decoded = crate::protocol::decode_request::<ScheduledSnapshot>(&line).unwrap();
    assert_eq!((decoded.args.node.as_str(), decoded.args.keep_last), ("server1", Some(3)));
    assert_eq!(sys.file_mode(Path::new(schedule::REQUEST_FILE)).unwrap(), 0o600);
    assert_eq!(
        runs(&sys).iter().filter(|r| !r.contains(" show ") && !r.contains("analyze")).cloned().collect::<Vec<_>>(),
        vec![
            format!("{SYSTEMCTL} daemon-reload"),
            format!("{SYSTEMCTL} enable k3node-snapshot.timer"),
            format!("{SYSTEMCTL} start k3node-snapshot.timer"),
        ]
    );
    assert_eq!(report.next, "Thu 2025-01-02 03:00:00 UTC");

    // Installed and running: the same request changes and restarts nothing.
    let sys = sys.output(SYSTEMCTL, SHOW_TIMER, 0, ACTIVE, "");
    let writes = sys.writes().len();
    let before = sys.runs().len();
    let again = schedule::install(&sys, &schedule("*-*-* 03:00:00"), &mut |_| {}).unwrap();
    assert!(again.changes.iter().all(|c| c.action == FileAction::Unchanged), "{again:?}");
    assert!(again.actions.is_empty(), "{:?}", again.actions);
    assert_eq!(sys.writes().len(), writes);
    assert!(sys.runs()[before..].iter().all(|(_, a)| a[0] == "show" || a[0] == "calendar"), "{:?}", runs(&sys));

    // Another calendar: only the drop-in changes, and the running timer is restarted on it.
    let changed = schedule::install(&sys, &schedule("Mon 03:00"), &mut |_| {}).unwrap();
    let updated: Vec<&str> =
        changed.changes.iter().filter(|c| c.action == FileAction::Updated).map(|c| c.path.as_str()).collect();
    assert_eq!(updated, vec!["/etc/systemd/system/k3node-snapshot.timer.d/schedule.conf"]);
    assert!(runs(&sys).contains(&format!("{SYSTEMCTL} restart k3node-snapshot.timer")));

    // No schedule any more: stopped, disabled, every file removed.
    let removed = schedule::install(&sys, &InstallSchedule { schedule: None, dry_run: false }, &mut |_| {}).unwrap();
    assert_eq!(removed.changes.len(), 4);
    assert!(runs(&sys).contains(&format!("{SYSTEMCTL} disable --now k3node-snapshot.timer")));
    for path in ["k3node-snapshot.service", "k3node-snapshot.timer", "k3node-snapshot.timer.d/schedule.conf"] {
        assert!(!sys.exists(&Path::new(UNIT_DIR).join(path)), "{path} stayed");
    }
    assert!(!sys.exists(Path::new(schedule::REQUEST_FILE)));
    // And nothing left to remove: nothing runs.
    let before = sys.runs().len();
    let none = schedule::install(&sys, &InstallSchedule { schedule: None, dry_run: false }, &mut |_| {}).unwrap();
    assert!(none.changes.is_empty() && sys.runs().len() == before);
}

#[test]
fn a_schedule_the_hosts_systemd_refuses_is_refused_before_any_file_is_written() {
    let sys = timer_host(INACTIVE);
    let err = schedule::install(&sys, &schedule("*-*-* 25:00"), &mut |_| {}).unwrap_err();
    assert_eq!(crate::host::error::Failure::kind(&err), crate::protocol::ErrorKind::BadRequest);
    assert!(err.to_string().contains("this host's systemd refuses the schedule"), "{err}");
    assert!(sys.writes().is_empty());
    let dry =
        schedule::install(&sys, &InstallSchedule { dry_run: true, ..schedule("*-*-* 03:00:00") }, &mut |_| {}).unwrap();
    assert_eq!(dry.actions.len(), 3, "{:?}", dry.actions);
    assert!(sys.writes().is_empty(), "a dry run writes nothing");
}

#[test]
fn a_scheduled_snapshot_is_taken_and_only_its_own_prefix_is_pruned_to_the_retention() {
    let sys = fake_server();
    // An on-demand snapshot first: scheduled retention must leave it alone.
    create::create(&sys, &CreateSnapshot { name_prefix: "on-demand".into(), ..create_request() }, &mut |_| {}).unwrap();
    let request = ScheduledSnapshot {
        cluster: "lab".into(),
        node: "server1".into(),
        name_prefix: "scheduled".into(),
        dir: None,
        keep_last: Some(2),
        keep_newer_than_secs: None,
    };
    let mut names = Vec::new();
    for minute in 0..4 {
        let sys = sys.clone().now(NOW_MS + minute * 60_000);
        let done = schedule::scheduled(&sys, &request, &mut |_| {}).unwrap();
        names.push(done.created.name.clone());
        assert!(done.pruned.deleted.iter().all(|n| n.starts_with("scheduled-")), "{:?}", done.pruned);
    }
    let mut left = sys.read_dir_names(Path::new(SNAPSHOTS)).unwrap();
    left.retain(|n| n.ends_with(".tar.zst"));
    left.sort();
    assert_eq!(
        left,
        vec![
            format!("on-demand-server1-{STAMP}.tar.zst"),
            format!("{}.tar.zst", names[2]),
            format!("{}.tar.zst", names[3]),
        ]
    );
    let none = ScheduledSnapshot { keep_last: None, ..request };
    assert!(schedule::scheduled(&sys, &none, &mut |_| {}).unwrap_err().to_string().contains("needs a retention"));
}
