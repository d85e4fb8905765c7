//! Brokered secrets in sled: a secret's definition is a `Credential` of kind `secret` in
//! the `credentials` tree (secrets share the credential namespace); each version is a
//! [`SecretVersion`] in `secret_versions`, keyed `name \0 version (BE u32)`, holding the
//! value only sealed. Revocations a rotation with a grace period promised are kept in
//! `scheduled`, keyed `at (BE) name \0 version (BE)`, so a restart keeps them.
//!
//! Every write here is one job of the writer, so a new version, the definition that
//! makes it current and the revocation of older versions' leases are durable together
//! or not at all (`kill -9` during a rotation leaves the old or the new version current).

use super::codec::{be, dec, enc, get};
use super::error::{Result, StoreError};
use super::sled_store::{Trees, Tx};
use super::tx::Revoking;
use crate::audit;
use crate::model::{
    Credential, Event, Lease, Revocation, RevocationTarget, ScheduledRevocation, SecretVersion,
};

/// The kind name of a brokered secret.
pub const SECRET_KIND: &str = "secret";
/// The kinds whose definition holds sealed versions: a brokered secret's values, a
/// `postgres` credential's admin connection strings.
const SEALED_KINDS: [&str; 2] = [SECRET_KIND, "postgres"];

/// What happens to the active leases of older versions when a version is added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Older {
    /// They run on (`secret put`): the old value stays with the lease that holds it.
    Keep,
    /// Revoked in the same write (`secret rotate`).
    Revoke {
        /// Recorded with the revocation.
        reason: String,
        /// Who rotated.
        actor: String,
    },
    /// Revoked at `at` (unix seconds) by the scheduled-revocation worker
    /// (`secret rotate --grace`); leases that expire earlier simply expire.
    RevokeAt {
        /// Unix seconds.
        at: i64,
        /// Recorded with the revocation.
        reason: String,
        /// Who rotated.
        actor: String,
    },
}

/// One new version of a secret, written with its definition in one durable write.
#[derive(Debug, Clone)]
pub struct SecretWrite {
    /// The definition to store, its `current_version` the new version's.
    pub def: Credential,
    /// The version the caller saw current (0: the secret is new). If another write
    /// came first, the write fails with [`StoreError::Stale`] and can be made again.
    pub expected: u32,
    /// The new version, sealed.
    pub version: SecretVersion,
    /// What happens to older versions' active leases.
    pub older: Older,
    /// Its audit event (`secret-put` or `secret-rotated`).
    pub event: Event,
}

/// What a [`SecretWrite`] did.
#[derive(Debug, Clone)]
pub struct SecretWritten {
    /// The definition as stored.
    pub def: Credential,
    /// The active leases of older versions at the time of the write.
    pub older_leases: Vec<String>,
    /// The revocation of those leases ([`Older::Revoke`]).
    pub revocation: Option<Revocation>,
}

/// Key of a version: `name \0 version`.
pub(super) fn version_key(name: &str, version: u32) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn versions_prefix(name: &str) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.push(0);
    k
}

fn scheduled_key(s: &ScheduledRevocation) -> Vec<u8> {
    let mut k = be(s.at.max(0) as u64).to_vec();
    k.extend_from_slice(&version_key(&s.credential, s.version));
    k
}

/// Every version of `name`, oldest first.
pub(super) fn versions(t: &Trees, name: &str) -> Result<Vec<SecretVersion>> {
    t.secret_versions
        .scan_prefix(versions_prefix(name))
        .values()
        .map(|v| dec("secret_versions", &v?))
        .collect()
}

/// Version `version` of `name`.
pub(super) fn version(t: &Trees, name: &str, version: u32) -> Result<Option<SecretVersion>> {
    get(
        &t.secret_versions,
        "secret_versions",
        &version_key(name, version),
    )
}

/// Scheduled revocations due at `now`, at most `limit`, earliest first.
pub(super) fn scheduled_due(t: &Trees, now: i64, limit: usize) -> Result<Vec<ScheduledRevocation>> {
    t.scheduled
        .range(..be(now.max(0) as u64 + 1))
        .values()
        .take(limit)
        .map(|v| dec("scheduled", &v?))
        .collect()
}

/// A credential named `name` that is a secret, or why not.
fn existing_secret(tx: &Tx<'_>, name: &str) -> Result<Credential> {
    match get::<Credential>(&tx.t.credentials, "credentials", name.as_bytes())? {
        Some(c) if c.kind == SECRET_KIND => Ok(c),
        Some(c) => Err(StoreError::Conflict(format!(
            "{name:?} is a credential of kind {}, not a secret",
            c.kind
        ))),
        None => Err(StoreError::NotFound(format!(
            "no secret named {name:?}; `leashctl credential list` shows the credentials and secrets that exist"
        ))),
    }
}

/// Hand `each` the active leases of `name` that hold a version below `version`, one at
/// a time, in the order of the `active` index (its ids are read first, so `each` may
/// write the lease back).
fn older_active(
    tx: &mut Tx<'_>,
    name: &str,
    version: u32,
    mut each: impl FnMut(&mut Tx<'_>, Lease) -> Result<()>,
) -> Result<()> {
    let ids: Vec<sled::IVec> = tx.t.active.iter().keys().collect::<Result<_, _>>()?;
    for id in ids {
        if let Some(l) = get::<Lease>(&tx.t.leases, "leases", &id)? {
            if l.credential == name && l.version < version {
                each(tx, l)?;
            }
        }
    }
    Ok(())
}

impl Tx<'_> {
    /// Delete `name`'s definition, its sealed versions and its scheduled revocations.
    /// Returns how many versions were deleted.
    fn delete_definition(&mut self, name: &str) -> Result<u32> {
        let keys: Vec<sled::IVec> = self
            .t
            .secret_versions
            .scan_prefix(versions_prefix(name))
            .keys()
            .collect::<std::result::Result<_, _>>()?;
        let removed = keys.len() as u32;
        for k in keys {
            self.t.secret_versions.remove(k)?;
        }
        let mut gone = Vec::new();
        for kv in self.t.scheduled.iter() {
            let (k, v) = kv?;
            if dec::<ScheduledRevocation>("scheduled", &v)?.credential == name {
                gone.push(k);
            }
        }
        for k in gone {
            self.t.scheduled.remove(k)?;
        }
        self.t.credentials.remove(name.as_bytes())?;
        Ok(removed)
    }

    /// Add a version (see [`SecretWrite`]).
    pub(super) fn put_secret(&mut self, w: SecretWrite) -> Result<SecretWritten> {
        let name = w.def.name.clone();
        let existing = get::<Credential>(&self.t.credentials, "credentials", name.as_bytes())?;
        if !SEALED_KINDS.contains(&w.def.kind.as_str()) {
            return Err(StoreError::Refused(format!(
                "a credential of kind {} holds no sealed versions",
                w.def.kind
            )));
        }
        match &existing {
            Some(c) if c.kind != w.def.kind => {
                return Err(StoreError::Conflict(format!(
                    "a credential named {name:?} (kind {}) exists; secrets share the credential namespace: choose another name",
                    c.kind
                )))
            }
            Some(c) if c.current_version != w.expected => {
                return Err(StoreError::Stale(format!(
                    "secret {name:?} changed meanwhile (version {} is current now)",
                    c.current_version
                )))
            }
            None if w.expected != 0 => {
                return Err(StoreError::NotFound(format!(
                    "secret {name:?} was removed meanwhile"
                )))
            }
            Some(c) if c.disabled && w.older != Older::Keep => {
                return Err(StoreError::Conflict(format!(
                    "secret {name:?} is disabled: a rotation would push to no lease; `leashctl secret enable {name}` first, or add a version with `leashctl secret put`"
                )))
            }
            _ => {}
        }
        if w.version.version != w.expected + 1 || w.def.current_version != w.version.version {
            return Err(StoreError::Refused(format!(
                "version {} of secret {name:?} does not follow version {}",
                w.version.version, w.expected
            )));
        }
        self.t
            .secret_versions
            .insert(version_key(&name, w.version.version), enc(&w.version))?;
        self.t.credentials.insert(name.as_bytes(), enc(&w.def))?;
        let version = w.version.version;
        let mut older_leases: Vec<String> = Vec::new();
        let revocation = match w.older {
            Older::Keep => {
                older_active(self, &name, version, |_, l| {
                    older_leases.push(l.id);
                    Ok(())
                })?;
                None
            }
            // Revoked as they are read: `Leases(older_leases)` covers exactly these (they
            // are active, in this same write), in the same order, and a second pass to
            // find them again would read every active lease twice.
            Older::Revoke { reason, actor } => {
                let mut r = Revoking::start(self, reason, actor, &[]);
                older_active(self, &name, version, |tx, l| {
                    older_leases.push(l.id.clone());
                    r.add(tx, l)
                })?;
                Some(r.finish(self, RevocationTarget::Leases(older_leases.clone()))?)
            }
            Older::RevokeAt { at, reason, actor } => {
                older_active(self, &name, version, |_, l| {
                    older_leases.push(l.id);
                    Ok(())
                })?;
                if !older_leases.is_empty() {
                    let s = ScheduledRevocation {
                        at,
                        credential: name.clone(),
                        version: w.version.version,
                        lease_ids: older_leases.clone(),
                        reason,
                        actor,
                    };
                    self.t.scheduled.insert(scheduled_key(&s), enc(&s))?;
                }
                None
            }
        };
        let mut event = w.event;
        if let Some(rev) = &revocation {
            audit::with_revocation(&mut event, rev);
        }
        self.event(event)?;
        Ok(SecretWritten {
            def: w.def,
            older_leases,
            revocation,
        })
    }

    /// Disable (revoking every lease of it) or enable a secret.
    pub(super) fn set_secret_disabled(
        &mut self,
        name: &str,
        disabled: bool,
        actor: String,
        reason: String,
    ) -> Result<(Credential, Option<Revocation>)> {
        let mut c = existing_secret(self, name)?;
        c.disabled = disabled;
        self.t.credentials.insert(name.as_bytes(), enc(&c))?;
        let rev = if disabled {
            Some(self.revoke(
                RevocationTarget::Credential(name.to_string()),
                reason.clone(),
                actor.clone(),
                &[],
            )?)
        } else {
            None
        };
        let mut e = audit::secret_disabled(name, disabled, &actor, &reason);
        if let Some(rev) = &rev {
            audit::with_revocation(&mut e, rev);
        }
        self.event(e)?;
        Ok((c, rev))
    }

    /// Revoke every lease of a secret, delete every version, its scheduled revocations
    /// and its definition. Returns the revocation and how many versions were deleted.
    pub(super) fn remove_secret(&mut self, name: &str, actor: String) -> Result<(Revocation, u32)> {
        existing_secret(self, name)?;
        let rev = self.revoke(
            RevocationTarget::Credential(name.to_string()),
            "secret removed".into(),
            actor.clone(),
            &[],
        )?;
        let removed = self.delete_definition(name)?;
        let mut e = audit::secret_removed(name, &actor, removed);
        audit::with_revocation(&mut e, &rev);
        self.event(e)?;
        Ok((rev, removed))
    }

    /// Remove a credential of any kind: its sealed versions, scheduled revocations and
    /// definition, with a `credential-removed` event. With `revoke`, its active leases
    /// are revoked in the same write. Without, the caller revoked them before and waited
    /// for their ends outside Leash (a role's drop needs the definition): the write is
    /// refused if any lease of it is active again or still waits for its end.
    pub(super) fn remove_credential(
        &mut self,
        name: &str,
        actor: String,
        reason: String,
        revoke: bool,
    ) -> Result<(Option<Revocation>, u32)> {
        let Some(c) = get::<Credential>(&self.t.credentials, "credentials", name.as_bytes())?
        else {
            return Err(StoreError::NotFound(format!(
                "no credential named {name:?}; `leashctl credential list` shows them"
            )));
        };
        if !revoke {
            let mut active = 0;
            older_active(self, name, u32::MAX, |_, _| {
                active += 1;
                Ok(())
            })?;
            let mut pending = 0;
            for id in self.t.ended.iter().keys() {
                if let Some(l) = get::<Lease>(&self.t.leases, "leases", &id?)? {
                    pending += usize::from(l.credential == name);
                }
            }
            if active + pending > 0 {
                return Err(StoreError::Conflict(format!(
                    "credential {name:?} has {active} active leases and {pending} pending ends; it is kept until they are done: run the remove again"
                )));
            }
        }
        let rev = if revoke {
            Some(self.revoke(
                RevocationTarget::Credential(name.to_string()),
                reason.clone(),
                actor.clone(),
                &[],
            )?)
        } else {
            None
        };
        let removed = self.delete_definition(name)?;
        let mut e = audit::credential_removed(&c, &actor, &reason, removed);
        if let Some(rev) = &rev {
            audit::with_revocation(&mut e, rev);
        }
        self.event(e)?;
        Ok((rev, removed))
    }

    /// Carry out a scheduled revocation and forget it. `None` when none of its leases
    /// is active any more (they expired or were revoked meanwhile).
    pub(super) fn run_scheduled(&mut self, s: ScheduledRevocation) -> Result<Option<Revocation>> {
        let key = scheduled_key(&s);
        if self.t.scheduled.remove(&key)?.is_none() {
            // Done already (or the secret was removed).
            return Ok(None);
        }
        let mut active = Vec::new();
        for id in &s.lease_ids {
            if self.t.active.contains_key(id.as_bytes())? {
                active.push(id.clone());
            }
        }
        if active.is_empty() {
            return Ok(None);
        }
        let rev = self.revoke(
            RevocationTarget::Leases(active),
            s.reason.clone(),
            s.actor.clone(),
            &[],
        )?;
        let mut e = audit::scheduled_revocation(&s);
        audit::with_revocation(&mut e, &rev);
        self.event(e)?;
        Ok(Some(rev))
    }
}
