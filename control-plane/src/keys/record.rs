//! The durable record of every JWT signing key and CA: its kind, id, state and dates,
//! and the name of the blob its sealed private key is stored under.
//!
//! All records live in one blob ([`RECORDS_BLOB`]), rewritten whole at every state
//! change, so a change is one atomic write of one value. The record is written in the
//! same store write as what it refers to: a new key's sealed blob first, then the
//! record; at retirement the record first, then the blob's removal. A crash between the
//! two leaves only a blob no record names, which the next start removes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::error::KeyError;

/// The blob holding every key record (JSON). Not sealed: it holds no secret.
pub const RECORDS_BLOB: &str = "key-records";

/// What a key signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// An ES256 key that signs JWTs (and JWT-SVIDs).
    Jwt,
    /// The X.509 CA: host certificates, X.509-SVIDs, the serving certificate.
    Ca,
}

impl KeyKind {
    /// `jwt` or `ca`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Jwt => "jwt",
            KeyKind::Ca => "ca",
        }
    }

    /// Parse `jwt` or `ca`.
    pub fn parse(s: &str) -> Option<KeyKind> {
        match s {
            "jwt" => Some(KeyKind::Jwt),
            "ca" => Some(KeyKind::Ca),
            _ => None,
        }
    }
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Published (JWKS, CA bundle), not yet signing.
    Next,
    /// Published and signing.
    Active,
    /// Published, no longer signing: what it signed may still be valid.
    Retiring,
    /// Unpublished; its private key is erased.
    Retired,
}

impl KeyState {
    /// `next`, `active`, `retiring` or `retired`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
            KeyState::Retired => "retired",
        }
    }

    /// Whether verifiers are given this key (JWKS, CA bundle).
    pub fn published(self) -> bool {
        self != KeyState::Retired
    }
}

/// One key's durable record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// `jwt` or `ca`.
    pub kind: KeyKind,
    /// The JWT `kid`, or the CA's id (short hash of its public key).
    pub id: String,
    /// Its state.
    pub state: KeyState,
    /// Unix seconds it was made.
    pub created: i64,
    /// Unix seconds it starts (or started) signing.
    pub activates_at: i64,
    /// Unix seconds it stopped signing; 0 while it has not.
    #[serde(default)]
    pub retiring_since: i64,
    /// Unix seconds it is (or was) unpublished: the latest expiry of what it signed.
    /// 0 while it is not retiring.
    #[serde(default)]
    pub retires_at: i64,
    /// The blob its sealed private key is stored under.
    pub blob: String,
    /// CA only: the certificate, DER, base64.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cert: String,
    /// CA only: the subject's common name (what certificates it signs name as issuer).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject_cn: String,
}

impl KeyRecord {
    /// The CA certificate, DER.
    pub fn cert_der(&self) -> Result<Vec<u8>, KeyError> {
        STANDARD
            .decode(&self.cert)
            .map_err(|e| KeyError::Cert(format!("the stored certificate of CA {}: {e}", self.id)))
    }

    /// Store `der` as the CA certificate.
    pub fn set_cert_der(&mut self, der: &[u8]) {
        self.cert = STANDARD.encode(der);
    }
}

/// The stored form of all records.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    version: u32,
    keys: Vec<KeyRecord>,
}

/// Encode every record for [`RECORDS_BLOB`].
pub fn encode(records: &[KeyRecord]) -> Result<Vec<u8>, KeyError> {
    serde_json::to_vec(&Stored {
        version: 1,
        keys: records.to_vec(),
    })
    .map_err(|e| KeyError::Records(format!("cannot encode the key records: {e}")))
}

/// Decode [`RECORDS_BLOB`].
pub fn decode(bytes: &[u8]) -> Result<Vec<KeyRecord>, KeyError> {
    let s: Stored = serde_json::from_slice(bytes)
        .map_err(|e| KeyError::Records(format!("{RECORDS_BLOB} does not decode: {e}")))?;
    if s.version != 1 {
        return Err(KeyError::Records(format!(
            "{RECORDS_BLOB} has version {}; this control plane reads version 1: run a newer one",
            s.version
        )));
    }
    Ok(s.keys)
}

/// The blob a new key of `kind` with `id` is sealed under. Keys made before rotation
/// existed keep their names (`ca-key`, `jwt-key-1`).
pub fn blob_name(kind: KeyKind, id: &str) -> String {
    format!("{}-key-{id}", kind.as_str())
}

pub use crate::store::is_key_blob;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_newer_version_is_refused() {
        let mut r = KeyRecord {
            kind: KeyKind::Ca,
            id: "ab".into(),
            state: KeyState::Retiring,
            created: 1,
            activates_at: 2,
            retiring_since: 3,
            retires_at: 4,
            blob: blob_name(KeyKind::Ca, "ab"),
            cert: String::new(),
            subject_cn: "Leash CA td ab".into(),
        };
        r.set_cert_der(&[1, 2, 3]);
        let back = decode(&encode(std::slice::from_ref(&r)).expect("encode")).expect("decode");
        assert_eq!(back, vec![r.clone()]);
        assert_eq!(back[0].cert_der().expect("der"), vec![1, 2, 3]);
        let text = String::from_utf8(encode(&[r]).expect("encode")).expect("utf8");
        assert!(text.contains("\"state\":\"retiring\""), "{text}");
        let newer = text.replace("\"version\":1", "\"version\":2");
        let e = decode(newer.as_bytes()).expect_err("newer").to_string();
        assert!(e.contains("version 2"), "{e}");
        assert!(is_key_blob("ca-key-ab") && is_key_blob("ca-key") && is_key_blob("jwt-key-1"));
        assert!(!is_key_blob(RECORDS_BLOB) && !is_key_blob("ca-cert"));
    }
}
