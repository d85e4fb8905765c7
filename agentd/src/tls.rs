//! TLS to the control plane, and the gRPC channel over it.
//!
//! On first contact the agent trusts exactly one CA: the one whose public-key hash the
//! join token carries (found in the chain the server presents). Afterwards it trusts the
//! CA certificates saved in its state directory: the one from enrollment, then the list
//! each renewal brings (both CAs while the CA rotates). The server must also present the
//! URI SAN `spiffe://<td>/leash/control-plane`; its DNS names are not what identifies
//! it.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

/// TLS set-up failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The control-plane address is not `https://HOST:PORT`.
    #[error("invalid control-plane address {0:?}: write it as https://HOST:PORT")]
    Address(String),
    /// rustls refused the configuration (bad key or certificate).
    #[error("TLS configuration: {0}")]
    Config(String),
    /// Could not reach any control plane.
    #[error("cannot reach the control plane at {addrs}: {message}")]
    Connect {
        /// Addresses tried.
        addrs: String,
        /// Last error.
        message: String,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo.
pub fn spki_pin(cert: &[u8]) -> Option<String> {
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

/// What the agent trusts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// First contact: the CA whose SPKI hash is this pin.
    Pin(String),
    /// After enrollment: any of these CA certificates, and this trust domain.
    Ca {
        /// CA certificates, DER.
        cas: Vec<CertificateDer<'static>>,
        /// Trust domain.
        trust_domain: String,
    },
}

#[derive(Debug)]
struct PinnedVerifier {
    trust: Trust,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bad = |m: &str| rustls::Error::General(m.to_string());
        let (cas, td): (Vec<CertificateDer<'static>>, Option<&str>) = match &self.trust {
            Trust::Pin(pin) => {
                let ca = intermediates
                    .iter()
                    .find(|c| spki_pin(c).as_deref() == Some(pin.as_str()))
                    .ok_or_else(|| {
                        bad("the control plane's CA does not match the pin in the join token (wrong address, or a token from another control plane)")
                    })?;
                (vec![ca.clone().into_owned()], None)
            }
            Trust::Ca { cas, trust_domain } => (cas.clone(), Some(trust_domain.as_str())),
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
        // The serving certificate always carries DNS "localhost" next to its URI SAN;
        // the URI SAN below is what identifies the control plane.
        let name = ServerName::try_from("localhost").map_err(|e| bad(&e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], &name, ocsp, now)?;
        let sans = uri_sans(end_entity);
        let ok = sans.iter().any(|u| match td {
            Some(td) => u == &format!("spiffe://{td}/leash/control-plane"),
            None => u.starts_with("spiffe://") && u.ends_with("/leash/control-plane"),
        });
        if !ok {
            return Err(bad(
                "the server certificate is not a Leash control plane's (URI SAN mismatch)",
            ));
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

/// Client configuration: TLS 1.3, our pinned verifier, and the host certificate when we
/// have one.
pub fn client_config(
    trust: Trust,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedVerifier { trust, provider }));
    let mut cfg = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Config(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// `https://HOST:PORT` -> `HOST:PORT`.
pub fn parse_addr(url: &str) -> Result<String, TlsError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| TlsError::Address(url.to_string()))?
        .trim_end_matches('/');
    if rest.is_empty() || !rest.contains(':') || rest.contains('/') {
        return Err(TlsError::Address(url.to_string()));
    }
    Ok(rest.to_string())
}

/// A channel to the first reachable control plane of `addrs` (HOST:PORT each).
pub async fn connect(addrs: &[String], cfg: Arc<ClientConfig>) -> Result<Channel, TlsError> {
    let mut last = String::from("no address configured");
    for addr in addrs {
        let a = addr.clone();
        let cfg = cfg.clone();
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| TlsError::Address(addr.clone()))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .http2_keep_alive_interval(std::time::Duration::from_secs(20))
            .keep_alive_timeout(std::time::Duration::from_secs(10))
            .tcp_nodelay(true);
        let res = endpoint
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let a = a.clone();
                let cfg = cfg.clone();
                async move {
                    let tcp = TcpStream::connect(&a).await?;
                    tcp.set_nodelay(true)?;
                    let name = ServerName::try_from("localhost")
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                    let tls = TlsConnector::from(cfg).connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            }))
            .await;
        match res {
            Ok(ch) => return Ok(ch),
            Err(e) => {
                last = format!("{e}");
                if let Some(src) = std::error::Error::source(&e) {
                    last = format!("{e}: {src}");
                }
            }
        }
    }
    Err(TlsError::Connect {
        addrs: addrs.join(", "),
        message: last,
    })
}
