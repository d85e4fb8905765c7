//! The Sync stream: what each host is told (the workloads it may run, revocations,
//! eviction, heartbeats, the trust bundle) and what it reports back (acks, wipe acks,
//! usage).

use std::collections::HashMap;
use std::time::Duration;

use leash_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use crate::audit;
use crate::model::{hosts_match, Change, Host, Workload};
use crate::state::Shared;
use crate::store::StoreError;
use crate::wire::workload_proto;

/// The Sync message, if any, that tells `host` about `change`. `told` holds the
/// workloads (with their owners) this stream has sent the host: a workload the host may
/// not run is never named to it, unless it was sent earlier and must now be dropped.
fn messages_for(
    host: &Host,
    change: &Change,
    told: &mut HashMap<String, String>,
) -> Option<v1::ControlMessage> {
    use v1::control_message::Msg;
    let msg = match change {
        Change::WorkloadPut { seq, workload } => {
            if hosts_match(&workload.hosts, &host.labels) {
                told.insert(workload.name.clone(), workload.owner.clone());
                Msg::Workload(v1::WorkloadEntry {
                    seq: *seq,
                    workload: Some(workload_proto(workload)),
                })
            } else if told.contains_key(&workload.name) {
                // It matched before the change: tell the agent to drop it.
                Msg::WorkloadRemoved(v1::WorkloadRemoved {
                    seq: *seq,
                    name: workload.name.clone(),
                })
            } else {
                return None;
            }
        }
        Change::WorkloadRemoved { seq, name } => {
            if !told.contains_key(name) {
                return None;
            }
            Msg::WorkloadRemoved(v1::WorkloadRemoved {
                seq: *seq,
                name: name.clone(),
            })
        }
        Change::Revoked { revocation } => {
            Msg::Revocation(crate::wire::revocation_proto(revocation, &host.name, told))
        }
        Change::HostEvicted { seq, name, reason } => {
            if name != &host.name {
                return None;
            }
            Msg::Evicted(v1::Evicted {
                seq: *seq,
                reason: reason.clone(),
            })
        }
    };
    Some(v1::ControlMessage { msg: Some(msg) })
}

/// The sequence a Sync message carries, and whether it is a revocation (which the agent
/// answers with a wipe acknowledgment).
fn message_seq(m: &v1::ControlMessage) -> (u64, bool) {
    use v1::control_message::Msg;
    match &m.msg {
        Some(Msg::Snapshot(x)) => (x.seq, false),
        Some(Msg::Workload(x)) => (x.seq, false),
        Some(Msg::WorkloadRemoved(x)) => (x.seq, false),
        Some(Msg::Revocation(x)) => (x.seq, true),
        Some(Msg::CaughtUp(x)) => (x.seq, false),
        Some(Msg::Heartbeat(x)) => (x.seq, false),
        Some(Msg::Evicted(x)) => (x.seq, false),
        // Not sequenced: the latest generation wins.
        Some(Msg::Bundle(_)) | None => (0, false),
    }
}

/// The trust bundle of generation `generation`: every JWT key and CA a verifier must
/// trust now.
fn bundle(s: &Shared, generation: u64) -> v1::ControlMessage {
    v1::ControlMessage {
        msg: Some(v1::control_message::Msg::Bundle(v1::TrustBundle {
            generation,
            jwks_json: s.keys.jwks().to_string(),
            ca_certificates_der: s.keys.bundle_ders(),
        })),
    }
}

/// Why a Sync stream ended (logged, never sent: the stream is gone).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncEnd {
    /// The response stream was dropped.
    #[error("agent went away")]
    AgentGone,
    /// The host was already evicted when it connected.
    #[error("host is evicted")]
    Evicted,
    /// The host was evicted while connected.
    #[error("host evicted")]
    EvictedNow,
    /// The stream fell behind the change log past what it keeps.
    #[error("fell too far behind the change log")]
    FellBehind,
    /// The change feed closed: the control plane is stopping.
    #[error("shutting down")]
    ShuttingDown,
    /// The agent ended its side.
    #[error("agent closed the stream")]
    AgentClosed,
    /// The agent's side failed.
    #[error("agent stream error: {0}")]
    AgentError(String),
    /// The store could not be read.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// How long an agent ahead of the store waits for it (a replica a moment behind).
const AHEAD_GRACE: Duration = Duration::from_secs(3);

/// Drive one Sync stream until either side goes away.
pub(super) async fn run_sync(
    s: &Shared,
    host: &Host,
    conn: u64,
    last_seq: u64,
    inbound: &mut (impl Stream<Item = Result<v1::AgentMessage, Status>> + Unpin),
    tx: &mpsc::Sender<Result<v1::ControlMessage, Status>>,
) -> Result<(), SyncEnd> {
    use tokio::sync::broadcast::error::RecvError;
    use v1::control_message::Msg;

    let send = |m: v1::ControlMessage| async move {
        // Noted before it goes out, so an ack that comes back at once is recognised.
        let (seq, revocation) = message_seq(&m);
        s.hub.sending(&host.name, conn, seq, revocation);
        tx.send(Ok(m)).await.map_err(|_| SyncEnd::AgentGone)
    };
    // Subscribe before reading the log, so nothing committed in between is missed.
    let mut changes = s.store.subscribe_changes();
    // Likewise for the keys: a change after this is sent again.
    let mut keys = s.keys_generation();
    // The workloads this host may run. Read before the backlog: a change committed in
    // between is then in the backlog too, and is told against this picture.
    let matching = || -> Result<Vec<Workload>, SyncEnd> {
        Ok(s.store
            .workloads()?
            .into_iter()
            .filter(|w| hosts_match(&w.hosts, &host.labels))
            .collect())
    };
    let workloads = matching()?;
    let mut told: HashMap<String, String> = workloads
        .iter()
        .map(|w| (w.name.clone(), w.owner.clone()))
        .collect();
    let snapshot = |seq: u64, workloads: &[Workload]| v1::ControlMessage {
        msg: Some(Msg::Snapshot(v1::Snapshot {
            seq,
            workloads: workloads
                .iter()
                .map(|w| v1::WorkloadEntry {
                    seq,
                    workload: Some(workload_proto(w)),
                })
                .collect(),
            revocations: Vec::new(),
        })),
    };
    // An agent ahead of the store: a replica may be a moment behind another (it reads
    // what the others committed on a notification or a poll), so give it a little time.
    // Still ahead then, the store was restored to an older point (or replaced): the
    // agent gets a full snapshot at the store's sequence, and an agent told a sequence
    // below its own wipes everything it holds (agentd/src/sync.rs), since revocations
    // made after that point are lost with it.
    let deadline = tokio::time::Instant::now() + AHEAD_GRACE;
    while last_seq > s.store.current_seq() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ahead = last_seq > s.store.current_seq();
    if ahead {
        tracing::warn!(host = %host.name, agent_seq = last_seq, store_seq = s.store.current_seq(),
            "the agent has seen more than this store holds (restored from a backup?): it gets a full snapshot and wipes what it holds");
    }
    let backlog = if ahead {
        None
    } else {
        s.store.changes_since(last_seq)?
    };
    let mut sent = match backlog {
        Some(backlog) if last_seq > 0 => {
            let mut sent = last_seq;
            // A workload that stopped matching (or was removed) and does not match now
            // may or may not be on the agent; naming it to find out would tell the host
            // about a workload it may never have run. A snapshot after the backlog
            // replaces what the agent has instead.
            let mut replace = false;
            for c in &backlog {
                replace |= match c {
                    Change::WorkloadPut { workload, .. } => {
                        !hosts_match(&workload.hosts, &host.labels)
                            && !told.contains_key(&workload.name)
                    }
                    Change::WorkloadRemoved { name, .. } => !told.contains_key(name),
                    _ => false,
                };
                if let Some(m) = messages_for(host, c, &mut told) {
                    send(m).await?;
                }
                sent = c.seq();
            }
            let sent = sent.max(last_seq);
            if replace {
                let now = matching()?;
                told.extend(now.iter().map(|w| (w.name.clone(), w.owner.clone())));
                send(snapshot(sent, &now)).await?;
            }
            sent
        }
        _ => {
            // Fresh agent, or the log was compacted past it: a full snapshot.
            // The sequence first, then the state: a change in between is sent again.
            let seq = s.store.current_seq();
            let now = matching()?;
            told.extend(now.iter().map(|w| (w.name.clone(), w.owner.clone())));
            send(snapshot(seq, &now)).await?;
            seq
        }
    };
    let max_offline = s.config.max_offline.as_secs() as u32;
    send(v1::ControlMessage {
        msg: Some(Msg::CaughtUp(v1::CaughtUp {
            seq: sent,
            max_offline_secs: max_offline,
            store_seq: s.store.current_seq(),
        })),
    })
    .await?;
    if let Ok(Some(h)) = s.store.host(&host.name) {
        if h.evicted {
            send(v1::ControlMessage {
                msg: Some(Msg::Evicted(v1::Evicted {
                    seq: sent,
                    reason: "host evicted".into(),
                })),
            })
            .await?;
            return Err(SyncEnd::Evicted);
        }
    }
    let generation = *keys.borrow_and_update();
    send(bundle(s, generation)).await?;

    let mut heartbeat = tokio::time::interval(s.config.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Ok(c) => {
                    if c.seq() <= sent { continue; }
                    if let Some(m) = messages_for(host, &c, &mut told) {
                        send(m).await?;
                    }
                    sent = c.seq();
                    if matches!(&*c, Change::HostEvicted { name, .. } if name == &host.name) {
                        return Err(SyncEnd::EvictedNow);
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    // Fell behind the broadcast: replay from the durable log instead.
                    let backlog = s.store.changes_since(sent)?
                        .ok_or(SyncEnd::FellBehind)?;
                    for c in backlog {
                        if let Some(m) = messages_for(host, &c, &mut told) { send(m).await?; }
                        sent = c.seq();
                    }
                }
                Err(RecvError::Closed) => return Err(SyncEnd::ShuttingDown),
            },
            Ok(()) = keys.changed() => {
                let generation = *keys.borrow_and_update();
                send(bundle(s, generation)).await?;
            }
            _ = heartbeat.tick() => {
                send(v1::ControlMessage { msg: Some(Msg::Heartbeat(v1::Heartbeat {
                    seq: sent,
                    now_unix_ms: s.clock.now_ms(),
                    max_offline_secs: max_offline,
                }))}).await?;
            }
            msg = inbound.next() => match msg {
                None => return Err(SyncEnd::AgentClosed),
                Some(Err(e)) => return Err(SyncEnd::AgentError(e.message().to_string())),
                Some(Ok(m)) => handle_agent_message(s, host, conn, m).await,
            },
        }
    }
}

/// Longest lease id quoted in a log line about a report that was not believed.
const LOGGED_ID_MAX: usize = 64;

async fn handle_agent_message(s: &Shared, host: &Host, conn: u64, m: v1::AgentMessage) {
    use v1::agent_message::Msg;
    let now = s.clock.now_ms();
    match m.msg {
        Some(Msg::Ack(a)) => {
            if !s.hub.seen(&host.name, conn, now, Some(a.seq)) {
                // Acknowledging what was never sent proves nothing: not counted.
                tracing::debug!(host = %host.name, seq = a.seq, "ignored a sync ack beyond what this connection sent");
            }
        }
        Some(Msg::WipeAck(a)) => {
            // Only a revocation this connection sent, once: a host cannot mark a
            // revocation wiped before it has it.
            if !s.hub.wipe_acked(&host.name, conn, now, a.seq, a.wiped) {
                tracing::warn!(host = %host.name, seq = a.seq, "ignored a wipe ack for a revocation not sent on this connection");
                return;
            }
            // One `wiped` event per covered lease issued to this host, so each lease's
            // timeline shows where it was wiped; a host-level one when none was.
            let leases = s
                .revoked_leases_by_host(a.seq)
                .get(&host.name)
                .cloned()
                .unwrap_or_default();
            s.record(audit::wiped(now, &host.name, a.seq, a.wiped, leases));
        }
        Some(Msg::Usage(u)) => {
            s.hub.seen(&host.name, conn, now, None);
            // A host reports only on leases issued to it; a report naming any other lease
            // (another host's, or none at all) is not recorded.
            let mut ignored = 0usize;
            let mut first_ignored = None;
            let events = u
                .leases
                .into_iter()
                .take(10_000)
                .filter(|l| {
                    let own =
                        matches!(s.store.lease(&l.lease_id), Ok(Some(x)) if x.host == host.name);
                    if !own {
                        ignored += 1;
                        first_ignored.get_or_insert_with(|| {
                            l.lease_id.chars().take(LOGGED_ID_MAX).collect::<String>()
                        });
                    }
                    own
                })
                .map(|l| audit::served(now, &host.name, l))
                .collect();
            if ignored > 0 {
                tracing::warn!(host = %host.name, ignored, first = ?first_ignored.unwrap_or_default(), "ignored usage reported for leases not issued to this host");
            }
            s.record(events);
        }
        Some(Msg::Hello(_)) | None => {
            s.hub.seen(&host.name, conn, now, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::clock::Clock;
    use crate::config::{Config, FileConfig, Overrides};
    use crate::keys::{Keys, MasterKey};
    use crate::policy::Engine;
    use crate::store::SledStore;

    async fn shared(dir: &std::path::Path) -> Shared {
        let clock = Clock::default();
        let store = SledStore::open(dir, clock.clone()).expect("store");
        let master = Arc::new(MasterKey::load_or_create(dir).expect("master key"));
        let keys = Arc::new(
            Keys::load_or_create(&*store, &master, "leash.test")
                .await
                .expect("keys"),
        );
        let text = format!("data_dir = {:?}\n", dir.display().to_string());
        let file = FileConfig::parse(&text, &dir.join("cp.toml")).expect("config");
        let config = Config::resolve(file, Overrides::default()).expect("config");
        let policy = Engine::new(&config.actions).expect("engine");
        let (tx, _) = tokio::sync::mpsc::unbounded_channel();
        Shared::new(config, store, keys, master, clock, policy, tx)
    }

    /// The next trust bundle on the stream (other messages, such as heartbeats, skipped).
    async fn next_bundle(
        rx: &mut mpsc::Receiver<Result<v1::ControlMessage, Status>>,
    ) -> v1::TrustBundle {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a message within 10s")
                .expect("stream open")
                .expect("not an error");
            if let Some(v1::control_message::Msg::Bundle(b)) = m.msg {
                return b;
            }
        }
    }

    #[tokio::test]
    async fn the_bundle_follows_caught_up_and_is_sent_again_when_the_keys_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Arc::new(shared(dir.path()).await);
        let host = crate::fixtures::host("h1", "01");
        let conn = s.hub.connect(&host.name, s.clock.now_ms(), 0);
        let (tx, mut rx) = mpsc::channel(64);
        // The agent's side stays open and says nothing.
        let (_agent, agent_rx) = mpsc::channel::<Result<v1::AgentMessage, Status>>(1);
        let stream = {
            let s = s.clone();
            tokio::spawn(async move {
                let mut inbound = tokio_stream::wrappers::ReceiverStream::new(agent_rx);
                run_sync(&s, &host, conn, 0, &mut inbound, &tx).await
            })
        };
        // Snapshot, CaughtUp, then the bundle.
        let mut kinds = Vec::new();
        let mut first = None;
        for _ in 0..3 {
            let m = rx.recv().await.expect("open").expect("ok");
            kinds.push(match m.msg {
                Some(v1::control_message::Msg::Snapshot(_)) => "snapshot",
                Some(v1::control_message::Msg::CaughtUp(_)) => "caught-up",
                Some(v1::control_message::Msg::Bundle(b)) => {
                    first = Some(b);
                    "bundle"
                }
                _ => "other",
            });
        }
        assert_eq!(kinds, ["snapshot", "caught-up", "bundle"]);
        let first = first.expect("bundle");
        s.keys_changed();
        let second = next_bundle(&mut rx).await;
        assert!(second.generation > first.generation, "{second:?} {first:?}");
        assert_eq!(
            second.ca_certificates_der,
            vec![s.keys.ca_der().to_vec()],
            "the CA"
        );
        let jwks: serde_json::Value = serde_json::from_str(&second.jwks_json).expect("json");
        assert_eq!(jwks, s.keys.jwks());
        s.keys_changed();
        let third = next_bundle(&mut rx).await;
        assert!(third.generation > second.generation, "{third:?} {second:?}");
        stream.abort();
    }
}
