//! Keeping a replica's in-memory state in step with what the other replicas of a shared
//! store commit: the policy engine's `--allow` links after any workload changed, and the
//! policy version in force after another replica applied one. On sled there is one
//! control plane, which updates them itself as it writes, and this does not run.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use crate::model::Change;
use crate::state::Shared;

/// How often the policy version in force is compared with the stored one.
const POLICY_POLL: Duration = Duration::from_secs(1);

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
            _ = tick.tick() => install_newer_policy(&s).await,
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
