//! `secret put|rotate|versions|show|disable|enable|remove`: brokered secrets. A value is
//! checked (not empty, at most `max_secret_bytes`, UTF-8, its format), sealed under the
//! master key with its name and version as associated data, and stored with its
//! definition in one durable write. No message, log line or event carries a value: only
//! its size and fingerprint.

use std::collections::BTreeMap;

use leash_proto::reason::Reason;
use leash_proto::v1;
use tonic::Status;
use zeroize::Zeroizing;

use super::check::{check_labels, invalid, not_found};
use crate::audit;
use crate::model::{secret_aad, valid_name, Credential, LeaseState, SecretVersion};
use crate::state::Shared;
use crate::status::write_failed;
use crate::store::{Older, SecretWrite, SecretWritten, StoreError, SECRET_KIND};
use crate::wire::{secret_info, secret_version_info};

/// The formats a value may be written in.
const FORMATS: [&str; 3] = ["text", "json", "env"];
/// Longest description, in bytes.
const MAX_DESCRIPTION: usize = 1024;
/// Attempts at adding a version while other versions are added concurrently.
const ATTEMPTS: u32 = 3;

pub(super) async fn put(
    s: &Shared,
    actor: String,
    mut req: v1::PutSecretRequest,
) -> Result<v1::SecretInfo, Status> {
    let value = Zeroizing::new(std::mem::take(&mut req.value));
    check_name(&req.name)?;
    let w = add_version(s, &actor, &req.name, &value, |existing| {
        let def = definition(s, existing, &req)?;
        Ok((def, Older::Keep, 0, String::new()))
    })
    .await?;
    Ok(w.0)
}

pub(super) async fn rotate(
    s: &Shared,
    actor: String,
    mut req: v1::RotateSecretRequest,
) -> Result<v1::RotateSecretResponse, Status> {
    let value = Zeroizing::new(std::mem::take(&mut req.value));
    check_name(&req.name)?;
    let name = req.name.clone();
    let now = s.clock.now();
    let (info, written) = add_version(s, &actor, &name, &value, |existing| {
        let Some(c) = existing else {
            return Err(not_found(format!(
                "no secret named {name:?}; create it with `leashctl secret put {name} --owner OWNER`"
            )));
        };
        if c.disabled {
            return Err(invalid(format!(
                "secret {name:?} is disabled: a rotation would push to no lease; `leashctl secret enable {name}` first, or add a version with `leashctl secret put {name}`"
            )));
        }
        let version = c.current_version + 1;
        let mut reason = format!("rotated to version {version}");
        if !req.reason.is_empty() {
            reason = format!("{reason}: {}", req.reason);
        }
        let older = if req.grace_seconds == 0 {
            Older::Revoke {
                reason: reason.clone(),
                actor: actor.clone(),
            }
        } else {
            Older::RevokeAt {
                at: now + i64::from(req.grace_seconds),
                reason: reason.clone(),
                actor: actor.clone(),
            }
        };
        Ok((c, older, req.grace_seconds, reason))
    })
    .await?;
    let (seq, leases_revoked, hosts) = match &written.revocation {
        Some(rev) => (
            rev.seq,
            rev.lease_ids.len() as u32,
            crate::revocation::hosts_to_wait_for(s, rev),
        ),
        None => (0, 0, Vec::new()),
    };
    let scheduled = req.grace_seconds > 0 && !written.older_leases.is_empty();
    Ok(v1::RotateSecretResponse {
        secret: Some(info),
        seq,
        leases_revoked,
        hosts,
        leases_scheduled: if scheduled {
            written.older_leases.len() as u32
        } else {
            0
        },
        revoke_at_unix: if scheduled {
            now + i64::from(req.grace_seconds)
        } else {
            0
        },
    })
}

/// What `add_version`'s caller decides from the stored definition (`None`: no credential
/// of that name): the definition to store, what happens to older versions' leases, the
/// grace period and the reason (for the event of a rotation).
type Plan = (Credential, Older, u32, String);

/// Add a version of secret `name` holding `value`: read the definition, let `plan`
/// decide, check and seal the value, and write, again when another version was added
/// meanwhile (the new version's number is part of what is sealed).
async fn add_version(
    s: &Shared,
    actor: &str,
    name: &str,
    value: &[u8],
    plan: impl Fn(Option<Credential>) -> Result<Plan, Status>,
) -> Result<(v1::SecretInfo, SecretWritten), Status> {
    for _ in 0..ATTEMPTS {
        let existing = s.store.credential(name).map_err(Status::from)?;
        if let Some(c) = &existing {
            if c.kind == crate::kinds::postgres::POSTGRES_KIND {
                return Err(not_a_secret(name));
            }
            if c.kind != SECRET_KIND {
                return Err(invalid(format!(
                    "a credential named {name:?} (kind {}) exists; credentials and secrets share one namespace: choose another name",
                    c.kind
                )));
            }
        }
        let expected = existing.as_ref().map_or(0, |c| c.current_version);
        let (mut def, older, grace, reason) = plan(existing)?;
        let text = check_value(s, value, &def.format)?;
        let version = expected + 1;
        // Until the version is in the store: see `MasterKey::hold_for_sealed_write`.
        let held = s.master.hold_for_sealed_write().await;
        let sealed = s
            .master
            .seal(&secret_aad(name, version), value)
            .map_err(|e| Reason::Unavailable.status(format!("cannot seal the value: {e}")))?;
        let v = SecretVersion {
            version,
            created_at: s.clock.now(),
            created_by: actor.to_string(),
            size: value.len() as u32,
            fingerprint: crate::issuer::fingerprint(text),
            sealed,
        };
        def.current_version = version;
        let at_ms = s.clock.now_ms();
        let rotation = older != Older::Keep;
        let event = if rotation {
            audit::secret_rotated(at_ms, actor, name, &v, grace, &reason)
        } else {
            audit::secret_put(at_ms, actor, name, &v)
        };
        let meta = SecretVersion {
            sealed: Vec::new(),
            ..v.clone()
        };
        let write = SecretWrite {
            def,
            expected,
            version: v,
            older,
            event,
        };
        let written = s.store.put_secret(write).await;
        drop(held);
        match written {
            Ok(w) => {
                tracing::info!(secret = %name, version, fingerprint = %meta.fingerprint,
                    size = meta.size, rotation, "secret version added");
                return Ok((secret_info(&w.def, Some(&meta)), w));
            }
            Err(StoreError::Stale(_)) => continue,
            Err(e) => {
                let failed = audit::secret_write_failed(at_ms, actor, name);
                return Err(write_failed(s, e, failed).await);
            }
        }
    }
    Err(Reason::Unavailable.status(format!(
        "secret {name:?} kept changing while this version was added ({ATTEMPTS} attempts); try again"
    )))
}

/// The definition a `put` stores: a new secret from the request, or the stored one with
/// what the request sets.
fn definition(
    s: &Shared,
    existing: Option<Credential>,
    req: &v1::PutSecretRequest,
) -> Result<Credential, Status> {
    let new = existing.is_none();
    let mut c = existing.unwrap_or_else(|| Credential {
        name: req.name.clone(),
        kind: SECRET_KIND.to_string(),
        default_ttl: 300,
        format: "text".into(),
        created_at: s.clock.now(),
        ..Default::default()
    });
    let owner = req.owner.trim();
    if !owner.is_empty() {
        c.owner = Some(owner.to_string());
    } else if new {
        return Err(invalid(format!(
            "every secret needs an owner: add --owner TEAM-OR-PERSON (e.g. `leashctl secret put {} --owner team-web`)",
            req.name
        )));
    }
    if !req.format.is_empty() {
        if !FORMATS.contains(&req.format.as_str()) {
            return Err(invalid(format!(
                "unknown --format {:?}; use text, json or env",
                req.format
            )));
        }
        c.format = req.format.clone();
    }
    if req.default_ttl_seconds != 0 {
        c.default_ttl = req.default_ttl_seconds;
    }
    if req.max_ttl_seconds != 0 {
        c.max_ttl = req.max_ttl_seconds;
    } else if new {
        c.max_ttl = c.default_ttl.max(3600);
    }
    if c.max_ttl < c.default_ttl {
        return Err(invalid(format!(
            "--max-ttl ({}s) is below --ttl ({}s)",
            c.max_ttl, c.default_ttl
        )));
    }
    if !req.description.is_empty() {
        if req.description.len() > MAX_DESCRIPTION || req.description.chars().any(char::is_control)
        {
            return Err(invalid(format!(
                "--description must be one line of at most {MAX_DESCRIPTION} bytes"
            )));
        }
        c.description = req.description.clone();
    }
    if !req.labels.is_empty() {
        let labels: BTreeMap<String, String> = req.labels.clone().into_iter().collect();
        check_labels(&labels, "--label")?;
        c.labels = labels;
    }
    if !req.actions.is_empty() {
        for a in &req.actions {
            if !s.config.actions.contains(a) {
                return Err(invalid(format!(
                    "--actions names unknown action {a:?}; the configured actions are {}",
                    s.config.actions.join(", ")
                )));
            }
        }
        c.actions = req.actions.clone();
    }
    c.default_action = c.actions.first().cloned().unwrap_or_else(|| "read".into());
    if !s.config.actions.contains(&c.default_action) {
        c.default_action = s.config.actions.first().cloned().unwrap_or_default();
    }
    Ok(c)
}

fn check_name(name: &str) -> Result<(), Status> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid secret name {}: use path-like names such as team-web/stripe-key (letters, digits, '.', '-', '_' and '/')",
            leash_proto::names::excerpt(name)
        )))
    }
}

/// Check a value: not empty, at most `max_secret_bytes`, UTF-8, and written in its
/// `format`. The errors say where, never what.
fn check_value<'a>(s: &Shared, value: &'a [u8], format: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(invalid(
            "the value is empty; give it on stdin or with --from-file (`printf %s VALUE` for a value without a trailing newline)",
        ));
    }
    let max = s.config.max_secret_bytes as usize;
    if value.len() > max {
        return Err(invalid(format!(
            "the value is {} bytes; at most {max} are accepted (max_secret_bytes)",
            value.len()
        )));
    }
    let text = std::str::from_utf8(value).map_err(|e| {
        invalid(format!(
            "the value is not UTF-8 text (byte {} is not); store binary values encoded, e.g. as base64",
            e.valid_up_to()
        ))
    })?;
    check_format(text, format).map_err(invalid)?;
    Ok(text)
}

/// Whether `text` is written in `format`; the error names the line, never its content.
pub(crate) fn check_format(text: &str, format: &str) -> Result<(), String> {
    match format {
        "json" => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) if v.is_object() => Ok(()),
            Ok(_) => Err("the value is JSON but not an object (--format json)".into()),
            Err(e) => Err(format!(
                "the value is not valid JSON (--format json): a {:?} error at line {}, column {}",
                e.classify(),
                e.line(),
                e.column()
            )),
        },
        "env" => {
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let line = line.strip_prefix("export ").unwrap_or(line);
                let key = line.split_once('=').map(|(k, _)| k.trim());
                let ok = key.is_some_and(|k| {
                    k.chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
                if !ok {
                    return Err(format!(
                        "line {} of the value is not KEY=VALUE (--format env)",
                        i + 1
                    ));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The secret named `name`, or NOT_FOUND / INVALID saying why not.
fn secret_or_404(s: &Shared, name: &str) -> Result<Credential, Status> {
    match s.store.credential(name).map_err(Status::from)? {
        Some(c) if c.kind == SECRET_KIND => Ok(c),
        Some(c) if c.kind == crate::kinds::postgres::POSTGRES_KIND => Err(not_a_secret(name)),
        Some(c) => Err(invalid(format!(
            "{name:?} is a credential of kind {}, not a secret",
            c.kind
        ))),
        None => Err(not_found(format!(
            "no secret named {}; `leashctl credential list` shows the credentials and secrets that exist",
            leash_proto::names::excerpt(name)
        ))),
    }
}

/// Why `secret …` refuses a credential of another kind.
fn not_a_secret(name: &str) -> Status {
    invalid(format!(
        "{name} is a postgres credential; use `leashctl credential show|add|remove {name}`"
    ))
}

/// The definition with its current version's metadata.
fn info(s: &Shared, c: &Credential) -> Result<v1::SecretInfo, Status> {
    let v = s
        .store
        .secret_version(&c.name, c.current_version)
        .map_err(Status::from)?;
    Ok(secret_info(c, v.as_ref()))
}

pub(super) async fn versions(
    s: &Shared,
    req: v1::NameRequest,
) -> Result<v1::SecretVersionsResponse, Status> {
    let c = secret_or_404(s, &req.name)?;
    let versions = s
        .store
        .secret_versions(&c.name)
        .map_err(Status::from)?
        .iter()
        .map(|v| secret_version_info(v, c.current_version))
        .collect();
    Ok(v1::SecretVersionsResponse {
        name: c.name,
        versions,
    })
}

pub(super) async fn get(s: &Shared, req: v1::NameRequest) -> Result<v1::SecretDetail, Status> {
    let c = secret_or_404(s, &req.name)?;
    let now = s.clock.now();
    // (workload, version, host) -> usage
    let mut usage: BTreeMap<(String, u32, String), v1::SecretUsage> = BTreeMap::new();
    let mut active_leases = 0;
    for l in s.store.leases(None, false).map_err(Status::from)? {
        if l.credential != c.name {
            continue;
        }
        let active = l.state == LeaseState::Active && l.expires_at > now;
        active_leases += u32::from(active);
        let u = usage
            .entry((l.workload.clone(), l.version, l.host.clone()))
            .or_insert_with(|| v1::SecretUsage {
                workload: l.workload.clone(),
                version: l.version,
                host: l.host.clone(),
                ..Default::default()
            });
        u.leases += 1;
        u.active += u32::from(active);
        u.last_issued_unix = u.last_issued_unix.max(l.issued_at);
    }
    Ok(v1::SecretDetail {
        secret: Some(info(s, &c)?),
        usage: usage.into_values().collect(),
        active_leases,
    })
}

pub(super) async fn set_disabled(
    s: &Shared,
    actor: String,
    r: v1::SetDisabledRequest,
) -> Result<v1::SecretInfo, Status> {
    secret_or_404(s, &r.name)?;
    let reason = if r.reason.is_empty() {
        if r.disabled {
            "secret disabled"
        } else {
            "secret enabled"
        }
        .to_string()
    } else {
        r.reason
    };
    let (c, _) = s
        .store
        .set_secret_disabled(&r.name, r.disabled, actor, reason)
        .await
        .map_err(Status::from)?;
    info(s, &c)
}

pub(super) async fn remove(
    s: &Shared,
    actor: String,
    r: v1::RemoveSecretRequest,
) -> Result<v1::RemoveSecretResponse, Status> {
    let c = secret_or_404(s, &r.name)?;
    let now = s.clock.now();
    let active = s
        .store
        .leases(None, true)
        .map_err(Status::from)?
        .iter()
        .filter(|l| l.credential == c.name && l.expires_at > now)
        .count();
    if active > 0 && !r.yes {
        return Err(invalid(format!(
            "{active} active leases; add --yes to revoke them and remove the secret"
        )));
    }
    let at_ms = s.clock.now_ms();
    let (rev, versions_removed) = match s.store.remove_secret(&c.name, actor.clone()).await {
        Ok(r) => r,
        Err(e) => {
            let failed = audit::secret_write_failed(at_ms, &actor, &c.name);
            return Err(write_failed(s, e, failed).await);
        }
    };
    Ok(v1::RemoveSecretResponse {
        seq: rev.seq,
        leases_revoked: rev.lease_ids.len() as u32,
        hosts: crate::revocation::hosts_to_wait_for(s, &rev),
        versions_removed,
    })
}

#[cfg(test)]
mod tests {
    use super::check_format;

    #[test]
    fn formats_are_checked_without_quoting_the_value() {
        assert!(check_format("anything at all\n", "text").is_ok());
        assert!(check_format(r#"{"user":"u","password":"hunter2"}"#, "json").is_ok());
        let e = check_format(r#"["hunter2"]"#, "json").expect_err("not an object");
        assert!(!e.contains("hunter2"), "{e}");
        let e = check_format(r#"{"password": hunter2}"#, "json").expect_err("not JSON");
        assert!(!e.contains("hunter2") && e.contains("line 1"), "{e}");
        assert!(check_format("# c\nexport A=1\n\nB_2=x=y\n", "env").is_ok());
        let e = check_format("A=1\nhunter2\n", "env").expect_err("no =");
        assert_eq!(e, "line 2 of the value is not KEY=VALUE (--format env)");
        let e = check_format("A=1\n9X=hunter2\n", "env").expect_err("bad key");
        assert!(e.contains("line 2") && !e.contains("hunter2"), "{e}");
    }
}
