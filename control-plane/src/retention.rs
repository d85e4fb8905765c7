//! Forgets what the configuration no longer keeps: ended leases after `lease_retention`
//! (counted from their expiry), audit events after `event_retention`, and revocation
//! records once every lease they covered is forgotten. The store does the removal (see
//! `store::Storage::prune`); this is the loop that asks it to.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::config::Retention;
use crate::store::{Cutoff, Pruned, Storage, StoreError};

/// How often to look. A look that finds nothing due reads one key of three trees.
const TICK: Duration = Duration::from_secs(1);

/// Most records of each kind removed by one durable write, so that pruning a backlog
/// never holds the writer long; a backlog takes several writes.
const MAX_PER_WRITE: usize = 2_000;

/// Prune forever, by `clock`.
pub async fn run(store: Arc<dyn Storage>, clock: Clock, retention: Retention) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sweep(&*store, retention.cutoff(clock.now_ms())).await {
            Ok(p) if !p.is_empty() => tracing::info!(
                leases = p.leases,
                events = p.events,
                revocations = p.revocations,
                "retention: forgot records older than the retention periods"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention pass failed"),
        }
    }
}

/// Remove everything due under `cut`, a bounded write at a time; returns the totals.
pub async fn sweep(store: &dyn Storage, cut: Cutoff) -> Result<Pruned, StoreError> {
    let mut total = Pruned::default();
    while store.prune_due(cut)? {
        let p = store.prune(cut, MAX_PER_WRITE).await?;
        total.leases += p.leases;
        total.events += p.events;
        total.revocations += p.revocations;
        if !p.more(MAX_PER_WRITE) {
            break;
        }
    }
    Ok(total)
}
