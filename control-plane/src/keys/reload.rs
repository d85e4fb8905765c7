//! Following the key records when several control planes share one store: another
//! replica may rotate a key or move one through its states, and this one must then sign
//! with, and publish, what the stored records say. The records are read again, and a
//! set that differs from the one in force replaces it: keys already held are kept with
//! what they signed, new ones are unsealed. Every change of the records is a
//! read-check-write of this same blob (`Storage::put_key_blobs_if`), so two replicas
//! changing keys at once cannot overwrite each other: the second is refused and reads
//! again.

use super::error::KeyError;
use super::record::{self, KeyRecord, RECORDS_BLOB};
use super::{open_set, Keys, MasterKey};
use crate::store::Storage;

/// The records in the order [`super::KeySet::records`] gives them.
fn sorted(mut records: Vec<KeyRecord>) -> Vec<KeyRecord> {
    records.sort_by(|a, b| {
        (a.kind, a.created, a.activates_at, &a.id).cmp(&(b.kind, b.created, b.activates_at, &b.id))
    });
    records
}

impl Keys {
    /// Make the stored key records the set in force if they differ from it (another
    /// control plane on this store changed them). Returns whether the set changed.
    pub async fn reload(
        &self,
        store: &dyn Storage,
        master: &MasterKey,
        now: i64,
    ) -> Result<bool, KeyError> {
        let _one = self.changing.lock().await;
        Ok(self.sync_locked(store, master, now)?.1)
    }

    /// [`Keys::reload`] for a caller that holds `changing`: also returns the stored bytes
    /// read, which the caller's write must find unchanged.
    pub(super) fn sync_locked(
        &self,
        store: &dyn Storage,
        master: &MasterKey,
        now: i64,
    ) -> Result<(Option<Vec<u8>>, bool), KeyError> {
        let stored = store.blob(RECORDS_BLOB)?;
        let Some(bytes) = stored.as_deref() else {
            return Ok((stored, false));
        };
        let records = sorted(record::decode(bytes)?);
        let set = self.current();
        if records == set.records() {
            return Ok((stored, false));
        }
        let next = open_set(store, master, records, now, Some(&set), set.generation + 1)?;
        self.replace(next);
        tracing::info!(
            "the key records changed in the store (another control plane); now using them"
        );
        Ok((stored, true))
    }
}
