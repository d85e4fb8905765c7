//! The records the control plane keeps, as stored (serde JSON in sled) and as validated
//! from admin input. Nothing here holds an issued token: leases keep a fingerprint only.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use leash_proto::workload_kind::WorkloadKind;
use serde::{Deserialize, Serialize};

mod names;
pub use names::{hosts_match, selector_kind, valid_name, SELECTOR_KINDS};

/// Selector kinds that carry the security boundary; every workload needs one of them.
pub const ID_SELECTOR_KINDS: &[&str] = &["uid", "user", "gid", "group"];

/// A non-human identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// Path-like name, e.g. `ci/deploy-web`.
    pub name: String,
    /// Accountable team or person.
    pub owner: String,
    /// Its kind; stored as its text (`shared-agent`).
    pub kind: WorkloadKind,
    /// `unix:uid:1001` …; all must be among the caller's.
    pub selectors: Vec<String>,
    /// Host-label selector; empty means every host.
    #[serde(default)]
    pub hosts: BTreeMap<String, String>,
    /// Credentials this workload may get: each becomes a link of the `--allow` policy
    /// template (see `policy`).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Unix seconds after which it gets nothing; 0 for never.
    #[serde(default)]
    pub expires_at: i64,
    /// Disabled workloads get no new credentials.
    #[serde(default)]
    pub disabled: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Seconds an X.509-SVID of this workload lives (`--x509-svid-ttl`), within the
    /// credential's max_ttl; 0 for the credential's default ttl.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub x509_svid_ttl: u32,
}

/// What can be issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Credential {
    /// Name, e.g. `deploy-api`.
    pub name: String,
    /// Its kind: `jwt`, `secret`.
    pub kind: String,
    /// Allowed audiences; the first is the default.
    pub audiences: Vec<String>,
    /// Seconds.
    pub default_ttl: u32,
    /// Seconds.
    pub max_ttl: u32,
    /// Action used when a request names none.
    pub default_action: String,
    /// action -> scopes.
    #[serde(default)]
    pub scopes: BTreeMap<String, Vec<String>>,
    /// Unix seconds.
    pub created_at: i64,
    /// Accountable team or person (every secret has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// What it is for, shown to admins.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Labels; policy sees them as the credential's tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The actions it serves; empty for every configured action.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    /// A disabled credential is issued to nobody.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// How a secret's value is written: `text`, `json` or `env` (secrets only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub format: String,
    /// The version new leases of a secret get (secrets only; 0 otherwise).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub current_version: u32,
    /// The non-secret parts of a `postgres` credential (its admin connection string is a
    /// sealed version, `current_version`, like a secret's value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresDef>,
}

/// A `postgres` credential's definition, without the admin connection string's secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PostgresDef {
    /// Role name template, e.g. `leash_{workload}_{lease}`.
    pub role_template: String,
    /// action -> SQL run when a role is created for it.
    pub grants: BTreeMap<String, String>,
    /// SQL run before a role is dropped (may be empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revoke_sql: String,
    /// Each role's `CONNECTION LIMIT`.
    pub connection_limit: u32,
    /// The admin role's name.
    pub user: String,
    /// Host name or address; for a Unix socket, its directory.
    pub host: String,
    /// TCP port (also names a Unix socket's file).
    pub port: u16,
    /// Whether `host` is a Unix socket directory.
    #[serde(default)]
    pub socket: bool,
    /// Database name.
    pub dbname: String,
    /// The `sslmode` the connection string asked for (empty for a Unix socket).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sslmode: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The associated data a secret's version is sealed under: its name and version, so a
/// sealed value cannot be passed off as another secret's or another version's.
pub fn secret_aad(name: &str, version: u32) -> String {
    format!("secret/{name}/{version}")
}

/// One version of a brokered secret, as stored. The value is only ever here sealed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretVersion {
    /// 1, 2, …
    pub version: u32,
    /// Unix seconds.
    pub created_at: i64,
    /// Admin name.
    pub created_by: String,
    /// Bytes of the value.
    pub size: u32,
    /// First 12 hex of SHA-256 of the value: safe to show and log.
    pub fingerprint: String,
    /// The value sealed by the master key under [`secret_aad`].
    pub sealed: Vec<u8>,
}

impl fmt::Debug for SecretVersion {
    /// Never the sealed bytes (they are no use to a reader of a log, and long).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretVersion")
            .field("version", &self.version)
            .field("created_at", &self.created_at)
            .field("created_by", &self.created_by)
            .field("size", &self.size)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Leases to revoke later (`secret rotate --grace`), durably, so a restart keeps the
/// promise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledRevocation {
    /// Unix seconds at which to revoke.
    pub at: i64,
    /// The secret that was rotated.
    pub credential: String,
    /// The version it was rotated to.
    pub version: u32,
    /// The leases of older versions that were active at the rotation.
    pub lease_ids: Vec<String>,
    /// Why (recorded with the revocation).
    pub reason: String,
    /// Who rotated.
    pub actor: String,
}

/// An enrolled machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Unique, never reused.
    pub name: String,
    /// Labels bound at enrollment.
    pub labels: BTreeMap<String, String>,
    /// Unix seconds.
    pub enrolled_at: i64,
    /// Unix seconds of the last call or heartbeat ack we recorded.
    pub last_seen: i64,
    /// Evicted hosts are refused from then on.
    #[serde(default)]
    pub evicted: bool,
    /// Serial (hex) of the current certificate.
    pub cert_serial: String,
    /// Unix seconds.
    pub cert_not_after: i64,
}

/// A join token as stored: only the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    /// Public id.
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// Bound host name, if any.
    pub name: Option<String>,
    /// Bound labels.
    pub labels: BTreeMap<String, String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// The host that used it, once used.
    pub used_by: Option<String>,
    /// Revoked by an admin.
    pub revoked: bool,
}

impl JoinTokenRecord {
    /// `active`, `used`, `revoked` or `expired`.
    pub fn state(&self, now: i64) -> &'static str {
        if self.used_by.is_some() {
            "used"
        } else if self.revoked {
            "revoked"
        } else if now >= self.expires_at {
            "expired"
        } else {
            "active"
        }
    }
}

/// Lease states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Issued and not yet taken back.
    Active,
    /// Taken back by an admin, a disable, a policy change or an eviction.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Its task ended.
    Completed,
}

impl LeaseState {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Active => "active",
            LeaseState::Revoked => "revoked",
            LeaseState::Expired => "expired",
            LeaseState::Completed => "completed",
        }
    }
}

/// One issued credential. The token itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Also the token's `jti`.
    pub id: String,
    /// Workload name.
    pub workload: String,
    /// Credential name.
    pub credential: String,
    /// Action class.
    pub action: String,
    /// `aud`.
    pub audience: String,
    /// Host name.
    pub host: String,
    /// Task id, when issued inside one.
    #[serde(default)]
    pub task: Option<String>,
    /// Principal a shared agent acts for.
    #[serde(default)]
    pub on_behalf_of: Option<String>,
    /// The approval it was issued under, if one was needed.
    #[serde(default)]
    pub approval: Option<String>,
    /// The request context it was issued under (for re-evaluation). Typed, so writing
    /// and reading a lease builds no JSON tree; stored as a JSON object.
    #[serde(default)]
    pub context: Option<Facts>,
    /// Policy version at issue.
    #[serde(default)]
    pub policy_version: u64,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// The control plane's sequence number at issue.
    pub seq: u64,
    /// State.
    pub state: LeaseState,
    /// Why it left `active`.
    #[serde(default)]
    pub reason: Option<String>,
    /// First 12 hex of SHA-256 of the token: safe to show.
    pub fingerprint: String,
    /// Its credential kind has something outside Leash to undo when it ends (see
    /// `kinds::CredentialKind::end`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ends_outside: bool,
    /// The version of a brokered secret the lease holds (0 for other kinds).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u32,
    /// Every audience, when several were asked for one token (`audience` is then the
    /// first); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
}

/// An ended lease whose kind has yet to undo what it set up outside Leash (the `ended`
/// queue's value; see `issuance::ends`). What an admin sees of it: `lease show`, `revoke
/// --wait`, `credential show`. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PendingEnd {
    /// The lease (the queue's key; filled on read).
    #[serde(skip)]
    pub lease: String,
    /// The lease's credential.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential: String,
    /// Unix ms at which the lease was queued (0 for a queue entry older than this field).
    #[serde(default)]
    pub since_ms: i64,
    /// End steps that failed so far.
    #[serde(default)]
    pub attempts: u32,
    /// What the last failed one said.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    /// Unix ms of the last failed attempt (0: none yet).
    #[serde(default)]
    pub last_attempt_ms: i64,
}

/// The request an issuance (or an explanation) is decided on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Facts {
    /// Attested uid.
    pub uid: i64,
    /// Attested user name.
    #[serde(default)]
    pub user: String,
    /// Attested exe path.
    #[serde(default)]
    pub exe_path: String,
    /// Attested exe sha256.
    #[serde(default)]
    pub sha256: String,
    /// Requested TTL.
    pub ttl_seconds: i64,
    /// Audience.
    #[serde(default)]
    pub audience: String,
    /// Task name, inside a task.
    #[serde(default)]
    pub task: Option<String>,
    /// On-behalf-of principal.
    #[serde(default)]
    pub on_behalf_of: String,
    /// Unix seconds of the decision.
    pub now: i64,
}

impl Facts {
    /// The facts of an admin's "what if" question: attested ids come from the
    /// workload's own selectors.
    pub fn for_explain(w: &Workload, ttl_seconds: i64, audience: String, now: i64) -> Facts {
        let sel = |kind: &str| {
            w.selectors
                .iter()
                .find_map(|s| s.strip_prefix(&format!("unix:{kind}:")).map(str::to_string))
        };
        Facts {
            uid: sel("uid").and_then(|u| u.parse().ok()).unwrap_or(-1),
            user: sel("user").unwrap_or_default(),
            exe_path: sel("path").unwrap_or_default(),
            sha256: sel("sha256").unwrap_or_default(),
            ttl_seconds,
            audience,
            task: None,
            on_behalf_of: String::new(),
            now,
        }
    }
}

/// One applied policy version, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// Version (1, 2, …).
    pub version: u64,
    /// The file as applied.
    pub text: String,
    /// Unix seconds.
    pub applied_at: i64,
    /// Admin name.
    pub applied_by: String,
}

/// Where an approval stands. Stored, and shown, as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    /// Waiting for an approver.
    Pending,
    /// Approved for a time and a number of uses.
    Approved,
    /// Denied, with a reason the requester sees.
    Denied,
    /// Nobody decided within `approval_timeout` (shown, never stored).
    Expired,
}

impl ApprovalState {
    /// Every state.
    pub const ALL: [ApprovalState; 4] = [
        ApprovalState::Pending,
        ApprovalState::Approved,
        ApprovalState::Denied,
        ApprovalState::Expired,
    ];

    /// The state as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
            ApprovalState::Expired => "expired",
        }
    }
}

impl fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text that names no approval state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown approval state {0:?}; the states are pending, approved, denied and expired")]
pub struct UnknownApprovalState(pub String);

impl FromStr for ApprovalState {
    type Err = UnknownApprovalState;

    fn from_str(s: &str) -> Result<ApprovalState, UnknownApprovalState> {
        ApprovalState::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownApprovalState(s.to_string()))
    }
}

/// A request waiting for (or decided by) a human.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Id, e.g. `ap-1a2b3c4d5e6f`.
    pub id: String,
    /// Workload.
    pub workload: String,
    /// Credential.
    pub credential: String,
    /// Action class.
    pub action: String,
    /// Host that asked.
    pub host: String,
    /// On-behalf-of principal (empty: none).
    #[serde(default)]
    pub on_behalf_of: String,
    /// Requested TTL (seconds); an approval covers requests up to this.
    pub ttl: u32,
    /// Audience asked for.
    pub audience: String,
    /// Policies that required approval.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Unix seconds.
    pub requested_at: i64,
    /// Where it stands; stored as its text (`pending`, …).
    pub state: ApprovalState,
    /// Who decided.
    #[serde(default)]
    pub decided_by: Option<String>,
    /// Why (denials).
    #[serde(default)]
    pub reason: Option<String>,
    /// Approved until (unix seconds).
    #[serde(default)]
    pub valid_until: i64,
    /// Uses left.
    #[serde(default)]
    pub uses_left: u32,
}

impl Approval {
    /// Whether this approval is about the same request.
    pub fn same_request(&self, other: &Approval) -> bool {
        self.workload == other.workload
            && self.credential == other.credential
            && self.action == other.action
            && self.host == other.host
            && self.on_behalf_of == other.on_behalf_of
            && self.ttl == other.ttl
            && self.audience == other.audience
    }
}

/// What a revocation covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevocationTarget {
    /// One lease.
    Lease(String),
    /// Every lease of a workload.
    Workload(String),
    /// Every lease of a credential.
    Credential(String),
    /// Every lease of every workload of an owner.
    Owner(String),
    /// Every lease on a host.
    Host(String),
    /// Everything.
    All,
    /// Every lease of a task.
    Task(String),
    /// These leases (a policy change no longer permits them).
    Leases(Vec<String>),
}

impl RevocationTarget {
    /// `kind=value` for messages.
    pub fn describe(&self) -> String {
        match self {
            RevocationTarget::Lease(v) => format!("lease {v}"),
            RevocationTarget::Workload(v) => format!("workload {v}"),
            RevocationTarget::Credential(v) => format!("credential {v}"),
            RevocationTarget::Owner(v) => format!("owner {v}"),
            RevocationTarget::Host(v) => format!("host {v}"),
            RevocationTarget::All => "everything".into(),
            RevocationTarget::Task(v) => format!("task {v}"),
            RevocationTarget::Leases(v) => format!("{} lease(s)", v.len()),
        }
    }

    /// Whether a lease (with its workload's owner) falls under this target.
    pub fn covers(&self, lease: &Lease, owner: Option<&str>) -> bool {
        match self {
            RevocationTarget::Lease(id) => &lease.id == id,
            RevocationTarget::Workload(w) => &lease.workload == w,
            RevocationTarget::Credential(c) => &lease.credential == c,
            RevocationTarget::Owner(o) => owner == Some(o.as_str()),
            RevocationTarget::Host(h) => &lease.host == h,
            RevocationTarget::All => true,
            RevocationTarget::Task(t) => lease.task.as_deref() == Some(t.as_str()),
            RevocationTarget::Leases(ids) => ids.contains(&lease.id),
        }
    }
}

/// A durable revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Its sequence number.
    pub seq: u64,
    /// What it covers.
    pub target: RevocationTarget,
    /// Why.
    pub reason: String,
    /// Who.
    pub actor: String,
    /// Unix ms.
    pub at_ms: i64,
    /// Leases it moved out of `active`.
    pub lease_ids: Vec<String>,
    /// Hosts that may hold one of them (the ones to wait for).
    pub hosts: Vec<String>,
    /// For each of `lease_ids`, the index in `hosts` of the host it was issued to, in
    /// ascending order (`lease_ids` is grouped by host to match), so a host is sent only
    /// its own lease ids, found by binary search. Empty in revocations recorded before it
    /// existed: every host is then sent every id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lease_hosts: Vec<u32>,
}

impl Revocation {
    /// The lease ids issued to `host`: the ones its agent may hold.
    pub fn lease_ids_for(&self, host: &str) -> Vec<String> {
        if self.lease_hosts.len() != self.lease_ids.len() {
            return self.lease_ids.clone();
        }
        let Ok(idx) = self.hosts.binary_search_by(|h| h.as_str().cmp(host)) else {
            return Vec::new();
        };
        let idx = idx as u32;
        let start = self.lease_hosts.partition_point(|h| *h < idx);
        let end = self.lease_hosts.partition_point(|h| *h <= idx);
        self.lease_ids[start..end].to_vec()
    }
}

/// One entry of the change log that Sync streams replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Change {
    /// A workload was added or changed.
    WorkloadPut {
        /// Its sequence number.
        seq: u64,
        /// The new record.
        workload: Workload,
    },
    /// A workload was removed.
    WorkloadRemoved {
        /// Its sequence number.
        seq: u64,
        /// Its name.
        name: String,
    },
    /// Credentials were taken back.
    Revoked {
        /// The revocation (its own `seq`).
        revocation: Revocation,
    },
    /// A host was evicted.
    HostEvicted {
        /// Its sequence number.
        seq: u64,
        /// The host.
        name: String,
        /// Why.
        reason: String,
    },
}

impl Change {
    /// The sequence number of this change.
    pub fn seq(&self) -> u64 {
        match self {
            Change::WorkloadPut { seq, .. }
            | Change::WorkloadRemoved { seq, .. }
            | Change::HostEvicted { seq, .. } => *seq,
            Change::Revoked { revocation } => revocation.seq,
        }
    }
}

/// An audit event. Secrets never appear here; a short fingerprint may.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the audit log (assigned by the store).
    #[serde(default)]
    pub id: u64,
    /// Unix ms at which it was recorded (assigned by the store when 0).
    pub at_ms: i64,
    /// `issued`, `denied`, `enrolled`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// Who caused it (admin name, host, or `control-plane`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The admin actor's role (`viewer`, `approver`, `operator`, `admin`); admin actions only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub actor_role: Option<String>,
    /// How the admin actor connected: `socket` or `mtls`; admin actions only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub actor_via: Option<String>,
    /// Host concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Workload concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Credential concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Lease concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// Task concerned.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub task: Option<String>,
    /// Approval concerned.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub approval: Option<String>,
    /// Why (denials, revocations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Anything else worth recording (never a secret).
    #[serde(skip_serializing_if = "serde_json::Value::is_null", default)]
    pub detail: serde_json::Value,
    /// The `hash` of the event before it in the audit chain (set by the store; absent on
    /// events written before the chain began). See `audit_chain.rs`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub prev_hash: Option<String>,
    /// SHA-256 (hex) of this event's canonical encoding, `prev_hash` included (set by the
    /// store). See `audit_chain.rs`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hash: Option<String>,
}

impl Event {
    /// A new event of `kind`. It is dated (`at_ms`) when the store records it, by the
    /// store's clock, as it is numbered then (`id`).
    pub fn new(kind: &str) -> Event {
        Event {
            id: 0,
            at_ms: 0,
            kind: kind.to_string(),
            actor: None,
            actor_role: None,
            actor_via: None,
            host: None,
            workload: None,
            credential: None,
            lease: None,
            task: None,
            approval: None,
            reason: None,
            detail: serde_json::Value::Null,
            prev_hash: None,
            hash: None,
        }
    }

    /// Builder: actor.
    pub fn actor(mut self, v: impl Into<String>) -> Self {
        self.actor = Some(v.into());
        self
    }
    /// Builder: host.
    pub fn host(mut self, v: impl Into<String>) -> Self {
        self.host = Some(v.into());
        self
    }
    /// Builder: workload.
    pub fn workload(mut self, v: impl Into<String>) -> Self {
        self.workload = Some(v.into());
        self
    }
    /// Builder: credential.
    pub fn credential(mut self, v: impl Into<String>) -> Self {
        self.credential = Some(v.into());
        self
    }
    /// Builder: lease.
    pub fn lease(mut self, v: impl Into<String>) -> Self {
        self.lease = Some(v.into());
        self
    }
    /// Builder: task.
    pub fn task(mut self, v: impl Into<String>) -> Self {
        self.task = Some(v.into());
        self
    }
    /// Builder: approval.
    pub fn approval(mut self, v: impl Into<String>) -> Self {
        self.approval = Some(v.into());
        self
    }
    /// Builder: reason.
    pub fn reason(mut self, v: impl Into<String>) -> Self {
        self.reason = Some(v.into());
        self
    }
    /// Builder: detail.
    pub fn detail(mut self, v: serde_json::Value) -> Self {
        self.detail = v;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("ci/deploy-web"));
        assert!(!valid_name("ci//x"));
        assert!(!valid_name("../x"));
        assert!(!valid_name("a b"));
    }

    #[test]
    fn selectors() {
        assert_eq!(selector_kind("unix:uid:1001"), Some("uid"));
        assert_eq!(selector_kind("unix:uid:abc"), None);
        assert_eq!(selector_kind("unix:path:/usr/bin/bash"), Some("path"));
        assert_eq!(selector_kind("k8s:ns:x"), None);
        assert_eq!(
            selector_kind(&format!("unix:sha256:{}", "a".repeat(64))),
            Some("sha256")
        );
    }

    #[test]
    fn approval_states_are_stored_shown_and_parsed_as_the_same_text() {
        for st in ApprovalState::ALL {
            let json = serde_json::to_string(&st).expect("encode");
            assert_eq!(json, format!("\"{}\"", st.as_str()));
            assert_eq!(
                serde_json::from_str::<ApprovalState>(&json).expect("decode"),
                st
            );
            assert_eq!(st.as_str().parse::<ApprovalState>(), Ok(st));
            assert_eq!(st.to_string(), st.as_str());
        }
        let names = ApprovalState::ALL.map(ApprovalState::as_str);
        assert_eq!(names, ["pending", "approved", "denied", "expired"]);
        assert!(serde_json::from_str::<ApprovalState>("\"Approved\"").is_err());
        assert_eq!(
            "later".parse::<ApprovalState>().unwrap_err().to_string(),
            "unknown approval state \"later\"; the states are pending, approved, denied and expired"
        );
    }

    #[test]
    fn host_selector() {
        let sel: BTreeMap<_, _> = [("role".to_string(), "ci".to_string())].into();
        let mut labels = BTreeMap::new();
        assert!(!hosts_match(&sel, &labels));
        labels.insert("role".into(), "ci".into());
        assert!(hosts_match(&sel, &labels));
        assert!(hosts_match(&BTreeMap::new(), &labels));
    }
}
