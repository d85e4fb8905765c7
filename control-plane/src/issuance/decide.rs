//! The decision: the checks made before policy, then policy. [`decide`] is the one
//! function that decides a request; `Issue`, `policy explain` and the re-evaluation after
//! `policy apply` all call it, so they cannot disagree.

use super::error::IssueError;
pub use super::error::Refusal;
use super::request::{Caller, Resolved};
use crate::config::Config;
use crate::model::{hosts_match, Lease};
use crate::policy::{Engine, Verdict};

/// The checks made before policy, all of them, in order.
pub fn refusals(r: &Resolved, config: &Config) -> Vec<Refusal> {
    let (w, c) = (&r.workload, &r.credential);
    let mut out = Vec::new();
    if w.disabled {
        out.push(Refusal::WorkloadDisabled);
    }
    if w.expires_at != 0 && w.expires_at <= r.now {
        out.push(Refusal::WorkloadExpired);
    }
    if r.host_known && !hosts_match(&w.hosts, &r.host.labels) {
        out.push(Refusal::WrongHost);
    }
    // Only a live caller is matched against the selectors: a hypothetical one is what
    // they describe, and an issued lease was matched when it was issued.
    if let Caller::Attested(a) = &r.caller {
        if !w.selectors.iter().all(|sel| a.selectors.contains(sel)) {
            out.push(Refusal::SelectorsNotMatched);
        }
    }
    let shared_agent = w.kind.acts_on_behalf();
    if shared_agent && r.on_behalf_of.is_none() {
        out.push(Refusal::NeedsOnBehalfOf);
    }
    if !shared_agent && r.on_behalf_of.is_some() {
        out.push(Refusal::NotASharedAgent);
    }
    if c.disabled {
        out.push(Refusal::CredentialDisabled);
    }
    if !config.actions.contains(&r.action) {
        out.push(Refusal::UnknownAction);
    } else if !c.actions.is_empty() && !c.actions.contains(&r.action) {
        out.push(Refusal::ActionNotServed);
    }
    // A credential without audiences (a secret) takes requests that name none.
    let audience_ok = if c.audiences.is_empty() {
        r.audience.is_empty()
    } else {
        c.audiences.contains(&r.audience)
    };
    if !audience_ok {
        out.push(Refusal::AudienceNotAllowed);
    }
    if r.ttl > c.max_ttl {
        out.push(Refusal::TtlAboveMax);
    }
    if !c.scopes.is_empty() && !c.scopes.contains_key(&r.action) {
        out.push(Refusal::NoScopesForAction);
    }
    out
}

/// What was decided about a request.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Refusals before policy, in the order the checks run (empty: none).
    pub refusals: Vec<Refusal>,
    /// What policy said; `None` when the action is unknown (policy cannot be asked).
    pub verdict: Option<Verdict>,
}

/// Where a decision leaves the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Refused before policy (the first refusal).
    Refused(Refusal),
    /// Policy does not permit it; the message says why.
    Forbidden(String),
    /// Policy permits it once a human approves; the policies that require approval.
    NeedsApproval(Vec<String>),
    /// Permitted.
    Allowed,
}

/// Decide `r`: the checks before policy, then policy. The one function that decides
/// issuance.
pub fn decide(policy: &Engine, config: &Config, r: &Resolved) -> Result<Decision, IssueError> {
    let refusals = refusals(r, config);
    let verdict = if refusals.contains(&Refusal::UnknownAction) {
        None
    } else {
        let started = std::time::Instant::now();
        let v = policy.decide(&r.workload, &r.credential, &r.action, &r.host, &r.facts)?;
        let decision = match (v.allow, v.approval_required) {
            (true, false) => "allow",
            (true, true) => "approval",
            (false, _) => "deny",
        };
        crate::metrics::decided(decision, started.elapsed());
        Some(v)
    };
    Ok(Decision { refusals, verdict })
}

impl Decision {
    /// Where this leaves the request: the first refusal, else policy's answer.
    pub fn outcome(&self, r: &Resolved) -> Outcome {
        if let Some(f) = self.refusals.first() {
            return Outcome::Refused(*f);
        }
        let Some(v) = &self.verdict else {
            return Outcome::Refused(Refusal::UnknownAction);
        };
        let (w, c, action) = (&r.workload.name, &r.credential.name, &r.action);
        if !v.allow {
            return Outcome::Forbidden(if v.reasons.is_empty() {
                format!(
                    "no policy permits workload {w:?} to {action} credential {c:?} (default deny); grant it with `leashctl workload add … --allow {c}` or a Cedar policy"
                )
            } else {
                format!(
                    "forbidden by policy {} for workload {w:?}, credential {c:?}, action {action}",
                    v.reasons.join(", ")
                )
            });
        }
        if v.approval_required {
            return Outcome::NeedsApproval(v.reasons.clone());
        }
        Outcome::Allowed
    }

    /// Whether an issued `lease` stays permitted: nothing refuses it and policy allows
    /// it, after approval when it was issued under one.
    pub fn keeps(&self, lease: &Lease) -> bool {
        self.refusals.is_empty()
            && self
                .verdict
                .as_ref()
                .is_some_and(|v| v.allow && (!v.approval_required || lease.approval.is_some()))
    }
}
