//! The policy engine: the schema, the compiled policy in force with its `--allow`
//! links, and the caches that make a decision cheap.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    Entities, EntityUid, PolicyId, PolicySet, Schema, SlotId, Template, ValidationMode, Validator,
};

use leash_proto::workload_kind::WorkloadKind;

use super::error::{PolicyError, Problem};
use super::problems::problems;
use super::schema::{allow_link_id, schema_text, uid, ALLOW_TEMPLATE};
use crate::model::Workload;

pub(super) struct Compiled {
    pub(super) version: u64,
    pub(super) text: String,
    /// User policies only (the --allow links are added per workload).
    pub(super) user: PolicySet,
    /// User policies + the template + every --allow link.
    pub(super) full: PolicySet,
    /// Per (principal, action, resource): only the policies whose scope can match.
    /// Cedar evaluates every policy of a set; a policy whose scope excludes the request
    /// can never affect its decision, so leaving it out changes nothing but the time.
    pub(super) subsets:
        std::sync::Mutex<HashMap<(EntityUid, EntityUid, EntityUid), Arc<PolicySet>>>,
    /// Ids of the policies annotated `@approval("required")`, found once at compile
    /// time (`Policy::annotation` parses its key with the Cedar parser on every call).
    pub(super) approval: std::collections::HashSet<PolicyId>,
    /// Entities per (workload, owner, kind, credential, kind, host).
    pub(super) entities: std::sync::Mutex<HashMap<EntityKey, Arc<Entities>>>,
}

type EntityKey = (String, String, WorkloadKind, String, String, String);

/// Bound on cached subsets (distinct principal/action/resource triples).
pub(super) const MAX_SUBSETS: usize = 100_000;

impl Compiled {
    pub(super) fn subset(&self, p: &EntityUid, a: &EntityUid, r: &EntityUid) -> Arc<PolicySet> {
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
    pub(super) schema: Schema,
    pub(super) actions: Vec<String>,
    pub(super) current: RwLock<Arc<Compiled>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
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
}
