//! Flag values that `leashctl` turns into request fields.

use std::collections::HashMap;

use leash_proto::cli::Fail;

/// `key=value` flags (e.g. `--label`, `--hosts`) as a map; `what` names the flag in the
/// error.
pub(crate) fn kv(items: &[String], what: &str) -> Result<HashMap<String, String>, Fail> {
    items
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Fail::usage(format!("{what} {s:?} must look like key=value")))
        })
        .collect()
}
