//! The hub: the part of `k3node agent` that runs on servers. It takes the reports of every node
//! over HTTPS with mutual TLS ([`server`]), keeps them in SQLite ([`store`]), computes the fleet
//! view with staleness ([`fleet`]), serves it to `k3node status` and as Prometheus metrics
//! ([`metrics`]), and publishes a condition on every Node through the Kubernetes API ([`kube`]).
//!
//! Every server runs a hub and every node reports to all of them, so each hub has the whole view
//! and `k3node status` works through any server, with or without the Kubernetes API.

pub mod fleet;
pub mod kube;
pub mod lease;
pub mod metrics;
pub mod server;
pub mod store;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::daemon::settings::Settings;
use crate::protocol::health::{FleetView, ReportBatch};

pub use store::{Store, StoreError};

/// Each node's gauges from its last report, by node name.
pub type NodeGauges = BTreeMap<String, BTreeMap<String, f64>>;

/// What the hub's tasks share.
pub struct Hub {
    pub settings: Settings,
    /// For reading (fleet view, metrics, tests); the writer has a connection of its own.
    pub store: Mutex<Store>,
    pub counters: metrics::HubCounters,
    writer: Writer,
}

/// A batch waiting for the writer, its size as it arrived, and where its outcome goes.
type Job = (ReportBatch, i64, usize, tokio::sync::oneshot::Sender<Result<store::Stored, StoreError>>);

/// Batches that arrive while the writer commits wait for the next commit: one transaction for
/// all of them (group commit), so the hub's throughput is not one commit per node. Its
/// checkpoints run on a thread of their own ([`store::Checkpointer`]): no batch waits for an
/// fsync of the whole WAL.
struct Writer {
    queue: std::sync::mpsc::SyncSender<Job>,
    /// Bytes of the batches queued (as they arrived), bounded by [`QUEUE_BYTES`].
    queued: Arc<Budget>,
}

/// Bytes admitted to the writer's queue and not yet written, at most `limit` (but one batch
/// always fits in an empty queue, whatever its size).
struct Budget {
    used: std::sync::atomic::AtomicUsize,
    limit: usize,
}

impl Budget {
    fn new(limit: usize) -> Budget {
        Budget { used: std::sync::atomic::AtomicUsize::new(0), limit }
    }

    fn admit(&self, size: usize) -> bool {
        use std::sync::atomic::Ordering;
        let before = self.used.fetch_add(size, Ordering::SeqCst);
        if before > 0 && before + size > self.limit {
            self.used.fetch_sub(size, Ordering::SeqCst);
            return false;
        }
        true
    }

    fn release(&self, size: usize) {
        self.used.fetch_sub(size, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Batches queued at most; beyond that the hub answers 503 and the nodes keep their reports.
const QUEUE: usize = 20_000;
/// Bytes of batches queued at most (as they arrived; parsed, they take a few times that): a
/// fleet catching up after an outage must not push the hub past its unit's MemoryMax (128M).
const QUEUE_BYTES: usize = 16 << 20;
/// Batches in one transaction at most.
const GROUP: usize = 1000;

/// Why a batch was not stored.
#[derive(Debug)]
pub enum Refused {
    /// The writer's queue is full: try again later.
    Busy,
    Store(StoreError),
}

impl Writer {
    fn start(mut store: Store) -> Writer {
        match store.checkpointer() {
            Ok(checkpointer) => {
                std::thread::Builder::new()
                    .name("hub-checkpoints".into())
                    .spawn(move || checkpointer.run())
                    .expect("a thread for the hub's checkpoints");
            }
            Err(e) => tracing::warn!("hub: {e}: SQLite checkpoints on commit instead"),
        }
        let (queue, jobs) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
        let queued = Arc::new(Budget::new(QUEUE_BYTES));
        let taken = queued.clone();
        std::thread::Builder::new()
            .name("hub-writer".into())
            .spawn(move || {
                while let Ok(first) = jobs.recv() {
                    let mut group = vec![first];
                    while group.len() < GROUP {
                        match jobs.try_recv() {
                            Ok(job) => group.push(job),
                            Err(_) => break,
                        }
                    }
                    let bytes: usize = group.iter().map(|(_, _, size, _)| size).sum();
                    let batches: Vec<(&ReportBatch, i64)> = group.iter().map(|(b, at, _, _)| (b, *at)).collect();
                    let outcome = store.ingest_many(&batches);
                    drop(batches);
                    taken.release(bytes);
                    match outcome {
                        Ok(stored) => {
                            for ((_, _, _, reply), s) in group.into_iter().zip(stored) {
                                let _ = reply.send(Ok(s));
                            }
                        }
                        Err(e) => {
                            for (_, _, _, reply) in group {
                                let _ =
                                    reply.send(Err(StoreError::Sqlite { path: String::new(), message: e.to_string() }));
                            }
                        }
                    }
                }
            })
            .expect("a thread for the hub's writer");
        Writer { queue, queued }
    }
}

impl Hub {
    /// `reader` and `writer` are two connections to the same store.
    pub fn new(settings: Settings, reader: Store, writer: Store) -> Arc<Hub> {
        Arc::new(Hub {
            settings,
            store: Mutex::new(reader),
            counters: metrics::HubCounters::new(),
            writer: Writer::start(writer),
        })
    }

    /// Stores `batch` (`size` bytes as it arrived) with the next group commit; Busy when the
    /// writer's queue is full (in batches or in bytes).
    pub async fn store_batch(
        &self,
        batch: ReportBatch,
        received_ms: i64,
        size: usize,
    ) -> Result<store::Stored, Refused> {
        if !self.writer.queued.admit(size) {
            return Err(Refused::Busy);
        }
        let (reply, outcome) = tokio::sync::oneshot::channel();
        if self.writer.queue.try_send((batch, received_ms, size, reply)).is_err() {
            self.writer.queued.release(size);
            return Err(Refused::Busy);
        }
        match outcome.await {
            Ok(result) => result.map_err(Refused::Store),
            Err(_) => Err(Refused::Busy),
        }
    }

    /// The fleet view now, and each node's gauges from its last report.
    pub fn view(&self, now_ms: i64) -> Result<(FleetView, NodeGauges), StoreError> {
        let rows = self.store.lock().unwrap_or_else(|p| p.into_inner()).nodes()?;
        let view = fleet::view(
            &self.settings.node,
            &rows,
            &self.settings.fleet,
            now_ms,
            self.settings.tuning.stale_after_intervals,
        );
        let gauges = rows.into_iter().map(|r| (r.node, r.report.gauges)).collect();
        Ok((view, gauges))
    }
}

/// The wall clock, unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::Budget;

    #[test]
    fn the_writers_queue_admits_bytes_up_to_its_bound_and_one_batch_into_an_empty_queue() {
        let budget = Budget::new(100);
        assert!(budget.admit(60));
        assert!(!budget.admit(50), "60 + 50 is over 100: refused (503), nothing counted");
        assert!(budget.admit(40));
        budget.release(60);
        assert!(budget.admit(50));
        budget.release(90);
        assert!(budget.admit(500), "an empty queue takes a batch larger than the bound");
        assert!(!budget.admit(1));
    }
}
