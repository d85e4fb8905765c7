//! `key rotate-master`: replace the master key, re-wrapping every sealed record under
//! the new one (the work is `MasterKey::rotate` in keys/master.rs).

use leash_proto::reason::Reason;
use leash_proto::v1;
use tonic::Status;

use crate::keys::KeyError;
use crate::state::Shared;

pub(super) async fn rotate_master(
    s: &Shared,
    actor: String,
) -> Result<v1::RotateMasterKeyResponse, Status> {
    let r = s
        .master
        .rotate(&*s.store, &actor)
        .await
        .map_err(key_status)?;
    tracing::info!(
        old_key_id = %r.old,
        new_key_id = %r.new,
        records = r.records,
        actor = %actor,
        "master key rotated"
    );
    Ok(v1::RotateMasterKeyResponse {
        old_key_id: r.old.to_string(),
        new_key_id: r.new.to_string(),
        records: u32::try_from(r.records).unwrap_or(u32::MAX),
    })
}

/// A key from `$LEASH_MASTER_KEY` is the caller's to change, not ours (bad request, exit
/// 1); anything else failed on our side (unavailable, exit 5), and the old key stays in
/// force unless the new one was committed.
fn key_status(e: KeyError) -> Status {
    match e {
        KeyError::KeyFromEnvironment(_) => Reason::Invalid.status(e.to_string()),
        KeyError::Store(e) => Status::from(e),
        e => {
            tracing::error!(error = %e, "master-key rotation failed");
            Reason::Unavailable.status(format!("the master key was not rotated: {e}"))
        }
    }
}
