//! `cargo xtask bench issue --store postgres [--replicas N]`: durable issuances/s with N
//! control-plane replicas on one throwaway PostgreSQL (`leash_tests::pg::Pg`, durability
//! on), next to one control plane on sled measured in the same run, alternately.
//!
//! Each replica has its own data directory and the same master key (copied from the
//! first one's), and `[store] kind = "postgres"` with a `url_file`. Every round uses a
//! fresh database. One simulated host enrolls on each replica (Sync stream open); the
//! concurrent callers are spread evenly across the replicas, so their batches race for
//! the store's global batch lock as a fleet's would.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use leash_proto::v1;
use leash_proto::v1::control_plane_client::ControlPlaneClient;
use leash_tests::pg::Pg;
use tonic::transport::Channel;

use super::procs::{cpu_time, ControlPlane};
use super::stats::{dur, header, met, rate, ratio, thousands, Samples, Table};
use super::{sim, Ctx};

const WORKLOAD: &str = "bench/issue";
const CREDENTIAL: &str = "bench-jwt";
const UID: u32 = 4242;
/// The login role that owns the store databases, and its password (a throwaway server).
const STORE_ROLE: &str = "leash_store";
const STORE_PW: &str = "leash-bench-store-pw";

/// What `bench issue --store postgres` is told.
pub struct Params {
    pub replicas: usize,
    pub requests: usize,
    pub warmup: usize,
    pub concurrency: usize,
    /// mTLS connections in all (spread across the replicas, at least one each).
    pub connections: usize,
    pub duration: u64,
    pub rounds: usize,
    /// Another build's binaries (`--baseline DIR`): its replicas are measured too, in
    /// each round, on a database of their own.
    pub baseline: Option<PathBuf>,
}

/// One store's figures in one round.
struct Run {
    c1: Samples,
    c1_elapsed: Duration,
    calls: u64,
    elapsed: Duration,
    lat: Samples,
    /// Calls answered by each replica.
    per_replica: Vec<u64>,
    /// CPU of all the control planes together.
    cp_cpu: Duration,
    gen_cpu: Duration,
    /// /proc/loadavg (1 min) before and after.
    load: (f64, f64),
}

impl Run {
    fn per_sec(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// A fresh database on `pg` owned by the store role; the URL in a 0600 file under `dir`.
fn store_database(pg: &Pg, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    pg.sql(
        "postgres",
        &format!("CREATE DATABASE {name} OWNER {STORE_ROLE}"),
    );
    let url_file = dir.join(format!("{name}.url"));
    std::fs::write(&url_file, pg.socket_url(STORE_ROLE, STORE_PW, name))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&url_file, std::fs::Permissions::from_mode(0o600))?;
    Ok(url_file)
}

/// The `[store]` table of a replica on the database of `url_file`.
pub fn store_table(url_file: &Path) -> String {
    format!(
        "[store]\nkind = \"postgres\"\nurl_file = {:?}\n",
        url_file.display().to_string()
    )
}

/// Start `n` replicas under `dir` on the database of `url_file`, every one with the
/// first one's master key. `extra` goes into each config before the `[store]` table.
pub fn start_replicas(
    ctx: &Ctx,
    dir: &Path,
    url_file: &Path,
    n: usize,
    heartbeat: &str,
    extra: &str,
) -> anyhow::Result<Vec<ControlPlane>> {
    let config = format!("{extra}\n{}", store_table(url_file));
    let mut cps: Vec<ControlPlane> = Vec::with_capacity(n);
    for i in 0..n {
        let rdir = dir.join(format!("replica-{i}"));
        std::fs::create_dir_all(&rdir)?;
        if let Some(first) = cps.first() {
            // Every replica unseals with the same master key.
            use std::os::unix::fs::PermissionsExt;
            let data = rdir.join("cp-data");
            std::fs::create_dir_all(&data)?;
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
            let from = first
                .admin_socket
                .with_file_name("cp-data")
                .join("master.key");
            std::fs::copy(&from, data.join("master.key"))
                .with_context(|| format!("copying the master key {}", from.display()))?;
        }
        cps.push(ControlPlane::start_configured(
            ctx, &rdir, None, heartbeat, &config,
        )?);
    }
    Ok(cps)
}

/// Start a throwaway PostgreSQL with durability on and the store role.
pub fn start_pg() -> anyhow::Result<Pg> {
    if let Err(e) = leash_tests::pg::bin_dir() {
        anyhow::bail!("--store postgres needs a PostgreSQL server: {e}");
    }
    eprintln!("starting PostgreSQL (durability on: fsync, synchronous_commit, full_page_writes)");
    let pg = Pg::start_with(&[]);
    pg.sql(
        "postgres",
        &format!("CREATE ROLE {STORE_ROLE} LOGIN PASSWORD '{STORE_PW}'"),
    );
    Ok(pg)
}

/// A fresh store database for one run (`leash_<tag>`), its URL file under `dir`.
pub fn fresh_database(pg: &Pg, dir: &Path, tag: &str) -> anyhow::Result<PathBuf> {
    store_database(pg, dir, &format!("leash_{tag}"))
}

pub fn run(ctx: &Ctx, p: Params) -> anyhow::Result<()> {
    anyhow::ensure!(
        p.replicas > 0 && p.rounds > 0 && p.connections > 0,
        "--replicas, --rounds and --connections must be positive"
    );
    let dir = tempfile::Builder::new()
        .prefix("leash-bench-issue-pg-")
        .tempdir()?;
    let pg = start_pg()?;
    let version = pg.sql("postgres", "SHOW server_version");
    let base = match &p.baseline {
        Some(d) => Some(ctx.baseline(d, &["leash-control-plane", "leashctl"])?),
        None => None,
    };
    let mut sled_runs = Vec::new();
    let mut pg_runs = Vec::new();
    let mut base_runs = Vec::new();
    for round in 1..=p.rounds {
        if let Some(base) = &base {
            eprintln!(
                "round {round}/{}: postgres, {} replica(s) of the baseline ({})",
                p.rounds,
                p.replicas,
                base.release.display()
            );
            let bdir = dir.path().join(format!("base-{round}"));
            std::fs::create_dir_all(&bdir)?;
            let url = fresh_database(&pg, &bdir, &format!("base_{round}"))?;
            let mut cps = start_replicas(base, &bdir, &url, p.replicas, "5s", "")?;
            base_runs.push(measure(&mut cps, &p)?);
        }
        eprintln!("round {round}/{}: sled, one control plane", p.rounds);
        let sdir = dir.path().join(format!("sled-{round}"));
        std::fs::create_dir_all(&sdir)?;
        let mut cps = vec![ControlPlane::start(ctx, &sdir, None)?];
        sled_runs.push(measure(&mut cps, &p)?);
        drop(cps);
        eprintln!(
            "round {round}/{}: postgres, {} replica(s)",
            p.rounds, p.replicas
        );
        let pdir = dir.path().join(format!("pg-{round}"));
        std::fs::create_dir_all(&pdir)?;
        let url = fresh_database(&pg, &pdir, &format!("issue_{round}"))?;
        let mut cps = start_replicas(ctx, &pdir, &url, p.replicas, "5s", "")?;
        pg_runs.push(measure(&mut cps, &p)?);
    }
    report(ctx, &p, &version, &sled_runs, &pg_runs, &base_runs);
    Ok(())
}

/// The median of `f` over `runs`.
fn median(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(ctx: &Ctx, p: &Params, version: &str, sled: &[Run], pg: &[Run], base: &[Run]) {
    header(
        "bench issue --store postgres: durable issuances/s on PostgreSQL replicas against sled, same run",
        &ctx.command,
        &format!(
            "--store postgres --replicas {} --requests {} --warmup {} --concurrency {} --connections {} --duration {} --rounds {}{}",
            p.replicas, p.requests, p.warmup, p.concurrency, p.connections, p.duration, p.rounds,
            p.baseline.as_ref().map(|d| format!(" --baseline {}", d.display())).unwrap_or_default()
        ),
    );
    println!(
        "PostgreSQL {version} on this machine (Unix socket; fsync, synchronous_commit and full_page_writes on). \
         Each round: one control plane on sled, then {} replica(s) on a fresh PostgreSQL database (same master \
         key). One simulated host per control plane (Sync stream open); {} callers in all, spread evenly over \
         {} mTLS connection(s) in all, call Issue for `{WORKLOAD}` / `{CREDENTIAL}` for {}s; every call writes \
         a lease and its event durably (group commit) and signs an ES256 JWT. Generator, control planes and \
         PostgreSQL share the machine's CPUs. Figures are medians over {} round(s).",
        p.replicas, p.concurrency, p.connections, p.duration, p.rounds
    );
    println!();
    let mut t = Table::new(&[
        "round",
        "store",
        "issuances/s",
        "p50",
        "p99",
        "per replica",
        "CP CPU / call",
        "generator CPU / call",
        "load avg (1 min) before → after",
    ]);
    for (i, (s, g)) in sled.iter().zip(pg).enumerate() {
        let mut stores = vec![("sled", s), ("postgres", g)];
        if let Some(b) = base.get(i) {
            stores.insert(1, ("postgres, baseline build", b));
        }
        for (name, r) in stores {
            t.row(vec![
                (i + 1).to_string(),
                name.into(),
                rate(r.per_sec()),
                dur(r.lat.p50()),
                dur(r.lat.p99()),
                r.per_replica
                    .iter()
                    .map(|n| thousands(*n))
                    .collect::<Vec<_>>()
                    .join(" / "),
                dur(r.cp_cpu / r.calls.max(1) as u32),
                dur(r.gen_cpu / r.calls.max(1) as u32),
                format!("{:.2} → {:.2}", r.load.0, r.load.1),
            ]);
        }
    }
    t.print();
    println!();
    let s_rate = median(sled, Run::per_sec);
    let g_rate = median(pg, Run::per_sec);
    let s_c1 = median(sled, |r| r.c1.p50().as_secs_f64());
    let g_c1 = median(pg, |r| r.c1.p50().as_secs_f64());
    let s_c1r = median(sled, |r| r.c1.len() as f64 / r.c1_elapsed.as_secs_f64());
    let g_c1r = median(pg, |r| r.c1.len() as f64 / r.c1_elapsed.as_secs_f64());
    let mut t = Table::new(&[
        "measurement (median)",
        "sled",
        "postgres",
        "postgres / sled",
        "target",
        "met",
    ]);
    t.row(vec![
        format!(
            "durable issuances/s, concurrency {}, {} replica(s) on postgres",
            p.concurrency, p.replicas
        ),
        rate(s_rate),
        rate(g_rate),
        ratio(g_rate, s_rate),
        if p.replicas >= 2 {
            "≥ 2,000/s with 2 replicas".into()
        } else {
            "".into()
        },
        if p.replicas >= 2 {
            met(g_rate >= 2000.0)
        } else {
            "".into()
        },
    ]);
    t.row(vec![
        format!("Issue p99 at concurrency {}", p.concurrency),
        dur(Duration::from_secs_f64(median(sled, |r| {
            r.lat.p99().as_secs_f64()
        }))),
        dur(Duration::from_secs_f64(median(pg, |r| {
            r.lat.p99().as_secs_f64()
        }))),
        ratio(
            median(pg, |r| r.lat.p99().as_secs_f64()),
            median(sled, |r| r.lat.p99().as_secs_f64()),
        ),
        "".into(),
        "".into(),
    ]);
    t.row(vec![
        "Issue p50, concurrency 1 (first replica)".into(),
        dur(Duration::from_secs_f64(s_c1)),
        dur(Duration::from_secs_f64(g_c1)),
        ratio(g_c1, s_c1),
        "".into(),
        "".into(),
    ]);
    t.row(vec![
        "Issue/s, concurrency 1 (sequential)".into(),
        rate(s_c1r),
        rate(g_c1r),
        ratio(g_c1r, s_c1r),
        "".into(),
        "".into(),
    ]);
    if !base.is_empty() {
        let b_rate = median(base, Run::per_sec);
        let b_c1 = median(base, |r| r.c1.p50().as_secs_f64());
        t.row(vec![
            format!(
                "postgres: this build / baseline build ({} vs {} issuances/s; c=1 p50 {} vs {})",
                rate(g_rate),
                rate(b_rate),
                dur(Duration::from_secs_f64(g_c1)),
                dur(Duration::from_secs_f64(b_c1))
            ),
            "".into(),
            ratio(g_rate, b_rate),
            "".into(),
            "".into(),
            "".into(),
        ]);
    }
    t.print();
}

/// A simulated host enrolled on one control plane: a client per connection.
struct Host {
    clients: Vec<ControlPlaneClient<Channel>>,
    drainer: tokio::task::JoinHandle<()>,
}

/// Enroll one host on each of `cps` (the first sets up the workload, which every
/// replica reads from the shared store), measure Issue at concurrency 1 on the first,
/// then `p.concurrency` callers spread across all of them.
fn measure(cps: &mut [ControlPlane], p: &Params) -> anyhow::Result<Run> {
    cps[0].add_credential(CREDENTIAL)?;
    cps[0].add_workload(WORKLOAD, UID, CREDENTIAL)?;
    let mut tokens = Vec::new();
    for (i, cp) in cps.iter().enumerate() {
        tokens.push(cp.join_token(&format!("bench-issue-host-{i}"))?);
    }
    let n = cps.len();
    let conns_each = p.connections.div_ceil(n).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let run = rt.block_on(async {
        let mut hosts = Vec::new();
        for (i, cp) in cps.iter().enumerate() {
            let ch = sim::enroll_channel(&cp.addr, &tokens[i]).await?;
            let cfg = sim::enroll_in_memory(
                ControlPlaneClient::new(ch),
                &tokens[i],
                &format!("bench-issue-host-{i}"),
            )
            .await?;
            let addrs = [cp.addr.clone()];
            let mut first =
                ControlPlaneClient::new(leash_agentd::tls::connect(&addrs, cfg.clone()).await?);
            let sync = sim::open_sync(&mut first).await?;
            let drainer = tokio::spawn(sim::drain(sync));
            let mut clients = vec![first];
            for _ in 1..conns_each {
                clients.push(ControlPlaneClient::new(
                    leash_agentd::tls::connect(&addrs, cfg.clone()).await?,
                ));
            }
            // The workload was made on the first replica: wait until this one sees it.
            let deadline = Instant::now() + Duration::from_secs(30);
            for c in &mut clients {
                loop {
                    match c.issue(request()).await {
                        Ok(r) => {
                            anyhow::ensure!(
                                !r.into_inner().token.is_empty(),
                                "Issue returned no token"
                            );
                            break;
                        }
                        Err(_) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => return Err(e).context(format!("first Issue on replica {i}")),
                    }
                }
            }
            hosts.push(Host { clients, drainer });
        }
        eprintln!("warm-up: {} Issue calls", p.warmup);
        let mut c = hosts[0].clients[0].clone();
        for _ in 0..p.warmup {
            c.issue(request()).await?;
        }
        eprintln!("concurrency 1: {} sequential Issue calls", p.requests);
        let mut c1 = Samples::with_capacity(p.requests);
        let c1_start = Instant::now();
        for _ in 0..p.requests {
            let t = Instant::now();
            c.issue(request()).await?;
            c1.push(t.elapsed());
        }
        let c1_elapsed = c1_start.elapsed();

        eprintln!(
            "concurrency {}: over {n} control plane(s), {conns_each} connection(s) each, for {}s",
            p.concurrency, p.duration
        );
        let pids: Vec<u32> = cps.iter().map(|c| c.proc.pid()).collect();
        let cp_cpu = || -> anyhow::Result<Duration> { pids.iter().map(|p| cpu_time(*p)).sum() };
        let cp0 = cp_cpu()?;
        let gen0 = cpu_time(std::process::id())?;
        let load0 = loadavg();
        let start = Instant::now();
        let end = start + Duration::from_secs(p.duration);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..p.concurrency {
            let (r, k) = (i % n, (i / n) % conns_each);
            let mut c = hosts[r].clients[k].clone();
            tasks.spawn(async move {
                let mut lat = Samples::with_capacity(4096);
                while Instant::now() < end {
                    let t = Instant::now();
                    c.issue(request()).await?;
                    lat.push(t.elapsed());
                }
                anyhow::Ok((r, lat))
            });
        }
        let mut lat = Samples::default();
        let mut per_replica = vec![0u64; n];
        while let Some(res) = tasks.join_next().await {
            let (r, l) = res??;
            per_replica[r] += l.len() as u64;
            lat.extend(l);
        }
        let elapsed = start.elapsed();
        let run = Run {
            c1,
            c1_elapsed,
            calls: lat.len() as u64,
            elapsed,
            lat,
            per_replica,
            cp_cpu: cp_cpu()?.saturating_sub(cp0),
            gen_cpu: cpu_time(std::process::id())?.saturating_sub(gen0),
            load: (load0, loadavg()),
        };
        for h in hosts {
            h.drainer.abort();
        }
        anyhow::Ok(run)
    })?;
    drop(rt);
    for cp in cps {
        cp.proc.check_alive()?;
    }
    Ok(run)
}

fn request() -> v1::IssueRequest {
    v1::IssueRequest {
        workload: WORKLOAD.into(),
        credential: CREDENTIAL.into(),
        attested: Some(sim::attested(UID)),
        ..Default::default()
    }
}
