//! `Backup`: a consistent snapshot of the sled store, streamed to `leash-control-plane
//! backup` in chunks of the backup file (format in `backup.rs`).

use std::pin::Pin;

use futures::Stream;
use leash_proto::reason::Reason;
use leash_proto::v1;
use tonic::Status;

use crate::backup::{encode, CHUNK_BYTES};
use crate::state::Shared;
use crate::store::StoreError;

/// The chunks of one backup file.
pub type BackupStream = Pin<Box<dyn Stream<Item = Result<v1::BackupChunk, Status>> + Send>>;

pub(super) async fn backup(s: &Shared, actor: &str) -> Result<BackupStream, Status> {
    let snap = s.store.snapshot().await.map_err(|e| match e {
        // The store is PostgreSQL: a usage error of the command, not a denial.
        StoreError::Refused(m) => Reason::Invalid.status(m),
        e => Status::from(e),
    })?;
    let taken_ms = s.clock.now_ms();
    let (seq, rows) = (snap.seq, snap.rows());
    // Encoding and hashing a large store takes a while: off the async workers.
    let bytes = tokio::task::spawn_blocking(move || encode(&snap, taken_ms))
        .await
        .map_err(|e| Reason::Unavailable.status(format!("encoding the backup failed: {e}")))?;
    tracing::info!(actor, seq, rows, bytes = bytes.len(), "backup taken");
    let total = bytes.len() as u64;
    // Each chunk is copied out as it is sent, so the file is held once.
    let n = bytes.len().div_ceil(CHUNK_BYTES);
    Ok(Box::pin(futures::stream::iter((0..n).map(move |i| {
        let end = ((i + 1) * CHUNK_BYTES).min(bytes.len());
        Ok(v1::BackupChunk {
            data: bytes[i * CHUNK_BYTES..end].to_vec(),
            seq: if i == 0 { seq } else { 0 },
            total_bytes: if i == 0 { total } else { 0 },
        })
    }))))
}
