//! Executable identity: the path and content hash of the file a process runs, as the
//! `unix:path:` and `unix:sha256:` selectors name it, with a cache of hashes keyed by
//! what identifies the file's contents.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::procfs::proc_path;

/// Default for `AttestorConfig::max_hash_bytes`: 256 MiB, larger than any interpreter
/// binary, small enough that one caller cannot make the agent read gigabytes per request.
pub const DEFAULT_MAX_HASH_BYTES: u64 = 256 * 1024 * 1024;

/// Hashes remembered; past this the cache starts over. A host runs far fewer distinct
/// executables, so this only bounds memory against a caller that keeps rebuilding its
/// binary.
const HASH_CACHE_MAX: usize = 4096;

/// Device and inode: what identifies a file (or a namespace) regardless of its path.
pub(super) type FileId = (u64, u64);

/// What must be unchanged for a cached hash to still describe the file. ctime is the one
/// timestamp a file's owner cannot set back, so a rewrite that restores size and mtime
/// still misses the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct HashKey {
    pub(super) dev: u64,
    pub(super) ino: u64,
    size: u64,
    mtime: (i64, i64),
    pub(super) ctime: (i64, i64),
}

impl HashKey {
    pub(super) fn of_stat(st: &nix::sys::stat::FileStat) -> HashKey {
        HashKey {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }

    fn of(meta: &Metadata) -> HashKey {
        HashKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Executable facts for one process.
#[derive(Debug, Default)]
pub(super) struct ExeFacts {
    pub(super) path: Option<String>,
    pub(super) sha256: Option<String>,
    /// The file these facts describe, as opened through `/proc/<pid>/exe`.
    pub(super) file: Option<HashKey>,
}

/// Reads and hashes executables, remembering the hashes.
#[derive(Debug)]
pub(super) struct Hasher {
    max_hash_bytes: u64,
    cache: Mutex<HashMap<HashKey, String>>,
    /// Executables hashed (cache misses); lets tests see the cache work.
    pub(super) hashes_computed: AtomicU64,
}

impl Hasher {
    pub(super) fn new(max_hash_bytes: u64) -> Hasher {
        Hasher {
            max_hash_bytes,
            cache: Mutex::new(HashMap::new()),
            hashes_computed: AtomicU64::new(0),
        }
    }

    /// Path and content hash of `/proc/<pid>/exe`. Never an error: a fact we cannot
    /// establish just yields fewer selectors, which can only match fewer workloads.
    pub(super) fn exe_facts(&self, pid: i32) -> ExeFacts {
        let link = proc_path(pid, "exe");
        let target = match std::fs::read_link(&link) {
            Ok(target) => target,
            Err(e) => {
                log_exe_error(pid, &link, &e);
                return ExeFacts::default();
            }
        };
        let path = target.to_str().map(str::to_owned);
        if path.as_deref().is_some_and(|p| p.ends_with(" (deleted)")) {
            // Replaced or removed since exec: the path now names a different file (or
            // none), so it would vouch for something that is not running.
            tracing::debug!(pid, "executable was deleted; no path or sha256 selectors");
            return ExeFacts::default();
        }
        // Hash what is running: through /proc/<pid>/exe, not the path, which anyone with
        // write access to the directory can point at another file.
        let mut file = match File::open(&link) {
            Ok(f) => f,
            Err(e) => {
                log_exe_error(pid, &link, &e);
                return ExeFacts::default();
            }
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                log_exe_error(pid, &link, &e);
                return ExeFacts::default();
            }
        };
        if meta.nlink() == 0 {
            // Deleted between readlink and open.
            return ExeFacts::default();
        }
        let sha256 = self.exe_sha256(pid, &mut file, &meta);
        ExeFacts {
            path,
            sha256,
            file: Some(HashKey::of(&meta)),
        }
    }

    fn exe_sha256(&self, pid: i32, file: &mut File, meta: &Metadata) -> Option<String> {
        if meta.size() > self.max_hash_bytes {
            tracing::debug!(
                pid,
                size = meta.size(),
                limit = self.max_hash_bytes,
                "executable too large to hash; no sha256 selector"
            );
            return None;
        }
        let key = HashKey::of(meta);
        if let Some(hex) = self.cache().get(&key) {
            return Some(hex.clone());
        }
        // Not under the lock: hashing a large binary must not stall every other request.
        let hex = match hash_at_most(file, self.max_hash_bytes) {
            Ok(Some(hex)) => hex,
            Ok(None) => {
                tracing::debug!(
                    pid,
                    "executable grew past the hash limit; no sha256 selector"
                );
                return None;
            }
            Err(e) => {
                tracing::debug!(pid, error = %e, "could not hash executable; no sha256 selector");
                return None;
            }
        };
        self.hashes_computed.fetch_add(1, Ordering::Relaxed);
        // Changed while we read it: the hash may mix old and new contents.
        if file.metadata().map(|m| HashKey::of(&m)).ok() != Some(key) {
            tracing::debug!(
                pid,
                "executable changed while being hashed; no sha256 selector"
            );
            return None;
        }
        let mut cache = self.cache();
        if cache.len() >= HASH_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, hex.clone());
        Some(hex)
    }

    pub(super) fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<HashKey, String>> {
        // The map holds only finished hashes, so a panic elsewhere cannot leave it
        // half-updated; keep serving rather than propagate the poison.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn log_exe_error(pid: i32, link: &str, e: &io::Error) {
    if e.kind() == io::ErrorKind::PermissionDenied {
        tracing::warn!(pid, path = link, error = %e, "cannot inspect caller's executable; run leash-agentd as root for path and sha256 selectors");
    } else {
        // Typically a kernel thread or a process that is exiting.
        tracing::debug!(pid, path = link, error = %e, "no executable; no path or sha256 selectors");
    }
}

/// Hex SHA-256 of the file, or `None` if it is longer than `limit` bytes.
pub(super) fn hash_at_most(file: &mut File, limit: u64) -> io::Result<Option<String>> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut reader = file.take(limit.saturating_add(1));
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += n as u64;
        if total > limit {
            return Ok(None);
        }
        ctx.update(&buf[..n]);
    }
    Ok(Some(hex::encode(ctx.finish())))
}

/// Device and inode of the file `/proc/<pid>/exe` points to.
pub(super) fn exe_file_id(pid: i32) -> Option<FileId> {
    std::fs::metadata(proc_path(pid, "exe"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}
