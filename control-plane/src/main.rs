//! `leash-control-plane`: a thin shell over `leash_control_plane::server::run`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use leash_control_plane::config::{Config, FileConfig, Overrides};

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

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LEASH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() -> ExitCode {
    // clap exits 2 on bad usage; Leash reserves 2 for "denied", so usage errors exit 1.
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
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
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
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
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if check_config {
        match leash_control_plane::keys::MasterKey::check_file_mode(
            &cfg.data_dir,
            cfg.accept_readable_master_key,
        ) {
            Ok(Some(warning)) => eprintln!("warning: {warning}"),
            Ok(None) => {}
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    init_logging(log_json);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(5);
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let result = rt.block_on(async move {
        tokio::spawn(async move {
            shutdown_signal().await;
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
            eprintln!("error: {e}");
            ExitCode::from(75)
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::from(1)
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
