//! The Cedar schema for the configured action classes, and the names of Leash's
//! entity types and `--allow` links in it.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use cedar_policy::{EntityId, EntityTypeName, EntityUid, RestrictedExpression};

use super::error::PolicyError;

/// Id of the `--allow` template.
pub(super) const ALLOW_TEMPLATE: &str = "leash-allow";

/// The Cedar schema for the configured action classes.
pub fn schema_text(actions: &[String]) -> String {
    let actions = actions
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"namespace Leash {{
  // Labels are tags: host.hasTag("role") && host.getTag("role") == "ci-runner".
  entity Host = {{ name: String }} tags String;
  entity Workload = {{ owner: String, kind: String }} tags String;
  entity Credential = {{ kind: String }} tags String;
  type Attested = {{ uid: Long, user: String, exe_path: String, sha256: String }};
  type Task = {{ present: Bool, name: String }};
  type Context = {{
    host: Host,
    attested: Attested,
    ttl_seconds: Long,
    audience: String,
    task: Task,
    on_behalf_of: String,
    now: datetime,
    hour: Long,
    weekday: Long,
  }};
  action {actions} appliesTo {{
    principal: [Workload],
    resource: [Credential],
    context: Context,
  }};
}}
"#
    )
}

pub(super) fn ty(name: &str) -> Result<EntityTypeName, PolicyError> {
    // The four type names are parsed once per process, not on every decision.
    static TYPES: std::sync::OnceLock<HashMap<&'static str, EntityTypeName>> =
        std::sync::OnceLock::new();
    let types = TYPES.get_or_init(|| {
        ["Workload", "Credential", "Host", "Action"]
            .into_iter()
            .filter_map(|n| {
                EntityTypeName::from_str(&format!("Leash::{n}"))
                    .ok()
                    .map(|t| (n, t))
            })
            .collect()
    });
    match types.get(name) {
        Some(t) => Ok(t.clone()),
        None => EntityTypeName::from_str(&format!("Leash::{name}"))
            .map_err(|e| PolicyError::Engine(e.to_string())),
    }
}

pub(super) fn uid(kind: &str, id: &str) -> Result<EntityUid, PolicyError> {
    Ok(EntityUid::from_type_name_and_id(
        ty(kind)?,
        EntityId::new(id),
    ))
}

pub(super) fn tags(m: &BTreeMap<String, String>) -> Vec<(String, RestrictedExpression)> {
    m.iter()
        .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())))
        .collect()
}

pub(super) fn allow_link_id(workload: &str, credential: &str) -> String {
    format!("allow:{workload}:{credential}")
}
