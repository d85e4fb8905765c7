//! `cargo xtask bench masking`: what `leash exec`'s output masking costs a child that
//! writes a lot. `cat FILE` (100 MB of log-like text by default) runs alone, under
//! `leash exec --no-masking`, and under `leash exec --env TOKEN=bench-jwt` (masking on,
//! one JWT and its encodings to look for).
//!
//! The three are measured the same way, so that the ratio compares the commands and not
//! how each one's output was collected: each run's stdout is a pipe this process makes,
//! enlarged to the size `leash exec` gives its own pipes (1 MiB, `F_SETPIPE_SZ`), and read
//! to the end 1 MiB at a time, as a log collector would. The variants are interleaved
//! round by round, each round starting with the next one, so drift in machine load and
//! whatever the first run of a round pays fall on all of them alike. Per variant: median
//! and minimum wall time, MB/s, and the ratio of medians against `cat` alone; the target
//! is at most 1.10× for the masked run.
//!
//! The same commands also run around an empty file, adding one step at a time (the task
//! alone, then the fetch of a credential, then the masking filter), so that the fixed
//! cost of `leash exec` is reported apart from what each byte costs; the 100 MB ratio is
//! then explained as that fixed cost plus the bytes.

use std::io::{Read, Write};

use anyhow::Context;
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
    #[arg(long, default_value_t = 15)]
    rounds: usize,
    /// Runs of each command around an empty file (the fixed cost of `leash exec`).
    #[arg(long, default_value_t = 40)]
    fixed_rounds: usize,
    /// A directory holding a `leash` from another build (for example the commit before
    /// a change to the filter, built with `cargo build --release`): its masked run is
    /// measured too, in the same interleaved rounds, against the same agent.
    #[arg(long, value_name = "DIR")]
    baseline: Option<std::path::PathBuf>,
}

/// `xtask bench relay -- CMD ARGS`
#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// The command whose output is relayed.
    #[arg(trailing_var_arg = true, required = true)]
    command: Vec<String>,
}

/// Run a command with its stdout a pipe of [`PIPE_BYTES`] and pass everything it writes
/// on to our stdout as `leash exec`'s filter does (`tee` into a pipe of our own, `read`
/// from there, `splice` the original on), but without scanning what was read: what any
/// filter that sees every byte once costs, whatever it looks for.
pub fn relay(a: RelayArgs) -> anyhow::Result<()> {
    use leash_agentd::sys::{splice, tee};
    use std::os::fd::{AsFd, AsRawFd};
    let size = |fd: &dyn AsRawFd| {
        let _ = nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES as nix::libc::c_int),
        );
    };
    let (input, w) = std::io::pipe()?;
    let (peek_r, peek_w) = std::io::pipe()?;
    size(&w);
    size(&peek_w);
    let (program, args) = a.command.split_first().context("no command")?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::from(w));
    let mut child = cmd.spawn()?;
    drop(cmd);
    let stdout = std::io::stdout();
    let mut buf = vec![0u8; PIPE_BYTES];
    loop {
        let n = tee(input.as_fd(), peek_w.as_fd(), PIPE_BYTES)?;
        if n == 0 {
            break;
        }
        (&peek_r).read_exact(&mut buf[..n])?;
        std::hint::black_box(&buf[..n]);
        let mut moved = 0;
        while moved < n {
            moved += splice(input.as_fd(), stdout.as_fd(), n - moved)?;
        }
    }
    let st = child.wait()?;
    anyhow::ensure!(st.success(), "the relayed command failed: {st}");
    Ok(())
}

/// The size of the pipe every measured command writes into, and of each read from it:
/// what `leash exec` uses for the pipes between its child and itself.
const PIPE_BYTES: usize = 1024 * 1024;

/// Run `cmd` with its stdout a fresh pipe of [`PIPE_BYTES`] (when the kernel allows)
/// and read that pipe to the end; the wall time, the bytes read and the pipe's size.
fn time(mut cmd: Command) -> anyhow::Result<(Duration, u64, usize)> {
    use std::os::fd::AsRawFd;
    let (mut out, w) = std::io::pipe()?;
    let _ = nix::fcntl::fcntl(
        out.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES as nix::libc::c_int),
    );
    let pipe = nix::fcntl::fcntl(out.as_raw_fd(), nix::fcntl::FcntlArg::F_GETPIPE_SZ)
        .map(|n| n as usize)
        .unwrap_or(0);
    cmd.stdout(Stdio::from(w)).stderr(Stdio::null());
    let mut buf = vec![0u8; PIPE_BYTES];
    let t = Instant::now();
    let mut child = cmd.spawn()?;
    // The command holds the pipe's write end: closed here, so only the child's is open
    // and the read below ends when the child's output does.
    drop(cmd);
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
    Ok((elapsed, n, pipe))
}

/// A command to measure, made afresh for each run.
type Variant<'a> = Box<dyn Fn() -> Command + 'a>;

/// Run every variant `rounds` times, interleaved: drift in machine load hits all of them
/// alike, and each round starts with the next variant, so none is always the one that
/// runs first. Each run must print `size` bytes. One set of samples per variant.
fn interleaved(
    variants: &[(&str, Variant<'_>)],
    rounds: usize,
    size: u64,
) -> anyhow::Result<Vec<Samples>> {
    let mut out: Vec<Samples> = variants
        .iter()
        .map(|_| Samples::with_capacity(rounds))
        .collect();
    let k = variants.len();
    for round in 0..rounds {
        for i in 0..k {
            let v = (i + round) % k;
            let (d, n, _) = time((variants[v].1)())?;
            anyhow::ensure!(n == size, "read {n} bytes of {size}: output was lost");
            out[v].push(d);
        }
    }
    Ok(out)
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
    let empty = dir.path().join("empty.log");
    std::fs::write(&empty, b"")?;
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
    let me = std::env::current_exe()?;
    let plain = |path: &std::path::Path| {
        let mut c = Command::new(&cat);
        c.arg(path);
        c
    };
    let exec_with = |leash: &std::path::Path, path: &std::path::Path, masking: bool| {
        let mut c = Command::new(leash);
        c.arg("--socket").arg(&agent.socket).arg("exec");
        if !masking {
            c.arg("--no-masking");
        }
        c.arg("--env")
            .arg("TOKEN=bench-jwt")
            .arg("--")
            .arg(&cat)
            .arg(path);
        c
    };
    let exec = |path: &std::path::Path, masking: bool| exec_with(&leash, path, masking);
    // The task alone: StartTask, the spawn and EndTask, no credential (so no fetch and no
    // filter: masking has nothing to look for).
    let task_only = |path: &std::path::Path| {
        let mut c = Command::new(&leash);
        c.arg("--socket")
            .arg(&agent.socket)
            .arg("exec")
            .arg("--")
            .arg(&cat)
            .arg(path);
        c
    };
    // Warm the page cache and the agent.
    time(plain(&file))?;
    let (_, _, pipe) = time(exec(&file, true))?;

    // 1. The fixed cost: the same commands around an empty file, so that what `leash
    // exec` costs whatever the output is measured on its own, step by step.
    let steps: [(&str, Variant<'_>); 4] = [
        ("`cat EMPTY`", Box::new(|| plain(&empty))),
        (
            "`leash exec -- cat EMPTY` (task only: StartTask, spawn, EndTask)",
            Box::new(|| task_only(&empty)),
        ),
        (
            "`leash exec --no-masking --env TOKEN=bench-jwt -- cat EMPTY` (+ fetch)",
            Box::new(|| exec(&empty, false)),
        ),
        (
            "`leash exec --env TOKEN=bench-jwt -- cat EMPTY` (+ masking filter)",
            Box::new(|| exec(&empty, true)),
        ),
    ];
    let fixed = interleaved(&steps, a.fixed_rounds, 0)?;

    // 2. The throughput: 100 MB (by default) through each.
    let mut variants: Vec<(&str, Variant<'_>)> = vec![
        ("`cat FILE`", Box::new(|| plain(&file))),
        (
            "`leash exec --no-masking --env TOKEN=bench-jwt -- cat FILE`",
            Box::new(|| exec(&file, false)),
        ),
        (
            "`leash exec --env TOKEN=bench-jwt -- cat FILE` (masked)",
            Box::new(|| exec(&file, true)),
        ),
        (
            "`cat FILE` relayed by a process that reads every byte once and passes it on as the filter does (tee, read, splice), without scanning, agent or task: the floor of any filter",
            Box::new(|| {
                let mut c = Command::new(&me);
                c.args(["bench", "relay", "--"]).arg(&cat).arg(&file);
                c
            }),
        ),
    ];
    if let Some(b) = &base_leash {
        variants.push((
            "baseline `leash exec --env TOKEN=bench-jwt -- cat FILE` (masked, the --baseline build)",
            Box::new(|| exec_with(b, &file, true)),
        ));
    }
    let big = interleaved(&variants, a.rounds, size)?;
    header(
        "bench masking: `leash exec -- cat FILE` against `cat FILE`",
        &ctx.command,
        &format!(
            "--mb {} --rounds {} --fixed-rounds {}{} (each command's stdout a pipe of {} KiB, read to the end {} KiB at a time; variants interleaved, each round starting with the next)",
            a.mb,
            a.rounds,
            a.fixed_rounds,
            match &a.baseline {
                Some(d) => format!(" --baseline {}", d.display()),
                None => String::new(),
            },
            pipe / 1024,
            PIPE_BYTES / 1024,
        ),
    );
    println!(
        "### The fixed cost of `leash exec` (an empty file, {} rounds)",
        a.fixed_rounds
    );
    println!();
    let mut t = Table::new(&[
        "command",
        "rounds",
        "median wall time",
        "min wall time",
        "median more than the row above",
    ]);
    for (i, ((name, _), s)) in steps.iter().zip(&fixed).enumerate() {
        let more = match i.checked_sub(1) {
            Some(j) => {
                let (now, before) = (s.p50(), fixed[j].p50());
                if now >= before {
                    format!("+{}", dur(now - before))
                } else {
                    format!("−{}", dur(before - now))
                }
            }
            None => "-".to_string(),
        };
        t.row(vec![
            name.to_string(),
            s.len().to_string(),
            dur(s.p50()),
            dur(s.min()),
            more,
        ]);
    }
    t.print();
    println!();
    println!("### {} MB through each command ({} rounds)", a.mb, a.rounds);
    println!();
    let mut t = Table::new(&[
        "command",
        "rounds",
        "median wall time",
        "min wall time",
        "MB/s (median)",
        "ratio of medians vs `cat`",
        "ratio of minimums vs `cat`",
    ]);
    let (alone, unmasked, masked) = (&big[0], &big[1], &big[2]);
    let base = alone.p50().as_secs_f64();
    let base_min = alone.min().as_secs_f64();
    for ((name, _), s) in variants.iter().zip(&big) {
        let secs = s.p50().as_secs_f64();
        t.row(vec![
            name.to_string(),
            s.len().to_string(),
            dur(s.p50()),
            dur(s.min()),
            format!("{:.0}", size as f64 / 1e6 / secs.max(1e-9)),
            ratio(secs, base),
            ratio(s.min().as_secs_f64(), base_min),
        ]);
    }
    t.print();
    let r = masked.p50().as_secs_f64() / base.max(1e-9);
    let plain_exec = unmasked.p50().as_secs_f64() / base.max(1e-9);
    println!();
    println!(
        "`leash exec` itself (--no-masking) / `cat` alone: {plain_exec:.2}× (median {} more); masking on top of it: {:.2}×",
        dur(unmasked.p50().saturating_sub(alone.p50())),
        masked.p50().as_secs_f64() / unmasked.p50().as_secs_f64().max(1e-9),
    );
    // The 100 MB figure explained: the fixed cost (the masked run around an empty file,
    // less `cat EMPTY`) plus what each byte costs more than it does under `cat` alone.
    let fixed_cost = fixed[3].p50().saturating_sub(fixed[0].p50());
    let cat_bytes = alone.p50().saturating_sub(fixed[0].p50()).as_secs_f64();
    let masked_bytes = masked.p50().saturating_sub(fixed[3].p50()).as_secs_f64();
    println!(
        "Masked = fixed cost {} ({:.0} % of `cat FILE`) + the bytes: {:.2}× what they take under `cat` alone",
        dur(fixed_cost),
        100.0 * fixed_cost.as_secs_f64() / base.max(1e-9),
        masked_bytes / cat_bytes.max(1e-9),
    );
    let relayed = &big[3];
    println!(
        "The floor of any filter: `cat FILE` relayed (every byte read once and passed on, nothing scanned, no agent or task) / `cat` alone: {:.2}× (ratio of minimums {:.2}×); masked / relayed: {:.2}×",
        relayed.p50().as_secs_f64() / base.max(1e-9),
        relayed.min().as_secs_f64() / base_min.max(1e-9),
        masked.p50().as_secs_f64() / relayed.p50().as_secs_f64().max(1e-9),
    );
    println!(
        "Target: masked ≤ 1.10× `cat` alone ({:.2}×): {}",
        r,
        met(r <= 1.10)
    );
    Ok(())
}
