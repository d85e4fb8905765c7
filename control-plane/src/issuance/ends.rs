//! The one place a lease's end reaches outside Leash.
//!
//! Every path that ends a lease (revocation of any target, expiry, task completion, the
//! re-evaluation after `policy apply`, owner offboarding, host eviction, disabling a
//! workload) marks it in the store, and the store queues a lease whose kind
//! [`ends_outside`](crate::kinds::CredentialKind::ends_outside) in the same durable write.
//! This task takes the queue, asks each lease's kind to undo what it set up
//! ([`CredentialKind::end`](crate::kinds::CredentialKind::end)), and takes the lease off
//! the queue, with the events the kind returned, in one write once that succeeded.
//!
//! - It wakes as soon as a write queues a lease (`Storage::ended_changes`), not on a
//!   poll: a revoked database role is dropped within milliseconds of `revoke` returning.
//! - Up to [`CONCURRENCY`] end steps run at once, so leases ended together (a workload's,
//!   an owner's) are not ended one after the other, and one slow outside system does not
//!   hold up the rest.
//! - A failed step is recorded durably (attempts, last error, the kind's failed-end
//!   event: `Storage::end_failed`) and tried again after a pause that doubles up to
//!   [`MAX_BACKOFF`]. It never gives up: a database down for an hour has its roles
//!   dropped when it is back. What is queued survives a restart (and is tried at once
//!   then; the pause is kept in memory only).
//!
//! A lease minted but never written (the write was refused or failed) is ended at once,
//! best effort, by [`end_unwritten`]; what that misses, the kind's reconciler finds
//! (`reconcile`).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};

use crate::kinds::{CredentialKind, KindEvent};
use crate::model::{Event, Lease};
use crate::state::Shared;

/// The longest the worker sleeps when nothing wakes it: a safety net only (a write that
/// queues a lease wakes it at once).
const POLL: Duration = Duration::from_secs(5);
/// Pause before a failed end step is tried again the first time.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest pause before a failed end step is tried again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// End steps run at once.
pub const CONCURRENCY: usize = 16;
/// Longest an end step may take before it counts as failed (and its slot is freed): an
/// outside system that never answers must not hold the queue.
pub const END_TIMEOUT: Duration = Duration::from_secs(60);

/// What the worker keeps in memory: failed end steps (when each may be tried again, and
/// the pause after the next failure) and the steps running now.
#[derive(Debug)]
pub struct Retries {
    due: HashMap<String, (Instant, Duration)>,
    running: HashSet<String>,
    /// [`END_TIMEOUT`], shorter in tests.
    timeout: Duration,
}

impl Default for Retries {
    fn default() -> Retries {
        Retries {
            due: HashMap::new(),
            running: HashSet::new(),
            timeout: END_TIMEOUT,
        }
    }
}

impl Retries {
    /// With end steps timing out after `timeout` (tests).
    #[cfg(test)]
    pub fn with_timeout(timeout: Duration) -> Retries {
        Retries {
            timeout,
            ..Retries::default()
        }
    }

    /// Whether `id` is running now or waiting out its pause at `now`.
    fn skip(&self, id: &str, now: Instant) -> bool {
        self.running.contains(id) || self.due.get(id).is_some_and(|(at, _)| *at > now)
    }

    /// When the next failed step may be tried again.
    fn next_due(&self) -> Option<Instant> {
        self.due.values().map(|(at, _)| *at).min()
    }

    /// A step finished: forget it on success, else set its next pause.
    fn finished(&mut self, id: String, ended: bool) {
        self.running.remove(&id);
        if ended {
            self.due.remove(&id);
            return;
        }
        let pause = self
            .due
            .get(&id)
            .map_or(FIRST_BACKOFF, |(_, p)| (*p * 2).min(MAX_BACKOFF));
        self.due.insert(id, (Instant::now() + pause, pause));
    }

    /// The pause that was set for `id` after its last failure (tests).
    #[cfg(test)]
    pub fn pause_of(&self, id: &str) -> Option<Duration> {
        self.due.get(id).map(|(_, p)| *p)
    }
}

type Step<'a> = Pin<Box<dyn Future<Output = (String, bool)> + Send + 'a>>;

/// Work through the queue until the task is aborted.
pub async fn run(s: Arc<Shared>) {
    let s = &*s;
    let mut retries = Retries::default();
    let mut running: FuturesUnordered<Step<'_>> = FuturesUnordered::new();
    let mut writes = s.store.ended_changes();
    let mut watching = true;
    // Read the queue on the first pass, after a write queued a lease, after a pause ran
    // out, and when a step finished while more were waiting for a free slot.
    let mut look = true;
    let mut queued = writes.borrow_and_update().queued;
    loop {
        if look {
            look = start(s, &mut retries, &mut running);
        }
        let sleep = retries
            .next_due()
            .map_or(POLL, |at| at.saturating_duration_since(Instant::now()))
            .min(POLL);
        tokio::select! {
            Some((id, ended)) = running.next(), if !running.is_empty() => {
                retries.finished(id, ended);
            }
            r = writes.changed(), if watching => {
                match r {
                    Ok(()) => {
                        let now = writes.borrow_and_update().queued;
                        // Only a write that queued something is news; the worker's own
                        // writes (attempts recorded, leases taken off) are not.
                        if now != queued {
                            queued = now;
                            look = true;
                        }
                    }
                    // The store is gone (shutting down): fall back to the poll.
                    Err(_) => watching = false,
                }
            }
            _ = tokio::time::sleep(sleep) => look = true,
        }
    }
}

/// Start end steps for queued leases that are neither running nor waiting out a pause,
/// up to [`CONCURRENCY`] running at once. Returns whether some were left for lack of a
/// free slot.
fn start<'a>(
    s: &'a Shared,
    retries: &mut Retries,
    running: &mut FuturesUnordered<Step<'a>>,
) -> bool {
    let free = CONCURRENCY.saturating_sub(running.len());
    if free == 0 {
        return true;
    }
    let now = Instant::now();
    // One more than there is room for: whether anything is left waiting.
    let leases = match s.store.next_ended(free + 1, &|id| retries.skip(id, now)) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the queue of ended leases");
            return false;
        }
    };
    let more = leases.len() > free;
    for l in leases.into_iter().take(free) {
        retries.running.insert(l.id.clone());
        running.push(Box::pin(end_queued(s, l, retries.timeout)));
    }
    more
}

/// One pass over the queue, waiting for every step it starts (tests; the worker keeps
/// steps running across passes). Returns how many leases were taken off the queue.
pub async fn process(s: &Shared, retries: &mut Retries) -> usize {
    let mut running: FuturesUnordered<Step<'_>> = FuturesUnordered::new();
    let mut done = 0;
    loop {
        let more = start(s, retries, &mut running);
        if running.is_empty() {
            return done;
        }
        while let Some((id, ended)) = running.next().await {
            done += usize::from(ended);
            retries.finished(id, ended);
        }
        if !more {
            return done;
        }
    }
}

/// The event a kind reported about a lease, as it is recorded on the lease's timeline.
pub fn lease_event(l: &Lease, e: KindEvent) -> Event {
    let mut ev = Event::new(e.kind)
        .actor("control-plane")
        .host(l.host.clone())
        .workload(l.workload.clone())
        .credential(l.credential.clone())
        .lease(l.id.clone())
        .detail(e.detail);
    ev.task = l.task.clone();
    ev
}

/// The kind of a lease's credential, or why there is none to ask: the credential is gone
/// or of a kind this build does not have (the entry stays queued, and is ended once the
/// credential is back), or the store could not be read.
fn kind_of(s: &Shared, l: &Lease) -> Result<Arc<dyn CredentialKind>, String> {
    match s.store.credential(&l.credential) {
        Ok(Some(c)) => s.kinds.get(&c.kind).cloned().ok_or_else(|| {
            format!(
                "credential {} is of kind {}, which this control plane does not have ({})",
                l.credential,
                c.kind,
                s.kinds.names().join(", ")
            )
        }),
        Ok(None) => Err(format!(
            "credential {} is gone: what this lease set up outside Leash stays until the \
             credential is added again (or is undone by hand)",
            l.credential
        )),
        Err(e) => Err(format!("cannot read credential {}: {e}", l.credential)),
    }
}

/// The end step of one queued lease, and the write that records how it went. Returns
/// the lease id and whether it was taken off the queue. It is never given up: a step
/// that cannot be carried out stays queued, with its attempts and last error for
/// `lease show`.
async fn end_queued(s: &Shared, l: Lease, timeout: Duration) -> (String, bool) {
    let id = l.id.clone();
    let kind = kind_of(s, &l);
    let result = match &kind {
        Ok(kind) => match tokio::time::timeout(timeout, kind.end(s.env(), &l)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {}", crate::config::show(timeout))),
        },
        Err(why) => Err(why.clone()),
    };
    match result {
        Ok(events) => {
            let events = events.into_iter().map(|e| lease_event(&l, e)).collect();
            (id.clone(), forget(s, id, events).await)
        }
        Err(error) => {
            let (name, failed) = match &kind {
                Ok(k) => (k.name(), k.end_failed_event()),
                Err(_) => ("?", "end-failed"),
            };
            tracing::warn!(lease = %id, kind = name, error = %error,
                "the end of a lease could not be carried out outside Leash; it stays queued and is tried again");
            let event = lease_event(
                &l,
                KindEvent {
                    kind: failed,
                    detail: serde_json::json!({}),
                },
            );
            if let Err(e) = s
                .store
                .end_failed(&id, error, s.clock.now_ms(), event)
                .await
            {
                tracing::warn!(error = %e, lease = %id, "cannot record a failed end step");
            }
            (id, false)
        }
    }
}

/// Take a lease off the queue with its events; whether that was written.
async fn forget(s: &Shared, id: String, events: Vec<Event>) -> bool {
    match s.store.forget_ended(vec![(id.clone(), events)]).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, lease = %id,
                "cannot take an ended lease off the queue; it will be ended again");
            false
        }
    }
}

/// A lease that was minted but never written (refused, stale, or the write failed): undo
/// at once, best effort, what its kind set up outside Leash. A failure is logged; the
/// kind's reconciler finds what is left.
pub async fn end_unwritten(s: &Shared, kind: &dyn CredentialKind, l: &Lease) {
    if !kind.ends_outside() {
        return;
    }
    match kind.end(s.env(), l).await {
        Ok(_) => tracing::info!(lease = %l.id, kind = kind.name(),
            "a lease that was not written was ended at once"),
        Err(e) => tracing::warn!(lease = %l.id, kind = kind.name(), error = %e,
            "a lease that was not written could not be ended; the reconciler will find what is left"),
    }
}
