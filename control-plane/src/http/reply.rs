//! Building answers: JSON documents and errors with the headers every route sets.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// The body type of every answer.
pub type Body = Full<Bytes>;

/// `bytes` as a JSON answer with `status` and a `Cache-Control` header.
pub fn json_bytes(status: StatusCode, bytes: Bytes, cache: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(bytes));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// A JSON value as an answer that must not be cached.
pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    json_bytes(status, Bytes::from(v.to_string()), "no-store")
}

/// An OAuth-style error (`error`, `error_description`), as RFC 6749 and RFC 7662 answer.
pub fn error(status: StatusCode, code: &str, description: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({ "error": code, "error_description": description }),
    )
}

/// 405 with the methods the path takes.
pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("this path takes {allow}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}
