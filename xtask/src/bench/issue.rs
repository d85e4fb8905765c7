//! `cargo xtask bench issue`: Issue over mTLS against a real control plane, as an agent
//! makes it, with the raw sled insert+flush rate on the same disk for reference.

use std::time::{Duration, Instant};

use anyhow::Context;
use leash_proto::v1;
use leash_proto::v1::control_plane_client::ControlPlaneClient;

use super::procs::{cpu_time, ControlPlane};
use super::stats::{dur, header, met, rate, ratio, thousands, Samples, Table};
use super::{sim, Ctx};

/// The uid the simulated callers are attested as (any uid: nothing checks it locally).
const UID: u32 = 4242;
const WORKLOAD: &str = "bench/issue";
const CREDENTIAL: &str = "bench-jwt";
/// Size of one record in the sled reference: about a lease plus its `issued` event.
const RECORD_BYTES: usize = 1024;
/// Inserts per flush in the batched sled reference.
const SLED_BATCH: usize = 32;

/// `cargo xtask bench issue`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Sequential Issue calls measured at concurrency 1, after the warm-up.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Issue calls made before anything is measured.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Concurrent callers in the throughput runs.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// mTLS connections the concurrent callers share; one throughput run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    connections: Vec<usize>,
    /// Length of each throughput run, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Single insert+flush samples in the sled reference.
    #[arg(long, default_value_t = 500)]
    sled_flushes: usize,
    /// Batches (of 32 inserts + 1 flush) in the sled reference.
    #[arg(long, default_value_t = 200)]
    sled_batches: usize,
    /// A directory holding `leash-control-plane` and `leashctl` from another build (for
    /// example a checkout of an older commit built with `cargo build --release`). Both
    /// builds are then measured in this run, alternating, and their throughput compared
    /// (with --store postgres: the other build's replicas on PostgreSQL).
    #[arg(long, value_name = "DIR")]
    baseline: Option<std::path::PathBuf>,
    /// With --baseline or --store postgres: how many times each build or store is
    /// measured (alternating).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where the control plane keeps its state: `sled` (one control plane) or `postgres`
    /// (--replicas control planes on one throwaway PostgreSQL, measured against one on
    /// sled in the same run).
    #[arg(long, default_value = "sled", value_parser = ["sled", "postgres"])]
    store: String,
    /// With --store postgres: control-plane replicas on the one database.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
}

/// What one control plane build did.
struct Measured {
    c1: Samples,
    c1_elapsed: Duration,
    runs: Vec<Throughput>,
}

struct Throughput {
    connections: usize,
    calls: u64,
    elapsed: Duration,
    lat: Samples,
    cp_cpu: Duration,
    gen_cpu: Duration,
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.requests > 0 && a.concurrency > 0 && a.duration > 0,
        "counts must be positive"
    );
    anyhow::ensure!(
        a.connections.iter().all(|c| *c > 0),
        "--connections must be positive"
    );
    if a.store == "postgres" {
        return super::issue_pg::run(
            ctx,
            super::issue_pg::Params {
                replicas: a.replicas,
                requests: a.requests,
                warmup: a.warmup,
                concurrency: a.concurrency,
                connections: a.connections.iter().copied().max().unwrap_or(1),
                duration: a.duration,
                rounds: a.rounds,
                baseline: a.baseline.clone(),
            },
        );
    }
    if let Some(base) = &a.baseline {
        return compare(ctx, &a, base);
    }
    let dir = tempfile::Builder::new()
        .prefix("leash-bench-issue-")
        .tempdir()?;
    eprintln!("control plane: {}", ctx.release.display());
    let Measured {
        c1,
        c1_elapsed,
        runs,
    } = measure(ctx, &a, dir.path())?;

    eprintln!(
        "sled reference: {} single insert+flush, {} batches of {SLED_BATCH} inserts + 1 flush",
        a.sled_flushes, a.sled_batches
    );
    let sled = sled_reference(dir.path(), a.sled_flushes, a.sled_batches)?;

    header(
        "bench issue: Issue over mTLS against a real control plane",
        &ctx.command,
        &format!(
            "--requests {} --warmup {} --concurrency {} --connections {} --duration {} --sled-flushes {} --sled-batches {}",
            a.requests,
            a.warmup,
            a.concurrency,
            a.connections.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","),
            a.duration,
            a.sled_flushes,
            a.sled_batches
        ),
    );
    println!(
        "One simulated host (enrolled with `leash_agentd::identity::enroll`, Sync stream open) calls Issue \
         for workload `{WORKLOAD}` / credential `{CREDENTIAL}`; every call writes a lease and an event \
         durably (group commit) and signs an ES256 JWT. Generator and control plane share the machine's CPUs."
    );
    println!();
    let mut t = Table::new(&[
        "measurement",
        "calls",
        "p50",
        "p99",
        "throughput",
        "CP CPU / call",
        "generator CPU / call",
    ]);
    t.row(vec![
        "Issue, concurrency 1 (sequential)".into(),
        thousands(c1.len() as u64),
        dur(c1.p50()),
        dur(c1.p99()),
        rate(c1.len() as f64 / c1_elapsed.as_secs_f64()),
        "".into(),
        "".into(),
    ]);
    for r in &runs {
        t.row(vec![
            format!(
                "Issue, concurrency {} over {} connection(s), {}s",
                a.concurrency, r.connections, a.duration
            ),
            thousands(r.calls),
            dur(r.lat.p50()),
            dur(r.lat.p99()),
            rate(r.calls as f64 / r.elapsed.as_secs_f64()),
            dur(r.cp_cpu / r.calls.max(1) as u32),
            dur(r.gen_cpu / r.calls.max(1) as u32),
        ]);
    }
    t.row(vec![
        format!("sled reference: 1 insert ({RECORD_BYTES} B) + flush"),
        thousands(sled.single.len() as u64),
        dur(sled.single.p50()),
        dur(sled.single.p99()),
        format!(
            "{} durable writes",
            rate(1.0 / sled.single.p50().as_secs_f64())
        ),
        "".into(),
        "".into(),
    ]);
    t.row(vec![
        format!("sled reference: {SLED_BATCH} inserts ({RECORD_BYTES} B) + 1 flush, per batch"),
        thousands(sled.batched.len() as u64),
        dur(sled.batched.p50()),
        dur(sled.batched.p99()),
        format!("{} durable records", rate(sled.batched_records_per_sec)),
        "".into(),
        "".into(),
    ]);
    t.print();
    println!();

    let best = runs
        .iter()
        .map(|r| r.calls as f64 / r.elapsed.as_secs_f64())
        .fold(0.0, f64::max);
    let one_conn = runs
        .iter()
        .find(|r| r.connections == 1)
        .map(|r| r.calls as f64 / r.elapsed.as_secs_f64());
    let mut t = Table::new(&["check", "measured", "target / baseline", "met"]);
    t.row(vec![
        "Issue p99 at concurrency 1".into(),
        dur(c1.p99()),
        "≤ 5 ms".into(),
        met(c1.p99() <= Duration::from_millis(5)),
    ]);
    if let Some(r) = one_conn {
        t.row(vec![
            format!(
                "durable issuances/s at concurrency {}, one connection (one host)",
                a.concurrency
            ),
            rate(r),
            "≥ 2,000/s".into(),
            met(r >= 2000.0),
        ]);
    }
    t.row(vec![
        format!(
            "durable issuances/s at concurrency {}, best run",
            a.concurrency
        ),
        rate(best),
        "≥ 2,000/s".into(),
        met(best >= 2000.0),
    ]);
    t.row(vec![
        "Issue p50 (c=1) / sled 1 insert+flush p50".into(),
        ratio(c1.p50().as_secs_f64(), sled.single.p50().as_secs_f64()),
        format!("{} vs {}", dur(c1.p50()), dur(sled.single.p50())),
        "".into(),
    ]);
    t.row(vec![
        format!(
            "issuances/s (c={}, best) / sled batched records/s",
            a.concurrency
        ),
        ratio(best, sled.batched_records_per_sec),
        format!("{} vs {}", rate(best), rate(sled.batched_records_per_sec)),
        "".into(),
    ]);
    t.row(vec![
        format!(
            "issuances/s (c={}, best) / sled single insert+flush/s",
            a.concurrency
        ),
        ratio(best, 1.0 / sled.single.p50().as_secs_f64()),
        format!(
            "{} vs {} (above 1× only if flushes are shared)",
            rate(best),
            rate(1.0 / sled.single.p50().as_secs_f64())
        ),
        "".into(),
    ]);
    // Generator and control plane share the CPUs: the CPU they spend per call bounds
    // the rate whatever the disk does.
    if let Some(r) = runs.iter().max_by(|x, y| x.calls.cmp(&y.calls)) {
        let per_call = (r.cp_cpu + r.gen_cpu).as_secs_f64() / r.calls.max(1) as f64;
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        if per_call > 0.0 {
            t.row(vec![
                format!(
                    "issuances/s (c={}, best) / CPU ceiling (CPUs ÷ CPU per call, control plane + generator)",
                    a.concurrency
                ),
                ratio(best, cpus / per_call),
                format!("{} vs {}", rate(best), rate(cpus / per_call)),
                "".into(),
            ]);
        }
    }
    t.print();
    Ok(())
}

/// Start a control plane from `ctx`'s binaries under `dir`, enroll one simulated host
/// and measure Issue at concurrency 1 and at `--concurrency`.
fn measure(ctx: &Ctx, a: &Args, dir: &std::path::Path) -> anyhow::Result<Measured> {
    let mut cp = ControlPlane::start(ctx, dir, None)?;
    cp.add_credential(CREDENTIAL)?;
    cp.add_workload(WORKLOAD, UID, CREDENTIAL)?;
    let token = cp.join_token("bench-issue-host")?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ((c1, c1_elapsed), runs) = rt.block_on(async {
        // One simulated host, enrolled exactly as leash-agentd enrolls.
        let state = dir.join("host-state");
        leash_agentd::identity::prepare_state_dir(&state)?;
        let id = leash_agentd::identity::enroll(
            &state,
            &[cp.addr.clone()],
            &token,
            Some("bench-issue-host".into()),
            None,
            Default::default(),
        )
        .await
        .context("enrolling the simulated host")?;
        let cfg = id.client_config()?;
        let addrs = [cp.addr.clone()];
        let connect = || leash_agentd::tls::connect(&addrs, cfg.clone());
        let mut client = ControlPlaneClient::new(connect().await?);
        let sync = sim::open_sync(&mut client).await?;
        let drainer = tokio::spawn(sim::drain(sync));

        let req = request();
        let first = client
            .issue(req.clone())
            .await
            .context("first Issue")?
            .into_inner();
        anyhow::ensure!(!first.token.is_empty(), "Issue returned no token");
        eprintln!("warm-up: {} Issue calls", a.warmup);
        for _ in 0..a.warmup {
            client.issue(req.clone()).await?;
        }

        eprintln!("concurrency 1: {} sequential Issue calls", a.requests);
        let mut c1 = Samples::with_capacity(a.requests);
        let c1_start = Instant::now();
        for _ in 0..a.requests {
            let t = Instant::now();
            client.issue(req.clone()).await?;
            c1.push(t.elapsed());
        }
        let c1_elapsed = c1_start.elapsed();

        let mut runs = Vec::new();
        for &conns in &a.connections {
            eprintln!(
                "concurrency {}: {} callers over {conns} mTLS connection(s) for {}s",
                a.concurrency, a.concurrency, a.duration
            );
            let mut clients = Vec::new();
            for _ in 0..conns {
                clients.push(ControlPlaneClient::new(connect().await?));
            }
            // Warm the new connections.
            for c in &mut clients {
                c.issue(req.clone()).await?;
            }
            let cp_cpu0 = cpu_time(cp.proc.pid())?;
            let gen_cpu0 = cpu_time(std::process::id())?;
            let start = Instant::now();
            let end = start + Duration::from_secs(a.duration);
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..a.concurrency {
                let mut c = clients[i % conns].clone();
                let req = req.clone();
                tasks.spawn(async move {
                    let mut lat = Samples::with_capacity(4096);
                    while Instant::now() < end {
                        let t = Instant::now();
                        c.issue(req.clone()).await?;
                        lat.push(t.elapsed());
                    }
                    anyhow::Ok(lat)
                });
            }
            let mut lat = Samples::default();
            while let Some(r) = tasks.join_next().await {
                lat.extend(r??);
            }
            let elapsed = start.elapsed();
            runs.push(Throughput {
                connections: conns,
                calls: lat.len() as u64,
                elapsed,
                lat,
                cp_cpu: cpu_time(cp.proc.pid())?.saturating_sub(cp_cpu0),
                gen_cpu: cpu_time(std::process::id())?.saturating_sub(gen_cpu0),
            });
        }
        drainer.abort();
        anyhow::Ok(((c1, c1_elapsed), runs))
    })?;
    cp.proc.check_alive()?;
    drop(rt);
    drop(cp);
    Ok(Measured {
        c1,
        c1_elapsed,
        runs,
    })
}

/// Measure the baseline build and this one alternately, `--rounds` times each, and
/// compare their throughput.
fn compare(ctx: &Ctx, a: &Args, base_dir: &std::path::Path) -> anyhow::Result<()> {
    anyhow::ensure!(a.rounds > 0, "--rounds must be positive");
    let base = ctx.baseline(base_dir, &["leash-control-plane", "leashctl"])?;
    let mut figures: Vec<(&str, Vec<Measured>)> =
        vec![("baseline", vec![]), ("this build", vec![])];
    for round in 1..=a.rounds {
        for (i, which) in [&base, ctx].into_iter().enumerate() {
            eprintln!(
                "round {round}/{}: {} ({})",
                a.rounds,
                figures[i].0,
                which.release.display()
            );
            let dir = tempfile::Builder::new()
                .prefix("leash-bench-issue-")
                .tempdir()?;
            figures[i].1.push(measure(which, a, dir.path())?);
        }
    }
    header(
        "bench issue --baseline: this build's Issue throughput against another build's, same run",
        &ctx.command,
        &format!(
            "--requests {} --warmup {} --concurrency {} --connections {} --duration {} --rounds {}; baseline: {}",
            a.requests,
            a.warmup,
            a.concurrency,
            a.connections.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","),
            a.duration,
            a.rounds,
            base_dir.display()
        ),
    );
    println!(
        "The two builds run alternately ({} rounds each) on the same machine; each row gives the median over the rounds.",
        a.rounds
    );
    println!();
    // The median over the rounds of `f`, for the baseline and for this build.
    let both = |f: &dyn Fn(&Measured) -> f64| {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        (
            median(figures[0].1.iter().map(f).collect()),
            median(figures[1].1.iter().map(f).collect()),
        )
    };
    let mut t = Table::new(&[
        "measurement",
        "baseline",
        "this build",
        "this build / baseline",
        "target",
        "met",
    ]);
    let c1 = |m: &Measured| m.c1.len() as f64 / m.c1_elapsed.as_secs_f64();
    let p99 = |m: &Measured| m.c1.p99().as_secs_f64();
    let (b, n) = both(&c1);
    t.row(vec![
        "Issue/s, concurrency 1 (sequential)".into(),
        rate(b),
        rate(n),
        ratio(n, b),
        "≥ 0.90×".into(),
        met(n >= 0.9 * b),
    ]);
    let (b, n) = both(&p99);
    t.row(vec![
        "Issue p99, concurrency 1".into(),
        dur(Duration::from_secs_f64(b)),
        dur(Duration::from_secs_f64(n)),
        ratio(n, b),
        "".into(),
        "".into(),
    ]);
    for (k, conns) in a.connections.iter().enumerate() {
        let per_sec = |m: &Measured| m.runs[k].calls as f64 / m.runs[k].elapsed.as_secs_f64();
        let (b, n) = both(&per_sec);
        t.row(vec![
            format!(
                "Issue/s, concurrency {} over {conns} connection(s), {}s",
                a.concurrency, a.duration
            ),
            rate(b),
            rate(n),
            ratio(n, b),
            "≥ 0.90×".into(),
            met(n >= 0.9 * b),
        ]);
        let cpu = |m: &Measured| m.runs[k].cp_cpu.as_secs_f64() / m.runs[k].calls.max(1) as f64;
        let (b, n) = both(&cpu);
        t.row(vec![
            format!("control-plane CPU per Issue, {conns} connection(s)"),
            dur(Duration::from_secs_f64(b)),
            dur(Duration::from_secs_f64(n)),
            ratio(n, b),
            "".into(),
            "".into(),
        ]);
    }
    t.print();
    Ok(())
}

fn request() -> v1::IssueRequest {
    v1::IssueRequest {
        workload: WORKLOAD.into(),
        credential: CREDENTIAL.into(),
        attested: Some(super::sim::attested(UID)),
        ..Default::default()
    }
}

struct SledFigures {
    single: Samples,
    batched: Samples,
    batched_records_per_sec: f64,
}

/// Raw sled, configured as the control plane's store is (high-throughput mode, no
/// background flush), on the same file system.
fn sled_reference(
    dir: &std::path::Path,
    singles: usize,
    batches: usize,
) -> anyhow::Result<SledFigures> {
    let db = sled::Config::new()
        .path(dir.join("sled-reference"))
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()?;
    let value = vec![0x5au8; RECORD_BYTES];
    let mut key: u64 = 0;
    // Warm-up.
    for _ in 0..20 {
        key += 1;
        db.insert(key.to_be_bytes(), value.as_slice())?;
        db.flush()?;
    }
    let mut single = Samples::with_capacity(singles);
    for _ in 0..singles {
        key += 1;
        let t = Instant::now();
        db.insert(key.to_be_bytes(), value.as_slice())?;
        db.flush()?;
        single.push(t.elapsed());
    }
    let mut batched = Samples::with_capacity(batches);
    let start = Instant::now();
    for _ in 0..batches {
        let t = Instant::now();
        for _ in 0..SLED_BATCH {
            key += 1;
            db.insert(key.to_be_bytes(), value.as_slice())?;
        }
        db.flush()?;
        batched.push(t.elapsed());
    }
    let total = start.elapsed();
    Ok(SledFigures {
        single,
        batched,
        batched_records_per_sec: (batches * SLED_BATCH) as f64 / total.as_secs_f64(),
    })
}
