//! Why a caller could not be attested. Each message says what was wrong and what to do.

use std::io;
use std::path::PathBuf;

use crate::procfs::ProcError;

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

impl From<ProcError> for AttestError {
    fn from(e: ProcError) -> AttestError {
        match e {
            ProcError::Gone { pid } => AttestError::PeerGone { pid },
            ProcError::Read { path, source } => AttestError::Proc { path, source },
            ProcError::Malformed { path, detail } => AttestError::Malformed {
                path,
                detail: detail.to_string(),
            },
        }
    }
}
