//! The queue of ended leases whose kind has yet to undo something outside Leash (the
//! `ended` tree, filled by `Tx::put_lease`): reading it with each entry's state, recording
//! a failed attempt with its event, and taking entries off with the events their end
//! step produced, each in one durable write. The loop that works through it is
//! `issuance::ends`.

use super::codec::{dec, enc, ended_key, get};
use super::error::Result;
use super::sled_store::{Trees, Tx};
use crate::model::{Event, Lease, PendingEnd};

/// Longest last error kept with an entry, in characters (the event keeps the same).
pub(super) const MAX_ERROR_CHARS: usize = 500;

/// An entry as stored; an empty value (written before entries had a state) is the
/// default. The lease id and, when the value does not name it, the credential are filled
/// in.
fn decode(t: &Trees, id: &[u8], v: &[u8]) -> Result<PendingEnd> {
    let mut p: PendingEnd = if v.is_empty() {
        PendingEnd::default()
    } else {
        dec("ended", v)?
    };
    p.lease = String::from_utf8_lossy(id).into_owned();
    if p.credential.is_empty() {
        if let Some(l) = get::<Lease>(&t.leases, "leases", id)? {
            p.credential = l.credential;
        }
    }
    Ok(p)
}

/// Every queued entry, or those of one credential, in lease-id order.
pub(super) fn pending_ends(t: &Trees, credential: Option<&str>) -> Result<Vec<PendingEnd>> {
    let mut out = Vec::new();
    for kv in t.ended.iter() {
        let (k, v) = kv?;
        let p = decode(t, &k, &v)?;
        if credential.is_none_or(|c| c == p.credential) {
            out.push(p);
        }
    }
    Ok(out)
}

/// The entry of one lease, if it is queued.
pub(super) fn pending_end(t: &Trees, lease: &str) -> Result<Option<PendingEnd>> {
    match t.ended.get(lease.as_bytes())? {
        Some(v) => Ok(Some(decode(t, lease.as_bytes(), &v)?)),
        None => Ok(None),
    }
}

/// Up to `limit` queued leases, as leases.
pub(super) fn ended_leases(t: &Trees, limit: usize) -> Result<Vec<Lease>> {
    next_ended(t, limit, &|_| false)
}

/// Up to `limit` queued leases whose id `skip` does not pick. Only the keys of skipped
/// entries are read.
pub(super) fn next_ended(
    t: &Trees,
    limit: usize,
    skip: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<Lease>> {
    let mut out = Vec::new();
    for id in t.ended.iter().keys() {
        if out.len() >= limit {
            break;
        }
        let id = id?;
        if skip(&String::from_utf8_lossy(&id)) {
            continue;
        }
        if let Some(l) = get::<Lease>(&t.leases, "leases", &id)? {
            out.push(l);
        }
    }
    Ok(out)
}

/// Text cut to [`MAX_ERROR_CHARS`].
pub(super) fn clip(s: String) -> String {
    if s.chars().count() <= MAX_ERROR_CHARS {
        s
    } else {
        format!("{}…", s.chars().take(MAX_ERROR_CHARS).collect::<String>())
    }
}

/// Record a failed end step of `lease` (one more attempt, its error and time) and its
/// event, whose detail gains `error` and `attempt`. A lease no longer queued (taken off
/// meanwhile) only gets the event.
pub(super) fn failed(
    tx: &mut Tx<'_>,
    lease: &str,
    error: String,
    at_ms: i64,
    mut event: Event,
) -> Result<()> {
    let error = clip(error);
    let mut attempt = 0;
    if let Some(v) = tx.t.ended.get(lease.as_bytes())? {
        let mut p = decode(tx.t, lease.as_bytes(), &v)?;
        p.attempts = p.attempts.saturating_add(1);
        p.last_error = error.clone();
        p.last_attempt_ms = at_ms;
        attempt = p.attempts;
        tx.t.ended.insert(lease.as_bytes(), enc(&p))?;
        tx.ended_changed = true;
    }
    if !event.detail.is_object() {
        event.detail = serde_json::json!({});
    }
    event.detail["error"] = error.into();
    event.detail["attempt"] = attempt.into();
    tx.event(event)
}

/// Take leases off the queue once their end step succeeded, recording the events it
/// returned with each.
pub(super) fn forget(tx: &mut Tx<'_>, done: Vec<(String, Vec<Event>)>) -> Result<()> {
    for (id, events) in done {
        if tx.t.ended.remove(id.as_bytes())?.is_some() {
            tx.ended_changed = true;
        }
        // Back under retention, if pruning passed it by while its end was pending.
        if let Some(l) = get::<Lease>(&tx.t.leases, "leases", id.as_bytes())? {
            tx.t.lease_ended.insert(ended_key(&l), &[])?;
        }
        for e in events {
            tx.event(e)?;
        }
    }
    Ok(())
}
