//! `lease list|get` (with a pending end step), `revoke` (with `--wait` progress) and
//! introspection by an admin.

use leash_proto::spans::{record, Field};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use leash_proto::v1;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::check::{invalid, not_found, workload_or_404};
use crate::audit;
use crate::model::RevocationTarget;
use crate::state::Shared;
use crate::status::write_failed;
use crate::wire::{event_proto, lease_proto, lease_with_end};

/// Progress of a revocation, streamed to `revoke --wait`.
pub type ProgressStream =
    Pin<Box<dyn Stream<Item = Result<v1::RevocationProgress, Status>> + Send>>;

pub(super) async fn list(
    s: &Shared,
    r: v1::ListLeasesRequest,
) -> Result<v1::ListLeasesResponse, Status> {
    let w = (!r.workload.is_empty()).then_some(r.workload.as_str());
    if let Some(name) = w {
        workload_or_404(s, name)?;
    }
    let now = s.clock.now();
    let leases = s
        .store
        .leases(w, r.active_only)
        .map_err(Status::from)?
        .iter()
        .filter(|l| !r.active_only || l.expires_at > now)
        .map(lease_proto)
        .collect();
    Ok(v1::ListLeasesResponse { leases })
}

pub(super) async fn get(s: &Shared, req: v1::NameRequest) -> Result<v1::LeaseDetail, Status> {
    let id = req.name;
    record(Field::LeaseId, &id);
    let lease =
        s.store.lease(&id).map_err(Status::from)?.ok_or_else(|| {
            not_found(format!(
                "no lease {id:?}; `leashctl lease list` shows them (an ended lease is kept for {} after its expiry: `lease_retention`)",
                crate::config::show(s.config.retention.leases)
            ))
        })?;
    let mut events = s.store.lease_events(&id).map_err(Status::from)?;
    // The task's own events (task-started, …) belong in the lease's timeline too.
    if let Some(task) = &lease.task {
        for e in s.store.task_events(task).map_err(Status::from)? {
            if e.lease.is_none() {
                events.push(e);
            }
        }
    }
    if let Some(ap) = &lease.approval {
        for e in s.store.approval_events(ap).map_err(Status::from)? {
            if e.lease.is_none() {
                events.push(e);
            }
        }
    }
    events.sort_by_key(|e| e.id);
    let timeline = events.iter().map(event_proto).collect();
    // Whether its kind has yet to undo something outside Leash (a role to drop).
    let pending = if lease.ends_outside {
        s.store.pending_end(&id).map_err(Status::from)?
    } else {
        None
    };
    let end_step = crate::revocation::end_step(s, &lease.credential);
    Ok(v1::LeaseDetail {
        lease: Some(lease_with_end(&lease, pending.as_ref(), end_step)),
        timeline,
    })
}

pub(super) async fn revoke(
    s: &Shared,
    actor: String,
    r: v1::RevokeRequest,
) -> Result<v1::RevokeResponse, Status> {
    use v1::revocation_target_spec::Target;
    let target = match r.target.and_then(|t| t.target) {
        Some(Target::Lease(id)) => {
            let l = s
                .store
                .lease(&id)
                .map_err(Status::from)?
                .ok_or_else(|| not_found(format!("no lease {id:?}")))?;
            record(Field::LeaseId, &id);
            record(Field::Workload, &l.workload);
            record(Field::Credential, &l.credential);
            record(Field::Host, &l.host);
            RevocationTarget::Lease(id)
        }
        Some(Target::Workload(w)) => {
            workload_or_404(s, &w)?;
            record(Field::Workload, &w);
            RevocationTarget::Workload(w)
        }
        Some(Target::Credential(c)) => {
            record(Field::Credential, &c);
            if s.store.credential(&c).map_err(Status::from)?.is_none() {
                return Err(not_found(format!("no credential named {c:?}")));
            }
            RevocationTarget::Credential(c)
        }
        Some(Target::Owner(o)) => {
            let any = s.store.workloads().map_err(Status::from)?.iter().any(|w| w.owner == o);
            if !any {
                return Err(not_found(format!("no workload is owned by {o:?}")));
            }
            RevocationTarget::Owner(o)
        }
        Some(Target::Host(h)) => {
            record(Field::Host, &h);
            if s.store.host(&h).map_err(Status::from)?.is_none() {
                return Err(not_found(format!("no host named {h:?}")));
            }
            RevocationTarget::Host(h)
        }
        Some(Target::All(true)) => RevocationTarget::All,
        _ => {
            return Err(invalid(
                "say what to revoke: exactly one of --lease, --workload, --credential, --owner, --host, --all",
            ))
        }
    };
    let reason = if r.reason.is_empty() {
        "revoked by an admin".to_string()
    } else {
        r.reason
    };
    revoke_target(s, actor, target, reason).await
}

pub(super) async fn wait_revocation(
    s: Arc<Shared>,
    r: v1::WaitRevocationRequest,
) -> Result<ProgressStream, Status> {
    let timeout = Duration::from_millis(if r.timeout_ms == 0 {
        30_000
    } else {
        u64::from(r.timeout_ms)
    });
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move { crate::revocation::wait(&s, r.seq, timeout, tx).await });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

pub(super) async fn introspect(
    s: &Shared,
    req: v1::IntrospectRequest,
) -> Result<v1::IntrospectResponse, Status> {
    Ok(crate::revocation::introspect(s, &req.token))
}

/// Revoke `target`, recording a failure of the store as a `revoke-failed` event.
pub(super) async fn revoke_target(
    s: &Shared,
    actor: String,
    target: RevocationTarget,
    reason: String,
) -> Result<v1::RevokeResponse, Status> {
    let at_ms = s.clock.now_ms();
    let ev = audit::revocation(at_ms, &actor, &reason);
    let failed = audit::revoke_failed(at_ms, &actor, &target.describe());
    let rev = match s.store.revoke(target, reason, actor, vec![ev]).await {
        Ok(rev) => rev,
        Err(e) => return Err(write_failed(s, e, failed).await),
    };
    let hosts = crate::revocation::hosts_to_wait_for(s, &rev);
    tracing::info!(
        seq = rev.seq,
        leases = rev.lease_ids.len(),
        hosts = hosts.len(),
        "revoked"
    );
    Ok(v1::RevokeResponse {
        seq: rev.seq,
        leases_revoked: rev.lease_ids.len() as u32,
        hosts,
    })
}
