//! Marks leases `expired` once their tokens expire, so the lease list, the audit trail
//! and introspection agree with what agents already wiped on their own timers.

use std::sync::Arc;
use std::time::Duration;

use crate::model::LeaseState;
use crate::server::Shared;

/// How often to sweep.
const SWEEP: Duration = Duration::from_secs(1);

/// Sweep forever.
pub async fn run(s: Arc<Shared>) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = s.clock.now();
        // An index by expiry: the sweep reads only what is due.
        let due = match s.store.expired_leases(now, 10_000) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "expiry sweep could not list leases");
                continue;
            }
        };
        if due.is_empty() {
            continue;
        }
        match s
            .store
            .finish_leases(due, LeaseState::Expired, "expired".into())
            .await
        {
            Ok(done) => tracing::debug!(count = done.len(), "leases expired"),
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
        }
    }
}
