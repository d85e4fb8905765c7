//! `leash-control-plane`: a thin shell over `leash_control_plane::server::run`; the
//! start-up it shares with the other binaries is in `leash_proto::startup`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use leash_control_plane::backup::{self, BackupError};
use leash_control_plane::config::{Config, FileConfig, Overrides, StoreConfig};
use leash_proto::startup::{self, fail};

#[derive(Parser)]
#[command(name = "leash-control-plane", version = leash_proto::version!(), about = "Leash control plane")]
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
    /// Copy a stopped control plane's sled store into the (empty) PostgreSQL store of
    /// the configuration's `[store]` (or `$LEASH_STORE_URL`), verifying every tree.
    Migrate {
        /// The data directory of the sled control plane (stopped).
        #[arg(long, value_name = "DIR")]
        from_sled: PathBuf,
        /// TOML config file whose `[store]` names the PostgreSQL store.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print which store the configuration uses and whether it answers, as JSON
    /// (exit 0 reachable, 5 not).
    Status {
        /// TOML config file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (sled database and master key).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Write a consistent snapshot of the sled store to FILE, from the running control
    /// plane (over its admin socket) or from a stopped one's data directory. The master
    /// key is not in it.
    Backup {
        /// The backup file to write (mode 0600).
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// TOML config file: its admin socket, or its data directory when the control
        /// plane is stopped.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory of a stopped control plane.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Admin socket of the running control plane.
        #[arg(long)]
        admin_socket: Option<PathBuf>,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Restore a backup file into a data directory (the control plane stopped).
    Restore {
        /// The backup file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// TOML config file naming the data directory.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The data directory to restore into.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Replace the store the data directory holds (it is moved aside, not deleted).
        #[arg(long)]
        force: bool,
    },
}

/// The configuration of `--config` (defaults without one).
fn load_config(config: Option<&PathBuf>, data_dir: Option<PathBuf>) -> Result<Config, ExitCode> {
    let file = match config {
        Some(p) => FileConfig::load(p).map_err(|e| fail(e, 1))?,
        None => FileConfig::default(),
    };
    Config::resolve(
        file,
        Overrides {
            data_dir,
            ..Overrides::default()
        },
    )
    .map_err(|e| fail(e, 1))
}

fn migrate(from_sled: PathBuf, config: Option<PathBuf>) -> ExitCode {
    let store = match &config {
        Some(_) => match load_config(config.as_ref(), None) {
            Ok(c) => c.store,
            Err(code) => return code,
        },
        None => StoreConfig::Postgres { url_file: None },
    };
    if store == StoreConfig::Sled {
        return fail(
            "the configuration's [store] is sled: set kind = \"postgres\" and url_file (or $LEASH_STORE_URL) to name the database to migrate into",
            1,
        );
    }
    let url = match store.url() {
        Ok(Some(u)) => u,
        Ok(None) => return fail("the configuration names no database", 1),
        Err(e) => return fail(e, 1),
    };
    match leash_control_plane::store::copy_sled_to_postgres(&from_sled, &url) {
        Ok(trees) => {
            println!("{:<16} {:>8}  sha256", "tree", "rows");
            for t in &trees {
                println!("{:<16} {:>8}  {}", t.tree, t.rows, t.sha256);
            }
            let total: u64 = trees.iter().map(|t| t.rows).sum();
            println!(
                "copied {total} rows in {} trees from {}; counts and checksums verified",
                trees.len(),
                from_sled.display()
            );
            println!(
                "sealed records were copied as they are: start the control planes on this store with the same master key ({}/master.key, mode 0600, or $LEASH_MASTER_KEY)",
                from_sled.display()
            );
            ExitCode::SUCCESS
        }
        Err(e @ leash_control_plane::store::MigrateError::Database(_)) => fail(e, 5),
        Err(e) => fail(e, 1),
    }
}

fn status(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> ExitCode {
    let cfg = match load_config(config.as_ref(), data_dir) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let probe = match &cfg.store {
        StoreConfig::Sled => {
            if cfg.data_dir.join("db").join("conf").is_file() {
                Ok(())
            } else {
                Err(format!(
                    "no sled store in {} (a control plane creates it at its first start)",
                    cfg.data_dir.display()
                ))
            }
        }
        StoreConfig::Postgres { .. } => match cfg.store.url() {
            Ok(Some(url)) => leash_control_plane::store::probe_postgres(&url),
            Ok(None) => Err("the configuration names no database".into()),
            Err(e) => Err(e.to_string()),
        },
    };
    let mut store = serde_json::json!({
        "kind": cfg.store.kind(),
        "reachable": probe.is_ok(),
    });
    if let Err(e) = &probe {
        store["error"] = serde_json::Value::String(e.clone());
    }
    println!("{}", serde_json::json!({ "store": store }));
    if probe.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(5)
    }
}

/// `backup`: from the admin socket when one is named (or the configuration's answers),
/// otherwise from the stopped control plane's data directory.
fn backup(
    to: &Path,
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    admin_socket: Option<PathBuf>,
    force: bool,
) -> ExitCode {
    if !force && to.symlink_metadata().is_ok() {
        return fail(BackupError::Exists(to.display().to_string()), 1);
    }
    let now = leash_proto::clock::system_now_ms();
    let only_dir = data_dir.is_some() && config.is_none() && admin_socket.is_none();
    let cfg = match load_config(config.as_ref(), data_dir) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if cfg.store != StoreConfig::Sled && admin_socket.is_none() {
        return fail(BackupError::Postgres, 1);
    }
    let socket_named = admin_socket.is_some();
    let socket = admin_socket.unwrap_or(cfg.admin_socket);
    let running = !only_dir && std::os::unix::net::UnixStream::connect(&socket).is_ok();
    // A named socket asks that control plane only: no fallback to a default directory.
    let taken = if running || socket_named {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return fail(format!("cannot start a runtime: {e}"), 5),
        };
        rt.block_on(backup::from_running(&socket))
    } else {
        backup::from_stopped(&cfg.data_dir, now).map_err(|e| match e {
            BackupError::InUse(m) if only_dir => BackupError::InUse(format!(
                "{m}: back it up through its admin socket (--admin-socket or --config)"
            )),
            BackupError::InUse(m) => BackupError::InUse(format!(
                "{m}, and its admin socket {} does not answer: give the control plane's --admin-socket",
                socket.display()
            )),
            e => e,
        })
    };
    let (seq, bytes) = match taken {
        Ok(t) => t,
        Err(e) => return fail(&e, e.exit_code()),
    };
    if let Err(e) = backup::write_file(to, &bytes, force) {
        return fail(&e, e.exit_code());
    }
    let sum = hex::encode(&bytes[bytes.len() - 32..]);
    println!(
        "backup of the store at sequence {seq} written to {} ({} bytes, sha256 {sum}, from the {} control plane)",
        to.display(),
        bytes.len(),
        if running { "running" } else { "stopped" },
    );
    println!("the master key is not in the backup: keep a copy of it apart from the backup; a restored store opens only with it");
    ExitCode::SUCCESS
}

/// A backup's time, as RFC 3339 (UTC, seconds).
fn taken_at(ms: i64) -> String {
    u64::try_from(ms)
        .map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms))
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|_| format!("at unix ms {ms}"))
}

/// `restore`: into the configuration's (or `--data-dir`'s) data directory.
fn restore(
    file: &Path,
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    force: bool,
) -> ExitCode {
    let cfg = match load_config(config.as_ref(), data_dir) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if cfg.store != StoreConfig::Sled {
        return fail(BackupError::Postgres, 1);
    }
    let now = leash_proto::clock::system_now_ms();
    let r = match backup::restore(file, &cfg.data_dir, force, now) {
        Ok(r) => r,
        Err(e) => return fail(&e, e.exit_code()),
    };
    println!("{:<18} {:>8}", "tree", "rows");
    for (t, n) in &r.trees {
        println!("{t:<18} {n:>8}");
    }
    let total: u64 = r.trees.iter().map(|(_, n)| n).sum();
    println!(
        "restored the store at sequence {} (taken {}) into {}: {total} rows, {} workloads, {} credentials, {} hosts, {} leases ({} active)",
        r.header.seq,
        taken_at(r.header.taken_ms),
        cfg.data_dir.join("db").display(),
        r.rows_of("workloads"),
        r.rows_of("credentials"),
        r.rows_of("hosts"),
        r.rows_of("leases"),
        r.rows_of("active_leases"),
    );
    if let Some(old) = &r.replaced {
        println!("the store it replaced was moved to {}", old.display());
    }
    if r.master_key_present {
        println!("start the control plane with the master key the backed-up store ran with (it is in {}: check it is that one)", cfg.data_dir.join("master.key").display());
    } else {
        println!("no master key in {}: put the master key the backed-up store ran with there (master.key, mode 0600) or in $LEASH_MASTER_KEY before starting the control plane", cfg.data_dir.display());
    }
    println!(
        "agents that saw changes after sequence {} wipe what they hold when they reconnect",
        r.header.seq
    );
    ExitCode::SUCCESS
}

/// `--check-config`: the data directory must be a directory the control plane can
/// write, or not exist yet under one it can (it is created at the first start).
fn check_data_dir(dir: &std::path::Path) -> Result<(), String> {
    use nix::unistd::{access, AccessFlags};
    let mut p = dir;
    loop {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => {
                return access(p, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
                    format!(
                        "data_dir {}: cannot write {} ({e}); fix its owner or mode, or choose another data_dir",
                        dir.display(),
                        p.display()
                    )
                });
            }
            Ok(_) => {
                return Err(format!(
                    "data_dir {}: {} is not a directory; choose another data_dir",
                    dir.display(),
                    p.display()
                ))
            }
            // Missing, or a file stands in the path: look at the parent.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match p.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                    _ => return Ok(()),
                }
            }
            Err(e) => {
                return Err(format!(
                    "data_dir {}: cannot read {}: {e}",
                    dir.display(),
                    p.display()
                ))
            }
        }
    }
}

fn main() -> ExitCode {
    let cli: Cli = match startup::parse_args(startup::USAGE_EXIT) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (config, data_dir, listen, admin_socket, trust_domain, check_config, log_json) =
        match cli.cmd {
            Cmd::Serve {
                config,
                data_dir,
                listen,
                admin_socket,
                trust_domain,
                check_config,
                log_json,
            } => (
                config,
                data_dir,
                listen,
                admin_socket,
                trust_domain,
                check_config,
                log_json,
            ),
            Cmd::Migrate { from_sled, config } => return migrate(from_sled, config),
            Cmd::Status { config, data_dir } => return status(config, data_dir),
            Cmd::Backup {
                to,
                config,
                data_dir,
                admin_socket,
                force,
            } => return backup(&to, config, data_dir, admin_socket, force),
            Cmd::Restore {
                file,
                config,
                data_dir,
                force,
            } => return restore(&file, config, data_dir, force),
        };
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
        if let Err(e) = check_data_dir(&cfg.data_dir) {
            return fail(e, 1);
        }
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
        // The store's URL must be readable (the database itself is not contacted).
        if let Err(e) = cfg.store.url() {
            return fail(e, 1);
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
