//! JWT issuance: the claims docs/CLI.md documents, signed ES256 with a `kid`, and the
//! introspection answer for a presented token.

use serde::{Deserialize, Serialize};

use crate::keys::Keys;
use crate::model::Lease;

/// The `leash` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeashClaim {
    /// Host name.
    pub host: String,
    /// Action class.
    pub action: String,
    /// Workload owner.
    pub owner: String,
    /// Task id, only inside a task.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub task: Option<String>,
}

/// A token's `aud`: a string for one audience, an array for several (RFC 7519 4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// One audience.
    One(String),
    /// Several audiences.
    Several(Vec<String>),
}

/// Token claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Workload SPIFFE ID.
    pub sub: String,
    /// Audience.
    pub aud: Audience,
    /// Expiry (unix s).
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Lease id.
    pub jti: String,
    /// Space-separated scopes for the action, when the credential defines them.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub scope: Option<String>,
    /// Principal a shared agent acts for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub obo: Option<String>,
    /// Leash context.
    pub leash: LeashClaim,
}

/// Signing failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The claims did not serialize (should not happen with our own types).
    #[error("encoding the claims failed: {0}")]
    Encode(#[from] serde_json::Error),
    /// ring refused to sign (should not happen with our own key).
    #[error("signing failed")]
    Sign,
}

/// Sign `claims` with the current key: a compact JWS (RFC 7515), ES256, with the
/// key's `kid`. The key pair and the header are prepared once per key; only the
/// claims are encoded per token.
pub fn sign(keys: &Keys, claims: &Claims) -> Result<String, IssueError> {
    use base64::Engine;
    let key = keys.signing_key();
    // The key stays published until this token has expired.
    key.record_expiry(claims.exp);
    let payload = serde_json::to_vec(claims)?;
    let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // header "." payload "." signature (64 bytes → 86 characters).
    let mut token =
        String::with_capacity(key.header_b64.len() + 2 + payload.len().div_ceil(3) * 4 + 86);
    token.push_str(&key.header_b64);
    token.push('.');
    b64.encode_string(&payload, &mut token);
    let sig = key
        .pair
        .sign(&ring::rand::SystemRandom::new(), token.as_bytes())
        .map_err(|_| IssueError::Sign)?;
    token.push('.');
    b64.encode_string(sig.as_ref(), &mut token);
    Ok(token)
}

/// Short SHA-256 fingerprint of a token (safe to log).
pub fn fingerprint(token: &str) -> String {
    hex::encode(&ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref()[..6])
}

/// Verify a token's signature against our keys and return its claims; expiry is not
/// checked here (introspection reports it).
pub fn verify(keys: &Keys, token: &str) -> Option<Claims> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    let key = keys.jwt_key(header.kid.as_deref()?)?;
    let decoding = jsonwebtoken::DecodingKey::from_ec_components(
        &base64_url(&key.public[1..33]),
        &base64_url(&key.public[33..65]),
    )
    .ok()?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.validate_exp = false;
    v.validate_aud = false;
    v.validate_nbf = false;
    v.required_spec_claims.clear();
    jsonwebtoken::decode::<Claims>(token, &decoding, &v)
        .ok()
        .map(|d| d.claims)
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// RFC 7662 answer for a token, given the lease it names (if any).
pub fn introspection(
    claims: Option<&Claims>,
    lease: Option<&Lease>,
    now: i64,
) -> serde_json::Value {
    let (Some(c), Some(l)) = (claims, lease) else {
        return serde_json::json!({ "active": false });
    };
    let state = if l.state == crate::model::LeaseState::Active && l.expires_at <= now {
        "expired"
    } else {
        l.state.as_str()
    };
    let active = state == "active";
    let mut doc = serde_json::json!({
        "active": active,
        "sub": c.sub,
        "aud": c.aud,
        "exp": c.exp,
        "iat": c.iat,
        "iss": c.iss,
        "jti": c.jti,
        "token_type": "Bearer",
        "state": state,
    });
    if let Some(s) = &c.scope {
        doc["scope"] = s.clone().into();
    }
    if let Some(o) = &c.obo {
        doc["obo"] = o.clone().into();
    }
    if let Some(r) = &l.reason {
        doc["reason"] = r.clone().into();
    }
    doc
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    use super::*;
    use crate::keys::MasterKey;
    use crate::store::SledStore;

    #[tokio::test]
    async fn signed_tokens_verify_with_jsonwebtoken_and_carry_the_kid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path(), Default::default()).expect("store");
        let master = MasterKey::load_or_create(dir.path()).expect("master");
        let k = Keys::load_or_create(&*store, &master, "td")
            .await
            .expect("keys");
        let claims = Claims {
            iss: "spiffe://td".into(),
            sub: "spiffe://td/ci/deploy".into(),
            aud: Audience::One("https://a.example".into()),
            exp: 2_000_000_000,
            iat: 1_000_000_000,
            nbf: 1_000_000_000,
            jti: "l-1".into(),
            scope: Some("deploy:write".into()),
            obo: None,
            leash: LeashClaim {
                host: "h\"1".into(),
                action: "deploy".into(),
                owner: "team".into(),
                task: None,
            },
        };
        let token = sign(&k, &claims).expect("signed");
        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        assert_eq!(header.kid.as_deref(), Some(k.signing_key().kid.as_str()));
        assert_eq!(verify(&k, &token), Some(claims.clone()));
        // Two signatures of the same claims differ (ECDSA nonces) and both verify.
        let again = sign(&k, &claims).expect("signed");
        assert_ne!(token, again);
        assert_eq!(verify(&k, &again), Some(claims));
        // A changed payload does not.
        let mut parts: Vec<&str> = token.split('.').collect();
        let other = URL_SAFE_NO_PAD.encode(br#"{"sub":"x"}"#);
        parts[1] = &other;
        assert_eq!(verify(&k, &parts.join(".")), None);
    }
}
