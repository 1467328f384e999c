//! The datastore behind everything a server keeps (nodes, leases, the object store, bootstrap
//! data): kine's SQLite for a single server, or the embedded etcd of an HA server (k3s's
//! `cluster-init` and the servers that join it). Both are read and written under the same keys
//! (k8s's `/registry/...` layout and `/bootstrap/<hash>`), so the code above this module never
//! knows which one it talks to.
//!
//! Invariants, as both backends keep them: a revision is a cluster-wide, strictly increasing
//! number; `Row::id` is the revision of a key's last write (the object's resourceVersion) and
//! `create_revision` the one that created it; `create` never overwrites a live key and `update`
//! succeeds only against the revision the caller read (compare-and-swap).

use crate::etcd;
use crate::kine::Kine;
use anyhow::Result;
use std::path::Path;

/// The latest live revision of one key.
pub struct Row {
    pub id: i64,
    pub name: String,
    #[allow(dead_code)]
    pub create_revision: i64,
    pub value: Vec<u8>,
}

pub enum Datastore {
    Sqlite(Kine),
    Etcd(etcd::Client),
}

impl Datastore {
    pub fn open_sqlite(path: &Path) -> Result<Datastore> {
        Ok(Datastore::Sqlite(Kine::open(path)?))
    }

    pub fn get(&self, key: &str) -> Result<Option<Row>> {
        match self {
            Datastore::Sqlite(k) => k.get(key),
            Datastore::Etcd(e) => e.get(key),
        }
    }

    /// Latest live revision of every key under `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> Result<Vec<Row>> {
        match self {
            Datastore::Sqlite(k) => k.list(prefix),
            Datastore::Etcd(e) => e.list(prefix),
        }
    }

    /// Creates or updates `key`; returns the new revision.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<i64> {
        match self {
            Datastore::Sqlite(k) => k.put(key, value),
            Datastore::Etcd(e) => e.put(key, value),
        }
    }

    /// Creates `key` only if it does not exist; the new revision, or None when it exists.
    pub fn create(&self, key: &str, value: &[u8]) -> Result<Option<i64>> {
        match self {
            Datastore::Sqlite(k) => k.create(key, value),
            Datastore::Etcd(e) => e.create(key, value),
        }
    }

    /// Updates `key` only if its live revision is `expected`. Err(Some(current)) on a mismatch,
    /// Err(None) when it is gone.
    pub fn update(&self, key: &str, expected: i64, value: &[u8]) -> Result<Result<i64, Option<i64>>> {
        match self {
            Datastore::Sqlite(k) => k.update(key, expected, value),
            Datastore::Etcd(e) => e.update(key, expected, value),
        }
    }

    /// The newest revision (lists carry it as their resourceVersion).
    pub fn current_revision(&self) -> Result<i64> {
        match self {
            Datastore::Sqlite(k) => k.current_revision(),
            Datastore::Etcd(e) => e.current_revision(),
        }
    }

    /// Deletes `key`; false if it did not exist.
    pub fn delete(&self, key: &str) -> Result<bool> {
        match self {
            Datastore::Sqlite(k) => k.delete(key),
            Datastore::Etcd(e) => e.delete(key),
        }
    }

    /// Drops history older than the last `keep` revisions (kine's compaction; for etcd the
    /// compaction the apiserver requests every 5 minutes). Returns the rows removed, where known.
    pub fn compact(&self, keep: i64) -> Result<usize> {
        match self {
            Datastore::Sqlite(k) => k.compact(keep),
            Datastore::Etcd(e) => e.compact(keep).map(|()| 0),
        }
    }
}
