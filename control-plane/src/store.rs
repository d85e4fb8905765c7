//! Durable state: the [`Storage`] trait and its embedded sled implementation.
//!
//! The trait owns more than key-value access: it allocates sequence numbers, keeps the
//! change log that Sync streams replay, the revocation log and the audit event log. That
//! is what a PostgreSQL backend for several replicas would have to provide too; nothing
//! outside this module assumes it is the only writer, only that the store orders writes.
//!
//! [`SledStore`] funnels every write through **one writer thread**. The thread drains
//! whatever requests are queued, applies them in order, flushes sled once for the whole
//! batch (group commit), and only then answers each caller and publishes the batch's
//! changes and events. So nothing is acknowledged before it is durable, and many
//! concurrent issuances share one fsync.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::model::{
    Approval, Change, Credential, Event, Host, JoinTokenRecord, Lease, LeaseState, PolicyRecord,
    Revocation, RevocationTarget, Workload,
};

/// How many change-log entries are kept for agents to resume from; an agent further
/// behind gets a snapshot.
const LOG_RETAIN: u64 = 100_000;
/// Largest number of queued writes applied under one flush.
const MAX_BATCH: usize = 1024;

/// Storage failures and refused writes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// sled failed (disk full, corruption, permissions). After an I/O error sled fails
    /// every later write until the database is reopened.
    #[error(
        "storage error: {0}; check the data directory's disk space and permissions, then \
         restart the control plane if writes keep failing"
    )]
    Sled(#[from] sled::Error),
    /// A stored record could not be decoded.
    #[error("corrupt record in {tree}: {message}")]
    Corrupt {
        /// Tree name.
        tree: &'static str,
        /// Decoder message.
        message: String,
    },
    /// The writer thread is gone (shutting down).
    #[error("the store is shutting down")]
    Closed,
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The named thing exists already.
    #[error("{0}")]
    Conflict(String),
    /// The write was refused (e.g. a used join token, a disabled workload).
    #[error("{0}")]
    Refused(String),
    /// The batch holding the write could not be flushed (a full disk, an I/O error), so
    /// the write was not acknowledged. Its outcome is unknown to the caller: it was
    /// applied in memory and is persisted by the next successful flush, or lost by a
    /// crash before one. A failure of the store, never a refusal of the caller.
    #[error(
        "the write could not be made durable: {0}; it was not acknowledged and may or may \
         not be recorded: free space in the data directory (or restart the control plane \
         if the store stays failed) and retry"
    )]
    NotDurable(String),
}

/// Result alias.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Outcome of consuming a join token to enroll a host.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// The host record written.
    pub host: Host,
}

/// The storage boundary. See the module doc.
#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// The last committed sequence number.
    fn current_seq(&self) -> u64;
    /// Whether a flush has failed in a way the store cannot recover from while it stays
    /// open (sled keeps an I/O error until it is reopened): writes are refused until the
    /// process reopens it.
    fn failed(&self) -> bool {
        false
    }
    /// Subscribe to committed changes (in sequence order).
    /// Each change is shared by every subscriber (one Sync stream per agent).
    fn subscribe_changes(&self) -> broadcast::Receiver<Arc<Change>>;
    /// Subscribe to committed audit events.
    fn subscribe_events(&self) -> broadcast::Receiver<Event>;
    /// Changes after `seq`, or `None` when the log no longer reaches back that far.
    fn changes_since(&self, seq: u64) -> Result<Option<Vec<Change>>>;

    /// A workload.
    fn workload(&self, name: &str) -> Result<Option<Workload>>;
    /// All workloads, by name.
    fn workloads(&self) -> Result<Vec<Workload>>;
    /// A credential.
    fn credential(&self, name: &str) -> Result<Option<Credential>>;
    /// All credentials, by name.
    fn credentials(&self) -> Result<Vec<Credential>>;
    /// A host.
    fn host(&self, name: &str) -> Result<Option<Host>>;
    /// The host that holds the certificate with this serial (hex).
    fn host_by_serial(&self, serial: &str) -> Result<Option<Host>>;
    /// All hosts.
    fn hosts(&self) -> Result<Vec<Host>>;
    /// A join token.
    fn join_token(&self, id: &str) -> Result<Option<JoinTokenRecord>>;
    /// All join tokens.
    fn join_tokens(&self) -> Result<Vec<JoinTokenRecord>>;
    /// A lease.
    fn lease(&self, id: &str) -> Result<Option<Lease>>;
    /// Leases, optionally of one workload and/or only active ones.
    fn leases(&self, workload: Option<&str>, active_only: bool) -> Result<Vec<Lease>>;
    /// Ids of active leases that expire at or before `now` (unix seconds), at most `limit`.
    fn expired_leases(&self, now: i64, limit: usize) -> Result<Vec<String>>;
    /// Revocations with `seq` above the given one.
    fn revocations_since(&self, seq: u64) -> Result<Vec<Revocation>>;
    /// Audit events from `since_ms`, at most `limit` of the newest.
    fn events(&self, since_ms: i64, limit: usize) -> Result<Vec<Event>>;
    /// Events that mention a lease, in order.
    fn lease_events(&self, lease: &str) -> Result<Vec<Event>>;
    /// Events that mention a task, in order.
    fn task_events(&self, task: &str) -> Result<Vec<Event>>;
    /// Events that mention an approval, in order.
    fn approval_events(&self, approval: &str) -> Result<Vec<Event>>;
    /// An approval.
    fn approval(&self, id: &str) -> Result<Option<Approval>>;
    /// All approvals.
    fn approvals(&self) -> Result<Vec<Approval>>;
    /// Record an approval (new or decided).
    async fn put_approval(&self, a: Approval, event: Event) -> Result<()>;
    /// Atomically use an approved approval once for an issuance, then write the lease.
    /// Refused if the approval is no longer usable.
    async fn issue_with_approval(
        &self,
        approval: &str,
        now: i64,
        lease: Lease,
        event: Event,
    ) -> Result<u64>;
    /// An opaque blob (encrypted keys).
    fn blob(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// Applied policy version `version`.
    fn policy_version(&self, version: u64) -> Result<Option<PolicyRecord>>;
    /// Every applied policy version, oldest first.
    fn policy_versions(&self) -> Result<Vec<PolicyRecord>>;
    /// The policy version in force (none before the first `policy apply`).
    fn current_policy(&self) -> Result<Option<PolicyRecord>>;
    /// Record a policy version and make it the one in force, in one durable write.
    async fn put_policy_version(&self, rec: PolicyRecord) -> Result<()>;

    /// Store an opaque blob durably.
    async fn put_blob(&self, name: &str, value: Vec<u8>) -> Result<()>;
    /// Add or replace a workload; returns its change sequence number.
    async fn put_workload(&self, w: Workload, event: Event) -> Result<u64>;
    /// Remove a workload.
    async fn remove_workload(&self, name: &str, event: Event) -> Result<u64>;
    /// Add or replace a credential.
    async fn put_credential(&self, c: Credential, event: Event) -> Result<()>;
    /// Record a new join token.
    async fn put_join_token(&self, t: JoinTokenRecord, event: Event) -> Result<()>;
    /// Revoke a join token.
    async fn revoke_join_token(&self, id: &str, event: Event) -> Result<()>;
    /// Atomically consume a join token (checking hash, expiry, reuse) and write the host.
    async fn enroll(
        &self,
        token_id: &str,
        secret_sha256: &str,
        host: Host,
        now: i64,
        event: Event,
    ) -> Result<Enrollment>;
    /// Point a host at a renewed certificate.
    async fn renew_host(&self, name: &str, serial: &str, not_after: i64) -> Result<()>;
    /// Write a lease, refusing it if the workload was disabled or removed meanwhile.
    /// Returns the sequence number the lease was issued at.
    async fn issue_lease(&self, lease: Lease, event: Event) -> Result<u64>;
    /// Record a revocation durably; moves the leases it covers to `revoked`.
    async fn revoke(
        &self,
        target: RevocationTarget,
        reason: String,
        actor: String,
        extra: Vec<Event>,
    ) -> Result<Revocation>;
    /// Move active leases to a terminal state (expired / completed) with an event each.
    async fn finish_leases(
        &self,
        ids: Vec<String>,
        state: LeaseState,
        reason: String,
    ) -> Result<Vec<Lease>>;
    /// Enable or disable a workload; disabling also revokes its leases.
    async fn set_workload_disabled(
        &self,
        name: &str,
        disabled: bool,
        actor: String,
        reason: String,
    ) -> Result<(Workload, Option<Revocation>)>;
    /// Offboard an owner: disable every workload they own, remember them as offboarded,
    /// and revoke their leases, in one durable write. Returns the revocation and the
    /// workloads that need a new owner.
    async fn offboard_owner(&self, owner: &str, actor: String)
        -> Result<(Revocation, Vec<String>)>;
    /// Owners offboarded so far, with when (unix seconds).
    fn offboarded_owners(&self) -> Result<Vec<(String, i64)>>;
    /// Evict a host: refuse it from now on and revoke what it holds.
    async fn evict_host(&self, name: &str, actor: String, reason: String) -> Result<Revocation>;
    /// Record host liveness (not flushed individually).
    async fn touch_host(&self, name: &str, at: i64) -> Result<()>;
    /// Append audit events.
    async fn append_events(&self, events: Vec<Event>) -> Result<()>;
}

struct Trees {
    meta: sled::Tree,
    blobs: sled::Tree,
    workloads: sled::Tree,
    credentials: sled::Tree,
    hosts: sled::Tree,
    serials: sled::Tree,
    join_tokens: sled::Tree,
    leases: sled::Tree,
    active: sled::Tree,
    /// Active leases by expiry: (expires_at BE, lease id) -> ().
    expiry: sled::Tree,
    log: sled::Tree,
    revocations: sled::Tree,
    events: sled::Tree,
    lease_events: sled::Tree,
    task_events: sled::Tree,
    approval_events: sled::Tree,
    approvals: sled::Tree,
}

/// The state one batch of writes works on.
struct Tx<'a> {
    t: &'a Trees,
    seq: u64,
    event_id: u64,
    changes: Vec<Change>,
    events: Vec<Event>,
    /// Set by the shutdown job: finish this batch, then exit.
    stop: bool,
}

type Reply = Box<dyn FnOnce(Option<&StoreError>) + Send>;
type Job = Box<dyn FnOnce(&mut Tx<'_>) -> Reply + Send>;

/// The embedded default: sled with a single writer thread.
pub struct SledStore {
    db: sled::Db,
    t: Arc<Trees>,
    jobs: mpsc::Sender<Job>,
    seq: Arc<AtomicU64>,
    changes: broadcast::Sender<Arc<Change>>,
    events: broadcast::Sender<Event>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set by the writer when a flush fails; see [`Storage::failed`].
    failed: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for SledStore {
    /// Stop the writer after what is queued, and wait for it, so the database is
    /// flushed and unlocked when the store is gone (a reopen in the same process works).
    fn drop(&mut self) {
        let stop: Job = Box::new(|tx| {
            tx.stop = true;
            Box::new(|_| {})
        });
        if self.jobs.try_send(stop).is_ok() {
            if let Some(h) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = h.join();
            }
        }
    }
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("seq", &self.current_seq())
            .finish()
    }
}

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // Most records (a lease with its context, an event) are a few hundred bytes: start
    // there rather than grow from serde_json's 128.
    let mut out = Vec::with_capacity(512);
    // Serialising our own plain records cannot fail (no maps with non-string keys).
    match serde_json::to_writer(&mut out, v) {
        Ok(()) => out,
        Err(_) => Vec::new(),
    }
}

fn dec<T: DeserializeOwned>(tree: &'static str, b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt {
        tree,
        message: e.to_string(),
    })
}

fn get<T: DeserializeOwned>(t: &sled::Tree, name: &'static str, key: &[u8]) -> Result<Option<T>> {
    match t.get(key)? {
        Some(v) => Ok(Some(dec(name, &v)?)),
        None => Ok(None),
    }
}

fn all<T: DeserializeOwned>(t: &sled::Tree, name: &'static str) -> Result<Vec<T>> {
    t.iter().values().map(|v| dec(name, &v?)).collect()
}

/// Policy versions live in the blob tree under these keys (where they always have, so
/// older databases read unchanged): the record as JSON per version, and the current
/// version number big-endian.
const POLICY_CURRENT_KEY: &str = "policy/current";
const POLICY_VERSION_PREFIX: &str = "policy/v/";

fn policy_key(version: u64) -> String {
    format!("{POLICY_VERSION_PREFIX}{version}")
}

fn meta_u64(t: &sled::Tree, key: &str) -> Result<u64> {
    Ok(t.get(key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

impl Tx<'_> {
    /// Allocate the next sequence number.
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn event(&mut self, mut e: Event) -> Result<()> {
        self.event_id += 1;
        e.id = self.event_id;
        self.t.events.insert(be(e.id), enc(&e))?;
        for (tree, key) in [
            (&self.t.lease_events, &e.lease),
            (&self.t.task_events, &e.task),
            (&self.t.approval_events, &e.approval),
        ] {
            if let Some(key) = key {
                let mut k = key.as_bytes().to_vec();
                k.push(0);
                k.extend_from_slice(&be(e.id));
                tree.insert(k, &[])?;
            }
        }
        self.events.push(e);
        Ok(())
    }

    fn change(&mut self, c: Change) -> Result<()> {
        self.t.log.insert(be(c.seq()), enc(&c))?;
        if c.seq() > LOG_RETAIN {
            // Compaction: agents older than this get a snapshot.
            self.t.log.remove(be(c.seq() - LOG_RETAIN))?;
        }
        self.changes.push(c);
        Ok(())
    }

    fn put_lease(&mut self, l: &Lease) -> Result<()> {
        self.t.leases.insert(l.id.as_bytes(), enc(l))?;
        let mut ek = be(l.expires_at.max(0) as u64).to_vec();
        ek.extend_from_slice(l.id.as_bytes());
        if l.state == LeaseState::Active {
            self.t.active.insert(l.id.as_bytes(), &[])?;
            self.t.expiry.insert(ek, &[])?;
        } else {
            self.t.active.remove(l.id.as_bytes())?;
            self.t.expiry.remove(ek)?;
        }
        Ok(())
    }

    fn revoke(
        &mut self,
        target: RevocationTarget,
        reason: String,
        actor: String,
        extra_hosts: &[String],
    ) -> Result<Revocation> {
        let seq = self.next_seq();
        let mut owners: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut lease_ids = Vec::new();
        let mut lease_host_names = Vec::new();
        let mut hosts: BTreeSet<String> = extra_hosts.iter().cloned().collect();
        let ids: Vec<sled::IVec> = self.t.active.iter().keys().collect::<Result<_, _>>()?;
        for id in ids {
            let Some(mut lease) = get::<Lease>(&self.t.leases, "leases", &id)? else {
                continue;
            };
            let owner = match owners.get(&lease.workload) {
                Some(o) => o.clone(),
                None => {
                    let o =
                        get::<Workload>(&self.t.workloads, "workloads", lease.workload.as_bytes())?
                            .map(|w| w.owner);
                    owners.insert(lease.workload.clone(), o.clone());
                    o
                }
            };
            if !target.covers(&lease, owner.as_deref()) {
                continue;
            }
            lease.state = LeaseState::Revoked;
            lease.reason = Some(reason.clone());
            self.put_lease(&lease)?;
            hosts.insert(lease.host.clone());
            self.event(
                Event::new("revoked")
                    .actor(actor.clone())
                    .lease(lease.id.clone())
                    .workload(lease.workload.clone())
                    .credential(lease.credential.clone())
                    .host(lease.host.clone())
                    .reason(reason.clone())
                    .detail(serde_json::json!({ "seq": seq })),
            )?;
            lease_ids.push(lease.id);
            lease_host_names.push(lease.host);
        }
        if let RevocationTarget::Host(h) = &target {
            hosts.insert(h.clone());
        }
        let hosts: Vec<String> = hosts.into_iter().collect();
        // Group the leases by host (see `Revocation::lease_hosts`).
        let mut pairs: Vec<(u32, String)> = lease_host_names
            .iter()
            .map(|h| hosts.binary_search(h).unwrap_or_default() as u32)
            .zip(lease_ids)
            .collect();
        pairs.sort_unstable();
        let (lease_hosts, lease_ids): (Vec<u32>, Vec<String>) = pairs.into_iter().unzip();
        let rev = Revocation {
            seq,
            target,
            reason,
            actor,
            at_ms: crate::clock::now_ms(),
            lease_ids,
            hosts,
            lease_hosts,
        };
        self.t.revocations.insert(be(seq), enc(&rev))?;
        self.change(Change::Revoked {
            revocation: rev.clone(),
        })?;
        Ok(rev)
    }
}

/// How the writer makes a batch durable. Production flushes sled; unit tests substitute a
/// flush that fails, to check what callers see then. A type parameter of the writer, so
/// the release path is a direct call.
trait Flush: Send + 'static {
    fn flush(&mut self, db: &sled::Db) -> sled::Result<()>;
}

/// sled's own flush (fsync of everything written so far).
struct SledFlush;

impl Flush for SledFlush {
    fn flush(&mut self, db: &sled::Db) -> sled::Result<()> {
        db.flush().map(drop)
    }
}

/// sled's page cache. Its default (1 GiB) keeps nearly the whole database in memory, and
/// the database only grows (leases and events are kept), so the control plane's RSS grew
/// with every lease and event ever written (+76 % over a 30-minute soak). Bounded, RSS
/// levels off once the cache has filled. What an Issue reads is small and hot (workloads,
/// credentials, hosts, the newest leases); older pages are read back on the rare call
/// that needs them.
const CACHE_BYTES: u64 = 16 << 20;

impl SledStore {
    /// Open (or create) the store under `dir` and start its writer thread.
    pub fn open(dir: &Path) -> Result<Arc<SledStore>> {
        Self::open_with(dir, SledFlush)
    }

    /// [`SledStore::open`] with a chosen flush (tests inject failures through it).
    fn open_with(dir: &Path, flush: impl Flush) -> Result<Arc<SledStore>> {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(CACHE_BYTES)
            .mode(sled::Mode::HighThroughput)
            // We flush explicitly per batch; sled's own periodic flush would only add I/O.
            .flush_every_ms(None)
            .open()?;
        let t = Arc::new(Trees {
            meta: db.open_tree("meta")?,
            blobs: db.open_tree("blobs")?,
            workloads: db.open_tree("workloads")?,
            credentials: db.open_tree("credentials")?,
            hosts: db.open_tree("hosts")?,
            serials: db.open_tree("serials")?,
            join_tokens: db.open_tree("join_tokens")?,
            leases: db.open_tree("leases")?,
            active: db.open_tree("active_leases")?,
            expiry: db.open_tree("lease_expiry")?,
            log: db.open_tree("log")?,
            revocations: db.open_tree("revocations")?,
            events: db.open_tree("events")?,
            lease_events: db.open_tree("lease_events")?,
            task_events: db.open_tree("task_events")?,
            approval_events: db.open_tree("approval_events")?,
            approvals: db.open_tree("approvals")?,
        });
        // Databases from before the expiry index: build it once.
        if t.expiry.is_empty() && !t.active.is_empty() {
            for id in t.active.iter().keys() {
                let id = id?;
                if let Some(l) = get::<Lease>(&t.leases, "leases", &id)? {
                    let mut ek = be(l.expires_at.max(0) as u64).to_vec();
                    ek.extend_from_slice(&id);
                    t.expiry.insert(ek, &[])?;
                }
            }
            db.flush()?;
        }
        let seq = Arc::new(AtomicU64::new(meta_u64(&t.meta, "seq")?));
        let event_id = meta_u64(&t.meta, "event_id")?;
        let (changes, _) = broadcast::channel(4096);
        let (events, _) = broadcast::channel(4096);
        let (jobs, rx) = mpsc::channel::<Job>(8192);
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer_handle = {
            let db = db.clone();
            let t = t.clone();
            let seq = seq.clone();
            let changes = changes.clone();
            let events = events.clone();
            let failed = failed.clone();
            std::thread::Builder::new()
                .name("leash-store-writer".into())
                .spawn(move || writer(db, t, rx, seq, event_id, changes, events, flush, &failed))
                .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?
        };
        Ok(Arc::new(SledStore {
            db,
            t,
            jobs,
            seq,
            changes,
            events,
            writer: std::sync::Mutex::new(Some(writer_handle)),
            failed,
        }))
    }

    /// Run `f` on the writer thread; resolves once its batch is durable.
    async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |t| {
            let r = f(t);
            Box::new(move |flush_err: Option<&StoreError>| {
                let r = match (r, flush_err) {
                    (Ok(_), Some(e)) => Err(StoreError::NotDurable(e.to_string())),
                    (r, _) => r,
                };
                let _ = tx.send(r);
            })
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn indexed_events(&self, index: &sled::Tree, key: &str) -> Result<Vec<Event>> {
        let mut prefix = key.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for k in index.scan_prefix(&prefix).keys() {
            let k = k?;
            if let Some(v) = self.t.events.get(&k[prefix.len()..])? {
                out.push(dec("events", &v)?);
            }
        }
        Ok(out)
    }

    /// Size of the database on disk, in bytes.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// The checks and writes of one issuance, to run on the writer: the workload must
/// still be enabled and the host not evicted at the moment the lease is written.
fn issue_job(
    mut lease: Lease,
    event: Event,
) -> impl FnOnce(&mut Tx<'_>) -> Result<u64> + Send + 'static {
    move |tx| {
        match get::<Workload>(&tx.t.workloads, "workloads", lease.workload.as_bytes())? {
            Some(w) if !w.disabled => {}
            Some(_) => {
                return Err(StoreError::Refused(format!(
                    "workload {:?} is disabled",
                    lease.workload
                )))
            }
            None => {
                return Err(StoreError::NotFound(format!(
                    "no workload named {:?}",
                    lease.workload
                )))
            }
        }
        match get::<Host>(&tx.t.hosts, "hosts", lease.host.as_bytes())? {
            Some(h) if !h.evicted => {}
            _ => {
                return Err(StoreError::Refused(format!(
                    "host {:?} was evicted",
                    lease.host
                )))
            }
        }
        let seq = tx.next_seq();
        lease.seq = seq;
        tx.put_lease(&lease)?;
        tx.event(event)?;
        Ok(seq)
    }
}

/// The writer loop: batch, apply, flush once, then answer and publish.
///
/// When a flush fails, every caller of the batch gets [`StoreError::NotDurable`] and
/// nothing is published. sled cannot roll the batch back, so its writes stay applied in
/// memory: the sequence and event counters move past them (reusing their numbers would
/// overwrite them), and their changes and events wait, to be published in order after
/// the next flush that succeeds (which persists them too). Live Sync streams therefore
/// never see a gap, and never see anything that is not durable.
#[allow(clippy::too_many_arguments)]
fn writer(
    db: sled::Db,
    t: Arc<Trees>,
    mut rx: mpsc::Receiver<Job>,
    seq: Arc<AtomicU64>,
    mut event_id: u64,
    changes: broadcast::Sender<Arc<Change>>,
    events: broadcast::Sender<Event>,
    mut flush: impl Flush,
    failed: &std::sync::atomic::AtomicBool,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // The writer's own counter: ahead of the published `seq` while flushes fail.
    let mut next_seq = seq.load(Ordering::Acquire);
    let mut unpublished_changes: Vec<Change> = Vec::new();
    let mut unpublished_events: Vec<Event> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut tx = Tx {
            t: &t,
            seq: next_seq,
            event_id,
            changes: Vec::new(),
            events: Vec::new(),
            stop: false,
        };
        let replies: Vec<Reply> = batch.drain(..).map(|job| job(&mut tx)).collect();
        let Tx {
            seq: new_seq,
            event_id: new_event_id,
            changes: new_changes,
            events: new_events,
            stop,
            ..
        } = tx;
        next_seq = new_seq;
        event_id = new_event_id;
        unpublished_changes.extend(new_changes);
        unpublished_events.extend(new_events);
        let flushed = (|| -> Result<()> {
            t.meta.insert("seq", &be(new_seq))?;
            t.meta.insert("event_id", &be(new_event_id))?;
            flush.flush(&db)?;
            Ok(())
        })();
        if let Err(e) = &flushed {
            failed.store(true, Ordering::Release);
            tracing::error!(
                error = %e,
                unacknowledged = replies.len(),
                "STORE FLUSH FAILED: writes are answered UNAVAILABLE and not acknowledged; \
                 free space in the data directory: the control plane then stops (exit 75) to be \
                 started again by its supervisor (sled keeps an I/O error until it is reopened)"
            );
        }
        let err = flushed.err();
        if err.is_none() {
            // Before answering: a caller reads `current_seq` as soon as it is answered.
            seq.store(new_seq, Ordering::Release);
        }
        for r in replies {
            r(err.as_ref());
        }
        if err.is_none() {
            for c in unpublished_changes.drain(..) {
                let _ = changes.send(Arc::new(c));
            }
            for e in unpublished_events.drain(..) {
                let _ = events.send(e);
            }
        }
        if stop {
            return;
        }
    }
}

#[async_trait]
impl Storage for SledStore {
    fn current_seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn subscribe_changes(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn changes_since(&self, seq: u64) -> Result<Option<Vec<Change>>> {
        let current = self.current_seq();
        if seq >= current {
            return Ok(Some(Vec::new()));
        }
        // The log must still hold every change after `seq`: check its first retained key.
        if let Some((k, _)) = self.t.log.first()? {
            let first = u64::from_be_bytes(<[u8; 8]>::try_from(k.as_ref()).unwrap_or([0; 8]));
            if first > seq + 1 && seq + LOG_RETAIN < current {
                return Ok(None);
            }
        }
        let mut out = Vec::new();
        for kv in self.t.log.range(be(seq + 1)..=be(current)) {
            let (_, v) = kv?;
            out.push(dec("log", &v)?);
        }
        Ok(Some(out))
    }

    fn workload(&self, name: &str) -> Result<Option<Workload>> {
        get(&self.t.workloads, "workloads", name.as_bytes())
    }
    fn workloads(&self) -> Result<Vec<Workload>> {
        all(&self.t.workloads, "workloads")
    }
    fn credential(&self, name: &str) -> Result<Option<Credential>> {
        get(&self.t.credentials, "credentials", name.as_bytes())
    }
    fn credentials(&self) -> Result<Vec<Credential>> {
        all(&self.t.credentials, "credentials")
    }
    fn host(&self, name: &str) -> Result<Option<Host>> {
        get(&self.t.hosts, "hosts", name.as_bytes())
    }
    fn host_by_serial(&self, serial: &str) -> Result<Option<Host>> {
        match self.t.serials.get(serial.as_bytes())? {
            Some(name) => get(&self.t.hosts, "hosts", &name),
            None => Ok(None),
        }
    }
    fn hosts(&self) -> Result<Vec<Host>> {
        all(&self.t.hosts, "hosts")
    }
    fn join_token(&self, id: &str) -> Result<Option<JoinTokenRecord>> {
        get(&self.t.join_tokens, "join_tokens", id.as_bytes())
    }
    fn join_tokens(&self) -> Result<Vec<JoinTokenRecord>> {
        all(&self.t.join_tokens, "join_tokens")
    }
    fn lease(&self, id: &str) -> Result<Option<Lease>> {
        get(&self.t.leases, "leases", id.as_bytes())
    }
    fn leases(&self, workload: Option<&str>, active_only: bool) -> Result<Vec<Lease>> {
        let mut out: Vec<Lease> = if active_only {
            let mut v = Vec::new();
            for k in self.t.active.iter().keys() {
                if let Some(l) = get(&self.t.leases, "leases", &k?)? {
                    v.push(l);
                }
            }
            v
        } else {
            all(&self.t.leases, "leases")?
        };
        if let Some(w) = workload {
            out.retain(|l: &Lease| l.workload == w);
        }
        out.sort_by_key(|l| l.seq);
        Ok(out)
    }
    fn expired_leases(&self, now: i64, limit: usize) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for k in self
            .t
            .expiry
            .range(..be(now.max(0) as u64 + 1))
            .keys()
            .take(limit)
        {
            let k = k?;
            out.push(String::from_utf8_lossy(&k[8..]).into_owned());
        }
        Ok(out)
    }

    fn revocations_since(&self, seq: u64) -> Result<Vec<Revocation>> {
        self.t
            .revocations
            .range(be(seq.saturating_add(1))..)
            .values()
            .map(|v| dec("revocations", &v?))
            .collect()
    }
    fn events(&self, since_ms: i64, limit: usize) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        for v in self.t.events.iter().values().rev() {
            let e: Event = dec("events", &v?)?;
            if e.at_ms < since_ms || out.len() >= limit {
                break;
            }
            out.push(e);
        }
        out.reverse();
        Ok(out)
    }
    fn lease_events(&self, lease: &str) -> Result<Vec<Event>> {
        self.indexed_events(&self.t.lease_events, lease)
    }
    fn task_events(&self, task: &str) -> Result<Vec<Event>> {
        self.indexed_events(&self.t.task_events, task)
    }
    fn approval_events(&self, approval: &str) -> Result<Vec<Event>> {
        self.indexed_events(&self.t.approval_events, approval)
    }
    fn approval(&self, id: &str) -> Result<Option<Approval>> {
        get(&self.t.approvals, "approvals", id.as_bytes())
    }
    fn approvals(&self) -> Result<Vec<Approval>> {
        all(&self.t.approvals, "approvals")
    }
    fn blob(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.t.blobs.get(name)?.map(|v| v.to_vec()))
    }

    async fn put_blob(&self, name: &str, value: Vec<u8>) -> Result<()> {
        let name = name.to_string();
        self.write(move |tx| {
            tx.t.blobs.insert(name.as_bytes(), value)?;
            Ok(())
        })
        .await
    }

    fn policy_version(&self, version: u64) -> Result<Option<PolicyRecord>> {
        get(&self.t.blobs, "blobs", policy_key(version).as_bytes())
    }
    fn policy_versions(&self) -> Result<Vec<PolicyRecord>> {
        let mut out: Vec<PolicyRecord> = self
            .t
            .blobs
            .scan_prefix(POLICY_VERSION_PREFIX)
            .values()
            .map(|v| dec("blobs", &v?))
            .collect::<Result<_>>()?;
        // Keys sort as text ("policy/v/10" before "policy/v/2").
        out.sort_by_key(|r| r.version);
        Ok(out)
    }
    fn current_policy(&self) -> Result<Option<PolicyRecord>> {
        let Some(v) = self.t.blobs.get(POLICY_CURRENT_KEY)? else {
            return Ok(None);
        };
        let version = <[u8; 8]>::try_from(v.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt {
                tree: "blobs",
                message: format!("{POLICY_CURRENT_KEY} is {} bytes, not 8", v.len()),
            })?;
        self.policy_version(version)
    }

    async fn put_policy_version(&self, rec: PolicyRecord) -> Result<()> {
        self.write(move |tx| {
            tx.t.blobs
                .insert(policy_key(rec.version).as_bytes(), enc(&rec))?;
            tx.t.blobs
                .insert(POLICY_CURRENT_KEY, &rec.version.to_be_bytes())?;
            Ok(())
        })
        .await
    }

    async fn put_approval(&self, a: Approval, event: Event) -> Result<()> {
        self.write(move |tx| {
            tx.t.approvals.insert(a.id.as_bytes(), enc(&a))?;
            tx.event(event)
        })
        .await
    }

    async fn issue_with_approval(
        &self,
        approval: &str,
        now: i64,
        lease: Lease,
        event: Event,
    ) -> Result<u64> {
        let approval = approval.to_string();
        let issue = issue_job(lease, event);
        self.write(move |tx| {
            let mut a: Approval = get(&tx.t.approvals, "approvals", approval.as_bytes())?
                .ok_or_else(|| StoreError::Refused(format!("approval {approval} is gone")))?;
            if a.state != "approved" || a.uses_left == 0 || a.valid_until <= now {
                return Err(StoreError::Refused(format!(
                    "approval {approval} is used up or expired"
                )));
            }
            let seq = issue(tx)?;
            a.uses_left -= 1;
            tx.t.approvals.insert(approval.as_bytes(), enc(&a))?;
            Ok(seq)
        })
        .await
    }

    async fn put_workload(&self, w: Workload, event: Event) -> Result<u64> {
        self.write(move |tx| {
            let seq = tx.next_seq();
            tx.t.workloads.insert(w.name.as_bytes(), enc(&w))?;
            tx.event(event)?;
            tx.change(Change::WorkloadPut { seq, workload: w })?;
            Ok(seq)
        })
        .await
    }

    async fn remove_workload(&self, name: &str, event: Event) -> Result<u64> {
        let name = name.to_string();
        self.write(move |tx| {
            if tx.t.workloads.get(name.as_bytes())?.is_none() {
                return Err(StoreError::NotFound(format!("no workload named {name:?}")));
            }
            // Removing a workload takes back what it holds first.
            tx.revoke(
                RevocationTarget::Workload(name.clone()),
                "workload removed".into(),
                event.actor.clone().unwrap_or_default(),
                &[],
            )?;
            let seq = tx.next_seq();
            tx.t.workloads.remove(name.as_bytes())?;
            tx.event(event)?;
            tx.change(Change::WorkloadRemoved { seq, name })?;
            Ok(seq)
        })
        .await
    }

    async fn put_credential(&self, c: Credential, event: Event) -> Result<()> {
        self.write(move |tx| {
            tx.t.credentials.insert(c.name.as_bytes(), enc(&c))?;
            tx.event(event)
        })
        .await
    }

    async fn put_join_token(&self, t: JoinTokenRecord, event: Event) -> Result<()> {
        self.write(move |tx| {
            tx.t.join_tokens.insert(t.id.as_bytes(), enc(&t))?;
            tx.event(event)
        })
        .await
    }

    async fn revoke_join_token(&self, id: &str, event: Event) -> Result<()> {
        let id = id.to_string();
        self.write(move |tx| {
            let mut t: JoinTokenRecord = get(&tx.t.join_tokens, "join_tokens", id.as_bytes())?
                .ok_or_else(|| StoreError::NotFound(format!("no join token with id {id:?}")))?;
            t.revoked = true;
            tx.t.join_tokens.insert(id.as_bytes(), enc(&t))?;
            tx.event(event)
        })
        .await
    }

    async fn enroll(
        &self,
        token_id: &str,
        secret_sha256: &str,
        host: Host,
        now: i64,
        event: Event,
    ) -> Result<Enrollment> {
        let token_id = token_id.to_string();
        let secret_sha256 = secret_sha256.to_string();
        self.write(move |tx| {
            let refuse = |m: &str| Err(StoreError::Refused(m.to_string()));
            let Some(mut t) =
                get::<JoinTokenRecord>(&tx.t.join_tokens, "join_tokens", token_id.as_bytes())?
            else {
                return refuse("unknown join token (forged, or from another control plane)");
            };
            // Both sides are hashes of a 256-bit secret, so comparing them leaks nothing
            // useful through timing.
            if t.secret_sha256 != secret_sha256 {
                return refuse("join token secret does not match (forged or mistyped token)");
            }
            match t.state(now) {
                "active" => {}
                "used" => return refuse("join token was already used; tokens are single use"),
                "revoked" => return refuse("join token was revoked"),
                _ => return refuse("join token has expired"),
            }
            if tx.t.hosts.get(host.name.as_bytes())?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "host name {:?} is taken (names are never reused); enroll with another --name",
                    host.name
                )));
            }
            t.used_by = Some(host.name.clone());
            tx.t.join_tokens.insert(token_id.as_bytes(), enc(&t))?;
            tx.t.hosts.insert(host.name.as_bytes(), enc(&host))?;
            tx.t.serials
                .insert(host.cert_serial.as_bytes(), host.name.as_bytes())?;
            tx.event(event)?;
            Ok(Enrollment { host })
        })
        .await
    }

    async fn renew_host(&self, name: &str, serial: &str, not_after: i64) -> Result<()> {
        let name = name.to_string();
        let serial = serial.to_string();
        self.write(move |tx| {
            let mut h: Host = get(&tx.t.hosts, "hosts", name.as_bytes())?
                .ok_or_else(|| StoreError::NotFound(format!("no host named {name:?}")))?;
            if h.evicted {
                return Err(StoreError::Refused(format!("host {name:?} was evicted")));
            }
            // The old serial keeps working until it expires, so an in-flight call on the
            // old certificate does not fail during the switch.
            h.cert_serial = serial.clone();
            h.cert_not_after = not_after;
            tx.t.hosts.insert(name.as_bytes(), enc(&h))?;
            tx.t.serials.insert(serial.as_bytes(), name.as_bytes())?;
            tx.event(Event::new("renewed").host(name.clone()).actor(name))
        })
        .await
    }

    async fn issue_lease(&self, lease: Lease, event: Event) -> Result<u64> {
        self.write(issue_job(lease, event)).await
    }

    async fn revoke(
        &self,
        target: RevocationTarget,
        reason: String,
        actor: String,
        extra: Vec<Event>,
    ) -> Result<Revocation> {
        self.write(move |tx| {
            let rev = tx.revoke(target, reason, actor, &[])?;
            for e in extra {
                tx.event({
                    // Add the revocation's facts to what the caller recorded.
                    let mut e = e;
                    if !e.detail.is_object() {
                        e.detail = serde_json::json!({});
                    }
                    e.detail["seq"] = rev.seq.into();
                    e.detail["leases"] = rev.lease_ids.len().into();
                    e
                })?;
            }
            Ok(rev)
        })
        .await
    }

    async fn finish_leases(
        &self,
        ids: Vec<String>,
        state: LeaseState,
        reason: String,
    ) -> Result<Vec<Lease>> {
        self.write(move |tx| {
            let mut done = Vec::new();
            for id in ids {
                let Some(mut l) = get::<Lease>(&tx.t.leases, "leases", id.as_bytes())? else {
                    continue;
                };
                if l.state != LeaseState::Active {
                    continue;
                }
                l.state = state;
                l.reason = Some(reason.clone());
                tx.put_lease(&l)?;
                let mut e = Event::new(state.as_str())
                    .lease(l.id.clone())
                    .workload(l.workload.clone())
                    .credential(l.credential.clone())
                    .host(l.host.clone())
                    .reason(reason.clone());
                e.task = l.task.clone();
                tx.event(e)?;
                done.push(l);
            }
            Ok(done)
        })
        .await
    }

    async fn set_workload_disabled(
        &self,
        name: &str,
        disabled: bool,
        actor: String,
        reason: String,
    ) -> Result<(Workload, Option<Revocation>)> {
        let name = name.to_string();
        self.write(move |tx| {
            let mut w: Workload = get(&tx.t.workloads, "workloads", name.as_bytes())?
                .ok_or_else(|| StoreError::NotFound(format!("no workload named {name:?}")))?;
            w.disabled = disabled;
            let seq = tx.next_seq();
            tx.t.workloads.insert(name.as_bytes(), enc(&w))?;
            tx.event(
                Event::new(if disabled { "disabled" } else { "enabled" })
                    .actor(actor.clone())
                    .workload(name.clone())
                    .reason(reason.clone()),
            )?;
            tx.change(Change::WorkloadPut {
                seq,
                workload: w.clone(),
            })?;
            let rev = if disabled {
                Some(tx.revoke(RevocationTarget::Workload(name.clone()), reason, actor, &[])?)
            } else {
                None
            };
            Ok((w, rev))
        })
        .await
    }

    async fn offboard_owner(
        &self,
        owner: &str,
        actor: String,
    ) -> Result<(Revocation, Vec<String>)> {
        let owner = owner.to_string();
        self.write(move |tx| {
            let mut names = Vec::new();
            for w in tx.t.workloads.iter().values() {
                let mut w: Workload = dec("workloads", &w?)?;
                if w.owner != owner {
                    continue;
                }
                names.push(w.name.clone());
                if !w.disabled {
                    w.disabled = true;
                    let seq = tx.next_seq();
                    tx.t.workloads.insert(w.name.as_bytes(), enc(&w))?;
                    tx.event(
                        Event::new("disabled")
                            .actor(actor.clone())
                            .workload(w.name.clone())
                            .reason(format!("owner {owner} offboarded")),
                    )?;
                    tx.change(Change::WorkloadPut { seq, workload: w })?;
                }
            }
            if names.is_empty() {
                return Err(StoreError::NotFound(format!(
                    "no workload is owned by {owner:?}"
                )));
            }
            let now = crate::clock::now_ms() / 1000;
            tx.t.meta
                .insert(format!("offboarded/{owner}").as_bytes(), &be(now as u64))?;
            tx.event(
                Event::new("offboarded")
                    .actor(actor.clone())
                    .detail(serde_json::json!({ "owner": owner, "workloads": names })),
            )?;
            let rev = tx.revoke(
                RevocationTarget::Owner(owner.clone()),
                format!("owner {owner} offboarded"),
                actor,
                &[],
            )?;
            Ok((rev, names))
        })
        .await
    }

    fn offboarded_owners(&self) -> Result<Vec<(String, i64)>> {
        let mut out = Vec::new();
        for kv in self.t.meta.scan_prefix(b"offboarded/") {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k["offboarded/".len()..]).into_owned();
            let at = <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(0) as i64;
            out.push((name, at));
        }
        Ok(out)
    }

    async fn evict_host(&self, name: &str, actor: String, reason: String) -> Result<Revocation> {
        let name = name.to_string();
        self.write(move |tx| {
            let mut h: Host = get(&tx.t.hosts, "hosts", name.as_bytes())?
                .ok_or_else(|| StoreError::NotFound(format!("no host named {name:?}")))?;
            h.evicted = true;
            tx.t.hosts.insert(name.as_bytes(), enc(&h))?;
            let rev = tx.revoke(
                RevocationTarget::Host(name.clone()),
                reason.clone(),
                actor.clone(),
                std::slice::from_ref(&name),
            )?;
            let seq = tx.next_seq();
            tx.event(
                Event::new("evicted")
                    .actor(actor)
                    .host(name.clone())
                    .reason(reason.clone()),
            )?;
            tx.change(Change::HostEvicted { seq, name, reason })?;
            Ok(rev)
        })
        .await
    }

    async fn touch_host(&self, name: &str, at: i64) -> Result<()> {
        let name = name.to_string();
        self.write(move |tx| {
            if let Some(mut h) = get::<Host>(&tx.t.hosts, "hosts", name.as_bytes())? {
                h.last_seen = at;
                tx.t.hosts.insert(name.as_bytes(), enc(&h))?;
            }
            Ok(())
        })
        .await
    }

    async fn append_events(&self, events: Vec<Event>) -> Result<()> {
        self.write(move |tx| {
            for e in events {
                tx.event(e)?;
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(name: &str) -> Workload {
        Workload {
            name: name.into(),
            owner: "team".into(),
            kind: "job".into(),
            selectors: vec!["unix:uid:1".into()],
            hosts: BTreeMap::new(),
            allow: vec![],
            expires_at: 0,
            disabled: false,
            created_at: 0,
        }
    }

    fn lease(id: &str, w: &str) -> Lease {
        Lease {
            id: id.into(),
            workload: w.into(),
            credential: "c".into(),
            action: "read".into(),
            audience: "a".into(),
            host: "h".into(),
            task: None,
            on_behalf_of: None,
            approval: None,
            context: None,
            policy_version: 0,
            issued_at: 0,
            expires_at: 10,
            seq: 0,
            state: LeaseState::Active,
            reason: None,
            fingerprint: "f".into(),
        }
    }

    /// An unused, unrevoked join token whose secret hashes to "x".
    fn token(id: &str) -> JoinTokenRecord {
        JoinTokenRecord {
            id: id.into(),
            secret_sha256: "x".into(),
            name: None,
            labels: BTreeMap::new(),
            created_at: 0,
            expires_at: i64::MAX,
            used_by: None,
            revoked: false,
        }
    }

    fn host() -> Host {
        Host {
            name: "h".into(),
            labels: BTreeMap::new(),
            enrolled_at: 0,
            last_seen: 0,
            evicted: false,
            cert_serial: "01".into(),
            cert_not_after: 0,
        }
    }

    #[tokio::test]
    async fn writes_are_sequenced_durable_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = SledStore::open(dir.path()).expect("open");
            let s1 = s
                .put_workload(workload("a"), Event::new("workload-added"))
                .await
                .expect("put");
            let s2 = s
                .put_workload(workload("b"), Event::new("workload-added"))
                .await
                .expect("put");
            assert!(s2 > s1);
            let changes = s.changes_since(s1).expect("log").expect("retained");
            assert_eq!(changes.len(), 1);
            assert_eq!(changes[0].seq(), s2);
        }
        // sled's own I/O threads may hold the file lock a moment after the last handle
        // is dropped (a real restart is a new process and never sees this).
        let mut reopened = SledStore::open(dir.path());
        for _ in 0..100 {
            if reopened.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            reopened = SledStore::open(dir.path());
        }
        let s = reopened.expect("reopen");
        assert_eq!(s.workloads().expect("list").len(), 2);
        assert_eq!(s.current_seq(), 2);
        assert_eq!(s.events(0, 10).expect("events").len(), 2);
    }

    #[tokio::test]
    async fn group_commit_serves_concurrent_writers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SledStore::open(dir.path()).expect("open");
        s.put_workload(workload("w"), Event::new("x"))
            .await
            .expect("put");
        let t = token("t");
        s.put_join_token(t, Event::new("x")).await.expect("token");
        s.enroll("t", "x", host(), 0, Event::new("enrolled"))
            .await
            .expect("enroll");
        let mut handles = Vec::new();
        for i in 0..200 {
            let s = s.clone();
            handles.push(tokio::spawn(async move {
                s.issue_lease(
                    lease(&format!("l{i}"), "w"),
                    Event::new("issued").lease(format!("l{i}")),
                )
                .await
            }));
        }
        let mut seqs = BTreeSet::new();
        for h in handles {
            seqs.insert(h.await.expect("join").expect("issued"));
        }
        assert_eq!(seqs.len(), 200, "every lease got its own sequence number");
        assert_eq!(s.leases(None, true).expect("leases").len(), 200);
    }

    #[tokio::test]
    async fn revocation_covers_and_disabled_workload_refuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SledStore::open(dir.path()).expect("open");
        s.put_workload(workload("w"), Event::new("x"))
            .await
            .expect("put");
        s.put_workload(workload("v"), Event::new("x"))
            .await
            .expect("put");
        let t = token("t");
        s.put_join_token(t, Event::new("x")).await.expect("token");
        assert!(
            s.enroll("t", "y", host(), 0, Event::new("e"))
                .await
                .is_err(),
            "wrong secret"
        );
        s.enroll("t", "x", host(), 0, Event::new("e"))
            .await
            .expect("enroll");
        assert!(
            s.enroll("t", "x", host(), 0, Event::new("e"))
                .await
                .is_err(),
            "reuse"
        );
        s.issue_lease(lease("l1", "w"), Event::new("issued").lease("l1"))
            .await
            .expect("l1");
        s.issue_lease(lease("l2", "v"), Event::new("issued").lease("l2"))
            .await
            .expect("l2");
        let (_, rev) = s
            .set_workload_disabled("w", true, "root".into(), "test".into())
            .await
            .expect("disable");
        let rev = rev.expect("revocation");
        assert_eq!(rev.lease_ids, vec!["l1".to_string()]);
        assert_eq!(
            s.lease("l1").expect("get").expect("some").state,
            LeaseState::Revoked
        );
        assert_eq!(
            s.lease("l2").expect("get").expect("some").state,
            LeaseState::Active
        );
        assert!(s
            .issue_lease(lease("l3", "w"), Event::new("issued"))
            .await
            .is_err());
        let timeline: Vec<String> = s
            .lease_events("l1")
            .expect("events")
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(timeline, vec!["issued", "revoked"]);

        // Each host is told only the lease ids issued to it.
        for (i, name) in ["h1", "h2"].into_iter().enumerate() {
            let t = token(&format!("t{i}"));
            s.put_join_token(t, Event::new("x")).await.expect("token");
            let h = Host {
                name: name.into(),
                cert_serial: format!("1{i}"),
                ..host()
            };
            s.enroll(&format!("t{i}"), "x", h, 0, Event::new("e"))
                .await
                .expect("enroll");
        }
        for (id, h) in [("m1", "h1"), ("m2", "h2"), ("m3", "h1")] {
            let mut l = lease(id, "v");
            l.host = h.into();
            s.issue_lease(l, Event::new("issued")).await.expect("lease");
        }
        let rev = s
            .revoke(
                RevocationTarget::Workload("v".into()),
                "test".into(),
                "root".into(),
                Vec::new(),
            )
            .await
            .expect("revoke");
        let mut all = rev.lease_ids.clone();
        all.sort();
        assert_eq!(all, ["l2", "m1", "m2", "m3"]);
        assert!(
            rev.lease_hosts.windows(2).all(|w| w[0] <= w[1]),
            "grouped by host: {:?}",
            rev.lease_hosts
        );
        let mut h1 = rev.lease_ids_for("h1");
        h1.sort();
        assert_eq!(h1, ["m1", "m3"]);
        assert_eq!(rev.lease_ids_for("h2"), ["m2"]);
        assert_eq!(rev.lease_ids_for("h"), ["l2"]);
        assert!(rev.lease_ids_for("elsewhere").is_empty());
        // A revocation recorded before per-host lists existed: every host gets every id.
        let old = Revocation {
            lease_hosts: Vec::new(),
            ..rev
        };
        assert_eq!(old.lease_ids_for("h2").len(), 4);
    }

    /// A flush that fails while `fail` is set, as a full disk makes sled's flush fail.
    struct FailingFlush(Arc<std::sync::atomic::AtomicBool>);

    impl Flush for FailingFlush {
        fn flush(&mut self, db: &sled::Db) -> sled::Result<()> {
            if self.0.load(Ordering::SeqCst) {
                return Err(sled::Error::Io(std::io::Error::from_raw_os_error(28)));
            }
            db.flush().map(drop)
        }
    }

    #[tokio::test]
    async fn a_failed_flush_is_unavailable_not_refused_and_publishes_nothing_until_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = SledStore::open_with(dir.path(), FailingFlush(fail.clone())).expect("open");
        s.put_workload(workload("w"), Event::new("x"))
            .await
            .expect("put");
        s.put_join_token(token("t"), Event::new("x"))
            .await
            .expect("token");
        s.enroll("t", "x", host(), 0, Event::new("enrolled"))
            .await
            .expect("enroll");
        s.issue_lease(lease("l1", "w"), Event::new("issued").lease("l1"))
            .await
            .expect("l1");
        let before = s.current_seq();
        let mut changes = s.subscribe_changes();

        fail.store(true, Ordering::SeqCst);
        let issued = s
            .issue_lease(lease("l2", "w"), Event::new("issued").lease("l2"))
            .await;
        assert!(
            matches!(issued, Err(StoreError::NotDurable(_))),
            "an issuance whose flush failed: {issued:?}"
        );
        let revoked = s
            .revoke(
                RevocationTarget::Lease("l1".into()),
                "test".into(),
                "root".into(),
                Vec::new(),
            )
            .await;
        let err = revoked.expect_err("a revocation whose flush failed is not acknowledged");
        assert!(matches!(err, StoreError::NotDurable(_)), "{err:?}");
        assert!(err.to_string().contains("not acknowledged"), "{err}");
        assert_eq!(s.current_seq(), before, "nothing non-durable is committed");
        assert!(
            changes.try_recv().is_err(),
            "nothing non-durable is published"
        );

        // Once flushes work again, the store continues without reusing a sequence number,
        // and what waited is published in order, before the new write.
        fail.store(false, Ordering::SeqCst);
        let l3 = s
            .issue_lease(lease("l3", "w"), Event::new("issued").lease("l3"))
            .await
            .expect("l3 after recovery");
        assert!(
            l3 > before + 2,
            "seq {l3} reuses a number of the failed batches"
        );
        assert_eq!(s.current_seq(), l3);
        // Published just after the callers are answered.
        let published = tokio::time::timeout(std::time::Duration::from_secs(5), changes.recv())
            .await
            .expect("the failed batch's revocation is published")
            .expect("published");
        assert!(
            matches!(&*published, Change::Revoked { revocation } if revocation.seq == before + 2),
            "{published:?}"
        );
        let log = s.changes_since(before).expect("log").expect("retained");
        assert_eq!(log.first().map(Change::seq), Some(before + 2));
    }

    fn policy(version: u64) -> PolicyRecord {
        PolicyRecord {
            version,
            text: format!("// version {version}"),
            applied_at: 0,
            applied_by: "root".into(),
        }
    }

    #[tokio::test]
    async fn policy_versions_are_typed_ordered_and_read_from_older_databases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SledStore::open(dir.path()).expect("open");
        assert_eq!(s.current_policy().expect("current"), None);
        // As the store wrote them before it had typed methods: two raw blobs.
        s.put_blob("policy/v/1", enc(&policy(1)))
            .await
            .expect("blob");
        s.put_blob("policy/current", 1u64.to_be_bytes().to_vec())
            .await
            .expect("blob");
        assert_eq!(s.current_policy().expect("current"), Some(policy(1)));
        for v in 2..=11 {
            s.put_policy_version(policy(v)).await.expect("put");
        }
        assert_eq!(s.current_policy().expect("current"), Some(policy(11)));
        assert_eq!(s.policy_version(2).expect("v2"), Some(policy(2)));
        assert_eq!(s.policy_version(12).expect("v12"), None);
        let versions: Vec<u64> = s
            .policy_versions()
            .expect("list")
            .iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(versions, (1..=11).collect::<Vec<_>>());
        s.put_blob("policy/current", vec![1, 2, 3])
            .await
            .expect("blob");
        assert!(matches!(
            s.current_policy(),
            Err(StoreError::Corrupt { tree: "blobs", .. })
        ));
    }
}
