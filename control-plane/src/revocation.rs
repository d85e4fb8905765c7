//! Taking credentials back: waiting for every host's wipe acknowledgment and for every
//! end step outside Leash (a database role dropped), and introspection (the answer
//! verifiers get for a presented token).

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use leash_proto::v1;

use crate::model::{Revocation, RevocationTarget};
use crate::state::Shared;

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
    // A set, not `r.hosts.contains`: N hosts against N names would be N × N comparisons.
    let named: HashSet<&str> = r.hosts.iter().map(String::as_str).collect();
    let mut out = BTreeSet::new();
    for h in hosts {
        if h.evicted && !matches!(&r.target, RevocationTarget::Host(n) if n == &h.name) {
            continue;
        }
        let wanted = matches!(r.target, RevocationTarget::All) || named.contains(h.name.as_str());
        if wanted {
            out.insert(h.name);
        }
    }
    out.into_iter().collect()
}

/// The noun for a credential's end step (`drop` for a database role), `end` when the
/// credential or its kind is gone.
pub fn end_step(s: &Shared, credential: &str) -> &'static str {
    s.store
        .credential(credential)
        .ok()
        .flatten()
        .and_then(|c| s.kinds.get(&c.kind).map(|k| k.end_step()))
        .unwrap_or("end")
}

/// Most `end_errors` a progress report carries.
const MAX_END_ERRORS: usize = 5;

/// The revoked leases whose kind undoes something outside Leash, still queued.
struct Ends {
    /// How many the revocation covered.
    total: usize,
    /// The noun for their end step (`end` when they differ).
    step: &'static str,
    /// Those still queued at the last look.
    pending: Vec<String>,
    /// "LEASE: last error" of pending ones, at most [`MAX_END_ERRORS`].
    errors: Vec<String>,
}

impl Ends {
    /// The revocation's leases that were queued when they ended.
    fn of(s: &Shared, rev: &Revocation) -> Ends {
        let mut pending = Vec::new();
        let mut steps = BTreeSet::new();
        for id in &rev.lease_ids {
            if let Ok(Some(l)) = s.store.lease(id) {
                if l.ends_outside {
                    steps.insert(end_step(s, &l.credential));
                    pending.push(l.id);
                }
            }
        }
        let step = match (steps.len(), steps.first()) {
            (1, Some(one)) => one,
            _ => "end",
        };
        let mut ends = Ends {
            total: pending.len(),
            step,
            pending,
            errors: Vec::new(),
        };
        ends.look(s);
        ends
    }

    /// Look again at which are still queued, and at their last errors. One that is off
    /// the queue never returns to it (a lease ends once).
    fn look(&mut self, s: &Shared) {
        let mut errors = Vec::new();
        self.pending.retain(|id| match s.store.pending_end(id) {
            Ok(Some(p)) => {
                if !p.last_error.is_empty() && errors.len() < MAX_END_ERRORS {
                    errors.push(format!("{id}: {}", p.last_error));
                }
                true
            }
            Ok(None) => false,
            // Cannot tell: still pending.
            Err(_) => true,
        });
        self.errors = errors;
    }
}

/// Progress of a wait, streamed to `leashctl revoke --wait`: done when every host has
/// wiped AND every end step outside Leash (a database role dropped) is done.
pub async fn wait(
    s: &Shared,
    seq: u64,
    timeout: Duration,
    tx: tokio::sync::mpsc::Sender<Result<v1::RevocationProgress, tonic::Status>>,
) {
    let start = Instant::now();
    let mut acks = s.hub.subscribe_acks();
    // Wipe acks received by other replicas of a shared store reach this one as the
    // `wiped` events they recorded (see `remote_wipe`).
    let mut recorded = s.store.subscribe_events();
    let mut recording = true;
    // Whether to look for wipes recorded before the subscription (or missed by it).
    let mut look_recorded = true;
    let Some(rev) = s.revocation(seq) else {
        let _ = tx
            .send(Err(leash_proto::reason::Reason::NotFound
                .status(format!("no revocation with sequence {seq}"))))
            .await;
        return;
    };
    let hosts = hosts_to_wait_for(s, &rev);
    let total = hosts.len();
    let max_offline_ms = s.config.max_offline.as_millis() as i64;
    // Hosts still to hear from; an ack only removes its own host from here, and the
    // whole set is re-checked only on the tick (for hosts that went away, or that
    // acknowledged a later sequence without a wipe ack being broadcast).
    let mut pending: BTreeSet<String> = hosts.into_iter().collect();
    let mut failed_closed = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_sent: Option<(usize, usize, usize, Instant)> = None;
    let mut rescan = true;
    // Subscribed before the first look, so an end step done in between still wakes us.
    let mut queue = s.store.ended_changes();
    let mut ends = Ends::of(s, &rev);
    let mut watching = ends.total > 0;
    loop {
        if rescan {
            rescan = false;
            let now = s.clock.now_ms();
            let look_recorded = std::mem::take(&mut look_recorded);
            pending.retain(|h| match s.hub.info(h) {
                Some(c) => c.wipe_acked_seq < seq && c.acked_seq < seq,
                // Wiped through another replica before this wait subscribed to events.
                None if look_recorded && recorded_wipe(s, seq, h) => false,
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
                        false
                    } else {
                        true
                    }
                }
            });
        }
        let acked = total - pending.len() - failed_closed.len();
        let ends_pending = ends.pending.len();
        let finished = pending.is_empty() && ends_pending == 0;
        let timed_out = !finished && start.elapsed() >= timeout;
        let changed = |a: usize, f: usize, e: usize| {
            a != acked || f != failed_closed.len() || e != ends_pending
        };
        // Report when something changed (at most every 100 ms while acks stream in),
        // and otherwise once a second, so a fast wipe prints one line and a slow one
        // shows who is holding it up.
        let due = last_sent.is_none_or(|(a, f, e, at)| {
            let since = at.elapsed();
            (changed(a, f, e) && since >= Duration::from_millis(100))
                || since >= Duration::from_secs(1)
        });
        let first_quiet = last_sent.is_none() && start.elapsed() < Duration::from_millis(300);
        if finished || timed_out || (due && !first_quiet) {
            let p = v1::RevocationProgress {
                acked: acked as u32,
                total: total as u32,
                pending_hosts: pending.iter().cloned().collect(),
                failed_closed_hosts: failed_closed.iter().cloned().collect(),
                done: finished,
                // Propagation time: from the moment the revocation was recorded.
                elapsed_ms: (s.clock.now_ms() - rev.at_ms).max(0) as u64,
                timed_out,
                ends_total: ends.total as u32,
                ends_pending: ends_pending as u32,
                end_step: if ends.total > 0 {
                    ends.step.to_string()
                } else {
                    String::new()
                },
                end_errors: ends.errors.clone(),
            };
            if finished && total > 0 {
                crate::metrics::revocation_acked(Duration::from_millis(p.elapsed_ms));
            }
            if tx.send(Ok(p)).await.is_err() || finished || timed_out {
                return;
            }
            last_sent = Some((acked, failed_closed.len(), ends_pending, Instant::now()));
        }
        let remaining = timeout.saturating_sub(start.elapsed());
        // Wake for a report that is due later even when no ack comes (a report was
        // just sent, or is not due, when the loop gets here; so this never spins).
        let report_in = match last_sent {
            None => Some(Duration::from_millis(300).saturating_sub(start.elapsed())),
            Some((a, f, e, at)) if changed(a, f, e) => {
                Some(Duration::from_millis(100).saturating_sub(at.elapsed()))
            }
            Some(_) => None,
        };
        tokio::select! {
            ack = acks.recv() => {
                // Acks arrive in bursts (one per host): take every one already queued.
                use tokio::sync::broadcast::error::{RecvError, TryRecvError};
                let mut next = ack.map_err(|e| match e {
                    RecvError::Lagged(n) => TryRecvError::Lagged(n),
                    RecvError::Closed => TryRecvError::Closed,
                });
                loop {
                    match next {
                        Ok(a) => {
                            if a.seq >= seq {
                                pending.remove(&a.host);
                            }
                        }
                        Err(TryRecvError::Lagged(_)) => rescan = true,
                        Err(_) => break,
                    }
                    next = acks.try_recv();
                }
            }
            e = recorded.recv(), if recording => {
                match e {
                    Ok(e) => {
                        if let Some(h) = remote_wipe(&e, seq) {
                            pending.remove(h);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        look_recorded = true;
                        rescan = true;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => recording = false,
                }
            }
            r = queue.changed(), if watching && !ends.pending.is_empty() => {
                match r {
                    Ok(()) => {
                        queue.borrow_and_update();
                        ends.look(s);
                    }
                    Err(_) => watching = false,
                }
            }
            _ = tick.tick() => {
                rescan = true;
                if !ends.pending.is_empty() {
                    ends.look(s);
                }
            }
            _ = tokio::time::sleep(remaining) => {}
            _ = tokio::time::sleep(report_in.unwrap_or_default()), if report_in.is_some() => {}
        }
    }
}

/// The host whose recorded `wiped` event acknowledges revocation `seq` (or a later
/// one). The event is recorded by the replica the host is connected to, only after it
/// checked that the revocation was sent on that connection (`agent_api::sync`), so a
/// replica waiting on a host connected elsewhere can count it.
fn remote_wipe(e: &crate::model::Event, seq: u64) -> Option<&str> {
    let acked = e.detail.get("seq").and_then(|v| v.as_u64())?;
    (e.kind == "wiped" && acked >= seq)
        .then_some(e.host.as_deref())
        .flatten()
}

/// Whether `host` has a recorded `wiped` event for one of its leases that revocation
/// `seq` covered (written by whichever replica it is connected to).
fn recorded_wipe(s: &Shared, seq: u64, host: &str) -> bool {
    let by_host = s.revoked_leases_by_host(seq);
    by_host.get(host).is_some_and(|leases| {
        leases.iter().any(|l| {
            s.store
                .lease_events(l)
                .unwrap_or_default()
                .iter()
                .any(|e| remote_wipe(e, seq) == Some(host))
        })
    })
}
