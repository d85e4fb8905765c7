//! The gRPC boundary for errors: how the library's typed errors become a `Status` with a
//! `Reason` (docs/CLI.md lists the exit code of each). Library modules return their own
//! error enums; only the handlers and this module speak `tonic::Status`.

use leash_proto::reason::{Reason, APPROVAL_KEY};
use tonic::Status;

use crate::approval::ApprovalError;
use crate::enroll::EnrollError;
use crate::issuance::IssueError;
use crate::model::Event;
use crate::state::Shared;
use crate::store::StoreError;

impl From<StoreError> for Status {
    /// A refusal of the caller maps to its reason; a failure of the store (sled, a batch
    /// that could not be made durable, shutting down) is unavailable, never denied.
    fn from(e: StoreError) -> Status {
        match e {
            StoreError::NotFound(m) => Reason::NotFound.status(m),
            StoreError::Conflict(m) => Reason::Invalid.status(m),
            StoreError::Refused(m) => Reason::Denied.status(m),
            e => {
                tracing::error!(error = %e, "store failure");
                Reason::Unavailable.status(format!("the control plane's store failed: {e}"))
            }
        }
    }
}

impl From<ApprovalError> for Status {
    /// Pending carries the approval id in its metadata, for the requester to quote.
    fn from(e: ApprovalError) -> Status {
        match e {
            ApprovalError::Pending { ref id } => {
                let mut st = Reason::Pending.status(e.to_string());
                if let Ok(v) = id.parse() {
                    st.metadata_mut().insert(APPROVAL_KEY, v);
                }
                st
            }
            ApprovalError::Denied(m) => Reason::Denied.status(m),
            ApprovalError::Store(e) => Status::from(e),
        }
    }
}

impl From<EnrollError> for Status {
    fn from(e: EnrollError) -> Status {
        let e = match e {
            EnrollError::Store(e) => return Status::from(e),
            e => e,
        };
        let reason = match &e {
            EnrollError::RateLimited { .. } | EnrollError::Store(_) => Reason::Unavailable,
            EnrollError::Protocol(_) | EnrollError::InvalidName(_) | EnrollError::Csr(_) => {
                Reason::Invalid
            }
            EnrollError::Malformed(_) | EnrollError::Refused(_) => Reason::Denied,
        };
        reason.status(e.to_string())
    }
}

/// Map a failed write to a status, recording a store failure as `failed` (see
/// [`Shared::record_failure`]).
pub async fn write_failed(s: &Shared, e: StoreError, failed: Event) -> Status {
    s.record_failure(&e, failed).await;
    Status::from(e)
}

impl From<IssueError> for Status {
    /// Each issuance error with its reason; a pending approval keeps its id.
    fn from(e: IssueError) -> Status {
        match e {
            IssueError::Approval(a) => Status::from(a),
            IssueError::Store(s) => Status::from(s),
            e => {
                let reason = e.reason();
                if reason == Reason::Unavailable {
                    tracing::error!(error = %e, "issuance failed");
                }
                reason.status(e.to_string())
            }
        }
    }
}
