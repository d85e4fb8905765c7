//! Connections to the PostgreSQL store and the two ways trees read and write through
//! them: [`Readers`], a few threads each holding a connection, that the store's sync
//! reads block on (a channel, never the daemon's runtime), and [`TxBackend`], the
//! writer's transaction, which buffers a batch's writes (its reads see them) and sends
//! them at commit in a few multi-row statements.
//!
//! Every connection runs on a current-thread runtime of the thread that owns it.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{mpsc, Arc, Mutex};

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::cache::{Lookup, RowCache};
use crate::kinds::postgres::conn::ConnSpec;
use crate::store::error::{Result, StoreError};
use crate::store::kv::{Backend, Page};

/// A [`StoreError::Database`] with the message of `e`, not wrapped twice.
pub(super) fn database(e: &StoreError) -> StoreError {
    match e {
        StoreError::Database(m) => StoreError::Database(m.clone()),
        e => StoreError::Database(e.to_string()),
    }
}

/// One connection and the runtime that drives it, reconnecting after a failure.
pub(super) struct Session {
    rt: tokio::runtime::Runtime,
    spec: Arc<ConnSpec>,
    client: Option<Client>,
    /// Counts the connections opened: a transaction must end on the one it began on.
    generation: u64,
}

impl Session {
    pub(super) fn new(spec: Arc<ConnSpec>) -> Result<Session> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Database(format!("cannot start a runtime: {e}")))?;
        Ok(Session {
            rt,
            spec,
            client: None,
            generation: 0,
        })
    }

    /// Run `f` with the connection (opened first if needed). A connection that failed
    /// is dropped, so the next call opens a fresh one.
    pub(super) fn run<T, F>(&mut self, f: F) -> Result<T>
    where
        F: for<'c> FnOnce(
            &'c Client,
        )
            -> futures::future::BoxFuture<'c, Result<T, tokio_postgres::Error>>,
    {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let spec = self.spec.clone();
            let c = self
                .rt
                .block_on(async move { spec.connect().await })
                .map_err(|e| StoreError::Database(e.to_string()))?;
            self.client = Some(c);
            self.generation += 1;
        }
        let Some(client) = self.client.as_ref() else {
            return Err(StoreError::Database("no connection".into()));
        };
        match self.rt.block_on(f(client)) {
            Ok(v) => Ok(v),
            Err(e) => {
                if client.is_closed() || e.as_db_error().is_none() {
                    self.client = None;
                }
                Err(StoreError::Database(self.spec.message(&e)))
            }
        }
    }

    /// Run `f` on this session's runtime (to drive a listening connection).
    pub(super) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Which connection is open (see `generation`).
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    pub(super) fn spec(&self) -> &Arc<ConnSpec> {
        &self.spec
    }

    pub(super) fn get(&mut self, tree: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let key = key.to_vec();
        self.run(move |c| {
            Box::pin(async move {
                // Typed: one round trip (an untyped query prepares first, a second one).
                let rows = c
                    .query_typed(
                        "SELECT value FROM kv WHERE tree = $1 AND key = $2",
                        &[(&tree, Type::TEXT), (&key, Type::BYTEA)],
                    )
                    .await?;
                Ok(rows.into_iter().next().map(|r| r.get::<_, Vec<u8>>(0)))
            })
        })
    }

    /// Up to `limit` rows within the bounds, in key order (descending if `rev`).
    pub(super) fn rows(
        &mut self,
        tree: &'static str,
        lo: &Bound<Vec<u8>>,
        hi: &Bound<Vec<u8>>,
        rev: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut sql = String::from("SELECT key, value FROM kv WHERE tree = $1");
        let mut args: Vec<Vec<u8>> = Vec::new();
        for (b, inc, exc) in [(lo, ">=", ">"), (hi, "<=", "<")] {
            let (op, k) = match b {
                Bound::Included(k) => (inc, k),
                Bound::Excluded(k) => (exc, k),
                Bound::Unbounded => continue,
            };
            args.push(k.clone());
            sql.push_str(&format!(" AND key {op} ${}", args.len() + 1));
        }
        sql.push_str(if rev {
            " ORDER BY key DESC"
        } else {
            " ORDER BY key"
        });
        sql.push_str(&format!(" LIMIT {limit}"));
        self.run(move |c| {
            Box::pin(async move {
                let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![(&tree, Type::TEXT)];
                for a in &args {
                    params.push((a, Type::BYTEA));
                }
                let rows = c.query_typed(sql.as_str(), &params).await?;
                Ok(rows
                    .into_iter()
                    .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                    .collect())
            })
        })
    }
}

/// The page a query of `limit` rows makes: where it reaches to.
fn page_upto(rows: &[(Vec<u8>, Vec<u8>)], limit: usize) -> Option<Vec<u8>> {
    if rows.len() < limit {
        None
    } else {
        rows.last().map(|(k, _)| k.clone())
    }
}

type ReadJob = Box<dyn FnOnce(&mut Session) + Send>;

/// The reader threads: each holds a connection and takes the next read from a shared
/// queue. They end when the last [`Readers`] is dropped.
pub(super) struct Readers {
    jobs: Mutex<mpsc::Sender<ReadJob>>,
    /// The rows an Issue reads, kept between requests (see `cache`).
    cache: Arc<RowCache>,
}

impl Readers {
    pub(super) fn start(
        spec: Arc<ConnSpec>,
        threads: usize,
        cache: Arc<RowCache>,
    ) -> Result<Arc<Readers>> {
        let (tx, rx) = mpsc::channel::<ReadJob>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let mut session = Session::new(spec.clone())?;
            std::thread::Builder::new()
                .name(format!("leash-store-read-{i}"))
                .spawn(move || loop {
                    let job = {
                        let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                        rx.recv()
                    };
                    match job {
                        Ok(job) => job(&mut session),
                        Err(_) => return,
                    }
                })
                .map_err(|e| StoreError::Database(format!("cannot start a reader: {e}")))?;
        }
        Ok(Arc::new(Readers {
            jobs: Mutex::new(tx),
            cache,
        }))
    }

    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Session) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: ReadJob = Box::new(move |s| {
            let _ = tx.send(f(s));
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| StoreError::Closed)?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }
}

/// Run a read, and once more on a fresh connection when the first failed because its
/// connection was gone (a reader idle since the database restarted holds a dead one).
/// Reads change nothing, so the second try is safe; writes are never retried here.
fn read_twice<T>(s: &mut Session, mut f: impl FnMut(&mut Session) -> Result<T>) -> Result<T> {
    match f(s) {
        Err(_) if s.client.is_none() => f(s),
        r => r,
    }
}

impl Backend for Readers {
    fn get(&self, tree: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let generation = match self.cache.lookup(tree, key) {
            Lookup::Hit(row) => return Ok(row),
            Lookup::Miss(g) => Some(g),
            Lookup::Bypass => None,
        };
        let k = key.to_vec();
        let row = self.call(move |s| read_twice(s, |s| s.get(tree, &k)))?;
        if let Some(g) = generation {
            self.cache.fill(tree, key, row.clone(), g);
        }
        Ok(row)
    }

    fn page(
        &self,
        tree: &'static str,
        lo: &Bound<Vec<u8>>,
        hi: &Bound<Vec<u8>>,
        rev: bool,
        limit: usize,
    ) -> Result<Page> {
        let (lo, hi) = (lo.clone(), hi.clone());
        self.call(move |s| {
            let rows = read_twice(s, |s| s.rows(tree, &lo, &hi, rev, limit))?;
            let upto = page_upto(&rows, limit);
            Ok(Page { rows, upto })
        })
    }

    fn put(&self, tree: &'static str, _key: &[u8], _value: Option<Vec<u8>>) -> Result<()> {
        // Writes happen on the writer only; reaching here is a bug, reported as such.
        Err(StoreError::Database(format!(
            "a write to {tree} outside the writer was refused"
        )))
    }
}

/// Writes buffered by the current batch: tree -> key -> value (`None`: deleted).
pub(super) type Overlay = BTreeMap<&'static str, BTreeMap<Vec<u8>, Option<Vec<u8>>>>;

/// Rows a batch has read: (tree, key) -> value (`None`: absent).
pub(super) type ReadCache = HashMap<(&'static str, Vec<u8>), Option<Vec<u8>>>;

/// The writer's connection, the batch's buffered writes, and the rows it has read.
///
/// A batch runs in one transaction holding the global batch lock, and every write to
/// the store's table is made by a batch under that lock (or by a migration before any
/// replica opens it): nothing changes a row between two reads of one batch except the
/// batch itself, whose writes the overlay answers first. So a row is read from the
/// database at most once per batch, however many of the batch's jobs read it (every
/// Issue reads its workload, host and credential). The cache is emptied when the
/// batch ends, whatever its outcome.
pub(super) struct TxBackend {
    pub(super) session: Mutex<Session>,
    pub(super) overlay: Mutex<Overlay>,
    pub(super) read: Mutex<ReadCache>,
}

fn within(k: &[u8], lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> bool {
    let above = match lo {
        Bound::Included(b) => k >= b.as_slice(),
        Bound::Excluded(b) => k > b.as_slice(),
        Bound::Unbounded => true,
    };
    let below = match hi {
        Bound::Included(b) => k <= b.as_slice(),
        Bound::Excluded(b) => k < b.as_slice(),
        Bound::Unbounded => true,
    };
    above && below
}

impl TxBackend {
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn overlay(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.overlay.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn read_cache(&self) -> std::sync::MutexGuard<'_, ReadCache> {
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forget what the batch wrote and read (at the end of every batch).
    pub(super) fn end_batch(&self) {
        self.overlay().clear();
        self.read_cache().clear();
    }
}

/// A page of the database's rows with the batch's own writes (`buffered`) laid over
/// it: every buffered key the page covers (within the bounds, up to `upto`) is set or
/// deleted.
fn over(
    rows: Vec<(Vec<u8>, Vec<u8>)>,
    upto: Option<Vec<u8>>,
    buffered: Option<&BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    lo: &Bound<Vec<u8>>,
    hi: &Bound<Vec<u8>>,
    rev: bool,
) -> Page {
    let Some(buffered) = buffered else {
        return Page { rows, upto };
    };
    let (lo2, hi2) = match (&upto, rev) {
        (None, _) => (lo.clone(), hi.clone()),
        (Some(u), false) => (lo.clone(), Bound::Included(u.clone())),
        (Some(u), true) => (Bound::Included(u.clone()), hi.clone()),
    };
    let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = rows.into_iter().collect();
    for (k, v) in buffered {
        if within(k, &lo2, &hi2) {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
    }
    let rows: Vec<(Vec<u8>, Vec<u8>)> = if rev {
        merged.into_iter().rev().collect()
    } else {
        merged.into_iter().collect()
    };
    Page { rows, upto }
}

impl Backend for TxBackend {
    fn get(&self, tree: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.overlay().get(tree).and_then(|t| t.get(key)) {
            return Ok(v.clone());
        }
        if let Some(v) = self.read_cache().get(&(tree, key.to_vec())) {
            return Ok(v.clone());
        }
        let v = self.session().get(tree, key)?;
        self.read_cache().insert((tree, key.to_vec()), v.clone());
        Ok(v)
    }

    fn page(
        &self,
        tree: &'static str,
        lo: &Bound<Vec<u8>>,
        hi: &Bound<Vec<u8>>,
        rev: bool,
        limit: usize,
    ) -> Result<Page> {
        let rows = self.session().rows(tree, lo, hi, rev, limit)?;
        let upto = page_upto(&rows, limit);
        let overlay = self.overlay();
        Ok(over(rows, upto, overlay.get(tree), lo, hi, rev))
    }

    fn put(&self, tree: &'static str, key: &[u8], value: Option<Vec<u8>>) -> Result<()> {
        self.overlay()
            .entry(tree)
            .or_default()
            .insert(key.to_vec(), value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
        (k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    fn keys(p: &Page) -> Vec<String> {
        p.rows
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                )
            })
            .collect()
    }

    #[test]
    fn buffered_writes_are_laid_over_only_the_part_a_page_covers() {
        let mut buf = BTreeMap::new();
        buf.insert(b"b".to_vec(), None); // deleted
        buf.insert(b"c".to_vec(), Some(b"new".to_vec())); // replaced
        buf.insert(b"bb".to_vec(), Some(b"1".to_vec())); // added inside the page
        buf.insert(b"z".to_vec(), Some(b"2".to_vec())); // beyond the page: the next one
        let rows = vec![kv("a", "0"), kv("b", "0"), kv("c", "0")];
        let p = over(
            rows,
            Some(b"c".to_vec()),
            Some(&buf),
            &Bound::Unbounded,
            &Bound::Unbounded,
            false,
        );
        assert_eq!(keys(&p), ["a=0", "bb=1", "c=new"]);
        assert_eq!(p.upto.as_deref(), Some(&b"c"[..]));
        // The last page (no `upto`) takes everything buffered within the bounds.
        let p = over(
            vec![],
            None,
            Some(&buf),
            &Bound::Excluded(b"c".to_vec()),
            &Bound::Unbounded,
            false,
        );
        assert_eq!(keys(&p), ["z=2"]);
        // Descending, the page covers from `upto` up.
        let rows = vec![kv("c", "0"), kv("b", "0")];
        let p = over(
            rows,
            Some(b"b".to_vec()),
            Some(&buf),
            &Bound::Unbounded,
            &Bound::Excluded(b"d".to_vec()),
            true,
        );
        assert_eq!(keys(&p), ["c=new", "bb=1"]);
    }

    #[test]
    fn bounds_are_inclusive_or_exclusive_as_asked() {
        let (a, b) = (b"a".to_vec(), b"b".to_vec());
        assert!(within(b"a", &Bound::Included(a.clone()), &Bound::Unbounded));
        assert!(!within(
            b"a",
            &Bound::Excluded(a.clone()),
            &Bound::Unbounded
        ));
        assert!(within(b"b", &Bound::Unbounded, &Bound::Included(b.clone())));
        assert!(!within(
            b"b",
            &Bound::Unbounded,
            &Bound::Excluded(b.clone())
        ));
        assert!(within(b"ab", &Bound::Excluded(a), &Bound::Excluded(b)));
    }
}
