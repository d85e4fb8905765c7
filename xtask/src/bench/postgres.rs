//! `cargo xtask bench postgres`: dynamic PostgreSQL credentials against a local server.
//!
//! A throwaway PostgreSQL (`leash_tests::pg::Pg`, with its default durability: `fsync`,
//! `synchronous_commit` and `full_page_writes` on, so every role creation is a durable
//! commit) holds database `app` and the least-privilege admin role `leash_admin`. A real
//! control plane gets credential `app-db` (`leashctl credential add --kind postgres`), and
//! one simulated host (enrolled as `leash-agentd` enrolls, Sync stream open) calls Issue:
//!
//! 1. Issue at concurrency 1 and at `--concurrency` (each call creates a login role, its
//!    marker comment and its grants in one transaction, then writes the lease);
//! 2. revoke → role dropped → session cut: a `psql` logged in as a lease's role runs
//!    `pg_sleep`; `Revoke {lease}` on the admin socket; then a superuser session polls
//!    `pg_roles` every millisecond while the `psql` is watched for its exit;
//! 3. where the time goes: Issue of a JWT credential on the same control plane (a lease
//!    write and a signature, no database), and the SQL of one issuance timed statement by
//!    statement with `psql`'s `\timing` as `leash_admin` (the time of each statement at
//!    the client, round trip on the Unix socket included).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use leash_proto::v1::control_plane_client::ControlPlaneClient;
use leash_tests::pg::Pg;
use tonic::transport::Channel;

use super::procs::{cpu_time, ControlPlane};
use super::stats::{dur, header, met, rate, thousands, Samples, Table};
use super::{sim, Ctx};

/// The uid the simulated callers are attested as.
const UID: u32 = 4242;
const WORKLOAD: &str = "bench/postgres";
const CREDENTIAL: &str = "app-db";
/// The JWT credential of the same control plane, for the split.
const JWT: &str = "bench-jwt";
const ADMIN_PASSWORD: &str = "bench_admin_password";
/// Membership in a group role that holds the rights, as docs/DATABASES.md recommends: a
/// per-role grant on the tables would rewrite each table's privilege list on every Issue.
const GRANT: &str = "GRANT app_read TO {{name}}";
/// Longest a role may take to be dropped and its session cut before a round fails.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

/// `cargo xtask bench postgres`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Sequential Issue calls measured at concurrency 1, after the warm-up.
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Issue calls made before anything is measured.
    #[arg(long, default_value_t = 30)]
    warmup: usize,
    /// Concurrent callers in the throughput run (over one mTLS connection: one host).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Length of the throughput run, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Revoke → role dropped → session cut rounds.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// Issuances whose SQL is timed statement by statement.
    #[arg(long, default_value_t = 100)]
    sql_rounds: usize,
}

/// One revoke round: from the Revoke call's start.
struct Round {
    /// The Revoke call itself.
    revoke: Duration,
    /// Until the role is no longer in `pg_roles`.
    dropped: Duration,
    /// Until the role's `psql` exited.
    cut: Duration,
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.requests > 0 && a.concurrency > 0 && a.duration > 0 && a.rounds > 0,
        "counts must be positive"
    );
    if let Err(e) = leash_tests::pg::bin_dir() {
        bail!("cargo xtask bench postgres needs a PostgreSQL server: {e}");
    }
    let dir = tempfile::Builder::new()
        .prefix("leash-bench-postgres-")
        .tempdir()?;
    eprintln!("starting PostgreSQL (durability on: fsync, synchronous_commit, full_page_writes)");
    let pg = Pg::start_with(&[]);
    let admin_url = pg.app_database(ADMIN_PASSWORD);
    let version = psql_line(&pg, "SHOW server_version")?;

    let mut cp = ControlPlane::start(ctx, dir.path(), None)?;
    add_credential(&cp, dir.path(), &admin_url)?;
    cp.add_credential(JWT)?;
    cp.add_workload_allowing(WORKLOAD, UID, &[CREDENTIAL, JWT])?;
    let token = cp.join_token("bench-postgres-host")?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut monitor = Psql::superuser(&pg, dir.path())?;
    let measured = rt.block_on(async {
        let state = dir.path().join("host-state");
        leash_agentd::identity::prepare_state_dir(&state)?;
        let id = leash_agentd::identity::enroll(
            &state,
            &[cp.addr.clone()],
            &token,
            Some("bench-postgres-host".into()),
            None,
            Default::default(),
        )
        .await
        .context("enrolling the simulated host")?;
        let cfg = id.client_config()?;
        let mut client =
            ControlPlaneClient::new(leash_agentd::tls::connect(&[cp.addr.clone()], cfg).await?);
        let sync = sim::open_sync(&mut client).await?;
        let drainer = tokio::spawn(sim::drain(sync));
        let mut admin = AdminClient::new(leash_proto::uds::connect(&cp.admin_socket).await?);

        // The contract: kind postgres, format json, the material of docs/DATABASES.md.
        let first = client
            .issue(request(CREDENTIAL))
            .await
            .context("the first Issue of the postgres credential")?
            .into_inner();
        let m = material(&first)?;
        eprintln!(
            "first lease {}: role {} on {}:{} database {}",
            first.lease_id, m.user, m.host, m.port, m.dbname
        );

        eprintln!("warm-up: {} Issue calls of each credential", a.warmup);
        for _ in 0..a.warmup {
            client.issue(request(CREDENTIAL)).await?;
            client.issue(request(JWT)).await?;
        }
        eprintln!(
            "concurrency 1: {} sequential Issue calls of each credential, alternating",
            a.requests
        );
        let (mut c1, mut jwt) = (Samples::default(), Samples::default());
        let mut pg_busy = Duration::ZERO;
        for _ in 0..a.requests {
            let t = Instant::now();
            client.issue(request(CREDENTIAL)).await?;
            let d = t.elapsed();
            pg_busy += d;
            c1.push(d);
            let t = Instant::now();
            client.issue(request(JWT)).await?;
            jwt.push(t.elapsed());
        }
        let c1_rate = a.requests as f64 / pg_busy.as_secs_f64();

        eprintln!(
            "concurrency {}: {} callers over one mTLS connection for {}s",
            a.concurrency, a.concurrency, a.duration
        );
        let cp_cpu0 = cpu_time(cp.proc.pid())?;
        let start = Instant::now();
        let end = start + Duration::from_secs(a.duration);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..a.concurrency {
            let mut c = client.clone();
            tasks.spawn(async move {
                let mut lat = Samples::with_capacity(4096);
                while Instant::now() < end {
                    let t = Instant::now();
                    c.issue(request(CREDENTIAL)).await?;
                    lat.push(t.elapsed());
                }
                anyhow::Ok(lat)
            });
        }
        let mut cn = Samples::default();
        while let Some(r) = tasks.join_next().await {
            cn.extend(r??);
        }
        let cn_elapsed = start.elapsed();
        let cp_cpu = cpu_time(cp.proc.pid())?.saturating_sub(cp_cpu0);

        eprintln!("revoke → role dropped → session cut: {} rounds", a.rounds);
        let mut rounds = Vec::with_capacity(a.rounds);
        for i in 0..a.rounds {
            let r = client.issue(request(CREDENTIAL)).await?.into_inner();
            let round = revoke_round(&pg, &mut monitor, &mut admin, &r)
                .await
                .with_context(|| format!("revoke round {i} (lease {})", r.lease_id))?;
            rounds.push(round);
        }
        drainer.abort();
        anyhow::Ok(Measured {
            c1,
            c1_rate,
            jwt,
            cn,
            cn_elapsed,
            cp_cpu,
            rounds,
        })
    })?;
    cp.proc.check_alive()?;
    drop(rt);

    eprintln!(
        "the SQL of {} issuances, statement by statement, as leash_admin",
        a.sql_rounds
    );
    let sql = time_sql(&pg, &mut monitor, dir.path(), a.sql_rounds)?;
    let roles = psql_line(
        &pg,
        "SELECT count(*) FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%'",
    )?;
    drop(monitor);
    drop(cp);
    report(ctx, &a, &measured, &sql, &version, &roles);
    Ok(())
}

struct Measured {
    c1: Samples,
    c1_rate: f64,
    jwt: Samples,
    cn: Samples,
    cn_elapsed: Duration,
    cp_cpu: Duration,
    rounds: Vec<Round>,
}

/// `leashctl credential add app-db --kind postgres`, the admin URL through a file.
fn add_credential(cp: &ControlPlane, dir: &Path, admin_url: &str) -> anyhow::Result<()> {
    let file = dir.join("admin-dsn");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)?;
        f.write_all(admin_url.as_bytes())?;
    }
    let file_arg = file.display().to_string();
    let grant = format!("read={GRANT}");
    let added = cp.leashctl(&[
        "credential",
        "add",
        CREDENTIAL,
        "--kind",
        "postgres",
        "--connection-file",
        &file_arg,
        "--grant",
        &grant,
        "--ttl",
        "15m",
    ]);
    std::fs::remove_file(&file)?;
    added.map(drop)
}

fn request(credential: &str) -> v1::IssueRequest {
    v1::IssueRequest {
        workload: WORKLOAD.into(),
        credential: credential.into(),
        action: "read".into(),
        audience: if credential == JWT {
            "https://bench.leash.example".into()
        } else {
            String::new()
        },
        attested: Some(super::sim::attested(UID)),
        ..Default::default()
    }
}

/// The fields of a postgres lease the bench uses.
struct Material {
    user: String,
    password: String,
    host: String,
    port: u16,
    dbname: String,
}

fn material(r: &v1::IssueResponse) -> anyhow::Result<Material> {
    anyhow::ensure!(
        r.kind == "postgres" && r.format == "json",
        "Issue of {CREDENTIAL} answered kind {:?}, format {:?}; expected postgres, json",
        r.kind,
        r.format
    );
    let served = v1::FetchResponse {
        token: r.token.clone(),
        kind: r.kind.clone(),
        format: r.format.clone(),
        ..Default::default()
    };
    let f = leash_agentd::documents::postgres(&served, CREDENTIAL)?;
    let s = |k: &str| {
        f.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let m = Material {
        user: s("user"),
        password: s("password"),
        host: s("host"),
        port: f
            .get("port")
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .context("the material has no port number")?,
        dbname: s("dbname"),
    };
    // The role name goes into the monitor's SQL: the design allows [a-z0-9_] only.
    anyhow::ensure!(
        !m.user.is_empty()
            && m.user
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "the role name {:?} is not made of [a-z0-9_]",
        m.user
    );
    Ok(m)
}

/// Log in as the lease's role with `psql` running `pg_sleep`, wait until the session is
/// active, revoke the lease, and time the drop and the cut.
async fn revoke_round(
    pg: &Pg,
    monitor: &mut Psql,
    admin: &mut AdminClient<Channel>,
    issued: &v1::IssueResponse,
) -> anyhow::Result<Round> {
    let m = material(issued)?;
    let mut session = pg
        .server_command("psql")
        .args(["-X", "-q", "-A", "-t"])
        .args(["-h", &m.host, "-p", &m.port.to_string()])
        .args(["-U", &m.user, "-d", &m.dbname])
        .args(["-c", "SELECT pg_sleep(600)"])
        .env("PGPASSWORD", &m.password)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start psql as the lease's role")?;
    let active = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = '{}' AND state = 'active'",
        m.user
    );
    let deadline = Instant::now() + ROUND_TIMEOUT;
    while monitor.line(&active)? != "1" {
        if let Some(st) = session.try_wait()? {
            bail!(
                "psql as role {} exited ({st}) before its session was active",
                m.user
            );
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the session of role {} never became active",
            m.user
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let exists = format!("SELECT count(*) FROM pg_roles WHERE rolname = '{}'", m.user);
    let t0 = Instant::now();
    admin
        .revoke(v1::RevokeRequest {
            target: Some(v1::RevocationTargetSpec {
                target: Some(v1::revocation_target_spec::Target::Lease(
                    issued.lease_id.clone(),
                )),
            }),
            reason: "bench".into(),
        })
        .await
        .context("Revoke")?;
    let revoke = t0.elapsed();
    let (mut dropped, mut cut) = (None, None);
    while dropped.is_none() || cut.is_none() {
        if cut.is_none() && session.try_wait()?.is_some() {
            cut = Some(t0.elapsed());
        }
        if dropped.is_none() && monitor.line(&exists)? == "0" {
            dropped = Some(t0.elapsed());
        }
        if t0.elapsed() > ROUND_TIMEOUT {
            let _ = session.kill();
            let _ = session.wait();
            bail!(
                "{} after Revoke: role {} {}, its session {}",
                dur(ROUND_TIMEOUT),
                m.user,
                if dropped.is_some() {
                    "dropped"
                } else {
                    "still there"
                },
                if cut.is_some() { "cut" } else { "still open" }
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(Round {
        revoke,
        dropped: dropped.unwrap_or_default(),
        cut: cut.unwrap_or_default(),
    })
}

/// A `psql` kept open, one query in, one line out (`-A -t`; stops at the first error, so
/// a failed query ends the output instead of hanging the reader).
struct Psql {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    errors: std::path::PathBuf,
}

impl Psql {
    /// The superuser on database `app`, over the socket.
    fn superuser(pg: &Pg, dir: &Path) -> anyhow::Result<Psql> {
        Psql::spawn(pg.psql_command("app"), dir.join("monitor.err"))
    }

    /// `leash_admin` on database `app`, over the socket, with `\timing` on.
    fn admin(pg: &Pg, dir: &Path) -> anyhow::Result<Psql> {
        let mut cmd = pg.server_command("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", &pg.socket_dir().display().to_string()])
            .args([
                "-p",
                &pg.port().to_string(),
                "-U",
                "leash_admin",
                "-d",
                "app",
            ])
            .env("PGPASSWORD", ADMIN_PASSWORD);
        let mut p = Psql::spawn(cmd, dir.join("admin-sql.err"))?;
        p.send("\\timing on")?;
        Ok(p)
    }

    fn spawn(mut cmd: Command, errors: std::path::PathBuf) -> anyhow::Result<Psql> {
        let err = std::fs::File::create(&errors)?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .context("cannot start psql")?;
        let stdin = child.stdin.take().context("psql stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("psql stdout")?);
        Ok(Psql {
            child,
            stdin,
            stdout,
            errors,
        })
    }

    /// Send one SQL statement (the `;` that ends it is added) or one `\` command.
    fn send(&mut self, sql: &str) -> anyhow::Result<()> {
        let end = if sql.starts_with('\\') { "" } else { ";" };
        writeln!(self.stdin, "{sql}{end}")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// The next line psql prints (trimmed).
    fn read(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!(
                "psql stopped: {}",
                std::fs::read_to_string(&self.errors)
                    .unwrap_or_default()
                    .trim()
            );
        }
        Ok(line.trim().to_string())
    }

    /// Run a query that prints one line; that line.
    fn line(&mut self, sql: &str) -> anyhow::Result<String> {
        self.send(sql)?;
        self.read()
    }

    /// Run a statement with `\timing` on; its time.
    fn timed(&mut self, sql: &str) -> anyhow::Result<Duration> {
        self.send(sql)?;
        loop {
            let l = self.read()?;
            // "Time: 0.512 ms" (or "Time: 1234.567 ms (00:01.235)").
            if let Some(ms) = l
                .strip_prefix("Time: ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
            {
                return Ok(Duration::from_secs_f64(ms / 1000.0));
            }
        }
    }
}

impl Drop for Psql {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One-off superuser query on `app`, its first line.
fn psql_line(pg: &Pg, sql: &str) -> anyhow::Result<String> {
    let out = pg.psql("app", sql);
    anyhow::ensure!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string())
}

/// The statements of one issuance as the control plane runs them, timed one by one.
struct SqlTimes {
    begin: Samples,
    create: Samples,
    create_plain: Samples,
    comment: Samples,
    grant: Samples,
    commit: Samples,
    drop_role: Samples,
}

/// Time `rounds` issuances' SQL as `leash_admin`: BEGIN; CREATE ROLE … PASSWORD <SCRAM
/// verifier> VALID UNTIL … CONNECTION LIMIT; COMMENT ON ROLE; the grant; COMMIT (durable).
/// Also CREATE ROLE with a plain-text password (the server hashes it: what hashing on the
/// client saves it), rolled back, and DROP ROLE of each role made.
fn time_sql(pg: &Pg, su: &mut Psql, dir: &Path, rounds: usize) -> anyhow::Result<SqlTimes> {
    let mut admin = Psql::admin(pg, dir)?;
    // A SCRAM verifier as a client computes it: take one the server made.
    admin.timed("CREATE ROLE bench_verifier_source PASSWORD 'not-a-real-password'")?;
    let verifier =
        su.line("SELECT rolpassword FROM pg_authid WHERE rolname = 'bench_verifier_source'")?;
    anyhow::ensure!(
        verifier.starts_with("SCRAM-SHA-256$"),
        "no SCRAM verifier for the timing roles"
    );
    let mut t = SqlTimes {
        begin: Samples::default(),
        create: Samples::default(),
        create_plain: Samples::default(),
        comment: Samples::default(),
        grant: Samples::default(),
        commit: Samples::default(),
        drop_role: Samples::default(),
    };
    for i in 0..rounds {
        let role = format!("leash_bench_sql_{i}");
        t.begin.push(admin.timed("BEGIN")?);
        t.create.push(admin.timed(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{verifier}' VALID UNTIL '2099-01-01 00:00:00+00' CONNECTION LIMIT 16"
        ))?);
        t.comment.push(admin.timed(&format!(
            "COMMENT ON ROLE {role} IS 'leash-managed lease=bench-{i} credential={CREDENTIAL}'"
        ))?);
        t.grant
            .push(admin.timed(&GRANT.replace("{{name}}", &role))?);
        t.commit.push(admin.timed("COMMIT")?);
        admin.timed("BEGIN")?;
        t.create_plain.push(admin.timed(&format!(
            "CREATE ROLE {role}_plain LOGIN PASSWORD 'a-plain-text-password-of-43-characters-xxx' VALID UNTIL '2099-01-01 00:00:00+00'"
        ))?);
        admin.timed("ROLLBACK")?;
    }
    for i in 0..rounds {
        let role = format!("leash_bench_sql_{i}");
        admin.timed(&format!(
            "REVOKE ALL ON ALL TABLES IN SCHEMA app FROM {role}"
        ))?;
        t.drop_role.push(admin.timed(&format!("DROP ROLE {role}"))?);
    }
    admin.timed("DROP ROLE bench_verifier_source")?;
    // A statement that failed stopped psql after its time was printed: ask once more.
    admin.line("SELECT 1")?;
    Ok(t)
}

fn report(ctx: &Ctx, a: &Args, m: &Measured, sql: &SqlTimes, version: &str, roles: &str) {
    header(
        "bench postgres: dynamic PostgreSQL credentials, a role per lease",
        &ctx.command,
        &format!(
            "--requests {} --warmup {} --concurrency {} --duration {} --rounds {} --sql-rounds {}",
            a.requests, a.warmup, a.concurrency, a.duration, a.rounds, a.sql_rounds
        ),
    );
    println!(
        "PostgreSQL {version} on this machine (Unix socket; fsync, synchronous_commit and full_page_writes on: \
         every role creation is a durable commit). One control plane (release), one simulated host over one \
         mTLS connection calling Issue for credential `{CREDENTIAL}` (`--grant read=\"{GRANT}\"`, `--ttl 15m`); \
         each call creates a login role with its marker comment and grant in one transaction, then writes the \
         lease durably. Generator, control plane and PostgreSQL share the machine's CPUs. Roles at the end of \
         the run: {roles}."
    );
    println!();
    let mut t = Table::new(&["measurement", "calls", "p50", "p99", "throughput"]);
    t.row(vec![
        "Issue (postgres), concurrency 1".into(),
        thousands(m.c1.len() as u64),
        dur(m.c1.p50()),
        dur(m.c1.p99()),
        rate(m.c1_rate),
    ]);
    let cn_rate = m.cn.len() as f64 / m.cn_elapsed.as_secs_f64();
    t.row(vec![
        format!(
            "Issue (postgres), concurrency {}, {}s",
            a.concurrency, a.duration
        ),
        thousands(m.cn.len() as u64),
        dur(m.cn.p50()),
        dur(m.cn.p99()),
        rate(cn_rate),
    ]);
    t.row(vec![
        "Issue (jwt, same control plane), concurrency 1: lease write + signature, no database"
            .into(),
        thousands(m.jwt.len() as u64),
        dur(m.jwt.p50()),
        dur(m.jwt.p99()),
        "".into(),
    ]);
    let samples = |f: &dyn Fn(&Round) -> Duration| {
        let mut s = Samples::default();
        for r in &m.rounds {
            s.push(f(r));
        }
        s
    };
    let revoke = samples(&|r| r.revoke);
    let dropped = samples(&|r| r.dropped.saturating_sub(r.revoke));
    let cut = samples(&|r| r.cut.saturating_sub(r.revoke));
    let both = samples(&|r| r.dropped.max(r.cut).saturating_sub(r.revoke));
    for (what, s) in [
        ("Revoke {lease} call", &revoke),
        ("Revoke returned → role gone from pg_roles", &dropped),
        ("Revoke returned → the role's psql session ended", &cut),
        ("Revoke returned → role dropped and session cut", &both),
    ] {
        t.row(vec![
            what.into(),
            thousands(s.len() as u64),
            dur(s.p50()),
            dur(s.p99()),
            "".into(),
        ]);
    }
    t.print();
    println!();
    println!(
        "Where an issuance's time goes: its SQL timed statement by statement by `psql` (`\\timing`, as leash_admin \
         over the socket, round trip included), {} issuances; the lease write is the JWT Issue above (a lease, \
         its event and a signature, durably).",
        sql.commit.len()
    );
    println!();
    let mut t = Table::new(&["statement", "p50", "p99"]);
    for (what, s) in [
        ("BEGIN", &sql.begin),
        (
            "CREATE ROLE … LOGIN PASSWORD <SCRAM verifier> VALID UNTIL … CONNECTION LIMIT",
            &sql.create,
        ),
        ("COMMENT ON ROLE (the leash-managed marker)", &sql.comment),
        ("the grant (GRANT app_read TO the role)", &sql.grant),
        ("COMMIT (durable)", &sql.commit),
        (
            "for comparison: CREATE ROLE with a plain-text password (the server hashes it)",
            &sql.create_plain,
        ),
        ("for comparison: DROP ROLE (no sessions)", &sql.drop_role),
    ] {
        t.row(vec![what.into(), dur(s.p50()), dur(s.p99())]);
    }
    t.print();
    println!();
    let cpu_per_call = m.cp_cpu / (m.cn.len().max(1) as u32);
    println!(
        "Control-plane CPU per Issue at concurrency {}: {}.",
        a.concurrency,
        dur(cpu_per_call)
    );
    println!();
    let mut t = Table::new(&["check", "measured", "target", "met"]);
    t.row(vec![
        format!("issuances/s at concurrency {}", a.concurrency),
        rate(cn_rate),
        "≥ 500/s".into(),
        met(cn_rate >= 500.0),
    ]);
    t.row(vec![
        format!("Issue p99 at concurrency {}", a.concurrency),
        dur(m.cn.p99()),
        "≤ 40 ms".into(),
        met(m.cn.p99() <= Duration::from_millis(40)),
    ]);
    t.row(vec![
        "Revoke returned → role dropped and session cut, p99".into(),
        dur(both.p99()),
        "≤ 250 ms".into(),
        met(both.p99() <= Duration::from_millis(250)),
    ]);
    t.row(vec![
        "published reference: Vault's example run".into(),
        "about 220/s, mean 45 ms, p99 77 ms".into(),
        "".into(),
        "".into(),
    ]);
    t.print();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "needs root: runs PostgreSQL as the postgres user"]
    fn the_sql_split_and_the_monitor_work_against_a_real_server() {
        leash_tests::require_root();
        let dir = tempfile::tempdir().expect("temp dir");
        let pg = Pg::start();
        pg.app_database(ADMIN_PASSWORD);
        let mut su = Psql::superuser(&pg, dir.path()).expect("monitor");
        assert_eq!(
            su.line("SELECT count(*) FROM pg_roles WHERE rolname = 'leash_admin'")
                .expect("query"),
            "1"
        );
        let t = time_sql(&pg, &mut su, dir.path(), 3).expect("timed SQL");
        for s in [
            &t.begin,
            &t.create,
            &t.comment,
            &t.grant,
            &t.commit,
            &t.create_plain,
        ] {
            assert_eq!(s.len(), 3);
        }
        assert_eq!(t.drop_role.len(), 3);
        // Every role it made is gone again.
        assert_eq!(
            su.line("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'leash\\_bench%'")
                .expect("query"),
            "0"
        );
        // A failed query ends the session with psql's message instead of hanging.
        let e = su.line("SELECT nope FROM nowhere").expect_err("bad SQL");
        assert!(e.to_string().contains("nowhere"), "{e}");
    }
}
