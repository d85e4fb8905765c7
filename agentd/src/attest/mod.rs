//! Workload attestation: who is on the other end of the agent's Unix socket.
//!
//! It owns the facts the agent observes about a caller and the selectors made from them
//! (`unix:uid:…`, `unix:user:…`, `unix:gid:…`, `unix:group:…`, `unix:path:…`,
//! `unix:sha256:…`). Identity comes only from here, never from anything the caller says.
//!
//! Two steps, on purpose:
//! - [`Peer::from_stream`] runs once per connection (as Parsec does) and travels with it. It
//!   reads `SO_PEERCRED` and *pins* the process with a pidfd, so the pid cannot silently
//!   come to mean another process later. With `SO_PEERPIDFD` (Linux ≥ 6.5) the kernel hands
//!   us the pidfd of the connecting process itself. Without it we `pidfd_open` the pid and
//!   remember its start time; that leaves a window between `connect` and our `pidfd_open`
//!   in which the peer could exit and its pid be reused, which only the newer kernel closes.
//! - [`Attestor::attest`] runs on every request (as a cheap re-check of the last one,
//!   [`Attestor::attest_quick`], while what it rested on holds), because ids, namespaces
//!   and even the executable can change during a connection's life. Everything it reads from
//!   `/proc/<pid>` is read by pid number, so it checks the pin before *and after* reading:
//!   if the pinned process still holds the pid afterwards, the facts were its own.
//!
//! The security boundary is the uid/gid: a set-id process (any of real, effective, saved,
//! fs ids differing from the socket credentials) is refused, and so is a process in another
//! pid or mount namespace (its `/proc` view and paths would not mean what ours do). Path and
//! sha256 add meaning for compiled programs only; for a script they name the interpreter.
//!
//! When the caller is the installed `leash` CLI (recognised by device and inode, recorded
//! at agent start), path and sha256 describe the CLI's *parent* — the script or program
//! that ran `leash get` — pinned the same way, and only if that parent runs with the same
//! ids; a privileged parent (sudo, a CI runner) never lends its identity to its child.
//!
//! The agent must run as root (or with `CAP_SYS_PTRACE`): the kernel only lets a process
//! read another user's `/proc/<pid>/exe` and `ns/*` with ptrace-level access.
//!
//! The parts: `peer.rs` pins the connecting process; `exe.rs` identifies the executable
//! it runs (path, content hash, the hash cache); `names.rs` resolves user and group names;
//! `attestation.rs` is the result and `error.rs` the failures. Everything read from
//! `/proc` comes through `crate::procfs`, which tasks share.

mod attestation;
mod error;
mod exe;
mod names;
mod peer;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use attestation::Attestation;
pub use error::AttestError;
pub use exe::DEFAULT_MAX_HASH_BYTES;
pub use peer::{Peer, PinMethod};

use crate::procfs::{self, proc_path, ProcError};
use crate::sys;
use exe::{ExeFacts, FileId, HashKey, Hasher};
use names::NameCache;
use peer::{Pin, ProcFiles, Remembered, EXE_RECHECK, REMEMBER_FOR};

/// Settings for [`Attestor::new`].
#[derive(Clone, Debug)]
pub struct AttestorConfig {
    /// Where the `leash` CLI is installed. Callers running one of these files are attested
    /// by their parent's executable. Paths that do not exist at startup are ignored.
    pub cli_paths: Vec<PathBuf>,
    /// Executables larger than this get no `unix:sha256` selector.
    pub max_hash_bytes: u64,
}

impl Default for AttestorConfig {
    fn default() -> Self {
        AttestorConfig {
            cli_paths: Vec::new(),
            max_hash_bytes: DEFAULT_MAX_HASH_BYTES,
        }
    }
}

/// Attests callers. Created once at agent start and shared by all connections.
#[derive(Debug)]
pub struct Attestor {
    /// Distinguishes attestors, so a peer's remembered attestation is reused only by the
    /// attestor (and so the CLI paths) that made it.
    id: u64,
    cli_ids: Vec<FileId>,
    pid_ns: FileId,
    mnt_ns: FileId,
    /// Executable paths and hashes.
    exes: Hasher,
    /// uid/gid -> name, briefly cached.
    names: NameCache,
}

impl Attestor {
    /// Records the installed CLI's device and inode and the agent's own pid and mount
    /// namespaces.
    ///
    /// The CLI is recorded now, not per request: a file swapped in later at the same path
    /// is not the CLI that was vetted at startup. After upgrading `leash`, restart the
    /// agent, or callers are attested as the CLI itself (fewer matches, never more).
    pub fn new(config: AttestorConfig) -> Result<Attestor, AttestError> {
        let mut cli_ids = Vec::new();
        for path in &config.cli_paths {
            match std::fs::metadata(path) {
                Ok(meta) => cli_ids.push((meta.dev(), meta.ino())),
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "leash CLI not installed here")
                }
            }
        }
        let ns = |name: &str| {
            let path = PathBuf::from(format!("/proc/self/ns/{name}"));
            std::fs::metadata(&path)
                .map(|m| (m.dev(), m.ino()))
                .map_err(|source| AttestError::Init { path, source })
        };
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Ok(Attestor {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            cli_ids,
            pid_ns: ns("pid")?,
            mnt_ns: ns("mnt")?,
            exes: Hasher::new(config.max_hash_bytes),
            names: NameCache::default(),
        })
    }

    /// Attests `peer` as it is now. Call on every request.
    ///
    /// Blocking: it reads `/proc`, may hash an executable and may resolve user and group
    /// names through NSS. Call it from a blocking-capable context, or try
    /// [`Attestor::attest_quick`] first.
    pub fn attest(&self, peer: &Peer) -> Result<Arc<Attestation>, AttestError> {
        match self.attest_quick(peer) {
            Some(a) => Ok(a),
            None => self.attest_fully(peer),
        }
    }

    /// The attestation of an earlier request on the same connection, if nothing it rested
    /// on has changed: the pinned process has not been reaped (the pidfd and its `/proc`
    /// directory, both bound to it, still answer), its real, effective, saved and fs uids
    /// and gids are the same (`PIDFD_GET_INFO` on Linux ≥ 6.13, else `status`, which also
    /// gives the supplementary groups and the zombie state), it runs the same executable
    /// file (device, inode, size, mtime, ctime, still linked), it is still in the agent's
    /// mount namespace, and the earlier attestation is less than a second old. `None`
    /// means "attest fully": it never decides a refusal.
    ///
    /// Three system calls (the ioctl or a `pread`, two `fstatat`), no hashing and no
    /// name lookups, so it may run on an async worker thread. Callers that went through
    /// the `leash` CLI are always attested fully (their path and sha256 come from the
    /// parent).
    pub fn attest_quick(&self, peer: &Peer) -> Option<Arc<Attestation>> {
        let r = peer
            .inner
            .remembered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        if r.attestor != self.id || r.at.elapsed() >= REMEMBER_FOR {
            return None;
        }
        use nix::sys::stat::fstatat;
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;

        let files = peer
            .inner
            .files
            .get_or_init(|| ProcFiles::open(peer.pid(), peer.pidfd()))
            .as_ref()?;
        // The ids, from the kernel's record through the pin where it offers them, else
        // from `status`. Both are bound to the pinned process and fail once it is reaped.
        match &files.status {
            None => {
                let creds = sys::pidfd_creds(peer.pidfd()).ok()??;
                if creds.uids != r.uids || creds.gids != r.gids {
                    return None;
                }
            }
            Some(file) => {
                let mut buf = [0u8; 4096];
                let n = file.read_at(&mut buf, 0).ok()?;
                if n == 0 || n == buf.len() {
                    // Empty, or possibly cut short (a very long Groups: line).
                    return None;
                }
                let status = procfs::parse_status(&String::from_utf8_lossy(&buf[..n])).ok()?;
                if status.is_dead()
                    || status.uids != r.uids
                    || status.gids != r.gids
                    || status.groups != r.groups
                {
                    return None;
                }
            }
        }
        // The executable and the namespace: path lookups in /proc, which cost far more
        // than the ids on a busy agent, so re-checked every EXE_RECHECK rather than on
        // every request of a kept connection.
        let mut checked = r.exe_checked.lock().unwrap_or_else(|p| p.into_inner());
        if checked.elapsed() >= EXE_RECHECK {
            let dir = Some(files.dir.as_raw_fd());
            let exe = fstatat(dir, "exe", nix::fcntl::AtFlags::empty()).ok()?;
            if exe.st_nlink == 0
                || HashKey::of_stat(&exe) != r.exe
                || self.cli_ids.contains(&(exe.st_dev, exe.st_ino))
            {
                return None;
            }
            let mnt = fstatat(dir, "ns/mnt", nix::fcntl::AtFlags::empty()).ok()?;
            if (mnt.st_dev, mnt.st_ino) != self.mnt_ns {
                return None;
            }
            *checked = std::time::Instant::now();
        }
        Some(r.attestation.clone())
    }

    /// Attests `peer` from scratch (and remembers it for [`Attestor::attest_quick`]).
    /// Blocking, like [`Attestor::attest`].
    pub fn attest_fully(&self, peer: &Peer) -> Result<Arc<Attestation>, AttestError> {
        let pid = peer.pid();
        let pin = &peer.inner.pin;
        // Before reading: if the pid already names another process, /proc/<pid> is theirs.
        pin.ensure_same()?;

        let status = procfs::read_status(pid)?;
        if status.is_dead() {
            return Err(AttestError::PeerGone { pid });
        }
        check_ids(pid, &status, peer.uid(), peer.gid())?;
        self.check_namespaces(pid)?;
        let stat = procfs::read_stat(pid)?;

        let via_cli = exe::exe_file_id(pid).is_some_and(|id| self.cli_ids.contains(&id));
        let exe = if via_cli {
            self.parent_exe(peer, stat.ppid)
        } else {
            self.exes.exe_facts(pid)
        };

        // After reading: all of the above was read by pid number, and describes the pinned
        // process only if that process still holds the number now.
        pin.ensure_same()?;

        let uid = peer.uid();
        let gid = peer.gid();
        let user = self.names.user(uid);
        let mut selectors = BTreeSet::new();
        selectors.insert(format!("unix:uid:{uid}"));
        if let Some(name) = &user {
            selectors.insert(format!("unix:user:{name}"));
        }
        // The primary gid and every supplementary group: a workload selecting a group
        // matches members however they got it.
        for g in std::iter::once(gid).chain(status.groups.iter().copied()) {
            selectors.insert(format!("unix:gid:{g}"));
            if let Some(group) = self.names.group(g) {
                selectors.insert(format!("unix:group:{group}"));
            }
        }
        if let Some(path) = &exe.path {
            selectors.insert(format!("unix:path:{path}"));
        }
        if let Some(sha) = &exe.sha256 {
            selectors.insert(format!("unix:sha256:{sha}"));
        }

        let attestation = Arc::new(Attestation {
            pid: pid.unsigned_abs(),
            uid,
            gid,
            user,
            exe_path: exe.path,
            exe_sha256: exe.sha256,
            via_cli,
            selectors,
        });
        // Reusable only when the selectors came from the peer's own executable.
        let remembered = match (via_cli, exe.file) {
            (false, Some(file)) => Some(Arc::new(Remembered {
                attestor: self.id,
                at: std::time::Instant::now(),
                exe_checked: Mutex::new(std::time::Instant::now()),
                uids: status.uids,
                gids: status.gids,
                groups: status.groups,
                exe: file,
                attestation: attestation.clone(),
            })),
            _ => None,
        };
        *peer
            .inner
            .remembered
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = remembered;
        Ok(attestation)
    }

    fn check_namespaces(&self, pid: i32) -> Result<(), AttestError> {
        for (file, kind, ours) in [
            ("ns/pid", "pid", self.pid_ns),
            ("ns/mnt", "mount", self.mnt_ns),
        ] {
            let path = proc_path(pid, file);
            let meta = std::fs::metadata(&path)
                .map_err(|e| AttestError::from(ProcError::io(pid, path, e)))?;
            if (meta.dev(), meta.ino()) != ours {
                return Err(AttestError::Namespace { pid, kind });
            }
        }
        Ok(())
    }

    /// Path and hash of the CLI's parent, or nothing if the parent does not qualify. The
    /// reason is logged at debug: the request itself may still match on uid/gid.
    fn parent_exe(&self, peer: &Peer, ppid: i32) -> ExeFacts {
        match self.try_parent_exe(peer, ppid) {
            Ok(facts) => facts,
            Err(e) => {
                tracing::debug!(pid = peer.pid(), ppid, error = %e, "no path selectors: the CLI's parent does not qualify");
                ExeFacts::default()
            }
        }
    }

    fn try_parent_exe(&self, peer: &Peer, ppid: i32) -> Result<ExeFacts, AttestError> {
        if ppid <= 0 {
            // The parent lives outside our pid namespace.
            return Err(AttestError::Namespace {
                pid: ppid,
                kind: "pid",
            });
        }
        let parent = Pin::open(ppid)?;
        // We read ppid before pinning, so the pid may already have been reused. Two checks
        // rule that out: a parent never starts after its child, and had the real parent
        // exited, the peer would have been re-parented and show a different ppid now.
        if parent.start_time > peer.start_time() || procfs::read_stat(peer.pid())?.ppid != ppid {
            return Err(AttestError::PeerGone { pid: ppid });
        }
        let status = procfs::read_status(ppid)?;
        if status.is_dead() {
            return Err(AttestError::PeerGone { pid: ppid });
        }
        // Compared with the peer's socket ids, which the peer's own /proc ids already
        // equal: a parent running as anyone else (sudo, a runner) lends nothing.
        check_ids(ppid, &status, peer.uid(), peer.gid())?;
        self.check_namespaces(ppid)?;
        let facts = self.exes.exe_facts(ppid);
        parent.ensure_same()?;
        Ok(facts)
    }
}

/// Refuses a process whose real, effective, saved or fs uid/gid differs from the socket
/// credentials. A set-uid program connects with one identity and keeps another within
/// reach (it can switch back); neither may borrow the other's credentials.
fn check_ids(pid: i32, status: &procfs::Status, uid: u32, gid: u32) -> Result<(), AttestError> {
    if status.uids.iter().all(|&u| u == uid) && status.gids.iter().all(|&g| g == gid) {
        Ok(())
    } else {
        Err(AttestError::IdMismatch {
            pid,
            uid,
            gid,
            status_uids: status.uids,
            status_gids: status.gids,
        })
    }
}
