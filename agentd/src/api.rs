//! The Leash API on the workload socket over gRPC: Fetch, WhoAmI, Status (answered by
//! `calls.rs`, which the HTTP/1.1 API shares), Introspect and Start/EndTask.
//!
//! Every request is attested from the connection's pinned peer (reusing the
//! connection's last attestation only after re-checking what it rested on; see
//! `Attestor::attest_quick`); nothing the caller sends is trusted for identity. Status
//! answers anyone, but a caller that cannot be attested (another pid or mount namespace,
//! a process gone) gets the health fields only.
//!
//! This is the workload socket's gRPC boundary: library errors (`calls::CallError`,
//! `tasks::TaskError`, `leash_proto::names::NameError`) become `Status` here and only
//! here, each with its reason (and so the CLI's exit code).

use std::sync::Arc;

use leash_proto::names;
use leash_proto::reason::Reason;
use leash_proto::v1;
use leash_proto::v1::agent_server::Agent as AgentService;
use tonic::{Request, Response, Status};

use crate::attest::Attestation;
use crate::calls::{CallError, Calls};
use crate::server::Conn;
use crate::tasks::{self, TaskError};

impl From<TaskError> for Status {
    fn from(e: TaskError) -> Status {
        e.reason().status(e.to_string())
    }
}

impl From<CallError> for Status {
    fn from(e: CallError) -> Status {
        match e {
            CallError::Refused { reason, message } => reason.status(message),
            // No reason attached: callers map RESOURCE_EXHAUSTED themselves.
            e @ CallError::TooManyRequests(_) => Status::resource_exhausted(e.to_string()),
            CallError::ControlPlane(s) => s,
        }
    }
}

/// The service.
#[derive(Debug, Clone)]
pub struct Api {
    calls: Arc<Calls>,
}

impl Api {
    /// Serve `calls` (shared with the HTTP API, so both take from one request allowance).
    pub fn new(calls: Arc<Calls>) -> Api {
        Api { calls }
    }

    fn attest<T>(&self, req: &Request<T>) -> Result<Arc<Attestation>, Status> {
        Ok(self.calls.attest(req.extensions().get::<Conn>())?)
    }
}

#[tonic::async_trait]
impl AgentService for Api {
    async fn fetch(
        &self,
        req: Request<v1::FetchRequest>,
    ) -> Result<Response<v1::FetchResponse>, Status> {
        let conn = req.extensions().get::<Conn>().cloned();
        let r = self.calls.fetch(conn.as_ref(), req.into_inner()).await?;
        Ok(Response::new(r))
    }

    async fn who_am_i(
        &self,
        req: Request<v1::WhoAmIRequest>,
    ) -> Result<Response<v1::WhoAmIResponse>, Status> {
        Ok(Response::new(
            self.calls.who_am_i(req.extensions().get::<Conn>())?,
        ))
    }

    async fn status(
        &self,
        req: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        Ok(Response::new(
            self.calls.status(req.extensions().get::<Conn>())?,
        ))
    }

    async fn introspect(
        &self,
        req: Request<v1::IntrospectRequest>,
    ) -> Result<Response<v1::IntrospectResponse>, Status> {
        self.attest(&req)?;
        let mut client = self.calls.agent().client().ok_or_else(|| {
            Reason::Unavailable.status("the control plane is unreachable; introspection needs it")
        })?;
        client.introspect(req.into_inner()).await
    }

    async fn start_task(
        &self,
        req: Request<v1::StartTaskRequest>,
    ) -> Result<Response<v1::StartTaskResponse>, Status> {
        let a = self.attest(&req)?;
        self.calls.serving()?;
        names::check_name("the task name (--name, --task-name)", &req.get_ref().name)
            .map_err(|e| Reason::Invalid.status(e.to_string()))?;
        Ok(Response::new(
            tasks::start(self.calls.agent(), &a, req.into_inner()).await?,
        ))
    }

    async fn end_task(
        &self,
        req: Request<v1::EndTaskRequest>,
    ) -> Result<Response<v1::EndTaskResponse>, Status> {
        let a = self.attest(&req)?;
        Ok(Response::new(
            tasks::end_by_handle(self.calls.agent(), &a, req.into_inner()).await?,
        ))
    }
}
