//! Key material: the master key, the CA, the JWT signing keys, host certificates and the
//! control plane's own serving certificate.
//!
//! The CA key and the JWT signing keys are created on first start and stored in the
//! database only encrypted (AES-256-GCM) under a master key that lives outside it: a
//! 0600 key file in the data directory, or `$LEASH_MASTER_KEY` (64 hex digits). The
//! master key, its sealed format, its start-up check and its rotation are in
//! `keys/master.rs`; key errors in `keys/error.rs`. The serving key is made fresh at
//! every start and never written anywhere.
//!
//! One crypto provider everywhere: `ring` (rustls, rcgen, jsonwebtoken and the AEAD).

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use crate::store::Storage;

mod error;
mod http_cert;
mod key_id;
mod master;

pub use error::KeyError;
pub use key_id::KeyId;
pub use master::{
    sealed_key_id, MasterKey, Rotation, MASTER_KEY_ENV, MASTER_KEY_FILE, NEW_KEY_FILE,
};

/// Read an encrypted blob, or create it with `make` and store it encrypted.
async fn sealed_blob(
    store: &dyn Storage,
    master: &MasterKey,
    name: &str,
    make: impl FnOnce() -> Result<Zeroizing<Vec<u8>>, KeyError>,
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    if let Some(sealed) = store.blob(name)? {
        return master.open(name, &sealed);
    }
    let plain = make()?;
    store.put_blob(name, master.seal(name, &plain)?).await?;
    Ok(plain)
}

/// An ES256 signing key with its `kid`.
pub struct JwtKey {
    /// Key id, in every token header.
    pub kid: String,
    /// The key pair, parsed once (parsing PKCS#8 checks the pair with a scalar
    /// multiplication, which costs as much as the signature itself).
    pub pair: EcdsaKeyPair,
    /// The token header for this key, JSON then base64url: the same for every token.
    pub header_b64: String,
    /// Uncompressed public point (0x04 || x || y).
    pub public: Vec<u8>,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl JwtKey {
    fn from_pkcs8(pkcs8: &[u8]) -> Result<JwtKey, KeyError> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|_| KeyError::Decrypt("JWT signing key".into()))?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = hex::encode(&ring::digest::digest(&ring::digest::SHA256, &public).as_ref()[..8]);
        let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "kid": kid });
        Ok(JwtKey {
            header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
            kid,
            pair,
            public,
        })
    }

    /// This key as a JWK.
    pub fn jwk(&self) -> serde_json::Value {
        let (x, y) = self.public[1..].split_at(32);
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
        })
    }
}

/// All key material the control plane holds in memory.
pub struct Keys {
    ca_key: KeyPair,
    ca_params: CertificateParams,
    /// The CA certificate, DER.
    pub ca_der: CertificateDer<'static>,
    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo; what join tokens carry.
    pub ca_pin: String,
    /// Signing keys; the first signs, all are published.
    pub jwt: Vec<JwtKey>,
    trust_domain: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("ca_pin", &self.ca_pin)
            .field("jwt", &self.jwt)
            .finish_non_exhaustive()
    }
}

/// The pin of a certificate: `sha256:` + hex of its SubjectPublicKeyInfo.
pub fn spki_pin(cert_der: &[u8]) -> Result<String, KeyError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| KeyError::Cert(e.to_string()))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    Ok(format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, spki))
    ))
}

/// Serial number (hex) of a certificate.
pub fn cert_serial(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(hex::encode(cert.tbs_certificate.raw_serial()))
}

fn random_serial() -> Result<SerialNumber, KeyError> {
    let mut s = [0u8; 16];
    SystemRandom::new()
        .fill(&mut s)
        .map_err(|_| KeyError::Cert("no randomness".into()))?;
    s[0] &= 0x7f; // positive
    s[0] |= 0x01; // no leading zero byte, so the hex form is stable
    Ok(SerialNumber::from_slice(&s))
}

fn ca_params(trust_domain: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Leash");
    dn.push(DnType::CommonName, format!("Leash CA {trust_domain}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

impl Keys {
    /// Load the keys from the store, creating them on first start.
    pub async fn load_or_create(
        store: &dyn Storage,
        master: &MasterKey,
        trust_domain: &str,
    ) -> Result<Keys, KeyError> {
        let ca_pkcs8 = sealed_blob(store, master, "ca-key", || {
            Ok(Zeroizing::new(KeyPair::generate()?.serialize_der()))
        })
        .await?;
        let ca_key = KeyPair::try_from(ca_pkcs8.as_slice())?;
        let ca_der = match store.blob("ca-cert")? {
            Some(der) => CertificateDer::from(der),
            None => {
                let mut p = ca_params(trust_domain);
                let now = time_now();
                p.not_before = now - time::Duration::minutes(5);
                p.not_after = now + time::Duration::days(3650);
                p.serial_number = Some(random_serial()?);
                let cert = p.self_signed(&ca_key)?;
                store.put_blob("ca-cert", cert.der().to_vec()).await?;
                cert.der().clone()
            }
        };
        let jwt_pkcs8 = sealed_blob(store, master, "jwt-key-1", || {
            let doc = EcdsaKeyPair::generate_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &SystemRandom::new(),
            )
            .map_err(|_| KeyError::Cert("cannot generate the JWT key".into()))?;
            Ok(Zeroizing::new(doc.as_ref().to_vec()))
        })
        .await?;
        let jwt = vec![JwtKey::from_pkcs8(&jwt_pkcs8)?];
        let ca_pin = spki_pin(&ca_der)?;
        Ok(Keys {
            ca_key,
            ca_params: ca_params(trust_domain),
            ca_der,
            ca_pin,
            jwt,
            trust_domain: trust_domain.to_string(),
        })
    }

    /// The JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": self.jwt.iter().map(JwtKey::jwk).collect::<Vec<_>>() })
    }

    /// The key that signs new tokens.
    pub fn signing_key(&self) -> &JwtKey {
        &self.jwt[0]
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.ca_params, &self.ca_key)
    }

    /// Sign a host certificate for the key in `csr_der`. Only the CSR's public key is
    /// used; names, usages and lifetime are ours.
    pub fn sign_host_cert(
        &self,
        csr_der: &[u8],
        host: &str,
        ttl: std::time::Duration,
    ) -> Result<(CertificateDer<'static>, String, i64), KeyError> {
        let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .map_err(|e| KeyError::Cert(format!("invalid CSR: {e}")))?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        p.distinguished_name = dn;
        let uri = format!("spiffe://{}/leash/host/{}", self.trust_domain, host);
        p.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = time_now();
        p.not_before = now - time::Duration::minutes(5);
        // Checked: the lifetime comes from the config, and an unchecked sum panics past
        // year 9999.
        let not_after = i64::try_from(ttl.as_secs())
            .ok()
            .and_then(|s| now.checked_add(time::Duration::seconds(s)))
            .filter(|t| t.year() <= 9999)
            .ok_or(KeyError::Lifetime(ttl.as_secs()))?;
        p.not_after = not_after;
        let serial = random_serial()?;
        p.serial_number = Some(serial.clone());
        let cert = p.signed_by(&csr.public_key, &self.issuer())?;
        Ok((
            cert.der().clone(),
            hex::encode(serial.as_ref()),
            not_after.unix_timestamp(),
        ))
    }

    /// A fresh serving certificate and key for the control plane, with the URI SAN
    /// `spiffe://<td>/leash/control-plane`. Never written to disk.
    pub fn serving_cert(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), KeyError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "leash-control-plane");
        p.distinguished_name = dn;
        let uri = format!("spiffe://{}/leash/control-plane", self.trust_domain);
        p.subject_alt_names = vec![
            SanType::URI(uri.try_into()?),
            SanType::DnsName("localhost".try_into()?),
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time_now();
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::days(365);
        p.serial_number = Some(random_serial()?);
        let cert = p.signed_by(&key, &self.issuer())?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.ca_der.clone()], key_der))
    }

    /// Sign an X.509-SVID for the key in `csr_der`: the CSR must be a P-256 ECDSA key
    /// with a valid self-signature; only its public key is used. The leaf has the URI SAN
    /// `spiffe_id` and nothing else, is not a CA, and is valid from `not_before` to
    /// `not_after` (unix seconds). Returns the leaf, DER.
    pub fn sign_svid(
        &self,
        csr_der: &[u8],
        spiffe_id: &str,
        not_before: i64,
        not_after: i64,
    ) -> Result<Vec<u8>, KeyError> {
        use x509_parser::prelude::FromDer;
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
                .map_err(|e| KeyError::Cert(format!("the CSR is not a PKCS#10 request: {e}")))?;
        let spki =
            rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
                .map_err(|e| KeyError::Cert(format!("the CSR's public key is not usable: {e}")))?;
        if rcgen::PublicKeyData::algorithm(&spki) != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(KeyError::Cert(
                "the CSR's key is not a P-256 ECDSA key; make a P-256 key".into(),
            ));
        }
        csr.verify_signature()
            .map_err(|e| KeyError::Cert(format!("the CSR's signature does not verify: {e}")))?;
        let time = |t: i64| {
            time::OffsetDateTime::from_unix_timestamp(t)
                .ok()
                .filter(|t| t.year() <= 9999)
                .ok_or(KeyError::Lifetime(u64::try_from(t).unwrap_or(0)))
        };
        let mut p = CertificateParams::default();
        // The SPIFFE X.509-SVID spec: the identity is the URI SAN alone; no subject.
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // Names the CA key, so a verifier holding two CAs of the same name (during a CA
        // rotation) picks the one that signed.
        p.use_authority_key_identifier_extension = true;
        p.not_before = time(not_before)?;
        p.not_after = time(not_after)?;
        p.serial_number = Some(random_serial()?);
        let cert = p.signed_by(&spki, &self.issuer())?;
        Ok(cert.der().to_vec())
    }

    /// Every CA certificate a verifier must trust now, DER (the trust bundle's X.509
    /// part).
    pub fn bundle_ders(&self) -> Vec<Vec<u8>> {
        vec![self.ca_der.to_vec()]
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Shared handle.
pub type SharedKeys = Arc<Keys>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    /// A fresh store and master key in a temp dir, and the keys created in them.
    async fn fresh(td: &str) -> (tempfile::TempDir, Arc<SledStore>, MasterKey, Keys) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path(), crate::clock::Clock::default()).expect("store");
        let master = MasterKey::load_or_create(dir.path()).expect("master");
        let keys = Keys::load_or_create(&*store, &master, td)
            .await
            .expect("keys");
        (dir, store, master, keys)
    }

    #[tokio::test]
    async fn keys_persist_encrypted_and_reload() {
        let (dir, store, master, k1) = fresh("td.example").await;
        let k2 = Keys::load_or_create(&*store, &master, "td.example")
            .await
            .expect("keys again");
        assert_eq!(k1.ca_pin, k2.ca_pin);
        assert_eq!(k1.signing_key().kid, k2.signing_key().kid);
        // The stored CA key is not the plain PKCS#8.
        let sealed = store.blob("ca-key").expect("blob").expect("present");
        assert!(
            master.open("jwt-key-1", &sealed).is_err(),
            "AAD binds the name"
        );
        let mode = std::fs::metadata(dir.path().join("master.key")).expect("file");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        let jwks = k1.jwks();
        assert_eq!(
            jwks["keys"][0]["kid"],
            serde_json::json!(k1.signing_key().kid)
        );
    }

    #[tokio::test]
    async fn host_cert_has_our_names_not_the_csr_ones() {
        let (_dir, _store, _master, k) = fresh("td").await;
        let host_key = KeyPair::generate().expect("key");
        let csr = CertificateParams::new(vec!["evil.example".to_string()])
            .expect("params")
            .serialize_request(&host_key)
            .expect("csr");
        let (der, serial, _) = k
            .sign_host_cert(csr.der(), "runner-1", std::time::Duration::from_secs(3600))
            .expect("signed");
        assert_eq!(cert_serial(&der).as_deref(), Some(serial.as_str()));
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let san = format!("{:?}", cert.subject_alternative_name().expect("ext"));
        assert!(san.contains("spiffe://td/leash/host/runner-1"), "{san}");
        assert!(!san.contains("evil.example"), "{san}");
        assert!(k
            .sign_host_cert(b"garbage", "x", std::time::Duration::from_secs(60))
            .is_err());
    }

    #[tokio::test]
    async fn a_lifetime_past_year_9999_is_an_error_not_a_panic() {
        let (_dir, _store, _master, k) = fresh("td").await;
        let host_key = KeyPair::generate().expect("key");
        let csr = CertificateParams::new(Vec::new())
            .expect("params")
            .serialize_request(&host_key)
            .expect("csr");
        for secs in [99_999_999 * 86_400, u64::MAX] {
            let e = k
                .sign_host_cert(csr.der(), "h", std::time::Duration::from_secs(secs))
                .expect_err("out of range");
            assert!(matches!(e, KeyError::Lifetime(s) if s == secs), "{e}");
        }
    }

    #[test]
    fn a_master_key_readable_by_others_is_refused_unless_accepted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        // No file yet: it will be created 0600.
        assert!(MasterKey::check_file_mode(dir.path(), false)
            .expect("missing is fine")
            .is_none());
        let _master = MasterKey::load_or_create(dir.path()).expect("master");
        let path = dir.path().join("master.key");
        assert!(MasterKey::check_file_mode(dir.path(), false)
            .expect("0600 is fine")
            .is_none());
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let e = MasterKey::check_file_mode(dir.path(), false)
                .expect_err("readable")
                .to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains(&format!("{mode:04o}")), "{e}");
            assert!(e.contains("chmod 600"), "{e}");
            let w = MasterKey::check_file_mode(dir.path(), true)
                .expect("accepted")
                .expect("with a warning");
            assert!(w.contains("accept_readable_master_key"), "{w}");
        }
    }
}
