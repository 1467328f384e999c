//! The election over an in-memory Lease that behaves as the API does (create once, replace only
//! against the version read): one leader at a time, a silent leader replaced after the lease's
//! duration as its followers saw it, and a conflict losing the race.

use std::sync::Mutex;

use super::*;

#[derive(Default)]
struct MemoryLease {
    lease: Mutex<Option<LeaseRecord>>,
    version: Mutex<u64>,
    /// Answers errors (the API away) while set.
    away: Mutex<bool>,
}

impl MemoryLease {
    fn holder(&self) -> Option<String> {
        self.lease.lock().unwrap().as_ref().and_then(|l| l.holder.clone())
    }
}

#[async_trait]
impl LeaseStore for MemoryLease {
    async fn get(&self) -> Result<Option<LeaseRecord>, String> {
        if *self.away.lock().unwrap() {
            return Err("connection refused".into());
        }
        Ok(self.lease.lock().unwrap().clone())
    }

    async fn create(&self, record: &LeaseRecord) -> Result<bool, String> {
        let mut lease = self.lease.lock().unwrap();
        if lease.is_some() {
            return Ok(false);
        }
        let mut version = self.version.lock().unwrap();
        *version += 1;
        *lease = Some(LeaseRecord { resource_version: Some(version.to_string()), ..record.clone() });
        Ok(true)
    }

    async fn replace(&self, record: &LeaseRecord) -> Result<bool, String> {
        let mut lease = self.lease.lock().unwrap();
        let current = lease.as_ref().and_then(|l| l.resource_version.clone());
        if current != record.resource_version {
            return Ok(false);
        }
        let mut version = self.version.lock().unwrap();
        *version += 1;
        *lease = Some(LeaseRecord { resource_version: Some(version.to_string()), ..record.clone() });
        Ok(true)
    }
}

const HELD: Duration = Duration::from_secs(30);

#[tokio::test]
async fn one_hub_leads_and_renews_while_the_others_follow() {
    let store = MemoryLease::default();
    let (mut s1, mut s2, mut s3) = (Elector::new("s1", HELD), Elector::new("s2", HELD), Elector::new("s3", HELD));
    let t0 = Instant::now();
    assert!(s1.lead(&store, t0, 1_000).await, "the first to come creates the Lease");
    for round in 1..20u64 {
        let now = t0 + Duration::from_secs(10 * round);
        let wall = 1_000 + 10_000 * round as i64;
        assert!(!s2.lead(&store, now, wall).await, "round {round}");
        assert!(!s3.lead(&store, now, wall).await, "round {round}");
        assert!(s1.lead(&store, now, wall).await, "round {round}: the holder renews");
    }
    let lease = store.lease.lock().unwrap().clone().unwrap();
    assert_eq!((lease.holder.as_deref(), lease.transitions, lease.acquire_ms), (Some("s1"), 0, 1_000));
    assert_eq!(lease.renew_ms, 1_000 + 10_000 * 19);
}

#[tokio::test]
async fn a_silent_leader_is_replaced_once_a_follower_saw_it_unrenewed_for_the_whole_duration() {
    let store = MemoryLease::default();
    let (mut s1, mut s2) = (Elector::new("s1", HELD), Elector::new("s2", HELD));
    let t0 = Instant::now();
    assert!(s1.lead(&store, t0, 0).await);
    // s1 goes silent. s2 first sees the record at t0+5 s: its 30 s count from there, on its own
    // clock, whatever renewTime says (a server whose clock is far off cannot shorten it).
    assert!(!s2.lead(&store, t0 + Duration::from_secs(5), 999_999_999).await);
    assert!(!s2.lead(&store, t0 + Duration::from_secs(34), 999_999_999).await, "not before 30 s of silence");
    assert!(s2.lead(&store, t0 + Duration::from_secs(35), 1_035_000).await, "then it takes over");
    let lease = store.lease.lock().unwrap().clone().unwrap();
    assert_eq!((lease.holder.as_deref(), lease.transitions, lease.acquire_ms), (Some("s2"), 1, 1_035_000));

    // s1 comes back: it sees s2 renewing and follows.
    for round in 0..5u64 {
        let now = t0 + Duration::from_secs(40 + 10 * round);
        assert!(s2.lead(&store, now, 0).await);
        assert!(!s1.lead(&store, now, 0).await, "round {round}");
    }
}

#[tokio::test]
async fn of_two_followers_taking_over_at_once_the_api_accepts_one() {
    let store = MemoryLease::default();
    let (mut s1, mut s2, mut s3) = (Elector::new("s1", HELD), Elector::new("s2", HELD), Elector::new("s3", HELD));
    let t0 = Instant::now();
    assert!(s1.lead(&store, t0, 0).await);
    let later = t0 + Duration::from_secs(1);
    assert!(!s2.lead(&store, later, 0).await);
    assert!(!s3.lead(&store, later, 0).await);
    // Both see the lease expired and read the same version; the second write is a conflict.
    let expired = later + HELD;
    let (a, b) = tokio::join!(s2.lead(&store, expired, 1), s3.lead(&store, expired, 1));
    assert!(a ^ b, "exactly one leader: s2 {a}, s3 {b}");
    assert_eq!(store.holder().as_deref(), Some(if a { "s2" } else { "s3" }));
}

#[tokio::test]
async fn a_hub_that_cannot_reach_the_lease_does_not_lead() {
    let store = MemoryLease::default();
    let mut s1 = Elector::new("s1", HELD);
    let t0 = Instant::now();
    assert!(s1.lead(&store, t0, 0).await);
    *store.away.lock().unwrap() = true;
    assert!(!s1.lead(&store, t0 + Duration::from_secs(10), 0).await, "no renewal confirmed: no patches");
    *store.away.lock().unwrap() = false;
    assert!(s1.lead(&store, t0 + Duration::from_secs(20), 0).await, "its own Lease again");
}
