//! `cargo xtask bench fetch --kind secret`: a brokered secret served from the agent's
//! cache against a JWT served from the same cache, in the same run. Both are credentials
//! of one workload on one agent; every load alternates between them in rounds, so drift
//! on the machine falls on both alike. What differs is only the kind (and the size of
//! what is served: a 40-byte API key against a ~500-byte JWT).

use std::process::Command;

use super::fetch::{interleaved, wall, Call, Load};
use super::procs::{Agent, ControlPlane};
use super::stats::{dur, header, rate, ratio, thousands, Samples, Table};
use super::Ctx;

const WORKLOAD: &str = "bench/fetch";
const JWT: &str = "bench-jwt";
const SECRET: &str = "bench-secret";
/// What an API key looks like (no trailing newline).
const VALUE: &str = "sk_live_51Hb3nchMark0000000000000000000";

/// Run it: `requests` calls on one connection, `clients` × `per_client` on many, and
/// `runs` whole `leash get` processes of each, in `rounds` alternating rounds.
pub fn run(
    ctx: &Ctx,
    requests: usize,
    clients: usize,
    per_client: usize,
    runs: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("leash-bench-fetch-secret-")
        .tempdir()?;
    let cp = ControlPlane::start(ctx, dir.path(), None)?;
    cp.add_credential(JWT)?;
    cp.put_secret(dir.path(), SECRET, VALUE)?;
    let uid = nix::unistd::getuid().as_raw();
    cp.add_workload_allowing(WORKLOAD, uid, &[JWT, SECRET])?;
    let agent = Agent::start(ctx, &cp, dir.path(), "bench-fetch-secret-host")?;
    let rounds = rounds.max(1);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    eprintln!(
        "cache-hit Fetch, JWT vs secret: 1 x {requests} and {clients} x {per_client} calls, in {rounds} alternating rounds"
    );
    let (one, many) = rt.block_on(async {
        let mut one = vec![
            Load::prepare(&agent.socket, Call::FetchOf(JWT), 1).await?,
            Load::prepare(&agent.socket, Call::FetchOf(SECRET), 1).await?,
        ];
        interleaved(&mut one, rounds, requests).await?;
        let mut many = vec![
            Load::prepare(&agent.socket, Call::FetchOf(JWT), clients).await?,
            Load::prepare(&agent.socket, Call::FetchOf(SECRET), clients).await?,
        ];
        interleaved(&mut many, rounds, per_client).await?;
        anyhow::Ok((one, many))
    })?;
    anyhow::ensure!(
        one.iter().chain(&many).all(|l| l.uncached == 0),
        "some cache-hit calls were not served from the cache"
    );

    eprintln!("whole `leash get` processes: {runs} runs each, interleaved");
    let leash = ctx.bin("leash");
    let get = |name: &str| {
        let mut c = Command::new(&leash);
        c.arg("--socket").arg(&agent.socket).args(["get", name]);
        c
    };
    // The secret is printed exactly: check once that it is the value.
    let out = get(SECRET).output()?;
    anyhow::ensure!(
        out.status.success() && out.stdout == VALUE.as_bytes(),
        "`leash get {SECRET}` did not print the value: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut p_jwt, mut p_secret) = (Samples::default(), Samples::default());
    for i in 0..runs + 5 {
        let j = wall(&mut get(JWT))?;
        let s = wall(&mut get(SECRET))?;
        if i >= 5 {
            p_jwt.push(j);
            p_secret.push(s);
        }
    }
    drop(rt);

    header(
        "bench fetch --kind secret: a brokered secret's cache hit against a JWT's, same run",
        &ctx.command,
        &format!(
            "--kind secret --requests {requests} --clients {clients} --per-client {per_client} --runs {runs} --rounds {rounds}"
        ),
    );
    println!(
        "One control plane and one agent (release); one workload holds both credentials. Each load alternates \
         between the JWT and the secret in {rounds} rounds. Ratio: the secret's p50 (or median) over the JWT's; \
         1.00× is equal, above is slower. Served: a {}-byte secret, a JWT of about 500 bytes.",
        VALUE.len()
    );
    println!();
    let mut t = Table::new(&[
        "measurement",
        "kind",
        "calls",
        "p50",
        "p99",
        "throughput",
        "ratio",
    ]);
    for (what, loads) in [
        ("cache-hit Fetch, 1 client".to_string(), &one),
        (format!("cache-hit Fetch, {clients} clients"), &many),
    ] {
        let thr = |l: &Load| l.lat.len() as f64 / l.elapsed.as_secs_f64();
        for (i, (kind, l)) in ["jwt", "secret"].iter().zip(loads.iter()).enumerate() {
            t.row(vec![
                what.clone(),
                (*kind).into(),
                thousands(l.lat.len() as u64),
                dur(l.lat.p50()),
                dur(l.lat.p99()),
                rate(thr(l)),
                if i == 0 {
                    "1.00×".into()
                } else {
                    ratio(l.lat.p50().as_secs_f64(), loads[0].lat.p50().as_secs_f64())
                },
            ]);
        }
    }
    for (i, (kind, s)) in [("jwt", &p_jwt), ("secret", &p_secret)].iter().enumerate() {
        t.row(vec![
            "`leash get` whole process (cache hit)".into(),
            (*kind).into(),
            thousands(s.len() as u64),
            dur(s.p50()),
            dur(s.p99()),
            "".into(),
            if i == 0 {
                "1.00×".into()
            } else {
                ratio(s.p50().as_secs_f64(), p_jwt.p50().as_secs_f64())
            },
        ]);
    }
    t.print();
    Ok(())
}
