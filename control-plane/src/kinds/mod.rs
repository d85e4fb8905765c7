//! Credential kinds: what differs between one kind of credential and another.
//!
//! Everything a credential goes through is the same for every kind and lives in
//! `issuance`: resolving the request, the checks before policy, policy, approval, the
//! lease and its audit events, revocation. A kind answers only four questions:
//!
//! 1. [`CredentialKind::validate`]: is this definition (`leashctl credential add …`) one
//!    the kind can issue?
//! 2. [`CredentialKind::mint`]: the credential itself, for a request that was decided.
//! 3. [`Material`]: what the agent caches and serves for it.
//! 4. [`CredentialKind::end`]: what must happen outside Leash once a lease has ended, by
//!    whatever path (revocation, expiry, task completion, a policy change, offboarding,
//!    eviction). Every ending path marks the lease in the store, which queues it for
//!    this step when [`CredentialKind::ends_outside`] says so (see `issuance::ends`).
//!
//! Kinds are trait objects in a [`Registry`] keyed by the name `credential add --kind`
//! takes. A new kind is one module here and one line in [`Registry::standard`]; nothing
//! in the handlers or the issuance pipeline names a kind. (An enum over kinds would make
//! each new kind edit every `match`; a kind that talks to an outside system, such as a
//! database, needs async calls, hence `async_trait`.)

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use leash_proto::v1;

use crate::config::Config;
use crate::keys::{Keys, MasterKey};
use crate::model::{Credential, Lease, Workload};

pub mod jwt;
pub mod postgres;
pub mod secret;
#[cfg(test)]
pub mod testing;
pub mod x509;

/// What a kind could not do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KindError {
    /// A definition or a request the kind cannot take (exit 1).
    #[error("{0}")]
    Invalid(String),
    /// The kind could not do it now, e.g. an outside system did not answer (exit 5).
    #[error("{0}")]
    Unavailable(String),
}

/// What the kinds may use.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    /// Signing keys and the CA.
    pub keys: &'a Keys,
    /// The key that seals what is stored encrypted (a brokered secret's value).
    pub master: &'a MasterKey,
    /// Durable state (a kind reads its own records, e.g. a secret's versions).
    pub store: &'a dyn crate::store::Storage,
    /// The control plane's configuration.
    pub config: &'a Config,
}

/// A request that was resolved, checked, decided and (if it had to be) approved, as a
/// kind sees it.
#[derive(Debug, Clone, Copy)]
pub struct MintRequest<'a> {
    /// The lease id (also a JWT's `jti`).
    pub lease_id: &'a str,
    /// The credential's definition.
    pub credential: &'a Credential,
    /// The workload it is for.
    pub workload: &'a Workload,
    /// The host it is issued to.
    pub host: &'a str,
    /// The action class.
    pub action: &'a str,
    /// The audience (the first, when several were asked).
    pub audience: &'a str,
    /// Every audience, when several were asked (empty otherwise).
    pub audiences: &'a [String],
    /// The certificate signing request (PKCS#10, DER) the agent sent (kind `x509`).
    pub csr_der: &'a [u8],
    /// Space-separated scopes for the action, when the credential defines them.
    pub scope: Option<&'a str>,
    /// Seconds it is valid for.
    pub ttl: u32,
    /// The task id, inside a task.
    pub task: Option<&'a str>,
    /// The principal a shared agent acts for.
    pub on_behalf_of: Option<&'a str>,
    /// Unix seconds of the decision.
    pub now: i64,
}

/// What the agent caches and serves for a lease.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Material {
    /// One opaque text (a JWT), served as `token`.
    Token(String),
    /// A certificate chain, leaf first, DER (an X.509-SVID), served as
    /// `certificate_chain_der` with an empty `token`.
    CertificateChain(Vec<Vec<u8>>),
}

impl Material {
    /// The text the agent serves as the credential (empty for a certificate chain).
    pub fn into_token(self) -> String {
        match self {
            Material::Token(t) => t,
            Material::CertificateChain(_) => String::new(),
        }
    }

    /// `(token, certificate_chain_der)` as `IssueResponse` carries them.
    pub fn into_parts(self) -> (String, Vec<Vec<u8>>) {
        match self {
            Material::Token(t) => (t, Vec::new()),
            Material::CertificateChain(c) => (String::new(), c),
        }
    }
}

impl fmt::Debug for Material {
    /// Never the secret itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Material::Token(t) => write!(f, "Token(<{} bytes>)", t.len()),
            Material::CertificateChain(c) => {
                write!(f, "CertificateChain(<{} certificates>)", c.len())
            }
        }
    }
}

/// Something a kind did outside Leash, for the lease's timeline in the audit log
/// (`role-created`, `role-dropped`, …). Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindEvent {
    /// The event's type.
    pub kind: &'static str,
    /// What is worth recording about it (the event's `detail`).
    pub detail: serde_json::Value,
}

/// What [`CredentialKind::reconcile`] undid: per lease id (empty when the thing it undid
/// named none), the event to record.
pub type Reconciled = Vec<(String, KindEvent)>;

/// A credential, minted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    /// What the agent caches and serves.
    pub material: Material,
    /// Unix seconds.
    pub expires_at: i64,
    /// A short digest that is safe to show and log.
    pub fingerprint: String,
    /// The version served, for kinds whose credential has versions (a brokered secret);
    /// 0 otherwise.
    pub version: u32,
    /// How the value is written (a brokered secret: `text`, `json`, `env`); empty
    /// otherwise.
    pub format: String,
    /// What minting did outside Leash, recorded with the lease in the same durable write.
    pub events: Vec<KindEvent>,
}

/// One kind of credential. See the module documentation.
#[async_trait::async_trait]
pub trait CredentialKind: Send + Sync + fmt::Debug {
    /// The name `credential add --kind` takes.
    fn name(&self) -> &'static str;

    /// Check a definition before `credential add` stores it; the message says what to
    /// change.
    fn validate(&self, def: &v1::Credential) -> Result<(), KindError>;

    /// Mint the credential for a decided request.
    async fn mint(&self, env: Env<'_>, req: MintRequest<'_>) -> Result<Minted, KindError>;

    /// Whether one credential of this kind can name several audiences (a JWT's `aud`
    /// array). Requests for several are refused for the others.
    fn takes_audiences(&self) -> bool {
        false
    }

    /// Whether a lease of this kind leaves something outside Leash to undo when it ends.
    /// Only then is the lease queued for [`CredentialKind::end`].
    fn ends_outside(&self) -> bool {
        false
    }

    /// Undo, outside Leash, what [`CredentialKind::mint`] set up. Called once per ended
    /// lease after the ending is durable, and again after a failure or a restart until it
    /// succeeds, so it must be idempotent. Also called, best effort, for a lease that was
    /// minted but never written. Returns the events to record on the lease's timeline.
    async fn end(&self, _env: Env<'_>, _lease: &Lease) -> Result<Vec<KindEvent>, KindError> {
        Ok(Vec::new())
    }

    /// The event recorded on the lease's timeline each time [`CredentialKind::end`] fails.
    fn end_failed_event(&self) -> &'static str {
        "end-failed"
    }

    /// How admins are told about the pending end step (`lease show`, `revoke --wait`,
    /// `credential show`): one noun, e.g. `drop` for a database role.
    fn end_step(&self) -> &'static str {
        "end"
    }

    /// Look outside Leash for what this kind set up for `credential` and whose lease is
    /// no longer active (a crash between mint and the lease write, a restore from backup,
    /// something re-created by hand), and undo it. Runs at start and every few minutes.
    /// Must never touch what it did not set up, nor what belongs to a lease being issued
    /// right now.
    async fn reconcile(
        &self,
        _env: Env<'_>,
        _credential: &Credential,
    ) -> Result<Reconciled, KindError> {
        Ok(Vec::new())
    }
}

/// The kinds this control plane issues, by name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn CredentialKind>>,
}

impl Registry {
    /// Every kind this build issues. Adding a kind: its module above, and one line here.
    pub fn standard() -> Registry {
        let mut r = Registry::default();
        r.add(jwt::Jwt);
        r.add(secret::Secret);
        r.add(x509::X509);
        r.add(postgres::Postgres::new(crate::clock::Clock::system()));
        r
    }

    /// Register `kind` under its name (replacing one of the same name).
    pub fn add(&mut self, kind: impl CredentialKind + 'static) {
        self.kinds.insert(kind.name(), Arc::new(kind));
    }

    /// The kind named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn CredentialKind>> {
        self.kinds.get(name)
    }

    /// The names of every registered kind, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }
}
