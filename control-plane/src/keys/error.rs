//! What key handling can fail with: the master key (its file, a mismatch with the data,
//! a rotation), stored keys that do not decrypt, certificates.

use super::key_id::KeyId;

/// Key-handling failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The master key file or variable is unusable.
    #[error("master key: {0}")]
    MasterKey(String),
    /// A stored key does not decrypt: wrong master key, or tampering.
    #[error("cannot decrypt stored {0}: the master key does not match this data directory (or the data was altered)")]
    Decrypt(String),
    /// The data is sealed with another master key than the one loaded.
    #[error("the data is sealed with master key {sealed_with}; the loaded key is {loaded}: start with the key the data was sealed with")]
    WrongKey {
        /// The key id the data carries.
        sealed_with: KeyId,
        /// The id of the key that was loaded.
        loaded: KeyId,
    },
    /// The key file is gone but the data is sealed.
    #[error("{path} is missing, but the data is sealed with master key {sealed_with}: restore that key file (or set $LEASH_MASTER_KEY to it); a new key cannot open this data")]
    MissingKeyFile {
        /// The key file.
        path: String,
        /// The key id the data carries (`unknown` for records from before key ids).
        sealed_with: String,
    },
    /// The master key comes from `$LEASH_MASTER_KEY`, so it is not the control plane's
    /// to replace.
    #[error("the master key comes from ${0}, so the control plane cannot replace it. To rotate it: write the same key (64 hex digits) to master.key in the data directory (mode 0600), restart the control plane without ${0}, then run `leashctl key rotate-master`")]
    KeyFromEnvironment(&'static str),
    /// Certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Cert(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// I/O on the key file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The master key file can be read by users other than its owner.
    #[error("{} has mode {mode:04o}: the master key must not be readable by group or others; run `chmod 600 {}` (or set `accept_readable_master_key = true` in the config to start anyway)", path.display(), path.display())]
    ReadableKeyFile {
        /// The key file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A certificate lifetime that the certificate cannot express.
    #[error("certificate lifetime of {0}s is out of range")]
    Lifetime(u64),
    /// The stored key records are unusable.
    #[error("key records: {0}")]
    Records(String),
    /// A rotation was asked while a `next` key of that kind waits to become active.
    #[error("{kind} key {id} is already waiting to become active (at unix time {activates_at}); rotate again once it is active (see `leashctl key list`)")]
    RotationPending {
        /// `jwt` or `ca`.
        kind: String,
        /// The waiting key.
        id: String,
        /// When it becomes active, unix seconds.
        activates_at: i64,
    },
}

impl From<rcgen::Error> for KeyError {
    fn from(e: rcgen::Error) -> Self {
        KeyError::Cert(e.to_string())
    }
}
