//! `leash-agentd`: a thin shell over `leash_agentd::run`; the start-up it shares with
//! the other binaries is in `leash_proto::startup`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use leash_agentd::agent::AgentConfig;
use leash_proto::startup::{self, fail};

#[derive(Parser)]
#[command(name = "leash-agentd", version = leash_proto::version!(), about = "Leash host agent")]
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
    /// Serve Prometheus metrics over plain HTTP at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9465); off by default.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// The `jwt` credential the SPIFFE Workload API issues JWT-SVIDs from.
    #[arg(long, default_value = leash_agentd::agent::DEFAULT_SPIFFE_JWT_CREDENTIAL)]
    spiffe_jwt_credential: String,
    /// The `x509` credential the SPIFFE Workload API issues X.509-SVIDs from.
    #[arg(long, default_value = leash_agentd::agent::DEFAULT_SPIFFE_X509_CREDENTIAL)]
    spiffe_x509_credential: String,
}

fn main() -> ExitCode {
    let cli: Cli = match startup::parse_args(startup::USAGE_EXIT) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Cmd::Run(a) = cli.cmd;
    startup::init_logging(a.log_json);

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
    for (flag, name) in [
        ("--spiffe-jwt-credential", &a.spiffe_jwt_credential),
        ("--spiffe-x509-credential", &a.spiffe_x509_credential),
    ] {
        if let Err(e) = leash_proto::names::check_name("a SPIFFE credential name", name) {
            return fail(format!("{flag}: {e}"), 1);
        }
    }
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
        spiffe_jwt_credential: a.spiffe_jwt_credential,
        spiffe_x509_credential: a.spiffe_x509_credential,
        metrics_listen: a.metrics_listen,
    };
    let rt = match startup::daemon_runtime(1) {
        Ok(rt) => rt,
        Err(code) => return code,
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
        startup::shutdown_signal(),
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
