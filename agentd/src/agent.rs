//! The agent's shared state: configuration, identity, synced workloads, the cache, the
//! trust bundle, the health that `leash status` reports, and the usage counts the Sync
//! stream reports.
//!
//! Every time-of-day decision the agent makes (heartbeat age, cache expiry, identity
//! renewal) reads [`Agent::clock`], so tests can move it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use leash_proto::clock::Clock;
use leash_proto::v1;
use leash_proto::v1::control_plane_client::ControlPlaneClient;
use tonic::transport::Channel;

use crate::attest::Attestor;
use crate::cache::Cache;
use crate::identity::Identity;
use crate::tasks::{TaskHost, Tasks};

/// max_offline when the control plane sends none, in seconds.
const DEFAULT_MAX_OFFLINE_SECS: u32 = 300;

/// Resolved agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Control planes as HOST:PORT, tried in order.
    pub control_planes: Vec<String>,
    /// Where the host identity lives.
    pub state_dir: PathBuf,
    /// Workload socket path.
    pub socket: PathBuf,
    /// Local cap on max_offline (the control plane's value may only be lowered).
    pub max_offline_cap_secs: Option<u32>,
    /// Installed `leash` CLI paths, for attestation through the CLI.
    pub cli_paths: Vec<PathBuf>,
    /// Connections one uid may hold open.
    pub max_conns_per_uid: usize,
    /// Requests per second one uid may make (0 = unlimited).
    pub requests_per_uid: u32,
    /// The `jwt` credential the SPIFFE Workload API issues JWT-SVIDs from.
    pub spiffe_jwt_credential: String,
    /// The `x509` credential the SPIFFE Workload API issues X.509-SVIDs from.
    pub spiffe_x509_credential: String,
    /// Where plain-HTTP `/metrics` is served (`--metrics-listen`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Default of `--spiffe-jwt-credential`.
pub const DEFAULT_SPIFFE_JWT_CREDENTIAL: &str = "spiffe-jwt";
/// Default of `--spiffe-x509-credential`.
pub const DEFAULT_SPIFFE_X509_CREDENTIAL: &str = "spiffe-x509";

/// Lifecycle state, as `leash status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not caught up yet.
    Starting,
    /// Synced and serving.
    Ready,
    /// Lost the control plane; serving cached credentials within max_offline.
    Offline,
    /// Past max_offline: everything wiped, serving nothing until re-synced.
    FailingClosed,
    /// Evicted by an admin: everything wiped, serving nothing, ever.
    Evicted,
}

impl State {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Offline => "offline",
            State::FailingClosed => "failing-closed",
            State::Evicted => "evicted",
        }
    }
}

/// Sync health.
#[derive(Debug, Clone)]
pub struct Health {
    /// State.
    pub state: State,
    /// Currently caught up with the control plane.
    pub synced: bool,
    /// Last sequence applied.
    pub last_seq: u64,
    /// Unix ms of the last heartbeat (or catch-up).
    pub last_heartbeat_ms: i64,
    /// Effective max_offline.
    pub max_offline_secs: u32,
    /// Why it is not ready, when it is not.
    pub reason: String,
}

/// The agent.
pub struct Agent {
    /// Configuration.
    pub config: AgentConfig,
    /// Caller attestation.
    pub attestor: Attestor,
    /// Credentials.
    pub cache: Cache,
    /// Live tasks.
    pub tasks: Tasks,
    /// The one clock for time-of-day decisions.
    pub clock: Clock,
    identity: RwLock<Arc<Identity>>,
    /// Shared, so a request's matching copies pointers rather than records.
    workloads: RwLock<HashMap<String, Arc<v1::Workload>>>,
    client: RwLock<Option<ControlPlaneClient<Channel>>>,
    health: Mutex<Health>,
    usage: Mutex<HashMap<String, v1::LeaseUsage>>,
    bundle: tokio::sync::watch::Sender<Option<Arc<v1::TrustBundle>>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("config", &self.config)
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a plain field update; a panic cannot leave the data
    // half-changed, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agent {
    /// A new agent for an enrolled identity, deciding by `clock`.
    pub fn new(config: AgentConfig, attestor: Attestor, identity: Identity, clock: Clock) -> Agent {
        let cap = config
            .max_offline_cap_secs
            .unwrap_or(DEFAULT_MAX_OFFLINE_SECS);
        Agent {
            config,
            attestor,
            cache: Cache::default(),
            tasks: Tasks::default(),
            clock,
            identity: RwLock::new(Arc::new(identity)),
            workloads: RwLock::new(HashMap::new()),
            client: RwLock::new(None),
            health: Mutex::new(Health {
                state: State::Starting,
                synced: false,
                last_seq: 0,
                last_heartbeat_ms: 0,
                max_offline_secs: cap,
                reason: "connecting to the control plane".into(),
            }),
            usage: Mutex::new(HashMap::new()),
            bundle: tokio::sync::watch::channel(None).0,
        }
    }

    /// The trust bundle (JWKS and CA certificates) the control plane last sent on Sync;
    /// `None` until the first one arrives.
    pub fn bundle(&self) -> tokio::sync::watch::Receiver<Option<Arc<v1::TrustBundle>>> {
        self.bundle.subscribe()
    }

    /// Take a trust bundle from Sync. A higher generation wins; a lower one is ignored
    /// unless it is the first of a new Sync session (`fresh`: a restarted control plane
    /// may count again from the start). An unchanged bundle wakes no one.
    pub fn set_bundle(&self, b: v1::TrustBundle, fresh: bool) -> bool {
        self.bundle.send_if_modified(|cur| {
            if let Some(c) = cur {
                let same =
                    c.jwks_json == b.jwks_json && c.ca_certificates_der == b.ca_certificates_der;
                if same || (b.generation < c.generation && !fresh) {
                    return false;
                }
            }
            *cur = Some(Arc::new(b));
            true
        })
    }

    /// The current identity.
    pub fn identity(&self) -> Arc<Identity> {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Switch to a renewed identity (new connections use it).
    pub fn set_identity(&self, id: Identity) {
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(id);
    }

    /// The client for unary calls, when connected.
    pub fn client(&self) -> Option<ControlPlaneClient<Channel>> {
        self.client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Record the connection the Sync stream is using.
    pub fn set_client(&self, c: ControlPlaneClient<Channel>) {
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = Some(c);
    }

    /// A copy of the health.
    pub fn health(&self) -> Health {
        lock(&self.health).clone()
    }

    /// The current state alone (no copy of the reason).
    pub fn state(&self) -> State {
        lock(&self.health).state
    }

    /// Apply a sequence number.
    pub fn advance(&self, seq: u64) {
        let mut h = lock(&self.health);
        h.last_seq = h.last_seq.max(seq);
    }

    /// Start again from `seq`, below where this agent was: the control plane's store
    /// is older than what this agent saw (see `sync.rs`).
    pub fn restart_from(&self, seq: u64) {
        lock(&self.health).last_seq = seq;
    }

    fn effective_max_offline(&self, from_cp: u32) -> u32 {
        let from_cp = if from_cp == 0 {
            DEFAULT_MAX_OFFLINE_SECS
        } else {
            from_cp
        };
        match self.config.max_offline_cap_secs {
            Some(cap) => cap.min(from_cp),
            None => from_cp,
        }
    }

    /// Caught up: serving from now on.
    pub fn caught_up(&self, max_offline_secs: u32) {
        let mo = self.effective_max_offline(max_offline_secs);
        let mut h = lock(&self.health);
        if h.state == State::Evicted {
            return;
        }
        if h.state == State::FailingClosed {
            tracing::info!("re-synced with the control plane; serving again");
        }
        h.state = State::Ready;
        h.synced = true;
        h.last_heartbeat_ms = self.clock.now_ms();
        h.max_offline_secs = mo;
        h.reason.clear();
    }

    /// A heartbeat arrived.
    pub fn heartbeat(&self, max_offline_secs: u32) {
        let mo = self.effective_max_offline(max_offline_secs);
        let mut h = lock(&self.health);
        h.last_heartbeat_ms = self.clock.now_ms();
        h.max_offline_secs = mo;
        // Failed closed while the stream stayed open (the control plane stalled): the
        // stream is ordered and lossless, so everything sent before this heartbeat has
        // been applied, and the agent is current again.
        if h.state == State::FailingClosed {
            h.state = State::Ready;
            h.synced = true;
            h.reason.clear();
            tracing::info!("heartbeats resumed on the open stream; serving again");
        }
    }

    /// The stream dropped.
    pub fn set_disconnected(&self) {
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = None;
        let mut h = lock(&self.health);
        h.synced = false;
        if h.state == State::Ready {
            h.state = State::Offline;
            h.reason =
                "the control plane is unreachable; serving cached credentials within max_offline"
                    .into();
        }
    }

    /// Past max_offline: wipe everything and refuse until re-synced.
    pub fn fail_closed(&self) -> usize {
        {
            let mut h = lock(&self.health);
            h.state = State::FailingClosed;
            h.synced = false;
            h.reason = format!(
                "no heartbeat from the control plane for more than {}s (max_offline); everything was wiped",
                h.max_offline_secs
            );
        }
        let wiped = self.cache.wipe_all();
        crate::metrics::wiped(crate::metrics::WipeCause::MaxOffline, wiped);
        wiped
    }

    /// Evicted: wipe everything, forever.
    pub fn evicted(&self, reason: &str) {
        let wiped = self.cache.wipe_all();
        crate::metrics::wiped(crate::metrics::WipeCause::Evicted, wiped);
        {
            let mut h = lock(&self.health);
            h.state = State::Evicted;
            h.synced = false;
            h.reason = format!("this host was evicted by the control plane ({reason}); re-enroll with a new join token and a new name");
        }
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::error!(wiped, %reason, "this host was evicted: wiped everything and stopped serving");
    }

    /// Replace the workload set (snapshot). Returns how many credentials were wiped
    /// because their workload is gone.
    pub fn replace_workloads(&self, ws: Vec<v1::Workload>) -> usize {
        let map: HashMap<String, Arc<v1::Workload>> = ws
            .into_iter()
            .map(|w| (w.name.clone(), Arc::new(w)))
            .collect();
        *self.workloads.write().unwrap_or_else(|p| p.into_inner()) = map.clone();
        let wiped = self.cache.retain_workloads(|name| map.contains_key(name));
        crate::metrics::wiped(crate::metrics::WipeCause::WorkloadRemoved, wiped);
        wiped
    }

    /// Add or change a workload.
    pub fn put_workload(&self, w: v1::Workload) {
        self.workloads
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(w.name.clone(), Arc::new(w));
        // Open SPIFFE streams re-check which workloads their caller matches.
        self.cache.touch();
    }

    /// Drop a workload and its credentials.
    pub fn remove_workload(&self, name: &str) {
        self.workloads
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let wiped = self.cache.retain_workloads(|w| w != name);
        crate::metrics::wiped(crate::metrics::WipeCause::WorkloadRemoved, wiped);
    }

    /// Workloads whose selectors all match.
    pub fn matching(&self, matches: impl Fn(&[String]) -> bool) -> Vec<Arc<v1::Workload>> {
        let mut v: Vec<Arc<v1::Workload>> = self
            .workloads
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|w| matches(&w.selectors))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Number of workloads that may run here.
    pub fn workload_count(&self) -> usize {
        self.workloads
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Count one serving of a lease (batched up the Sync stream later; never waits).
    pub fn record_use(&self, lease: &str, pid: u32, exe: &str) {
        let now = self.clock.now_ms();
        let mut u = lock(&self.usage);
        if let Some(e) = u.get_mut(lease) {
            // The common case: one more use of a lease already counted this interval.
            e.count += 1;
            e.last_pid = pid;
            if e.last_exe != exe {
                e.last_exe = exe.to_string();
            }
            e.last_unix_ms = now;
            return;
        }
        let e = u
            .entry(lease.to_string())
            .or_insert_with(|| v1::LeaseUsage {
                lease_id: lease.to_string(),
                count: 0,
                first_pid: pid,
                first_exe: exe.to_string(),
                first_unix_ms: now,
                ..Default::default()
            });
        e.count += 1;
        e.last_pid = pid;
        if e.last_exe != exe {
            e.last_exe = exe.to_string();
        }
        e.last_unix_ms = now;
    }

    /// Take the usage collected so far.
    pub fn take_usage(&self) -> Vec<v1::LeaseUsage> {
        lock(&self.usage).drain().map(|(_, v)| v).collect()
    }
}

impl TaskHost for Agent {
    fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    fn cache(&self) -> &Cache {
        &self.cache
    }

    fn client(&self) -> Option<ControlPlaneClient<Channel>> {
        Agent::client(self)
    }

    fn synced(&self) -> bool {
        lock(&self.health).synced
    }
}
