//! How records are laid out in sled: big-endian keys, JSON values.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{Result, StoreError};
use super::kv::Tree;

pub(super) fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub(super) fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // Most records (a lease with its context, an event) are a few hundred bytes: start
    // there rather than grow from serde_json's 128.
    let mut out = Vec::with_capacity(512);
    // Serialising our own plain records cannot fail (no maps with non-string keys).
    match serde_json::to_writer(&mut out, v) {
        Ok(()) => out,
        Err(_) => Vec::new(),
    }
}

pub(super) fn dec<T: DeserializeOwned>(tree: &'static str, b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt {
        tree,
        message: e.to_string(),
    })
}

pub(super) fn get<T: DeserializeOwned>(
    t: &Tree,
    name: &'static str,
    key: &[u8],
) -> Result<Option<T>> {
    match t.get(key)? {
        Some(v) => Ok(Some(dec(name, &v)?)),
        None => Ok(None),
    }
}

pub(super) fn all<T: DeserializeOwned>(t: &Tree, name: &'static str) -> Result<Vec<T>> {
    t.iter().values().map(|v| dec(name, &v?)).collect()
}

/// Policy versions live in the blob tree under these keys (where they always have, so
/// older databases read unchanged): the record as JSON per version, and the current
/// version number big-endian.
pub(super) const POLICY_CURRENT_KEY: &str = "policy/current";
pub(super) const POLICY_VERSION_PREFIX: &str = "policy/v/";

pub(super) fn policy_key(version: u64) -> String {
    format!("{POLICY_VERSION_PREFIX}{version}")
}

pub(super) fn meta_u64(t: &Tree, key: &str) -> Result<u64> {
    Ok(t.get(key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// Key of the ended-lease index: (expires_at BE, id).
pub(super) fn ended_key(l: &crate::model::Lease) -> Vec<u8> {
    let mut k = be(l.expires_at.max(0) as u64).to_vec();
    k.extend_from_slice(l.id.as_bytes());
    k
}
