//! `cargo xtask bench masking`: what `leash exec`'s output masking costs a child that
//! writes a lot. `cat FILE` (100 MB of log-like text by default) runs alone, under
//! `leash exec --no-masking`, and under `leash exec --env TOKEN=bench-jwt` (masking on,
//! one JWT and its encodings to look for); each run's stdout is a pipe this process reads
//! to the end, as a log collector would. Wall time medians over the rounds, MB/s and the
//! ratio against `cat` alone; the target is at most 1.10×.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::procs::{Agent, ControlPlane};
use super::stats::{dur, header, met, ratio, Samples, Table};
use super::Ctx;

/// Options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Size of the file `cat` writes, in MB.
    #[arg(long, default_value_t = 100)]
    mb: usize,
    /// Runs of each command.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// A directory holding a `leash` from another build (for example the commit before
    /// a change to the filter, built with `cargo build --release`): its masked run is
    /// measured too, in the same interleaved rounds, against the same agent.
    #[arg(long, value_name = "DIR")]
    baseline: Option<std::path::PathBuf>,
}

/// Run `cmd`, read its stdout to the end; the wall time and the bytes read.
fn time(mut cmd: Command) -> anyhow::Result<(Duration, u64)> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let t = Instant::now();
    let mut child = cmd.spawn()?;
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let r = out.read(&mut buf)?;
        if r == 0 {
            break;
        }
        n += r as u64;
    }
    let st = child.wait()?;
    let elapsed = t.elapsed();
    anyhow::ensure!(st.success(), "a measured command failed: {st}");
    Ok((elapsed, n))
}

/// Log-like lines, `mb` MB of them.
fn write_file(path: &std::path::Path, mb: usize) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let target = mb * 1_000_000;
    let mut written = 0;
    let mut i: u64 = 0;
    while written < target {
        let line = format!(
            "2026-11-28T17:41:{:02}.{:03}Z INFO request id={i:016x} path=/v1/items/{} status=200 bytes={} took={}ms\n",
            i % 60,
            i % 1000,
            i % 9973,
            (i * 7919) % 65536,
            i % 250
        );
        f.write_all(line.as_bytes())?;
        written += line.len();
        i += 1;
    }
    f.flush()?;
    Ok(())
}

/// Run the bench.
pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("leash-bench-masking-")
        .tempdir()?;
    let file = dir.path().join("output.log");
    write_file(&file, a.mb)?;
    let size = std::fs::metadata(&file)?.len();
    let cp = ControlPlane::start(ctx, dir.path(), None)?;
    cp.add_credential("bench-jwt")?;
    cp.add_workload("bench/mask", nix::unistd::getuid().as_raw(), "bench-jwt")?;
    let agent = Agent::start(ctx, &cp, dir.path(), "bench-mask-host")?;
    let leash = ctx.bin("leash");
    let base_leash = match &a.baseline {
        Some(d) => Some(ctx.baseline(d, &["leash"])?.bin("leash")),
        None => None,
    };
    let cat = super::procs::which("cat").unwrap_or_else(|| "/bin/cat".into());
    let plain = || {
        let mut c = Command::new(&cat);
        c.arg(&file);
        c
    };
    let exec_with = |leash: &std::path::Path, masking: bool| {
        let mut c = Command::new(leash);
        c.arg("--socket").arg(&agent.socket).arg("exec");
        if !masking {
            c.arg("--no-masking");
        }
        c.arg("--env")
            .arg("TOKEN=bench-jwt")
            .arg("--")
            .arg(&cat)
            .arg(&file);
        c
    };
    let exec = |masking: bool| exec_with(&leash, masking);
    // Warm the page cache and the agent.
    time(plain())?;
    time(exec(true))?;
    let (mut alone, mut unmasked, mut masked, mut base_masked) = (
        Samples::with_capacity(a.rounds),
        Samples::with_capacity(a.rounds),
        Samples::with_capacity(a.rounds),
        Samples::with_capacity(a.rounds),
    );
    // Interleaved, so drift in machine load hits all of them alike.
    for _ in 0..a.rounds {
        let mut cmds = vec![
            (&mut alone, plain()),
            (&mut unmasked, exec(false)),
            (&mut masked, exec(true)),
        ];
        if let Some(b) = &base_leash {
            cmds.push((&mut base_masked, exec_with(b, true)));
        }
        for (s, cmd) in cmds {
            let (d, n) = time(cmd)?;
            anyhow::ensure!(n == size, "read {n} bytes of {size}: output was lost");
            s.push(d);
        }
    }
    header(
        "bench masking: `leash exec -- cat FILE` against `cat FILE`",
        &ctx.command,
        &format!(
            "--mb {} --rounds {}{} (stdout a pipe read to the end by the bench)",
            a.mb,
            a.rounds,
            match &a.baseline {
                Some(d) => format!(" --baseline {}", d.display()),
                None => String::new(),
            }
        ),
    );
    let mut t = Table::new(&[
        "command",
        "rounds",
        "median wall time",
        "MB/s",
        "ratio vs `cat`",
    ]);
    let base = alone.p50().as_secs_f64();
    for (name, s) in [
        ("`cat FILE`", &alone),
        (
            "`leash exec --no-masking --env TOKEN=bench-jwt -- cat FILE`",
            &unmasked,
        ),
        (
            "`leash exec --env TOKEN=bench-jwt -- cat FILE` (masked)",
            &masked,
        ),
    ]
    .into_iter()
    .chain(base_leash.is_some().then_some((
        "baseline `leash exec --env TOKEN=bench-jwt -- cat FILE` (masked, the --baseline build)",
        &base_masked,
    ))) {
        let secs = s.p50().as_secs_f64();
        t.row(vec![
            name.to_string(),
            s.len().to_string(),
            dur(s.p50()),
            format!("{:.0}", size as f64 / 1e6 / secs.max(1e-9)),
            ratio(secs, base),
        ]);
    }
    t.print();
    let r = masked.p50().as_secs_f64() / base.max(1e-9);
    println!();
    println!(
        "Target: masked ≤ 1.10× `cat` alone ({:.2}×): {}",
        r,
        met(r <= 1.10)
    );
    Ok(())
}
