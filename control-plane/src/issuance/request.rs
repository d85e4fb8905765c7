//! A request for a credential: as asked ([`Ask`]), then resolved once against the store
//! and the configuration ([`Resolved`]). Every later step (the checks before policy,
//! policy, approval, minting, the lease and its events) reads the one resolved value.

use leash_proto::names::excerpt;
use leash_proto::v1;

use crate::model::{Approval, ApprovalState, Credential, Facts, Host, Workload};
use crate::store::{Storage, StoreError};

/// A request that names something that is not there, or a store that could not say.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No such workload or credential (exit 4).
    #[error("{0}")]
    NotFound(String),
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The task a request is made in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRef {
    /// The task id the agent gave it.
    pub id: String,
    /// The name people gave it (policy sees this one); the id when it has none.
    pub name: String,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A process the agent attested (`Issue`).
    Attested(v1::Attested),
    /// An admin's "what if" (`policy explain`): the caller is taken to be what the
    /// workload's selectors describe.
    Hypothetical,
    /// An issued lease, decided again (after `policy apply`) on the facts it was issued
    /// under.
    Issued(Facts),
}

/// A request as asked, before anything is looked up.
#[derive(Debug, Clone)]
pub struct Ask {
    /// Workload name.
    pub workload: String,
    /// Credential name.
    pub credential: String,
    /// Action class; empty for the credential's default.
    pub action: String,
    /// Audience; empty for the credential's first.
    pub audience: String,
    /// Seconds; 0 for the credential's default.
    pub ttl_seconds: u32,
    /// The task, inside one.
    pub task: Option<TaskRef>,
    /// Principal a shared agent acts for; empty for none.
    pub on_behalf_of: String,
    /// Who is asking.
    pub caller: Caller,
}

impl Ask {
    /// The request an agent sends for an attested process.
    pub fn issue(r: v1::IssueRequest) -> Ask {
        let task = (!r.task.is_empty()).then(|| TaskRef {
            name: if r.task_name.is_empty() {
                r.task.clone()
            } else {
                r.task_name
            },
            id: r.task,
        });
        Ask {
            workload: r.workload,
            credential: r.credential,
            action: r.action,
            audience: r.audience,
            ttl_seconds: r.ttl_seconds,
            task,
            on_behalf_of: r.on_behalf_of,
            caller: Caller::Attested(r.attested.unwrap_or_default()),
        }
    }

    /// An admin's `policy explain` question (its task is a name; there is no id).
    pub fn explain(r: &v1::PolicyExplainRequest) -> Ask {
        Ask {
            workload: r.workload.clone(),
            credential: r.credential.clone(),
            action: r.action.clone(),
            audience: r.audience.clone(),
            ttl_seconds: r.ttl_seconds,
            task: (!r.task.is_empty()).then(|| TaskRef {
                id: r.task.clone(),
                name: r.task.clone(),
            }),
            on_behalf_of: r.on_behalf_of.clone(),
            caller: Caller::Hypothetical,
        }
    }
}

/// Where the request is decided for.
#[derive(Debug, Clone)]
pub enum Place {
    /// A host (the caller's, or the one an admin named).
    Host(Host),
    /// No host named (`policy explain` without `--host`): host selectors are not checked,
    /// and policy sees a host with no name and no labels.
    Anywhere,
}

/// A request resolved once: names looked up, defaults filled in, the facts policy sees.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The host (a nameless one for [`Place::Anywhere`]).
    pub host: Host,
    /// Whether a real host was named, so its selectors are checked.
    pub host_known: bool,
    /// The workload.
    pub workload: Workload,
    /// The credential.
    pub credential: Credential,
    /// The action class.
    pub action: String,
    /// The audience.
    pub audience: String,
    /// Seconds.
    pub ttl: u32,
    /// The task, inside one.
    pub task: Option<TaskRef>,
    /// The principal a shared agent acts for.
    pub on_behalf_of: Option<String>,
    /// Who is asking.
    pub caller: Caller,
    /// What policy sees.
    pub facts: Facts,
    /// Unix seconds of the decision.
    pub now: i64,
}

/// Look up what `ask` names and fill in the credential's defaults, deciding at `now`.
pub fn resolve(
    store: &dyn Storage,
    ask: Ask,
    place: Place,
    now: i64,
) -> Result<Resolved, ResolveError> {
    let workload = store.workload(&ask.workload)?.ok_or_else(|| {
        ResolveError::NotFound(format!(
            "no workload named {}; `leashctl workload list` shows them",
            excerpt(&ask.workload)
        ))
    })?;
    let credential = store.credential(&ask.credential)?.ok_or_else(|| {
        ResolveError::NotFound(format!(
            "no credential named {}; `leashctl credential list` shows the ones that exist",
            excerpt(&ask.credential)
        ))
    })?;
    let action = if ask.action.is_empty() {
        credential.default_action.clone()
    } else {
        ask.action
    };
    let audience = if ask.audience.is_empty() {
        credential.audiences.first().cloned().unwrap_or_default()
    } else {
        ask.audience
    };
    let ttl = if ask.ttl_seconds == 0 {
        credential.default_ttl
    } else {
        ask.ttl_seconds
    };
    let task_name = ask.task.as_ref().map(|t| t.name.clone());
    let facts = match &ask.caller {
        Caller::Attested(a) => Facts {
            uid: i64::from(a.uid),
            user: a.user.clone(),
            exe_path: a.exe_path.clone(),
            sha256: a.exe_sha256.clone(),
            ttl_seconds: i64::from(ttl),
            audience: audience.clone(),
            task: task_name,
            on_behalf_of: ask.on_behalf_of.clone(),
            now,
        },
        Caller::Hypothetical => Facts {
            task: task_name,
            on_behalf_of: ask.on_behalf_of.clone(),
            ..Facts::for_explain(&workload, i64::from(ttl), audience.clone(), now)
        },
        Caller::Issued(f) => Facts { now, ..f.clone() },
    };
    let (host, host_known) = match place {
        Place::Host(h) => (h, true),
        Place::Anywhere => (nameless_host(), false),
    };
    Ok(Resolved {
        host,
        host_known,
        workload,
        credential,
        action,
        audience,
        ttl,
        task: ask.task,
        on_behalf_of: (!ask.on_behalf_of.is_empty()).then_some(ask.on_behalf_of),
        caller: ask.caller,
        facts,
        now,
    })
}

fn nameless_host() -> Host {
    Host {
        name: String::new(),
        labels: Default::default(),
        enrolled_at: 0,
        last_seen: 0,
        evicted: false,
        cert_serial: String::new(),
        cert_not_after: 0,
    }
}

impl Resolved {
    /// The scopes of the action, space-separated, when the credential defines scopes.
    /// `None` also when it defines none for this action (a refusal: see `decide`).
    pub fn scope(&self) -> Option<String> {
        self.credential
            .scopes
            .get(&self.action)
            .map(|sc| sc.join(" "))
    }

    /// The approval this request asks for, under the policies that require it.
    pub fn approval_request(&self, policies: Vec<String>) -> Approval {
        Approval {
            id: String::new(),
            workload: self.workload.name.clone(),
            credential: self.credential.name.clone(),
            action: self.action.clone(),
            host: self.host.name.clone(),
            on_behalf_of: self.on_behalf_of.clone().unwrap_or_default(),
            ttl: self.ttl,
            audience: self.audience.clone(),
            policies,
            requested_at: self.now,
            state: ApprovalState::Pending,
            decided_by: None,
            reason: None,
            valid_until: 0,
            uses_left: 0,
        }
    }
}
