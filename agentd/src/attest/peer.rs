//! Peer pinning: the process at the other end of a connection, held by a pidfd from the
//! moment the connection is accepted, so its pid cannot silently come to mean another
//! process later.
//!
//! With `SO_PEERPIDFD` (Linux ≥ 6.5) the kernel hands us the pidfd of the connecting
//! process itself. Without it we `pidfd_open` the pid and remember its start time; that
//! leaves a window between `connect` and our `pidfd_open` in which the peer could exit and
//! its pid be reused, which only the newer kernel closes. A peer also carries its last
//! full attestation ([`Remembered`]) for reuse by later requests on the connection.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::attestation::Attestation;
use super::error::AttestError;
use super::exe::HashKey;
use crate::procfs::{self, proc_path};
use crate::sys;

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
pub(super) struct Pin {
    pub(super) pid: i32,
    pidfd: OwnedFd,
    pub(super) start_time: u64,
}

impl Pin {
    /// Pins `pid` now. The caller must still prove it is the process it meant (see
    /// `Attestor::try_parent_exe`), since the pid may already have been reused.
    pub(super) fn open(pid: i32) -> Result<Pin, AttestError> {
        let pidfd = sys::pidfd_open(pid).map_err(|source| match source.raw_os_error() {
            Some(libc::ESRCH) => AttestError::PeerGone { pid },
            _ => AttestError::Pin { pid, source },
        })?;
        Pin::with_pidfd(pid, pidfd)
    }

    fn with_pidfd(pid: i32, pidfd: OwnedFd) -> Result<Pin, AttestError> {
        // Read by number, then confirm the pidfd still holds that number: only then is the
        // start time the pinned process's own.
        let start_time = procfs::read_stat(pid)?.start_time;
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
    pub(super) fn ensure_same(&self) -> Result<(), AttestError> {
        let pid = self.pid;
        match sys::pidfd_pid(self.pidfd.as_fd()) {
            Ok(Some(now)) if now == pid => {}
            Ok(_) => return Err(AttestError::PeerGone { pid }),
            Err(source) => return Err(AttestError::Pin { pid, source }),
        }
        match procfs::start_time(pid) {
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
    pub(super) inner: Arc<PeerInner>,
}

#[derive(Debug)]
pub(super) struct PeerInner {
    pub(super) pin: Pin,
    uid: u32,
    gid: u32,
    method: PinMethod,
    /// The last full attestation of this peer and what it rested on.
    pub(super) remembered: Mutex<Option<Arc<Remembered>>>,
    /// Its `/proc` directory and status file, opened on the first reuse.
    pub(super) files: std::sync::OnceLock<Option<ProcFiles>>,
}

/// A pinned process's `/proc/<pid>` directory, and its `status` file on kernels without
/// `PIDFD_GET_INFO`. Opened by number, but kept only if the process was still alive (not
/// reaped) afterwards, so they are its own; from then on they stay bound to it even if
/// its pid is reused, and reads through them fail once it is gone.
#[derive(Debug)]
pub(super) struct ProcFiles {
    pub(super) dir: File,
    pub(super) status: Option<File>,
}

impl ProcFiles {
    pub(super) fn open(pid: i32, pidfd: BorrowedFd<'_>) -> Option<ProcFiles> {
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
/// checking that nothing it rested on has changed (see `Attestor::attest_quick`).
#[derive(Debug)]
pub(super) struct Remembered {
    pub(super) at: Instant,
    /// Real, effective, saved and fs uids and gids, and the supplementary groups.
    pub(super) uids: [u32; 4],
    pub(super) gids: [u32; 4],
    pub(super) groups: Vec<u32>,
    /// The executable file the path and sha256 selectors describe.
    pub(super) exe: HashKey,
    /// The `Attestor` that made it.
    pub(super) attestor: u64,
    /// When `exe` and the mount namespace were last confirmed.
    pub(super) exe_checked: Mutex<Instant>,
    pub(super) attestation: Arc<Attestation>,
}

/// How often a reused attestation's executable and mount namespace are re-checked on a
/// kept connection (the ids are re-checked on every request).
pub(super) const EXE_RECHECK: Duration = Duration::from_millis(50);

/// How long a full attestation may be reused on one connection. It also bounds how long
/// a change of supplementary groups alone (which needs `CAP_SETGID`, and which
/// `PIDFD_GET_INFO` does not report) can go unseen.
pub(super) const REMEMBER_FOR: Duration = Duration::from_secs(1);

impl Peer {
    /// Reads the credentials of the process that connected `fd` (a connected Unix stream
    /// socket) and pins that process. Call once per accepted connection.
    pub fn from_stream(fd: BorrowedFd<'_>) -> Result<Peer, AttestError> {
        Peer::pin_stream(fd, true)
    }

    /// `use_peer_pidfd: false` forces the pre-6.5 path, so tests can cover it.
    pub(super) fn pin_stream(
        fd: BorrowedFd<'_>,
        use_peer_pidfd: bool,
    ) -> Result<Peer, AttestError> {
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

    /// The pidfd that pins the process.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.inner.pin.pidfd.as_fd()
    }

    /// How the process was pinned.
    pub fn pin_method(&self) -> PinMethod {
        self.inner.method
    }
}
