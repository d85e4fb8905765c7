//! The `jwt` kind: an ES256 JWT with the claims docs/CLI.md documents, signed with the
//! control plane's current key. Nothing outside Leash to undo when its lease ends: the
//! token simply stops being accepted by anyone who checks introspection or its expiry.

use leash_proto::v1;

use super::{CredentialKind, Env, KindError, Material, MintRequest, Minted};
use crate::issuer::{self, Audience, Claims, LeashClaim};

/// The `jwt` credential kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Jwt;

#[async_trait::async_trait]
impl CredentialKind for Jwt {
    fn name(&self) -> &'static str {
        "jwt"
    }

    fn validate(&self, def: &v1::Credential) -> Result<(), KindError> {
        if def.audiences.is_empty() || def.audiences.iter().any(|a| a.trim().is_empty()) {
            return Err(KindError::Invalid(
                "a jwt credential needs at least one --audience".into(),
            ));
        }
        Ok(())
    }

    fn takes_audiences(&self) -> bool {
        true
    }

    async fn mint(&self, env: Env<'_>, req: MintRequest<'_>) -> Result<Minted, KindError> {
        let claims = Claims {
            iss: env.config.issuer.clone(),
            sub: format!("spiffe://{}/{}", env.config.trust_domain, req.workload.name),
            aud: if req.audiences.len() > 1 {
                Audience::Several(req.audiences.to_vec())
            } else {
                Audience::One(req.audience.to_string())
            },
            exp: req.now + i64::from(req.ttl),
            iat: req.now,
            nbf: req.now,
            jti: req.lease_id.to_string(),
            scope: req.scope.map(str::to_string),
            obo: req.on_behalf_of.map(str::to_string),
            leash: LeashClaim {
                host: req.host.to_string(),
                action: req.action.to_string(),
                owner: req.workload.owner.clone(),
                task: req.task.map(str::to_string),
            },
        };
        let token =
            issuer::sign(env.keys, &claims).map_err(|e| KindError::Unavailable(e.to_string()))?;
        Ok(Minted {
            fingerprint: issuer::fingerprint(&token),
            expires_at: claims.exp,
            material: Material::Token(token),
            version: 0,
            format: String::new(),
            events: Vec::new(),
        })
    }
}
