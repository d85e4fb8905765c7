//! The Sync stream: the agent's one long-lived connection to the control plane.
//!
//! Down the stream come the workloads that may run here, heartbeats, revocations, the
//! trust bundle and eviction; up go acknowledgments (with how many credentials each revocation wiped)
//! and batched usage reports. On reconnect the agent resumes from its last sequence
//! number, so every revocation it missed is applied before it serves again.

use std::sync::Arc;
use std::time::Duration;

use leash_proto::v1;
use leash_proto::v1::control_plane_client::ControlPlaneClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::agent::{Agent, State};
use crate::cache::Target;

/// How often served-usage batches go up the stream.
const USAGE_INTERVAL: Duration = Duration::from_secs(5);
/// How often the watchdog checks expiry and max_offline against the agent's clock.
const WATCH_TICK: Duration = Duration::from_millis(250);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Why a stream ended.
enum End {
    /// Reconnect after a pause.
    Retry(String),
    /// Never reconnect (evicted).
    Stop,
}

/// Hold the Sync stream forever, reconnecting with backoff. `ready` fires the first
/// time the agent has caught up.
pub async fn run(agent: Arc<Agent>, ready: tokio::sync::watch::Sender<bool>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match session(&agent, &ready).await {
            End::Stop => return,
            End::Retry(why) => {
                agent.set_disconnected();
                tracing::warn!(reason = %why, retry_in_ms = backoff.as_millis() as u64, "control plane connection lost");
            }
        }
        // Jitter so a fleet does not reconnect in lockstep after a control-plane restart.
        let jitter =
            Duration::from_millis(u64::from(rand_u16()) % (backoff.as_millis() as u64 / 2 + 1));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        if agent.health().synced {
            backoff = BACKOFF_MIN;
        }
    }
}

fn rand_u16() -> u16 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u16::from_le_bytes(b)
}

async fn session(agent: &Arc<Agent>, ready: &tokio::sync::watch::Sender<bool>) -> End {
    let cfg = match agent.identity().client_config() {
        Ok(c) => c,
        Err(e) => return End::Retry(e.to_string()),
    };
    let channel = match crate::tls::connect(&agent.config.control_planes, cfg).await {
        Ok(c) => c,
        Err(e) => return End::Retry(e.to_string()),
    };
    let client = ControlPlaneClient::new(channel)
        .max_decoding_message_size(leash_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(leash_proto::MAX_MESSAGE_BYTES);
    agent.set_client(client.clone());
    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(256);
    let hello = v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Hello(v1::SyncHello {
            protocol_version: leash_proto::PROTOCOL_VERSION,
            last_seq: agent.health().last_seq,
            agent_version: env!("CARGO_PKG_VERSION").into(),
        })),
    };
    if tx.send(hello).await.is_err() {
        return End::Retry("stream closed".into());
    }
    let mut inbound = match client.clone().sync(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            if s.code() == tonic::Code::PermissionDenied {
                tracing::error!(reason = %s.message(), "the control plane refuses this host");
                if s.message().contains("evicted") {
                    agent.evicted(s.message());
                    return End::Stop;
                }
            }
            return End::Retry(s.message().to_string());
        }
    };
    // Whether this session has sent a trust bundle yet (its first one always counts).
    let mut bundle_seen = false;
    let mut usage_tick = tokio::time::interval(USAGE_INTERVAL);
    usage_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(m)) => {
                    if let Some(end) = apply(agent, m, &tx, ready, &mut bundle_seen).await {
                        return end;
                    }
                }
                Ok(None) => return End::Retry("the control plane closed the stream".into()),
                Err(s) => return End::Retry(s.message().to_string()),
            },
            _ = usage_tick.tick() => {
                let leases = agent.take_usage();
                if !leases.is_empty() {
                    let m = v1::AgentMessage { msg: Some(v1::agent_message::Msg::Usage(v1::UsageReport { leases })) };
                    if tx.send(m).await.is_err() {
                        return End::Retry("stream closed".into());
                    }
                }
            }
        }
    }
}

fn target_of(agent: &Agent, r: &v1::Revocation) -> Target {
    use v1::revocation_target::Target as T;
    match r.target.as_ref().and_then(|t| t.target.clone()) {
        Some(T::Lease(v)) => Target::Lease(v),
        Some(T::Workload(v)) => Target::Workload(v),
        Some(T::Credential(v)) => Target::Credential(v),
        Some(T::Owner(v)) => Target::Owner(v),
        Some(T::Host(h)) if h == agent.identity().desc.host => Target::All,
        // Another host's leases: only the explicitly listed lease ids can be here.
        Some(T::Host(_)) => Target::Lease(String::new()),
        Some(T::All(_)) => Target::All,
        Some(T::Task(v)) => Target::Task(v),
        None => Target::Lease(String::new()),
    }
}

async fn apply(
    agent: &Arc<Agent>,
    m: v1::ControlMessage,
    tx: &mpsc::Sender<v1::AgentMessage>,
    ready: &tokio::sync::watch::Sender<bool>,
    bundle_seen: &mut bool,
) -> Option<End> {
    use v1::agent_message::Msg as Up;
    use v1::control_message::Msg;
    let send = |m: Up| {
        let tx = tx.clone();
        async move { tx.send(v1::AgentMessage { msg: Some(m) }).await.is_ok() }
    };
    match m.msg? {
        Msg::Snapshot(s) => {
            let workloads = s.workloads.into_iter().filter_map(|e| e.workload).collect();
            let dropped = agent.replace_workloads(workloads);
            if dropped > 0 {
                tracing::info!(
                    wiped = dropped,
                    "wiped credentials of workloads no longer sent here"
                );
            }
            agent.advance(s.seq);
        }
        Msg::Workload(e) => {
            if let Some(w) = e.workload {
                agent.put_workload(w);
            }
            agent.advance(e.seq);
        }
        Msg::WorkloadRemoved(r) => {
            agent.remove_workload(&r.name);
            agent.advance(r.seq);
        }
        Msg::CaughtUp(c) => {
            let mine = agent.health().last_seq.max(agent.cache.max_seq());
            if c.store_seq > 0 && mine > c.store_seq {
                // The control plane's store is older than what this agent has seen: it was
                // restored to an earlier point (or replaced). Revocations made after that
                // point are lost with it, and what was issued after it is unknown to it,
                // so nothing held here can be vouched for: wipe everything, and start again
                // from its sequence.
                let wiped = agent.cache.wipe_all();
                agent.cache.forget_applied();
                agent.restart_from(c.store_seq.min(c.seq));
                tracing::warn!(
                    ours = mine,
                    control_plane = c.store_seq,
                    wiped,
                    "the control plane's state is older than this agent's (restored from a backup?): wiped every credential"
                );
            }
            agent.advance(c.seq);
            agent.caught_up(c.max_offline_secs);
            // Tasks that ended while the control plane was away: their leases complete
            // now (off the stream's loop, which must keep answering heartbeats).
            if agent.tasks.unreported() > 0 {
                tokio::spawn(crate::tasks::report_unreported(agent.clone()));
            }
            if !*ready.borrow() {
                let _ = ready.send(true);
            }
            if !send(Up::Ack(v1::SyncAck {
                seq: agent.health().last_seq,
            }))
            .await
            {
                return Some(End::Retry("stream closed".into()));
            }
        }
        Msg::Heartbeat(h) => {
            agent.heartbeat(h.max_offline_secs);
            agent.advance(h.seq);
            if !send(Up::Ack(v1::SyncAck {
                seq: agent.health().last_seq,
            }))
            .await
            {
                return Some(End::Retry("stream closed".into()));
            }
        }
        Msg::Revocation(r) => {
            let target = target_of(agent, &r);
            let wiped = agent
                .cache
                .revoke(r.seq, target.clone(), r.lease_ids.clone());
            crate::metrics::wiped(crate::metrics::WipeCause::Revoked, wiped);
            agent.advance(r.seq);
            tracing::info!(seq = r.seq, ?target, wiped, reason = ?r.reason, "revocation applied");
            if !send(Up::WipeAck(v1::WipeAck {
                seq: r.seq,
                wiped: wiped as u32,
            }))
            .await
            {
                return Some(End::Retry("stream closed".into()));
            }
        }
        // The trust bundle, which the SPIFFE Workload API serves. Not sequenced.
        Msg::Bundle(b) => {
            let generation = b.generation;
            if agent.set_bundle(b, !*bundle_seen) {
                tracing::info!(generation, "trust bundle updated");
            }
            *bundle_seen = true;
        }
        Msg::Evicted(e) => {
            agent.evicted(&e.reason);
            return Some(End::Stop);
        }
    }
    None
}

/// Wipe at expiry, and fail closed past `max_offline` since the last heartbeat. Both are
/// decided by the agent's clock, re-read on every short tick, so moving that clock takes
/// effect within one tick.
pub async fn watchdog(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(WATCH_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        check_deadlines(&agent);
    }
}

/// One watchdog pass: wipe what has expired by the agent's clock, and fail closed if the
/// last heartbeat is older than max_offline.
pub fn check_deadlines(agent: &Agent) {
    let now = agent.clock.now_ms();
    let expired = agent.cache.sweep(now.div_euclid(1000));
    crate::metrics::wiped(crate::metrics::WipeCause::Expired, expired.len());
    if !expired.is_empty() {
        tracing::info!(count = expired.len(), "wiped expired credentials");
    }
    let h = agent.health();
    if h.state == State::Ready || h.state == State::Offline {
        let silent = now - h.last_heartbeat_ms;
        if h.last_heartbeat_ms > 0 && silent > i64::from(h.max_offline_secs) * 1000 {
            let wiped = agent.fail_closed();
            tracing::warn!(
                silent_ms = silent,
                max_offline_secs = h.max_offline_secs,
                wiped,
                "no heartbeat from the control plane for longer than max_offline: wiped everything, failing closed until re-synced"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::{Attestor, AttestorConfig};
    use crate::cache::{Entry, Key};
    use crate::secret::Secret;
    use leash_proto::clock::Clock;

    fn agent(clock: &Clock) -> Agent {
        let config = crate::agent::AgentConfig {
            control_planes: vec!["127.0.0.1:1".into()],
            state_dir: "/nonexistent".into(),
            socket: "/nonexistent/agent.sock".into(),
            max_offline_cap_secs: None,
            cli_paths: vec![],
            max_conns_per_uid: 8,
            requests_per_uid: 0,
            spiffe_jwt_credential: "spiffe-jwt".into(),
            spiffe_x509_credential: "spiffe-x509".into(),
            metrics_listen: None,
        };
        let attestor = Attestor::new(AttestorConfig::default()).expect("attestor");
        Agent::new(
            config,
            attestor,
            crate::identity::Identity::for_tests("h"),
            clock.clone(),
        )
    }

    fn key() -> Key {
        Key {
            workload: "w".into(),
            credential: "c".into(),
            audience: String::new(),
            action: String::new(),
            ttl: 0,
            task: None,
            obo: None,
        }
    }

    fn cache_for(agent: &Agent, secs: i64) {
        let now = agent.clock.now();
        assert!(agent.cache.insert(
            key(),
            Entry {
                token: Secret::from("tok"),
                lease_id: "l1".into(),
                owner: "o".into(),
                issued_at: now,
                expires_at: now + secs,
                seq: 1,
                action: "read".into(),
                audience: "a".into(),
                served: Default::default(),
                chain_der: Vec::new(),
            },
        ));
    }

    #[test]
    fn a_cached_credential_expires_when_the_clock_passes_it() {
        let clock = Clock::system();
        let a = agent(&clock);
        a.caught_up(3600);
        cache_for(&a, 60);
        check_deadlines(&a);
        assert!(
            a.cache.get(&key(), clock.now()).is_some(),
            "not expired yet"
        );
        clock.advance_ms(50_000);
        check_deadlines(&a);
        assert_eq!(a.cache.len(), 1, "ten seconds left");
        clock.advance_ms(11_000);
        assert!(
            a.cache.get(&key(), clock.now()).is_none(),
            "never served at expiry"
        );
        check_deadlines(&a);
        assert!(a.cache.is_empty(), "wiped at expiry");
        assert_eq!(a.state(), State::Ready, "expiry alone does not fail closed");
    }

    fn bundle(generation: u64, kid: &str) -> v1::TrustBundle {
        v1::TrustBundle {
            generation,
            jwks_json: format!(r#"{{"keys":[{{"kty":"EC","use":"sig","kid":"{kid}"}}]}}"#),
            ca_certificates_der: vec![vec![1, 2, 3]],
        }
    }

    #[test]
    fn a_newer_trust_bundle_wins_and_bundle_streams_follow_it() {
        let clock = Clock::system();
        let a = Arc::new(agent(&clock));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (tx, mut rx) = mpsc::channel(4);
            tokio::spawn(crate::spiffe::bundle::jwt_stream(a.clone(), tx));
            // Nothing is sent before the first bundle.
            let none = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await;
            assert!(none.is_err(), "a JWT bundle before any was received");
            assert!(a.set_bundle(bundle(2, "k2"), true));
            let first = rx.recv().await.expect("message").expect("ok");
            let jwks = String::from_utf8(first.bundles["spiffe://test"].clone()).expect("utf8");
            assert!(jwks.contains("k2") && jwks.contains("jwt-svid"), "{jwks}");
            // An older generation on the same session is ignored; the same one again
            // wakes no one.
            assert!(!a.set_bundle(bundle(1, "k1"), false));
            assert!(!a.set_bundle(bundle(2, "k2"), false));
            // A newer one is sent on the open stream.
            assert!(a.set_bundle(bundle(3, "k3"), false));
            let next = rx.recv().await.expect("message").expect("ok");
            let jwks = String::from_utf8(next.bundles["spiffe://test"].clone()).expect("utf8");
            assert!(jwks.contains("k3"), "{jwks}");
            // A restarted control plane may count from 1 again: the first bundle of a
            // new session counts.
            assert!(a.set_bundle(bundle(1, "k4"), true));
            let again = rx.recv().await.expect("message").expect("ok");
            let jwks = String::from_utf8(again.bundles["spiffe://test"].clone()).expect("utf8");
            assert!(jwks.contains("k4"), "{jwks}");
        });
    }

    #[test]
    fn max_offline_fails_closed_by_the_clock() {
        let clock = Clock::system();
        let a = agent(&clock);
        a.caught_up(30);
        cache_for(&a, 3600);
        clock.advance_ms(29_000);
        check_deadlines(&a);
        assert_eq!(a.state(), State::Ready, "still within max_offline");
        assert_eq!(a.cache.len(), 1);
        // A heartbeat restarts the count.
        a.heartbeat(30);
        clock.advance_ms(29_000);
        check_deadlines(&a);
        assert_eq!(a.state(), State::Ready);
        clock.advance_ms(1_001);
        check_deadlines(&a);
        assert_eq!(a.state(), State::FailingClosed);
        assert!(a.cache.is_empty(), "everything wiped");
        assert!(
            a.health().reason.contains("max_offline"),
            "{}",
            a.health().reason
        );
    }
}
