//! `introspection-client create|list|remove` and `oidc export`: who may call the HTTPS
//! `/introspect` endpoint (a client id and a secret shown once, kept only hashed), and
//! the documents the HTTPS listener publishes.

use leash_proto::reason::Reason;
use leash_proto::v1;
use tonic::Status;

use super::check::invalid;
use crate::audit;
use crate::http::clients;
use crate::state::Shared;
use crate::store::IntrospectionClient;

/// Longest description.
const MAX_DESCRIPTION: usize = 256;

fn info(c: IntrospectionClient) -> v1::IntrospectionClientInfo {
    v1::IntrospectionClientInfo {
        client_id: c.id,
        description: c.description,
        created_at_unix: c.created_at,
        created_by: c.created_by,
    }
}

pub(super) async fn create(
    s: &Shared,
    actor: String,
    r: v1::CreateIntrospectionClientRequest,
) -> Result<v1::CreateIntrospectionClientResponse, Status> {
    if !clients::valid_client_id(&r.name) {
        return Err(invalid(format!(
            "invalid client name {:?}: use 1 to 64 letters, digits, '.', '-' or '_'",
            leash_proto::names::escape(&r.name)
        )));
    }
    if r.description.len() > MAX_DESCRIPTION || r.description.chars().any(char::is_control) {
        return Err(invalid(format!(
            "the description must be at most {MAX_DESCRIPTION} bytes of printable text"
        )));
    }
    let (secret, secret_sha256) =
        clients::new_secret().map_err(|e| Reason::Unavailable.status(e.to_string()))?;
    let c = IntrospectionClient {
        id: r.name,
        description: r.description,
        secret_sha256,
        created_at: s.clock.now(),
        created_by: actor.clone(),
    };
    let ev = audit::introspection_client_created(s.clock.now_ms(), &actor, &c.id, &c.description);
    s.store
        .put_introspection_client(c.clone(), ev)
        .await
        .map_err(Status::from)?;
    Ok(v1::CreateIntrospectionClientResponse {
        client: Some(info(c)),
        client_secret: secret,
    })
}

pub(super) async fn list(s: &Shared) -> Result<v1::ListIntrospectionClientsResponse, Status> {
    let clients = s
        .store
        .introspection_clients()
        .map_err(Status::from)?
        .into_iter()
        .map(info)
        .collect();
    Ok(v1::ListIntrospectionClientsResponse { clients })
}

pub(super) async fn remove(
    s: &Shared,
    actor: String,
    r: v1::NameRequest,
) -> Result<v1::Empty, Status> {
    let ev = audit::introspection_client_removed(s.clock.now_ms(), &actor, &r.name);
    s.store
        .remove_introspection_client(&r.name, ev)
        .await
        .map_err(Status::from)?;
    Ok(v1::Empty {})
}

pub(super) async fn documents(s: &Shared) -> Result<v1::OidcDocumentsResponse, Status> {
    let d = crate::http::oidc::documents(s);
    Ok(v1::OidcDocumentsResponse {
        discovery: d.discovery.to_vec(),
        jwks: d.jwks.to_vec(),
    })
}
