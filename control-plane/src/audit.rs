//! Every audit event, built in one place so the event vocabulary (its `type`s and their
//! fields) reads as one list. The handlers' constructors take `at_ms`, the caller's clock
//! reading (`s.clock.now_ms()`). The events of changes the store makes inside a write
//! (revocations, lease endings, evictions, offboarding, renewals) are built here too,
//! undated: the store dates them by its clock when it records them.

use std::net::IpAddr;

use leash_proto::v1;
use serde_json::{json, Value};

use crate::model::{
    Approval, Credential, Event, JoinTokenRecord, Lease, LeaseState, Revocation,
    ScheduledRevocation, SecretVersion, Workload,
};

/// An event of `kind` at `at_ms`.
fn at(at_ms: i64, kind: &str) -> Event {
    let mut e = Event::new(kind);
    e.at_ms = at_ms;
    e
}

/// A host was issued `lease` (`issued`). `pid` is the process the agent attested.
pub fn issued(at_ms: i64, lease: &Lease, ttl: u32, pid: u32) -> Event {
    let mut e = at(at_ms, "issued")
        .actor(lease.host.clone())
        .host(lease.host.clone())
        .workload(lease.workload.clone())
        .credential(lease.credential.clone())
        .lease(lease.id.clone())
        .detail(json!({
            "action": lease.action, "audience": lease.audience, "ttl_seconds": ttl,
            "fingerprint": lease.fingerprint, "pid": pid,
        }));
    if lease.version != 0 {
        e.detail["version"] = lease.version.into();
    }
    if !lease.audiences.is_empty() {
        e.detail["audiences"] = lease.audiences.clone().into();
    }
    e.task = lease.task.clone();
    e.approval = lease.approval.clone();
    e
}

/// An Issue request was refused (`denied`): by a check, by policy or by an approver.
pub fn issue_denied(at_ms: i64, host: &str, workload: &str, credential: &str, why: &str) -> Event {
    at(at_ms, "denied")
        .actor(host)
        .host(host)
        .workload(workload)
        .credential(credential)
        .reason(why)
}

/// An allowed Issue could not be written (`issue-failed`); the store's error becomes
/// its reason when it is recorded.
pub fn issue_failed(at_ms: i64, host: &str, workload: &str, credential: &str) -> Event {
    at(at_ms, "issue-failed")
        .actor(host)
        .host(host)
        .workload(workload)
        .credential(credential)
}

/// A request now waits for an approver (`pending`).
pub fn pending(at_ms: i64, a: &Approval) -> Event {
    at(at_ms, "pending")
        .actor(a.host.clone())
        .host(a.host.clone())
        .workload(a.workload.clone())
        .credential(a.credential.clone())
        .approval(a.id.clone())
        .detail(json!({
            "action": a.action, "on_behalf_of": a.on_behalf_of, "ttl_seconds": a.ttl, "policies": a.policies,
        }))
}

/// An approver approved `a` for `for_secs` seconds and `a.uses_left` uses (`approved`).
pub fn approved(at_ms: i64, approver: &str, a: &Approval, for_secs: u32) -> Event {
    decision(at_ms, "approved", approver, a)
        .detail(json!({ "for_seconds": for_secs, "uses": a.uses_left, "action": a.action }))
}

/// An approver denied `a` (`denied`), saying why.
pub fn approval_denied(at_ms: i64, approver: &str, a: &Approval, why: &str) -> Event {
    decision(at_ms, "denied", approver, a).reason(why)
}

fn decision(at_ms: i64, kind: &str, approver: &str, a: &Approval) -> Event {
    at(at_ms, kind)
        .actor(approver)
        .workload(a.workload.clone())
        .credential(a.credential.clone())
        .host(a.host.clone())
        .approval(a.id.clone())
}

/// A host wiped what revocation `seq` covered (`wiped`): one event per covered lease
/// issued to it, or one for the host when none was.
pub fn wiped(at_ms: i64, host: &str, seq: u64, count: u32, leases: Vec<String>) -> Vec<Event> {
    let base = at(at_ms, "wiped")
        .actor(host)
        .host(host)
        .detail(json!({ "seq": seq, "count": count }));
    if leases.is_empty() {
        vec![base]
    } else {
        leases
            .into_iter()
            .map(|id| base.clone().lease(id))
            .collect()
    }
}

/// A host served a lease's credential to processes (`served`).
pub fn served(at_ms: i64, host: &str, l: v1::LeaseUsage) -> Event {
    at(at_ms, "served")
        .host(host)
        .actor(host)
        .lease(l.lease_id)
        .detail(json!({
            "count": l.count,
            "first_pid": l.first_pid, "first_exe": l.first_exe,
            "last_pid": l.last_pid, "last_exe": l.last_exe,
            "first_ms": l.first_unix_ms, "last_ms": l.last_unix_ms,
        }))
}

/// A task started on a host (`task-started`).
pub fn task_started(at_ms: i64, host: &str, r: &v1::TaskStartedRequest) -> Event {
    at(at_ms, "task-started")
        .actor(host)
        .host(host)
        .task(r.task.clone())
        .detail(json!({ "name": r.name, "root_pid": r.root_pid, "uid": r.uid }))
}

/// A task ended leaving processes its owner could not signal (`completed`). `left` is
/// bounded by the caller; `total` is how many the agent reported.
pub fn task_completed(
    at_ms: i64,
    host: &str,
    task: &str,
    label: &str,
    total: usize,
    left: Vec<Value>,
) -> Event {
    at(at_ms, "completed")
        .actor(host)
        .host(host)
        .task(task)
        .reason(format!(
            "task {label} ended; {total} process(es) its owner could not signal were left running"
        ))
        .detail(json!({ "left_running": left }))
}

/// A host enrolled with a join token (`enrolled`).
pub fn enrolled(
    at_ms: i64,
    host: &str,
    join_token: &str,
    labels: &std::collections::BTreeMap<String, String>,
    agent_version: &str,
) -> Event {
    at(at_ms, "enrolled").actor(host).host(host).detail(
        json!({ "join_token": join_token, "labels": labels, "agent_version": agent_version }),
    )
}

/// An enrollment with a token minted here was refused (`denied`), recorded at once.
pub fn enroll_denied(
    at_ms: i64,
    why: &str,
    join_token: Option<&str>,
    source: Option<IpAddr>,
) -> Event {
    let mut e = at(at_ms, "denied").actor("enroll").reason(why);
    if let Some(id) = join_token {
        e = e.detail(json!({ "join_token": id, "source": source }));
    }
    e
}

/// An admin's call refused because their role does not allow it (`denied`).
pub fn admin_denied(at_ms: i64, caller: &crate::actor::Caller, method: &str, why: &str) -> Event {
    let mut e = at(at_ms, "denied")
        .actor(caller.name.as_str())
        .reason(why)
        .detail(json!({ "method": method }));
    e.actor_role = Some(caller.role.as_str().to_string());
    e.actor_via = Some(caller.via.as_str().to_string());
    e
}

/// Enrollments refused from one source in one interval (`enroll-refused`).
pub fn enroll_refused(
    at_ms: i64,
    source: &str,
    interval_secs: u64,
    count: u64,
    detail: Value,
) -> Event {
    at(at_ms, "enroll-refused")
        .actor("enroll")
        .reason(format!(
            "{count} enrollment(s) refused from {source} in {interval_secs}s"
        ))
        .detail(detail)
}

/// An admin created a join token (`join-token-created`).
pub fn join_token_created(at_ms: i64, actor: &str, t: &JoinTokenRecord, ttl: u32) -> Event {
    at(at_ms, "join-token-created").actor(actor).detail(
        json!({ "join_token": t.id, "name": t.name, "labels": t.labels, "ttl_seconds": ttl }),
    )
}

/// An admin revoked a join token (`join-token-revoked`).
pub fn join_token_revoked(at_ms: i64, actor: &str, id: &str) -> Event {
    at(at_ms, "join-token-revoked")
        .actor(actor)
        .detail(json!({ "join_token": id }))
}

/// An admin added a workload (`workload-added`).
pub fn workload_added(at_ms: i64, actor: &str, w: &Workload) -> Event {
    at(at_ms, "workload-added")
        .actor(actor)
        .workload(w.name.clone())
        .detail(
            json!({ "owner": w.owner, "kind": w.kind, "selectors": w.selectors, "allow": w.allow }),
        )
}

/// An admin removed a workload (`workload-removed`).
pub fn workload_removed(at_ms: i64, actor: &str, name: &str) -> Event {
    at(at_ms, "workload-removed").actor(actor).workload(name)
}

/// An admin gave a workload to another owner (`workload-transferred`).
pub fn workload_transferred(at_ms: i64, actor: &str, name: &str, from: &str, to: &str) -> Event {
    at(at_ms, "workload-transferred")
        .actor(actor)
        .workload(name)
        .detail(json!({ "from": from, "to": to }))
}

/// An admin defined a credential (`credential-added`).
pub fn credential_added(at_ms: i64, actor: &str, c: &Credential) -> Event {
    at(at_ms, "credential-added")
        .actor(actor)
        .credential(c.name.clone())
        .detail(json!({ "kind": c.kind, "audiences": c.audiences, "ttl": c.default_ttl, "max_ttl": c.max_ttl }))
}

/// An admin revoked something (`revocation`).
pub fn revocation(at_ms: i64, actor: &str, why: &str) -> Event {
    at(at_ms, "revocation").actor(actor).reason(why)
}

/// A revocation could not be written (`revoke-failed`); `target` describes it.
pub fn revoke_failed(at_ms: i64, actor: &str, target: &str) -> Event {
    at(at_ms, "revoke-failed")
        .actor(actor)
        .detail(json!({ "target": target }))
}

/// An admin applied policy `version`, which revoked `revoked` leases (`policy-changed`).
pub fn policy_changed(at_ms: i64, actor: &str, version: u64, revoked: u32) -> Event {
    at(at_ms, "policy-changed")
        .actor(actor)
        .detail(json!({ "version": version, "revoked": revoked }))
}

/// `host` renewed its certificate (`renewed`); dated by the store.
pub fn renewed(host: &str) -> Event {
    Event::new("renewed").host(host).actor(host)
}

/// `lease` was revoked by the revocation with sequence number `seq` (`revoked`); dated by
/// the store.
pub fn lease_revoked(lease: &Lease, actor: &str, why: &str, seq: u64) -> Event {
    Event::new("revoked")
        .actor(actor)
        .lease(lease.id.clone())
        .workload(lease.workload.clone())
        .credential(lease.credential.clone())
        .host(lease.host.clone())
        .reason(why)
        .detail(json!({ "seq": seq }))
}

/// `lease` ended as `state` (`expired`, `completed`); dated by the store.
pub fn lease_ended(lease: &Lease, state: LeaseState, why: &str) -> Event {
    let mut e = Event::new(state.as_str())
        .lease(lease.id.clone())
        .workload(lease.workload.clone())
        .credential(lease.credential.clone())
        .host(lease.host.clone())
        .reason(why);
    e.task = lease.task.clone();
    e
}

/// Workload `name` was disabled or enabled again (`disabled`, `enabled`); dated by the
/// store.
pub fn workload_disabled(name: &str, disabled: bool, actor: &str, why: &str) -> Event {
    Event::new(if disabled { "disabled" } else { "enabled" })
        .actor(actor)
        .workload(name)
        .reason(why)
}

/// `owner` was offboarded, disabling `workloads` (`offboarded`); dated by the store.
pub fn offboarded(owner: &str, workloads: &[String], actor: &str) -> Event {
    Event::new("offboarded")
        .actor(actor)
        .detail(json!({ "owner": owner, "workloads": workloads }))
}

/// Host `name` was evicted (`evicted`); dated by the store.
pub fn evicted(name: &str, actor: &str, why: &str) -> Event {
    Event::new("evicted").actor(actor).host(name).reason(why)
}

/// The master key was replaced and every sealed record re-wrapped under the new one
/// (`master-key-rotated`); dated by the store, in the same write as the re-wrap.
pub fn master_key_rotated(actor: &str, old_key_id: &str, new_key_id: &str) -> Event {
    Event::new("master-key-rotated")
        .actor(actor)
        .detail(json!({ "old_key_id": old_key_id, "new_key_id": new_key_id }))
}

/// Add a revocation's sequence number and lease count to an event's detail.
pub fn with_revocation(e: &mut Event, rev: &Revocation) {
    if !e.detail.is_object() {
        e.detail = json!({});
    }
    e.detail["seq"] = rev.seq.into();
    e.detail["leases"] = rev.lease_ids.len().into();
}

fn secret_version(kind: &str, at_ms: i64, actor: &str, name: &str, v: &SecretVersion) -> Event {
    at(at_ms, kind)
        .actor(actor)
        .credential(name)
        .detail(json!({ "version": v.version, "fingerprint": v.fingerprint, "size": v.size }))
}

/// An admin added version `v` of secret `name` (`secret-put`): its fingerprint and size,
/// never the value.
pub fn secret_put(at_ms: i64, actor: &str, name: &str, v: &SecretVersion) -> Event {
    secret_version("secret-put", at_ms, actor, name, v)
}

/// An admin rotated secret `name` to version `v` (`secret-rotated`), revoking older
/// versions' leases now (`grace_seconds` 0) or after a grace period.
pub fn secret_rotated(
    at_ms: i64,
    actor: &str,
    name: &str,
    v: &SecretVersion,
    grace_seconds: u32,
    why: &str,
) -> Event {
    let mut e = secret_version("secret-rotated", at_ms, actor, name, v).reason(why);
    e.detail["grace_seconds"] = grace_seconds.into();
    e
}

/// Secret `name` was disabled or enabled again (`secret-disabled`, `secret-enabled`);
/// dated by the store.
pub fn secret_disabled(name: &str, disabled: bool, actor: &str, why: &str) -> Event {
    Event::new(if disabled {
        "secret-disabled"
    } else {
        "secret-enabled"
    })
    .actor(actor)
    .credential(name)
    .reason(why)
}

/// Secret `name` and its `versions` versions were removed (`secret-removed`); dated by
/// the store.
pub fn secret_removed(name: &str, actor: &str, versions: u32) -> Event {
    Event::new("secret-removed")
        .actor(actor)
        .credential(name)
        .detail(json!({ "versions": versions }))
}

/// The revocation a rotation with a grace period scheduled came due (`revocation`);
/// dated by the store.
pub fn scheduled_revocation(s: &ScheduledRevocation) -> Event {
    Event::new("revocation")
        .actor(s.actor.clone())
        .credential(s.credential.clone())
        .reason(s.reason.clone())
        .detail(json!({ "scheduled": true, "version": s.version }))
}

/// A version of secret `name` could not be written, or the secret removed
/// (`secret-write-failed`); the store's error becomes its reason when it is recorded.
pub fn secret_write_failed(at_ms: i64, actor: &str, name: &str) -> Event {
    at(at_ms, "secret-write-failed")
        .actor(actor)
        .credential(name)
}

/// A credential was removed with its sealed versions (`credential-removed`); dated by
/// the store.
pub fn credential_removed(c: &Credential, actor: &str, why: &str, versions: u32) -> Event {
    let e = Event::new("credential-removed")
        .actor(actor)
        .credential(c.name.clone())
        .detail(json!({ "kind": c.kind, "versions": versions }));
    if why.is_empty() {
        e
    } else {
        e.reason(why)
    }
}

/// Credential `name` was disabled while it is being removed (`credential-disabled`), so no
/// lease of it is issued while its leases' end steps finish; dated by the store.
pub fn credential_disabled(name: &str, actor: &str, why: &str) -> Event {
    Event::new("credential-disabled")
        .actor(actor)
        .credential(name)
        .reason(why)
}

/// An admin created a client of the HTTPS `/introspect` endpoint
/// (`introspection-client-created`); its secret is never recorded.
pub fn introspection_client_created(at_ms: i64, actor: &str, id: &str, description: &str) -> Event {
    at(at_ms, "introspection-client-created")
        .actor(actor)
        .detail(json!({ "client_id": id, "description": description }))
}

/// An admin removed an introspection client (`introspection-client-removed`).
pub fn introspection_client_removed(at_ms: i64, actor: &str, id: &str) -> Event {
    at(at_ms, "introspection-client-removed")
        .actor(actor)
        .detail(json!({ "client_id": id }))
}

/// An admin issued an admin certificate's one-time code (`admin-cert-issued`).
pub fn admin_cert_issued(at_ms: i64, actor: &str, name: &str, role: &str, ttl: u32) -> Event {
    at(at_ms, "admin-cert-issued")
        .actor(actor)
        .detail(json!({ "admin": name, "role": role, "ttl_seconds": ttl }))
}

/// An admin revoked an admin certificate (`admin-cert-revoked`).
pub fn admin_cert_revoked(at_ms: i64, actor: &str, name: &str) -> Event {
    at(at_ms, "admin-cert-revoked")
        .actor(actor)
        .detail(json!({ "admin": name }))
}

/// A code was redeemed for an admin certificate (`admin-login`).
pub fn admin_login(at_ms: i64, name: &str, role: &str, serial: &str, not_after: i64) -> Event {
    let mut e = at(at_ms, "admin-login").actor(name).detail(
        json!({ "admin": name, "role": role, "serial": serial, "not_after_unix": not_after }),
    );
    e.actor_role = Some(role.to_string());
    e.actor_via = Some("mtls".to_string());
    e
}
