//! TLS for the HTTPS listener: the operator's certificate files or a default one our CA
//! signs, TLS 1.2 and 1.3 (relying parties in clouds and CI systems still use 1.2), ALPN
//! `http/1.1`. A client certificate is requested but not required: one our CA signed
//! (a host certificate) authenticates a caller of `/introspect`.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::error::HttpError;
use crate::config::HttpCert;
use crate::keys::Keys;

/// Read a PEM chain and key, naming the file at fault.
pub fn load_files(
    cert_file: &Path,
    key_file: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), HttpError> {
    let cert_err = |message: String| HttpError::CertFile {
        path: cert_file.to_path_buf(),
        message,
    };
    // Read first, so an unreadable file is reported as such (with the OS's reason).
    let pem = std::fs::read(cert_file).map_err(|e| cert_err(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err("holds no CERTIFICATE block".into()));
    }
    let key_err = |message: String| HttpError::KeyFile {
        path: key_file.to_path_buf(),
        message,
    };
    let pem = std::fs::read(key_file).map_err(|e| key_err(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| key_err(format!("holds no PEM private key ({e})")))?;
    Ok((chain, key))
}

/// The listener's TLS configuration.
///
/// Both the client-certificate verifier and the default certificate follow key rotation:
/// host certificates from every CA in the bundle are accepted, and the default
/// certificate is made again under the new serving CA when the old one retires.
pub fn server_config(cert: &HttpCert, keys: &Arc<Keys>) -> Result<Arc<ServerConfig>, HttpError> {
    let tls_err = |e: crate::keys::KeyError| HttpError::Tls(e.to_string());
    let verifier = crate::tls::bundle_client_verifier(keys.clone()).map_err(tls_err)?;
    let builder = ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier);
    let mut cfg = match cert {
        HttpCert::Files {
            cert_file,
            key_file,
        } => {
            let (chain, key) = load_files(cert_file, key_file)?;
            builder.with_single_cert(chain, key).map_err(|e| {
                HttpError::Tls(format!("the certificate and key do not fit together: {e}"))
            })?
        }
        HttpCert::Default { server_names } => {
            let names = server_names.clone();
            let resolver = crate::tls::serving_resolver(
                keys.clone(),
                Box::new(move |k, ca| k.http_server_cert(ca, &names)),
            )
            .map_err(tls_err)?;
            builder.with_cert_resolver(resolver)
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
