//! What a store operation can fail with: storage faults, refusals, and writes that could
//! not be made durable.

/// Storage failures and refused writes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// sled failed (disk full, corruption, permissions). After an I/O error sled fails
    /// every later write until the database is reopened.
    #[error(
        "storage error: {0}; check the data directory's disk space and permissions, then \
         restart the control plane if writes keep failing"
    )]
    Sled(#[from] sled::Error),
    /// A stored record could not be decoded.
    #[error("corrupt record in {tree}: {message}")]
    Corrupt {
        /// Tree name.
        tree: &'static str,
        /// Decoder message.
        message: String,
    },
    /// The writer thread is gone (shutting down).
    #[error("the store is shutting down")]
    Closed,
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The named thing exists already.
    #[error("{0}")]
    Conflict(String),
    /// The write was refused (e.g. a used join token, a disabled workload).
    #[error("{0}")]
    Refused(String),
    /// What the write was based on changed meanwhile (another version of a secret was
    /// added first): read again and make the write again.
    #[error("{0}; try again")]
    Stale(String),
    /// The batch holding the write could not be flushed (a full disk, an I/O error), so
    /// the write was not acknowledged. Its outcome is unknown to the caller: it was
    /// applied in memory and is persisted by the next successful flush, or lost by a
    /// crash before one. A failure of the store, never a refusal of the caller.
    #[error(
        "the write could not be made durable: {0}; it was not acknowledged and may or may \
         not be recorded: free space in the data directory (or restart the control plane \
         if the store stays failed) and retry"
    )]
    NotDurable(String),
    /// PostgreSQL could not be reached, or failed a statement or a commit: the write (if
    /// any) was not acknowledged. The message never holds the database URL or password.
    #[error(
        "the PostgreSQL store is unavailable: {0}; the write, if any, was not acknowledged: \
         check that the database is up and reachable, then retry"
    )]
    Database(String),
    /// The database's schema is newer than this control plane knows: another replica
    /// was upgraded first.
    #[error(
        "the PostgreSQL store's schema is at version {found}, newer than this control plane \
         knows (version {known}): upgrade leash-control-plane on this machine to the version \
         the other replicas run"
    )]
    SchemaTooNew {
        /// The version the database is at.
        found: i32,
        /// The newest version this build knows.
        known: i32,
    },
    /// A sealed record could not be re-wrapped under a new master key; nothing was
    /// replaced.
    #[error("cannot re-wrap the sealed record {name:?}: {source}; nothing was changed")]
    Rewrap {
        /// The record's name.
        name: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Result alias.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
