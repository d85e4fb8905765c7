//! Marks leases `expired` once their tokens expire, so the lease list, the audit trail
//! and introspection agree with what agents already wiped on their own timers.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::model::{Lease, LeaseState};
use crate::store::{Storage, StoreError};

/// How often to look for due leases. Short, so that a clock moved forward (see
/// proto/src/clock.rs) takes effect within a tick; a look that finds nothing due is one
/// empty range read of the expiry index.
const TICK: Duration = Duration::from_millis(100);

/// Most leases finished by one sweep; the rest wait for the next tick.
const MAX_PER_SWEEP: usize = 10_000;

/// Sweep forever, by `clock`.
pub async fn run(store: Arc<dyn Storage>, clock: Clock) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sweep(&*store, clock.now()).await {
            Ok(done) if !done.is_empty() => {
                tracing::debug!(count = done.len(), "leases expired");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
        }
    }
}

/// Move every active lease that expires at or before `now` (unix seconds) to `expired`,
/// with an event each; returns the leases moved.
pub async fn sweep(store: &dyn Storage, now: i64) -> Result<Vec<Lease>, StoreError> {
    // An index by expiry: the sweep reads only what is due.
    let due = store.expired_leases(now, MAX_PER_SWEEP)?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    store
        .finish_leases(due, LeaseState::Expired, "expired".into())
        .await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Event, Host, JoinTokenRecord, Workload};
    use crate::store::SledStore;
    use leash_proto::workload_kind::WorkloadKind;

    /// A store holding one workload, one host and one lease that expires a minute after
    /// `clock`'s now.
    async fn store_with_a_lease(dir: &std::path::Path, clock: &Clock) -> Arc<SledStore> {
        let s = SledStore::open(dir, clock.clone()).expect("open");
        let now = clock.now();
        s.put_workload(
            Workload {
                name: "w".into(),
                owner: "team".into(),
                kind: WorkloadKind::Job,
                selectors: vec!["unix:uid:1".into()],
                hosts: BTreeMap::new(),
                allow: vec![],
                expires_at: 0,
                disabled: false,
                created_at: now,
            },
            Event::new("workload-added"),
        )
        .await
        .expect("workload");
        s.put_join_token(
            JoinTokenRecord {
                id: "t".into(),
                secret_sha256: "x".into(),
                name: None,
                labels: BTreeMap::new(),
                created_at: now,
                expires_at: now + 600,
                used_by: None,
                revoked: false,
            },
            Event::new("join-token-created"),
        )
        .await
        .expect("token");
        let host = Host {
            name: "h".into(),
            labels: BTreeMap::new(),
            enrolled_at: now,
            last_seen: now,
            evicted: false,
            cert_serial: "01".into(),
            cert_not_after: now + 3600,
        };
        s.enroll("t", "x", host, now, Event::new("enrolled"))
            .await
            .expect("enroll");
        let lease = Lease {
            id: "l1".into(),
            workload: "w".into(),
            credential: "c".into(),
            action: "read".into(),
            audience: "a".into(),
            host: "h".into(),
            task: None,
            on_behalf_of: None,
            approval: None,
            context: None,
            policy_version: 0,
            issued_at: now,
            expires_at: now + 60,
            seq: 0,
            state: LeaseState::Active,
            reason: None,
            fingerprint: "f".into(),
            ends_outside: false,
        };
        s.issue_lease(lease, Event::new("issued").lease("l1"))
            .await
            .expect("lease");
        s
    }

    fn state(s: &SledStore, id: &str) -> LeaseState {
        s.lease(id).expect("read").expect("present").state
    }

    #[tokio::test]
    async fn an_advanced_clock_expires_a_lease_without_sleeping() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Clock::default();
        let s = store_with_a_lease(dir.path(), &clock).await;
        assert!(sweep(&*s, clock.now()).await.expect("sweep").is_empty());
        assert_eq!(state(&s, "l1"), LeaseState::Active);

        clock.advance_ms(61_000);
        let done = sweep(&*s, clock.now()).await.expect("sweep");
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(state(&s, "l1"), LeaseState::Expired);
        let timeline: Vec<(String, i64)> = s
            .lease_events("l1")
            .expect("events")
            .into_iter()
            .map(|e| (e.kind, e.at_ms))
            .collect();
        assert_eq!(timeline.len(), 2, "{timeline:?}");
        assert_eq!(timeline[1].0, "expired");
        assert!(
            timeline[1].1 - timeline[0].1 >= 61_000,
            "the expiry is dated by the advanced clock: {timeline:?}"
        );
    }

    #[tokio::test]
    async fn the_sweeper_follows_a_moved_clock_within_a_tick() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Clock::default();
        let s = store_with_a_lease(dir.path(), &clock).await;
        let sweeper = tokio::spawn(run(s.clone(), clock.clone()));
        // Several ticks with the lease not yet due.
        for _ in 0..3 {
            tokio::time::sleep(TICK).await;
            assert_eq!(state(&s, "l1"), LeaseState::Active);
        }
        clock.advance_ms(61_000);
        let moved = std::time::Instant::now();
        while state(&s, "l1") == LeaseState::Active {
            assert!(
                moved.elapsed() < Duration::from_secs(5),
                "the sweeper did not see the moved clock"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(state(&s, "l1"), LeaseState::Expired);
        sweeper.abort();
    }
}
