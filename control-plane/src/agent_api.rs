//! The agent-facing gRPC service: Enroll, Renew, Sync, Issue, Introspect, CompleteTask.
//!
//! Every method but Enroll starts by mapping the caller's client certificate to its
//! host record (by serial, never by name) and checking that record; an evicted or
//! unknown host is refused.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use leash_proto::names::{self, excerpt};
use leash_proto::reason::Reason;
use leash_proto::v1;
use leash_proto::v1::control_plane_server::ControlPlane;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Response, Status, Streaming};

use crate::issuer::{self, Claims, LeashClaim};
use crate::model::{hosts_match, Change, Event, Host, Lease, LeaseState, Workload};
use crate::policy::Facts;
use crate::state::Shared;
use crate::status::write_failed;
use crate::wire::workload_proto;

/// The service.
#[derive(Debug, Clone)]
pub struct AgentApi {
    s: Arc<Shared>,
}

impl AgentApi {
    /// Wrap the shared state.
    pub fn new(s: Arc<Shared>) -> AgentApi {
        AgentApi { s }
    }

    /// Map the client certificate to a live host record.
    fn host<T>(&self, req: &Request<T>) -> Result<Host, Status> {
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .ok_or_else(|| {
                Reason::Denied.status(
                    "a client certificate is required for this call; enroll the agent first",
                )
            })?;
        let serial = certs
            .first()
            .and_then(|c| crate::keys::cert_serial(c))
            .ok_or_else(|| Reason::Denied.status("unreadable client certificate"))?;
        let host = self
            .s
            .store
            .host_by_serial(&serial)
            .map_err(Status::from)?
            .ok_or_else(|| Reason::Denied.status("this certificate belongs to no enrolled host"))?;
        if host.evicted {
            return Err(Reason::Denied.status(format!(
                "host {:?} was evicted; re-enroll with a new join token and a new name",
                host.name
            )));
        }
        Ok(host)
    }

    async fn deny(&self, host: &Host, req: &v1::IssueRequest, reason: String) -> Status {
        let e = Event::new("denied")
            .actor(host.name.clone())
            .host(host.name.clone())
            .workload(req.workload.clone())
            .credential(req.credential.clone())
            .reason(reason.clone());
        if let Err(err) = self.s.store.append_events(vec![e]).await {
            tracing::warn!(error = %err, "could not record a denied event");
        }
        Reason::Denied.status(reason)
    }
}

/// The Sync message, if any, that tells `host` about `change`. `told` holds the
/// workloads (with their owners) this stream has sent the host: a workload the host may
/// not run is never named to it, unless it was sent earlier and must now be dropped.
fn messages_for(
    host: &Host,
    change: &Change,
    told: &mut HashMap<String, String>,
) -> Option<v1::ControlMessage> {
    use v1::control_message::Msg;
    let msg = match change {
        Change::WorkloadPut { seq, workload } => {
            if hosts_match(&workload.hosts, &host.labels) {
                told.insert(workload.name.clone(), workload.owner.clone());
                Msg::Workload(v1::WorkloadEntry {
                    seq: *seq,
                    workload: Some(workload_proto(workload)),
                })
            } else if told.contains_key(&workload.name) {
                // It matched before the change: tell the agent to drop it.
                Msg::WorkloadRemoved(v1::WorkloadRemoved {
                    seq: *seq,
                    name: workload.name.clone(),
                })
            } else {
                return None;
            }
        }
        Change::WorkloadRemoved { seq, name } => {
            if !told.contains_key(name) {
                return None;
            }
            Msg::WorkloadRemoved(v1::WorkloadRemoved {
                seq: *seq,
                name: name.clone(),
            })
        }
        Change::Revoked { revocation } => {
            Msg::Revocation(crate::wire::revocation_proto(revocation, &host.name, told))
        }
        Change::HostEvicted { seq, name, reason } => {
            if name != &host.name {
                return None;
            }
            Msg::Evicted(v1::Evicted {
                seq: *seq,
                reason: reason.clone(),
            })
        }
    };
    Some(v1::ControlMessage { msg: Some(msg) })
}

/// The sequence a Sync message carries, and whether it is a revocation (which the agent
/// answers with a wipe acknowledgment).
fn message_seq(m: &v1::ControlMessage) -> (u64, bool) {
    use v1::control_message::Msg;
    match &m.msg {
        Some(Msg::Snapshot(x)) => (x.seq, false),
        Some(Msg::Workload(x)) => (x.seq, false),
        Some(Msg::WorkloadRemoved(x)) => (x.seq, false),
        Some(Msg::Revocation(x)) => (x.seq, true),
        Some(Msg::CaughtUp(x)) => (x.seq, false),
        Some(Msg::Heartbeat(x)) => (x.seq, false),
        Some(Msg::Evicted(x)) => (x.seq, false),
        None => (0, false),
    }
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<v1::ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl ControlPlane for AgentApi {
    async fn enroll(
        &self,
        req: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        // The source address, for the per-source limit and the refusal counts.
        let source = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.get_ref().remote_addr())
            .map(|a| a.ip());
        let r = req.into_inner();
        crate::enroll::enroll(&self.s, source, r)
            .await
            .map(Response::new)
    }

    async fn renew(
        &self,
        req: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        let host = self.host(&req)?;
        let r = req.into_inner();
        let (der, serial, not_after) = self
            .s
            .keys
            .sign_host_cert(&r.csr_der, &host.name, self.s.config.host_cert_ttl)
            .map_err(|e| Reason::Invalid.status(e.to_string()))?;
        self.s
            .store
            .renew_host(&host.name, &serial, not_after)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(v1::RenewResponse {
            certificate_der: der.to_vec(),
            not_after_unix: not_after,
        }))
    }

    type SyncStream = SyncStream;

    async fn sync(
        &self,
        req: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<SyncStream>, Status> {
        let host = self.host(&req)?;
        let mut inbound = req.into_inner();
        let hello = match inbound.next().await {
            Some(Ok(v1::AgentMessage {
                msg: Some(v1::agent_message::Msg::Hello(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => return Err(Reason::Invalid.status("the first Sync message must be a hello")),
        };
        if hello.protocol_version != leash_proto::PROTOCOL_VERSION {
            return Err(Reason::Invalid.status(format!(
                "protocol version {} is not supported (this control plane speaks {}); upgrade the agent",
                hello.protocol_version,
                leash_proto::PROTOCOL_VERSION
            )));
        }
        let (tx, rx) = mpsc::channel(1024);
        let s = self.s.clone();
        // A host resumes from what it says it applied, but never from past the end of
        // the log (that asks for a snapshot), nor past what this process sent it.
        let claimed = if hello.last_seq > s.store.current_seq() {
            0
        } else {
            hello.last_seq
        };
        let last_seq = s.hub.resume_point(&host.name, claimed);
        tokio::spawn(async move {
            let conn = s.hub.connect(&host.name, s.clock.now_ms(), last_seq);
            if let Err(e) = s.store.touch_host(&host.name, s.clock.now()).await {
                tracing::warn!(error = %e, "could not record host last-seen");
            }
            tracing::info!(host = %host.name, last_seq, "agent connected");
            if let Err(e) = run_sync(&s, &host, conn, last_seq, &mut inbound, &tx).await {
                tracing::info!(host = %host.name, reason = %e, "sync stream ended");
            }
            s.hub.disconnect(&host.name, conn);
            if let Err(e) = s.store.touch_host(&host.name, s.clock.now()).await {
                tracing::warn!(error = %e, "could not record host last-seen");
            }
        });
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as SyncStream
        ))
    }

    async fn issue(
        &self,
        req: Request<v1::IssueRequest>,
    ) -> Result<Response<v1::IssueResponse>, Status> {
        let host = self.host(&req)?;
        let r = req.into_inner();
        check_issue(&r)?;
        let s = &self.s;
        let now = s.clock.now();
        let w = s
            .store
            .workload(&r.workload)
            .map_err(Status::from)?
            .ok_or_else(|| {
                Reason::NotFound.status(format!("no workload named {}", excerpt(&r.workload)))
            })?;
        let c = s
            .store
            .credential(&r.credential)
            .map_err(Status::from)?
            .ok_or_else(|| {
                Reason::NotFound.status(format!(
                    "no credential named {}; `leashctl credential list` shows the ones that exist",
                    excerpt(&r.credential)
                ))
            })?;
        if w.disabled {
            return Err(self
                .deny(&host, &r, format!("workload {:?} is disabled", w.name))
                .await);
        }
        if w.expires_at != 0 && w.expires_at <= now {
            return Err(self
                .deny(&host, &r, format!("workload {:?} has expired", w.name))
                .await);
        }
        if !hosts_match(&w.hosts, &host.labels) {
            return Err(self
                .deny(
                    &host,
                    &r,
                    format!("workload {:?} may not run on host {:?}", w.name, host.name),
                )
                .await);
        }
        let attested = r.attested.clone().unwrap_or_default();
        if !w
            .selectors
            .iter()
            .all(|sel| attested.selectors.contains(sel))
        {
            return Err(self
                .deny(
                    &host,
                    &r,
                    format!(
                        "the caller does not match the selectors of workload {:?}",
                        w.name
                    ),
                )
                .await);
        }
        if w.kind == "shared-agent" && r.on_behalf_of.is_empty() {
            return Err(self
                .deny(
                    &host,
                    &r,
                    format!(
                        "workload {:?} is a shared agent: every request must say --on-behalf-of",
                        w.name
                    ),
                )
                .await);
        }
        if w.kind != SHARED_AGENT && !r.on_behalf_of.is_empty() {
            return Err(Reason::Invalid.status(format!(
                "workload {:?} is of kind {}, not {SHARED_AGENT}: only a shared agent may act on behalf of someone; drop --on-behalf-of",
                w.name,
                excerpt(&w.kind)
            )));
        }
        let action = if r.action.is_empty() {
            c.default_action.clone()
        } else {
            r.action.clone()
        };
        if !s.config.actions.contains(&action) {
            return Err(Reason::Invalid.status(format!(
                "unknown action {}; the configured actions are {}",
                excerpt(&action),
                s.config.actions.join(", ")
            )));
        }
        let audience = if r.audience.is_empty() {
            c.audiences.first().cloned().unwrap_or_default()
        } else {
            r.audience.clone()
        };
        if !c.audiences.contains(&audience) {
            return Err(Reason::Invalid.status(format!(
                "audience {} is not allowed for credential {:?}; allowed: {}",
                excerpt(&audience),
                c.name,
                c.audiences.join(", ")
            )));
        }
        let ttl = if r.ttl_seconds == 0 {
            c.default_ttl
        } else {
            r.ttl_seconds
        };
        if ttl > c.max_ttl {
            return Err(Reason::Invalid.status(format!(
                "requested TTL {ttl}s is above the max_ttl of {:?} ({}s); ask for less",
                c.name, c.max_ttl
            )));
        }
        let scope = if c.scopes.is_empty() {
            None
        } else {
            match c.scopes.get(&action) {
                Some(sc) => Some(sc.join(" ")),
                None => {
                    return Err(Reason::Invalid.status(format!(
                        "credential {:?} defines no scopes for action {}; it has scopes for: {}",
                        c.name,
                        excerpt(&action),
                        c.scopes.keys().cloned().collect::<Vec<_>>().join(", ")
                    )))
                }
            }
        };
        let facts = Facts {
            uid: i64::from(attested.uid),
            user: attested.user.clone(),
            exe_path: attested.exe_path.clone(),
            sha256: attested.exe_sha256.clone(),
            ttl_seconds: i64::from(ttl),
            audience: audience.clone(),
            // Policy sees the task by the name people gave it.
            task: (!r.task.is_empty()).then(|| {
                if r.task_name.is_empty() {
                    r.task.clone()
                } else {
                    r.task_name.clone()
                }
            }),
            on_behalf_of: r.on_behalf_of.clone(),
            now,
        };
        let verdict = s
            .policy
            .decide(&w, &c, &action, &host, &facts)
            .map_err(|e| Reason::Unavailable.status(e.to_string()))?;
        if !verdict.allow {
            let why = if verdict.reasons.is_empty() {
                format!(
                    "no policy permits workload {:?} to {action} credential {:?} (default deny); grant it with `leashctl workload add … --allow {}` or a Cedar policy",
                    w.name, c.name, c.name
                )
            } else {
                format!(
                    "forbidden by policy {} for workload {:?}, credential {:?}, action {action}",
                    verdict
                        .reasons
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", "),
                    w.name,
                    c.name
                )
            };
            return Err(self.deny(&host, &r, why).await);
        }
        let approval = if verdict.approval_required {
            let policies = verdict.reasons.clone();
            let want = crate::approval::request(
                &w,
                &c.name,
                &action,
                &host,
                &r.on_behalf_of,
                ttl,
                &audience,
                policies,
                now,
            );
            match crate::approval::gate(s, want).await {
                Ok(id) => Some(id),
                Err(st) => {
                    if Reason::of(&st) == Reason::Denied {
                        return Err(self.deny(&host, &r, st.message().to_string()).await);
                    }
                    return Err(st);
                }
            }
        } else {
            None
        };

        let lease_id = crate::random_id("l", 10);
        let task = (!r.task.is_empty()).then(|| r.task.clone());
        let obo = (!r.on_behalf_of.is_empty()).then(|| r.on_behalf_of.clone());
        let claims = Claims {
            iss: s.config.issuer.clone(),
            sub: format!("spiffe://{}/{}", s.config.trust_domain, w.name),
            aud: audience.clone(),
            exp: now + i64::from(ttl),
            iat: now,
            nbf: now,
            jti: lease_id.clone(),
            scope,
            obo: obo.clone(),
            leash: LeashClaim {
                host: host.name.clone(),
                action: action.clone(),
                owner: w.owner.clone(),
                task: task.clone(),
            },
        };
        let token = issuer::sign(&s.keys, &claims)
            .map_err(|e| Reason::Unavailable.status(e.to_string()))?;
        let fingerprint = issuer::fingerprint(&token);
        let lease = Lease {
            id: lease_id.clone(),
            workload: w.name.clone(),
            credential: c.name.clone(),
            action: action.clone(),
            audience: audience.clone(),
            host: host.name.clone(),
            task,
            on_behalf_of: obo,
            approval: approval.clone(),
            context: Some(facts),
            policy_version: verdict.version,
            issued_at: now,
            expires_at: claims.exp,
            seq: 0,
            state: LeaseState::Active,
            reason: None,
            fingerprint: fingerprint.clone(),
        };
        let mut event = Event::new("issued")
            .actor(host.name.clone())
            .host(host.name.clone())
            .workload(w.name.clone())
            .credential(c.name.clone())
            .lease(lease_id.clone())
            .detail(serde_json::json!({
                "action": action, "audience": audience, "ttl_seconds": ttl,
                "fingerprint": fingerprint, "pid": attested.pid,
            }));
        event.task = lease.task.clone();
        event.approval = approval.clone();
        let written = match &approval {
            Some(id) => s.store.issue_with_approval(id, now, lease, event).await,
            None => s.store.issue_lease(lease, event).await,
        };
        let seq = match written {
            Ok(seq) => seq,
            Err(crate::store::StoreError::Refused(m)) => return Err(self.deny(&host, &r, m).await),
            Err(e) => {
                let failed = Event::new("issue-failed")
                    .actor(host.name.clone())
                    .host(host.name.clone())
                    .workload(r.workload.clone())
                    .credential(r.credential.clone());
                return Err(write_failed(&self.s, e, failed).await);
            }
        };
        tracing::info!(host = %host.name, workload = %w.name, credential = %c.name, lease = %lease_id, %fingerprint, "issued");
        Ok(Response::new(v1::IssueResponse {
            token,
            expires_at_unix: claims.exp,
            lease_id,
            seq,
            issued_at_unix: now,
            action,
            audience,
        }))
    }

    async fn introspect(
        &self,
        req: Request<v1::IntrospectRequest>,
    ) -> Result<Response<v1::IntrospectResponse>, Status> {
        self.host(&req)?;
        Ok(Response::new(crate::revocation::introspect(
            &self.s,
            &req.into_inner().token,
        )))
    }

    async fn start_task(
        &self,
        req: Request<v1::TaskStartedRequest>,
    ) -> Result<Response<v1::TaskStartedResponse>, Status> {
        let host = self.host(&req)?;
        let r = req.into_inner();
        check_task(&r.task, &r.name)?;
        let e = Event::new("task-started")
            .actor(host.name.clone())
            .host(host.name.clone())
            .task(r.task.clone())
            .detail(serde_json::json!({ "name": r.name, "root_pid": r.root_pid, "uid": r.uid }));
        self.s
            .store
            .append_events(vec![e])
            .await
            .map_err(Status::from)?;
        Ok(Response::new(v1::TaskStartedResponse {}))
    }

    async fn complete_task(
        &self,
        req: Request<v1::CompleteTaskRequest>,
    ) -> Result<Response<v1::CompleteTaskResponse>, Status> {
        let host = self.host(&req)?;
        let r = req.into_inner();
        if r.task.is_empty() {
            return Err(Reason::Invalid.status("CompleteTask needs the task id"));
        }
        check_task(&r.task, &r.name)?;
        // Every active lease of this task on this host, not only the ones the agent
        // still had cached.
        let ids: Vec<String> = self
            .s
            .store
            .leases(None, true)
            .map_err(Status::from)?
            .into_iter()
            .filter(|l| l.host == host.name && l.task.as_deref() == Some(r.task.as_str()))
            .map(|l| l.id)
            .collect();
        let label = if r.name.is_empty() {
            r.task.clone()
        } else {
            r.name.clone()
        };
        let done = self
            .s
            .store
            .finish_leases(ids, LeaseState::Completed, format!("task {label} ended"))
            .await
            .map_err(Status::from)?;
        if !r.left_running.is_empty() {
            // The task's own `completed` record: what it left running because its owner
            // could not have signalled it. Bounded whatever the agent sends.
            let left: Vec<serde_json::Value> = r
                .left_running
                .iter()
                .take(64)
                .map(|p| serde_json::json!({ "pid": p.pid, "exe": p.exe.chars().take(256).collect::<String>() }))
                .collect();
            let e = Event::new("completed")
                .actor(host.name.clone())
                .host(host.name.clone())
                .task(r.task.clone())
                .reason(format!(
                    "task {label} ended; {} process(es) its owner could not signal were left running",
                    r.left_running.len()
                ))
                .detail(serde_json::json!({ "left_running": left }));
            self.s
                .store
                .append_events(vec![e])
                .await
                .map_err(Status::from)?;
        }
        Ok(Response::new(v1::CompleteTaskResponse {
            completed: done.len() as u32,
        }))
    }
}

/// Drive one Sync stream until either side goes away.
async fn run_sync(
    s: &Shared,
    host: &Host,
    conn: u64,
    last_seq: u64,
    inbound: &mut Streaming<v1::AgentMessage>,
    tx: &mpsc::Sender<Result<v1::ControlMessage, Status>>,
) -> Result<(), String> {
    use tokio::sync::broadcast::error::RecvError;
    use v1::control_message::Msg;

    let send = |m: v1::ControlMessage| async move {
        // Noted before it goes out, so an ack that comes back at once is recognised.
        let (seq, revocation) = message_seq(&m);
        s.hub.sending(&host.name, conn, seq, revocation);
        tx.send(Ok(m))
            .await
            .map_err(|_| "agent went away".to_string())
    };
    // Subscribe before reading the log, so nothing committed in between is missed.
    let mut changes = s.store.subscribe_changes();
    // The workloads this host may run. Read before the backlog: a change committed in
    // between is then in the backlog too, and is told against this picture.
    let matching = || -> Result<Vec<Workload>, String> {
        Ok(s.store
            .workloads()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|w| hosts_match(&w.hosts, &host.labels))
            .collect())
    };
    let workloads = matching()?;
    let mut told: HashMap<String, String> = workloads
        .iter()
        .map(|w| (w.name.clone(), w.owner.clone()))
        .collect();
    let snapshot = |seq: u64, workloads: &[Workload]| v1::ControlMessage {
        msg: Some(Msg::Snapshot(v1::Snapshot {
            seq,
            workloads: workloads
                .iter()
                .map(|w| v1::WorkloadEntry {
                    seq,
                    workload: Some(workload_proto(w)),
                })
                .collect(),
            revocations: Vec::new(),
        })),
    };
    let mut sent = match s.store.changes_since(last_seq).map_err(|e| e.to_string())? {
        Some(backlog) if last_seq > 0 => {
            let mut sent = last_seq;
            // A workload that stopped matching (or was removed) and does not match now
            // may or may not be on the agent; naming it to find out would tell the host
            // about a workload it may never have run. A snapshot after the backlog
            // replaces what the agent has instead.
            let mut replace = false;
            for c in &backlog {
                replace |= match c {
                    Change::WorkloadPut { workload, .. } => {
                        !hosts_match(&workload.hosts, &host.labels)
                            && !told.contains_key(&workload.name)
                    }
                    Change::WorkloadRemoved { name, .. } => !told.contains_key(name),
                    _ => false,
                };
                if let Some(m) = messages_for(host, c, &mut told) {
                    send(m).await?;
                }
                sent = c.seq();
            }
            let sent = sent.max(last_seq);
            if replace {
                let now = matching()?;
                told.extend(now.iter().map(|w| (w.name.clone(), w.owner.clone())));
                send(snapshot(sent, &now)).await?;
            }
            sent
        }
        _ => {
            // Fresh agent, or the log was compacted past it: a full snapshot.
            // The sequence first, then the state: a change in between is sent again.
            let seq = s.store.current_seq();
            let now = matching()?;
            told.extend(now.iter().map(|w| (w.name.clone(), w.owner.clone())));
            send(snapshot(seq, &now)).await?;
            seq
        }
    };
    let max_offline = s.config.max_offline.as_secs() as u32;
    send(v1::ControlMessage {
        msg: Some(Msg::CaughtUp(v1::CaughtUp {
            seq: sent,
            max_offline_secs: max_offline,
        })),
    })
    .await?;
    if let Ok(Some(h)) = s.store.host(&host.name) {
        if h.evicted {
            send(v1::ControlMessage {
                msg: Some(Msg::Evicted(v1::Evicted {
                    seq: sent,
                    reason: "host evicted".into(),
                })),
            })
            .await?;
            return Err("host is evicted".into());
        }
    }

    let mut heartbeat = tokio::time::interval(s.config.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Ok(c) => {
                    if c.seq() <= sent { continue; }
                    if let Some(m) = messages_for(host, &c, &mut told) {
                        send(m).await?;
                    }
                    sent = c.seq();
                    if matches!(&*c, Change::HostEvicted { name, .. } if name == &host.name) {
                        return Err("host evicted".into());
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    // Fell behind the broadcast: replay from the durable log instead.
                    let backlog = s.store.changes_since(sent).map_err(|e| e.to_string())?
                        .ok_or("fell too far behind the change log")?;
                    for c in backlog {
                        if let Some(m) = messages_for(host, &c, &mut told) { send(m).await?; }
                        sent = c.seq();
                    }
                }
                Err(RecvError::Closed) => return Err("shutting down".into()),
            },
            _ = heartbeat.tick() => {
                send(v1::ControlMessage { msg: Some(Msg::Heartbeat(v1::Heartbeat {
                    seq: sent,
                    now_unix_ms: s.clock.now_ms(),
                    max_offline_secs: max_offline,
                }))}).await?;
            }
            msg = inbound.next() => match msg {
                None => return Err("agent closed the stream".into()),
                Some(Err(e)) => return Err(format!("agent stream error: {}", e.message())),
                Some(Ok(m)) => handle_agent_message(s, host, conn, m).await,
            },
        }
    }
}

/// Longest lease id quoted in a log line about a report that was not believed.
const LOGGED_ID_MAX: usize = 64;

async fn handle_agent_message(s: &Shared, host: &Host, conn: u64, m: v1::AgentMessage) {
    use v1::agent_message::Msg;
    let now = s.clock.now_ms();
    match m.msg {
        Some(Msg::Ack(a)) => {
            if !s.hub.seen(&host.name, conn, now, Some(a.seq)) {
                // Acknowledging what was never sent proves nothing: not counted.
                tracing::debug!(host = %host.name, seq = a.seq, "ignored a sync ack beyond what this connection sent");
            }
        }
        Some(Msg::WipeAck(a)) => {
            // Only a revocation this connection sent, once: a host cannot mark a
            // revocation wiped before it has it.
            if !s.hub.wipe_acked(&host.name, conn, now, a.seq, a.wiped) {
                tracing::warn!(host = %host.name, seq = a.seq, "ignored a wipe ack for a revocation not sent on this connection");
                return;
            }
            // One `wiped` event per covered lease issued to this host, so each lease's
            // timeline shows where it was wiped; a host-level one when none was.
            let leases = s
                .revoked_leases_by_host(a.seq)
                .get(&host.name)
                .cloned()
                .unwrap_or_default();
            let base = Event::new("wiped")
                .actor(host.name.clone())
                .host(host.name.clone())
                .detail(serde_json::json!({ "seq": a.seq, "count": a.wiped }));
            let events = if leases.is_empty() {
                vec![base]
            } else {
                leases
                    .into_iter()
                    .map(|id| base.clone().lease(id))
                    .collect()
            };
            s.record(events);
        }
        Some(Msg::Usage(u)) => {
            s.hub.seen(&host.name, conn, now, None);
            // A host reports only on leases issued to it; a report naming any other lease
            // (another host's, or none at all) is not recorded.
            let mut ignored = 0usize;
            let mut first_ignored = None;
            let events = u
                .leases
                .into_iter()
                .take(10_000)
                .filter(|l| {
                    let own =
                        matches!(s.store.lease(&l.lease_id), Ok(Some(x)) if x.host == host.name);
                    if !own {
                        ignored += 1;
                        first_ignored.get_or_insert_with(|| {
                            l.lease_id.chars().take(LOGGED_ID_MAX).collect::<String>()
                        });
                    }
                    own
                })
                .map(|l| {
                    Event::new("served")
                        .host(host.name.clone())
                        .actor(host.name.clone())
                        .lease(l.lease_id)
                        .detail(serde_json::json!({
                            "count": l.count,
                            "first_pid": l.first_pid, "first_exe": l.first_exe,
                            "last_pid": l.last_pid, "last_exe": l.last_exe,
                            "first_ms": l.first_unix_ms, "last_ms": l.last_unix_ms,
                        }))
                })
                .collect();
            if ignored > 0 {
                tracing::warn!(host = %host.name, ignored, first = ?first_ignored.unwrap_or_default(), "ignored usage reported for leases not issued to this host");
            }
            s.record(events);
        }
        Some(Msg::Hello(_)) | None => {
            s.hub.seen(&host.name, conn, now, None);
        }
    }
}

/// Kept at this path for the fuzz targets.
pub use crate::enroll::narrow_labels;

/// The kind of workload that may act on behalf of someone.
const SHARED_AGENT: &str = "shared-agent";

fn invalid(e: names::NameError) -> Status {
    Reason::Invalid.status(e.to_string())
}

/// The agent checked these already; a host is not trusted to have done so. Every
/// free-text field of an Issue that is stored or signed is held to the rule for
/// caller-chosen text (`leash_proto::names`).
fn check_issue(r: &v1::IssueRequest) -> Result<(), Status> {
    names::check_name("workload", &r.workload).map_err(invalid)?;
    names::check_name("credential", &r.credential).map_err(invalid)?;
    names::check_name("action", &r.action).map_err(invalid)?;
    names::check_name("on_behalf_of", &r.on_behalf_of).map_err(invalid)?;
    names::check_text("audience", &r.audience).map_err(invalid)?;
    check_task(&r.task, &r.task_name)
}

/// A task's id and name, as StartTask, CompleteTask and Issue carry them.
fn check_task(id: &str, name: &str) -> Result<(), Status> {
    names::check_name("task", id).map_err(invalid)?;
    names::check_name("task name", name).map_err(invalid)
}
