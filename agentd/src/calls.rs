//! What the workload socket answers, whatever the protocol: Fetch, WhoAmI and Status,
//! with the attestation and request allowance every call goes through.
//!
//! The gRPC service (`api.rs`) and the plain HTTP/1.1 + JSON API (`http.rs`) both call
//! these functions, so a credential fetched either way takes the same path: attest the
//! connection's pinned peer, match a workload, serve from the cache when the entry
//! satisfies the request and is fresh, otherwise Issue through the control plane and
//! cache the answer. Failures are [`CallError`]s; each protocol turns them into its own
//! form (a gRPC status, or an HTTP status with a JSON body) by their [`Reason`].
//!
//! Text a caller chooses is checked against `leash_proto::names` before anything else
//! looks at it, and is quoted back only through `names::excerpt`.

use std::collections::HashMap;
use std::sync::Arc;

use leash_proto::names::{self, NameError};
use leash_proto::reason::{Reason, APPROVAL_KEY};
use leash_proto::spans::{record, Field};
use leash_proto::v1;
use leash_proto::workload_kind::WorkloadKind;

use crate::agent::{Agent, State};
use crate::attest::{Attestation, Peer};
use crate::cache::{Entry, Key, Target};
use crate::secret::Secret;
use crate::server::{Conn, RateLimit};
use crate::tasks::TaskError;

/// Why a call was not answered. The messages are the ones callers see.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// Refused here, with the reason the caller's exit code follows.
    #[error("{message}")]
    Refused {
        /// Why, as scripts see it.
        reason: Reason,
        /// What was wrong and what to do.
        message: String,
    },
    /// The uid's request allowance is spent.
    #[error("too many requests from uid {0}; slow down")]
    TooManyRequests(u32),
    /// The control plane's answer to Issue, passed on as it came (with its reason and,
    /// for a pending approval, the approval id).
    #[error("{}", .0.message())]
    ControlPlane(tonic::Status),
}

impl CallError {
    /// A refusal for `reason`.
    pub fn new(reason: Reason, message: impl Into<String>) -> CallError {
        CallError::Refused {
            reason,
            message: message.into(),
        }
    }

    /// The reason (and so the exit code) a caller is given. Too many requests is bad
    /// input (exit 1), as it has always been on the gRPC side.
    pub fn reason(&self) -> Reason {
        match self {
            CallError::Refused { reason, .. } => *reason,
            CallError::TooManyRequests(_) => Reason::Invalid,
            CallError::ControlPlane(s) => Reason::of(s),
        }
    }

    /// The approval a pending request waits for, when the control plane named one.
    pub fn approval_id(&self) -> Option<String> {
        match self {
            CallError::ControlPlane(s) => s
                .metadata()
                .get(APPROVAL_KEY)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            _ => None,
        }
    }
}

impl From<TaskError> for CallError {
    fn from(e: TaskError) -> CallError {
        CallError::new(e.reason(), e.to_string())
    }
}

/// Caller-chosen text that breaks the naming rule: bad input.
fn invalid(e: NameError) -> CallError {
    CallError::new(Reason::Invalid, e.to_string())
}

/// Every free-text field of a Fetch, against the rule for caller-chosen text.
fn check_fetch(r: &v1::FetchRequest) -> Result<(), CallError> {
    names::check_name("the credential name", &r.credential).map_err(invalid)?;
    names::check_name("the action (--action)", &r.action).map_err(invalid)?;
    names::check_name("the workload name (--as)", &r.as_workload).map_err(invalid)?;
    names::check_name("on-behalf-of (--on-behalf-of)", &r.on_behalf_of).map_err(invalid)?;
    names::check_text("the audience (--audience)", &r.audience).map_err(invalid)?;
    Ok(())
}

/// The kind name of X.509-SVIDs, as the control plane reports it.
pub const X509_KIND: &str = "x509";

/// What a caller's X.509-SVID needs before each Issue: a new key pair, as a PKCS#10 CSR
/// (DER) and the private key (kept as the cache entry's secret).
pub type MakeKey<'a> = &'a (dyn Fn() -> Result<(Vec<u8>, Secret), CallError> + Sync);

/// How [`Calls::obtain`] gets a credential, beyond the cache key.
pub struct Obtain<'a> {
    /// The task's name, inside a task (for the control plane's events).
    pub task_name: &'a str,
    /// Skip the cache.
    pub fresh: bool,
    /// Several audiences for one token (a JWT-SVID); the key's audience is then empty.
    pub audiences: &'a [String],
    /// Makes the key pair of an X.509-SVID; `None` for every other kind.
    pub x509: Option<MakeKey<'a>>,
    /// Whether the caller is still inside the key's task, once the Issue is answered.
    pub still_in_task: &'a (dyn Fn() -> bool + Sync),
}

impl std::fmt::Debug for Obtain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Obtain")
            .field("task_name", &self.task_name)
            .field("fresh", &self.fresh)
            .field("audiences", &self.audiences)
            .field("x509", &self.x509.is_some())
            .finish_non_exhaustive()
    }
}

/// The calls, over the agent, with the one per-uid request allowance both protocols
/// take from.
#[derive(Debug)]
pub struct Calls {
    agent: Arc<Agent>,
    limit: RateLimit,
    /// One Issue at a time per cache key: when many callers miss at once (every open
    /// SPIFFE stream of a workload after a revocation), the first issues and the others
    /// are served its answer from the cache.
    issuing: std::sync::Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

impl Calls {
    /// Wrap the agent.
    pub fn new(agent: Arc<Agent>) -> Calls {
        let limit = RateLimit::new(agent.config.requests_per_uid, agent.clock.clone());
        Calls {
            agent,
            limit,
            issuing: Default::default(),
        }
    }

    /// The agent.
    pub fn agent(&self) -> &Arc<Agent> {
        &self.agent
    }

    /// Who is calling on `conn`, after the connection and request caps.
    pub fn attest(&self, conn: Option<&Conn>) -> Result<Arc<Attestation>, CallError> {
        let conn = conn.ok_or_else(|| {
            CallError::new(Reason::Denied, "no peer credentials on this connection")
        })?;
        if let Some(over) = conn.over_cap {
            return Err(CallError::new(Reason::Unavailable, over.to_string()));
        }
        let peer: &Peer = &conn.peer;
        if !self.limit.allow(peer.uid()) {
            return Err(CallError::TooManyRequests(peer.uid()));
        }
        // A later request on the same connection usually reuses the first one's
        // attestation after a few cheap checks, on this thread. A full attestation reads
        // more of /proc, may hash an executable and resolve names: off the async worker.
        if let Some(a) = self.agent.attestor.attest_quick(peer) {
            return Ok(a);
        }
        tokio::task::block_in_place(|| self.agent.attestor.attest_fully(peer)).map_err(|e| {
            crate::metrics::attestation_failed(attest_reason(&e));
            CallError::new(Reason::Denied, format!("attestation failed: {e}"))
        })
    }

    /// Whether the agent serves credentials now.
    pub fn serving(&self) -> Result<(), CallError> {
        if matches!(self.agent.state(), State::Ready | State::Offline) {
            return Ok(());
        }
        let h = self.agent.health();
        match h.state {
            State::Ready | State::Offline => Ok(()),
            State::Starting => Err(CallError::new(
                Reason::Unavailable,
                "the agent has not synced with the control plane yet; try again shortly",
            )),
            State::FailingClosed | State::Evicted => Err(CallError::new(
                Reason::Unavailable,
                format!("the agent is failing closed: {}", h.reason),
            )),
        }
    }

    fn pick(&self, a: &Attestation, as_workload: &str) -> Result<Arc<v1::Workload>, CallError> {
        let picked = self.pick_one(a, as_workload);
        if let Err(e) = &picked {
            let reason = match (as_workload.is_empty(), e.reason()) {
                (false, _) => "not_that_workload",
                (true, Reason::Invalid) => "ambiguous",
                (true, _) => "no_workload",
            };
            crate::metrics::attestation_failed(reason);
        }
        picked
    }

    fn pick_one(&self, a: &Attestation, as_workload: &str) -> Result<Arc<v1::Workload>, CallError> {
        let candidates = self.agent.matching(|sel| a.matches(sel));
        if !as_workload.is_empty() {
            return candidates.into_iter().find(|w| w.name == as_workload).ok_or_else(|| {
                CallError::new(Reason::Denied, format!(
                    "this caller is not attested as workload {} (it may not exist, may not run on this host, or its selectors do not match this caller)",
                    names::excerpt(as_workload)
                ))
            });
        }
        match candidates.len() {
            0 => Err(CallError::new(Reason::Denied, format!(
                "no workload matches this caller ({}); ask an admin to register one with `leashctl workload add NAME --owner O --selector unix:uid:{}`",
                a.selectors.iter().cloned().collect::<Vec<_>>().join(" "),
                a.uid
            ))),
            1 => Ok(candidates.into_iter().next().unwrap_or_default()),
            _ => Err(CallError::new(Reason::Invalid, format!(
                "several workloads match this caller: {}; choose one with --as",
                candidates.iter().map(|w| w.name.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    fn respond(
        &self,
        a: &Attestation,
        workload: &str,
        e: &Entry,
        cached: bool,
    ) -> v1::FetchResponse {
        self.agent
            .record_use(&e.lease_id, a.pid, a.exe_path.as_deref().unwrap_or(""));
        v1::FetchResponse {
            token: e.token.expose().to_string(),
            expires_at_unix: e.expires_at,
            lease_id: e.lease_id.clone(),
            workload: workload.to_string(),
            cached,
            action: e.action.clone(),
            audience: e.audience.clone(),
            kind: e.served.kind.clone(),
            version: e.served.version,
            format: e.served.format.clone(),
        }
    }

    async fn issue(
        &self,
        a: &Attestation,
        w: &v1::Workload,
        key: &Key,
        how: &Obtain<'_>,
    ) -> Result<Entry, CallError> {
        let task_name = how.task_name;
        // A task's `task-started` is written at the control plane while the task starts;
        // its credentials are issued only after it, so the audit keeps that order.
        if let Some(t) = &key.task {
            if !self.agent.tasks.wait_recorded(t).await {
                return Err(CallError::new(
                    Reason::Denied,
                    "the task ended while the credential was being issued",
                ));
            }
        }
        let mut client = self.agent.client().ok_or_else(|| {
            CallError::new(Reason::Unavailable, "the control plane is unreachable and no usable credential is cached; check `leash status` and try again")
        })?;
        // An X.509-SVID's key pair is made here for each Issue; only its CSR leaves.
        let (csr_der, x509_key) = match how.x509 {
            Some(make) => {
                let (csr, key) = make()?;
                (csr, Some(key))
            }
            None => (Vec::new(), None),
        };
        let req = v1::IssueRequest {
            workload: w.name.clone(),
            credential: key.credential.clone(),
            action: key.action.clone(),
            // Several audiences travel as a list; the key's audience is then only a key.
            audience: if how.audiences.is_empty() {
                key.audience.clone()
            } else {
                String::new()
            },
            ttl_seconds: key.ttl,
            task: key.task.clone().unwrap_or_default(),
            on_behalf_of: key.obo.clone().unwrap_or_default(),
            task_name: task_name.to_string(),
            attested: Some(attested(a)),
            audiences: how.audiences.to_vec(),
            csr_der,
        };
        let r = client.issue(req).await.map_err(|s| {
            // A control plane that answered says why itself (e.g. a database it needs is
            // down); only a call that never got an answer means it is unreachable.
            let answered = s.metadata().get(leash_proto::reason::REASON_KEY).is_some();
            if Reason::of(&s) == Reason::Unavailable && !answered {
                CallError::new(
                    Reason::Unavailable,
                    format!(
                        "the control plane is unreachable ({}) and no usable credential is cached",
                        s.message()
                    ),
                )
            } else {
                CallError::ControlPlane(s)
            }
        })?;
        let r = r.into_inner();
        let (token, chain_der) = match x509_key {
            Some(private) => {
                if r.certificate_chain_der.is_empty() {
                    return Err(CallError::new(
                        Reason::Unavailable,
                        format!(
                            "credential {} did not answer with a certificate; is it of kind x509 (`leashctl credential add NAME --kind x509`)?",
                            names::excerpt(&key.credential)
                        ),
                    ));
                }
                (private, r.certificate_chain_der)
            }
            None => (Secret::new(r.token), Vec::new()),
        };
        Ok(Entry {
            token,
            chain_der,
            lease_id: r.lease_id,
            owner: w.owner.clone(),
            issued_at: r.issued_at_unix,
            expires_at: r.expires_at_unix,
            seq: r.seq,
            action: r.action,
            audience: r.audience,
            served: crate::cache::Served {
                // A control plane from before kinds were reported issues only JWTs.
                kind: if r.kind.is_empty() {
                    "jwt".into()
                } else {
                    r.kind
                },
                version: r.version,
                format: r.format,
            },
        })
    }

    /// Fetch: a credential for the caller on `conn`. Answered fetches are counted in the
    /// metrics as cache hits or misses, with their latency.
    pub async fn fetch(
        &self,
        conn: Option<&Conn>,
        r: v1::FetchRequest,
    ) -> Result<v1::FetchResponse, CallError> {
        let started = std::time::Instant::now();
        record(Field::Host, &self.agent.identity().desc.host);
        record(Field::Credential, &r.credential);
        let out = self.fetch_uncounted(conn, r).await;
        if let Ok(resp) = &out {
            crate::metrics::fetched(resp.cached, started.elapsed());
            record(Field::Workload, &resp.workload);
            record(Field::LeaseId, &resp.lease_id);
            // A line per credential the control plane issued (rare); cache hits, which
            // may come thousands a second, only at debug.
            if resp.cached {
                tracing::debug!(kind = %resp.kind, "served from the cache");
            } else {
                tracing::info!(kind = %resp.kind, expires_at = resp.expires_at_unix, "fetched from the control plane");
            }
        }
        out
    }

    async fn fetch_uncounted(
        &self,
        conn: Option<&Conn>,
        r: v1::FetchRequest,
    ) -> Result<v1::FetchResponse, CallError> {
        let a = self.attest(conn)?;
        self.serving()?;
        if r.credential.is_empty() {
            return Err(CallError::new(
                Reason::Invalid,
                "name the credential to fetch",
            ));
        }
        check_fetch(&r)?;
        let w = self.pick(&a, &r.as_workload)?;
        // On-behalf-of lands in signed tokens: only a shared agent may say it. Bad input
        // rather than a policy refusal: the same request without it is the valid one.
        let shared = WorkloadKind::SharedAgent;
        if !r.on_behalf_of.is_empty()
            && !WorkloadKind::of(&w.kind).is_some_and(WorkloadKind::acts_on_behalf)
        {
            return Err(CallError::new(Reason::Invalid, format!(
                "workload {} is of kind {}, not {shared}: --on-behalf-of is only for shared agents; drop it, or ask an admin to register the workload with --kind {shared}",
                names::excerpt(&w.name),
                names::excerpt(&w.kind)
            )));
        }
        let (task, task_name) = match self.agent.tasks.membership(&r.task_handle, &a)? {
            Some((id, name)) => (Some(id), name),
            None => (None, String::new()),
        };
        let key = Key {
            workload: w.name.clone(),
            credential: r.credential,
            audience: r.audience,
            action: r.action,
            ttl: r.ttl_seconds,
            task,
            obo: (!r.on_behalf_of.is_empty()).then_some(r.on_behalf_of),
        };
        let handle = r.task_handle;
        let still_in_task = || self.agent.tasks.membership(&handle, &a).is_ok();
        let how = Obtain {
            task_name: &task_name,
            fresh: r.fresh,
            audiences: &[],
            x509: None,
            still_in_task: &still_in_task,
        };
        let (e, cached) = self.obtain(&a, &w, &key, &how).await?;
        if e.served.kind == X509_KIND {
            return Err(CallError::new(Reason::Invalid, format!(
                "credential {} is an X.509-SVID: its private key is served only through the SPIFFE Workload API (SPIFFE_ENDPOINT_SOCKET=unix://{})",
                names::excerpt(&key.credential),
                self.agent.config.socket.display()
            )));
        }
        Ok(self.respond(&a, &w.name, &e, cached))
    }

    /// The credential for `key`, from the cache when an entry is there and fresh,
    /// otherwise issued through the control plane and cached: the one path every
    /// credential takes, whichever API asked. Returns the entry and whether it came from
    /// the cache.
    pub async fn obtain(
        &self,
        a: &Attestation,
        w: &v1::Workload,
        key: &Key,
        how: &Obtain<'_>,
    ) -> Result<(Arc<Entry>, bool), CallError> {
        let now = self.agent.clock.now();
        let cached = if how.fresh {
            None
        } else {
            self.agent.cache.get(key, now)
        };
        if let Some(e) = &cached {
            if !e.stale(now) {
                return Ok((e.clone(), true));
            }
        }
        if how.fresh {
            return self.issue_and_cache(a, w, key, how, cached).await;
        }
        let gate = self
            .issuing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let result = {
            let _turn = gate.lock().await;
            // Another caller may have issued while this one waited.
            let now = self.agent.clock.now();
            match self.agent.cache.get(key, now) {
                Some(e) if !e.stale(now) => Ok((e, true)),
                cached => self.issue_and_cache(a, w, key, how, cached).await,
            }
        };
        let mut issuing = self.issuing.lock().unwrap_or_else(|p| p.into_inner());
        // Only this caller and the map hold it: nobody else waits on it.
        if Arc::strong_count(&gate) <= 2 {
            issuing.remove(key);
        }
        result
    }

    async fn issue_and_cache(
        &self,
        a: &Attestation,
        w: &v1::Workload,
        key: &Key,
        how: &Obtain<'_>,
        cached: Option<Arc<Entry>>,
    ) -> Result<(Arc<Entry>, bool), CallError> {
        // Miss, forced, or past half its life: issue. A retry covers the rare case of a
        // revocation arriving while this Issue was in flight.
        for _ in 0..2 {
            match self.issue(a, w, key, how).await {
                Ok(e) => {
                    if let Some(e) = self.agent.cache.insert_shared(key.clone(), e) {
                        // The task may have ended while this Issue was in flight.
                        if let Some(t) = &key.task {
                            if !(how.still_in_task)() {
                                let wiped =
                                    self.agent
                                        .cache
                                        .revoke(0, Target::Task(t.clone()), Vec::new());
                                crate::metrics::wiped(crate::metrics::WipeCause::TaskEnd, wiped);
                                return Err(CallError::new(
                                    Reason::Denied,
                                    "the task ended while the credential was being issued",
                                ));
                            }
                        }
                        return Ok((e, false));
                    }
                }
                Err(s) => {
                    // Past half-life but still valid, and the control plane is away:
                    // serve what we have (we are within max_offline, or serving() would
                    // have refused).
                    if let (Some(e), Reason::Unavailable) = (cached, s.reason()) {
                        return Ok((e, true));
                    }
                    return Err(s);
                }
            }
        }
        Err(CallError::new(
            Reason::Denied,
            "the credential was revoked while it was being issued",
        ))
    }

    /// The workloads the caller matches (for APIs that serve every identity a caller is
    /// entitled to, as the SPIFFE Workload API does).
    pub fn matching(&self, a: &Attestation) -> Vec<Arc<v1::Workload>> {
        self.agent.matching(|sel| a.matches(sel))
    }

    /// WhoAmI: the attested caller on `conn` and the workloads it matches.
    pub fn who_am_i(&self, conn: Option<&Conn>) -> Result<v1::WhoAmIResponse, CallError> {
        let a = self.attest(conn)?;
        let id = self.agent.identity();
        let td = &id.desc.trust_domain;
        let ws = self.agent.matching(|sel| a.matches(sel));
        Ok(v1::WhoAmIResponse {
            attested: Some(attested(&a)),
            spiffe_ids: ws
                .iter()
                .map(|w| format!("spiffe://{td}/{}", w.name))
                .collect::<Vec<_>>()
                .join(" "),
            workloads: ws.iter().map(|w| w.name.clone()).collect(),
            host: id.desc.host.clone(),
        })
    }

    /// Status: the agent's health for any local caller, and what the host is, where its
    /// control plane is and what it serves for attested callers only (so probes in
    /// containers and other namespaces keep working).
    pub fn status(&self, conn: Option<&Conn>) -> Result<v1::StatusResponse, CallError> {
        let attested = match self.attest(conn) {
            Ok(_) => true,
            Err(e) if e.reason() == Reason::Denied => false,
            Err(e) => return Err(e),
        };
        let h = self.agent.health();
        if !attested {
            return Ok(v1::StatusResponse {
                synced: h.synced,
                last_seq: h.last_seq,
                last_heartbeat_unix_ms: h.last_heartbeat_ms,
                state: h.state.as_str().into(),
                health_only: true,
                ..Default::default()
            });
        }
        let id = self.agent.identity();
        Ok(v1::StatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            host: id.desc.host.clone(),
            synced: h.synced,
            last_seq: h.last_seq,
            last_heartbeat_unix_ms: h.last_heartbeat_ms,
            cached_credentials: self.agent.cache.len() as u32,
            control_plane: self.agent.config.control_planes.join(","),
            max_offline_secs: h.max_offline_secs,
            state: h.state.as_str().into(),
            reason: h.reason,
            workloads: self.agent.workload_count() as u32,
            health_only: false,
        })
    }
}

/// What attestation found, as the wire carries it.
fn attested(a: &Attestation) -> v1::Attested {
    v1::Attested {
        pid: a.pid,
        uid: a.uid,
        gid: a.gid,
        user: a.user.clone().unwrap_or_default(),
        exe_path: a.exe_path.clone().unwrap_or_default(),
        exe_sha256: a.exe_sha256.clone().unwrap_or_default(),
        selectors: a.selectors.iter().cloned().collect(),
    }
}

/// A failed attestation's reason, from a fixed set (a metric label: no pid, path or name).
fn attest_reason(e: &crate::attest::AttestError) -> &'static str {
    use crate::attest::AttestError as E;
    match e {
        E::PeerCredentials(_) => "peer_credentials",
        E::Pin { .. } => "pin",
        E::PeerGone { .. } => "peer_gone",
        E::IdMismatch { .. } => "id_mismatch",
        E::Namespace { .. } => "namespace",
        E::Proc { .. } => "proc",
        E::Malformed { .. } => "malformed",
        _ => "other",
    }
}
