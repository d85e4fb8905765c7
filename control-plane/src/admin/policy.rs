//! `policy check|apply|show|explain`. Applying a version re-evaluates every active
//! lease under it and revokes what it no longer permits; explaining decides a request as
//! Issue would, without issuing. Both decide through `issuance`.

use leash_proto::reason::Reason;
use leash_proto::v1;
use tonic::Status;

use super::check::{invalid, not_found};
use crate::audit;
use crate::model::RevocationTarget;
use crate::policy::PolicyError;
use crate::state::Shared;
use crate::wire::problem_proto;

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
    let revoke = crate::issuance::no_longer_permitted(s, &workloads)?;
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
    Ok(crate::issuance::explain(s, &r)?)
}
