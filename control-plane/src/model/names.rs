//! What admin input must look like: names of workloads and credentials, process
//! selectors, and host label selectors.

use std::collections::BTreeMap;

/// Selector kinds the agent can observe.
pub const SELECTOR_KINDS: &[&str] = &["uid", "user", "gid", "group", "path", "sha256"];

/// Validate a workload or credential name: path-like, `[a-z0-9._-]` segments joined by `/`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        })
}

/// Validate a selector such as `unix:uid:1001`; returns its kind.
pub fn selector_kind(s: &str) -> Option<&'static str> {
    let rest = s.strip_prefix("unix:")?;
    let (kind, value) = rest.split_once(':')?;
    let kind = SELECTOR_KINDS.iter().find(|k| **k == kind)?;
    let ok = match *kind {
        "uid" | "gid" => value.parse::<u32>().is_ok(),
        "sha256" => value.len() == 64 && value.chars().all(|c| c.is_ascii_hexdigit()),
        "path" => value.starts_with('/'),
        _ => !value.is_empty(),
    };
    ok.then_some(*kind)
}

/// Whether a host's labels satisfy a workload's `hosts` selector.
pub fn hosts_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
