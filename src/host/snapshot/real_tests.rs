//! Snapshots of real files with real SQLite: the real system rooted in a temp dir (k3s's version
//! and datastore given as facts, since no k3s runs here), a writer that keeps writing while
//! snapshots are taken, a disk that fills up.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::archive;
use super::create::{self, Facts};
use super::testutil::*;
use super::*;
use crate::host::system::{HostSystem, RealSystem};
use crate::protocol::snapshot::Datastore;

fn facts() -> Facts {
    Facts { settings: k3s::settings_of("", &[]).unwrap(), k3s_version: VERSION.into(), datastore: Datastore::Sqlite }
}

fn live_db(root: &Path) -> PathBuf {
    root.join("var/lib/rancher/k3s/server/db/state.db")
}

/// Writes as kine does while it runs: each transaction adds revisions (4 KiB values) and
/// compacts old ones, and SQLite checkpoints the WAL into the database file as it grows.
fn writer(db: PathBuf, stop: Arc<AtomicBool>, written: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    // `written` counts committed rows, which are also the revisions committed so far.
    std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(())).unwrap();
        let mut revision = 0i64;
        while !stop.load(Ordering::Relaxed) {
            let tx = conn.unchecked_transaction().unwrap();
            for _ in 0..8 {
                revision += 1;
                tx.execute(
                    "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value) \
                     VALUES (?1, 0, 0, ?2, ?2, 0, ?3, NULL)",
                    (format!("/registry/leases/kube-node-lease/n{}", revision % 50), revision, vec![(revision % 251) as u8; 4096]),
                )
                .unwrap();
            }
            tx.execute("DELETE FROM kine WHERE id < (SELECT max(id) - 2000 FROM kine)", []).unwrap();
            tx.commit().unwrap();
            written.store(revision as u64, Ordering::SeqCst);
        }
    })
}

/// What a copy of the live files made as `tar` makes it is worth once opened.
#[derive(Debug, PartialEq, Eq)]
enum Naive {
    Sound,
    /// SQLite cannot read it, or finds it damaged.
    Torn,
    /// Readable, but without revisions committed before the copy began.
    Stale,
}

/// state.db, -wal and -shm read one after the other while the writer writes, at the pace of
/// `tar` over a large database (64 KiB reads, 1 ms apart: a 10 MiB file takes about 160 ms, as
/// a 1 GiB one takes many seconds), then opened.
fn naive_copy(root: &Path, scratch: &Path, n: usize, committed_before: u64) -> Naive {
    use std::io::Read;
    let into = scratch.join(format!("naive-{n}"));
    std::fs::create_dir_all(&into).unwrap();
    let db_dir = root.join("var/lib/rancher/k3s/server/db");
    for name in ["state.db", "state.db-wal", "state.db-shm"] {
        let Ok(mut from) = std::fs::File::open(db_dir.join(name)) else { continue };
        let mut copy = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let got = from.read(&mut buf).unwrap();
            if got == 0 {
                break;
            }
            copy.extend_from_slice(&buf[..got]);
            std::thread::sleep(Duration::from_millis(1));
        }
        std::fs::write(into.join(name), copy).unwrap();
    }
    let db = into.join("state.db");
    match crate::host::system::RealSystem::host().sqlite_check(&db) {
        Ok(problems) if problems.is_empty() => {}
        _ => return Naive::Torn,
    }
    let newest: Option<i64> = rusqlite::Connection::open(&db)
        .and_then(|c| c.query_row("SELECT max(create_revision) FROM kine", [], |r| r.get(0)))
        .unwrap_or(None);
    match newest {
        Some(rev) if rev as u64 >= committed_before => Naive::Sound,
        _ => Naive::Stale,
    }
}

#[test]
fn twenty_snapshots_of_a_database_being_written_all_pass_the_integrity_check() {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let sys = RealSystem::rooted(root.path());
    stage_server(&sys, &sqlite_db(500));
    let (stop, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let handle = writer(live_db(root.path()), stop.clone(), written.clone());
    while written.load(Ordering::Relaxed) < 2000 {
        std::thread::sleep(Duration::from_millis(10));
    }

    let mut taken = Vec::new();
    let started = Instant::now();
    let before = written.load(Ordering::SeqCst);
    for _ in 0..20 {
        let created = create::take(&sys, &create_request(), &facts(), &mut |_| {}).unwrap();
        taken.push(created);
    }
    let elapsed = started.elapsed();
    let during = written.load(Ordering::SeqCst) - before;
    let mut naive = Vec::new();
    for n in 0..20 {
        let committed_before = written.load(Ordering::SeqCst);
        naive.push(naive_copy(root.path(), scratch.path(), n, committed_before));
    }
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();

    assert!(during > 0, "the writer kept writing while the snapshots were taken");
    let mut names: Vec<&str> = taken.iter().map(|c| c.name.as_str()).collect();
    names.dedup();
    assert_eq!(names.len(), 20, "20 archives, each its own");
    for created in &taken {
        let (walked, checker) = verify::verify(&sys, Path::new(&created.path)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(checker.database_check(&walked), "PRAGMA integrity_check: ok");
    }
    let count = |what: Naive| naive.iter().filter(|n| **n == what).count();
    eprintln!(
        "20 snapshots in {:.2} s while the writer committed {during} rows, all consistent; naive copies of the live files: {} torn, {} stale (committed revisions missing), {} sound",
        elapsed.as_secs_f64(),
        count(Naive::Torn),
        count(Naive::Stale),
        count(Naive::Sound)
    );
}

#[test]
fn a_full_disk_while_creating_is_no_space_and_leaves_nothing_and_the_database_undisturbed() {
    let root = tempfile::tempdir().unwrap();
    let sys = RealSystem::rooted(root.path());
    stage_server(&sys, &sqlite_db(10));
    // About 40 MiB of values that do not compress.
    {
        let conn = rusqlite::Connection::open(live_db(root.path())).unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        for i in 0..10_000u32 {
            let mut noise = vec![0u8; 4096];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut noise);
            tx.execute("INSERT INTO kine (name, value) VALUES (?1, ?2)", (format!("/registry/secrets/s{i}"), noise))
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let db_size = std::fs::metadata(live_db(root.path())).unwrap().len();
    let snapshots = root.path().join("var/lib/rancher/k3node");
    let check_nothing_left = |what: &str| {
        let dir = snapshots.join("snapshots");
        let left: Vec<_> =
            std::fs::read_dir(&dir).map(|d| d.map(|e| e.unwrap().file_name()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "{what}: {left:?}");
    };

    // Two large manifests that do not compress either: staged and archived, they do not fit
    // beside the database's part, while the check up front (the database's size) passes.
    let manifests = root.path().join("var/lib/rancher/k3s/server/manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    for name in ["big-1.yaml", "big-2.yaml"] {
        let mut noise = vec![0u8; 12 << 20];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut noise);
        std::fs::write(manifests.join(name), noise).unwrap();
    }
    {
        let _disk = Tmpfs::mount(&snapshots, db_size + (24 << 20));
        let err = create::take(&sys, &create_request(), &facts(), &mut |_| {}).unwrap_err();
        assert_eq!(err.kind(), crate::protocol::ErrorKind::NoSpace, "{err}");
        assert!(err.to_string().contains("No space left on device"), "{err}");
        check_nothing_left("a full disk while writing");
    }
    for name in ["big-1.yaml", "big-2.yaml"] {
        std::fs::remove_file(manifests.join(name)).unwrap();
    }
    // Not even room for the database's part: said before anything is written.
    {
        let _disk = Tmpfs::mount(&snapshots, 4 << 20);
        let err = create::take(&sys, &create_request(), &facts(), &mut |_| {}).unwrap_err();
        assert_eq!(err.kind(), crate::protocol::ErrorKind::NoSpace, "{err}");
        assert!(err.to_string().contains("MiB may be needed for the archive"), "{err}");
        check_nothing_left("too little room");
    }
    let conn = rusqlite::Connection::open(live_db(root.path())).unwrap();
    conn.execute("INSERT INTO kine (name, value) VALUES ('/registry/after', x'00')", []).unwrap();
    assert!(sys.sqlite_check(Path::new("/var/lib/rancher/k3s/server/db/state.db")).unwrap().is_empty());
}

#[test]
fn a_real_archive_is_staged_beside_what_it_replaces_with_its_modes_owners_and_links() {
    let from = tempfile::tempdir().unwrap();
    let source = RealSystem::rooted(from.path());
    stage_server(&source, &sqlite_db(50));
    source.set_owner(Path::new("/etc/rancher/k3s/registries.yaml"), 1234, 5678).unwrap();
    let created = create::take(&source, &create_request(), &facts(), &mut |_| {}).unwrap();

    let to = tempfile::tempdir().unwrap();
    let target = RealSystem::rooted(to.path());
    for file in [created.path.clone(), format!("{}.sha256", created.path)] {
        let bytes = std::fs::read(from.path().join(file.trim_start_matches('/'))).unwrap();
        target.write_atomic(Path::new(&file), &bytes, 0o600).unwrap();
    }
    let mut extract = stage::Extract::new(&target, "S1");
    let walked = archive::walk(&target, Path::new(&created.path), &mut extract).unwrap();
    assert_eq!(extract.restored, walked.manifest.entries.len() as u64);
    extract.into_staging().expect("something was staged").keep();

    use std::os::unix::fs::MetadataExt;
    let server = "var/lib/rancher/k3s/server.k3node-staged-S1";
    let meta = |p: &str| std::fs::symlink_metadata(to.path().join(p)).unwrap();
    assert_eq!(meta(server).mode() & 0o7777, 0o700);
    assert_eq!(meta(&format!("{server}/token")).mode() & 0o7777, 0o600);
    assert_eq!(meta(&format!("{server}/tls/server-ca.crt")).mode() & 0o7777, 0o644);
    let registries = meta("etc/rancher/k3s.k3node-staged-S1/registries.yaml");
    assert_eq!((registries.uid(), registries.gid()), (1234, 5678));
    assert_eq!(
        std::fs::read_link(to.path().join(format!("{server}/tls/current-ca.crt"))).unwrap(),
        PathBuf::from("server-ca.crt")
    );
    assert_eq!(std::fs::read(to.path().join(format!("{server}/token"))).unwrap(), token_text().as_bytes());
    assert!(target.sqlite_check(&Path::new("/").join(server).join("db/state.db")).unwrap().is_empty());
    assert!(!to.path().join(format!("{server}/manifests/coredns.yaml")).exists());
    assert!(to.path().join("etc/systemd/system/k3s.service.env.k3node-staged-S1").is_file());
    // Nothing where k3s looks: the roots themselves were never written.
    assert!(!to.path().join("var/lib/rancher/k3s/server").exists());
    assert!(!to.path().join("etc/rancher/k3s").exists());

    // The next staging sweeps what an earlier one left, and removes its own unless kept.
    let mut again = stage::Extract::new(&target, "S2");
    archive::walk(&target, Path::new(&created.path), &mut again).unwrap();
    assert!(!to.path().join(server).exists(), "the earlier staging is swept");
    assert!(to.path().join("var/lib/rancher/k3s/server.k3node-staged-S2/token").is_file());
    drop(again);
    let left: Vec<String> = ["var/lib/rancher/k3s", "etc/rancher", "etc/systemd/system"]
        .iter()
        .flat_map(|d| std::fs::read_dir(to.path().join(d)).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("k3node-staged"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
