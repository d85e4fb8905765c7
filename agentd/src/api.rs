//! The Leash API on the workload socket: Fetch, WhoAmI, Status, Introspect.
//!
//! Every request is attested from the connection's pinned peer (reusing the
//! connection's last attestation only after re-checking what it rested on; see
//! `Attestor::attest_quick`); nothing the caller sends is trusted for identity. The
//! fetch path: attest, match a workload, serve from cache when the entry satisfies the
//! request and is fresh, otherwise Issue through the control plane and cache the answer.
//!
//! Text a caller chooses (on-behalf-of, task names, the names in a request) is checked
//! against `leash_proto::names` before anything else looks at it, and is quoted back
//! only through `names::excerpt`. Status answers anyone, but a caller that cannot be
//! attested (another pid or mount namespace, a process gone) gets the health fields only.
//!
//! This is the workload socket's gRPC boundary: library errors (`tasks::TaskError`,
//! `attest::AttestError`, `leash_proto::names::NameError`) become `Status` here and only
//! here, each with its reason (and so the CLI's exit code).

use std::sync::Arc;

use leash_proto::names::{self, NameError};
use leash_proto::reason::Reason;
use leash_proto::v1;
use leash_proto::v1::agent_server::Agent as AgentService;
use leash_proto::workload_kind::WorkloadKind;
use tonic::{Request, Response, Status};

use crate::agent::{Agent, State};
use crate::attest::{Attestation, Peer};
use crate::cache::{Entry, Key, Target};
use crate::secret::Secret;
use crate::server::{Conn, RateLimit};
use crate::tasks::{self, TaskError};

/// Caller-chosen text that breaks the naming rule: bad input.
fn invalid(e: NameError) -> Status {
    Reason::Invalid.status(e.to_string())
}

impl From<TaskError> for Status {
    fn from(e: TaskError) -> Status {
        e.reason().status(e.to_string())
    }
}

/// Every free-text field of a Fetch, against the rule for caller-chosen text.
fn check_fetch(r: &v1::FetchRequest) -> Result<(), Status> {
    names::check_name("the credential name", &r.credential).map_err(invalid)?;
    names::check_name("the action (--action)", &r.action).map_err(invalid)?;
    names::check_name("the workload name (--as)", &r.as_workload).map_err(invalid)?;
    names::check_name("on-behalf-of (--on-behalf-of)", &r.on_behalf_of).map_err(invalid)?;
    names::check_text("the audience (--audience)", &r.audience).map_err(invalid)?;
    Ok(())
}

/// The service.
#[derive(Debug, Clone)]
pub struct Api {
    agent: Arc<Agent>,
    limit: Arc<RateLimit>,
}

impl Api {
    /// Wrap the agent.
    pub fn new(agent: Arc<Agent>) -> Api {
        let limit = Arc::new(RateLimit::new(
            agent.config.requests_per_uid,
            agent.clock.clone(),
        ));
        Api { agent, limit }
    }

    fn attest<T>(&self, req: &Request<T>) -> Result<Arc<Attestation>, Status> {
        let conn = req
            .extensions()
            .get::<Conn>()
            .ok_or_else(|| Reason::Denied.status("no peer credentials on this connection"))?;
        if let Some(over) = conn.over_cap {
            return Err(Reason::Unavailable.status(over.to_string()));
        }
        let peer: &Peer = &conn.peer;
        if !self.limit.allow(peer.uid()) {
            return Err(Status::resource_exhausted(format!(
                "too many requests from uid {}; slow down",
                peer.uid()
            )));
        }
        // A later request on the same connection usually reuses the first one's
        // attestation after a few cheap checks, on this thread. A full attestation reads
        // more of /proc, may hash an executable and resolve names: off the async worker.
        if let Some(a) = self.agent.attestor.attest_quick(peer) {
            return Ok(a);
        }
        tokio::task::block_in_place(|| self.agent.attestor.attest_fully(peer))
            .map_err(|e| Reason::Denied.status(format!("attestation failed: {e}")))
    }

    fn serving(&self) -> Result<(), Status> {
        if matches!(self.agent.state(), State::Ready | State::Offline) {
            return Ok(());
        }
        let h = self.agent.health();
        match h.state {
            State::Ready | State::Offline => Ok(()),
            State::Starting => Err(Reason::Unavailable
                .status("the agent has not synced with the control plane yet; try again shortly")),
            State::FailingClosed | State::Evicted => {
                Err(Reason::Unavailable
                    .status(format!("the agent is failing closed: {}", h.reason)))
            }
        }
    }

    fn pick(&self, a: &Attestation, as_workload: &str) -> Result<Arc<v1::Workload>, Status> {
        let candidates = self.agent.matching(|sel| a.matches(sel));
        if !as_workload.is_empty() {
            return candidates.into_iter().find(|w| w.name == as_workload).ok_or_else(|| {
                Reason::Denied.status(format!(
                    "this caller is not attested as workload {} (it may not exist, may not run on this host, or its selectors do not match this caller)",
                    names::excerpt(as_workload)
                ))
            });
        }
        match candidates.len() {
            0 => Err(Reason::Denied.status(format!(
                "no workload matches this caller ({}); ask an admin to register one with `leashctl workload add NAME --owner O --selector unix:uid:{}`",
                a.selectors.iter().cloned().collect::<Vec<_>>().join(" "),
                a.uid
            ))),
            1 => Ok(candidates.into_iter().next().unwrap_or_default()),
            _ => Err(Reason::Invalid.status(format!(
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
        task_name: &str,
    ) -> Result<Entry, Status> {
        let mut client = self.agent.client().ok_or_else(|| {
            Reason::Unavailable.status("the control plane is unreachable and no usable credential is cached; check `leash status` and try again")
        })?;
        let req = v1::IssueRequest {
            workload: w.name.clone(),
            credential: key.credential.clone(),
            action: key.action.clone(),
            audience: key.audience.clone(),
            ttl_seconds: key.ttl,
            task: key.task.clone().unwrap_or_default(),
            on_behalf_of: key.obo.clone().unwrap_or_default(),
            task_name: task_name.to_string(),
            attested: Some(v1::Attested {
                pid: a.pid,
                uid: a.uid,
                gid: a.gid,
                user: a.user.clone().unwrap_or_default(),
                exe_path: a.exe_path.clone().unwrap_or_default(),
                exe_sha256: a.exe_sha256.clone().unwrap_or_default(),
                selectors: a.selectors.iter().cloned().collect(),
            }),
        };
        let r = client.issue(req).await.map_err(|s| {
            if Reason::of(&s) == Reason::Unavailable {
                Reason::Unavailable.status(format!(
                    "the control plane is unreachable ({}) and no usable credential is cached",
                    s.message()
                ))
            } else {
                s
            }
        })?;
        let r = r.into_inner();
        Ok(Entry {
            token: Secret::new(r.token),
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
}

#[tonic::async_trait]
impl AgentService for Api {
    async fn fetch(
        &self,
        req: Request<v1::FetchRequest>,
    ) -> Result<Response<v1::FetchResponse>, Status> {
        let a = self.attest(&req)?;
        self.serving()?;
        let r = req.into_inner();
        if r.credential.is_empty() {
            return Err(Reason::Invalid.status("name the credential to fetch"));
        }
        check_fetch(&r)?;
        let w = self.pick(&a, &r.as_workload)?;
        // On-behalf-of lands in signed tokens: only a shared agent may say it. Bad input
        // rather than a policy refusal: the same request without it is the valid one.
        let shared = WorkloadKind::SharedAgent;
        if !r.on_behalf_of.is_empty()
            && !WorkloadKind::of(&w.kind).is_some_and(WorkloadKind::acts_on_behalf)
        {
            return Err(Reason::Invalid.status(format!(
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
        let now = self.agent.clock.now();
        let cached = if r.fresh {
            None
        } else {
            self.agent.cache.get(&key, now)
        };
        if let Some(e) = &cached {
            if !e.stale(now) {
                return Ok(Response::new(self.respond(&a, &w.name, e, true)));
            }
        }
        // Miss, forced, or past half its life: issue. A retry covers the rare case of a
        // revocation arriving while this Issue was in flight.
        for _ in 0..2 {
            match self.issue(&a, &w, &key, &task_name).await {
                Ok(e) => {
                    let resp = self.respond(&a, &w.name, &e, false);
                    if self.agent.cache.insert(key.clone(), e) {
                        // The task may have ended while this Issue was in flight.
                        if let Some(t) = &key.task {
                            if self.agent.tasks.membership(&r.task_handle, &a).is_err() {
                                self.agent
                                    .cache
                                    .revoke(0, Target::Task(t.clone()), Vec::new());
                                return Err(Reason::Denied.status(
                                    "the task ended while the credential was being issued",
                                ));
                            }
                        }
                        return Ok(Response::new(resp));
                    }
                }
                Err(s) => {
                    // Past half-life but still valid, and the control plane is away:
                    // serve what we have (we are within max_offline, or serving() would
                    // have refused).
                    if let (Some(e), Reason::Unavailable) = (&cached, Reason::of(&s)) {
                        return Ok(Response::new(self.respond(&a, &w.name, e, true)));
                    }
                    return Err(s);
                }
            }
        }
        Err(Reason::Denied.status("the credential was revoked while it was being issued"))
    }

    async fn who_am_i(
        &self,
        req: Request<v1::WhoAmIRequest>,
    ) -> Result<Response<v1::WhoAmIResponse>, Status> {
        let a = self.attest(&req)?;
        let id = self.agent.identity();
        let td = &id.desc.trust_domain;
        let ws = self.agent.matching(|sel| a.matches(sel));
        Ok(Response::new(v1::WhoAmIResponse {
            attested: Some(v1::Attested {
                pid: a.pid,
                uid: a.uid,
                gid: a.gid,
                user: a.user.clone().unwrap_or_default(),
                exe_path: a.exe_path.clone().unwrap_or_default(),
                exe_sha256: a.exe_sha256.clone().unwrap_or_default(),
                selectors: a.selectors.iter().cloned().collect(),
            }),
            spiffe_ids: ws
                .iter()
                .map(|w| format!("spiffe://{td}/{}", w.name))
                .collect::<Vec<_>>()
                .join(" "),
            workloads: ws.iter().map(|w| w.name.clone()).collect(),
            host: id.desc.host.clone(),
        }))
    }

    async fn status(
        &self,
        req: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        // Health (synced, last_seq, last_heartbeat, state) is for any local caller, so
        // probes in containers and other namespaces keep working; what the host is,
        // where its control plane is and what it serves only for attested callers.
        let attested = match self.attest(&req) {
            Ok(_) => true,
            Err(s) if Reason::of(&s) == Reason::Denied => false,
            Err(s) => return Err(s),
        };
        let h = self.agent.health();
        if !attested {
            return Ok(Response::new(v1::StatusResponse {
                synced: h.synced,
                last_seq: h.last_seq,
                last_heartbeat_unix_ms: h.last_heartbeat_ms,
                state: h.state.as_str().into(),
                health_only: true,
                ..Default::default()
            }));
        }
        let id = self.agent.identity();
        Ok(Response::new(v1::StatusResponse {
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
        }))
    }

    async fn introspect(
        &self,
        req: Request<v1::IntrospectRequest>,
    ) -> Result<Response<v1::IntrospectResponse>, Status> {
        self.attest(&req)?;
        let mut client = self.agent.client().ok_or_else(|| {
            Reason::Unavailable.status("the control plane is unreachable; introspection needs it")
        })?;
        client.introspect(req.into_inner()).await
    }

    async fn start_task(
        &self,
        req: Request<v1::StartTaskRequest>,
    ) -> Result<Response<v1::StartTaskResponse>, Status> {
        let a = self.attest(&req)?;
        self.serving()?;
        names::check_name("the task name (--name, --task-name)", &req.get_ref().name)
            .map_err(invalid)?;
        Ok(Response::new(
            tasks::start(&self.agent, &a, req.into_inner()).await?,
        ))
    }

    async fn end_task(
        &self,
        req: Request<v1::EndTaskRequest>,
    ) -> Result<Response<v1::EndTaskResponse>, Status> {
        let a = self.attest(&req)?;
        Ok(Response::new(
            tasks::end_by_handle(&self.agent, &a, &req.into_inner().handle).await?,
        ))
    }
}
