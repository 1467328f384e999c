use std::path::{Path, PathBuf};

use super::archive::{self, EntryKind};
use super::testutil::*;
use super::*;
use crate::host::system::fake::{FakeSystem, Write};
use crate::host::system::HostSystem;
use crate::protocol::snapshot::Datastore;

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
    assert_eq!((manifest.cluster.as_str(), manifest.node.as_str()), ("lab", "server1"));
    assert_eq!(manifest.database, "var/lib/rancher/k3s/server/db/state.db");
    assert_eq!(manifest.k3node_version, env!("CARGO_PKG_VERSION"));

    // k3s was never stopped nor restarted: only read-only commands ran.
    let runs: Vec<String> = sys.runs().iter().map(|(p, a)| format!("{} {}", p.display(), a.join(" "))).collect();
    assert_eq!(runs, vec![format!("{K3S_BIN} --version")]);
    assert!(progress.iter().any(|l| l.contains("online backup")), "{progress:?}");
    let shown = serde_json::to_string(&created).unwrap() + &progress.join("\n");
    assert!(!shown.contains(PASSWORD), "{shown}");
}

use crate::host::k3s::K3S_BIN;

#[test]
fn a_fresh_snapshot_verifies_and_lists_with_its_manifest() {
    let sys = fake_server();
    let (created, _) = create_ok(&sys);
    let mut lines = Vec::new();
    let verified =
        verify::verify_request(&sys, &VerifySnapshot { path: archive_at() }, &mut |m| lines.push(m.to_string()))
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
