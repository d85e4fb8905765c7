//! The optional HTTPS listener (`[http]` in the config): what relying parties outside
//! Leash fetch over plain HTTPS.
//!
//! Routes (one file per group; a new one, such as `/metrics`, is one more arm in
//! [`route`] and one more file):
//! - `GET /.well-known/openid-configuration` and `GET /keys` (`oidc.rs`): OIDC discovery
//!   and the JWKS, so a cloud or CI system can federate with Leash's issuer;
//! - `POST /introspect` (`introspect.rs`): RFC 7662 for authenticated callers;
//! - `GET /healthz` (`health.rs`);
//! - `GET /metrics` (`metrics.rs`): the Prometheus exposition.
//!
//! When the issuer URL has a path (`https://host/leash`), the routes are served under
//! it as well, so a verifier can follow the discovery document's URLs to this listener.
//! HTTP/1.1 only; request heads, and then bodies, must each arrive within
//! [`HEADER_TIMEOUT`]; bodies are at most [`MAX_BODY_BYTES`]. Tokens and secrets are never logged.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::{HttpCert, HttpConfig};
use crate::keys::Keys;
use crate::state::Shared;

pub mod clients;
mod error;
mod health;
mod introspect;
pub mod metrics;
pub mod oidc;
mod reply;
mod tls;

pub use error::HttpError;
use reply::Body;

/// Largest request body (an introspection form with a token): larger is 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// A body over [`MAX_BODY_BYTES`] but at most this is read to its end (and dropped)
/// before the 413; a larger one is refused at once and its connection closed.
const DRAIN_BYTES: usize = 256 * 1024;
/// How long a connection may take to send a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; further ones wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;

/// The routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Discovery,
    Keys,
    Introspect,
    Health,
    Metrics,
}

/// The route of a request path (after the issuer's path, if any).
fn route(path: &str) -> Option<Route> {
    match path {
        "/.well-known/openid-configuration" => Some(Route::Discovery),
        "/keys" => Some(Route::Keys),
        "/introspect" => Some(Route::Introspect),
        "/healthz" => Some(Route::Health),
        "/metrics" => Some(Route::Metrics),
        _ => None,
    }
}

/// The path of an `https://` issuer URL, without a final slash ("" for none).
fn issuer_path(issuer: &str) -> String {
    issuer
        .strip_prefix("https://")
        .or_else(|| issuer.strip_prefix("http://"))
        .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
        .map(|p| p.trim_end_matches('/').to_string())
        .unwrap_or_default()
}

/// What a connection knows about its peer.
#[derive(Debug, Default)]
struct Peer {
    /// Serial (hex) of the client certificate our CA signed, if one was presented.
    serial: Option<String>,
}

/// A bound listener with its TLS configuration, not yet serving.
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    tls: Arc<ServerConfig>,
    addr: SocketAddr,
}

/// Check what `[http]` names on disk (for `--check-config`): the certificate files load.
pub fn check_files(cfg: &HttpConfig) -> Result<(), HttpError> {
    if let HttpCert::Files {
        cert_file,
        key_file,
    } = &cfg.cert
    {
        tls::load_files(cert_file, key_file)?;
    }
    Ok(())
}

impl Listener {
    /// Load the certificate and bind the address.
    pub async fn bind(cfg: &HttpConfig, keys: &Arc<Keys>) -> Result<Listener, HttpError> {
        let tls = tls::server_config(&cfg.cert, keys)?;
        let listen_err = |source| HttpError::Listen {
            addr: cfg.listen.to_string(),
            source,
        };
        let tcp = TcpListener::bind(cfg.listen).await.map_err(listen_err)?;
        let addr = tcp.local_addr().map_err(listen_err)?;
        Ok(Listener { tcp, tls, addr })
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve until the task is dropped.
    pub async fn serve(self, s: Arc<Shared>) {
        let acceptor = TlsAcceptor::from(self.tls);
        let prefix: Arc<str> = issuer_path(&s.config.issuer).into();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match self.tcp.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, s, prefix) = (acceptor.clone(), s.clone(), prefix.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(t)) => t,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "http TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "http TLS handshake timed out");
                            return;
                        }
                    };
                let serial = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| crate::keys::cert_serial(c));
                let who = Arc::new(Peer { serial });
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (s, prefix, who) = (s.clone(), prefix.clone(), who.clone());
                    let span = leash_proto::spans::http_request(&req);
                    async move {
                        Ok::<_, Infallible>(answer(&s, &prefix, &who, req).instrument(span).await)
                    }
                });
                let r = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "an http connection ended with an error");
                }
            });
        }
    }
}

fn not_found() -> Response<Body> {
    reply::error(
        StatusCode::NOT_FOUND,
        "not_found",
        "this listener serves /.well-known/openid-configuration, /keys, /introspect, /healthz and /metrics",
    )
}

fn too_large() -> Response<Body> {
    let mut r = reply::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
        &format!("the request body is over {MAX_BODY_BYTES} bytes"),
    );
    // The rest of the body is not read: the connection cannot carry another request.
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Read a body of at most [`MAX_BODY_BYTES`].
async fn read_body(
    req: Request<Incoming>,
) -> Result<(http::request::Parts, bytes::Bytes), Response<Body>> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_BYTES as u64) {
        return Err(too_large());
    }
    let (parts, body) = req.into_parts();
    // A body trickled in slowly would hold a connection slot: it has as long as a head.
    // A body a little too large is read to its end before the 413, so that a client still
    // sending it gets the answer instead of a broken pipe.
    let read = tokio::time::timeout(HEADER_TIMEOUT, Limited::new(body, DRAIN_BYTES).collect());
    match read.await {
        Err(_) => {
            let mut r = reply::error(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request",
                "the request body did not arrive in time",
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Err(r)
        }
        Ok(Ok(b)) => {
            let b = b.to_bytes();
            if b.len() > MAX_BODY_BYTES {
                return Err(too_large());
            }
            Ok((parts, b))
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(reply::error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request body could not be read",
        )),
    }
}

/// Answer one request.
async fn answer(s: &Shared, prefix: &str, who: &Peer, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let path = if prefix.is_empty() {
        path
    } else {
        path.strip_prefix(prefix)
            .filter(|p| p.starts_with('/'))
            .unwrap_or(path)
    };
    let Some(r) = route(path) else {
        return not_found();
    };
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match r {
        Route::Discovery if get => oidc::serve_discovery(s),
        Route::Keys if get => oidc::serve_keys(s),
        Route::Health if get => health::serve(s).await,
        Route::Metrics if get => metrics::serve(s),
        Route::Discovery | Route::Keys | Route::Health | Route::Metrics => {
            reply::method_not_allowed("GET, HEAD")
        }
        Route::Introspect if req.method() == Method::POST => match read_body(req).await {
            Ok((parts, body)) => introspect::serve(s, &parts.headers, &body, who.serial.as_deref()),
            Err(r) => r,
        },
        Route::Introspect => reply::method_not_allowed("POST"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_issuer_paths() {
        assert_eq!(route("/keys"), Some(Route::Keys));
        assert_eq!(route("/keys/"), None);
        assert_eq!(route("/metrics"), Some(Route::Metrics));
        assert_eq!(route("/metrics/"), None);
        assert_eq!(issuer_path("https://leash.example"), "");
        assert_eq!(issuer_path("https://leash.example/"), "");
        assert_eq!(issuer_path("https://h.example/a/leash/"), "/a/leash");
        assert_eq!(issuer_path("spiffe://td"), "");
    }
}
