//! The trust bundle as the SPIFFE Workload API serves it, and the two bundle streams.
//!
//! The bundle is what the control plane last sent on Sync (`Agent::bundle`): its JWKS
//! becomes the JWT bundle, each key marked `use: jwt-svid` as the SPIFFE Trust Domain
//! and Bundle specification requires; its CA certificates, DER and concatenated, become
//! the X.509 bundle. Until a control plane that sends bundles is reached, the X.509
//! bundle is the CAs the agent trusts for its control plane, and there is no JWT bundle yet. Each stream
//! sends the bundle it has and then a new message on every change; nothing polls.

use std::sync::Arc;

use leash_proto::spiffe as pb;
use leash_proto::v1;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::agent::Agent;

use super::error::SpiffeError;

/// The bundle stream's sender.
pub type Tx<T> = mpsc::Sender<Result<T, Status>>;

/// The SPIFFE ID of the agent's trust domain (the key of its bundles).
pub fn trust_domain_id(agent: &Agent) -> String {
    format!("spiffe://{}", agent.identity().desc.trust_domain)
}

/// The X.509 bundle: every CA to trust, DER, concatenated.
pub fn x509_bundle(agent: &Agent, b: Option<&v1::TrustBundle>) -> Vec<u8> {
    match b {
        Some(b) if !b.ca_certificates_der.is_empty() => b.ca_certificates_der.concat(),
        _ => agent
            .identity()
            .cas
            .iter()
            .map(|c| c.to_vec())
            .collect::<Vec<_>>()
            .concat(),
    }
}

/// The JWT bundle: the JWKS with every key's `use` set to `jwt-svid`.
pub fn jwt_bundle(b: &v1::TrustBundle) -> Result<Vec<u8>, SpiffeError> {
    let mut jwks: serde_json::Value = serde_json::from_str(&b.jwks_json).map_err(|e| {
        SpiffeError::Invalid(format!(
            "the control plane sent a JWKS that is not JSON ({e})"
        ))
    })?;
    if let Some(keys) = jwks.get_mut("keys").and_then(|k| k.as_array_mut()) {
        for k in keys {
            if let Some(o) = k.as_object_mut() {
                o.insert("use".into(), "jwt-svid".into());
            }
        }
    }
    serde_json::to_vec(&jwks).map_err(|e| SpiffeError::Invalid(e.to_string()))
}

/// Send a message on every bundle change until the caller goes away. `make` turns the
/// current bundle into the message, or `None` when there is nothing to send yet.
async fn follow<T: PartialEq + Clone>(
    agent: Arc<Agent>,
    tx: Tx<T>,
    make: impl Fn(&Agent, Option<&v1::TrustBundle>) -> Option<Result<T, SpiffeError>>,
) {
    let mut rx: watch::Receiver<Option<Arc<v1::TrustBundle>>> = agent.bundle();
    let mut last: Option<T> = None;
    loop {
        let current = rx.borrow_and_update().clone();
        match make(&agent, current.as_deref()) {
            // The part of the bundle this stream carries did not change (a new JWT key
            // leaves the CAs as they were): nothing to send.
            Some(Ok(m)) if last.as_ref() == Some(&m) => {}
            Some(Ok(m)) => {
                if tx.send(Ok(m.clone())).await.is_err() {
                    return;
                }
                last = Some(m);
            }
            Some(Err(e)) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
            None => {}
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}

/// FetchX509Bundles: the CA certificates, then every change.
pub async fn x509_stream(agent: Arc<Agent>, tx: Tx<pb::X509BundlesResponse>) {
    follow(agent, tx, |agent, b| {
        Some(Ok(pb::X509BundlesResponse {
            crl: Vec::new(),
            bundles: [(trust_domain_id(agent), x509_bundle(agent, b))].into(),
        }))
    })
    .await
}

/// FetchJWTBundles: the JWKS once the control plane has sent one, then every change.
pub async fn jwt_stream(agent: Arc<Agent>, tx: Tx<pb::JwtBundlesResponse>) {
    follow(agent, tx, |agent, b| {
        let b = b.filter(|b| !b.jwks_json.is_empty())?;
        Some(jwt_bundle(b).map(|jwks| pb::JwtBundlesResponse {
            bundles: [(trust_domain_id(agent), jwks)].into(),
        }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jwt_bundle_key_is_for_jwt_svids() {
        let b = v1::TrustBundle {
            generation: 1,
            jwks_json: r#"{"keys":[{"kty":"EC","use":"sig","kid":"a"},{"kty":"EC","kid":"b"}]}"#
                .into(),
            ca_certificates_der: vec![],
        };
        let out: serde_json::Value = serde_json::from_slice(&jwt_bundle(&b).unwrap()).unwrap();
        let keys = out["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().all(|k| k["use"] == "jwt-svid"), "{out}");
        assert_eq!(keys[0]["kid"], "a");
        let bad = v1::TrustBundle {
            jwks_json: "not json".into(),
            ..b
        };
        assert!(matches!(jwt_bundle(&bad), Err(SpiffeError::Invalid(_))));
    }
}
