//! Runtime policy in Cedar, evaluated on every issuance.
//!
//! Principal `Leash::Workload`, action `Leash::Action::"<class>"`, resource
//! `Leash::Credential`, validated against the schema in [`schema_text`]. Default deny;
//! `forbid` wins. A `permit` annotated `@approval("required")` allows only after a human
//! approves; if an unannotated permit also matches, no approval is needed.
//!
//! `leashctl workload add --allow C` is sugar for a link of the template
//! `permit(principal == ?principal, action, resource == ?resource);` — those links are
//! made from each workload's allow list whenever the policy is compiled, so entries made
//! before policies existed keep working.
//!
//! Split by concern: `engine` compiles and installs policy, `decide` evaluates one
//! request, `schema` holds the Cedar schema and entity names, `problems` turns parser
//! and validator diagnostics into positioned [`Problem`]s, and `diff` serves
//! `policy diff`. Stored versions ([`PolicyRecord`]) are records of the store.

use serde::{Deserialize, Serialize};

pub use crate::model::{Facts, PolicyRecord};
use crate::store::{Storage, StoreError};

mod decide;
mod diff;
mod engine;
mod problems;
mod schema;

pub use diff::diff;
pub use engine::Engine;
pub use schema::schema_text;

/// Policy failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The text does not parse or does not validate; each problem has a position.
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
    /// Building the engine failed (a bug, or a bad action list).
    #[error("policy engine: {0}")]
    Engine(String),
}

/// One problem in a policy file, with its position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// 1-based line (0 when unknown).
    pub line: u32,
    /// 1-based column (0 when unknown).
    pub col: u32,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.line, self.col, self.message)
        } else {
            f.write_str(&self.message)
        }
    }
}

/// What policy said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Allowed (possibly only after approval).
    pub allow: bool,
    /// Allowed only after a human approves.
    pub approval_required: bool,
    /// Ids of the policies that determined it (`Engine::policy_text` has their source).
    pub reasons: Vec<String>,
    /// Evaluation errors (a policy that errored is skipped, as Cedar does).
    pub errors: Vec<String>,
    /// Policy version.
    pub version: u64,
}

/// The stored policy version `v` (0: the current one), if there is one.
pub fn stored(store: &dyn Storage, v: u64) -> Result<Option<PolicyRecord>, StoreError> {
    if v == 0 {
        store.current_policy()
    } else {
        store.policy_version(v)
    }
}

/// Store a new version durably and make it current, in one write.
pub async fn store_version(store: &dyn Storage, rec: &PolicyRecord) -> Result<(), StoreError> {
    store.put_policy_version(rec.clone()).await
}

#[cfg(test)]
mod tests;
