//! The gRPC boundary for errors: how the library's typed errors become a `Status` with a
//! `Reason` (docs/CLI.md lists the exit code of each). Library modules return their own
//! error enums; only the handlers and this module speak `tonic::Status`.

use leash_proto::reason::{Reason, APPROVAL_KEY};
use tonic::Status;

use crate::approval::ApprovalError;
use crate::enroll::EnrollError;
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

/// Map a failed write to a status, and record a failure of the store (a failed flush, an
/// I/O error) as a failure event, never as a denial. The store usually cannot take that
/// event either (the disk is still full): the error log line is then the only record.
pub async fn write_failed(s: &Shared, e: StoreError, failed: Event) -> Status {
    if matches!(e, StoreError::NotDurable(_) | StoreError::Sled(_)) {
        let kind = failed.kind.clone();
        if let Err(err) = s
            .store
            .append_events(vec![failed.reason(e.to_string())])
            .await
        {
            tracing::error!(error = %err, event = %kind, "could not record the failure in the audit log");
        }
    }
    Status::from(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_failure_is_unavailable_and_a_refusal_is_denied() {
        let st = Status::from(StoreError::NotDurable("flush failed".into()));
        assert_eq!(Reason::of(&st), Reason::Unavailable, "{st:?}");
        assert!(st.message().contains("could not be made durable"), "{st:?}");
        assert_eq!(
            Reason::of(&Status::from(StoreError::Closed)),
            Reason::Unavailable
        );
        assert_eq!(
            Reason::of(&Status::from(StoreError::Refused("used".into()))),
            Reason::Denied
        );
        assert_eq!(
            Reason::of(&Status::from(StoreError::NotFound("x".into()))),
            Reason::NotFound
        );
        assert_eq!(
            Reason::of(&Status::from(StoreError::Conflict("x".into()))),
            Reason::Invalid
        );
    }
}
