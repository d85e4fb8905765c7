//! `leash-agentd`: a thin shell over `leash_agentd::run`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use leash_agentd::agent::AgentConfig;

#[derive(Parser)]
#[command(name = "leash-agentd", version, about = "Leash host agent")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enroll if needed, sync with the control plane and serve the workload socket.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Control plane address, https://HOST:PORT (repeat, or separate with commas, for failover).
    #[arg(long = "control-plane", required = true, value_delimiter = ',')]
    control_planes: Vec<String>,
    /// Where the host key and certificate live (the only thing written to disk).
    #[arg(long)]
    state_dir: PathBuf,
    /// Workload socket path.
    #[arg(long, env = "LEASH_AGENT_SOCKET")]
    socket: Option<PathBuf>,
    /// One-time join token (first start only).
    #[arg(long, conflicts_with = "join_token_file")]
    join_token: Option<String>,
    /// File holding the join token.
    #[arg(long)]
    join_token_file: Option<PathBuf>,
    /// Host name (default: the hostname); can only narrow what the token binds.
    #[arg(long)]
    name: Option<String>,
    /// Label k=v (repeatable); can only narrow what the token binds.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Lower the control plane's max_offline for this host (e.g. 2m).
    #[arg(long)]
    max_offline: Option<String>,
    /// Another path where the `leash` CLI is installed (repeatable).
    #[arg(long = "cli-path")]
    cli_paths: Vec<PathBuf>,
    /// Open connections one uid may hold.
    #[arg(long, default_value_t = 128)]
    max_connections_per_uid: usize,
    /// Requests per second one uid may make (0: unlimited).
    #[arg(long, default_value_t = 5000)]
    requests_per_uid: u32,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn fail(m: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("error: {m}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    // clap exits 2 on bad usage; 2 means "refused" here, so usage errors exit 1.
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let Cmd::Run(a) = cli.cmd;
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEASH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if a.log_json {
        b.json().init();
    } else {
        b.init();
    }

    let mut control_planes = Vec::new();
    for url in &a.control_planes {
        match leash_agentd::tls::parse_addr(url) {
            Ok(addr) => control_planes.push(addr),
            Err(e) => return fail(e, 1),
        }
    }
    let token = match (&a.join_token, &a.join_token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => match std::fs::read_to_string(f) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                return fail(
                    format!("cannot read --join-token-file {}: {e}", f.display()),
                    2,
                )
            }
        },
        (None, None) => std::env::var("LEASH_JOIN_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty()),
    };
    let mut labels = BTreeMap::new();
    for l in &a.labels {
        match l.split_once('=') {
            Some((k, v)) => {
                labels.insert(k.to_string(), v.to_string());
            }
            None => return fail(format!("--label {l:?} must look like key=value"), 1),
        }
    }
    let default_name = a
        .name
        .is_none()
        .then(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .map(|h| h.split('.').next().unwrap_or_default().to_string())
        })
        .flatten();
    let max_offline_cap_secs = match &a.max_offline {
        None => None,
        Some(s) => match leash_proto::cli::parse_secs(s) {
            Ok(v) if v > 0 => Some(v),
            Ok(_) => return fail("--max-offline must be at least 1s", 1),
            Err(e) => return fail(format!("--max-offline: {e}"), 1),
        },
    };
    let config = AgentConfig {
        control_planes,
        state_dir: a.state_dir,
        socket: a
            .socket
            .unwrap_or_else(leash_agentd::server::default_socket),
        max_offline_cap_secs,
        cli_paths: a.cli_paths,
        max_conns_per_uid: a.max_connections_per_uid.max(1),
        requests_per_uid: a.requests_per_uid,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}"), 1),
    };
    let enrollment = leash_agentd::Enrollment {
        token,
        name: a.name.clone(),
        default_name,
        labels,
    };
    let r = rt.block_on(leash_agentd::run(
        config,
        enrollment,
        shutdown_signal(),
        |sock| {
            tracing::info!("ready on {}", sock.display());
        },
    ));
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            fail(&e, e.exit_code())
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
