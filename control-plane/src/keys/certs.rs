//! Certificates a CA signs: host and admin certificates, X.509-SVIDs and the control plane's
//! serving certificate. Only a CSR's public key is ever used; names, usages and
//! lifetimes are ours. Certificate times are the system time's, as verifiers read them.

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::error::KeyError;
use super::material::{random_serial, CaKey};

/// Serial number (hex) of a certificate.
pub fn cert_serial(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(hex::encode(cert.tbs_certificate.raw_serial()))
}

fn parse_csr(csr_der: &[u8]) -> Result<CertificateSigningRequestParams, KeyError> {
    CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
        .map_err(|e| KeyError::Cert(format!("invalid CSR: {e}")))
}

/// A host certificate for the key in `csr_der`, signed by `ca`: its DER, its serial (hex)
/// and its expiry (unix seconds).
pub fn host_cert(
    ca: &CaKey,
    trust_domain: &str,
    csr_der: &[u8],
    host: &str,
    ttl: std::time::Duration,
) -> Result<(CertificateDer<'static>, String, i64), KeyError> {
    let uri = format!("spiffe://{trust_domain}/leash/host/{host}");
    client_cert(ca, csr_der, host, uri, ttl)
}

/// An admin certificate for the key in `csr_der`, signed by `ca`, with the URI SAN
/// `spiffe://<td>/leash/admin/<name>`: its DER, serial (hex) and expiry (unix seconds).
pub fn admin_cert(
    ca: &CaKey,
    trust_domain: &str,
    csr_der: &[u8],
    name: &str,
    ttl: std::time::Duration,
) -> Result<(CertificateDer<'static>, String, i64), KeyError> {
    let uri = format!("spiffe://{trust_domain}/leash/admin/{name}");
    client_cert(ca, csr_der, name, uri, ttl)
}

/// A client certificate (ClientAuth only) for the key in `csr_der` naming `cn` and the
/// URI SAN `uri`, valid for `ttl` from now.
fn client_cert(
    ca: &CaKey,
    csr_der: &[u8],
    cn: &str,
    uri: String,
    ttl: std::time::Duration,
) -> Result<(CertificateDer<'static>, String, i64), KeyError> {
    let csr = parse_csr(csr_der)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
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
    let cert = p.signed_by(&csr.public_key, ca.issuer())?;
    let exp = not_after.unix_timestamp();
    ca.record_expiry(exp);
    Ok((cert.der().clone(), hex::encode(serial.as_ref()), exp))
}

/// An X.509-SVID for the P-256 key in `csr_der` (its self-signature checked), signed by
/// `ca`: URI SAN `spiffe_id` only, not a CA, valid from `not_before` to `not_after`
/// (unix seconds).
pub fn svid(
    ca: &CaKey,
    csr_der: &[u8],
    spiffe_id: &str,
    not_before: i64,
    not_after: i64,
) -> Result<Vec<u8>, KeyError> {
    use x509_parser::prelude::FromDer;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
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
    p.subject_alt_names = vec![SanType::URI(spiffe_id.to_string().try_into()?)];
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    // Names the CA key, so a verifier holding two CAs during a rotation picks the one
    // that signed.
    p.use_authority_key_identifier_extension = true;
    p.not_before = time(not_before)?;
    p.not_after = time(not_after)?;
    p.serial_number = Some(random_serial()?);
    let cert = p.signed_by(&spki, ca.issuer())?;
    ca.record_expiry(not_after);
    Ok(cert.der().to_vec())
}

/// A fresh serving certificate and key for the control plane, signed by `ca`, with the
/// URI SAN `spiffe://<td>/leash/control-plane`. Never written to disk. Not counted in
/// what `ca` signed: the control plane stops serving it when `ca` retires.
pub fn serving(
    ca: &CaKey,
    trust_domain: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), KeyError> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "leash-control-plane");
    p.distinguished_name = dn;
    let uri = format!("spiffe://{trust_domain}/leash/control-plane");
    p.subject_alt_names = vec![
        SanType::URI(uri.try_into()?),
        SanType::DnsName("localhost".try_into()?),
    ];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + time::Duration::days(365);
    p.serial_number = Some(random_serial()?);
    let cert = p.signed_by(&key, ca.issuer())?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((vec![cert.der().clone(), ca.der.clone()], key_der))
}
