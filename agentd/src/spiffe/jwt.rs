//! JWT-SVIDs: FetchJWTSVID and ValidateJWTSVID.
//!
//! A JWT-SVID is a token of the `jwt` credential the agent was started with
//! (`--spiffe-jwt-credential`, default `spiffe-jwt`), issued through the same path as
//! `Fetch` (cache, policy, leases, task binding, wipe, usage reports). The requested
//! audiences map onto it: one audience is the request's `audience`, several go to the
//! control plane as `audiences` and come back as an `aud` array; the credential's
//! `--audience` list says which are allowed. Validation checks the signature against the
//! trust bundle's JWKS, that `aud` holds the validator's audience and that `exp` is
//! still ahead by the agent's clock.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use leash_proto::names;
use leash_proto::reason::Reason;
use leash_proto::spiffe as pb;
use prost_types::value::Kind;

use crate::calls::{Calls, Obtain};

use super::caller::{spiffe_id, Caller};
use super::error::SpiffeError;

/// The cache key's audience for a set of audiences: the audience itself when there is
/// one; the sorted set, newline-separated (a character no audience may hold), when there
/// are several.
fn audience_key(audiences: &[String]) -> String {
    audiences.join("\n")
}

/// The requested audiences, checked, deduplicated and sorted.
fn audiences(requested: &[String]) -> Result<Vec<String>, SpiffeError> {
    let mut set = BTreeSet::new();
    for a in requested {
        names::check_text("the audience", a).map_err(|e| SpiffeError::Invalid(e.to_string()))?;
        if a.trim().is_empty() {
            return Err(SpiffeError::Invalid("an audience may not be empty".into()));
        }
        set.insert(a.clone());
    }
    if set.is_empty() {
        return Err(SpiffeError::Invalid(
            "FetchJWTSVID needs at least one audience".into(),
        ));
    }
    Ok(set.into_iter().collect())
}

/// FetchJWTSVID: one JWT-SVID per workload the caller matches (or only `spiffe_id`'s).
pub async fn fetch(
    calls: &Calls,
    caller: &Caller,
    r: pb::JwtsvidRequest,
) -> Result<pb::JwtsvidResponse, SpiffeError> {
    let auds = audiences(&r.audience)?;
    let agent = calls.agent();
    let td = agent.identity().desc.trust_domain.clone();
    let mut ws = caller.workloads(calls)?;
    if !r.spiffe_id.is_empty() {
        ws.retain(|w| spiffe_id(&td, &w.name) == r.spiffe_id);
        if ws.is_empty() {
            return Err(SpiffeError::NoIdentity(format!(
                "this caller is not entitled to SPIFFE ID {}",
                names::excerpt(&r.spiffe_id)
            )));
        }
    }
    let credential = &agent.config.spiffe_jwt_credential;
    let several: &[String] = if auds.len() > 1 { &auds } else { &[] };
    let still = || caller.still_in_task(calls);
    let how = Obtain {
        task_name: caller.task_name(),
        fresh: false,
        audiences: several,
        x509: None,
        still_in_task: &still,
    };
    let a = &caller.attested;
    let mut svids = Vec::with_capacity(ws.len());
    let mut refused = None;
    for w in &ws {
        let key = caller.key(w, credential, audience_key(&auds));
        match calls.obtain(a, w, &key, &how).await {
            Ok((e, _)) => {
                agent.record_use(&e.lease_id, a.pid, a.exe_path.as_deref().unwrap_or(""));
                svids.push(pb::Jwtsvid {
                    spiffe_id: spiffe_id(&td, &w.name),
                    svid: e.token.expose().to_string(),
                    hint: String::new(),
                });
            }
            // One identity refused by policy does not hide the caller's others.
            Err(e) if ws.len() > 1 && matches!(e.reason(), Reason::Denied | Reason::NotFound) => {
                refused.get_or_insert(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    match refused {
        Some(e) if svids.is_empty() => Err(e.into()),
        _ => Ok(pb::JwtsvidResponse { svids }),
    }
}

/// The algorithms a JWT-SVID may be signed with (the JWT-SVID specification's list that
/// `jsonwebtoken` verifies).
const ALGORITHMS: [Algorithm; 8] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// ValidateJWTSVID: verify `svid` for `audience` against the JWKS in `jwks_json`, by
/// the time `now` (unix seconds).
pub fn validate(
    jwks_json: &str,
    audience: &str,
    svid: &str,
    now: i64,
) -> Result<pb::ValidateJwtsvidResponse, SpiffeError> {
    if audience.is_empty() {
        return Err(SpiffeError::Invalid(
            "ValidateJWTSVID needs the audience to validate for".into(),
        ));
    }
    if svid.is_empty() {
        return Err(SpiffeError::Invalid(
            "ValidateJWTSVID needs the token (svid)".into(),
        ));
    }
    let bad = |m: String| SpiffeError::BadToken(m);
    let header =
        jsonwebtoken::decode_header(svid).map_err(|e| bad(format!("unreadable header ({e})")))?;
    if !ALGORITHMS.contains(&header.alg) {
        return Err(bad(format!(
            "algorithm {:?} is not one JWT-SVIDs use",
            header.alg
        )));
    }
    let kid = header
        .kid
        .ok_or_else(|| bad("the header has no kid".into()))?;
    let jwks: JwkSet = serde_json::from_str(jwks_json)
        .map_err(|e| bad(format!("the trust bundle's JWKS is unreadable ({e})")))?;
    let jwk = jwks.find(&kid).ok_or_else(|| {
        bad(format!(
            "key {} is not in the trust bundle",
            names::excerpt(&kid)
        ))
    })?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("unusable key ({e})")))?;
    let mut v = Validation::new(header.alg);
    v.set_audience(&[audience]);
    // Expiry is decided by the agent's clock below, not the system's.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.required_spec_claims = HashSet::from(["aud".to_string(), "sub".to_string()]);
    let data = jsonwebtoken::decode::<serde_json::Value>(svid, &key, &v)
        .map_err(|e| bad(e.to_string()))?;
    let claims = data.claims;
    let exp = claims
        .get("exp")
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| bad("it has no exp".into()))?;
    if exp <= now {
        return Err(bad("it has expired".into()));
    }
    let sub = claims
        .get("sub")
        .and_then(serde_json::Value::as_str)
        .filter(|s| s.starts_with("spiffe://"))
        .ok_or_else(|| bad("its sub is not a SPIFFE ID".into()))?
        .to_string();
    let claims = match to_value(claims).kind {
        Some(Kind::StructValue(s)) => Some(s),
        _ => None,
    };
    Ok(pb::ValidateJwtsvidResponse {
        spiffe_id: sub,
        claims,
    })
}

/// JSON as a protobuf `Value`.
fn to_value(v: serde_json::Value) -> prost_types::Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s),
        J::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o
                .into_iter()
                .map(|(k, v)| (k, to_value(v)))
                .collect::<BTreeMap<_, _>>(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    /// A P-256 key, its JWKS and a signer of claims.
    struct Signer {
        key: EcdsaKeyPair,
        jwks: String,
    }

    impl Signer {
        fn new(kid: &str) -> Signer {
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let key =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap();
            let (x, y) = key.public_key().as_ref()[1..].split_at(32);
            let jwks = serde_json::json!({"keys": [{
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "jwt-svid", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
            }]})
            .to_string();
            Signer { key, jwks }
        }

        fn sign(&self, kid: &str, claims: serde_json::Value) -> String {
            let h = URL_SAFE_NO_PAD
                .encode(serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid}).to_string());
            let c = URL_SAFE_NO_PAD.encode(claims.to_string());
            let input = format!("{h}.{c}");
            let rng = ring::rand::SystemRandom::new();
            let sig = self.key.sign(&rng, input.as_bytes()).unwrap();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
        }
    }

    fn claims(aud: serde_json::Value, exp: i64) -> serde_json::Value {
        serde_json::json!({"sub": "spiffe://td/w", "aud": aud, "exp": exp, "iat": 1, "leash": {"host": "h"}})
    }

    #[test]
    fn a_good_token_validates_with_its_claims() {
        let s = Signer::new("k1");
        let t = s.sign("k1", claims("a".into(), 1000));
        let r = validate(&s.jwks, "a", &t, 999).expect("valid");
        assert_eq!(r.spiffe_id, "spiffe://td/w");
        let fields = r.claims.expect("claims").fields;
        assert_eq!(
            fields["aud"].kind,
            Some(Kind::StringValue("a".into())),
            "{fields:?}"
        );
        assert!(matches!(fields["leash"].kind, Some(Kind::StructValue(_))));
        // Several audiences: any of them validates.
        let t = s.sign("k1", claims(serde_json::json!(["a", "b"]), 1000));
        assert!(validate(&s.jwks, "b", &t, 1).is_ok());
    }

    #[test]
    fn wrong_audience_expiry_key_or_signature_is_refused() {
        let s = Signer::new("k1");
        let t = s.sign("k1", claims("a".into(), 1000));
        for (aud, tok, now, what) in [
            ("b", t.clone(), 1, "audience"),
            ("a", t.clone(), 1000, "expired"),
            (
                "a",
                s.sign("k2", claims("a".into(), 1000)),
                1,
                "unknown kid",
            ),
            ("a", format!("{}x", &t[..t.len() - 2]), 1, "signature"),
            ("a", "junk".to_string(), 1, "not a JWT"),
        ] {
            let e = validate(&s.jwks, aud, &tok, now).expect_err(what);
            assert!(matches!(e, SpiffeError::BadToken(_)), "{what}: {e}");
        }
        // Signed by another key under the same kid.
        let other = Signer::new("k1");
        let forged = other.sign("k1", claims("a".into(), 1000));
        assert!(validate(&s.jwks, "a", &forged, 1).is_err(), "forged");
        assert!(matches!(
            validate(&s.jwks, "", &t, 1),
            Err(SpiffeError::Invalid(_))
        ));
    }

    #[test]
    fn audiences_are_checked_and_keyed_in_order() {
        assert!(audiences(&[]).is_err());
        assert!(audiences(&["".into()]).is_err());
        let a = audiences(&["b".into(), "a".into(), "b".into()]).unwrap();
        assert_eq!(a, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(audience_key(&a), "a\nb");
        assert_eq!(audience_key(&["x".to_string()]), "x");
    }
}
