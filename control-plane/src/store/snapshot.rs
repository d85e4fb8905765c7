//! Whole-store copies of a sled store, for `leash-control-plane backup` and `restore`
//! (the file format is in `backup.rs`).
//!
//! A running store is copied inside its writer thread, as one more job of a batch: no
//! other write runs while every tree is read, so the copy holds each batch whole or not
//! at all, across trees. The jobs of the same batch that ran before it are in the copy,
//! with the sequence and audit head they moved to, and the copy is handed out only once
//! that batch is durable. A stopped store is read straight from its directory, and a
//! copy is written back into a new sled directory. Sealed records are copied sealed:
//! nothing here reads or needs the master key.

use std::path::Path;

use super::chain::HEAD_KEY;
use super::codec::{be, enc, meta_u64};
use super::error::{Result, StoreError};
use super::kv::Tree;
use super::sled_store::{SledStore, Trees, TREE_NAMES};

/// Every key and value of one tree, in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotTree {
    /// The tree's name (one of the store's trees).
    pub name: String,
    /// Its rows, in key order.
    pub rows: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A consistent copy of every tree of a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The store's sequence number at the copy (the last committed change it holds).
    pub seq: u64,
    /// Every tree, in the store's order.
    pub trees: Vec<SnapshotTree>,
}

impl Snapshot {
    /// Rows in every tree.
    pub fn rows(&self) -> u64 {
        self.trees.iter().map(|t| t.rows.len() as u64).sum()
    }

    /// Rows in the tree `name` (0 when it is absent).
    pub fn rows_of(&self, name: &str) -> u64 {
        self.trees
            .iter()
            .find(|t| t.name == name)
            .map_or(0, |t| t.rows.len() as u64)
    }
}

/// Why a stopped store could not be read or a copy not written.
#[derive(Debug, thiserror::Error)]
pub enum SledDirError {
    /// A running control plane holds the sled lock.
    #[error("the sled store in {0} is in use: a control plane runs on it")]
    InUse(String),
    /// No sled database in the directory.
    #[error("no sled store in {0}")]
    Missing(String),
    /// sled failed.
    #[error("the sled store in {dir}: {source}")]
    Sled {
        /// The database directory.
        dir: String,
        /// sled's error.
        source: sled::Error,
    },
    /// The copy names a tree this build does not know.
    #[error("the backup holds a tree {0:?} that this control plane does not know: restore it with the version that wrote it")]
    UnknownTree(String),
}

/// Whether a sled database (`<data dir>/db`) exists under `data_dir`.
pub fn sled_store_exists(data_dir: &Path) -> bool {
    data_dir.join("db").join("conf").is_file()
}

fn open_err(db_dir: &Path, source: sled::Error) -> SledDirError {
    let dir = db_dir.display().to_string();
    // sled 0.34 reports its lock as an I/O error with this text (config.rs, try_lock).
    if source.to_string().contains("could not acquire lock") {
        SledDirError::InUse(dir)
    } else {
        SledDirError::Sled { dir, source }
    }
}

/// Rows written per sled batch by a restore.
const RESTORE_BATCH: usize = 10_000;

/// Open the sled database `db_dir` (fails with `InUse` while a control plane holds it).
/// With the store's bounded page cache: sled's default (1 GiB) made a restore of 100,000
/// leases take 2 GB of memory.
fn open_sled(db_dir: &Path) -> Result<sled::Db, SledDirError> {
    sled::Config::new()
        .path(db_dir)
        .cache_capacity(super::sled_store::CACHE_BYTES)
        .open()
        .map_err(|e| open_err(db_dir, e))
}

/// Check that no process holds the sled store of `data_dir` (nothing is changed).
pub fn check_not_in_use(data_dir: &Path) -> Result<(), SledDirError> {
    if !sled_store_exists(data_dir) {
        return Ok(());
    }
    open_sled(&data_dir.join("db")).map(drop)
}

/// Copy the store of a stopped control plane whose data directory is `data_dir`.
pub fn read_sled_dir(data_dir: &Path) -> Result<Snapshot, SledDirError> {
    let db_dir = data_dir.join("db");
    if !sled_store_exists(data_dir) {
        return Err(SledDirError::Missing(data_dir.display().to_string()));
    }
    let db = open_sled(&db_dir)?;
    let err = |source| SledDirError::Sled {
        dir: db_dir.display().to_string(),
        source,
    };
    // Only the trees that exist: opening one would create it in the stopped store.
    let names = db.tree_names();
    let mut trees = Vec::with_capacity(TREE_NAMES.len());
    for name in TREE_NAMES {
        if !names.iter().any(|n| n.as_ref() == name.as_bytes()) {
            continue;
        }
        let t = db.open_tree(name).map_err(err)?;
        let rows = t
            .iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(err)?;
        trees.push(SnapshotTree {
            name: name.to_string(),
            rows,
        });
    }
    let seq = meta_u64(&Tree::Sled(db.open_tree("meta").map_err(err)?), "seq").unwrap_or(0);
    Ok(Snapshot { seq, trees })
}

/// Write `snap` into a new sled database at `db_dir` (which must not exist), flushed
/// before it returns.
pub fn write_sled_dir(db_dir: &Path, snap: &Snapshot) -> Result<(), SledDirError> {
    if let Some(t) = snap
        .trees
        .iter()
        .find(|t| !TREE_NAMES.contains(&t.name.as_str()))
    {
        return Err(SledDirError::UnknownTree(t.name.clone()));
    }
    let err = |source| SledDirError::Sled {
        dir: db_dir.display().to_string(),
        source,
    };
    let db = open_sled(db_dir)?;
    for t in &snap.trees {
        let tree = db.open_tree(&t.name).map_err(err)?;
        for rows in t.rows.chunks(RESTORE_BATCH) {
            let mut batch = sled::Batch::default();
            for (k, v) in rows {
                batch.insert(k.as_slice(), v.as_slice());
            }
            tree.apply_batch(batch).map_err(err)?;
            // sled holds what is not flushed in memory: a flush per batch bounds that.
            db.flush().map_err(err)?;
        }
    }
    db.flush().map_err(err)?;
    Ok(())
}

impl SledStore {
    /// A consistent copy of every tree, taken inside the writer (see the module doc).
    /// Refused on PostgreSQL, whose backups are the database's own (`pg_dump`).
    pub(super) async fn take_snapshot(&self) -> Result<Snapshot> {
        if self.db.is_none() {
            return Err(StoreError::Refused(
                "this control plane keeps its store in PostgreSQL: back it up with pg_dump (see docs/HA.md, \"Backup and restore\")"
                    .into(),
            ));
        }
        self.write(|tx| {
            let mut trees = Vec::with_capacity(TREE_NAMES.len());
            for (name, tree) in TREE_NAMES.iter().zip(each(tx.t)) {
                let mut rows = Vec::new();
                for r in tree.iter() {
                    let (k, v) = r?;
                    rows.push((k.to_vec(), v.to_vec()));
                }
                if *name == "meta" {
                    // The writer writes these after the batch's jobs: put in what the
                    // jobs before this one moved them to.
                    set(&mut rows, b"seq", be(tx.seq).to_vec());
                    set(&mut rows, b"event_id", be(tx.event_id).to_vec());
                    set(&mut rows, HEAD_KEY.as_bytes(), enc(&tx.head));
                }
                trees.push(SnapshotTree {
                    name: name.to_string(),
                    rows,
                });
            }
            Ok(Snapshot { seq: tx.seq, trees })
        })
        .await
    }
}

/// Set `key` to `value` in rows sorted by key.
fn set(rows: &mut Vec<(Vec<u8>, Vec<u8>)>, key: &[u8], value: Vec<u8>) {
    match rows.binary_search_by(|(k, _)| k.as_slice().cmp(key)) {
        Ok(i) => rows[i].1 = value,
        Err(i) => rows.insert(i, (key.to_vec(), value)),
    }
}

/// Every tree, in the order of [`TREE_NAMES`].
fn each(t: &Trees) -> [&Tree; 22] {
    [
        &t.meta,
        &t.blobs,
        &t.workloads,
        &t.credentials,
        &t.hosts,
        &t.serials,
        &t.join_tokens,
        &t.leases,
        &t.active,
        &t.expiry,
        &t.log,
        &t.revocations,
        &t.events,
        &t.lease_events,
        &t.task_events,
        &t.approval_events,
        &t.approvals,
        &t.ended,
        &t.lease_ended,
        &t.secret_versions,
        &t.scheduled,
        &t.checkpoints,
    ]
}
