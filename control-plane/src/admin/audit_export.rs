//! The chained audit export behind `leashctl audit export` and `audit verify`: a key
//! line, a chain line, then the events after an id in id order with the checkpoint
//! lines, and with `follow` every event and checkpoint written after (see
//! `audit_chain.rs` for the lines).
//!
//! Followed events are read back from the store up to the newest id published (what is
//! durable), so an export never carries an event a crash could still take back, and a
//! slow reader misses nothing (the broadcast only wakes it).

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use leash_proto::v1;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::audit_chain::{chain_line, key_line, CheckpointKind};
use crate::checkpoints::PUBLIC_BLOB;
use crate::state::Shared;
use crate::store::{Storage, StoreError};

/// Events read per store read.
const PAGE: usize = 1000;
/// How often a follower looks for new checkpoints when no event came.
const CHECKPOINT_POLL: Duration = Duration::from_secs(1);

type Lines = Pin<Box<dyn Stream<Item = Result<v1::AuditEvent, Status>> + Send>>;

fn line(v: &Value) -> Result<v1::AuditEvent, Status> {
    Ok(v1::AuditEvent {
        json: v.to_string(),
    })
}

/// Where the export has got to.
struct Cursor {
    /// The last event id sent.
    event: u64,
    /// The last checkpoint sent: (event id, anchor?).
    checkpoint: Option<(u64, bool)>,
}

pub(super) fn export(
    s: &Shared,
    after_id: u64,
    since_ms: i64,
    follow: bool,
) -> Result<Lines, Status> {
    let store = s.store.clone();
    // In this order: a checkpoint read before the events can only sign an event that
    // the event reads then reach.
    let mut live = store.subscribe_events();
    let chain = store.audit_chain().map_err(Status::from)?;
    let after_id = if after_id == 0 && since_ms > 0 {
        after_time(&*store, since_ms, chain.head.id).map_err(Status::from)?
    } else {
        after_id
    };
    let public = store.blob(PUBLIC_BLOB).map_err(Status::from)?;
    let from = match &chain.anchor {
        Some(a) => after_id.min(a.id),
        None => after_id,
    };
    let first_checkpoints = store.checkpoints(from).map_err(Status::from)?;
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut head = Vec::new();
        if let Some(k) = public {
            head.push(key_line(&k));
        }
        head.push(chain_line(&chain, after_id));
        for v in &head {
            if tx.send(line(v)).await.is_err() {
                return;
            }
        }
        let mut cur = Cursor {
            event: after_id,
            checkpoint: None,
        };
        let mut pending = first_checkpoints;
        // Without `follow` every checkpoint read is sent, also one that signs an event
        // past the last one there is: `verify` reports that tail as truncated.
        let upto = if follow { u64::MAX - 1 } else { u64::MAX };
        if send_events(&*store, &tx, &mut cur, &mut pending, upto)
            .await
            .is_err()
        {
            return;
        }
        if !follow {
            return;
        }
        let mut poll = tokio::time::interval(CHECKPOINT_POLL);
        loop {
            let mut upto = cur.event;
            tokio::select! {
                r = live.recv() => match r {
                    Ok(e) => upto = upto.max(e.id),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        upto = store.audit_chain().map(|c| c.head.id).unwrap_or(upto);
                    }
                    Err(_) => return,
                },
                _ = poll.tick() => {}
            }
            while let Ok(e) = live.try_recv() {
                upto = upto.max(e.id);
            }
            let next = cur.checkpoint.map_or(0, |(id, _)| id);
            pending = match store.checkpoints(next) {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(Status::from(e))).await;
                    return;
                }
            };
            if send_events(&*store, &tx, &mut cur, &mut pending, upto)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// The id after which events are recorded at or after `since_ms`: a binary search over
/// ids (events are numbered in the order they are dated), a few reads.
fn after_time(store: &dyn Storage, since_ms: i64, head: u64) -> Result<u64, StoreError> {
    let (mut lo, mut hi) = (0u64, head);
    // Invariant: every event with an id <= lo is older; some event with id <= hi + 1 is
    // not (or none is).
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        match store.events_after(mid - 1, 1)?.first() {
            Some(e) if e.at_ms < since_ms => lo = e.id.max(mid),
            _ => hi = mid - 1,
        }
    }
    Ok(lo)
}

/// Send the events after `cur.event` up to `upto`, each followed by the checkpoints of
/// `pending` at or before it, then the checkpoints of `pending` up to the last event
/// sent (all of them when `upto` is `u64::MAX`). `Err` when the reader has gone (or the store failed, which it is told).
async fn send_events(
    store: &dyn Storage,
    tx: &mpsc::Sender<Result<v1::AuditEvent, Status>>,
    cur: &mut Cursor,
    pending: &mut Vec<crate::audit_chain::Checkpoint>,
    upto: u64,
) -> Result<(), ()> {
    let mut cps = std::mem::take(pending).into_iter().peekable();
    let mut send_cps_upto = |id: u64, out: &mut Vec<Value>, cur: &mut Cursor| {
        while let Some(cp) = cps.next_if(|c| c.id <= id) {
            let key = (cp.id, cp.kind == CheckpointKind::Anchor);
            if cur.checkpoint.is_some_and(|c| key <= c) {
                continue;
            }
            cur.checkpoint = Some(key);
            out.push(cp.line());
        }
    };
    loop {
        if cur.event >= upto {
            break;
        }
        let page = match store.events_after(cur.event, PAGE) {
            Ok(p) => p,
            Err(e) => return fail(tx, e).await,
        };
        let mut stop = page.len() < PAGE;
        let mut out = Vec::new();
        for e in page {
            if e.id > upto {
                stop = true;
                break;
            }
            cur.event = e.id;
            out.push(serde_json::to_value(&e).unwrap_or_default());
            send_cps_upto(e.id, &mut out, cur);
        }
        for v in &out {
            tx.send(line(v)).await.map_err(|_| ())?;
        }
        if stop {
            break;
        }
    }
    let mut rest = Vec::new();
    // `upto` u64::MAX: the end of a one-off export; all that is left goes out.
    send_cps_upto(
        if upto == u64::MAX { upto } else { cur.event },
        &mut rest,
        cur,
    );
    for v in &rest {
        tx.send(line(v)).await.map_err(|_| ())?;
    }
    Ok(())
}

async fn fail(tx: &mpsc::Sender<Result<v1::AuditEvent, Status>>, e: StoreError) -> Result<(), ()> {
    let _ = tx.send(Err(Status::from(e))).await;
    Err(())
}
