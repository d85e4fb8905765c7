//! The admin API on the local Unix socket.
//!
//! Callers are authorised by their peer uid (SO_PEERCRED, read by tonic for each
//! connection): configured admins, or, when none are configured, root and the control
//! plane's own uid. The admin's name is recorded as the actor of what they do.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use leash_proto::join_token::JoinToken;
use leash_proto::reason::Reason;
use leash_proto::v1;
use leash_proto::v1::admin_server::Admin;
use ring::rand::SecureRandom;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::model::{
    selector_kind, valid_name, Credential, Event, JoinTokenRecord, RevocationTarget, Workload,
    ID_SELECTOR_KINDS, WORKLOAD_KINDS,
};
use crate::policy::PolicyError;
use crate::state::Shared;
use crate::status::write_failed;
use crate::wire::{
    self, credential_proto, event_proto, lease_proto, problem_proto, workload_proto,
};

/// Longest a join token may live.
const MAX_JOIN_TOKEN_TTL: u32 = 7 * 24 * 3600;

/// The service.
#[derive(Debug, Clone)]
pub struct AdminApi {
    s: Arc<Shared>,
}

fn invalid(m: impl Into<String>) -> Status {
    Reason::Invalid.status(m)
}

fn not_found(m: impl Into<String>) -> Status {
    Reason::NotFound.status(m)
}

fn valid_label(k: &str, v: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    ok(k) && ok(v)
}

fn check_labels(labels: &BTreeMap<String, String>, what: &str) -> Result<(), Status> {
    for (k, v) in labels {
        if !valid_label(k, v) {
            return Err(invalid(format!(
                "invalid {what} {k}={v}: keys and values are 1-63 of letters, digits, '-', '_', '.'"
            )));
        }
    }
    Ok(())
}

impl AdminApi {
    /// Wrap the shared state.
    pub fn new(s: Arc<Shared>) -> AdminApi {
        AdminApi { s }
    }

    /// The admin name of the caller, or a denial.
    fn admin<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let uid = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .map(|c| c.uid())
            .ok_or_else(|| {
                Reason::Denied.status("cannot tell who is calling (no peer credentials)")
            })?;
        let admins = &self.s.config.admins;
        if let Some(name) = admins.get(&uid) {
            return Ok(name.clone());
        }
        let own = nix::unistd::geteuid().as_raw();
        if admins.is_empty() && (uid == 0 || uid == own) {
            return Ok(nix::unistd::User::from_uid(uid.into())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| format!("uid:{uid}")));
        }
        Err(Reason::Denied.status(format!(
            "uid {uid} is not a Leash admin; ask an admin to add you under [admins] in the control-plane config"
        )))
    }

    fn workload_or_404(&self, name: &str) -> Result<Workload, Status> {
        self.s
            .store
            .workload(name)
            .map_err(Status::from)?
            .ok_or_else(|| {
                not_found(format!(
                    "no workload named {name:?}; `leashctl workload list` shows them"
                ))
            })
    }

    async fn revoke_target(
        &self,
        actor: String,
        target: RevocationTarget,
        reason: String,
    ) -> Result<v1::RevokeResponse, Status> {
        let ev = Event::new("revocation")
            .actor(actor.clone())
            .reason(reason.clone());
        let failed = Event::new("revoke-failed")
            .actor(actor.clone())
            .detail(serde_json::json!({ "target": target.describe() }));
        let rev = match self.s.store.revoke(target, reason, actor, vec![ev]).await {
            Ok(rev) => rev,
            Err(e) => return Err(write_failed(&self.s, e, failed).await),
        };
        let hosts = crate::revocation::hosts_to_wait_for(&self.s, &rev);
        Ok(v1::RevokeResponse {
            seq: rev.seq,
            leases_revoked: rev.lease_ids.len() as u32,
            hosts,
        })
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::AuditEvent, Status>> + Send>>;
type ProgressStream = Pin<Box<dyn Stream<Item = Result<v1::RevocationProgress, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn create_join_token(
        &self,
        req: Request<v1::CreateJoinTokenRequest>,
    ) -> Result<Response<v1::CreateJoinTokenResponse>, Status> {
        let actor = self.admin(&req)?;
        let r = req.into_inner();
        let ttl = if r.ttl_seconds == 0 {
            600
        } else {
            r.ttl_seconds
        };
        if ttl > MAX_JOIN_TOKEN_TTL {
            return Err(invalid(
                "join tokens live at most 7 days (168h); use a shorter --ttl",
            ));
        }
        let name = (!r.name.is_empty()).then_some(r.name);
        if let Some(n) = &name {
            if !valid_name(n) || n.contains('/') {
                return Err(invalid(format!(
                    "invalid host name {n:?}: use letters, digits, '.', '-', '_'"
                )));
            }
            if self.s.store.host(n).map_err(Status::from)?.is_some() {
                return Err(invalid(format!(
                    "host name {n:?} is taken; names are never reused"
                )));
            }
        }
        let labels: BTreeMap<String, String> = r.labels.into_iter().collect();
        check_labels(&labels, "label")?;
        let id = crate::random_id("jt", 6);
        let mut secret = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| Reason::Unavailable.status("no randomness available"))?;
        let now = self.s.clock.now();
        let rec = JoinTokenRecord {
            id: id.clone(),
            secret_sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, &secret)),
            name,
            labels,
            created_at: now,
            expires_at: now + i64::from(ttl),
            used_by: None,
            revoked: false,
        };
        let token = JoinToken::encode(&id, &secret, &self.s.keys.ca_pin);
        let ev = Event::new("join-token-created")
            .actor(actor)
            .detail(serde_json::json!({ "join_token": id, "name": rec.name, "labels": rec.labels, "ttl_seconds": ttl }));
        self.s
            .store
            .put_join_token(rec, ev)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(v1::CreateJoinTokenResponse {
            token,
            id,
            expires_at_unix: now + i64::from(ttl),
        }))
    }

    async fn list_join_tokens(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListJoinTokensResponse>, Status> {
        self.admin(&req)?;
        let now = self.s.clock.now();
        let tokens = self
            .s
            .store
            .join_tokens()
            .map_err(Status::from)?
            .into_iter()
            .map(|t| wire::join_token_info(t, now))
            .collect();
        Ok(Response::new(v1::ListJoinTokensResponse { tokens }))
    }

    async fn revoke_join_token(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let actor = self.admin(&req)?;
        let id = req.into_inner().name;
        let ev = Event::new("join-token-revoked")
            .actor(actor)
            .detail(serde_json::json!({ "join_token": id }));
        self.s
            .store
            .revoke_join_token(&id, ev)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn add_workload(
        &self,
        req: Request<v1::AddWorkloadRequest>,
    ) -> Result<Response<v1::Workload>, Status> {
        let actor = self.admin(&req)?;
        let w = req
            .into_inner()
            .workload
            .ok_or_else(|| invalid("missing workload"))?;
        if !valid_name(&w.name) {
            return Err(invalid(format!(
                "invalid workload name {:?}: use path-like names such as ci/deploy-web (letters, digits, '.', '-', '_' and '/')",
                w.name
            )));
        }
        if w.owner.trim().is_empty() {
            return Err(invalid(
                "every workload needs an owner: add --owner TEAM-OR-PERSON",
            ));
        }
        if !WORKLOAD_KINDS.contains(&w.kind.as_str()) {
            return Err(invalid(format!(
                "unknown kind {:?}; use one of {}",
                w.kind,
                WORKLOAD_KINDS.join(", ")
            )));
        }
        let mut has_id = false;
        for sel in &w.selectors {
            match selector_kind(sel) {
                Some(k) => has_id |= ID_SELECTOR_KINDS.contains(&k),
                None => {
                    return Err(invalid(format!(
                        "invalid selector {sel:?}; selectors look like unix:uid:1001, unix:user:ci, unix:gid:N, unix:group:G, unix:path:/abs/path, unix:sha256:HEX"
                    )))
                }
            }
        }
        if !has_id {
            return Err(invalid(
                "a workload needs at least one unix:uid, unix:user, unix:gid or unix:group selector: uid/gid is the security boundary",
            ));
        }
        let hosts: BTreeMap<String, String> = w.hosts.into_iter().collect();
        check_labels(&hosts, "--hosts selector")?;
        for c in &w.allow {
            if !valid_name(c) {
                return Err(invalid(format!("invalid credential name {c:?} in --allow")));
            }
        }
        if self
            .s
            .store
            .workload(&w.name)
            .map_err(Status::from)?
            .is_some()
        {
            return Err(invalid(format!(
                "workload {:?} already exists; remove it first (`leashctl workload remove {}`)",
                w.name, w.name
            )));
        }
        let rec = Workload {
            name: w.name,
            owner: w.owner.trim().to_string(),
            kind: w.kind,
            selectors: w.selectors,
            hosts,
            allow: w.allow,
            expires_at: w.expires_at_unix,
            disabled: false,
            created_at: self.s.clock.now(),
        };
        let ev = Event::new("workload-added")
            .actor(actor)
            .workload(rec.name.clone())
            .detail(serde_json::json!({ "owner": rec.owner, "kind": rec.kind, "selectors": rec.selectors, "allow": rec.allow }));
        self.save_workload(rec, ev).await
    }

    async fn list_workloads(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListWorkloadsResponse>, Status> {
        self.admin(&req)?;
        let workloads = self
            .s
            .store
            .workloads()
            .map_err(Status::from)?
            .iter()
            .map(|w| self.spiffe(workload_proto(w)))
            .collect();
        Ok(Response::new(v1::ListWorkloadsResponse { workloads }))
    }

    async fn get_workload(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::Workload>, Status> {
        self.admin(&req)?;
        let w = self.workload_or_404(&req.into_inner().name)?;
        Ok(Response::new(self.spiffe(workload_proto(&w))))
    }

    async fn remove_workload(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let actor = self.admin(&req)?;
        let name = req.into_inner().name;
        self.workload_or_404(&name)?;
        let ev = Event::new("workload-removed")
            .actor(actor)
            .workload(name.clone());
        self.s
            .store
            .remove_workload(&name, ev)
            .await
            .map_err(Status::from)?;
        self.s.relink();
        Ok(Response::new(v1::Empty {}))
    }

    async fn set_workload_disabled(
        &self,
        req: Request<v1::SetDisabledRequest>,
    ) -> Result<Response<v1::Workload>, Status> {
        let actor = self.admin(&req)?;
        let r = req.into_inner();
        let reason = if r.reason.is_empty() {
            if r.disabled {
                "workload disabled"
            } else {
                "workload enabled"
            }
            .to_string()
        } else {
            r.reason
        };
        let (w, _) = self
            .s
            .store
            .set_workload_disabled(&r.name, r.disabled, actor, reason)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(self.spiffe(workload_proto(&w))))
    }

    async fn transfer_workload(
        &self,
        req: Request<v1::TransferRequest>,
    ) -> Result<Response<v1::Workload>, Status> {
        let actor = self.admin(&req)?;
        let r = req.into_inner();
        if r.to.trim().is_empty() {
            return Err(invalid("--to needs the new owner"));
        }
        let mut w = self.workload_or_404(&r.name)?;
        let from = std::mem::replace(&mut w.owner, r.to.trim().to_string());
        let ev = Event::new("workload-transferred")
            .actor(actor)
            .workload(w.name.clone())
            .detail(serde_json::json!({ "from": from, "to": w.owner }));
        self.save_workload(w, ev).await
    }

    async fn add_credential(
        &self,
        req: Request<v1::Credential>,
    ) -> Result<Response<v1::Credential>, Status> {
        let actor = self.admin(&req)?;
        let c = req.into_inner();
        if !valid_name(&c.name) {
            return Err(invalid(format!("invalid credential name {:?}", c.name)));
        }
        match c.kind.as_str() {
            "jwt" => {}
            "static" | "x509" | "postgres" => {
                return Err(invalid(format!(
                    "credential kind {:?} is not available yet; this control plane issues `jwt` credentials",
                    c.kind
                )))
            }
            k => return Err(invalid(format!("unknown credential kind {k:?}; use --kind jwt"))),
        }
        if c.audiences.is_empty() || c.audiences.iter().any(|a| a.trim().is_empty()) {
            return Err(invalid("a jwt credential needs at least one --audience"));
        }
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
        let actions = &self.s.config.actions;
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
            created_at: self.s.clock.now(),
        };
        let ev = Event::new("credential-added")
            .actor(actor)
            .credential(rec.name.clone())
            .detail(serde_json::json!({ "kind": rec.kind, "audiences": rec.audiences, "ttl": rec.default_ttl, "max_ttl": rec.max_ttl }));
        self.s
            .store
            .put_credential(rec.clone(), ev)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(credential_proto(&rec)))
    }

    async fn list_credentials(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListCredentialsResponse>, Status> {
        self.admin(&req)?;
        let credentials = self
            .s
            .store
            .credentials()
            .map_err(Status::from)?
            .iter()
            .map(credential_proto)
            .collect();
        Ok(Response::new(v1::ListCredentialsResponse { credentials }))
    }

    async fn list_hosts(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListHostsResponse>, Status> {
        self.admin(&req)?;
        let hosts = self
            .s
            .store
            .hosts()
            .map_err(Status::from)?
            .into_iter()
            .map(|h| {
                let conn = self.s.hub.info(&h.name);
                wire::host_info(h, conn)
            })
            .collect();
        Ok(Response::new(v1::ListHostsResponse { hosts }))
    }

    async fn evict_host(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        let actor = self.admin(&req)?;
        let name = req.into_inner().name;
        self.s
            .store
            .evict_host(&name, actor, "host evicted by an admin".into())
            .await
            .map_err(Status::from)?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn list_leases(
        &self,
        req: Request<v1::ListLeasesRequest>,
    ) -> Result<Response<v1::ListLeasesResponse>, Status> {
        self.admin(&req)?;
        let r = req.into_inner();
        let w = (!r.workload.is_empty()).then_some(r.workload.as_str());
        if let Some(name) = w {
            self.workload_or_404(name)?;
        }
        let now = self.s.clock.now();
        let leases = self
            .s
            .store
            .leases(w, r.active_only)
            .map_err(Status::from)?
            .iter()
            .filter(|l| !r.active_only || l.expires_at > now)
            .map(lease_proto)
            .collect();
        Ok(Response::new(v1::ListLeasesResponse { leases }))
    }

    async fn get_lease(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::LeaseDetail>, Status> {
        self.admin(&req)?;
        let id = req.into_inner().name;
        let lease = self
            .s
            .store
            .lease(&id)
            .map_err(Status::from)?
            .ok_or_else(|| {
                not_found(format!("no lease {id:?}; `leashctl lease list` shows them"))
            })?;
        let mut events = self.s.store.lease_events(&id).map_err(Status::from)?;
        // The task's own events (task-started, …) belong in the lease's timeline too.
        if let Some(task) = &lease.task {
            for e in self.s.store.task_events(task).map_err(Status::from)? {
                if e.lease.is_none() {
                    events.push(e);
                }
            }
        }
        if let Some(ap) = &lease.approval {
            for e in self.s.store.approval_events(ap).map_err(Status::from)? {
                if e.lease.is_none() {
                    events.push(e);
                }
            }
        }
        events.sort_by_key(|e| e.id);
        let timeline = events.iter().map(event_proto).collect();
        Ok(Response::new(v1::LeaseDetail {
            lease: Some(lease_proto(&lease)),
            timeline,
        }))
    }

    async fn revoke(
        &self,
        req: Request<v1::RevokeRequest>,
    ) -> Result<Response<v1::RevokeResponse>, Status> {
        use v1::revocation_target_spec::Target;
        let actor = self.admin(&req)?;
        let r = req.into_inner();
        let target = match r.target.and_then(|t| t.target) {
            Some(Target::Lease(id)) => {
                self.s
                    .store
                    .lease(&id)
                    .map_err(Status::from)?
                    .ok_or_else(|| not_found(format!("no lease {id:?}")))?;
                RevocationTarget::Lease(id)
            }
            Some(Target::Workload(w)) => {
                self.workload_or_404(&w)?;
                RevocationTarget::Workload(w)
            }
            Some(Target::Credential(c)) => {
                if self.s.store.credential(&c).map_err(Status::from)?.is_none() {
                    return Err(not_found(format!("no credential named {c:?}")));
                }
                RevocationTarget::Credential(c)
            }
            Some(Target::Owner(o)) => {
                let any = self.s.store.workloads().map_err(Status::from)?.iter().any(|w| w.owner == o);
                if !any {
                    return Err(not_found(format!("no workload is owned by {o:?}")));
                }
                RevocationTarget::Owner(o)
            }
            Some(Target::Host(h)) => {
                if self.s.store.host(&h).map_err(Status::from)?.is_none() {
                    return Err(not_found(format!("no host named {h:?}")));
                }
                RevocationTarget::Host(h)
            }
            Some(Target::All(true)) => RevocationTarget::All,
            _ => {
                return Err(invalid(
                    "say what to revoke: exactly one of --lease, --workload, --credential, --owner, --host, --all",
                ))
            }
        };
        let reason = if r.reason.is_empty() {
            "revoked by an admin".to_string()
        } else {
            r.reason
        };
        Ok(Response::new(
            self.revoke_target(actor, target, reason).await?,
        ))
    }

    type WaitRevocationStream = ProgressStream;

    async fn wait_revocation(
        &self,
        req: Request<v1::WaitRevocationRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        self.admin(&req)?;
        let r = req.into_inner();
        let timeout = Duration::from_millis(if r.timeout_ms == 0 {
            30_000
        } else {
            u64::from(r.timeout_ms)
        });
        let (tx, rx) = mpsc::channel(16);
        let s = self.s.clone();
        tokio::spawn(async move { crate::revocation::wait(&s, r.seq, timeout, tx).await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn introspect(
        &self,
        req: Request<v1::IntrospectRequest>,
    ) -> Result<Response<v1::IntrospectResponse>, Status> {
        self.admin(&req)?;
        Ok(Response::new(crate::revocation::introspect(
            &self.s,
            &req.into_inner().token,
        )))
    }

    async fn policy_check(
        &self,
        req: Request<v1::PolicyText>,
    ) -> Result<Response<v1::PolicyCheckResponse>, Status> {
        self.admin(&req)?;
        let problems = match self.s.policy.check(&req.into_inner().text) {
            Ok(_) => Vec::new(),
            Err(PolicyError::Invalid(p)) => p.into_iter().map(problem_proto).collect(),
            Err(e) => return Err(Reason::Unavailable.status(e.to_string())),
        };
        Ok(Response::new(v1::PolicyCheckResponse { problems }))
    }

    async fn policy_apply(
        &self,
        req: Request<v1::PolicyText>,
    ) -> Result<Response<v1::PolicyApplyResponse>, Status> {
        let actor = self.admin(&req)?;
        let text = req.into_inner().text;
        // Validate, store durably, install; then take back what it no longer permits.
        let _guard = self.s.policy_lock.lock().await;
        let version = self.s.policy.version() + 1;
        let workloads = self.s.store.workloads().map_err(Status::from)?;
        match self.s.policy.check(&text) {
            Ok(_) => {}
            Err(PolicyError::Invalid(p)) => {
                let list = p
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(invalid(format!(
                    "the policy does not validate; nothing was applied:\n{list}"
                )));
            }
            Err(e) => return Err(Reason::Unavailable.status(e.to_string())),
        }
        let rec = crate::policy::PolicyRecord {
            version,
            text: text.clone(),
            applied_at: self.s.clock.now(),
            applied_by: actor.clone(),
        };
        crate::policy::store_version(&*self.s.store, &rec)
            .await
            .map_err(Status::from)?;
        self.s
            .policy
            .install(version, &text, &workloads)
            .map_err(|e| Reason::Unavailable.status(e.to_string()))?;
        // Every active lease is evaluated again under the request context it was issued with.
        let now = self.s.clock.now();
        let mut revoke = Vec::new();
        for l in self.s.store.leases(None, true).map_err(Status::from)? {
            if l.expires_at <= now {
                continue;
            }
            let (Some(w), Some(c), Some(h)) = (
                workloads.iter().find(|w| w.name == l.workload),
                self.s
                    .store
                    .credential(&l.credential)
                    .map_err(Status::from)?,
                self.s.store.host(&l.host).map_err(Status::from)?,
            ) else {
                continue;
            };
            let mut facts: crate::policy::Facts = l.context.clone().unwrap_or_default();
            facts.now = now;
            let permitted = self
                .s
                .policy
                .decide(w, &c, &l.action, &h, &facts)
                // A lease issued under an approval stays permitted while policy still
                // allows it after approval.
                .map(|v| v.allow && (!v.approval_required || l.approval.is_some()))
                .unwrap_or(false);
            if !permitted {
                revoke.push(l.id);
            }
        }
        let revoked = revoke.len() as u32;
        let ev = Event::new("policy-changed")
            .actor(actor.clone())
            .detail(serde_json::json!({ "version": version, "revoked": revoked }));
        let (seq, hosts) = if revoke.is_empty() {
            self.s
                .store
                .append_events(vec![ev])
                .await
                .map_err(Status::from)?;
            (0, Vec::new())
        } else {
            let rev = self
                .s
                .store
                .revoke(
                    RevocationTarget::Leases(revoke),
                    format!("policy version {version} no longer permits it"),
                    actor,
                    vec![ev],
                )
                .await
                .map_err(Status::from)?;
            let hosts = crate::revocation::hosts_to_wait_for(&self.s, &rev);
            (rev.seq, hosts)
        };
        Ok(Response::new(v1::PolicyApplyResponse {
            version,
            revoked,
            revocation_seq: seq,
            hosts,
        }))
    }

    async fn policy_show(
        &self,
        req: Request<v1::PolicyShowRequest>,
    ) -> Result<Response<v1::PolicyShowResponse>, Status> {
        self.admin(&req)?;
        let v = req.into_inner().version;
        let workloads = self.s.store.workloads().map_err(Status::from)?;
        let rec = crate::policy::stored(&*self.s.store, v);
        if v != 0 && rec.is_none() {
            return Err(not_found(format!(
                "no policy version {v}; the current one is {}",
                self.s.policy.version()
            )));
        }
        let rendered = if v == 0 || v == self.s.policy.version() {
            self.s.policy.render(&workloads)
        } else {
            rec.as_ref().map(|r| r.text.clone()).unwrap_or_default()
        };
        Ok(Response::new(v1::PolicyShowResponse {
            version: rec.as_ref().map(|r| r.version).unwrap_or(0),
            text: rec.as_ref().map(|r| r.text.clone()).unwrap_or_default(),
            rendered,
            applied_at_unix: rec.as_ref().map(|r| r.applied_at).unwrap_or(0),
            applied_by: rec.map(|r| r.applied_by).unwrap_or_default(),
        }))
    }

    async fn policy_explain(
        &self,
        req: Request<v1::PolicyExplainRequest>,
    ) -> Result<Response<v1::PolicyExplainResponse>, Status> {
        self.admin(&req)?;
        let r = req.into_inner();
        let w = self.workload_or_404(&r.workload)?;
        let c = self
            .s
            .store
            .credential(&r.credential)
            .map_err(Status::from)?
            .ok_or_else(|| not_found(format!("no credential named {:?}", r.credential)))?;
        let host = if r.host.is_empty() {
            crate::model::Host {
                name: String::new(),
                labels: BTreeMap::new(),
                enrolled_at: 0,
                last_seen: 0,
                evicted: false,
                cert_serial: String::new(),
                cert_not_after: 0,
            }
        } else {
            self.s
                .store
                .host(&r.host)
                .map_err(Status::from)?
                .ok_or_else(|| not_found(format!("no host named {:?}", r.host)))?
        };
        let action = if r.action.is_empty() {
            c.default_action.clone()
        } else {
            r.action.clone()
        };
        if !self.s.config.actions.contains(&action) {
            return Err(invalid(format!(
                "unknown action {action:?}; the configured actions are {}",
                self.s.config.actions.join(", ")
            )));
        }
        let ttl = if r.ttl_seconds == 0 {
            c.default_ttl
        } else {
            r.ttl_seconds
        };
        let audience = if r.audience.is_empty() {
            c.audiences.first().cloned().unwrap_or_default()
        } else {
            r.audience.clone()
        };
        let now = if r.at_unix == 0 {
            self.s.clock.now()
        } else {
            r.at_unix
        };
        let mut facts =
            crate::policy::Facts::for_explain(&w, i64::from(ttl), audience.clone(), now);
        facts.on_behalf_of = r.on_behalf_of.clone();
        facts.task = (!r.task.is_empty()).then(|| r.task.clone());
        // The checks Issue makes before policy, so the answer matches what Issue does.
        let mut refusals = Vec::new();
        if w.disabled {
            refusals.push(format!("workload {:?} is disabled", w.name));
        }
        if w.expires_at != 0 && w.expires_at <= now {
            refusals.push(format!("workload {:?} has expired", w.name));
        }
        if !r.host.is_empty() && !crate::model::hosts_match(&w.hosts, &host.labels) {
            refusals.push(format!(
                "workload {:?} may not run on host {:?}",
                w.name, host.name
            ));
        }
        if !c.audiences.contains(&audience) {
            refusals.push(format!(
                "audience {audience:?} is not allowed for {:?}",
                c.name
            ));
        }
        if ttl > c.max_ttl {
            refusals.push(format!("TTL {ttl}s is above max_ttl {}s", c.max_ttl));
        }
        if !c.scopes.is_empty() && !c.scopes.contains_key(&action) {
            refusals.push(format!(
                "credential {:?} defines no scopes for action {action:?}",
                c.name
            ));
        }
        if w.kind == "shared-agent" && r.on_behalf_of.is_empty() {
            refusals
                .push("a shared agent must act on behalf of someone (--on-behalf-of)".to_string());
        }
        let v = self
            .s
            .policy
            .decide(&w, &c, &action, &host, &facts)
            .map_err(|e| Reason::Unavailable.status(e.to_string()))?;
        let decision = if v.allow && !v.approval_required && refusals.is_empty() {
            "allow"
        } else {
            "deny"
        };
        Ok(Response::new(v1::PolicyExplainResponse {
            decision: decision.to_string(),
            approval_required: v.approval_required,
            reasons: v
                .reasons
                .into_iter()
                .map(|id| v1::PolicyReason {
                    text: self.s.policy.policy_text(&id),
                    id,
                })
                .collect(),
            errors: v.errors,
            version: v.version,
            refusals,
        }))
    }

    async fn list_approvals(
        &self,
        req: Request<v1::ListApprovalsRequest>,
    ) -> Result<Response<v1::ListApprovalsResponse>, Status> {
        self.admin(&req)?;
        let all = req.into_inner().all;
        let now = self.s.clock.now();
        let timeout = self.s.config.approval_timeout.as_secs() as i64;
        let mut approvals: Vec<v1::ApprovalInfo> = self
            .s
            .store
            .approvals()
            .map_err(Status::from)?
            .into_iter()
            .map(|mut a| {
                if a.state == "pending" && now - a.requested_at >= timeout {
                    a.state = "expired".into();
                }
                a
            })
            .filter(|a| all || a.state == "pending")
            .map(|a| self.approval_proto(a))
            .collect();
        approvals.sort_by_key(|a| a.requested_at_unix);
        Ok(Response::new(v1::ListApprovalsResponse { approvals }))
    }

    async fn approve(
        &self,
        req: Request<v1::ApproveRequest>,
    ) -> Result<Response<v1::ApprovalInfo>, Status> {
        let approver = self.admin(&req)?;
        let r = req.into_inner();
        let mut a = self.pending_approval(&r.id, &approver)?;
        let max = self.s.config.max_approval.as_secs() as u32;
        let for_secs = if r.for_seconds == 0 {
            1800.min(max)
        } else {
            r.for_seconds
        };
        if for_secs > max {
            return Err(invalid(format!(
                "--for is capped at {}s by the control plane's max_approval; ask for less",
                max
            )));
        }
        let now = self.s.clock.now();
        a.state = "approved".into();
        a.decided_by = Some(approver.clone());
        a.valid_until = now + i64::from(for_secs);
        a.uses_left = if r.uses == 0 { 1 } else { r.uses };
        let ev = decision_event("approved", approver, &a).detail(
            serde_json::json!({ "for_seconds": for_secs, "uses": a.uses_left, "action": a.action }),
        );
        self.save_approval(a, ev).await
    }

    async fn deny_approval(
        &self,
        req: Request<v1::DenyApprovalRequest>,
    ) -> Result<Response<v1::ApprovalInfo>, Status> {
        let approver = self.admin(&req)?;
        let r = req.into_inner();
        if r.reason.trim().is_empty() {
            return Err(invalid("say why: --reason \"…\" (the requester sees it)"));
        }
        let mut a = self.pending_approval(&r.id, &approver)?;
        a.state = "denied".into();
        a.decided_by = Some(approver.clone());
        a.reason = Some(r.reason.clone());
        let ev = decision_event("denied", approver, &a).reason(r.reason);
        self.save_approval(a, ev).await
    }

    async fn list_owners(
        &self,
        req: Request<v1::Empty>,
    ) -> Result<Response<v1::ListOwnersResponse>, Status> {
        self.admin(&req)?;
        let workloads = self.s.store.workloads().map_err(Status::from)?;
        let leases = self.s.store.leases(None, true).map_err(Status::from)?;
        let offboarded: Vec<String> = self
            .s
            .store
            .offboarded_owners()
            .map_err(Status::from)?
            .into_iter()
            .map(|(o, _)| o)
            .collect();
        let mut owners: BTreeMap<String, v1::OwnerInfo> = BTreeMap::new();
        for w in &workloads {
            let e = owners
                .entry(w.owner.clone())
                .or_insert_with(|| v1::OwnerInfo {
                    owner: w.owner.clone(),
                    offboarded: offboarded.contains(&w.owner),
                    ..Default::default()
                });
            e.workloads.push(w.name.clone());
            e.active_leases += leases.iter().filter(|l| l.workload == w.name).count() as u32;
        }
        Ok(Response::new(v1::ListOwnersResponse {
            owners: owners.into_values().collect(),
        }))
    }

    async fn offboard_owner(
        &self,
        req: Request<v1::NameRequest>,
    ) -> Result<Response<v1::OffboardResponse>, Status> {
        let actor = self.admin(&req)?;
        let owner = req.into_inner().name;
        let (rev, workloads) = self
            .s
            .store
            .offboard_owner(&owner, actor)
            .await
            .map_err(Status::from)?;
        self.s.relink();
        let hosts = crate::revocation::hosts_to_wait_for(&self.s, &rev);
        Ok(Response::new(v1::OffboardResponse {
            seq: rev.seq,
            leases_revoked: rev.lease_ids.len() as u32,
            hosts,
            workloads,
        }))
    }

    async fn stale_report(
        &self,
        req: Request<v1::StaleReportRequest>,
    ) -> Result<Response<v1::StaleReportResponse>, Status> {
        self.admin(&req)?;
        let unused_for = i64::from(req.into_inner().unused_for_seconds);
        let now = self.s.clock.now();
        let mut last: BTreeMap<String, i64> = BTreeMap::new();
        for l in self.s.store.leases(None, false).map_err(Status::from)? {
            let e = last.entry(l.workload).or_insert(0);
            *e = (*e).max(l.issued_at);
        }
        let offboarded: Vec<String> = self
            .s
            .store
            .offboarded_owners()
            .map_err(Status::from)?
            .into_iter()
            .map(|(o, _)| o)
            .collect();
        let mut out = Vec::new();
        for w in self.s.store.workloads().map_err(Status::from)? {
            let last_issued = last.get(&w.name).copied().unwrap_or(0);
            let why = if offboarded.contains(&w.owner) {
                "owner-offboarded"
            } else if last_issued.max(w.created_at) + unused_for <= now {
                "unused"
            } else {
                continue;
            };
            out.push(v1::StaleWorkload {
                name: w.name,
                owner: w.owner,
                why: why.into(),
                last_issued_unix: last_issued,
                disabled: w.disabled,
            });
        }
        Ok(Response::new(v1::StaleReportResponse { workloads: out }))
    }

    async fn jwks(&self, req: Request<v1::Empty>) -> Result<Response<v1::JwksResponse>, Status> {
        self.admin(&req)?;
        Ok(Response::new(v1::JwksResponse {
            json: self.s.keys.jwks().to_string(),
        }))
    }

    type AuditTailStream = EventStream;

    async fn audit_tail(
        &self,
        req: Request<v1::AuditTailRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.admin(&req)?;
        let r = req.into_inner();
        let limit = if r.limit == 0 {
            usize::MAX
        } else {
            r.limit as usize
        };
        // Subscribe first so nothing between the backlog read and the follow is lost.
        let mut live = self.s.store.subscribe_events();
        let backlog = self
            .s
            .store
            .events(r.since_unix_ms, limit)
            .map_err(Status::from)?;
        let (tx, rx) = mpsc::channel(256);
        let follow = r.follow;
        tokio::spawn(async move {
            let mut last = 0;
            for e in &backlog {
                last = e.id;
                if tx.send(Ok(event_proto(e))).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            loop {
                match live.recv().await {
                    Ok(e) if e.id > last => {
                        last = e.id;
                        if tx.send(Ok(event_proto(&e))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "audit follower lagged");
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The event recording an approver's decision.
fn decision_event(kind: &str, approver: String, a: &crate::model::Approval) -> Event {
    Event::new(kind)
        .actor(approver)
        .workload(a.workload.clone())
        .credential(a.credential.clone())
        .host(a.host.clone())
        .approval(a.id.clone())
}

impl AdminApi {
    /// Store a decided approval and answer with it.
    async fn save_approval(
        &self,
        a: crate::model::Approval,
        ev: Event,
    ) -> Result<Response<v1::ApprovalInfo>, Status> {
        self.s
            .store
            .put_approval(a.clone(), ev)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(self.approval_proto(a)))
    }

    /// Store a workload, rebuild the policy links, answer with it.
    async fn save_workload(
        &self,
        w: Workload,
        ev: Event,
    ) -> Result<Response<v1::Workload>, Status> {
        self.s
            .store
            .put_workload(w.clone(), ev)
            .await
            .map_err(Status::from)?;
        self.s.relink();
        Ok(Response::new(self.spiffe(workload_proto(&w))))
    }

    fn approval_proto(&self, a: crate::model::Approval) -> v1::ApprovalInfo {
        let owner = self
            .s
            .store
            .workload(&a.workload)
            .ok()
            .flatten()
            .map(|w| w.owner)
            .unwrap_or_default();
        wire::approval_info(a, owner)
    }

    /// A pending, unexpired approval that `approver` may decide.
    fn pending_approval(&self, id: &str, approver: &str) -> Result<crate::model::Approval, Status> {
        let a = self
            .s
            .store
            .approval(id)
            .map_err(Status::from)?
            .ok_or_else(|| {
                not_found(format!(
                    "no approval {id:?}; `leashctl approval list` shows the pending ones"
                ))
            })?;
        let now = self.s.clock.now();
        if a.state != "pending" {
            return Err(invalid(format!("approval {id} is already {}", a.state)));
        }
        if now - a.requested_at >= self.s.config.approval_timeout.as_secs() as i64 {
            return Err(invalid(format!(
                "approval {id} expired; the requester must ask again"
            )));
        }
        let owner = self
            .s
            .store
            .workload(&a.workload)
            .map_err(Status::from)?
            .map(|w| w.owner);
        if owner.as_deref() == Some(approver) {
            return Err(Reason::Denied.status(format!(
                "{approver} owns workload {} and may not approve its requests; another approver must",
                a.workload
            )));
        }
        if !a.on_behalf_of.is_empty() && a.on_behalf_of == approver {
            return Err(Reason::Denied.status(format!(
                "the request acts on behalf of {approver}, who may not approve it; another approver must"
            )));
        }
        Ok(a)
    }

    fn spiffe(&self, w: v1::Workload) -> v1::Workload {
        wire::with_spiffe_id(w, &self.s.config.trust_domain)
    }
}
