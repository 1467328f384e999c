//! `k3node restore` refusals over in-memory hosts: an archive that is damaged, of another
//! cluster, or of a k3s the cluster file does not pin is refused at the first phase, marked as
//! bad input, and no host is changed (the whole restore is proven on real hosts in the lab).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::artifacts::NoProgress;
use crate::host::snapshot::testutil::{fake_server, fake_target, SNAPSHOTS};
use crate::host::system::fake::FakeSystem;
use crate::operator::engine::PhaseState;
use crate::operator::phases::restore::Source;
use crate::operator::progress::Silent;
use crate::protocol::snapshot::CreateSnapshot;

fn cluster(name: &str, version: &str) -> Arc<ClusterFile> {
    let text = format!(
        "apiVersion: k3node.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n  hosts:\n    - name: server1\n      address: 10.9.0.1\n      role: server\n    - name: agent1\n      address: 10.9.0.2\n      role: agent\n  k3s:\n    version: {version}\n"
    );
    Arc::new(crate::cluster::parse("cluster.yaml", Path::new("/srv"), &text).unwrap())
}

/// A snapshot of `server1` of cluster `lab`, pulled to a file on this machine.
fn pulled(dir: &Path) -> PathBuf {
    let source = fake_server();
    let request =
        CreateSnapshot { cluster: "lab".into(), node: "server1".into(), name_prefix: "on-demand".into(), dir: None };
    let created = crate::host::snapshot::testutil::create(&source, &request);
    let name = Path::new(&created).file_name().unwrap().to_string_lossy().into_owned();
    std::fs::write(dir.join(&name), source.bytes(&created).unwrap()).unwrap();
    let sidecar = source.contents(&format!("{created}.sha256")).unwrap();
    std::fs::write(dir.join(format!("{name}.sha256")), sidecar).unwrap();
    dir.join(name)
}

fn options(source: Source) -> RestoreOptions {
    RestoreOptions {
        settings: Settings {
            source,
            target: "server1".into(),
            allow_version_mismatch: false,
            ready_timeout: Duration::from_secs(5),
        },
        dry_run: false,
        concurrency: 2,
        ignore_preflight: false,
        kubeconfig: None,
        artifacts: ArtifactOptions::default(),
        spec_images: None,
        again: "k3node restore --from X --yes".into(),
        rollback: "k3node restore --rollback --yes".into(),
    }
}

/// Runs the restore; returns the outcome and whether any host was written to (its lock aside).
async fn restore_on(cluster: Arc<ClusterFile>, options: &RestoreOptions) -> (RestoreOutcome, bool) {
    let hosts = [("server1", fake_target()), ("agent1", FakeSystem::new())];
    let before: Vec<usize> = hosts.iter().map(|(_, sys)| sys.writes().len()).collect();
    let fleet = Fleet::in_process(&cluster, |h| Arc::new(hosts.iter().find(|(n, _)| *n == h.name).unwrap().1.clone()));
    let outcome = restore(cluster, fleet, options, Arc::new(Silent), Box::new(NoProgress)).await;
    let written = hosts
        .iter()
        .zip(before)
        .any(|((_, sys), n)| sys.writes()[n..].iter().any(|w| !format!("{w:?}").contains("/run/k3node/")));
    (outcome, written)
}

fn after_archive(outcome: &RestoreOutcome) -> Vec<(&'static str, PhaseState)> {
    outcome.report.phases.iter().skip(2).map(|p| (p.name, p.state)).collect()
}

#[tokio::test]
async fn a_damaged_archive_is_refused_at_the_first_phase_as_bad_input_and_no_host_changes() {
    let dir = tempfile::tempdir().unwrap();
    let archive = pulled(dir.path());
    let mut bytes = std::fs::read(&archive).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x10;
    std::fs::write(&archive, bytes).unwrap();
    let (outcome, written) = restore_on(cluster("lab", "v1.31.4+k3s1"), &options(Source::Local(archive.clone()))).await;
    assert!(!outcome.succeeded() && outcome.findings.bad_archive, "{:#?}", outcome.report);
    let phases = after_archive(&outcome);
    assert_eq!(phases[0], ("archive", PhaseState::Failed));
    assert!(phases[1..].iter().all(|(_, s)| *s == PhaseState::NotRun), "{phases:?}");
    let message = &outcome.report.phases[2].message;
    assert!(message.contains("sha256") && message.contains(&archive.display().to_string()), "{message}");
    assert!(!written, "a host was changed: {:#?}", outcome.report);
}

#[tokio::test]
async fn a_snapshot_of_another_cluster_or_another_pinned_k3s_is_refused_before_anything_changes() {
    let dir = tempfile::tempdir().unwrap();
    let archive = pulled(dir.path());
    let (outcome, written) =
        restore_on(cluster("other", "v1.31.4+k3s1"), &options(Source::Local(archive.clone()))).await;
    assert!(outcome.findings.bad_archive && !written);
    assert!(
        outcome.report.phases[2].message.contains("snapshot of cluster \"lab\""),
        "{}",
        outcome.report.phases[2].message
    );
    assert_eq!(outcome.findings.archive.as_ref().unwrap().state, "verified", "it was read in full first");

    let (outcome, written) = restore_on(cluster("lab", "v1.30.8+k3s1"), &options(Source::Local(archive))).await;
    assert!(outcome.findings.bad_archive && !written);
    let message = &outcome.report.phases[2].message;
    assert!(message.contains("k3s v1.31.4+k3s1") && message.contains("--allow-version-mismatch"), "{message}");
}

#[tokio::test]
async fn an_archive_on_a_server_is_read_there_and_a_missing_one_is_refused_by_name() {
    let source = Source::OnHost { host: "server1".into(), name: "on-demand-server1-x".into() };
    let (outcome, written) = restore_on(cluster("lab", "v1.31.4+k3s1"), &options(source)).await;
    assert!(outcome.findings.bad_archive && !written, "{:#?}", outcome.report);
    let message = &outcome.report.phases[2].message;
    assert!(message.starts_with("server1:on-demand-server1-x: server1: "), "{message}");
    assert!(message.contains(&format!("{SNAPSHOTS}/on-demand-server1-x.tar.zst.sha256 is missing")), "{message}");
}
