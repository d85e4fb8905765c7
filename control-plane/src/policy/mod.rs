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
//! Split by concern: `error` holds what can be wrong with a policy, `engine` compiles
//! and installs policy, `decide` evaluates one request, `schema` holds the Cedar schema
//! and entity names, `problems` turns parser and validator diagnostics into positioned
//! [`Problem`]s, and `diff` serves `policy diff`. Stored versions ([`PolicyRecord`]) are
//! records of the store.

pub use crate::model::{Facts, PolicyRecord};
use crate::store::{Storage, StoreError};

mod decide;
mod diff;
mod engine;
mod error;
mod problems;
mod schema;

pub use decide::Verdict;
pub use diff::diff;
pub use engine::Engine;
pub use error::{PolicyError, Problem};
pub use schema::schema_text;

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
