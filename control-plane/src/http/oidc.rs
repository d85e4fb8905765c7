//! OpenID Connect discovery: the document at `/.well-known/openid-configuration` and
//! the JWKS at `/keys`, the two things a relying party (a cloud's token exchange, a CI
//! system, PyJWT's `PyJWKClient`) fetches to verify Leash's tokens. `leashctl oidc
//! export` writes the same bytes to files, for a static web host.
//!
//! Leash issues tokens to workloads through its agents, never through a browser, so the
//! document names no authorization or token endpoint (as the issuers of GitHub Actions
//! and Kubernetes service accounts, which serve the same purpose, do not).

use bytes::Bytes;
use http::{Response, StatusCode};

use super::reply::{self, Body};
use crate::state::Shared;

/// How long a verifier may cache the documents. Short, so a key published ahead of its
/// use by a rotation is seen well before tokens signed with it arrive.
const CACHE: &str = "public, max-age=60";

/// The claims Leash's tokens carry (docs/CLI.md).
const CLAIMS: [&str; 10] = [
    "iss", "sub", "aud", "exp", "iat", "nbf", "jti", "scope", "obo", "leash",
];

/// `issuer` with `path` appended, as the discovery document names its endpoints (no
/// doubled slash when the issuer ends in one).
pub fn endpoint(issuer: &str, path: &str) -> String {
    format!("{}{path}", issuer.trim_end_matches('/'))
}

/// The discovery document for `issuer`.
pub fn discovery(issuer: &str) -> serde_json::Value {
    serde_json::json!({
        "issuer": issuer,
        "jwks_uri": endpoint(issuer, "/keys"),
        "introspection_endpoint": endpoint(issuer, "/introspect"),
        "introspection_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "tls_client_auth"],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "claims_supported": CLAIMS,
    })
}

/// The two documents, as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Documents {
    /// `/.well-known/openid-configuration`.
    pub discovery: Bytes,
    /// `/keys`.
    pub jwks: Bytes,
}

/// Pretty JSON with a final newline: the same bytes over HTTPS and in exported files.
fn pretty(v: &serde_json::Value) -> Bytes {
    let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

/// The documents for this control plane's issuer and keys, now.
pub fn documents(s: &Shared) -> Documents {
    Documents {
        discovery: pretty(&discovery(&s.config.issuer)),
        jwks: pretty(&s.keys.jwks()),
    }
}

/// `GET /.well-known/openid-configuration`.
pub fn serve_discovery(s: &Shared) -> Response<Body> {
    reply::json_bytes(StatusCode::OK, documents(s).discovery, CACHE)
}

/// `GET /keys`: every published key (a key a rotation published ahead, the signing key,
/// and keys whose tokens may still be valid).
pub fn serve_keys(s: &Shared) -> Response<Body> {
    reply::json_bytes(StatusCode::OK, pretty(&s.keys.jwks()), CACHE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_hang_off_the_issuer() {
        let d = discovery("https://leash.corp.example/");
        assert_eq!(d["issuer"], "https://leash.corp.example/");
        assert_eq!(d["jwks_uri"], "https://leash.corp.example/keys");
        assert_eq!(
            d["introspection_endpoint"],
            "https://leash.corp.example/introspect"
        );
        assert_eq!(d["id_token_signing_alg_values_supported"][0], "ES256");
        let d = discovery("https://h.example/leash");
        assert_eq!(d["jwks_uri"], "https://h.example/leash/keys");
    }
}
