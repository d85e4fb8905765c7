//! Reaching a control plane over TLS with an admin certificate (`--server`, `--cert`,
//! `--key`, `--ca`, or the profile `leashctl login` writes), and the TLS client both
//! that and `login` use.
//!
//! The server must present a certificate chaining to a CA leashctl trusts (the bundle
//! in `--ca`, or, on first contact at login, the CA whose public-key hash the code
//! carries) with the URI SAN `spiffe://<td>/leash/control-plane`; its DNS names are not
//! what identifies it. With an admin certificate, `<td>` must be the trust domain that
//! certificate names (`spiffe://<td>/leash/admin/<NAME>`): a CA shared by two trust
//! domains does not let one stand in for the other.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use leash_proto::cli::Fail;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo.
pub(crate) fn spki_pin(cert: &[u8]) -> Option<String> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).ok()?;
    let d = ring::digest::digest(&ring::digest::SHA256, c.tbs_certificate.subject_pki.raw);
    Some(format!("sha256:{}", hex::encode(d)))
}

fn uri_sans(cert: &[u8]) -> Vec<String> {
    let Ok((_, c)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = c.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// What leashctl trusts for the control plane.
#[derive(Debug, Clone)]
pub(crate) enum Trust {
    /// First contact (login): the CA whose SPKI hash is this pin.
    Pin(String),
    /// Any of these CA certificates, serving this trust domain.
    Cas {
        /// CA certificates, DER.
        cas: Vec<CertificateDer<'static>>,
        /// The trust domain the server's URI SAN must name.
        trust_domain: String,
    },
}

/// The trust domain of an admin certificate: `<td>` of its URI SAN
/// `spiffe://<td>/leash/admin/<NAME>`.
pub(crate) fn admin_trust_domain(cert: &[u8]) -> Option<String> {
    uri_sans(cert).iter().find_map(|u| {
        let rest = u.strip_prefix("spiffe://")?;
        let (td, path) = rest.split_once('/')?;
        let name = path.strip_prefix("leash/admin/")?;
        (!td.is_empty() && !name.is_empty() && !name.contains('/')).then(|| td.to_string())
    })
}

/// Whether `uri` is the control plane's identity, in `trust_domain` when one is given.
fn is_control_plane(uri: &str, trust_domain: Option<&str>) -> bool {
    match trust_domain {
        Some(td) => uri == format!("spiffe://{td}/leash/control-plane"),
        None => uri.starts_with("spiffe://") && uri.ends_with("/leash/control-plane"),
    }
}

#[derive(Debug)]
struct Verifier {
    trust: Trust,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bad = |m: &str| rustls::Error::General(m.to_string());
        let (cas, td) = match &self.trust {
            Trust::Pin(pin) => (
                vec![intermediates
                    .iter()
                    .find(|c| spki_pin(c).as_deref() == Some(pin.as_str()))
                    .ok_or_else(|| {
                        bad("the control plane's CA does not match the pin in the login code (wrong address, or a code from another control plane)")
                    })?
                    .clone()
                    .into_owned()],
                None,
            ),
            Trust::Cas { cas, trust_domain } => (cas.clone(), Some(trust_domain.as_str())),
        };
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots
                .add(ca)
                .map_err(|e| bad(&format!("unusable CA certificate: {e}")))?;
        }
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| bad(&e.to_string()))?;
        // The serving certificate carries DNS "localhost" next to its URI SAN; the URI
        // SAN is what identifies the control plane.
        let name = ServerName::try_from("localhost").map_err(|e| bad(&e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], &name, ocsp, now)?;
        let sans = uri_sans(end_entity);
        if !sans.iter().any(|u| is_control_plane(u, td)) {
            return Err(bad(&match td {
                Some(td) => format!(
                    "the server certificate is not the control plane of trust domain {td}, which the admin certificate names (URI SAN mismatch)"
                ),
                None => {
                    "the server certificate is not a Leash control plane's (URI SAN mismatch)"
                        .to_string()
                }
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not accepted".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TLS 1.3 with our verifier, and the admin certificate when there is one.
pub(crate) fn client_config(
    trust: Trust,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, Fail> {
    let provider = provider();
    let tls_err = |e: rustls::Error| Fail(format!("TLS configuration: {e}"), 1);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier { trust, provider }));
    let mut cfg = match client {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(tls_err)?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// `https://HOST:PORT` -> `HOST:PORT`.
pub(crate) fn parse_server(url: &str) -> Result<String, Fail> {
    let rest = url
        .strip_prefix("https://")
        .map(|r| r.trim_end_matches('/'));
    match rest {
        Some(r) if !r.is_empty() && r.contains(':') && !r.contains('/') => Ok(r.to_string()),
        _ => Err(Fail::usage(format!(
            "invalid server address {}: write it as https://HOST:PORT (the control plane's agent port)",
            leash_proto::names::excerpt(url)
        ))),
    }
}

/// A gRPC channel to `server` (`https://HOST:PORT`) over TLS with `cfg`.
pub(crate) async fn connect(server: &str, cfg: Arc<ClientConfig>) -> Result<Channel, Fail> {
    let addr = parse_server(server)?;
    let a = addr.clone();
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| Fail::usage(format!("invalid server address {server}")))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true);
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let a = a.clone();
            let cfg = cfg.clone();
            async move {
                let tcp = TcpStream::connect(&a).await?;
                let name = ServerName::try_from("localhost")
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let tls = TlsConnector::from(cfg).connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| {
            let why = std::error::Error::source(&e)
                .map_or_else(|| e.to_string(), |s| format!("{e}: {s}"));
            Fail(
                format!("cannot reach the control plane at {server}: {why}"),
                5,
            )
        })
}

/// The profile `leashctl login` writes: where the control plane is and which files
/// hold the admin certificate, its key and the CA bundle.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Profile {
    /// `https://HOST:PORT`.
    pub server: Option<String>,
    /// The admin certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM, mode 0600).
    pub key: Option<PathBuf>,
    /// The CA bundle to trust (PEM).
    pub ca: Option<PathBuf>,
}

/// `$XDG_CONFIG_HOME/leash`, else `$HOME/.config/leash`.
pub(crate) fn config_dir() -> Result<PathBuf, Fail> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("leash"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".config").join("leash")),
        None => Err(Fail::usage(
            "neither $XDG_CONFIG_HOME nor $HOME is set; cannot find ~/.config/leash",
        )),
    }
}

/// The default profile file, `<config dir>/leashctl.toml`.
pub(crate) fn default_profile_path() -> Result<PathBuf, Fail> {
    Ok(config_dir()?.join("leashctl.toml"))
}

/// Read a profile.
pub(crate) fn read_profile(path: &Path) -> Result<Profile, Fail> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Fail::usage(format!("cannot read the profile {}: {e}", path.display())))?;
    toml::from_str(&text)
        .map_err(|e| Fail::usage(format!("the profile {} is not valid: {e}", path.display())))
}

/// What `--server` & co. (or the profile) say.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    pub server: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Remote {
    /// From the flags, the missing ones taken from `profile`.
    pub(crate) fn resolve(
        server: String,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
        profile: Option<&Profile>,
    ) -> Result<Remote, Fail> {
        let need = |v: Option<PathBuf>, p: Option<&PathBuf>, flag: &str| {
            v.or_else(|| p.cloned()).ok_or_else(|| {
                Fail::usage(format!(
                    "{flag} is needed with --server (or run `leashctl login` to write a profile)"
                ))
            })
        };
        Ok(Remote {
            server,
            cert: need(cert, profile.and_then(|p| p.cert.as_ref()), "--cert")?,
            key: need(key, profile.and_then(|p| p.key.as_ref()), "--key")?,
            ca: need(ca, profile.and_then(|p| p.ca.as_ref()), "--ca")?,
        })
    }

    /// Connect with the admin certificate.
    pub(crate) async fn connect(&self) -> Result<Channel, Fail> {
        let read = |p: &Path, what: &str| {
            std::fs::read(p)
                .map_err(|e| Fail::usage(format!("cannot read the {what} {}: {e}", p.display())))
        };
        let certs = |p: &Path, what: &str| -> Result<Vec<CertificateDer<'static>>, Fail> {
            let pem = read(p, what)?;
            let v: Vec<_> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| Fail::usage(format!("{what} {}: {e}", p.display())))?;
            if v.is_empty() {
                return Err(Fail::usage(format!(
                    "{what} {} holds no PEM certificate",
                    p.display()
                )));
            }
            Ok(v)
        };
        let chain = certs(&self.cert, "admin certificate")?;
        let cas = certs(&self.ca, "CA bundle")?;
        let key = PrivateKeyDer::from_pem_slice(&read(&self.key, "key")?)
            .map_err(|e| Fail::usage(format!("key {}: {e}", self.key.display())))?;
        let trust_domain = admin_trust_domain(&chain[0]).ok_or_else(|| {
            Fail::usage(format!(
                "admin certificate {} is not a Leash admin certificate (no URI SAN spiffe://<trust domain>/leash/admin/<NAME>)",
                self.cert.display()
            ))
        })?;
        let cfg = client_config(Trust::Cas { cas, trust_domain }, Some((chain, key)))?;
        connect(&self.server, cfg).await
    }
}

/// PEM text of DER items with `label` (CERTIFICATE).
pub(crate) fn pem(label: &str, ders: &[Vec<u8>]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for der in ders {
        out.push_str(&format!("-----BEGIN {label}-----\n"));
        let b = base64::engine::general_purpose::STANDARD.encode(der);
        for line in b.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

    struct Ca {
        cert: rcgen::Certificate,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        Ca {
            cert,
            issuer: Issuer::new(p, key),
        }
    }

    fn leaf(ca: &Ca, uri: &str) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::URI(uri.try_into().unwrap()));
        let cert = p.signed_by(&key, &ca.issuer).unwrap();
        cert.der().clone()
    }

    fn verify(trust: Trust, server: &CertificateDer<'_>) -> Result<(), String> {
        let v = Verifier {
            trust,
            provider: provider(),
        };
        let name = ServerName::try_from("localhost").unwrap();
        v.verify_server_cert(server, &[], &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_server_must_serve_the_trust_domain_of_the_admin_certificate() {
        let ca = ca("test CA");
        let cas = vec![ca.cert.der().clone()];
        let server = leaf(&ca, "spiffe://corp.example/leash/control-plane");
        let admin = leaf(&ca, "spiffe://corp.example/leash/admin/alice");
        let td = admin_trust_domain(&admin).unwrap();
        assert_eq!(td, "corp.example");
        verify(
            Trust::Cas {
                cas: cas.clone(),
                trust_domain: td,
            },
            &server,
        )
        .unwrap();

        let other = leaf(&ca, "spiffe://other.example/leash/control-plane");
        let err = verify(
            Trust::Cas {
                cas,
                trust_domain: "corp.example".into(),
            },
            &other,
        )
        .unwrap_err();
        assert!(err.contains("trust domain corp.example"), "{err}");
    }

    #[test]
    fn a_server_under_another_ca_is_refused_whatever_its_uri() {
        let (a, b) = (ca("CA a"), ca("CA b"));
        let server = leaf(&b, "spiffe://corp.example/leash/control-plane");
        let err = verify(
            Trust::Cas {
                cas: vec![a.cert.der().clone()],
                trust_domain: "corp.example".into(),
            },
            &server,
        )
        .unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
    }

    #[test]
    fn only_an_admin_uri_gives_a_trust_domain() {
        let ca = ca("test CA");
        for (uri, want) in [
            ("spiffe://td/leash/admin/alice", Some("td")),
            ("spiffe://td/leash/control-plane", None),
            ("spiffe://td/leash/admin/", None),
            ("spiffe://td/leash/admin/a/b", None),
            ("spiffe://td/team/web", None),
        ] {
            let cert = leaf(&ca, uri);
            assert_eq!(admin_trust_domain(&cert).as_deref(), want, "{uri}");
        }
    }
}
