//! The PostgreSQL engine of the store: the same trees as sled, as rows of one table
//! `kv(tree, key, value)` (keys compare as bytes, as in sled), so every job and read of
//! the store runs unchanged on either engine. Several control-plane replicas can share
//! one database: see `writer` for how their batches are serialised and how each
//! publishes what the others committed.
//!
//! The schema is made and upgraded by the versioned [`MIGRATIONS`] at open, recorded in
//! `schema_migrations`; a replica refuses to open a database whose schema is newer than
//! it knows. The database URL comes from the configuration's `[store]` and is never
//! quoted in a message (the driver's messages are scrubbed, as for the `postgres`
//! credential kind, whose connection code this reuses).

mod cache;
pub mod from_sled;
mod session;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc, watch};

use super::error::{Result, StoreError};
use super::kv::Tree;
use super::sled_store::{EndQueueWrites, Job, SledStore, Trees};
use crate::clock::Clock;
use crate::kinds::postgres::conn;
use session::{Readers, Session, TxBackend};
use writer::Tail;

/// The schema, one step per version (applied in order, each in its own transaction).
pub const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE kv (tree text NOT NULL, key bytea NOT NULL, value bytea NOT NULL, \
     PRIMARY KEY (tree, key))",
)];

/// The newest schema version this build knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map(|(v, _)| *v).unwrap_or(0)
}

/// The advisory lock migrations hold, so replicas starting together migrate once.
const MIGRATION_LOCK: i64 = 0x006c_6561_736d;
/// Reader connections per replica (sync reads block on one of them).
const READERS: usize = 4;

/// Keeps the readers and the listener of an open store, and stops the listener when the
/// store is dropped.
struct Running {
    stop: Arc<AtomicBool>,
    _readers: Arc<Readers>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Create or upgrade the schema. Refuses a schema newer than [`MIGRATIONS`].
fn migrate(s: &mut Session) -> Result<i32> {
    s.run(|c| {
        Box::pin(async move {
            c.batch_execute(&format!(
                "SELECT pg_advisory_lock({MIGRATION_LOCK}); \
                 CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, \
                 applied_at timestamptz NOT NULL DEFAULT now())"
            ))
            .await
        })
    })?;
    let result = (|| {
        let found: i32 = s.run(|c| {
            Box::pin(async move {
                let r = c
                    .query_one(
                        "SELECT coalesce(max(version), 0) FROM schema_migrations",
                        &[],
                    )
                    .await?;
                Ok(r.get(0))
            })
        })?;
        let known = latest_version();
        if found > known {
            return Err(StoreError::SchemaTooNew { found, known });
        }
        for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
            let (v, sql) = (*v, *sql);
            s.run(move |c| {
                Box::pin(async move {
                    c.batch_execute(&format!(
                        "BEGIN; {sql}; INSERT INTO schema_migrations (version) VALUES ({v}); COMMIT"
                    ))
                    .await
                })
            })?;
            tracing::info!(version = v, "store schema migrated");
        }
        Ok(known.max(found))
    })();
    let _ = s.run(|c| {
        Box::pin(async move {
            c.batch_execute(&format!(
                "ROLLBACK; SELECT pg_advisory_unlock({MIGRATION_LOCK})"
            ))
            .await
        })
    });
    result
}

impl SledStore {
    /// Open the PostgreSQL store at `url` (migrating its schema) and start its writer,
    /// readers and listener. Blocks the calling thread until the database answered:
    /// call it off the async runtime (e.g. from `spawn_blocking`).
    pub fn open_postgres(url: &str, clock: Clock) -> Result<Arc<SledStore>> {
        let spec =
            Arc::new(conn::parse(url).map_err(|e| {
                StoreError::Database(format!("the [store] URL is not usable: {e}"))
            })?);
        let rows = Arc::new(cache::RowCache::default());
        let readers = Readers::start(spec.clone(), READERS, rows.clone())?;
        let reader_trees = Arc::new(Trees::build(|name| {
            Ok(Tree::Pg {
                name,
                via: readers.clone(),
            })
        })?);
        let (changes, _) = broadcast::channel(4096);
        let (events, _) = broadcast::channel(4096);
        let (ended_tx, _) = watch::channel(EndQueueWrites::default());
        let seq = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicBool::new(false));
        let (jobs, rx) = mpsc::channel::<Job>(8192);

        // The writer connects and migrates first; the store opens once it has.
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<Arc<Tail>>>(1);
        let writer_handle = {
            let spec = spec.clone();
            let reader_trees = reader_trees.clone();
            let (seq, changes, events) = (seq.clone(), changes.clone(), events.clone());
            let (ended_tx, failed) = (ended_tx.clone(), failed.clone());
            let rows = rows.clone();
            std::thread::Builder::new()
                .name("leash-store-writer".into())
                .spawn(move || {
                    let start = || -> Result<(Arc<TxBackend>, Arc<Trees>, Arc<Tail>)> {
                        let mut s = Session::new(spec)?;
                        migrate(&mut s)?;
                        let be_ = Arc::new(TxBackend {
                            session: Mutex::new(s),
                            overlay: Mutex::new(Default::default()),
                            read: Mutex::new(Default::default()),
                        });
                        let t = Arc::new(Trees::build(|name| {
                            Ok(Tree::Pg {
                                name,
                                via: be_.clone(),
                            })
                        })?);
                        let at = Tail::counters(&reader_trees)?;
                        seq.store(at.0, Ordering::Release);
                        let tail = Arc::new(Tail {
                            t: reader_trees,
                            at: Mutex::new(at),
                            seq,
                            changes,
                            events,
                            ended: ended_tx,
                        });
                        Ok((be_, t, tail))
                    };
                    match start() {
                        Ok((be_, t, tail)) => {
                            let _ = ready_tx.send(Ok(tail.clone()));
                            writer::writer(be_, t, rx, tail, rows, failed, clock);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                })
                .map_err(|e| StoreError::Database(format!("cannot start the writer: {e}")))?
        };
        let tail = ready_rx
            .recv()
            .map_err(|_| StoreError::Database("the writer stopped while opening".into()))??;
        let stop = Arc::new(AtomicBool::new(false));
        {
            let session = Session::new(spec)?;
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("leash-store-listen".into())
                .spawn(move || writer::listen(session, tail, rows, stop))
                .map_err(|e| StoreError::Database(format!("cannot start the listener: {e}")))?;
        }
        Ok(Arc::new(SledStore {
            db: None,
            _engine: Some(Box::new(Running {
                stop,
                _readers: readers,
            })),
            t: reader_trees,
            jobs,
            seq,
            changes,
            events,
            writer: std::sync::Mutex::new(Some(writer_handle)),
            failed,
            ended_tx,
        }))
    }
}
