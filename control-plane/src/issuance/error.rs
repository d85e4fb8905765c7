//! Why a request was not issued: the refusals before policy and every other error, each
//! with the reason (so the exit code) the caller sees.

use leash_proto::names::excerpt;
use leash_proto::reason::Reason;

use super::request::{ResolveError, Resolved};
use crate::approval::ApprovalError;
use crate::config::Config;
use crate::kinds::KindError;
use crate::policy::PolicyError;
use crate::store::StoreError;
use leash_proto::workload_kind::WorkloadKind;

/// Why a request was not issued (or could not be explained).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// A name that does not exist (exit 4).
    #[error("{0}")]
    NotFound(String),
    /// A request no caller could make succeed, e.g. an audience and several audiences
    /// at once (exit 1).
    #[error("{0}")]
    Invalid(String),
    /// Refused before policy; [`Refusal::reason`] says whether denied or invalid.
    #[error("{message}")]
    Refused {
        /// Which check refused it.
        refusal: Refusal,
        /// What to tell the caller.
        message: String,
    },
    /// Policy, an approver or a used-up approval said no (exit 2).
    #[error("{0}")]
    Forbidden(String),
    /// The approval gate: pending (exit 3) or a store failure.
    #[error(transparent)]
    Approval(#[from] ApprovalError),
    /// The store failed (exit 5), or refused (exit 2).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Policy could not be evaluated (exit 5).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The credential's kind could not mint it.
    #[error(transparent)]
    Kind(#[from] KindError),
    /// A stored credential of a kind this build does not issue (exit 5).
    #[error("credential {credential:?} is of kind {kind:?}, which this control plane does not issue (it issues: {known})")]
    UnknownKind {
        /// The credential.
        credential: String,
        /// Its kind.
        kind: String,
        /// The kinds this build issues.
        known: String,
    },
}

impl IssueError {
    /// The reason (and so the exit code) the caller sees.
    pub fn reason(&self) -> Reason {
        match self {
            IssueError::NotFound(_) => Reason::NotFound,
            IssueError::Invalid(_) => Reason::Invalid,
            IssueError::Refused { refusal, .. } => refusal.reason(),
            IssueError::Forbidden(_) => Reason::Denied,
            IssueError::Approval(ApprovalError::Pending { .. }) => Reason::Pending,
            IssueError::Approval(ApprovalError::Denied(_)) => Reason::Denied,
            IssueError::Approval(_) => Reason::Unavailable,
            IssueError::Store(StoreError::NotFound(_)) => Reason::NotFound,
            IssueError::Store(StoreError::Conflict(_)) => Reason::Invalid,
            IssueError::Store(StoreError::Refused(_)) => Reason::Denied,
            IssueError::Store(_) | IssueError::Policy(_) | IssueError::UnknownKind { .. } => {
                Reason::Unavailable
            }
            IssueError::Kind(KindError::Invalid(_)) => Reason::Invalid,
            IssueError::Kind(_) => Reason::Unavailable,
        }
    }
}

impl From<ResolveError> for IssueError {
    fn from(e: ResolveError) -> IssueError {
        match e {
            ResolveError::NotFound(m) => IssueError::NotFound(m),
            ResolveError::Invalid(m) => IssueError::Invalid(m),
            ResolveError::Store(e) => IssueError::Store(e),
        }
    }
}

/// Why a request is refused before policy is asked, in the order the checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The workload is disabled.
    WorkloadDisabled,
    /// The workload's expiry has passed.
    WorkloadExpired,
    /// The workload may not run on this host (its host selectors).
    WrongHost,
    /// The attested caller lacks one of the workload's selectors.
    SelectorsNotMatched,
    /// A shared agent asked without saying on whose behalf.
    NeedsOnBehalfOf,
    /// A workload that is not a shared agent asked on someone's behalf.
    NotASharedAgent,
    /// The action is not one of the configured actions.
    UnknownAction,
    /// The credential does not allow this audience.
    AudienceNotAllowed,
    /// The TTL is above the credential's maximum.
    TtlAboveMax,
    /// The credential defines scopes, but none for this action.
    NoScopesForAction,
    /// The credential is disabled.
    CredentialDisabled,
    /// The credential serves only some actions, and not this one.
    ActionNotServed,
}

impl Refusal {
    /// Denied: a decision about this caller, audited as `denied` (exit 2). Invalid: a
    /// request no caller could make succeed (exit 1).
    pub fn reason(self) -> Reason {
        match self {
            Refusal::WorkloadDisabled
            | Refusal::WorkloadExpired
            | Refusal::WrongHost
            | Refusal::SelectorsNotMatched
            | Refusal::NeedsOnBehalfOf
            | Refusal::CredentialDisabled
            | Refusal::ActionNotServed => Reason::Denied,
            Refusal::NotASharedAgent
            | Refusal::UnknownAction
            | Refusal::AudienceNotAllowed
            | Refusal::TtlAboveMax
            | Refusal::NoScopesForAction => Reason::Invalid,
        }
    }

    /// What to tell the caller: what was wrong, and what to do.
    pub fn message(self, r: &Resolved, config: &Config) -> String {
        let (w, c) = (&r.workload, &r.credential);
        match self {
            Refusal::WorkloadDisabled => format!("workload {:?} is disabled", w.name),
            Refusal::WorkloadExpired => format!("workload {:?} has expired", w.name),
            Refusal::WrongHost => format!(
                "workload {:?} may not run on host {:?}",
                w.name, r.host.name
            ),
            Refusal::SelectorsNotMatched => format!(
                "the caller does not match the selectors of workload {:?}",
                w.name
            ),
            Refusal::NeedsOnBehalfOf => format!(
                "workload {:?} is a shared agent: every request must say --on-behalf-of",
                w.name
            ),
            Refusal::NotASharedAgent => format!(
                "workload {:?} is of kind {}, not {}: only a shared agent may act on behalf of someone; drop --on-behalf-of",
                w.name,
                excerpt(w.kind.as_str()),
                WorkloadKind::SharedAgent
            ),
            Refusal::UnknownAction => format!(
                "unknown action {}; the configured actions are {}",
                excerpt(&r.action),
                config.actions.join(", ")
            ),
            Refusal::AudienceNotAllowed if c.audiences.is_empty() => format!(
                "credential {:?} takes no audience (it is a {}); drop --audience {}",
                c.name,
                excerpt(&c.kind),
                excerpt(&r.audience)
            ),
            Refusal::AudienceNotAllowed => format!(
                "audience {} is not allowed for credential {:?}; allowed: {}",
                excerpt(&r.audience),
                c.name,
                c.audiences.join(", ")
            ),
            // Only secrets can be disabled (`leashctl secret disable`).
            Refusal::CredentialDisabled => format!(
                "credential {:?} is disabled; an admin enables it again with `leashctl secret enable {}`",
                c.name, c.name
            ),
            Refusal::ActionNotServed => format!(
                "credential {:?} serves only the actions {}; action {} is not one of them",
                c.name,
                c.actions.join(", "),
                excerpt(&r.action)
            ),
            Refusal::TtlAboveMax => format!(
                "requested TTL {}s is above the max_ttl of {:?} ({}s); ask for less",
                r.ttl, c.name, c.max_ttl
            ),
            Refusal::NoScopesForAction => format!(
                "credential {:?} defines no scopes for action {}; it has scopes for: {}",
                c.name,
                excerpt(&r.action),
                c.scopes.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        }
    }
}
