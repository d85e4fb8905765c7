//! Keeping a replica's in-memory state in step with what the other replicas of a shared
//! store commit: the policy engine's `--allow` links after any workload changed, and the
//! policy version in force after another replica applied one, and the signing keys and
//! CAs after another replica rotated one or moved one through its states (polled). And the other way: the
//! hosts connected to this replica are marked seen in the store every
//! [`presence_interval`], so the other replicas know they are live (`host list`,
//! `revoke --wait`). On sled there is one control plane, which knows all this itself,
//! and none of it runs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use crate::model::Change;
use crate::state::Shared;

/// How often the policy version and the key records in force are compared with the
/// stored ones.
const POLICY_POLL: Duration = Duration::from_secs(1);

/// How often a replica marks its connected hosts seen: often enough that a live host
/// is never taken for one that failed closed (a quarter of `max_offline`), at most
/// every 5 s.
pub fn presence_interval(max_offline: Duration) -> Duration {
    (max_offline / 4).clamp(Duration::from_millis(250), Duration::from_secs(5))
}

/// Whether a host this replica does not hold is connected to another replica: it was
/// marked seen within two [`presence_interval`]s (it may have left since, by as much).
pub fn live_elsewhere(s: &Shared, last_seen_unix: i64) -> bool {
    let window = presence_interval(s.config.max_offline) * 2;
    s.config.store != crate::config::StoreConfig::Sled
        && s.clock.now_ms() - last_seen_unix * 1000 <= window.as_millis() as i64 + 1000
}

/// Mark the hosts connected here seen, every [`presence_interval`], until the store
/// closes.
pub async fn mark_present(s: Arc<Shared>) {
    let mut tick = tokio::time::interval(presence_interval(s.config.max_offline));
    loop {
        tick.tick().await;
        let now = s.clock.now();
        // All at once, so group commit writes them in one batch rather than one
        // transaction each.
        let hosts = s.hub.connected_hosts();
        let marks = hosts.iter().map(|h| s.store.touch_host(h, now));
        for (h, r) in hosts.iter().zip(futures::future::join_all(marks).await) {
            if let Err(e) = r {
                tracing::warn!(error = %e, host = %h, "could not record host last-seen");
            }
        }
    }
}

/// Follow the store until it closes.
pub async fn follow(s: Arc<Shared>) {
    let mut changes = s.store.subscribe_changes();
    let mut tick = tokio::time::interval(POLICY_POLL);
    loop {
        tokio::select! {
            c = changes.recv() => match c {
                Ok(c) => {
                    if matches!(*c, Change::WorkloadPut { .. } | Change::WorkloadRemoved { .. }) {
                        s.relink();
                    }
                }
                // Missed some: relink once for all of them.
                Err(RecvError::Lagged(_)) => s.relink(),
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                s.relink_if_pending();
                install_newer_policy(&s).await;
                reload_keys(&s).await;
            }
        }
    }
}

/// Take up a key rotation or key state change another replica made, and send the
/// agents of this one the new trust bundle.
async fn reload_keys(s: &Shared) {
    match s.keys.reload(&*s.store, &s.master, s.clock.now()).await {
        Ok(true) => s.keys_changed(),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the key records another replica wrote; retrying")
        }
    }
}

/// Install the stored policy version when another replica applied a newer one.
async fn install_newer_policy(s: &Shared) {
    let Ok(Some(rec)) = s.store.current_policy() else {
        return;
    };
    if rec.version <= s.policy.version() {
        return;
    }
    let _guard = s.policy_lock.lock().await;
    let workloads = match s.store.workloads() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the workloads to install policy version {}", rec.version);
            return;
        }
    };
    match s.policy.install(rec.version, &rec.text, &workloads) {
        Ok(()) => tracing::info!(
            version = rec.version,
            "installed the policy version another replica applied"
        ),
        Err(e) => {
            tracing::error!(error = %e, version = rec.version, "cannot install the policy version another replica applied")
        }
    }
}
