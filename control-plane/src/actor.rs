//! Who is calling the admin API: the admin's name, role and how they connected, and the
//! four roles themselves.
//!
//! The admin service runs each call inside [`scope`], so the audit events a call's
//! writes record carry `actor_role` and `actor_via` next to `actor` (the store fills
//! them in, see `store/tx.rs`) without every handler passing them along.

use std::future::Future;

/// An admin role. Each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Lists, shows, reports, audit read, export and verify.
    Viewer,
    /// A viewer who may also approve and deny requests.
    Approver,
    /// An approver who may also revoke, disable and evict.
    Operator,
    /// Everything: policy, credentials, workloads, secrets, keys, admin certificates.
    Admin,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Approver, Role::Operator, Role::Admin];

    /// The name used in the config, on the command line and in audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Approver => "approver",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parse a role name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an admin reached the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The local Unix socket (authorised by uid).
    Socket,
    /// The agent-facing TLS port with an admin certificate.
    Mtls,
}

impl Via {
    /// `socket` or `mtls`, as audit events record it.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Socket => "socket",
            Via::Mtls => "mtls",
        }
    }
}

/// An authorised caller of the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The admin's name (`[admins]` entry, user name, or admin certificate name).
    pub name: String,
    /// Their role.
    pub role: Role,
    /// How they connected.
    pub via: Via,
}

tokio::task_local! {
    static CALLER: Caller;
}

/// Run `f` as `caller`: events recorded by writes it starts carry the caller's role and
/// connection.
pub async fn scope<F: Future>(caller: Caller, f: F) -> F::Output {
    CALLER.scope(caller, f).await
}

/// The caller of the admin call running on this task, if any.
pub fn current() -> Option<Caller> {
    CALLER.try_with(Caller::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_named() {
        assert!(Role::Admin.allows(Role::Operator));
        assert!(Role::Operator.allows(Role::Approver));
        assert!(Role::Approver.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Approver));
        assert!(!Role::Operator.allows(Role::Admin));
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[tokio::test]
    async fn the_caller_is_seen_inside_its_scope_only() {
        let c = Caller {
            name: "alice".into(),
            role: Role::Viewer,
            via: Via::Mtls,
        };
        assert_eq!(current(), None);
        let seen = scope(c.clone(), async { current() }).await;
        assert_eq!(seen, Some(c));
    }
}
