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
    use std::sync::Arc;

    use rcgen::{CertificateParams, KeyPair};
    use x509_parser::extensions::GeneralName;

    use super::*;
    use crate::config::{Config, FileConfig, Overrides};
    use crate::keys::{Keys, MasterKey};
    use crate::store::SledStore;

    struct Parts {
        _dir: tempfile::TempDir,
        store: Arc<SledStore>,
        master: MasterKey,
        keys: Keys,
        config: Config,
    }

    async fn parts() -> Parts {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path(), Default::default()).expect("store");
        let master = MasterKey::load_or_create(dir.path()).expect("master");
        let keys = Keys::load_or_create(&*store, &master, "leash.test")
            .await
            .expect("keys");
        let text = format!("data_dir = {:?}\n", dir.path().display().to_string());
        let file = FileConfig::parse(&text, &dir.path().join("cp.toml")).expect("config");
        let config = Config::resolve(file, Overrides::default()).expect("config");
        Parts {
            _dir: dir,
            store,
            master,
            keys,
            config,
        }
    }

    async fn mint(p: &Parts, csr: &[u8], ttl: u32) -> Result<Minted, KindError> {
        let credential = crate::model::Credential {
            name: "spiffe-x509".into(),
            kind: X509_KIND.into(),
            ..Default::default()
        };
        let workload = crate::fixtures::workload("ci/deploy");
        let env = Env {
            keys: &p.keys,
            master: &p.master,
            store: &*p.store,
            config: &p.config,
        };
        X509.mint(
            env,
            MintRequest {
                lease_id: "l-1",
                credential: &credential,
                workload: &workload,
                host: "h",
                action: "read",
                audience: "",
                audiences: &[],
                csr_der: csr,
                scope: None,
                ttl,
                task: None,
                on_behalf_of: None,
                now: 1_900_000_000,
            },
        )
        .await
    }

    fn csr(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = KeyPair::generate_for(alg).expect("key");
        // Names in the CSR are ignored: the leaf carries ours.
        CertificateParams::new(vec!["evil.example".to_string()])
            .expect("params")
            .serialize_request(&key)
            .expect("csr")
            .der()
            .to_vec()
    }

    #[tokio::test]
    async fn a_p256_csr_gets_a_leaf_with_the_spiffe_id_alone_signed_by_the_ca() {
        let p = parts().await;
        let m = mint(&p, &csr(&rcgen::PKCS_ECDSA_P256_SHA256), 1800)
            .await
            .expect("minted");
        assert_eq!(m.expires_at, 1_900_000_000 + 1800);
        let Material::CertificateChain(chain) = &m.material else {
            panic!("not a chain: {:?}", m.material);
        };
        assert_eq!(chain.len(), 1, "the leaf alone; the CA is in the bundle");
        assert_eq!(m.fingerprint, fingerprint(&chain[0]));
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).expect("parse");
        let ca_der = p.keys.ca_der();
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("ca");
        leaf.verify_signature(Some(ca.public_key()))
            .expect("signed by the CA");
        assert_eq!(leaf.validity().not_before.timestamp(), 1_900_000_000);
        assert_eq!(leaf.validity().not_after.timestamp(), 1_900_001_800);
        let san = leaf
            .subject_alternative_name()
            .expect("ext")
            .expect("present");
        let id = format!("spiffe://{}/ci/deploy", p.config.trust_domain);
        assert_eq!(san.value.general_names, vec![GeneralName::URI(&id)]);
        assert!(!leaf.is_ca());
        let aki = leaf
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
            .expect("an authority key identifier");
        let ski = ca
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(k.0.to_vec())
                }
                _ => None,
            })
            .expect("the CA has a subject key identifier");
        assert_eq!(aki, ski, "the leaf names the CA key that signed it");
        assert!(leaf.subject().iter().next().is_none(), "an empty subject");
        let ku = leaf.key_usage().expect("ext").expect("present").value;
        assert!(ku.digital_signature() && ku.key_encipherment() && ku.key_agreement());
        assert!(!ku.key_cert_sign());
        let eku = leaf
            .extended_key_usage()
            .expect("ext")
            .expect("present")
            .value;
        assert!(eku.server_auth && eku.client_auth);
        // Two leaves for the same key differ in their serial.
        let again = mint(&p, &csr(&rcgen::PKCS_ECDSA_P256_SHA256), 60)
            .await
            .expect("minted");
        let Material::CertificateChain(other) = &again.material else {
            panic!("not a chain");
        };
        let (_, other) = x509_parser::parse_x509_certificate(&other[0]).expect("parse");
        assert_ne!(other.raw_serial(), leaf.raw_serial());
    }

    #[tokio::test]
    async fn a_missing_csr_another_curve_or_a_bad_signature_is_invalid() {
        let p = parts().await;
        let e = mint(&p, &[], 60).await.expect_err("no csr");
        assert!(
            matches!(&e, KindError::Invalid(m) if m.contains("certificate signing request")),
            "{e}"
        );
        let e = mint(&p, &csr(&rcgen::PKCS_ECDSA_P384_SHA384), 60)
            .await
            .expect_err("p-384");
        assert!(
            matches!(&e, KindError::Invalid(m) if m.contains("P-256")),
            "{e}"
        );
        let e = mint(&p, &csr(&rcgen::PKCS_ED25519), 60)
            .await
            .expect_err("ed25519");
        assert!(
            matches!(&e, KindError::Invalid(m) if m.contains("P-256")),
            "{e}"
        );
        let mut bad = csr(&rcgen::PKCS_ECDSA_P256_SHA256);
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        let e = mint(&p, &bad, 60).await.expect_err("bad signature");
        assert!(
            matches!(&e, KindError::Invalid(m) if m.contains("signature")),
            "{e}"
        );
        let e = mint(&p, b"not a csr", 60).await.expect_err("garbage");
        assert!(
            matches!(&e, KindError::Invalid(m) if m.contains("PKCS#10")),
            "{e}"
        );
    }

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
