//! Start-up shared by the four binaries (`leash-control-plane`, `leash-agentd`,
//! `leashctl`, `leash`): reading the command line with Leash's exit codes, the daemons'
//! logging and shutdown signals, the async runtimes, and how a failure ends the process.
//!
//! Signals:
//! - The daemons stop gracefully on SIGTERM or SIGINT ([`shutdown_signal`]).
//! - SIGPIPE: Rust starts every binary with SIGPIPE ignored, and none of them restores
//!   the default. A write to a closed pipe then fails with `EPIPE` instead of killing the
//!   process without a word. The CLIs turn that failure into a quiet exit
//!   ([`crate::cli::print_line`]); with SIGPIPE's default they would also die silently
//!   when a daemon closes its socket mid-call, losing the exit code that says
//!   "unavailable".
//!
//! Exit codes: clap exits 2 on bad usage, but Leash reserves 2 for "denied" (docs/CLI.md),
//! so [`parse_args`] makes a usage error exit [`USAGE_EXIT`] (or what the caller asks,
//! e.g. 125 for `leash exec`), and `--help` / `--version` exit 0.

use std::fmt::Display;
use std::process::ExitCode;

/// Exit status of a usage error or bad input.
pub const USAGE_EXIT: u8 = 1;

/// Parse the command line. On a usage error, print clap's message (to stderr) and return
/// `usage_exit`; for `--help` and `--version`, print them (to stdout) and return 0.
pub fn parse_args<C: clap::Parser>(usage_exit: u8) -> Result<C, ExitCode> {
    parse_args_from(std::env::args_os(), usage_exit)
}

/// [`parse_args`] on the given arguments (the first is the program name).
pub fn parse_args_from<C, I, T>(args: I, usage_exit: u8) -> Result<C, ExitCode>
where
    C: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    if let Some(dir) = std::env::var_os(crate::shell_assets::ASSETS_ENV) {
        return Err(
            match crate::shell_assets::write(C::command(), dir.as_ref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e, 1),
            },
        );
    }
    C::try_parse_from(args).map_err(|e| {
        let _ = e.print();
        ExitCode::from(if e.use_stderr() { usage_exit } else { 0 })
    })
}

/// Print `error: MESSAGE` to stderr and return `code` as the exit status.
pub fn fail(message: impl Display, code: u8) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

/// Log to stderr, as text (coloured only when stderr is a terminal) or as JSON lines.
/// Lines that cannot be written (stderr a pipe nobody reads any more) are dropped.
/// `LEASH_LOG` filters, with the `tracing` env-filter syntax (e.g. `debug`,
/// `leash_control_plane=debug`); the default is `info`.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEASH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        // A daemon whose stderr went away (its log reader died, journald restarted) keeps
        // serving and drops the lines: the default reports a failed write with
        // `eprintln!`, which panics when stderr is the broken stream, and that panic
        // ended every request in which something was logged.
        .log_internal_errors(false);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

/// Resolves when the process is asked to stop: SIGTERM (what service managers send) or
/// SIGINT (Ctrl-C). If SIGTERM cannot be watched, only SIGINT stops it.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The multi-threaded runtime a daemon serves on. If it cannot be built, say so and
/// return `code` (each daemon keeps its documented code for this).
pub fn daemon_runtime(code: u8) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start the runtime: {e}"), code))
}

/// The single-threaded runtime a CLI makes its calls on. If it cannot be built, say so
/// and exit 5 (unavailable).
pub fn cli_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(e, 5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser, Debug)]
    #[command(name = "t")]
    struct Args {
        #[arg(long)]
        n: u32,
    }

    #[test]
    fn usage_errors_and_help_exit_codes() {
        assert!(parse_args_from::<Args, _, _>(["t", "--n", "3"], USAGE_EXIT).is_ok());
        assert_eq!(
            parse_args_from::<Args, _, _>(["t", "--n", "x"], USAGE_EXIT).err(),
            Some(ExitCode::from(1))
        );
        assert_eq!(
            parse_args_from::<Args, _, _>(["t"], 125).err(),
            Some(ExitCode::from(125))
        );
        assert_eq!(
            parse_args_from::<Args, _, _>(["t", "--help"], 125).err(),
            Some(ExitCode::from(0))
        );
    }
}
