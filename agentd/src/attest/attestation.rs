//! What attestation observed about a caller, and the selectors made from it.

use std::collections::BTreeSet;

/// What was observed about a caller, and the selectors made from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attestation {
    /// Pid of the socket peer.
    pub pid: u32,
    /// Uid of the socket peer (equal to all of its real, effective, saved and fs uids).
    pub uid: u32,
    /// Gid of the socket peer (equal to all of its real, effective, saved and fs gids).
    pub gid: u32,
    /// User name of `uid`, when it resolves.
    pub user: Option<String>,
    /// The attested executable: the peer's, or its parent's when `via_cli`. `None` when it
    /// was deleted, unreadable, or (via the CLI) the parent did not qualify.
    pub exe_path: Option<String>,
    /// Hex SHA-256 of the attested executable's contents, under the same conditions as
    /// `exe_path`, and only up to the configured size limit.
    pub exe_sha256: Option<String>,
    /// The peer is the installed `leash` CLI, so path and sha256 describe its parent.
    pub via_cli: bool,
    /// All selectors, e.g. `unix:uid:1001`, `unix:path:/usr/bin/python3.11`.
    pub selectors: BTreeSet<String>,
}

impl Attestation {
    /// Whether every selector in `required` was observed.
    ///
    /// An empty `required` matches nothing: a workload without selectors is a
    /// configuration error (creation refuses it), and failing closed keeps such a record
    /// from matching every caller if one ever slips through.
    pub fn matches(&self, required: &[String]) -> bool {
        !required.is_empty() && required.iter().all(|s| self.selectors.contains(s))
    }
}
