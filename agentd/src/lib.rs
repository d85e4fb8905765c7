//! The Leash agent (`leash-agentd`): attests local callers on a Unix socket and serves
//! them short-lived credentials held in memory only, wiping them on expiry, revocation
//! or eviction.
//!
//! `run` wires the parts: `identity` (enrollment, the only on-disk state), `sync` (the
//! stream from the control plane), `cache` (credentials in memory), `attest` (who is
//! calling), `procfs` (what `/proc` says about a process, for `attest` and `tasks`),
//! `tasks` (credentials bound to a unit of work), `server` (the workload socket, which
//! answers gRPC and plain HTTP/1.1 on the same path), `calls` (what both protocols
//! answer), `api` (gRPC: the one place errors become gRPC statuses), `http` (HTTP/1.1
//! with JSON, its documents in `documents`), `spiffe` (the SPIFFE Workload API on the
//! same socket). `agent` holds the shared state and
//! the one [`Clock`] every time-of-day decision reads. `sys` is the one module with
//! `unsafe`. The binaries are `main.rs` (`leash-agentd`) and `bin/leash.rs` (`leash`).

pub mod agent;
pub mod api;
pub mod attest;
pub mod cache;
pub mod calls;
pub mod documents;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod procfs;
pub mod scrape;
pub mod secret;
pub mod server;
pub mod spiffe;
pub mod sync;
pub mod sys;
pub mod tasks;
pub mod tls;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent::{Agent, AgentConfig, State};
use identity::IdentityError;
use leash_proto::clock::Clock;

/// How often waits for a time-of-day deadline re-read the clock, so a moved clock takes
/// effect promptly.
const DEADLINE_TICK: Duration = Duration::from_millis(100);

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// Enrollment was refused or the join token is unusable: exit 2, no retry.
    #[error(transparent)]
    Enrollment(IdentityError),
    /// The state directory or identity is unusable.
    #[error(transparent)]
    Identity(IdentityError),
    /// Attestation could not be set up.
    #[error("attestation: {0}")]
    Attest(#[from] attest::AttestError),
    /// The socket could not be bound.
    #[error(transparent)]
    Socket(#[from] server::SocketError),
    /// The server failed.
    #[error("server error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// `--metrics-listen` could not be bound.
    #[error(transparent)]
    Metrics(#[from] scrape::ScrapeError),
}

impl AgentError {
    /// Process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Enrollment(_) => 2,
            _ => 1,
        }
    }
}

/// How to enroll when the state directory holds no identity yet.
#[derive(Debug, Default, Clone)]
pub struct Enrollment {
    /// The join token text, if any.
    pub token: Option<String>,
    /// Requested host name (narrows the token's).
    pub name: Option<String>,
    /// Name to use when neither the token nor `name` gives one (the hostname).
    pub default_name: Option<String>,
    /// Requested labels (narrow the token's).
    pub labels: BTreeMap<String, String>,
}

async fn load_or_enroll(
    config: &AgentConfig,
    e: &Enrollment,
    clock: &Clock,
) -> Result<identity::Identity, AgentError> {
    identity::prepare_state_dir(&config.state_dir).map_err(AgentError::Identity)?;
    if let Some(id) = identity::load(&config.state_dir).map_err(AgentError::Identity)? {
        if e.token.is_some() {
            tracing::info!(host = %id.desc.host, "already enrolled; the join token was not used");
        }
        return Ok(id);
    }
    let token = e
        .token
        .as_deref()
        .ok_or(AgentError::Enrollment(IdentityError::NoToken))?;
    let mut backoff = Duration::from_millis(500);
    loop {
        match identity::enroll_with_clock(
            clock,
            &config.state_dir,
            &config.control_planes,
            token,
            e.name.clone(),
            e.default_name.clone(),
            e.labels.clone(),
        )
        .await
        {
            Ok(id) => {
                tracing::info!(host = %id.desc.host, "enrolled");
                return Ok(id);
            }
            Err(IdentityError::Unreachable(m)) => {
                tracing::warn!(error = %m, "cannot reach the control plane to enroll; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(
                err @ (IdentityError::Refused(_)
                | IdentityError::BadToken(_)
                | IdentityError::NoToken),
            ) => return Err(AgentError::Enrollment(err)),
            Err(err) => return Err(AgentError::Identity(err)),
        }
    }
}

async fn renewal(agent: Arc<Agent>) {
    loop {
        let id = agent.identity();
        // Re-read the clock on a short tick rather than sleeping until the renewal point:
        // the clock may be moved.
        while agent.clock.now() < id.renew_at() {
            tokio::time::sleep(DEADLINE_TICK).await;
        }
        match identity::renew_with_clock(
            &agent.clock,
            &agent.config.state_dir,
            &agent.config.control_planes,
            &id,
        )
        .await
        {
            Ok(new) => {
                tracing::info!(not_after = new.desc.not_after, "host certificate renewed");
                agent.set_identity(new);
            }
            Err(e) => {
                tracing::warn!(error = %e, "host certificate renewal failed; retrying");
                tokio::time::sleep(identity::RENEW_RETRY).await;
            }
        }
    }
}

/// Enroll if needed, sync, then serve the workload socket until `shutdown` resolves.
/// `on_ready` is called with the socket path once the agent has caught up and listens.
/// Time-of-day decisions use the system clock ([`Clock::system`]).
pub async fn run(
    config: AgentConfig,
    enrollment: Enrollment,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&std::path::Path),
) -> Result<(), AgentError> {
    run_with_clock(config, enrollment, Clock::system(), shutdown, on_ready).await
}

/// [`run`], deciding by `clock`.
pub async fn run_with_clock(
    config: AgentConfig,
    enrollment: Enrollment,
    clock: Clock,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&std::path::Path),
) -> Result<(), AgentError> {
    if clock.is_external() {
        tracing::warn!(
            file = ?std::env::var_os(leash_proto::clock::TEST_CLOCK_ENV),
            "this is a test build: its clock can be moved from outside the process"
        );
    }
    if let Err(e) = sys::set_not_dumpable() {
        tracing::warn!(error = %e, "could not mark the process non-dumpable");
    }
    // Refuse an unsafe socket directory now, before enrolling, rather than after the
    // first sync.
    server::prepare_dir(&config.socket)?;
    // Bound before enrolling, so a taken address stops the start at once.
    let metrics_tcp = match config.metrics_listen {
        Some(addr) => Some(scrape::bind(addr).await?),
        None => None,
    };
    let id = load_or_enroll(&config, &enrollment, &clock).await?;
    let mut cli_paths = config.cli_paths.clone();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
    {
        cli_paths.push(dir.join("leash"));
    }
    let attestor = attest::Attestor::new(attest::AttestorConfig {
        cli_paths,
        ..Default::default()
    })?;
    let agent = Arc::new(Agent::new(config.clone(), attestor, id, clock));
    let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(false);
    let sync_task = tokio::spawn(sync::run(agent.clone(), ready_tx));
    let watchdog = tokio::spawn(sync::watchdog(agent.clone()));
    let renew = tokio::spawn(renewal(agent.clone()));
    let scraping = metrics_tcp.map(|tcp| {
        if let Ok(addr) = tcp.local_addr() {
            tracing::info!("metrics listening on {addr}");
        }
        metrics::enable();
        tokio::spawn(scrape::serve(tcp, agent.clone()))
    });

    // Serve nothing until caught up (or evicted, so `leash status` can say why).
    loop {
        if *ready_rx.borrow() || agent.health().state == State::Evicted {
            break;
        }
        tokio::select! {
            r = ready_rx.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }

    let listener = server::bind(&config.socket)?;
    on_ready(&config.socket);
    let calls = Arc::new(calls::Calls::new(agent.clone()));
    let svc = leash_proto::v1::agent_server::AgentServer::new(api::Api::new(calls.clone()))
        .max_decoding_message_size(leash_proto::MAX_WORKLOAD_REQUEST_BYTES)
        .max_encoding_message_size(leash_proto::MAX_MESSAGE_BYTES);
    // One span per request (leash_proto::spans): handlers record what they learn.
    let result = tonic::transport::Server::builder()
        .trace_fn(leash_proto::spans::grpc_request)
        .concurrency_limit_per_connection(64)
        .add_service(svc)
        .add_service(spiffe::server(calls.clone()))
        .serve_with_incoming_shutdown(
            server::incoming(listener, config.max_conns_per_uid, move |conn| {
                tokio::spawn(http::serve(calls.clone(), conn));
            }),
            shutdown,
        )
        .await;
    sync_task.abort();
    watchdog.abort();
    renew.abort();
    if let Some(s) = scraping {
        s.abort();
    }
    let wiped = agent.cache.wipe_all();
    metrics::wiped(metrics::WipeCause::Shutdown, wiped);
    tracing::info!(wiped, "stopped; in-memory credentials wiped");
    let _ = std::fs::remove_file(&config.socket);
    result?;
    Ok(())
}
