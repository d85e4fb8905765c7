//! Issuance: deciding an Issue request and, when it is allowed, minting its token and
//! writing its lease. The checks before policy (workload state, host, selectors,
//! shared agents, action, audience, TTL, scopes), the policy decision, the approval
//! gate, signing and the lease write, in that order. The handler in `agent_api` only
//! decodes, authorises the host and calls [`issue`].

use leash_proto::names::excerpt;
use leash_proto::reason::Reason;
use leash_proto::v1;
use tonic::Status;

use crate::audit;
use crate::issuer::{self, Claims, LeashClaim};
use crate::model::{hosts_match, Host, Lease, LeaseState};
use crate::policy::Facts;
use crate::state::Shared;
use crate::status::write_failed;
use crate::workload_kind::WorkloadKind;

/// Decide `r` from `host` and, when allowed, issue it.
pub async fn issue(
    s: &Shared,
    host: &Host,
    r: v1::IssueRequest,
) -> Result<v1::IssueResponse, Status> {
    let now = s.clock.now();
    let w = s
        .store
        .workload(&r.workload)
        .map_err(Status::from)?
        .ok_or_else(|| {
            Reason::NotFound.status(format!("no workload named {}", excerpt(&r.workload)))
        })?;
    let c = s
        .store
        .credential(&r.credential)
        .map_err(Status::from)?
        .ok_or_else(|| {
            Reason::NotFound.status(format!(
                "no credential named {}; `leashctl credential list` shows the ones that exist",
                excerpt(&r.credential)
            ))
        })?;
    if w.disabled {
        return Err(deny(s, host, &r, format!("workload {:?} is disabled", w.name)).await);
    }
    if w.expires_at != 0 && w.expires_at <= now {
        return Err(deny(s, host, &r, format!("workload {:?} has expired", w.name)).await);
    }
    if !hosts_match(&w.hosts, &host.labels) {
        return Err(deny(
            s,
            host,
            &r,
            format!("workload {:?} may not run on host {:?}", w.name, host.name),
        )
        .await);
    }
    let attested = r.attested.clone().unwrap_or_default();
    if !w
        .selectors
        .iter()
        .all(|sel| attested.selectors.contains(sel))
    {
        return Err(deny(
            s,
            host,
            &r,
            format!(
                "the caller does not match the selectors of workload {:?}",
                w.name
            ),
        )
        .await);
    }
    let shared_agent = WorkloadKind::of(&w.kind).is_some_and(WorkloadKind::acts_on_behalf);
    if shared_agent && r.on_behalf_of.is_empty() {
        return Err(deny(
            s,
            host,
            &r,
            format!(
                "workload {:?} is a shared agent: every request must say --on-behalf-of",
                w.name
            ),
        )
        .await);
    }
    if !shared_agent && !r.on_behalf_of.is_empty() {
        return Err(Reason::Invalid.status(format!(
            "workload {:?} is of kind {}, not {}: only a shared agent may act on behalf of someone; drop --on-behalf-of",
            w.name,
            excerpt(&w.kind),
            WorkloadKind::SharedAgent
        )));
    }
    let action = if r.action.is_empty() {
        c.default_action.clone()
    } else {
        r.action.clone()
    };
    if !s.config.actions.contains(&action) {
        return Err(Reason::Invalid.status(format!(
            "unknown action {}; the configured actions are {}",
            excerpt(&action),
            s.config.actions.join(", ")
        )));
    }
    let audience = if r.audience.is_empty() {
        c.audiences.first().cloned().unwrap_or_default()
    } else {
        r.audience.clone()
    };
    if !c.audiences.contains(&audience) {
        return Err(Reason::Invalid.status(format!(
            "audience {} is not allowed for credential {:?}; allowed: {}",
            excerpt(&audience),
            c.name,
            c.audiences.join(", ")
        )));
    }
    let ttl = if r.ttl_seconds == 0 {
        c.default_ttl
    } else {
        r.ttl_seconds
    };
    if ttl > c.max_ttl {
        return Err(Reason::Invalid.status(format!(
            "requested TTL {ttl}s is above the max_ttl of {:?} ({}s); ask for less",
            c.name, c.max_ttl
        )));
    }
    let scope = if c.scopes.is_empty() {
        None
    } else {
        match c.scopes.get(&action) {
            Some(sc) => Some(sc.join(" ")),
            None => {
                return Err(Reason::Invalid.status(format!(
                    "credential {:?} defines no scopes for action {}; it has scopes for: {}",
                    c.name,
                    excerpt(&action),
                    c.scopes.keys().cloned().collect::<Vec<_>>().join(", ")
                )))
            }
        }
    };
    let facts = Facts {
        uid: i64::from(attested.uid),
        user: attested.user.clone(),
        exe_path: attested.exe_path.clone(),
        sha256: attested.exe_sha256.clone(),
        ttl_seconds: i64::from(ttl),
        audience: audience.clone(),
        // Policy sees the task by the name people gave it.
        task: (!r.task.is_empty()).then(|| {
            if r.task_name.is_empty() {
                r.task.clone()
            } else {
                r.task_name.clone()
            }
        }),
        on_behalf_of: r.on_behalf_of.clone(),
        now,
    };
    let verdict = s
        .policy
        .decide(&w, &c, &action, host, &facts)
        .map_err(|e| Reason::Unavailable.status(e.to_string()))?;
    if !verdict.allow {
        let why = if verdict.reasons.is_empty() {
            format!(
                "no policy permits workload {:?} to {action} credential {:?} (default deny); grant it with `leashctl workload add … --allow {}` or a Cedar policy",
                w.name, c.name, c.name
            )
        } else {
            format!(
                "forbidden by policy {} for workload {:?}, credential {:?}, action {action}",
                verdict
                    .reasons
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
                w.name,
                c.name
            )
        };
        return Err(deny(s, host, &r, why).await);
    }
    let approval = if verdict.approval_required {
        let policies = verdict.reasons.clone();
        let want = crate::approval::request(
            &w,
            &c.name,
            &action,
            host,
            &r.on_behalf_of,
            ttl,
            &audience,
            policies,
            now,
        );
        match crate::approval::gate(s, want).await {
            Ok(id) => Some(id),
            Err(e) => {
                let st = Status::from(e);
                if Reason::of(&st) == Reason::Denied {
                    return Err(deny(s, host, &r, st.message().to_string()).await);
                }
                return Err(st);
            }
        }
    } else {
        None
    };

    let lease_id = crate::random_id("l", 10);
    let task = (!r.task.is_empty()).then(|| r.task.clone());
    let obo = (!r.on_behalf_of.is_empty()).then(|| r.on_behalf_of.clone());
    let claims = Claims {
        iss: s.config.issuer.clone(),
        sub: format!("spiffe://{}/{}", s.config.trust_domain, w.name),
        aud: audience.clone(),
        exp: now + i64::from(ttl),
        iat: now,
        nbf: now,
        jti: lease_id.clone(),
        scope,
        obo: obo.clone(),
        leash: LeashClaim {
            host: host.name.clone(),
            action: action.clone(),
            owner: w.owner.clone(),
            task: task.clone(),
        },
    };
    let token =
        issuer::sign(&s.keys, &claims).map_err(|e| Reason::Unavailable.status(e.to_string()))?;
    let fingerprint = issuer::fingerprint(&token);
    let lease = Lease {
        id: lease_id.clone(),
        workload: w.name.clone(),
        credential: c.name.clone(),
        action: action.clone(),
        audience: audience.clone(),
        host: host.name.clone(),
        task,
        on_behalf_of: obo,
        approval: approval.clone(),
        context: Some(facts),
        policy_version: verdict.version,
        issued_at: now,
        expires_at: claims.exp,
        seq: 0,
        state: LeaseState::Active,
        reason: None,
        fingerprint: fingerprint.clone(),
    };
    let event = audit::issued(s.clock.now_ms(), &lease, ttl, attested.pid);
    let written = match &approval {
        Some(id) => s.store.issue_with_approval(id, now, lease, event).await,
        None => s.store.issue_lease(lease, event).await,
    };
    let seq = match written {
        Ok(seq) => seq,
        Err(crate::store::StoreError::Refused(m)) => return Err(deny(s, host, &r, m).await),
        Err(e) => {
            let failed =
                audit::issue_failed(s.clock.now_ms(), &host.name, &r.workload, &r.credential);
            return Err(write_failed(s, e, failed).await);
        }
    };
    tracing::info!(host = %host.name, workload = %w.name, credential = %c.name, lease = %lease_id, %fingerprint, "issued");
    Ok(v1::IssueResponse {
        token,
        expires_at_unix: claims.exp,
        lease_id,
        seq,
        issued_at_unix: now,
        action,
        audience,
    })
}

/// Refuse an Issue request: record a `denied` event, answer DENIED.
async fn deny(s: &Shared, host: &Host, req: &v1::IssueRequest, reason: String) -> Status {
    let e = audit::issue_denied(
        s.clock.now_ms(),
        &host.name,
        &req.workload,
        &req.credential,
        &reason,
    );
    if let Err(err) = s.store.append_events(vec![e]).await {
        tracing::warn!(error = %err, "could not record a denied event");
    }
    Reason::Denied.status(reason)
}
