use super::*;
use crate::hub::store::tests::batch;

const NODES: u64 = 2000;

/// The `i`-th batch of a fleet of [`NODES`] nodes reporting in turn: each commit touches pages
/// of its own node, as at a hub.
fn ingest(store: &mut Store, i: u64) {
    store.ingest(&batch(&format!("node-{:04}", i % NODES), "a", &[i / NODES + 1]), 10).unwrap();
}

fn wal_bytes(dir: &std::path::Path) -> u64 {
    std::fs::metadata(dir.join("hub.db-wal")).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn the_writer_asks_for_its_checkpoints_instead_of_running_them_and_starts_the_wal_again_after_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("hub.db"), 10).unwrap();
    let checkpointer = store.checkpointer().unwrap();
    let mut i = 0;
    while checkpointer.requests.try_recv().is_err() {
        ingest(&mut store, i);
        i += 1;
        assert!(i < 100_000, "no checkpoint was asked for");
    }
    let grown = wal_bytes(dir.path());
    assert!(grown >= CHECKPOINT_PAGES as u64 * 4096, "SQLite checkpointed on commit: WAL of {grown} bytes");

    let done = checkpointer.checkpoint().unwrap();
    assert!(done.beside >= CHECKPOINT_PAGES, "{done:?}");
    assert!(done.whole, "{done:?}");
    ingest(&mut store, i);
    let (log, _) = checkpointer.pass().unwrap();
    assert!(log < 10, "the writer's next commit starts the WAL again: {log} pages in it");
    assert_eq!(wal_bytes(dir.path()), grown, "the WAL is written again from its start, not appended to");
    let stored: u64 = store.nodes().unwrap().iter().map(|n| n.reports_total).sum();
    assert_eq!(stored, i + 1);
}

#[test]
fn beside_a_writer_that_never_pauses_the_wal_stays_bounded_and_every_report_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("hub.db"), 10).unwrap();
    let checkpointer = store.checkpointer().unwrap();
    let thread = std::thread::spawn(move || checkpointer.run());
    let (batches, mut largest) = (12 * NODES, 0);
    for i in 0..batches {
        ingest(&mut store, i);
        if i % 50 == 0 {
            largest = largest.max(wal_bytes(dir.path()));
        }
    }
    let stored: u64 = store.nodes().unwrap().iter().map(|n| n.reports_total).sum();
    assert_eq!(stored, batches);
    drop(store);
    let served = thread.join().expect("the checkpointer's thread ends with the writer's connection");
    assert!(served >= 5, "{served} checkpoints for {batches} commits");
    // Each commit writes two pages or more: a WAL never started again would hold them all
    // (289 MB, measured with only the first pass). One started again after each checkpoint
    // holds what was committed until the checkpoint's pass beside the writer ended: up to 12 MB
    // here (measured, beside the other tests), as this writer, with no network between its
    // batches, commits far faster than a hub's.
    assert!(
        largest < 16 * CHECKPOINT_PAGES as u64 * 4096,
        "the WAL reached {largest} bytes beside {served} checkpoints"
    );
}
