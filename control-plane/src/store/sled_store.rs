//! [`SledStore`]: sled behind one writer thread that applies queued writes in batches and
//! flushes once per batch (group commit), answering callers only once it is durable.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::codec::{be, dec, ended_key, get, meta_u64};
use super::error::{Result, StoreError};
use super::flush::{Flush, SledFlush};
use super::kv::Tree;
use crate::audit_chain::Link;
use crate::clock::Clock;
use crate::model::{Change, Event, Lease, LeaseState};

/// How many change-log entries are kept for agents to resume from; an agent further
/// behind gets a snapshot.
pub(super) const LOG_RETAIN: u64 = 100_000;
/// Largest number of queued writes applied under one flush.
const MAX_BATCH: usize = 1024;

/// What `Storage::ended_changes` counts: durable writes that queued an ended lease,
/// and those that changed the queue in any way (queued one, recorded a failed attempt,
/// took one off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndQueueWrites {
    /// Writes that queued at least one lease.
    pub queued: u64,
    /// Writes that changed the queue.
    pub changed: u64,
}

pub(super) struct Trees {
    pub(super) meta: Tree,
    pub(super) blobs: Tree,
    pub(super) workloads: Tree,
    pub(super) credentials: Tree,
    pub(super) hosts: Tree,
    pub(super) serials: Tree,
    pub(super) join_tokens: Tree,
    pub(super) leases: Tree,
    pub(super) active: Tree,
    /// Active leases by expiry: (expires_at BE, lease id) -> ().
    pub(super) expiry: Tree,
    pub(super) log: Tree,
    pub(super) revocations: Tree,
    pub(super) events: Tree,
    pub(super) lease_events: Tree,
    pub(super) task_events: Tree,
    pub(super) approval_events: Tree,
    pub(super) approvals: Tree,
    /// Ended leases whose credential kind still has to undo something outside Leash:
    /// lease id -> `PendingEnd` (an empty value, from before it had one, reads as the
    /// default). See `issuance::ends`.
    pub(super) ended: Tree,
    /// Ended leases by when they stop being kept: (expires_at BE, lease id) -> ().
    /// See `retention`.
    pub(super) lease_ended: Tree,
    /// Versions of brokered secrets, sealed: (name \0 version BE) -> `SecretVersion`.
    pub(super) secret_versions: Tree,
    /// Revocations promised for later (`secret rotate --grace`):
    /// (at BE, name \0 version BE) -> `ScheduledRevocation`.
    pub(super) scheduled: Tree,
    /// Signed audit checkpoints (see `chain`).
    pub(super) checkpoints: Tree,
}

/// The name of every tree, as sled names it (and the `tree` column of PostgreSQL).
pub(super) const TREE_NAMES: [&str; 22] = [
    "meta",
    "blobs",
    "workloads",
    "credentials",
    "hosts",
    "serials",
    "join_tokens",
    "leases",
    "active_leases",
    "lease_expiry",
    "log",
    "revocations",
    "events",
    "lease_events",
    "task_events",
    "approval_events",
    "approvals",
    "ended",
    "lease_ended",
    "secret_versions",
    "scheduled",
    "audit_checkpoints",
];

impl Trees {
    /// Every tree, each made by `open` from its name (see [`TREE_NAMES`]).
    pub(super) fn build(mut open: impl FnMut(&'static str) -> Result<Tree>) -> Result<Trees> {
        let [meta, blobs, workloads, credentials, hosts, serials, join_tokens, leases, active, expiry, log, revocations, events, lease_events, task_events, approval_events, approvals, ended, lease_ended, secret_versions, scheduled, checkpoints] =
            TREE_NAMES;
        Ok(Trees {
            meta: open(meta)?,
            blobs: open(blobs)?,
            workloads: open(workloads)?,
            credentials: open(credentials)?,
            hosts: open(hosts)?,
            serials: open(serials)?,
            join_tokens: open(join_tokens)?,
            leases: open(leases)?,
            active: open(active)?,
            expiry: open(expiry)?,
            log: open(log)?,
            revocations: open(revocations)?,
            events: open(events)?,
            lease_events: open(lease_events)?,
            task_events: open(task_events)?,
            approval_events: open(approval_events)?,
            approvals: open(approvals)?,
            ended: open(ended)?,
            lease_ended: open(lease_ended)?,
            secret_versions: open(secret_versions)?,
            scheduled: open(scheduled)?,
            checkpoints: open(checkpoints)?,
        })
    }

    /// The tree named `name` (see `sealed`, which lists trees by name).
    pub(super) fn by_name(&self, name: &str) -> Option<&Tree> {
        Some(match name {
            "meta" => &self.meta,
            "blobs" => &self.blobs,
            "credentials" => &self.credentials,
            "secret_versions" => &self.secret_versions,
            "scheduled" => &self.scheduled,
            _ => return None,
        })
    }
}

/// The state one batch of writes works on.
pub(super) struct Tx<'a> {
    pub(super) t: &'a Trees,
    pub(super) seq: u64,
    pub(super) event_id: u64,
    /// The last event of the audit chain (see `chain`).
    pub(super) head: Link,
    pub(super) changes: Vec<Change>,
    pub(super) events: Vec<Event>,
    /// Set by the shutdown job: finish this batch, then exit.
    pub(super) stop: bool,
    /// Unix ms by the store's clock when the batch began: the time of its audit events,
    /// revocations and offboardings.
    pub(super) now_ms: i64,
    /// The batch queued an ended lease (see `Storage::ended_changes`).
    pub(super) ended_queued: bool,
    /// The batch changed the queue of ended leases.
    pub(super) ended_changed: bool,
    /// The admin whose call the running job serves (see `actor.rs`): their events get
    /// `actor_role` and `actor_via`.
    pub(super) caller: Option<crate::actor::Caller>,
}

pub(super) type Reply = Box<dyn FnOnce(Option<&StoreError>) + Send>;
pub(super) type Job = Box<dyn FnOnce(&mut Tx<'_>) -> Reply + Send>;

/// The embedded default: sled with a single writer thread.
pub struct SledStore {
    /// The sled database (`None` on PostgreSQL).
    pub(super) db: Option<sled::Db>,
    /// What a PostgreSQL store keeps running beside the writer (its readers and the
    /// listener), dropped with the store.
    pub(super) _engine: Option<Box<dyn std::any::Any + Send + Sync>>,
    pub(super) t: Arc<Trees>,
    pub(super) jobs: mpsc::Sender<Job>,
    pub(super) seq: Arc<AtomicU64>,
    pub(super) changes: broadcast::Sender<Arc<Change>>,
    pub(super) events: broadcast::Sender<Event>,
    pub(super) writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set by the writer when a flush fails; see [`Storage::failed`].
    pub(super) failed: Arc<std::sync::atomic::AtomicBool>,
    /// Counts the durable batches that changed the queue of ended leases, so the queue
    /// (and `revoke --wait`) wake at once rather than on a poll.
    pub(super) ended_tx: watch::Sender<EndQueueWrites>,
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
            .field("seq", &self.seq.load(Ordering::Acquire))
            .finish()
    }
}

/// sled's page cache. Its default (1 GiB) keeps nearly the whole database in memory, and
/// the database only grows (leases and events are kept), so the control plane's RSS grew
/// with every lease and event ever written (+75.7 % over a 30-minute soak, see the Soak
/// section of docs/SECURITY.md). Bounded, RSS rises while the cache fills and then
/// nearly levels off (same section). What an Issue reads is small and hot (workloads,
/// credentials, hosts, the newest leases); older pages are read back on the rare call
/// that needs them.
pub(super) const CACHE_BYTES: u64 = 16 << 20;

impl SledStore {
    /// Open (or create) the store under `dir` and start its writer thread. `clock` dates
    /// what the store records (audit events, revocations, offboardings).
    pub fn open(dir: &Path, clock: Clock) -> Result<Arc<SledStore>> {
        Self::open_with(dir, clock, SledFlush)
    }

    /// [`SledStore::open`] with a chosen flush (tests inject failures through it).
    /// A store whose next `fail` flushes fail (see `FailNext`), for tests of what
    /// callers of the store do then.
    #[cfg(test)]
    pub(crate) fn open_failing(
        dir: &Path,
        clock: Clock,
        fail: Arc<std::sync::atomic::AtomicU32>,
    ) -> Result<Arc<SledStore>> {
        Self::open_with(dir, clock, super::flush::FailNext(fail))
    }

    pub(super) fn open_with(dir: &Path, clock: Clock, flush: impl Flush) -> Result<Arc<SledStore>> {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(CACHE_BYTES)
            .mode(sled::Mode::HighThroughput)
            // We flush explicitly per batch; sled's own periodic flush would only add I/O.
            .flush_every_ms(None)
            .open()?;
        let t = Arc::new(Trees::build(|name| Ok(Tree::Sled(db.open_tree(name)?)))?);
        // Databases from before the expiry index: build it once.
        if t.expiry.is_empty()? && !t.active.is_empty()? {
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
        // Databases from before retention: index their ended leases once.
        if build_ended_index(&t)? {
            db.flush()?;
        }
        let seq = Arc::new(AtomicU64::new(meta_u64(&t.meta, "seq")?));
        let event_id = meta_u64(&t.meta, "event_id")?;
        let (head, started) = super::chain::open_head(&t.meta, event_id)?;
        if started {
            db.flush()?;
        }
        let (changes, _) = broadcast::channel(4096);
        let (events, _) = broadcast::channel(4096);
        let (jobs, rx) = mpsc::channel::<Job>(8192);
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ended_tx, _) = watch::channel(EndQueueWrites::default());
        let writer_handle = {
            let db = db.clone();
            let t = t.clone();
            let seq = seq.clone();
            let changes = changes.clone();
            let events = events.clone();
            let failed = failed.clone();
            let ended_tx = ended_tx.clone();
            std::thread::Builder::new()
                .name("leash-store-writer".into())
                .spawn(move || {
                    let publish = Publish {
                        changes,
                        events,
                        ended: ended_tx,
                    };
                    writer(
                        db,
                        t,
                        rx,
                        seq,
                        (event_id, head),
                        publish,
                        flush,
                        &failed,
                        &clock,
                    )
                })
                .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?
        };
        Ok(Arc::new(SledStore {
            db: Some(db),
            _engine: None,
            t,
            jobs,
            seq,
            changes,
            events,
            writer: std::sync::Mutex::new(Some(writer_handle)),
            failed,
            ended_tx,
        }))
    }

    /// Run `f` on the writer thread; resolves once its batch is durable.
    pub(super) async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let caller = crate::actor::current();
        let job: Job = Box::new(move |t| {
            t.caller = caller;
            let r = f(t);
            t.caller = None;
            Box::new(move |flush_err: Option<&StoreError>| {
                let r = match (r, flush_err) {
                    // PostgreSQL rolled the batch back (or could not confirm its commit).
                    (Ok(_), Some(StoreError::Database(m))) => Err(StoreError::Database(m.clone())),
                    (Ok(_), Some(e)) => Err(StoreError::NotDurable(e.to_string())),
                    (r, _) => r,
                };
                let _ = tx.send(r);
            })
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub(super) fn indexed_events(&self, index: &Tree, key: &str) -> Result<Vec<Event>> {
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
        self.db
            .as_ref()
            .and_then(|db| db.size_on_disk().ok())
            .unwrap_or(0)
    }
}

/// Where the writer publishes what a durable batch did.
struct Publish {
    changes: broadcast::Sender<Arc<Change>>,
    events: broadcast::Sender<Event>,
    ended: watch::Sender<EndQueueWrites>,
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
    (mut event_id, mut head): (u64, Link),
    publish: Publish,
    mut flush: impl Flush,
    failed: &std::sync::atomic::AtomicBool,
    clock: &Clock,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // The writer's own counter: ahead of the published `seq` while flushes fail.
    let mut next_seq = seq.load(Ordering::Acquire);
    let mut unpublished_changes: Vec<Change> = Vec::new();
    let mut unpublished_events: Vec<Event> = Vec::new();
    // (queued, changed) of batches not yet published.
    let mut unpublished_ended = (false, false);
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
            head: head.clone(),
            changes: Vec::new(),
            events: Vec::new(),
            stop: false,
            now_ms: clock.now_ms(),
            ended_queued: false,
            ended_changed: false,
            caller: None,
        };
        let replies: Vec<Reply> = batch.drain(..).map(|job| job(&mut tx)).collect();
        let Tx {
            seq: new_seq,
            event_id: new_event_id,
            head: new_head,
            changes: new_changes,
            events: new_events,
            stop,
            ended_queued,
            ended_changed,
            ..
        } = tx;
        unpublished_ended.0 |= ended_queued;
        unpublished_ended.1 |= ended_changed || ended_queued;
        next_seq = new_seq;
        event_id = new_event_id;
        let head_changed = new_head != head;
        head = new_head;
        unpublished_changes.extend(new_changes);
        unpublished_events.extend(new_events);
        let flush_started = std::time::Instant::now();
        let flushed = (|| -> Result<()> {
            t.meta.insert("seq", &be(new_seq))?;
            t.meta.insert("event_id", &be(new_event_id))?;
            if head_changed {
                t.meta
                    .insert(super::chain::HEAD_KEY, super::codec::enc(&head))?;
            }
            flush.flush(&db)?;
            Ok(())
        })();
        crate::metrics::store_flushed(replies.len(), flush_started.elapsed(), flushed.is_ok());
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
            // Before answering: a caller reads `current_seq` as soon as it is answered,
            // and the end queue's worker may start on a revoked lease before `revoke`
            // returns.
            seq.store(new_seq, Ordering::Release);
            let (queued, changed) = std::mem::take(&mut unpublished_ended);
            if changed {
                publish.ended.send_modify(|n| {
                    n.queued = n.queued.wrapping_add(u64::from(queued));
                    n.changed = n.changed.wrapping_add(1);
                });
            }
        }
        for r in replies {
            r(err.as_ref());
        }
        if err.is_none() {
            for c in unpublished_changes.drain(..) {
                let _ = publish.changes.send(Arc::new(c));
            }
            for e in unpublished_events.drain(..) {
                let _ = publish.events.send(e);
            }
        }
        if stop {
            return;
        }
    }
}

/// Databases from before the ended-lease index: build it once, at open.
fn build_ended_index(t: &Trees) -> Result<bool> {
    const DONE: &str = "lease_ended_index";
    if t.meta.contains_key(DONE)? {
        return Ok(false);
    }
    for v in t.leases.iter().values() {
        let l: Lease = dec("leases", &v?)?;
        if l.state != LeaseState::Active {
            t.lease_ended.insert(ended_key(&l), &[])?;
        }
    }
    t.meta.insert(DONE, &[1])?;
    Ok(true)
}
