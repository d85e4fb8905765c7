//! Backup files of a sled store (`leash-control-plane backup` and `restore`): their
//! format, writing one safely, fetching one from a running control plane, and restoring
//! one into a data directory.
//!
//! The format (version 1), every integer big-endian:
//!
//! ```text
//! "LEASHBAK"  u32 version  u64 store sequence  i64 taken at (unix ms)  u32 tree count
//! per tree:   u16 name length, name, u64 row count,
//!             per row: u32 key length, key, u32 value length, value
//! SHA-256 of everything before it (32 bytes)
//! ```
//!
//! The snapshot behind it is consistent across trees (see `store/snapshot.rs`). Sealed
//! records (keys, secrets) are in it sealed, as the store holds them: the master key is
//! not in a backup, and a restored store opens only with the master key it ran with.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::digest::{digest, SHA256};

use crate::store::{self, SledDirError, Snapshot, SnapshotTree};

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"LEASHBAK";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of the trailing checksum.
const SUM_LEN: usize = 32;
/// Bytes a backup is streamed in over the admin socket.
pub const CHUNK_BYTES: usize = 1 << 20;

/// What the header of a backup says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u32,
    /// The store sequence at the snapshot.
    pub seq: u64,
    /// When it was taken (unix ms).
    pub taken_ms: i64,
}

/// Why a backup could not be made, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file is not a backup, was cut short, or was changed.
    #[error("{path} is not a usable backup: {why}; nothing was restored")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// Written by a newer version of the format.
    #[error("{path} is a backup of format version {found}; this control plane reads version {VERSION}: restore it with the version that wrote it")]
    Version {
        /// The file.
        path: String,
        /// Its version.
        found: u32,
    },
    /// The backup file exists and `--force` was not given.
    #[error("{0} exists: choose another file, or give --force to replace it")]
    Exists(String),
    /// The target holds a store and `--force` was not given.
    #[error("{0} holds a store already: restore into an empty data directory, or give --force to replace it (the current store is kept beside it)")]
    NotEmpty(String),
    /// A control plane runs on the store.
    #[error("{0}")]
    InUse(String),
    /// The store is kept in PostgreSQL.
    #[error("this control plane keeps its store in PostgreSQL: back it up with pg_dump and restore it with pg_restore (see docs/HA.md, \"Backup and restore\")")]
    Postgres,
    /// The running control plane could not be reached or failed.
    #[error("{0}")]
    Unavailable(String),
    /// The running control plane refused the caller.
    #[error("{0}")]
    Denied(String),
    /// The running control plane refused the request.
    #[error("{0}")]
    Refused(String),
    /// Reading or writing a file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The sled store could not be read or written.
    #[error(transparent)]
    Sled(SledDirError),
}

impl From<SledDirError> for BackupError {
    fn from(e: SledDirError) -> Self {
        match e {
            SledDirError::InUse(d) => {
                BackupError::InUse(format!("a control plane runs on the sled store in {d}"))
            }
            e => BackupError::Sled(e),
        }
    }
}

impl BackupError {
    /// The exit code of the command (docs/CLI.md): 2 denied, 5 unavailable, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            BackupError::Denied(_) => 2,
            BackupError::Unavailable(_) => 5,
            _ => 1,
        }
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.display().to_string();
    move |source| BackupError::Io { what, path, source }
}

/// The backup file of `snap`, taken at `taken_ms`, checksum included.
pub fn encode(snap: &Snapshot, taken_ms: i64) -> Vec<u8> {
    let size: usize = snap
        .trees
        .iter()
        .map(|t| {
            10 + t.name.len()
                + t.rows
                    .iter()
                    .map(|(k, v)| 8 + k.len() + v.len())
                    .sum::<usize>()
        })
        .sum();
    let mut out = Vec::with_capacity(32 + size + SUM_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&snap.seq.to_be_bytes());
    out.extend_from_slice(&taken_ms.to_be_bytes());
    out.extend_from_slice(&(snap.trees.len() as u32).to_be_bytes());
    for t in &snap.trees {
        out.extend_from_slice(&(t.name.len() as u16).to_be_bytes());
        out.extend_from_slice(t.name.as_bytes());
        out.extend_from_slice(&(t.rows.len() as u64).to_be_bytes());
        for (k, v) in &t.rows {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
    }
    let sum = digest(&SHA256, &out);
    out.extend_from_slice(sum.as_ref());
    out
}

/// Reads the body of a backup, refusing any length that runs past its end.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.b.len() - self.at < n {
            return Err(format!(
                "{what} runs past the end of the data (at byte {})",
                self.at
            ));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
}

/// The header and snapshot of the backup `bytes` (read from `path`, named in errors),
/// once its checksum and version are checked.
pub fn decode(path: &str, bytes: &[u8]) -> Result<(Header, Snapshot), BackupError> {
    let corrupt = |why: String| BackupError::Corrupt {
        path: path.to_string(),
        why,
    };
    if bytes.len() < MAGIC.len() + 4 + SUM_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt(
            "it does not start as a Leash backup does (too short or another kind of file)".into(),
        ));
    }
    let (body, sum) = bytes.split_at(bytes.len() - SUM_LEN);
    let version = u32::from_be_bytes([body[8], body[9], body[10], body[11]]);
    if digest(&SHA256, body).as_ref() != sum {
        return Err(corrupt(
            "its SHA-256 does not match its contents (it was changed or cut short)".into(),
        ));
    }
    if version != VERSION {
        return Err(BackupError::Version {
            path: path.to_string(),
            found: version,
        });
    }
    let mut r = Reader {
        b: body,
        at: MAGIC.len() + 4,
    };
    let parse = |r: &mut Reader<'_>| -> Result<(Header, Snapshot), String> {
        let seq = u64::from_be_bytes(r.array("the sequence")?);
        let taken_ms = i64::from_be_bytes(r.array("the time")?);
        let n = u32::from_be_bytes(r.array("the tree count")?);
        let mut trees = Vec::new();
        for _ in 0..n {
            let len = u16::from_be_bytes(r.array("a tree name's length")?);
            let name = std::str::from_utf8(r.take(usize::from(len), "a tree name")?)
                .map_err(|_| "a tree name is not UTF-8".to_string())?
                .to_string();
            let rows_n = u64::from_be_bytes(r.array("a row count")?);
            let mut rows = Vec::new();
            for _ in 0..rows_n {
                let kl = u32::from_be_bytes(r.array("a key length")?) as usize;
                let k = r.take(kl, "a key")?.to_vec();
                let vl = u32::from_be_bytes(r.array("a value length")?) as usize;
                let v = r.take(vl, "a value")?.to_vec();
                rows.push((k, v));
            }
            trees.push(SnapshotTree { name, rows });
        }
        if r.at != r.b.len() {
            return Err(format!("{} bytes follow the last tree", r.b.len() - r.at));
        }
        Ok((
            Header {
                version,
                seq,
                taken_ms,
            },
            Snapshot { seq, trees },
        ))
    };
    parse(&mut r).map_err(corrupt)
}

/// Write `bytes` to `path`: refused when it exists unless `force`; written to
/// `<path>.tmp` with mode 0600, synced, then renamed into place (and the directory
/// synced), so `path` is either absent, the old file, or the whole new one.
pub fn write_file(path: &Path, bytes: &[u8], force: bool) -> Result<(), BackupError> {
    if !force && path.symlink_metadata().is_ok() {
        return Err(BackupError::Exists(path.display().to_string()));
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // Left by an interrupted run: it never was a backup.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("cannot create", &tmp))?;
    let done = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io("cannot write", &tmp))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io("cannot rename into", path)));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(path);
    Ok(())
}

/// Sync the directory holding `path`, so a rename in it is durable (best effort).
fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A backup file of the stopped control plane whose data directory is `data_dir`.
pub fn from_stopped(data_dir: &Path, taken_ms: i64) -> Result<(u64, Vec<u8>), BackupError> {
    let snap = store::read_sled_dir(data_dir)?;
    Ok((snap.seq, encode(&snap, taken_ms)))
}

/// A backup file from the control plane answering on the admin socket `socket`
/// (checked whole before it is returned).
pub async fn from_running(socket: &Path) -> Result<(u64, Vec<u8>), BackupError> {
    use leash_proto::reason::Reason;
    use leash_proto::v1;
    let channel = leash_proto::uds::connect(socket)
        .await
        .map_err(|e| BackupError::Unavailable(format!("{e} (is the control plane running?)")))?;
    let mut client =
        v1::admin_client::AdminClient::new(channel).max_decoding_message_size(CHUNK_BYTES * 2);
    let status = |s: tonic::Status| {
        let m = s.message().to_string();
        match Reason::of(&s) {
            Reason::Denied => BackupError::Denied(m),
            Reason::Invalid => BackupError::Refused(m),
            _ => BackupError::Unavailable(m),
        }
    };
    let mut stream = client
        .backup(v1::BackupRequest {})
        .await
        .map_err(status)?
        .into_inner();
    let mut bytes = Vec::new();
    let mut seq = 0;
    let mut total = None;
    while let Some(c) = stream.message().await.map_err(status)? {
        if total.is_none() {
            seq = c.seq;
            total = Some(c.total_bytes);
            bytes.reserve(usize::try_from(c.total_bytes).unwrap_or(0));
        }
        bytes.extend_from_slice(&c.data);
    }
    if total != Some(bytes.len() as u64) {
        return Err(BackupError::Unavailable(format!(
            "the control plane's backup stream ended after {} of {} bytes: run the backup again",
            bytes.len(),
            total.unwrap_or(0)
        )));
    }
    decode("the backup received", &bytes)?;
    Ok((seq, bytes))
}

/// What a restore wrote.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The backup's header.
    pub header: Header,
    /// Rows per tree, in the store's order.
    pub trees: Vec<(String, u64)>,
    /// Where the store that was replaced (`--force`) was moved to.
    pub replaced: Option<PathBuf>,
    /// Whether the data directory holds a master key file.
    pub master_key_present: bool,
}

impl Restored {
    /// Rows of tree `name`.
    pub fn rows_of(&self, name: &str) -> u64 {
        self.trees
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, r)| *r)
    }
}

/// Restore the backup `file` into the data directory `data_dir` (created when missing):
/// checked whole first; refused while a control plane runs on the directory, and when
/// it holds a store unless `force` (the old store is then moved to
/// `db.before-restore-<ms>` beside it); written to `db.restoring` and renamed to `db`.
pub fn restore(
    file: &Path,
    data_dir: &Path,
    force: bool,
    now_ms: i64,
) -> Result<Restored, BackupError> {
    let bytes = std::fs::read(file).map_err(io("cannot read", file))?;
    let (header, snap) = decode(&file.display().to_string(), &bytes)?;
    drop(bytes);
    store::check_not_in_use(data_dir).map_err(|e| match BackupError::from(e) {
        BackupError::InUse(m) => BackupError::InUse(format!(
            "{m}: stop it first (a store cannot be restored under a running control plane)"
        )),
        e => e,
    })?;
    let existing = store::sled_store_exists(data_dir);
    if existing && !force {
        return Err(BackupError::NotEmpty(data_dir.display().to_string()));
    }
    if !data_dir.exists() {
        std::fs::create_dir_all(data_dir).map_err(io("cannot create", data_dir))?;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("cannot set the mode of", data_dir))?;
    }
    let db = data_dir.join("db");
    let staging = data_dir.join("db.restoring");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io("cannot remove", &staging))?;
    }
    if let Err(e) = store::write_sled_dir(&staging, &snap) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e.into());
    }
    let replaced = if db.exists() {
        let aside = data_dir.join(format!("db.before-restore-{now_ms}"));
        std::fs::rename(&db, &aside).map_err(io("cannot move aside", &db))?;
        Some(aside)
    } else {
        None
    };
    std::fs::rename(&staging, &db).map_err(io("cannot rename into", &db))?;
    sync_dir(&db);
    Ok(Restored {
        header,
        trees: snap
            .trees
            .iter()
            .map(|t| (t.name.clone(), t.rows.len() as u64))
            .collect(),
        replaced,
        master_key_present: data_dir.join("master.key").is_file(),
    })
}

#[cfg(test)]
#[path = "backup_tests.rs"]
mod tests;
