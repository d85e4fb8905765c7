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
    use super::*;
    use crate::fixtures;
    use crate::model::{Event, Host};
    use crate::store::SledStore;

    /// A store holding one workload, one host and one lease that expires a minute after
    /// `clock`'s now.
    async fn store_with_a_lease(dir: &std::path::Path, clock: &Clock) -> Arc<SledStore> {
        let s = SledStore::open(dir, clock.clone()).expect("open");
        let now = clock.now();
        s.put_workload(fixtures::workload("w"), Event::new("workload-added"))
            .await
            .expect("workload");
        s.put_join_token(fixtures::token("t"), Event::new("join-token-created"))
            .await
            .expect("token");
        let host = Host {
            enrolled_at: now,
            last_seen: now,
            cert_not_after: now + 3600,
            ..fixtures::host("h", "01")
        };
        s.enroll("t", "x", host, now, Event::new("enrolled"))
            .await
            .expect("enroll");
        let lease = Lease {
            issued_at: now,
            expires_at: now + 60,
            ..fixtures::lease("l1", "w")
        };
        s.issue_lease(lease, Event::new("issued").lease("l1"), Vec::new())
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
