//! Checkpoints beside the hub's writer.
//!
//! By default SQLite checkpoints on commit: the committing thread copies the WAL into the
//! database and fsyncs both files, and every batch that arrives meanwhile waits for it. At
//! 10,000 nodes (1,000 reports/s) that was 5-6 ms every 0.3 s, which set the hub's p99, and a
//! slow fsync of the disk held every batch as long. A [`Checkpointer`] takes that work to a
//! thread and a connection of its own.
//!
//! Invariants:
//! - The writer's connection asks for a checkpoint after a commit that leaves
//!   [`CHECKPOINT_PAGES`] or more in the WAL (a WAL hook, which takes the place of SQLite's
//!   auto-checkpoint on that connection). At most one request waits.
//! - A checkpoint is two passive passes. The first runs while the writer keeps committing; it
//!   copies, and fsyncs, nearly all of the WAL. The second holds the writer's commit gate and
//!   copies only what was committed during the first. The WAL is then wholly in the database
//!   and the writer's next transaction starts it again from its beginning. Without that second
//!   pass a busy writer stays ahead of every checkpoint and the WAL grows without bound (an
//!   earlier checkpointer of this hub did just that).
//! - A reader in the middle of a read can keep a pass short of the WAL's end; the WAL then
//!   starts again after a later checkpoint.
//! - Nothing is less durable: the same copies and fsyncs run, on another thread.
//! - The thread ends when the writer's connection is closed (its hook, and with it the only
//!   sender of requests, is dropped).

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};

use rusqlite::wal::CheckpointMode;
use rusqlite::Connection;

use super::{Store, StoreError};

/// WAL pages (4 KiB) after which the writer asks for a checkpoint: SQLite's own threshold.
pub const CHECKPOINT_PAGES: i32 = 1000;

/// Checkpoints the WAL of a writer's connection (see the module's invariants).
pub struct Checkpointer {
    conn: Connection,
    path: String,
    requests: Receiver<()>,
    gate: Arc<Mutex<()>>,
}

/// What one checkpoint did, in WAL pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpointed {
    /// Pages of the WAL in the database after the pass beside the writer.
    pub beside: i32,
    /// Whether the whole WAL is in the database, so that the writer starts it again.
    pub whole: bool,
}

impl Store {
    /// Leaves this connection's checkpoints to the returned [`Checkpointer`], on a connection
    /// of its own to the same database; [`Checkpointer::run`] serves them.
    pub fn checkpointer(&mut self) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open(&self.file).map_err(self.err())?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(self.err())?;
        conn.pragma_update(None, "cache_size", -256).map_err(self.err())?;
        let (request, requests) = sync_channel(1);
        self.conn
            .wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: std::ffi::c_int| {
                if pages >= CHECKPOINT_PAGES {
                    // Full: one is already waiting, and it will copy these pages too.
                    let _ = request.try_send(());
                }
                Ok(())
            }))
            .map_err(self.err())?;
        let gate = Arc::new(Mutex::new(()));
        self.commit_gate = Some(gate.clone());
        Ok(Checkpointer { conn, path: self.shown(), requests, gate })
    }
}

impl Checkpointer {
    /// Serves checkpoint requests until the writer's connection is closed, and returns how
    /// many it served; a failed checkpoint is logged and the next request tries again.
    pub fn run(self) -> u64 {
        let mut served = 0;
        while self.requests.recv().is_ok() {
            served += 1;
            if let Err(e) = self.checkpoint() {
                tracing::warn!("hub: {e}");
            }
        }
        served
    }

    /// One checkpoint: a pass beside the writer, then a short one holding its commits back.
    pub fn checkpoint(&self) -> Result<Checkpointed, StoreError> {
        let (_, beside) = self.pass()?;
        let _held = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        let (log, copied) = self.pass()?;
        Ok(Checkpointed { beside: beside.max(0), whole: copied == log })
    }

    /// (pages in the WAL, pages of it in the database).
    fn pass(&self) -> Result<(i32, i32), StoreError> {
        self.conn
            .wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE)
            .map_err(|e| StoreError::Sqlite { path: self.path.clone(), message: format!("checkpoint: {e}") })
    }
}

#[cfg(test)]
mod tests;
