//! The `secret` kind: a brokered secret, a value an admin stored (`leashctl secret put`)
//! and Leash releases, under the same policy, approvals, lease and revocation as a JWT.
//! Minting opens the current version with the master key; the value is never written
//! anywhere unsealed. Nothing outside Leash to undo when a lease ends: the agent wipes
//! its copy, and taking the value back at its source is a rotation.

use leash_proto::v1;

use super::{CredentialKind, Env, KindError, Material, MintRequest, Minted};
use crate::model::secret_aad;
use crate::store::SECRET_KIND;

/// The `secret` credential kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Secret;

#[async_trait::async_trait]
impl CredentialKind for Secret {
    fn name(&self) -> &'static str {
        SECRET_KIND
    }

    fn validate(&self, def: &v1::Credential) -> Result<(), KindError> {
        Err(KindError::Invalid(format!(
            "a secret is not defined with `credential add`: use `leashctl secret put {} --owner OWNER` with the value on stdin",
            def.name
        )))
    }

    async fn mint(&self, env: Env<'_>, req: MintRequest<'_>) -> Result<Minted, KindError> {
        let name = &req.credential.name;
        let unavailable = |m: String| KindError::Unavailable(m);
        // The version current now, not when the request was resolved: the lease write
        // checks that it is still current (a rotation in between makes it mint again).
        let current = env
            .store
            .credential(name)
            .map_err(|e| unavailable(e.to_string()))?
            .filter(|c| c.kind == SECRET_KIND)
            .map(|c| c.current_version)
            .ok_or_else(|| unavailable(format!("secret {name:?} was removed meanwhile")))?;
        let v = env
            .store
            .secret_version(name, current)
            .map_err(|e| unavailable(e.to_string()))?
            .ok_or_else(|| {
                unavailable(format!(
                    "version {current} of secret {name:?} is missing from the store"
                ))
            })?;
        let plain = env
            .master
            .open(&secret_aad(name, current), &v.sealed)
            .map_err(|e| {
                unavailable(format!(
                    "cannot open version {current} of secret {name:?}: {e}"
                ))
            })?;
        // Values are checked to be UTF-8 when they are stored.
        let value = String::from_utf8(plain.to_vec()).map_err(|_| {
            unavailable(format!(
                "version {current} of secret {name:?} is not UTF-8 text"
            ))
        })?;
        Ok(Minted {
            material: Material::Token(value),
            expires_at: req.now + i64::from(req.ttl),
            fingerprint: v.fingerprint,
            version: current,
            format: req.credential.format.clone(),
            events: Vec::new(),
        })
    }
}
