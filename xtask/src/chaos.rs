//! `cargo xtask chaos kill`: kill the control plane with SIGKILL under load, many times,
//! and check after every restart that nothing it acknowledged was lost.
//!
//! The load runs through real enrolled agents (the debug binaries, or the release ones
//! with `--release`, started with the bench's process management): callers ask the agents for fresh credentials (each a new
//! Issue at the control plane), and an admin client revokes issued leases one at a time
//! over the admin socket. Only answers the caller received count as acknowledged. At a
//! seeded random moment the control plane is killed while the load runs, the load is
//! stopped, and the control plane is started again on the same data dir and address.
//! Then:
//!
//! - every acknowledged lease is in the store, `revoked` if its revocation was
//!   acknowledged, `active` if it was never revoked (a revocation that was sent but not
//!   acknowledged may or may not have been recorded: either state is accepted);
//! - a marker revocation is made, and every agent's `last_seq` must reach its sequence
//!   number (the agents caught up with everything before it);
//! - what each agent serves from its cache is not a revoked lease, and introspection of
//!   every token whose revocation was acknowledged (each at least in the round after its
//!   revocation) says inactive.
//!
//! Anything missing or wrong is counted as lost; the run fails if that is not zero.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use leash_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

use crate::bench::procs::{Agent, ControlPlane};
use crate::bench::{cargo, run_cmd, Ctx};

const WORKLOAD: &str = "chaos/load";
const CREDENTIAL: &str = "chaos-jwt";
/// Longest any one call may take before the load or a check gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a check waits for the control plane or an agent to come back.
const RECOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// `cargo xtask chaos …`
#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    #[command(subcommand)]
    cmd: ChaosCmd,
}

#[derive(Debug, clap::Subcommand)]
enum ChaosCmd {
    /// SIGKILL the control plane under issue and revoke load, restart it, check that
    /// nothing acknowledged was lost; many times.
    Kill(KillArgs),
}

/// `cargo xtask chaos kill`
#[derive(Debug, clap::Args)]
pub struct KillArgs {
    /// Kill and restart this many times.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// Seed of the kill moments and revocation picks (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Enrolled agents issuing credentials.
    #[arg(long, default_value_t = 2)]
    agents: usize,
    /// Concurrent callers per agent, each asking for fresh credentials in a loop.
    #[arg(long, default_value_t = 2)]
    callers: usize,
    /// Pause of each caller between requests, in ms (keeps the store's lease list, which
    /// every check reads in one answer, within the message size limit).
    #[arg(long, default_value_t = 20)]
    pace_ms: u64,
    /// Shortest load before a kill, in ms.
    #[arg(long, default_value_t = 300)]
    min_ms: u64,
    /// Longest load before a kill, in ms.
    #[arg(long, default_value_t = 2500)]
    max_ms: u64,
    /// Use the binaries in target/debug (or target/release) as they are (no `cargo build`).
    #[arg(long)]
    no_build: bool,
    /// Run the release binaries (built first unless --no-build) instead of the debug ones.
    #[arg(long)]
    release: bool,
}

/// Run a chaos task.
pub fn run(args: ChaosArgs) -> anyhow::Result<()> {
    match args.cmd {
        ChaosCmd::Kill(a) => kill(a),
    }
}

/// splitmix64: a seeded, reproducible source of kill moments and picks.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi.saturating_sub(lo) + 1)
    }
}

/// One acknowledged issuance. The token stays in memory only (introspection needs it).
#[derive(Debug, Clone)]
struct Issued {
    lease: String,
    token: String,
}

/// What the control plane acknowledged, as the callers saw it.
#[derive(Debug, Default)]
struct Ledger {
    issued: Vec<Issued>,
    /// Lease ids whose revocation was sent (acknowledged or not).
    revoke_sent: HashSet<String>,
    /// Acknowledged revocations: lease id -> (sequence number, round acknowledged in).
    revoked: HashMap<String, (u64, usize)>,
    /// Issue and Revoke calls that failed (not acknowledged): not checked, just counted.
    failed_issues: u64,
    failed_revokes: u64,
}

type Shared = Arc<Mutex<Ledger>>;

fn lock(l: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

async fn agent_client(socket: &Path) -> anyhow::Result<AgentClient<Channel>> {
    let ch = leash_proto::uds::connect(socket).await?;
    Ok(AgentClient::new(ch).max_decoding_message_size(leash_proto::MAX_MESSAGE_BYTES))
}

async fn admin_client(socket: &Path) -> anyhow::Result<AdminClient<Channel>> {
    let ch = leash_proto::uds::connect(socket).await?;
    Ok(AdminClient::new(ch).max_decoding_message_size(leash_proto::MAX_MESSAGE_BYTES))
}

fn fetch_req(fresh: bool) -> v1::FetchRequest {
    v1::FetchRequest {
        credential: CREDENTIAL.into(),
        fresh,
        ..Default::default()
    }
}

fn revoke_req(lease: &str, why: &str) -> v1::RevokeRequest {
    v1::RevokeRequest {
        target: Some(v1::RevocationTargetSpec {
            target: Some(v1::revocation_target_spec::Target::Lease(lease.to_string())),
        }),
        reason: why.to_string(),
    }
}

/// A caller: fresh credentials from one agent, in a loop, until `stop`.
async fn caller(socket: PathBuf, ledger: Shared, stop: Arc<AtomicBool>, pace: Duration) {
    let mut client = None;
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            client = agent_client(&socket).await.ok();
        }
        let Some(c) = client.as_mut() else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        match tokio::time::timeout(CALL_TIMEOUT, c.fetch(fetch_req(true))).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                lock(&ledger).issued.push(Issued {
                    lease: r.lease_id,
                    token: r.token,
                });
            }
            _ => {
                lock(&ledger).failed_issues += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        tokio::time::sleep(pace).await;
    }
}

/// The revoker: revokes a random issued lease (never one twice) in a loop, until `stop`.
async fn revoker(
    admin: PathBuf,
    ledger: Shared,
    stop: Arc<AtomicBool>,
    mut rng: Rng,
    round: usize,
) {
    let mut client = None;
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            client = admin_client(&admin).await.ok();
        }
        let pick = {
            let mut l = lock(&ledger);
            let n = l.issued.len() as u64;
            let mut pick = None;
            for _ in 0..8 {
                if n == 0 {
                    break;
                }
                let id = l.issued[(rng.next() % n) as usize].lease.clone();
                if !l.revoke_sent.contains(&id) {
                    pick = Some(id);
                    break;
                }
            }
            if let Some(id) = &pick {
                l.revoke_sent.insert(id.clone());
            }
            pick
        };
        let (Some(id), Some(c)) = (pick, client.as_mut()) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        match tokio::time::timeout(CALL_TIMEOUT, c.revoke(revoke_req(&id, "chaos"))).await {
            Ok(Ok(r)) => {
                lock(&ledger)
                    .revoked
                    .insert(id, (r.into_inner().seq, round));
            }
            _ => {
                lock(&ledger).failed_revokes += 1;
                client = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// Retry `f` until it succeeds or [`RECOVER_TIMEOUT`] passes.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + RECOVER_TIMEOUT;
    loop {
        match tokio::time::timeout(CALL_TIMEOUT, f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if Instant::now() >= deadline => return Err(e.context(what.to_string())),
            Err(_) if Instant::now() >= deadline => bail!("{what}: timed out"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// What one round's checks found.
#[derive(Debug, Default)]
struct Found {
    leases_checked: u64,
    revocations_checked: u64,
    introspected: u64,
    lost: Vec<String>,
    catch_up: Duration,
}

/// The checks after a restart. See the module doc.
async fn check(
    cp: &ControlPlane,
    agents: &[Agent],
    ledger: &Shared,
    round: usize,
) -> anyhow::Result<Found> {
    let mut found = Found::default();
    let admin_socket = cp.admin_socket.clone();
    let mut admin = retry("connect to the admin socket", || {
        admin_client(&admin_socket)
    })
    .await?;

    // 1. Every acknowledged lease and revocation is in the store, in the right state.
    let leases = retry("list leases", || {
        let mut a = admin.clone();
        async move {
            Ok(a.list_leases(v1::ListLeasesRequest {
                workload: String::new(),
                active_only: false,
            })
            .await?
            .into_inner()
            .leases)
        }
    })
    .await?;
    let state: HashMap<String, String> = leases.into_iter().map(|l| (l.id, l.state)).collect();
    let (issued, revoked, sent) = {
        let l = lock(ledger);
        (l.issued.clone(), l.revoked.clone(), l.revoke_sent.clone())
    };
    for i in &issued {
        found.leases_checked += 1;
        let got = state.get(&i.lease).map(String::as_str);
        let ok = match (got, revoked.contains_key(&i.lease), sent.contains(&i.lease)) {
            (None, _, _) => false,
            (Some(s), true, _) => s == "revoked",
            (Some(s), false, true) => s == "revoked" || s == "active",
            (Some(s), false, false) => s == "active",
        };
        if !ok {
            found.lost.push(format!(
                "lease {}: state {:?}, revocation acknowledged: {}",
                i.lease,
                got,
                revoked.contains_key(&i.lease)
            ));
        }
    }
    found.revocations_checked = revoked.len() as u64;

    // 2. A marker revocation; every agent must reach its sequence number.
    let sock0 = agents[0].socket.clone();
    let marker = retry("a fresh credential after the restart", || {
        let s = sock0.clone();
        async move {
            Ok(agent_client(&s)
                .await?
                .fetch(fetch_req(true))
                .await?
                .into_inner())
        }
    })
    .await?;
    let seq = retry("the marker revocation", || {
        let mut a = admin.clone();
        let id = marker.lease_id.clone();
        async move {
            Ok(a.revoke(revoke_req(&id, "chaos marker"))
                .await?
                .into_inner()
                .seq)
        }
    })
    .await?;
    {
        let mut l = lock(ledger);
        l.issued.push(Issued {
            lease: marker.lease_id.clone(),
            token: marker.token.clone(),
        });
        l.revoke_sent.insert(marker.lease_id.clone());
        l.revoked.insert(marker.lease_id.clone(), (seq, round));
    }
    let t0 = Instant::now();
    for (i, a) in agents.iter().enumerate() {
        let s = a.socket.clone();
        let reached = retry(&format!("agent {i} catches up to sequence {seq}"), || {
            let s = s.clone();
            async move {
                let st = agent_client(&s)
                    .await?
                    .status(v1::StatusRequest {})
                    .await?
                    .into_inner();
                if st.last_seq < seq {
                    bail!(
                        "agent {i} is at sequence {} (state {})",
                        st.last_seq,
                        st.state
                    );
                }
                Ok(st.last_seq)
            }
        })
        .await;
        if let Err(e) = reached {
            found.lost.push(format!("{e:#}"));
        }
    }
    found.catch_up = t0.elapsed();

    // 3. Nothing revoked is served: each agent's cached answer is a live lease...
    let revoked_now: HashSet<String> = lock(ledger).revoked.keys().cloned().collect();
    for (i, a) in agents.iter().enumerate() {
        let s = a.socket.clone();
        let got = retry(&format!("a credential from agent {i}"), || {
            let s = s.clone();
            async move {
                Ok(agent_client(&s)
                    .await?
                    .fetch(fetch_req(false))
                    .await?
                    .into_inner())
            }
        })
        .await?;
        if revoked_now.contains(&got.lease_id) {
            found.lost.push(format!(
                "agent {i} served lease {}, whose revocation was acknowledged",
                got.lease_id
            ));
        }
        let detail = admin
            .get_lease(v1::NameRequest {
                name: got.lease_id.clone(),
            })
            .await
            .context("GetLease")?
            .into_inner();
        let st = detail.lease.map(|l| l.state).unwrap_or_default();
        if st != "active" {
            found.lost.push(format!(
                "agent {i} served lease {} in state {st:?}",
                got.lease_id
            ));
        }
        if !got.cached {
            lock(ledger).issued.push(Issued {
                lease: got.lease_id,
                token: got.token,
            });
        }
    }
    // ... and introspection of what was revoked says inactive: every revocation of this
    // round (and the one before: acknowledged answers may land after a check started).
    let tokens: HashMap<String, String> = issued
        .iter()
        .map(|i| (i.lease.clone(), i.token.clone()))
        .chain(std::iter::once((
            marker.lease_id.clone(),
            marker.token.clone(),
        )))
        .collect();
    let recent: Vec<(String, String)> = {
        let l = lock(ledger);
        l.revoked
            .iter()
            .filter(|(_, (_, r))| *r + 1 >= round)
            .filter_map(|(id, _)| tokens.get(id).map(|t| (id.clone(), t.clone())))
            .collect()
    };
    for (id, token) in recent {
        let r = admin
            .introspect(v1::IntrospectRequest { token })
            .await
            .context("Introspect")?
            .into_inner();
        found.introspected += 1;
        if r.active {
            found
                .lost
                .push(format!("introspection says revoked lease {id} is active"));
        }
    }
    Ok(found)
}

fn kill(a: KillArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.rounds > 0 && a.agents > 0 && a.callers > 0,
        "--rounds, --agents and --callers must be at least 1"
    );
    anyhow::ensure!(a.min_ms <= a.max_ms, "--min-ms must not exceed --max-ms");
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    if !a.no_build {
        if a.release {
            crate::bench::build_release_binaries()?;
        } else {
            let mut b = cargo();
            b.args(["build", "--workspace", "--bins"]);
            run_cmd(b)?;
        }
    }
    let command = format!(
        "cargo xtask chaos kill --rounds {} --seed {seed} --agents {} --callers {} --pace-ms {} --min-ms {} --max-ms {}{}",
        a.rounds,
        a.agents,
        a.callers,
        a.pace_ms,
        a.min_ms,
        a.max_ms,
        if a.release { " --release" } else { "" }
    );
    let ctx = Ctx::profile(if a.release { "release" } else { "debug" }, command.clone())?;
    let dir = tempfile::Builder::new().prefix("leash-chaos-").tempdir()?;
    let mut cp = ControlPlane::start_with(&ctx, dir.path(), None, "1s")?;
    cp.add_credential(CREDENTIAL)?;
    cp.add_workload(WORKLOAD, nix::unistd::geteuid().as_raw(), CREDENTIAL)?;
    let mut agents = Vec::new();
    for i in 0..a.agents {
        let d = dir.path().join(format!("agent-{i}"));
        std::fs::create_dir_all(&d)?;
        agents.push(Agent::start(&ctx, &cp, &d, &format!("chaos-{i}"))?);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ledger: Shared = Arc::default();
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut totals = Found::default();
    let mut restart_time = Duration::ZERO;
    let mut catch_up_max = Duration::ZERO;
    for round in 0..a.rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for ag in &agents {
            for _ in 0..a.callers {
                tasks.push(rt.spawn(caller(
                    ag.socket.clone(),
                    ledger.clone(),
                    stop.clone(),
                    Duration::from_millis(a.pace_ms),
                )));
            }
        }
        tasks.push(rt.spawn(revoker(
            cp.admin_socket.clone(),
            ledger.clone(),
            stop.clone(),
            Rng(rng.next()),
            round,
        )));
        let load = Duration::from_millis(rng.between(a.min_ms, a.max_ms));
        std::thread::sleep(load);
        // Kill under load, then stop the load: what is in flight fails or was answered.
        cp.proc.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            rt.block_on(t).context("a load task panicked")?;
        }
        let t0 = Instant::now();
        cp.restart(&ctx)?;
        restart_time += t0.elapsed();
        let found = rt.block_on(check(&cp, &agents, &ledger, round))?;
        let (issued, revoked) = {
            let l = lock(&ledger);
            (l.issued.len(), l.revoked.len())
        };
        eprintln!(
            "round {}/{}: killed after {} ms; {} leases and {} revocations acknowledged so far; catch-up {} ms; lost {}",
            round + 1,
            a.rounds,
            load.as_millis(),
            issued,
            revoked,
            found.catch_up.as_millis(),
            found.lost.len()
        );
        for l in &found.lost {
            eprintln!("  LOST: {l}");
        }
        catch_up_max = catch_up_max.max(found.catch_up);
        totals.leases_checked += found.leases_checked;
        totals.revocations_checked += found.revocations_checked;
        totals.introspected += found.introspected;
        totals.lost.extend(found.lost);
    }
    let elapsed = started.elapsed();
    let l = lock(&ledger);
    println!("## kill -9 under load\n");
    println!("`{command}`\n");
    println!("| rounds | acknowledged issues | acknowledged revocations | lease checks | revocation checks | introspections | failed (unacknowledged) issues / revokes | lost | max agent catch-up | mean restart | time |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {} / {} | {} | {} ms | {} ms | {:.1} s |",
        a.rounds,
        l.issued.len(),
        l.revoked.len(),
        totals.leases_checked,
        totals.revocations_checked,
        totals.introspected,
        l.failed_issues,
        l.failed_revokes,
        totals.lost.len(),
        catch_up_max.as_millis(),
        (restart_time / a.rounds as u32).as_millis(),
        elapsed.as_secs_f64()
    );
    if !totals.lost.is_empty() {
        bail!(
            "{} acknowledged operation(s) lost or wrong; rerun with --seed {seed}",
            totals.lost.len()
        );
    }
    Ok(())
}
