//! `--metrics-listen`: a plain-HTTP listener that serves only `GET /metrics`, the
//! Prometheus exposition of `crate::metrics`, with the gauges read from the agent's
//! state just before each scrape. Off by default; nothing it serves is secret (no lease
//! id, token or workload name is a label value).

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

use crate::agent::Agent;
use crate::metrics::Snapshot;

/// Connections served at once (a scraper needs one).
const MAX_CONNECTIONS: usize = 16;
/// How long a connection may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen for metrics on {addr}: {source}; choose a free address for --metrics-listen"
)]
pub struct ScrapeError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Bind `--metrics-listen`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ScrapeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ScrapeError { addr, source })
}

/// The state the gauges show, read now.
pub fn snapshot(agent: &Agent) -> Snapshot {
    let h = agent.health();
    let now = agent.clock.now_ms();
    Snapshot {
        cached: agent.cache.count_by_kind(),
        heartbeat_age_secs: (h.last_heartbeat_ms > 0)
            .then(|| (now - h.last_heartbeat_ms).max(0) as f64 / 1000.0),
        cert_not_after: agent.identity().desc.not_after,
        connected: h.synced,
    }
}

fn answer(agent: &Agent, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.uri().path(), req.method()) {
        ("/metrics", &Method::GET | &Method::HEAD) => (
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            crate::metrics::render(&snapshot(agent)),
        ),
        ("/metrics", _) => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "/metrics takes GET or HEAD\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "this listener serves /metrics only\n".to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// Serve `/metrics` on `tcp` until the task is dropped.
pub async fn serve(tcp: TcpListener, agent: Arc<Agent>) {
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
        let agent = agent.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let agent = agent.clone();
                async move { Ok::<_, Infallible>(answer(&agent, &req)) }
            });
            let r = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(conn), svc)
                .await;
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "a metrics connection ended with an error");
            }
        });
    }
}
