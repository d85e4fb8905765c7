//! Why a SPIFFE Workload API call was refused, and the gRPC status each reason becomes
//! (the SPIFFE Workload API specification names the codes: a request without the
//! security header is `InvalidArgument`; a caller entitled to no SVID gets
//! `PermissionDenied`).

use leash_proto::reason::Reason;
use tonic::Status;

use crate::calls::CallError;

/// The metadata key every SPIFFE Workload API request must carry, with value `true`.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// A refused SPIFFE call. The messages are the ones callers see.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeError {
    /// The request lacks `workload.spiffe.io: true`.
    #[error("the SPIFFE Workload API needs the request metadata `workload.spiffe.io: true`; use a SPIFFE Workload API client library, or add the header")]
    MissingHeader,
    /// Bad input from the caller.
    #[error("{0}")]
    Invalid(String),
    /// The caller is entitled to no SVID (of this kind, or for this SPIFFE ID).
    #[error("{0}")]
    NoIdentity(String),
    /// The token did not validate.
    #[error("the JWT-SVID is not valid: {0}")]
    BadToken(String),
    /// No trust bundle has arrived from the control plane yet.
    #[error("the agent has no trust bundle from the control plane yet; try again shortly (check `leash status`)")]
    NoBundle,
    /// The shared fetch path refused (attestation, policy, availability).
    #[error(transparent)]
    Call(#[from] CallError),
}

impl From<SpiffeError> for Status {
    fn from(e: SpiffeError) -> Status {
        match e {
            SpiffeError::MissingHeader | SpiffeError::Invalid(_) | SpiffeError::BadToken(_) => {
                Reason::Invalid.status(e.to_string())
            }
            SpiffeError::NoIdentity(_) => Reason::Denied.status(e.to_string()),
            SpiffeError::NoBundle => Reason::Unavailable.status(e.to_string()),
            SpiffeError::Call(c) => c.into(),
        }
    }
}
