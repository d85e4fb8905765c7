//! The audit chain in the store: where it stands (`meta`: `audit_genesis`, `audit_head`,
//! `audit_anchor`) and the signed checkpoints (tree `audit_checkpoints`, key: event id
//! BE then 0 for periodic or 1 for anchor). Events are linked as they are written
//! (`Tx::event`); the head is written with `event_id` in the same flush, so it is
//! durable with the batch. The encoding is in `audit_chain.rs`.

use super::codec::{be, dec, enc, meta_u64};
use super::error::Result;
use super::kv::Tree;
use crate::audit_chain::{ChainState, Checkpoint, CheckpointKind, Link, ZERO_HASH};
use crate::model::Event;

pub(super) const GENESIS_KEY: &str = "audit_genesis";
pub(super) const HEAD_KEY: &str = "audit_head";
pub(super) const ANCHOR_KEY: &str = "audit_anchor";

/// The chain's head at open. A store from before the chain (or a new one) starts it at
/// the next event: `audit_genesis` records that id, so `verify` tells the events before
/// it (no hash) from tampering. Returns whether it wrote anything (to flush).
pub(super) fn open_head(meta: &Tree, event_id: u64) -> Result<(Link, bool)> {
    if let Some(v) = meta.get(HEAD_KEY)? {
        return Ok((dec("meta", &v)?, false));
    }
    let head = Link {
        id: event_id,
        hash: ZERO_HASH.to_string(),
    };
    meta.insert(GENESIS_KEY, &be(event_id + 1))?;
    meta.insert(HEAD_KEY, enc(&head))?;
    Ok((head, true))
}

fn checkpoint_key(id: u64, kind: CheckpointKind) -> Vec<u8> {
    let mut k = be(id).to_vec();
    k.push(match kind {
        CheckpointKind::Periodic => 0,
        CheckpointKind::Anchor => 1,
    });
    k
}

/// Retention forgot `last` (the newest event it removed): make it the anchor, and
/// forget the checkpoints before it (they sign events no longer kept).
pub(super) fn pruned_to(meta: &Tree, checkpoints: &Tree, last: &Event) -> Result<()> {
    let Some(hash) = &last.hash else {
        // Still in the part written before the chain: nothing to anchor.
        return Ok(());
    };
    let anchor = Link {
        id: last.id,
        hash: hash.clone(),
    };
    meta.insert(ANCHOR_KEY, enc(&anchor))?;
    let old: Vec<sled::IVec> = checkpoints
        .range(..be(last.id).to_vec())
        .keys()
        .collect::<std::result::Result<_, _>>()?;
    for k in old {
        checkpoints.remove(k)?;
    }
    Ok(())
}

/// Where the chain stands (see the module doc).
pub(super) fn state(meta: &Tree) -> Result<ChainState> {
    let head = match meta.get(HEAD_KEY)? {
        Some(v) => dec("meta", &v)?,
        None => Link {
            id: 0,
            hash: ZERO_HASH.into(),
        },
    };
    let anchor = match meta.get(ANCHOR_KEY)? {
        Some(v) => Some(dec("meta", &v)?),
        None => None,
    };
    Ok(ChainState {
        genesis: meta_u64(meta, GENESIS_KEY)?.max(1),
        head,
        anchor,
    })
}

/// Up to `limit` events with ids above `after`, in id order.
pub(super) fn events_after(events: &Tree, after: u64, limit: usize) -> Result<Vec<Event>> {
    events
        .range(be(after.saturating_add(1)).to_vec()..)
        .values()
        .take(limit)
        .map(|v| dec("events", &v?))
        .collect()
}

/// The checkpoints of events `from` and later.
pub(super) fn checkpoints_from(checkpoints: &Tree, from: u64) -> Result<Vec<Checkpoint>> {
    checkpoints
        .range(be(from).to_vec()..)
        .values()
        .map(|v| dec("audit_checkpoints", &v?))
        .collect()
}

/// Record `cp` (on the writer).
pub(super) fn put(checkpoints: &Tree, cp: &Checkpoint) -> Result<()> {
    checkpoints.insert(checkpoint_key(cp.id, cp.kind), enc(cp))?;
    Ok(())
}
