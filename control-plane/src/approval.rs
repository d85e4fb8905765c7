//! Contextual approval: requests that policy allows only after a human says yes.
//!
//! A request whose only matching permits are annotated `@approval("required")` becomes a
//! pending approval with an id. Identical pending requests share one id, and each
//! workload may have only so many pending at once. An approver (an admin) approves it
//! for a bounded time and number of uses, bound to the workload, credential, action, host,
//! on-behalf-of and maximum TTL; or denies it with a reason, which the requester sees.

use std::fmt;
use std::str::FromStr;

use crate::model::Approval;
use crate::state::Shared;
use crate::store::StoreError;

/// Pending requests one workload may have at once.
pub const MAX_PENDING_PER_WORKLOAD: usize = 20;
/// How long a denial answers identical requests (so a waiting requester sees it).
const DENIAL_MEMORY_SECS: i64 = 600;

/// Where an approval stands. Approval records store it as its text (`state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApprovalState {
    /// Waiting for an approver.
    Pending,
    /// Approved for a time and a number of uses.
    Approved,
    /// Denied, with a reason the requester sees.
    Denied,
    /// Nobody decided within `approval_timeout` (shown, never stored).
    Expired,
}

impl ApprovalState {
    /// The state as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
            ApprovalState::Expired => "expired",
        }
    }

    /// Whether `a` is in this state.
    pub fn is(self, a: &Approval) -> bool {
        a.state == self.as_str()
    }
}

impl fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text that names no approval state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown approval state {0:?}; the states are pending, approved, denied and expired")]
pub struct UnknownApprovalState(pub String);

impl FromStr for ApprovalState {
    type Err = UnknownApprovalState;

    fn from_str(s: &str) -> Result<ApprovalState, UnknownApprovalState> {
        [
            ApprovalState::Pending,
            ApprovalState::Approved,
            ApprovalState::Denied,
            ApprovalState::Expired,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| UnknownApprovalState(s.to_string()))
    }
}

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
        ApprovalState::Approved.is(a) && a.uses_left > 0 && a.valid_until > now && want.ttl <= a.ttl
    }) {
        return Ok(a.id.clone());
    }
    if let Some(a) = all
        .iter()
        .filter(same)
        .filter(|a| a.ttl == want.ttl && ApprovalState::Denied.is(a))
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
            a.same_request(&want) && ApprovalState::Pending.is(a) && now - a.requested_at < timeout
        })
        .min_by_key(|a| a.requested_at)
    {
        return Err(ApprovalError::Pending { id: a.id.clone() });
    }
    let pending_for_workload = all
        .iter()
        .filter(|a| {
            a.workload == want.workload
                && ApprovalState::Pending.is(a)
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
