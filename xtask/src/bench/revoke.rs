//! `cargo xtask bench revoke --agents N`: N simulated agents, each with its own mTLS
//! connection and Sync stream, connected to a real control plane; then revoke
//! everything, repeatedly, and time the push until the last agent has acknowledged.
//!
//! The generator stands in for the agents, so it knows when every one of them received
//! a revocation and acknowledged it: that instant, on one clock, is what is measured.
//! A second phase also follows each revocation with `WaitRevocation`, as
//! `leashctl revoke --wait` does, and reports when the control plane saw the last ack.
//!
//! With `--secret` the credential is a brokered secret (`leashctl secret put`). Before
//! every round each simulated agent is issued a lease of its current version, over its
//! own connection; the round is then either a rotation (`RotateSecret`, which revokes
//! every lease of the older version, as `leashctl secret rotate --wait` does) or, as the
//! same-run comparison, `Revoke {all}` of the same leases. The two alternate, so drift on
//! the machine falls on both alike.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use leash_proto::v1::control_plane_client::ControlPlaneClient;
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::Channel;

use super::procs::{cpu_time, which, ControlPlane};
use super::stats::{dur, header, met, rate, thousands, Samples, Table};
use super::{sim, Ctx};

const WORKLOAD: &str = "bench/revoke";
const CREDENTIAL: &str = "bench-jwt";
/// The brokered secret of `--secret`.
const SECRET: &str = "bench-secret";
/// The uid the simulated callers are attested as.
const UID: u32 = 4242;
/// Revocations made before measuring.
const WARMUP: usize = 3;
/// Longest one revocation may take to reach every agent before the bench gives up.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// `cargo xtask bench revoke`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Simulated agents (each one mTLS connection and one Sync stream).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Revocations measured with the push alone (after 3 unmeasured ones).
    #[arg(long, default_value_t = 100)]
    rounds: usize,
    /// Revocations measured while `WaitRevocation` follows each one (0 skips the phase).
    #[arg(long, default_value_t = 20)]
    wait_rounds: usize,
    /// Leases issued to every agent (Issue over its own connection) before each
    /// revocation, so that each one covers agents × leases leases.
    #[arg(long, default_value_t = 0)]
    leases: usize,
    /// Sync heartbeat interval of the control plane (its config key `heartbeat`).
    #[arg(long, default_value = "5s")]
    heartbeat: String,
    /// Join tokens, enrollments and connections in flight at once during set-up.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// Do not pin the generator and the control plane to separate CPUs.
    #[arg(long)]
    no_pin: bool,
    /// The credential is a brokered secret: before every round each agent is issued one
    /// lease of it (whatever --leases says), and rotations (`RotateSecret`) alternate with
    /// revocations of the same leases; both are measured, --rounds and --wait-rounds each.
    #[arg(long)]
    secret: bool,
    /// Where the control plane keeps its state: `sled` (one control plane) or
    /// `postgres` (--replicas replicas on one throwaway PostgreSQL, the agents spread
    /// over them, measured against one control plane on sled in the same run).
    #[arg(long, default_value = "sled", value_parser = ["sled", "postgres"])]
    store: String,
    /// With --store postgres: control-plane replicas on the one database.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
}

/// What a round does to the outstanding leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `Revoke {all: true}` on the admin socket.
    Revoke,
    /// `RotateSecret` of the bench secret: a new version, older versions' leases revoked.
    Rotate,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Revoke => "revoke",
            Op::Rotate => "rotate",
        }
    }
}

/// What simulated agents tell the coordinator.
enum Ev {
    CaughtUp,
    Acked { seq: u64, at: Instant },
    Lost { agent: usize, why: String },
}

struct Pinning {
    control_plane: Option<usize>,
    note: String,
}

/// Pin this thread (and so every thread and child it starts later) to the last CPU, and
/// leave CPU 0 for the control plane. Needs at least two CPUs and `taskset`.
fn pin(no_pin: bool) -> Pinning {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if no_pin {
        return Pinning {
            control_plane: None,
            note: "not pinned (--no-pin)".into(),
        };
    }
    if cpus < 2 || which("taskset").is_none() {
        return Pinning {
            control_plane: None,
            note: format!(
                "not pinned ({cpus} CPU(s), taskset {})",
                if which("taskset").is_some() {
                    "found"
                } else {
                    "missing"
                }
            ),
        };
    }
    let gen_cpu = cpus - 1;
    let mut set = nix::sched::CpuSet::new();
    if set.set(gen_cpu).is_err()
        || nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).is_err()
    {
        return Pinning {
            control_plane: None,
            note: "not pinned (sched_setaffinity failed)".into(),
        };
    }
    Pinning {
        control_plane: Some(0),
        note: format!("control plane on CPU 0 (`taskset -c 0`), generator on CPU {gen_cpu} (sched_setaffinity)"),
    }
}

/// Raise RLIMIT_NOFILE for this process (the control plane inherits it): each agent is
/// one socket here and one there.
fn raise_nofile(agents: usize) -> anyhow::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let want = (agents as u64) + 4096;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= want {
        return Ok(soft);
    }
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(hard);
    let target = want.min(nr_open);
    if setrlimit(Resource::RLIMIT_NOFILE, target, target.max(hard)).is_err() {
        // Without CAP_SYS_RESOURCE only the soft limit can move, up to the hard one.
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < want {
        bail!("{agents} agents need about {want} open files, and RLIMIT_NOFILE stays at {soft}; raise it (ulimit -n) or use fewer --agents");
    }
    Ok(soft)
}

/// One simulated agent: answer heartbeats with acks and revocations with wipe acks,
/// telling the coordinator when each revocation was acknowledged.
async fn agent(
    i: usize,
    _client: ControlPlaneClient<Channel>,
    mut s: sim::SyncStream,
    ev: mpsc::UnboundedSender<Ev>,
) {
    use v1::agent_message::Msg as Up;
    use v1::control_message::Msg;
    loop {
        let m = match s.down.message().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                let _ = ev.send(Ev::Lost {
                    agent: i,
                    why: "the control plane closed the stream".into(),
                });
                return;
            }
            Err(e) => {
                let _ = ev.send(Ev::Lost {
                    agent: i,
                    why: e.message().to_string(),
                });
                return;
            }
        };
        let r = match m.msg {
            Some(Msg::Revocation(r)) => {
                let r = sim::send(
                    &s.up,
                    Up::WipeAck(v1::WipeAck {
                        seq: r.seq,
                        wiped: 0,
                    }),
                )
                .await
                .map(|_| r.seq);
                if let Ok(seq) = r {
                    let _ = ev.send(Ev::Acked {
                        seq,
                        at: Instant::now(),
                    });
                }
                r.map(drop)
            }
            Some(Msg::Heartbeat(h)) => sim::send(&s.up, Up::Ack(v1::SyncAck { seq: h.seq })).await,
            Some(Msg::CaughtUp(c)) => {
                let r = sim::send(&s.up, Up::Ack(v1::SyncAck { seq: c.seq })).await;
                let _ = ev.send(Ev::CaughtUp);
                r
            }
            _ => Ok(()),
        };
        if r.is_err() {
            let _ = ev.send(Ev::Lost {
                agent: i,
                why: "sync stream closed".into(),
            });
            return;
        }
    }
}

struct Round {
    op: Op,
    /// Leases the revocation covered.
    covered: u32,
    /// Control-plane CPU from the revoke until this round's wipe events were recorded.
    cpu: Duration,
    /// The generator's CPU over the same span (all simulated agents together).
    gen_cpu: Duration,
    rpc: Duration,
    first: Duration,
    last: Duration,
    waited: Option<Duration>,
    cp_elapsed: Option<Duration>,
}

/// Collect acknowledgments of `seq` until every agent has acknowledged it. Returns the
/// first and last acknowledgment instants.
async fn acks(
    rx: &mut mpsc::UnboundedReceiver<Ev>,
    seq: u64,
    n: usize,
    early: &mut HashMap<u64, Vec<Instant>>,
) -> anyhow::Result<(Instant, Instant)> {
    let mut times = early.remove(&seq).unwrap_or_default();
    let deadline = tokio::time::Instant::now() + ROUND_TIMEOUT;
    while times.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ev::Acked { seq: s, at })) if s == seq => times.push(at),
            Ok(Some(Ev::Acked { seq: s, at })) => early.entry(s).or_default().push(at),
            Ok(Some(Ev::CaughtUp)) => {}
            Ok(Some(Ev::Lost { agent, why })) => {
                bail!("simulated agent {agent} lost its stream: {why}")
            }
            Ok(None) => bail!("every simulated agent is gone"),
            Err(_) => bail!(
                "revocation {seq} reached only {}/{n} agents within {ROUND_TIMEOUT:?}",
                times.len()
            ),
        }
    }
    let first = times.iter().min().copied().unwrap_or_else(Instant::now);
    let last = times.iter().max().copied().unwrap_or_else(Instant::now);
    Ok((first, last))
}

/// Issue `per_agent` leases to every agent, each over the agent's own connection.
async fn issue_leases(
    clients: &[ControlPlaneClient<Channel>],
    credential: &'static str,
    per_agent: usize,
    parallel: usize,
) -> anyhow::Result<()> {
    let gate = Arc::new(Semaphore::new(parallel));
    let mut tasks = tokio::task::JoinSet::new();
    for c in clients {
        for _ in 0..per_agent {
            let mut c = c.clone();
            let gate = gate.clone();
            tasks.spawn(async move {
                let _p = gate.acquire().await?;
                c.issue(v1::IssueRequest {
                    workload: WORKLOAD.into(),
                    credential: credential.into(),
                    attested: Some(v1::Attested {
                        uid: UID,
                        gid: UID,
                        selectors: vec![format!("unix:uid:{UID}")],
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .context("Issue")?;
                anyhow::Ok(())
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// Revoke everything; returns the revocation's sequence number and how many leases it
/// covered.
async fn revoke_all(admin: &mut AdminClient<Channel>, round: usize) -> anyhow::Result<(u64, u32)> {
    let r = admin
        .revoke(v1::RevokeRequest {
            target: Some(v1::RevocationTargetSpec {
                target: Some(v1::revocation_target_spec::Target::All(true)),
            }),
            reason: format!("bench round {round}"),
        })
        .await
        .context("Revoke")?
        .into_inner();
    Ok((r.seq, r.leases_revoked))
}

/// Rotate the bench secret to a new value; returns the revocation of the older
/// version's leases (its sequence number) and how many leases it covered.
async fn rotate(admin: &mut AdminClient<Channel>, n: usize) -> anyhow::Result<(u64, u32)> {
    let r = admin
        .rotate_secret(v1::RotateSecretRequest {
            name: SECRET.into(),
            value: format!("sk_bench_{n:08}_0000000000000000000000").into_bytes(),
            grace_seconds: 0,
            reason: format!("bench rotation {n}"),
        })
        .await
        .context("RotateSecret")?
        .into_inner();
    anyhow::ensure!(
        r.seq != 0,
        "rotation {n} revoked no lease (were the leases issued?)"
    );
    Ok((r.seq, r.leases_revoked))
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.agents > 0 && a.rounds > 0 && a.parallel > 0,
        "counts must be positive"
    );
    if a.store == "postgres" {
        anyhow::ensure!(
            !a.secret && a.leases == 0,
            "--store postgres measures revocations of everything: without --secret or --leases"
        );
        raise_nofile(a.agents * 2)?;
        return super::ha::revoke(
            ctx,
            super::ha::RevokeParams {
                agents: a.agents,
                replicas: a.replicas,
                rounds: a.rounds,
                heartbeat: a.heartbeat,
                parallel: a.parallel,
            },
        );
    }
    let pinning = pin(a.no_pin);
    let nofile = raise_nofile(a.agents)?;
    eprintln!("{}; RLIMIT_NOFILE {nofile}", pinning.note);
    let dir = tempfile::Builder::new()
        .prefix("leash-bench-revoke-")
        .tempdir()?;
    let mut cp = ControlPlane::start_with(ctx, dir.path(), pinning.control_plane, &a.heartbeat)?;
    let (credential, ops, leases): (&'static str, &[Op], usize) = if a.secret {
        cp.put_secret(
            dir.path(),
            SECRET,
            "sk_bench_00000000_0000000000000000000000",
        )?;
        (SECRET, &[Op::Rotate, Op::Revoke], a.leases.max(1))
    } else {
        cp.add_credential(CREDENTIAL)?;
        (CREDENTIAL, &[Op::Revoke], a.leases)
    };
    cp.add_workload(WORKLOAD, UID, credential)?;
    let n = a.agents;

    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    let out = rt.block_on(async {
        let admin = AdminClient::new(leash_proto::uds::connect(&cp.admin_socket).await?);
        let gate = Arc::new(Semaphore::new(a.parallel));

        eprintln!("creating {n} join tokens through the admin API");
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let mut admin = admin.clone();
            let gate = gate.clone();
            tasks.spawn(async move {
                let _p = gate.acquire().await?;
                let r = admin
                    .create_join_token(v1::CreateJoinTokenRequest {
                        ttl_seconds: 3600,
                        name: format!("sim-{i:05}"),
                        labels: Default::default(),
                    })
                    .await?
                    .into_inner();
                anyhow::Ok((i, r.token))
            });
        }
        let mut tokens = vec![String::new(); n];
        while let Some(r) = tasks.join_next().await {
            let (i, tok) = r??;
            tokens[i] = tok;
        }
        let tokens_t = t.elapsed();

        eprintln!("enrolling {n} hosts");
        let t = Instant::now();
        let enroll_ch = sim::enroll_channel(&cp.addr, &tokens[0]).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for (i, tok) in tokens.into_iter().enumerate() {
            let client = ControlPlaneClient::new(enroll_ch.clone());
            let gate = gate.clone();
            tasks.spawn(async move {
                let _p = gate.acquire().await?;
                let cfg = sim::enroll_in_memory(client, &tok, &format!("sim-{i:05}")).await?;
                anyhow::Ok((i, cfg))
            });
        }
        let mut configs = vec![None; n];
        while let Some(r) = tasks.join_next().await {
            let (i, cfg) = r??;
            configs[i] = Some(cfg);
        }
        drop(enroll_ch);
        let enroll_t = t.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mem_before = cp.proc.memory()?;

        eprintln!("connecting {n} agents (one mTLS connection and one Sync stream each)");
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let t = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, cfg) in configs.into_iter().enumerate() {
            let cfg = cfg.context("missing identity")?;
            let addr = cp.addr.clone();
            let gate = gate.clone();
            let ev = ev_tx.clone();
            tasks.spawn(async move {
                let p = gate.acquire().await?;
                let mut client =
                    ControlPlaneClient::new(leash_agentd::tls::connect(&[addr], cfg).await?);
                let s = sim::open_sync(&mut client).await?;
                drop(p);
                tokio::spawn(agent(i, client.clone(), s, ev));
                anyhow::Ok((i, client))
            });
        }
        drop(ev_tx);
        let mut clients = vec![None; n];
        while let Some(r) = tasks.join_next().await {
            let (i, c) = r??;
            clients[i] = Some(c);
        }
        let clients: Vec<ControlPlaneClient<Channel>> = clients.into_iter().flatten().collect();
        let mut caught_up = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while caught_up < n {
            match tokio::time::timeout_at(deadline, ev_rx.recv()).await {
                Ok(Some(Ev::CaughtUp)) => caught_up += 1,
                Ok(Some(Ev::Lost { agent, why })) => {
                    bail!("simulated agent {agent} lost its stream: {why}")
                }
                Ok(Some(Ev::Acked { .. })) => {}
                Ok(None) => bail!("every simulated agent is gone"),
                Err(_) => bail!("only {caught_up}/{n} agents caught up within 60s"),
            }
        }
        let connect_t = t.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mem_with = cp.proc.memory()?;

        let mut admin = admin;
        let mut early = HashMap::new();
        let mut rotations = 0;
        let mut push = Vec::new();
        let mut with_wait = Vec::new();
        for waiting in [false, true] {
            // The push phase warms up; the WaitRevocation phase follows it warm.
            let (warmup, rounds) = if waiting {
                (0, a.wait_rounds)
            } else {
                (WARMUP, a.rounds)
            };
            if rounds == 0 {
                continue;
            }
            eprintln!(
                "{}: {warmup} + {rounds} times{}",
                if a.secret {
                    "rotating the secret and revoking its leases, alternately"
                } else {
                    "revoking everything"
                },
                if waiting {
                    ", each followed by WaitRevocation"
                } else {
                    ""
                }
            );
            for (round, &op) in (0..warmup + rounds).flat_map(|r| ops.iter().map(move |op| (r, op)))
            {
                if leases > 0 {
                    issue_leases(&clients, credential, leases, a.parallel).await?;
                }
                let cpu0 = cpu_time(cp.proc.pid())?;
                let gen0 = cpu_time(std::process::id())?;
                let t0 = Instant::now();
                let (seq, covered) = match op {
                    Op::Revoke => revoke_all(&mut admin, round).await?,
                    Op::Rotate => {
                        rotations += 1;
                        rotate(&mut admin, rotations).await?
                    }
                };
                let rpc = t0.elapsed();
                let waiter = waiting.then(|| {
                    let mut admin = admin.clone();
                    tokio::spawn(async move {
                        let mut s = admin
                            .wait_revocation(v1::WaitRevocationRequest {
                                seq,
                                timeout_ms: 60_000,
                            })
                            .await?
                            .into_inner();
                        while let Some(p) = s.message().await? {
                            if p.done {
                                return anyhow::Ok((
                                    Instant::now(),
                                    Duration::from_millis(p.elapsed_ms),
                                ));
                            }
                            if p.timed_out {
                                bail!(
                                    "WaitRevocation timed out: {}/{} acknowledged",
                                    p.acked,
                                    p.total
                                );
                            }
                        }
                        bail!("WaitRevocation ended before done")
                    })
                });
                let (first, last) = acks(&mut ev_rx, seq, n, &mut early).await?;
                let (waited, cp_elapsed) = match waiter {
                    Some(w) => {
                        let (at, el) = w.await??;
                        (Some(at.saturating_duration_since(t0)), Some(el))
                    }
                    None => (None, None),
                };
                let mut r = Round {
                    op,
                    covered,
                    cpu: Duration::ZERO,
                    gen_cpu: Duration::ZERO,
                    rpc,
                    first: first.saturating_duration_since(t0),
                    last: last.saturating_duration_since(t0),
                    waited,
                    cp_elapsed,
                };
                // Let the control plane finish recording this round's wipe events
                // before the next revocation is timed.
                tokio::time::sleep(r.last.max(Duration::from_millis(200))).await;
                r.cpu = cpu_time(cp.proc.pid())?.saturating_sub(cpu0);
                r.gen_cpu = cpu_time(std::process::id())?.saturating_sub(gen0);
                if round >= warmup {
                    if waiting {
                        with_wait.push(r)
                    } else {
                        push.push(r)
                    }
                }
            }
        }
        let mem_after = cp.proc.memory()?;
        anyhow::Ok((
            tokens_t, enroll_t, connect_t, mem_before, mem_with, mem_after, push, with_wait,
        ))
    });
    let (tokens_t, enroll_t, connect_t, mem_before, mem_with, mem_after, push, with_wait) =
        match out {
            Ok(v) => v,
            Err(e) => {
                let _ = cp.proc.check_alive();
                return Err(e.context(format!(
                    "control plane's last log lines:\n{}",
                    cp.proc.tail()
                )));
            }
        };
    cp.proc.check_alive()?;
    // Dropping the runtime closes every simulated agent's connection.
    drop(rt);
    drop(cp);

    let median_covered = {
        let mut c: Vec<u32> = push.iter().chain(&with_wait).map(|r| r.covered).collect();
        c.sort_unstable();
        c.get(c.len() / 2).copied().unwrap_or(0)
    };
    header(
        &format!(
            "bench revoke{}: {} fan-out to {} simulated agents",
            if a.secret { " --secret" } else { "" },
            if a.secret {
                "secret rotation (and revocation)"
            } else {
                "revocation"
            },
            thousands(n as u64)
        ),
        &ctx.command,
        &format!(
            "--agents {} --rounds {} --wait-rounds {} --leases {} --heartbeat {} --parallel {}{}{}",
            a.agents,
            a.rounds,
            a.wait_rounds,
            leases,
            a.heartbeat,
            a.parallel,
            if a.no_pin { " --no-pin" } else { "" },
            if a.secret { " --secret" } else { "" }
        ),
    );
    let what = if a.secret {
        format!(
            "Each round first issues every agent one lease of the brokered secret `{SECRET}` (Issue over its own \
             connection), then either rotates the secret (`RotateSecret` on the admin socket: a new version, \
             every lease of the older one revoked) or revokes everything (`Revoke {{all: true}}`) as the \
             same-run comparison; the two alternate, {} measured rounds each per phase. Median leases covered: {}",
            a.rounds,
            thousands(u64::from(median_covered))
        )
    } else if leases > 0 {
        format!(
            "Each round revokes everything (`Revoke {{all: true}}` on the admin socket); before each one, every \
             agent is issued {leases} lease(s) over its own connection, so each revocation covers {} leases \
             (median measured: {})",
            thousands((leases * n) as u64),
            thousands(u64::from(median_covered))
        )
    } else {
        "Each round revokes everything (`Revoke {all: true}` on the admin socket), with no leases outstanding \
         (pure push; `--leases K` issues K per agent before each one)"
            .into()
    };
    println!(
        "Each simulated agent holds its own mTLS connection (own host certificate) and Sync stream, acknowledges \
         heartbeats, and answers every Revocation with WipeAck{{seq, wiped: 0}}. {what}. Pinning: {}. \
         RLIMIT_NOFILE {nofile}.",
        pinning.note
    );
    println!();
    let mut t = Table::new(&["set-up", "count", "time", "rate"]);
    for (what, d) in [
        ("join tokens created (admin API, concurrent)", tokens_t),
        ("hosts enrolled (Enroll over TLS, concurrent)", enroll_t),
        (
            "agents connected (mTLS handshake + Sync stream, caught up)",
            connect_t,
        ),
    ] {
        t.row(vec![
            what.into(),
            thousands(n as u64),
            dur(d),
            rate(n as f64 / d.as_secs_f64()),
        ]);
    }
    t.print();
    println!();

    let col = |rs: &[Round], op: Op, f: &dyn Fn(&Round) -> Option<Duration>| {
        let mut s = Samples::default();
        for r in rs.iter().filter(|r| r.op == op) {
            if let Some(d) = f(r) {
                s.push(d);
            }
        }
        s
    };
    // Without --secret the rows read as before: "push only: Revoke call returned …".
    let label = |op: Op| {
        if a.secret {
            format!(", {}", op.name())
        } else {
            String::new()
        }
    };
    let call = |op: Op| match op {
        Op::Revoke => "Revoke call returned (recorded durably)",
        Op::Rotate => "RotateSecret call returned (new version and revocation recorded durably)",
    };
    let mut t = Table::new(&[
        if a.secret {
            "per rotation / revocation"
        } else {
            "revoke everything (per revocation)"
        },
        "rounds",
        "p50",
        "p99",
        "max",
    ]);
    let mut row = |what: String, s: Samples| {
        t.row(vec![
            what,
            s.len().to_string(),
            dur(s.p50()),
            dur(s.p99()),
            dur(s.max()),
        ]);
    };
    for &op in ops {
        let l = label(op);
        let verb = op.name();
        row(
            format!("push only{l}: {}", call(op)),
            col(&push, op, &|r| Some(r.rpc)),
        );
        row(
            format!("push only{l}: {verb} sent → first agent acked"),
            col(&push, op, &|r| Some(r.first)),
        );
        row(
            format!("push only{l}: {verb} sent → last of {n} agents acked"),
            col(&push, op, &|r| Some(r.last)),
        );
    }
    if !with_wait.is_empty() {
        for &op in ops {
            let l = label(op);
            let verb = op.name();
            row(
                format!("with WaitRevocation{l}: {verb} sent → last agent acked"),
                col(&with_wait, op, &|r| Some(r.last)),
            );
            row(
                format!("with WaitRevocation{l}: {verb} sent → control plane reports done"),
                col(&with_wait, op, &|r| r.waited),
            );
            row(
                format!(
                    "with WaitRevocation{l}: propagation the control plane reports (elapsed_ms)"
                ),
                col(&with_wait, op, &|r| r.cp_elapsed),
            );
        }
    }
    t.print();
    println!();

    let per_agent_kib = mem_with.rss_kib.saturating_sub(mem_before.rss_kib) as f64 / n as f64;
    let mut t = Table::new(&["control plane", "value"]);
    t.row(vec![
        "VmRSS after enrollment, before agents connect".into(),
        format!("{:.1} MB", mem_before.rss_kib as f64 * 1.024 / 1000.0),
    ]);
    t.row(vec![
        format!("VmRSS with {n} agents connected"),
        format!("{:.1} MB", mem_with.rss_kib as f64 * 1.024 / 1000.0),
    ]);
    t.row(vec![
        "memory per connected agent (RSS difference / N)".into(),
        format!("{:.1} KB", per_agent_kib * 1.024),
    ]);
    t.row(vec![
        "VmHWM at the end".into(),
        format!("{:.1} MB", mem_after.hwm_kib as f64 * 1.024 / 1000.0),
    ]);
    for &op in ops {
        let l = label(op);
        let what = match op {
            Op::Revoke => "Revoke, fan-out, acks, wipe events",
            Op::Rotate => "RotateSecret, fan-out, acks, wipe events",
        };
        t.row(vec![
            format!("CPU per revocation (median), push only{l}: {what}"),
            dur(col(&push, op, &|r| Some(r.cpu)).p50()),
        ]);
        t.row(vec![
            format!("generator CPU per revocation (median), push only{l}: all simulated agents"),
            dur(col(&push, op, &|r| Some(r.gen_cpu)).p50()),
        ]);
        if !with_wait.is_empty() {
            t.row(vec![
                format!("CPU per revocation (median), with WaitRevocation{l}"),
                dur(col(&with_wait, op, &|r| Some(r.cpu)).p50()),
            ]);
        }
    }
    t.print();
    println!();

    let mut t = Table::new(&["check", "measured", "target", "met"]);
    let at_1000 = |ok: bool| {
        if n == 1000 {
            met(ok)
        } else {
            "(target is for 1,000)".into()
        }
    };
    if a.secret {
        let p99 = col(&push, Op::Rotate, &|r| Some(r.last)).p99();
        t.row(vec![
            format!("p99 rotate sent → last ack, {} agents", thousands(n as u64)),
            dur(p99),
            "≤ 150 ms at 1,000 agents".into(),
            at_1000(p99 <= Duration::from_millis(150)),
        ]);
        if !with_wait.is_empty() {
            let p99 = col(&with_wait, Op::Rotate, &|r| r.waited).p99();
            t.row(vec![
                format!(
                    "p99 rotate sent → control plane reports every wipe (as `secret rotate --wait`), {} agents",
                    thousands(n as u64)
                ),
                dur(p99),
                "≤ 150 ms at 1,000 agents".into(),
                at_1000(p99 <= Duration::from_millis(150)),
            ]);
        }
    } else {
        let p99 = col(&push, Op::Revoke, &|r| Some(r.last)).p99();
        t.row(vec![
            format!("p99 revoke sent → last ack, {} agents", thousands(n as u64)),
            dur(p99),
            "≤ 100 ms at 1,000 agents".into(),
            at_1000(p99 <= Duration::from_millis(100)),
        ]);
    }
    t.print();
    Ok(())
}
