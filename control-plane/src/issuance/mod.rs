//! Issuance: the one path every credential takes, whatever its kind.
//!
//! 1. [`request::resolve`]: the request, resolved once (host, workload, credential,
//!    action, audience, TTL, task, on-behalf-of, the facts policy sees).
//! 2. [`decide::decide`]: the checks before policy, then policy. `Issue`, `policy explain`
//!    ([`explain`]) and the re-evaluation after `policy apply` ([`no_longer_permitted`])
//!    all call it, so explain cannot disagree with Issue.
//! 3. The approval gate, when policy asks for one (`approval`).
//! 4. Minting, by the credential's kind (`kinds`).
//! 5. The lease, its `issued` event and the events of minting (`role-created`), written
//!    durably together (`store`). A lease minted but not written is ended at once
//!    ([`ends::end_unwritten`]).
//!
//! Ending a lease, by any path, reaches the kind through [`ends`]. The handlers decode,
//! authorise, call these functions and map [`IssueError`] to a status (`status`).

pub mod decide;
pub mod ends;
mod error;
pub mod request;
#[cfg(test)]
mod tests;

use leash_proto::reason::Reason;
use leash_proto::v1;

pub use self::error::IssueError;

use self::decide::{decide, Outcome, Refusal};
use self::request::{resolve, Ask, Caller, Place, ResolveError, TaskRef};
use crate::approval::ApprovalError;
use crate::audit;
use crate::kinds::MintRequest;
use crate::model::{Host, Lease, LeaseState, Workload};
use crate::state::Shared;
use crate::store::StoreError;

/// How many times a secret is minted when rotations keep overtaking the lease write.
const MINT_ATTEMPTS: u32 = 3;

/// Decide an `Issue` request from `host` and, when it is allowed, mint the credential and
/// write its lease. Denials are audited as `denied`, a failed write as `issue-failed`.
/// Counted in the metrics by credential kind and result.
pub async fn issue(
    s: &Shared,
    host: Host,
    req: v1::IssueRequest,
) -> Result<v1::IssueResponse, IssueError> {
    let started = std::time::Instant::now();
    let credential = req.credential.clone();
    let out = decide_and_mint(s, host, req).await;
    if crate::metrics::enabled() {
        // The kind's own name (a bounded set), never the credential's name.
        let kind = s
            .store
            .credential(&credential)
            .ok()
            .flatten()
            .and_then(|c| s.kinds.get(&c.kind).map(|k| k.name()))
            .unwrap_or("unknown");
        let result = match &out {
            Ok(_) => "allowed",
            Err(e) => match e.reason() {
                Reason::Denied => "denied",
                Reason::Pending => "pending",
                Reason::Unavailable => "unavailable",
                _ => "invalid",
            },
        };
        crate::metrics::issued(kind, result, started.elapsed());
    }
    out
}

async fn decide_and_mint(
    s: &Shared,
    host: Host,
    req: v1::IssueRequest,
) -> Result<v1::IssueResponse, IssueError> {
    let pid = req.attested.as_ref().map_or(0, |a| a.pid);
    let mut r = resolve(
        s.store.as_ref(),
        Ask::issue(req),
        Place::Host(host),
        s.clock.now(),
    )?;
    if r.audiences.len() > 1
        && s.kinds
            .get(&r.credential.kind)
            .is_some_and(|k| !k.takes_audiences())
    {
        return Err(IssueError::Invalid(format!(
            "credential {:?} is of kind {} and takes one audience at most; ask for one",
            r.credential.name, r.credential.kind
        )));
    }
    let decision = decide(&s.policy, &s.config, &r)?;
    let mut outcome = decision.outcome(&r);
    // Several audiences: policy decides each one; all must be allowed, and approval is
    // needed when any one needs it. The first refusal names its audience.
    for a in r.audiences.iter().skip(1) {
        if !matches!(outcome, Outcome::Allowed | Outcome::NeedsApproval(_)) {
            break;
        }
        let one = r.for_audience(a);
        match decide(&s.policy, &s.config, &one)?.outcome(&one) {
            Outcome::Allowed => {}
            Outcome::NeedsApproval(mut more) => {
                if let Outcome::NeedsApproval(p) = &mut outcome {
                    more.retain(|m| !p.contains(m));
                    p.append(&mut more);
                } else {
                    outcome = Outcome::NeedsApproval(more);
                }
            }
            other => return Err(refuse(s, &one, other).await),
        }
    }
    let approval = match outcome {
        Outcome::Allowed => None,
        Outcome::NeedsApproval(policies) => {
            match crate::approval::gate(s, r.approval_request(policies)).await {
                Ok(id) => Some(id),
                Err(ApprovalError::Denied(why)) => return Err(forbid(s, &r, why).await),
                Err(e) => return Err(e.into()),
            }
        }
        other => return Err(refuse(s, &r, other).await),
    };
    let kind = s
        .kinds
        .get(&r.credential.kind)
        .ok_or_else(|| IssueError::UnknownKind {
            credential: r.credential.name.clone(),
            kind: r.credential.kind.clone(),
            known: s.kinds.names().join(", "),
        })?;
    let scope = r.scope();
    // Nothing after minting reads the facts: they move into the lease.
    let context = std::mem::take(&mut r.facts);
    // A rotation between minting a secret and writing its lease makes the write stale:
    // mint the new version and write again, so no lease holds a value the rotation's
    // revocation already took back.
    let mut attempts = 0;
    let (minted, lease_id, seq) = loop {
        attempts += 1;
        let lease_id = crate::random_id("l", 10);
        let minted = kind
            .mint(
                s.env(),
                MintRequest {
                    lease_id: &lease_id,
                    credential: &r.credential,
                    workload: &r.workload,
                    host: &r.host.name,
                    action: &r.action,
                    audience: &r.audience,
                    audiences: if r.audiences.len() > 1 {
                        &r.audiences
                    } else {
                        &[]
                    },
                    csr_der: &r.csr_der,
                    scope: scope.as_deref(),
                    ttl: r.ttl,
                    task: r.task.as_ref().map(|t| t.id.as_str()),
                    on_behalf_of: r.on_behalf_of.as_deref(),
                    now: r.now,
                },
            )
            .await?;
        let lease = Lease {
            id: lease_id.clone(),
            workload: r.workload.name.clone(),
            credential: r.credential.name.clone(),
            action: r.action.clone(),
            audience: r.audience.clone(),
            host: r.host.name.clone(),
            task: r.task.as_ref().map(|t| t.id.clone()),
            on_behalf_of: r.on_behalf_of.clone(),
            approval: approval.clone(),
            context: Some(context.clone()),
            policy_version: decision.verdict.as_ref().map_or(0, |v| v.version),
            issued_at: r.now,
            expires_at: minted.expires_at,
            seq: 0,
            state: LeaseState::Active,
            reason: None,
            fingerprint: minted.fingerprint.clone(),
            ends_outside: kind.ends_outside(),
            version: minted.version,
            audiences: if r.audiences.len() > 1 {
                r.audiences.clone()
            } else {
                Vec::new()
            },
        };
        let event = audit::issued(s.clock.now_ms(), &lease, r.ttl, pid);
        // What minting did outside Leash goes on the lease's timeline, in the same write.
        let extra = minted
            .events
            .iter()
            .map(|e| ends::lease_event(&lease, e.clone()))
            .collect();
        // Kept to undo the minting if the lease is not written.
        let unwritten = lease.ends_outside.then(|| lease.clone());
        let written = match &approval {
            Some(id) => {
                s.store
                    .issue_with_approval(id, r.now, lease, event, extra)
                    .await
            }
            None => s.store.issue_lease(lease, event, extra).await,
        };
        if written.is_err() {
            if let Some(l) = &unwritten {
                ends::end_unwritten(s, kind.as_ref(), l).await;
            }
        }
        match written {
            Ok(seq) => break (minted, lease_id, seq),
            Err(StoreError::Stale(_)) if attempts < MINT_ATTEMPTS => continue,
            // The approval was used up (or decided), or the credential disabled, between
            // the decision and the write.
            Err(StoreError::Refused(why)) => return Err(forbid(s, &r, why).await),
            Err(e) => {
                let failed = audit::issue_failed(
                    s.clock.now_ms(),
                    &r.host.name,
                    &r.workload.name,
                    &r.credential.name,
                );
                s.record_failure(&e, failed).await;
                return Err(e.into());
            }
        }
    };
    tracing::info!(host = %r.host.name, workload = %r.workload.name, credential = %r.credential.name,
        lease = %lease_id, fingerprint = %minted.fingerprint, "issued");
    let (token, certificate_chain_der) = minted.material.into_parts();
    Ok(v1::IssueResponse {
        token,
        certificate_chain_der,
        audiences: r.audiences,
        expires_at_unix: minted.expires_at,
        lease_id,
        seq,
        issued_at_unix: r.now,
        action: r.action,
        audience: r.audience,
        kind: r.credential.kind.clone(),
        version: minted.version,
        format: minted.format,
    })
}

/// The error for an outcome that is neither allowed nor waiting for approval, recorded
/// as `denied` when it is a decision about this caller.
async fn refuse(s: &Shared, r: &request::Resolved, outcome: Outcome) -> IssueError {
    match outcome {
        Outcome::Refused(refusal) => {
            let message = refusal.message(r, &s.config);
            if refusal.reason() == Reason::Denied {
                record_denial(s, r, &message).await;
            }
            IssueError::Refused { refusal, message }
        }
        Outcome::Forbidden(why) => forbid(s, r, why).await,
        // Not reached: the callers handle these two.
        Outcome::Allowed | Outcome::NeedsApproval(_) => {
            IssueError::Forbidden("the request was not decided".into())
        }
    }
}

/// Record a `denied` event and answer with `why`.
async fn forbid(s: &Shared, r: &request::Resolved, why: String) -> IssueError {
    record_denial(s, r, &why).await;
    IssueError::Forbidden(why)
}

async fn record_denial(s: &Shared, r: &request::Resolved, why: &str) {
    let e = audit::issue_denied(
        s.clock.now_ms(),
        &r.host.name,
        &r.workload.name,
        &r.credential.name,
        why,
    );
    if let Err(err) = s.store.append_events(vec![e]).await {
        tracing::warn!(error = %err, "could not record a denied event");
    }
}

/// `policy explain`: what [`decide`] says about the question, without issuing. At
/// `r.at_unix` when given, else now; on `r.host` when given, else on no host in
/// particular (host selectors are then not checked).
pub fn explain(
    s: &Shared,
    req: &v1::PolicyExplainRequest,
) -> Result<v1::PolicyExplainResponse, IssueError> {
    let place = if req.host.is_empty() {
        Place::Anywhere
    } else {
        Place::Host(s.store.host(&req.host)?.ok_or_else(|| {
            IssueError::NotFound(format!(
                "no host named {}; `leashctl host list` shows them",
                leash_proto::names::excerpt(&req.host)
            ))
        })?)
    };
    let now = if req.at_unix == 0 {
        s.clock.now()
    } else {
        req.at_unix
    };
    let r = resolve(s.store.as_ref(), Ask::explain(req), place, now)?;
    let d = decide(&s.policy, &s.config, &r)?;
    // An unknown action is a question that cannot be asked, as it is for Issue.
    if d.refusals.contains(&Refusal::UnknownAction) {
        return Err(IssueError::Refused {
            refusal: Refusal::UnknownAction,
            message: Refusal::UnknownAction.message(&r, &s.config),
        });
    }
    let allowed = d.outcome(&r) == Outcome::Allowed;
    let v = d.verdict.unwrap_or_else(|| crate::policy::Verdict {
        allow: false,
        approval_required: false,
        reasons: Vec::new(),
        errors: Vec::new(),
        version: s.policy.version(),
    });
    Ok(v1::PolicyExplainResponse {
        decision: if allowed { "allow" } else { "deny" }.to_string(),
        approval_required: v.approval_required,
        reasons: v
            .reasons
            .into_iter()
            .map(|id| v1::PolicyReason {
                text: s.policy.policy_text(&id),
                id,
            })
            .collect(),
        errors: v.errors,
        version: v.version,
        refusals: d
            .refusals
            .iter()
            .map(|f| f.message(&r, &s.config))
            .collect(),
    })
}

/// The active leases the current policy no longer permits: each decided again, by
/// [`decide`], on the facts it was issued under. A lease whose workload, credential or
/// host is gone is left to the paths that handle those.
pub fn no_longer_permitted(s: &Shared, workloads: &[Workload]) -> Result<Vec<String>, IssueError> {
    let now = s.clock.now();
    let mut revoke = Vec::new();
    for l in s.store.leases(None, true)? {
        if l.expires_at <= now || !workloads.iter().any(|w| w.name == l.workload) {
            continue;
        }
        let Some(host) = s.store.host(&l.host)? else {
            continue;
        };
        let facts = l.context.clone().unwrap_or_default();
        let several = !l.audiences.is_empty();
        let ask = Ask {
            workload: l.workload.clone(),
            credential: l.credential.clone(),
            action: l.action.clone(),
            audience: if several {
                String::new()
            } else {
                l.audience.clone()
            },
            audiences: l.audiences.clone(),
            csr_der: Vec::new(),
            ttl_seconds: u32::try_from(facts.ttl_seconds).unwrap_or(0),
            task: l.task.clone().map(|id| TaskRef {
                name: facts.task.clone().unwrap_or_else(|| id.clone()),
                id,
            }),
            on_behalf_of: l.on_behalf_of.clone().unwrap_or_default(),
            caller: Caller::Issued(facts),
        };
        let r = match resolve(s.store.as_ref(), ask, Place::Host(host), now) {
            Ok(r) => r,
            Err(ResolveError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        // A policy that cannot be evaluated permits nothing.
        // Several audiences: each must still be permitted.
        let keeps = decide(&s.policy, &s.config, &r).is_ok_and(|d| d.keeps(&l))
            && r.audiences.iter().skip(1).all(|a| {
                let one = r.for_audience(a);
                decide(&s.policy, &s.config, &one).is_ok_and(|d| d.keeps(&l))
            });
        if !keeps {
            revoke.push(l.id);
        }
    }
    Ok(revoke)
}
