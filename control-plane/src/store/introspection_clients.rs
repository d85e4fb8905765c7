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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Storage;

    fn client(id: &str) -> IntrospectionClient {
        IntrospectionClient {
            id: id.into(),
            description: "d".into(),
            secret_sha256: "ab".repeat(32),
            created_at: 1,
            created_by: "root".into(),
        }
    }

    #[tokio::test]
    async fn clients_are_kept_listed_unique_and_removed_with_their_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path(), Default::default()).expect("store");
        let ev = |k: &str| Event::new(k);
        store
            .put_introspection_client(client("b"), ev("introspection-client-created"))
            .await
            .expect("put b");
        store
            .put_introspection_client(client("a"), ev("introspection-client-created"))
            .await
            .expect("put a");
        let taken = store
            .put_introspection_client(client("a"), ev("introspection-client-created"))
            .await;
        assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
        let ids: Vec<String> = store
            .introspection_clients()
            .expect("list")
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(
            store.introspection_client("a").expect("get"),
            Some(client("a"))
        );
        store
            .remove_introspection_client("a", ev("introspection-client-removed"))
            .await
            .expect("remove");
        assert_eq!(store.introspection_client("a").expect("get"), None);
        let again = store
            .remove_introspection_client("a", ev("introspection-client-removed"))
            .await;
        assert!(matches!(again, Err(StoreError::NotFound(_))), "{again:?}");
        let kinds: Vec<String> = store
            .events(0, 100)
            .expect("events")
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                "introspection-client-created",
                "introspection-client-created",
                "introspection-client-removed"
            ]
        );
    }
}
