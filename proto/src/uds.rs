//! gRPC clients over a Unix socket (the agent socket and the admin socket).

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Why a socket could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Nothing listens there, or the caller may not open it.
    #[error("cannot connect to {path}: {}", chain(source))]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The transport error.
        source: tonic::transport::Error,
    },
}

/// Open a channel to the gRPC server on the Unix socket `path`. The connection is made
/// now, so a missing server is reported here rather than on the first call.
pub async fn connect(path: &Path) -> Result<Channel, ConnectError> {
    let p = path.to_path_buf();
    // The URI is required by the API but unused: the connector below ignores it.
    let endpoint = Endpoint::from_static("http://localhost");
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = p.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
        .map_err(|source| ConnectError::Connect {
            path: path.to_path_buf(),
            source,
        })
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
