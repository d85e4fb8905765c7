//! `cargo xtask bench spiffe`: the SPIFFE Workload API on a real agent, from an
//! in-process client written elsewhere (the Rust `spiffe` crate), against Leash's own
//! `Fetch` in the same run.
//!
//! - Cache hits: `Fetch` (Leash's API), `FetchJWTSVID`, and `FetchX509SVID` up to its
//!   first message (the SVID is cached after the first call), each on one kept
//!   connection, in alternating rounds so drift on the machine falls on all alike.
//! - Revocation on open streams: `--streams` open X.509 streams of one workload, with
//!   `--agents` simulated agents also holding Sync streams on the control plane (so the
//!   push fans out to all of them); revoke the workload and time, per stream, from the
//!   Revoke call to the message without the revoked SVID (the re-issued one). The
//!   simulated agents run on a runtime of their own, as other hosts would.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use leash_proto::v1::agent_client::AgentClient;
use leash_proto::v1::control_plane_client::ControlPlaneClient;
use spiffe::WorkloadApiClient;
use tokio::sync::{mpsc, Semaphore};

use super::procs::{Agent, ControlPlane, Proc};
use super::stats::{dur, header, met, ratio, thousands, Samples, Table};
use super::{sim, Ctx};

const WORKLOAD: &str = "bench/spiffe";
/// The Leash credential `Fetch` is measured with.
const FETCH_CRED: &str = "bench-jwt";
const JWT_CRED: &str = "spiffe-jwt";
const X509_CRED: &str = "spiffe-x509";
const AUDIENCE: &str = "https://bench.leash.example";
/// Streams one connection carries (the agent serves 64 requests per connection).
const STREAMS_PER_CONN: usize = 50;
/// Longest a revocation may take to reach every stream before the bench gives up.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

/// `cargo xtask bench spiffe`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cache-hit calls of each kind, spread over --rounds alternating rounds.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Alternating rounds of the cache-hit measurements.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Open FetchX509SVID streams during the revocation phase.
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// Revocations measured (after 2 unmeasured ones).
    #[arg(long, default_value_t = 30)]
    revocations: usize,
    /// Simulated agents also connected to the control plane (0: none).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fetch,
    JwtSvid,
    X509First,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Fetch => "Leash `Fetch` (cache hit)",
            Kind::JwtSvid => "`FetchJWTSVID` (cache hit), `spiffe` crate",
            Kind::X509First => "`FetchX509SVID` first message (cached SVID), `spiffe` crate",
        }
    }
}

struct Clients {
    leash: AgentClient<tonic::transport::Channel>,
    spiffe: WorkloadApiClient,
}

async fn one(c: &mut Clients, k: Kind) -> anyhow::Result<()> {
    match k {
        Kind::Fetch => {
            let r = c
                .leash
                .fetch(v1::FetchRequest {
                    credential: FETCH_CRED.into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            anyhow::ensure!(!r.token.is_empty(), "Fetch returned no token");
        }
        Kind::JwtSvid => {
            c.spiffe.fetch_jwt_svid(&[AUDIENCE], None).await?;
        }
        Kind::X509First => {
            c.spiffe.fetch_x509_svid().await?;
        }
    }
    Ok(())
}

/// The agent's answers as sent: an X.509-SVID stream's first message and a JWT-SVID
/// (encoded, into `x509` and `jwt`), for the echo server to give; returns the length of
/// the Fetch token.
async fn raw_responses(socket: &Path, x509: &Path, jwt: &Path) -> anyhow::Result<usize> {
    use leash_proto::spiffe as pb;
    use leash_proto::spiffe::spiffe_workload_api_client::SpiffeWorkloadApiClient;
    use prost::Message;
    let ch = leash_proto::uds::connect(socket).await?;
    let mut raw = SpiffeWorkloadApiClient::new(ch.clone());
    fn header<T>(mut r: tonic::Request<T>) -> tonic::Request<T> {
        r.metadata_mut().insert(
            "workload.spiffe.io",
            tonic::metadata::MetadataValue::from_static("true"),
        );
        r
    }
    let first = raw
        .fetch_x509svid(header(tonic::Request::new(pb::X509svidRequest::default())))
        .await?
        .into_inner()
        .message()
        .await?
        .context("the X.509-SVID stream sent nothing")?;
    std::fs::write(x509, first.encode_to_vec())?;
    let j = raw
        .fetch_jwtsvid(header(tonic::Request::new(pb::JwtsvidRequest {
            audience: vec![AUDIENCE.into()],
            spiffe_id: String::new(),
        })))
        .await?
        .into_inner();
    std::fs::write(jwt, j.encode_to_vec())?;
    let token = AgentClient::new(ch)
        .fetch(v1::FetchRequest {
            credential: FETCH_CRED.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .token;
    Ok(token.len())
}

/// `n` simulated agents enrolled and holding Sync streams (kept alive in the
/// background, acknowledging what the control plane sends).
async fn simulated_agents(cp: &ControlPlane, n: usize) -> anyhow::Result<()> {
    if n == 0 {
        return Ok(());
    }
    let admin = AdminClient::new(leash_proto::uds::connect(&cp.admin_socket).await?);
    let gate = Arc::new(Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut admin = admin.clone();
        let gate = gate.clone();
        let addr = cp.addr.clone();
        tasks.spawn(async move {
            let _p = gate.acquire().await?;
            let name = format!("sim-{i:05}");
            let token = admin
                .create_join_token(v1::CreateJoinTokenRequest {
                    ttl_seconds: 3600,
                    name: name.clone(),
                    labels: Default::default(),
                })
                .await?
                .into_inner()
                .token;
            let ch = sim::enroll_channel(&addr, &token).await?;
            let cfg = sim::enroll_in_memory(ControlPlaneClient::new(ch), &token, &name).await?;
            let mut client =
                ControlPlaneClient::new(leash_agentd::tls::connect(&[addr], cfg).await?);
            let s = sim::open_sync(&mut client).await?;
            tokio::spawn(async move {
                let _keep = client;
                sim::drain(s).await;
            });
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// A message on stream `stream` carrying leaf `leaf`, received at `at`.
struct Seen {
    stream: usize,
    leaf: Vec<u8>,
    at: Instant,
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.requests > 0 && a.rounds > 0 && a.streams > 0 && a.revocations > 0,
        "counts must be positive"
    );
    let dir = tempfile::Builder::new()
        .prefix("leash-bench-spiffe-")
        .tempdir()?;
    let cp = ControlPlane::start_with(ctx, dir.path(), None, "5s")?;
    cp.add_credential(FETCH_CRED)?;
    cp.leashctl(&[
        "credential",
        "add",
        JWT_CRED,
        "--kind",
        "jwt",
        "--audience",
        AUDIENCE,
        "--ttl",
        "1h",
        "--max-ttl",
        "24h",
    ])?;
    cp.leashctl(&[
        "credential",
        "add",
        X509_CRED,
        "--kind",
        "x509",
        "--ttl",
        "1h",
        "--max-ttl",
        "24h",
    ])?;
    let uid = nix::unistd::getuid().as_raw();
    cp.add_workload_allowing(WORKLOAD, uid, &[FETCH_CRED, JWT_CRED, X509_CRED])?;
    let agent = Agent::start(ctx, &cp, dir.path(), "bench-spiffe-host")?;
    let endpoint = format!("unix://{}", agent.socket.display());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    // 1: cache hits, alternating rounds.
    eprintln!(
        "cache hits: {} calls of each kind in {} alternating rounds",
        a.requests, a.rounds
    );
    let kinds = [Kind::Fetch, Kind::JwtSvid, Kind::X509First];
    // The floor: the echo server (`bench echo-server`, tonic set up as the agent sets it
    // up, a child process like the agent) answering the responses the agent gave.
    let (x509_file, jwt_file) = (dir.path().join("x509.pb"), dir.path().join("jwt.pb"));
    let token_len = rt.block_on(raw_responses(&agent.socket, &x509_file, &jwt_file))?;
    let echo_socket = dir.path().join("echo.sock");
    let mut echo_cmd = Command::new(std::env::current_exe()?);
    echo_cmd
        .args(["bench", "echo-server", "--exit-with-stdin", "--token-bytes"])
        .arg(token_len.to_string())
        .arg("--socket")
        .arg(&echo_socket)
        .arg("--spiffe-x509")
        .arg(&x509_file)
        .arg("--spiffe-jwt")
        .arg(&jwt_file)
        .stdin(Stdio::piped());
    let (echo, _) = Proc::start("echo-server", echo_cmd, "ready on", Duration::from_secs(10))?;
    let targets = [&agent.socket, &echo_socket];
    let hits = rt.block_on(async {
        let mut clients = Vec::new();
        for socket in targets {
            let endpoint = format!("unix://{}", socket.display());
            for _ in kinds {
                let mut c = Clients {
                    leash: AgentClient::new(leash_proto::uds::connect(socket).await?),
                    spiffe: WorkloadApiClient::connect_to(&endpoint).await?,
                };
                for k in kinds {
                    for _ in 0..50 {
                        one(&mut c, k).await.with_context(|| k.name())?;
                    }
                }
                clients.push(c);
            }
        }
        // Index: target * kinds + kind.
        let mut lat = vec![Samples::with_capacity(a.requests); clients.len()];
        let rounds = a.rounds.clamp(1, a.requests);
        for r in 0..rounds {
            let n = a.requests / rounds + usize::from(r < a.requests % rounds);
            for (i, c) in clients.iter_mut().enumerate() {
                let k = kinds[i % kinds.len()];
                for _ in 0..n {
                    let t = Instant::now();
                    one(c, k).await?;
                    lat[i].push(t.elapsed());
                }
            }
        }
        // What the client alone spends on the first message: the `spiffe` crate parsing
        // the SVID it was sent (certificate chain and key), no I/O, as many times.
        let svid = clients[2].spiffe.fetch_x509_svid().await?;
        let chain: Vec<u8> = svid
            .cert_chain()
            .iter()
            .flat_map(|c| c.as_bytes().to_vec())
            .collect();
        let key = svid.private_key().as_bytes().to_vec();
        let mut parse = Samples::with_capacity(a.requests);
        for _ in 0..a.requests {
            let t = Instant::now();
            let parsed = spiffe::X509Svid::parse_from_der(&chain, &key)?;
            parse.push(t.elapsed());
            std::hint::black_box(parsed);
        }
        anyhow::Ok((lat, parse))
    })?;
    drop(echo);
    let (hits, parse) = hits;
    let floor = hits[kinds.len()..].to_vec();

    // 2: revocation with open streams.
    if a.agents > 0 {
        eprintln!("connecting {} simulated agents", a.agents);
    }
    // The simulated agents stand for other hosts: they get their own runtime, so the
    // streams' messages are not timed behind a thousand hosts' wipe acknowledgments in
    // one task queue (the OS shares the cores between the two runtimes' threads).
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("sim-agents")
        .enable_all()
        .build()?;
    sim_rt.block_on(simulated_agents(&cp, a.agents))?;
    eprintln!(
        "revocation: {} open X.509 streams, {} revocations",
        a.streams, a.revocations
    );
    let (updates, rpc) = rt.block_on(async {
        let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
        let mut clients = Vec::new();
        for _ in 0..a.streams.div_ceil(STREAMS_PER_CONN) {
            clients.push(WorkloadApiClient::connect_to(&endpoint).await?);
        }
        for i in 0..a.streams {
            let mut s = clients[i / STREAMS_PER_CONN].stream_x509_svids().await?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(Ok(svid)) = s.next().await {
                    let seen = Seen {
                        stream: i,
                        leaf: svid.leaf().as_bytes().to_vec(),
                        at: Instant::now(),
                    };
                    if tx.send(seen).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut last: Vec<Option<Vec<u8>>> = vec![None; a.streams];
        let mut opened = 0;
        while opened < a.streams {
            let s = tokio::time::timeout(ROUND_TIMEOUT, rx.recv())
                .await
                .context("waiting for the streams' first messages")?
                .context("every stream ended")?;
            if last[s.stream].replace(s.leaf).is_none() {
                opened += 1;
            }
        }
        let mut admin = AdminClient::new(leash_proto::uds::connect(&cp.admin_socket).await?);
        let mut updates = Samples::with_capacity(a.streams * a.revocations);
        let mut rpc = Samples::with_capacity(a.revocations);
        for round in 0..a.revocations + 2 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let t0 = Instant::now();
            admin
                .revoke(v1::RevokeRequest {
                    target: Some(v1::RevocationTargetSpec {
                        target: Some(v1::revocation_target_spec::Target::Workload(
                            WORKLOAD.into(),
                        )),
                    }),
                    reason: format!("bench round {round}"),
                })
                .await
                .context("Revoke")?;
            let rpc_t = t0.elapsed();
            let mut changed = vec![false; a.streams];
            let mut n = 0;
            let deadline = tokio::time::Instant::now() + ROUND_TIMEOUT;
            while n < a.streams {
                let s = tokio::time::timeout_at(deadline, rx.recv())
                    .await
                    .with_context(|| {
                        format!(
                            "revocation {round} reached only {n}/{} streams within {ROUND_TIMEOUT:?}",
                            a.streams
                        )
                    })?
                    .context("every stream ended")?;
                if last[s.stream].as_deref() == Some(s.leaf.as_slice()) {
                    continue;
                }
                last[s.stream] = Some(s.leaf);
                if !changed[s.stream] {
                    changed[s.stream] = true;
                    n += 1;
                    if round >= 2 {
                        updates.push(s.at.duration_since(t0));
                    }
                }
            }
            if round >= 2 {
                rpc.push(rpc_t);
            }
        }
        anyhow::Ok((updates, rpc))
    })?;

    header(
        "bench spiffe: the SPIFFE Workload API against Leash's Fetch, and revocation on open X.509 streams",
        &ctx.command,
        &format!(
            "--requests {} --rounds {} --streams {} --revocations {} --agents {}",
            a.requests, a.rounds, a.streams, a.revocations, a.agents
        ),
    );
    println!(
        "One control plane and one real agent; the client is the Rust `spiffe` crate (0.19) in this process, \
         one kept connection per kind of call, the kinds alternating in {} rounds.",
        a.rounds
    );
    println!();
    let fetch_p50 = hits[0].p50().as_secs_f64();
    let mut t = Table::new(&["call", "calls", "p50", "p99", "vs Fetch p50"]);
    for (k, s) in kinds.iter().zip(&hits) {
        t.row(vec![
            k.name().into(),
            thousands(s.len() as u64),
            dur(s.p50()),
            dur(s.p99()),
            ratio(s.p50().as_secs_f64(), fetch_p50),
        ]);
    }
    t.row(vec![
        "of which: the `spiffe` crate parsing the first message (in process, no I/O)".into(),
        thousands(parse.len() as u64),
        dur(parse.p50()),
        dur(parse.p99()),
        ratio(parse.p50().as_secs_f64(), fetch_p50),
    ]);
    t.print();
    println!();
    println!(
        "The floor, in the same rounds: the echo server (`bench echo-server`: tonic set up as the agent sets it \
         up, no attestation, cache or policy) answering each call with the response the agent gave, to the same \
         clients. Its ratios are what the transport and the client cost whatever the agent does."
    );
    println!();
    let echo_fetch = floor[0].p50().as_secs_f64();
    let mut t = Table::new(&[
        "call, echo server",
        "calls",
        "p50",
        "p99",
        "vs echo Fetch p50",
        "agent / echo p50",
    ]);
    for ((k, s), agent_s) in kinds.iter().zip(&floor).zip(&hits) {
        t.row(vec![
            k.name().into(),
            thousands(s.len() as u64),
            dur(s.p50()),
            dur(s.p99()),
            ratio(s.p50().as_secs_f64(), echo_fetch),
            ratio(agent_s.p50().as_secs_f64(), s.p50().as_secs_f64()),
        ]);
    }
    t.print();
    println!();
    println!(
        "Revocation: {} open `FetchX509SVID` streams of one workload on the real agent{}; `Revoke {{workload}}` \
         on the admin socket, then the time until each stream delivered its message without the revoked SVID \
         (the re-issued one). {} revocations measured after 2 unmeasured.",
        a.streams,
        if a.agents > 0 {
            format!(
                ", {} simulated agents holding Sync streams on the same control plane",
                a.agents
            )
        } else {
            String::new()
        },
        a.revocations
    );
    println!();
    let mut t = Table::new(&["measured", "samples", "p50", "p99", "max"]);
    t.row(vec![
        "Revoke RPC (admin socket)".into(),
        thousands(rpc.len() as u64),
        dur(rpc.p50()),
        dur(rpc.p99()),
        dur(rpc.max()),
    ]);
    t.row(vec![
        "Revoke → stream update without the revoked SVID".into(),
        thousands(updates.len() as u64),
        dur(updates.p50()),
        dur(updates.p99()),
        dur(updates.max()),
    ]);
    t.print();
    println!();
    let rj = hits[1].p50().as_secs_f64() / fetch_p50;
    let rx = hits[2].p50().as_secs_f64() / fetch_p50;
    let mut t = Table::new(&["check", "measured", "target", "met"]);
    t.row(vec![
        "`FetchJWTSVID` cache hit p50 / `Fetch` p50".into(),
        format!("{rj:.2}×"),
        "≤ 1.1×".into(),
        met(rj <= 1.1),
    ]);
    t.row(vec![
        "`FetchX509SVID` first message p50 / `Fetch` p50".into(),
        format!("{rx:.2}×"),
        "≤ 1.1×".into(),
        met(rx <= 1.1),
    ]);
    let served = (hits[2].p50().as_secs_f64() - parse.p50().as_secs_f64()) / fetch_p50;
    t.row(vec![
        "(`FetchX509SVID` first message p50 − client parse p50) / `Fetch` p50".into(),
        format!("{served:.2}×"),
        "(diagnostic)".into(),
        "–".into(),
    ]);
    let fl = floor[2].p50().as_secs_f64() / echo_fetch;
    t.row(vec![
        "echo server: `FetchX509SVID` first message p50 / `Fetch` p50 (the floor of the ratio above)".into(),
        format!("{fl:.2}×"),
        "(diagnostic)".into(),
        "–".into(),
    ]);
    t.row(vec![
        "Revoke → stream update, p99".into(),
        dur(updates.p99()),
        "≤ 100 ms".into(),
        met(updates.p99() <= Duration::from_millis(100)),
    ]);
    t.print();
    sim_rt.shutdown_background();
    drop(agent);
    drop(cp);
    Ok(())
}
