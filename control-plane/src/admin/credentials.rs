//! `credential add|list|show|remove`: validating, storing, showing and removing
//! credential definitions. A `postgres` credential is checked against its database
//! before it is stored, and its admin connection string is sealed like a brokered
//! secret's value (a version under its name, written with the definition).

use std::collections::BTreeMap;
use std::time::Duration;

use leash_proto::reason::Reason;
use leash_proto::v1;
use tonic::Status;

use super::check::{check_labels, invalid, not_found};
use crate::audit;
use crate::kinds::postgres::{self, POSTGRES_KIND};
use crate::kinds::KindError;
use crate::model::{secret_aad, valid_name, Credential, RevocationTarget, SecretVersion};
use crate::state::Shared;
use crate::status::write_failed;
use crate::store::{Older, SecretWrite};
use crate::wire::credential_proto;

/// Kinds docs/CLI.md names as coming, told apart from typing mistakes.
const RESERVED_KINDS: [&str; 1] = ["static"];
/// How long `credential remove` waits for the ends of the leases it revoked (a role's
/// drop) before it answers that they are still pending.
const REMOVE_WAIT: Duration = Duration::from_secs(15);

pub(super) async fn add(
    s: &Shared,
    actor: String,
    req: v1::Credential,
) -> Result<v1::Credential, Status> {
    let c = req;
    if !valid_name(&c.name) {
        return Err(invalid(format!("invalid credential name {:?}", c.name)));
    }
    let Some(kind) = s.kinds.get(&c.kind) else {
        let issued = s
            .kinds
            .names()
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(invalid(if RESERVED_KINDS.contains(&c.kind.as_str()) {
            format!(
                "credential kind {:?} is not available yet; this control plane issues {issued} credentials",
                c.kind
            )
        } else {
            format!(
                "unknown credential kind {:?}; use --kind {}",
                c.kind,
                s.kinds.names().join(" or --kind ")
            )
        }));
    };
    kind.validate(&c).map_err(|e| invalid(e.to_string()))?;
    if c.default_ttl_seconds == 0 {
        return Err(invalid("--ttl must be at least 1s"));
    }
    let max_ttl = if c.max_ttl_seconds == 0 {
        c.default_ttl_seconds.max(3600)
    } else {
        c.max_ttl_seconds
    };
    if max_ttl < c.default_ttl_seconds {
        return Err(invalid(format!(
            "--max-ttl ({max_ttl}s) is below --ttl ({}s)",
            c.default_ttl_seconds
        )));
    }
    let actions = &s.config.actions;
    let postgres = c.kind == POSTGRES_KIND;
    for action in c.grants.keys() {
        if !actions.contains(action) {
            return Err(invalid(format!(
                "--grant names unknown action {action:?}; the configured actions are {}",
                actions.join(", ")
            )));
        }
    }
    let default_action = if !c.default_action.is_empty() {
        c.default_action.clone()
    } else if postgres && !c.grants.contains_key("read") {
        c.grants.keys().next().cloned().unwrap_or_default()
    } else {
        "read".to_string()
    };
    if postgres && !c.grants.contains_key(&default_action) {
        return Err(invalid(format!(
            "--default-action {default_action} has no --grant; give --grant {default_action}=SQL or another --default-action"
        )));
    }
    if !actions.contains(&default_action) {
        return Err(invalid(format!(
            "unknown --default-action {default_action:?}; the configured actions are {}",
            actions.join(", ")
        )));
    }
    let mut scopes = BTreeMap::new();
    for (action, sc) in c.scopes.clone() {
        if !actions.contains(&action) {
            return Err(invalid(format!(
                "--scope names unknown action {action:?}; the configured actions are {}",
                actions.join(", ")
            )));
        }
        let list: Vec<String> = sc.split_whitespace().map(str::to_string).collect();
        if list.is_empty() {
            return Err(invalid(format!(
                "--scope {action}= needs at least one scope"
            )));
        }
        scopes.insert(action, list);
    }
    let labels: BTreeMap<String, String> = c.labels.clone().into_iter().collect();
    check_labels(&labels, "--label")?;
    let owner = Some(c.owner.trim().to_string()).filter(|o| !o.is_empty());
    let mut rec = Credential {
        name: c.name.clone(),
        kind: c.kind.clone(),
        audiences: c.audiences.clone(),
        default_ttl: c.default_ttl_seconds,
        max_ttl,
        default_action,
        scopes,
        created_at: s.clock.now(),
        owner,
        description: c.description.clone(),
        labels,
        ..Default::default()
    };
    if postgres {
        return add_postgres(s, actor, c, rec).await;
    }
    rec.actions = Vec::new();
    let ev = audit::credential_added(s.clock.now_ms(), &actor, &rec);
    s.store
        .put_credential(rec.clone(), ev)
        .await
        .map_err(Status::from)?;
    Ok(credential_proto(&rec))
}

pub(super) async fn list(s: &Shared) -> Result<v1::ListCredentialsResponse, Status> {
    let credentials = s
        .store
        .credentials()
        .map_err(Status::from)?
        .iter()
        .map(credential_proto)
        .collect();
    Ok(v1::ListCredentialsResponse { credentials })
}

/// The rest of `credential add --kind postgres`: check the connection string against
/// the database, then store the definition with the string sealed, in one write.
async fn add_postgres(
    s: &Shared,
    actor: String,
    req: v1::Credential,
    mut rec: Credential,
) -> Result<v1::Credential, Status> {
    let dsn = zeroize::Zeroizing::new(String::from_utf8(req.connection.clone()).map_err(|_| {
        invalid("the connection file is not UTF-8 text; write the admin connection string in it")
    })?);
    if dsn.trim().is_empty() {
        return Err(invalid(
            "--connection-file is empty or missing: give the admin connection string in a file (or - for stdin), never on the command line",
        ));
    }
    let def = postgres::check(&dsn, &req).await.map_err(|e| match e {
        KindError::Unavailable(m) => Reason::Unavailable.status(m),
        e => invalid(e.to_string()),
    })?;
    rec.actions = def.grants.keys().cloned().collect();
    rec.format = "json".into();
    rec.postgres = Some(def);
    let name = rec.name.clone();
    for _ in 0..3 {
        let existing = s.store.credential(&name).map_err(Status::from)?;
        let expected = match &existing {
            Some(c) if c.kind != POSTGRES_KIND => {
                return Err(invalid(format!(
                    "a credential named {name:?} (kind {}) exists; credentials and secrets share one namespace: choose another name",
                    c.kind
                )))
            }
            Some(c) => {
                rec.created_at = c.created_at;
                c.current_version
            }
            None => 0,
        };
        let version = expected + 1;
        rec.current_version = version;
        // Until the version is in the store: see `MasterKey::hold_for_sealed_write`.
        let held = s.master.hold_for_sealed_write().await;
        let sealed = s
            .master
            .seal(&secret_aad(&name, version), dsn.as_bytes())
            .map_err(|e| {
                Reason::Unavailable.status(format!("cannot seal the connection string: {e}"))
            })?;
        let at_ms = s.clock.now_ms();
        let write = SecretWrite {
            def: rec.clone(),
            expected,
            version: SecretVersion {
                version,
                created_at: s.clock.now(),
                created_by: actor.clone(),
                size: dsn.len() as u32,
                // A digest of a connection string could be guessed back from a weak
                // password: none is kept.
                fingerprint: String::new(),
                sealed,
            },
            older: Older::Keep,
            event: audit::credential_added(at_ms, &actor, &rec),
        };
        let written = s.store.put_secret(write).await;
        drop(held);
        match written {
            Ok(w) => {
                tracing::info!(credential = %name, connection_version = version, "postgres credential added");
                return Ok(credential_proto(&w.def));
            }
            Err(crate::store::StoreError::Stale(_)) => continue,
            Err(e) => {
                let failed = audit::secret_write_failed(at_ms, &actor, &name);
                return Err(write_failed(s, e, failed).await);
            }
        }
    }
    Err(Reason::Unavailable.status(format!(
        "credential {name:?} kept changing while it was added; try again"
    )))
}

fn credential_or_404(s: &Shared, name: &str) -> Result<Credential, Status> {
    s.store
        .credential(name)
        .map_err(Status::from)?
        .ok_or_else(|| {
            not_found(format!(
                "no credential named {}; `leashctl credential list` shows them",
                leash_proto::names::excerpt(name)
            ))
        })
}

fn active_leases(s: &Shared, name: &str) -> Result<Vec<String>, Status> {
    let now = s.clock.now();
    Ok(s.store
        .leases(None, true)
        .map_err(Status::from)?
        .into_iter()
        .filter(|l| l.credential == name && l.expires_at > now)
        .map(|l| l.id)
        .collect())
}

/// Leases of `name` whose end outside Leash (a role's drop) has not happened yet.
fn pending_ends(s: &Shared, name: &str) -> Result<u32, Status> {
    Ok(s.store
        .pending_ends(Some(name))
        .map_err(Status::from)?
        .len() as u32)
}

/// `credential show`: the definition (never the connection string), active leases and
/// pending end steps.
pub(super) async fn get(s: &Shared, req: v1::NameRequest) -> Result<v1::CredentialDetail, Status> {
    let c = credential_or_404(s, &req.name)?;
    let end_step = s
        .kinds
        .get(&c.kind)
        .filter(|k| k.ends_outside())
        .map(|k| k.end_step().to_string())
        .unwrap_or_default();
    Ok(v1::CredentialDetail {
        credential: Some(credential_proto(&c)),
        active_leases: active_leases(s, &c.name)?.len() as u32,
        pending_ends: pending_ends(s, &c.name)?,
        end_step,
    })
}

/// `credential remove`: revoke every lease, then delete the definition and its sealed
/// versions. For a kind that undoes something outside Leash when a lease ends (a
/// `postgres` role), the leases are revoked first and their ends waited for, because
/// an end needs the definition; if they do not finish in time, the definition is kept
/// and the answer says to run the remove again.
pub(super) async fn remove(
    s: &Shared,
    actor: String,
    r: v1::RemoveCredentialRequest,
) -> Result<v1::RemoveCredentialResponse, Status> {
    let c = credential_or_404(s, &r.name)?;
    let active = active_leases(s, &c.name)?.len();
    if active > 0 && !r.yes {
        return Err(invalid(format!(
            "{active} active leases; add --yes to revoke them and remove the credential"
        )));
    }
    let reason = if r.reason.trim().is_empty() {
        "credential removed".to_string()
    } else {
        r.reason.trim().to_string()
    };
    let outside = s.kinds.get(&c.kind).is_some_and(|k| k.ends_outside());
    let at_ms = s.clock.now_ms();
    let failed = audit::secret_write_failed(at_ms, &actor, &c.name);
    if !outside {
        let (rev, _) = match s
            .store
            .remove_credential(&c.name, actor, reason, true)
            .await
        {
            Ok(r) => r,
            Err(e) => return Err(write_failed(s, e, failed).await),
        };
        return Ok(v1::RemoveCredentialResponse {
            seq: rev.as_ref().map_or(0, |r| r.seq),
            leases: rev.map_or(0, |r| r.lease_ids.len() as u32),
        });
    }
    // Disabled first, durably: no lease can be issued (the lease write re-checks) while
    // the drops of the revoked ones finish, and it stays so if they cannot finish now.
    if !c.disabled {
        let mut d = c.clone();
        d.disabled = true;
        let ev = audit::credential_disabled(&c.name, &actor, &reason);
        if let Err(e) = s.store.put_credential(d, ev).await {
            return Err(write_failed(s, e, failed).await);
        }
    }
    let mut seq = 0;
    let mut leases = 0;
    if active > 0 {
        let ev = audit::revocation(at_ms, &actor, &reason);
        let target = RevocationTarget::Credential(c.name.clone());
        let rev = match s
            .store
            .revoke(target, reason.clone(), actor.clone(), vec![ev])
            .await
        {
            Ok(rev) => rev,
            Err(e) => return Err(write_failed(s, e, failed).await),
        };
        seq = rev.seq;
        leases = rev.lease_ids.len() as u32;
    }
    let deadline = tokio::time::Instant::now() + REMOVE_WAIT;
    loop {
        let pending = pending_ends(s, &c.name)?;
        if pending == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let step = s.kinds.get(&c.kind).map_or("end", |k| k.end_step());
            // Name a lease to look at: "lease show ID" alone leaves the admin to find one.
            let first = s
                .store
                .pending_ends(Some(&c.name))
                .map_err(Status::from)?
                .into_iter()
                .next()
                .map_or_else(|| "ID".to_string(), |p| p.lease);
            return Err(Reason::Unavailable.status(format!(
                "the leases of {} are revoked, but {pending} {step}(s) still pending (`leashctl lease show {first}` shows why); the credential (disabled) and its connection string are kept so they can finish: run `leashctl credential remove {}` again later",
                c.name, c.name
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match s
        .store
        .remove_credential(&c.name, actor, reason, false)
        .await
    {
        Ok(_) => Ok(v1::RemoveCredentialResponse { seq, leases }),
        Err(e) => Err(write_failed(s, e, failed).await),
    }
}
