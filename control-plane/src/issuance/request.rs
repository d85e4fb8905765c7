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
    /// A request no caller could make succeed (exit 1).
    #[error("{0}")]
    Invalid(String),
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
    /// Several audiences for one credential (then `audience` is empty).
    pub audiences: Vec<String>,
    /// The certificate signing request (PKCS#10, DER), for an X.509-SVID.
    pub csr_der: Vec<u8>,
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
            audiences: r.audiences,
            csr_der: r.csr_der,
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
            audiences: Vec::new(),
            csr_der: Vec::new(),
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
    /// The audience (the first, when several were asked).
    pub audience: String,
    /// Every audience, in the order asked without repeats, when the request named them
    /// with `audiences` (empty otherwise).
    pub audiences: Vec<String>,
    /// The certificate signing request, for an X.509-SVID (empty otherwise).
    pub csr_der: Vec<u8>,
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
    if !ask.audience.is_empty() && !ask.audiences.is_empty() {
        return Err(ResolveError::Invalid(format!(
            "the request names audience {} and also audiences: name one audience, or all of them as audiences",
            excerpt(&ask.audience)
        )));
    }
    let mut audiences: Vec<String> = Vec::with_capacity(ask.audiences.len());
    for a in ask.audiences {
        if !audiences.contains(&a) {
            audiences.push(a);
        }
    }
    let audience = match audiences.first() {
        Some(a) => a.clone(),
        None if ask.audience.is_empty() => {
            credential.audiences.first().cloned().unwrap_or_default()
        }
        None => ask.audience,
    };
    let ttl = if ask.ttl_seconds != 0 {
        ask.ttl_seconds
    } else if credential.kind == crate::kinds::x509::X509_KIND && workload.x509_svid_ttl != 0 {
        // The workload's own X.509-SVID lifetime (`workload add --x509-svid-ttl`), within
        // what the credential allows.
        workload.x509_svid_ttl.min(credential.max_ttl)
    } else {
        credential.default_ttl
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
        audiences,
        csr_der: ask.csr_der,
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
    /// The same request for audience `a` alone (what policy decides for each of several
    /// audiences).
    pub fn for_audience(&self, a: &str) -> Resolved {
        let mut one = self.clone();
        one.audience = a.to_string();
        one.facts.audience = a.to_string();
        one
    }

    /// The audience as an approval and an admin see it: the several joined by spaces.
    pub fn audience_text(&self) -> String {
        if self.audiences.len() > 1 {
            self.audiences.join(" ")
        } else {
            self.audience.clone()
        }
    }

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
            audience: self.audience_text(),
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
