//! Plain HTTP/1.1 with JSON on the workload socket, beside gRPC, for callers without
//! gRPC stubs (curl, a script's standard library):
//!
//! - `GET /v1/credentials/NAME?action=&audience=&ttl=&as=&field=&fresh=`: the document
//!   of `leash get --output json` (`documents::fetched`);
//! - `GET /v1/whoami`, `GET /v1/status`: those of `leash whoami` / `leash status`.
//!
//! Connections reach here from `server::incoming`, which has pinned the peer and
//! counted the connection against its uid's cap; every request goes through the same
//! calls as gRPC (`calls.rs`): the same attestation, request allowance, cache and
//! issuance. Errors are `{"error": {"reason", "exit_code", "message"}}` (plus
//! `approval_id` for a pending approval), with the reason's HTTP status (see
//! [`http_status`]).
//!
//! Bounds: a request head (line and headers) over 64 KiB is refused by the parser (431),
//! a request target over [`MAX_TARGET_BYTES`] with 414, any request body with 413, any
//! method but GET with 405; a connection idle for [`IDLE_TIMEOUT`] (before its first
//! request, or between requests) is closed. Caller text is quoted back only through
//! `names::excerpt`, never whole.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use leash_proto::names;
use leash_proto::reason::Reason;
use leash_proto::v1;
use serde_json::{json, Value};
use tonic::transport::server::Connected;

use crate::calls::{CallError, Calls};
use crate::documents::{self, FieldError};
use crate::server::{AttestedStream, Conn};

/// How long a connection may wait with no complete request head before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers): the socket's request limit.
pub const MAX_HEAD_BYTES: usize = leash_proto::MAX_WORKLOAD_REQUEST_BYTES;
/// Longest request target (path and query).
pub const MAX_TARGET_BYTES: usize = 8 * 1024;

const CREDENTIALS: &str = "/v1/credentials/";
const ENDPOINTS: &str = "the API has GET /v1/credentials/NAME, GET /v1/whoami and GET /v1/status";
const QUERY_KEYS: &str = "action, audience, ttl, as, field and fresh";

/// Serve one HTTP/1.1 connection until the peer closes it or it idles out.
pub async fn serve(calls: Arc<Calls>, stream: AttestedStream) {
    let conn = stream.connect_info();
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let (calls, conn) = (calls.clone(), conn.clone());
        let span = leash_proto::spans::http_request(&req);
        async move { Ok::<_, Infallible>(answer(&calls, &conn, &req).instrument(span).await) }
    });
    let r = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc)
        .await;
    if let Err(e) = r {
        tracing::debug!(error = %e, "an HTTP connection on the workload socket ended with an error");
    }
}

/// An answer that is not a document: the HTTP status and the error object.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// HTTP status.
    pub status: StatusCode,
    /// The reason (the same wire names as gRPC, and so the same exit codes).
    pub reason: Reason,
    /// What was wrong and what to do.
    pub message: String,
    /// The approval a pending request waits for.
    pub approval_id: Option<String>,
}

impl Failure {
    fn new(reason: Reason, message: impl Into<String>) -> Failure {
        Failure {
            status: http_status(reason),
            reason,
            message: message.into(),
            approval_id: None,
        }
    }

    fn with_status(mut self, status: StatusCode) -> Failure {
        self.status = status;
        self
    }

    /// The error document.
    pub fn document(&self) -> Value {
        let mut e = json!({
            "reason": self.reason.as_str(),
            "exit_code": self.reason.exit_code(),
            "message": self.message,
        });
        if let Some(id) = &self.approval_id {
            e["approval_id"] = Value::String(id.clone());
        }
        json!({ "error": e })
    }
}

impl From<CallError> for Failure {
    fn from(e: CallError) -> Failure {
        let over_allowance = matches!(e, CallError::TooManyRequests(_));
        let mut f = Failure::new(e.reason(), e.to_string());
        f.approval_id = e.approval_id();
        if over_allowance {
            f.status = StatusCode::TOO_MANY_REQUESTS;
        }
        f
    }
}

impl From<FieldError> for Failure {
    fn from(e: FieldError) -> Failure {
        Failure::new(Reason::Invalid, e.to_string())
    }
}

/// The HTTP status of a reason.
pub fn http_status(r: Reason) -> StatusCode {
    match r {
        Reason::Invalid => StatusCode::BAD_REQUEST,
        Reason::Denied => StatusCode::FORBIDDEN,
        Reason::Pending => StatusCode::CONFLICT,
        Reason::NotFound => StatusCode::NOT_FOUND,
        Reason::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Reason::Timeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn answer<B>(calls: &Calls, conn: &Conn, req: &Request<B>) -> Response<Full<Bytes>> {
    match route(calls, conn, req).await {
        Ok(doc) => respond(StatusCode::OK, &doc, None),
        Err(f) => {
            let extra = match f.status {
                StatusCode::METHOD_NOT_ALLOWED => Some((header::ALLOW, "GET")),
                StatusCode::TOO_MANY_REQUESTS => Some((header::RETRY_AFTER, "1")),
                // The body was not read: the connection cannot be reused.
                StatusCode::PAYLOAD_TOO_LARGE => Some((header::CONNECTION, "close")),
                _ => None,
            };
            respond(f.status, &f.document(), extra)
        }
    }
}

fn respond(
    status: StatusCode,
    doc: &Value,
    extra: Option<(header::HeaderName, &'static str)>,
) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(doc).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // A credential must not be kept by anything between us and the caller.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some((k, v)) = extra {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

/// Which endpoint a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/credentials/NAME`, the name percent-decoded.
    Credential(String),
    /// `/v1/whoami`.
    WhoAmI,
    /// `/v1/status`.
    Status,
}

async fn route<B>(calls: &Calls, conn: &Conn, req: &Request<B>) -> Result<Value, Failure> {
    let target = req.uri().path_and_query().map_or("", |p| p.as_str());
    if target.len() > MAX_TARGET_BYTES {
        return Err(Failure::new(
            Reason::Invalid,
            format!(
                "the request target is {} bytes, over the limit of {MAX_TARGET_BYTES}",
                target.len()
            ),
        )
        .with_status(StatusCode::URI_TOO_LONG));
    }
    let endpoint = endpoint(req.uri().path())?;
    if req.method() != Method::GET {
        return Err(Failure::new(
            Reason::Invalid,
            format!("only GET is served here; {ENDPOINTS}"),
        )
        .with_status(StatusCode::METHOD_NOT_ALLOWED));
    }
    if has_body(req) {
        return Err(Failure::new(
            Reason::Invalid,
            "this API takes no request body; put the options in the query string",
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE));
    }
    let query = req.uri().query().unwrap_or("");
    match endpoint {
        Endpoint::WhoAmI => {
            no_query(query)?;
            Ok(documents::whoami(&calls.who_am_i(Some(conn))?))
        }
        Endpoint::Status => {
            no_query(query)?;
            Ok(documents::status(&calls.status(Some(conn))?))
        }
        Endpoint::Credential(name) => {
            let q = CredentialQuery::parse(query)?;
            let field = q.field.clone();
            let r = calls.fetch(Some(conn), q.request(name.clone())).await?;
            match field {
                Some(f) => Ok(documents::fetched_field(&r, &name, &f)?),
                None => Ok(documents::fetched(&r, &name)?),
            }
        }
    }
}

/// The endpoint a request path names (the query apart).
pub fn endpoint(path: &str) -> Result<Endpoint, Failure> {
    match path {
        "/v1/whoami" => Ok(Endpoint::WhoAmI),
        "/v1/status" => Ok(Endpoint::Status),
        p if p.starts_with(CREDENTIALS) => {
            // A name may hold `/` (team-web/stripe-key), written as is or as %2F.
            let name = decode(&p[CREDENTIALS.len()..], false, "the credential name")?;
            if name.is_empty() {
                return Err(Failure::new(
                    Reason::Invalid,
                    "name the credential to fetch: GET /v1/credentials/NAME",
                ));
            }
            Ok(Endpoint::Credential(name))
        }
        _ => Err(Failure::new(
            Reason::NotFound,
            format!("no such endpoint; {ENDPOINTS}"),
        )),
    }
}

fn has_body<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

fn no_query(query: &str) -> Result<(), Failure> {
    if query.is_empty() {
        return Ok(());
    }
    Err(Failure::new(
        Reason::Invalid,
        "this endpoint takes no query parameters",
    ))
}

/// Percent-decode `s` (in a query, `+` is a space too) into UTF-8 text.
fn decode(s: &str, query: bool, what: &str) -> Result<String, Failure> {
    let plus;
    let s = if query && s.contains('+') {
        plus = s.replace('+', " ");
        plus.as_str()
    } else {
        s
    };
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| {
            Failure::new(
                Reason::Invalid,
                format!("{what} is not UTF-8 once percent-decoded"),
            )
        })
}

/// The query of `GET /v1/credentials/NAME`: the options of `leash get`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CredentialQuery {
    /// `action=`; empty for the credential's default.
    pub action: String,
    /// `audience=`; empty for the credential's first.
    pub audience: String,
    /// `ttl=` in seconds; 0 for the credential's default.
    pub ttl_seconds: u32,
    /// `as=`: the workload, when several match the caller.
    pub as_workload: String,
    /// `field=`: one field of a json-format secret or of a postgres credential.
    pub field: Option<String>,
    /// `fresh`: bypass the agent's cache.
    pub fresh: bool,
}

impl CredentialQuery {
    /// Parse a query string (without the `?`): form encoding, strict (an unknown or
    /// repeated parameter is refused, naming it through `names::excerpt`).
    pub fn parse(query: &str) -> Result<CredentialQuery, Failure> {
        let mut q = CredentialQuery::default();
        let mut seen = BTreeSet::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = decode(k, true, "a query parameter's name")?;
            let v = decode(v, true, &format!("query parameter {}", names::excerpt(&k)))?;
            let bad = |m: String| Failure::new(Reason::Invalid, m);
            if !seen.insert(k.clone()) {
                return Err(bad(format!(
                    "query parameter {} is given twice; give it once",
                    names::excerpt(&k)
                )));
            }
            match k.as_str() {
                "action" => q.action = v,
                "audience" => q.audience = v,
                "as" => q.as_workload = v,
                "ttl" => {
                    q.ttl_seconds = leash_proto::cli::parse_secs(&v).map_err(|_| {
                        bad(format!(
                            "ttl {} is not a duration; write e.g. ttl=30s, ttl=10m, ttl=2h",
                            names::excerpt(&v)
                        ))
                    })?
                }
                "field" if v.is_empty() => {
                    return Err(bad("field= names no field; drop it or name one".into()))
                }
                "field" => q.field = Some(v),
                "fresh" => {
                    q.fresh = match v.as_str() {
                        "" | "1" | "true" => true,
                        "0" | "false" => false,
                        _ => {
                            return Err(bad(format!(
                                "fresh {} is not a yes or no; write fresh=true or fresh=false",
                                names::excerpt(&v)
                            )))
                        }
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "unknown query parameter {}; the credential API takes {QUERY_KEYS}",
                        names::excerpt(&k)
                    )))
                }
            }
        }
        Ok(q)
    }

    /// The Fetch this query asks for, of `credential`.
    pub fn request(self, credential: String) -> v1::FetchRequest {
        v1::FetchRequest {
            credential,
            action: self.action,
            audience: self.audience,
            ttl_seconds: self.ttl_seconds,
            as_workload: self.as_workload,
            fresh: self.fresh,
            // Neither is an HTTP option: on-behalf-of is for shared agents (use gRPC),
            // and a task's credentials go to `leash exec`'s children.
            on_behalf_of: String::new(),
            task_handle: String::new(),
        }
    }
}

#[cfg(test)]
mod tests;
