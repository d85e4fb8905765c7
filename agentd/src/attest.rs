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
//! - [`Attestor::attest`] runs on every request, because ids, namespaces and even the
//!   executable can change during a connection's life. Everything it reads from
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

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Gid, Group, Uid, User};

use crate::sys;

/// Default for [`AttestorConfig::max_hash_bytes`]: 256 MiB, larger than any interpreter
/// binary, small enough that one caller cannot make the agent read gigabytes per request.
pub const DEFAULT_MAX_HASH_BYTES: u64 = 256 * 1024 * 1024;

/// Hashes remembered; past this the cache starts over. A host runs far fewer distinct
/// executables, so this only bounds memory against a caller that keeps rebuilding its
/// binary.
const HASH_CACHE_MAX: usize = 4096;

/// Longest parent chain [`Attestor::is_ancestor_or_self`] walks (pid_max is 2^22, but real
/// process trees are a few dozen deep; the bound only guarantees termination).
const MAX_ANCESTRY_DEPTH: usize = 4096;

/// Errors from attesting a caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// `SO_PEERCRED` could not be read, so the caller has no identity.
    #[error(
        "could not read the caller's credentials from the socket (SO_PEERCRED): {0}; \
         callers must connect over the agent's Unix stream socket"
    )]
    PeerCredentials(#[source] io::Error),

    /// The calling process could not be pinned with a pidfd.
    #[error(
        "could not pin calling process {pid} with a pidfd: {source}; \
         leash-agentd needs Linux 5.3 or later (6.5 or later for SO_PEERPIDFD)"
    )]
    Pin {
        /// Pid of the caller.
        pid: i32,
        /// What the kernel answered.
        #[source]
        source: io::Error,
    },

    /// The process exited, or its pid now belongs to another process, so the facts read
    /// about it cannot be trusted.
    #[error(
        "calling process {pid} exited or its pid was reused during attestation; \
         retry from a process that stays alive until it has its answer"
    )]
    PeerGone {
        /// The pid that no longer names the pinned process.
        pid: i32,
    },

    /// The socket credentials differ from the process's real, effective, saved or fs ids:
    /// a set-id program, or ids changed after connecting.
    #[error(
        "calling process {pid} connected as uid {uid} gid {gid}, but its real/effective/\
         saved/fs ids are now uid {status_uids:?} gid {status_gids:?}; set-id programs are \
         refused — run the caller with a single uid and gid"
    )]
    IdMismatch {
        /// Pid of the caller.
        pid: i32,
        /// Uid from `SO_PEERCRED`.
        uid: u32,
        /// Gid from `SO_PEERCRED`.
        gid: u32,
        /// Real, effective, saved and fs uid from `/proc/<pid>/status`.
        status_uids: [u32; 4],
        /// Real, effective, saved and fs gid from `/proc/<pid>/status`.
        status_gids: [u32; 4],
    },

    /// The caller is in another pid or mount namespace than the agent (for example in a
    /// container), where its pids and paths do not mean what they mean to the agent.
    #[error(
        "calling process {pid} is in a different {kind} namespace from leash-agentd; \
         run the caller in the agent's namespaces, or run an agent inside the container"
    )]
    Namespace {
        /// Pid of the caller (0 when it is not visible in the agent's pid namespace).
        pid: i32,
        /// `"pid"` or `"mount"`.
        kind: &'static str,
    },

    /// A `/proc` file could not be read.
    #[error(
        "could not read {path}: {source}; leash-agentd must run as root \
         (or with CAP_SYS_PTRACE) to inspect its callers"
    )]
    Proc {
        /// The file.
        path: String,
        /// What the kernel answered.
        #[source]
        source: io::Error,
    },

    /// A `/proc` file did not have the expected format.
    #[error(
        "unexpected contents in {path}: {detail}; this kernel's /proc format is not \
         supported — please report it with your kernel version"
    )]
    Malformed {
        /// The file.
        path: String,
        /// What was wrong.
        detail: String,
    },

    /// The attestor could not record its own namespaces at startup.
    #[error(
        "could not read {path} while starting the attestor: {source}; \
         check that /proc is mounted and readable by leash-agentd"
    )]
    Init {
        /// The file.
        path: PathBuf,
        /// What the kernel answered.
        #[source]
        source: io::Error,
    },
}

/// How a [`Peer`] was pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PinMethod {
    /// `SO_PEERPIDFD`: the kernel's own record of the connecting process.
    PeerPidfd,
    /// `pidfd_open(pid)` plus a start-time check (kernels before 6.5).
    PidfdOpen,
}

/// A process held by pidfd, plus the start time that identifies it among all processes
/// that ever had its pid.
#[derive(Debug)]
struct Pin {
    pid: i32,
    pidfd: OwnedFd,
    start_time: u64,
}

impl Pin {
    /// Pins `pid` now. The caller must still prove it is the process it meant (see
    /// `parent_exe`), since the pid may already have been reused.
    fn open(pid: i32) -> Result<Pin, AttestError> {
        let pidfd = sys::pidfd_open(pid).map_err(|source| match source.raw_os_error() {
            Some(libc::ESRCH) => AttestError::PeerGone { pid },
            _ => AttestError::Pin { pid, source },
        })?;
        Pin::with_pidfd(pid, pidfd)
    }

    fn with_pidfd(pid: i32, pidfd: OwnedFd) -> Result<Pin, AttestError> {
        // Read by number, then confirm the pidfd still holds that number: only then is the
        // start time the pinned process's own.
        let start_time = read_stat(pid)?.start_time;
        let pin = Pin {
            pid,
            pidfd,
            start_time,
        };
        pin.ensure_same()?;
        Ok(pin)
    }

    /// Fails with [`AttestError::PeerGone`] unless the pinned process is alive, still has
    /// its pid and still has its start time. The pidfd answer alone suffices on current
    /// kernels; the start time also covers kernels whose fdinfo does not show `-1` for an
    /// exited process.
    fn ensure_same(&self) -> Result<(), AttestError> {
        let pid = self.pid;
        match sys::pidfd_pid(self.pidfd.as_fd()) {
            Ok(Some(now)) if now == pid => {}
            Ok(_) => return Err(AttestError::PeerGone { pid }),
            Err(source) => return Err(AttestError::Pin { pid, source }),
        }
        match start_time(pid) {
            Some(t) if t == self.start_time => Ok(()),
            _ => Err(AttestError::PeerGone { pid }),
        }
    }
}

/// The process at the other end of a connection, pinned when the connection was accepted.
///
/// Cheap to clone (one `Arc`), `Send + Sync + 'static`, so it can ride in request
/// extensions. It holds the pidfd open for as long as any clone lives.
#[derive(Clone, Debug)]
pub struct Peer {
    inner: Arc<PeerInner>,
}

#[derive(Debug)]
struct PeerInner {
    pin: Pin,
    uid: u32,
    gid: u32,
    method: PinMethod,
    /// The last full attestation of this peer and what it rested on.
    remembered: Mutex<Option<Arc<Remembered>>>,
    /// Its `/proc` directory and status file, opened on the first reuse.
    files: std::sync::OnceLock<Option<ProcFiles>>,
}

/// A pinned process's `/proc/<pid>` directory, and its `status` file on kernels without
/// `PIDFD_GET_INFO`. Opened by number, but kept only if the process was still alive (not
/// reaped) afterwards, so they are its own; from then on they stay bound to it even if
/// its pid is reused, and reads through them fail once it is gone.
#[derive(Debug)]
struct ProcFiles {
    dir: File,
    status: Option<File>,
}

impl ProcFiles {
    fn open(pid: i32, pidfd: BorrowedFd<'_>) -> Option<ProcFiles> {
        let dir = File::open(format!("/proc/{pid}")).ok()?;
        let status = match sys::pidfd_creds(pidfd) {
            Ok(Some(_)) => None,
            _ => Some(File::open(proc_path(pid, "status")).ok()?),
        };
        alive(pidfd).then_some(ProcFiles { dir, status })
    }
}

/// Whether the process behind `pidfd` has not been reaped (zombies count as alive), so
/// its pid is still its own.
fn alive(pidfd: BorrowedFd<'_>) -> bool {
    match sys::pidfd_send_signal(pidfd, 0) {
        Ok(()) => true,
        // It exists; we just may not signal it.
        Err(e) => e.raw_os_error() == Some(libc::EPERM),
    }
}

/// A full attestation, kept so later requests on the same connection can reuse it after
/// checking that nothing it rested on has changed (see [`Attestor::attest_quick`]).
#[derive(Debug)]
struct Remembered {
    at: std::time::Instant,
    /// Real, effective, saved and fs uids and gids, and the supplementary groups.
    uids: [u32; 4],
    gids: [u32; 4],
    groups: Vec<u32>,
    /// The executable file the path and sha256 selectors describe.
    exe: HashKey,
    /// The [`Attestor`] that made it.
    attestor: u64,
    /// When `exe` and the mount namespace were last confirmed.
    exe_checked: Mutex<std::time::Instant>,
    attestation: Arc<Attestation>,
}

/// How often a reused attestation's executable and mount namespace are re-checked on a
/// kept connection (the ids are re-checked on every request).
const EXE_RECHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// How long a full attestation may be reused on one connection. It also bounds how long
/// a change of supplementary groups alone (which needs `CAP_SETGID`, and which
/// `PIDFD_GET_INFO` does not report) can go unseen.
const REMEMBER_FOR: std::time::Duration = std::time::Duration::from_secs(1);

impl Peer {
    /// Reads the credentials of the process that connected `fd` (a connected Unix stream
    /// socket) and pins that process. Call once per accepted connection.
    pub fn from_stream(fd: BorrowedFd<'_>) -> Result<Peer, AttestError> {
        Peer::pin_stream(fd, true)
    }

    /// `use_peer_pidfd: false` forces the pre-6.5 path, so tests can cover it.
    fn pin_stream(fd: BorrowedFd<'_>, use_peer_pidfd: bool) -> Result<Peer, AttestError> {
        let cred = getsockopt(&fd, PeerCredentials)
            .map_err(|e| AttestError::PeerCredentials(io::Error::from(e)))?;
        let pid = cred.pid();
        if pid <= 0 {
            // The kernel reports 0 for a peer whose pid namespace is not ours or a
            // descendant of ours: we could not even name it in /proc.
            return Err(AttestError::Namespace { pid, kind: "pid" });
        }
        let peer_pidfd = if use_peer_pidfd {
            sys::peer_pidfd(fd).map_err(|source| match source.raw_os_error() {
                // The connecting process has already exited.
                Some(libc::ESRCH) => AttestError::PeerGone { pid },
                _ => AttestError::Pin { pid, source },
            })?
        } else {
            None
        };
        let (pin, method) = match peer_pidfd {
            Some(pidfd) => (Pin::with_pidfd(pid, pidfd)?, PinMethod::PeerPidfd),
            None => (Pin::open(pid)?, PinMethod::PidfdOpen),
        };
        tracing::debug!(
            pid,
            uid = cred.uid(),
            gid = cred.gid(),
            ?method,
            "pinned peer"
        );
        Ok(Peer {
            inner: Arc::new(PeerInner {
                pin,
                uid: cred.uid(),
                gid: cred.gid(),
                method,
                remembered: Mutex::new(None),
                files: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Pid (in the agent's pid namespace) at connect time.
    pub fn pid(&self) -> i32 {
        self.inner.pin.pid
    }

    /// Effective uid at connect time (`SO_PEERCRED`).
    pub fn uid(&self) -> u32 {
        self.inner.uid
    }

    /// Effective gid at connect time (`SO_PEERCRED`).
    pub fn gid(&self) -> u32 {
        self.inner.gid
    }

    /// Start time of the process, in clock ticks after boot (field 22 of `/proc/<pid>/stat`).
    pub fn start_time(&self) -> u64 {
        self.inner.pin.start_time
    }

    /// The pidfd that pins the process (for `pidfd_send_signal` when a task ends).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.inner.pin.pidfd.as_fd()
    }

    /// How the process was pinned.
    pub fn pin_method(&self) -> PinMethod {
        self.inner.method
    }
}

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

/// Device and inode: what identifies a file (or a namespace) regardless of its path.
type FileId = (u64, u64);

/// What must be unchanged for a cached hash to still describe the file. ctime is the one
/// timestamp a file's owner cannot set back, so a rewrite that restores size and mtime
/// still misses the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct HashKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl HashKey {
    fn of_stat(st: &nix::sys::stat::FileStat) -> HashKey {
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

/// What was observed about a caller, and the selectors made from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attestation {
    /// Pid of the socket peer.
    pub pid: u32,
    /// Uid of the socket peer (equal to all of its real, effective, saved and fs uids).
    pub uid: u32,
    /// Gid of the socket peer (equal to all of its real, effective, saved and fs gids).
    pub gid: u32,
    /// User name of `uid`, when it resolves.
    pub user: Option<String>,
    /// The attested executable: the peer's, or its parent's when `via_cli`. `None` when it
    /// was deleted, unreadable, or (via the CLI) the parent did not qualify.
    pub exe_path: Option<String>,
    /// Hex SHA-256 of the attested executable's contents, under the same conditions as
    /// `exe_path`, and only up to the configured size limit.
    pub exe_sha256: Option<String>,
    /// The peer is the installed `leash` CLI, so path and sha256 describe its parent.
    pub via_cli: bool,
    /// All selectors, e.g. `unix:uid:1001`, `unix:path:/usr/bin/python3.11`.
    pub selectors: BTreeSet<String>,
}

impl Attestation {
    /// Whether every selector in `required` was observed.
    ///
    /// An empty `required` matches nothing: a workload without selectors is a
    /// configuration error (creation refuses it), and failing closed keeps such a record
    /// from matching every caller if one ever slips through.
    pub fn matches(&self, required: &[String]) -> bool {
        !required.is_empty() && required.iter().all(|s| self.selectors.contains(s))
    }
}

/// Executable facts for one process.
#[derive(Debug, Default)]
struct ExeFacts {
    path: Option<String>,
    sha256: Option<String>,
    /// The file these facts describe, as opened through `/proc/<pid>/exe`.
    file: Option<HashKey>,
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
    max_hash_bytes: u64,
    hash_cache: Mutex<HashMap<HashKey, String>>,
    /// Executables hashed (cache misses); lets tests see the cache work.
    hashes_computed: AtomicU64,
    /// uid/gid -> name, briefly cached.
    names: NameCache,
}

/// How long a resolved user or group name is reused. Resolving goes through NSS (files,
/// and possibly sssd or systemd-userdb sockets) and costs more than the rest of an
/// attestation; names of ids change rarely, and ids, not names, are the boundary.
const NAME_TTL: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Default)]
struct NameCache {
    users: Mutex<HashMap<u32, (Option<String>, std::time::Instant)>>,
    groups: Mutex<HashMap<u32, (Option<String>, std::time::Instant)>>,
}

impl NameCache {
    fn lookup(
        map: &Mutex<HashMap<u32, (Option<String>, std::time::Instant)>>,
        id: u32,
        resolve: impl FnOnce() -> Option<String>,
    ) -> Option<String> {
        if let Some((name, at)) = map.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            if at.elapsed() < NAME_TTL {
                return name.clone();
            }
        }
        let name = resolve();
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 4096 {
            m.clear();
        }
        m.insert(id, (name.clone(), std::time::Instant::now()));
        name
    }

    fn user(&self, uid: u32) -> Option<String> {
        Self::lookup(&self.users, uid, || {
            User::from_uid(Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|u| u.name)
        })
    }

    fn group(&self, gid: u32) -> Option<String> {
        Self::lookup(&self.groups, gid, || {
            Group::from_gid(Gid::from_raw(gid))
                .ok()
                .flatten()
                .map(|g| g.name)
        })
    }
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
            max_hash_bytes: config.max_hash_bytes,
            hash_cache: Mutex::new(HashMap::new()),
            hashes_computed: AtomicU64::new(0),
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
                let status = parse_status(&String::from_utf8_lossy(&buf[..n])).ok()?;
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

        let status = read_status(pid)?;
        if status.is_dead() {
            return Err(AttestError::PeerGone { pid });
        }
        check_ids(pid, &status, peer.uid(), peer.gid())?;
        self.check_namespaces(pid)?;
        let stat = read_stat(pid)?;

        let via_cli = exe_file_id(pid).is_some_and(|id| self.cli_ids.contains(&id));
        let exe = if via_cli {
            self.parent_exe(peer, stat.ppid)
        } else {
            self.exe_facts(pid)
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

    /// Whether `pid` is the process (`ancestor_pid`, `ancestor_start_time`) or one of its
    /// descendants, following parent links in `/proc`. The start time makes a reused
    /// ancestor pid fail rather than match.
    ///
    /// Re-parenting moves orphans to the nearest child subreaper; `leash exec` is one, so
    /// a task's double-forked helpers still count as inside it. Best effort against a
    /// tree that changes during the walk: pin `pid` first and re-check it afterwards.
    pub fn is_ancestor_or_self(
        &self,
        ancestor_pid: i32,
        ancestor_start_time: u64,
        pid: i32,
    ) -> bool {
        let mut current = pid;
        for _ in 0..MAX_ANCESTRY_DEPTH {
            let Ok(stat) = read_stat(current) else {
                return false;
            };
            if current == ancestor_pid {
                return stat.start_time == ancestor_start_time;
            }
            // A descendant never started before its ancestor, and parents are only older
            // than their children, so the walk can stop as soon as it passes that time.
            if stat.start_time < ancestor_start_time || stat.ppid <= 0 {
                return false;
            }
            current = stat.ppid;
        }
        false
    }

    fn check_namespaces(&self, pid: i32) -> Result<(), AttestError> {
        for (file, kind, ours) in [
            ("ns/pid", "pid", self.pid_ns),
            ("ns/mnt", "mount", self.mnt_ns),
        ] {
            let path = proc_path(pid, file);
            let meta = std::fs::metadata(&path).map_err(|e| proc_error(pid, path, e))?;
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
        if parent.start_time > peer.start_time() || read_stat(peer.pid())?.ppid != ppid {
            return Err(AttestError::PeerGone { pid: ppid });
        }
        let status = read_status(ppid)?;
        if status.is_dead() {
            return Err(AttestError::PeerGone { pid: ppid });
        }
        // Compared with the peer's socket ids, which the peer's own /proc ids already
        // equal: a parent running as anyone else (sudo, a runner) lends nothing.
        check_ids(ppid, &status, peer.uid(), peer.gid())?;
        self.check_namespaces(ppid)?;
        let facts = self.exe_facts(ppid);
        parent.ensure_same()?;
        Ok(facts)
    }

    /// Path and content hash of `/proc/<pid>/exe`. Never an error: a fact we cannot
    /// establish just yields fewer selectors, which can only match fewer workloads.
    fn exe_facts(&self, pid: i32) -> ExeFacts {
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

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<HashKey, String>> {
        // The map holds only finished hashes, so a panic elsewhere cannot leave it
        // half-updated; keep serving rather than propagate the poison.
        self.hash_cache.lock().unwrap_or_else(|e| e.into_inner())
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
fn hash_at_most(file: &mut File, limit: u64) -> io::Result<Option<String>> {
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
fn exe_file_id(pid: i32) -> Option<FileId> {
    std::fs::metadata(proc_path(pid, "exe"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Start time of `pid` in clock ticks after boot (field 22 of `/proc/<pid>/stat`), or
/// `None` if there is no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    read_stat(pid).ok().map(|s| s.start_time)
}

/// Parent pid and start time of `pid`, from `/proc/<pid>/stat` (for task tracking).
pub fn parent_and_start(pid: i32) -> Option<(i32, u64)> {
    if pid <= 0 {
        return None;
    }
    read_stat(pid).ok().map(|s| (s.ppid, s.start_time))
}

/// Real, effective, saved and fs uid of `pid`, from `/proc/<pid>/status` (for tasks:
/// who owns a task's root, and which of its processes the owner could signal).
pub fn process_uids(pid: i32) -> Option<[u32; 4]> {
    if pid <= 0 {
        return None;
    }
    read_status(pid).ok().map(|s| s.uids)
}

/// Reads a `/proc` file whole. `std::fs::read` sizes its buffer from the file's length,
/// which `/proc` reports as 0, and then probes with small reads: a dozen system calls for
/// `status`. A page-sized first read takes these files in one go.
fn read_proc_file(path: &str) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

fn proc_path(pid: i32, file: &str) -> String {
    format!("/proc/{pid}/{file}")
}

/// A missing `/proc/<pid>` means the process is gone, not that the agent is misconfigured.
fn proc_error(pid: i32, path: String, source: io::Error) -> AttestError {
    match source.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ESRCH) => AttestError::PeerGone { pid },
        _ => AttestError::Proc { path, source },
    }
}

/// The fields of `/proc/<pid>/stat` attestation uses.
#[derive(Debug, PartialEq, Eq)]
struct ProcStat {
    state: char,
    ppid: i32,
    start_time: u64,
}

fn read_stat(pid: i32) -> Result<ProcStat, AttestError> {
    let path = proc_path(pid, "stat");
    // Bytes, not a String: comm is whatever the process set with PR_SET_NAME, UTF-8 or not.
    let bytes = read_proc_file(&path).map_err(|e| proc_error(pid, path.clone(), e))?;
    parse_stat(&bytes).ok_or_else(|| AttestError::Malformed {
        path,
        detail: "expected `pid (comm) state ppid …` with at least 22 fields".to_owned(),
    })
}

/// Parses `/proc/<pid>/stat`. comm (field 2) may contain spaces and parentheses — a
/// process can name itself `x) R 1 (` — so fields are counted from the *last* `)`.
fn parse_stat(bytes: &[u8]) -> Option<ProcStat> {
    let close = bytes.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&bytes[close + 1..]).ok()?;
    // After the comm: field 3 (state) is index 0, field 4 (ppid) index 1, field 22
    // (starttime) index 19.
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let mut state = fields.first()?.chars();
    let state_char = state.next()?;
    if state.next().is_some() {
        return None;
    }
    Some(ProcStat {
        state: state_char,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The fields of `/proc/<pid>/status` attestation uses.
#[derive(Debug, PartialEq, Eq)]
struct ProcStatus {
    state: char,
    /// Real, effective, saved, fs.
    uids: [u32; 4],
    /// Real, effective, saved, fs.
    gids: [u32; 4],
    /// Supplementary groups.
    groups: Vec<u32>,
}

impl ProcStatus {
    /// Zombie or dead: the process can no longer make requests, and its pid is about to be
    /// freed.
    fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

fn read_status(pid: i32) -> Result<ProcStatus, AttestError> {
    let path = proc_path(pid, "status");
    let bytes = read_proc_file(&path).map_err(|e| proc_error(pid, path.clone(), e))?;
    parse_status(&String::from_utf8_lossy(&bytes))
        .map_err(|detail| AttestError::Malformed { path, detail })
}

/// Parses `/proc/<pid>/status`. The kernel escapes newlines in the `Name:` line, so a
/// process cannot forge a `Uid:` line; refusing duplicate keys keeps that true even if
/// some kernel did not.
fn parse_status(text: &str) -> Result<ProcStatus, String> {
    let mut state = None;
    let mut uids = None;
    let mut gids = None;
    let mut groups = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let slot_taken = match key {
            "State" => state
                .replace(
                    value
                        .trim_start()
                        .chars()
                        .next()
                        .ok_or("empty State: line")?,
                )
                .is_some(),
            "Uid" => uids
                .replace(parse_ids(value).ok_or("Uid: line is not four numbers")?)
                .is_some(),
            "Gid" => gids
                .replace(parse_ids(value).ok_or("Gid: line is not four numbers")?)
                .is_some(),
            "Groups" => groups
                .replace(
                    value
                        .split_ascii_whitespace()
                        .map(str::parse)
                        .collect::<Result<Vec<u32>, _>>()
                        .map_err(|_| "Groups: line is not a list of numbers")?,
                )
                .is_some(),
            _ => false,
        };
        if slot_taken {
            return Err(format!("duplicate {key}: line"));
        }
    }
    Ok(ProcStatus {
        state: state.ok_or("no State: line")?,
        uids: uids.ok_or("no Uid: line")?,
        gids: gids.ok_or("no Gid: line")?,
        groups: groups.ok_or("no Groups: line")?,
    })
}

fn parse_ids(value: &str) -> Option<[u32; 4]> {
    let mut ids = value.split_ascii_whitespace().map(str::parse::<u32>);
    let out = [
        ids.next()?.ok()?,
        ids.next()?.ok()?,
        ids.next()?.ok()?,
        ids.next()?.ok()?,
    ];
    ids.next().is_none().then_some(out)
}

/// Refuses a process whose real, effective, saved or fs uid/gid differs from the socket
/// credentials. A set-uid program connects with one identity and keeps another within
/// reach (it can switch back); neither may borrow the other's credentials.
fn check_ids(pid: i32, status: &ProcStatus, uid: u32, gid: u32) -> Result<(), AttestError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// Set for the copy of this test binary that `connect_child` starts.
    const CHILD_SOCKET_ENV: &str = "LEASH_ATTEST_TEST_CHILD_SOCKET";

    fn own_pid() -> i32 {
        std::process::id() as i32
    }

    fn own_exe() -> String {
        std::env::current_exe()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    }

    fn sha256_of(path: &str) -> String {
        hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            &std::fs::read(path).unwrap(),
        ))
    }

    fn attestor(cli_paths: Vec<PathBuf>) -> Attestor {
        Attestor::new(AttestorConfig {
            cli_paths,
            ..AttestorConfig::default()
        })
        .unwrap()
    }

    fn self_peer() -> (Peer, UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let peer = Peer::from_stream(a.as_fd()).unwrap();
        (peer, a, b)
    }

    fn assert_shareable<T: Clone + Send + Sync + 'static>() {}

    #[test]
    fn peer_and_attestor_are_shareable() {
        assert_shareable::<Peer>();
        fn sync<T: Send + Sync>() {}
        sync::<Attestor>();
    }

    /// Checks attest_quick against tampered copies of what it remembered. `via_status`
    /// forces the `/proc/<pid>/status` path (kernels without `PIDFD_GET_INFO`).
    fn check_reuse(via_status: bool) {
        let (peer, _a, _b) = self_peer();
        if via_status {
            let files = ProcFiles {
                dir: File::open(format!("/proc/{}", own_pid())).unwrap(),
                status: Some(File::open(proc_path(own_pid(), "status")).unwrap()),
            };
            peer.inner.files.set(Some(files)).unwrap();
        }
        let att = attestor(vec![]);
        let full = att.attest(&peer).unwrap();
        assert_eq!(att.attest_quick(&peer).as_ref(), Some(&full));
        let original = peer.inner.remembered.lock().unwrap().clone().unwrap();
        let tamper = |f: &dyn Fn(&mut Remembered)| {
            let mut r = Remembered {
                attestor: original.attestor,
                at: original.at,
                // Due for the executable and namespace re-check.
                exe_checked: Mutex::new(original.at - EXE_RECHECK),
                uids: original.uids,
                gids: original.gids,
                groups: original.groups.clone(),
                exe: original.exe,
                attestation: original.attestation.clone(),
            };
            f(&mut r);
            *peer.inner.remembered.lock().unwrap() = Some(Arc::new(r));
            att.attest_quick(&peer)
        };
        assert!(tamper(&|_| {}).is_some(), "unchanged grounds are reused");
        assert!(tamper(&|r| r.exe.ino ^= 1).is_none(), "another executable");
        assert!(
            tamper(&|r| r.exe.ctime.1 ^= 1).is_none(),
            "executable changed"
        );
        assert!(tamper(&|r| r.uids[2] ^= 1).is_none(), "saved uid changed");
        assert!(tamper(&|r| r.uids[3] ^= 1).is_none(), "fs uid changed");
        assert!(tamper(&|r| r.gids[0] ^= 1).is_none(), "real gid changed");
        if via_status {
            assert!(
                tamper(&|r| r.groups.push(4_000_000)).is_none(),
                "groups changed"
            );
        }
        assert!(
            tamper(&|r| r.at -= REMEMBER_FOR).is_none(),
            "too old to reuse"
        );
        // Between executable re-checks only the ids are read: a changed executable is
        // seen at the next re-check, EXE_RECHECK at most after the last.
        assert!(
            tamper(&|r| {
                r.exe.ino ^= 1;
                r.exe_checked = Mutex::new(std::time::Instant::now());
            })
            .is_some(),
            "executable not re-checked within EXE_RECHECK"
        );
        // attest() falls back to a full attestation, which remembers afresh.
        assert_eq!(att.attest(&peer).unwrap(), full);
        assert_eq!(att.attest_quick(&peer), Some(full));
    }

    #[test]
    fn remembered_attestation_is_reused_only_while_its_grounds_hold() {
        check_reuse(false);
        check_reuse(true);
    }

    #[test]
    fn attests_itself_over_a_socketpair() {
        let (peer, _a, _b) = self_peer();
        assert_eq!(peer.pid(), own_pid());
        assert_eq!(Some(peer.start_time()), start_time(own_pid()));

        let att = attestor(vec![]).attest(&peer).unwrap();
        let uid = Uid::effective().as_raw();
        let gid = Gid::effective().as_raw();
        let exe = own_exe();
        let sha = sha256_of(&exe);
        assert_eq!((att.pid, att.uid, att.gid), (own_pid() as u32, uid, gid));
        assert!(!att.via_cli);
        assert_eq!(att.exe_path.as_deref(), Some(exe.as_str()));
        assert_eq!(att.exe_sha256.as_deref(), Some(sha.as_str()));
        let user = User::from_uid(Uid::from_raw(uid)).unwrap().map(|u| u.name);
        assert_eq!(att.user, user);
        let mut expected = vec![
            format!("unix:uid:{uid}"),
            format!("unix:gid:{gid}"),
            format!("unix:path:{exe}"),
            format!("unix:sha256:{sha}"),
        ];
        if let Some(name) = user {
            expected.push(format!("unix:user:{name}"));
        }
        if let Some(group) = Group::from_gid(Gid::from_raw(gid)).unwrap() {
            expected.push(format!("unix:group:{}", group.name));
        }
        for s in &expected {
            assert!(
                att.selectors.contains(s),
                "missing {s} in {:?}",
                att.selectors
            );
        }
        assert!(att.matches(&expected));
    }

    #[test]
    fn pins_with_pidfd_open_when_peer_pidfd_is_unavailable() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = Peer::pin_stream(a.as_fd(), false).unwrap();
        assert_eq!(peer.pin_method(), PinMethod::PidfdOpen);
        assert_eq!(sys::pidfd_pid(peer.pidfd()).unwrap(), Some(own_pid()));
        let att = attestor(vec![]).attest(&peer).unwrap();
        assert_eq!(att.exe_path.as_deref(), Some(own_exe().as_str()));
        // A clone shares the pin.
        let clone = peer.clone();
        assert_eq!(clone.start_time(), peer.start_time());
    }

    #[test]
    fn exe_hash_is_cached() {
        let attestor = attestor(vec![]);
        let (peer, _a, _b) = self_peer();
        let first = attestor.attest(&peer).unwrap();
        let second = attestor.attest(&peer).unwrap();
        assert_eq!(first, second);
        assert_eq!(attestor.hashes_computed.load(Ordering::Relaxed), 1);
        assert_eq!(attestor.cache().len(), 1);
    }

    #[test]
    fn large_executables_get_no_sha256() {
        let attestor = Attestor::new(AttestorConfig {
            cli_paths: vec![],
            max_hash_bytes: 1024,
        })
        .unwrap();
        let (peer, _a, _b) = self_peer();
        let att = attestor.attest(&peer).unwrap();
        assert_eq!(att.exe_path.as_deref(), Some(own_exe().as_str()));
        assert_eq!(att.exe_sha256, None);
        assert!(!att.selectors.iter().any(|s| s.starts_with("unix:sha256:")));
    }

    #[test]
    fn hash_limit_is_enforced_while_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let mut f = File::open(&path).unwrap();
        assert_eq!(hash_at_most(&mut f, 9).unwrap(), None);
        let mut f = File::open(&path).unwrap();
        assert_eq!(
            hash_at_most(&mut f, 10).unwrap().unwrap(),
            sha256_of(path.to_str().unwrap())
        );
    }

    #[test]
    fn cli_peer_is_attested_by_its_parent() {
        // Pretend this test binary is the installed CLI: the socket peer (us) is then
        // "leash", and path/sha256 must come from whoever started us (cargo, a shell…).
        let attestor = attestor(vec![PathBuf::from(own_exe())]);
        let (peer, _a, _b) = self_peer();
        let att = attestor.attest(&peer).unwrap();
        assert!(att.via_cli);
        // uid/gid still come from the peer itself.
        assert_eq!((att.uid, att.gid), (peer.uid(), peer.gid()));
        assert!(!att.selectors.contains(&format!("unix:path:{}", own_exe())));

        let ppid = nix::unistd::getppid().as_raw();
        let parent = read_status(ppid).unwrap();
        if check_ids(ppid, &parent, peer.uid(), peer.gid()).is_err() {
            // Started by a parent with other ids (e.g. `setpriv … test-binary` from a root
            // shell): it must lend nothing.
            assert_eq!((&att.exe_path, &att.exe_sha256), (&None, &None));
            assert!(!att.selectors.iter().any(|s| s.starts_with("unix:path:")));
            return;
        }
        let parent_path = att.exe_path.clone().expect("parent runs with our ids");
        assert_ne!(parent_path, own_exe());
        assert_eq!(
            std::fs::read_link(format!("/proc/{ppid}/exe"))
                .unwrap()
                .to_str(),
            Some(parent_path.as_str())
        );
        assert!(att.selectors.contains(&format!("unix:path:{parent_path}")));
        assert_eq!(att.exe_sha256, Some(sha256_of(&parent_path)));
    }

    #[test]
    fn refuses_peers_in_other_namespaces() {
        let (peer, _a, _b) = self_peer();
        let mut attestor = attestor(vec![]);
        attestor.mnt_ns = (0, 0);
        let err = attestor.attest(&peer).unwrap_err();
        assert!(
            matches!(err, AttestError::Namespace { kind: "mount", .. }),
            "{err}"
        );
        attestor.pid_ns = (0, 0);
        let err = attestor.attest(&peer).unwrap_err();
        assert!(
            matches!(err, AttestError::Namespace { kind: "pid", .. }),
            "{err}"
        );
    }

    #[test]
    fn parses_stat_with_hostile_comm() {
        let tail = "S 4321 1 1 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        for comm in ["bash", "a b", "x) (y", ") R 1 (", "((", "))"] {
            let text = format!("1234 ({comm}) {tail}");
            assert_eq!(
                parse_stat(text.as_bytes()),
                Some(ProcStat {
                    state: 'S',
                    ppid: 4321,
                    start_time: 987654
                }),
                "comm {comm:?}"
            );
        }
        // Not UTF-8 in comm is fine; a truncated line is not.
        let mut bytes = b"1 (\xff\xfe) ".to_vec();
        bytes.extend_from_slice(tail.as_bytes());
        assert_eq!(parse_stat(&bytes).unwrap().start_time, 987654);
        assert_eq!(parse_stat(b"1 (x) S 1 2 3"), None);
        assert_eq!(parse_stat(b"no paren"), None);
    }

    const STATUS: &str =
        "Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\nPid:\t42\nPPid:\t1\n\
        Uid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nFDSize:\t64\nGroups:\t10 27 100 \n";

    #[test]
    fn parses_status() {
        let status = parse_status(STATUS).unwrap();
        assert_eq!(status.state, 'S');
        assert_eq!(status.uids, [1000; 4]);
        assert_eq!(status.gids, [100; 4]);
        assert_eq!(status.groups, vec![10, 27, 100]);
        assert!(!status.is_dead());

        let empty_groups = STATUS.replace("Groups:\t10 27 100 ", "Groups:\t");
        assert_eq!(
            parse_status(&empty_groups).unwrap().groups,
            Vec::<u32>::new()
        );
        let zombie = STATUS.replace("S (sleeping)", "Z (zombie)");
        assert!(parse_status(&zombie).unwrap().is_dead());
        let forged = format!("{STATUS}Uid:\t0\t0\t0\t0\n");
        assert!(parse_status(&forged).unwrap_err().contains("duplicate"));
        let short = STATUS.replace("Uid:\t1000\t1000\t1000\t1000", "Uid:\t1000\t1000");
        assert!(parse_status(&short).is_err());
        assert!(parse_status("Name:\tx\n").is_err());
    }

    #[test]
    fn set_id_processes_are_refused() {
        let ok = parse_status(STATUS).unwrap();
        check_ids(42, &ok, 1000, 100).unwrap();

        // setuid root binary run by 1000: effective 0, real and saved differ.
        for (from, to) in [
            ("Uid:\t1000\t1000\t1000\t1000", "Uid:\t1000\t0\t0\t0"),
            ("Uid:\t1000\t1000\t1000\t1000", "Uid:\t0\t1000\t1000\t1000"),
            ("Uid:\t1000\t1000\t1000\t1000", "Uid:\t1000\t1000\t0\t1000"),
            ("Uid:\t1000\t1000\t1000\t1000", "Uid:\t1000\t1000\t1000\t0"),
            ("Gid:\t100\t100\t100\t100", "Gid:\t100\t0\t100\t100"),
            ("Gid:\t100\t100\t100\t100", "Gid:\t100\t100\t5\t100"),
        ] {
            let status = parse_status(&STATUS.replace(from, to)).unwrap();
            let err = check_ids(42, &status, 1000, 100).unwrap_err();
            assert!(
                matches!(err, AttestError::IdMismatch { pid: 42, .. }),
                "{to}"
            );
            assert!(err.to_string().contains("set-id programs are refused"));
        }
        // Socket credentials that match nothing in /proc (ids changed after connect).
        assert!(check_ids(42, &ok, 0, 100).is_err());
        assert!(check_ids(42, &ok, 1000, 0).is_err());
    }

    #[test]
    fn matches_requires_every_selector() {
        let att = Attestation {
            pid: 1,
            uid: 1000,
            gid: 100,
            user: Some("ci".into()),
            exe_path: None,
            exe_sha256: None,
            via_cli: false,
            selectors: ["unix:uid:1000", "unix:user:ci", "unix:gid:100"]
                .map(String::from)
                .into(),
        };
        let req = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(att.matches(&req(&["unix:uid:1000"])));
        assert!(att.matches(&req(&["unix:uid:1000", "unix:user:ci"])));
        assert!(!att.matches(&req(&["unix:uid:1000", "unix:path:/usr/bin/python3"])));
        assert!(!att.matches(&req(&["unix:uid:0"])));
        assert!(!att.matches(&[]), "no selectors must match nothing");
    }

    #[test]
    fn ancestry_follows_parents_and_checks_start_times() {
        let attestor = attestor(vec![]);
        let me = own_pid();
        let my_start = start_time(me).unwrap();
        let parent = nix::unistd::getppid().as_raw();
        let parent_start = start_time(parent).unwrap();
        assert!(attestor.is_ancestor_or_self(me, my_start, me));
        assert!(attestor.is_ancestor_or_self(parent, parent_start, me));
        // Same pid, other start time: a reused pid is not the ancestor.
        assert!(!attestor.is_ancestor_or_self(parent, parent_start + 1, me));
        // A child is not our ancestor.
        let mut child = Command::new("/bin/sh")
            .args(["-c", "sleep 30"])
            .spawn()
            .unwrap();
        let child_pid = child.id() as i32;
        let child_start = start_time(child_pid).unwrap();
        assert!(!attestor.is_ancestor_or_self(child_pid, child_start, me));
        assert!(attestor.is_ancestor_or_self(me, my_start, child_pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!attestor.is_ancestor_or_self(me, my_start, child_pid));
    }

    #[test]
    fn start_time_of_missing_process_is_none() {
        assert_eq!(start_time(0), None);
        assert_eq!(start_time(-5), None);
        assert_eq!(start_time(i32::MAX), None);
    }

    /// Starts a copy of this test binary that connects to a listener and waits for EOF;
    /// returns the child and our end of its connection.
    fn connect_child() -> (Child, UnixStream, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "attest::tests::child_helper_connects_and_waits",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CHILD_SOCKET_ENV, &path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "child never connected");
                    assert!(
                        child.try_wait().unwrap().is_none(),
                        "child exited before connecting"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        (child, stream, dir)
    }

    #[test]
    #[ignore = "helper: started as a child process by attests_another_process_until_it_exits"]
    fn child_helper_connects_and_waits() {
        let Some(path) = std::env::var_os(CHILD_SOCKET_ENV) else {
            return;
        };
        let mut stream = UnixStream::connect(path).unwrap();
        // Hold the connection until the parent closes its end.
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    }

    #[test]
    fn attests_another_process_until_it_exits() {
        let (mut child, stream, _dir) = connect_child();
        let peer = Peer::from_stream(stream.as_fd()).unwrap();
        assert_eq!(peer.pid(), child.id() as i32);

        let direct = attestor(vec![]);
        assert_eq!(direct.attest_quick(&peer), None, "nothing to reuse yet");
        let plain = direct.attest(&peer).unwrap();
        assert_eq!(plain.pid, child.id());
        assert!(!plain.via_cli);
        assert_eq!(plain.exe_path.as_deref(), Some(own_exe().as_str()));
        assert_eq!(direct.attest_quick(&peer).as_ref(), Some(&plain));

        // With the child's binary as "the CLI", its parent — this process — is attested.
        let cli = attestor(vec![PathBuf::from(own_exe())]);
        let via = cli.attest(&peer).unwrap();
        assert!(via.via_cli);
        assert_eq!(via.exe_path.as_deref(), Some(own_exe().as_str()));
        assert_eq!(via.exe_sha256, plain.exe_sha256);

        // Closing our end lets the child exit; once reaped, its pin must fail.
        drop(stream);
        child.wait().unwrap();
        assert_eq!(
            direct.attest_quick(&peer),
            None,
            "a reaped peer is never reused"
        );
        let err = cli.attest(&peer).unwrap_err();
        assert!(matches!(err, AttestError::PeerGone { .. }), "{err}");
        assert!(!cli.is_ancestor_or_self(peer.pid(), peer.start_time(), peer.pid()));
    }
}
