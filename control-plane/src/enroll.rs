//! Enrollment: trade a one-time join token and a CSR for a host certificate.
//!
//! The name and labels a token binds are kept on the control plane with the token's
//! hash; the agent's own `--name`/`--label` may only narrow them. Every refusal is
//! answered with its reason and recorded as a `denied` event.

use std::collections::BTreeMap;

use leash_proto::join_token::JoinToken;
use leash_proto::reason::Reason;
use leash_proto::v1;
use tonic::Status;

use crate::agent_api::narrow_labels;
use crate::model::{valid_name, Event, Host};
use crate::server::Shared;
use crate::store::StoreError;

async fn refuse(s: &Shared, token_id: Option<&str>, reason: String) -> Status {
    let mut e = Event::new("denied").actor("enroll").reason(reason.clone());
    if let Some(id) = token_id {
        e = e.detail(serde_json::json!({ "join_token": id }));
    }
    if let Err(err) = s.store.append_events(vec![e]).await {
        tracing::warn!(error = %err, "could not record a denied enrollment");
    }
    tracing::warn!(%reason, "enrollment refused");
    Reason::Denied.status(reason)
}

/// Handle an Enroll call.
pub async fn enroll(s: &Shared, r: v1::EnrollRequest) -> Result<v1::EnrollResponse, Status> {
    if r.protocol_version != leash_proto::PROTOCOL_VERSION {
        return Err(Reason::Invalid.status(format!(
            "protocol version {} is not supported (this control plane speaks {})",
            r.protocol_version,
            leash_proto::PROTOCOL_VERSION
        )));
    }
    let token = match JoinToken::parse(&r.join_token) {
        Ok(t) => t,
        Err(e) => return Err(refuse(s, None, e.to_string()).await),
    };
    if token.ca_pin != s.keys.ca_pin {
        return Err(refuse(
            s,
            Some(&token.id),
            "the join token was minted by another control plane (CA pin mismatch)".into(),
        )
        .await);
    }
    let now = s.clock.now();
    let record = match s
        .store
        .join_token(&token.id)
        .map_err(crate::server::store_status)?
    {
        Some(t) => t,
        None => {
            return Err(refuse(
                s,
                Some(&token.id),
                "unknown join token (forged, or from another control plane)".into(),
            )
            .await)
        }
    };
    let name = match (&record.name, r.name.as_str()) {
        (Some(bound), "") => bound.clone(),
        (Some(bound), asked) if asked == bound => bound.clone(),
        (Some(bound), asked) => {
            return Err(refuse(
                s,
                Some(&token.id),
                format!("the join token binds the name {bound:?}, not {asked:?}"),
            )
            .await)
        }
        (None, "") if !r.default_name.is_empty() => r.default_name.clone(),
        (None, "") => {
            return Err(refuse(
                s,
                Some(&token.id),
                "no host name given and none bound in the token; start the agent with --name"
                    .into(),
            )
            .await)
        }
        (None, asked) => asked.to_string(),
    };
    if !valid_name(&name) || name.contains('/') {
        return Err(Reason::Invalid.status(format!(
            "invalid host name {name:?}: use letters, digits, '.', '-', '_'"
        )));
    }
    let asked: BTreeMap<String, String> = r.labels.into_iter().collect();
    let labels = match narrow_labels(&record.labels, &asked) {
        Ok(l) => l,
        Err(m) => return Err(refuse(s, Some(&token.id), m).await),
    };
    let (cert, serial, not_after) = s
        .keys
        .sign_host_cert(&r.csr_der, &name, s.config.host_cert_ttl)
        .map_err(|e| {
            Reason::Invalid.status(format!("{e}; the agent must send a valid PKCS#10 CSR"))
        })?;
    let secret_sha = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &token.secret_bytes(),
    ));
    let host = Host {
        name: name.clone(),
        labels: labels.clone(),
        enrolled_at: now,
        last_seen: now,
        evicted: false,
        cert_serial: serial,
        cert_not_after: not_after,
    };
    let event = Event::new("enrolled")
        .actor(name.clone())
        .host(name.clone())
        .detail(serde_json::json!({ "join_token": token.id, "labels": labels, "agent_version": r.agent_version }));
    match s
        .store
        .enroll(&token.id, &secret_sha, host, now, event)
        .await
    {
        Ok(_) => {}
        Err(StoreError::Refused(m)) | Err(StoreError::Conflict(m)) => {
            return Err(refuse(s, Some(&token.id), m).await)
        }
        Err(e) => return Err(crate::server::store_status(e)),
    }
    tracing::info!(host = %name, "host enrolled");
    Ok(v1::EnrollResponse {
        host_name: name,
        labels: labels.into_iter().collect(),
        certificate_der: cert.to_vec(),
        ca_certificate_der: s.keys.ca_der.to_vec(),
        trust_domain: s.config.trust_domain.clone(),
        not_after_unix: not_after,
    })
}
