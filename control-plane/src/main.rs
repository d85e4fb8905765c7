//! `leash-control-plane`: a thin shell over `leash_control_plane::server::run`; the
//! start-up it shares with the other binaries is in `leash_proto::startup`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use leash_control_plane::config::{Config, FileConfig, Overrides};
use leash_proto::startup::{self, fail};

#[derive(Parser)]
#[command(name = "leash-control-plane", version, about = "Leash control plane")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the agent API (mTLS) and the admin socket.
    Serve {
        /// TOML config file; flags override its keys.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (sled database and master key).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Agent-facing listen address, e.g. 0.0.0.0:8443 (port 0 picks a free one).
        #[arg(long)]
        listen: Option<String>,
        /// Admin Unix socket path.
        #[arg(long)]
        admin_socket: Option<PathBuf>,
        /// SPIFFE trust domain.
        #[arg(long)]
        trust_domain: Option<String>,
        /// Validate the configuration and exit.
        #[arg(long)]
        check_config: bool,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
    },
}

fn main() -> ExitCode {
    let cli: Cli = match startup::parse_args(startup::USAGE_EXIT) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Cmd::Serve {
        config,
        data_dir,
        listen,
        admin_socket,
        trust_domain,
        check_config,
        log_json,
    } = cli.cmd;
    let file = match &config {
        Some(p) => match FileConfig::load(p) {
            Ok(f) => f,
            Err(e) => return fail(e, 1),
        },
        None => FileConfig::default(),
    };
    let cfg = match Config::resolve(
        file,
        Overrides {
            data_dir,
            listen,
            admin_socket,
            trust_domain,
        },
    ) {
        Ok(c) => c,
        Err(e) => return fail(e, 1),
    };
    if check_config {
        match leash_control_plane::keys::MasterKey::check_file_mode(
            &cfg.data_dir,
            cfg.accept_readable_master_key,
        ) {
            Ok(Some(warning)) => eprintln!("warning: {warning}"),
            Ok(None) => {}
            Err(e) => return fail(e, 1),
        }
        if let Some(h) = &cfg.http {
            if let Err(e) = leash_control_plane::http::check_files(h) {
                return fail(e, 1);
            }
        }
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    startup::init_logging(log_json);
    let rt = match startup::daemon_runtime(5) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let result = rt.block_on(async move {
        tokio::spawn(async move {
            startup::shutdown_signal().await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(());
        });
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stop_rx.await;
            let _ = stopped_tx.send(());
        };
        let serve = leash_control_plane::server::run(cfg, shutdown, |b| {
            tracing::info!(ca_pin = %b.ca_pin, admin_socket = %b.admin_socket.display(), "listening on {}", b.listen);
        });
        tokio::pin!(serve);
        tokio::select! {
            r = &mut serve => r,
            _ = async {
                let _ = stopped_rx.await;
                // Sync streams never end by themselves: give requests in flight a moment.
                tokio::time::sleep(Duration::from_secs(2)).await;
            } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ leash_control_plane::server::ServerError::StoreFailed) => {
            // EX_TEMPFAIL: started again, it reopens the store and carries on.
            tracing::error!("{e}");
            fail(e, 75)
        }
        Err(e) => {
            tracing::error!("{e}");
            fail(e, 1)
        }
    }
}
