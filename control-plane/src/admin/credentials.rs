//! `credential add|list`: validating and storing credential definitions.

use std::collections::BTreeMap;

use leash_proto::v1;
use tonic::Status;

use super::check::invalid;
use crate::audit;
use crate::model::{valid_name, Credential};
use crate::state::Shared;
use crate::wire::credential_proto;

/// Kinds docs/CLI.md names as coming, told apart from typing mistakes.
const RESERVED_KINDS: [&str; 3] = ["static", "x509", "postgres"];

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
    let default_action = if c.default_action.is_empty() {
        "read".to_string()
    } else {
        c.default_action
    };
    if !actions.contains(&default_action) {
        return Err(invalid(format!(
            "unknown --default-action {default_action:?}; the configured actions are {}",
            actions.join(", ")
        )));
    }
    let mut scopes = BTreeMap::new();
    for (action, sc) in c.scopes {
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
    let rec = Credential {
        name: c.name,
        kind: c.kind,
        audiences: c.audiences,
        default_ttl: c.default_ttl_seconds,
        max_ttl,
        default_action,
        scopes,
        created_at: s.clock.now(),
        ..Default::default()
    };
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
