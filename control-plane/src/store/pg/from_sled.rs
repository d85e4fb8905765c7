//! Moving a store from sled to PostgreSQL (`leash-control-plane migrate --from-sled`),
//! and probing whether a PostgreSQL store answers (`leash-control-plane status`).
//!
//! The copy goes through the key-value layout both engines share: every key of every
//! sled tree becomes the row `(tree, key, value)` of `kv`, byte for byte; sealed records
//! are copied sealed, so the control planes on the new store need the same master key.
//! The whole copy is one transaction, taken under the writers' batch lock, and it is
//! refused when `kv` holds anything: a failed run leaves the database as it was, and a
//! second run after a good one is refused. Before committing, each tree is read back
//! from the database and its row count and checksum compared with sled's.

use std::path::{Path, PathBuf};

use futures::{pin_mut, TryStreamExt};
use ring::digest::{Context, SHA256};

use super::writer::BATCH_LOCK;
use super::{migrate, Session};
use crate::kinds::postgres::conn::{self, ConnSpec};
use crate::store::sled_store::TREE_NAMES;
use crate::store::StoreError;

/// Rows sent per INSERT.
const CHUNK: usize = 1000;

/// Why a migration did not happen (nothing was committed in each case).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// No sled database under the directory.
    #[error("no sled store in {0}: give the data directory of a control plane that ran on sled (it holds db/ and master.key)")]
    NoSledStore(PathBuf),
    /// sled could not open the directory (most often: a control plane still runs on it).
    #[error("cannot open the sled store in {dir}: {source} (stop the control plane that runs on it first)")]
    Sled {
        /// The data directory.
        dir: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// The target database holds store data already.
    #[error("the PostgreSQL store is not empty ({0} rows in kv): migrate only into a new database; nothing was copied")]
    NotEmpty(i64),
    /// The database failed or refused.
    #[error("{0}; nothing was copied (the copy is one transaction): fix the cause and run the migration again")]
    Database(String),
    /// A tree read back from the database differs from sled's.
    #[error("tree {tree}: sled has {sled_rows} rows ({sled_sum}), the database {pg_rows} ({pg_sum}); nothing was copied")]
    Mismatch {
        /// The tree.
        tree: &'static str,
        /// Rows in sled.
        sled_rows: u64,
        /// Checksum of sled's rows.
        sled_sum: String,
        /// Rows read back.
        pg_rows: u64,
        /// Checksum of the rows read back.
        pg_sum: String,
    },
}

impl From<StoreError> for MigrateError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Database(m) => MigrateError::Database(m),
            e => MigrateError::Database(e.to_string()),
        }
    }
}

/// What was copied of one tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeCopy {
    /// The tree's name.
    pub tree: &'static str,
    /// Its rows (the same in sled and in the database).
    pub rows: u64,
    /// SHA-256 over its rows in key order (see [`Sum`]), hex.
    pub sha256: String,
}

/// A checksum of a tree's rows in key order: each key and value with its length, so two
/// trees have the same sum only when they hold the same bytes under the same keys.
struct Sum {
    ctx: Context,
    rows: u64,
}

impl Sum {
    fn new() -> Sum {
        Sum {
            ctx: Context::new(&SHA256),
            rows: 0,
        }
    }

    fn add(&mut self, k: &[u8], v: &[u8]) {
        self.ctx.update(&(k.len() as u64).to_be_bytes());
        self.ctx.update(k);
        self.ctx.update(&(v.len() as u64).to_be_bytes());
        self.ctx.update(v);
        self.rows += 1;
    }

    fn finish(self) -> (u64, String) {
        (self.rows, hex::encode(self.ctx.finish().as_ref()))
    }
}

fn parse(url: &str) -> Result<ConnSpec, MigrateError> {
    conn::parse(url)
        .map_err(|e| MigrateError::Database(format!("the [store] URL is not usable: {e}")))
}

/// Copy the sled store of the data directory `dir` into the empty PostgreSQL store at
/// `url` (creating its schema), verifying each tree; see the module doc.
pub fn copy_sled_to_postgres(dir: &Path, url: &str) -> Result<Vec<TreeCopy>, MigrateError> {
    let path = dir.join("db");
    if !path.join("conf").is_file() {
        return Err(MigrateError::NoSledStore(dir.to_path_buf()));
    }
    let db = sled::Config::new()
        .path(&path)
        .open()
        .map_err(|source| MigrateError::Sled {
            dir: dir.to_path_buf(),
            source,
        })?;
    let spec = std::sync::Arc::new(parse(url)?);
    let mut schema = Session::new(spec.clone())?;
    migrate(&mut schema)?;
    drop(schema);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| MigrateError::Database(format!("cannot start a runtime: {e}")))?;
    rt.block_on(copy(dir, &db, &spec))
}

async fn copy(dir: &Path, db: &sled::Db, spec: &ConnSpec) -> Result<Vec<TreeCopy>, MigrateError> {
    let err = |e: tokio_postgres::Error| MigrateError::Database(spec.message(&e));
    let sled_err = |source| MigrateError::Sled {
        dir: dir.to_path_buf(),
        source,
    };
    let mut client = spec
        .connect()
        .await
        .map_err(|e| MigrateError::Database(e.to_string()))?;
    let tx = client.transaction().await.map_err(err)?;
    // No replica may write while the copy runs (a replica started on the database too
    // early would otherwise write keys the copy then overwrites).
    tx.execute(&format!("SELECT pg_advisory_xact_lock({BATCH_LOCK})"), &[])
        .await
        .map_err(err)?;
    let rows: i64 = tx
        .query_one("SELECT count(*) FROM kv", &[])
        .await
        .map_err(err)?
        .get(0);
    if rows > 0 {
        return Err(MigrateError::NotEmpty(rows));
    }
    let insert = tx
        .prepare(
            "INSERT INTO kv (tree, key, value) \
             SELECT $1, k, v FROM unnest($2::bytea[], $3::bytea[]) AS t(k, v)",
        )
        .await
        .map_err(err)?;
    let mut out = Vec::new();
    for name in TREE_NAMES {
        let tree = db.open_tree(name).map_err(sled_err)?;
        let mut sum = Sum::new();
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for kv in tree.iter() {
            let (k, v) = kv.map_err(sled_err)?;
            sum.add(&k, &v);
            keys.push(k.to_vec());
            values.push(v.to_vec());
            if keys.len() == CHUNK {
                tx.execute(&insert, &[&name, &keys, &values])
                    .await
                    .map_err(err)?;
                keys.clear();
                values.clear();
            }
        }
        if !keys.is_empty() {
            tx.execute(&insert, &[&name, &keys, &values])
                .await
                .map_err(err)?;
        }
        let (sled_rows, sled_sum) = sum.finish();
        // Read the tree back in key order (bytea orders bytewise, as sled does).
        let mut back = Sum::new();
        let stream = tx
            .query_raw(
                "SELECT key, value FROM kv WHERE tree = $1 ORDER BY key",
                [&name as &(dyn tokio_postgres::types::ToSql + Sync)],
            )
            .await
            .map_err(err)?;
        pin_mut!(stream);
        while let Some(row) = stream.try_next().await.map_err(err)? {
            let (k, v): (Vec<u8>, Vec<u8>) = (row.get(0), row.get(1));
            back.add(&k, &v);
        }
        let (pg_rows, pg_sum) = back.finish();
        if (pg_rows, &pg_sum) != (sled_rows, &sled_sum) {
            return Err(MigrateError::Mismatch {
                tree: name,
                sled_rows,
                sled_sum,
                pg_rows,
                pg_sum,
            });
        }
        out.push(TreeCopy {
            tree: name,
            rows: sled_rows,
            sha256: sled_sum,
        });
    }
    tx.commit().await.map_err(err)?;
    Ok(out)
}

/// Whether the PostgreSQL store at `url` answers a query; the error says why not (the
/// URL's password is never in it). Connects as the store does (see `Session`).
pub fn probe_postgres(url: &str) -> Result<(), String> {
    let spec = std::sync::Arc::new(parse(url).map_err(|e| e.to_string())?);
    let mut s = Session::new(spec).map_err(|e| e.to_string())?;
    s.run(|c| Box::pin(async move { c.simple_query("SELECT 1").await.map(|_| ()) }))
        .map_err(|e| match e {
            StoreError::Database(m) => m,
            e => e.to_string(),
        })
}
