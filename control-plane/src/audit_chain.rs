//! The tamper-evident audit chain: the canonical encoding every event is hashed in, the
//! signed checkpoints, and the JSON lines `leashctl audit export` writes.
//!
//! **Canonical encoding.** An event's JSON object as it is stored and exported, without
//! its `hash` member, written with every object's members sorted by name (bytewise, at
//! every depth), no whitespace, and strings and numbers as `serde_json` writes them
//! (UTF-8, only `"`, `\` and control characters escaped). Absent optional fields are
//! absent, not `null`. So it covers `id`, `at_ms`, `type`, `actor`, `host`, `workload`,
//! `credential`, `lease`, `task`, `approval`, `reason`, `detail` and `prev_hash`.
//! `hash` = lowercase hex of SHA-256 over those bytes; `prev_hash` = the previous
//! event's `hash`, or [`ZERO_HASH`] for the first event of the chain.
//!
//! **Checkpoints** sign, with the control plane's own Ed25519 key, the canonical
//! encoding of `{"at_ms","hash","id","key_id","kind"}` (the checkpoint line without
//! `type` and `signature`). `kind` is `periodic`, or `anchor` for the last event a
//! retention pass forgot: the chain then starts from that anchor's hash.
//!
//! This file uses nothing of the store, so the store, the server and `leashctl` share it.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::Event;

/// `prev_hash` of the first event of a chain.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `type` of the export line that carries the checkpoint public key.
pub const KEY_LINE: &str = "audit.key";
/// `type` of the export line that describes the chain (genesis, anchor, head).
pub const CHAIN_LINE: &str = "audit.chain";
/// `type` of a checkpoint line.
pub const CHECKPOINT_LINE: &str = "audit.checkpoint";

/// The one signature algorithm of checkpoints.
pub const ALGORITHM: &str = "Ed25519";

/// Write `v` in the canonical form (see the module doc) to `out`.
pub fn canonical_into(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_into(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_into(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The canonical form of `v`.
pub fn canonical(v: &Value) -> String {
    let mut s = String::with_capacity(512);
    canonical_into(v, &mut s);
    s
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// The `hash` of an event given as its JSON object (an export line): over the canonical
/// form of the object without `hash`.
pub fn value_hash(v: &Value) -> String {
    match v {
        Value::Object(m) if m.contains_key("hash") => {
            let mut m = m.clone();
            m.remove("hash");
            sha256_hex(canonical(&Value::Object(m)).as_bytes())
        }
        _ => sha256_hex(canonical(v).as_bytes()),
    }
}

/// The `hash` of `e` (its own `hash` field is left out).
pub fn event_hash(e: &Event) -> String {
    match serde_json::to_value(e) {
        Ok(v) => value_hash(&v),
        // An event is plain data and always serialises; an empty hash never matches.
        Err(_) => String::new(),
    }
}

/// A position in the chain: an event id and that event's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Event id (0 before the first event).
    pub id: u64,
    /// Its `hash` ([`ZERO_HASH`] before the first chained event).
    pub hash: String,
}

/// Where the chain stands, as the store records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainState {
    /// The first event id written with a hash; events before it predate the chain.
    pub genesis: u64,
    /// The last event written.
    pub head: Link,
    /// The last event a retention pass forgot, when it was chained: the first event kept
    /// has its hash as `prev_hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<Link>,
}

/// What a checkpoint signs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// Every `checkpoint_every` events, or `checkpoint_interval`.
    Periodic,
    /// The last event forgotten by retention.
    Anchor,
}

/// A signed statement that event `id` had hash `hash` at `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Event id.
    pub id: u64,
    /// That event's hash.
    pub hash: String,
    /// Unix ms when it was signed.
    pub at_ms: i64,
    /// Periodic or anchor.
    pub kind: CheckpointKind,
    /// Which key signed (see [`key_id`]).
    pub key_id: String,
    /// Base64 (standard) Ed25519 signature over [`Checkpoint::signed_bytes`].
    pub signature: String,
}

impl Checkpoint {
    /// What the signature covers: the canonical form of the checkpoint without
    /// `signature` (and without the export line's `type`).
    pub fn signed_bytes(
        id: u64,
        hash: &str,
        at_ms: i64,
        kind: CheckpointKind,
        key_id: &str,
    ) -> Vec<u8> {
        let v = serde_json::json!({
            "id": id, "hash": hash, "at_ms": at_ms, "kind": kind, "key_id": key_id,
        });
        canonical(&v).into_bytes()
    }

    /// Whether the signature is `key`'s (raw 32-byte Ed25519 public key).
    pub fn verify(&self, key: &[u8]) -> bool {
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(&self.signature) else {
            return false;
        };
        let msg = Self::signed_bytes(self.id, &self.hash, self.at_ms, self.kind, &self.key_id);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
            .verify(&msg, &sig)
            .is_ok()
    }

    /// The export line of this checkpoint.
    pub fn line(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["type"] = CHECKPOINT_LINE.into();
        v
    }
}

/// The id of a checkpoint public key: the first 16 hex digits of its SHA-256.
pub fn key_id(public: &[u8]) -> String {
    let mut h = sha256_hex(public);
    h.truncate(16);
    h
}

/// The export line that carries the public key checkpoints are verified with.
pub fn key_line(public: &[u8]) -> Value {
    serde_json::json!({
        "type": KEY_LINE,
        "algorithm": ALGORITHM,
        "key_id": key_id(public),
        "public_key": base64::engine::general_purpose::STANDARD.encode(public),
    })
}

/// The export line that describes the chain; `after_id` is where the export starts
/// (events after it follow), so a verifier tells a partial export from a deleted prefix.
pub fn chain_line(c: &ChainState, after_id: u64) -> Value {
    let mut v = serde_json::json!({
        "type": CHAIN_LINE,
        "genesis": c.genesis,
        "head_id": c.head.id,
        "head_hash": c.head.hash,
        "after_id": after_id,
    });
    if let Some(a) = &c.anchor {
        v["anchor_id"] = a.id.into();
        v["anchor_hash"] = a.hash.clone().into();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sorts_keys_at_every_depth_without_whitespace() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"z":[1,{"y":2,"x":"é\n"}],"c":null}}"#)
            .expect("json");
        assert_eq!(
            canonical(&v),
            r#"{"a":{"c":null,"z":[1,{"x":"é\n","y":2}]},"b":1}"#
        );
    }

    #[test]
    fn the_hash_leaves_out_hash_and_covers_everything_else() {
        let mut e = Event::new("issued").actor("host-1");
        e.id = 7;
        e.at_ms = 1_000;
        e.prev_hash = Some(ZERO_HASH.into());
        let h = event_hash(&e);
        assert_eq!(h.len(), 64);
        let mut with = e.clone();
        with.hash = Some(h.clone());
        assert_eq!(event_hash(&with), h, "its own hash is not covered");
        let v = serde_json::to_value(&with).expect("value");
        assert_eq!(value_hash(&v), h, "an export line hashes the same");
        let expected = sha256_hex(
            br#"{"actor":"host-1","at_ms":1000,"id":7,"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","type":"issued"}"#,
        );
        assert_eq!(h, expected, "the documented canonical form");
        let mut edited = e.clone();
        edited.actor = Some("host-2".into());
        assert_ne!(event_hash(&edited), h);
        let mut relinked = e;
        relinked.prev_hash = Some("1".repeat(64));
        assert_ne!(event_hash(&relinked), h);
    }
}
