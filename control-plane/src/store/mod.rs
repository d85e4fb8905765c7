//! Durable state: the [`Storage`] trait and its embedded sled implementation.
//!
//! The trait owns more than key-value access: it allocates sequence numbers, keeps the
//! change log that Sync streams replay, the revocation log and the audit event log. That
//! is what a PostgreSQL backend for several replicas would have to provide too; nothing
//! outside this module assumes it is the only writer, only that the store orders writes.
//!
//! [`SledStore`] funnels every write through **one writer thread**. The thread drains
//! whatever requests are queued, applies them in order, flushes sled once for the whole
//! batch (group commit), and only then answers each caller and publishes the batch's
//! changes and events. So nothing is acknowledged before it is durable, and many
//! concurrent issuances share one fsync.
//!
//! The module is split by concern: this file holds the trait and its errors; the sled
//! implementation lives in `error` (what callers see fail), `sled_store` (the writer thread and group commit), `tx` (the
//! writes one batch makes), `sled_impl` (the trait methods), `codec` (record encoding)
//! `flush` (the seam through which unit tests make a flush fail), `queue` (ended leases
//! whose kind has yet to undo something outside Leash) and `retention` (what is
//! forgotten once it is older than the configured retention).

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::audit_chain::{ChainState, Checkpoint};
use crate::model::{
    Approval, Change, Credential, Event, Host, JoinTokenRecord, Lease, LeaseState, PendingEnd,
    PolicyRecord, Revocation, RevocationTarget, ScheduledRevocation, SecretVersion, Workload,
};

mod admin_certs;
mod chain;
mod codec;
mod error;
mod flush;
mod introspection_clients;
mod kv;
mod pg;
mod queue;
mod retention;
mod sealed;
mod secrets;
mod sled_impl;
mod sled_store;
mod snapshot;
mod tx;

pub use admin_certs::{AdminCertRecord, AdminCertStore};
pub use error::{Result, StoreError};
pub use introspection_clients::IntrospectionClient;
pub use pg::from_sled::{copy_sled_to_postgres, probe_postgres, MigrateError, TreeCopy};
pub use pg::{latest_version as latest_schema_version, MIGRATIONS};
pub use retention::{Cutoff, Pruned};
pub use sealed::{is_key_blob, HoldsSealed, Rewrap, RewrapFailure, SealedRecord};
pub use secrets::{Older, SecretWrite, SecretWritten, SECRET_KIND};
pub use sled_store::{EndQueueWrites, SledStore};
pub use snapshot::{
    check_not_in_use, read_sled_dir, sled_store_exists, write_sled_dir, SledDirError, Snapshot,
    SnapshotTree,
};

/// Outcome of consuming a join token to enroll a host.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// The host record written.
    pub host: Host,
}

/// The storage boundary. See the module doc.
#[async_trait]
pub trait Storage: AdminCertStore + Send + Sync + std::fmt::Debug + 'static {
    /// The last committed sequence number.
    fn current_seq(&self) -> u64;
    /// Whether a flush has failed in a way the store cannot recover from while it stays
    /// open: sled keeps an I/O error, and fails later writes, until it is reopened. The
    /// server stops (to be restarted) once the data directory has room again.
    fn failed(&self) -> bool {
        false
    }
    /// Subscribe to committed changes (in sequence order).
    /// Each change is shared by every subscriber (one Sync stream per agent).
    fn subscribe_changes(&self) -> broadcast::Receiver<Arc<Change>>;
    /// Subscribe to committed audit events.
    fn subscribe_events(&self) -> broadcast::Receiver<Event>;
    /// Changes after `seq`, or `None` when the log no longer reaches back that far.
    fn changes_since(&self, seq: u64) -> Result<Option<Vec<Change>>>;

    /// A workload.
    fn workload(&self, name: &str) -> Result<Option<Workload>>;
    /// All workloads, by name.
    fn workloads(&self) -> Result<Vec<Workload>>;
    /// A credential.
    fn credential(&self, name: &str) -> Result<Option<Credential>>;
    /// All credentials, by name.
    fn credentials(&self) -> Result<Vec<Credential>>;
    /// A host.
    fn host(&self, name: &str) -> Result<Option<Host>>;
    /// The host that holds the certificate with this serial (hex).
    fn host_by_serial(&self, serial: &str) -> Result<Option<Host>>;
    /// All hosts.
    fn hosts(&self) -> Result<Vec<Host>>;
    /// A join token.
    fn join_token(&self, id: &str) -> Result<Option<JoinTokenRecord>>;
    /// All join tokens.
    fn join_tokens(&self) -> Result<Vec<JoinTokenRecord>>;
    /// A lease.
    fn lease(&self, id: &str) -> Result<Option<Lease>>;
    /// Leases, optionally of one workload and/or only active ones.
    fn leases(&self, workload: Option<&str>, active_only: bool) -> Result<Vec<Lease>>;
    /// Ids of active leases that expire at or before `now` (unix seconds), at most `limit`.
    fn expired_leases(&self, now: i64, limit: usize) -> Result<Vec<String>>;
    /// Up to `limit` ended leases whose credential kind has yet to undo what it set up
    /// outside Leash (queued when they ended; see `issuance::ends`).
    fn ended_leases(&self, limit: usize) -> Result<Vec<Lease>>;
    /// The queued entries with their state (since when, attempts, last error), of one
    /// credential or of all.
    fn pending_ends(&self, credential: Option<&str>) -> Result<Vec<PendingEnd>>;
    /// The queued entry of one lease, if its end step is still pending.
    fn pending_end(&self, lease: &str) -> Result<Option<PendingEnd>>;
    /// A receiver whose value changes after every durable write that changed that queue
    /// (see [`EndQueueWrites`]), so its worker and `revoke --wait` wake at once instead
    /// of polling.
    fn ended_changes(&self) -> tokio::sync::watch::Receiver<EndQueueWrites>;
    /// Up to `limit` queued leases whose id `skip` does not pick, in id order (the
    /// worker skips what it is ending now or waits to retry without reading it).
    fn next_ended(&self, limit: usize, skip: &(dyn Fn(&str) -> bool + Sync)) -> Result<Vec<Lease>>;
    /// Record that the end step of `lease` failed at `at_ms` with `error` (one more
    /// attempt), and `event` (the kind's failed-end event; its detail gains `error` and
    /// `attempt`), in one durable write.
    async fn end_failed(&self, lease: &str, error: String, at_ms: i64, event: Event) -> Result<()>;
    /// Take leases off that queue once their kind's end step succeeded, each with the
    /// events the step returned, in one durable write.
    async fn forget_ended(&self, done: Vec<(String, Vec<Event>)>) -> Result<()>;
    /// Revocations with `seq` above the given one.
    fn revocations_since(&self, seq: u64) -> Result<Vec<Revocation>>;
    /// Audit events from `since_ms`, at most `limit` of the newest.
    fn events(&self, since_ms: i64, limit: usize) -> Result<Vec<Event>>;
    /// Up to `limit` audit events with ids above `after`, in id order.
    fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>>;
    /// Where the audit chain stands: its genesis, head and retention anchor.
    fn audit_chain(&self) -> Result<ChainState>;
    /// The signed audit checkpoints kept of events `from` and later, by event id.
    fn checkpoints(&self, from: u64) -> Result<Vec<Checkpoint>>;
    /// Record a signed audit checkpoint durably.
    async fn put_checkpoint(&self, cp: Checkpoint) -> Result<()>;
    /// Events that mention a lease, in order.
    fn lease_events(&self, lease: &str) -> Result<Vec<Event>>;
    /// Events that mention a task, in order.
    fn task_events(&self, task: &str) -> Result<Vec<Event>>;
    /// Events that mention an approval, in order.
    fn approval_events(&self, approval: &str) -> Result<Vec<Event>>;
    /// An approval.
    fn approval(&self, id: &str) -> Result<Option<Approval>>;
    /// All approvals.
    fn approvals(&self) -> Result<Vec<Approval>>;
    /// Record an approval (new or decided).
    async fn put_approval(&self, a: Approval, event: Event) -> Result<()>;
    /// Atomically use an approved approval once for an issuance, then write the lease
    /// (with `extra` events, as [`Storage::issue_lease`]). Refused if the approval is no
    /// longer usable.
    async fn issue_with_approval(
        &self,
        approval: &str,
        now: i64,
        lease: Lease,
        event: Event,
        extra: Vec<Event>,
    ) -> Result<u64>;
    /// An opaque blob (encrypted keys).
    fn blob(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// Applied policy version `version`.
    fn policy_version(&self, version: u64) -> Result<Option<PolicyRecord>>;
    /// Every applied policy version, oldest first.
    fn policy_versions(&self) -> Result<Vec<PolicyRecord>>;
    /// The policy version in force (none before the first `policy apply`).
    fn current_policy(&self) -> Result<Option<PolicyRecord>>;
    /// Record a policy version and make it the one in force, in one durable write.
    async fn put_policy_version(&self, rec: PolicyRecord) -> Result<()>;

    /// Store an opaque blob durably.
    async fn put_blob(&self, name: &str, value: Vec<u8>) -> Result<()>;
    /// Add or replace a workload; returns its change sequence number.
    async fn put_workload(&self, w: Workload, event: Event) -> Result<u64>;
    /// Remove a workload.
    async fn remove_workload(&self, name: &str, event: Event) -> Result<u64>;
    /// Add or replace a credential.
    async fn put_credential(&self, c: Credential, event: Event) -> Result<()>;
    /// Record a new join token.
    async fn put_join_token(&self, t: JoinTokenRecord, event: Event) -> Result<()>;
    /// Revoke a join token.
    async fn revoke_join_token(&self, id: &str, event: Event) -> Result<()>;
    /// Atomically consume a join token (checking hash, expiry, reuse) and write the host.
    async fn enroll(
        &self,
        token_id: &str,
        secret_sha256: &str,
        host: Host,
        now: i64,
        event: Event,
    ) -> Result<Enrollment>;
    /// Point a host at a renewed certificate.
    async fn renew_host(&self, name: &str, serial: &str, not_after: i64) -> Result<()>;
    /// Write a lease, refusing it if the workload was disabled or removed meanwhile, with
    /// its `issued` event and `extra` events (what minting did outside Leash) in the same
    /// durable write. Returns the sequence number the lease was issued at.
    async fn issue_lease(&self, lease: Lease, event: Event, extra: Vec<Event>) -> Result<u64>;
    /// Record a revocation durably; moves the leases it covers to `revoked`.
    async fn revoke(
        &self,
        target: RevocationTarget,
        reason: String,
        actor: String,
        extra: Vec<Event>,
    ) -> Result<Revocation>;
    /// Move active leases to a terminal state (expired / completed) with an event each.
    async fn finish_leases(
        &self,
        ids: Vec<String>,
        state: LeaseState,
        reason: String,
    ) -> Result<Vec<Lease>>;
    /// Enable or disable a workload; disabling also revokes its leases.
    async fn set_workload_disabled(
        &self,
        name: &str,
        disabled: bool,
        actor: String,
        reason: String,
    ) -> Result<(Workload, Option<Revocation>)>;
    /// Offboard an owner: disable every workload they own, remember them as offboarded,
    /// and revoke their leases, in one durable write. Returns the revocation and the
    /// workloads that need a new owner.
    async fn offboard_owner(&self, owner: &str, actor: String)
        -> Result<(Revocation, Vec<String>)>;
    /// Owners offboarded so far, with when (unix seconds).
    fn offboarded_owners(&self) -> Result<Vec<(String, i64)>>;
    /// Evict a host: refuse it from now on and revoke what it holds.
    async fn evict_host(&self, name: &str, actor: String, reason: String) -> Result<Revocation>;
    /// Record host liveness (not flushed individually).
    async fn touch_host(&self, name: &str, at: i64) -> Result<()>;
    /// Append audit events.
    async fn append_events(&self, events: Vec<Event>) -> Result<()>;
    /// Whether [`Storage::prune`] would remove anything under `cut` (a cheap read).
    fn prune_due(&self, cut: Cutoff) -> Result<bool>;
    /// Forget up to `limit` each of the ended leases, audit events and revocation records
    /// older than `cut`, in one durable write. A lease whose kind has yet to undo its
    /// effect outside Leash is kept until it has.
    async fn prune(&self, cut: Cutoff, limit: usize) -> Result<Pruned>;

    /// Every record sealed under the master key, from every tree that holds sealed bytes
    /// (the list in `store/sealed.rs`).
    fn sealed_records(&self) -> Result<Vec<SealedRecord>>;
    /// Replace every sealed record by what `rewrap` makes of it (records it maps to
    /// `None` stay), and record `event`, in one durable write that is atomic across
    /// trees. Returns how many records were replaced. A failure of `rewrap` on any
    /// record changes nothing.
    async fn rewrap_sealed(&self, rewrap: Rewrap, event: Option<Event>) -> Result<usize>;
    /// Every version of secret `name`, oldest first (sealed).
    fn secret_versions(&self, name: &str) -> Result<Vec<SecretVersion>>;
    /// Version `version` of secret `name` (sealed).
    fn secret_version(&self, name: &str, version: u32) -> Result<Option<SecretVersion>>;
    /// Add a version to a secret (creating it when new), make it current and deal with
    /// older versions' leases, in one durable write. See [`SecretWrite`].
    async fn put_secret(&self, w: SecretWrite) -> Result<SecretWritten>;
    /// Disable a secret (revoking every lease of it, in the same write) or enable it.
    async fn set_secret_disabled(
        &self,
        name: &str,
        disabled: bool,
        actor: String,
        reason: String,
    ) -> Result<(Credential, Option<Revocation>)>;
    /// Remove a secret: revoke every lease of it, delete every version and its
    /// definition, in one durable write. Returns the revocation and the number of
    /// versions deleted.
    async fn remove_secret(&self, name: &str, actor: String) -> Result<(Revocation, u32)>;
    /// Scheduled revocations due at `now` (unix seconds), at most `limit`.
    fn scheduled_due(&self, now: i64, limit: usize) -> Result<Vec<ScheduledRevocation>>;
    /// Carry out a scheduled revocation and forget it, in one durable write; `None` when
    /// none of its leases was still active.
    async fn run_scheduled(&self, s: ScheduledRevocation) -> Result<Option<Revocation>>;
    /// Remove a credential of any kind, its sealed versions and scheduled revocations
    /// (revoking its leases in the same write when `revoke`; see `remove_credential` in
    /// `secrets`). Returns the revocation and how many sealed versions were deleted.
    async fn remove_credential(
        &self,
        name: &str,
        actor: String,
        reason: String,
        revoke: bool,
    ) -> Result<(Option<Revocation>, u32)>;

    /// A client of the HTTPS `/introspect` endpoint.
    fn introspection_client(&self, id: &str) -> Result<Option<IntrospectionClient>>;
    /// Every introspection client, by id.
    fn introspection_clients(&self) -> Result<Vec<IntrospectionClient>>;
    /// Record a new introspection client with its event; `Conflict` if the id is taken.
    async fn put_introspection_client(&self, c: IntrospectionClient, event: Event) -> Result<()>;
    /// Forget an introspection client with its event; `NotFound` if there is none.
    async fn remove_introspection_client(&self, id: &str, event: Event) -> Result<()>;
    /// Write `puts` to the blobs in order, then remove the blobs `removes`, then record
    /// `events`, in one durable write: key rotation (keys/lifecycle.rs) orders a new
    /// key's sealed blob before the record naming it, and a retired key's record before
    /// its blob's removal, so a crash between two of them is always safe.
    async fn put_key_blobs(
        &self,
        puts: Vec<(String, Vec<u8>)>,
        removes: Vec<String>,
        events: Vec<Event>,
    ) -> Result<()>;
    /// As [`Storage::put_key_blobs`], only while the blob `guard` still holds `expected`
    /// (`None`: absent), checked in the same write; otherwise `Conflict` and nothing is
    /// written. Replicas of a shared store change the key records by this
    /// read-check-write, so one replica's change is never overwritten by another's made
    /// from an older read.
    async fn put_key_blobs_if(
        &self,
        guard: &str,
        expected: Option<Vec<u8>>,
        puts: Vec<(String, Vec<u8>)>,
        removes: Vec<String>,
        events: Vec<Event>,
    ) -> Result<()>;

    /// A consistent copy of every tree, taken inside the writer so that it holds each
    /// batch whole or not at all (see `store/snapshot.rs`), for `leash-control-plane
    /// backup`. `Refused` on PostgreSQL.
    async fn snapshot(&self) -> Result<Snapshot>;
}

#[cfg(test)]
mod chain_tests;
#[cfg(test)]
mod queue_tests;
#[cfg(test)]
mod secret_tests;
#[cfg(test)]
mod tests;
