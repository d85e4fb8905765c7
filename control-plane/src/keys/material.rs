//! Key material in memory: a JWT signing key and a CA, each parsed once from its PKCS#8
//! form, with the latest expiry of everything it signed (so it is unpublished only once
//! that has passed). Making new ones, and the CA's certificate parameters.

use std::sync::atomic::{AtomicI64, Ordering};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

use super::error::KeyError;

/// The latest expiry (unix seconds) of what a key signed in this process, and, for a key
/// that was already active when the process started, that start time: what it signed
/// before is not known, so it counts as valid for as long as anything may be.
#[derive(Debug, Default)]
pub struct Signed {
    latest: AtomicI64,
    active_since_load: Option<i64>,
}

impl Signed {
    /// For a key loaded in state `active` at unix second `now`.
    pub fn loaded_active(now: i64) -> Signed {
        Signed {
            latest: AtomicI64::new(0),
            active_since_load: Some(now),
        }
    }

    /// Note that something this key signed expires at `exp`.
    pub fn record(&self, exp: i64) {
        self.latest.fetch_max(exp, Ordering::SeqCst);
    }

    /// The latest expiry of what this key signed, given that nothing it signed lives
    /// longer than `bound` seconds.
    pub fn latest(&self, bound: i64) -> i64 {
        let seen = self.latest.load(Ordering::SeqCst);
        match self.active_since_load {
            Some(t) => seen.max(t.saturating_add(bound)),
            None => seen,
        }
    }

    /// What this process saw signed, without the bound.
    pub fn seen(&self) -> i64 {
        self.latest.load(Ordering::SeqCst)
    }
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
    /// What it signed.
    pub(super) signed: Signed,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The `kid` of a public key: 8 bytes of its SHA-256, hex.
pub fn short_id(public: &[u8]) -> String {
    hex::encode(&ring::digest::digest(&ring::digest::SHA256, public).as_ref()[..8])
}

impl JwtKey {
    /// Parse a PKCS#8 key.
    pub fn from_pkcs8(pkcs8: &[u8], signed: Signed) -> Result<JwtKey, KeyError> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|_| KeyError::Decrypt("JWT signing key".into()))?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = short_id(&public);
        let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "kid": kid });
        Ok(JwtKey {
            header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
            kid,
            pair,
            public,
            signed,
        })
    }

    /// A new key, PKCS#8.
    pub fn generate() -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| KeyError::Cert("cannot generate a JWT signing key".into()))?;
        Ok(Zeroizing::new(doc.as_ref().to_vec()))
    }

    /// Note that a token this key signed expires at `exp` (unix seconds): the key stays
    /// published at least until then.
    pub fn record_expiry(&self, exp: i64) {
        self.signed.record(exp);
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

/// A CA just made.
pub struct NewCa {
    /// Its key, PKCS#8.
    pub pkcs8: Zeroizing<Vec<u8>>,
    /// Its certificate, DER.
    pub der: Vec<u8>,
    /// Its id.
    pub id: String,
    /// Its common name.
    pub cn: String,
}

impl std::fmt::Debug for NewCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCa")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A CA: its key, its certificate, and what it signed.
pub struct CaKey {
    /// Short hash of its public key.
    pub id: String,
    /// The certificate, DER.
    pub der: CertificateDer<'static>,
    /// `sha256:<hex>` of its SubjectPublicKeyInfo: what join tokens carry.
    pub pin: String,
    issuer: Issuer<'static, KeyPair>,
    /// What it signed.
    pub(super) signed: Signed,
}

impl std::fmt::Debug for CaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The CA's parameters, naming it `cn`: what it is issued with, and what every
/// certificate it signs names as its issuer.
pub fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Leash");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// The common name of the first CA (made before rotation existed).
pub fn first_ca_cn(trust_domain: &str) -> String {
    format!("Leash CA {trust_domain}")
}

/// A random positive serial with no leading zero byte (so its hex form is stable).
pub fn random_serial() -> Result<SerialNumber, KeyError> {
    let mut s = [0u8; 16];
    SystemRandom::new()
        .fill(&mut s)
        .map_err(|_| KeyError::Cert("no randomness".into()))?;
    s[0] &= 0x7f;
    s[0] |= 0x01;
    Ok(SerialNumber::from_slice(&s))
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

impl CaKey {
    /// Parse a CA from its PKCS#8 key, its certificate and its common name.
    pub fn load(
        id: &str,
        pkcs8: &[u8],
        der: Vec<u8>,
        cn: &str,
        signed: Signed,
    ) -> Result<CaKey, KeyError> {
        let key = KeyPair::try_from(pkcs8)?;
        let pin = spki_pin(&der)?;
        Ok(CaKey {
            id: id.to_string(),
            der: CertificateDer::from(der),
            pin,
            issuer: Issuer::new(ca_params(cn), key),
            signed,
        })
    }

    /// A new CA, named by `cn_of` from its id, valid for ten years: its PKCS#8 key, its
    /// certificate (DER), its id and its common name. Certificate times are the system
    /// time's, as verifiers read them.
    pub fn generate(cn_of: impl FnOnce(&str) -> String) -> Result<NewCa, KeyError> {
        let key = KeyPair::generate()?;
        let id = short_id(key.public_key_raw());
        let cn = cn_of(&id);
        let mut p = ca_params(&cn);
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::days(3650);
        p.serial_number = Some(random_serial()?);
        let cert = p.self_signed(&key)?;
        Ok(NewCa {
            pkcs8: Zeroizing::new(key.serialize_der()),
            der: cert.der().to_vec(),
            id,
            cn,
        })
    }

    /// What signs with this CA.
    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Note that a certificate this CA signed expires at `exp` (unix seconds).
    pub fn record_expiry(&self, exp: i64) {
        self.signed.record(exp);
    }
}
