//! Contextual approval: requests that policy allows only after a human says yes.
//!
//! A request whose only matching permits are annotated `@approval("required")` becomes a
//! pending approval with an id. Identical pending requests share one id, and each
//! workload may have only so many pending at once. An approver (an admin) approves it
//! for a bounded time and number of uses, bound to the workload, credential, action, host,
//! on-behalf-of and maximum TTL; or denies it with a reason, which the requester sees.

use crate::model::{Approval, ApprovalState};
use crate::state::Shared;
use crate::store::StoreError;

/// Pending requests one workload may have at once.
pub const MAX_PENDING_PER_WORKLOAD: usize = 20;
/// How long a denial answers identical requests (so a waiting requester sees it).
const DENIAL_MEMORY_SECS: i64 = 600;

/// Why the gate did not let a request through.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    /// The request waits for an approver (a new approval, or an identical pending one).
    #[error("approval {id} is pending; an approver runs: leashctl approval approve {id}")]
    Pending {
        /// The approval's id, which the requester may quote.
        id: String,
    },
    /// An approver denied an identical request, or the workload has too many pending.
    #[error("{0}")]
    Denied(String),
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Decide what an approval-requiring request gets: the id of a usable approval, or why
/// not (pending, denied).
pub async fn gate(s: &Shared, want: Approval) -> Result<String, ApprovalError> {
    let now = want.requested_at;
    let timeout = s.config.approval_timeout.as_secs() as i64;
    let all = s.store.approvals()?;
    let same = |a: &&Approval| {
        a.workload == want.workload
            && a.credential == want.credential
            && a.action == want.action
            && a.host == want.host
            && a.on_behalf_of == want.on_behalf_of
            && a.audience == want.audience
    };
    // An approval covers requests up to its TTL.
    if let Some(a) = all.iter().filter(same).find(|a| {
        a.state == ApprovalState::Approved
            && a.uses_left > 0
            && a.valid_until > now
            && want.ttl <= a.ttl
    }) {
        return Ok(a.id.clone());
    }
    if let Some(a) = all
        .iter()
        .filter(same)
        .filter(|a| a.ttl == want.ttl && a.state == ApprovalState::Denied)
        .max_by_key(|a| a.requested_at)
    {
        if now - a.requested_at < timeout + DENIAL_MEMORY_SECS {
            return Err(ApprovalError::Denied(format!(
                "approval {} was denied by {}: {}",
                a.id,
                a.decided_by.as_deref().unwrap_or("an approver"),
                a.reason.as_deref().unwrap_or("no reason given")
            )));
        }
    }
    if let Some(a) = all
        .iter()
        .filter(|a| {
            a.same_request(&want)
                && a.state == ApprovalState::Pending
                && now - a.requested_at < timeout
        })
        .min_by_key(|a| a.requested_at)
    {
        return Err(ApprovalError::Pending { id: a.id.clone() });
    }
    let pending_for_workload = all
        .iter()
        .filter(|a| {
            a.workload == want.workload
                && a.state == ApprovalState::Pending
                && now - a.requested_at < timeout
        })
        .count();
    if pending_for_workload >= MAX_PENDING_PER_WORKLOAD {
        return Err(ApprovalError::Denied(format!(
            "workload {:?} already has {pending_for_workload} requests waiting for approval; ask an approver to decide them (`leashctl approval list`)",
            want.workload
        )));
    }
    let mut a = want;
    a.id = crate::random_id("ap", 6);
    let ev = crate::audit::pending(s.clock.now_ms(), &a);
    let id = a.id.clone();
    s.store.put_approval(a, ev).await?;
    tracing::info!(approval = %id, "request waits for approval");
    Err(ApprovalError::Pending { id })
}
