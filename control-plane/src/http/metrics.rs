//! `GET /metrics`: the Prometheus exposition, on the HTTPS listener and, when `[metrics]
//! listen` is set, on a plain-HTTP listener that serves nothing else. The gauges are
//! read from the state just before each scrape ([`snapshot`]); the metrics themselves
//! are defined in `crate::metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::reply::{self, Body};
use crate::metrics::Snapshot;
use crate::model::ApprovalState;
use crate::state::Shared;

/// Connections the plain listener serves at once (a scraper needs one).
const MAX_CONNECTIONS: usize = 16;

/// The state the gauges show, read now.
pub fn snapshot(s: &Shared) -> Snapshot {
    // Against what each stream sent, not the store's head: leases take sequence numbers
    // too, and no agent is sent those.
    let lags = s.hub.lags();
    let now = s.clock.now_ms();
    let max_offline_ms = i64::try_from(s.config.max_offline.as_millis()).unwrap_or(i64::MAX);
    let failed_closed = s
        .store
        .hosts()
        .unwrap_or_default()
        .into_iter()
        .filter(|h| !h.evicted && s.hub.info(&h.name).is_none())
        .filter(|h| {
            // As `revocation::wait` counts it: away longer than max_offline, counted from
            // this control plane's start at the earliest.
            let last = h.last_seen.saturating_mul(1000).max(s.hub.started_ms);
            now.saturating_sub(last) > max_offline_ms
        })
        .count();
    let approvals_pending = s
        .store
        .approvals()
        .unwrap_or_default()
        .iter()
        .filter(|a| a.state == ApprovalState::Pending)
        .count();
    let ends_pending = s.store.pending_ends(None).map_or(0, |v| v.len());
    let ca_not_after = x509_parser::parse_x509_certificate(&s.keys.ca_der())
        .map(|(_, c)| c.validity().not_after.timestamp())
        .unwrap_or(0);
    Snapshot {
        connected: lags.len() as i64,
        caught_up: lags.iter().filter(|l| **l == 0).count() as i64,
        failed_closed: failed_closed as i64,
        lags,
        approvals_pending: approvals_pending as i64,
        ends_pending: ends_pending as i64,
        ca_not_after,
        leading: i64::from(s.leading.load(std::sync::atomic::Ordering::Acquire)),
    }
}

/// The answer to `GET /metrics`.
pub fn serve(s: &Shared) -> Response<Body> {
    let text = crate::metrics::render(&snapshot(s));
    let mut r = Response::new(Full::new(Bytes::from(text)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Answer one request on the plain listener: `/metrics` only.
fn answer(s: &Shared, req: &Request<Incoming>) -> Response<Body> {
    match (req.uri().path(), req.method()) {
        ("/metrics", &Method::GET | &Method::HEAD) => serve(s),
        ("/metrics", _) => reply::method_not_allowed("GET, HEAD"),
        _ => reply::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "this listener serves /metrics only",
        ),
    }
}

/// Bind `[metrics] listen`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, super::HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| super::HttpError::Listen {
            addr: addr.to_string(),
            source,
        })
}

/// Serve plain-HTTP `/metrics` on `tcp` until the task is dropped.
pub async fn serve_plain(tcp: TcpListener, s: Arc<Shared>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (conn, peer) = match tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let s = s.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let s = s.clone();
                async move { Ok::<_, Infallible>(answer(&s, &req)) }
            });
            let r = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(super::HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(conn), svc)
                .await;
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "a metrics connection ended with an error");
            }
        });
    }
}
