//! One hub at a time publishes Node conditions. Every server runs a hub with the whole fleet's
//! view, and hubs that disagree (one of them cut off from some nodes) would otherwise flap a
//! condition between their verdicts. The hubs elect a leader through a `coordination.k8s.io/v1`
//! Lease, `kube-system/k3node-hub`, the way Kubernetes' own controllers do: the holder renews it
//! at every round of its loop; another hub takes it over only once it has seen the same record,
//! unrenewed, for the lease's whole duration.
//!
//! Invariants:
//! - Expiry is judged on this hub's own monotonic clock, from when it last saw the record change,
//!   never by comparing another server's wall-clock `renewTime` with ours: skewed clocks between
//!   servers cannot make two leaders.
//! - Every write names the resourceVersion it read, so of two hubs taking over at once the API
//!   accepts one and the other gets a conflict and stays a follower.
//! - A hub that cannot read or write the Lease is not the leader for that round (it could not
//!   patch a Node either).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

pub const LEASE_NAMESPACE: &str = "kube-system";
pub const LEASE_NAME: &str = "k3node-hub";

/// What a Lease says, as far as the election reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: Option<String>,
    pub duration_secs: i32,
    pub acquire_ms: i64,
    pub renew_ms: i64,
    pub transitions: i32,
    /// The version read; a write of this record succeeds only against it.
    pub resource_version: Option<String>,
}

impl LeaseRecord {
    /// What identifies one renewal: a record that keeps it is not being renewed. Every write
    /// makes a new resourceVersion, whatever the writer's clock says.
    fn renewal(&self) -> Renewal {
        (self.holder.clone(), self.resource_version.clone())
    }
}

/// The holder and the resourceVersion of one renewal.
type Renewal = (Option<String>, Option<String>);

/// Where the Lease lives: the Kubernetes API, or memory in tests.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    async fn get(&self) -> Result<Option<LeaseRecord>, String>;
    /// Ok(false): another hub created it first.
    async fn create(&self, record: &LeaseRecord) -> Result<bool, String>;
    /// Ok(false): it changed since `record.resource_version` was read.
    async fn replace(&self, record: &LeaseRecord) -> Result<bool, String>;
}

/// One hub's side of the election.
pub struct Elector {
    me: String,
    duration: Duration,
    /// The last renewal seen, and when this hub first saw it.
    observed: Option<(Renewal, Instant)>,
}

impl Elector {
    pub fn new(me: &str, duration: Duration) -> Elector {
        Elector { me: me.to_string(), duration, observed: None }
    }

    /// One round at `now` (`wall_ms` is written into the Lease for people to read): acquires or
    /// renews the Lease when this hub may; true when it leads for this round.
    pub async fn lead(&mut self, store: &dyn LeaseStore, now: Instant, wall_ms: i64) -> bool {
        let current = match store.get().await {
            Ok(current) => current,
            Err(e) => {
                tracing::warn!("hub: cannot read the Lease {LEASE_NAMESPACE}/{LEASE_NAME}: {e}");
                return false;
            }
        };
        let duration_secs = self.duration.as_secs().clamp(1, i32::MAX as u64) as i32;
        let Some(current) = current else {
            let record = LeaseRecord {
                holder: Some(self.me.clone()),
                duration_secs,
                acquire_ms: wall_ms,
                renew_ms: wall_ms,
                transitions: 0,
                resource_version: None,
            };
            return self.write(store.create(&record).await, &record, now);
        };
        let seen = current.renewal();
        let observed_at = match &self.observed {
            Some((renewal, at)) if *renewal == seen => *at,
            _ => {
                self.observed = Some((seen, now));
                now
            }
        };
        let mine = current.holder.as_deref() == Some(self.me.as_str());
        let held_for = Duration::from_secs(current.duration_secs.max(1) as u64);
        let expired = now.duration_since(observed_at) >= held_for;
        if !mine && current.holder.is_some() && !expired {
            return false;
        }
        let record = LeaseRecord {
            holder: Some(self.me.clone()),
            duration_secs,
            acquire_ms: if mine { current.acquire_ms } else { wall_ms },
            renew_ms: wall_ms,
            transitions: if mine { current.transitions } else { current.transitions + 1 },
            resource_version: current.resource_version.clone(),
        };
        if !mine {
            tracing::info!(
                "hub: taking over the Lease {LEASE_NAMESPACE}/{LEASE_NAME} from {}",
                current.holder.as_deref().unwrap_or("nobody")
            );
        }
        self.write(store.replace(&record).await, &record, now)
    }

    fn write(&mut self, written: Result<bool, String>, record: &LeaseRecord, now: Instant) -> bool {
        match written {
            Ok(true) => {
                self.observed = Some((record.renewal(), now));
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!("hub: cannot write the Lease {LEASE_NAMESPACE}/{LEASE_NAME}: {e}");
                false
            }
        }
    }
}

/// The Lease in the Kubernetes API.
pub struct KubeLease(pub Api<Lease>);

impl KubeLease {
    pub fn new(client: kube::Client) -> KubeLease {
        KubeLease(Api::namespaced(client, LEASE_NAMESPACE))
    }

    fn object(record: &LeaseRecord) -> Lease {
        let time = |ms: i64| MicroTime(k8s_openapi::chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default());
        Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.to_string()),
                namespace: Some(LEASE_NAMESPACE.to_string()),
                resource_version: record.resource_version.clone(),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: record.holder.clone(),
                lease_duration_seconds: Some(record.duration_secs),
                acquire_time: Some(time(record.acquire_ms)),
                renew_time: Some(time(record.renew_ms)),
                lease_transitions: Some(record.transitions),
            }),
        }
    }
}

fn conflict_or_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

#[async_trait]
impl LeaseStore for KubeLease {
    async fn get(&self) -> Result<Option<LeaseRecord>, String> {
        let Some(lease) = self.0.get_opt(LEASE_NAME).await.map_err(|e| e.to_string())? else { return Ok(None) };
        let spec = lease.spec.unwrap_or_default();
        let ms = |t: Option<MicroTime>| t.map(|t| t.0.timestamp_millis()).unwrap_or(0);
        Ok(Some(LeaseRecord {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            duration_secs: spec.lease_duration_seconds.unwrap_or(0),
            acquire_ms: ms(spec.acquire_time),
            renew_ms: ms(spec.renew_time),
            transitions: spec.lease_transitions.unwrap_or(0),
            resource_version: lease.metadata.resource_version,
        }))
    }

    async fn create(&self, record: &LeaseRecord) -> Result<bool, String> {
        match self.0.create(&PostParams::default(), &KubeLease::object(record)).await {
            Ok(_) => Ok(true),
            Err(e) if conflict_or_exists(&e) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn replace(&self, record: &LeaseRecord) -> Result<bool, String> {
        match self.0.replace(LEASE_NAME, &PostParams::default(), &KubeLease::object(record)).await {
            Ok(_) => Ok(true),
            Err(e) if conflict_or_exists(&e) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests;
