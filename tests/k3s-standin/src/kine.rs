//! The SQLite datastore of a single server: WAL mode with kine's table layout (one row per
//! revision), as k3s's kine keeps `server/db/state.db`.

use anyhow::Result;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

pub struct Kine {
    conn: Mutex<Connection>,
}

pub use crate::datastore::Row;

type Latest = (i64, i64, i64, Vec<u8>);

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS kine (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name INTEGER,
        created INTEGER,
        deleted INTEGER,
        create_revision INTEGER,
        prev_revision INTEGER,
        lease INTEGER,
        value BLOB,
        old_value BLOB)",
    "CREATE INDEX IF NOT EXISTS kine_name_index ON kine (name)",
    "CREATE INDEX IF NOT EXISTS kine_name_id_index ON kine (name,id)",
    "CREATE INDEX IF NOT EXISTS kine_id_deleted_index ON kine (id,deleted)",
    "CREATE INDEX IF NOT EXISTS kine_prev_revision_index ON kine (prev_revision)",
    "CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision_uindex ON kine (name, prev_revision)",
];

impl Kine {
    pub fn open(path: &Path) -> Result<Kine> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "could not switch {} to WAL (got {mode})", path.display());
        conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        for s in SCHEMA {
            conn.execute(s, [])?;
        }
        Ok(Kine { conn: Mutex::new(conn) })
    }

    /// (id, deleted, create_revision, value) of the newest row of `key`.
    fn latest(conn: &Connection, key: &str) -> Result<Option<Latest>> {
        Ok(conn
            .query_row(
                "SELECT id, deleted, create_revision, value FROM kine WHERE name = ?1 ORDER BY id DESC LIMIT 1",
                params![key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default())),
            )
            .optional()?)
    }

    pub fn get(&self, key: &str) -> Result<Option<Row>> {
        let conn = self.conn.lock().unwrap();
        Ok(match Self::latest(&conn, key)? {
            Some((id, 0, cr, value)) => {
                Some(Row { id, name: key.to_string(), create_revision: if cr == 0 { id } else { cr }, value })
            }
            _ => None,
        })
    }

    /// Latest live revision of every key under `prefix`.
    pub fn list(&self, prefix: &str) -> Result<Vec<Row>> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare(
            "SELECT k.id, k.name, k.create_revision, k.value FROM kine k
             JOIN (SELECT MAX(id) AS id FROM kine WHERE substr(name, 1, ?2) = ?1 GROUP BY name) m ON k.id = m.id
             WHERE k.deleted = 0 ORDER BY k.name",
        )?;
        let rows = stmt
            .query_map(params![prefix, prefix.len() as i64], |r| {
                let id: i64 = r.get(0)?;
                let cr: i64 = r.get(2)?;
                Ok(Row {
                    id,
                    name: r.get(1)?,
                    create_revision: if cr == 0 { id } else { cr },
                    value: r.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default(),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Creates or updates `key`; returns the new revision.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<i64> {
        let conn = self.conn.lock().unwrap();
        let prev = Self::latest(&conn, key)?;
        let (created, create_rev, prev_rev, old) = match &prev {
            Some((id, 0, cr, v)) => (0, if *cr == 0 { *id } else { *cr }, *id, Some(v.clone())),
            Some((id, _, _, _)) => (1, 0, *id, None),
            None => (1, 0, 0, None),
        };
        conn.execute(
            "INSERT INTO kine(name, created, deleted, create_revision, prev_revision, lease, value, old_value)
             VALUES (?1, ?2, 0, ?3, ?4, 0, ?5, ?6)",
            params![key, created, create_rev, prev_rev, value, old],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Creates `key` only if it does not exist (live); returns the new revision, or None when it
    /// exists. One lock for the check and the insert, so two creators cannot both win.
    pub fn create(&self, key: &str, value: &[u8]) -> Result<Option<i64>> {
        let conn = self.conn.lock().unwrap();
        let prev = Self::latest(&conn, key)?;
        if let Some((_, 0, _, _)) = prev {
            return Ok(None);
        }
        let prev_rev = prev.map(|p| p.0).unwrap_or(0);
        conn.execute(
            "INSERT INTO kine(name, created, deleted, create_revision, prev_revision, lease, value, old_value)
             VALUES (?1, 1, 0, 0, ?2, 0, ?3, NULL)",
            params![key, prev_rev, value],
        )?;
        Ok(Some(conn.last_insert_rowid()))
    }

    /// Updates `key` only if its live revision is `expected` (compare-and-swap, as the apiserver
    /// does with resourceVersion). Err(Some(current)) on a mismatch, Err(None) when it is gone.
    pub fn update(&self, key: &str, expected: i64, value: &[u8]) -> Result<Result<i64, Option<i64>>> {
        let conn = self.conn.lock().unwrap();
        match Self::latest(&conn, key)? {
            Some((id, 0, cr, old)) if id == expected => {
                conn.execute(
                    "INSERT INTO kine(name, created, deleted, create_revision, prev_revision, lease, value, old_value)
                     VALUES (?1, 0, 0, ?2, ?3, 0, ?4, ?5)",
                    params![key, if cr == 0 { id } else { cr }, id, value, old],
                )?;
                Ok(Ok(conn.last_insert_rowid()))
            }
            Some((id, 0, _, _)) => Ok(Err(Some(id))),
            _ => Ok(Err(None)),
        }
    }

    /// The newest revision in the datastore (lists carry it as their resourceVersion).
    pub fn current_revision(&self) -> Result<i64> {
        let conn = self.conn.lock().unwrap();
        Ok(conn.query_row("SELECT COALESCE(MAX(id), 0) FROM kine", [], |r| r.get(0))?)
    }

    /// Deletes `key` (a tombstone row, as kine writes); false if it did not exist.
    pub fn delete(&self, key: &str) -> Result<bool> {
        let conn = self.conn.lock().unwrap();
        match Self::latest(&conn, key)? {
            Some((id, 0, cr, v)) => {
                conn.execute(
                    "INSERT INTO kine(name, created, deleted, create_revision, prev_revision, lease, value, old_value)
                     VALUES (?1, 0, 1, ?2, ?3, 0, ?4, ?4)",
                    params![key, if cr == 0 { id } else { cr }, id, v],
                )?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Removes superseded revisions older than the last `keep` (kine compacts periodically too).
    pub fn compact(&self, keep: i64) -> Result<usize> {
        let conn = self.conn.lock().unwrap();
        let max: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) FROM kine", [], |r| r.get(0))?;
        let below = max - keep;
        if below <= 0 {
            return Ok(0);
        }
        let n = conn.execute(
            "DELETE FROM kine WHERE id < ?1 AND (id NOT IN (SELECT MAX(id) FROM kine GROUP BY name) OR deleted = 1)",
            params![below],
        )?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions() {
        let dir = tempfile::tempdir().unwrap();
        let k = Kine::open(&dir.path().join("db/state.db")).unwrap();
        let r1 = k.put("/registry/minions/a", b"1").unwrap();
        let r2 = k.put("/registry/minions/a", b"2").unwrap();
        k.put("/registry/minions/b", b"x").unwrap();
        k.put("/registry/leases/kube-node-lease/a", b"l").unwrap();
        assert!(r2 > r1);
        let a = k.get("/registry/minions/a").unwrap().unwrap();
        assert_eq!(a.value, b"2");
        assert_eq!(a.create_revision, r1);
        assert_eq!(k.list("/registry/minions/").unwrap().len(), 2);
        assert!(k.delete("/registry/minions/b").unwrap());
        assert!(!k.delete("/registry/minions/b").unwrap());
        assert_eq!(k.list("/registry/minions/").unwrap().len(), 1);
        assert!(k.get("/registry/minions/b").unwrap().is_none());
        assert_eq!(k.current_revision().unwrap(), 5);
        k.compact(1).unwrap();
        assert_eq!(k.get("/registry/minions/a").unwrap().unwrap().value, b"2");
        assert!(dir.path().join("db/state.db-wal").exists());
    }
}
