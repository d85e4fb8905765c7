//! TLS 1.3 for the agent-facing listener.
//!
//! Client certificates are optional at the handshake (Enroll has none) but verified
//! against every CA in the bundle (next, active, retiring: see keys/lifecycle.rs)
//! whenever one is presented; every method other than Enroll then requires one and maps
//! it to a host record by serial (see `agent_api`).
//!
//! The serving certificate is signed by the serving CA, the oldest CA that is active or
//! retiring: agents that have not renewed since a CA rotation trust only that one. It is
//! chosen per handshake, so when the old CA retires the next handshake is served under
//! the new one, with no restart.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::keys::{KeyError, Keys};

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The one crypto provider used across the project.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn cert_err(e: impl std::fmt::Display) -> KeyError {
    KeyError::Cert(e.to_string())
}

/// The client-certificate verifier for the CAs of one key generation.
fn bundle_verifier(keys: &Keys) -> Result<Arc<dyn ClientCertVerifier>, KeyError> {
    let mut roots = RootCertStore::empty();
    for der in keys.bundle_ders() {
        roots.add(CertificateDer::from(der)).map_err(cert_err)?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(cert_err)
}

/// Verifies client certificates against the CA bundle in force, rebuilt when the keys
/// change.
#[derive(Debug)]
struct BundleVerifier {
    keys: Arc<Keys>,
    current: RwLock<(u64, Arc<dyn ClientCertVerifier>)>,
}

impl BundleVerifier {
    fn new(keys: Arc<Keys>) -> Result<BundleVerifier, KeyError> {
        let generation = keys.generation();
        let v = bundle_verifier(&keys)?;
        Ok(BundleVerifier {
            keys,
            current: RwLock::new((generation, v)),
        })
    }

    fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        let generation = self.keys.generation();
        {
            let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
            if cur.0 == generation {
                return cur.1.clone();
            }
        }
        match bundle_verifier(&self.keys) {
            Ok(v) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = (generation, v.clone());
                v
            }
            Err(e) => {
                // Keep the last good one: every CA in it was valid when it was built.
                tracing::error!(error = %e, "cannot build the client-certificate verifier for the new CA bundle");
                self.current
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .1
                    .clone()
            }
        }
    }
}

impl ClientCertVerifier for BundleVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: agents send their one certificate whatever the hints say.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verifier()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}

/// Makes a certificate and key under a CA (the agent-facing serving certificate, or the
/// HTTPS listener's default one).
pub type MakeCert = Box<
    dyn Fn(
            &Keys,
            &crate::keys::CaKey,
        ) -> Result<
            (
                Vec<CertificateDer<'static>>,
                rustls::pki_types::PrivateKeyDer<'static>,
            ),
            KeyError,
        > + Send
        + Sync,
>;

/// A serving certificate for the serving CA, made when that CA changes.
struct ServingCert {
    keys: Arc<Keys>,
    make: MakeCert,
    /// The serving CA's id and the certificate made under it.
    current: RwLock<(String, Arc<CertifiedKey>)>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert").finish_non_exhaustive()
    }
}

fn certified(
    make: &MakeCert,
    keys: &Keys,
    ca: &crate::keys::CaKey,
) -> Result<Arc<CertifiedKey>, KeyError> {
    let (chain, key) = make(keys, ca)?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(cert_err)?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

impl ServingCert {
    fn new(keys: Arc<Keys>, make: MakeCert) -> Result<ServingCert, KeyError> {
        let ca = keys.serving_ca();
        let ck = certified(&make, &keys, &ca)?;
        Ok(ServingCert {
            keys,
            make,
            current: RwLock::new((ca.id.clone(), ck)),
        })
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let ca = self.keys.serving_ca();
        {
            let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
            if cur.0 == ca.id {
                return Some(cur.1.clone());
            }
        }
        match certified(&self.make, &self.keys, &ca) {
            Ok(ck) => {
                tracing::info!(ca = %ca.id, "serving under a new CA");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) =
                    (ca.id.clone(), ck.clone());
                Some(ck)
            }
            Err(e) => {
                tracing::error!(error = %e, ca = %ca.id, "cannot make a serving certificate under the new CA; serving the old one");
                Some(
                    self.current
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .1
                        .clone(),
                )
            }
        }
    }
}

/// Server configuration: TLS 1.3 only, a serving certificate under the serving CA,
/// optional client certs verified against the CA bundle, ALPN h2. Follows key rotation.
pub fn server_config(keys: Arc<Keys>) -> Result<Arc<ServerConfig>, KeyError> {
    let verifier = bundle_client_verifier(keys.clone())?;
    let resolver = serving_resolver(keys, Box::new(|k, ca| k.serving_cert_for(ca)))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(cert_err)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client-certificate verifier (optional certificates) that follows the CA bundle in
/// force: certificates from every CA that is next, active or retiring.
pub fn bundle_client_verifier(keys: Arc<Keys>) -> Result<Arc<dyn ClientCertVerifier>, KeyError> {
    Ok(Arc::new(BundleVerifier::new(keys)?))
}

/// A certificate resolver that serves what `make` makes under the serving CA, made again
/// when the serving CA changes (with no restart).
pub fn serving_resolver(
    keys: Arc<Keys>,
    make: MakeCert,
) -> Result<Arc<dyn ResolvesServerCert>, KeyError> {
    Ok(Arc::new(ServingCert::new(keys, make)?))
}

/// Accept TCP connections and finish their handshakes concurrently, so one slow or
/// hostile client cannot hold up the others. Yields only completed TLS streams.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(256);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                break;
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
