//! Deciding one request: the entities and context Cedar sees, and the verdict.

use std::collections::BTreeMap;
use std::sync::Arc;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, PolicyId, Request, RestrictedExpression,
};

use super::engine::{Engine, MAX_SUBSETS};
use super::error::PolicyError;
use super::schema::{tags, uid};
use crate::model::{Credential, Facts, Host, Workload};

/// What policy said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Allowed (possibly only after approval).
    pub allow: bool,
    /// Allowed only after a human approves.
    pub approval_required: bool,
    /// Ids of the policies that determined it (`Engine::policy_text` has their source).
    pub reasons: Vec<String>,
    /// Evaluation errors (a policy that errored is skipped, as Cedar does).
    pub errors: Vec<String>,
    /// Policy version.
    pub version: u64,
}

impl Engine {
    /// Decide one request.
    pub fn decide(
        &self,
        w: &Workload,
        c: &Credential,
        action: &str,
        host: &Host,
        f: &Facts,
    ) -> Result<Verdict, PolicyError> {
        let cur = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let e = |x: &dyn std::fmt::Display| PolicyError::Engine(x.to_string());
        let principal = uid("Workload", &w.name)?;
        let resource = uid("Credential", &c.name)?;
        let host_uid = uid("Host", &host.name)?;
        let action_uid = uid("Action", action)?;
        // Entities change only when a workload, credential or host does, so they are
        // built once per (workload, owner, kind, credential, kind + labels, host + labels)
        // and reused.
        let ekey = (
            w.name.clone(),
            w.owner.clone(),
            w.kind,
            c.name.clone(),
            // A credential's labels are its tags: they key the entities as its kind does.
            format!("{}{:?}", c.kind, c.labels),
            // Host labels are fixed at enrollment, but keying on them costs little.
            format!("{}{:?}", host.name, host.labels),
        );
        let cached = cur
            .entities
            .lock()
            .unwrap_or_else(|x| x.into_inner())
            .get(&ekey)
            .cloned();
        let entities = match cached {
            Some(ents) => ents,
            None => {
                let no_tags = BTreeMap::new();
                let built = Entities::from_entities(
                    [
                        Entity::new_with_tags(
                            principal.clone(),
                            [
                                (
                                    "owner".to_string(),
                                    RestrictedExpression::new_string(w.owner.clone()),
                                ),
                                (
                                    "kind".to_string(),
                                    RestrictedExpression::new_string(w.kind.to_string()),
                                ),
                            ],
                            [],
                            tags(&no_tags),
                        )
                        .map_err(|x| e(&x))?,
                        Entity::new_with_tags(
                            resource.clone(),
                            [(
                                "kind".to_string(),
                                RestrictedExpression::new_string(c.kind.clone()),
                            )],
                            [],
                            tags(&c.labels),
                        )
                        .map_err(|x| e(&x))?,
                        Entity::new_with_tags(
                            host_uid.clone(),
                            [(
                                "name".to_string(),
                                RestrictedExpression::new_string(host.name.clone()),
                            )],
                            [],
                            tags(&host.labels),
                        )
                        .map_err(|x| e(&x))?,
                    ],
                    None,
                )
                .map_err(|x| e(&x))?;
                let built = Arc::new(built);
                let mut cache = cur.entities.lock().unwrap_or_else(|x| x.into_inner());
                if cache.len() >= MAX_SUBSETS {
                    cache.clear();
                }
                cache.insert(ekey, built.clone());
                built
            }
        };
        let (hour, weekday, iso) = civil(f.now);
        let rec = |pairs: Vec<(&str, RestrictedExpression)>| {
            RestrictedExpression::new_record(pairs.into_iter().map(|(k, v)| (k.to_string(), v)))
        };
        let context = Context::from_pairs([
            (
                "host".to_string(),
                RestrictedExpression::new_entity_uid(host_uid),
            ),
            (
                "attested".to_string(),
                rec(vec![
                    ("uid", RestrictedExpression::new_long(f.uid)),
                    ("user", RestrictedExpression::new_string(f.user.clone())),
                    (
                        "exe_path",
                        RestrictedExpression::new_string(f.exe_path.clone()),
                    ),
                    ("sha256", RestrictedExpression::new_string(f.sha256.clone())),
                ])
                .map_err(|x| e(&x))?,
            ),
            (
                "ttl_seconds".to_string(),
                RestrictedExpression::new_long(f.ttl_seconds),
            ),
            (
                "audience".to_string(),
                RestrictedExpression::new_string(f.audience.clone()),
            ),
            (
                "task".to_string(),
                rec(vec![
                    ("present", RestrictedExpression::new_bool(f.task.is_some())),
                    (
                        "name",
                        RestrictedExpression::new_string(f.task.clone().unwrap_or_default()),
                    ),
                ])
                .map_err(|x| e(&x))?,
            ),
            (
                "on_behalf_of".to_string(),
                RestrictedExpression::new_string(f.on_behalf_of.clone()),
            ),
            ("now".to_string(), datetime(f.now, iso)),
            ("hour".to_string(), RestrictedExpression::new_long(hour)),
            (
                "weekday".to_string(),
                RestrictedExpression::new_long(weekday),
            ),
        ])
        .map_err(|x| e(&x))?;
        // The context is built to the schema's shape right here, so it is not validated
        // against the schema again on every request.
        let subset = cur.subset(&principal, &action_uid, &resource);
        let request =
            Request::new(principal, action_uid, resource, context, None).map_err(|x| e(&x))?;
        let resp = Authorizer::new().is_authorized(&request, &subset, &entities);
        let errors: Vec<String> = resp.diagnostics().errors().map(|x| x.to_string()).collect();
        let reason_ids: Vec<PolicyId> = resp.diagnostics().reason().cloned().collect();
        let reasons: Vec<String> = reason_ids.iter().map(|id| id.to_string()).collect();
        let (allow, approval_required) = match resp.decision() {
            Decision::Deny => (false, false),
            Decision::Allow => {
                // Allowed by permits only: approval is needed when every permit that
                // matched is annotated @approval("required").
                let needs = reason_ids.iter().all(|id| cur.approval.contains(id));
                (true, needs && !reason_ids.is_empty())
            }
        };
        Ok(Verdict {
            allow,
            approval_required,
            reasons,
            errors,
            version: cur.version,
        })
    }
}

/// `datetime(ISO)` for a unix second. `RestrictedExpression::new_datetime` parses the
/// extension function's name with the Cedar parser on every call (tens of µs), so the
/// expression is built once per second and cloned.
fn datetime(unix: i64, iso: String) -> RestrictedExpression {
    static LAST: std::sync::Mutex<Option<(i64, RestrictedExpression)>> =
        std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    match &*last {
        Some((t, expr)) if *t == unix => expr.clone(),
        _ => {
            let expr = RestrictedExpression::new_datetime(iso);
            *last = Some((unix, expr.clone()));
            expr
        }
    }
}

/// UTC hour (0-23), ISO weekday (1 = Monday … 7 = Sunday) and an RFC 3339 string.
pub(super) fn civil(unix: i64) -> (i64, i64, String) {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // 1970-01-01 was a Thursday (ISO 4).
    let weekday = (days + 3).rem_euclid(7) + 1;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let iso = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    );
    (secs / 3600, weekday, iso)
}
