//! Where the store keeps bytes sealed under the master key, and the one write that
//! re-wraps them all when the master key is rotated (`leashctl key rotate-master`).
//!
//! [`SEALED`] is the single list of those places. Master-key rotation reads it to find
//! every sealed value and to replace them all; the start-up check reads it to learn which
//! key ids the data is sealed with. A tree that holds sealed bytes is added to the list
//! with one line; nothing else in the store has to know.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{dec, enc};
use super::error::{Result, StoreError};
use super::sled_store::Tx;
use crate::model::Event;

/// One sealed value, as the master key sees it.
#[derive(Debug, Clone)]
pub struct SealedRecord {
    /// The name it was sealed under (its associated data), e.g. `ca-key`.
    pub name: String,
    /// The sealed bytes.
    pub sealed: Vec<u8>,
}

/// Why a re-wrap could not make one record's replacement (a key error, in practice).
pub type RewrapFailure = Box<dyn std::error::Error + Send + Sync>;

/// Turns one sealed value (its name, its bytes) into its replacement, or `None` to leave
/// it as it is. Runs on the store's writer, so no write comes between reading a record
/// and replacing it.
pub type Rewrap =
    Box<dyn FnMut(&str, &[u8]) -> std::result::Result<Option<Vec<u8>>, RewrapFailure> + Send>;

/// A record type that carries sealed bytes among other fields (stored as the store's
/// other records are). Implement it for the record, then list its tree with
/// [`Sealed::inside`].
pub trait HoldsSealed: Serialize + DeserializeOwned {
    /// The sealed bytes.
    fn sealed(&self) -> &[u8];
    /// The sealed bytes, to replace them.
    fn sealed_mut(&mut self) -> &mut Vec<u8>;
}

/// How a tree holds sealed bytes.
#[derive(Clone, Copy)]
pub(super) enum Field {
    /// The value is the sealed bytes.
    Whole,
    /// The value is a record with sealed bytes inside: read them, and write them back.
    Inside {
        get: fn(&[u8]) -> Result<Vec<u8>>,
        set: fn(&[u8], Vec<u8>) -> Result<Vec<u8>>,
    },
}

/// One tree that holds sealed bytes.
#[derive(Clone, Copy)]
pub(super) struct Sealed {
    /// The sled tree's name.
    pub(super) tree: &'static str,
    /// The name the value under a key is sealed under, or `None` for keys of the tree
    /// that hold no sealed bytes.
    pub(super) name: fn(&[u8]) -> Option<String>,
    pub(super) field: Field,
}

impl Sealed {
    /// A tree whose values (under the keys `name` accepts) are the sealed bytes.
    pub(super) const fn whole(tree: &'static str, name: fn(&[u8]) -> Option<String>) -> Sealed {
        Sealed {
            tree,
            name,
            field: Field::Whole,
        }
    }

    /// A tree of `T` records, each with sealed bytes inside.
    pub(super) const fn inside<T: HoldsSealed>(
        tree: &'static str,
        name: fn(&[u8]) -> Option<String>,
    ) -> Sealed {
        Sealed {
            tree,
            name,
            field: Field::Inside {
                get: get_inside::<T>,
                set: set_inside::<T>,
            },
        }
    }

    fn get(&self, value: &[u8]) -> Result<Vec<u8>> {
        match self.field {
            Field::Whole => Ok(value.to_vec()),
            Field::Inside { get, .. } => get(value),
        }
    }

    fn set(&self, value: &[u8], sealed: Vec<u8>) -> Result<Vec<u8>> {
        match self.field {
            Field::Whole => Ok(sealed),
            Field::Inside { set, .. } => set(value, sealed),
        }
    }
}

fn get_inside<T: HoldsSealed>(value: &[u8]) -> Result<Vec<u8>> {
    Ok(dec::<T>("sealed record", value)?.sealed().to_vec())
}

fn set_inside<T: HoldsSealed>(value: &[u8], sealed: Vec<u8>) -> Result<Vec<u8>> {
    let mut r: T = dec("sealed record", value)?;
    *r.sealed_mut() = sealed;
    Ok(enc(&r))
}

/// The encrypted keys in the `blobs` tree: the CA keys and the JWT signing keys. The
/// other blobs (key records, the first CA's certificate, policy versions) are not secret.
fn key_blob(key: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(key).ok()?;
    is_key_blob(name).then(|| name.to_string())
}

/// Whether the blob `name` is a sealed private key: `ca-key` and `jwt-key-1` (the first
/// ones), `ca-key-<id>` and `jwt-key-<id>` (made by rotation, keys/lifecycle.rs).
pub fn is_key_blob(name: &str) -> bool {
    name == "ca-key" || name.starts_with("ca-key-") || name.starts_with("jwt-key-")
}

/// A version of a brokered secret: the key is `name \0 version (BE u32)`, the value is
/// sealed under `model::secret_aad(name, version)`.
fn secret_version_name(key: &[u8]) -> Option<String> {
    // The version's own bytes may be zero: split at the fixed width, not at a search.
    let at = key.len().checked_sub(5)?;
    if key[at] != 0 {
        return None;
    }
    let name = std::str::from_utf8(&key[..at]).ok()?;
    let version = u32::from_be_bytes(key[at + 1..].try_into().ok()?);
    Some(crate::model::secret_aad(name, version))
}

impl HoldsSealed for crate::model::SecretVersion {
    fn sealed(&self) -> &[u8] {
        &self.sealed
    }
    fn sealed_mut(&mut self) -> &mut Vec<u8> {
        &mut self.sealed
    }
}

/// Every place in the store that holds bytes sealed under the master key: the CA and JWT
/// keys in `blobs`, and the values of brokered secrets.
pub(super) const SEALED: &[Sealed] = &[
    Sealed::whole("blobs", key_blob),
    Sealed::inside::<crate::model::SecretVersion>("secret_versions", secret_version_name),
];

/// Every sealed record in `trees` of `db`.
pub(super) fn records(db: &sled::Db, list: &[Sealed]) -> Result<Vec<SealedRecord>> {
    let mut out = Vec::new();
    for s in list {
        let tree = db.open_tree(s.tree)?;
        for kv in tree.iter() {
            let (k, v) = kv?;
            if let Some(name) = (s.name)(&k) {
                out.push(SealedRecord {
                    name,
                    sealed: s.get(&v)?,
                });
            }
        }
    }
    Ok(out)
}

/// Replace every sealed record of `list` by what `rewrap` makes of it, and record
/// `event`, all in one atomic write (a sled transaction over every listed tree): after a
/// crash, either every record is re-wrapped or none is. Returns how many were replaced.
pub(super) fn rewrap(
    tx: &mut Tx<'_>,
    list: &[Sealed],
    mut rewrap: Rewrap,
    event: Option<Event>,
) -> Result<usize> {
    use sled::transaction::{ConflictableTransactionError, Transactional};
    let mut trees = Vec::with_capacity(list.len());
    let mut writes: Vec<(usize, sled::IVec, Vec<u8>)> = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let tree = tx.db.open_tree(s.tree)?;
        // Only the writer writes, and this runs on it: what is read here stays as read
        // until the transaction below commits.
        for kv in tree.iter() {
            let (k, v) = kv?;
            let Some(name) = (s.name)(&k) else { continue };
            let sealed = s.get(&v)?;
            let replaced = rewrap(&name, &sealed).map_err(|source| StoreError::Rewrap {
                name: name.clone(),
                source,
            })?;
            if let Some(new) = replaced {
                writes.push((i, k, s.set(&v, new)?));
            }
        }
        trees.push(tree);
    }
    let n = writes.len();
    if n > 0 {
        let refs: Vec<&sled::Tree> = trees.iter().collect();
        refs.as_slice()
            .transaction(|t| {
                for (i, k, v) in &writes {
                    t[*i].insert(k, v.as_slice())?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
                sled::transaction::TransactionError::Abort(()) => StoreError::Closed,
            })?;
    }
    if let Some(e) = event {
        tx.event(e)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Version {
        version: u32,
        sealed: Vec<u8>,
    }

    impl HoldsSealed for Version {
        fn sealed(&self) -> &[u8] {
            &self.sealed
        }
        fn sealed_mut(&mut self) -> &mut Vec<u8> {
            &mut self.sealed
        }
    }

    #[test]
    fn sealed_bytes_inside_a_record_are_read_and_replaced_in_place() {
        let s = Sealed::inside::<Version>("versions", |_| Some("n".into()));
        let v = enc(&Version {
            version: 3,
            sealed: vec![1, 2],
        });
        assert_eq!(s.get(&v).expect("get"), vec![1, 2]);
        let replaced = s.set(&v, vec![9]).expect("set");
        assert_eq!(
            dec::<Version>("t", &replaced).expect("dec"),
            Version {
                version: 3,
                sealed: vec![9]
            }
        );
        assert!(s.get(b"not json").is_err());
    }

    #[test]
    fn secret_versions_are_named_as_they_were_sealed() {
        for (name, version) in [
            ("kept", 1u32),
            ("a/b", 256),
            ("x", 0x0100_0000),
            ("y", u32::MAX),
        ] {
            let mut key = name.as_bytes().to_vec();
            key.push(0);
            key.extend_from_slice(&version.to_be_bytes());
            assert_eq!(
                secret_version_name(&key),
                Some(crate::model::secret_aad(name, version))
            );
        }
        assert_eq!(secret_version_name(b"abc"), None);
        assert_eq!(secret_version_name(b"name\x01\0\0\0\x01"), None);
    }

    #[test]
    fn only_the_key_blobs_are_sealed() {
        assert_eq!(key_blob(b"ca-key").as_deref(), Some("ca-key"));
        assert_eq!(key_blob(b"jwt-key-1").as_deref(), Some("jwt-key-1"));
        assert_eq!(key_blob(b"ca-key-0a1b").as_deref(), Some("ca-key-0a1b"));
        assert_eq!(key_blob(b"ca-cert"), None);
        assert_eq!(key_blob(b"key-records"), None);
        assert_eq!(key_blob(b"policy/current"), None);
    }
}
