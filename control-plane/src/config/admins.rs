//! The `[admins]` table: who may use the local admin socket, by uid, with a role.
//! `alice = 1000` (role admin) or `alice = { uid = 1000, role = "operator" }`. Errors
//! are messages `config.rs` turns into its `Value` error (this file uses nothing of its
//! parent).

use std::collections::BTreeMap;

use leash_proto::admin_code::{valid_name, MAX_NAME_LEN};
use serde::Deserialize;

use crate::actor::Role;

/// One `[admins]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "an [admins] entry: a uid (alice = 1000), or { uid = 1000, role = \"viewer|approver|operator|admin\" }"
)]
pub enum AdminEntry {
    /// `alice = 1000`: role admin.
    Uid(u32),
    /// `alice = { uid = 1000, role = "operator" }`.
    Full {
        /// The uid.
        uid: u32,
        /// viewer, approver, operator or admin (default admin).
        #[serde(default)]
        role: Option<String>,
    },
}

impl AdminEntry {
    /// The uid and role, or what is wrong with the role.
    pub fn resolve(&self) -> Result<(u32, Role), AdminRoleError> {
        match self {
            AdminEntry::Uid(uid) => Ok((*uid, Role::Admin)),
            AdminEntry::Full { uid, role: None } => Ok((*uid, Role::Admin)),
            AdminEntry::Full { uid, role: Some(r) } => Role::parse(r)
                .map(|role| (*uid, role))
                .ok_or_else(|| AdminRoleError(leash_proto::names::excerpt(r))),
        }
    }
}

/// An `[admins]` role that is not one of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0}: use viewer, approver, operator or admin")]
pub struct AdminRoleError(pub String);

/// A local admin: their name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAdmin {
    /// The name recorded as the actor.
    pub name: String,
    /// What they may do.
    pub role: Role,
}

/// What is wrong with `[admins]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AdminsError(pub String);

/// `[admins]`: names are printed in audit events and tables, so they are plain words;
/// one uid may have one name only.
pub fn resolve(
    entries: BTreeMap<String, AdminEntry>,
) -> Result<BTreeMap<u32, LocalAdmin>, AdminsError> {
    let mut admins = BTreeMap::new();
    for (name, entry) in entries {
        let shown = leash_proto::names::excerpt(&name);
        let (uid, role) = entry
            .resolve()
            .map_err(|e| AdminsError(format!("{shown}: {e}")))?;
        if !valid_name(&name) {
            return Err(AdminsError(format!(
                "admin name {shown} must be 1 to {MAX_NAME_LEN} letters, digits, '.', '-' or '_'"
            )));
        }
        let admin = LocalAdmin {
            name: name.clone(),
            role,
        };
        if let Some(other) = admins.insert(uid, admin) {
            return Err(AdminsError(format!(
                "uid {uid} is named twice ({:?} and {name:?}); keep one",
                other.name
            )));
        }
    }
    Ok(admins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_read_and_a_bad_role_is_named() {
        let m: BTreeMap<String, AdminEntry> = toml::from_str(
            "alice = 1000\nbob = { uid = 1001, role = \"operator\" }\ncarol = { uid = 1002 }\neve = { uid = 1003, role = \"root\" }\n",
        )
        .expect("parses");
        assert_eq!(m["alice"].resolve(), Ok((1000, Role::Admin)));
        assert_eq!(m["bob"].resolve(), Ok((1001, Role::Operator)));
        assert_eq!(m["carol"].resolve(), Ok((1002, Role::Admin)));
        let e = m["eve"].resolve().expect_err("bad role").to_string();
        assert!(e.contains("\"root\"") && e.contains("viewer"), "{e}");
    }
}
