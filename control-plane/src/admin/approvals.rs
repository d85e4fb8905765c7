//! `approval list|approve|deny`: deciding requests that policy sends to a human. An
//! approver may not decide a request for a workload they own or made on their behalf.

use leash_proto::reason::Reason;
use leash_proto::v1;
use tonic::Status;

use super::check::{invalid, not_found};
use crate::audit;
use crate::model::{Approval, ApprovalState, Event};
use crate::state::Shared;
use crate::wire::{self};

pub(super) async fn list(
    s: &Shared,
    req: v1::ListApprovalsRequest,
) -> Result<v1::ListApprovalsResponse, Status> {
    let all = req.all;
    let now = s.clock.now();
    let timeout = s.config.approval_timeout.as_secs() as i64;
    let mut approvals: Vec<v1::ApprovalInfo> = s
        .store
        .approvals()
        .map_err(Status::from)?
        .into_iter()
        .map(|mut a| {
            if a.state == ApprovalState::Pending && now - a.requested_at >= timeout {
                a.state = ApprovalState::Expired;
            }
            a
        })
        .filter(|a| all || a.state == ApprovalState::Pending)
        .map(|a| approval_proto(s, a))
        .collect();
    approvals.sort_by_key(|a| a.requested_at_unix);
    Ok(v1::ListApprovalsResponse { approvals })
}

pub(super) async fn approve(
    s: &Shared,
    approver: String,
    r: v1::ApproveRequest,
) -> Result<v1::ApprovalInfo, Status> {
    let mut a = pending_approval(s, &r.id, &approver)?;
    let max = s.config.max_approval.as_secs() as u32;
    let for_secs = if r.for_seconds == 0 {
        1800.min(max)
    } else {
        r.for_seconds
    };
    if for_secs > max {
        return Err(invalid(format!(
            "--for is capped at {}s by the control plane's max_approval; ask for less",
            max
        )));
    }
    let now = s.clock.now();
    a.state = ApprovalState::Approved;
    a.decided_by = Some(approver.clone());
    a.valid_until = now + i64::from(for_secs);
    a.uses_left = if r.uses == 0 { 1 } else { r.uses };
    let ev = audit::approved(s.clock.now_ms(), &approver, &a, for_secs);
    save_approval(s, a, ev).await
}

pub(super) async fn deny(
    s: &Shared,
    approver: String,
    r: v1::DenyApprovalRequest,
) -> Result<v1::ApprovalInfo, Status> {
    if r.reason.trim().is_empty() {
        return Err(invalid("say why: --reason \"…\" (the requester sees it)"));
    }
    let mut a = pending_approval(s, &r.id, &approver)?;
    a.state = ApprovalState::Denied;
    a.decided_by = Some(approver.clone());
    a.reason = Some(r.reason.clone());
    let ev = audit::approval_denied(s.clock.now_ms(), &approver, &a, &r.reason);
    save_approval(s, a, ev).await
}

/// Store a decided approval and answer with it.
async fn save_approval(s: &Shared, a: Approval, ev: Event) -> Result<v1::ApprovalInfo, Status> {
    s.store
        .put_approval(a.clone(), ev)
        .await
        .map_err(Status::from)?;
    Ok(approval_proto(s, a))
}

/// An approval as the admin API shows it, with its workload's owner.
fn approval_proto(s: &Shared, a: Approval) -> v1::ApprovalInfo {
    let owner = s
        .store
        .workload(&a.workload)
        .ok()
        .flatten()
        .map(|w| w.owner)
        .unwrap_or_default();
    wire::approval_info(a, owner)
}

/// A pending, unexpired approval that `approver` may decide.
fn pending_approval(s: &Shared, id: &str, approver: &str) -> Result<Approval, Status> {
    let a = s.store.approval(id).map_err(Status::from)?.ok_or_else(|| {
        not_found(format!(
            "no approval {id:?}; `leashctl approval list` shows the pending ones"
        ))
    })?;
    let now = s.clock.now();
    if a.state != ApprovalState::Pending {
        return Err(invalid(format!("approval {id} is already {}", a.state)));
    }
    if now - a.requested_at >= s.config.approval_timeout.as_secs() as i64 {
        return Err(invalid(format!(
            "approval {id} expired; the requester must ask again"
        )));
    }
    let owner = s
        .store
        .workload(&a.workload)
        .map_err(Status::from)?
        .map(|w| w.owner);
    if owner.as_deref() == Some(approver) {
        return Err(Reason::Denied.status(format!(
            "{approver} owns workload {} and may not approve its requests; another approver must",
            a.workload
        )));
    }
    if !a.on_behalf_of.is_empty() && a.on_behalf_of == approver {
        return Err(Reason::Denied.status(format!(
            "the request acts on behalf of {approver}, who may not approve it; another approver must"
        )));
    }
    Ok(a)
}
