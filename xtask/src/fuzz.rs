//! `cargo xtask fuzz [TARGET] [--runs N | --seconds S]`: coverage-guided fuzzing of the
//! targets in `tests/fuzz` with libFuzzer, on the stable toolchain.
//!
//! The targets are built with SanitizerCoverage instrumentation (what `cargo fuzz` does
//! without a sanitizer), debug assertions, overflow checks and opt-level 1, into `target/fuzz` so the
//! normal build is never invalidated. Each target starts from its seed corpus (written
//! by the binary itself from `leash_fuzz::seeds`) and runs until N executions or S
//! seconds; a crash stops that target and leaves its input under
//! `target/fuzz/artifacts/<target>/`. Add such an input to `tests/fuzz/corpus/<target>/`
//! once it is fixed, so the smoke tests replay it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;

use crate::{cargo, run, show};

/// The targets, as `tests/fuzz/fuzz_targets/*.rs` names them.
const TARGETS: &[&str] = &[
    "policy",
    "config",
    "join_token",
    "agent_request",
    "cp_request",
    "reference",
    "envfile",
    "http_query",
];

const RUSTFLAGS: &str = "-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing";

/// `cargo xtask fuzz` arguments.
#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// One target (policy, config, join_token, agent_request, cp_request, reference,
    /// envfile, http_query); all by default.
    target: Option<String>,
    /// Executions per target.
    #[arg(long, default_value_t = 1_000_000, conflicts_with = "seconds")]
    runs: u64,
    /// Run each target for this many seconds instead of a number of executions.
    #[arg(long)]
    seconds: Option<u64>,
}

/// What one target did.
#[derive(Debug)]
struct Outcome {
    target: String,
    executions: u64,
    crashes: usize,
    seconds: f64,
    command: String,
}

fn host_triple() -> anyhow::Result<String> {
    let out = Command::new("rustc").arg("-vV").output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("`rustc -vV` names no host")
}

/// Run the fuzzer.
pub fn run_fuzz(a: FuzzArgs) -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent dir")?
        .to_path_buf();
    let targets: Vec<&str> = match &a.target {
        Some(t) => {
            anyhow::ensure!(
                TARGETS.contains(&t.as_str()),
                "no fuzz target {t:?}; the targets are {}",
                TARGETS.join(", ")
            );
            vec![t.as_str()]
        }
        None => TARGETS.to_vec(),
    };
    let triple = host_triple()?;
    let target_dir = root.join("target/fuzz");
    // `--target` keeps the instrumentation off build scripts and proc macros.
    run(cargo()
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "leash-fuzz",
            "--features",
            "libfuzzer",
            "--bins",
        ])
        .args(["--target", &triple])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", RUSTFLAGS)
        // opt-level 1: a fraction of the build time of 3 (everything, Cedar included,
        // is rebuilt instrumented), and still fast enough for a million executions.
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "1")
        .env("CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS", "true")
        .env("CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS", "true"))?;
    let bin_dir = target_dir.join(&triple).join("release");
    let mut outcomes = Vec::new();
    for t in &targets {
        outcomes.push(fuzz_one(&bin_dir, &target_dir, t, &a)?);
    }
    println!();
    println!(
        "{:<14} {:>12} {:>8} {:>10}",
        "target", "executions", "crashes", "seconds"
    );
    for o in &outcomes {
        println!(
            "{:<14} {:>12} {:>8} {:>10.1}",
            o.target, o.executions, o.crashes, o.seconds
        );
    }
    for o in &outcomes {
        println!("{}: {}", o.target, o.command);
    }
    let crashed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.crashes > 0)
        .map(|o| o.target.as_str())
        .collect();
    anyhow::ensure!(
        crashed.is_empty(),
        "crashes in {}: inputs under {}",
        crashed.join(", "),
        target_dir.join("artifacts").display()
    );
    Ok(())
}

fn fuzz_one(bin_dir: &Path, target_dir: &Path, t: &str, a: &FuzzArgs) -> anyhow::Result<Outcome> {
    let corpus = target_dir.join("corpus").join(t);
    let artifacts = target_dir.join("artifacts").join(t);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let before = count_files(&artifacts);
    let mut cmd = Command::new(bin_dir.join(t));
    cmd.arg(&corpus)
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .arg("-timeout=30")
        .arg("-rss_limit_mb=4096")
        .arg("-max_len=65536");
    match a.seconds {
        Some(s) => cmd.arg(format!("-max_total_time={s}")),
        None => cmd.arg(format!("-runs={}", a.runs)),
    };
    // The binary writes its seeds into the corpus before libFuzzer reads it.
    cmd.env("LEASH_FUZZ_SEEDS", &corpus);
    let command = show(&cmd);
    eprintln!("$ {command}");
    let log_path = target_dir.join(format!("{t}.log"));
    let log = std::fs::File::create(&log_path)?;
    let started = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .with_context(|| format!("cannot start {}", bin_dir.join(t).display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let executions = text
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let crashes = count_files(&artifacts).saturating_sub(before);
    if !status.success() && crashes == 0 {
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        anyhow::bail!(
            "{t} failed ({status}) without a crash input; its log ({}) ends:\n{}",
            log_path.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    eprintln!(
        "{t}: {executions} executions, {crashes} crashes, {seconds:.1}s (log: {})",
        log_path.display()
    );
    Ok(Outcome {
        target: t.to_string(),
        executions,
        crashes,
        seconds,
        command,
    })
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}
