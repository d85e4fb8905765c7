//! `host list|evict`: enrolled hosts with their live connection state, and eviction.

use leash_proto::v1;
use tonic::Status;

use crate::state::Shared;
use crate::wire::{self};

pub(super) async fn list(s: &Shared) -> Result<v1::ListHostsResponse, Status> {
    let hosts = s
        .store
        .hosts()
        .map_err(Status::from)?
        .into_iter()
        .map(|h| {
            let conn = s.hub.info(&h.name);
            let elsewhere = conn.is_none() && crate::replicas::live_elsewhere(s, h.last_seen);
            let mut info = wire::host_info(h, conn);
            // Connected to another replica of the shared store.
            info.connected |= elsewhere;
            info
        })
        .collect();
    Ok(v1::ListHostsResponse { hosts })
}

pub(super) async fn evict(
    s: &Shared,
    actor: String,
    req: v1::NameRequest,
) -> Result<v1::Empty, Status> {
    let name = req.name;
    s.store
        .evict_host(&name, actor, "host evicted by an admin".into())
        .await
        .map_err(Status::from)?;
    Ok(v1::Empty {})
}
