//! The SPIFFE Workload API (`SpiffeWorkloadAPI`, proto/proto/spiffe/workload.proto) on
//! the workload socket, beside `leash.v1.Agent`: X.509-SVIDs, JWT-SVIDs and trust
//! bundles for SPIFFE client libraries (`SPIFFE_ENDPOINT_SOCKET=unix://<socket>`).
//!
//! Every call checks the security header and attests the caller as `Fetch` does
//! (`caller`); SVIDs come through the agent's one fetch path (`Calls::obtain`), so
//! policy, leases, tasks, revocation, wipe and usage reports apply to them as to any
//! credential. `jwt` holds the JWT-SVID calls, `x509` the X.509-SVID stream, `bundle`
//! the bundle streams, `error` the gRPC codes. This file is the gRPC boundary: errors
//! become statuses here.

pub mod bundle;
pub mod caller;
pub mod error;
pub mod jwt;
pub mod x509;

use std::sync::Arc;

use leash_proto::spiffe as pb;
use leash_proto::spiffe::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::calls::Calls;
use crate::server::Conn;

use caller::Caller;
use error::SpiffeError;

/// Messages a stream may have queued for a slow client before it waits.
const STREAM_BUFFER: usize = 4;

/// The service.
#[derive(Debug, Clone)]
pub struct Spiffe {
    calls: Arc<Calls>,
}

/// The service as the gRPC router takes it, with the socket's message limits.
pub fn server(calls: Arc<Calls>) -> SpiffeWorkloadApiServer<Spiffe> {
    SpiffeWorkloadApiServer::new(Spiffe { calls })
        .max_decoding_message_size(leash_proto::MAX_WORKLOAD_REQUEST_BYTES)
        .max_encoding_message_size(leash_proto::MAX_MESSAGE_BYTES)
}

impl Spiffe {
    fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        Ok(caller::attest(
            &self.calls,
            req.metadata(),
            req.extensions().get::<Conn>(),
        )?)
    }
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for Spiffe {
    type FetchX509SVIDStream = x509::Updates;
    type FetchX509BundlesStream = Stream<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let caller = self.caller(&req)?;
        let updates = x509::open(self.calls.clone(), caller).await?;
        Ok(Response::new(updates))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let caller = self.caller(&req)?;
        caller.workloads(&self.calls)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(bundle::x509_stream(self.calls.agent().clone(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = jwt::fetch(&self.calls, &caller, req.into_inner()).await?;
        Ok(Response::new(r))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let caller = self.caller(&req)?;
        caller.workloads(&self.calls)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(bundle::jwt_stream(self.calls.agent().clone(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        let caller = self.caller(&req)?;
        caller.workloads(&self.calls)?;
        let agent = self.calls.agent();
        let b = agent
            .bundle()
            .borrow()
            .clone()
            .filter(|b| !b.jwks_json.is_empty())
            .ok_or(SpiffeError::NoBundle)?;
        let r = req.into_inner();
        Ok(Response::new(jwt::validate(
            &b.jwks_json,
            &r.audience,
            &r.svid,
            agent.clock.now(),
        )?))
    }
}
