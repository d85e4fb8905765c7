//! The master key: what everything stored encrypted is sealed with, its key file, the
//! start-up check that the data and the key belong together, and its rotation.
//!
//! A sealed record is `FORMAT (1 byte) || key id (8) || nonce (12) || AES-256-GCM
//! ciphertext and tag`, with the header and the record's name as associated data (so a
//! record can be passed off neither as another's nor as another key's). Records from
//! before key ids are `nonce || ciphertext` with the name as associated data; they are
//! read as sealed by the loaded key and get the header at the next rotation.
//!
//! Rotation (`leashctl key rotate-master`): a new key is written to `master.key.new`
//! (0600, fsynced, directory fsynced), every sealed record is re-wrapped in one durable
//! write, the new key becomes the one that seals, then `master.key.new` is renamed over
//! `master.key` and the directory fsynced. A kill at any point leaves either the old key
//! with the old data or the new key (still named `master.key.new`) with the new data; at
//! start, a leftover `master.key.new` is taken if and only if the data is sealed with it.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::error::KeyError;
use super::key_id::KeyId;
use crate::store::{Rewrap, SealedRecord, Storage, StoreError};

/// Environment variable that may hold the master key.
pub const MASTER_KEY_ENV: &str = "LEASH_MASTER_KEY";
/// The key file in the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";
/// The next key, while a rotation is under way.
pub const NEW_KEY_FILE: &str = "master.key.new";

/// The sealed format's version, its first byte.
const FORMAT: u8 = 1;
const HEADER_LEN: usize = 1 + 8;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// The key id a sealed record carries in its header, if it has one.
pub fn sealed_key_id(sealed: &[u8]) -> Option<KeyId> {
    if sealed.len() < HEADER_LEN + NONCE_LEN + TAG_LEN || sealed[0] != FORMAT {
        return None;
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&sealed[1..HEADER_LEN]);
    Some(KeyId(id))
}

/// One AES-256-GCM key with its id. The raw bytes are zeroized as soon as the AEAD key
/// is built from them; the expanded key lives inside `ring`.
struct Key {
    id: KeyId,
    aead: LessSafeKey,
}

impl Key {
    fn from_bytes(bytes: &[u8]) -> Result<Key, KeyError> {
        if bytes.len() != 32 {
            return Err(KeyError::MasterKey(
                "the key must be 32 bytes (64 hex digits)".into(),
            ));
        }
        let unbound = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| KeyError::MasterKey("bad key".into()))?;
        Ok(Key {
            id: KeyId::of(bytes),
            aead: LessSafeKey::new(unbound),
        })
    }

    /// A fresh random key, and its raw bytes to write to the key file.
    fn generate() -> Result<(Key, Zeroizing<Vec<u8>>), KeyError> {
        let mut k = Zeroizing::new(vec![0u8; 32]);
        SystemRandom::new()
            .fill(&mut k)
            .map_err(|_| KeyError::MasterKey("no randomness".into()))?;
        Ok((Key::from_bytes(&k)?, k))
    }

    fn seal(&self, name: &str, plain: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyError::MasterKey("no randomness".into()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.push(FORMAT);
        out.extend_from_slice(&self.id.0);
        let aad = [&out[..HEADER_LEN], name.as_bytes()].concat();
        let mut buf = plain.to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_slice()),
                &mut buf,
            )
            .map_err(|_| KeyError::MasterKey("encryption failed".into()))?;
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Open a record with the header, sealed by this key.
    fn open_headed(&self, name: &str, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let (header, rest) = sealed.split_at(HEADER_LEN);
        let aad = [header, name.as_bytes()].concat();
        aead_open(&self.aead, &aad, rest)
    }

    /// Open a record from before key ids (no header), sealed by this key.
    fn open_legacy(&self, name: &str, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        aead_open(&self.aead, name.as_bytes(), sealed)
    }
}

fn aead_open(key: &LessSafeKey, aad: &[u8], nonce_and_ct: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if nonce_and_ct.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, ct) = nonce_and_ct.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = Zeroizing::new(ct.to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .ok()?
        .len();
    buf.truncate(len);
    Some(buf)
}

/// The key that seals, and the keys this process replaced (which still open records
/// sealed with them while a rotation was committing; they are never loaded at start).
#[derive(Clone)]
struct Ring {
    current: Arc<Key>,
    retired: Vec<Arc<Key>>,
}

impl Ring {
    fn find(&self, id: KeyId) -> Option<&Arc<Key>> {
        std::iter::once(&self.current)
            .chain(&self.retired)
            .find(|k| k.id == id)
    }

    fn open(&self, name: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let id = sealed_key_id(sealed);
        if let Some(k) = id.and_then(|id| self.find(id)) {
            return k
                .open_headed(name, sealed)
                .ok_or_else(|| KeyError::Decrypt(name.into()));
        }
        // No header, or (once in 2^64) a record from before key ids whose nonce looks
        // like one: read as sealed by the loaded key.
        if let Some(plain) = self.current.open_legacy(name, sealed) {
            return Ok(plain);
        }
        Err(match id {
            Some(sealed_with) => KeyError::WrongKey {
                sealed_with,
                loaded: self.current.id,
            },
            None => KeyError::Decrypt(name.into()),
        })
    }

    /// Whether every record opens with this ring: headers name a key it holds, and
    /// records from before key ids open with the current key. The first mismatch names
    /// the key id the data carries.
    fn check(&self, records: &[SealedRecord]) -> Result<(), KeyError> {
        for r in records {
            match sealed_key_id(&r.sealed) {
                Some(id) if self.find(id).is_some() => {}
                _ => {
                    self.open(&r.name, &r.sealed)?;
                }
            }
        }
        Ok(())
    }
}

/// What a rotation did.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// The key replaced.
    pub old: KeyId,
    /// The key that seals from now on.
    pub new: KeyId,
    /// How many sealed records were re-wrapped.
    pub records: usize,
}

/// The master key. Rotatable while the control plane runs: callers share one
/// `Arc<MasterKey>` and every `seal` uses the key in force at that moment.
pub struct MasterKey {
    ring: RwLock<Ring>,
    /// The data directory holding the key file; `None` when the key came from
    /// `$LEASH_MASTER_KEY` (then it is not ours to replace).
    data_dir: Option<PathBuf>,
    /// One rotation at a time.
    rotating: tokio::sync::Mutex<()>,
    /// Held (shared) by a caller from its `seal` until the store write of what it sealed
    /// has committed, and (exclusive) by a rotation while it switches keys: so whatever
    /// was sealed with the old key is in the store before the second re-wrap pass looks.
    sealing: tokio::sync::RwLock<()>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

/// The key in `$LEASH_MASTER_KEY`, if set.
fn env_key() -> Result<Option<Key>, KeyError> {
    let Ok(hexkey) = std::env::var(MASTER_KEY_ENV) else {
        return Ok(None);
    };
    let bytes =
        Zeroizing::new(hex::decode(hexkey.trim()).map_err(|_| {
            KeyError::MasterKey(format!("${MASTER_KEY_ENV} must be 64 hex digits"))
        })?);
    Key::from_bytes(&bytes).map(Some)
}

/// The key in `path`, or `None` if there is no such file.
fn read_key_file(path: &Path) -> Result<Option<Key>, KeyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|_| {
                KeyError::MasterKey(format!("{} must hold 64 hex digits", path.display()))
            })?);
            Key::from_bytes(&bytes).map(Some)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KeyError::MasterKey(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Write a key file (0600) and fsync it. An existing file at `path` is replaced.
fn write_key_file(path: &Path, key: &[u8]) -> Result<(), KeyError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(Zeroizing::new(hex::encode(key)).as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Make a rename or a new file in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), KeyError> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// The re-wrap of every record not yet sealed with `to`: opened with `from` (whichever of
/// its keys sealed it), sealed again with `to` under the same name.
fn rewrap_to(from: Ring, to: Arc<Key>) -> Rewrap {
    Box::new(move |name, sealed| {
        if sealed_key_id(sealed) == Some(to.id) {
            return Ok(None);
        }
        let plain = from.open(name, sealed)?;
        Ok(Some(to.seal(name, &plain)?))
    })
}

impl MasterKey {
    fn new(key: impl Into<Arc<Key>>, data_dir: Option<&Path>) -> MasterKey {
        MasterKey {
            ring: RwLock::new(Ring {
                current: key.into(),
                retired: Vec::new(),
            }),
            data_dir: data_dir.map(Path::to_path_buf),
            rotating: tokio::sync::Mutex::new(()),
            sealing: tokio::sync::RwLock::new(()),
        }
    }

    /// Hold this from before a `seal` until the store write of the sealed bytes has
    /// committed (see the `sealing` field): a rotation then cannot switch keys in between
    /// and leave that record under the old key.
    pub async fn hold_for_sealed_write(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.sealing.read().await
    }

    fn ring(&self) -> Ring {
        self.ring.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The id of the key that seals.
    pub fn id(&self) -> KeyId {
        self.ring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .current
            .id
    }

    /// Load from `$LEASH_MASTER_KEY`, else from `<data_dir>/master.key`, creating the file
    /// (0600) when there is none. No check against any data: the control plane starts
    /// through [`MasterKey::load_checked`].
    pub fn load_or_create(data_dir: &Path) -> Result<MasterKey, KeyError> {
        if let Some(k) = env_key()? {
            return Ok(MasterKey::new(k, None));
        }
        let path = data_dir.join(MASTER_KEY_FILE);
        let key = match read_key_file(&path)? {
            Some(k) => k,
            None => {
                let (k, bytes) = Key::generate()?;
                write_key_file(&path, &bytes)?;
                k
            }
        };
        Ok(MasterKey::new(key, Some(data_dir)))
    }

    /// Load the key for the data in `store`, at start: `$LEASH_MASTER_KEY`, else the key
    /// file (created on first start, when nothing is sealed yet). A `master.key.new` left
    /// by a rotation that was cut short is taken if and only if the data is sealed with
    /// it (the rotation then finishes here); otherwise it is removed. Refused when a
    /// sealed record names a key id other than the loaded key's, naming both ids.
    pub async fn load_checked(data_dir: &Path, store: &dyn Storage) -> Result<MasterKey, KeyError> {
        let records = store.sealed_records()?;
        if let Some(k) = env_key()? {
            let mk = MasterKey::new(k, None);
            mk.ring().check(&records)?;
            return Ok(mk);
        }
        let path = data_dir.join(MASTER_KEY_FILE);
        let new_path = data_dir.join(NEW_KEY_FILE);
        let current = read_key_file(&path)?;
        let mut torn = false;
        let pending = match read_key_file(&new_path) {
            Ok(k) => k,
            // Torn while being written: the rotation cannot have committed with it.
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable {NEW_KEY_FILE}");
                torn = true;
                None
            }
        };
        let data_ids: BTreeSet<KeyId> = records
            .iter()
            .filter_map(|r| sealed_key_id(&r.sealed))
            .collect();
        // A torn new key is removed once the data is seen sealed with the current key
        // alone, so that it cannot be mistaken for a rotation at a later start.
        if torn
            && current
                .as_ref()
                .is_some_and(|k| data_ids.iter().all(|id| *id == k.id))
        {
            tracing::warn!(
                "removing the unreadable {NEW_KEY_FILE}: the data is sealed with the current key"
            );
            std::fs::remove_file(&new_path)?;
            sync_dir(data_dir)?;
        }
        if let Some(new) = pending {
            if data_ids.contains(&new.id) {
                return Self::finish_rotation(data_dir, store, new, current, &records).await;
            }
            tracing::warn!(
                key_id = %new.id,
                "removing {NEW_KEY_FILE}: a rotation to it was cut short before it committed, and the data is not sealed with it"
            );
            std::fs::remove_file(&new_path)?;
            sync_dir(data_dir)?;
        }
        let key = match current {
            Some(k) => k,
            None if records.is_empty() => {
                let (k, bytes) = Key::generate()?;
                write_key_file(&path, &bytes)?;
                sync_dir(data_dir)?;
                k
            }
            None => {
                return Err(KeyError::MissingKeyFile {
                    path: path.display().to_string(),
                    sealed_with: data_ids.iter().next().map_or_else(
                        || "unknown (records sealed before key ids)".to_string(),
                        ToString::to_string,
                    ),
                })
            }
        };
        let mk = MasterKey::new(key, Some(data_dir));
        mk.ring().check(&records)?;
        Ok(mk)
    }

    /// The data is sealed with `new` (the re-wrap committed) but the key file was not
    /// renamed yet: re-wrap what is still sealed with the old key (written while the
    /// rotation committed), then rename `master.key.new` over `master.key`.
    async fn finish_rotation(
        data_dir: &Path,
        store: &dyn Storage,
        new: Key,
        old: Option<Key>,
        records: &[SealedRecord],
    ) -> Result<MasterKey, KeyError> {
        let new = Arc::new(new);
        let ring = Ring {
            current: new.clone(),
            retired: old.into_iter().map(Arc::new).collect(),
        };
        ring.check(records)?;
        let late = store
            .rewrap_sealed(rewrap_to(ring, new.clone()), None)
            .await?;
        std::fs::rename(data_dir.join(NEW_KEY_FILE), data_dir.join(MASTER_KEY_FILE))?;
        sync_dir(data_dir)?;
        tracing::warn!(
            key_id = %new.id,
            rewrapped = late,
            "finished a master-key rotation that was cut short: {NEW_KEY_FILE} is now {MASTER_KEY_FILE}"
        );
        Ok(MasterKey::new(new, Some(data_dir)))
    }

    /// Check the mode of `<data_dir>/master.key`, if the key comes from that file.
    ///
    /// A key file readable by group or others is refused, unless `accept_readable` (then
    /// the returned text is the warning to log). Missing file: fine, it is created 0600.
    pub fn check_file_mode(
        data_dir: &Path,
        accept_readable: bool,
    ) -> Result<Option<String>, KeyError> {
        use std::os::unix::fs::PermissionsExt;
        if std::env::var_os(MASTER_KEY_ENV).is_some() {
            return Ok(None);
        }
        let path = data_dir.join(MASTER_KEY_FILE);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(KeyError::MasterKey(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 == 0 {
            return Ok(None);
        }
        if accept_readable {
            Ok(Some(format!(
                "{} has mode {mode:04o}: the master key is readable by group or others; accepted only because accept_readable_master_key = true. Fix it with `chmod 600 {}`",
                path.display(),
                path.display()
            )))
        } else {
            Err(KeyError::ReadableKeyFile { path, mode })
        }
    }

    /// Encrypt `plain` with `name` as associated data (so a sealed record cannot be
    /// passed off as another's), under the key in force, whose id the result carries.
    pub fn seal(&self, name: &str, plain: &[u8]) -> Result<Vec<u8>, KeyError> {
        let key = self
            .ring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .current
            .clone();
        key.seal(name, plain)
    }

    /// Decrypt what [`MasterKey::seal`] sealed under the same `name`.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.ring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .open(name, sealed)
    }

    /// Replace the master key: a new key, every sealed record in `store` re-wrapped under
    /// it in one durable write (with the `master-key-rotated` event of `actor`), the key
    /// file replaced atomically. Seals and opens go on meanwhile. Refused when the key
    /// came from `$LEASH_MASTER_KEY`.
    pub async fn rotate(&self, store: &dyn Storage, actor: &str) -> Result<Rotation, KeyError> {
        let Some(dir) = &self.data_dir else {
            return Err(KeyError::KeyFromEnvironment(MASTER_KEY_ENV));
        };
        let _one = self.rotating.lock().await;
        let (new, bytes) = Key::generate()?;
        let new = Arc::new(new);
        let old = self.ring().current;
        let new_path = dir.join(NEW_KEY_FILE);
        // Durable before the re-wrap commits: the data must never be sealed with a key
        // that is not on disk.
        write_key_file(&new_path, &bytes)?;
        sync_dir(dir)?;
        drop(bytes);
        let event =
            crate::audit::master_key_rotated(actor, &old.id.to_string(), &new.id.to_string());
        let records = match store
            .rewrap_sealed(rewrap_to(self.ring(), new.clone()), Some(event))
            .await
        {
            Ok(n) => n,
            Err(e) => {
                // Not durable: the re-wrap may stand in memory (and is lost at restart,
                // where the old key is kept): keep opening what it wrote. The leftover
                // key file is removed at start unless the data is sealed with it.
                if matches!(e, StoreError::NotDurable(_)) {
                    self.ring
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .retired
                        .push(new);
                }
                return Err(e.into());
            }
        };
        {
            // Wait for writes that sealed with the old key to commit; new ones wait.
            let _switch = self.sealing.write().await;
            let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
            ring.retired.push(old.clone());
            ring.current = new.clone();
        }
        // Records sealed with the old key by writes that committed just after the
        // re-wrap (they had sealed before the switch): re-wrap them too, before the old
        // key file goes. Should this fail, `master.key.new` stays, and the next start
        // finishes the rotation (`load_checked`).
        let late = store
            .rewrap_sealed(rewrap_to(self.ring(), new.clone()), None)
            .await?;
        std::fs::rename(&new_path, dir.join(MASTER_KEY_FILE))?;
        sync_dir(dir)?;
        Ok(Rotation {
            old: old.id,
            new: new.id,
            records: records + late,
        })
    }
}

#[cfg(test)]
mod tests;
