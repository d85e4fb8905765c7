//! The `x509` kind: an X.509-SVID. The agent makes a P-256 key pair on the host and
//! sends only a certificate signing request; the control plane checks it (P-256 ECDSA, a
//! valid self-signature) and signs a leaf with its CA whose only name is the workload's
//! SPIFFE ID as a URI SAN (see `Keys::sign_svid`). The private key never leaves the
//! host. The chain served is the leaf alone: the CA reaches agents in the trust bundle.
//! Nothing outside Leash to undo when a lease ends: the agent drops the SVID, and the
//! certificate expires within its short lifetime.

use leash_proto::v1;

use super::{CredentialKind, Env, KindError, Material, MintRequest, Minted};
use crate::keys::KeyError;

/// The name `credential add --kind` takes.
pub const X509_KIND: &str = "x509";

/// The `x509` credential kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct X509;

#[async_trait::async_trait]
impl CredentialKind for X509 {
    fn name(&self) -> &'static str {
        X509_KIND
    }

    fn validate(&self, def: &v1::Credential) -> Result<(), KindError> {
        let mut wrong = Vec::new();
        if !def.audiences.is_empty() {
            wrong.push("--audience");
        }
        if !def.scopes.is_empty() {
            wrong.push("--scope");
        }
        if !def.grants.is_empty() || !def.connection.is_empty() {
            wrong.push("--grant/--connection-file");
        }
        if !def.revoke_sql.is_empty() || !def.role_template.is_empty() {
            wrong.push("--revoke-sql/--role-template");
        }
        if def.connection_limit != 0 {
            wrong.push("--connection-limit");
        }
        if wrong.is_empty() {
            return Ok(());
        }
        Err(KindError::Invalid(format!(
            "an x509 credential takes no {}: its certificate names only the workload's SPIFFE ID; leave them out",
            wrong.join(", ")
        )))
    }

    async fn mint(&self, env: Env<'_>, req: MintRequest<'_>) -> Result<Minted, KindError> {
        if req.csr_der.is_empty() {
            return Err(KindError::Invalid(format!(
                "credential {:?} is an X.509-SVID and needs a certificate signing request (IssueRequest.csr_der) for a P-256 key made on the host; fetch it through the agent's SPIFFE Workload API",
                req.credential.name
            )));
        }
        let spiffe_id = format!("spiffe://{}/{}", env.config.trust_domain, req.workload.name);
        let not_after = req.now + i64::from(req.ttl);
        let leaf = env
            .keys
            .sign_svid(req.csr_der, &spiffe_id, req.now, not_after)
            .map_err(|e| match e {
                KeyError::Cert(m) => {
                    KindError::Invalid(format!("cannot sign an X.509-SVID for this request: {m}"))
                }
                other => KindError::Unavailable(format!("cannot sign an X.509-SVID: {other}")),
            })?;
        Ok(Minted {
            fingerprint: fingerprint(&leaf),
            expires_at: not_after,
            material: Material::CertificateChain(vec![leaf]),
            version: 0,
            format: String::new(),
            events: Vec::new(),
        })
    }
}

/// Short SHA-256 of the leaf, DER (safe to show and log).
fn fingerprint(der: &[u8]) -> String {
    hex::encode(&ring::digest::digest(&ring::digest::SHA256, der).as_ref()[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_kinds_flags_are_refused_by_name() {
        assert!(X509.validate(&v1::Credential::default()).is_ok());
        let def = v1::Credential {
            audiences: vec!["https://a".into()],
            grants: [("read".to_string(), "GRANT".to_string())].into(),
            ..Default::default()
        };
        let e = X509.validate(&def).expect_err("refused").to_string();
        assert!(e.contains("--audience") && e.contains("--grant"), "{e}");
    }
}
