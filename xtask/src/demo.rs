//! `cargo xtask demo`: the whole loop on one machine, on the embedded default (sled,
//! local sockets, no external services).
//!
//! It builds the binaries, starts a control plane and an agent in a temp dir, registers a
//! workload that matches the current user, fetches a token with `leash get`, verifies it
//! against the JWKS, revokes it, shows the wipe acknowledgment and the lease's timeline.
//! Then brokered secrets: a `.env` of API keys imported into Leash, the reference file
//! used by `leash exec` (with the values masked in the command's output), a rotation whose
//! wipe is acknowledged, and the new version served. With `--postgres`, then a
//! PostgreSQL role per lease (`demo/postgres.rs`). Then it cleans up.

mod postgres;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `cmd` and wait until a stderr line contains `marker`; returns that line.
fn start(mut cmd: Command, marker: &'static str) -> anyhow::Result<(Proc, String)> {
    cmd.stderr(Stdio::piped())
        .stdout(Stdio::null())
        .env("LEASH_LOG", "info");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", crate::show(&cmd)))?;
    let stderr = child.stderr.take().context("no stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains(marker) {
                let _ = tx.send(line.clone());
                sent = true;
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .with_context(|| format!("`{}` did not log {marker:?} in time", crate::show(&cmd)))?;
    Ok((Proc(child), line))
}

fn step(title: &str) {
    eprintln!("\n\x1b[1m== {title}\x1b[0m");
}

fn call(bin: &Path, args: &[&str], envs: &[(&str, &Path)]) -> anyhow::Result<Output> {
    let mut c = Command::new(bin);
    c.args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    eprintln!(
        "$ {} {}",
        bin.file_name().unwrap_or_default().to_string_lossy(),
        args.join(" ")
    );
    let out = c.output()?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(out)
}

fn ok(out: Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!("command failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn claims_of(token: &str) -> anyhow::Result<serde_json::Value> {
    let payload = token.split('.').nth(1).context("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn verify(token: &str, jwks: &serde_json::Value) -> anyhow::Result<()> {
    let header = jsonwebtoken::decode_header(token)?;
    let kid = header.kid.context("token has no kid")?;
    let key = jwks["keys"]
        .as_array()
        .and_then(|ks| ks.iter().find(|k| k["kid"] == kid.as_str()))
        .context("kid not in the JWKS")?;
    let dk = jsonwebtoken::DecodingKey::from_ec_components(
        key["x"].as_str().unwrap_or_default(),
        key["y"].as_str().unwrap_or_default(),
    )?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["https://api.example"]);
    jsonwebtoken::decode::<serde_json::Value>(token, &dk, &v)?;
    Ok(())
}

/// `cargo xtask demo`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also show a PostgreSQL role per lease, against a throwaway PostgreSQL server
    /// (needs the server binaries: `initdb`, `pg_ctl`, `postgres`, `psql`).
    #[arg(long)]
    postgres: bool,
}

/// Run the demo.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.postgres {
        // Say at once, not after the rest of the demo, when the server is missing.
        leash_tests::pg::bin_dir().map_err(anyhow::Error::msg)?;
    }
    step("build");
    crate::run(crate::cargo().args([
        "build",
        "--bins",
        "-p",
        "leash-control-plane",
        "-p",
        "leash-agentd",
    ]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("debug");
    let bin = |n: &str| target.join(n);
    let dir = tempfile::Builder::new().prefix("leash-demo-").tempdir()?;
    let d = dir.path();
    let admin = d.join("admin.sock");
    let sock = d.join("agent.sock");
    let cp_cfg = d.join("control-plane.toml");
    std::fs::write(
        &cp_cfg,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nadmin_socket = {:?}\ntrust_domain = \"demo.leash\"\nheartbeat = \"1s\"\nmax_offline = \"1m\"\n",
            d.join("cp"),
            admin
        ),
    )?;

    step("start the control plane");
    let mut cp = Command::new(bin("leash-control-plane"));
    cp.args(["serve", "--config"]).arg(&cp_cfg);
    let (_cp, line) = start(cp, "listening on")?;
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .context("no address in the log")?
        .to_string();
    eprintln!(
        "control plane listening on {addr}, admin socket {}",
        admin.display()
    );
    let env_admin = [("LEASH_ADMIN_SOCKET", admin.as_path())];
    let ctl = |args: &[&str]| call(&bin("leashctl"), args, &env_admin);

    step("enroll an agent with a one-time join token");
    let token = ok(ctl(&[
        "join-token",
        "create",
        "--name",
        "demo-host",
        "--label",
        "role=workstation",
    ])?)?;
    let mut agent = Command::new(bin("leash-agentd"));
    agent
        .args([
            "run",
            "--control-plane",
            &format!("https://{addr}"),
            "--state-dir",
        ])
        .arg(d.join("agent"))
        .arg("--socket")
        .arg(&sock)
        .env("LEASH_JOIN_TOKEN", token.trim());
    let (_agent, line) = start(agent, "ready on")?;
    eprintln!("{}", line.trim());

    step("register a workload for the current user, and a credential");
    let uid = nix_uid();
    ok(ctl(&[
        "credential",
        "add",
        "api",
        "--audience",
        "https://api.example",
        "--ttl",
        "5m",
        "--scope",
        "read=api:read",
        "--scope",
        "deploy=api:deploy",
    ])?)?;
    ok(ctl(&[
        "workload",
        "add",
        "demo/script",
        "--owner",
        "demo-team",
        "--kind",
        "job",
        "--selector",
        &format!("unix:uid:{uid}"),
        "--allow",
        "api",
    ])?)?;
    eprint!("{}", ok(ctl(&["workload", "list"])?)?);

    step("apply the example Cedar policy and ask it a question");
    let policy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/policy.cedar");
    let policy = policy.to_string_lossy().into_owned();
    ok(ctl(&["policy", "check", &policy])?)?;
    ok(ctl(&["policy", "apply", &policy])?)?;
    // A deploy from this workstation, outside a task: the policy says no.
    let out = ctl(&[
        "policy",
        "explain",
        "--workload",
        "demo/script",
        "--credential",
        "api",
        "--action",
        "deploy",
        "--host",
        "demo-host",
    ])?;
    eprint!("{}", String::from_utf8_lossy(&out.stdout));

    let env_agent = [("LEASH_AGENT_SOCKET", sock.as_path())];
    let leash = |args: &[&str]| call(&bin("leash"), args, &env_agent);
    // Wait until the agent has the new workload (pushed on the Sync stream).
    for _ in 0..50 {
        let out = Command::new(bin("leash"))
            .args(["whoami", "--output", "json"])
            .env("LEASH_AGENT_SOCKET", &sock)
            .output()?;
        if String::from_utf8_lossy(&out.stdout).contains("demo/script") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    step("who am I? (attested from the socket peer, never from what the caller says)");
    eprint!("{}", ok(leash(&["whoami"])?)?);

    step("leash get api: the token on stdout, nothing else");
    let jwt = ok(leash(&["get", "api"])?)?.trim().to_string();
    let claims = claims_of(&jwt)?;
    eprintln!("claims: {}", serde_json::to_string_pretty(&claims)?);
    let jwks: serde_json::Value = serde_json::from_str(&ok(ctl(&["jwks"])?)?)?;
    verify(&jwt, &jwks)?;
    eprintln!(
        "signature verifies against the JWKS (ES256, kid {})",
        jsonwebtoken::decode_header(&jwt)?.kid.unwrap_or_default()
    );
    let lease = claims["jti"].as_str().unwrap_or_default().to_string();

    step("a second fetch is a cache hit (same lease)");
    let again = ok(leash(&["get", "api", "--output", "json"])?)?;
    let again: serde_json::Value = serde_json::from_str(&again)?;
    eprintln!("lease {} cached={}", again["lease_id"], again["cached"]);
    eprint!("{}", ok(leash(&["status"])?)?);

    step("revoke it everywhere and wait for the wipe acknowledgment");
    let out = ok(ctl(&[
        "revoke",
        "--workload",
        "demo/script",
        "--reason",
        "demo",
        "--wait",
    ])?)?;
    eprint!("{out}");
    eprint!("{}", ok(leash(&["status"])?)?);

    step("the old token is no longer active (introspection)");
    let mut c = Command::new(bin("leashctl"));
    c.args(["introspect", "-"])
        .env("LEASH_ADMIN_SOCKET", &admin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = c.spawn()?;
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(jwt.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    eprint!("{}", String::from_utf8_lossy(&out.stdout));

    step("the next fetch gets a new credential (new jti)");
    let next = ok(leash(&["get", "api", "--output", "json"])?)?;
    let next: serde_json::Value = serde_json::from_str(&next)?;
    eprintln!("old lease {lease}, new lease {}", next["lease_id"]);
    anyhow::ensure!(
        next["lease_id"] != lease.as_str(),
        "the revoked lease was served again"
    );

    step("the revoked lease's timeline");
    eprint!("{}", ok(ctl(&["lease", "show", &lease])?)?);

    secrets(d, &bin("leashctl"), &bin("leash"), &admin, &sock)?;
    if args.postgres {
        postgres::run(d, &bin("leashctl"), &bin("leash"), &admin, &sock)?;
    }

    step("done: stopping and cleaning up");
    Ok(())
}

fn nix_uid() -> u32 {
    // xtask avoids a nix dependency for one call: /proc/self/status has it.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|u| u.parse().ok()))
        })
        .unwrap_or(0)
}

/// Run `bin ARGS` with `input` on stdin; its stderr is shown.
fn call_stdin(
    bin: &Path,
    args: &[&str],
    envs: &[(&str, &Path)],
    input: &str,
) -> anyhow::Result<Output> {
    use std::io::Write;
    let mut c = Command::new(bin);
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        c.env(k, v);
    }
    eprintln!(
        "$ … | {} {}",
        bin.file_name().unwrap_or_default().to_string_lossy(),
        args.join(" ")
    );
    let mut child = c.spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(out)
}

/// The brokered-secrets part of the demo: from a `.env` of keys to references, `leash
/// exec` with masking, and a rotation that is pushed and wiped.
fn secrets(
    d: &Path,
    leashctl: &Path,
    leash: &Path,
    admin: &Path,
    sock: &Path,
) -> anyhow::Result<()> {
    let env_admin = [("LEASH_ADMIN_SOCKET", admin)];
    let env_agent = [("LEASH_AGENT_SOCKET", sock)];
    let ctl = |args: &[&str]| call(leashctl, args, &env_admin);
    let get = |args: &[&str]| call(leash, args, &env_agent);

    step("secrets: a .env full of keys, imported into Leash (values never echoed)");
    let dotenv = d.join(".env");
    std::fs::write(
        &dotenv,
        "# the web app's keys\nSTRIPE_KEY=sk_live_demo_4eC39HqLyjWDarjtT1zdp7dc\nDB_URL=postgres://app:s3cr3t-demo@db.internal/app\nPORT=8080\n",
    )?;
    let refs = d.join(".env.leash");
    let dotenv_s = dotenv.to_string_lossy().into_owned();
    let refs_s = refs.to_string_lossy().into_owned();
    ok(ctl(&[
        "secret",
        "import",
        "--env-file",
        &dotenv_s,
        "--prefix",
        "demo/",
        "--owner",
        "demo-team",
        "--write-refs",
        &refs_s,
    ])?)?;
    std::fs::remove_file(&dotenv)?;
    eprintln!("the plaintext .env is deleted; the reference file can be committed:");
    eprint!("{}", std::fs::read_to_string(&refs)?);

    step("secrets: leash get prints the value exactly; leash exec injects and masks it");
    let v1 = ok(get(&["get", "demo/stripe-key"])?)?;
    eprintln!("{v1}");
    let out = ok(call(
        leash,
        &[
            "exec",
            "--env-file",
            &refs_s,
            "--",
            "sh",
            "-c",
            "echo \"the app sees STRIPE_KEY=$STRIPE_KEY (${#STRIPE_KEY} bytes), PORT=$PORT\"",
        ],
        &env_agent,
    )?)?;
    eprint!("{out}");
    anyhow::ensure!(
        out.contains("<leash:demo/stripe-key>") && !out.contains(v1.trim()),
        "the value was not masked in the command's output"
    );
    let json = ok(get(&["get", "demo/stripe-key", "--output", "json"])?)?;
    let first: serde_json::Value = serde_json::from_str(&json)?;
    eprintln!(
        "version {} lease {} cached={}",
        first["version"], first["lease_id"], first["cached"]
    );

    step("secrets: rotate; the old version's leases are revoked, pushed and wiped");
    let out = ok(call_stdin(
        leashctl,
        &["secret", "rotate", "demo/stripe-key", "--wait"],
        &env_admin,
        "sk_live_demo_rotated_9fQ2mZ71bXc0",
    )?)?;
    eprint!("{out}");
    let json = ok(get(&["get", "demo/stripe-key", "--output", "json"])?)?;
    let next: serde_json::Value = serde_json::from_str(&json)?;
    eprintln!(
        "version {} lease {} cached={} (the agent wiped version {})",
        next["version"], next["lease_id"], next["cached"], first["version"]
    );
    anyhow::ensure!(
        next["version"] == 2 && next["lease_id"] != first["lease_id"],
        "the rotation did not reach the agent"
    );
    eprint!("{}", ok(ctl(&["secret", "versions", "demo/stripe-key"])?)?);
    Ok(())
}
