//! The one place a lease's end reaches outside Leash.
//!
//! Every path that ends a lease (revocation of any target, expiry, task completion, the
//! re-evaluation after `policy apply`, owner offboarding, host eviction, disabling a
//! workload) marks it in the store, and the store queues a lease whose kind
//! [`ends_outside`](crate::kinds::CredentialKind::ends_outside) in the same durable write.
//! This task takes the queue, asks each lease's kind to undo what it set up
//! ([`CredentialKind::end`](crate::kinds::CredentialKind::end)), and takes the lease off
//! the queue once that succeeded. What is queued survives a restart; a failed step is
//! retried with a growing pause (up to a minute), logged each time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::state::Shared;

/// How often the queue is looked at when nothing is in it.
const POLL: Duration = Duration::from_millis(500);
/// Longest pause before a failed end step is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Leases taken from the queue at a time.
const BATCH: usize = 256;

/// Failed end steps: when each may be tried again, and the pause after the next failure.
#[derive(Debug, Default)]
pub struct Retries(HashMap<String, (Instant, Duration)>);

/// Work through the queue until the task is aborted.
pub async fn run(s: Arc<Shared>) {
    let mut retries = Retries::default();
    loop {
        process(&s, &mut retries).await;
        tokio::time::sleep(POLL).await;
    }
}

/// One pass over the queue; the ids whose end step succeeded are taken off it. Returns
/// how many were.
pub async fn process(s: &Shared, retries: &mut Retries) -> usize {
    let leases = match s.store.ended_leases(BATCH) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the queue of ended leases");
            return 0;
        }
    };
    let env = s.env();
    let now = Instant::now();
    let mut done = Vec::new();
    for l in leases {
        if retries.0.get(&l.id).is_some_and(|(at, _)| *at > now) {
            continue;
        }
        let kind = match s.store.credential(&l.credential) {
            Ok(Some(c)) => s.kinds.get(&c.kind).cloned(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, lease = %l.id, "cannot read the credential of an ended lease");
                continue;
            }
        };
        let Some(kind) = kind else {
            // The credential is gone or of a kind this build does not have: nothing here
            // can undo it. Say so once and drop it from the queue.
            tracing::error!(lease = %l.id, credential = %l.credential,
                "an ended lease's credential kind is unknown; what it set up outside Leash was not undone");
            done.push(l.id);
            continue;
        };
        match kind.end(env, &l).await {
            Ok(_events) => {
                retries.0.remove(&l.id);
                done.push(l.id);
            }
            Err(e) => {
                let pause = retries
                    .0
                    .get(&l.id)
                    .map_or(Duration::from_secs(1), |(_, p)| (*p * 2).min(MAX_BACKOFF));
                tracing::warn!(lease = %l.id, kind = kind.name(), error = %e,
                    retry_in_secs = pause.as_secs(), "the end of a lease could not be carried out outside Leash");
                retries.0.insert(l.id, (now + pause, pause));
            }
        }
    }
    let n = done.len();
    if n > 0 {
        if let Err(e) = s.store.forget_ended(done).await {
            tracing::warn!(error = %e, "cannot take ended leases off the queue; they will be ended again");
            return 0;
        }
    }
    n
}
