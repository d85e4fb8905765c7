//! Control-plane configuration: the TOML file, its defaults, and the flags that override it.
//!
//! Keys are the flag names with `_` for `-`. An unknown key is an error that names it
//! (`deny_unknown_fields`), so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod admins;
mod audit;
mod http;
mod metrics;
mod store;

pub use admins::{AdminEntry, AdminRoleError, AdminsError, LocalAdmin};
pub use audit::{AuditConfig, AuditFileConfig, AuditValueError};
pub use http::{HttpCert, HttpConfig, HttpFileConfig, HttpValueError};
pub use metrics::MetricsFileConfig;
pub use store::{StoreConfig, StoreFileConfig, StoreUrlError, STORE_URL_ENV};

/// Errors reading or validating the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (includes unknown keys).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, including the offending key.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid config value `{key}`: {message}")]
    Value {
        /// The key.
        key: &'static str,
        /// Why.
        message: String,
    },
}

/// The file as written. Every field is optional; [`Config::resolve`] fills the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where sled and the master key live.
    pub data_dir: Option<PathBuf>,
    /// Agent-facing gRPC listen address.
    pub listen: Option<String>,
    /// Admin Unix socket path.
    pub admin_socket: Option<PathBuf>,
    /// Trust domain of SPIFFE IDs.
    pub trust_domain: Option<String>,
    /// JWT `iss`.
    pub issuer: Option<String>,
    /// How long agents may serve from cache without a heartbeat (e.g. "5m").
    pub max_offline: Option<String>,
    /// Heartbeat interval on Sync streams (e.g. "5s").
    pub heartbeat: Option<String>,
    /// Host certificate lifetime (e.g. "24h").
    pub host_cert_ttl: Option<String>,
    /// Configured action classes.
    pub actions: Option<Vec<String>>,
    /// Longest an approval may be granted for (`approval approve --for`), e.g. "8h".
    pub max_approval: Option<String>,
    /// How long a pending approval request waits before it expires, e.g. "1h".
    pub approval_timeout: Option<String>,
    /// Admin names by uid: `[admins]` then `alice = 1000` (role admin) or
    /// `alice = { uid = 1000, role = "operator" }`.
    pub admins: Option<BTreeMap<String, AdminEntry>>,
    /// Enroll calls one source address may make at once (token bucket size).
    pub enroll_source_burst: Option<u32>,
    /// Enroll calls one source address may make per minute, sustained.
    pub enroll_source_per_minute: Option<u32>,
    /// Enroll calls from all sources at once (token bucket size).
    pub enroll_global_burst: Option<u32>,
    /// Enroll calls from all sources per minute, sustained.
    pub enroll_global_per_minute: Option<u32>,
    /// Refused enrollments are recorded as one `enroll-refused` event per source per
    /// interval (e.g. "1m").
    pub enroll_refused_interval: Option<String>,
    /// Sources with their own `enroll-refused` event per interval; the rest share one.
    pub enroll_refused_max_sources: Option<u32>,
    /// Start even if `master.key` is readable by group or others (logged as a warning).
    pub accept_readable_master_key: Option<bool>,
    /// How long an ended lease is kept after its expiry time, e.g. "7d".
    pub lease_retention: Option<String>,
    /// How long an audit event is kept, e.g. "90d".
    pub event_retention: Option<String>,
    /// Largest value of a brokered secret, in bytes.
    pub max_secret_bytes: Option<u32>,
    /// How often what credential kinds set up outside Leash (database roles) is
    /// reconciled with the active leases, e.g. "5m".
    pub reconcile_interval: Option<String>,
    /// `[http]`: the HTTPS listener for OIDC discovery, the JWKS and introspection.
    pub http: Option<HttpFileConfig>,
    /// `[store]`: sled (default) or PostgreSQL.
    pub store: Option<StoreFileConfig>,
    /// `[keys]`: key rotation.
    pub keys: Option<KeysSection>,
    /// `[audit]`: audit checkpoints.
    pub audit: Option<AuditFileConfig>,
    /// `[metrics]`: a plain-HTTP listener for `/metrics`.
    pub metrics: Option<MetricsFileConfig>,
}

/// `[keys]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    /// How long a new key is published before it signs (e.g. "10m").
    pub publish_ahead: Option<String>,
}

/// The resolved configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where sled and the master key live.
    pub data_dir: PathBuf,
    /// Agent-facing gRPC listen address (port 0 picks one).
    pub listen: SocketAddr,
    /// Admin Unix socket path.
    pub admin_socket: PathBuf,
    /// Trust domain, e.g. `example.org`.
    pub trust_domain: String,
    /// JWT `iss`.
    pub issuer: String,
    /// Agents fail closed after this long without a heartbeat.
    pub max_offline: Duration,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Host certificate lifetime.
    pub host_cert_ttl: Duration,
    /// Configured action classes (default read, write, deploy, admin).
    pub actions: Vec<String>,
    /// uid -> admin name and role. Empty: root and the server's own uid are admins.
    pub admins: BTreeMap<u32, LocalAdmin>,
    /// Cap on approval lifetimes.
    pub max_approval: Duration,
    /// Pending approval lifetime.
    pub approval_timeout: Duration,
    /// Limits on unauthenticated Enroll calls.
    pub enroll: EnrollLimits,
    /// Start even if `master.key` is readable by group or others.
    pub accept_readable_master_key: bool,
    /// What is forgotten when (see `retention.rs`).
    pub retention: Retention,
    /// Largest value of a brokered secret, in bytes.
    pub max_secret_bytes: u32,
    /// How often the reconciler runs (see `reconcile.rs`); it also runs at start.
    pub reconcile_interval: Duration,
    /// The HTTPS listener, when `[http]` is configured.
    pub http: Option<HttpConfig>,
    /// Where durable state lives.
    pub store: StoreConfig,
    /// `[keys] publish_ahead`: how long a rotated key is published before it signs.
    pub keys_publish_ahead: Duration,
    /// `[audit]`: how often audit checkpoints are signed.
    pub audit: AuditConfig,
    /// `[metrics] listen`: where plain-HTTP `/metrics` is served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
}

/// Default of `[keys] publish_ahead`: verifiers that cache the JWKS for up to ten
/// minutes see a new key before anything is signed with it.
pub const DEFAULT_PUBLISH_AHEAD: Duration = Duration::from_secs(600);

/// Default of `max_secret_bytes`: 64 KiB.
pub const DEFAULT_MAX_SECRET_BYTES: u32 = 64 * 1024;
/// Largest `max_secret_bytes` accepted: 1 MiB (a value travels in one message).
pub const MAX_MAX_SECRET_BYTES: u32 = 1024 * 1024;

/// `max_secret_bytes`: 1 to [`MAX_MAX_SECRET_BYTES`].
fn resolve_max_secret_bytes(v: Option<u32>) -> Result<u32, ConfigError> {
    match v {
        None => Ok(DEFAULT_MAX_SECRET_BYTES),
        Some(n) if (1..=MAX_MAX_SECRET_BYTES).contains(&n) => Ok(n),
        Some(n) => Err(ConfigError::Value {
            key: "max_secret_bytes",
            message: format!("{n} is out of range; use 1 to {MAX_MAX_SECRET_BYTES}"),
        }),
    }
}

/// Flag values that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--listen`
    pub listen: Option<String>,
    /// `--admin-socket`
    pub admin_socket: Option<PathBuf>,
    /// `--trust-domain`
    pub trust_domain: Option<String>,
}

/// Default data directory: `/var/lib/leash` as root, else `$XDG_DATA_HOME/leash` (or
/// `~/.local/share/leash`).
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/leash");
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("leash");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    home.join(".local/share/leash")
}

/// Default admin socket: `/run/leash/admin.sock` as root; as another user
/// `$XDG_RUNTIME_DIR/leash/admin.sock`, or the system path when that variable is unset
/// (never a guessable directory in `/tmp` that another user could create first).
pub fn default_admin_socket() -> PathBuf {
    leash_proto::socket_trust::default_daemon_socket(
        Path::new(leash_proto::socket_trust::SYSTEM_ADMIN_SOCKET),
        nix::unistd::geteuid().as_raw(),
        std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
    )
}

/// The bounds of every duration key: (key, minimum, maximum). Values outside them are
/// refused at `--check-config` and at start, because they fail later in ways that are
/// hard to trace (a certificate lifetime past year 9999, a heartbeat of zero).
pub const DURATION_BOUNDS: &[(&str, Duration, Duration)] = &[
    (
        "max_offline",
        Duration::from_secs(1),
        Duration::from_secs(7 * DAY),
    ),
    (
        "heartbeat",
        Duration::from_millis(100),
        Duration::from_secs(300),
    ),
    (
        "host_cert_ttl",
        Duration::from_secs(3600),
        Duration::from_secs(365 * DAY),
    ),
    (
        "max_approval",
        Duration::from_secs(60),
        Duration::from_secs(30 * DAY),
    ),
    (
        "approval_timeout",
        Duration::from_secs(10),
        Duration::from_secs(7 * DAY),
    ),
    (
        "enroll_refused_interval",
        Duration::from_secs(1),
        Duration::from_secs(3600),
    ),
    (
        "lease_retention",
        Duration::from_secs(60),
        Duration::from_secs(3650 * DAY),
    ),
    (
        "event_retention",
        Duration::from_secs(60),
        Duration::from_secs(3650 * DAY),
    ),
    (
        "reconcile_interval",
        Duration::from_secs(1),
        Duration::from_secs(DAY),
    ),
    (
        "keys.publish_ahead",
        Duration::from_secs(1),
        Duration::from_secs(30 * DAY),
    ),
];

/// Default of `reconcile_interval`.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(300);

const DAY: u64 = 24 * 3600;

/// Longest `issuer`, in bytes.
pub const MAX_ISSUER_LEN: usize = 255;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH_LEN: usize = 107;

fn bounds(key: &'static str) -> (Duration, Duration) {
    DURATION_BOUNDS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, lo, hi)| (*lo, *hi))
        .unwrap_or((Duration::ZERO, Duration::MAX))
}

/// Parse a duration key and check it against [`DURATION_BOUNDS`].
fn duration(
    key: &'static str,
    v: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(s) = v else {
        return Ok(default);
    };
    let d = humantime::parse_duration(s).map_err(|e| ConfigError::Value {
        key,
        message: format!(
            "{:?} is not a duration ({e}); write e.g. \"30s\", \"5m\", \"24h\"",
            clip(s)
        ),
    })?;
    let (lo, hi) = bounds(key);
    if d < lo || d > hi {
        return Err(ConfigError::Value {
            key,
            message: format!(
                "{:?} is out of range: it must be between {} and {}",
                clip(s),
                show(lo),
                show(hi)
            ),
        });
    }
    Ok(d)
}

/// A bound as it is written in the config: "365d", "1h", "100ms".
pub(crate) fn show(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_nanos() != 0 || s == 0 {
        format!("{}ms", d.as_millis())
    } else if s.is_multiple_of(DAY) {
        format!("{}d", s / DAY)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// At most 64 characters of a value, for error messages (a value can be megabytes).
fn clip(s: &str) -> String {
    if s.chars().count() <= 64 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(64).collect::<String>())
    }
}

impl FileConfig {
    /// Read and parse a config file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        FileConfig::parse(&text, path)
    }

    /// Parse config text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .and_then(|sp| text.get(..sp.start.min(text.len())))
                .map(|before| {
                    let line = before.matches('\n').count() + 1;
                    let col = before
                        .rsplit('\n')
                        .next()
                        .map(|l| l.chars().count())
                        .unwrap_or(0)
                        + 1;
                    format!(" at line {line}, column {col}")
                })
                .unwrap_or_default();
            ConfigError::Parse {
                path: path.to_path_buf(),
                message: format!("{}{at}", e.message().trim()),
            }
        })
    }
}

/// The resolved durations, checked against [`DURATION_BOUNDS`] and each other.
struct Durations {
    max_offline: Duration,
    heartbeat: Duration,
    host_cert_ttl: Duration,
    max_approval: Duration,
    approval_timeout: Duration,
    retention: Retention,
}

fn resolve_durations(file: &FileConfig) -> Result<Durations, ConfigError> {
    let max_offline = duration(
        "max_offline",
        file.max_offline.as_deref(),
        Duration::from_secs(300),
    )?;
    let heartbeat = duration(
        "heartbeat",
        file.heartbeat.as_deref(),
        Duration::from_secs(5),
    )?;
    if heartbeat >= max_offline {
        return Err(ConfigError::Value {
            key: "heartbeat",
            message: format!(
                "{} must be shorter than max_offline ({}), or agents fail closed between heartbeats",
                show(heartbeat),
                show(max_offline)
            ),
        });
    }
    Ok(Durations {
        max_offline,
        heartbeat,
        host_cert_ttl: duration(
            "host_cert_ttl",
            file.host_cert_ttl.as_deref(),
            Duration::from_secs(DAY),
        )?,
        max_approval: duration(
            "max_approval",
            file.max_approval.as_deref(),
            Duration::from_secs(8 * 3600),
        )?,
        approval_timeout: duration(
            "approval_timeout",
            file.approval_timeout.as_deref(),
            Duration::from_secs(3600),
        )?,
        retention: Retention {
            leases: duration(
                "lease_retention",
                file.lease_retention.as_deref(),
                Duration::from_secs(7 * DAY),
            )?,
            events: duration(
                "event_retention",
                file.event_retention.as_deref(),
                Duration::from_secs(90 * DAY),
            )?,
        },
    })
}

/// `issuer`: what goes into every token's `iss`, compared byte for byte by verifiers.
fn validate_issuer(issuer: &str) -> Result<(), ConfigError> {
    let why = if issuer.is_empty() {
        "must not be empty (leave it out to use spiffe://<trust_domain>)".to_string()
    } else if issuer.len() > MAX_ISSUER_LEN {
        format!("is {} bytes long; at most {MAX_ISSUER_LEN}", issuer.len())
    } else if !issuer.chars().all(|c| c.is_ascii_graphic()) {
        format!(
            "{:?} must be printable ASCII without spaces (e.g. a URL)",
            clip(issuer)
        )
    } else {
        return Ok(());
    };
    Err(ConfigError::Value {
        key: "issuer",
        message: why,
    })
}

fn resolve_actions(file: &mut FileConfig) -> Result<Vec<String>, ConfigError> {
    let actions = file.actions.take().unwrap_or_else(|| {
        ["read", "write", "deploy", "admin"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    if actions.is_empty() || actions.iter().any(|a| !valid_word(a)) {
        return Err(ConfigError::Value {
            key: "actions",
            message: "must be a non-empty list of lowercase words (a-z, 0-9, '-', '_', at most 32 characters)".into(),
        });
    }
    Ok(actions)
}

/// `[admins]`, checked in `config/admins.rs`.
fn resolve_admins(file: &mut FileConfig) -> Result<BTreeMap<u32, LocalAdmin>, ConfigError> {
    admins::resolve(file.admins.take().unwrap_or_default()).map_err(|e| ConfigError::Value {
        key: "admins",
        message: e.to_string(),
    })
}

/// A path key: not empty, no NUL byte (the OS cannot take it).
fn validate_path(key: &'static str, p: &Path) -> Result<(), ConfigError> {
    let bytes = p.as_os_str().as_encoded_bytes();
    if bytes.is_empty() {
        return Err(ConfigError::Value {
            key,
            message: "must not be empty".into(),
        });
    }
    if bytes.contains(&0) {
        return Err(ConfigError::Value {
            key,
            message: "must not contain a NUL byte".into(),
        });
    }
    Ok(())
}

fn validate_admin_socket(p: &Path) -> Result<(), ConfigError> {
    validate_path("admin_socket", p)?;
    let len = p.as_os_str().len();
    if len > MAX_SOCKET_PATH_LEN {
        return Err(ConfigError::Value {
            key: "admin_socket",
            message: format!(
                "{} is {len} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH_LEN}: choose a shorter one",
                p.display()
            ),
        });
    }
    Ok(())
}

impl Config {
    /// Apply defaults and flag overrides, and validate every key against its bounds.
    pub fn resolve(mut file: FileConfig, o: Overrides) -> Result<Config, ConfigError> {
        let enroll = enroll_limits(&file)?;
        let trust_domain = o
            .trust_domain
            .or(file.trust_domain.take())
            .unwrap_or_else(|| "leash.local".to_string());
        validate_trust_domain(&trust_domain)?;
        let listen_s = o
            .listen
            .or(file.listen.take())
            .unwrap_or_else(|| "127.0.0.1:8443".into());
        let listen = listen_s.parse().map_err(|e| ConfigError::Value {
            key: "listen",
            message: format!(
                "{:?} is not a socket address ({e}); write e.g. \"0.0.0.0:8443\"",
                clip(&listen_s)
            ),
        })?;
        let d = resolve_durations(&file)?;
        let actions = resolve_actions(&mut file)?;
        let admins = resolve_admins(&mut file)?;
        let issuer = file
            .issuer
            .take()
            .unwrap_or_else(|| format!("spiffe://{trust_domain}"));
        validate_issuer(&issuer)?;
        let data_dir = o
            .data_dir
            .or(file.data_dir.take())
            .unwrap_or_else(default_data_dir);
        validate_path("data_dir", &data_dir)?;
        let admin_socket = o
            .admin_socket
            .or(file.admin_socket.take())
            .unwrap_or_else(default_admin_socket);
        validate_admin_socket(&admin_socket)?;
        let max_secret_bytes = resolve_max_secret_bytes(file.max_secret_bytes)?;
        let reconcile_interval = duration(
            "reconcile_interval",
            file.reconcile_interval.as_deref(),
            DEFAULT_RECONCILE_INTERVAL,
        )?;
        let http = file
            .http
            .take()
            .map(http::resolve)
            .transpose()
            .map_err(|e| ConfigError::Value {
                key: e.key,
                message: e.message,
            })?;
        let store = store::resolve(file.store.take().unwrap_or_default()).map_err(|e| {
            ConfigError::Value {
                key: e.key,
                message: e.message,
            }
        })?;
        let audit = audit::resolve(file.audit.as_ref()).map_err(|e| ConfigError::Value {
            key: e.key,
            message: e.message,
        })?;
        let metrics_listen = file
            .metrics
            .take()
            .map(metrics::resolve)
            .transpose()
            .map_err(|e| ConfigError::Value {
                key: e.key,
                message: e.message,
            })?;
        let keys_publish_ahead = duration(
            "keys.publish_ahead",
            file.keys.as_ref().and_then(|k| k.publish_ahead.as_deref()),
            DEFAULT_PUBLISH_AHEAD,
        )?;
        Ok(Config {
            data_dir,
            listen,
            admin_socket,
            issuer,
            trust_domain,
            max_offline: d.max_offline,
            heartbeat: d.heartbeat,
            host_cert_ttl: d.host_cert_ttl,
            actions,
            admins,
            max_approval: d.max_approval,
            approval_timeout: d.approval_timeout,
            accept_readable_master_key: file.accept_readable_master_key.unwrap_or(false),
            enroll,
            retention: d.retention,
            max_secret_bytes,
            reconcile_interval,
            http,
            store,
            keys_publish_ahead,
            audit,
            metrics_listen,
        })
    }
}

fn valid_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn validate_trust_domain(td: &str) -> Result<(), ConfigError> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td.split('.').all(|label| !label.is_empty())
        && td.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-' || c == '_'
        });
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Value {
            key: "trust_domain",
            message: format!(
                "{:?} is not a SPIFFE trust domain (1 to 255 lowercase letters, digits, '.', '-', '_'; no empty label)",
                clip(td)
            ),
        })
    }
}

/// The retention periods (see `retention.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// How long an ended lease is kept after its expiry time.
    pub leases: Duration,
    /// How long an audit event is kept.
    pub events: Duration,
}

impl Retention {
    /// The cut-off at `now_ms` (unix ms).
    pub fn cutoff(&self, now_ms: i64) -> crate::store::Cutoff {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        crate::store::Cutoff {
            leases_before: now_ms.saturating_sub(ms(self.leases)) / 1000,
            events_before_ms: now_ms.saturating_sub(ms(self.events)),
        }
    }
}

/// Limits on Enroll, the one call that needs no certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnrollLimits {
    /// Calls one source address may make at once.
    pub source_burst: u32,
    /// Calls one source address may make per minute, sustained.
    pub source_per_minute: u32,
    /// Calls from all sources at once.
    pub global_burst: u32,
    /// Calls from all sources per minute, sustained.
    pub global_per_minute: u32,
    /// One `enroll-refused` event per source per this interval.
    pub refused_interval: Duration,
    /// Sources with their own event per interval; the others share one.
    pub refused_max_sources: u32,
}

impl Default for EnrollLimits {
    fn default() -> Self {
        EnrollLimits {
            source_burst: 20,
            source_per_minute: 60,
            global_burst: 200,
            global_per_minute: 1200,
            refused_interval: Duration::from_secs(60),
            refused_max_sources: 256,
        }
    }
}

fn enroll_limits(file: &FileConfig) -> Result<EnrollLimits, ConfigError> {
    let d = EnrollLimits::default();
    let count = |key: &'static str, v: Option<u32>, default: u32, max: u32| match v {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ConfigError::Value {
            key,
            message: format!("{n} is out of range; use 1 to {max}"),
        }),
    };
    let refused_interval = duration(
        "enroll_refused_interval",
        file.enroll_refused_interval.as_deref(),
        d.refused_interval,
    )?;
    Ok(EnrollLimits {
        source_burst: count(
            "enroll_source_burst",
            file.enroll_source_burst,
            d.source_burst,
            1_000_000,
        )?,
        source_per_minute: count(
            "enroll_source_per_minute",
            file.enroll_source_per_minute,
            d.source_per_minute,
            6_000_000,
        )?,
        global_burst: count(
            "enroll_global_burst",
            file.enroll_global_burst,
            d.global_burst,
            1_000_000,
        )?,
        global_per_minute: count(
            "enroll_global_per_minute",
            file.enroll_global_per_minute,
            d.global_per_minute,
            6_000_000,
        )?,
        refused_interval,
        refused_max_sources: count(
            "enroll_refused_max_sources",
            file.enroll_refused_max_sources,
            d.refused_max_sources,
            65_536,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let err =
            toml::from_str::<FileConfig>("listen = \"127.0.0.1:0\"\nlisen = 1\n").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn defaults_and_overrides() {
        let file: FileConfig = toml::from_str(
            "trust_domain = \"corp.example\"\nmax_offline = \"2m\"\n[admins]\nalice = 1000\n",
        )
        .expect("parses");
        let c = Config::resolve(
            file,
            Overrides {
                listen: Some("127.0.0.1:0".into()),
                ..Default::default()
            },
        )
        .expect("valid");
        assert_eq!(c.issuer, "spiffe://corp.example");
        assert_eq!(c.max_offline, Duration::from_secs(120));
        assert_eq!(
            c.admins.get(&1000).map(|a| (a.name.as_str(), a.role)),
            Some(("alice", crate::actor::Role::Admin))
        );
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.actions.len(), 4);
    }

    #[test]
    fn bad_values_are_explained() {
        let file: FileConfig = toml::from_str("max_offline = \"soon\"").expect("parses");
        let e = Config::resolve(file, Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("max_offline"), "{e}");
        let file: FileConfig = toml::from_str("trust_domain = \"Bad Domain\"").expect("parses");
        assert!(Config::resolve(file, Overrides::default()).is_err());
    }

    #[test]
    fn enroll_limits_are_bounded() {
        let c = Config::resolve(FileConfig::default(), Overrides::default()).expect("defaults");
        assert_eq!(c.enroll, EnrollLimits::default());
        let file: FileConfig = toml::from_str(
            "enroll_source_burst = 3\nenroll_source_per_minute = 30\nenroll_refused_interval = \"2s\"\n",
        )
        .expect("parses");
        let c = Config::resolve(file, Overrides::default()).expect("valid");
        assert_eq!(c.enroll.source_burst, 3);
        assert_eq!(c.enroll.refused_interval, Duration::from_secs(2));
        for bad in [
            "enroll_source_burst = 0",
            "enroll_global_per_minute = 0",
            "enroll_refused_interval = \"0s\"",
            "enroll_refused_interval = \"2h\"",
            "enroll_refused_max_sources = 100000",
        ] {
            let file: FileConfig = toml::from_str(bad).expect("parses");
            let e = Config::resolve(file, Overrides::default()).unwrap_err();
            let key = bad.split(' ').next().unwrap_or_default();
            assert!(e.to_string().contains(key), "{bad}: {e}");
        }
    }
    fn resolve_text(text: &str) -> Result<Config, ConfigError> {
        let file = FileConfig::parse(text, Path::new("test.toml"))?;
        Config::resolve(file, Overrides::default())
    }

    fn refused(text: &str, key: &str, words: &[&str]) {
        let e = resolve_text(text).expect_err(text).to_string();
        assert!(e.contains(key), "{text:?}: {e}");
        for w in words {
            assert!(e.contains(w), "{text:?}: {e} lacks {w:?}");
        }
    }

    #[test]
    fn admins_take_a_role_and_default_to_admin() {
        let c = resolve_text(
            "[admins]\nalice = 1000\nbob = { uid = 1001, role = \"operator\" }\nvic = { uid = 1002, role = \"viewer\" }",
        )
        .expect("admins");
        let role = |uid| c.admins.get(&uid).map(|a| a.role);
        use crate::actor::Role;
        assert_eq!(role(1000), Some(Role::Admin));
        assert_eq!(role(1001), Some(Role::Operator));
        assert_eq!(role(1002), Some(Role::Viewer));
        refused(
            "[admins]\nbob = { uid = 1001, role = \"root\" }",
            "admins",
            &["bob", "unknown role", "viewer, approver, operator or admin"],
        );
        refused(
            "[admins]\nbob = { role = \"viewer\" }",
            "[admins] entry",
            &["uid = 1000"],
        );
    }

    #[test]
    fn reconcile_interval_defaults_to_five_minutes_and_is_bounded() {
        let c = resolve_text("").expect("defaults");
        assert_eq!(c.reconcile_interval, Duration::from_secs(300));
        let c = resolve_text("reconcile_interval = \"30s\"").expect("30s");
        assert_eq!(c.reconcile_interval, Duration::from_secs(30));
        refused(
            "reconcile_interval = \"0s\"",
            "reconcile_interval",
            &["1s", "1d"],
        );
        refused("reconcile_interval = \"2d\"", "reconcile_interval", &["1d"]);
        refused(
            "reconcile_interval = \"often\"",
            "reconcile_interval",
            &["not a duration"],
        );
    }

    #[test]
    fn durations_out_of_bounds_are_refused_with_the_bounds() {
        refused(
            "host_cert_ttl = \"99999999d\"",
            "host_cert_ttl",
            &["1h", "365d"],
        );
        refused("host_cert_ttl = \"59m\"", "host_cert_ttl", &["1h"]);
        refused("max_offline = \"8d\"", "max_offline", &["7d"]);
        refused("max_offline = \"0s\"", "max_offline", &["1s"]);
        refused(
            "heartbeat = \"10m\"\nmax_offline = \"1h\"",
            "heartbeat",
            &["5m"],
        );
        refused("heartbeat = \"50ms\"", "heartbeat", &["100ms"]);
        refused("max_approval = \"31d\"", "max_approval", &["30d"]);
        refused("approval_timeout = \"1s\"", "approval_timeout", &["10s"]);
        // humantime overflows are parse errors, not panics.
        refused(
            "host_cert_ttl = \"99999999999999999999999y\"",
            "host_cert_ttl",
            &["not a duration"],
        );
        // The bounds themselves are accepted.
        let c = resolve_text("host_cert_ttl = \"365d\"\nmax_offline = \"7d\"\nheartbeat = \"5m\"")
            .expect("upper bounds are valid");
        assert_eq!(c.host_cert_ttl, Duration::from_secs(365 * DAY));
        resolve_text("host_cert_ttl = \"1h\"\nmax_offline = \"1s\"\nheartbeat = \"100ms\"")
            .expect("lower bounds are valid");
    }

    #[test]
    fn keys_publish_ahead_defaults_to_ten_minutes_and_is_bounded() {
        let c = resolve_text("").expect("defaults");
        assert_eq!(c.keys_publish_ahead, Duration::from_secs(600));
        let c = resolve_text("[keys]\npublish_ahead = \"30s\"").expect("30s");
        assert_eq!(c.keys_publish_ahead, Duration::from_secs(30));
        refused(
            "[keys]\npublish_ahead = \"0s\"",
            "keys.publish_ahead",
            &["1s", "30d"],
        );
        refused(
            "[keys]\npublish_ahead = \"31d\"",
            "keys.publish_ahead",
            &["30d"],
        );
        refused(
            "[keys]\npublish_ahead = \"soon\"",
            "keys.publish_ahead",
            &["duration"],
        );
        refused("[keys]\nahead = \"1m\"", "ahead", &[]);
    }

    #[test]
    fn every_bound_fits_what_uses_it() {
        for (key, lo, hi) in DURATION_BOUNDS {
            assert!(lo < hi, "{key}");
            // Seconds are sent as u32 (max_offline_secs) and stored as i64 timestamps.
            assert!(hi.as_secs() < u64::from(u32::MAX), "{key}");
        }
    }

    #[test]
    fn strings_are_checked() {
        refused("issuer = \"\"", "issuer", &["empty"]);
        refused("issuer = \"a b\"", "issuer", &["printable"]);
        refused("issuer = \"x\\u001b[8m\"", "issuer", &["printable"]);
        refused(
            &format!("issuer = \"{}\"", "a".repeat(256)),
            "issuer",
            &["255"],
        );
        refused("trust_domain = \"\"", "trust_domain", &[]);
        refused("trust_domain = \"a..b\"", "trust_domain", &["empty label"]);
        refused("trust_domain = \".corp\"", "trust_domain", &[]);
        refused("actions = []", "actions", &[]);
        refused("actions = [\"Read\"]", "actions", &[]);
        refused("[admins]\n\"a\\nb\" = 1000", "admins", &["admin name"]);
        refused(
            "[admins]\nalice = 1000\nbob = 1000",
            "admins",
            &["uid 1000"],
        );
        refused("data_dir = \"\"", "data_dir", &["empty"]);
        refused("data_dir = \"/tmp/a\\u0000b\"", "data_dir", &["NUL"]);
        refused(
            &format!("admin_socket = \"/tmp/{}.sock\"", "s".repeat(120)),
            "admin_socket",
            &["107"],
        );
        let c = resolve_text("issuer = \"https://issuer.example/leash\"").expect("valid issuer");
        assert_eq!(c.issuer, "https://issuer.example/leash");
        assert!(!c.accept_readable_master_key);
    }

    #[test]
    fn long_values_are_clipped_in_errors() {
        let e = resolve_text(&format!("max_offline = \"{}\"", "9".repeat(100_000)))
            .expect_err("refused")
            .to_string();
        assert!(e.len() < 400, "{} bytes", e.len());
    }

    #[test]
    fn max_secret_bytes_has_a_default_and_bounds() {
        assert_eq!(
            resolve_text("").expect("default").max_secret_bytes,
            DEFAULT_MAX_SECRET_BYTES
        );
        assert_eq!(
            resolve_text("max_secret_bytes = 1048576")
                .expect("the largest")
                .max_secret_bytes,
            1 << 20
        );
        refused(
            "max_secret_bytes = 0",
            "max_secret_bytes",
            &["1 to 1048576"],
        );
        refused(
            "max_secret_bytes = 1048577",
            "max_secret_bytes",
            &["out of range"],
        );
    }
}
