//! What every admin area shares: the invalid / not-found answers, label validation, the
//! workload lookup that says how to list them, and a workload as the admin API shows it.

use std::collections::BTreeMap;

use leash_proto::reason::Reason;
use leash_proto::v1;
use tonic::Status;

use crate::model::Workload;
use crate::state::Shared;
use crate::wire;

/// An INVALID answer.
pub fn invalid(m: impl Into<String>) -> Status {
    Reason::Invalid.status(m)
}

/// A NOT_FOUND answer.
pub fn not_found(m: impl Into<String>) -> Status {
    Reason::NotFound.status(m)
}

fn valid_label(k: &str, v: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    ok(k) && ok(v)
}

/// Host labels (or `--hosts` selectors): keys and values of a bounded alphabet.
pub fn check_labels(labels: &BTreeMap<String, String>, what: &str) -> Result<(), Status> {
    for (k, v) in labels {
        if !valid_label(k, v) {
            return Err(invalid(format!(
                "invalid {what} {k}={v}: keys and values are 1-63 of letters, digits, '-', '_', '.'"
            )));
        }
    }
    Ok(())
}

/// The workload named `name`, or NOT_FOUND saying how to list them.
pub fn workload_or_404(s: &Shared, name: &str) -> Result<Workload, Status> {
    s.store
        .workload(name)
        .map_err(Status::from)?
        .ok_or_else(|| {
            not_found(format!(
                "no workload named {name:?}; `leashctl workload list` shows them"
            ))
        })
}

/// A workload as the admin API shows it: with its SPIFFE ID.
pub fn spiffe(s: &Shared, w: v1::Workload) -> v1::Workload {
    wire::with_spiffe_id(w, &s.config.trust_domain)
}

/// The names of the owners that were offboarded.
pub fn offboarded_owners(s: &Shared) -> Result<Vec<String>, Status> {
    Ok(s.store
        .offboarded_owners()
        .map_err(Status::from)?
        .into_iter()
        .map(|(o, _)| o)
        .collect())
}
