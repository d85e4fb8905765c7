//! `cargo xtask soak --minutes N`: a long run against the real release binaries that
//! watches the daemons' memory and file descriptors.
//!
//! One control plane, a few real `leash-agentd`s reaching it through a cuttable TCP
//! proxy, and one simulated host (this process, with its own mTLS connection and Sync
//! stream, as the revoke bench does). A bounded loop issues (Issue over the simulated
//! host's mTLS connection), fetches through the agents (cache hits and `--fresh`),
//! revokes with `--wait` (and checks that a revoked lease is never served again), churns
//! tasks (`leash exec` around `true`), and cuts the agents' connections through the proxy
//! so that they reconnect and re-sync. The agents are never restarted: a restart would
//! reset the very figures the soak watches.
//!
//! Every minute it prints the RSS (`VmRSS` of `/proc/PID/status`) and the open
//! descriptors (entries of `/proc/PID/fd`) of every daemon, and the operation and error
//! counts. At the end it compares the last sample with the one taken when the warm-up
//! ended, and exits non-zero when a daemon's RSS grew by more than `--max-growth` %, when
//! a daemon holds more descriptors than it did then, or when any operation failed.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use leash_proto::v1;
use leash_proto::v1::control_plane_client::ControlPlaneClient;
use tonic::transport::Channel;

use crate::bench::procs::{Agent, ControlPlane, Memory, Proc};
use crate::bench::stats::{header, thousands, Table};
use crate::bench::{sim, Ctx};

const CREDENTIAL: &str = "soak-jwt";
const LOCAL_WORKLOAD: &str = "soak/local";
const SIM_WORKLOAD: &str = "soak/sim";
/// The uid the simulated host's callers are attested as.
const SIM_UID: u32 = 4242;
/// Longest a single CLI call may take before it counts as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the agents may take to re-sync after the proxy is restored.
const RESYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the proxy stays cut per reconnect: longer than a heartbeat, far shorter
/// than `max_offline`.
const CUT_FOR: Duration = Duration::from_secs(2);

/// `cargo xtask soak`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long the loop runs, in minutes (a sample is taken at the end of each).
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Minutes of warm-up; growth is measured from the sample taken at their end.
    /// Default: 2, or 1 for runs shorter than 4 minutes.
    #[arg(long)]
    warmup: Option<u64>,
    /// Real agents.
    #[arg(long, default_value_t = 2)]
    agents: usize,
    /// Pause between two rounds of operations, in milliseconds (keeps the loop bounded
    /// on a shared machine).
    #[arg(long, default_value_t = 50)]
    pace_ms: u64,
    /// Seconds between two cuts of the agents' connections.
    #[arg(long, default_value_t = 30)]
    reconnect_every: u64,
    /// Largest allowed RSS growth after warm-up, in percent.
    #[arg(long, default_value_t = 5.0)]
    max_growth: f64,
    /// The control plane's `lease_retention` (e.g. "2m"); unset: the product default.
    /// Ended leases are forgotten this long after their expiry, so with a period shorter
    /// than the warm-up the database stops growing within the run.
    #[arg(long)]
    lease_retention: Option<String>,
    /// The control plane's `event_retention` (e.g. "4m"); unset: the product default.
    #[arg(long)]
    event_retention: Option<String>,
    /// Run the debug binaries of target/debug (built first) instead of release ones, for
    /// a quick check of the soak itself; report figures from release runs.
    #[arg(long)]
    debug_binaries: bool,
}

impl Args {
    fn warmup(&self) -> u64 {
        self.warmup
            .unwrap_or(if self.minutes < 4 { 1 } else { 2 })
            .min(self.minutes.saturating_sub(1))
    }
}

/// Run the soak.
pub fn run(a: Args) -> anyhow::Result<()> {
    if a.minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    if a.agents == 0 {
        bail!("--agents must be at least 1");
    }
    // The product binaries are built as the benches build them. The load generator is
    // not re-run from a release build, unlike the benches': its speed changes how many
    // operations a minute holds, not the daemons' memory or descriptors.
    let profile = if a.debug_binaries { "debug" } else { "release" };
    crate::bench::stats::set_profile(if a.debug_binaries { "DEBUG" } else { "release" });
    let mut build = crate::bench::cargo();
    build.arg("build");
    if !a.debug_binaries {
        build.arg("--release");
    }
    if a.debug_binaries {
        // As the integration tests build them, so a warm debug build is reused.
        build.args(["--workspace", "--bins"]);
    } else {
        build.args(["--bins", "-p", "leash-control-plane", "-p", "leash-agentd"]);
    }
    crate::bench::run_cmd(build)?;
    let ctx = Ctx::in_profile(profile)?;
    Soak::new(&ctx, &a)?.run(&a)
}

/// One process's figures at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    rss_kib: u64,
    fds: u64,
}

/// Open descriptors of `pid`.
fn fd_count(pid: u32) -> anyhow::Result<u64> {
    let dir = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&dir)
        .with_context(|| {
            format!("cannot list {dir} (the soak needs to run as the daemons' user or root)")
        })?
        .count() as u64)
}

/// RSS and descriptors of `pid`. The descriptor count is the smallest of a few reads a
/// moment apart, so that a connection the daemon is just closing is not counted.
fn sample(pid: u32) -> anyhow::Result<Sample> {
    let mut fds = u64::MAX;
    for i in 0..5 {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        fds = fds.min(fd_count(pid)?);
    }
    Ok(Sample {
        rss_kib: Memory::of(pid)?.rss_kib,
        fds,
    })
}

/// What happened to one daemon after warm-up.
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    /// RSS when the warm-up ended, and at the end.
    base_rss_kib: u64,
    last_rss_kib: u64,
    max_rss_kib: u64,
    /// RSS growth from the end of warm-up to the end, in percent.
    growth_pct: f64,
    fds_min: u64,
    fds_max: u64,
    /// More descriptors at the end than when the warm-up ended.
    fds_grew: bool,
    /// Within the allowed growth and no descriptor growth.
    ok: bool,
}

/// Judge one daemon's samples (index = minute; index 0 is taken before the loop starts).
fn judge(samples: &[Sample], warmup: usize, max_growth_pct: f64) -> Option<Verdict> {
    let after = samples.get(warmup..).filter(|s| !s.is_empty())?;
    let base = after[0];
    let last = *after.last()?;
    let growth_pct = if base.rss_kib == 0 {
        0.0
    } else {
        (last.rss_kib as f64 - base.rss_kib as f64) * 100.0 / base.rss_kib as f64
    };
    let fds_grew = last.fds > base.fds;
    Some(Verdict {
        base_rss_kib: base.rss_kib,
        last_rss_kib: last.rss_kib,
        max_rss_kib: after.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        growth_pct,
        fds_min: after.iter().map(|s| s.fds).min().unwrap_or(0),
        fds_max: after.iter().map(|s| s.fds).max().unwrap_or(0),
        fds_grew,
        ok: growth_pct <= max_growth_pct && !fds_grew,
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// Operation counts, and errors by kind with the first message of each kind.
#[derive(Debug, Default)]
struct Counts {
    ops: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, (u64, String)>,
}

const OPS: [&str; 7] = [
    "issue",
    "fetch",
    "fetch --fresh",
    "revoke --wait",
    "exec",
    "reconnect",
    "revoked served",
];

impl Counts {
    fn ok(&mut self, op: &'static str) {
        *self.ops.entry(op).or_default() += 1;
    }

    fn err(&mut self, op: &'static str, e: &anyhow::Error) {
        let ent = self.errors.entry(op).or_insert((0, String::new()));
        if ent.0 == 0 {
            ent.1 = format!("{e:#}");
            eprintln!("soak: {op} failed: {e:#}");
        }
        ent.0 += 1;
    }

    fn errors(&self) -> u64 {
        self.errors.values().map(|(n, _)| n).sum()
    }
}

/// The output of a finished CLI call.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run `cmd` to completion, killing it after [`CALL_TIMEOUT`].
fn call(mut cmd: Command) -> anyhow::Result<Out> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = crate::bench::shown(&cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    // Both outputs are small (a token, a line of JSON, one error): they fit the pipes,
    // so waiting first and reading afterwards cannot stall the child.
    let deadline = Instant::now() + CALL_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{shown}` did not finish within {CALL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut stdout)?;
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr)?;
    }
    Ok(Out {
        code: status.code(),
        stdout,
        stderr,
    })
}

/// Run `cmd` and require exit 0; returns stdout. The error names the command (join
/// tokens left out) and its stderr, never its stdout (which may hold a token).
fn call_ok(cmd: Command) -> anyhow::Result<String> {
    let shown = crate::bench::shown(&cmd);
    let out = call(cmd)?;
    if out.code != Some(0) {
        bail!(
            "`{shown}` exited with {:?}: {}",
            out.code,
            out.stderr.trim()
        );
    }
    Ok(out.stdout)
}

/// The lease id of a `leash get --output json` answer.
fn lease_of(json: &str) -> anyhow::Result<String> {
    let v: serde_json::Value =
        serde_json::from_str(json).context("`leash get --output json` printed no JSON")?;
    v["lease_id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .context("`leash get --output json` has no lease_id")
}

struct SoakAgent {
    proc: Proc,
    socket: PathBuf,
}

struct Soak {
    dir: tempfile::TempDir,
    cp: ControlPlane,
    proxy: leash_tests::Proxy,
    agents: Vec<SoakAgent>,
    rt: tokio::runtime::Runtime,
    sim: ControlPlaneClient<Channel>,
    leash: PathBuf,
    leashctl: PathBuf,
    truth: PathBuf,
}

impl Soak {
    fn new(ctx: &Ctx, a: &Args) -> anyhow::Result<Soak> {
        let dir = tempfile::Builder::new().prefix("leash-soak-").tempdir()?;
        // A short heartbeat, so that agents notice a cut and re-sync quickly.
        let mut extra = crate::bench::procs::BENCH_ENROLL_LIMITS.to_string();
        for (key, v) in [
            ("lease_retention", &a.lease_retention),
            ("event_retention", &a.event_retention),
        ] {
            if let Some(v) = v {
                extra.push_str(&format!("\n{key} = {v:?}"));
            }
        }
        let cp = ControlPlane::start_configured(ctx, dir.path(), None, "1s", &extra)?;
        // A short TTL, so that cached credentials are renewed and leases expire during
        // the run as they do in production.
        cp.leashctl(&[
            "credential",
            "add",
            CREDENTIAL,
            "--kind",
            "jwt",
            "--audience",
            "https://soak.leash.example",
            "--ttl",
            "2m",
            "--max-ttl",
            "10m",
        ])?;
        cp.add_workload(LOCAL_WORKLOAD, nix::unistd::getuid().as_raw(), CREDENTIAL)?;
        cp.add_workload(SIM_WORKLOAD, SIM_UID, CREDENTIAL)?;
        let upstream = cp
            .addr
            .parse()
            .with_context(|| format!("the control plane's address {:?}", cp.addr))?;
        // The integration tests' proxy: it forwards bytes only, so TLS stays end to end.
        let proxy = leash_tests::Proxy::start(upstream);
        let mut agents = Vec::new();
        for i in 0..a.agents {
            let adir = dir.path().join(format!("agent-{i}"));
            std::fs::create_dir_all(&adir)?;
            let ag = Agent::start_at(
                ctx,
                &cp,
                &proxy.addr.to_string(),
                &adir,
                &format!("soak-host-{i}"),
            )?;
            agents.push(SoakAgent {
                proc: ag.proc,
                socket: ag.socket,
            });
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let token = cp.join_token("soak-sim-host")?;
        let addr = cp.addr.clone();
        let sim = rt.block_on(async {
            let ch = sim::enroll_channel(&addr, &token).await?;
            let cfg =
                sim::enroll_in_memory(ControlPlaneClient::new(ch), &token, "soak-sim-host").await?;
            let mut client = ControlPlaneClient::new(
                leash_agentd::tls::connect(std::slice::from_ref(&addr), cfg).await?,
            );
            let sync = sim::open_sync(&mut client).await?;
            tokio::spawn(sim::drain(sync));
            anyhow::Ok(client)
        })?;
        let truth = crate::bench::procs::which("true").unwrap_or_else(|| "/bin/true".into());
        Ok(Soak {
            dir,
            cp,
            proxy,
            agents,
            rt,
            sim,
            leash: ctx.bin("leash"),
            leashctl: ctx.bin("leashctl"),
            truth,
        })
    }

    fn leash(&self, i: usize) -> Command {
        let mut c = Command::new(&self.leash);
        c.arg("--socket").arg(&self.agents[i].socket);
        c
    }

    fn leashctl(&self) -> Command {
        let mut c = Command::new(&self.leashctl);
        c.arg("--admin-socket").arg(&self.cp.admin_socket);
        c
    }

    /// `leash get` through agent `i`; returns the lease id.
    fn fetch(&self, i: usize, fresh: bool) -> anyhow::Result<String> {
        let mut c = self.leash(i);
        c.args(["get", CREDENTIAL, "--output", "json"]);
        if fresh {
            c.arg("--fresh");
        }
        lease_of(&call_ok(c)?)
    }

    /// Issue over the simulated host's mTLS connection; returns the lease id.
    fn issue(&mut self) -> anyhow::Result<String> {
        let req = v1::IssueRequest {
            workload: SIM_WORKLOAD.into(),
            credential: CREDENTIAL.into(),
            attested: Some(v1::Attested {
                pid: std::process::id(),
                uid: SIM_UID,
                gid: SIM_UID,
                user: "soak".into(),
                exe_path: "/usr/bin/soak-caller".into(),
                selectors: vec![format!("unix:uid:{SIM_UID}"), format!("unix:gid:{SIM_UID}")],
                ..Default::default()
            }),
            ..Default::default()
        };
        let sim = &mut self.sim;
        let r = self
            .rt
            .block_on(sim.issue(req))
            .map_err(|s| anyhow::anyhow!("Issue: {}", s.message()))?
            .into_inner();
        anyhow::ensure!(
            !r.token.is_empty() && !r.lease_id.is_empty(),
            "Issue returned no token or lease"
        );
        Ok(r.lease_id)
    }

    /// `leashctl revoke … --wait`: returns once every host has wiped.
    fn revoke(&self, target: &[&str]) -> anyhow::Result<()> {
        let mut c = self.leashctl();
        c.arg("revoke")
            .args(target)
            .args(["--reason", "soak", "--wait", "--timeout", "30s"]);
        call_ok(c).map(drop)
    }

    /// `leash exec --env TOKEN=… -- true` through agent `i`.
    fn exec(&self, i: usize) -> anyhow::Result<()> {
        let mut c = self.leash(i);
        c.args(["exec", "--env", &format!("TOKEN={CREDENTIAL}"), "--"])
            .arg(&self.truth);
        call_ok(c).map(drop)
    }

    /// The agent's `status --output json`.
    fn status(&self, i: usize) -> anyhow::Result<serde_json::Value> {
        let mut c = self.leash(i);
        c.args(["status", "--output", "json"]);
        serde_json::from_str(&call_ok(c)?).context("`leash status --output json` printed no JSON")
    }

    /// Cut every agent's connection, restore it, and wait until each agent has
    /// re-synced (synced, with a heartbeat received after the restore) and can issue.
    fn reconnect(&self) -> anyhow::Result<()> {
        self.proxy.cut();
        std::thread::sleep(CUT_FOR);
        self.proxy.restore();
        let restored_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        for i in 0..self.agents.len() {
            let deadline = Instant::now() + RESYNC_TIMEOUT;
            loop {
                let st = self.status(i)?;
                let synced = st["synced"].as_bool() == Some(true);
                let hb = st["last_heartbeat_unix_ms"].as_i64().unwrap_or(0);
                if synced && hb > restored_ms {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "agent {i} did not re-sync within {RESYNC_TIMEOUT:?} after the proxy was restored (status: {st})"
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            self.fetch(i, true)
                .with_context(|| format!("agent {i} cannot issue after re-syncing"))?;
        }
        Ok(())
    }

    /// Every daemon, by name, with its pid.
    fn daemons(&self) -> Vec<(String, u32)> {
        let mut v = vec![("control plane".to_string(), self.cp.proc.pid())];
        for (i, ag) in self.agents.iter().enumerate() {
            v.push((format!("agent-{i}"), ag.proc.pid()));
        }
        v
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.cp.proc.check_alive()?;
        for ag in &mut self.agents {
            ag.proc.check_alive()?;
        }
        Ok(())
    }

    /// One round of operations through agent `i`; `round` decides the rarer ones.
    fn round(&mut self, round: u64, i: usize, n: &mut Counts) {
        match self.issue() {
            Ok(_) => n.ok("issue"),
            Err(e) => n.err("issue", &e),
        }
        match self.fetch(i, false) {
            Ok(_) => n.ok("fetch"),
            Err(e) => n.err("fetch", &e),
        }
        if round.is_multiple_of(3) {
            match self.exec(i) {
                Ok(()) => n.ok("exec"),
                Err(e) => n.err("exec", &e),
            }
        }
        if round.is_multiple_of(5) {
            match self.fetch(i, true) {
                Ok(lease) => {
                    n.ok("fetch --fresh");
                    if round.is_multiple_of(10) {
                        self.revoke_and_check(i, &lease, n);
                    }
                }
                Err(e) => n.err("fetch --fresh", &e),
            }
        }
        if round.is_multiple_of(25) {
            // A revocation of a simulated host's lease, and now and then one by
            // workload (an epoch rather than a list of leases).
            let r = self.issue().and_then(|l| self.revoke(&["--lease", &l]));
            match r {
                Ok(()) => n.ok("revoke --wait"),
                Err(e) => n.err("revoke --wait", &e),
            }
        }
        if round % 100 == 50 {
            match self.revoke(&["--workload", LOCAL_WORKLOAD]) {
                Ok(()) => n.ok("revoke --wait"),
                Err(e) => n.err("revoke --wait", &e),
            }
        }
    }

    /// Revoke `lease` (agent `i` holds it in its cache) with `--wait`, then check that
    /// the agent never serves it again.
    fn revoke_and_check(&self, i: usize, lease: &str, n: &mut Counts) {
        if let Err(e) = self.revoke(&["--lease", lease]) {
            n.err("revoke --wait", &e);
            return;
        }
        n.ok("revoke --wait");
        match self.fetch(i, false) {
            Ok(l) if l == lease => n.err(
                "revoked served",
                &anyhow::anyhow!(
                    "agent {i} served lease {lease} after its revocation was acknowledged"
                ),
            ),
            Ok(_) => n.ok("fetch"),
            Err(e) => n.err("fetch", &e),
        }
    }

    fn run(mut self, a: &Args) -> anyhow::Result<()> {
        let warmup = a.warmup() as usize;
        let command = format!(
            "cargo xtask soak --minutes {} --agents {} --pace-ms {} --reconnect-every {} --warmup {} --max-growth {}{}",
            a.minutes,
            a.agents,
            a.pace_ms,
            a.reconnect_every,
            warmup,
            a.max_growth,
            if a.debug_binaries { " --debug-binaries" } else { "" }
        );
        header(
            "soak: memory and descriptors of the daemons under a long mixed load",
            &command,
            &format!(
                "{} minute(s), {} real agent(s) behind a cuttable proxy plus one simulated host, warm-up {warmup} minute(s), heartbeat 1s, credential TTL 2m, data in {}{}",
                a.minutes,
                a.agents,
                self.dir.path().display(),
                if a.debug_binaries {
                    "; DEBUG binaries (target/debug)"
                } else {
                    ""
                }
            ),
        );
        let daemons = self.daemons();
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); daemons.len()];
        let mut n = Counts::default();
        let mut head = String::from("| minute |");
        for (name, pid) in &daemons {
            head.push_str(&format!(" {name} (pid {pid}) RSS MiB | fds |"));
        }
        for op in OPS {
            head.push_str(&format!(" {op} |"));
        }
        head.push_str(" errors |");
        let take =
            |samples: &mut Vec<Vec<Sample>>, n: &Counts, minute: u64| -> anyhow::Result<()> {
                let mut row = format!("| {minute} |");
                for (k, (_, pid)) in daemons.iter().enumerate() {
                    let s = sample(*pid)?;
                    samples[k].push(s);
                    row.push_str(&format!(" {} | {} |", mib(s.rss_kib), s.fds));
                }
                for op in OPS {
                    let v = if op == "revoked served" {
                        n.errors.get(op).map(|e| e.0).unwrap_or(0)
                    } else {
                        n.ops.get(op).copied().unwrap_or(0)
                    };
                    row.push_str(&format!(" {} |", thousands(v)));
                }
                row.push_str(&format!(" {} |", n.errors()));
                println!("{row}");
                Ok(())
            };
        println!("{head}");
        println!("{}", head.replace(|c: char| c != '|', "-"));
        take(&mut samples, &n, 0)?;
        let start = Instant::now();
        let mut next_sample = 1u64;
        let mut last_cut = Instant::now();
        let mut round = 0u64;
        let pace = Duration::from_millis(a.pace_ms);
        while next_sample <= a.minutes {
            let i = (round as usize) % self.agents.len();
            self.round(round, i, &mut n);
            round += 1;
            if last_cut.elapsed() >= Duration::from_secs(a.reconnect_every) {
                match self.reconnect() {
                    Ok(()) => n.ok("reconnect"),
                    Err(e) => n.err("reconnect", &e),
                }
                last_cut = Instant::now();
            }
            if start.elapsed() >= Duration::from_secs(60 * next_sample) {
                self.check_alive()?;
                take(&mut samples, &n, next_sample)?;
                next_sample += 1;
            }
            std::thread::sleep(pace);
        }
        self.check_alive()?;

        println!();
        println!(
            "Growth is measured from the sample at minute {warmup} (end of warm-up) to the last one (minute {}); \
             descriptor counts are the smallest of five reads 100 ms apart, taken between operations.",
            a.minutes
        );
        println!();
        let mut t = Table::new(&[
            "daemon",
            "RSS at warm-up end (MiB)",
            "RSS at end (MiB)",
            "RSS max after warm-up (MiB)",
            "RSS growth",
            "fds min/max after warm-up",
            "fds at warm-up end → end",
            &format!("within {}% and fds flat", a.max_growth),
        ]);
        let mut all_ok = true;
        for (k, (name, _)) in daemons.iter().enumerate() {
            let v = judge(&samples[k], warmup, a.max_growth).context("no samples after warm-up")?;
            all_ok &= v.ok;
            let base_fds = samples[k][warmup].fds;
            let last_fds = samples[k].last().map(|s| s.fds).unwrap_or(0);
            t.row(vec![
                name.clone(),
                mib(v.base_rss_kib),
                mib(v.last_rss_kib),
                mib(v.max_rss_kib),
                format!("{:+.1} %", v.growth_pct),
                format!("{}/{}", v.fds_min, v.fds_max),
                format!("{base_fds} → {last_fds}"),
                crate::bench::stats::met(v.ok),
            ]);
        }
        t.print();
        println!();
        let mut ops = Table::new(&["operation", "done", "errors", "first error"]);
        for op in OPS {
            let (ne, first) = n.errors.get(op).cloned().unwrap_or_default();
            let done = if op == "revoked served" {
                0
            } else {
                n.ops.get(op).copied().unwrap_or(0)
            };
            ops.row(vec![op.to_string(), thousands(done), thousands(ne), first]);
        }
        ops.print();
        let errors = n.errors();
        if !all_ok || errors > 0 {
            bail!(
                "the soak failed: {}{}",
                if all_ok {
                    String::new()
                } else {
                    format!("a daemon's RSS grew by more than {}% or its descriptors grew after warm-up; ", a.max_growth)
                },
                if errors > 0 {
                    format!("{errors} operation(s) failed (see the table)")
                } else {
                    String::new()
                }
            );
        }
        println!();
        println!(
            "soak passed: every daemon within {}% RSS growth, descriptors flat, no errors",
            a.max_growth
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(rss_kib: u64, fds: u64) -> Sample {
        Sample { rss_kib, fds }
    }

    #[test]
    fn growth_is_measured_from_the_end_of_warm_up() {
        // Minute 0 and 1 are warm-up: their growth does not count.
        let v = judge(
            &[s(1000, 10), s(5000, 20), s(10_000, 20), s(10_400, 19)],
            2,
            5.0,
        )
        .expect("samples after warm-up");
        assert!((v.growth_pct - 4.0).abs() < 1e-9, "{v:?}");
        assert_eq!(
            (v.fds_min, v.fds_max, v.fds_grew, v.ok),
            (19, 20, false, true)
        );
        assert_eq!(v.max_rss_kib, 10_400);
    }

    #[test]
    fn growth_above_the_limit_or_more_fds_fails() {
        let v = judge(&[s(1000, 10), s(10_000, 20), s(10_600, 20)], 1, 5.0).expect("samples");
        assert!(!v.ok && !v.fds_grew, "{v:?}");
        let v = judge(&[s(1000, 10), s(10_000, 20), s(10_000, 21)], 1, 5.0).expect("samples");
        assert!(!v.ok && v.fds_grew, "{v:?}");
        // Shrinking is fine.
        let v = judge(&[s(1000, 10), s(10_000, 20), s(9_000, 18)], 1, 5.0).expect("samples");
        assert!(v.ok && v.growth_pct < 0.0, "{v:?}");
    }

    #[test]
    fn no_samples_after_warm_up_is_no_verdict() {
        assert_eq!(judge(&[s(1, 1)], 1, 5.0), None);
    }

    #[test]
    fn warm_up_defaults_and_stays_below_the_run() {
        let a = |minutes, warmup| Args {
            minutes,
            warmup,
            agents: 1,
            pace_ms: 0,
            reconnect_every: 30,
            max_growth: 5.0,
            debug_binaries: false,
            lease_retention: None,
            event_retention: None,
        };
        assert_eq!(a(30, None).warmup(), 2);
        assert_eq!(a(3, None).warmup(), 1);
        assert_eq!(a(1, None).warmup(), 0);
        assert_eq!(a(5, Some(9)).warmup(), 4);
    }

    #[test]
    fn lease_ids_come_from_the_json_answer() {
        assert_eq!(
            lease_of(r#"{"token":"t","lease_id":"l-1","expires_at":"x"}"#).expect("lease"),
            "l-1"
        );
        assert!(lease_of("eyJ…").is_err());
        assert!(lease_of(r#"{"lease_id":""}"#).is_err());
    }
}
