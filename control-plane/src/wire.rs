//! Every conversion between the stored records (`model`) and the gRPC messages
//! (`leash_proto::v1`), in one place: what the agent API sends in Sync and what the
//! admin API shows.

use std::collections::HashMap;

use leash_proto::v1;

use crate::hub::ConnInfo;
use crate::model::{
    Approval, Credential, Event, Host, JoinTokenRecord, Lease, PendingEnd, Revocation,
    RevocationTarget, SecretVersion, Workload,
};
use crate::policy::Problem;

/// A workload record as the wire carries it.
pub fn workload_proto(w: &Workload) -> v1::Workload {
    v1::Workload {
        name: w.name.clone(),
        spiffe_id: String::new(),
        owner: w.owner.clone(),
        kind: w.kind.to_string(),
        selectors: w.selectors.clone(),
        hosts: w.hosts.clone().into_iter().collect(),
        allow: w.allow.clone(),
        expires_at_unix: w.expires_at,
        disabled: w.disabled,
        created_at_unix: w.created_at,
        x509_svid_ttl_seconds: w.x509_svid_ttl,
    }
}

/// A lease as the admin API shows it.
pub fn lease_proto(l: &Lease) -> v1::Lease {
    v1::Lease {
        id: l.id.clone(),
        workload: l.workload.clone(),
        credential: l.credential.clone(),
        action: l.action.clone(),
        // Several audiences are shown joined by spaces, as approvals show them.
        audience: if l.audiences.is_empty() {
            l.audience.clone()
        } else {
            l.audiences.join(" ")
        },
        host: l.host.clone(),
        task: l.task.clone().unwrap_or_default(),
        on_behalf_of: l.on_behalf_of.clone().unwrap_or_default(),
        issued_at_unix: l.issued_at,
        expires_at_unix: l.expires_at,
        seq: l.seq,
        state: l.state.as_str().to_string(),
        reason: l.reason.clone().unwrap_or_default(),
        fingerprint: l.fingerprint.clone(),
        policy_version: l.policy_version,
        version: l.version,
        end_pending: false,
        end_pending_since_unix: 0,
        end_last_error: String::new(),
        end_attempts: 0,
        end_step: String::new(),
    }
}

/// A lease with the state of its end step: `end_step` (the kind's noun for it) for a
/// lease whose kind undoes something outside Leash, and while that is still queued,
/// since when, how many attempts failed and the last error.
pub fn lease_with_end(l: &Lease, pending: Option<&PendingEnd>, end_step: &str) -> v1::Lease {
    let mut p = lease_proto(l);
    if l.ends_outside {
        p.end_step = end_step.to_string();
    }
    if let Some(e) = pending {
        p.end_pending = true;
        p.end_pending_since_unix = e.since_ms.div_euclid(1000);
        p.end_last_error = e.last_error.clone();
        p.end_attempts = e.attempts;
    }
    p
}

pub fn credential_proto(c: &Credential) -> v1::Credential {
    v1::Credential {
        name: c.name.clone(),
        kind: c.kind.clone(),
        audiences: c.audiences.clone(),
        default_ttl_seconds: c.default_ttl,
        max_ttl_seconds: c.max_ttl,
        default_action: c.default_action.clone(),
        scopes: c
            .scopes
            .iter()
            .map(|(k, v)| (k.clone(), v.join(" ")))
            .collect(),
        created_at_unix: c.created_at,
        owner: c.owner.clone().unwrap_or_default(),
        description: c.description.clone(),
        labels: c.labels.clone().into_iter().collect(),
        actions: c.actions.clone(),
        disabled: c.disabled,
        // Input only: the admin connection string is never returned.
        connection: Vec::new(),
        grants: c
            .postgres
            .as_ref()
            .map(|p| p.grants.clone().into_iter().collect())
            .unwrap_or_default(),
        revoke_sql: c
            .postgres
            .as_ref()
            .map(|p| p.revoke_sql.clone())
            .unwrap_or_default(),
        role_template: c
            .postgres
            .as_ref()
            .map(|p| p.role_template.clone())
            .unwrap_or_default(),
        connection_limit: c.postgres.as_ref().map_or(0, |p| p.connection_limit),
        connection_summary: c
            .postgres
            .as_ref()
            .map(crate::kinds::postgres::conn::summary)
            .unwrap_or_default(),
        connection_version: if c.postgres.is_some() {
            c.current_version
        } else {
            0
        },
    }
}

pub fn problem_proto(p: Problem) -> v1::PolicyProblem {
    v1::PolicyProblem {
        line: p.line,
        col: p.col,
        message: p.message,
    }
}

pub fn event_proto(e: &Event) -> v1::AuditEvent {
    v1::AuditEvent {
        json: serde_json::to_string(e).unwrap_or_default(),
    }
}

/// A workload with its SPIFFE ID in `trust_domain` filled in (the admin API shows it;
/// Sync leaves it empty, the agent knows its trust domain).
pub fn with_spiffe_id(mut w: v1::Workload, trust_domain: &str) -> v1::Workload {
    w.spiffe_id = format!("spiffe://{trust_domain}/{}", w.name);
    w
}

/// A join token as `join-token list` shows it, with its state at `now` (unix s).
pub fn join_token_info(t: JoinTokenRecord, now: i64) -> v1::JoinTokenInfo {
    v1::JoinTokenInfo {
        state: t.state(now).to_string(),
        id: t.id,
        name: t.name.unwrap_or_default(),
        labels: t.labels.into_iter().collect(),
        created_at_unix: t.created_at,
        expires_at_unix: t.expires_at,
        used_by: t.used_by.unwrap_or_default(),
    }
}

/// A host as `host list` shows it; `conn` is its live connection, if any.
pub fn host_info(h: Host, conn: Option<ConnInfo>) -> v1::HostInfo {
    v1::HostInfo {
        last_seen_unix: conn.map(|c| c.last_seen_ms / 1000).unwrap_or(h.last_seen),
        connected: conn.is_some(),
        acked_seq: conn.map(|c| c.acked_seq).unwrap_or(0),
        name: h.name,
        labels: h.labels.into_iter().collect(),
        enrolled_at_unix: h.enrolled_at,
        evicted: h.evicted,
        cert_not_after_unix: h.cert_not_after,
    }
}

/// An approval as `approval list` shows it; `owner` is its workload's owner (empty when
/// the workload is gone).
pub fn approval_info(a: Approval, owner: String) -> v1::ApprovalInfo {
    v1::ApprovalInfo {
        id: a.id,
        workload: a.workload,
        credential: a.credential,
        action: a.action,
        host: a.host,
        on_behalf_of: a.on_behalf_of,
        ttl_seconds: a.ttl,
        audience: a.audience,
        requested_at_unix: a.requested_at,
        state: a.state.to_string(),
        decided_by: a.decided_by.unwrap_or_default(),
        reason: a.reason.unwrap_or_default(),
        valid_until_unix: a.valid_until,
        uses_left: a.uses_left,
        policies: a.policies,
        owner,
    }
}

/// A revocation as Sync carries it to `host`: with only the lease ids issued to it, and
/// without what names other hosts' business.
///
/// `told` maps the workloads this host has been sent on its stream to their owners. A
/// workload or owner target is kept only for those: the agent needs it to drop a
/// credential of that workload still in flight when the revocation lands (its epoch). A
/// host target is kept only when it is this host. Any other target becomes an empty
/// lease target, which the agent matches through `lease_ids` alone; those are the leases
/// issued to this host, so nothing it holds is missed. The reason is kept only when the
/// revocation concerns this host.
pub fn revocation_proto(
    r: &Revocation,
    host: &str,
    told: &HashMap<String, String>,
) -> v1::Revocation {
    use v1::revocation_target::Target;
    let lease_ids = r.lease_ids_for(host);
    // `hosts` is sorted (as `lease_ids_for` relies on too): a binary search, so that
    // telling every one of N hosts is not N × N comparisons. The linear look only runs
    // for a name the search does not find, in case an older record is not sorted.
    let holds = r.hosts.binary_search_by(|h| h.as_str().cmp(host)).is_ok()
        || r.hosts.iter().any(|h| h == host);
    let kept = match &r.target {
        RevocationTarget::Lease(v) if holds || lease_ids.contains(v) => {
            Some(Target::Lease(v.clone()))
        }
        RevocationTarget::Lease(_) => None,
        RevocationTarget::Workload(v) if told.contains_key(v) => Some(Target::Workload(v.clone())),
        RevocationTarget::Workload(_) => None,
        // Credentials are defined once for every host; their names are not a host's.
        RevocationTarget::Credential(v) => Some(Target::Credential(v.clone())),
        RevocationTarget::Owner(v) if told.values().any(|o| o == v) => {
            Some(Target::Owner(v.clone()))
        }
        RevocationTarget::Owner(_) => None,
        RevocationTarget::Host(v) if v == host => Some(Target::Host(v.clone())),
        RevocationTarget::Host(_) => None,
        RevocationTarget::All => Some(Target::All(true)),
        // A task runs on one host; when its leases say which, only that host hears of it.
        // With no lease yet nothing says where it runs, and the id alone names nothing.
        RevocationTarget::Task(v) if holds || r.hosts.is_empty() => Some(Target::Task(v.clone())),
        RevocationTarget::Task(_) => None,
        // Agents match these by the lease ids listed below.
        RevocationTarget::Leases(_) => None,
    };
    let concerns = holds
        || matches!(&r.target, RevocationTarget::All)
        || matches!(
            &kept,
            Some(Target::Workload(_) | Target::Owner(_) | Target::Host(_))
        );
    v1::Revocation {
        seq: r.seq,
        target: Some(v1::RevocationTarget {
            target: Some(kept.unwrap_or_else(|| Target::Lease(String::new()))),
        }),
        reason: if concerns {
            r.reason.clone()
        } else {
            String::new()
        },
        lease_ids,
    }
}

/// A secret's definition as the admin API shows it, with its current version `current`
/// (fingerprint and size; never the value).
pub fn secret_info(c: &Credential, current: Option<&SecretVersion>) -> v1::SecretInfo {
    v1::SecretInfo {
        name: c.name.clone(),
        owner: c.owner.clone().unwrap_or_default(),
        format: c.format.clone(),
        default_ttl_seconds: c.default_ttl,
        max_ttl_seconds: c.max_ttl,
        description: c.description.clone(),
        labels: c.labels.clone().into_iter().collect(),
        actions: c.actions.clone(),
        default_action: c.default_action.clone(),
        disabled: c.disabled,
        current_version: c.current_version,
        created_at_unix: c.created_at,
        fingerprint: current.map(|v| v.fingerprint.clone()).unwrap_or_default(),
        size: current.map_or(0, |v| v.size),
        updated_at_unix: current.map_or(0, |v| v.created_at),
    }
}

/// One version of a secret as the admin API lists it (never the value).
pub fn secret_version_info(v: &SecretVersion, current: u32) -> v1::SecretVersionInfo {
    v1::SecretVersionInfo {
        version: v.version,
        created_at_unix: v.created_at,
        created_by: v.created_by.clone(),
        size: v.size,
        fingerprint: v.fingerprint.clone(),
        current: v.version == current,
    }
}
