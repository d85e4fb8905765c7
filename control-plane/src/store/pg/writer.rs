//! The PostgreSQL store's writer and what it publishes.
//!
//! Group commit as on sled: the writer drains the queued jobs and applies them as one
//! batch, and the batch is ONE PostgreSQL transaction. It first takes a global
//! transaction-scoped advisory lock, so the batches of every replica are serialised:
//! the sequence and event counters are read under the lock (never trusted from memory),
//! so sequence order is commit order across replicas, and every read-check-write of a
//! job keeps the single-writer meaning it has on sled. The batch's writes are buffered
//! (its reads see them) and sent at commit in a few multi-row statements, with
//! `NOTIFY leash_changes` in the same transaction.
//!
//! What is published (changes, events, the end queue's counters) is read back from the
//! database by [`Tail`], in sequence order from the last position published: after each
//! own commit, on a notification from another replica, and every second (a lost
//! notification only delays).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_postgres::types::{ToSql, Type};

use super::cache::{self, RowCache};
use super::session::{database, Overlay, Session, TxBackend};
use crate::clock::Clock;
use crate::model::{Change, Event};
use crate::store::codec::{be, dec, meta_u64};
use crate::store::error::{Result, StoreError};
use crate::store::sled_store::{EndQueueWrites, Job, Reply, Trees, Tx};

/// The advisory lock every batch of every replica takes (an arbitrary constant: "leash").
pub(super) const BATCH_LOCK: i64 = 0x006c_6561_7368;
/// The channel replicas notify each other on.
pub(super) const CHANNEL: &str = "leash_changes";
/// Largest number of queued writes applied in one transaction.
const MAX_BATCH: usize = 1024;
/// How often a replica reads the log even without a notification.
const POLL: Duration = Duration::from_secs(1);

/// Meta keys of the end queue's counters (see `Storage::ended_changes`), kept in the
/// database so every replica's waiters wake on every replica's writes.
const ENDED_QUEUED: &str = "ended_queued";
const ENDED_CHANGED: &str = "ended_changed";

/// Reads what was committed (by any replica) and publishes it locally, in order.
pub(super) struct Tail {
    /// Trees read through the reader threads.
    pub(super) t: Arc<Trees>,
    /// What has been published: (seq, event id, ended queued, ended changed).
    pub(super) at: Mutex<(u64, u64, u64, u64)>,
    pub(super) seq: Arc<AtomicU64>,
    pub(super) changes: broadcast::Sender<Arc<Change>>,
    pub(super) events: broadcast::Sender<Event>,
    pub(super) ended: watch::Sender<EndQueueWrites>,
}

impl Tail {
    /// The counters as committed now: (seq, event id, ended queued, ended changed).
    pub(super) fn counters(t: &Trees) -> Result<(u64, u64, u64, u64)> {
        Ok((
            meta_u64(&t.meta, "seq")?,
            meta_u64(&t.meta, "event_id")?,
            meta_u64(&t.meta, ENDED_QUEUED)?,
            meta_u64(&t.meta, ENDED_CHANGED)?,
        ))
    }

    /// Publish everything committed since the last call.
    pub(super) fn catch_up(&self) -> Result<()> {
        let mut at = self.at.lock().unwrap_or_else(|p| p.into_inner());
        // The counters first: every log entry and event at or below them is committed.
        let (seq, event_id, queued, changed) = Self::counters(&self.t)?;
        let mut changes = Vec::new();
        if seq > at.0 {
            for v in self.t.log.range(be(at.0 + 1)..=be(seq)).values() {
                changes.push(dec::<Change>("log", &v?)?);
            }
        }
        let mut events = Vec::new();
        if event_id > at.1 {
            for v in self.t.events.range(be(at.1 + 1)..=be(event_id)).values() {
                events.push(dec::<Event>("events", &v?)?);
            }
        }
        if seq > at.0 {
            self.seq.store(seq, Ordering::Release);
        }
        if changed > at.3 {
            let (dq, dc) = (queued.saturating_sub(at.2), changed - at.3);
            self.ended.send_modify(|n| {
                n.queued = n.queued.wrapping_add(dq);
                n.changed = n.changed.wrapping_add(dc);
            });
        }
        *at = (
            seq.max(at.0),
            event_id.max(at.1),
            queued.max(at.2),
            changed.max(at.3),
        );
        for c in changes {
            let _ = self.changes.send(Arc::new(c));
        }
        for e in events {
            let _ = self.events.send(e);
        }
        Ok(())
    }
}

impl Tail {
    /// Publish a batch this replica committed: from memory when it follows directly on
    /// what was published (`before`, the counters the batch read under the lock, are
    /// where publishing stands), so its changes and events are exactly the log entries
    /// and events between `before` and `after`; otherwise (another replica committed in
    /// between and that is not published yet) by reading the log, in order.
    pub(super) fn own(
        &self,
        before: (u64, u64, u64, u64),
        after: (u64, u64, u64, u64),
        changes: Vec<Change>,
        events: Vec<Event>,
    ) -> Result<()> {
        let mut at = self.at.lock().unwrap_or_else(|p| p.into_inner());
        if *at != before {
            drop(at);
            return self.catch_up();
        }
        if after.0 > at.0 {
            self.seq.store(after.0, Ordering::Release);
        }
        if after.3 > at.3 {
            let (dq, dc) = (after.2.saturating_sub(at.2), after.3 - at.3);
            self.ended.send_modify(|n| {
                n.queued = n.queued.wrapping_add(dq);
                n.changed = n.changed.wrapping_add(dc);
            });
        }
        *at = after;
        // Sent while `at` is held, as `catch_up` does: the listener cannot interleave.
        for c in changes {
            let _ = self.changes.send(Arc::new(c));
        }
        for e in events {
            let _ = self.events.send(e);
        }
        Ok(())
    }
}

/// Longest a batch's transaction may sit without a statement before the database ends
/// it (see `begin`): far above a batch's own pauses (milliseconds).
const IDLE_IN_BATCH: std::time::Duration = std::time::Duration::from_secs(10);

/// The meta rows every batch reads once it holds the lock: the counters and the audit
/// chain's head.
const BATCH_META: [&str; 5] = [
    "seq",
    "event_id",
    ENDED_QUEUED,
    ENDED_CHANGED,
    crate::store::chain::HEAD_KEY,
];

/// Begin a batch: a transaction holding the global batch lock, with the meta rows of
/// [`BATCH_META`] read under it into the batch's read cache. The read is pipelined
/// behind the lock (one round trip for both): it runs once the lock is held, in the
/// same transaction. Returns the connection it runs on.
fn begin(be_: &TxBackend) -> Result<u64> {
    let mut s = be_.session.lock().unwrap_or_else(|p| p.into_inner());
    let keys: Vec<Vec<u8>> = BATCH_META.iter().map(|k| k.as_bytes().to_vec()).collect();
    let rows = s.run(move |c| {
        Box::pin(async move {
            // A replica frozen in the middle of a batch would hold every replica's writes
            // with the lock: the database ends its transaction (and connection) after
            // `IDLE_IN_BATCH` without a statement, so the batch is never confirmed. And a
            // batch is acknowledged only once its commit is in the WAL on disk, even on a
            // server whose default is `synchronous_commit = off` (a stronger setting, such
            // as `remote_apply` for a synchronous standby, is kept).
            let lock = format!(
                "BEGIN; SET LOCAL idle_in_transaction_session_timeout = '{}ms'; \
                 SELECT set_config('synchronous_commit', 'on', true) \
                 WHERE current_setting('synchronous_commit') = 'off'; \
                 SELECT pg_advisory_xact_lock({BATCH_LOCK})",
                IDLE_IN_BATCH.as_millis()
            );
            let params: [(&(dyn ToSql + Sync), Type); 1] = [(&keys, Type::BYTEA_ARRAY)];
            let begin = c.batch_execute(&lock);
            let read = c.query_typed(
                "SELECT key, value FROM kv WHERE tree = 'meta' AND key = ANY($1)",
                &params,
            );
            let ((), rows) = futures::try_join!(begin, read)?;
            Ok(rows
                .into_iter()
                .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                .collect::<Vec<_>>())
        })
    })?;
    let mut found: std::collections::HashMap<Vec<u8>, Vec<u8>> = rows.into_iter().collect();
    let mut cache = be_.read_cache();
    cache.clear();
    for k in BATCH_META {
        let v = found.remove(k.as_bytes());
        cache.insert(("meta", k.as_bytes().to_vec()), v);
    }
    Ok(s.generation())
}

/// Send the buffered writes and commit, notifying the other replicas. Refused when the
/// connection the transaction began on was lost meanwhile (a new one is outside it).
fn commit(be_: &TxBackend, began_on: u64, overlay: Overlay, rows: &RowCache) -> Result<()> {
    let written: Vec<(&'static str, Vec<u8>)> = overlay
        .iter()
        .filter(|(tree, _)| cache::cached_tree(tree).is_some())
        .flat_map(|(tree, w)| w.keys().map(move |k| (*tree, k.clone())))
        .collect();
    let note = cache::payload(written.iter().map(|(t, k)| (*t, k.as_slice())));
    let mut upsert: (Vec<&'static str>, Vec<Vec<u8>>, Vec<Vec<u8>>) = Default::default();
    let mut delete: (Vec<&'static str>, Vec<Vec<u8>>) = Default::default();
    for (tree, writes) in overlay {
        for (k, v) in writes {
            match v {
                Some(v) => {
                    upsert.0.push(tree);
                    upsert.1.push(k);
                    upsert.2.push(v);
                }
                None => {
                    delete.0.push(tree);
                    delete.1.push(k);
                }
            }
        }
    }
    let mut s = be_.session.lock().unwrap_or_else(|p| p.into_inner());
    if s.generation() != began_on {
        return Err(StoreError::Database(
            "the connection was lost during the batch; it was rolled back".into(),
        ));
    }
    let committed = s.run(move |c| {
        Box::pin(async move {
            // The deletes, the upserts and the commit are pipelined: one round trip. They
            // run in order on the connection; if one fails, the transaction is aborted,
            // its COMMIT only ends it, and the failure is returned from here.
            let del: [(&(dyn ToSql + Sync), Type); 2] = [
                (&delete.0, Type::TEXT_ARRAY),
                (&delete.1, Type::BYTEA_ARRAY),
            ];
            let del = async {
                if !delete.0.is_empty() {
                    c.query_typed(
                        "DELETE FROM kv WHERE (tree, key) IN \
                         (SELECT * FROM unnest($1::text[], $2::bytea[]))",
                        &del,
                    )
                    .await?;
                }
                Ok::<(), tokio_postgres::Error>(())
            };
            let ups: [(&(dyn ToSql + Sync), Type); 3] = [
                (&upsert.0, Type::TEXT_ARRAY),
                (&upsert.1, Type::BYTEA_ARRAY),
                (&upsert.2, Type::BYTEA_ARRAY),
            ];
            let ups = async {
                if !upsert.0.is_empty() {
                    c.query_typed(
                        "INSERT INTO kv (tree, key, value) \
                         SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]) \
                         ON CONFLICT (tree, key) DO UPDATE SET value = EXCLUDED.value",
                        &ups,
                    )
                    .await?;
                }
                Ok(())
            };
            // The payload holds only names, hex digits and `:,*` (see `cache::payload`).
            let end_sql = if note.is_empty() {
                format!("NOTIFY {CHANNEL}; COMMIT")
            } else {
                format!("NOTIFY {CHANNEL}, '{note}'; COMMIT")
            };
            let end = c.batch_execute(&end_sql);
            futures::try_join!(del, ups, end).map(|_| ())
        })
    });
    // Before anyone is answered; also after a failure, whose commit may have happened
    // with only its answer lost.
    rows.forget(written.iter().map(|(t, k)| (*t, k.as_slice())));
    committed
}

/// Give up the transaction (after a failure; the connection may be gone, which ends
/// it too).
fn rollback(be_: &TxBackend) {
    let mut s = be_.session.lock().unwrap_or_else(|p| p.into_inner());
    let _ = s.run(|c| Box::pin(async move { c.batch_execute("ROLLBACK").await }));
}

/// The writer loop: batch, apply in one transaction under the batch lock, commit, then
/// publish (through `tail`) and answer. A batch whose commit is not confirmed is
/// answered unavailable, and nothing of it is published.
pub(super) fn writer(
    be_: Arc<TxBackend>,
    t: Arc<Trees>,
    mut rx: mpsc::Receiver<Job>,
    tail: Arc<Tail>,
    rows: Arc<RowCache>,
    failed: Arc<AtomicBool>,
    clock: Clock,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let begun = begin(&be_);
        let counters = match &begun {
            Ok(_) => Tail::counters(&t),
            Err(e) => Err(database(e)),
        };
        let began_on = begun.unwrap_or(u64::MAX);
        // The audit chain's head, like the counters, is read under the batch lock: another
        // replica may have appended events since this one's last batch. A new store
        // starts its chain here (written with this batch).
        let counters = counters
            .and_then(|c| crate::store::chain::open_head(&t.meta, c.1).map(|(head, _)| (c, head)));
        let ((seq, event_id, queued, changed), head) =
            counters.as_ref().cloned().unwrap_or_else(|_| {
                (
                    (0, 0, 0, 0),
                    crate::audit_chain::Link {
                        id: 0,
                        hash: crate::audit_chain::ZERO_HASH.to_string(),
                    },
                )
            });
        let mut tx = Tx {
            t: &t,
            seq,
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
        let stop = tx.stop;
        let after = (
            tx.seq,
            tx.event_id,
            queued + u64::from(tx.ended_queued),
            changed + u64::from(tx.ended_changed || tx.ended_queued),
        );
        let (changes, events) = (
            std::mem::take(&mut tx.changes),
            std::mem::take(&mut tx.events),
        );
        let commit_started = std::time::Instant::now();
        let result = counters.and_then(|_| {
            t.meta.insert("seq", &be(tx.seq))?;
            t.meta.insert("event_id", &be(tx.event_id))?;
            if tx.head != head {
                t.meta.insert(
                    crate::store::chain::HEAD_KEY,
                    crate::store::codec::enc(&tx.head),
                )?;
            }
            if tx.ended_changed || tx.ended_queued {
                t.meta
                    .insert(ENDED_QUEUED, &be(queued + u64::from(tx.ended_queued)))?;
                t.meta.insert(ENDED_CHANGED, &be(changed + 1))?;
            }
            let overlay =
                std::mem::take(&mut *be_.overlay.lock().unwrap_or_else(|p| p.into_inner()));
            commit(&be_, began_on, overlay, &rows)
        });
        crate::metrics::store_flushed(replies.len(), commit_started.elapsed(), result.is_ok());
        // Whatever happened, the next batch starts from nothing buffered or read.
        be_.end_batch();
        let err = match result {
            Ok(()) => {
                failed.store(false, Ordering::Release);
                // Published before answering: a caller reads `current_seq` as soon as
                // it is answered. A failed read here only delays (the poll retries).
                let before = (seq, event_id, queued, changed);
                if let Err(e) = tail.own(before, after, changes, events) {
                    tracing::warn!(error = %e, "could not read back the committed batch; the next poll will");
                }
                None
            }
            Err(e) => {
                rollback(&be_);
                tracing::error!(
                    error = %e,
                    unacknowledged = replies.len(),
                    "STORE COMMIT FAILED: the batch was not acknowledged (answered UNAVAILABLE)"
                );
                Some(database(&e))
            }
        };
        for r in replies {
            r(err.as_ref());
        }
        if stop {
            return;
        }
    }
}

/// The listener: wakes on `NOTIFY leash_changes` from any replica, and at least every
/// [`POLL`], and publishes what was committed; forgets the cached rows each
/// notification names (see `cache`). Ends once `stop` is set.
pub(super) fn listen(
    session: Session,
    tail: Arc<Tail>,
    cache: Arc<RowCache>,
    stop: Arc<AtomicBool>,
) {
    let (notes_tx, mut notes) = mpsc::unbounded_channel::<String>();
    let mut listening: Option<tokio_postgres::Client> = None;
    while !stop.load(Ordering::Acquire) {
        if listening.as_ref().is_none_or(|c| c.is_closed()) {
            // Notifications may have been missed: nothing cached can be trusted.
            cache.set_on(false);
            let spec = session.spec().clone();
            let notes_tx = notes_tx.clone();
            listening = session.block_on(async move {
                let c = spec.connect_listening(notes_tx).await.ok()?;
                c.batch_execute(&format!("LISTEN {CHANNEL}")).await.ok()?;
                Some(c)
            });
            if listening.is_some() {
                cache.set_on(true);
            }
        }
        session.block_on(async {
            if let Ok(Some(p)) = tokio::time::timeout(POLL, notes.recv()).await {
                cache.notified(&p);
            }
            // Several notifications at once need one read.
            while let Ok(p) = notes.try_recv() {
                cache.notified(&p);
            }
        });
        if stop.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = tail.catch_up() {
            tracing::warn!(error = %e, "cannot read the store's change log; retrying");
        }
    }
}
