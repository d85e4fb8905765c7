//! Introspection clients in sled: the callers of the HTTPS `/introspect` endpoint that
//! authenticate with a client id and secret. Each is an [`IntrospectionClient`] in the
//! `meta` tree under `introspection-client/<id>`; only the SHA-256 of its secret is kept.

use serde::{Deserialize, Serialize};

use super::codec::{dec, enc, get};
use super::error::{Result, StoreError};
use super::sled_store::SledStore;
use crate::model::Event;

const PREFIX: &str = "introspection-client/";

fn key(id: &str) -> Vec<u8> {
    format!("{PREFIX}{id}").into_bytes()
}

/// A client of `/introspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntrospectionClient {
    /// The client id (the name it was created with).
    pub id: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// Unix seconds.
    pub created_at: i64,
    /// The admin who created it.
    pub created_by: String,
}

impl SledStore {
    pub(super) fn read_introspection_client(
        &self,
        id: &str,
    ) -> Result<Option<IntrospectionClient>> {
        get(&self.t.meta, "meta", &key(id))
    }

    pub(super) fn read_introspection_clients(&self) -> Result<Vec<IntrospectionClient>> {
        let mut out = Vec::new();
        for kv in self.t.meta.scan_prefix(PREFIX.as_bytes()) {
            let (_, v) = kv?;
            out.push(dec("meta", &v)?);
        }
        Ok(out)
    }

    pub(super) async fn write_introspection_client(
        &self,
        c: IntrospectionClient,
        event: Event,
    ) -> Result<()> {
        self.write(move |tx| {
            let k = key(&c.id);
            if tx.t.meta.get(&k)?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "introspection client {:?} exists; remove it first or choose another name",
                    c.id
                )));
            }
            tx.t.meta.insert(k, enc(&c))?;
            tx.event(event)
        })
        .await
    }

    pub(super) async fn delete_introspection_client(&self, id: &str, event: Event) -> Result<()> {
        let id = id.to_string();
        self.write(move |tx| {
            if tx.t.meta.remove(key(&id))?.is_none() {
                return Err(StoreError::NotFound(format!(
                    "no introspection client named {id:?} (see leashctl introspection-client list)"
                )));
            }
            tx.event(event)
        })
        .await
    }
}
