//! The [`Storage`] methods of [`SledStore`]: reads straight from the trees, writes as
//! jobs for the writer thread.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{broadcast, watch};

use super::codec::{all, be, dec, enc, get, policy_key, POLICY_CURRENT_KEY, POLICY_VERSION_PREFIX};
use super::error::{Result, StoreError};
use super::sled_store::{SledStore, LOG_RETAIN};
use super::tx::issue_job;
use super::{Cutoff, Enrollment, Pruned, SecretWrite, SecretWritten, Storage};
use crate::audit;
use crate::model::{
    Approval, ApprovalState, Change, Credential, Event, Host, JoinTokenRecord, Lease, LeaseState,
    PendingEnd, PolicyRecord, Revocation, RevocationTarget, ScheduledRevocation, SecretVersion,
    Workload,
};

#[async_trait]
impl Storage for SledStore {
    fn current_seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn subscribe_changes(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn changes_since(&self, seq: u64) -> Result<Option<Vec<Change>>> {
        let current = self.current_seq();
        if seq >= current {
            return Ok(Some(Vec::new()));
        }
        // The log must still hold every change after `seq`: check its first retained key.
        if let Some((k, _)) = self.t.log.first()? {
            let first = u64::from_be_bytes(<[u8; 8]>::try_from(k.as_ref()).unwrap_or([0; 8]));
            if first > seq + 1 && seq + LOG_RETAIN < current {
                return Ok(None);
            }
        }
        let mut out = Vec::new();
        for kv in self.t.log.range(be(seq + 1)..=be(current)) {
            let (_, v) = kv?;
            out.push(dec("log", &v)?);
        }
        Ok(Some(out))
    }

    fn workload(&self, name: &str) -> Result<Option<Workload>> {
        get(&self.t.workloads, "workloads", name.as_bytes())
    }
    fn workloads(&self) -> Result<Vec<Workload>> {
        all(&self.t.workloads, "workloads")
    }
    fn credential(&self, name: &str) -> Result<Option<Credential>> {
        get(&self.t.credentials, "credentials", name.as_bytes())
    }
    fn credentials(&self) -> Result<Vec<Credential>> {
        all(&self.t.credentials, "credentials")
    }
    fn host(&self, name: &str) -> Result<Option<Host>> {
        get(&self.t.hosts, "hosts", name.as_bytes())
    }
    fn host_by_serial(&self, serial: &str) -> Result<Option<Host>> {
        match self.t.serials.get(serial.as_bytes())? {
            Some(name) => get(&self.t.hosts, "hosts", &name),
            None => Ok(None),
        }
    }
    fn hosts(&self) -> Result<Vec<Host>> {
        all(&self.t.hosts, "hosts")
    }
    fn join_token(&self, id: &str) -> Result<Option<JoinTokenRecord>> {
        get(&self.t.join_tokens, "join_tokens", id.as_bytes())
    }
    fn join_tokens(&self) -> Result<Vec<JoinTokenRecord>> {
        all(&self.t.join_tokens, "join_tokens")
    }
    fn lease(&self, id: &str) -> Result<Option<Lease>> {
        get(&self.t.leases, "leases", id.as_bytes())
    }
    fn leases(&self, workload: Option<&str>, active_only: bool) -> Result<Vec<Lease>> {
        let mut out: Vec<Lease> = if active_only {
            let mut v = Vec::new();
            for k in self.t.active.iter().keys() {
                if let Some(l) = get(&self.t.leases, "leases", &k?)? {
                    v.push(l);
                }
            }
            v
        } else {
            all(&self.t.leases, "leases")?
        };
        if let Some(w) = workload {
            out.retain(|l: &Lease| l.workload == w);
        }
        out.sort_by_key(|l| l.seq);
        Ok(out)
    }
    fn expired_leases(&self, now: i64, limit: usize) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for k in self
            .t
            .expiry
            .range(..be(now.max(0) as u64 + 1))
            .keys()
            .take(limit)
        {
            let k = k?;
            out.push(String::from_utf8_lossy(&k[8..]).into_owned());
        }
        Ok(out)
    }

    fn ended_leases(&self, limit: usize) -> Result<Vec<Lease>> {
        super::queue::ended_leases(&self.t, limit)
    }

    fn pending_ends(&self, credential: Option<&str>) -> Result<Vec<PendingEnd>> {
        super::queue::pending_ends(&self.t, credential)
    }

    fn pending_end(&self, lease: &str) -> Result<Option<PendingEnd>> {
        super::queue::pending_end(&self.t, lease)
    }

    fn ended_changes(&self) -> watch::Receiver<super::EndQueueWrites> {
        self.ended_tx.subscribe()
    }

    fn next_ended(&self, limit: usize, skip: &(dyn Fn(&str) -> bool + Sync)) -> Result<Vec<Lease>> {
        super::queue::next_ended(&self.t, limit, skip)
    }

    async fn end_failed(&self, lease: &str, error: String, at_ms: i64, event: Event) -> Result<()> {
        let lease = lease.to_string();
        self.write(move |tx| super::queue::failed(tx, &lease, error, at_ms, event))
            .await
    }

    async fn forget_ended(&self, done: Vec<(String, Vec<Event>)>) -> Result<()> {
        self.write(move |tx| super::queue::forget(tx, done)).await
    }

    fn revocations_since(&self, seq: u64) -> Result<Vec<Revocation>> {
        self.t
            .revocations
            .range(be(seq.saturating_add(1))..)
            .values()
            .map(|v| dec("revocations", &v?))
            .collect()
    }
    fn events(&self, since_ms: i64, limit: usize) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        for v in self.t.events.iter().values().rev() {
            let e: Event = dec("events", &v?)?;
            if e.at_ms < since_ms || out.len() >= limit {
                break;
            }
            out.push(e);
        }
        out.reverse();
        Ok(out)
    }
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        super::chain::events_after(&self.t.events, after, limit)
    }

    fn audit_chain(&self) -> Result<crate::audit_chain::ChainState> {
        super::chain::state(&self.t.meta)
    }

    fn checkpoints(&self, from: u64) -> Result<Vec<crate::audit_chain::Checkpoint>> {
        super::chain::checkpoints_from(&self.t.checkpoints, from)
    }

    async fn put_checkpoint(&self, cp: crate::audit_chain::Checkpoint) -> Result<()> {
        self.write(move |tx| super::chain::put(&tx.t.checkpoints, &cp))
            .await
    }

    fn lease_events(&self, lease: &str) -> Result<Vec<Event>> {
        self.indexed_events(&self.t.lease_events, lease)
    }
    fn task_events(&self, task: &str) -> Result<Vec<Event>> {
        self.indexed_events(&self.t.task_events, task)
    }
    fn approval_events(&self, approval: &str) -> Result<Vec<Event>> {
        self.indexed_events(&self.t.approval_events, approval)
    }
    fn approval(&self, id: &str) -> Result<Option<Approval>> {
        get(&self.t.approvals, "approvals", id.as_bytes())
    }
    fn approvals(&self) -> Result<Vec<Approval>> {
        all(&self.t.approvals, "approvals")
    }
    fn blob(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.t.blobs.get(name)?.map(|v| v.to_vec()))
    }

    async fn put_blob(&self, name: &str, value: Vec<u8>) -> Result<()> {
        let name = name.to_string();
        self.write(move |tx| {
            tx.t.blobs.insert(name.as_bytes(), value)?;
            Ok(())
        })
        .await
    }

    fn policy_version(&self, version: u64) -> Result<Option<PolicyRecord>> {
        get(&self.t.blobs, "blobs", policy_key(version).as_bytes())
    }
    fn policy_versions(&self) -> Result<Vec<PolicyRecord>> {
        let mut out: Vec<PolicyRecord> = self
            .t
            .blobs
            .scan_prefix(POLICY_VERSION_PREFIX)
            .values()
            .map(|v| dec("blobs", &v?))
            .collect::<Result<_>>()?;
        // Keys sort as text ("policy/v/10" before "policy/v/2").
        out.sort_by_key(|r| r.version);
        Ok(out)
    }
    fn current_policy(&self) -> Result<Option<PolicyRecord>> {
        let Some(v) = self.t.blobs.get(POLICY_CURRENT_KEY)? else {
            return Ok(None);
        };
        let version = <[u8; 8]>::try_from(v.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt {
                tree: "blobs",
                message: format!("{POLICY_CURRENT_KEY} is {} bytes, not 8", v.len()),
            })?;
        self.policy_version(version)
    }

    async fn put_policy_version(&self, rec: PolicyRecord) -> Result<()> {
        self.write(move |tx| {
            tx.t.blobs
                .insert(policy_key(rec.version).as_bytes(), enc(&rec))?;
            tx.t.blobs
                .insert(POLICY_CURRENT_KEY, &rec.version.to_be_bytes())?;
            Ok(())
        })
        .await
    }

    async fn put_approval(&self, a: Approval, event: Event) -> Result<()> {
        self.write(move |tx| {
            tx.t.approvals.insert(a.id.as_bytes(), enc(&a))?;
            tx.event(event)
        })
        .await
    }

    async fn issue_with_approval(
        &self,
        approval: &str,
        now: i64,
        lease: Lease,
        event: Event,
        extra: Vec<Event>,
    ) -> Result<u64> {
        let approval = approval.to_string();
        let issue = issue_job(lease, event, extra);
        self.write(move |tx| {
            let mut a: Approval = get(&tx.t.approvals, "approvals", approval.as_bytes())?
                .ok_or_else(|| StoreError::Refused(format!("approval {approval} is gone")))?;
            if a.state != ApprovalState::Approved || a.uses_left == 0 || a.valid_until <= now {
                return Err(StoreError::Refused(format!(
                    "approval {approval} is used up or expired"
                )));
            }
            let seq = issue(tx)?;
            a.uses_left -= 1;
            tx.t.approvals.insert(approval.as_bytes(), enc(&a))?;
            Ok(seq)
        })
        .await
    }

    async fn put_workload(&self, w: Workload, event: Event) -> Result<u64> {
        self.write(move |tx| {
            let seq = tx.next_seq();
            tx.t.workloads.insert(w.name.as_bytes(), enc(&w))?;
            tx.event(event)?;
            tx.change(Change::WorkloadPut { seq, workload: w })?;
            Ok(seq)
        })
        .await
    }

    async fn remove_workload(&self, name: &str, event: Event) -> Result<u64> {
        let name = name.to_string();
        self.write(move |tx| {
            if tx.t.workloads.get(name.as_bytes())?.is_none() {
                return Err(StoreError::NotFound(format!("no workload named {name:?}")));
            }
            // Removing a workload takes back what it holds first.
            tx.revoke(
                RevocationTarget::Workload(name.clone()),
                "workload removed".into(),
                event.actor.clone().unwrap_or_default(),
                &[],
            )?;
            let seq = tx.next_seq();
            tx.t.workloads.remove(name.as_bytes())?;
            tx.event(event)?;
            tx.change(Change::WorkloadRemoved { seq, name })?;
            Ok(seq)
        })
        .await
    }

    async fn put_credential(&self, c: Credential, event: Event) -> Result<()> {
        self.write(move |tx| {
            // One namespace for every kind: a definition never replaces one of another
            // kind (a secret's versions would be orphaned, a JWT's leases re-kinded).
            if let Some(old) = get::<Credential>(&tx.t.credentials, "credentials", c.name.as_bytes())? {
                if old.kind != c.kind {
                    return Err(StoreError::Conflict(format!(
                        "a credential named {:?} (kind {}) exists; credentials and secrets share one namespace: choose another name",
                        c.name, old.kind
                    )));
                }
            }
            tx.t.credentials.insert(c.name.as_bytes(), enc(&c))?;
            tx.event(event)
        })
        .await
    }

    async fn put_join_token(&self, t: JoinTokenRecord, event: Event) -> Result<()> {
        self.write(move |tx| {
            tx.t.join_tokens.insert(t.id.as_bytes(), enc(&t))?;
            tx.event(event)
        })
        .await
    }

    async fn revoke_join_token(&self, id: &str, event: Event) -> Result<()> {
        let id = id.to_string();
        self.write(move |tx| {
            let mut t: JoinTokenRecord = get(&tx.t.join_tokens, "join_tokens", id.as_bytes())?
                .ok_or_else(|| StoreError::NotFound(format!("no join token with id {id:?}")))?;
            t.revoked = true;
            tx.t.join_tokens.insert(id.as_bytes(), enc(&t))?;
            tx.event(event)
        })
        .await
    }

    async fn enroll(
        &self,
        token_id: &str,
        secret_sha256: &str,
        host: Host,
        now: i64,
        event: Event,
    ) -> Result<Enrollment> {
        let token_id = token_id.to_string();
        let secret_sha256 = secret_sha256.to_string();
        self.write(move |tx| {
            let refuse = |m: &str| Err(StoreError::Refused(m.to_string()));
            let Some(mut t) =
                get::<JoinTokenRecord>(&tx.t.join_tokens, "join_tokens", token_id.as_bytes())?
            else {
                return refuse("unknown join token (forged, or from another control plane)");
            };
            // Both sides are hashes of a 256-bit secret, so comparing them leaks nothing
            // useful through timing.
            if t.secret_sha256 != secret_sha256 {
                return refuse("join token secret does not match (forged or mistyped token)");
            }
            match t.state(now) {
                "active" => {}
                "used" => return refuse("join token was already used; tokens are single use"),
                "revoked" => return refuse("join token was revoked"),
                _ => return refuse("join token has expired"),
            }
            if tx.t.hosts.get(host.name.as_bytes())?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "host name {:?} is taken (names are never reused); enroll with another --name",
                    host.name
                )));
            }
            t.used_by = Some(host.name.clone());
            tx.t.join_tokens.insert(token_id.as_bytes(), enc(&t))?;
            tx.t.hosts.insert(host.name.as_bytes(), enc(&host))?;
            tx.t.serials
                .insert(host.cert_serial.as_bytes(), host.name.as_bytes())?;
            tx.event(event)?;
            Ok(Enrollment { host })
        })
        .await
    }

    async fn renew_host(&self, name: &str, serial: &str, not_after: i64) -> Result<()> {
        let name = name.to_string();
        let serial = serial.to_string();
        self.write(move |tx| {
            let mut h: Host = get(&tx.t.hosts, "hosts", name.as_bytes())?
                .ok_or_else(|| StoreError::NotFound(format!("no host named {name:?}")))?;
            if h.evicted {
                return Err(StoreError::Refused(format!("host {name:?} was evicted")));
            }
            // The old serial keeps working until it expires, so an in-flight call on the
            // old certificate does not fail during the switch.
            h.cert_serial = serial.clone();
            h.cert_not_after = not_after;
            tx.t.hosts.insert(name.as_bytes(), enc(&h))?;
            tx.t.serials.insert(serial.as_bytes(), name.as_bytes())?;
            tx.event(audit::renewed(&name))
        })
        .await
    }

    async fn issue_lease(&self, lease: Lease, event: Event, extra: Vec<Event>) -> Result<u64> {
        self.write(issue_job(lease, event, extra)).await
    }

    async fn revoke(
        &self,
        target: RevocationTarget,
        reason: String,
        actor: String,
        extra: Vec<Event>,
    ) -> Result<Revocation> {
        self.write(move |tx| {
            let rev = tx.revoke(target, reason, actor, &[])?;
            for e in extra {
                tx.event({
                    // Add the revocation's facts to what the caller recorded.
                    let mut e = e;
                    if !e.detail.is_object() {
                        e.detail = serde_json::json!({});
                    }
                    e.detail["seq"] = rev.seq.into();
                    e.detail["leases"] = rev.lease_ids.len().into();
                    e
                })?;
            }
            Ok(rev)
        })
        .await
    }

    async fn finish_leases(
        &self,
        ids: Vec<String>,
        state: LeaseState,
        reason: String,
    ) -> Result<Vec<Lease>> {
        self.write(move |tx| {
            let mut done = Vec::new();
            for id in ids {
                let Some(mut l) = get::<Lease>(&tx.t.leases, "leases", id.as_bytes())? else {
                    continue;
                };
                if l.state != LeaseState::Active {
                    continue;
                }
                l.state = state;
                l.reason = Some(reason.clone());
                tx.put_lease(&l)?;
                tx.event(audit::lease_ended(&l, state, &reason))?;
                done.push(l);
            }
            Ok(done)
        })
        .await
    }

    async fn set_workload_disabled(
        &self,
        name: &str,
        disabled: bool,
        actor: String,
        reason: String,
    ) -> Result<(Workload, Option<Revocation>)> {
        let name = name.to_string();
        self.write(move |tx| {
            let mut w: Workload = get(&tx.t.workloads, "workloads", name.as_bytes())?
                .ok_or_else(|| StoreError::NotFound(format!("no workload named {name:?}")))?;
            w.disabled = disabled;
            let seq = tx.next_seq();
            tx.t.workloads.insert(name.as_bytes(), enc(&w))?;
            tx.event(audit::workload_disabled(&name, disabled, &actor, &reason))?;
            tx.change(Change::WorkloadPut {
                seq,
                workload: w.clone(),
            })?;
            let rev = if disabled {
                Some(tx.revoke(RevocationTarget::Workload(name.clone()), reason, actor, &[])?)
            } else {
                None
            };
            Ok((w, rev))
        })
        .await
    }

    async fn offboard_owner(
        &self,
        owner: &str,
        actor: String,
    ) -> Result<(Revocation, Vec<String>)> {
        let owner = owner.to_string();
        self.write(move |tx| {
            let mut names = Vec::new();
            for w in tx.t.workloads.iter().values() {
                let mut w: Workload = dec("workloads", &w?)?;
                if w.owner != owner {
                    continue;
                }
                names.push(w.name.clone());
                if !w.disabled {
                    w.disabled = true;
                    let seq = tx.next_seq();
                    tx.t.workloads.insert(w.name.as_bytes(), enc(&w))?;
                    tx.event(audit::workload_disabled(
                        &w.name,
                        true,
                        &actor,
                        &format!("owner {owner} offboarded"),
                    ))?;
                    tx.change(Change::WorkloadPut { seq, workload: w })?;
                }
            }
            if names.is_empty() {
                return Err(StoreError::NotFound(format!(
                    "no workload is owned by {owner:?}"
                )));
            }
            let now = tx.now_ms.div_euclid(1000);
            tx.t.meta
                .insert(format!("offboarded/{owner}").as_bytes(), &be(now as u64))?;
            tx.event(audit::offboarded(&owner, &names, &actor))?;
            let rev = tx.revoke(
                RevocationTarget::Owner(owner.clone()),
                format!("owner {owner} offboarded"),
                actor,
                &[],
            )?;
            Ok((rev, names))
        })
        .await
    }

    fn offboarded_owners(&self) -> Result<Vec<(String, i64)>> {
        let mut out = Vec::new();
        for kv in self.t.meta.scan_prefix(b"offboarded/") {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k["offboarded/".len()..]).into_owned();
            let at = <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(0) as i64;
            out.push((name, at));
        }
        Ok(out)
    }

    async fn evict_host(&self, name: &str, actor: String, reason: String) -> Result<Revocation> {
        let name = name.to_string();
        self.write(move |tx| {
            let mut h: Host = get(&tx.t.hosts, "hosts", name.as_bytes())?
                .ok_or_else(|| StoreError::NotFound(format!("no host named {name:?}")))?;
            h.evicted = true;
            tx.t.hosts.insert(name.as_bytes(), enc(&h))?;
            let rev = tx.revoke(
                RevocationTarget::Host(name.clone()),
                reason.clone(),
                actor.clone(),
                std::slice::from_ref(&name),
            )?;
            let seq = tx.next_seq();
            tx.event(audit::evicted(&name, &actor, &reason))?;
            tx.change(Change::HostEvicted { seq, name, reason })?;
            Ok(rev)
        })
        .await
    }

    async fn touch_host(&self, name: &str, at: i64) -> Result<()> {
        let name = name.to_string();
        self.write(move |tx| {
            if let Some(mut h) = get::<Host>(&tx.t.hosts, "hosts", name.as_bytes())? {
                h.last_seen = at;
                tx.t.hosts.insert(name.as_bytes(), enc(&h))?;
            }
            Ok(())
        })
        .await
    }

    async fn append_events(&self, events: Vec<Event>) -> Result<()> {
        self.write(move |tx| {
            for e in events {
                tx.event(e)?;
            }
            Ok(())
        })
        .await
    }

    fn prune_due(&self, cut: Cutoff) -> Result<bool> {
        super::retention::due(&self.t, cut)
    }

    async fn prune(&self, cut: Cutoff, limit: usize) -> Result<Pruned> {
        self.write(move |tx| super::retention::prune(tx, cut, limit))
            .await
    }

    fn sealed_records(&self) -> Result<Vec<super::SealedRecord>> {
        super::sealed::records(&self.t, super::sealed::SEALED)
    }

    async fn rewrap_sealed(&self, rewrap: super::Rewrap, event: Option<Event>) -> Result<usize> {
        self.write(move |tx| super::sealed::rewrap(tx, super::sealed::SEALED, rewrap, event))
            .await
    }

    fn secret_versions(&self, name: &str) -> Result<Vec<SecretVersion>> {
        super::secrets::versions(&self.t, name)
    }

    fn secret_version(&self, name: &str, version: u32) -> Result<Option<SecretVersion>> {
        super::secrets::version(&self.t, name, version)
    }

    async fn put_secret(&self, w: SecretWrite) -> Result<SecretWritten> {
        self.write(move |tx| tx.put_secret(w)).await
    }

    async fn set_secret_disabled(
        &self,
        name: &str,
        disabled: bool,
        actor: String,
        reason: String,
    ) -> Result<(Credential, Option<Revocation>)> {
        let name = name.to_string();
        self.write(move |tx| tx.set_secret_disabled(&name, disabled, actor, reason))
            .await
    }

    async fn remove_secret(&self, name: &str, actor: String) -> Result<(Revocation, u32)> {
        let name = name.to_string();
        self.write(move |tx| tx.remove_secret(&name, actor)).await
    }

    fn scheduled_due(&self, now: i64, limit: usize) -> Result<Vec<ScheduledRevocation>> {
        super::secrets::scheduled_due(&self.t, now, limit)
    }

    async fn run_scheduled(&self, s: ScheduledRevocation) -> Result<Option<Revocation>> {
        self.write(move |tx| tx.run_scheduled(s)).await
    }

    async fn remove_credential(
        &self,
        name: &str,
        actor: String,
        reason: String,
        revoke: bool,
    ) -> Result<(Option<Revocation>, u32)> {
        let name = name.to_string();
        self.write(move |tx| tx.remove_credential(&name, actor, reason, revoke))
            .await
    }

    fn introspection_client(&self, id: &str) -> Result<Option<super::IntrospectionClient>> {
        self.read_introspection_client(id)
    }

    fn introspection_clients(&self) -> Result<Vec<super::IntrospectionClient>> {
        self.read_introspection_clients()
    }

    async fn put_introspection_client(
        &self,
        c: super::IntrospectionClient,
        event: Event,
    ) -> Result<()> {
        self.write_introspection_client(c, event).await
    }

    async fn remove_introspection_client(&self, id: &str, event: Event) -> Result<()> {
        self.delete_introspection_client(id, event).await
    }

    async fn put_key_blobs(
        &self,
        puts: Vec<(String, Vec<u8>)>,
        removes: Vec<String>,
        events: Vec<Event>,
    ) -> Result<()> {
        self.write(move |tx| {
            for (name, value) in puts {
                tx.t.blobs.insert(name.as_bytes(), value)?;
            }
            for name in removes {
                tx.t.blobs.remove(name.as_bytes())?;
            }
            for e in events {
                tx.event(e)?;
            }
            Ok(())
        })
        .await
    }

    async fn put_key_blobs_if(
        &self,
        guard: &str,
        expected: Option<Vec<u8>>,
        puts: Vec<(String, Vec<u8>)>,
        removes: Vec<String>,
        events: Vec<Event>,
    ) -> Result<()> {
        let guard = guard.to_string();
        self.write(move |tx| {
            let now = tx.t.blobs.get(guard.as_bytes())?.map(|v| v.to_vec());
            if now != expected {
                return Err(StoreError::Conflict(format!(
                    "the {guard} blob was changed meanwhile (by another control plane on this store); read it again and retry"
                )));
            }
            for (name, value) in puts {
                tx.t.blobs.insert(name.as_bytes(), value)?;
            }
            for name in removes {
                tx.t.blobs.remove(name.as_bytes())?;
            }
            for e in events {
                tx.event(e)?;
            }
            Ok(())
        })
        .await
    }

    async fn snapshot(&self) -> Result<super::Snapshot> {
        self.take_snapshot().await
    }
}
