//! The agent-facing gRPC service: Enroll, Renew, Sync, Issue, Introspect, StartTask,
//! CompleteTask.
//!
//! Every method but Enroll starts by mapping the caller's client certificate to its
//! host record (by serial, never by name) and checking that record; an evicted or
//! unknown host is refused. Issue is decided in `issuance`; the Sync stream is run by
//! `sync`.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use leash_proto::names::{self};
use leash_proto::reason::Reason;
use leash_proto::spans::{record, Field};
use leash_proto::v1;
use leash_proto::v1::control_plane_server::ControlPlane;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Response, Status, Streaming};

use crate::model::Host;
use crate::state::Shared;

mod sync;

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
            .ok_or_else(|| {
                // An admin certificate is for the admin service only.
                let admin = x509_parser::parse_x509_certificate(&certs[0])
                    .ok()
                    .and_then(|(_, c)| c.subject_alternative_name().ok().flatten().map(|s| {
                        s.value.general_names.iter().any(|n| {
                            matches!(n, x509_parser::extensions::GeneralName::URI(u) if u.contains("/leash/admin/"))
                        })
                    }))
                    .unwrap_or(false);
                Reason::Denied.status(if admin {
                    "this is an admin certificate; the agent service takes host certificates only"
                } else {
                    "this certificate belongs to no enrolled host"
                })
            })?;
        record(Field::Host, &host.name);
        if host.evicted {
            return Err(Reason::Denied.status(format!(
                "host {:?} was evicted; re-enroll with a new join token and a new name",
                host.name
            )));
        }
        Ok(host)
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
            .map_err(Status::from)
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
            ca_certificates_der: self.s.keys.bundle_ders(),
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
        // The stream outlives this call: its task keeps the request's span (and host).
        let span = tracing::Span::current();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let conn = s.hub.connect(&host.name, s.clock.now_ms(), last_seq);
                if let Err(e) = s.store.touch_host(&host.name, s.clock.now()).await {
                    tracing::warn!(error = %e, "could not record host last-seen");
                }
                tracing::info!(host = %host.name, last_seq, "agent connected");
                if let Err(e) = sync::run_sync(&s, &host, conn, last_seq, &mut inbound, &tx).await {
                    tracing::info!(host = %host.name, reason = %e, "sync stream ended");
                }
                s.hub.disconnect(&host.name, conn);
                if let Err(e) = s.store.touch_host(&host.name, s.clock.now()).await {
                    tracing::warn!(error = %e, "could not record host last-seen");
                }
            },
            span,
        ));
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
        record(Field::Workload, &r.workload);
        record(Field::Credential, &r.credential);
        let issued = crate::issuance::issue(&self.s, host, r).await?;
        record(Field::LeaseId, &issued.lease_id);
        // One line per issuance; the request span carries who, what and the lease id.
        tracing::info!(kind = %issued.kind, expires_at = issued.expires_at_unix, "issued");
        Ok(Response::new(issued))
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
        crate::tasks::started(&self.s, &host, &r).await?;
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
        let completed = crate::tasks::complete(&self.s, &host, &r).await?;
        Ok(Response::new(v1::CompleteTaskResponse { completed }))
    }
}

/// Kept at this path for the fuzz targets.
pub use crate::enroll::narrow_labels;

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
