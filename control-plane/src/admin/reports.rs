//! `audit tail`, `stale` and `jwks`: what the control plane reports about itself.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures::Stream;
use leash_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::state::Shared;
use crate::wire::event_proto;

/// Audit events, streamed to `audit tail`.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<v1::AuditEvent, Status>> + Send>>;

pub(super) async fn stale(
    s: &Shared,
    req: v1::StaleReportRequest,
) -> Result<v1::StaleReportResponse, Status> {
    let unused_for = i64::from(req.unused_for_seconds);
    let now = s.clock.now();
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for l in s.store.leases(None, false).map_err(Status::from)? {
        let e = last.entry(l.workload).or_insert(0);
        *e = (*e).max(l.issued_at);
    }
    let offboarded = super::check::offboarded_owners(s)?;
    let mut out = Vec::new();
    for w in s.store.workloads().map_err(Status::from)? {
        let last_issued = last.get(&w.name).copied().unwrap_or(0);
        let why = if offboarded.contains(&w.owner) {
            "owner-offboarded"
        } else if last_issued.max(w.created_at) + unused_for <= now {
            "unused"
        } else {
            continue;
        };
        out.push(v1::StaleWorkload {
            name: w.name,
            owner: w.owner,
            why: why.into(),
            last_issued_unix: last_issued,
            disabled: w.disabled,
        });
    }
    Ok(v1::StaleReportResponse { workloads: out })
}

pub(super) async fn jwks(s: &Shared) -> Result<v1::JwksResponse, Status> {
    Ok(v1::JwksResponse {
        json: s.keys.jwks().to_string(),
    })
}

pub(super) async fn audit_tail(s: &Shared, r: v1::AuditTailRequest) -> Result<EventStream, Status> {
    if r.chain {
        return super::audit_export::export(s, r.after_id, r.since_unix_ms, r.follow);
    }
    let limit = if r.limit == 0 {
        usize::MAX
    } else {
        r.limit as usize
    };
    // Subscribe first so nothing between the backlog read and the follow is lost.
    let mut live = s.store.subscribe_events();
    let backlog = s
        .store
        .events(r.since_unix_ms, limit)
        .map_err(Status::from)?;
    let (tx, rx) = mpsc::channel(256);
    let follow = r.follow;
    tokio::spawn(async move {
        let mut last = 0;
        for e in &backlog {
            last = e.id;
            if tx.send(Ok(event_proto(e))).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        loop {
            match live.recv().await {
                Ok(e) if e.id > last => {
                    last = e.id;
                    if tx.send(Ok(event_proto(&e))).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "audit follower lagged");
                }
                Err(_) => return,
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}
