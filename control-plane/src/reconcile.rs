//! The reconciler: at start and every `reconcile_interval` (by the control plane's
//! clock), each credential whose kind undoes something outside Leash is asked to find
//! what it set up there that no active lease accounts for, and to undo it
//! ([`CredentialKind::reconcile`](crate::kinds::CredentialKind::reconcile)). That covers
//! a crash between minting and the lease write, a restore from backup, and something
//! re-created by hand. The events the kind returns (`role-dropped` with `reconciled`)
//! go on the leases' timelines. A failure is logged and tried again next round.

use std::sync::Arc;
use std::time::Duration;

use crate::issuance::ends::lease_event;
use crate::kinds::KindEvent;
use crate::model::{Credential, Event};
use crate::state::Shared;

/// How often the clock is looked at: a moved test clock starts a round within this.
const TICK: Duration = Duration::from_secs(1);

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    /// Credentials whose kind was asked.
    pub credentials: usize,
    /// Events recorded (one per thing undone).
    pub undone: usize,
    /// Credentials whose reconcile failed (logged).
    pub failed: usize,
}

/// Reconcile at start, then every `reconcile_interval`, until the task is aborted.
pub async fn run(s: Arc<Shared>) {
    let every = i64::try_from(s.config.reconcile_interval.as_millis()).unwrap_or(i64::MAX);
    let mut next = i64::MIN;
    let mut tick = tokio::time::interval(TICK.min(s.config.reconcile_interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if s.clock.now_ms() < next {
            continue;
        }
        let r = round(&s).await;
        if r.undone > 0 || r.failed > 0 {
            tracing::info!(
                credentials = r.credentials,
                undone = r.undone,
                failed = r.failed,
                "reconciled what was set up outside Leash with the active leases"
            );
        }
        next = s.clock.now_ms().saturating_add(every);
    }
}

/// One round over every credential whose kind undoes something outside Leash.
pub async fn round(s: &Shared) -> Round {
    let mut r = Round::default();
    let credentials = match s.store.credentials() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "reconcile: cannot read the credentials; trying again next round");
            r.failed += 1;
            return r;
        }
    };
    for c in credentials {
        let Some(kind) = s.kinds.get(&c.kind).cloned() else {
            continue;
        };
        if !kind.ends_outside() {
            continue;
        }
        r.credentials += 1;
        let undone = match kind.reconcile(s.env(), &c).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(credential = %c.name, kind = kind.name(), error = %e,
                    "reconcile failed; trying again next round");
                r.failed += 1;
                continue;
            }
        };
        if undone.is_empty() {
            continue;
        }
        let events: Vec<Event> = undone
            .into_iter()
            .map(|(lease, e)| event_for(s, &c, &lease, e))
            .collect();
        let n = events.len();
        match s.store.append_events(events).await {
            Ok(()) => r.undone += n,
            Err(e) => {
                tracing::warn!(credential = %c.name, error = %e,
                    "reconcile: cannot record what was undone");
                r.failed += 1;
            }
        }
    }
    r
}

/// The event for something undone: on its lease's timeline when the lease is known,
/// else on the credential's.
fn event_for(s: &Shared, c: &Credential, lease: &str, e: KindEvent) -> Event {
    if !lease.is_empty() {
        if let Ok(Some(l)) = s.store.lease(lease) {
            return lease_event(&l, e).actor("reconciler");
        }
    }
    let ev = Event::new(e.kind)
        .actor("reconciler")
        .credential(c.name.clone())
        .detail(e.detail);
    if lease.is_empty() {
        ev
    } else {
        ev.lease(lease)
    }
}
