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

/// A batch waiting for the writer, and where its outcome goes.
type Job = (ReportBatch, i64, tokio::sync::oneshot::Sender<Result<store::Stored, StoreError>>);

/// Batches that arrive while the writer commits wait for the next commit: one transaction for
/// all of them (group commit), so the hub's throughput is not one commit per node.
struct Writer {
    queue: std::sync::mpsc::SyncSender<Job>,
}

/// Batches queued at most; beyond that the hub answers 503 and the nodes keep their reports.
const QUEUE: usize = 20_000;
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
        let (queue, jobs) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
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
                    let batches: Vec<(&ReportBatch, i64)> = group.iter().map(|(b, at, _)| (b, *at)).collect();
                    match store.ingest_many(&batches) {
                        Ok(stored) => {
                            for ((_, _, reply), s) in group.into_iter().zip(stored) {
                                let _ = reply.send(Ok(s));
                            }
                        }
                        Err(e) => {
                            for (_, _, reply) in group {
                                let _ =
                                    reply.send(Err(StoreError::Sqlite { path: String::new(), message: e.to_string() }));
                            }
                        }
                    }
                }
            })
            .expect("a thread for the hub's writer");
        Writer { queue }
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

    /// Stores `batch` with the next group commit.
    pub async fn store_batch(&self, batch: ReportBatch, received_ms: i64) -> Result<store::Stored, Refused> {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        self.writer.queue.try_send((batch, received_ms, reply)).map_err(|_| Refused::Busy)?;
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
