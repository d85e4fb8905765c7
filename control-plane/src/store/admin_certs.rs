//! Admin certificates in the store: one [`AdminCertRecord`] per admin name in the `meta`
//! tree under `admin-cert/<name>`. Like join tokens, only the SHA-256 of the one-time
//! code is kept, and redeeming it is checked again inside the write that uses it, so a
//! code is used once even when two logins race.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::codec::{dec, enc, get};
use super::error::{Result, StoreError};
use super::sled_store::SledStore;
use crate::model::Event;

const PREFIX: &str = "admin-cert/";

fn key(name: &str) -> Vec<u8> {
    format!("{PREFIX}{name}").into_bytes()
}

/// An admin certificate: issued as a one-time code, then the certificate it was
/// redeemed for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminCertRecord {
    /// The admin's name (the certificate's URI SAN ends with it).
    pub name: String,
    /// `viewer`, `approver`, `operator` or `admin`.
    pub role: String,
    /// `pending` (code not redeemed), `active` or `revoked`.
    pub state: String,
    /// Lifetime of the certificate issued at login, seconds.
    pub ttl_seconds: u32,
    /// SHA-256 (hex) of the one-time code's secret; empty once redeemed.
    pub code_sha256: String,
    /// Unix seconds after which the code cannot be redeemed.
    pub code_expires_at: i64,
    /// Serial (hex) of the certificate issued at login; empty while pending.
    #[serde(default)]
    pub serial: String,
    /// Its expiry, unix seconds; 0 while pending.
    #[serde(default)]
    pub not_after: i64,
    /// The admin who issued it.
    pub issued_by: String,
    /// Unix seconds.
    pub issued_at: i64,
}

impl AdminCertRecord {
    /// The state as shown: `expired` for a pending code or an active certificate past
    /// its time.
    pub fn state_at(&self, now: i64) -> &str {
        match self.state.as_str() {
            "pending" if now >= self.code_expires_at => "expired",
            "active" if now >= self.not_after => "expired",
            s => s,
        }
    }
}

/// The store's admin certificates. A supertrait of [`super::Storage`], so every store
/// has them.
#[async_trait]
pub trait AdminCertStore {
    /// The record for `name`.
    fn admin_cert(&self, name: &str) -> Result<Option<AdminCertRecord>>;
    /// Every record, by name.
    fn admin_certs(&self) -> Result<Vec<AdminCertRecord>>;
    /// Record a newly issued code, replacing any record of that name (its certificate
    /// is then no longer the current one, so refused).
    async fn put_admin_cert(&self, r: AdminCertRecord, event: Event) -> Result<()>;
    /// Redeem the code of `name` whose secret hashes to `code_sha256` at `now` (unix
    /// s) for the certificate `serial` valid until `not_after`. `Refused` if the code
    /// is unknown, used, expired or revoked.
    async fn redeem_admin_code(
        &self,
        name: &str,
        code_sha256: &str,
        now: i64,
        serial: String,
        not_after: i64,
        event: Event,
    ) -> Result<AdminCertRecord>;
    /// Revoke `name`; `NotFound` if there is no such record.
    async fn revoke_admin_cert(&self, name: &str, event: Event) -> Result<AdminCertRecord>;
}

#[async_trait]
impl AdminCertStore for SledStore {
    fn admin_cert(&self, name: &str) -> Result<Option<AdminCertRecord>> {
        get(&self.t.meta, "meta", &key(name))
    }

    fn admin_certs(&self) -> Result<Vec<AdminCertRecord>> {
        let mut out = Vec::new();
        for kv in self.t.meta.scan_prefix(PREFIX.as_bytes()) {
            let (_, v) = kv?;
            out.push(dec("meta", &v)?);
        }
        Ok(out)
    }

    async fn put_admin_cert(&self, r: AdminCertRecord, event: Event) -> Result<()> {
        self.write(move |tx| {
            tx.t.meta.insert(key(&r.name), enc(&r))?;
            tx.event(event)
        })
        .await
    }

    async fn redeem_admin_code(
        &self,
        name: &str,
        code_sha256: &str,
        now: i64,
        serial: String,
        not_after: i64,
        event: Event,
    ) -> Result<AdminCertRecord> {
        let name = name.to_string();
        let code_sha256 = code_sha256.to_string();
        self.write(move |tx| {
            let k = key(&name);
            let refused = |m: &str| {
                StoreError::Refused(format!(
                    "{m}; ask an admin for a new code (leashctl admin-cert issue)"
                ))
            };
            let mut r: AdminCertRecord = match tx.t.meta.get(&k)? {
                Some(v) => dec("meta", &v)?,
                None => return Err(refused("unknown admin login code")),
            };
            if r.code_sha256.is_empty() || r.state != "pending" {
                return Err(refused(match r.state.as_str() {
                    "revoked" => "this admin certificate was revoked",
                    _ => "this login code was already used; codes are single use",
                }));
            }
            if r.code_sha256 != code_sha256 {
                return Err(refused(
                    "the login code does not match (mistyped, or replaced by a newer one)",
                ));
            }
            if now >= r.code_expires_at {
                return Err(refused("the login code has expired"));
            }
            r.state = "active".into();
            r.code_sha256.clear();
            r.serial = serial;
            r.not_after = not_after;
            tx.t.meta.insert(k, enc(&r))?;
            tx.event(event)?;
            Ok(r)
        })
        .await
    }

    async fn revoke_admin_cert(&self, name: &str, event: Event) -> Result<AdminCertRecord> {
        let name = name.to_string();
        self.write(move |tx| {
            let k = key(&name);
            let mut r: AdminCertRecord = match tx.t.meta.get(&k)? {
                Some(v) => dec("meta", &v)?,
                None => {
                    return Err(StoreError::NotFound(format!(
                        "no admin certificate named {name:?} (see leashctl admin-cert list)"
                    )))
                }
            };
            r.state = "revoked".into();
            r.code_sha256.clear();
            tx.t.meta.insert(k, enc(&r))?;
            tx.event(event)?;
            Ok(r)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(name: &str) -> AdminCertRecord {
        AdminCertRecord {
            name: name.into(),
            role: "viewer".into(),
            state: "pending".into(),
            ttl_seconds: 3600,
            code_sha256: "ab".repeat(32),
            code_expires_at: 1000,
            serial: String::new(),
            not_after: 0,
            issued_by: "root".into(),
            issued_at: 1,
        }
    }

    #[tokio::test]
    async fn a_code_is_redeemed_once_and_a_revoked_record_stays_revoked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path(), Default::default()).expect("store");
        let ev = || Event::new("x");
        store
            .put_admin_cert(pending("alice"), ev())
            .await
            .expect("put");
        let wrong = store
            .redeem_admin_code("alice", &"cd".repeat(32), 10, "01".into(), 99, ev())
            .await;
        assert!(matches!(wrong, Err(StoreError::Refused(_))), "{wrong:?}");
        let late = store
            .redeem_admin_code("alice", &"ab".repeat(32), 1000, "01".into(), 99, ev())
            .await;
        assert!(matches!(late, Err(StoreError::Refused(_))), "{late:?}");
        let r = store
            .redeem_admin_code("alice", &"ab".repeat(32), 10, "01".into(), 99, ev())
            .await
            .expect("redeem");
        assert_eq!(
            (r.state.as_str(), r.serial.as_str(), r.not_after),
            ("active", "01", 99)
        );
        assert!(r.code_sha256.is_empty());
        let again = store
            .redeem_admin_code("alice", &"ab".repeat(32), 10, "02".into(), 99, ev())
            .await;
        assert!(
            matches!(&again, Err(StoreError::Refused(m)) if m.contains("already used")),
            "{again:?}"
        );
        assert_eq!(r.state_at(99), "expired");
        store
            .revoke_admin_cert("alice", ev())
            .await
            .expect("revoke");
        assert_eq!(
            store.admin_cert("alice").expect("get").map(|r| r.state),
            Some("revoked".into())
        );
        let none = store.revoke_admin_cert("bob", ev()).await;
        assert!(matches!(none, Err(StoreError::NotFound(_))), "{none:?}");
        assert_eq!(store.admin_certs().expect("list").len(), 1);
    }
}
