//! Taking credentials back: the wire form of revocations, waiting for every host's wipe
//! acknowledgment, and introspection (the answer verifiers get for a presented token).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use leash_proto::v1;

use crate::model::{Revocation, RevocationTarget};
use crate::server::Shared;

/// A revocation as Sync carries it.
pub fn to_proto(r: &Revocation) -> v1::Revocation {
    use v1::revocation_target::Target;
    let target = match &r.target {
        RevocationTarget::Lease(v) => Target::Lease(v.clone()),
        RevocationTarget::Workload(v) => Target::Workload(v.clone()),
        RevocationTarget::Credential(v) => Target::Credential(v.clone()),
        RevocationTarget::Owner(v) => Target::Owner(v.clone()),
        RevocationTarget::Host(v) => Target::Host(v.clone()),
        RevocationTarget::All => Target::All(true),
        RevocationTarget::Task(v) => Target::Task(v.clone()),
        // Agents match these by the lease ids listed below.
        RevocationTarget::Leases(_) => Target::Lease(String::new()),
    };
    v1::Revocation {
        seq: r.seq,
        target: Some(v1::RevocationTarget {
            target: Some(target),
        }),
        reason: r.reason.clone(),
        lease_ids: r.lease_ids.clone(),
    }
}

/// RFC 7662 introspection of a token.
pub fn introspect(s: &Shared, token: &str) -> v1::IntrospectResponse {
    let claims = crate::issuer::verify(&s.keys, token.trim());
    let lease = claims
        .as_ref()
        .and_then(|c| s.store.lease(&c.jti).ok().flatten());
    let doc = crate::issuer::introspection(claims.as_ref(), lease.as_ref(), s.clock.now());
    let active = doc["active"].as_bool().unwrap_or(false);
    v1::IntrospectResponse {
        json: doc.to_string(),
        active,
    }
}

/// Which hosts a revocation waits for: the non-evicted hosts that may hold a covered
/// lease (every non-evicted host for `--all`).
pub fn hosts_to_wait_for(s: &Shared, r: &Revocation) -> Vec<String> {
    let hosts = s.store.hosts().unwrap_or_default();
    let mut out = BTreeSet::new();
    for h in hosts {
        if h.evicted && !matches!(&r.target, RevocationTarget::Host(n) if n == &h.name) {
            continue;
        }
        let wanted = matches!(r.target, RevocationTarget::All) || r.hosts.contains(&h.name);
        if wanted {
            out.insert(h.name);
        }
    }
    out.into_iter().collect()
}

/// Progress of a wait, streamed to `leashctl revoke --wait`.
pub async fn wait(
    s: &Shared,
    seq: u64,
    timeout: Duration,
    tx: tokio::sync::mpsc::Sender<Result<v1::RevocationProgress, tonic::Status>>,
) {
    let start = Instant::now();
    let mut acks = s.hub.subscribe_acks();
    let rev = s
        .store
        .revocations_since(seq.saturating_sub(1))
        .ok()
        .and_then(|v| v.into_iter().find(|r| r.seq == seq));
    let Some(rev) = rev else {
        let _ = tx
            .send(Err(leash_proto::reason::Reason::NotFound
                .status(format!("no revocation with sequence {seq}"))))
            .await;
        return;
    };
    let hosts = hosts_to_wait_for(s, &rev);
    let max_offline_ms = s.config.max_offline.as_millis() as i64;
    let mut failed_closed = BTreeSet::new();
    let mut done = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_sent: Option<(usize, usize, Instant)> = None;
    loop {
        let now = s.clock.now_ms();
        for h in &hosts {
            if done.contains(h) || failed_closed.contains(h) {
                continue;
            }
            match s.hub.info(h) {
                Some(c) if c.wipe_acked_seq >= seq || c.acked_seq >= seq => {
                    done.insert(h.clone());
                }
                Some(_) => {}
                None => {
                    // Not connected: if it has been away longer than max_offline it has
                    // already wiped itself by failing closed. The recorded last-seen is
                    // written when a stream starts or ends; a host may also have been
                    // connected up to the moment this control plane (re)started, so
                    // count from that at the earliest.
                    let last = s
                        .store
                        .host(h)
                        .ok()
                        .flatten()
                        .map(|x| x.last_seen * 1000)
                        .unwrap_or(0)
                        .max(s.hub.started_ms);
                    if now - last > max_offline_ms {
                        failed_closed.insert(h.clone());
                    }
                }
            }
        }
        let pending: Vec<String> = hosts
            .iter()
            .filter(|h| !done.contains(*h) && !failed_closed.contains(*h))
            .cloned()
            .collect();
        let finished = pending.is_empty();
        let timed_out = !finished && start.elapsed() >= timeout;
        let p = v1::RevocationProgress {
            acked: done.len() as u32,
            total: hosts.len() as u32,
            pending_hosts: pending,
            failed_closed_hosts: failed_closed.iter().cloned().collect(),
            done: finished,
            // Propagation time: from the moment the revocation was recorded.
            elapsed_ms: (s.clock.now_ms() - rev.at_ms).max(0) as u64,
            timed_out,
        };
        // Report when something changed, and otherwise once a second, so a fast wipe
        // prints one line and a slow one shows who is holding it up.
        let changed = last_sent.is_none_or(|(a, f, at)| {
            a != done.len() || f != failed_closed.len() || at.elapsed() >= Duration::from_secs(1)
        });
        let first_quiet = last_sent.is_none() && start.elapsed() < Duration::from_millis(300);
        if finished || timed_out || (changed && !first_quiet) {
            if tx.send(Ok(p)).await.is_err() || finished || timed_out {
                return;
            }
            last_sent = Some((done.len(), failed_closed.len(), Instant::now()));
        }
        let remaining = timeout.saturating_sub(start.elapsed());
        tokio::select! {
            _ = acks.recv() => {
                // Acks arrive in bursts (one per host): take every one already queued
                // before checking all hosts again, rather than once per ack.
                while acks.try_recv().is_ok() {}
            }
            _ = tick.tick() => {}
            _ = tokio::time::sleep(remaining) => {}
        }
    }
}
