//! `cargo xtask bench exec`: the overhead `leash exec` adds to running `true`, against
//! running `true` directly, measured in the same run.
//!
//! `leash exec` registers a task, fetches one credential bound to it, runs the command,
//! then ends the task (wipe + `completed` at the control plane) before it exits.

use std::process::{Command, Stdio};
use std::time::Instant;

use super::procs::{Agent, ControlPlane};
use super::stats::{dur, header, ratio, Samples, Table};
use super::Ctx;

/// Options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Runs of each command.
    #[arg(long, default_value_t = 100)]
    runs: usize,
}

fn time(runs: usize, mut make: impl FnMut() -> Command) -> anyhow::Result<Samples> {
    let mut s = Samples::with_capacity(runs);
    for _ in 0..runs {
        let mut c = make();
        c.stdout(Stdio::null()).stderr(Stdio::null());
        let t = Instant::now();
        let st = c.status()?;
        s.push(t.elapsed());
        anyhow::ensure!(st.success(), "a measured command failed: {st}");
    }
    Ok(s)
}

/// Run the bench.
pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("leash-bench-exec-")
        .tempdir()?;
    let cp = ControlPlane::start(ctx, dir.path(), None)?;
    cp.add_credential("bench-jwt")?;
    cp.add_workload("bench/exec", nix::unistd::getuid().as_raw(), "bench-jwt")?;
    let agent = Agent::start(ctx, &cp, dir.path(), "bench-exec-host")?;
    let leash = ctx.bin("leash");
    let truth = super::procs::which("true").unwrap_or_else(|| "/bin/true".into());
    // Warm both paths (page cache, the agent's attestation hash cache).
    time(5, || Command::new(&truth))?;
    let exec = |with_env: bool| {
        let mut c = Command::new(&leash);
        c.arg("--socket").arg(&agent.socket).arg("exec");
        if with_env {
            c.arg("--env").arg("TOKEN=bench-jwt");
        }
        c.arg("--").arg(&truth);
        c
    };
    time(5, || exec(true))?;
    // Interleave in blocks so drift in machine load hits all three alike.
    let (mut direct, mut bare, mut with_cred) = (
        Samples::with_capacity(a.runs),
        Samples::with_capacity(a.runs),
        Samples::with_capacity(a.runs),
    );
    for _ in 0..a.runs.div_ceil(10) {
        direct.extend(time(10, || Command::new(&truth))?);
        bare.extend(time(10, || exec(false))?);
        with_cred.extend(time(10, || exec(true))?);
    }
    header(
        "bench exec: `leash exec` around `true`",
        &format!("cargo xtask bench exec --runs {}", a.runs),
        &format!("--runs {}", a.runs),
    );
    let mut t = Table::new(&[
        "command",
        "runs",
        "median",
        "p99",
        "median overhead vs `true`",
        "ratio",
    ]);
    let base = direct.p50();
    for (name, s) in [
        ("`true` directly", &direct),
        ("`leash exec -- true` (task, no credential)", &bare),
        (
            "`leash exec --env TOKEN=bench-jwt -- true` (task + one credential)",
            &with_cred,
        ),
    ] {
        t.row(vec![
            name.to_string(),
            s.len().to_string(),
            dur(s.p50()),
            dur(s.p99()),
            dur(s.p50().saturating_sub(base)),
            ratio(s.p50().as_secs_f64(), base.as_secs_f64()),
        ]);
    }
    t.print();
    Ok(())
}
