use std::path::{Path, PathBuf};

use super::archive::{self, EntryKind};
use super::testutil::*;
use super::*;
use crate::host::system::fake::{FakeSystem, Write};
use crate::host::system::HostSystem;
use crate::protocol::snapshot::Datastore;
use crate::protocol::Secret;

fn create_ok(sys: &FakeSystem) -> (SnapshotCreated, Vec<String>) {
    let mut lines = Vec::new();
    let created = create::create(sys, &create_request(), &mut |m| lines.push(m.to_string()))
        .unwrap_or_else(|e| panic!("create failed: {e}"));
    (created, lines)
}

fn paths(sys: &FakeSystem, dir: &str) -> Vec<String> {
    let mut names = sys.read_dir_names(Path::new(dir)).unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_snapshot_of_a_sqlite_server_holds_what_a_restore_needs_and_nothing_of_k3s_own() {
    let sys = fake_server();
    let (created, progress) = create_ok(&sys);
    assert_eq!(created.name, format!("k3node-server1-{STAMP}"));
    assert_eq!(created.path, archive_at());
    assert_eq!((created.datastore, created.k3s_version.as_str()), (Datastore::Sqlite, VERSION));
    assert_eq!(created.created, "2025-01-02T03:04:05Z");
    // The archive and its sidecar, 0600 in a 0700 dir, and nothing else left behind.
    assert_eq!(
        paths(&sys, SNAPSHOTS),
        vec![format!("k3node-server1-{STAMP}.tar.zst"), format!("k3node-server1-{STAMP}.tar.zst.sha256")]
    );
    assert_eq!(sys.file_mode(Path::new(&archive_at())).unwrap(), 0o600);
    assert_eq!(sys.file_mode(Path::new(&format!("{}.sha256", archive_at()))).unwrap(), 0o600);
    assert_eq!(sys.file_mode(Path::new(SNAPSHOTS)).unwrap(), 0o700);
    let bytes = sys.bytes(&archive_at()).unwrap();
    assert_eq!(created.size, bytes.len() as u64);
    assert_eq!(created.sha256, crate::digest::sha256_hex(&bytes));
    assert_eq!(
        sys.contents(&format!("{}.sha256", archive_at())).unwrap(),
        format!("{}  k3node-server1-{STAMP}.tar.zst\n", created.sha256)
    );

    let manifest = archive::read_manifest(&sys, Path::new(&archive_at())).unwrap();
    let listed: Vec<(&str, EntryKind)> = manifest.entries.iter().map(|e| (e.path.as_str(), e.kind)).collect();
    use EntryKind::*;
    assert_eq!(
        listed,
        vec![
            ("var/lib/rancher/k3s/server", Dir),
            ("var/lib/rancher/k3s/server/token", File),
            ("var/lib/rancher/k3s/server/tls", Dir),
            ("var/lib/rancher/k3s/server/tls/current-ca.crt", Symlink),
            ("var/lib/rancher/k3s/server/tls/server-ca.crt", File),
            ("var/lib/rancher/k3s/server/tls/server-ca.key", File),
            ("var/lib/rancher/k3s/server/tls/temporary-certs", Dir),
            ("var/lib/rancher/k3s/server/tls/temporary-certs/apiserver-loopback-client__.crt", File),
            ("var/lib/rancher/k3s/server/cred", Dir),
            ("var/lib/rancher/k3s/server/cred/admin.kubeconfig", File),
            ("var/lib/rancher/k3s/server/manifests", Dir),
            ("var/lib/rancher/k3s/server/manifests/app.yaml", File),
            ("var/lib/rancher/k3s/server/manifests/traefik.yaml.skip", File),
            ("var/lib/rancher/k3s/server/db", Dir),
            ("var/lib/rancher/k3s/server/db/state.db", File),
            ("etc/rancher/k3s", Dir),
            ("etc/rancher/k3s/config.yaml", File),
            ("etc/rancher/k3s/config.yaml.d", Dir),
            ("etc/rancher/k3s/config.yaml.d/10-extra.yaml", File),
            ("etc/rancher/k3s/registries.yaml", File),
            ("etc/rancher/node", Dir),
            ("etc/rancher/node/password", File),
            ("etc/systemd/system/k3s.service.env", File),
        ]
    );
    let entry = |p: &str| manifest.entries.iter().find(|e| e.path.ends_with(p)).unwrap();
    assert_eq!(
        (entry("server").mode, entry("server/token").mode, entry("tls/server-ca.crt").mode),
        (0o700, 0o600, 0o644)
    );
    assert_eq!(
        entry("server/token").sha256.as_deref(),
        Some(crate::digest::sha256_hex(token_text().as_bytes()).as_str())
    );
    assert_eq!(entry("tls/current-ca.crt").target.as_deref(), Some("server-ca.crt"));
    // In the tar: the manifest, the entries in its order, the datastore's sha256 right after it
    // (hashed as it streamed in: the manifest, written first, does not list it).
    assert_eq!(entry("server/db/state.db").sha256, None);
    let mut expected = vec![archive::MANIFEST_PATH.to_string()];
    for e in &manifest.entries {
        expected.push(e.path.clone());
        if e.path == manifest.database {
            expected.push(archive::DATABASE_SUM_PATH.to_string());
        }
    }
    let mut tar = tar::Archive::new(zstd::stream::read::Decoder::new(bytes.as_slice()).unwrap());
    let mut in_tar = Vec::new();
    let mut database = Vec::new();
    for item in tar.entries().unwrap() {
        let mut item = item.unwrap();
        let path = item.path().unwrap().display().to_string();
        if path == manifest.database {
            std::io::Read::read_to_end(&mut item, &mut database).unwrap();
        } else if path == archive::DATABASE_SUM_PATH {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut item, &mut text).unwrap();
            assert_eq!(text, format!("{}  {}\n", crate::digest::sha256_hex(&database), manifest.database));
        }
        in_tar.push(path);
    }
    assert_eq!(in_tar, expected);
    assert_eq!((manifest.cluster.as_str(), manifest.node.as_str()), ("lab", "server1"));
    assert_eq!(manifest.database, "var/lib/rancher/k3s/server/db/state.db");
    assert_eq!(manifest.k3node_version, env!("CARGO_PKG_VERSION"));

    // k3s was never stopped nor restarted: only read-only commands ran.
    let runs: Vec<String> = sys.runs().iter().map(|(p, a)| format!("{} {}", p.display(), a.join(" "))).collect();
    assert_eq!(runs, vec![format!("{K3S_BIN} --version")]);
    assert!(progress.iter().any(|l| l.contains("one SQLite read transaction")), "{progress:?}");
    let shown = serde_json::to_string(&created).unwrap() + &progress.join("\n");
    assert!(!shown.contains(PASSWORD), "{shown}");
}

use crate::host::k3s::K3S_BIN;

#[test]
fn a_live_database_that_fails_its_integrity_check_is_refused_after_streaming_and_leaves_no_archive() {
    let sys = with_k3s(FakeSystem::new());
    let mut db = sqlite_db(2000);
    // Scribble over the middle of the file, past the header and the schema page.
    let middle = db.len() / 2;
    db[middle..middle + 3000].fill(0x5a);
    stage_server(&sys, &db);
    let mut progress = Vec::new();
    let error = create::create(&sys, &create_request(), &mut |m| progress.push(m.to_string())).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("fails SQLite's integrity check"), "{message}");
    assert!(message.contains("no snapshot was written"), "{message}");
    // The check came after the bytes were written, and nothing of that write is left.
    let writing = progress.iter().position(|l| l.starts_with("writing ")).unwrap();
    let checking = progress.iter().position(|l| l.contains("PRAGMA integrity_check")).unwrap();
    assert!(writing < checking, "{progress:?}");
    assert_eq!(paths(&sys, SNAPSHOTS), Vec::<String>::new(), "no archive, sidecar, temp file or work dir");
    assert_eq!(runs_of(&sys), vec![format!("{K3S_BIN} --version")], "k3s never touched");
}

#[test]
fn a_fresh_snapshot_verifies_and_lists_with_its_manifest() {
    let sys = fake_server();
    let (created, _) = create_ok(&sys);
    let mut lines = Vec::new();
    let verified = verify::verify_request(&sys, &VerifySnapshot { path: archive_at(), sum_only: false }, &mut |m| {
        lines.push(m.to_string())
    })
    .unwrap();
    assert_eq!((verified.sha256.as_str(), verified.size), (created.sha256.as_str(), created.size));
    assert_eq!(verified.database_check, "PRAGMA integrity_check: ok");
    assert_eq!(verified.manifest.entries, created.entries);
    assert_eq!(paths(&sys, SNAPSHOTS).len(), 2, "verify leaves no temp file");
    let list = retention::list(&sys, &ListSnapshots { dir: None }).unwrap();
    assert_eq!(list.dir, SNAPSHOTS);
    assert_eq!(list.snapshots.len(), 1);
    let one = &list.snapshots[0];
    assert_eq!(
        (one.name.as_str(), one.sha256.as_deref(), one.problem.as_deref()),
        (created.name.as_str(), Some(created.sha256.as_str()), None)
    );
    assert_eq!(one.manifest.as_ref().unwrap().datastore, Datastore::Sqlite);
}

fn restore_request() -> RestoreSnapshot {
    RestoreSnapshot {
        path: archive_at(),
        node_name: "server1".into(),
        allow_version_mismatch: false,
        ready_timeout_secs: 60,
        dry_run: false,
        config_yaml: None,
        stage_only: false,
        sha256: None,
    }
}

/// A target with the source's fresh snapshot carried over.
fn target_with_snapshot(source: &FakeSystem) -> FakeSystem {
    create_ok(source);
    let target = fake_target();
    carry(source, &target, &archive_at());
    target
}

fn restore_with(sys: &FakeSystem, req: &RestoreSnapshot) -> (Result<RestoreReport, SnapshotError>, Vec<String>) {
    let mut lines = Vec::new();
    let result = restore::restore(sys, req, &mut |m| lines.push(m.to_string()));
    (result, lines)
}

fn runs_of(sys: &FakeSystem) -> Vec<String> {
    sys.runs().iter().map(|(p, a)| format!("{} {}", p.display(), a.join(" "))).collect()
}

/// Everything the host was asked to change, but the temp files of the check (removed again).
fn changes(sys: &FakeSystem) -> Vec<Write> {
    sys.writes()
        .into_iter()
        .filter(|w| match w {
            Write::Atomic { path, .. } | Write::CreateDir { path, .. } | Write::RemoveAll { path } => {
                !path.to_string_lossy().contains(".k3node-work-")
            }
            _ => true,
        })
        .collect()
}

const ASIDE: &str = ".k3node-restore-20250102T030405Z";

fn step_names(times: &[crate::protocol::snapshot::StepTime]) -> Vec<String> {
    times.iter().map(|t| t.step.clone()).collect()
}

/// Whatever a staging left beside k3s's files (its paths, and the check's note of it).
fn staging_left(sys: &FakeSystem) -> Vec<String> {
    let mut left: Vec<String> = ["/var/lib/rancher/k3s", "/etc/rancher", "/etc/systemd/system"]
        .iter()
        .flat_map(|dir| paths(sys, dir))
        .filter(|p| p.contains(".k3node-staged-"))
        .collect();
    left.extend(sys.exists(Path::new(RESTORE_STAGED)).then(|| RESTORE_STAGED.to_string()));
    left
}

use crate::host::k3s::RESTORE_STAGED;

#[test]
fn a_check_stages_while_k3s_runs_and_the_restore_after_it_swaps_without_reading_the_archive_again() {
    let source = fake_server();
    let target = target_with_snapshot(&source);
    let sha256 = archive::read_sidecar(&target, Path::new(&archive_at())).unwrap();
    let token = format!("{SERVER}/token");
    let (checked, _) = restore_with(&target, &RestoreSnapshot { stage_only: true, ..restore_request() });
    let checked = checked.unwrap_or_else(|e| panic!("check failed: {e}"));
    assert_eq!(step_names(&checked.staging), ["verify and stage the archive"]);
    assert!(checked.timings.is_empty() && checked.actions[0].starts_with("verify and stage"), "{checked:#?}");
    assert_eq!(runs_of(&target), vec![format!("{K3S_BIN} --version")], "k3s is left running");
    assert_eq!(target.contents(&token).unwrap(), "K10other::server:other\n", "nothing k3s uses changed");
    assert!(!target.exists(Path::new("/var/lib/rancher/k3node/restore.json")), "no restore began");
    assert!(target.exists(Path::new(&format!("{SERVER}.k3node-staged-{STAMP}/token"))));
    assert!(target.file_mode(Path::new(RESTORE_STAGED)).unwrap() == 0o600);

    // Gone now: the restore cannot read the archive again, and need not.
    for path in [archive_at(), format!("{}.sha256", archive_at())] {
        target.remove_file(Path::new(&path)).unwrap();
    }
    let (report, progress) = restore_with(&target, &RestoreSnapshot { sha256: Some(sha256), ..restore_request() });
    let report = report.unwrap_or_else(|e| panic!("restore failed: {e}\n{progress:#?}"));
    assert!(report.staging.is_empty(), "nothing staged by the restore itself: {report:#?}");
    assert!(report.actions[0].starts_with("use the ") && report.actions[0].contains("while k3s ran"), "{report:#?}");
    assert_eq!(
        step_names(&report.timings),
        ["stop k3s", "move the current data aside and the staged data in", "start k3s and wait for the node"]
    );
    assert_eq!(target.contents(&token), source.contents(&token), "the snapshot's token");
    assert_eq!(target.contents(&format!("{SERVER}{ASIDE}/token")).unwrap(), "K10other::server:other\n");
    assert!(target.sqlite_check(Path::new(&format!("{SERVER}/db/state.db"))).unwrap().is_empty());
    assert_eq!(staging_left(&target), Vec::<String>::new());
}

#[test]
fn a_checks_staging_is_used_only_for_its_own_archive_and_config_and_is_otherwise_staged_again() {
    const OTHER_CONFIG: &str = "node-name: server1\nnode-ip: 10.0.0.9\n";
    // The restore request, given the archive's sha256.
    type Request = fn(String) -> RestoreSnapshot;
    let cases: [(&str, Request); 3] = [
        ("no sha256 given", |_| restore_request()),
        ("another archive's sha256", |_| RestoreSnapshot { sha256: Some("0".repeat(64)), ..restore_request() }),
        ("another config.yaml", |sha| RestoreSnapshot {
            sha256: Some(sha),
            config_yaml: Some(Secret::new(OTHER_CONFIG)),
            ..restore_request()
        }),
    ];
    for (case, request) in cases {
        let source = fake_server();
        let target = target_with_snapshot(&source);
        let sha256 = archive::read_sidecar(&target, Path::new(&archive_at())).unwrap();
        let (checked, _) = restore_with(&target, &RestoreSnapshot { stage_only: true, ..restore_request() });
        checked.unwrap_or_else(|e| panic!("{case}: check failed: {e}"));
        let (report, _) = restore_with(&target, &request(sha256));
        let report = report.unwrap_or_else(|e| panic!("{case}: restore failed: {e}"));
        assert_eq!(step_names(&report.staging), ["verify and stage the archive"], "{case}: read and staged again");
        assert!(report.actions[0].starts_with("verify and stage"), "{case}: {:?}", report.actions);
        assert_eq!(target.contents(&format!("{SERVER}/token")), source.contents(&format!("{SERVER}/token")), "{case}");
        if case == "another config.yaml" {
            assert_eq!(target.contents("/etc/rancher/k3s/config.yaml").as_deref(), Some(OTHER_CONFIG), "{case}");
        }
        assert_eq!(staging_left(&target), Vec::<String>::new(), "{case}");
    }
}

#[test]
fn the_sum_only_check_of_an_archive_finds_a_flipped_byte_and_reads_its_manifest() {
    let sys = fake_server();
    let (created, _) = create_ok(&sys);
    let request = VerifySnapshot { path: archive_at(), sum_only: true };
    let checked = verify::verify_request(&sys, &request, &mut |_| {}).unwrap();
    assert_eq!((checked.sha256.as_str(), checked.size), (created.sha256.as_str(), created.size));
    assert_eq!(checked.manifest.entries, created.entries);
    assert!(checked.database_check.contains("sha256 only"), "{}", checked.database_check);
    let mut bytes = sys.bytes(&archive_at()).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    sys.write_atomic(Path::new(&archive_at()), &bytes, 0o600).unwrap();
    let err = verify::verify_request(&sys, &request, &mut |_| {}).unwrap_err();
    assert_eq!(crate::host::error::Failure::kind(&err), crate::protocol::ErrorKind::ChecksumMismatch, "{err}");
    assert!(err.to_string().contains("its sha256 file says"), "{err}");
}

#[test]
fn a_restore_stages_while_k3s_runs_then_stops_it_swaps_the_data_and_waits_for_ready() {
    let source = fake_server();
    let target = target_with_snapshot(&source);
    let before = changes(&target).len();
    let (report, progress) = restore_with(&target, &restore_request());
    let report = report.unwrap_or_else(|e| panic!("restore failed: {e}"));
    let steps = |times: &[crate::protocol::snapshot::StepTime]| -> Vec<String> {
        times.iter().map(|t| t.step.clone()).collect()
    };
    assert_eq!(steps(&report.staging), ["verify and stage the archive"], "before k3s stops");
    assert_eq!(
        steps(&report.timings),
        ["stop k3s", "move the current data aside and the staged data in", "start k3s and wait for the node"],
        "k3s's downtime, step by step"
    );

    assert_eq!(
        runs_of(&target),
        vec![
            format!("{K3S_BIN} --version"),
            format!("{SYSTEMCTL} stop k3s"),
            format!("{SYSTEMCTL} restart k3s"),
            format!("{K3S_BIN} kubectl get node server1 -o json"),
        ]
    );
    let writes = changes(&target)[before..].to_vec();
    // What the archive holds is staged first, then the record, then only renames, then the
    // record again: nothing k3s uses is written but by a rename.
    let record = writes
        .iter()
        .position(|w| matches!(w, Write::Atomic { path, contents, .. } if path == Path::new("/var/lib/rancher/k3node/restore.json") && contents.contains("\"in-progress\"")))
        .expect("the record");
    let staged = format!(".k3node-staged-{STAMP}");
    assert!(writes[..record].iter().all(|w| format!("{w:?}").contains(&staged)), "{:#?}", &writes[..record]);
    assert!(writes[..record]
        .iter()
        .any(|w| matches!(w, Write::Atomic { path, .. } if path == Path::new(&format!("{SERVER}{staged}/token")))));
    let renames: Vec<(String, String)> = writes[record + 1..writes.len() - 1]
        .iter()
        .map(|w| match w {
            Write::Rename { from, to } => (from.display().to_string(), to.display().to_string()),
            other => panic!("only renames while k3s is down: {other:?}"),
        })
        .collect();
    let swapped = |p: &str| [(p.to_string(), format!("{p}{ASIDE}")), (format!("{p}{staged}"), p.to_string())];
    assert_eq!(
        renames,
        [
            swapped(SERVER),
            swapped("/etc/rancher/k3s"),
            swapped("/etc/rancher/node"),
            swapped("/etc/systemd/system/k3s.service.env")
        ]
        .concat()
    );
    assert!(
        matches!(writes.last(), Some(Write::Atomic { path, contents, .. }) if path == Path::new("/var/lib/rancher/k3node/restore.json") && contents.contains("\"restored\""))
    );

    // The snapshot's files, bytes, modes, owners and links; the old data aside; the images left.
    for path in [
        format!("{SERVER}/token"),
        format!("{SERVER}/tls/server-ca.key"),
        "/etc/rancher/k3s/config.yaml".to_string(),
        "/etc/rancher/k3s/config.yaml.d/10-extra.yaml".to_string(),
        "/etc/rancher/node/password".to_string(),
        "/etc/systemd/system/k3s.service.env".to_string(),
    ] {
        assert!(target.bytes(&path) == source.bytes(&path), "{path} differs");
        assert_eq!(target.file_mode(Path::new(&path)).unwrap(), source.file_mode(Path::new(&path)).unwrap(), "{path}");
    }
    assert_eq!(target.file_mode(Path::new(SERVER)).unwrap(), 0o700);
    // The database is the archive's consistent copy, not the live file's bytes.
    let walked = archive::walk(&target, Path::new(&archive_at()), &mut archive::CheckOnly).unwrap();
    let restored_db = crate::digest::sha256_hex(&target.bytes(&format!("{SERVER}/db/state.db")).unwrap());
    assert_eq!(restored_db, walked.database_sha256);
    assert!(target.sqlite_check(Path::new(&format!("{SERVER}/db/state.db"))).unwrap().is_empty());
    assert_eq!(
        target.read_link(Path::new(&format!("{SERVER}/tls/current-ca.crt"))).unwrap(),
        PathBuf::from("server-ca.crt")
    );
    assert!(!target.exists(Path::new(&format!("{SERVER}/db/state.db-wal"))), "no stale WAL beside the restored db");
    assert!(!target.exists(Path::new(&format!("{SERVER}/manifests/coredns.yaml"))), "k3s writes its own again");
    assert_eq!(target.contents(&format!("{SERVER}{ASIDE}/token")).unwrap(), "K10other::server:other\n");
    assert_eq!(target.contents(&format!("{SERVER}{ASIDE}/db/state.db-wal")).unwrap(), "another cluster's log");
    assert_eq!(target.contents("/var/lib/rancher/k3s/agent/images/app.tar").unwrap(), "images stay");
    assert!(writes.iter().any(
        |w| matches!(w, Write::Owner { path, uid: 0, gid: 0 } if path == Path::new(&format!("{SERVER}{staged}/token")))
    ));

    assert_eq!(report.name, format!("k3node-server1-{STAMP}"));
    assert_eq!(report.moved_aside.len(), 4);
    assert_eq!(
        report.restored_entries,
        archive::read_manifest(&target, Path::new(&archive_at())).unwrap().entries.len() as u64
    );
    assert!(report.rollback.contains("snapshot-rollback"), "{}", report.rollback);
    assert!(progress.iter().any(|l| l == "waiting for node server1 to be Ready"), "{progress:?}");
    let shown = serde_json::to_string(&report).unwrap() + &progress.join("\n");
    assert!(!shown.contains(PASSWORD), "{shown}");
}

#[test]
fn a_dry_run_restore_verifies_and_plans_but_changes_nothing() {
    let source = fake_server();
    let target = target_with_snapshot(&source);
    let before = changes(&target).len();
    let (report, _) = restore_with(&target, &RestoreSnapshot { dry_run: true, ..restore_request() });
    let report = report.unwrap();
    assert_eq!(changes(&target).len(), before, "{:#?}", &changes(&target)[before..]);
    assert_eq!(runs_of(&target), vec![format!("{K3S_BIN} --version")]);
    assert!(report.actions[0].starts_with("verify and stage "), "{:?}", report.actions);
    assert_eq!(report.actions[1], "stop k3s");
    assert_eq!(report.actions[2], format!("move {SERVER} aside to {SERVER}{ASIDE}"));
    assert!(report.actions.iter().any(|a| a.contains("state.db-wal")), "{:?}", report.actions);
    assert_eq!(report.actions.last().unwrap(), "wait for node server1 to be Ready");
    assert_eq!(report.rollback, "nothing was changed (dry run)");
}

#[test]
fn a_restore_refused_before_anything_stops_leaves_the_host_as_it_was() {
    type Case = (&'static str, Box<dyn Fn(&FakeSystem)>, RestoreSnapshot, crate::protocol::ErrorKind, &'static str);
    let flip = |sys: &FakeSystem| {
        let mut bytes = sys.bytes(&archive_at()).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        sys.write_atomic(Path::new(&archive_at()), &bytes, 0o600).unwrap();
    };
    use crate::protocol::ErrorKind::*;
    let cases: Vec<Case> = vec![
        ("a flipped byte", Box::new(flip), restore_request(), ChecksumMismatch, "cannot be trusted"),
        (
            "another k3s version",
            Box::new(|s: &FakeSystem| {
                s.state().outputs.insert(
                    (PathBuf::from(K3S_BIN), vec!["--version".into()]),
                    crate::host::system::fake::FakeCommand {
                        result: Ok(crate::host::system::CommandOutput {
                            status: Some(0),
                            stdout: "k3s version v1.30.8+k3s1 (x)\n".into(),
                            stderr: String::new(),
                        }),
                        effects: Vec::new(),
                    },
                );
            }),
            restore_request(),
            Conflict,
            "taken with k3s v1.31.4+k3s1, this host runs k3s v1.30.8+k3s1",
        ),
        (
            "an agent",
            Box::new(|s: &FakeSystem| {
                s.write_atomic(Path::new("/etc/systemd/system/k3s-agent.service"), b"", 0o644).unwrap()
            }),
            restore_request(),
            Conflict,
            "k3s-agent is installed",
        ),
        (
            "no k3s unit",
            Box::new(|s: &FakeSystem| s.remove_file(Path::new("/etc/systemd/system/k3s.service")).unwrap()),
            restore_request(),
            NotInstalled,
            "install k3s v1.31.4+k3s1 on this host first",
        ),
        (
            "no sidecar",
            Box::new(|s: &FakeSystem| s.remove_file(Path::new(&format!("{}.sha256", archive_at()))).unwrap()),
            restore_request(),
            ChecksumMismatch,
            "sha256 file",
        ),
        (
            "a relative path",
            Box::new(|_: &FakeSystem| {}),
            RestoreSnapshot { path: "snap.tar.zst".into(), ..restore_request() },
            BadRequest,
            "absolute",
        ),
        (
            "no archive",
            Box::new(|_: &FakeSystem| {}),
            RestoreSnapshot { path: format!("{SNAPSHOTS}/nope.tar.zst"), ..restore_request() },
            ChecksumMismatch,
            "sha256 file",
        ),
    ];
    let source = fake_server();
    create_ok(&source);
    for (name, spoil, req, kind, words) in cases {
        let target = fake_target();
        carry(&source, &target, &archive_at());
        spoil(&target);
        let before = target.listing();
        let (result, _) = restore_with(&target, &req);
        let err = result.err().unwrap_or_else(|| panic!("{name}: the restore went through"));
        assert_eq!(err.kind(), kind, "{name}: {err}");
        assert!(err.to_string().contains(words), "{name}: {err}");
        assert_eq!(target.listing(), before, "{name}");
        assert!(!runs_of(&target).iter().any(|r| r.contains("systemctl")), "{name}: {:?}", runs_of(&target));
    }
}

#[test]
fn another_version_is_restored_only_when_allowed_and_says_so() {
    let source = fake_server();
    let target = target_with_snapshot(&source);
    let target = target.output(K3S_BIN, &["--version"], 0, "k3s version v1.32.0+k3s1 (x)\n", "");
    let (report, progress) =
        restore_with(&target, &RestoreSnapshot { allow_version_mismatch: true, ..restore_request() });
    report.unwrap();
    assert!(progress
        .iter()
        .any(|l| l.contains("warning: restoring a snapshot of k3s v1.31.4+k3s1 onto k3s v1.32.0+k3s1")));
}

#[test]
fn an_interrupted_restore_says_how_to_go_on_a_rerun_finishes_it_and_a_rollback_undoes_it() {
    let source = fake_server();
    let target =
        target_with_snapshot(&source).output(SYSTEMCTL, &["restart", "k3s"], 1, "", "Job for k3s.service failed");
    let (result, _) = restore_with(&target, &restore_request());
    let err = result.unwrap_err();
    assert_eq!(err.kind(), crate::protocol::ErrorKind::StartFailed, "{err}");
    assert!(err.retryable());
    let message = err.to_string();
    for words in [
        "systemctl restart k3s failed: Job for k3s.service failed",
        "start k3s and wait for the node",
        &format!("{SERVER} -> {SERVER}{ASIDE}"),
        "Run the same restore again",
        "snapshot-rollback",
        "k3s: level=info msg=\"Running\"",
    ] {
        assert!(message.contains(words), "{words}: {message}");
    }
    assert!(target.contents("/var/lib/rancher/k3node/restore.json").unwrap().contains("\"in-progress\""));

    // Another archive cannot begin meanwhile; the host stays as the interruption left it.
    source.state().now_unix_ms += 1000;
    source.write_atomic(Path::new("/etc/rancher/node/password"), b"changed\n", 0o600).unwrap();
    let later = create::create(&source, &create_request(), &mut |_| {}).unwrap();
    carry(&source, &target, &later.path);
    let before = changes(&target).len();
    let (result, _) = restore_with(&target, &RestoreSnapshot { path: later.path.clone(), ..restore_request() });
    let err = result.unwrap_err();
    assert_eq!(err.kind(), crate::protocol::ErrorKind::Conflict, "{err}");
    assert!(
        err.to_string().contains(&format!("the restore of k3node-server1-{STAMP} begun at {STAMP} is not finished")),
        "{err}"
    );
    assert_eq!(changes(&target).len(), before);
    let target = target.output(SYSTEMCTL, &["restart", "k3s"], 0, "", "");

    // The re-run: the plan of the record, nothing moved twice.
    let (report, progress) = restore_with(&target, &restore_request());
    let report = report.unwrap_or_else(|e| panic!("re-run failed: {e}"));
    assert!(progress.iter().any(|l| l.starts_with("finishing the restore of")), "{progress:?}");
    assert_eq!(report.moved_aside.len(), 4);
    let asides: Vec<String> =
        paths(&target, "/var/lib/rancher/k3s").into_iter().filter(|n| n.contains(".k3node-")).collect();
    assert_eq!(asides, vec![format!("server{ASIDE}")]);
    assert!(target.bytes(&format!("{SERVER}/token")) == source.bytes(&format!("{SERVER}/token")));

    // The rollback: the restored data aside, the old data back, k3s restarted on it.
    let mut lines = Vec::new();
    let rollback_req = RollbackRestore { node_name: "server1".into(), ready_timeout_secs: 60, dry_run: false };
    let done = restore::rollback(&target, &rollback_req, &mut |m| lines.push(m.to_string())).unwrap();
    assert_eq!(target.contents(&format!("{SERVER}/token")).unwrap(), "K10other::server:other\n");
    assert_eq!(target.contents(&format!("{SERVER}.k3node-rollback-{STAMP}/token")).unwrap(), token_text());
    assert_eq!(target.contents("/etc/systemd/system/k3s.service.env").unwrap(), "K3S_TOKEN='other'\n");
    assert_eq!(done.moved_back.len(), 4);
    assert_eq!(done.moved_aside.len(), 4);
    assert!(runs_of(&target).ends_with(&[
        format!("{SYSTEMCTL} stop k3s"),
        format!("{SYSTEMCTL} restart k3s"),
        format!("{K3S_BIN} kubectl get node server1 -o json")
    ]));
    assert!(target.contents("/var/lib/rancher/k3node/restore.json").unwrap().contains("\"rolled-back\""));
    // Again: nothing left to do.
    let again = restore::rollback(&target, &rollback_req, &mut |_| {}).unwrap();
    assert!(again.actions.is_empty(), "{again:?}");
}

#[test]
fn a_restore_cut_between_two_renames_is_finished_by_a_rerun_or_undone_by_a_rollback_that_removes_the_unused_staging() {
    let staged = |p: &str| format!("{p}.k3node-staged-{STAMP}");
    for finish in [true, false] {
        let source = fake_server();
        // /etc/rancher/node cannot be moved: the swap stops after the server's data and config.
        let target = target_with_snapshot(&source).read_only("/etc/rancher/node");
        let before = target.listing();
        let (result, _) = restore_with(&target, &restore_request());
        let err = result.unwrap_err();
        assert!(err.to_string().contains("move the current data aside"), "{err}");
        assert!(err.to_string().contains("Run the same restore again"), "{err}");
        assert_eq!(target.contents(&format!("{SERVER}/token")), Some(token_text()), "the server's data is in");
        assert_eq!(target.contents("/etc/rancher/node/password").unwrap(), "other password\n");
        assert!(target.exists(Path::new(&staged("/etc/rancher/node"))), "the node's part is still staged");
        assert!(!target.exists(Path::new(&staged(SERVER))));
        target.state().read_only.clear();

        if finish {
            let (report, progress) = restore_with(&target, &restore_request());
            let report = report.unwrap_or_else(|e| panic!("re-run failed: {e}"));
            assert!(progress.iter().any(|l| l.starts_with("finishing the restore of")), "{progress:?}");
            assert!(report.staging.is_empty(), "{:?}", report.staging);
            assert_eq!(report.actions[0], "stop k3s", "{:?}", report.actions);
            assert!(!progress.iter().any(|l| l.contains("staging")), "not staged again: {progress:?}");
            assert!(target.bytes("/etc/rancher/node/password") == source.bytes("/etc/rancher/node/password"));
            assert_eq!(target.contents(&format!("/etc/rancher/node{ASIDE}/password")).unwrap(), "other password\n");
            assert!(!target.exists(Path::new(&staged("/etc/rancher/node"))));
        } else {
            let rollback_req = RollbackRestore { node_name: "server1".into(), ready_timeout_secs: 60, dry_run: false };
            let done = restore::rollback(&target, &rollback_req, &mut |_| {}).unwrap();
            assert!(
                done.actions.contains(&format!("remove {} (staged, never moved in)", staged("/etc/rancher/node"))),
                "{:?}",
                done.actions
            );
            // The host holds what it held, but for the restored data put aside and the record.
            let now: std::collections::BTreeMap<_, _> = target
                .listing()
                .into_iter()
                .filter(|(p, _)| {
                    let p = p.to_string_lossy();
                    !p.contains(".k3node-rollback-") && !p.starts_with("/var/lib/rancher/k3node/restore.json")
                })
                .collect();
            assert_eq!(now, before);
        }
    }
}

#[test]
fn an_etcd_server_is_snapshotted_with_k3s_etcd_snapshot_and_restored_with_a_cluster_reset() {
    let source = fake_etcd_server();
    let (created, progress) = create_ok(&source);
    assert_eq!(created.datastore, Datastore::Etcd);
    assert!(progress.iter().any(|l| l.contains("k3s etcd-snapshot save")), "{progress:?}");
    assert!(runs_of(&source).contains(&format!("{K3S_BIN} etcd-snapshot save --name k3node --dir {}", etcd_work_dir())));
    let manifest = archive::read_manifest(&source, Path::new(&archive_at())).unwrap();
    assert_eq!(manifest.database, format!("var/lib/rancher/k3s/server/db/snapshots/{ETCD_FILE}"));
    assert!(manifest.entries.iter().any(|e| e.path == "var/lib/rancher/k3s/server/tls/etcd/server-ca.crt"));
    assert!(!manifest.entries.iter().any(|e| e.path.contains("db/etcd")), "the live etcd dir is not copied");
    assert_eq!(paths(&source, SNAPSHOTS).len(), 2, "the work dir is gone");
    let verified =
        verify::verify_request(&source, &VerifySnapshot { path: archive_at(), sum_only: false }, &mut |_| {}).unwrap();
    assert_eq!(verified.database_check, "etcd snapshot integrity hash: ok");

    let target = fake_target();
    carry(&source, &target, &archive_at());
    let snapshot = format!("{SERVER}/db/snapshots/{ETCD_FILE}");
    let reset = [
        "server",
        "--cluster-reset",
        &format!("--cluster-reset-restore-path={snapshot}"),
        &format!("--token-file={SERVER}/token"),
    ];
    let done = "time=\"2025-01-02T03:04:09Z\" level=info msg=\"Managed etcd cluster membership has been reset, restart without --cluster-reset flag now. Backup and delete ${datadir}/server/db on each peer etcd server and rejoin the nodes\"\n";
    let target = target.output(K3S_BIN, &reset, 0, "", done);
    let (report, _) = restore_with(&target, &restore_request());
    let report = report.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        runs_of(&target),
        vec![
            format!("{K3S_BIN} --version"),
            format!("{SYSTEMCTL} stop k3s"),
            format!("{K3S_BIN} {}", reset.join(" ")),
            format!("{SYSTEMCTL} restart k3s"),
            format!("{K3S_BIN} kubectl get node server1 -o json"),
        ]
    );
    assert!(
        target.bytes(&snapshot) == Some(fake_snapshot(64, 9)),
        "the snapshot k3s saved is where the reset reads it"
    );
    assert_eq!(
        target.contents(&format!("{SERVER}{ASIDE}/db/state.db-wal")).unwrap(),
        "another cluster's log",
        "moved aside, not deleted"
    );
    assert!(report.actions.iter().any(|a| a.contains("--cluster-reset")), "{:?}", report.actions);
    assert!(!report.actions.iter().any(|a| a.contains(PASSWORD)));

    // A reset that does not say it is done is a failure, with k3s's words.
    let again = fake_target();
    carry(&source, &again, &archive_at());
    let again = again.output(K3S_BIN, &reset, 1, "", "level=fatal msg=\"starting kubernetes: preparing server: bootstrap data already found and encrypted with different token\"\n");
    let (result, _) = restore_with(&again, &restore_request());
    let err = result.unwrap_err();
    assert_eq!(err.kind(), crate::protocol::ErrorKind::StartFailed);
    let message = err.to_string();
    assert!(
        message.contains("encrypted with different token")
            && message.contains("reset the etcd cluster")
            && message.contains("Run the same restore again"),
        "{message}"
    );
    assert!(!runs_of(&again).iter().any(|r| r.contains("restart")), "k3s is not started on a failed reset");
}

#[test]
fn an_etcd_snapshot_of_a_server_that_joined_another_is_refused_before_anything_stops() {
    let source = fake_etcd_server();
    source
        .write_atomic(
            Path::new("/etc/rancher/k3s/config.yaml.d/50-join.yaml"),
            b"server: https://10.0.0.1:6443\n",
            0o600,
        )
        .unwrap();
    create_ok(&source);
    let target = fake_target();
    carry(&source, &target, &archive_at());
    let before = target.listing();
    let (result, _) = restore_with(&target, &restore_request());
    let err = result.unwrap_err();
    assert_eq!(err.kind(), crate::protocol::ErrorKind::Conflict);
    assert!(err.to_string().contains("k3s refuses --cluster-reset while `server` is set"), "{err}");
    assert_eq!(target.listing(), before);
}

#[test]
fn a_restore_onto_a_fresh_host_moves_nothing_and_its_rollback_leaves_k3s_stopped() {
    let source = fake_server();
    create_ok(&source);
    let target = with_k3s(FakeSystem::new());
    target.write_atomic(Path::new("/etc/systemd/system/k3s.service"), b"[Unit]\n", 0o644).unwrap();
    carry(&source, &target, &archive_at());
    let (report, _) = restore_with(&target, &restore_request());
    let report = report.unwrap();
    assert!(report.moved_aside.is_empty());
    assert!(report.rollback.contains("nothing was there to move aside"), "{}", report.rollback);
    assert!(target.bytes(&format!("{SERVER}/token")) == source.bytes(&format!("{SERVER}/token")));

    let req = RollbackRestore { node_name: "server1".into(), ready_timeout_secs: 60, dry_run: true };
    let plan = restore::rollback(&target, &req, &mut |_| {}).unwrap();
    assert_eq!(plan.moved_back, vec![]);
    assert_eq!(plan.moved_aside.len(), 4, "{plan:?}");
    assert_eq!(plan.actions.last().unwrap(), "leave k3s stopped: there was no k3s data before the restore");
    let runs = runs_of(&target).len();
    let done = restore::rollback(&target, &RollbackRestore { dry_run: false, ..req }, &mut |_| {}).unwrap();
    assert_eq!(done.moved_aside, plan.moved_aside);
    assert!(!target.exists(Path::new(SERVER)));
    assert_eq!(target.contents(&format!("{SERVER}.k3node-rollback-{STAMP}/token")).unwrap(), token_text());
    assert_eq!(runs_of(&target)[runs..], [format!("{SYSTEMCTL} stop k3s")]);
}

#[test]
fn a_rollback_without_a_restore_says_there_is_none() {
    let err = restore::rollback(
        &fake_target(),
        &RollbackRestore { node_name: "server1".into(), ready_timeout_secs: 60, dry_run: false },
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(err.kind(), crate::protocol::ErrorKind::NotInstalled);
    assert!(err.to_string().contains("no restore to roll back"), "{err}");
}

/// Snapshots taken `count` seconds apart, the newest last.
fn snapshots_over_time(count: i64) -> (FakeSystem, Vec<String>) {
    let sys = fake_server();
    let mut names = Vec::new();
    for i in 0..count {
        sys.state().now_unix_ms = NOW_MS + i * 86_400_000;
        names.push(create::create(&sys, &create_request(), &mut |_| {}).unwrap().name);
    }
    (sys, names)
}

fn prune_req(keep_last: Option<u32>, keep_newer_than: Option<&str>, dry_run: bool) -> PruneSnapshots {
    PruneSnapshots {
        dir: None,
        name_prefix: None,
        keep_last,
        keep_newer_than: keep_newer_than.map(str::to_string),
        dry_run,
    }
}

#[test]
fn prune_keeps_the_newest_by_count_and_by_age_and_never_the_last_one() {
    let (sys, names) = snapshots_over_time(5);
    let list = retention::list(&sys, &ListSnapshots { dir: None }).unwrap();
    let listed: Vec<&str> = list.snapshots.iter().map(|s| s.name.as_str()).collect();
    let newest_first: Vec<&str> = names.iter().rev().map(String::as_str).collect();
    assert_eq!(listed, newest_first);

    let plan = retention::prune(&sys, &prune_req(Some(2), None, true), &mut |_| {}).unwrap();
    assert_eq!(plan.kept, names[3..].iter().rev().cloned().collect::<Vec<_>>());
    assert_eq!(plan.deleted, names[..3].to_vec(), "oldest first");
    assert_eq!(paths(&sys, SNAPSHOTS).len(), 10, "a dry run deletes nothing");

    // Newer than the third day's: the last three; with a count of 4, the union.
    let by_age = retention::prune(&sys, &prune_req(None, Some("2025-01-04T00:00:00Z"), true), &mut |_| {}).unwrap();
    assert_eq!(by_age.deleted, names[..2].to_vec());
    let union = retention::prune(&sys, &prune_req(Some(4), Some("2025-01-06T00:00:00Z"), true), &mut |_| {}).unwrap();
    assert_eq!(union.deleted, names[..1].to_vec());
    // A policy that keeps nothing still keeps the newest.
    let nothing = retention::prune(&sys, &prune_req(Some(0), Some("2031-01-01T00:00:00Z"), true), &mut |_| {}).unwrap();
    assert_eq!(nothing.kept, vec![names[4].clone()]);

    let mut lines = Vec::new();
    let done = retention::prune(&sys, &prune_req(Some(2), None, false), &mut |m| lines.push(m.to_string())).unwrap();
    assert_eq!(done.deleted, plan.deleted);
    let left: Vec<String> = paths(&sys, SNAPSHOTS);
    let expected: Vec<String> =
        names[3..].iter().flat_map(|n| [format!("{n}.tar.zst"), format!("{n}.tar.zst.sha256")]).collect();
    assert_eq!(left, expected, "each archive went with its sidecar");
    assert_eq!(lines.len(), 3);
}

#[test]
fn prune_leaves_unreadable_archives_and_other_prefixes_alone_and_needs_a_policy() {
    let (sys, names) = snapshots_over_time(3);
    sys.write_atomic(Path::new(&format!("{SNAPSHOTS}/garbage.tar.zst")), b"not zstd", 0o600).unwrap();
    sys.write_atomic(
        Path::new(&format!("{SNAPSHOTS}/garbage.tar.zst.sha256")),
        format!("{}  garbage.tar.zst\n", "0".repeat(64)).as_bytes(),
        0o600,
    )
    .unwrap();
    let list = retention::list(&sys, &ListSnapshots { dir: None }).unwrap();
    let garbage = list.snapshots.last().unwrap();
    assert_eq!(garbage.name, "garbage");
    assert!(
        garbage.manifest.is_none() && garbage.problem.as_deref().unwrap_or("").contains("does not decode"),
        "{garbage:?}"
    );
    // Remove one sidecar: listed with the problem.
    sys.remove_file(Path::new(&format!("{SNAPSHOTS}/{}.tar.zst.sha256", names[1]))).unwrap();
    let list = retention::list(&sys, &ListSnapshots { dir: None }).unwrap();
    let no_sidecar = list.snapshots.iter().find(|s| s.name == names[1]).unwrap();
    assert!(
        no_sidecar.sha256.is_none() && no_sidecar.problem.as_deref().unwrap().contains("is missing"),
        "{no_sidecar:?}"
    );

    let pruned = retention::prune(&sys, &prune_req(Some(1), None, false), &mut |_| {}).unwrap();
    assert_eq!(pruned.deleted, names[..2].to_vec());
    assert_eq!(pruned.skipped.len(), 1);
    assert!(pruned.skipped[0].starts_with("garbage: "), "{:?}", pruned.skipped);
    assert!(sys.exists(Path::new(&format!("{SNAPSHOTS}/garbage.tar.zst"))));

    let other_prefix = PruneSnapshots { name_prefix: Some("nightly".into()), ..prune_req(Some(1), None, false) };
    let untouched = retention::prune(&sys, &other_prefix, &mut |_| {}).unwrap();
    assert!(untouched.deleted.is_empty() && untouched.kept.is_empty());
    let err = retention::prune(&sys, &prune_req(None, None, false), &mut |_| {}).unwrap_err();
    assert_eq!(err.kind(), crate::protocol::ErrorKind::BadRequest);
    let err = retention::prune(&sys, &prune_req(None, Some("yesterday"), false), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("not an RFC 3339 time"), "{err}");
    // No directory yet: nothing to list.
    let empty = retention::list(&FakeSystem::new(), &ListSnapshots { dir: Some("/srv/none".into()) }).unwrap();
    assert!(empty.snapshots.is_empty());
}

#[test]
fn a_snapshot_refuses_links_out_of_k3s_files_and_special_files_and_leaves_nothing_behind() {
    type Spoil = fn(&FakeSystem);
    let cases: [(&str, Spoil, &str); 4] = [
        (
            "a link out",
            |s| {
                s.symlink_atomic(Path::new("/etc/shadow"), Path::new(&format!("{SERVER}/manifests/evil.yaml"))).unwrap()
            },
            "manifests/evil.yaml links to \"/etc/shadow\", outside what a snapshot holds",
        ),
        (
            "a relative link out",
            |s| s.symlink_atomic(Path::new("../../../../../../etc"), Path::new(&format!("{SERVER}/tls/up"))).unwrap(),
            "tls/up links to \"../../../../../../etc\"",
        ),
        (
            "a fifo",
            |s| {
                s.state().special.insert(PathBuf::from(format!("{SERVER}/cred/pipe")));
            },
            "cred/pipe is a device, fifo or socket",
        ),
        (
            "config.yaml as a link",
            |s| {
                s.remove_file(Path::new("/etc/rancher/k3s/config.yaml")).unwrap();
                s.symlink_atomic(Path::new("/srv/config.yaml"), Path::new("/etc/rancher/k3s/config.yaml")).unwrap();
            },
            "config.yaml links to \"/srv/config.yaml\"",
        ),
    ];
    for (name, spoil, words) in cases {
        let sys = fake_server();
        spoil(&sys);
        let err = create::create(&sys, &create_request(), &mut |_| {}).unwrap_err();
        assert_eq!(err.kind(), crate::protocol::ErrorKind::Failed, "{name}: {err}");
        assert!(err.to_string().contains(words), "{name}: {err}");
        assert!(paths(&sys, SNAPSHOTS).is_empty(), "{name}: {:?}", paths(&sys, SNAPSHOTS));
    }
    // A link inside the set is kept as a link.
    let sys = fake_server();
    sys.symlink_atomic(Path::new("../token"), Path::new(&format!("{SERVER}/manifests/token-link"))).unwrap();
    create_ok(&sys);
}

#[test]
fn a_snapshot_needs_a_started_server_and_names_it_can_put_in_a_file_name() {
    let agent = with_k3s(FakeSystem::new());
    let err = create::create(&agent, &create_request(), &mut |_| {}).unwrap_err();
    assert_eq!(err.kind(), crate::protocol::ErrorKind::NotInstalled);
    assert!(err.to_string().contains("server/token does not exist: not a server"), "{err}");
    let no_db = fake_server();
    no_db.remove_file(Path::new(&format!("{SERVER}/db/state.db"))).unwrap();
    let err = create::create(&no_db, &create_request(), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("holds neither etcd/ nor state.db"), "{err}");
    for (req, words) in [
        (CreateSnapshot { name_prefix: "../x".into(), ..create_request() }, "the name prefix \"../x\""),
        (CreateSnapshot { node: "a b".into(), ..create_request() }, "the node name \"a b\""),
        (CreateSnapshot { dir: Some("snapshots".into()), ..create_request() }, "absolute"),
        (CreateSnapshot { cluster: " ".into(), ..create_request() }, "cluster name is empty"),
    ] {
        let err = create::create(&fake_server(), &req, &mut |_| {}).unwrap_err();
        assert_eq!(err.kind(), crate::protocol::ErrorKind::BadRequest, "{err}");
        assert!(err.to_string().contains(words), "{err}");
    }
}

#[test]
fn a_create_sweeps_what_a_killed_one_left_and_never_reuses_a_name() {
    let sys = fake_server();
    let stale = [
        format!("{SNAPSHOTS}/.k3node-work-k3node-server1-20241231T000000Z/files/000001"),
        format!("{SNAPSHOTS}/.k3node-server1-x.tar.zst.Ab12.k3node-tmp"),
        format!("{SNAPSHOTS}/orphan.tar.zst.sha256"),
    ];
    for path in &stale {
        sys.write_atomic(Path::new(path), b"left over", 0o600).unwrap();
    }
    // A verify of a process that still runs keeps its dir; one of a process gone does not.
    let running = format!("{SNAPSHOTS}/.k3node-work-verify-4242-00000000000000aa/state.db");
    let gone = format!("{SNAPSHOTS}/.k3node-work-verify-4343-00000000000000bb/state.db");
    let sys = sys.dir("/proc/4242").file(&running, "checking").file(&gone, "killed");
    let first = create_ok(&sys).0;
    let second = create_ok(&sys).0;
    assert_eq!(second.name, format!("{}-2", first.name), "same second, another name");
    let names = paths(&sys, SNAPSHOTS);
    assert_eq!(names.len(), 5, "{names:?}");
    assert_eq!(names[0], ".k3node-work-verify-4242-00000000000000aa");
    assert!(names[1..].iter().all(|n| n.starts_with("k3node-server1-")), "{names:?}");
}

mod serve {
    use super::*;
    use crate::protocol::{encode_request, AnswerLine, ErrorKind, Operation, WireError};

    fn serve_line(sys: &FakeSystem, op: &str, line: &str) -> (i32, Vec<AnswerLine>) {
        let mut out = Vec::new();
        let status = crate::host::serve(op, sys, &mut format!("{line}\n").as_bytes(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains(PASSWORD), "a secret left the host: {text}");
        (status, text.lines().map(|l| serde_json::from_str(l).unwrap()).collect())
    }

    fn serve<O: Operation>(sys: &FakeSystem, request: &O) -> (i32, Vec<AnswerLine>) {
        let line = String::from_utf8(encode_request(request, None)).unwrap();
        serve_line(sys, O::NAME, line.trim_end())
    }

    /// The one result line, after any progress lines.
    fn result<T: serde::de::DeserializeOwned>(status: i32, lines: &[AnswerLine]) -> T {
        assert_eq!(status, 0, "{lines:?}");
        let (last, before) = lines.split_last().unwrap();
        assert!(before.iter().all(|l| matches!(l, AnswerLine::Progress { .. })), "{lines:?}");
        let AnswerLine::Result { value } = last else { panic!("{lines:?}") };
        serde_json::from_value(value.clone()).unwrap()
    }

    fn error(status: i32, lines: &[AnswerLine]) -> WireError {
        assert_eq!(status, 1, "{lines:?}");
        let Some(AnswerLine::Error(e)) = lines.last() else { panic!("{lines:?}") };
        e.clone()
    }

    #[test]
    fn create_answers_the_archive_after_its_progress() {
        let sys = fake_server();
        let (status, lines) = serve_line(
            &sys,
            "snapshot-create",
            r#"{"op":"snapshot-create","args":{"cluster":"lab","node":"server1","name_prefix":"k3node"}}"#,
        );
        let created: SnapshotCreated = result(status, &lines);
        assert_eq!(created.path, archive_at());
        assert!(lines.len() > 3, "progress first: {lines:?}");
        let (status, lines) = serve_line(
            &sys,
            "snapshot-create",
            r#"{"op":"snapshot-create","args":{"cluster":"lab","node":"server1"}}"#,
        );
        assert_eq!(error(status, &lines).kind, ErrorKind::BadRequest);
    }

    #[test]
    fn list_and_verify_answer_what_they_read() {
        let sys = fake_server();
        create_ok(&sys);
        let (status, lines) = serve_line(&sys, "snapshot-list", r#"{"op":"snapshot-list","args":{}}"#);
        let list: SnapshotList = result(status, &lines);
        assert_eq!(list.snapshots.len(), 1);
        let verified: SnapshotVerified = {
            let (status, lines) = serve(&sys, &VerifySnapshot { path: archive_at(), sum_only: false });
            result(status, &lines)
        };
        assert_eq!(verified.database_check, "PRAGMA integrity_check: ok");
        let mut bytes = sys.bytes(&archive_at()).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        sys.write_atomic(Path::new(&archive_at()), &bytes, 0o600).unwrap();
        let (status, lines) = serve(&sys, &VerifySnapshot { path: archive_at(), sum_only: false });
        let e = error(status, &lines);
        assert_eq!((e.kind, e.retryable), (ErrorKind::ChecksumMismatch, false), "{}", e.message);
    }

    #[test]
    fn prune_answers_what_it_deleted_and_a_dry_run_takes_no_lock() {
        let (sys, names) = snapshots_over_time(3);
        let holder = crate::protocol::LockHolder {
            token: "other-run".into(),
            operation: "up".into(),
            from: "alice@laptop".into(),
            started_at: "2025-01-02T03:04:05Z".into(),
            pid: 0,
        };
        let lock = crate::host::lock::take(&sys, &holder).unwrap();
        let (status, lines) = serve(&sys, &prune_req(Some(1), None, true));
        let plan: SnapshotsPruned = result(status, &lines);
        assert_eq!(plan.deleted, names[..2].to_vec());
        let (status, lines) = serve(&sys, &prune_req(Some(1), None, false));
        assert_eq!(error(status, &lines).kind, ErrorKind::Conflict, "a prune waits for no other run's lock");
        drop(lock);
        let (status, lines) = serve(&sys, &prune_req(Some(1), None, false));
        let done: SnapshotsPruned = result(status, &lines);
        assert_eq!(done.deleted, plan.deleted);
    }

    #[test]
    fn restore_and_rollback_answer_their_reports() {
        let source = fake_server();
        let target = target_with_snapshot(&source);
        let (status, lines) = serve(&target, &restore_request());
        let report: RestoreReport = result(status, &lines);
        assert_eq!(report.moved_aside.len(), 4);
        assert!(lines.iter().any(|l| matches!(l, AnswerLine::Progress { message } if message == "stopping k3s")));
        let (status, lines) =
            serve(&target, &RollbackRestore { node_name: "server1".into(), ready_timeout_secs: 60, dry_run: false });
        let back: RollbackReport = result(status, &lines);
        assert_eq!(back.moved_back.len(), 4);
        let missing = r#"{"op":"snapshot-restore","args":{"path":"/a.tar.zst","node_name":"server1","ready_timeout_secs":60,"dry_run":false}}"#;
        let (status, lines) = serve_line(&target, "snapshot-restore", missing);
        let e = error(status, &lines);
        assert!(e.kind == ErrorKind::BadRequest && e.message.contains("allow_version_mismatch"), "{e:?}");
    }

    #[test]
    fn hello_says_this_helper_does_snapshots() {
        let (status, lines) = serve_line(&FakeSystem::new(), "hello", r#"{"op":"hello","args":{}}"#);
        let hello: crate::protocol::HelloAnswer = result(status, &lines);
        assert!(hello.capabilities.iter().any(|c| c == "snapshots"), "{hello:?}");
        assert_eq!(hello.protocol, crate::protocol::PROTOCOL_VERSION);
    }
}

#[test]
fn a_second_restore_in_the_same_second_moves_the_first_ones_data_aside_under_another_name() {
    let source = fake_server();
    let target = target_with_snapshot(&source);
    restore_with(&target, &restore_request()).0.unwrap();
    let (again, _) = restore_with(&target, &restore_request());
    let again = again.unwrap();
    assert_eq!(again.moved_aside[0].to, format!("{SERVER}{ASIDE}-2"));
    assert_eq!(
        target.contents(&format!("{SERVER}{ASIDE}/token")).unwrap(),
        "K10other::server:other\n",
        "the first aside stays"
    );
    assert_eq!(target.contents(&format!("{SERVER}{ASIDE}-2/token")).unwrap(), token_text());
}

#[test]
fn long_names_and_link_targets_survive_the_archive() {
    let sys = fake_server();
    let long = format!("{SERVER}/manifests/{}/{}.yaml", "team-".repeat(30), "app-".repeat(40));
    sys.write_atomic(Path::new(&long), b"kind: ConfigMap\n", 0o600).unwrap();
    let target = format!("{}/{}.yaml", "team-".repeat(30), "app-".repeat(40));
    sys.symlink_atomic(Path::new(&target), Path::new(&format!("{SERVER}/manifests/current.yaml"))).unwrap();
    create_ok(&sys);
    let (walked, _) = verify::verify(&sys, Path::new(&archive_at())).unwrap();
    let entry = walked.manifest.entries.iter().find(|e| Path::new("/").join(&e.path) == Path::new(&long)).unwrap();
    assert!(entry.path.len() > 300);
    let link = walked.manifest.entries.iter().find(|e| e.path.ends_with("manifests/current.yaml")).unwrap();
    assert_eq!(link.target.as_deref(), Some(target.as_str()));
}
