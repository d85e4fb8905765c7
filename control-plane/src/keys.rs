//! Key material: the master key, the CAs, the JWT signing keys, host certificates and
//! the control plane's own serving certificate.
//!
//! The CA keys and the JWT signing keys are stored in the database only encrypted
//! (AES-256-GCM) under a master key that lives outside it: a 0600 key file in the data
//! directory, or `$LEASH_MASTER_KEY` (64 hex digits). The master key, its sealed format,
//! its start-up check and its rotation are in `keys/master.rs`.
//!
//! JWT signing keys and CAs rotate while the control plane runs (`keys/lifecycle.rs`):
//! each has a durable record (`keys/record.rs`) with its state (`next`, `active`,
//! `retiring`, `retired`), and the keys in force are one immutable [`KeySet`] swapped
//! whole at every change, so a caller always sees one consistent set. In-memory keys are
//! in `keys/material.rs`, what a CA signs in `keys/certs.rs`, errors in `keys/error.rs`.
//! The serving key is made fresh at every start and never written anywhere.
//!
//! One crypto provider everywhere: `ring` (rustls, rcgen, jsonwebtoken and the AEAD).

use std::sync::{Arc, RwLock};

use rcgen::KeyPair;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::store::Storage;

mod certs;
mod error;
mod http_cert;
mod key_id;
mod lifecycle;
mod master;
mod material;
mod record;
mod reload;

pub use certs::cert_serial;
pub use error::KeyError;
pub use key_id::KeyId;
pub use lifecycle::{run, Timing};
pub use master::{
    sealed_key_id, MasterKey, Rotation, MASTER_KEY_ENV, MASTER_KEY_FILE, NEW_KEY_FILE,
};
pub use material::{spki_pin, CaKey, JwtKey};
pub use record::{KeyKind, KeyRecord, KeyState};

use material::{first_ca_cn, short_id, Signed};
use record::RECORDS_BLOB;

/// The blob names of the first CA and JWT key (from before rotation; kept for them).
const FIRST_CA_BLOB: &str = "ca-key";
const FIRST_CA_CERT_BLOB: &str = "ca-cert";
const FIRST_JWT_BLOB: &str = "jwt-key-1";

/// A published key and its record.
#[derive(Debug)]
struct Live<K> {
    rec: KeyRecord,
    key: Arc<K>,
}

impl<K> Clone for Live<K> {
    fn clone(&self) -> Self {
        Live {
            rec: self.rec.clone(),
            key: self.key.clone(),
        }
    }
}

/// The keys in force at one moment: immutable, replaced whole on every change.
#[derive(Debug)]
pub struct KeySet {
    /// Published JWT keys, oldest first.
    jwt: Vec<Live<JwtKey>>,
    /// Published CAs, oldest first.
    ca: Vec<Live<CaKey>>,
    /// Records of retired keys.
    retired: Vec<KeyRecord>,
    active_jwt: Arc<JwtKey>,
    active_ca: Arc<CaKey>,
    serving_ca: Arc<CaKey>,
    /// Bumped at every change (for caches of what is derived from the set).
    generation: u64,
}

impl KeySet {
    fn new(
        mut jwt: Vec<Live<JwtKey>>,
        mut ca: Vec<Live<CaKey>>,
        retired: Vec<KeyRecord>,
        generation: u64,
    ) -> Result<KeySet, KeyError> {
        jwt.sort_by_key(|l| (l.rec.created, l.rec.activates_at));
        ca.sort_by_key(|l| (l.rec.created, l.rec.activates_at));
        let active_jwt = jwt
            .iter()
            .find(|l| l.rec.state == KeyState::Active)
            .map(|l| l.key.clone())
            .ok_or_else(|| KeyError::Records("no active JWT signing key".into()))?;
        let active_ca = ca
            .iter()
            .find(|l| l.rec.state == KeyState::Active)
            .map(|l| l.key.clone())
            .ok_or_else(|| KeyError::Records("no active CA".into()))?;
        // The oldest CA that signs or signed: agents that have not renewed since it was
        // the only one trust no other.
        let serving_ca = ca
            .iter()
            .find(|l| matches!(l.rec.state, KeyState::Active | KeyState::Retiring))
            .map(|l| l.key.clone())
            .unwrap_or_else(|| active_ca.clone());
        Ok(KeySet {
            jwt,
            ca,
            retired,
            active_jwt,
            active_ca,
            serving_ca,
            generation,
        })
    }

    /// Every record, retired ones included, by kind then age.
    pub fn records(&self) -> Vec<KeyRecord> {
        let mut out: Vec<KeyRecord> = self
            .jwt
            .iter()
            .map(|l| l.rec.clone())
            .chain(self.ca.iter().map(|l| l.rec.clone()))
            .chain(self.retired.iter().cloned())
            .collect();
        out.sort_by(|a, b| {
            (a.kind, a.created, a.activates_at, &a.id).cmp(&(
                b.kind,
                b.created,
                b.activates_at,
                &b.id,
            ))
        });
        out
    }
}

/// All key material the control plane holds in memory.
pub struct Keys {
    set: RwLock<Arc<KeySet>>,
    /// One change (rotation, state change) at a time.
    changing: tokio::sync::Mutex<()>,
    trust_domain: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.current();
        f.debug_struct("Keys")
            .field("jwt", &set.active_jwt)
            .field("ca", &set.active_ca)
            .finish_non_exhaustive()
    }
}

/// The record of a key in state `active` from `now`.
fn first_record(kind: KeyKind, id: String, blob: &str, now: i64) -> KeyRecord {
    KeyRecord {
        kind,
        id,
        state: KeyState::Active,
        created: now,
        activates_at: now,
        retiring_since: 0,
        retires_at: 0,
        blob: blob.to_string(),
        cert: String::new(),
        subject_cn: String::new(),
    }
}

/// First start of this version: records for the keys made before rotation existed, or
/// for new ones; written with the new keys' sealed blobs in one store write.
async fn first_records(
    store: &dyn Storage,
    master: &MasterKey,
    trust_domain: &str,
    now: i64,
) -> Result<Vec<KeyRecord>, KeyError> {
    let _hold = master.hold_for_sealed_write().await;
    let mut puts = Vec::new();
    let ca = match store.blob(FIRST_CA_BLOB)? {
        Some(sealed) => {
            let pkcs8 = master.open(FIRST_CA_BLOB, &sealed)?;
            let id = short_id(KeyPair::try_from(pkcs8.as_slice())?.public_key_raw());
            let der = store.blob(FIRST_CA_CERT_BLOB)?.ok_or_else(|| {
                KeyError::Records(format!(
                    "{FIRST_CA_BLOB} is stored without {FIRST_CA_CERT_BLOB}"
                ))
            })?;
            let mut r = first_record(KeyKind::Ca, id, FIRST_CA_BLOB, now);
            r.set_cert_der(&der);
            r
        }
        None => {
            let material::NewCa { pkcs8, der, id, .. } =
                CaKey::generate(|_| first_ca_cn(trust_domain))?;
            puts.push((
                FIRST_CA_BLOB.to_string(),
                master.seal(FIRST_CA_BLOB, &pkcs8)?,
            ));
            let mut r = first_record(KeyKind::Ca, id, FIRST_CA_BLOB, now);
            r.set_cert_der(&der);
            r
        }
    };
    let ca = KeyRecord {
        subject_cn: first_ca_cn(trust_domain),
        ..ca
    };
    let jwt_pkcs8 = match store.blob(FIRST_JWT_BLOB)? {
        Some(sealed) => master.open(FIRST_JWT_BLOB, &sealed)?,
        None => {
            let pkcs8 = JwtKey::generate()?;
            puts.push((
                FIRST_JWT_BLOB.to_string(),
                master.seal(FIRST_JWT_BLOB, &pkcs8)?,
            ));
            pkcs8
        }
    };
    let kid = JwtKey::from_pkcs8(&jwt_pkcs8, Signed::default())?.kid;
    let records = vec![first_record(KeyKind::Jwt, kid, FIRST_JWT_BLOB, now), ca];
    puts.push((RECORDS_BLOB.to_string(), record::encode(&records)?));
    // Only onto an empty store: replicas of a shared store starting at once on an empty
    // database create one set of keys, the first to commit; the others read it.
    store
        .put_key_blobs_if(RECORDS_BLOB, None, puts, Vec::new(), Vec::new())
        .await?;
    Ok(records)
}

/// The published keys of `records`, unsealed, as a set of `generation`. A key `held`
/// already has is taken from it, with what it signed; another is unsealed.
fn open_set(
    store: &dyn Storage,
    master: &MasterKey,
    records: Vec<KeyRecord>,
    now: i64,
    held: Option<&KeySet>,
    generation: u64,
) -> Result<KeySet, KeyError> {
    let (mut jwt, mut ca, mut retired) = (Vec::new(), Vec::new(), Vec::new());
    for rec in records {
        if !rec.state.published() {
            retired.push(rec);
            continue;
        }
        if let Some(held) = held {
            let jwt_held = held.jwt.iter().find(|l| l.rec.id == rec.id);
            let ca_held = held.ca.iter().find(|l| l.rec.id == rec.id);
            match (rec.kind, jwt_held, ca_held) {
                (KeyKind::Jwt, Some(l), _) => {
                    let key = l.key.clone();
                    jwt.push(Live { rec, key });
                    continue;
                }
                (KeyKind::Ca, _, Some(l)) => {
                    let key = l.key.clone();
                    ca.push(Live { rec, key });
                    continue;
                }
                _ => {}
            }
        }
        let sealed = store.blob(&rec.blob)?.ok_or_else(|| {
            KeyError::Records(format!(
                "the private key of {} key {} ({}) is missing from the store",
                rec.kind, rec.id, rec.blob
            ))
        })?;
        let pkcs8 = master.open(&rec.blob, &sealed)?;
        // An active key may have signed anything before this start.
        let signed = if rec.state == KeyState::Active {
            Signed::loaded_active(now)
        } else {
            Signed::default()
        };
        match rec.kind {
            KeyKind::Jwt => {
                let key = Arc::new(JwtKey::from_pkcs8(&pkcs8, signed)?);
                jwt.push(Live { rec, key });
            }
            KeyKind::Ca => {
                let key = Arc::new(CaKey::load(
                    &rec.id,
                    &pkcs8,
                    rec.cert_der()?,
                    &rec.subject_cn,
                    signed,
                )?);
                ca.push(Live { rec, key });
            }
        }
    }
    KeySet::new(jwt, ca, retired, generation)
}

/// Remove key blobs no published record names: a rotation cut short before its record
/// was written, or a retirement cut short before its key was erased.
async fn remove_orphans(
    store: &dyn Storage,
    set: &KeySet,
    stored: Option<Vec<u8>>,
) -> Result<(), KeyError> {
    let named: std::collections::HashSet<&str> = set
        .jwt
        .iter()
        .map(|l| l.rec.blob.as_str())
        .chain(set.ca.iter().map(|l| l.rec.blob.as_str()))
        .collect();
    let orphans: Vec<String> = store
        .sealed_records()?
        .into_iter()
        .map(|r| r.name)
        .filter(|n| record::is_key_blob(n) && !named.contains(n.as_str()))
        .collect();
    if !orphans.is_empty() {
        tracing::info!(blobs = ?orphans, "erasing private keys no published key record names");
        // Only if no other control plane on this store changed the records since they
        // were read: a key it just published is no orphan.
        match store
            .put_key_blobs_if(RECORDS_BLOB, stored, Vec::new(), orphans, Vec::new())
            .await
        {
            Ok(()) | Err(crate::store::StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl Keys {
    /// Load the keys from the store, creating them on first start, by the system clock.
    pub async fn load_or_create(
        store: &dyn Storage,
        master: &MasterKey,
        trust_domain: &str,
    ) -> Result<Keys, KeyError> {
        let now = crate::clock::Clock::system().now();
        Keys::load(store, master, trust_domain, now).await
    }

    /// Load the keys from the store, creating them on first start; `now` is the unix
    /// second of the control plane's clock.
    pub async fn load(
        store: &dyn Storage,
        master: &MasterKey,
        trust_domain: &str,
        now: i64,
    ) -> Result<Keys, KeyError> {
        let mut stored = store.blob(RECORDS_BLOB)?;
        if stored.is_none() {
            if let Err(e) = first_records(store, master, trust_domain, now).await {
                // Another control plane on this store created the keys first: refused
                // by the guard, or (committed while they were read) a half-seen set of
                // blobs. Its records are then there; without them the error stands.
                if store.blob(RECORDS_BLOB)?.is_none() {
                    return Err(e);
                }
                tracing::info!(error = %e, "another control plane on this store created the keys first; using them");
            }
            stored = store.blob(RECORDS_BLOB)?;
        }
        let records = record::decode(stored.as_deref().ok_or_else(|| {
            KeyError::Records("the key records were written and are gone from the store".into())
        })?)?;
        let set = open_set(store, master, records, now, None, 1)?;
        remove_orphans(store, &set, stored).await?;
        Ok(Keys {
            set: RwLock::new(Arc::new(set)),
            changing: tokio::sync::Mutex::new(()),
            trust_domain: trust_domain.to_string(),
        })
    }

    /// The keys in force now.
    pub fn current(&self) -> Arc<KeySet> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, set: KeySet) {
        *self.set.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }

    /// Bumped at every change of the keys in force.
    pub fn generation(&self) -> u64 {
        self.current().generation
    }

    /// Every key's record, retired ones included.
    pub fn list(&self) -> Vec<KeyRecord> {
        self.current().records()
    }

    /// The JWKS document: every published key (next, active, retiring).
    pub fn jwks(&self) -> serde_json::Value {
        let set = self.current();
        serde_json::json!({ "keys": set.jwt.iter().map(|l| l.key.jwk()).collect::<Vec<_>>() })
    }

    /// The key that signs new tokens.
    pub fn signing_key(&self) -> Arc<JwtKey> {
        self.current().active_jwt.clone()
    }

    /// The published JWT key with this `kid`.
    pub fn jwt_key(&self, kid: &str) -> Option<Arc<JwtKey>> {
        self.current()
            .jwt
            .iter()
            .find(|l| l.key.kid == kid)
            .map(|l| l.key.clone())
    }

    /// The CA the control plane serves under (the oldest active or retiring one).
    pub fn serving_ca(&self) -> Arc<CaKey> {
        self.current().serving_ca.clone()
    }

    /// The serving CA's certificate, DER: what agents enroll against.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.serving_ca().der.clone()
    }

    /// `sha256:<hex>` of the serving CA's SubjectPublicKeyInfo: what join tokens carry.
    pub fn ca_pin(&self) -> String {
        self.serving_ca().pin.clone()
    }

    /// Whether `pin` is that of a published CA.
    pub fn is_published_ca_pin(&self, pin: &str) -> bool {
        self.current().ca.iter().any(|l| l.key.pin == pin)
    }

    /// Every CA to trust now (next, active, retiring), DER, oldest first.
    pub fn bundle_ders(&self) -> Vec<Vec<u8>> {
        self.current()
            .ca
            .iter()
            .map(|l| l.key.der.to_vec())
            .collect()
    }

    /// Sign a host certificate for the key in `csr_der` with the active CA. Only the
    /// CSR's public key is used; names, usages and lifetime are ours.
    pub fn sign_host_cert(
        &self,
        csr_der: &[u8],
        host: &str,
        ttl: std::time::Duration,
    ) -> Result<(CertificateDer<'static>, String, i64), KeyError> {
        let ca = self.current().active_ca.clone();
        certs::host_cert(&ca, &self.trust_domain, csr_der, host, ttl)
    }

    /// Sign an admin certificate for the key in `csr_der` with the active CA (URI SAN
    /// `spiffe://<td>/leash/admin/<name>`).
    pub fn sign_admin_cert(
        &self,
        csr_der: &[u8],
        name: &str,
        ttl: std::time::Duration,
    ) -> Result<(CertificateDer<'static>, String, i64), KeyError> {
        let ca = self.current().active_ca.clone();
        certs::admin_cert(&ca, &self.trust_domain, csr_der, name, ttl)
    }

    /// Sign an X.509-SVID for the P-256 key in `csr_der` with the active CA: URI SAN
    /// `spiffe_id`, valid from `not_before` to `not_after` (unix seconds).
    pub fn sign_svid(
        &self,
        csr_der: &[u8],
        spiffe_id: &str,
        not_before: i64,
        not_after: i64,
    ) -> Result<Vec<u8>, KeyError> {
        let ca = self.current().active_ca.clone();
        certs::svid(&ca, csr_der, spiffe_id, not_before, not_after)
    }

    /// A fresh serving certificate and key for the control plane, signed by the serving
    /// CA, with the URI SAN `spiffe://<td>/leash/control-plane`. Never written to disk.
    pub fn serving_cert(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), KeyError> {
        certs::serving(&self.serving_ca(), &self.trust_domain)
    }

    /// [`Keys::serving_cert`] for the given CA.
    pub fn serving_cert_for(
        &self,
        ca: &CaKey,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), KeyError> {
        certs::serving(ca, &self.trust_domain)
    }
}

/// Shared handle.
pub type SharedKeys = Arc<Keys>;

#[cfg(test)]
mod tests;
