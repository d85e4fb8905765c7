//! The baselines of `bench fetch`, run as child processes of the release xtask binary:
//!
//! - `bench echo-server`: the generated `Agent` service over a Unix socket, whose Fetch
//!   returns a fixed response of the same size as the agent's (no attestation, no
//!   cache, no policy), served by tonic configured as agentd configures it. The floor
//!   for a Fetch over a Unix socket with this stack.
//!   With `--spiffe-x509 FILE --spiffe-jwt FILE` it also serves the SPIFFE Workload API,
//!   answering fixed responses (an X.509-SVID stream's first message, then nothing; a
//!   JWT-SVID) that `bench spiffe` took from the real agent: the floor for those calls.
//! - `bench client`: the smallest useful client process: connect, one Fetch, print the
//!   token. The floor for a whole `leash get` process.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use leash_proto::spiffe as pb;
use leash_proto::spiffe::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use leash_proto::v1;
use leash_proto::v1::agent_client::AgentClient;
use leash_proto::v1::agent_server::{Agent, AgentServer};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// `xtask bench client SOCKET`
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Unix socket of an agent or of the echo server.
    socket: PathBuf,
    /// Credential to fetch.
    #[arg(long, default_value = "bench-jwt")]
    credential: String,
}

/// One Fetch from a fresh process, as `leash get` makes it (current-thread runtime).
pub fn client(a: ClientArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ch = leash_proto::uds::connect(&a.socket).await?;
        let mut c = AgentClient::new(ch).max_decoding_message_size(leash_proto::MAX_MESSAGE_BYTES);
        let r = c
            .fetch(v1::FetchRequest {
                credential: a.credential,
                ..Default::default()
            })
            .await?
            .into_inner();
        println!("{}", r.token);
        anyhow::Ok(())
    })
}

/// `xtask bench echo-server --socket S --token-bytes N`
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Where to listen.
    #[arg(long)]
    socket: PathBuf,
    /// Length of the token in each response (the agent's token length).
    #[arg(long, default_value_t = 600)]
    token_bytes: usize,
    /// Exit when stdin closes: the bench holds our stdin, so we never outlive it.
    #[arg(long)]
    exit_with_stdin: bool,
    /// An encoded `X509SVIDResponse`: serve the SPIFFE Workload API too, sending it as
    /// every FetchX509SVID stream's first message.
    #[arg(long, requires = "spiffe_jwt")]
    spiffe_x509: Option<PathBuf>,
    /// An encoded `JWTSVIDResponse`, the answer to every FetchJWTSVID.
    #[arg(long, requires = "spiffe_x509")]
    spiffe_jwt: Option<PathBuf>,
}

/// The SPIFFE Workload API answering fixed responses (no header check, no attestation).
#[derive(Debug)]
struct EchoSpiffe {
    x509: pb::X509svidResponse,
    jwt: pb::JwtsvidResponse,
}

type Never<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for EchoSpiffe {
    type FetchX509SVIDStream = Never<pb::X509svidResponse>;
    type FetchX509BundlesStream = Never<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = Never<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        _req: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        use futures::StreamExt;
        // The first message, then the stream stays open, as an agent's does.
        let first = futures::stream::once(std::future::ready(Ok(self.x509.clone())));
        Ok(Response::new(Box::pin(
            first.chain(futures::stream::pending()),
        )))
    }

    async fn fetch_x509_bundles(
        &self,
        _req: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn fetch_jwtsvid(
        &self,
        _req: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        Ok(Response::new(self.jwt.clone()))
    }

    async fn fetch_jwt_bundles(
        &self,
        _req: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn validate_jwtsvid(
        &self,
        _req: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
}

#[derive(Debug)]
struct Echo {
    resp: v1::FetchResponse,
}

#[tonic::async_trait]
impl Agent for Echo {
    async fn fetch(
        &self,
        _req: Request<v1::FetchRequest>,
    ) -> Result<Response<v1::FetchResponse>, Status> {
        Ok(Response::new(self.resp.clone()))
    }

    async fn who_am_i(
        &self,
        _req: Request<v1::WhoAmIRequest>,
    ) -> Result<Response<v1::WhoAmIResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn status(
        &self,
        _req: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn introspect(
        &self,
        _req: Request<v1::IntrospectRequest>,
    ) -> Result<Response<v1::IntrospectResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn start_task(
        &self,
        _req: Request<v1::StartTaskRequest>,
    ) -> Result<Response<v1::StartTaskResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn end_task(
        &self,
        _req: Request<v1::EndTaskRequest>,
    ) -> Result<Response<v1::EndTaskResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }
}

/// Serve the echo service until killed (or until stdin closes, with `--exit-with-stdin`).
pub fn server(a: ServerArgs) -> anyhow::Result<()> {
    if a.exit_with_stdin {
        std::thread::spawn(|| {
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            std::process::exit(0);
        });
    }
    let resp = v1::FetchResponse {
        token: "e".repeat(a.token_bytes),
        expires_at_unix: 4_000_000_000,
        lease_id: "l-0123456789".into(),
        workload: "bench/fetch".into(),
        cached: true,
        action: "read".into(),
        audience: "https://bench.leash.example".into(),
        kind: "jwt".into(),
        version: 0,
        format: String::new(),
    };
    // The same runtime flavour and server settings as leash-agentd.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let _ = std::fs::remove_file(&a.socket);
        let listener = UnixListener::bind(&a.socket)
            .with_context(|| format!("cannot listen on {}", a.socket.display()))?;
        eprintln!("ready on {}", a.socket.display());
        let svc = AgentServer::new(Echo { resp })
            .max_decoding_message_size(leash_proto::MAX_WORKLOAD_REQUEST_BYTES)
            .max_encoding_message_size(leash_proto::MAX_MESSAGE_BYTES);
        let spiffe = match (&a.spiffe_x509, &a.spiffe_jwt) {
            (Some(x), Some(j)) => {
                use prost::Message;
                let read = |p: &PathBuf| {
                    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
                };
                Some(
                    SpiffeWorkloadApiServer::new(EchoSpiffe {
                        x509: pb::X509svidResponse::decode(read(x)?.as_slice())?,
                        jwt: pb::JwtsvidResponse::decode(read(j)?.as_slice())?,
                    })
                    .max_decoding_message_size(leash_proto::MAX_WORKLOAD_REQUEST_BYTES)
                    .max_encoding_message_size(leash_proto::MAX_MESSAGE_BYTES),
                )
            }
            _ => None,
        };
        tonic::transport::Server::builder()
            .concurrency_limit_per_connection(64)
            .add_service(svc)
            .add_optional_service(spiffe)
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await?;
        anyhow::Ok(())
    })
}
