//! The hub's store (SQLite, WAL): the latest report of each node, a bounded history, and the
//! counters a fleet view and the metrics need. It survives restarts of the hub.
//!
//! Invariants:
//! - A batch is stored in one transaction, or not at all.
//! - Within a node's stream, a sequence number at or below the last one stored is a duplicate
//!   (ignored); a jump is a gap, counted in `lost_total`, except for the part the node says fell
//!   out of its buffer (the growth of its `dropped_total`), which is dropped and not also lost.
//!   A new stream (the node's buffer was made anew) starts counting afresh.
//! - History keeps the last `history_per_node` reports of each node.
//! - Commits are durable against a crash of the hub (WAL, synchronous=NORMAL); a power loss may
//!   lose the last commits, which the nodes then send again (they are confirmed only after the
//!   commit returns, and a node keeps a report until its hub confirmed it).
//! - Checkpoints (copying the WAL into the database, the only step that fsyncs) are SQLite's
//!   own on commit, unless the writer's connection hands them to a [`Checkpointer`] on a
//!   connection of its own (the hub's writer does: see [`checkpoints`]).
//! - History holds each report zstd-compressed: the store's size, and what each commit writes
//!   and each checkpoint flushes, is about a fifth of what the JSON took (schema 2).

mod checkpoints;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

pub use checkpoints::Checkpointer;

use crate::protocol::health::{Report, ReportBatch};
use crate::protocol::node::Role;

/// 1: history's reports as JSON text, and an index by time nothing read.
/// 2: history's reports zstd-compressed (a report's JSON of about 1.4 KiB spilled out of its
/// b-tree page into an overflow page of its own: about 4.5 KiB on disk per report, and as much
/// written and checkpointed).
const SCHEMA_VERSION: i64 = 2;

const HISTORY_TABLE: &str = "CREATE TABLE history(
    node TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL, at_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL, state TEXT NOT NULL, report BLOB NOT NULL,
    PRIMARY KEY(node, stream, seq)) WITHOUT ROWID;";

/// A report as history keeps it: its JSON, zstd-compressed.
fn pack(report: &Report) -> Vec<u8> {
    let json = serde_json::to_vec(report).expect("reports always serialize");
    zstd::bulk::compress(&json, 3).expect("compressing to memory cannot fail")
}

fn unpack(packed: &[u8]) -> Option<Report> {
    // A report is far below the 1 MiB a batch may carry.
    let json = zstd::bulk::decompress(packed, 1 << 20).ok()?;
    serde_json::from_slice(&json).ok()
}

/// Schema 1 to 2, inside the opening transaction: the history's reports compressed.
fn migrate_history_from_v1(tx: &rusqlite::Transaction<'_>) -> Result<(), rusqlite::Error> {
    tx.execute_batch(&format!(
        "DROP INDEX IF EXISTS history_by_time; ALTER TABLE history RENAME TO history_v1; {HISTORY_TABLE}"
    ))?;
    {
        let mut read = tx.prepare("SELECT node, stream, seq, at_ms, received_ms, state, report FROM history_v1")?;
        let mut insert = tx.prepare("INSERT INTO history VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)")?;
        let mut rows = read.query([])?;
        while let Some(r) = rows.next()? {
            let text: String = r.get(6)?;
            // A row that is not a report (it never was one) is not carried over.
            let Ok(report) = serde_json::from_str::<Report>(&text) else { continue };
            insert.execute(params![
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
                pack(&report)
            ])?;
        }
    }
    tx.execute_batch("DROP TABLE history_v1; UPDATE meta SET value='2' WHERE key='schema';")
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("hub store {path}: {message}")]
    Sqlite { path: String, message: String },
}

/// A node's row: its latest report and its counters.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub node: String,
    pub role: Role,
    pub received_ms: i64,
    pub last_seq: u64,
    pub report: Report,
    pub reports_total: u64,
    pub lost_total: u64,
    pub dropped_total: u64,
    pub duplicates_total: u64,
}

/// What storing a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// Every report up to here is stored.
    pub accepted_through: u64,
    pub new: u64,
    pub duplicates: u64,
    pub lost: u64,
}

pub struct Store {
    conn: Connection,
    file: PathBuf,
    history_per_node: u64,
    /// Held by each write transaction while a [`Checkpointer`] takes this connection's
    /// checkpoints: its last, short pass holds it too, so that it sees the WAL's end.
    commit_gate: Option<Arc<Mutex<()>>>,
}

impl Store {
    pub fn open(path: &Path, history_per_node: u64) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        let err = |e: rusqlite::Error| StoreError::Sqlite { path: shown.clone(), message: e.to_string() };
        let mut conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
        // The daemon's memory target: a small page cache (pages of 4 KiB).
        conn.pragma_update(None, "cache_size", -2048).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        // Immediate: of two connections opening a new store at once, one creates or migrates it.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(err)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS nodes(
                 node TEXT PRIMARY KEY, role TEXT NOT NULL, stream TEXT NOT NULL, last_seq INTEGER NOT NULL,
                 received_ms INTEGER NOT NULL, report TEXT NOT NULL, reports_total INTEGER NOT NULL,
                 lost_total INTEGER NOT NULL, dropped_total INTEGER NOT NULL, duplicates_total INTEGER NOT NULL);",
        )
        .map_err(err)?;
        let version: Option<String> =
            tx.query_row("SELECT value FROM meta WHERE key='schema'", [], |r| r.get(0)).optional().map_err(err)?;
        match version.as_deref().map(str::parse::<i64>) {
            None => {
                tx.execute_batch(HISTORY_TABLE).map_err(err)?;
                tx.execute("INSERT INTO meta(key, value) VALUES('schema', ?1)", [SCHEMA_VERSION.to_string()])
                    .map_err(err)?;
            }
            Some(Ok(1)) => migrate_history_from_v1(&tx).map_err(err)?,
            Some(Ok(SCHEMA_VERSION)) => {}
            Some(_) => {
                return Err(StoreError::Sqlite {
                    path: shown,
                    message: format!(
                        "written by a newer k3node (schema {}); this one reads up to {SCHEMA_VERSION}: upgrade k3node on this server",
                        version.unwrap_or_default()
                    ),
                })
            }
        }
        tx.commit().map_err(err)?;
        Ok(Store { conn, file: path.to_path_buf(), history_per_node: history_per_node.max(1), commit_gate: None })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |e| StoreError::Sqlite { path: self.shown(), message: e.to_string() }
    }

    /// The database's path, as errors show it.
    fn shown(&self) -> String {
        self.file.display().to_string()
    }

    /// Stores `batch` (the node's name already checked against its certificate).
    pub fn ingest(&mut self, batch: &ReportBatch, received_ms: i64) -> Result<Stored, StoreError> {
        Ok(self.ingest_many(&[(batch, received_ms)])?.remove(0))
    }

    /// Stores several batches in one transaction (the hub's writer groups what arrived together:
    /// one commit for many nodes), each as [`Store::ingest`] would.
    pub fn ingest_many(&mut self, batches: &[(&ReportBatch, i64)]) -> Result<Vec<Stored>, StoreError> {
        let path = self.shown();
        let err = move |e: rusqlite::Error| StoreError::Sqlite { path: path.clone(), message: e.to_string() };
        let history = self.history_per_node;
        let _committing = self.commit_gate.as_ref().map(|g| g.lock().unwrap_or_else(|p| p.into_inner()));
        let tx = self.conn.transaction().map_err(&err)?;
        let mut out = Vec::with_capacity(batches.len());
        for (batch, received_ms) in batches {
            out.push(ingest_one(&tx, batch, *received_ms, history, &err)?);
        }
        tx.commit().map_err(&err)?;
        Ok(out)
    }

    /// Every node's latest state, by name.
    pub fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT node, role, received_ms, last_seq, report, reports_total, lost_total, dropped_total, duplicates_total
                 FROM nodes ORDER BY node",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    [r.get::<_, i64>(5)?, r.get::<_, i64>(6)?, r.get::<_, i64>(7)?, r.get::<_, i64>(8)?],
                ))
            })
            .map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            let (node, role, received_ms, last_seq, report, [total, lost, dropped, dups]) = row.map_err(self.err())?;
            let Ok(report) = serde_json::from_str::<Report>(&report) else { continue };
            out.push(NodeRow {
                node,
                role: if role == "server" { Role::Server } else { Role::Agent },
                received_ms,
                last_seq: last_seq as u64,
                report,
                reports_total: total as u64,
                lost_total: lost as u64,
                dropped_total: dropped as u64,
                duplicates_total: dups as u64,
            });
        }
        Ok(out)
    }

    /// `node`'s reports in history, oldest first (tests, diagnosis).
    pub fn history(&self, node: &str) -> Result<Vec<Report>, StoreError> {
        let mut stmt =
            self.conn.prepare_cached("SELECT report FROM history WHERE node=?1 ORDER BY seq").map_err(self.err())?;
        let packed = stmt.query_map([node], |r| r.get::<_, Vec<u8>>(0)).map_err(self.err())?;
        let mut out = Vec::new();
        for p in packed {
            let p = p.map_err(self.err())?;
            out.push(unpack(&p).ok_or_else(|| StoreError::Sqlite {
                path: self.shown(),
                message: format!("a report of {node} in history does not decode"),
            })?);
        }
        Ok(out)
    }

    /// The sequence numbers in `node`'s history, oldest first (tests, diagnosis).
    pub fn history_seqs(&self, node: &str) -> Result<Vec<u64>, StoreError> {
        Ok(self.history(node)?.iter().map(|r| r.seq).collect())
    }

    /// Bytes of the database and its WAL on disk.
    pub fn size_bytes(&self) -> u64 {
        let mut wal = self.file.clone().into_os_string();
        wal.push("-wal");
        [self.file.clone(), PathBuf::from(wal)].iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
    }
}

/// One batch inside the writer's transaction.
fn ingest_one(
    tx: &rusqlite::Transaction<'_>,
    batch: &ReportBatch,
    received_ms: i64,
    history_per_node: u64,
    err: &impl Fn(rusqlite::Error) -> StoreError,
) -> Result<Stored, StoreError> {
    let existing: Option<(String, u64, u64, u64, u64, u64)> = tx
        .query_row(
            "SELECT stream, last_seq, reports_total, lost_total, dropped_total, duplicates_total FROM nodes WHERE node=?1",
            [&batch.node],
            |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64, r.get::<_, i64>(3)? as u64, r.get::<_, i64>(4)? as u64, r.get::<_, i64>(5)? as u64)),
        )
        .optional()
        .map_err(err)?;
    let (mut last_seq, mut total, mut lost, mut dups) = match &existing {
        Some((stream, last, total, lost, _, dups)) if *stream == batch.stream => (*last, *total, *lost, *dups),
        Some((_, _, total, lost, _, dups)) => (0, *total, *lost, *dups),
        None => (0, 0, 0, 0),
    };
    let mut stored = Stored { accepted_through: last_seq, new: 0, duplicates: 0, lost: 0 };
    // Reports that fell out of the node's buffer before reaching this hub leave a gap too; the
    // node counts them (dropped_total), so a gap they explain is dropped, not lost.
    let dropped_before = match &existing {
        Some((stream, _, _, _, dropped, _)) if *stream == batch.stream => *dropped,
        _ => 0,
    };
    let mut newly_dropped = batch.dropped_total.saturating_sub(dropped_before);
    let mut latest: Option<&Report> = None;
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO history(node, stream, seq, at_ms, received_ms, state, report) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(err)?;
        for report in &batch.reports {
            if report.seq <= last_seq {
                stored.duplicates += 1;
                continue;
            }
            if last_seq > 0 && report.seq > last_seq + 1 {
                let gap = report.seq - last_seq - 1;
                let explained = gap.min(newly_dropped);
                newly_dropped -= explained;
                stored.lost += gap - explained;
            }
            insert
                .execute(params![
                    batch.node,
                    batch.stream,
                    report.seq as i64,
                    report.at_ms,
                    received_ms,
                    report.state().as_str(),
                    pack(report)
                ])
                .map_err(err)?;
            last_seq = report.seq;
            stored.new += 1;
            latest = Some(report);
        }
    }
    total += stored.new;
    lost += stored.lost;
    dups += stored.duplicates;
    stored.accepted_through = last_seq;
    let dropped = existing.as_ref().map(|e| e.4).unwrap_or(0).max(batch.dropped_total);
    match latest {
        Some(report) => {
            let text = serde_json::to_string(report).expect("reports always serialize");
            tx.execute(
                "INSERT INTO nodes(node, role, stream, last_seq, received_ms, report, reports_total, lost_total, dropped_total, duplicates_total)
                 VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT(node) DO UPDATE SET role=?2, stream=?3, last_seq=?4, received_ms=?5, report=?6,
                   reports_total=?7, lost_total=?8, dropped_total=?9, duplicates_total=?10",
                params![
                    batch.node,
                    report.role.as_str(),
                    batch.stream,
                    last_seq as i64,
                    received_ms,
                    text,
                    total as i64,
                    lost as i64,
                    dropped as i64,
                    dups as i64
                ],
            )
            .map_err(err)?;
            tx.execute(
                "DELETE FROM history WHERE node=?1 AND (stream<>?2 OR seq<=?3)",
                params![batch.node, batch.stream, last_seq as i64 - history_per_node as i64],
            )
            .map_err(err)?;
        }
        None if existing.is_some() => {
            tx.execute(
                "UPDATE nodes SET duplicates_total=?2, dropped_total=?3 WHERE node=?1",
                params![batch.node, dups as i64, dropped as i64],
            )
            .map_err(err)?;
        }
        None => {}
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::protocol::health::{CheckState, HealthCheck, HEALTH_PROTOCOL};

    fn report(seq: u64, state: CheckState) -> Report {
        Report {
            seq,
            at_ms: seq as i64 * 1000,
            interval_secs: 10,
            role: Role::Agent,
            k3s_version: Some("v1.31.4+k3s1".into()),
            checks: vec![HealthCheck { name: "disk-root".into(), state, reason: "r".into() }],
            gauges: BTreeMap::new(),
        }
    }

    pub(super) fn batch(node: &str, stream: &str, seqs: &[u64]) -> ReportBatch {
        ReportBatch {
            protocol: HEALTH_PROTOCOL,
            node: node.into(),
            stream: stream.into(),
            dropped_total: 0,
            reports: seqs.iter().map(|s| report(*s, CheckState::Ok)).collect(),
        }
    }

    #[test]
    fn duplicates_are_ignored_gaps_are_counted_and_the_latest_report_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("hub.db"), 100).unwrap();
        let s = store.ingest(&batch("n1", "a", &[1, 2, 3]), 10).unwrap();
        assert_eq!(s, Stored { accepted_through: 3, new: 3, duplicates: 0, lost: 0 });
        // The answer was lost, the node sends 2..4 again: only 4 is new.
        let s = store.ingest(&batch("n1", "a", &[2, 3, 4]), 20).unwrap();
        assert_eq!(s, Stored { accepted_through: 4, new: 1, duplicates: 2, lost: 0 });
        let s = store.ingest(&batch("n1", "a", &[7]), 30).unwrap();
        assert_eq!(s.lost, 2);
        let rows = store.nodes().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].last_seq, rows[0].reports_total, rows[0].lost_total, rows[0].duplicates_total),
            (7, 5, 2, 2)
        );
        assert_eq!(rows[0].received_ms, 30);
        assert_eq!(store.history_seqs("n1").unwrap(), vec![1, 2, 3, 4, 7]);
    }

    #[test]
    fn a_gap_the_node_counts_as_dropped_from_its_buffer_is_not_also_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("hub.db"), 100).unwrap();
        store.ingest(&batch("n1", "a", &[1, 2, 3]), 10).unwrap();
        // 4, 5 and 6 fell out of the node's buffer while this hub was away: the node says so.
        let s = store.ingest(&ReportBatch { dropped_total: 3, ..batch("n1", "a", &[7]) }, 20).unwrap();
        assert_eq!(s.lost, 0);
        // Then 8 and 9 go missing without the node having dropped them: lost.
        let s = store.ingest(&ReportBatch { dropped_total: 3, ..batch("n1", "a", &[10]) }, 30).unwrap();
        assert_eq!(s.lost, 2);
        let row = &store.nodes().unwrap()[0];
        assert_eq!((row.dropped_total, row.lost_total), (3, 2));
    }

    #[test]
    fn a_new_stream_starts_afresh_and_history_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("hub.db"), 3).unwrap();
        store.ingest(&batch("n1", "a", &[1, 2, 3, 4, 5]), 10).unwrap();
        assert_eq!(store.history_seqs("n1").unwrap(), vec![3, 4, 5]);
        let s = store.ingest(&batch("n1", "b", &[1, 2]), 20).unwrap();
        assert_eq!(s, Stored { accepted_through: 2, new: 2, duplicates: 0, lost: 0 });
        assert_eq!(store.history_seqs("n1").unwrap(), vec![1, 2]);
        assert_eq!(store.nodes().unwrap()[0].reports_total, 7);
    }

    #[test]
    fn the_store_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        Store::open(&path, 10).unwrap().ingest(&batch("n1", "a", &[1, 2]), 10).unwrap();
        let mut again = Store::open(&path, 10).unwrap();
        assert_eq!(again.nodes().unwrap()[0].last_seq, 2);
        let s = again.ingest(&batch("n1", "a", &[2, 3]), 20).unwrap();
        assert_eq!((s.new, s.duplicates), (1, 1));
    }

    #[test]
    fn a_store_of_schema_1_is_migrated_with_its_history_and_history_is_stored_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
             INSERT INTO meta VALUES('schema', '1');
             CREATE TABLE nodes(
                 node TEXT PRIMARY KEY, role TEXT NOT NULL, stream TEXT NOT NULL, last_seq INTEGER NOT NULL,
                 received_ms INTEGER NOT NULL, report TEXT NOT NULL, reports_total INTEGER NOT NULL,
                 lost_total INTEGER NOT NULL, dropped_total INTEGER NOT NULL, duplicates_total INTEGER NOT NULL);
             CREATE TABLE history(
                 node TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL, at_ms INTEGER NOT NULL,
                 received_ms INTEGER NOT NULL, state TEXT NOT NULL, report TEXT NOT NULL,
                 PRIMARY KEY(node, stream, seq)) WITHOUT ROWID;
             CREATE INDEX history_by_time ON history(node, received_ms);",
        )
        .unwrap();
        let warn = report(2, CheckState::Warn);
        for r in [report(1, CheckState::Ok), warn.clone()] {
            old.execute(
                "INSERT INTO history VALUES('n1', 'a', ?1, ?2, 10, ?3, ?4)",
                params![r.seq as i64, r.at_ms, r.state().as_str(), serde_json::to_string(&r).unwrap()],
            )
            .unwrap();
        }
        old.execute(
            "INSERT INTO nodes VALUES('n1', 'agent', 'a', 2, 10, ?1, 2, 0, 0, 0)",
            [serde_json::to_string(&warn).unwrap()],
        )
        .unwrap();
        drop(old);

        let mut store = Store::open(&path, 10).unwrap();
        assert_eq!(store.history("n1").unwrap(), vec![report(1, CheckState::Ok), warn]);
        let s = store.ingest(&batch("n1", "a", &[2, 3]), 20).unwrap();
        assert_eq!((s.new, s.duplicates), (1, 1), "the migrated node's sequence goes on");
        let check = Connection::open(&path).unwrap();
        let schema: String = check.query_row("SELECT value FROM meta WHERE key='schema'", [], |r| r.get(0)).unwrap();
        let indexes: i64 = check
            .query_row("SELECT count(*) FROM sqlite_master WHERE name IN ('history_by_time', 'history_v1')", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!((schema.as_str(), indexes), ("2", 0));
        let (stored, json): (i64, usize) = check
            .query_row("SELECT length(report) FROM history WHERE seq=3", [], |r| r.get(0))
            .map(|n| (n, serde_json::to_vec(&report(3, CheckState::Ok)).unwrap().len()))
            .unwrap();
        assert!((stored as usize) < json, "{stored} bytes stored for {json} of JSON");
    }
}
