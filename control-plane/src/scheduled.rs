//! Carries out the revocations a rotation with a grace period promised
//! (`leashctl secret rotate --grace`). They are stored durably at the rotation, so a
//! restart keeps them; this loop revokes each once it is due by the injected clock,
//! through the store's normal revocation (pushed to agents, wiped, acknowledged).

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::model::Revocation;
use crate::store::{Storage, StoreError};

/// How often to look. Short, so a clock moved forward (proto/src/clock.rs) takes effect
/// within a tick; a look that finds nothing due reads one key.
const TICK: Duration = Duration::from_millis(100);

/// Most scheduled revocations carried out per look.
const MAX_PER_LOOK: usize = 256;

/// Look forever, by `clock`.
pub async fn run(store: Arc<dyn Storage>, clock: Clock) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sweep(&*store, clock.now()).await {
            Ok(done) => {
                for rev in done {
                    tracing::info!(seq = rev.seq, leases = rev.lease_ids.len(), reason = %rev.reason,
                        "scheduled revocation carried out");
                }
            }
            Err(e) => tracing::warn!(error = %e, "scheduled revocations: pass failed"),
        }
    }
}

/// Carry out every scheduled revocation due at `now` (unix seconds); returns the
/// revocations recorded (none for one whose leases had all ended meanwhile).
pub async fn sweep(store: &dyn Storage, now: i64) -> Result<Vec<Revocation>, StoreError> {
    let mut out = Vec::new();
    for s in store.scheduled_due(now, MAX_PER_LOOK)? {
        if let Some(rev) = store.run_scheduled(s).await? {
            out.push(rev);
        }
    }
    Ok(out)
}
