//! `cargo xtask bench …`: the performance figures the issues ask for, measured against
//! the real release binaries on loopback.
//!
//! - `issue`: Issue over mTLS against a real control plane, at concurrency 1 and 32,
//!   next to the raw sled insert+flush rate on the same disk; with `--store postgres
//!   --replicas N`, N replicas on one PostgreSQL against sled in the same run.
//! - `fetch`: the agent's cache-hit Fetch against a bare tonic echo service on a Unix
//!   socket, `leash get` against a minimal client process, cold issuance through the
//!   agent, and agentd's RSS with 1,000 cached credentials.
//! - `enroll-flood`: unauthenticated Enroll calls with never-minted join tokens; their
//!   time, answers, and what they leave in the audit log and on disk.
//! - `masking`: `leash exec -- cat FILE` (100 MB) with output masking, without, and
//!   `cat` alone.
//! - `revoke`: N simulated agents with real mTLS and Sync streams; time from Revoke to
//!   the last wipe acknowledgment, and control-plane memory per agent; with `--store
//!   postgres --replicas N`, the agents spread over replicas, against sled in the run.
//! - `failover`: `kill -9` of one of N replicas on PostgreSQL; time until each of its
//!   simulated agents has reconnected to another, caught up and been issued again.
//! - `spiffe`: the SPIFFE Workload API from the Rust `spiffe` crate against Leash's own
//!   Fetch (cache hits), and revoke → update on open X.509-SVID streams.
//! - `postgres`: dynamic PostgreSQL credentials against a local server: issuances/s at
//!   concurrency 1 and 16, revoke → role dropped → session cut, and where the time goes.
//!
//! Every bench first builds the product binaries in release mode, and then re-runs
//! itself from a release build of xtask: the load generator shares the machine with what
//! it measures, so a debug-built generator would inflate every figure. Each bench prints
//! markdown tables together with the exact command that produced them. Children are
//! killed on drop and temp dirs removed, so a failed run leaves nothing behind.

mod echo;
mod enroll;
mod exec;
mod fetch;
mod fetch_secret;
mod ha;
mod issue;
pub(crate) mod issue_pg;
mod masking;
mod postgres;
pub(crate) mod procs;
mod revoke;
pub(crate) mod sim;
mod spiffe;
pub(crate) mod stats;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use clap::Subcommand;

/// Set in the environment of the release re-run, so it neither builds nor re-runs again.
const CHILD_ENV: &str = "LEASH_BENCH_RELEASE_CHILD";

/// `cargo xtask bench …`
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    cmd: BenchCmd,
}

#[derive(Debug, Subcommand)]
enum BenchCmd {
    /// Issue over mTLS against a real control plane.
    Issue(issue::Args),
    /// Fetch through a real agent vs. a bare tonic echo service.
    Fetch(fetch::Args),
    /// Revocation fan-out to N simulated agents.
    Revoke(revoke::Args),
    /// `kill -9` of a PostgreSQL replica: time until its agents serve from another.
    Failover(ha::FailoverArgs),
    /// The overhead of `leash exec` around `true`.
    Exec(exec::Args),
    /// Unauthenticated Enroll calls with bogus join tokens: time, answers, audit growth.
    EnrollFlood(enroll::Args),
    /// The cost of `leash exec`'s output masking: `cat` of a 100 MB file, with and without.
    Masking(masking::Args),
    /// Dynamic PostgreSQL credentials: Issue rate, revoke → role dropped → session cut.
    Postgres(postgres::Args),
    /// The SPIFFE Workload API against Fetch; revoke → update on open X.509 streams.
    Spiffe(spiffe::Args),
    /// Minimal client process: connect to a Unix socket, one Fetch, print the token.
    #[command(hide = true)]
    Client(echo::ClientArgs),
    /// The echo baseline: the Agent service with a trivial Fetch, on a Unix socket.
    #[command(hide = true)]
    EchoServer(echo::ServerArgs),
    /// The floor of output masking: run a command and pass its output on as the filter
    /// does (tee, read, splice), without scanning it.
    #[command(hide = true)]
    Relay(masking::RelayArgs),
}

/// Run a bench.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.cmd {
        // Hidden helpers run as children of a bench: no builds, no re-run.
        BenchCmd::Client(a) => echo::client(a),
        BenchCmd::EchoServer(a) => echo::server(a),
        BenchCmd::Relay(a) => masking::relay(a),
        cmd => {
            if std::env::var_os(CHILD_ENV).is_none() {
                build_and_rerun()?;
                if cfg!(debug_assertions) {
                    unreachable!("build_and_rerun execs the release build");
                }
            }
            let ctx = Ctx::new()?;
            match cmd {
                BenchCmd::Issue(a) => issue::run(&ctx, a),
                BenchCmd::Fetch(a) => fetch::run(&ctx, a),
                BenchCmd::Revoke(a) => revoke::run(&ctx, a),
                BenchCmd::Failover(a) => ha::failover(&ctx, a),
                BenchCmd::Exec(a) => exec::run(&ctx, a),
                BenchCmd::EnrollFlood(a) => enroll::run(&ctx, a),
                BenchCmd::Masking(a) => masking::run(&ctx, a),
                BenchCmd::Postgres(a) => postgres::run(&ctx, a),
                BenchCmd::Spiffe(a) => spiffe::run(&ctx, a),
                BenchCmd::Client(_) | BenchCmd::EchoServer(_) | BenchCmd::Relay(_) => {
                    unreachable!("handled above")
                }
            }
        }
    }
}

/// Where things are, and how this run was invoked.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// `target/release` (or `target/debug` for a quick check of the soak).
    release: PathBuf,
    /// The command line to print next to every table.
    command: String,
}

impl Ctx {
    pub(crate) fn new() -> anyhow::Result<Ctx> {
        Ctx::in_profile("release")
    }

    /// The binaries of `target/<profile>` (e.g. "debug", for a quick check).
    pub(crate) fn in_profile(profile: &str) -> anyhow::Result<Ctx> {
        let release = target_dir().join(profile);
        for bin in ["leash-control-plane", "leashctl", "leash-agentd", "leash"] {
            let p = release.join(bin);
            if !p.exists() {
                bail!(
                    "{} is missing; build it (`cargo xtask bench` and `cargo xtask soak` build the release binaries)",
                    p.display()
                );
            }
        }
        Ok(Ctx {
            release,
            command: invocation(),
        })
    }

    /// The binaries of another build in `dir` (a `--baseline`), checked to hold `bins`.
    pub(crate) fn baseline(&self, dir: &std::path::Path, bins: &[&str]) -> anyhow::Result<Ctx> {
        for bin in bins {
            anyhow::ensure!(
                dir.join(bin).exists(),
                "{} is missing: --baseline wants a directory holding a release build of {bin}",
                dir.join(bin).display()
            );
        }
        Ok(Ctx {
            release: dir.to_path_buf(),
            command: self.command.clone(),
        })
    }

    pub(crate) fn bin(&self, name: &str) -> PathBuf {
        self.release.join(name)
    }

    /// The binaries of `target/<profile>` (checked), for tasks that run the debug build.
    pub(crate) fn profile(profile: &str, command: String) -> anyhow::Result<Ctx> {
        let dir = target_dir().join(profile);
        for bin in ["leash-control-plane", "leashctl", "leash-agentd", "leash"] {
            let p = dir.join(bin);
            if !p.exists() {
                bail!(
                    "{} is missing; build it with `cargo build --workspace --bins`",
                    p.display()
                );
            }
        }
        Ok(Ctx {
            release: dir,
            command,
        })
    }
}

fn workspace_root() -> PathBuf {
    // xtask/ sits at the workspace root.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// `cargo xtask bench <args as given>`, quoted for a shell where needed.
fn invocation() -> String {
    let args: Vec<String> = std::env::args().skip_while(|a| a != "bench").collect();
    let mut s = String::from("cargo xtask");
    for a in args {
        s.push(' ');
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$`\\|&;<>()*?".contains(c))
        {
            s.push('\'');
            s.push_str(&a.replace('\'', r"'\''"));
            s.push('\'');
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// A command as a shell line, with join tokens left out.
pub(crate) fn shown(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    let mut secret_next = false;
    for a in cmd.get_args() {
        s.push(' ');
        if secret_next {
            s.push_str("<join-token>");
        } else {
            s.push_str(&a.to_string_lossy());
        }
        secret_next = a == "--join-token";
    }
    s
}

pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    clean_env(&mut c);
    c
}

/// Drop what `cargo run` put in our environment (the package's `CARGO_*` variables and
/// a `LD_LIBRARY_PATH` into target/debug): a nested cargo that inherits them fingerprints
/// some dependencies differently and rebuilds them on every run.
fn clean_env(c: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_") || k.starts_with("CARGO_MANIFEST_") || k == "LD_LIBRARY_PATH"
        {
            c.env_remove(&*k);
        }
    }
}

pub(crate) fn run_cmd(mut cmd: Command) -> anyhow::Result<()> {
    eprintln!("$ {}", shown(&cmd));
    let st = cmd
        .status()
        .with_context(|| format!("cannot run `{}`", shown(&cmd)))?;
    if !st.success() {
        bail!("`{}` failed ({st})", shown(&cmd));
    }
    Ok(())
}

/// Build the four product binaries in release mode.
pub(crate) fn build_release_binaries() -> anyhow::Result<()> {
    let mut bins = cargo();
    bins.args([
        "build",
        "--release",
        "--bins",
        "-p",
        "leash-control-plane",
        "-p",
        "leash-agentd",
    ]);
    run_cmd(bins)
}

/// Build the product binaries in release mode; when this xtask is a debug build, also
/// build xtask in release mode and replace this process with it.
fn build_and_rerun() -> anyhow::Result<()> {
    build_release_binaries()?;
    if !cfg!(debug_assertions) {
        // Already a release build (`cargo run --release -p xtask -- bench …`): this
        // process is the load generator, and its own binary serves the hidden helpers.
        return Ok(());
    }
    let mut xtask = cargo();
    xtask.args(["build", "--release", "-p", "xtask"]);
    run_cmd(xtask)?;
    let me = target_dir().join("release/xtask");
    let args: Vec<String> = std::env::args().skip(1).collect();
    eprintln!(
        "$ {} {}  # the load generator runs from the release build",
        me.display(),
        args.join(" ")
    );
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(&me);
    child.args(&args).env(CHILD_ENV, "1");
    clean_env(&mut child);
    let err = child.exec();
    Err(anyhow::anyhow!("cannot run {}: {err}", me.display()))
}
