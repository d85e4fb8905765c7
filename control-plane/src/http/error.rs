//! What can stop the HTTPS listener from starting.

use std::path::PathBuf;

/// Start-up failures of the HTTPS listener; each names the file or address at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// `cert_file` could not be read or holds no PEM certificate.
    #[error("[http] cert_file {path}: {message}; give a readable PEM file with the certificate chain, leaf first")]
    CertFile {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// `key_file` could not be read or holds no PEM private key.
    #[error("[http] key_file {path}: {message}; give a readable PEM file with the private key of cert_file")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The certificate and key do not make a TLS configuration (they do not match, say).
    #[error("[http] certificate: {0}")]
    Tls(String),
    /// The default certificate could not be made.
    #[error("[http] default certificate: {0}")]
    Keys(#[from] crate::keys::KeyError),
    /// The listen address could not be bound.
    #[error("[http] cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}
