//! `k3node snapshot` over an in-memory server (the helper's own code in this process): each
//! command through its phases, and a pull that lands only a verified archive on this machine.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::host::snapshot::testutil::{fake_server, SNAPSHOTS};
use crate::host::system::fake::FakeSystem;
use crate::operator::engine::PhaseState;
use crate::operator::progress::Silent;

const CLUSTER: &str = "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: lab\nspec:\n  hosts:\n    - name: server1\n      address: 10.9.0.1\n      role: server\n";

fn cluster() -> Arc<ClusterFile> {
    Arc::new(crate::cluster::parse("cluster.yaml", Path::new("/srv"), CLUSTER).unwrap())
}

async fn run_on(sys: &FakeSystem, work: &Work) -> SnapshotOutcome {
    let cluster = cluster();
    let fleet = Fleet::in_process(&cluster, |_| Arc::new(sys.clone()));
    run(cluster, fleet, work, 2, Arc::new(Silent)).await
}

#[tokio::test]
async fn create_list_verify_and_prune_run_on_the_server_and_report_each_archive() {
    let sys = fake_server();
    let created = run_on(&sys, &Work::Create).await;
    assert!(created.succeeded(), "{:#?}", created.report);
    let phases: Vec<(&str, PhaseState)> = created.report.phases.iter().map(|p| (p.name, p.state)).collect();
    assert_eq!(phases, vec![("connect", PhaseState::Done), ("lock", PhaseState::Done), ("create", PhaseState::Done)]);
    let first = &created.snapshots[0];
    assert!(first.name.starts_with("on-demand-server1-") && first.state == "created", "{first:?}");
    assert!(sys.state().locks.is_empty(), "the run released its lock");

    let again = run_on(&sys, &Work::Create).await;
    let second = &again.snapshots[0];
    assert_ne!(second.name, first.name, "a snapshot of the same second gets a name of its own");

    let listed = run_on(&sys, &Work::List).await;
    assert_eq!(listed.snapshots.len(), 2);
    assert!(listed.snapshots.iter().all(|s| s.state == "listed" && s.manifest.is_some()));
    assert_eq!(listed.report.phases[1].state, PhaseState::NotApplicable, "listing takes no lock");

    let verified = run_on(&sys, &Work::Verify(vec![("server1".into(), first.name.clone())])).await;
    assert!(verified.succeeded(), "{:#?}", verified.report);
    assert_eq!(verified.snapshots[0].check.as_deref(), Some("PRAGMA integrity_check: ok"));
    let missing = run_on(&sys, &Work::Verify(vec![("server1".into(), "nope".into())])).await;
    assert!(!missing.succeeded());
    let error = missing.report.host("server1").unwrap().error.clone().unwrap();
    assert_eq!(error.kind, "checksum-mismatch", "no sha256 file beside it: {}", error.message);
    assert!(error.message.contains("nope.tar.zst.sha256 is missing"), "{}", error.message);

    let planned = Work::Prune { keep_last: Some(1), keep_newer_than_secs: None, prefix: None, dry_run: true };
    let dry = run_on(&sys, &planned).await;
    assert_eq!(dry.snapshots.iter().filter(|s| s.state == "would-delete").count(), 1);
    assert_eq!(sys.read_dir_names(Path::new(SNAPSHOTS)).unwrap().len(), 4, "a dry run deletes nothing");
    let pruned =
        run_on(&sys, &Work::Prune { keep_last: Some(1), keep_newer_than_secs: None, prefix: None, dry_run: false })
            .await;
    assert!(pruned.succeeded());
    assert_eq!(pruned.snapshots.iter().filter(|s| s.state == "deleted").count(), 1);
    assert_eq!(sys.read_dir_names(Path::new(SNAPSHOTS)).unwrap().len(), 2, "one archive and its sidecar are left");
}

use crate::host::system::HostSystem;

#[tokio::test]
async fn a_pull_lands_a_verified_archive_and_its_sidecar_and_a_damaged_one_lands_nothing() {
    let sys = fake_server();
    let created = run_on(&sys, &Work::Create).await;
    let name = created.snapshots[0].name.clone();
    let scratch = tempfile::tempdir().unwrap();
    let to = scratch.path().join("pulled");
    let pulled = run_on(&sys, &Work::Pull { wanted: vec![("server1".into(), Pick::Newest)], to: to.clone() }).await;
    assert!(pulled.succeeded(), "{:#?}", pulled.report);
    let local = to.join(format!("{name}.tar.zst"));
    assert_eq!(pulled.snapshots[0].path, local.display().to_string());
    assert_eq!(pulled.snapshots[0].check.as_deref(), Some("PRAGMA integrity_check: ok"), "verified here");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&local).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&to).unwrap().permissions().mode() & 0o777, 0o700, "a pull dir it makes is private");
    let sidecar = std::fs::read_to_string(format!("{}.sha256", local.display())).unwrap();
    assert!(sidecar.ends_with(&format!("  {name}.tar.zst\n")), "{sidecar}");
    let mut names: Vec<String> =
        std::fs::read_dir(&to).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, vec![format!("{name}.tar.zst"), format!("{name}.tar.zst.sha256")], "no temp file is left");
    let again = verify_local(&local).await.unwrap();
    assert_eq!(again.state, "verified");

    // The archive on the server no longer matches its sidecar: nothing lands here.
    let path = format!("{SNAPSHOTS}/{name}.tar.zst");
    let mut bytes = sys.bytes(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    sys.write_atomic(Path::new(&path), &bytes, 0o600).unwrap();
    let other = tempfile::tempdir().unwrap();
    let damaged = run_on(
        &sys,
        &Work::Pull { wanted: vec![("server1".into(), Pick::Named(name.clone()))], to: other.path().into() },
    )
    .await;
    assert!(!damaged.succeeded());
    let message = &damaged.report.host("server1").unwrap().error.as_ref().unwrap().message;
    assert!(message.contains("the archive on the host is damaged"), "{message}");
    assert_eq!(std::fs::read_dir(other.path()).unwrap().count(), 0, "a damaged pull leaves nothing");
}
