//! `join-token create|list|revoke`: minting one-time enrollment tokens (only the
//! secret's hash is kept) and taking them back.

use std::collections::BTreeMap;

use leash_proto::join_token::JoinToken;
use leash_proto::reason::Reason;
use leash_proto::v1;
use ring::rand::SecureRandom;
use tonic::Status;

use super::check::{check_labels, invalid};
use crate::audit;
use crate::model::{valid_name, JoinTokenRecord};
use crate::state::Shared;
use crate::wire::{self};

/// Longest a join token may live.
const MAX_JOIN_TOKEN_TTL: u32 = 7 * 24 * 3600;

pub(super) async fn create(
    s: &Shared,
    actor: String,
    r: v1::CreateJoinTokenRequest,
) -> Result<v1::CreateJoinTokenResponse, Status> {
    let ttl = if r.ttl_seconds == 0 {
        600
    } else {
        r.ttl_seconds
    };
    if ttl > MAX_JOIN_TOKEN_TTL {
        return Err(invalid(
            "join tokens live at most 7 days (168h); use a shorter --ttl",
        ));
    }
    let name = (!r.name.is_empty()).then_some(r.name);
    if let Some(n) = &name {
        if !valid_name(n) || n.contains('/') {
            return Err(invalid(format!(
                "invalid host name {n:?}: use letters, digits, '.', '-', '_'"
            )));
        }
        if s.store.host(n).map_err(Status::from)?.is_some() {
            return Err(invalid(format!(
                "host name {n:?} is taken; names are never reused"
            )));
        }
    }
    let labels: BTreeMap<String, String> = r.labels.into_iter().collect();
    check_labels(&labels, "label")?;
    let id = crate::random_id("jt", 6);
    let mut secret = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| Reason::Unavailable.status("no randomness available"))?;
    let now = s.clock.now();
    let rec = JoinTokenRecord {
        id: id.clone(),
        secret_sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, &secret)),
        name,
        labels,
        created_at: now,
        expires_at: now + i64::from(ttl),
        used_by: None,
        revoked: false,
    };
    let token = JoinToken::encode(&id, &secret, &s.keys.ca_pin());
    let ev = audit::join_token_created(s.clock.now_ms(), &actor, &rec, ttl);
    s.store
        .put_join_token(rec, ev)
        .await
        .map_err(Status::from)?;
    Ok(v1::CreateJoinTokenResponse {
        token,
        id,
        expires_at_unix: now + i64::from(ttl),
    })
}

pub(super) async fn list(s: &Shared) -> Result<v1::ListJoinTokensResponse, Status> {
    let now = s.clock.now();
    let tokens = s
        .store
        .join_tokens()
        .map_err(Status::from)?
        .into_iter()
        .map(|t| wire::join_token_info(t, now))
        .collect();
    Ok(v1::ListJoinTokensResponse { tokens })
}

pub(super) async fn revoke(
    s: &Shared,
    actor: String,
    req: v1::NameRequest,
) -> Result<v1::Empty, Status> {
    let id = req.name;
    let ev = audit::join_token_revoked(s.clock.now_ms(), &actor, &id);
    s.store
        .revoke_join_token(&id, ev)
        .await
        .map_err(Status::from)?;
    Ok(v1::Empty {})
}
