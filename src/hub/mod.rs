//! The hub: the part of `k3node agent` that runs on servers. It takes the reports of every node
//! over HTTPS with mutual TLS ([`server`]), keeps them in SQLite ([`store`]), computes the fleet
//! view with staleness ([`fleet`]), serves it to `k3node status` and as Prometheus metrics
//! ([`metrics`]), and publishes a condition on every Node through the Kubernetes API ([`kube`]).
//!
//! Every server runs a hub and every node reports to all of them, so each hub has the whole view
//! and `k3node status` works through any server, with or without the Kubernetes API.

pub mod fleet;
pub mod kube;
pub mod metrics;
pub mod server;
pub mod store;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::daemon::settings::Settings;
use crate::protocol::health::FleetView;

pub use store::{Store, StoreError};

/// Each node's gauges from its last report, by node name.
pub type NodeGauges = BTreeMap<String, BTreeMap<String, f64>>;

/// What the hub's tasks share.
pub struct Hub {
    pub settings: Settings,
    pub store: Mutex<Store>,
    pub counters: metrics::HubCounters,
}

impl Hub {
    pub fn new(settings: Settings, store: Store) -> Arc<Hub> {
        Arc::new(Hub { settings, store: Mutex::new(store), counters: metrics::HubCounters::new() })
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
