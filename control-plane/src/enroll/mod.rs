//! Enrollment: trade a one-time join token and a CSR for a host certificate, and keep
//! the callers of the one call that needs no certificate from filling the audit log.
//!
//! The name and labels a token binds are kept on the control plane with the token's
//! hash; the agent's own `--name`/`--label` may only narrow them. Every refusal is
//! answered with its reason. Because anyone who can reach the port may call Enroll:
//! - calls are rate-limited per source address and overall (token buckets, the
//!   `enroll_*` config keys), answered UNAVAILABLE with when to retry;
//! - a token that is not even shaped like a join token is refused before any lookup or
//!   write, and leaves no event;
//! - the other refusals are counted per source and recorded as one `enroll-refused`
//!   event per source per interval, with the count; past `enroll_refused_max_sources`
//!   sources in an interval the rest share one event;
//! - a refusal about a token this control plane minted (used, expired, revoked, wrong
//!   secret, name or labels not bound) is also recorded at once as a `denied` event with
//!   its reason, so a misused real token shows up without waiting, but only the first
//!   such refusal per source per interval.
//!
//! So unauthenticated callers add at most `2 × (enroll_refused_max_sources + 1)` events
//! per `enroll_refused_interval`, whatever they send.

use std::collections::BTreeMap;
use std::net::IpAddr;

use leash_proto::join_token::JoinToken;
use leash_proto::v1;

use crate::audit;
use crate::model::{valid_name, Host};
use crate::state::Shared;
use crate::store::StoreError;

pub mod guard;

/// Why an enrollment was refused. Each says what to do; `status.rs` maps them to the
/// reasons docs/CLI.md lists.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// Too many calls from this source, or from everyone (unavailable).
    #[error("too many enrollment attempts from {from}; retry in {retry_secs}s")]
    RateLimited {
        /// The source address, or "this source".
        from: String,
        /// Seconds until a call is allowed again.
        retry_secs: u64,
    },
    /// The agent speaks another protocol version (invalid).
    #[error(
        "protocol version {0} is not supported (this control plane speaks {speaks})",
        speaks = leash_proto::PROTOCOL_VERSION
    )]
    Protocol(u32),
    /// The text is not shaped like a join token (denied, and not recorded).
    #[error("{0}")]
    Malformed(String),
    /// The token was refused (denied; counted, and recorded for tokens minted here).
    #[error("{0}")]
    Refused(String),
    /// The host name is not a valid name (invalid).
    #[error("invalid host name {0:?}: use letters, digits, '.', '-', '_'")]
    InvalidName(String),
    /// The certificate request could not be signed (invalid).
    #[error("{0}; the agent must send a valid PKCS#10 CSR")]
    Csr(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A label the agent asked for that the join token does not bind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label {key}={value} is not bound in the join token; an agent may only narrow the token's labels")]
pub struct LabelError {
    /// The label's key.
    pub key: String,
    /// The value asked for.
    pub value: String,
}

/// Longest join token text looked at; a real one is about 150 bytes.
const MAX_TOKEN_LEN: usize = 512;
/// Longest join token id accepted (ids minted here are a dozen characters).
const MAX_TOKEN_ID_LEN: usize = 64;
/// Record refused enrollments once per interval (by the control plane's clock), until
/// the process ends.
pub async fn flush_every_interval(s: std::sync::Arc<Shared>) {
    s.enroll_guard
        .flush_every_interval(s.store.as_ref(), &s.clock)
        .await;
}

/// Whether `text` is shaped like a join token at all: cheap checks on the text alone.
fn well_formed(text: &str) -> Result<JoinToken, EnrollError> {
    if text.len() > MAX_TOKEN_LEN {
        return Err(EnrollError::Malformed(format!(
            "malformed join token: longer than {MAX_TOKEN_LEN} bytes; create a new one with `leashctl join-token create`"
        )));
    }
    let token = JoinToken::parse(text).map_err(|e| EnrollError::Malformed(e.to_string()))?;
    if token.id.len() > MAX_TOKEN_ID_LEN {
        return Err(EnrollError::Malformed(format!(
            "malformed join token: the id is longer than {MAX_TOKEN_ID_LEN} characters; create a new one with `leashctl join-token create`"
        )));
    }
    Ok(token)
}

/// A refused enrollment: counted for the source's aggregated event, and answered. Only
/// a refusal about a token minted here (`known`) may also be recorded at once.
async fn refuse(
    s: &Shared,
    source: Option<IpAddr>,
    kind: &'static str,
    token_id: Option<&str>,
    known: bool,
    reason: String,
) -> EnrollError {
    let first = s
        .enroll_guard
        .refused(source, kind, token_id, known, s.clock.now_ms());
    if first {
        let e = audit::enroll_denied(s.clock.now_ms(), &reason, token_id, source);
        if let Err(err) = s.store.append_events(vec![e]).await {
            tracing::warn!(error = %err, "could not record a denied enrollment");
        }
        tracing::warn!(%reason, source = ?source, "enrollment refused");
    } else {
        tracing::debug!(source = ?source, kind, "enrollment refused");
    }
    EnrollError::Refused(reason)
}

/// Labels an agent asked for must narrow the token's, never add to them.
pub fn narrow_labels(
    bound: &BTreeMap<String, String>,
    asked: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, LabelError> {
    if asked.is_empty() {
        return Ok(bound.clone());
    }
    for (k, v) in asked {
        if bound.get(k) != Some(v) {
            return Err(LabelError {
                key: k.clone(),
                value: v.clone(),
            });
        }
    }
    Ok(asked.clone())
}

/// Handle an Enroll call.
pub async fn enroll(
    s: &Shared,
    source: Option<IpAddr>,
    r: v1::EnrollRequest,
) -> Result<v1::EnrollResponse, EnrollError> {
    if let Err(wait) = s.enroll_guard.admit(source, s.clock.now_ms()) {
        let from = source.map_or_else(|| "this source".to_string(), |ip| ip.to_string());
        return Err(EnrollError::RateLimited {
            from,
            retry_secs: wait.as_secs().max(1),
        });
    }
    if r.protocol_version != leash_proto::PROTOCOL_VERSION {
        return Err(EnrollError::Protocol(r.protocol_version));
    }
    // Refused before any lookup or write, and not recorded: the text alone shows it
    // is not a join token.
    let token = well_formed(&r.join_token)?;
    if !s.keys.is_published_ca_pin(&token.ca_pin) {
        return Err(refuse(
            s,
            source,
            "ca-pin",
            Some(&token.id),
            false,
            "the join token was minted by another control plane (CA pin mismatch)".into(),
        )
        .await);
    }
    let now = s.clock.now();
    let record = match s.store.join_token(&token.id)? {
        Some(t) => t,
        None => {
            return Err(refuse(
                s,
                source,
                "unknown-token",
                Some(&token.id),
                false,
                "unknown join token (forged, or from another control plane)".into(),
            )
            .await)
        }
    };
    // Only the holder of the secret learns anything more (the bound name, the labels) or
    // costs a signature; the store checks both again in the write that uses the token.
    let secret_sha = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &token.secret_bytes(),
    ));
    let unusable = if record.secret_sha256 != secret_sha {
        Some("join token secret does not match (forged or mistyped token)")
    } else {
        match record.state(now) {
            "active" => None,
            "used" => Some("join token was already used; tokens are single use"),
            "revoked" => Some("join token was revoked"),
            _ => Some("join token has expired"),
        }
    };
    if let Some(why) = unusable {
        return Err(refuse(s, source, "refused", Some(&token.id), true, why.into()).await);
    }
    let name = match (&record.name, r.name.as_str()) {
        (Some(bound), "") => bound.clone(),
        (Some(bound), asked) if asked == bound => bound.clone(),
        (Some(bound), asked) => {
            return Err(refuse(
                s,
                source,
                "name",
                Some(&token.id),
                true,
                format!(
                    "the join token binds the name {bound:?}, not {}",
                    leash_proto::names::excerpt(asked)
                ),
            )
            .await)
        }
        (None, "") if !r.default_name.is_empty() => r.default_name.clone(),
        (None, "") => {
            return Err(refuse(
                s,
                source,
                "name",
                Some(&token.id),
                true,
                "no host name given and none bound in the token; start the agent with --name"
                    .into(),
            )
            .await)
        }
        (None, asked) => asked.to_string(),
    };
    if !valid_name(&name) || name.contains('/') {
        return Err(EnrollError::InvalidName(name));
    }
    let asked: BTreeMap<String, String> = r.labels.into_iter().collect();
    let labels = match narrow_labels(&record.labels, &asked) {
        Ok(l) => l,
        Err(m) => {
            return Err(refuse(s, source, "labels", Some(&token.id), true, m.to_string()).await)
        }
    };
    let (cert, serial, not_after) = s
        .keys
        .sign_host_cert(&r.csr_der, &name, s.config.host_cert_ttl)
        .map_err(|e| EnrollError::Csr(e.to_string()))?;
    let host = Host {
        name: name.clone(),
        labels: labels.clone(),
        enrolled_at: now,
        last_seen: now,
        evicted: false,
        cert_serial: serial,
        cert_not_after: not_after,
    };
    let event = audit::enrolled(
        s.clock.now_ms(),
        &name,
        &token.id,
        &labels,
        &r.agent_version,
    );
    match s
        .store
        .enroll(&token.id, &secret_sha, host, now, event)
        .await
    {
        Ok(_) => {}
        Err(StoreError::Refused(m)) | Err(StoreError::Conflict(m)) => {
            return Err(refuse(s, source, "refused", Some(&token.id), true, m).await)
        }
        Err(e) => return Err(EnrollError::Store(e)),
    }
    tracing::info!(host = %name, "host enrolled");
    Ok(v1::EnrollResponse {
        host_name: name,
        labels: labels.into_iter().collect(),
        certificate_der: cert.to_vec(),
        ca_certificate_der: s.keys.ca_der().to_vec(),
        ca_certificates_der: s.keys.bundle_ders(),
        trust_domain: s.config.trust_domain.clone(),
        not_after_unix: not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_tokens_are_told_apart_without_echoing_them() {
        let pin = format!("sha256:{}", "ab".repeat(32));
        let good = JoinToken::encode("jt-1a2b", &[7u8; 32], &pin);
        assert!(well_formed(&good).is_ok());
        for bad in [
            "x".repeat(10_000),
            JoinToken::encode(&"a".repeat(65), &[7u8; 32], &pin),
            "leash-join.v1.nonsense".into(),
        ] {
            let e = well_formed(&bad).expect_err("malformed").to_string();
            assert!(e.len() < 200 && !e.contains("aaaaaaaaaa"), "{e}");
        }
    }
}
