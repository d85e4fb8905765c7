//! `cargo xtask bench fetch`: the agent's Fetch path against a bare tonic echo service
//! on a Unix socket, whole `leash get` processes against a minimal client process, cold
//! issuance through the agent, and agentd's memory with 1,000 cached credentials.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use leash_proto::v1;
use leash_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

use super::procs::{Agent, ControlPlane, Proc};
use super::stats::{dur, header, met, rate, ratio, thousands, Samples, Table};
use super::Ctx;

const WORKLOAD: &str = "bench/fetch";
const CREDENTIAL: &str = "bench-jwt";

/// `cargo xtask bench fetch`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cache-hit Fetch calls measured on one kept connection (concurrency 1).
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Concurrent clients (one connection each) in the concurrent run.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Calls per client in the concurrent run.
    #[arg(long, default_value_t = 500)]
    per_client: usize,
    /// Whole-process runs of each of `leash get` and the minimal client.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Cold (`--fresh`) Fetch calls through the agent.
    #[arg(long, default_value_t = 300)]
    cold: usize,
    /// Distinct credentials cached before reading agentd's memory.
    #[arg(long, default_value_t = 1000)]
    cached: usize,
    /// The kept-connection measurements alternate between agent and echo in this many
    /// rounds (each round a share of --requests / --per-client).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// A directory holding `leash-control-plane`, `leashctl`, `leash-agentd` and `leash`
    /// from another build (for example an older commit built with
    /// `cargo build --release`). Both builds then run side by side and their cache-hit and
    /// cold Fetch are measured in alternating rounds; nothing else is measured.
    #[arg(long, value_name = "DIR")]
    baseline: Option<PathBuf>,
    /// `secret`: a brokered secret's cache-hit Fetch and `leash get` against the JWT's, in
    /// the same run (alternating rounds); nothing else is measured. `jwt` (default): the
    /// full bench.
    #[arg(long, default_value = "jwt", value_parser = ["jwt", "secret"])]
    kind: String,
}

async fn client(socket: &Path) -> anyhow::Result<AgentClient<Channel>> {
    let ch = leash_proto::uds::connect(socket).await?;
    Ok(AgentClient::new(ch).max_decoding_message_size(leash_proto::MAX_MESSAGE_BYTES))
}

fn fetch_req() -> v1::FetchRequest {
    v1::FetchRequest {
        credential: CREDENTIAL.into(),
        ..Default::default()
    }
}

/// What a latency run calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    /// Fetch of the bench credential (a cache hit once warm).
    Fetch,
    /// Fetch of the named credential (a cache hit once warm).
    FetchOf(&'static str),
    /// Status: the agent's server stack without attestation.
    Status,
    /// WhoAmI: attestation and workload matching, no cache.
    WhoAmI,
}

/// Kept connections, warmed up, that make one kind of call.
pub(super) struct Load {
    conns: Vec<AgentClient<Channel>>,
    call: Call,
    /// Everything measured so far.
    pub(super) lat: Samples,
    pub(super) uncached: usize,
    pub(super) elapsed: Duration,
}

impl Load {
    /// `clients` connections to `socket`, each warmed with 50 calls.
    pub(super) async fn prepare(socket: &Path, call: Call, clients: usize) -> anyhow::Result<Load> {
        let mut conns = Vec::new();
        for _ in 0..clients {
            let mut c = client(socket).await?;
            for _ in 0..50 {
                one(&mut c, call).await?;
            }
            conns.push(c);
        }
        Ok(Load {
            conns,
            call,
            lat: Samples::default(),
            uncached: 0,
            elapsed: Duration::ZERO,
        })
    }

    /// `per_client` calls on every connection at once; adds to the totals. Also counts
    /// Fetch responses not served from the cache.
    async fn block(&mut self, per_client: usize) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for c in &self.conns {
            let mut c = c.clone();
            let call = self.call;
            tasks.spawn(async move {
                let mut lat = Samples::with_capacity(per_client);
                let mut uncached = 0;
                for _ in 0..per_client {
                    let t = Instant::now();
                    let cached = one(&mut c, call).await?;
                    lat.push(t.elapsed());
                    uncached += usize::from(!cached);
                }
                anyhow::Ok((lat, uncached))
            });
        }
        while let Some(r) = tasks.join_next().await {
            let (lat, u) = r??;
            self.lat.extend(lat);
            self.uncached += u;
        }
        self.elapsed += start.elapsed();
        Ok(())
    }
}

async fn one(c: &mut AgentClient<Channel>, call: Call) -> anyhow::Result<bool> {
    Ok(match call {
        Call::Fetch => c.fetch(fetch_req()).await?.into_inner().cached,
        Call::FetchOf(name) => {
            c.fetch(v1::FetchRequest {
                credential: name.into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .cached
        }
        Call::Status => {
            c.status(v1::StatusRequest {}).await?;
            true
        }
        Call::WhoAmI => {
            c.who_am_i(v1::WhoAmIRequest {}).await?;
            true
        }
    })
}

/// Measure every load in turn, `rounds` times, `per_client` calls per connection in
/// all: so drift on the shared machine (other tenants, frequency, the other phases'
/// leftovers) falls on every load alike rather than on whichever ran first.
pub(super) async fn interleaved(
    loads: &mut [Load],
    rounds: usize,
    per_client: usize,
) -> anyhow::Result<()> {
    let rounds = rounds.clamp(1, per_client.max(1));
    for r in 0..rounds {
        // Spread the calls over the rounds; the first rounds take the remainder.
        let n = per_client / rounds + usize::from(r < per_client % rounds);
        for l in loads.iter_mut() {
            l.block(n).await?;
        }
    }
    Ok(())
}

struct Micro {
    attest: Samples,
    names: Samples,
    status: Samples,
}

/// Time the agent's attestation in-process, with this process as the peer, and two of
/// its parts.
fn attest_micro(n: usize) -> anyhow::Result<Micro> {
    use std::os::fd::AsFd;
    let (a, _b) = std::os::unix::net::UnixStream::pair()?;
    let peer = leash_agentd::attest::Peer::from_stream(a.as_fd())?;
    let attestor = leash_agentd::attest::Attestor::new(Default::default())?;
    for _ in 0..100 {
        attestor.attest(&peer)?;
    }
    let mut m = Micro {
        attest: Samples::with_capacity(n),
        names: Samples::with_capacity(n),
        status: Samples::with_capacity(n),
    };
    let uid = nix::unistd::getuid();
    let groups = nix::unistd::getgroups().unwrap_or_default();
    let gid = nix::unistd::getgid();
    let status = format!("/proc/{}/status", std::process::id());
    for _ in 0..n {
        let t = Instant::now();
        attestor.attest(&peer)?;
        m.attest.push(t.elapsed());

        let t = Instant::now();
        let _ = nix::unistd::User::from_uid(uid);
        for g in std::iter::once(gid).chain(groups.iter().copied()) {
            let _ = nix::unistd::Group::from_gid(g);
        }
        m.names.push(t.elapsed());

        let t = Instant::now();
        let _ = std::fs::read_to_string(&status)?;
        m.status.push(t.elapsed());
    }
    Ok(m)
}

/// Wall time of one process, from spawn to exit.
pub(super) fn wall(cmd: &mut Command) -> anyhow::Result<Duration> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    let d = t.elapsed();
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(d)
}

fn mb(kib: u64) -> String {
    format!("{:.1} MB", kib as f64 * 1024.0 / 1e6)
}

fn size(p: &Path) -> String {
    std::fs::metadata(p)
        .map(|m| format!("{:.1} MB", m.len() as f64 / 1e6))
        .unwrap_or_else(|_| "?".into())
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.requests > 0 && a.clients > 0 && a.per_client > 0 && a.runs > 0,
        "counts must be positive"
    );
    anyhow::ensure!(
        a.cached <= 80_000,
        "--cached must leave TTLs under the credential's 24h max_ttl"
    );
    if let Some(base) = &a.baseline {
        return compare(ctx, &a, base);
    }
    if a.kind == "secret" {
        return super::fetch_secret::run(
            ctx,
            a.requests,
            a.clients,
            a.per_client,
            a.runs,
            a.rounds,
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("leash-bench-fetch-")
        .tempdir()?;
    let cp = ControlPlane::start(ctx, dir.path(), None)?;
    cp.add_credential(CREDENTIAL)?;
    let uid = nix::unistd::getuid().as_raw();
    cp.add_workload(WORKLOAD, uid, CREDENTIAL)?;
    let mut agent = Agent::start(ctx, &cp, dir.path(), "bench-fetch-host")?;
    let me = std::env::current_exe()?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let first = rt.block_on(async {
        anyhow::Ok(
            client(&agent.socket)
                .await?
                .fetch(fetch_req())
                .await?
                .into_inner(),
        )
    })?;
    anyhow::ensure!(!first.token.is_empty(), "the agent returned no token");

    let echo_socket = dir.path().join("echo.sock");
    let mut echo_cmd = Command::new(&me);
    echo_cmd
        .args(["bench", "echo-server", "--exit-with-stdin", "--token-bytes"])
        .arg(first.token.len().to_string())
        .arg("--socket")
        .arg(&echo_socket)
        .stdin(Stdio::piped());
    let (echo, _) = Proc::start("echo-server", echo_cmd, "ready on", Duration::from_secs(10))?;

    // 1 + 2: kept connections; agent and echo measured in alternating rounds.
    eprintln!(
        "cache-hit Fetch vs echo: 1 client x {} calls, in {} alternating rounds",
        a.requests, a.rounds
    );
    // Where a cache hit's time goes: the same server stack without attestation
    // (Status), and attestation without the cache (WhoAmI).
    let mut one_client = rt.block_on(async {
        let mut loads = vec![
            Load::prepare(&agent.socket, Call::Fetch, 1).await?,
            Load::prepare(&echo_socket, Call::Fetch, 1).await?,
            Load::prepare(&agent.socket, Call::Status, 1).await?,
            Load::prepare(&agent.socket, Call::WhoAmI, 1).await?,
        ];
        interleaved(&mut loads, a.rounds, a.requests).await?;
        anyhow::Ok(loads)
    })?;
    let whoami = one_client.pop().context("loads")?;
    let status = one_client.pop().context("loads")?;
    let echo1 = one_client.pop().context("loads")?;
    let hit1 = one_client.pop().context("loads")?;
    let (whoami1, status1, miss1) = (whoami.lat, status.lat, hit1.uncached);
    let (hit1, echo1) = (hit1.lat, echo1.lat);
    eprintln!(
        "cache-hit Fetch vs echo: {} clients x {} calls, in {} alternating rounds",
        a.clients, a.per_client, a.rounds
    );
    let mut many = rt.block_on(async {
        let mut loads = vec![
            Load::prepare(&agent.socket, Call::Fetch, a.clients).await?,
            Load::prepare(&echo_socket, Call::Fetch, a.clients).await?,
        ];
        interleaved(&mut loads, a.rounds, a.per_client).await?;
        anyhow::Ok(loads)
    })?;
    let echo_n = many.pop().context("loads")?;
    let hit_n = many.pop().context("loads")?;
    let (hitn, missn, hitn_t) = (hit_n.lat, hit_n.uncached, hit_n.elapsed);
    let (echon, echon_t) = (echo_n.lat, echo_n.elapsed);

    // 3: whole processes, interleaved so drift hits all three alike.
    eprintln!("whole processes: {} runs each, interleaved", a.runs);
    let leash = ctx.bin("leash");
    let leash_get = || {
        let mut c = Command::new(&leash);
        c.arg("--socket")
            .arg(&agent.socket)
            .args(["get", CREDENTIAL]);
        c
    };
    let minimal = |socket: &PathBuf| {
        let mut c = Command::new(&me);
        c.args(["bench", "client"]).arg(socket);
        c
    };
    let (mut p_leash, mut p_min_agent, mut p_min_echo) =
        (Samples::default(), Samples::default(), Samples::default());
    for i in 0..a.runs + 5 {
        let l = wall(&mut leash_get())?;
        let m = wall(&mut minimal(&agent.socket))?;
        let e = wall(&mut minimal(&echo_socket))?;
        if i >= 5 {
            p_leash.push(l);
            p_min_agent.push(m);
            p_min_echo.push(e);
        }
    }

    // Attestation's cost without any transport, in this process.
    eprintln!("attestation in-process: {} calls each", a.requests);
    let micro = attest_micro(a.requests)?;

    // 4: cold issuance through the agent.
    eprintln!("cold issuance: {} Fetch calls with fresh = true", a.cold);
    let cold = rt.block_on(async {
        let mut c = client(&agent.socket).await?;
        let fresh = v1::FetchRequest {
            fresh: true,
            ..fetch_req()
        };
        for _ in 0..20 {
            c.fetch(fresh.clone()).await?;
        }
        let mut s = Samples::with_capacity(a.cold);
        for _ in 0..a.cold {
            let t = Instant::now();
            let r = c.fetch(fresh.clone()).await?.into_inner();
            s.push(t.elapsed());
            anyhow::ensure!(!r.cached, "a fresh Fetch was served from the cache");
        }
        anyhow::Ok(s)
    })?;

    // 5: memory with `cached` distinct entries (one per requested TTL).
    eprintln!("agentd memory: caching {} distinct credentials", a.cached);
    let before = agent.proc.memory()?;
    let status = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        let per = a.cached.div_ceil(8);
        for w in 0..8 {
            let socket = agent.socket.clone();
            let range = (w * per)..((w + 1) * per).min(a.cached);
            tasks.spawn(async move {
                let mut c = client(&socket).await?;
                for i in range {
                    c.fetch(v1::FetchRequest {
                        ttl_seconds: 7200 + i as u32,
                        ..fetch_req()
                    })
                    .await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        // Let the allocator settle and the usage report go out.
        tokio::time::sleep(Duration::from_secs(1)).await;
        anyhow::Ok(
            client(&agent.socket)
                .await?
                .status(v1::StatusRequest {})
                .await?
                .into_inner(),
        )
    })?;
    let after = agent.proc.memory()?;
    agent.proc.check_alive()?;
    drop(rt);
    drop(echo);

    header(
        "bench fetch: the agent's Fetch path against baselines",
        &ctx.command,
        &format!(
            "--requests {} --clients {} --per-client {} --runs {} --cold {} --cached {} --rounds {}",
            a.requests, a.clients, a.per_client, a.runs, a.cold, a.cached, a.rounds
        ),
    );
    println!(
        "A real control plane and a real leash-agentd (release). Kept connections over the agent's Unix socket; \
         the echo baseline is the same tonic service over a Unix socket in a separate process (the release xtask \
         binary), whose Fetch returns a fixed {}-byte token. The generator runs on the same 2 CPUs. Agent and echo \
         are measured in {} alternating rounds, so drift on the machine falls on both alike.",
        first.token.len(),
        a.rounds
    );
    println!();
    let mut t = Table::new(&[
        "measurement",
        "calls",
        "p50",
        "p99",
        "throughput",
        "p50 vs echo",
    ]);
    t.row(vec![
        "cache-hit Fetch, 1 client".into(),
        thousands(hit1.len() as u64),
        dur(hit1.p50()),
        dur(hit1.p99()),
        "".into(),
        ratio(hit1.p50().as_secs_f64(), echo1.p50().as_secs_f64()),
    ]);
    t.row(vec![
        "echo Fetch, 1 client".into(),
        thousands(echo1.len() as u64),
        dur(echo1.p50()),
        dur(echo1.p99()),
        "".into(),
        "1.00×".into(),
    ]);
    t.row(vec![
        "agent Status (server stack, no attestation), 1 client".into(),
        thousands(status1.len() as u64),
        dur(status1.p50()),
        dur(status1.p99()),
        "".into(),
        ratio(status1.p50().as_secs_f64(), echo1.p50().as_secs_f64()),
    ]);
    t.row(vec![
        "agent WhoAmI (attestation + matching, no cache), 1 client".into(),
        thousands(whoami1.len() as u64),
        dur(whoami1.p50()),
        dur(whoami1.p99()),
        "".into(),
        ratio(whoami1.p50().as_secs_f64(), echo1.p50().as_secs_f64()),
    ]);
    t.row(vec![
        format!("cache-hit Fetch, {} clients", a.clients),
        thousands(hitn.len() as u64),
        dur(hitn.p50()),
        dur(hitn.p99()),
        rate(hitn.len() as f64 / hitn_t.as_secs_f64()),
        ratio(hitn.p50().as_secs_f64(), echon.p50().as_secs_f64()),
    ]);
    t.row(vec![
        format!("echo Fetch, {} clients", a.clients),
        thousands(echon.len() as u64),
        dur(echon.p50()),
        dur(echon.p99()),
        rate(echon.len() as f64 / echon_t.as_secs_f64()),
        "1.00×".into(),
    ]);
    t.row(vec![
        "cold Fetch (`fresh`: Issue through the control plane), 1 client".into(),
        thousands(cold.len() as u64),
        dur(cold.p50()),
        dur(cold.p99()),
        "".into(),
        ratio(cold.p50().as_secs_f64(), echo1.p50().as_secs_f64()),
    ]);
    t.print();
    if miss1 + missn > 0 {
        println!();
        println!(
            "Warning: {} of the cache-hit calls were not served from the cache.",
            miss1 + missn
        );
    }
    println!();

    println!(
        "Where attestation's time goes, measured in this process (the peer of a `UnixStream::pair()` is \
         this process): the agent's own `Attestor::attest`, and two of the things it does on every call."
    );
    println!();
    let mut t = Table::new(&["in-process, per call", "calls", "p50", "p99"]);
    for (what, s) in [
        (
            "`leash_agentd::attest::Attestor::attest` (whole)",
            &micro.attest,
        ),
        (
            "user and group names (`User::from_uid` + `Group::from_gid` per group, NSS)",
            &micro.names,
        ),
        ("read `/proc/<pid>/status`", &micro.status),
    ] {
        t.row(vec![
            what.into(),
            thousands(s.len() as u64),
            dur(s.p50()),
            dur(s.p99()),
        ]);
    }
    t.print();
    println!();

    let mut t = Table::new(&[
        "whole process (spawn to exit)",
        "runs",
        "median",
        "p99",
        "vs minimal client → agent",
    ]);
    t.row(vec![
        format!(
            "`leash --socket S get {CREDENTIAL}` (cache hit; binary {})",
            size(&leash)
        ),
        thousands(p_leash.len() as u64),
        dur(p_leash.p50()),
        dur(p_leash.p99()),
        ratio(p_leash.p50().as_secs_f64(), p_min_agent.p50().as_secs_f64()),
    ]);
    t.row(vec![
        format!(
            "minimal tonic client → agent, one Fetch (binary {})",
            size(&me)
        ),
        thousands(p_min_agent.len() as u64),
        dur(p_min_agent.p50()),
        dur(p_min_agent.p99()),
        "1.00×".into(),
    ]);
    t.row(vec![
        "minimal tonic client → echo, one Fetch".into(),
        thousands(p_min_echo.len() as u64),
        dur(p_min_echo.p50()),
        dur(p_min_echo.p99()),
        ratio(
            p_min_echo.p50().as_secs_f64(),
            p_min_agent.p50().as_secs_f64(),
        ),
    ]);
    t.print();
    println!();

    let mut t = Table::new(&[
        "leash-agentd memory",
        "VmRSS",
        "VmHWM",
        "VmLck",
        "cached credentials",
    ]);
    t.row(vec![
        "before caching the distinct credentials".into(),
        mb(before.rss_kib),
        mb(before.hwm_kib),
        mb(before.locked_kib),
        "".into(),
    ]);
    t.row(vec![
        format!("after caching {} distinct credentials", a.cached),
        mb(after.rss_kib),
        mb(after.hwm_kib),
        mb(after.locked_kib),
        thousands(u64::from(status.cached_credentials)),
    ]);
    t.row(vec![
        "difference per cached credential".into(),
        format!(
            "{:.1} KB",
            (after.rss_kib.saturating_sub(before.rss_kib)) as f64 * 1.024 / a.cached.max(1) as f64
        ),
        "".into(),
        "".into(),
        "".into(),
    ]);
    t.print();
    println!();

    let r1 = hit1.p50().as_secs_f64() / echo1.p50().as_secs_f64();
    let rn = hitn.p50().as_secs_f64() / echon.p50().as_secs_f64();
    let rp = p_leash.p50().as_secs_f64() / p_min_agent.p50().as_secs_f64();
    let rpe = p_leash.p50().as_secs_f64() / p_min_echo.p50().as_secs_f64();
    let rss_mb = after.rss_kib as f64 * 1024.0 / 1e6;
    let mut t = Table::new(&["check", "measured", "target", "met"]);
    t.row(vec![
        "cache-hit p50 / echo p50, 1 client".into(),
        format!("{r1:.2}× ({} vs {})", dur(hit1.p50()), dur(echo1.p50())),
        "≤ 1.2×".into(),
        met(r1 <= 1.2),
    ]);
    t.row(vec![
        format!("cache-hit p50 / echo p50, {} clients", a.clients),
        format!("{rn:.2}× ({} vs {})", dur(hitn.p50()), dur(echon.p50())),
        "≤ 1.2×".into(),
        met(rn <= 1.2),
    ]);
    t.row(vec![
        "`leash get` median / minimal client → agent median".into(),
        format!(
            "{rp:.2}× ({} vs {})",
            dur(p_leash.p50()),
            dur(p_min_agent.p50())
        ),
        "≤ 2×".into(),
        met(rp <= 2.0),
    ]);
    t.row(vec![
        "`leash get` median / minimal client → echo median".into(),
        format!(
            "{rpe:.2}× ({} vs {})",
            dur(p_leash.p50()),
            dur(p_min_echo.p50())
        ),
        "≤ 2×".into(),
        met(rpe <= 2.0),
    ]);
    t.row(vec![
        format!(
            "agentd VmRSS with {} cached credentials",
            status.cached_credentials
        ),
        format!("{rss_mb:.1} MB"),
        "≤ 30 MB".into(),
        met(rss_mb <= 30.0),
    ]);
    t.print();
    drop(agent);
    drop(cp);
    Ok(())
}

/// One build's control plane and agent, for `--baseline`.
struct Stack {
    _dir: tempfile::TempDir,
    _cp: ControlPlane,
    agent: Agent,
}

impl Stack {
    fn start(ctx: &Ctx) -> anyhow::Result<Stack> {
        let dir = tempfile::Builder::new()
            .prefix("leash-bench-fetch-")
            .tempdir()?;
        let cp = ControlPlane::start(ctx, dir.path(), None)?;
        cp.add_credential(CREDENTIAL)?;
        cp.add_workload(WORKLOAD, nix::unistd::getuid().as_raw(), CREDENTIAL)?;
        let agent = Agent::start(ctx, &cp, dir.path(), "bench-fetch-host")?;
        Ok(Stack {
            _dir: dir,
            _cp: cp,
            agent,
        })
    }
}

/// `--baseline`: this build and another side by side, their cache-hit Fetch (1 and
/// `--clients` connections) and cold Fetch measured in alternating rounds.
fn compare(ctx: &Ctx, a: &Args, base_dir: &Path) -> anyhow::Result<()> {
    let base = ctx.baseline(
        base_dir,
        &["leash-control-plane", "leashctl", "leash-agentd", "leash"],
    )?;
    let stacks = [Stack::start(&base)?, Stack::start(ctx)?];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rounds = a.rounds.max(1);
    eprintln!(
        "baseline vs this build: cache-hit Fetch 1 x {} and {} x {} calls, cold Fetch {} calls, each in {rounds} alternating rounds",
        a.requests, a.clients, a.per_client, a.cold
    );
    let (one, many, cold) = rt.block_on(async {
        let mut one = Vec::new();
        let mut many = Vec::new();
        for s in &stacks {
            one.push(Load::prepare(&s.agent.socket, Call::Fetch, 1).await?);
            many.push(Load::prepare(&s.agent.socket, Call::Fetch, a.clients).await?);
        }
        interleaved(&mut one, rounds, a.requests).await?;
        interleaved(&mut many, rounds, a.per_client).await?;
        let fresh = v1::FetchRequest {
            fresh: true,
            ..fetch_req()
        };
        let mut conns = Vec::new();
        for s in &stacks {
            let mut c = client(&s.agent.socket).await?;
            for _ in 0..20 {
                c.fetch(fresh.clone()).await?;
            }
            conns.push(c);
        }
        let mut cold = [Samples::default(), Samples::default()];
        for r in 0..rounds {
            let n = a.cold / rounds + usize::from(r < a.cold % rounds);
            for (c, s) in conns.iter_mut().zip(cold.iter_mut()) {
                for _ in 0..n {
                    let t = Instant::now();
                    let got = c.fetch(fresh.clone()).await?.into_inner();
                    s.push(t.elapsed());
                    anyhow::ensure!(!got.cached, "a fresh Fetch was served from the cache");
                }
            }
        }
        anyhow::Ok((one, many, cold))
    })?;
    anyhow::ensure!(
        one.iter().chain(&many).all(|l| l.uncached == 0),
        "some cache-hit calls were not served from the cache"
    );
    header(
        "bench fetch --baseline: this build's Fetch against another build's, same run",
        &ctx.command,
        &format!(
            "--requests {} --clients {} --per-client {} --cold {} --rounds {rounds}; baseline: {}",
            a.requests,
            a.clients,
            a.per_client,
            a.cold,
            base_dir.display()
        ),
    );
    println!(
        "Two control planes and two agents (one per build) run side by side; each load alternates between \
         the builds in {rounds} rounds, so drift on the machine falls on both alike. \
         Ratio: this build's throughput (or 1/p50) over the baseline's; 1.00× is equal, above is faster."
    );
    println!();
    let mut t = Table::new(&[
        "measurement",
        "build",
        "calls",
        "p50",
        "p99",
        "throughput",
        "ratio",
    ]);
    let rows: [(&str, &[Load]); 2] = [
        ("cache-hit Fetch, 1 client", &one),
        ("cache-hit Fetch, many clients", &many),
    ];
    for (what, loads) in rows {
        let thr = |l: &Load| l.lat.len() as f64 / l.elapsed.as_secs_f64();
        for (i, (name, l)) in ["baseline", "this build"].iter().zip(loads).enumerate() {
            t.row(vec![
                if what.contains("many") {
                    format!("cache-hit Fetch, {} clients", a.clients)
                } else {
                    what.into()
                },
                (*name).into(),
                thousands(l.lat.len() as u64),
                dur(l.lat.p50()),
                dur(l.lat.p99()),
                rate(thr(l)),
                if i == 0 {
                    "1.00×".into()
                } else {
                    ratio(thr(l), thr(&loads[0]))
                },
            ]);
        }
    }
    for (i, (name, s)) in ["baseline", "this build"].iter().zip(&cold).enumerate() {
        t.row(vec![
            "cold Fetch (`fresh`), 1 client".into(),
            (*name).into(),
            thousands(s.len() as u64),
            dur(s.p50()),
            dur(s.p99()),
            "".into(),
            if i == 0 {
                "1.00×".into()
            } else {
                ratio(cold[0].p50().as_secs_f64(), s.p50().as_secs_f64())
            },
        ]);
    }
    t.print();
    Ok(())
}
