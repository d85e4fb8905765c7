//! `owner list|offboard`: who owns which workloads, and offboarding an owner (revoking
//! their leases and disabling their workloads).

use std::collections::BTreeMap;

use leash_proto::v1;
use tonic::Status;

use crate::state::Shared;

pub(super) async fn list(s: &Shared) -> Result<v1::ListOwnersResponse, Status> {
    let workloads = s.store.workloads().map_err(Status::from)?;
    let leases = s.store.leases(None, true).map_err(Status::from)?;
    let offboarded = super::check::offboarded_owners(s)?;
    let mut owners: BTreeMap<String, v1::OwnerInfo> = BTreeMap::new();
    for w in &workloads {
        let e = owners
            .entry(w.owner.clone())
            .or_insert_with(|| v1::OwnerInfo {
                owner: w.owner.clone(),
                offboarded: offboarded.contains(&w.owner),
                ..Default::default()
            });
        e.workloads.push(w.name.clone());
        e.active_leases += leases.iter().filter(|l| l.workload == w.name).count() as u32;
    }
    Ok(v1::ListOwnersResponse {
        owners: owners.into_values().collect(),
    })
}

pub(super) async fn offboard(
    s: &Shared,
    actor: String,
    req: v1::NameRequest,
) -> Result<v1::OffboardResponse, Status> {
    let owner = req.name;
    let (rev, workloads) = s
        .store
        .offboard_owner(&owner, actor)
        .await
        .map_err(Status::from)?;
    s.relink();
    let hosts = crate::revocation::hosts_to_wait_for(s, &rev);
    Ok(v1::OffboardResponse {
        seq: rev.seq,
        leases_revoked: rev.lease_ids.len() as u32,
        hosts,
        workloads,
    })
}
