//! `key rotate-master`: replace the master key, re-wrapping every sealed record under
//! the new one (the work is `MasterKey::rotate` in keys/master.rs). `key rotate jwt|ca`
//! and `key list`: the signing keys and CAs (the work is in keys/lifecycle.rs).

use leash_proto::reason::Reason;
use leash_proto::v1;
use tonic::Status;

use crate::keys::{KeyError, KeyKind, KeyRecord, Timing};
use crate::state::Shared;

/// How rotation goes by this control plane's configuration.
pub(crate) fn timing(s: &Shared) -> Timing {
    Timing::new(s.config.keys_publish_ahead, s.config.host_cert_ttl)
}

fn key_info(r: &KeyRecord) -> v1::KeyInfo {
    v1::KeyInfo {
        kind: r.kind.as_str().to_string(),
        id: r.id.clone(),
        state: r.state.as_str().to_string(),
        created_unix: r.created,
        activates_at_unix: r.activates_at,
        retiring_since_unix: r.retiring_since,
        retires_at_unix: r.retires_at,
    }
}

/// `key rotate jwt|ca`: a new key, published now, signing after `publish_ahead`.
pub(super) async fn rotate_key(
    s: &Shared,
    actor: String,
    r: v1::RotateKeyRequest,
) -> Result<v1::KeyInfo, Status> {
    let kind = KeyKind::parse(&r.kind).ok_or_else(|| {
        Reason::Invalid.status(format!(
            "unknown key kind {:?}: rotate `jwt` (the JWT signing key) or `ca` (the X.509 CA)",
            leash_proto::names::escape(&r.kind)
        ))
    })?;
    let rec = s
        .keys
        .rotate(kind, &actor, &*s.store, &s.master, s.clock.now(), timing(s))
        .await
        .map_err(|e| match e {
            KeyError::RotationPending { kind, id, activates_at } => Reason::Invalid.status(format!(
                "{kind} key {id} is already waiting to become active (at {}); rotate again once it is active (`leashctl key list` shows it)",
                leash_proto::cli::time(activates_at)
            )),
            KeyError::Store(e) => Status::from(e),
            e => {
                tracing::error!(error = %e, "key rotation failed");
                Reason::Unavailable.status(format!("the key was not rotated: {e}"))
            }
        })?;
    s.keys_changed();
    Ok(key_info(&rec))
}

/// `key list`: every key, retired ones included.
pub(super) async fn list_keys(s: &Shared) -> Result<v1::ListKeysResponse, Status> {
    Ok(v1::ListKeysResponse {
        keys: s.keys.list().iter().map(key_info).collect(),
    })
}

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
