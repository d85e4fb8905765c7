//! Wiring: open the store, load the keys, start the agent-facing mTLS listener (which
//! also serves the admin service to admin certificates) and the admin Unix socket, and
//! run until the shutdown future resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use leash_proto::v1::admin_server::AdminServer;
use leash_proto::v1::control_plane_server::ControlPlaneServer;
use leash_proto::MAX_MESSAGE_BYTES;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;

use crate::clock::Clock;
use crate::config::Config;
use crate::keys::{Keys, MasterKey};
use crate::policy::PolicyError;
use crate::state::Shared;
use crate::store::{SledStore, Storage, StoreError};

/// HTTP/2 keepalive on the agent-facing listener: idle Sync streams are pinged this
/// often, so a vanished peer is noticed between heartbeats.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// Make the admin socket 0660 and, where the group exists, owned by `leash-admin`.
fn secure_socket(path: &Path) {
    if let Ok(Some(g)) = nix::unistd::Group::from_name("leash-admin") {
        if let Err(e) = nix::unistd::chown(path, None, Some(g.gid)) {
            tracing::warn!(error = %e, "could not give the admin socket to group leash-admin");
        }
    }
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)) {
        tracing::warn!(error = %e, "could not set the admin socket's mode");
    }
}

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The data directory could not be prepared.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error(
        "cannot open the store: {0} (is another control plane running on this data directory?)"
    )]
    Store(#[from] StoreError),
    /// The PostgreSQL store could not be opened (unreachable, refused, a schema newer
    /// than this build knows).
    #[error("cannot open the PostgreSQL store: {0}")]
    PostgresStore(String),
    /// The PostgreSQL store's URL could not be read.
    #[error(transparent)]
    StoreUrl(#[from] crate::config::StoreUrlError),
    /// Keys could not be loaded or created.
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
    /// The audit checkpoint key could not be loaded or created.
    #[error(transparent)]
    Checkpoints(#[from] crate::checkpoints::CheckpointError),
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The admin socket's directory could not be created.
    #[error(
        "cannot create the admin socket directory {path}: {source}; pass --admin-socket \
         (or set admin_socket in the config) with a path this user may create"
    )]
    SocketDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The admin socket's directory could be changed by someone other than root and this
    /// user, who could then replace the socket with their own.
    #[error(
        "refusing to serve the admin socket {path}: {source}. Put it in a directory that \
         only root or this user can change (--admin-socket or admin_socket in the config)"
    )]
    UntrustedSocketDir {
        /// The socket path.
        path: PathBuf,
        /// What is wrong with its directory.
        source: leash_proto::socket_trust::TrustError,
    },
    /// The admin socket path is taken by something that is not a socket.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The store failed a flush (a full disk) and keeps failing until it is reopened;
    /// the disk has room again, so the control plane stopped to be restarted.
    #[error(
        "the store failed to write (see the STORE FLUSH FAILED lines above) and stays failed \
         until it is reopened; the data directory has room again, so the control plane \
         stopped to be started again (a supervisor such as systemd with Restart=on-failure \
         does that); nothing acknowledged is lost"
    )]
    StoreFailed,
    /// The policy engine could not be built, or the `--allow` links could not be.
    #[error("policy: {0}")]
    Policy(#[from] PolicyError),
    /// The stored policy version no longer validates (against this configuration's
    /// actions, say).
    #[error("policy: stored policy version {version} no longer validates: {source}")]
    StoredPolicy {
        /// The stored version.
        version: u64,
        /// Why it does not validate.
        source: PolicyError,
    },
    /// The gRPC server failed.
    #[error("server error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The HTTPS listener (`[http]`) could not start.
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
}

/// Create `dir` (0700) if missing.
fn prepare_dir(dir: &Path, mode: u32) -> Result<(), ServerError> {
    std::fs::create_dir_all(dir).map_err(|source| ServerError::DataDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
    Ok(())
}

/// Remove a stale socket file, but only if it really is a socket.
pub fn remove_stale_socket(path: &Path) -> Result<(), ServerError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            let _ = std::fs::remove_file(path);
            Ok(())
        }
        Ok(_) => Err(ServerError::NotASocket(path.to_path_buf())),
        Err(_) => Ok(()),
    }
}

/// Write fire-and-forget events in batches.
async fn event_sink(
    store: Arc<dyn Storage>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::model::Event>,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 4096).await > 0 {
        if let Err(e) = store.append_events(std::mem::take(&mut batch)).await {
            tracing::warn!(error = %e, "could not record audit events");
        }
    }
}

/// What a started server tells its caller.
#[derive(Debug, Clone)]
pub struct Bound {
    /// Actual agent-facing address (port 0 resolved).
    pub listen: SocketAddr,
    /// Admin socket path.
    pub admin_socket: PathBuf,
    /// CA pin, for join tokens.
    pub ca_pin: String,
}

/// Open everything and serve until `shutdown` resolves. `on_bound` is called once the
/// listeners are up (main logs "listening on ADDR" from it).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(&Bound),
) -> Result<(), ServerError> {
    prepare_dir(&config.data_dir, 0o700)?;
    if let Some(warning) =
        MasterKey::check_file_mode(&config.data_dir, config.accept_readable_master_key)?
    {
        tracing::warn!("{warning}");
    }
    let clock = Clock::system();
    let store = open_store(&config, &clock).await?;
    // The master key unseals the keys and brokered secrets. Checked against the data
    // before anything is opened: a key other than the one the data is sealed with stops
    // the start here, naming both key ids (and a rotation cut short is settled here).
    let master = Arc::new(MasterKey::load_checked(&config.data_dir, &*store).await?);
    tracing::info!(master_key_id = %master.id(), "master key loaded");
    let keys = Arc::new(Keys::load(&*store, &master, &config.trust_domain, clock.now()).await?);
    let tls = crate::tls::server_config(keys.clone())?;
    let http = match &config.http {
        Some(h) => Some(crate::http::Listener::bind(h, &keys).await?),
        None => None,
    };
    if config.http.is_some() || config.metrics_listen.is_some() {
        crate::metrics::enable();
    }
    let metrics_tcp = match config.metrics_listen {
        Some(addr) => Some(crate::http::metrics::bind(addr).await?),
        None => None,
    };

    let tcp = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: config.listen.to_string(),
            source,
        })?;
    let listen = tcp.local_addr().map_err(|source| ServerError::Listen {
        addr: config.listen.to_string(),
        source,
    })?;

    if let Some(parent) = config.admin_socket.parent() {
        if !parent.exists() {
            std::fs::create_dir_all(parent).map_err(|source| ServerError::SocketDir {
                path: parent.to_path_buf(),
                source,
            })?;
            let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755));
        }
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        // The CLIs refuse a socket in a directory someone else could change; refuse to
        // serve one there too, rather than have every leashctl call fail.
        leash_proto::socket_trust::check_dir(parent, nix::unistd::geteuid().as_raw()).map_err(
            |source| ServerError::UntrustedSocketDir {
                path: config.admin_socket.clone(),
                source,
            },
        )?;
    }
    remove_stale_socket(&config.admin_socket)?;
    let uds = UnixListener::bind(&config.admin_socket).map_err(|source| ServerError::Listen {
        addr: config.admin_socket.display().to_string(),
        source,
    })?;
    secure_socket(&config.admin_socket);

    let policy = crate::policy::Engine::new(&config.actions)?;
    let workloads = store.workloads()?;
    match crate::policy::stored(&*store, 0)? {
        Some(rec) => policy
            .install(rec.version, &rec.text, &workloads)
            .map_err(|source| ServerError::StoredPolicy {
                version: rec.version,
                source,
            })?,
        None => policy.relink(&workloads)?,
    }
    let (sink_tx, sink_rx) = tokio::sync::mpsc::unbounded_channel();
    if clock.is_external() {
        tracing::warn!(
            "this is a test build whose clock is moved from outside the process ({}); \
             never run it in production",
            leash_proto::clock::TEST_CLOCK_ENV
        );
    }
    let shared = Arc::new(Shared::new(
        config.clone(),
        store,
        keys,
        master,
        clock,
        policy,
        sink_tx,
    ));
    tokio::spawn(event_sink(shared.store.clone(), sink_rx));
    let bound = Bound {
        listen,
        admin_socket: config.admin_socket.clone(),
        ca_pin: shared.keys.ca_pin(),
    };

    let refused = tokio::spawn(crate::enroll::flush_every_interval(shared.clone()));
    // Replicas of a shared store follow what the others commit.
    if shared.config.store != crate::config::StoreConfig::Sled {
        tokio::spawn(crate::replicas::follow(shared.clone()));
        tokio::spawn(crate::replicas::mark_present(shared.clone()));
    }
    let key_rotation = {
        let s = shared.clone();
        tokio::spawn(crate::keys::run(
            shared.keys.clone(),
            shared.store.clone(),
            shared.master.clone(),
            shared.clock.clone(),
            crate::keys::Timing::new(config.keys_publish_ahead, config.host_cert_ttl)
                .on_shared_store(config.store != crate::config::StoreConfig::Sled),
            move || s.keys_changed(),
        ))
    };
    // The workers that act on the whole store by themselves: on one replica at a time.
    let signer =
        Arc::new(crate::checkpoints::Signer::load_or_create(&*shared.store, &shared.master).await?);
    let workers = {
        let s = shared.clone();
        let spec = match config.store.url()? {
            Some(url) => Some(Arc::new(
                crate::kinds::postgres::conn::parse(&url).map_err(|e| {
                    ServerError::PostgresStore(format!("the [store] URL is not usable: {e}"))
                })?,
            )),
            None => None,
        };
        let audit = config.audit;
        let retention = config.retention;
        tokio::spawn(crate::leader::run(shared.clone(), spec, move || {
            vec![
                tokio::spawn(crate::expiry::run(s.store.clone(), s.clock.clone())),
                tokio::spawn(crate::scheduled::run(s.store.clone(), s.clock.clone())),
                tokio::spawn(crate::issuance::ends::run(s.clone())),
                tokio::spawn(crate::reconcile::run(s.clone())),
                tokio::spawn(crate::checkpoints::run(
                    s.store.clone(),
                    signer.clone(),
                    s.clock.clone(),
                    audit,
                )),
                tokio::spawn(crate::retention::run(
                    s.store.clone(),
                    s.clock.clone(),
                    retention,
                )),
            ]
        }))
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let recovery = tokio::spawn(stop_when_the_store_can_be_reopened(
        shared.store.clone(),
        config.data_dir.clone(),
        stop_tx.clone(),
    ));
    let agent_api = ControlPlaneServer::new(crate::agent_api::AgentApi::new(shared.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let admin_api = AdminServer::new(crate::admin::AdminApi::new(shared.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let mut rx1 = stop_rx.clone();
    // One span per request (leash_proto::spans): handlers record what they learn.
    let agent_srv = tonic::transport::Server::builder()
        .trace_fn(leash_proto::spans::grpc_request)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .concurrency_limit_per_connection(256)
        .add_service(agent_api)
        // The admin service too, for admins with an admin certificate (see admin/).
        .add_service(admin_api.clone())
        .serve_with_incoming_shutdown(crate::tls::incoming(tcp, tls), async move {
            let _ = rx1.wait_for(|v| *v).await;
        });
    let mut rx2 = stop_rx.clone();
    let admin_srv = tonic::transport::Server::builder()
        .trace_fn(leash_proto::spans::grpc_request)
        .add_service(admin_api)
        .serve_with_incoming_shutdown(UnixListenerStream::new(uds), async move {
            let _ = rx2.wait_for(|v| *v).await;
        });

    on_bound(&bound);
    // After the gRPC address is logged: tests and scripts read that from the first line
    // saying "listening on".
    let http = http.map(|l| {
        tracing::info!("http listening on {}", l.local_addr());
        if !config.issuer.starts_with("https://") {
            tracing::warn!(
                issuer = %config.issuer,
                "the issuer is not an https:// URL: relying parties that federate by OIDC \
                 discovery (clouds, CI systems) need issuer = \"https://...\" naming this listener"
            );
        }
        tokio::spawn(l.serve(shared.clone()))
    });
    let metrics = metrics_tcp.map(|tcp| {
        if let Ok(addr) = tcp.local_addr() {
            tracing::info!("metrics listening on {addr}");
        }
        tokio::spawn(crate::http::metrics::serve_plain(tcp, shared.clone()))
    });
    let on_stop = shared.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
        // Refusals counted since the last interval are not lost at shutdown (the
        // process may exit before the listeners have drained).
        on_stop
            .enroll_guard
            .flush(on_stop.store.as_ref(), on_stop.clock.now_ms())
            .await;
    });
    let servers = async { tokio::join!(agent_srv, admin_srv) };
    tokio::pin!(servers);
    let mut stopping = stop_rx.clone();
    let (a, b) = tokio::select! {
        r = &mut servers => r,
        // Sync streams never end by themselves: once stopping, give requests in flight a
        // moment, then drop what is left.
        _ = async {
            let _ = stopping.wait_for(|v| *v).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        } => (Ok(()), Ok(())),
    };
    workers.abort();
    key_rotation.abort();
    refused.abort();
    recovery.abort();
    if let Some(h) = http {
        h.abort();
    }
    if let Some(m) = metrics {
        m.abort();
    }
    shared
        .enroll_guard
        .flush(shared.store.as_ref(), shared.clock.now_ms())
        .await;
    let _ = std::fs::remove_file(&config.admin_socket);
    a?;
    b?;
    if shared.store.failed() {
        return Err(ServerError::StoreFailed);
    }
    Ok(())
}

/// Free space the data directory needs before a failed store is worth reopening (or a
/// sixteenth of its file system, if that is less).
const REOPEN_FREE_BYTES: u64 = 64 << 20;

/// After a failed flush, sled refuses every write until it is reopened, even once space
/// is freed. While the disk stays full the control plane keeps running (reads, cached
/// credentials on hosts, clear UNAVAILABLE answers); once the data directory has room
/// again it stops, so that its supervisor starts it with the store reopened. Reopening
/// in process would mean swapping the store under every handler.
async fn stop_when_the_store_can_be_reopened(
    store: Arc<dyn Storage>,
    data_dir: PathBuf,
    stop: tokio::sync::watch::Sender<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut waiting = false;
    loop {
        tick.tick().await;
        if !store.failed() {
            continue;
        }
        let Ok(fs) = nix::sys::statvfs::statvfs(&data_dir) else {
            continue;
        };
        let block = fs.fragment_size();
        let free = fs.blocks_available() * block;
        // A small file system (a test's tmpfs) may never have 64 MiB free: a sixteenth of
        // it will do there.
        let needed = REOPEN_FREE_BYTES.min(fs.blocks() * block / 16);
        if !waiting {
            waiting = true;
            tracing::error!(
                free_bytes = free,
                needed_bytes = needed,
                "the store has failed; the control plane stops once the data directory has \
                 room again, to be started again with the store reopened"
            );
        }
        if free >= needed {
            tracing::error!(
                free_bytes = free,
                "the store has failed and the data directory has room again: stopping so \
                 the control plane is started again with the store reopened"
            );
            let _ = stop.send(true);
            return;
        }
    }
}

/// The store `[store]` names: sled in the data directory, or PostgreSQL (opened off the
/// runtime: it blocks until the database answered and the schema is migrated).
async fn open_store(config: &Config, clock: &Clock) -> Result<Arc<dyn Storage>, ServerError> {
    let Some(url) = config.store.url()? else {
        return Ok(SledStore::open(&config.data_dir, clock.clone())?);
    };
    let clock = clock.clone();
    let opened = tokio::task::spawn_blocking(move || SledStore::open_postgres(&url, clock))
        .await
        .map_err(|e| ServerError::PostgresStore(format!("opening stopped: {e}")))?;
    let store = opened.map_err(|e| match e {
        StoreError::Database(m) => ServerError::PostgresStore(m),
        e => ServerError::PostgresStore(e.to_string()),
    })?;
    tracing::info!(store = "postgres", "store opened");
    Ok(store)
}
