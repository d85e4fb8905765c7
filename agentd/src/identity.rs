//! The host's identity: enrollment with a join token, the host key and certificate in
//! the state directory, and renewal at ~70% of the certificate's lifetime.
//!
//! The state directory holds only this identity (key, certificate, the CA certificates to
//! trust and a small JSON description). It is the only thing the agent ever writes to
//! disk; credentials never go there.
//!
//! `ca.crt` holds every CA the agent trusts, DER certificates one after the other: the
//! one pinned by the join token at enrollment, then, from each renewal, the list the
//! control plane sends (during a CA rotation, the old and the new CA).
//!
//! When a certificate was issued is read from the [`Clock`] the caller hands in, the
//! same clock that decides when to renew it.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use leash_proto::clock::Clock;
use leash_proto::join_token::JoinToken;
use leash_proto::reason::Reason;
use leash_proto::v1;
use leash_proto::v1::control_plane_client::ControlPlaneClient;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::tls::{self, Trust};

/// Identity failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The control plane refused the enrollment; retrying will not help.
    #[error("enrollment refused: {0}")]
    Refused(String),
    /// The join token cannot be used (malformed, or its CA pin does not match).
    #[error("unusable join token: {0}")]
    BadToken(String),
    /// No token and no saved identity.
    #[error("this host is not enrolled and no join token was given: pass --join-token, --join-token-file or $LEASH_JOIN_TOKEN")]
    NoToken,
    /// The control plane could not be reached (worth retrying).
    #[error("{0}")]
    Unreachable(String),
    /// The state directory is unusable.
    #[error("state directory {path}: {message}")]
    State {
        /// Path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Key or CSR generation failed.
    #[error("key generation: {0}")]
    Key(String),
}

/// What is saved next to the key and certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Description {
    /// Host name granted at enrollment.
    pub host: String,
    /// Labels granted at enrollment.
    pub labels: BTreeMap<String, String>,
    /// Trust domain.
    pub trust_domain: String,
    /// Unix seconds the certificate expires.
    pub not_after: i64,
    /// Unix seconds it was issued (for the renewal point).
    pub issued_at: i64,
}

/// A loaded identity.
pub struct Identity {
    /// Description.
    pub desc: Description,
    /// Host certificate.
    pub cert: CertificateDer<'static>,
    /// The CA certificates to trust (at least one).
    pub cas: Vec<CertificateDer<'static>>,
    key_pkcs8: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("desc", &self.desc)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// TLS client configuration authenticating as this host.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, tls::TlsError> {
        tls::client_config(
            Trust::Ca {
                cas: self.cas.clone(),
                trust_domain: self.desc.trust_domain.clone(),
            },
            Some((
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.to_vec())),
            )),
        )
    }

    /// When to renew: ~70% into the certificate's lifetime.
    pub fn renew_at(&self) -> i64 {
        let life = (self.desc.not_after - self.desc.issued_at).max(60);
        self.desc.issued_at + life * 7 / 10
    }

    /// An identity with no key or certificate, for unit tests of what holds one.
    #[cfg(test)]
    pub(crate) fn for_tests(host: &str) -> Identity {
        Identity {
            desc: Description {
                host: host.into(),
                labels: BTreeMap::new(),
                trust_domain: "test".into(),
                not_after: 0,
                issued_at: 0,
            },
            cert: CertificateDer::from(Vec::new()),
            cas: Vec::new(),
            key_pkcs8: Zeroizing::new(Vec::new()),
        }
    }
}

fn state_err(path: &Path, m: impl std::fmt::Display) -> IdentityError {
    IdentityError::State {
        path: path.to_path_buf(),
        message: m.to_string(),
    }
}

/// Write a file atomically with mode 0600.
fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), IdentityError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(name);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| state_err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| state_err(&tmp, e))?;
    f.sync_all().map_err(|e| state_err(&tmp, e))?;
    std::fs::rename(&tmp, &dst).map_err(|e| state_err(&dst, e))?;
    Ok(())
}

/// Prepare the state directory (0700).
pub fn prepare_state_dir(dir: &Path) -> Result<(), IdentityError> {
    std::fs::create_dir_all(dir).map_err(|e| state_err(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| state_err(dir, e))?;
    Ok(())
}

/// Load the saved identity, if the host has enrolled before.
pub fn load(dir: &Path) -> Result<Option<Identity>, IdentityError> {
    let desc_path = dir.join("identity.json");
    let text = match std::fs::read(&desc_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(state_err(&desc_path, e)),
    };
    let desc: Description = serde_json::from_slice(&text).map_err(|e| state_err(&desc_path, e))?;
    let read = |n: &str| std::fs::read(dir.join(n)).map_err(|e| state_err(&dir.join(n), e));
    let cas = split_ders(&read("ca.crt")?).map_err(|m| state_err(&dir.join("ca.crt"), m))?;
    Ok(Some(Identity {
        desc,
        cert: CertificateDer::from(read("host.crt")?),
        cas,
        key_pkcs8: Zeroizing::new(read("host.key")?),
    }))
}

/// The DER certificates in `bytes`, one after the other.
fn split_ders(mut bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(bytes)
            .map_err(|e| format!("not a list of DER certificates: {e}"))?;
        let len = bytes.len() - rest.len();
        out.push(CertificateDer::from(bytes[..len].to_vec()));
        bytes = rest;
    }
    if out.is_empty() {
        return Err("no CA certificate".into());
    }
    Ok(out)
}

fn save(dir: &Path, id: &Identity) -> Result<(), IdentityError> {
    // The CAs first: trusting one more CA before the new certificate is in place is
    // harmless, while a new certificate without its CA could leave the host unable to
    // reach a control plane serving under that CA.
    let cas: Vec<u8> = id.cas.iter().flat_map(|c| c.iter().copied()).collect();
    write_private(dir, "ca.crt", &cas)?;
    write_private(dir, "host.key", &id.key_pkcs8)?;
    write_private(dir, "host.crt", &id.cert)?;
    let desc = serde_json::to_vec_pretty(&id.desc).map_err(|e| state_err(dir, e))?;
    // Written last: its presence means the other three are complete.
    write_private(dir, "identity.json", &desc)
}

fn new_key_and_csr() -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), IdentityError> {
    let key = rcgen::KeyPair::generate().map_err(|e| IdentityError::Key(e.to_string()))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    Ok((Zeroizing::new(key.serialize_der()), csr.der().to_vec()))
}

/// Enroll with a join token and save the identity, by the system clock.
pub async fn enroll(
    dir: &Path,
    addrs: &[String],
    token_text: &str,
    name: Option<String>,
    default_name: Option<String>,
    labels: BTreeMap<String, String>,
) -> Result<Identity, IdentityError> {
    enroll_with_clock(
        &Clock::system(),
        dir,
        addrs,
        token_text,
        name,
        default_name,
        labels,
    )
    .await
}

/// Enroll with a join token and save the identity, recording its issue time by `clock`.
pub async fn enroll_with_clock(
    clock: &Clock,
    dir: &Path,
    addrs: &[String],
    token_text: &str,
    name: Option<String>,
    default_name: Option<String>,
    labels: BTreeMap<String, String>,
) -> Result<Identity, IdentityError> {
    let token = JoinToken::parse(token_text).map_err(|e| IdentityError::BadToken(e.to_string()))?;
    let (key, csr) = new_key_and_csr()?;
    let cfg = tls::client_config(Trust::Pin(token.ca_pin.clone()), None)
        .map_err(|e| IdentityError::Unreachable(e.to_string()))?;
    let channel = tls::connect(addrs, cfg).await.map_err(|e| {
        let m = e.to_string();
        if m.contains("does not match the pin") {
            IdentityError::BadToken(
                "the control plane's CA does not match the pin in the join token (wrong address, or a token from another control plane)".into(),
            )
        } else {
            IdentityError::Unreachable(m)
        }
    })?;
    let mut client = ControlPlaneClient::new(channel);
    let r = client
        .enroll(v1::EnrollRequest {
            protocol_version: leash_proto::PROTOCOL_VERSION,
            join_token: token_text.trim().to_string(),
            csr_der: csr,
            name: name.unwrap_or_default(),
            labels: labels.into_iter().collect(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            default_name: default_name.unwrap_or_default(),
        })
        .await
        .map_err(|s| match Reason::of(&s) {
            Reason::Unavailable => IdentityError::Unreachable(s.message().to_string()),
            _ => IdentityError::Refused(s.message().to_string()),
        })?
        .into_inner();
    let id = Identity {
        desc: Description {
            host: r.host_name,
            labels: r.labels.into_iter().collect(),
            trust_domain: r.trust_domain,
            not_after: r.not_after_unix,
            issued_at: clock.now(),
        },
        cert: CertificateDer::from(r.certificate_der),
        // The pinned CA first, then the others to trust (during a CA rotation the new
        // CA signed our certificate), learned over the connection the pin authenticated.
        cas: std::iter::once(r.ca_certificate_der.clone())
            .chain(
                r.ca_certificates_der
                    .into_iter()
                    .filter(|c| *c != r.ca_certificate_der),
            )
            .map(CertificateDer::from)
            .collect(),
        key_pkcs8: key,
    };
    if tls::spki_pin(&id.cas[0]).as_deref() != Some(token.ca_pin.as_str()) {
        return Err(IdentityError::BadToken(
            "the CA certificate returned does not match the token's pin".into(),
        ));
    }
    save(dir, &id)?;
    Ok(id)
}

/// Renew the host certificate with a new key; saves and returns the new identity. By the
/// system clock.
pub async fn renew(
    dir: &Path,
    addrs: &[String],
    current: &Identity,
) -> Result<Identity, IdentityError> {
    renew_with_clock(&Clock::system(), dir, addrs, current).await
}

/// [`renew`], recording the new certificate's issue time by `clock`.
pub async fn renew_with_clock(
    clock: &Clock,
    dir: &Path,
    addrs: &[String],
    current: &Identity,
) -> Result<Identity, IdentityError> {
    let (key, csr) = new_key_and_csr()?;
    let cfg = current
        .client_config()
        .map_err(|e| IdentityError::Unreachable(e.to_string()))?;
    let channel = tls::connect(addrs, cfg)
        .await
        .map_err(|e| IdentityError::Unreachable(e.to_string()))?;
    let r = ControlPlaneClient::new(channel)
        .renew(v1::RenewRequest { csr_der: csr })
        .await
        .map_err(|s| match Reason::of(&s) {
            Reason::Unavailable => IdentityError::Unreachable(s.message().to_string()),
            _ => IdentityError::Refused(s.message().to_string()),
        })?
        .into_inner();
    let mut desc = current.desc.clone();
    desc.not_after = r.not_after_unix;
    desc.issued_at = clock.now();
    // The CAs to trust from now on; none from an older control plane: keep ours.
    let cas = if r.ca_certificates_der.is_empty() {
        current.cas.clone()
    } else {
        r.ca_certificates_der
            .into_iter()
            .map(CertificateDer::from)
            .collect()
    };
    let id = Identity {
        desc,
        cert: CertificateDer::from(r.certificate_der),
        cas,
        key_pkcs8: key,
    };
    save(dir, &id)?;
    Ok(id)
}

/// Retry delay for renewal failures: the renewal point leaves 30% of the lifetime, so
/// retry often enough to get many tries in, but not in a tight loop.
pub const RENEW_RETRY: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(cn: &str) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::new()).expect("params");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn every_trusted_ca_is_saved_and_loaded_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut id = Identity::for_tests("h");
        id.cas = vec![ca("old"), ca("new")];
        save(dir.path(), &id).expect("save");
        let back = load(dir.path()).expect("load").expect("saved");
        assert_eq!(back.cas, id.cas);
        // One CA, as enrollment saves it (and as agents saved it before CA rotation).
        id.cas.truncate(1);
        save(dir.path(), &id).expect("save");
        assert_eq!(load(dir.path()).expect("load").expect("saved").cas, id.cas);
        std::fs::write(dir.path().join("ca.crt"), b"junk").expect("write");
        let e = load(dir.path()).expect_err("junk is refused").to_string();
        assert!(e.contains("ca.crt"), "{e}");
        assert!(split_ders(b"").is_err(), "no CA at all is refused");
    }
}
