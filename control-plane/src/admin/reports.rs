//! `audit tail`, `stale` and `jwks`: what the control plane reports about itself.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures::Stream;
use leash_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::model::Event;
use crate::state::Shared;
use crate::store::Storage;
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
    let live = s.store.subscribe_events();
    let backlog = s
        .store
        .events(r.since_unix_ms, limit)
        .map_err(Status::from)?;
    let (tx, rx) = mpsc::channel(256);
    let follow = r.follow;
    let store = s.store.clone();
    tokio::spawn(async move {
        let mut last = 0;
        for e in &backlog {
            last = e.id;
            if tx.send(Ok(event_proto(e))).await.is_err() {
                return;
            }
        }
        if follow {
            follow_events(&*store, live, last, &tx).await;
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Send every event recorded after `last`, as it is recorded, until the client goes or
/// the store stops. The next event in line is sent as broadcast; after a gap (the
/// broadcast dropped events for a slow client, or delivered one early) the events after
/// `last` are read from the store, so a follower never skips one.
async fn follow_events(
    store: &dyn Storage,
    mut live: tokio::sync::broadcast::Receiver<Event>,
    mut last: u64,
    tx: &mpsc::Sender<Result<v1::AuditEvent, Status>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let next = match live.recv().await {
            Ok(e) if e.id <= last => continue,
            Ok(e) if e.id == last + 1 => vec![e],
            Ok(_) | Err(RecvError::Lagged(_)) => match store.events_after(last, usize::MAX) {
                Ok(evs) => evs,
                Err(e) => {
                    let _ = tx.send(Err(Status::from(e))).await;
                    return;
                }
            },
            Err(RecvError::Closed) => return,
        };
        for e in next {
            last = last.max(e.id);
            if tx.send(Ok(event_proto(&e))).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::store::SledStore;

    /// A follower that reads nothing while more events are recorded than the broadcast
    /// keeps still gets every one of them, in order.
    #[tokio::test]
    async fn a_slow_follower_skips_no_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            std::sync::Arc::new(SledStore::open(dir.path(), Clock::default()).expect("open"));
        let live = store.subscribe_events();
        let (tx, mut rx) = mpsc::channel(8);
        let follower = {
            let store = store.clone();
            tokio::spawn(async move {
                let s: &SledStore = &store;
                follow_events(s, live, 0, &tx).await
            })
        };
        let total = 5_000;
        for chunk in 0..total / 500 {
            let evs = (0..500)
                .map(|i| Event::new("x").actor(format!("a{}", chunk * 500 + i)))
                .collect();
            store.append_events(evs).await.expect("append");
        }
        let mut ids = Vec::new();
        while ids.len() < total {
            let e = tokio::time::timeout(std::time::Duration::from_secs(20), rx.recv())
                .await
                .expect("the follower goes on")
                .expect("open")
                .expect("an event");
            let v: serde_json::Value = serde_json::from_str(&e.json).expect("json");
            ids.push(v["id"].as_u64().expect("id"));
        }
        let want: Vec<u64> = (1..=total as u64).collect();
        assert_eq!(ids, want);
        follower.abort();
    }
}
