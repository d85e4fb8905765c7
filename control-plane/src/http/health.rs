//! `GET /healthz`: whether this control plane can serve, for load balancers and probes.
//! 200 while the store takes writes; 503 once a flush failed (the control plane then
//! stops to be restarted as soon as the disk has room, see `server.rs`).

use http::{Response, StatusCode};

use super::reply::{self, Body};
use crate::state::Shared;

/// The answer.
pub fn serve(s: &Shared) -> Response<Body> {
    if s.store.failed() {
        reply::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "unavailable", "store": "failed" }),
        )
    } else {
        reply::json(
            StatusCode::OK,
            &serde_json::json!({ "status": "ok", "store": "ok" }),
        )
    }
}
