//! One `tracing` span per request, in both daemons, so that `--log-json` lines of one
//! request can be joined: every event logged while a request is handled carries the
//! span's fields (`span` and `spans` in the JSON line).
//!
//! The gRPC servers open the span ([`grpc_request`], given to tonic's `trace_fn`) with
//! the method; handlers fill in what they learn with [`record`]. Fields hold names and
//! ids only, never a token, a secret value or a key.

use tracing::field::Empty;

/// The span's name.
pub const REQUEST: &str = "request";

/// A field of the request span that handlers record when they know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The workload the call is for.
    Workload,
    /// The host (agent) the call comes from, or the agent's own host name.
    Host,
    /// The credential asked for.
    Credential,
    /// The lease the call issued, served or acted on.
    LeaseId,
}

impl Field {
    /// The field's name in the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Workload => "workload",
            Field::Host => "host",
            Field::Credential => "credential",
            Field::LeaseId => "lease_id",
        }
    }
}

/// The span of one gRPC request: `request{method=/leash.v1.ControlPlane/Issue}`, with
/// the other fields empty until recorded.
pub fn grpc_request<B>(req: &tonic::codegen::http::Request<B>) -> tracing::Span {
    tracing::info_span!(
        REQUEST,
        method = %req.uri().path(),
        workload = Empty,
        host = Empty,
        credential = Empty,
        lease_id = Empty,
    )
}

/// The span of one HTTP request (the agent's HTTP API, the control plane's HTTPS
/// listener): the same span, its `method` the request's path (never its query).
pub fn http_request<B>(req: &tonic::codegen::http::Request<B>) -> tracing::Span {
    grpc_request(req)
}

/// Record `value` as `field` of the current request span (nothing outside one). Empty
/// values are not recorded.
pub fn record(field: Field, value: &str) {
    if !value.is_empty() {
        tracing::Span::current().record(field.as_str(), value);
    }
}
