//! `workload add|list|get|remove|disable|enable|transfer`: validating and storing
//! workload records, and rebuilding the `--allow` policy links after each change.

use std::collections::BTreeMap;

use leash_proto::v1;
use leash_proto::workload_kind::{UnknownWorkloadKind, WorkloadKind};
use tonic::Status;

use super::check::{check_labels, invalid, spiffe, workload_or_404};
use crate::audit;
use crate::model::{selector_kind, valid_name, Event, Workload, ID_SELECTOR_KINDS};
use crate::state::Shared;
use crate::wire::workload_proto;

pub(super) async fn add(
    s: &Shared,
    actor: String,
    req: v1::AddWorkloadRequest,
) -> Result<v1::Workload, Status> {
    let w = req.workload.ok_or_else(|| invalid("missing workload"))?;
    if !valid_name(&w.name) {
        return Err(invalid(format!(
            "invalid workload name {:?}: use path-like names such as ci/deploy-web (letters, digits, '.', '-', '_' and '/')",
            w.name
        )));
    }
    if w.owner.trim().is_empty() {
        return Err(invalid(
            "every workload needs an owner: add --owner TEAM-OR-PERSON",
        ));
    }
    let kind: WorkloadKind = w
        .kind
        .parse()
        .map_err(|e: UnknownWorkloadKind| invalid(e.to_string()))?;
    let mut has_id = false;
    for sel in &w.selectors {
        match selector_kind(sel) {
            Some(k) => has_id |= ID_SELECTOR_KINDS.contains(&k),
            None => {
                return Err(invalid(format!(
                    "invalid selector {sel:?}; selectors look like unix:uid:1001, unix:user:ci, unix:gid:N, unix:group:G, unix:path:/abs/path, unix:sha256:HEX"
                )))
            }
        }
    }
    if !has_id {
        return Err(invalid(
            "a workload needs at least one unix:uid, unix:user, unix:gid or unix:group selector: uid/gid is the security boundary",
        ));
    }
    let hosts: BTreeMap<String, String> = w.hosts.into_iter().collect();
    check_labels(&hosts, "--hosts selector")?;
    for c in &w.allow {
        if !valid_name(c) {
            return Err(invalid(format!("invalid credential name {c:?} in --allow")));
        }
    }
    if s.store.workload(&w.name).map_err(Status::from)?.is_some() {
        return Err(invalid(format!(
            "workload {:?} already exists; remove it first (`leashctl workload remove {}`)",
            w.name, w.name
        )));
    }
    let rec = Workload {
        name: w.name,
        owner: w.owner.trim().to_string(),
        kind,
        selectors: w.selectors,
        hosts,
        allow: w.allow,
        expires_at: w.expires_at_unix,
        disabled: false,
        created_at: s.clock.now(),
        x509_svid_ttl: w.x509_svid_ttl_seconds,
    };
    let ev = audit::workload_added(s.clock.now_ms(), &actor, &rec);
    save_workload(s, rec, ev).await
}

pub(super) async fn list(s: &Shared) -> Result<v1::ListWorkloadsResponse, Status> {
    let workloads = s
        .store
        .workloads()
        .map_err(Status::from)?
        .iter()
        .map(|w| spiffe(s, workload_proto(w)))
        .collect();
    Ok(v1::ListWorkloadsResponse { workloads })
}

pub(super) async fn get(s: &Shared, req: v1::NameRequest) -> Result<v1::Workload, Status> {
    let w = workload_or_404(s, &req.name)?;
    Ok(spiffe(s, workload_proto(&w)))
}

pub(super) async fn remove(
    s: &Shared,
    actor: String,
    req: v1::NameRequest,
) -> Result<v1::Empty, Status> {
    let name = req.name;
    workload_or_404(s, &name)?;
    let ev = audit::workload_removed(s.clock.now_ms(), &actor, &name);
    s.store
        .remove_workload(&name, ev)
        .await
        .map_err(Status::from)?;
    s.relink();
    Ok(v1::Empty {})
}

pub(super) async fn set_disabled(
    s: &Shared,
    actor: String,
    r: v1::SetDisabledRequest,
) -> Result<v1::Workload, Status> {
    let reason = if r.reason.is_empty() {
        if r.disabled {
            "workload disabled"
        } else {
            "workload enabled"
        }
        .to_string()
    } else {
        r.reason
    };
    let (w, _) = s
        .store
        .set_workload_disabled(&r.name, r.disabled, actor, reason)
        .await
        .map_err(Status::from)?;
    Ok(spiffe(s, workload_proto(&w)))
}

pub(super) async fn transfer(
    s: &Shared,
    actor: String,
    r: v1::TransferRequest,
) -> Result<v1::Workload, Status> {
    if r.to.trim().is_empty() {
        return Err(invalid("--to needs the new owner"));
    }
    let mut w = workload_or_404(s, &r.name)?;
    let from = std::mem::replace(&mut w.owner, r.to.trim().to_string());
    let ev = audit::workload_transferred(s.clock.now_ms(), &actor, &w.name, &from, &w.owner);
    save_workload(s, w, ev).await
}

/// Store a workload, rebuild the policy links, answer with it.
async fn save_workload(s: &Shared, w: Workload, ev: Event) -> Result<v1::Workload, Status> {
    s.store
        .put_workload(w.clone(), ev)
        .await
        .map_err(Status::from)?;
    s.relink();
    Ok(spiffe(s, workload_proto(&w)))
}
