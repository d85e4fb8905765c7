//! `leashctl introspect` and `leashctl jwks`: what a verifier asks about tokens, as JSON.

use leash_proto::cli::{print_json, token_arg, Fail};
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

/// `leashctl introspect`: whether a token is still active (RFC 7662 JSON).
pub(crate) async fn introspect(
    c: &mut AdminClient<Channel>,
    token: Option<String>,
) -> Result<(), Fail> {
    let token = token_arg(token.as_deref())?;
    let r = c
        .introspect(v1::IntrospectRequest { token })
        .await?
        .into_inner();
    let v: serde_json::Value = serde_json::from_str(&r.json).unwrap_or_default();
    print_json(&v);
    Ok(())
}

/// `leashctl jwks`: the JSON Web Key Set verifiers use.
pub(crate) async fn jwks(c: &mut AdminClient<Channel>) -> Result<(), Fail> {
    let r = c.jwks(v1::Empty {}).await?.into_inner();
    let v: serde_json::Value = serde_json::from_str(&r.json).unwrap_or_default();
    print_json(&v);
    Ok(())
}
