//! `GET /healthz`: whether this control plane can serve, for load balancers and probes.
//! 200 while the store takes writes and answers; 503 once a flush failed (the control
//! plane then stops to be restarted as soon as the disk has room, see `server.rs`) or
//! while the database of a PostgreSQL store does not answer a read.
//!
//! The answer names the store and whether this replica runs the background workers
//! (`leader.rs`): `{"status", "store": {"kind", "reachable"}, "workers": "leading" |
//! "standby"}`.

use std::time::Duration;

use http::{Response, StatusCode};

use super::reply::{self, Body};
use crate::state::Shared;

/// How long a read of the store may take before the store counts as unreachable.
const PROBE: Duration = Duration::from_secs(3);

/// Whether the store answers a read (a PostgreSQL store's reads go to the database;
/// they block, so off the runtime's workers). A lease read: the rows a replica caches
/// (workloads, credentials, hosts) would answer without the database.
async fn reachable(s: &Shared) -> bool {
    let store = s.store.clone();
    let read = tokio::task::spawn_blocking(move || store.lease("").is_ok());
    matches!(tokio::time::timeout(PROBE, read).await, Ok(Ok(true)))
}

/// The answer.
pub async fn serve(s: &Shared) -> Response<Body> {
    let kind = s.config.store.kind();
    let failed = s.store.failed();
    let reachable = !failed && reachable(s).await;
    let store = serde_json::json!({ "kind": kind, "reachable": reachable });
    let workers = if s.leading.load(std::sync::atomic::Ordering::Acquire) {
        "leading"
    } else {
        "standby"
    };
    if failed || !reachable {
        reply::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "unavailable", "store": store, "workers": workers }),
        )
    } else {
        reply::json(
            StatusCode::OK,
            &serde_json::json!({ "status": "ok", "store": store, "workers": workers }),
        )
    }
}
