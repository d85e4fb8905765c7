//! Forgetting what is no longer kept: ended leases, old audit events and old revocation
//! records, by the retention periods of the configuration (`lease_retention`,
//! `event_retention`). Without it the database, and sled's memory with it, grows with
//! every issuance for as long as the control plane runs.
//!
//! What is looked at first is cheap: each tree is ordered by time (ended leases by a
//! `(expires_at, id)` index, events and revocations by their increasing keys), so a pass
//! that finds nothing due reads one key per tree.

use super::codec::{be, dec, get};
use super::error::Result;
use super::sled_store::{Trees, Tx};
use crate::model::{Event, Lease, LeaseState, Revocation};

/// What one pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Ended leases forgotten.
    pub leases: usize,
    /// Audit events deleted (with their index entries).
    pub events: usize,
    /// Revocation records deleted.
    pub revocations: usize,
}

impl Pruned {
    /// Whether the pass removed nothing.
    pub fn is_empty(&self) -> bool {
        *self == Pruned::default()
    }

    /// Whether some tree had more due than `limit` allowed: call again.
    pub fn more(&self, limit: usize) -> bool {
        self.leases >= limit || self.events >= limit || self.revocations >= limit
    }
}

/// The cut-off times of one pass.
#[derive(Debug, Clone, Copy)]
pub struct Cutoff {
    /// Ended leases that expired (or would have) before this unix second are forgotten,
    /// and so are revocations recorded before it.
    pub leases_before: i64,
    /// Events recorded before this unix ms are deleted.
    pub events_before_ms: i64,
}

fn key_u64(k: &[u8]) -> u64 {
    <[u8; 8]>::try_from(&k[..k.len().min(8)])
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// Whether anything is due under `cut`, read without the writer.
pub(super) fn due(t: &Trees, cut: Cutoff) -> Result<bool> {
    if let Some(k) = t.lease_ended.first()?.map(|(k, _)| k) {
        if (key_u64(&k) as i64) < cut.leases_before {
            return Ok(true);
        }
    }
    if let Some((_, v)) = t.events.first()? {
        if dec::<Event>("events", &v)?.at_ms < cut.events_before_ms {
            return Ok(true);
        }
    }
    if let Some((_, v)) = t.revocations.first()? {
        if dec::<Revocation>("revocations", &v)?.at_ms < cut.leases_before.saturating_mul(1000) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Remove up to `limit` of each kind of record due under `cut` (on the writer).
pub(super) fn prune(tx: &mut Tx<'_>, cut: Cutoff, limit: usize) -> Result<Pruned> {
    let t = tx.t;
    let mut p = Pruned::default();

    let due_leases: Vec<sled::IVec> = t
        .lease_ended
        .range(..be(cut.leases_before.max(0) as u64))
        .keys()
        .take(limit)
        .collect::<std::result::Result<_, _>>()?;
    for k in due_leases {
        let id = &k[8..];
        t.lease_ended.remove(&k)?;
        // A lease whose kind has yet to undo its effect outside Leash stays until it has:
        // `forget_ended` puts it back in this index then.
        if t.ended.contains_key(id)? {
            continue;
        }
        match get::<Lease>(&t.leases, "leases", id)? {
            // Never an active lease (the index is only written for ended ones).
            Some(l) if l.state == LeaseState::Active => {}
            Some(_) => {
                t.leases.remove(id)?;
                p.leases += 1;
            }
            None => {}
        }
    }

    let mut doomed = Vec::new();
    for kv in t.events.iter().take(limit) {
        let (k, v) = kv?;
        let e: Event = dec("events", &v)?;
        if e.at_ms >= cut.events_before_ms {
            break;
        }
        doomed.push((k, e));
    }
    if let Some((_, last)) = doomed.last() {
        super::chain::pruned_to(&t.meta, &t.checkpoints, last)?;
    }
    for (k, e) in doomed {
        for (tree, key) in [
            (&t.lease_events, &e.lease),
            (&t.task_events, &e.task),
            (&t.approval_events, &e.approval),
        ] {
            if let Some(key) = key {
                let mut ik = key.as_bytes().to_vec();
                ik.push(0);
                ik.extend_from_slice(&be(e.id));
                tree.remove(ik)?;
            }
        }
        t.events.remove(&k)?;
        p.events += 1;
    }

    let mut doomed = Vec::new();
    for kv in t.revocations.iter().take(limit) {
        let (k, v) = kv?;
        let r: Revocation = dec("revocations", &v)?;
        if r.at_ms >= cut.leases_before.saturating_mul(1000) {
            break;
        }
        doomed.push(k);
    }
    for k in doomed {
        t.revocations.remove(k)?;
        p.revocations += 1;
    }
    Ok(p)
}
