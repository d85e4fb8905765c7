//! Which agents are connected right now, and what they have acknowledged.
//!
//! In memory only: a restarted control plane learns it again as agents reconnect. The
//! durable truth (hosts, revocations) is in the store.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::clock::Clock;

/// A wipe acknowledgment as the admin side sees it.
#[derive(Debug, Clone)]
pub struct WipeAck {
    /// Host that wiped.
    pub host: String,
    /// Revocation sequence number.
    pub seq: u64,
    /// Credentials it wiped.
    pub wiped: u32,
}

#[derive(Debug, Clone)]
struct Conn {
    id: u64,
    last_seen_ms: i64,
    acked_seq: u64,
    /// Revocation seqs this connection has wipe-acknowledged (highest seen).
    wipe_acked_seq: u64,
    /// Highest sequence sent on this connection (or resumed from): an ack beyond it
    /// acknowledges something the host never received.
    sent_seq: u64,
    /// Revocations sent on this connection and not yet wipe-acknowledged: the only
    /// sequences a wipe acknowledgment may name.
    unacked_wipes: BTreeSet<u64>,
}

/// Revocations remembered per connection awaiting a wipe acknowledgment; an agent that
/// never acknowledges cannot make the set grow without bound (the oldest are dropped,
/// and the wait for them falls back on the sync acknowledgment).
const MAX_UNACKED_WIPES: usize = 4096;

/// Live connection registry.
#[derive(Debug)]
pub struct Hub {
    /// Unix ms (by the control plane's clock) this control plane started: before it, any
    /// host may have been connected, so `max_offline` is counted from here at the earliest.
    pub started_ms: i64,
    conns: Mutex<HashMap<String, Conn>>,
    /// Highest sequence sent to each host by this process, over all its connections:
    /// a host resuming claims no more than it was sent (unknown after a restart).
    delivered: Mutex<HashMap<String, u64>>,
    next_id: AtomicU64,
    acks: broadcast::Sender<WipeAck>,
}

/// Snapshot of one host's connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// Unix ms of the last message or heartbeat ack.
    pub last_seen_ms: i64,
    /// Highest sequence the agent acknowledged.
    pub acked_seq: u64,
    /// Highest revocation it wipe-acknowledged.
    pub wipe_acked_seq: u64,
}

impl Hub {
    /// An empty registry for a control plane starting now by `clock`.
    pub fn new(clock: &Clock) -> Self {
        Hub {
            started_ms: clock.now_ms(),
            conns: Mutex::new(HashMap::new()),
            delivered: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            acks: broadcast::channel(65536).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Conn>> {
        // A panic while holding this lock cannot leave the map inconsistent (plain
        // inserts and field updates), so recover from poisoning.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a new stream for `host`; a newer stream replaces an older one.
    pub fn connect(&self, host: &str, now_ms: i64, resumed_from: u64) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            host.to_string(),
            Conn {
                id,
                last_seen_ms: now_ms,
                // Resuming from a sequence means everything up to it was applied.
                acked_seq: resumed_from,
                wipe_acked_seq: 0,
                sent_seq: resumed_from,
                unacked_wipes: BTreeSet::new(),
            },
        );
        id
    }

    /// Forget a stream (only if it is still the current one for the host).
    pub fn disconnect(&self, host: &str, id: u64) {
        let mut m = self.lock();
        if m.get(host).map(|c| c.id) == Some(id) {
            m.remove(host);
        }
    }

    /// Record liveness and an ack. An ack beyond what was sent on this connection is
    /// ignored (liveness still counts); returns whether the ack was accepted.
    pub fn seen(&self, host: &str, id: u64, now_ms: i64, acked: Option<u64>) -> bool {
        let mut ok = true;
        if let Some(c) = self.lock().get_mut(host).filter(|c| c.id == id) {
            c.last_seen_ms = now_ms;
            if let Some(s) = acked {
                if s <= c.sent_seq {
                    c.acked_seq = c.acked_seq.max(s);
                } else {
                    ok = false;
                }
            }
        }
        ok
    }

    /// Record a wipe acknowledgment and tell waiters, but only for a revocation sent to
    /// `host` on this connection and not acknowledged yet; returns whether it was.
    pub fn wipe_acked(&self, host: &str, id: u64, now_ms: i64, seq: u64, wiped: u32) -> bool {
        {
            let mut m = self.lock();
            let Some(c) = m.get_mut(host).filter(|c| c.id == id) else {
                return false;
            };
            c.last_seen_ms = now_ms;
            if !c.unacked_wipes.remove(&seq) {
                return false;
            }
            c.wipe_acked_seq = c.wipe_acked_seq.max(seq);
        }
        let _ = self.acks.send(WipeAck {
            host: host.to_string(),
            seq,
            wiped,
        });
        true
    }

    /// Note that a message carrying `seq` is being sent to `host` on connection `id`;
    /// `revocation` when it is a revocation the host is to wipe-acknowledge.
    pub fn sending(&self, host: &str, id: u64, seq: u64, revocation: bool) {
        if let Some(c) = self.lock().get_mut(host).filter(|c| c.id == id) {
            c.sent_seq = c.sent_seq.max(seq);
            if revocation {
                c.unacked_wipes.insert(seq);
                if c.unacked_wipes.len() > MAX_UNACKED_WIPES {
                    c.unacked_wipes.pop_first();
                }
            }
        }
        let mut d = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
        let e = d.entry(host.to_string()).or_default();
        *e = (*e).max(seq);
    }

    /// Where a host asking to resume from `claimed` may resume: no later than what this
    /// process has sent it, when it has sent it anything.
    pub fn resume_point(&self, host: &str, claimed: u64) -> u64 {
        let d = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
        match d.get(host) {
            Some(&sent) => claimed.min(sent),
            None => claimed,
        }
    }

    /// The connection of `host`, if connected.
    pub fn info(&self, host: &str) -> Option<ConnInfo> {
        self.lock().get(host).map(|c| ConnInfo {
            last_seen_ms: c.last_seen_ms,
            acked_seq: c.acked_seq,
            wipe_acked_seq: c.wipe_acked_seq,
        })
    }

    /// Subscribe to wipe acknowledgments.
    pub fn subscribe_acks(&self) -> broadcast::Receiver<WipeAck> {
        self.acks.subscribe()
    }

    /// Number of connected agents.
    pub fn connected(&self) -> usize {
        self.lock().len()
    }

    /// The hosts connected to this process.
    pub fn connected_hosts(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// How many sequences each connected agent is behind what its stream sent it (one
    /// entry per agent, in no order and without names: what the metrics show). Every
    /// heartbeat carries the stream's position, so a live agent is 0 once it acknowledged
    /// the last one.
    pub fn lags(&self) -> Vec<u64> {
        self.lock()
            .values()
            .map(|c| c.sent_seq.saturating_sub(c.acked_seq))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_is_read_from_the_clock_it_is_handed() {
        let clock = Clock::default();
        clock.advance_ms(86_400_000);
        let hub = Hub::new(&clock);
        let system = leash_proto::clock::system_now_ms();
        assert!(
            hub.started_ms >= system + 86_400_000 - 1_000,
            "started {} with the clock a day ahead of {system}",
            hub.started_ms
        );
    }
}
