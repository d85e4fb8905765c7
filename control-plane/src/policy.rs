//! Runtime policy in Cedar, evaluated on every issuance.
//!
//! Principal `Leash::Workload`, action `Leash::Action::"<class>"`, resource
//! `Leash::Credential`, validated against the schema in [`schema_text`]. Default deny;
//! `forbid` wins. A `permit` annotated `@approval("required")` allows only after a human
//! approves; if an unannotated permit also matches, no approval is needed.
//!
//! `leashctl workload add --allow C` is sugar for a link of the template
//! `permit(principal == ?principal, action, resource == ?resource);` — those links are
//! made from each workload's allow list whenever the policy is compiled, so entries made
//! before policies existed keep working.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema, SlotId, Template, ValidationMode, Validator,
};
use miette::Diagnostic;
use serde::{Deserialize, Serialize};

use crate::model::{Credential, Host, Workload};
pub use crate::model::{Facts, PolicyRecord};
use crate::store::{Storage, StoreError};

/// Id of the `--allow` template.
const ALLOW_TEMPLATE: &str = "leash-allow";

/// Policy failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The text does not parse or does not validate; each problem has a position.
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
    /// Building the engine failed (a bug, or a bad action list).
    #[error("policy engine: {0}")]
    Engine(String),
}

/// One problem in a policy file, with its position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// 1-based line (0 when unknown).
    pub line: u32,
    /// 1-based column (0 when unknown).
    pub col: u32,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.line, self.col, self.message)
        } else {
            f.write_str(&self.message)
        }
    }
}

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

fn position(text: &str, offset: usize) -> (u32, u32) {
    // The offset comes from the parser's diagnostic: never slice inside a character.
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() as u32 + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0) as u32
        + 1;
    (line, col)
}

fn problems(text: &str, d: &dyn Diagnostic, fallback: String) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(related) = d.related() {
        for r in related {
            out.extend(problems(text, r, r.to_string()));
        }
        if !out.is_empty() {
            return out;
        }
    }
    let help = d.help().map(|h| format!(" ({h})")).unwrap_or_default();
    let label = d.labels().and_then(|mut l| l.next());
    let (line, col) = label.map(|l| position(text, l.offset())).unwrap_or((0, 0));
    out.push(Problem {
        line,
        col,
        message: format!("{fallback}{help}"),
    });
    out
}

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

struct Compiled {
    version: u64,
    text: String,
    /// User policies only (the --allow links are added per workload).
    user: PolicySet,
    /// User policies + the template + every --allow link.
    full: PolicySet,
    /// Per (principal, action, resource): only the policies whose scope can match.
    /// Cedar evaluates every policy of a set; a policy whose scope excludes the request
    /// can never affect its decision, so leaving it out changes nothing but the time.
    subsets: std::sync::Mutex<HashMap<(EntityUid, EntityUid, EntityUid), Arc<PolicySet>>>,
    /// Ids of the policies annotated `@approval("required")`, found once at compile
    /// time (`Policy::annotation` parses its key with the Cedar parser on every call).
    approval: std::collections::HashSet<PolicyId>,
    /// Entities per (workload, owner, kind, credential, kind, host).
    entities: std::sync::Mutex<HashMap<EntityKey, Arc<Entities>>>,
}

type EntityKey = (String, String, String, String, String, String);

/// Bound on cached subsets (distinct principal/action/resource triples).
const MAX_SUBSETS: usize = 100_000;

impl Compiled {
    fn subset(&self, p: &EntityUid, a: &EntityUid, r: &EntityUid) -> Arc<PolicySet> {
        let key = (p.clone(), a.clone(), r.clone());
        let mut cache = self.subsets.lock().unwrap_or_else(|x| x.into_inner());
        if let Some(s) = cache.get(&key) {
            return s.clone();
        }
        let set = Arc::new(self.filter(p, a, r).unwrap_or_else(|_| self.full.clone()));
        if cache.len() >= MAX_SUBSETS {
            cache.clear();
        }
        cache.insert(key, set.clone());
        set
    }

    fn filter(
        &self,
        p: &EntityUid,
        a: &EntityUid,
        r: &EntityUid,
    ) -> Result<PolicySet, PolicyError> {
        use cedar_policy::{ActionConstraint, PrincipalConstraint, ResourceConstraint};
        let err = |e: cedar_policy::PolicySetError| PolicyError::Engine(e.to_string());
        let mut out = PolicySet::new();
        let mut template_added = false;
        for pol in self.full.policies() {
            let principal_ok = match pol.principal_constraint() {
                PrincipalConstraint::Eq(u) => &u == p,
                _ => true,
            };
            let action_ok = match pol.action_constraint() {
                ActionConstraint::Eq(u) => &u == a,
                ActionConstraint::In(list) => list.contains(a),
                ActionConstraint::Any => true,
            };
            let resource_ok = match pol.resource_constraint() {
                ResourceConstraint::Eq(u) => &u == r,
                _ => true,
            };
            if !(principal_ok && action_ok && resource_ok) {
                continue;
            }
            match (pol.template_id(), pol.template_links()) {
                (Some(tid), Some(links)) => {
                    if !template_added {
                        if let Some(t) = self.full.template(tid) {
                            out.add_template(t.clone()).map_err(err)?;
                        }
                        template_added = true;
                    }
                    out.link(tid.clone(), pol.id().clone(), links)
                        .map_err(err)?;
                }
                _ => out.add(pol.clone()).map_err(err)?,
            }
        }
        Ok(out)
    }
}

/// The engine: schema, current policy, and the allow links.
pub struct Engine {
    schema: Schema,
    actions: Vec<String>,
    current: RwLock<Arc<Compiled>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

fn ty(name: &str) -> Result<EntityTypeName, PolicyError> {
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

fn uid(kind: &str, id: &str) -> Result<EntityUid, PolicyError> {
    Ok(EntityUid::from_type_name_and_id(
        ty(kind)?,
        EntityId::new(id),
    ))
}

fn tags(m: &BTreeMap<String, String>) -> Vec<(String, RestrictedExpression)> {
    m.iter()
        .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())))
        .collect()
}

fn allow_link_id(workload: &str, credential: &str) -> String {
    format!("allow:{workload}:{credential}")
}

impl Engine {
    /// An engine for the configured actions with no user policy (only `--allow` links).
    pub fn new(actions: &[String]) -> Result<Engine, PolicyError> {
        let schema = Schema::from_cedarschema_str(&schema_text(actions))
            .map_err(|e| PolicyError::Engine(e.to_string()))?
            .0;
        let empty = Arc::new(Compiled {
            version: 0,
            text: String::new(),
            user: PolicySet::new(),
            full: PolicySet::new(),
            approval: Default::default(),
            subsets: Default::default(),
            entities: Default::default(),
        });
        Ok(Engine {
            schema,
            actions: actions.to_vec(),
            current: RwLock::new(empty),
        })
    }

    /// Current policy version (0: none applied yet).
    pub fn version(&self) -> u64 {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .version
    }

    /// Current policy text.
    pub fn text(&self) -> String {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .text
            .clone()
    }

    /// Parse and validate a policy file against the schema.
    pub fn check(&self, text: &str) -> Result<PolicySet, PolicyError> {
        let parsed = PolicySet::from_str(text)
            .map_err(|e| PolicyError::Invalid(problems(text, &e, e.to_string())))?;
        // Policies are known by their @id("…") annotation where they have one, so
        // explanations and denials name them the way their author did.
        let mut pset = PolicySet::new();
        for p in parsed.policies() {
            let p = match p.annotation("id") {
                Some(id) => p.new_id(PolicyId::new(id)),
                None => p.clone(),
            };
            pset.add(p).map_err(|e| {
                PolicyError::Invalid(vec![Problem {
                    line: 0,
                    col: 0,
                    message: format!("{e} (two policies with the same @id?)"),
                }])
            })?;
        }
        for t in parsed.templates() {
            pset.add_template(t.clone())
                .map_err(|e| PolicyError::Engine(e.to_string()))?;
        }
        let result = Validator::new(self.schema.clone()).validate(&pset, ValidationMode::Strict);
        if !result.validation_passed() {
            let mut out = Vec::new();
            for e in result.validation_errors() {
                out.extend(problems(text, e, e.to_string()));
            }
            return Err(PolicyError::Invalid(out));
        }
        for p in pset.policies() {
            if let Some(v) = p.annotation("approval") {
                if v != "required" {
                    return Err(PolicyError::Invalid(vec![Problem {
                        line: 0,
                        col: 0,
                        message: format!(
                            "policy {}: @approval must be \"required\", not {v:?}",
                            p.id()
                        ),
                    }]));
                }
            }
        }
        Ok(pset)
    }

    /// Install `text` as `version`, with `--allow` links for `workloads`.
    pub fn install(
        &self,
        version: u64,
        text: &str,
        workloads: &[Workload],
    ) -> Result<(), PolicyError> {
        let user = self.check(text)?;
        let compiled = self.compile(version, text.to_string(), user, workloads)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(compiled);
        Ok(())
    }

    /// Rebuild the `--allow` links after workloads changed.
    pub fn relink(&self, workloads: &[Workload]) -> Result<(), PolicyError> {
        let cur = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let compiled = self.compile(cur.version, cur.text.clone(), cur.user.clone(), workloads)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(compiled);
        Ok(())
    }

    /// What a candidate policy would decide, without installing it (for re-evaluation).
    pub fn candidate(
        &self,
        version: u64,
        text: &str,
        workloads: &[Workload],
    ) -> Result<Engine, PolicyError> {
        let e = Engine::new(&self.actions)?;
        e.install(version, text, workloads)?;
        Ok(e)
    }

    fn compile(
        &self,
        version: u64,
        text: String,
        user: PolicySet,
        workloads: &[Workload],
    ) -> Result<Compiled, PolicyError> {
        let mut full = user.clone();
        let template = Template::parse(
            Some(PolicyId::new(ALLOW_TEMPLATE)),
            "permit(principal == ?principal, action, resource == ?resource);",
        )
        .map_err(|e| PolicyError::Engine(e.to_string()))?;
        full.add_template(template)
            .map_err(|e| PolicyError::Engine(e.to_string()))?;
        for w in workloads {
            for c in &w.allow {
                let vals = HashMap::from([
                    (SlotId::principal(), uid("Workload", &w.name)?),
                    (SlotId::resource(), uid("Credential", c)?),
                ]);
                full.link(
                    PolicyId::new(ALLOW_TEMPLATE),
                    PolicyId::new(allow_link_id(&w.name, c)),
                    vals,
                )
                .map_err(|e| PolicyError::Engine(e.to_string()))?;
            }
        }
        let approval = full
            .policies()
            .filter(|p| p.annotation("approval") == Some("required"))
            .map(|p| p.id().clone())
            .collect();
        Ok(Compiled {
            version,
            text,
            user,
            full,
            approval,
            subsets: Default::default(),
            entities: Default::default(),
        })
    }

    /// The policy as `policy show` prints it: the applied text, then the `--allow` links.
    pub fn render(&self, workloads: &[Workload]) -> String {
        let cur = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out = String::new();
        if cur.text.trim().is_empty() {
            out.push_str("// no policy file applied yet: only --allow entries permit anything\n");
        } else {
            out.push_str(&cur.text);
            if !cur.text.ends_with('\n') {
                out.push('\n');
            }
        }
        let links: Vec<String> = workloads
            .iter()
            .flat_map(|w| {
                w.allow.iter().map(move |c| {
                    format!(
                        "@id({:?})\npermit(principal == Leash::Workload::{:?}, action, resource == Leash::Credential::{:?});",
                        allow_link_id(&w.name, c),
                        w.name,
                        c
                    )
                })
            })
            .collect();
        if !links.is_empty() {
            out.push_str("\n// --allow entries: links of the template\n// permit(principal == ?principal, action, resource == ?resource);\n");
            for l in links {
                out.push_str(&l);
                out.push('\n');
            }
        }
        out
    }

    /// The source of a policy in force, by id.
    pub fn policy_text(&self, id: &str) -> String {
        let cur = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        cur.full
            .policy(&PolicyId::new(id))
            .map(|p| p.to_string())
            .unwrap_or_default()
    }

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
        // built once per (workload, owner, kind, credential, kind, host + labels) and reused.
        let ekey = (
            w.name.clone(),
            w.owner.clone(),
            w.kind.clone(),
            c.name.clone(),
            c.kind.clone(),
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
                                    RestrictedExpression::new_string(w.kind.clone()),
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
                            tags(&no_tags),
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
fn civil(unix: i64) -> (i64, i64, String) {
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

/// A small unified line diff (for `policy diff`).
pub fn diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // Longest common subsequence table; policy files are small.
    let mut t = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            t[i][j] = if a[i] == b[j] {
                t[i + 1][j + 1] + 1
            } else {
                t[i + 1][j].max(t[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || t[i][j + 1] >= t[i + 1][j]) {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        }
    }
    out
}

/// The stored policy version `v` (0: the current one), if there is one.
pub fn stored(store: &dyn Storage, v: u64) -> Result<Option<PolicyRecord>, StoreError> {
    if v == 0 {
        store.current_policy()
    } else {
        store.policy_version(v)
    }
}

/// Store a new version durably and make it current, in one write.
pub async fn store_version(store: &dyn Storage, rec: &PolicyRecord) -> Result<(), StoreError> {
    store.put_policy_version(rec.clone()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_inside_a_character_does_not_panic() {
        assert_eq!(position("é", 1), (1, 1));
        assert_eq!(position("a\nxé", 4), (2, 2));
        assert_eq!(position("abc", 99), (1, 4));
    }

    fn actions() -> Vec<String> {
        ["read", "write", "deploy", "admin"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn w(allow: &[&str]) -> Workload {
        Workload {
            name: "ci/deploy".into(),
            owner: "team-web".into(),
            kind: "job".into(),
            selectors: vec!["unix:uid:1".into()],
            hosts: BTreeMap::new(),
            allow: allow.iter().map(|s| s.to_string()).collect(),
            expires_at: 0,
            disabled: false,
            created_at: 0,
        }
    }

    fn c() -> Credential {
        Credential {
            name: "deploy-api".into(),
            kind: "jwt".into(),
            audiences: vec!["a".into()],
            default_ttl: 300,
            max_ttl: 3600,
            default_action: "read".into(),
            scopes: BTreeMap::new(),
            created_at: 0,
        }
    }

    fn host(role: &str) -> Host {
        Host {
            name: "runner-1".into(),
            labels: [("role".to_string(), role.to_string())].into(),
            enrolled_at: 0,
            last_seen: 0,
            evicted: false,
            cert_serial: "01".into(),
            cert_not_after: 0,
        }
    }

    fn facts(ttl: i64, now: i64) -> Facts {
        Facts {
            uid: 1,
            ttl_seconds: ttl,
            now,
            ..Default::default()
        }
    }

    #[test]
    fn default_deny_and_allow_links() {
        let e = Engine::new(&actions()).expect("engine");
        let v = e
            .decide(&w(&[]), &c(), "read", &host("ci"), &facts(60, 0))
            .expect("decide");
        assert!(!v.allow);
        e.relink(&[w(&["deploy-api"])]).expect("relink");
        let v = e
            .decide(
                &w(&["deploy-api"]),
                &c(),
                "read",
                &host("ci"),
                &facts(60, 0),
            )
            .expect("decide");
        assert!(v.allow && !v.approval_required, "{v:?}");
        assert_eq!(v.reasons[0], "allow:ci/deploy:deploy-api");
    }

    #[test]
    fn forbid_wins_ttl_cap_host_label_and_time() {
        let e = Engine::new(&actions()).expect("engine");
        let text = r#"
permit(principal, action == Leash::Action::"deploy", resource)
when { context.ttl_seconds <= 600 && context.host.hasTag("role") && context.host.getTag("role") == "ci" };
forbid(principal, action, resource) when { context.hour < 6 };
"#;
        e.install(1, text, &[]).expect("valid");
        let mid_day = 1_795_867_200; // 2026-11-28T12:00:00Z
        let ok = e
            .decide(&w(&[]), &c(), "deploy", &host("ci"), &facts(300, mid_day))
            .expect("decide");
        assert!(ok.allow, "{ok:?}");
        let long = e
            .decide(&w(&[]), &c(), "deploy", &host("ci"), &facts(601, mid_day))
            .expect("decide");
        assert!(!long.allow);
        let wrong_host = e
            .decide(&w(&[]), &c(), "deploy", &host("dev"), &facts(300, mid_day))
            .expect("decide");
        assert!(!wrong_host.allow);
        let night = e
            .decide(
                &w(&[]),
                &c(),
                "deploy",
                &host("ci"),
                &facts(300, mid_day - 9 * 3600),
            )
            .expect("decide");
        assert!(!night.allow, "forbid wins at 03:00");
        let read = e
            .decide(&w(&[]), &c(), "read", &host("ci"), &facts(300, mid_day))
            .expect("decide");
        assert!(!read.allow, "only deploy is permitted");
    }

    #[test]
    fn approval_annotation() {
        let e = Engine::new(&actions()).expect("engine");
        let text = r#"
@approval("required")
permit(principal, action == Leash::Action::"admin", resource);
"#;
        e.install(1, text, &[w(&["deploy-api"])]).expect("valid");
        let v = e
            .decide(
                &w(&["deploy-api"]),
                &c(),
                "admin",
                &host("ci"),
                &facts(60, 0),
            )
            .expect("decide");
        assert!(
            v.allow && !v.approval_required,
            "an unannotated permit (the allow link) also matched"
        );
        let mut other = w(&[]);
        other.name = "ci/other".into();
        let v = e
            .decide(&other, &c(), "admin", &host("ci"), &facts(60, 0))
            .expect("decide");
        assert!(v.allow && v.approval_required, "{v:?}");
    }

    #[test]
    fn errors_carry_positions() {
        let e = Engine::new(&actions()).expect("engine");
        let Err(PolicyError::Invalid(p)) =
            e.check("permit(principal, action, resource)\nwhen { context.nope > 1 };")
        else {
            panic!("expected a validation error");
        };
        assert_eq!(p[0].line, 2, "{p:?}");
        let Err(PolicyError::Invalid(p)) = e.check("permit(principal,\n  action resource);") else {
            panic!("expected a parse error");
        };
        assert_eq!(p[0].line, 2, "{p:?}");
        assert!(p[0].col > 0);
    }

    #[test]
    fn civil_time() {
        assert_eq!(civil(0), (0, 4, "1970-01-01T00:00:00Z".into()));
        assert_eq!(civil(1_795_867_200).0, 12);
        assert_eq!(civil(1_795_867_200).1, 6, "2026-11-28 is a Saturday");
    }

    #[test]
    fn diff_marks_changes() {
        let d = diff("a\nb\nc\n", "a\nc\nd\n");
        assert_eq!(d, "  a\n- b\n  c\n+ d\n");
    }
}
