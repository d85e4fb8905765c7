//! Benches of control-plane replicas on one PostgreSQL, with simulated agents spread
//! across them:
//!
//! - `cargo xtask bench revoke --store postgres --replicas N`: revoke on the first
//!   replica, time until the last agent (connected to any replica) acknowledged; one
//!   control plane on sled with as many agents is measured in the same run.
//! - `cargo xtask bench failover --agents N --replicas N`: `kill -9` of one replica;
//!   time until each of its agents has reconnected to another, resumed its Sync stream
//!   (caught up) and been issued a credential again.
//!
//! A simulated agent reconnects as `leash-agentd` does (agentd/src/sync.rs): 200 ms plus
//! up to half of it in jitter, doubling to 10 s while it is not synced, through
//! `leash_agentd::tls::connect` over its address list (its own replica first), resuming
//! from the last sequence it saw.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use leash_proto::v1::control_plane_client::ControlPlaneClient;
use tokio::sync::{mpsc, Semaphore};

use super::issue_pg::{fresh_database, start_pg, start_replicas};
use super::procs::{ControlPlane, BENCH_ENROLL_LIMITS};
use super::stats::{dur, header, met, thousands, Samples, Table};
use super::{sim, Ctx};

const WORKLOAD: &str = "bench/ha";
const CREDENTIAL: &str = "bench-jwt";
const UID: u32 = 4242;
/// The real agent's reconnect backoff (agentd/src/sync.rs).
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Longest a revocation or a failover may take before the bench gives up.
const TIMEOUT: Duration = Duration::from_secs(60);

/// What simulated agents tell the coordinator.
#[derive(Debug)]
enum Ev {
    CaughtUp {
        agent: usize,
        at: Instant,
    },
    Acked {
        seq: u64,
        at: Instant,
    },
    /// Issued a credential after a reconnection.
    Served {
        agent: usize,
        at: Instant,
    },
    Failed {
        agent: usize,
        why: String,
    },
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Jitter for agent `i`: enough spread that a fleet does not reconnect in lockstep.
fn noise(i: usize) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (u64::from(t) ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_mul(0x2545_f491_4f6c_dd1d)
        >> 48
}

fn issue_request() -> v1::IssueRequest {
    v1::IssueRequest {
        workload: WORKLOAD.into(),
        credential: CREDENTIAL.into(),
        attested: Some(sim::attested(UID)),
        ..Default::default()
    }
}

/// One simulated agent: hold a Sync stream to the first address of `addrs` that
/// answers, acknowledge heartbeats and revocations, and reconnect as the real agent
/// does. After every reconnection, once caught up, make one Issue and report it.
async fn agent(
    i: usize,
    addrs: Vec<String>,
    cfg: Arc<rustls::ClientConfig>,
    ev: mpsc::UnboundedSender<Ev>,
) {
    use v1::agent_message::Msg as Up;
    use v1::control_message::Msg;
    let mut last_seq = 0u64;
    let mut backoff = BACKOFF_MIN;
    let mut sessions = 0u32;
    loop {
        let mut synced = false;
        let session = async {
            let ch = leash_agentd::tls::connect(&addrs, cfg.clone()).await?;
            let mut client = ControlPlaneClient::new(ch);
            let (up, rx) = mpsc::channel(64);
            up.send(v1::AgentMessage {
                msg: Some(Up::Hello(v1::SyncHello {
                    protocol_version: leash_proto::PROTOCOL_VERSION,
                    last_seq,
                    agent_version: "bench".into(),
                })),
            })
            .await
            .context("sync stream closed")?;
            let mut down = client
                .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            sessions += 1;
            while let Some(m) = down.message().await? {
                let reply = match m.msg {
                    Some(Msg::Heartbeat(h)) => Up::Ack(v1::SyncAck { seq: h.seq }),
                    Some(Msg::CaughtUp(c)) => {
                        last_seq = last_seq.max(c.seq);
                        synced = true;
                        let _ = ev.send(Ev::CaughtUp {
                            agent: i,
                            at: Instant::now(),
                        });
                        if sessions > 1 {
                            let mut c2 = client.clone();
                            let ev = ev.clone();
                            tokio::spawn(async move {
                                let _ = match c2.issue(issue_request()).await {
                                    Ok(_) => ev.send(Ev::Served {
                                        agent: i,
                                        at: Instant::now(),
                                    }),
                                    Err(e) => ev.send(Ev::Failed {
                                        agent: i,
                                        why: format!("Issue after reconnecting: {}", e.message()),
                                    }),
                                };
                            });
                        }
                        Up::Ack(v1::SyncAck { seq: c.seq })
                    }
                    Some(Msg::Revocation(r)) => {
                        last_seq = last_seq.max(r.seq);
                        let _ = ev.send(Ev::Acked {
                            seq: r.seq,
                            at: Instant::now(),
                        });
                        Up::WipeAck(v1::WipeAck {
                            seq: r.seq,
                            wiped: 0,
                        })
                    }
                    _ => continue,
                };
                sim::send(&up, reply).await?;
            }
            anyhow::Ok(())
        };
        let _ = session.await;
        if ev.is_closed() {
            return;
        }
        if synced {
            backoff = BACKOFF_MIN;
        }
        let jitter = Duration::from_millis(noise(i) % (backoff.as_millis() as u64 / 2 + 1));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Enroll `n` simulated hosts, agent `i` on control plane `i % cps.len()`, and start
/// them (their own control plane first in their address list). Returns once every one
/// has caught up.
async fn start_agents(
    cps: &[ControlPlane],
    n: usize,
    parallel: usize,
) -> anyhow::Result<mpsc::UnboundedReceiver<Ev>> {
    let gate = Arc::new(Semaphore::new(parallel));
    let mut admins = Vec::new();
    for cp in cps {
        admins.push(AdminClient::new(
            leash_proto::uds::connect(&cp.admin_socket).await?,
        ));
    }
    eprintln!("creating {n} join tokens and enrolling the hosts");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let r = i % cps.len();
        let mut admin = admins[r].clone();
        let addr = cps[r].addr.clone();
        let gate = gate.clone();
        tasks.spawn(async move {
            let _p = gate.acquire().await?;
            let tok = admin
                .create_join_token(v1::CreateJoinTokenRequest {
                    ttl_seconds: 3600,
                    name: format!("sim-{i:05}"),
                    labels: Default::default(),
                })
                .await?
                .into_inner()
                .token;
            let ch = sim::enroll_channel(&addr, &tok).await?;
            let cfg =
                sim::enroll_in_memory(ControlPlaneClient::new(ch), &tok, &format!("sim-{i:05}"))
                    .await?;
            anyhow::Ok((i, cfg))
        });
    }
    let mut configs = vec![None; n];
    while let Some(r) = tasks.join_next().await {
        let (i, cfg) = r??;
        configs[i] = Some(cfg);
    }
    eprintln!("connecting {n} agents");
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    for (i, cfg) in configs.into_iter().enumerate() {
        let cfg = cfg.context("missing identity")?;
        let home = i % cps.len();
        let addrs: Vec<String> = (0..cps.len())
            .map(|k| cps[(home + k) % cps.len()].addr.clone())
            .collect();
        tokio::spawn(agent(i, addrs, cfg, ev_tx.clone()));
        if i % parallel == parallel - 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut caught = vec![false; n];
    let mut left = n;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while left > 0 {
        match tokio::time::timeout_at(deadline, ev_rx.recv()).await {
            Ok(Some(Ev::CaughtUp { agent, .. })) if !caught[agent] => {
                caught[agent] = true;
                left -= 1;
            }
            Ok(Some(Ev::Failed { agent, why })) => bail!("simulated agent {agent}: {why}"),
            Ok(Some(_)) => {}
            Ok(None) => bail!("every simulated agent is gone"),
            Err(_) => bail!("only {}/{n} agents caught up within {TIMEOUT:?}", n - left),
        }
    }
    Ok(ev_rx)
}

/// `bench revoke --store postgres --replicas N`, what it is told.
pub struct RevokeParams {
    pub agents: usize,
    pub replicas: usize,
    pub rounds: usize,
    pub heartbeat: String,
    pub parallel: usize,
}

/// Revocation → last ack, `rounds` times, with `agents` spread over `cps`.
fn revoke_rounds(cps: &[ControlPlane], p: &RevokeParams) -> anyhow::Result<Samples> {
    cps[0].add_credential(CREDENTIAL)?;
    cps[0].add_workload(WORKLOAD, UID, CREDENTIAL)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(async {
        let mut ev = start_agents(cps, p.agents, p.parallel).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut admin = AdminClient::new(leash_proto::uds::connect(&cps[0].admin_socket).await?);
        let mut last = Samples::default();
        eprintln!("revoking everything: 3 + {} times", p.rounds);
        for round in 0..3 + p.rounds {
            let t0 = Instant::now();
            let seq = admin
                .revoke(v1::RevokeRequest {
                    target: Some(v1::RevocationTargetSpec {
                        target: Some(v1::revocation_target_spec::Target::All(true)),
                    }),
                    reason: format!("bench round {round}"),
                })
                .await
                .context("Revoke")?
                .into_inner()
                .seq;
            let mut got = 0;
            let mut latest = t0;
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            while got < p.agents {
                match tokio::time::timeout_at(deadline, ev.recv()).await {
                    Ok(Some(Ev::Acked { seq: s, at })) if s == seq => {
                        got += 1;
                        latest = latest.max(at);
                    }
                    Ok(Some(Ev::Failed { agent, why })) => bail!("simulated agent {agent}: {why}"),
                    Ok(Some(_)) => {}
                    Ok(None) => bail!("every simulated agent is gone"),
                    Err(_) => bail!(
                        "revocation {seq} reached {got}/{} agents within {TIMEOUT:?}",
                        p.agents
                    ),
                }
            }
            if round >= 3 {
                last.push(latest - t0);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::Ok(last)
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    out
}

pub fn revoke(ctx: &Ctx, p: RevokeParams) -> anyhow::Result<()> {
    anyhow::ensure!(
        p.agents > 0 && p.replicas > 0 && p.rounds > 0 && p.parallel > 0,
        "counts must be positive"
    );
    let dir = tempfile::Builder::new()
        .prefix("leash-bench-revoke-pg-")
        .tempdir()?;
    let load0 = loadavg();
    eprintln!("sled: one control plane, {} agents", p.agents);
    let sdir = dir.path().join("sled");
    std::fs::create_dir_all(&sdir)?;
    let sled = {
        let cps = vec![ControlPlane::start_with(ctx, &sdir, None, &p.heartbeat)?];
        revoke_rounds(&cps, &p)?
    };
    let load1 = loadavg();
    let pg = start_pg()?;
    let pdir = dir.path().join("pg");
    std::fs::create_dir_all(&pdir)?;
    let url = fresh_database(&pg, &pdir, "revoke")?;
    eprintln!("postgres: {} replicas, {} agents", p.replicas, p.agents);
    let pgs = {
        let cps = start_replicas(
            ctx,
            &pdir,
            &url,
            p.replicas,
            &p.heartbeat,
            BENCH_ENROLL_LIMITS,
        )?;
        revoke_rounds(&cps, &p)?
    };
    let load2 = loadavg();
    header(
        "bench revoke --store postgres: revocation → last wipe ack, agents spread over PostgreSQL replicas, against sled in the same run",
        &ctx.command,
        &format!(
            "--store postgres --replicas {} --agents {} --rounds {} --heartbeat {} --parallel {}",
            p.replicas, p.agents, p.rounds, p.heartbeat, p.parallel
        ),
    );
    println!(
        "{} simulated agents (mTLS, one Sync stream each), on sled all on one control plane, on postgres agent i \
         on replica i mod {}. `Revoke {{all}}` on the first replica's admin socket; the time is from the call \
         until the last agent acknowledged it (on the generator's clock). Not pinned. Load average (1, 5, 15 \
         min): {load0} before sled, {load1} after sled, {load2} after postgres.",
        thousands(p.agents as u64),
        p.replicas
    );
    println!();
    let mut t = Table::new(&["store", "rounds", "p50", "p99", "max", "target", "met"]);
    for (name, s) in [("sled, 1 control plane", &sled), ("postgres", &pgs)] {
        t.row(vec![
            if name == "postgres" {
                format!("postgres, {} replicas", p.replicas)
            } else {
                name.into()
            },
            thousands(s.len() as u64),
            dur(s.p50()),
            dur(s.p99()),
            dur(s.max()),
            "p99 ≤ 150 ms".into(),
            met(s.p99() <= Duration::from_millis(150)),
        ]);
    }
    t.print();
    Ok(())
}

/// `cargo xtask bench failover`
#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// Simulated agents, spread over the replicas.
    #[arg(long, default_value_t = 200)]
    agents: usize,
    /// Control-plane replicas on the one PostgreSQL (the last one is killed).
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Kills measured (each on fresh replicas and a fresh database).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Enrollments in flight at once during set-up.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
}

pub fn failover(ctx: &Ctx, a: FailoverArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.agents > 0 && a.replicas >= 2 && a.rounds > 0 && a.parallel > 0,
        "--agents, --rounds and --parallel must be positive, --replicas at least 2"
    );
    let dir = tempfile::Builder::new()
        .prefix("leash-bench-failover-")
        .tempdir()?;
    let pg = start_pg()?;
    let mut caught = Samples::default();
    let mut served = Samples::default();
    let mut loads = Vec::new();
    let mut orphans = 0;
    for round in 1..=a.rounds {
        let rdir = dir.path().join(format!("round-{round}"));
        std::fs::create_dir_all(&rdir)?;
        let url = fresh_database(&pg, &rdir, &format!("failover_{round}"))?;
        let mut cps = start_replicas(ctx, &rdir, &url, a.replicas, "5s", BENCH_ENROLL_LIMITS)?;
        cps[0].add_credential(CREDENTIAL)?;
        cps[0].add_workload(WORKLOAD, UID, CREDENTIAL)?;
        let victim = a.replicas - 1;
        let homed: Vec<usize> = (0..a.agents).filter(|i| i % a.replicas == victim).collect();
        orphans = homed.len();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let (c, s) = rt.block_on(async {
            let mut ev = start_agents(&cps, a.agents, a.parallel).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            loads.push(loadavg());
            eprintln!(
                "round {round}/{}: kill -9 replica {victim} ({} agents on it)",
                a.rounds,
                homed.len()
            );
            let t0 = Instant::now();
            cps[victim].proc.kill9();
            let mut caught = vec![None; a.agents];
            let mut served = vec![None; a.agents];
            let mut left = homed.len();
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            while left > 0 {
                match tokio::time::timeout_at(deadline, ev.recv()).await {
                    Ok(Some(Ev::CaughtUp { agent, at })) if caught[agent].is_none() => {
                        caught[agent] = Some(at - t0);
                    }
                    Ok(Some(Ev::Served { agent, at })) if served[agent].is_none() => {
                        served[agent] = Some(at - t0);
                        left -= 1;
                    }
                    Ok(Some(Ev::Failed { agent, why })) => {
                        bail!("simulated agent {agent}: {why}")
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => bail!("every simulated agent is gone"),
                    Err(_) => bail!(
                        "only {}/{} agents of the killed replica served again within {TIMEOUT:?}",
                        homed.len() - left,
                        homed.len()
                    ),
                }
            }
            let pick = |v: &[Option<Duration>]| {
                let mut s = Samples::default();
                for i in &homed {
                    if let Some(d) = v[*i] {
                        s.push(d);
                    }
                }
                s
            };
            anyhow::Ok((pick(&caught), pick(&served)))
        })?;
        rt.shutdown_timeout(Duration::from_secs(1));
        cps[0].proc.check_alive()?;
        caught.extend(c);
        served.extend(s);
    }
    header(
        "bench failover: kill -9 of a replica → its agents serve again from another",
        &ctx.command,
        &format!(
            "--agents {} --replicas {} --rounds {} --parallel {}",
            a.agents, a.replicas, a.rounds, a.parallel
        ),
    );
    println!(
        "{} replicas on one PostgreSQL (durability on), {} simulated agents, agent i on replica i mod {} \
         (its address list: its own replica, then the others). Each round `kill -9` of the last replica \
         ({orphans} agents on it), on fresh replicas and a fresh database; the time is from the kill until \
         each of its agents has reconnected to another replica and resumed Sync from its sequence (caught \
         up), and until it has then been issued a credential (Issue answered). The simulated agents \
         reconnect as leash-agentd does (agentd/src/sync.rs: 200 ms plus up to 100 ms of jitter, doubling \
         while not synced). Load average (1, 5, 15 min) at each kill: {}.",
        a.replicas,
        thousands(a.agents as u64),
        a.replicas,
        loads.join("; ")
    );
    println!();
    let mut t = Table::new(&["kill -9 →", "agents", "p50", "p99", "max", "target", "met"]);
    t.row(vec![
        "reconnected and caught up".into(),
        thousands(caught.len() as u64),
        dur(caught.p50()),
        dur(caught.p99()),
        dur(caught.max()),
        "".into(),
        "".into(),
    ]);
    t.row(vec![
        "serving again (Issue answered)".into(),
        thousands(served.len() as u64),
        dur(served.p50()),
        dur(served.p99()),
        dur(served.max()),
        "p99 ≤ 5 s".into(),
        met(served.p99() <= Duration::from_secs(5)),
    ]);
    t.print();
    Ok(())
}
