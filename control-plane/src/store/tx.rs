//! The writes one batch makes on the writer thread: sequence numbers, audit events, the
//! change log, leases and their indexes, revocations, and the checks of an issuance.

use std::collections::{BTreeMap, BTreeSet};

use super::codec::{be, enc, ended_key, get};
use super::error::{Result, StoreError};
use super::sled_store::{Tx, LOG_RETAIN};
use crate::audit;
use crate::audit_chain::{self, Link};
use crate::model::{
    Change, Credential, Event, Host, Lease, LeaseState, PendingEnd, Revocation, RevocationTarget,
    Workload,
};

impl Tx<'_> {
    /// Allocate the next sequence number.
    pub(super) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub(super) fn event(&mut self, mut e: Event) -> Result<()> {
        self.event_id += 1;
        e.id = self.event_id;
        // An event is dated when it is recorded, by the store's clock (see `Event::new`).
        if e.at_ms == 0 {
            e.at_ms = self.now_ms;
        }
        if let Some(c) = &self.caller {
            if e.actor.as_deref() == Some(c.name.as_str()) && e.actor_role.is_none() {
                e.actor_role = Some(c.role.as_str().to_string());
                e.actor_via = Some(c.via.as_str().to_string());
            }
        }
        // The chain: link to the previous event and hash this one (see `audit_chain`).
        // The new head is written with `event_id` in this batch's flush.
        e.prev_hash = Some(std::mem::take(&mut self.head.hash));
        e.hash = None;
        let hash = audit_chain::event_hash(&e);
        e.hash = Some(hash.clone());
        self.head = Link { id: e.id, hash };
        self.t.events.insert(be(e.id), enc(&e))?;
        for (tree, key) in [
            (&self.t.lease_events, &e.lease),
            (&self.t.task_events, &e.task),
            (&self.t.approval_events, &e.approval),
        ] {
            if let Some(key) = key {
                let mut k = key.as_bytes().to_vec();
                k.push(0);
                k.extend_from_slice(&be(e.id));
                tree.insert(k, &[])?;
            }
        }
        self.events.push(e);
        Ok(())
    }

    pub(super) fn change(&mut self, c: Change) -> Result<()> {
        self.t.log.insert(be(c.seq()), enc(&c))?;
        if c.seq() > LOG_RETAIN {
            // Compaction: agents older than this get a snapshot.
            self.t.log.remove(be(c.seq() - LOG_RETAIN))?;
        }
        self.changes.push(c);
        Ok(())
    }

    pub(super) fn put_lease(&mut self, l: &Lease) -> Result<()> {
        self.t.leases.insert(l.id.as_bytes(), enc(l))?;
        let mut ek = be(l.expires_at.max(0) as u64).to_vec();
        ek.extend_from_slice(l.id.as_bytes());
        if l.state == LeaseState::Active {
            self.t.active.insert(l.id.as_bytes(), &[])?;
            self.t.expiry.insert(ek, &[])?;
        } else {
            self.t.active.remove(l.id.as_bytes())?;
            self.t.expiry.remove(ek)?;
            self.t.lease_ended.insert(ended_key(l), &[])?;
            // Every ending (revocation, expiry, task completion, re-evaluation,
            // offboarding, eviction) passes here: queue what the kind must undo. Once:
            // a lease already queued keeps when it was queued and its failed attempts.
            if l.ends_outside && !self.t.ended.contains_key(l.id.as_bytes())? {
                let pending = PendingEnd {
                    credential: l.credential.clone(),
                    since_ms: self.now_ms,
                    ..PendingEnd::default()
                };
                self.t.ended.insert(l.id.as_bytes(), enc(&pending))?;
                self.ended_queued = true;
            }
        }
        Ok(())
    }

    pub(super) fn revoke(
        &mut self,
        target: RevocationTarget,
        reason: String,
        actor: String,
        extra_hosts: &[String],
    ) -> Result<Revocation> {
        crate::metrics::revoked(&target);
        // The leases to look at, in the order of the `active` index (by id), so leases
        // and events are written in the same order whichever way they are found: a
        // target that names its leases is looked up by id (sorted; a repeated id once);
        // any other reads every active lease and keeps those it covers. Only ids are
        // held here: each lease is read, and written back revoked, one at a time.
        let named: Option<Vec<Vec<u8>>> = match &target {
            RevocationTarget::Lease(id) => Some(vec![id.as_bytes().to_vec()]),
            RevocationTarget::Leases(ids) => {
                let mut ids: Vec<Vec<u8>> = ids.iter().map(|i| i.as_bytes().to_vec()).collect();
                ids.sort_unstable();
                ids.dedup();
                Some(ids)
            }
            _ => None,
        };
        let mut r = Revoking::start(self, reason, actor, extra_hosts);
        match named {
            Some(ids) => {
                for id in ids {
                    if !self.t.active.contains_key(&id)? {
                        continue;
                    }
                    if let Some(lease) = get::<Lease>(&self.t.leases, "leases", &id)? {
                        r.add(self, lease)?;
                    }
                }
            }
            None => {
                let mut owners: BTreeMap<String, Option<String>> = BTreeMap::new();
                let ids: Vec<sled::IVec> = self.t.active.iter().keys().collect::<Result<_, _>>()?;
                for id in ids {
                    let Some(lease) = get::<Lease>(&self.t.leases, "leases", &id)? else {
                        continue;
                    };
                    let owner = match owners.get(&lease.workload) {
                        Some(o) => o.clone(),
                        None => {
                            let o = get::<Workload>(
                                &self.t.workloads,
                                "workloads",
                                lease.workload.as_bytes(),
                            )?
                            .map(|w| w.owner);
                            owners.insert(lease.workload.clone(), o.clone());
                            o
                        }
                    };
                    if target.covers(&lease, owner.as_deref()) {
                        r.add(self, lease)?;
                    }
                }
            }
        }
        r.finish(self, target)
    }
}

/// One revocation being written: its sequence number first, then each covered lease
/// (stored revoked, with its `revoked` event), then the revocation and its change.
pub(super) struct Revoking {
    seq: u64,
    reason: String,
    actor: String,
    lease_ids: Vec<String>,
    lease_host_names: Vec<String>,
    hosts: BTreeSet<String>,
}

impl Revoking {
    pub(super) fn start(
        tx: &mut Tx<'_>,
        reason: String,
        actor: String,
        extra_hosts: &[String],
    ) -> Revoking {
        Revoking {
            seq: tx.next_seq(),
            reason,
            actor,
            lease_ids: Vec::new(),
            lease_host_names: Vec::new(),
            hosts: extra_hosts.iter().cloned().collect(),
        }
    }

    /// Revoke `lease`, an active lease the revocation covers.
    pub(super) fn add(&mut self, tx: &mut Tx<'_>, mut lease: Lease) -> Result<()> {
        lease.state = LeaseState::Revoked;
        lease.reason = Some(self.reason.clone());
        tx.put_lease(&lease)?;
        if !self.hosts.contains(&lease.host) {
            self.hosts.insert(lease.host.clone());
        }
        tx.event(audit::lease_revoked(
            &lease,
            &self.actor,
            &self.reason,
            self.seq,
        ))?;
        self.lease_ids.push(lease.id);
        self.lease_host_names.push(lease.host);
        Ok(())
    }

    /// Record the revocation of what was added, as covering `target`.
    pub(super) fn finish(self, tx: &mut Tx<'_>, target: RevocationTarget) -> Result<Revocation> {
        let Revoking {
            seq,
            reason,
            actor,
            lease_ids,
            lease_host_names,
            mut hosts,
        } = self;
        if let RevocationTarget::Host(h) = &target {
            hosts.insert(h.clone());
        }
        let hosts: Vec<String> = hosts.into_iter().collect();
        // Group the leases by host (see `Revocation::lease_hosts`).
        let mut pairs: Vec<(u32, String)> = lease_host_names
            .iter()
            .map(|h| hosts.binary_search(h).unwrap_or_default() as u32)
            .zip(lease_ids)
            .collect();
        pairs.sort_unstable();
        let (lease_hosts, lease_ids): (Vec<u32>, Vec<String>) = pairs.into_iter().unzip();
        let rev = Revocation {
            seq,
            target,
            reason,
            actor,
            at_ms: tx.now_ms,
            lease_ids,
            hosts,
            lease_hosts,
        };
        tx.t.revocations.insert(be(seq), enc(&rev))?;
        tx.change(Change::Revoked {
            revocation: rev.clone(),
        })?;
        Ok(rev)
    }
}

/// The checks and writes of one issuance, to run on the writer: the workload and the
/// credential must still be enabled, the host not evicted and a secret's version still
/// current at the moment the lease is written. `extra` (what minting did outside Leash)
/// is recorded after the `issued` event, in the same write.
pub(super) fn issue_job(
    mut lease: Lease,
    event: Event,
    extra: Vec<Event>,
) -> impl FnOnce(&mut Tx<'_>) -> Result<u64> + Send + 'static {
    move |tx| {
        match get::<Workload>(&tx.t.workloads, "workloads", lease.workload.as_bytes())? {
            Some(w) if !w.disabled => {}
            Some(_) => {
                return Err(StoreError::Refused(format!(
                    "workload {:?} is disabled",
                    lease.workload
                )))
            }
            None => {
                return Err(StoreError::NotFound(format!(
                    "no workload named {:?}",
                    lease.workload
                )))
            }
        }
        match get::<Host>(&tx.t.hosts, "hosts", lease.host.as_bytes())? {
            Some(h) if !h.evicted => {}
            _ => {
                return Err(StoreError::Refused(format!(
                    "host {:?} was evicted",
                    lease.host
                )))
            }
        }
        // A secret disabled, removed or rotated since it was decided and minted: the
        // lease must not hold a value a revocation already took back.
        match get::<Credential>(
            &tx.t.credentials,
            "credentials",
            lease.credential.as_bytes(),
        )? {
            Some(c) if c.disabled => {
                return Err(StoreError::Refused(format!(
                    "credential {:?} is disabled",
                    lease.credential
                )))
            }
            Some(c) if lease.version != 0 && c.current_version != lease.version => {
                return Err(StoreError::Stale(format!(
                    "secret {:?} was rotated to version {} while version {} was issued",
                    lease.credential, c.current_version, lease.version
                )))
            }
            None if lease.version != 0 => {
                return Err(StoreError::NotFound(format!(
                    "no credential named {:?}",
                    lease.credential
                )))
            }
            _ => {}
        }
        let seq = tx.next_seq();
        lease.seq = seq;
        tx.put_lease(&lease)?;
        tx.event(event)?;
        for e in extra {
            tx.event(e)?;
        }
        Ok(seq)
    }
}
