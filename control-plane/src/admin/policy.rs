//! `policy check|apply|show|explain`. Applying a version re-evaluates every active
//! lease under it and revokes what it no longer permits; explaining runs the checks
//! Issue makes before policy, then policy, without issuing.

use std::collections::BTreeMap;

use leash_proto::reason::Reason;
use leash_proto::v1;
use tonic::Status;

use super::check::{invalid, not_found, workload_or_404};
use crate::audit;
use crate::model::{RevocationTarget, Workload};
use crate::policy::PolicyError;
use crate::state::Shared;
use crate::wire::problem_proto;
use crate::workload_kind::WorkloadKind;

pub(super) async fn check(
    s: &Shared,
    req: v1::PolicyText,
) -> Result<v1::PolicyCheckResponse, Status> {
    let problems = match s.policy.check(&req.text) {
        Ok(_) => Vec::new(),
        Err(PolicyError::Invalid(p)) => p.into_iter().map(problem_proto).collect(),
        Err(e) => return Err(Reason::Unavailable.status(e.to_string())),
    };
    Ok(v1::PolicyCheckResponse { problems })
}

pub(super) async fn apply(
    s: &Shared,
    actor: String,
    req: v1::PolicyText,
) -> Result<v1::PolicyApplyResponse, Status> {
    let text = req.text;
    // Validate, store durably, install; then take back what it no longer permits.
    let _guard = s.policy_lock.lock().await;
    let version = s.policy.version() + 1;
    let workloads = s.store.workloads().map_err(Status::from)?;
    match s.policy.check(&text) {
        Ok(_) => {}
        Err(PolicyError::Invalid(p)) => {
            let list = p
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("\n");
            return Err(invalid(format!(
                "the policy does not validate; nothing was applied:\n{list}"
            )));
        }
        Err(e) => return Err(Reason::Unavailable.status(e.to_string())),
    }
    let rec = crate::policy::PolicyRecord {
        version,
        text: text.clone(),
        applied_at: s.clock.now(),
        applied_by: actor.clone(),
    };
    crate::policy::store_version(s.store.as_ref(), &rec)
        .await
        .map_err(Status::from)?;
    s.policy
        .install(version, &text, &workloads)
        .map_err(|e| Reason::Unavailable.status(e.to_string()))?;
    let revoke = no_longer_permitted(s, &workloads)?;
    let revoked = revoke.len() as u32;
    let ev = audit::policy_changed(s.clock.now_ms(), &actor, version, revoked);
    let (seq, hosts) = if revoke.is_empty() {
        s.store
            .append_events(vec![ev])
            .await
            .map_err(Status::from)?;
        (0, Vec::new())
    } else {
        let rev = s
            .store
            .revoke(
                RevocationTarget::Leases(revoke),
                format!("policy version {version} no longer permits it"),
                actor,
                vec![ev],
            )
            .await
            .map_err(Status::from)?;
        let hosts = crate::revocation::hosts_to_wait_for(s, &rev);
        (rev.seq, hosts)
    };
    Ok(v1::PolicyApplyResponse {
        version,
        revoked,
        revocation_seq: seq,
        hosts,
    })
}

pub(super) async fn show(
    s: &Shared,
    req: v1::PolicyShowRequest,
) -> Result<v1::PolicyShowResponse, Status> {
    let v = req.version;
    let workloads = s.store.workloads().map_err(Status::from)?;
    let rec = crate::policy::stored(s.store.as_ref(), v)?;
    if v != 0 && rec.is_none() {
        return Err(not_found(format!(
            "no policy version {v}; the current one is {}",
            s.policy.version()
        )));
    }
    let rendered = if v == 0 || v == s.policy.version() {
        s.policy.render(&workloads)
    } else {
        rec.as_ref().map(|r| r.text.clone()).unwrap_or_default()
    };
    Ok(v1::PolicyShowResponse {
        version: rec.as_ref().map(|r| r.version).unwrap_or(0),
        text: rec.as_ref().map(|r| r.text.clone()).unwrap_or_default(),
        rendered,
        applied_at_unix: rec.as_ref().map(|r| r.applied_at).unwrap_or(0),
        applied_by: rec.map(|r| r.applied_by).unwrap_or_default(),
    })
}

pub(super) async fn explain(
    s: &Shared,
    r: v1::PolicyExplainRequest,
) -> Result<v1::PolicyExplainResponse, Status> {
    let w = workload_or_404(s, &r.workload)?;
    let c = s
        .store
        .credential(&r.credential)
        .map_err(Status::from)?
        .ok_or_else(|| not_found(format!("no credential named {:?}", r.credential)))?;
    let host = if r.host.is_empty() {
        crate::model::Host {
            name: String::new(),
            labels: BTreeMap::new(),
            enrolled_at: 0,
            last_seen: 0,
            evicted: false,
            cert_serial: String::new(),
            cert_not_after: 0,
        }
    } else {
        s.store
            .host(&r.host)
            .map_err(Status::from)?
            .ok_or_else(|| not_found(format!("no host named {:?}", r.host)))?
    };
    let action = if r.action.is_empty() {
        c.default_action.clone()
    } else {
        r.action.clone()
    };
    if !s.config.actions.contains(&action) {
        return Err(invalid(format!(
            "unknown action {action:?}; the configured actions are {}",
            s.config.actions.join(", ")
        )));
    }
    let ttl = if r.ttl_seconds == 0 {
        c.default_ttl
    } else {
        r.ttl_seconds
    };
    let audience = if r.audience.is_empty() {
        c.audiences.first().cloned().unwrap_or_default()
    } else {
        r.audience.clone()
    };
    let now = if r.at_unix == 0 {
        s.clock.now()
    } else {
        r.at_unix
    };
    let mut facts = crate::policy::Facts::for_explain(&w, i64::from(ttl), audience.clone(), now);
    facts.on_behalf_of = r.on_behalf_of.clone();
    facts.task = (!r.task.is_empty()).then(|| r.task.clone());
    // The checks Issue makes before policy, so the answer matches what Issue does.
    let mut refusals = Vec::new();
    if w.disabled {
        refusals.push(format!("workload {:?} is disabled", w.name));
    }
    if w.expires_at != 0 && w.expires_at <= now {
        refusals.push(format!("workload {:?} has expired", w.name));
    }
    if !r.host.is_empty() && !crate::model::hosts_match(&w.hosts, &host.labels) {
        refusals.push(format!(
            "workload {:?} may not run on host {:?}",
            w.name, host.name
        ));
    }
    if !c.audiences.contains(&audience) {
        refusals.push(format!(
            "audience {audience:?} is not allowed for {:?}",
            c.name
        ));
    }
    if ttl > c.max_ttl {
        refusals.push(format!("TTL {ttl}s is above max_ttl {}s", c.max_ttl));
    }
    if !c.scopes.is_empty() && !c.scopes.contains_key(&action) {
        refusals.push(format!(
            "credential {:?} defines no scopes for action {action:?}",
            c.name
        ));
    }
    if WorkloadKind::of(&w.kind).is_some_and(WorkloadKind::acts_on_behalf)
        && r.on_behalf_of.is_empty()
    {
        refusals.push("a shared agent must act on behalf of someone (--on-behalf-of)".to_string());
    }
    let v = s
        .policy
        .decide(&w, &c, &action, &host, &facts)
        .map_err(|e| Reason::Unavailable.status(e.to_string()))?;
    let decision = if v.allow && !v.approval_required && refusals.is_empty() {
        "allow"
    } else {
        "deny"
    };
    Ok(v1::PolicyExplainResponse {
        decision: decision.to_string(),
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
        refusals,
    })
}

/// The active leases that the installed policy no longer permits: every active lease is
/// evaluated again under the request context it was issued with.
fn no_longer_permitted(s: &Shared, workloads: &[Workload]) -> Result<Vec<String>, Status> {
    let now = s.clock.now();
    let mut revoke = Vec::new();
    for l in s.store.leases(None, true).map_err(Status::from)? {
        if l.expires_at <= now {
            continue;
        }
        let (Some(w), Some(c), Some(h)) = (
            workloads.iter().find(|w| w.name == l.workload),
            s.store.credential(&l.credential).map_err(Status::from)?,
            s.store.host(&l.host).map_err(Status::from)?,
        ) else {
            continue;
        };
        let mut facts: crate::policy::Facts = l.context.clone().unwrap_or_default();
        facts.now = now;
        let permitted = s
            .policy
            .decide(w, &c, &l.action, &h, &facts)
            // A lease issued under an approval stays permitted while policy still
            // allows it after approval.
            .map(|v| v.allow && (!v.approval_required || l.approval.is_some()))
            .unwrap_or(false);
        if !permitted {
            revoke.push(l.id);
        }
    }
    Ok(revoke)
}
