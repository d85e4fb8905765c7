//! Project tasks: `cargo xtask demo`, `cargo xtask test`, `cargo xtask bench …`,
//! `cargo xtask fuzz`, `cargo xtask chaos …`, `cargo xtask soak`, `cargo xtask dist`.

mod bench;
mod chaos;
mod demo;
mod dist;
mod fuzz;
mod soak;

use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Leash project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a local control plane and agent, fetch, revoke and watch the wipe.
    Demo(demo::Args),
    /// Benchmarks against the real release binaries (issue, fetch, revoke).
    Bench(bench::BenchArgs),
    /// Coverage-guided fuzzing of every input parser with libFuzzer (not run in CI).
    Fuzz(fuzz::FuzzArgs),
    /// Fault injection against the real debug binaries (kill -9 under load).
    Chaos(chaos::ChaosArgs),
    /// A long mixed load against the release binaries, watching the daemons' RSS and
    /// open descriptors every minute.
    Soak(soak::Args),
    /// Release tarballs under target/dist/: binaries, systemd units, completions, man
    /// pages and a sample configuration, with SHA256SUMS.
    Dist(dist::Args),
    /// Build the binaries, then run every test (extra arguments go to `cargo test`).
    Test {
        /// Passed to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Run a command, echoing it; fail if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {}", show(cmd));
    let st = cmd.status()?;
    anyhow::ensure!(st.success(), "`{}` failed ({st})", show(cmd));
    Ok(())
}

/// A command as a shell line.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// How the binaries the integration tests run are built.
pub const TEST_BINS_BUILD: [&str; 5] = [
    "build",
    "--workspace",
    "--bins",
    "--features",
    "leash-proto/test-clock",
];

/// The cargo the xtask was started with.
pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The arguments for `cargo test`. Tests that need root are `#[ignore = "needs root: …"]`,
/// so without root the runner reports them as ignored (skipped), never as passed; as root
/// (CI) they are included. `#[ignore = "helper: …"]` tests are never run directly: other
/// tests start them as child processes, and their names end in `_helper`.
fn test_args(mut args: Vec<String>, root: bool) -> Vec<String> {
    if root {
        if !args.iter().any(|a| a == "--") {
            args.push("--".into());
        }
        args.extend(["--include-ignored", "--skip", "_helper"].map(String::from));
    }
    args
}

/// The integration tests mostly wait on the daemons they start (a test uses about half
/// a core), so they run four at a time unless `RUST_TEST_THREADS` says otherwise.
fn test_threads() -> Option<(&'static str, &'static str)> {
    std::env::var_os("RUST_TEST_THREADS")
        .is_none()
        .then_some(("RUST_TEST_THREADS", "4"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Demo(a) => demo::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Fuzz(a) => fuzz::run_fuzz(a),
        Cmd::Chaos(a) => chaos::run(a),
        Cmd::Soak(a) => soak::run(a),
        Cmd::Dist(a) => dist::run(a),
        Cmd::Test { args } => (|| {
            // The integration tests start the real binaries, so build them first, with
            // the clock the tests can move (a debug-only feature; see proto/src/clock.rs).
            // As root the PostgreSQL tests run too (they start throwaway servers as the
            // `postgres` user): say at once, not a test at a time, when it is missing.
            if nix::unistd::geteuid().is_root() {
                leash_tests::pg::bin_dir().map_err(anyhow::Error::msg)?;
            }
            // The third-party clients some tests use (tests/python/requirements.txt), made
            // once from the package registry, not a test at a time; while the binaries
            // build, since it mostly waits on the registry.
            let venv = std::thread::spawn(leash_tests::python::ensure);
            let built = run(cargo().args(TEST_BINS_BUILD));
            venv.join()
                .map_err(|_| anyhow::anyhow!("making the Python environment panicked"))?
                .map_err(anyhow::Error::msg)?;
            built?;
            // The same feature set as the binaries, so the test build reuses what that
            // build compiled instead of compiling the workspace a second time.
            let root = nix::unistd::geteuid().is_root();
            let started = std::time::Instant::now();
            run(cargo()
                .args([
                    "test",
                    "--workspace",
                    "--features",
                    "leash-proto/test-clock",
                ])
                .envs(test_threads())
                .args(test_args(args.clone(), root)))?;
            eprintln!("tests on sled took {:.0?}", started.elapsed());
            // As root (CI), the integration suite again with every control plane on
            // PostgreSQL (see tests/harness/pg.rs `shared`).
            if root {
                let started = std::time::Instant::now();
                run(cargo()
                    .args([
                        "test",
                        "-p",
                        "leash-tests",
                        "--test",
                        "integration",
                        "--features",
                        "leash-proto/test-clock",
                    ])
                    .env(leash_tests::pg::TEST_STORE_ENV, "postgres")
                    .envs(test_threads())
                    .args(test_args(args, root)))?;
                eprintln!(
                    "integration tests on postgres took {:.0?}",
                    started.elapsed()
                );
            }
            Ok(())
        })(),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
