//! The default certificate of the HTTPS listener (`[http]` without `cert_file`): made
//! fresh at every start for the configured server names, signed by the Leash CA, and
//! never written anywhere, like the agent-facing serving certificate.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::material::random_serial;
use super::{KeyError, Keys};

impl Keys {
    /// A serving certificate for `names` (DNS names, or IP addresses), valid for a year,
    /// with its chain (leaf, then the CA) and its key.
    pub fn http_server_cert(
        &self,
        ca: &super::CaKey,
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), KeyError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map_or("leash", String::as_str),
        );
        p.distinguished_name = dn;
        p.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<Result<_, KeyError>>()?;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(5);
        p.not_after = now + time::Duration::days(365);
        p.serial_number = Some(random_serial()?);
        // Not one of the things that keep a retiring CA published: the listener makes a
        // new one under the next serving CA when this one retires.
        let cert = p.signed_by(&key, ca.issuer())?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), ca.der.clone()], key_der))
    }
}
