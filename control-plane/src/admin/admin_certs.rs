//! Admin certificates: `admin-cert issue|revoke|list`, the `AdminLogin` call that
//! redeems a one-time code for a certificate over the caller's CSR, and the check of an
//! admin certificate on every call made over TLS.
//!
//! An admin certificate is signed by the control plane CA with the URI SAN
//! `spiffe://<td>/leash/admin/<name>`; the TLS layer has verified it against the CA
//! bundle (so it verifies while its CA is in the bundle, across a CA rotation). Here it
//! must also be the current certificate of a record that is active and not past its
//! time: a revoked, replaced or expired certificate is refused on its next call.

use std::net::IpAddr;
use std::time::Duration;

use leash_proto::admin_code::{self, AdminCode};
use leash_proto::reason::Reason;
use leash_proto::v1;
use ring::rand::SecureRandom;
use tonic::Status;

use super::check::invalid;
use crate::actor::{Caller, Role, Via};
use crate::audit;
use crate::state::Shared;
use crate::store::{AdminCertRecord, StoreError};

/// Shortest admin certificate lifetime.
const MIN_TTL: u32 = 5 * 60;
/// Longest admin certificate lifetime.
const MAX_TTL: u32 = 30 * 24 * 3600;
/// Lifetime when none is asked for.
const DEFAULT_TTL: u32 = 8 * 3600;
/// How long a one-time code may be redeemed.
const CODE_TTL: i64 = 15 * 60;

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
}

/// The record as the admin API shows it.
fn info(r: &AdminCertRecord, now: i64) -> v1::AdminCertInfo {
    v1::AdminCertInfo {
        name: r.name.clone(),
        role: r.role.clone(),
        state: r.state_at(now).to_string(),
        ttl_seconds: r.ttl_seconds,
        not_after_unix: r.not_after,
        serial: r.serial.clone(),
        issued_by: r.issued_by.clone(),
        issued_at_unix: r.issued_at,
        code_expires_at_unix: if r.state == "pending" {
            r.code_expires_at
        } else {
            0
        },
    }
}

/// `admin-cert issue`: a one-time code for `name` with `role`. Issuing again for a name
/// replaces its record: the certificate issued before is refused from then on.
pub(super) async fn issue(
    s: &Shared,
    actor: String,
    r: v1::IssueAdminCertRequest,
) -> Result<v1::IssueAdminCertResponse, Status> {
    if !admin_code::valid_name(&r.name) {
        return Err(invalid(format!(
            "invalid admin name {}: use 1 to {} letters, digits, '.', '-', '_'",
            leash_proto::names::excerpt(&r.name),
            admin_code::MAX_NAME_LEN
        )));
    }
    let role = Role::parse(&r.role).ok_or_else(|| {
        invalid(format!(
            "unknown role {}: use viewer, approver, operator or admin",
            leash_proto::names::excerpt(&r.role)
        ))
    })?;
    let ttl = if r.ttl_seconds == 0 {
        DEFAULT_TTL
    } else {
        r.ttl_seconds
    };
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(invalid(
            "an admin certificate lives 5m to 30d (720h); choose a --ttl in that range",
        ));
    }
    let mut secret = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| Reason::Unavailable.status("no randomness available"))?;
    let now = s.clock.now();
    let rec = AdminCertRecord {
        name: r.name.clone(),
        role: role.as_str().to_string(),
        state: "pending".into(),
        ttl_seconds: ttl,
        code_sha256: sha256_hex(&secret),
        code_expires_at: now + CODE_TTL,
        serial: String::new(),
        not_after: 0,
        issued_by: actor.clone(),
        issued_at: now,
    };
    let ev = audit::admin_cert_issued(s.clock.now_ms(), &actor, &r.name, role.as_str(), ttl);
    s.store
        .put_admin_cert(rec.clone(), ev)
        .await
        .map_err(Status::from)?;
    tracing::info!(admin = %r.name, role = %role, by = %actor, "admin certificate code issued");
    Ok(v1::IssueAdminCertResponse {
        code: AdminCode::encode(&r.name, &secret, &s.keys.ca_pin()),
        info: Some(info(&rec, now)),
    })
}

/// `admin-cert revoke NAME`.
pub(super) async fn revoke(
    s: &Shared,
    actor: String,
    r: v1::NameRequest,
) -> Result<v1::AdminCertInfo, Status> {
    let ev = audit::admin_cert_revoked(s.clock.now_ms(), &actor, &r.name);
    let rec = s
        .store
        .revoke_admin_cert(&r.name, ev)
        .await
        .map_err(Status::from)?;
    tracing::info!(admin = %r.name, by = %actor, "admin certificate revoked");
    Ok(info(&rec, s.clock.now()))
}

/// `admin-cert list`.
pub(super) fn list(s: &Shared) -> Result<v1::ListAdminCertsResponse, Status> {
    let now = s.clock.now();
    let certs = s.store.admin_certs().map_err(Status::from)?;
    Ok(v1::ListAdminCertsResponse {
        certs: certs.iter().map(|r| info(r, now)).collect(),
    })
}

/// `AdminLogin`: redeem a one-time code for a certificate over the CSR's key. Limited
/// per source like Enroll, since anyone who can reach the port may call it.
pub(super) async fn login(
    s: &Shared,
    source: Option<IpAddr>,
    r: v1::AdminLoginRequest,
) -> Result<v1::AdminLoginResponse, Status> {
    if let Err(wait) = s.enroll_guard.admit(source, s.clock.now_ms()) {
        return Err(Reason::Unavailable.status(format!(
            "too many attempts from this source; retry in {}s",
            wait.as_secs().max(1)
        )));
    }
    let code = AdminCode::parse(&r.code).map_err(|e| Reason::Denied.status(e.to_string()))?;
    if !s.keys.is_published_ca_pin(&code.ca_pin) {
        return Err(Reason::Denied
            .status("the login code was issued by another control plane (CA pin mismatch)"));
    }
    let refused = |m: &str| {
        tracing::warn!(admin = %code.name, source = ?source, reason = m, "admin login refused");
        Reason::Denied.status(format!(
            "{m}; ask an admin for a new code (leashctl admin-cert issue)"
        ))
    };
    let now = s.clock.now();
    let rec = s
        .store
        .admin_cert(&code.name)
        .map_err(Status::from)?
        .ok_or_else(|| refused("unknown admin login code"))?;
    let code_sha = sha256_hex(&code.secret_bytes());
    // Checked here before a signature is spent, and again in the write that redeems it.
    if rec.code_sha256 != code_sha {
        return Err(match rec.state.as_str() {
            "active" if rec.code_sha256.is_empty() => {
                refused("this login code was already used; codes are single use")
            }
            "revoked" => refused("this admin certificate was revoked"),
            _ => refused("the login code does not match (mistyped, or replaced by a newer one)"),
        });
    }
    if now >= rec.code_expires_at {
        return Err(refused("the login code has expired"));
    }
    let ttl = Duration::from_secs(u64::from(rec.ttl_seconds));
    let (der, serial, not_after) = s
        .keys
        .sign_admin_cert(&r.csr_der, &code.name, ttl)
        .map_err(|e| invalid(format!("{e}; send a PKCS#10 CSR over a P-256 key")))?;
    let ev = audit::admin_login(s.clock.now_ms(), &code.name, &rec.role, &serial, not_after);
    let rec = match s
        .store
        .redeem_admin_code(&code.name, &code_sha, now, serial, not_after, ev)
        .await
    {
        Ok(r) => r,
        Err(StoreError::Refused(m)) => return Err(Reason::Denied.status(m)),
        Err(e) => return Err(Status::from(e)),
    };
    tracing::info!(admin = %rec.name, role = %rec.role, "admin logged in");
    Ok(v1::AdminLoginResponse {
        name: rec.name,
        role: rec.role,
        certificate_der: der.to_vec(),
        ca_certificates_der: s.keys.bundle_ders(),
        trust_domain: s.config.trust_domain.clone(),
        not_after_unix: not_after,
    })
}

/// The URI SANs of a certificate.
fn uri_sans(der: &[u8]) -> Vec<String> {
    let Ok((_, c)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = c.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// The admin a client certificate (verified against the CA bundle by the TLS layer)
/// belongs to, or a denial saying why not.
pub(super) fn mtls_caller(s: &Shared, der: &[u8]) -> Result<Caller, Status> {
    let prefix = format!("spiffe://{}/leash/admin/", s.config.trust_domain);
    let sans = uri_sans(der);
    let Some(name) = sans.iter().find_map(|u| u.strip_prefix(&prefix)) else {
        let what = if sans.iter().any(|u| u.contains("/leash/host/")) {
            "a host certificate"
        } else {
            "not an admin certificate"
        };
        return Err(Reason::Denied.status(format!(
            "the admin service refuses this client certificate ({what}); use an admin \
             certificate from `leashctl login`"
        )));
    };
    let serial = crate::keys::cert_serial(der)
        .ok_or_else(|| Reason::Denied.status("unreadable client certificate"))?;
    let rec = s
        .store
        .admin_cert(name)
        .map_err(Status::from)?
        .ok_or_else(|| {
            Reason::Denied.status(format!(
                "no admin certificate named {name:?} is on record; ask an admin for a new code"
            ))
        })?;
    if rec.state == "revoked" {
        return Err(Reason::Denied.status(format!(
            "the admin certificate of {name:?} was revoked; ask an admin for a new code"
        )));
    }
    if rec.state != "active" || rec.serial != serial {
        return Err(Reason::Denied.status(format!(
            "this admin certificate of {name:?} is not the current one (a newer code was \
             issued); log in again with the new code"
        )));
    }
    if s.clock.now() >= rec.not_after {
        return Err(Reason::Denied.status(format!(
            "the admin certificate of {name:?} has expired; ask an admin for a new code and \
             run `leashctl login` again"
        )));
    }
    let role = Role::parse(&rec.role).ok_or_else(|| {
        Reason::Denied.status(format!("the admin record of {name:?} has an unknown role"))
    })?;
    Ok(Caller {
        name: name.to_string(),
        role,
        via: Via::Mtls,
    })
}
