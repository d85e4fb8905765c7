//! Which role each admin method needs: the one table. A method missing from it is
//! refused to everyone (and the unit test below fails), so a new method cannot be
//! served to the wrong role by being forgotten.

use crate::actor::Role;

/// What a method needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// An admin of at least this role.
    Role(Role),
    /// Nothing but the one-time code in the request (AdminLogin).
    Code,
}

use Access::Code;
use Role::{Admin, Approver, Operator, Viewer};

const fn r(role: Role) -> Access {
    Access::Role(role)
}

/// Every method of the `leash.v1.Admin` service (its name in admin.proto) and what it
/// needs. Viewer: lists, shows, reports, audit read. Approver: approve, deny.
/// Operator: revoke, disable, evict. Admin: everything else.
pub const TABLE: &[(&str, Access)] = &[
    ("CreateJoinToken", r(Admin)),
    ("ListJoinTokens", r(Viewer)),
    ("RevokeJoinToken", r(Admin)),
    ("AddWorkload", r(Admin)),
    ("ListWorkloads", r(Viewer)),
    ("GetWorkload", r(Viewer)),
    ("RemoveWorkload", r(Admin)),
    ("SetWorkloadDisabled", r(Operator)),
    ("TransferWorkload", r(Admin)),
    ("AddCredential", r(Admin)),
    ("ListCredentials", r(Viewer)),
    ("GetCredential", r(Viewer)),
    ("RemoveCredential", r(Admin)),
    ("ListHosts", r(Viewer)),
    ("EvictHost", r(Operator)),
    ("ListLeases", r(Viewer)),
    ("GetLease", r(Viewer)),
    ("Revoke", r(Operator)),
    ("WaitRevocation", r(Operator)),
    ("Introspect", r(Viewer)),
    ("PolicyCheck", r(Viewer)),
    ("PolicyApply", r(Admin)),
    ("PolicyShow", r(Viewer)),
    ("PolicyExplain", r(Viewer)),
    ("ListApprovals", r(Viewer)),
    ("Approve", r(Approver)),
    ("DenyApproval", r(Approver)),
    ("ListOwners", r(Viewer)),
    ("OffboardOwner", r(Admin)),
    ("StaleReport", r(Viewer)),
    ("Jwks", r(Viewer)),
    ("RotateMasterKey", r(Admin)),
    ("AuditTail", r(Viewer)),
    ("PutSecret", r(Admin)),
    ("RotateSecret", r(Admin)),
    ("ListSecretVersions", r(Viewer)),
    ("GetSecret", r(Viewer)),
    ("SetSecretDisabled", r(Operator)),
    ("RemoveSecret", r(Admin)),
    ("CreateIntrospectionClient", r(Admin)),
    ("ListIntrospectionClients", r(Viewer)),
    ("RemoveIntrospectionClient", r(Admin)),
    ("OidcDocuments", r(Admin)),
    ("RotateKey", r(Admin)),
    ("ListKeys", r(Viewer)),
    ("Backup", r(Admin)),
    ("IssueAdminCert", r(Admin)),
    ("RevokeAdminCert", r(Admin)),
    ("ListAdminCerts", r(Viewer)),
    ("AdminLogin", Code),
];

/// What `method` needs; `None` for a method missing from the table (refused).
pub fn access(method: &str) -> Option<Access> {
    TABLE.iter().find(|(m, _)| *m == method).map(|(_, a)| *a)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rpc names of the Admin service, read from its .proto.
    fn admin_methods() -> Vec<String> {
        let proto = include_str!("../../../proto/proto/leash/v1/admin.proto");
        let start = proto.find("service Admin {").expect("service Admin");
        let body = &proto[start..];
        let body = &body[..body.find("\n}").expect("end of service")];
        body.lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .map(|l| l.split('(').next().unwrap_or("").trim().to_string())
            .collect()
    }

    #[test]
    fn every_admin_method_has_exactly_one_entry() {
        let methods = admin_methods();
        assert!(methods.len() > 40, "{methods:?}");
        for m in &methods {
            let n = TABLE.iter().filter(|(t, _)| t == m).count();
            assert_eq!(
                n, 1,
                "admin method {m} needs exactly one entry in roles::TABLE"
            );
        }
        for (t, _) in TABLE {
            assert!(methods.iter().any(|m| m == t), "{t} is not an Admin method");
        }
    }

    #[test]
    fn roles_get_what_the_docs_promise() {
        let need = |m: &str| match access(m) {
            Some(Access::Role(r)) => r,
            other => panic!("{m}: {other:?}"),
        };
        assert_eq!(need("ListHosts"), Viewer);
        assert_eq!(need("AuditTail"), Viewer);
        assert_eq!(need("Approve"), Approver);
        assert_eq!(need("DenyApproval"), Approver);
        assert_eq!(need("Revoke"), Operator);
        assert_eq!(need("EvictHost"), Operator);
        assert_eq!(need("SetWorkloadDisabled"), Operator);
        assert_eq!(need("PolicyApply"), Admin);
        assert_eq!(need("IssueAdminCert"), Admin);
        assert_eq!(need("PutSecret"), Admin);
        assert_eq!(access("AdminLogin"), Some(Access::Code));
        assert_eq!(access("NoSuchMethod"), None);
    }
}
