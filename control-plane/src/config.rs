//! Control-plane configuration: the TOML file, its defaults, and the flags that override it.
//!
//! Keys are the flag names with `_` for `-`. An unknown key is an error that names it
//! (`deny_unknown_fields`), so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
    /// Admin names by uid: `[admins]` then `alice = 1000`.
    pub admins: Option<BTreeMap<String, u32>>,
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
    /// uid -> admin name. Empty: root and the server's own uid are admins.
    pub admins: BTreeMap<u32, String>,
    /// Cap on approval lifetimes.
    pub max_approval: Duration,
    /// Pending approval lifetime.
    pub approval_timeout: Duration,
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

fn duration(
    key: &'static str,
    v: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s).map_err(|e| ConfigError::Value {
            key,
            message: format!("{s:?} is not a duration ({e}); write e.g. \"30s\", \"5m\", \"24h\""),
        }),
    }
}

impl FileConfig {
    /// Read and parse a config file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|sp| {
                    let before = &text[..sp.start.min(text.len())];
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

impl Config {
    /// Apply defaults and flag overrides, and validate.
    pub fn resolve(file: FileConfig, o: Overrides) -> Result<Config, ConfigError> {
        let trust_domain = o
            .trust_domain
            .or(file.trust_domain)
            .unwrap_or_else(|| "leash.local".to_string());
        validate_trust_domain(&trust_domain)?;
        let listen_s = o
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8443".into());
        let listen = listen_s.parse().map_err(|e| ConfigError::Value {
            key: "listen",
            message: format!(
                "{listen_s:?} is not a socket address ({e}); write e.g. \"0.0.0.0:8443\""
            ),
        })?;
        let max_offline = duration(
            "max_offline",
            file.max_offline.as_deref(),
            Duration::from_secs(300),
        )?;
        if max_offline < Duration::from_secs(1) {
            return Err(ConfigError::Value {
                key: "max_offline",
                message: "must be at least 1s".into(),
            });
        }
        let heartbeat = duration(
            "heartbeat",
            file.heartbeat.as_deref(),
            Duration::from_secs(5),
        )?;
        if heartbeat < Duration::from_millis(100) || heartbeat >= max_offline {
            return Err(ConfigError::Value {
                key: "heartbeat",
                message: "must be at least 100ms and shorter than max_offline".into(),
            });
        }
        let host_cert_ttl = duration(
            "host_cert_ttl",
            file.host_cert_ttl.as_deref(),
            Duration::from_secs(24 * 3600),
        )?;
        if host_cert_ttl < Duration::from_secs(60) {
            return Err(ConfigError::Value {
                key: "host_cert_ttl",
                message: "must be at least 1m".into(),
            });
        }
        let actions = file.actions.unwrap_or_else(|| {
            ["read", "write", "deploy", "admin"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        });
        if actions.is_empty() || actions.iter().any(|a| !valid_word(a)) {
            return Err(ConfigError::Value {
                key: "actions",
                message: "must be a non-empty list of lowercase words".into(),
            });
        }
        let max_approval = duration(
            "max_approval",
            file.max_approval.as_deref(),
            Duration::from_secs(8 * 3600),
        )?;
        let approval_timeout = duration(
            "approval_timeout",
            file.approval_timeout.as_deref(),
            Duration::from_secs(3600),
        )?;
        let mut admins = BTreeMap::new();
        for (name, uid) in file.admins.unwrap_or_default() {
            admins.insert(uid, name);
        }
        Ok(Config {
            data_dir: o
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(default_data_dir),
            listen,
            admin_socket: o
                .admin_socket
                .or(file.admin_socket)
                .unwrap_or_else(default_admin_socket),
            issuer: file
                .issuer
                .unwrap_or_else(|| format!("spiffe://{trust_domain}")),
            trust_domain,
            max_offline,
            heartbeat,
            host_cert_ttl,
            actions,
            admins,
            max_approval,
            approval_timeout,
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
        && td.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-' || c == '_'
        });
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Value {
            key: "trust_domain",
            message: format!(
                "{td:?} is not a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_')"
            ),
        })
    }
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
        assert_eq!(c.admins.get(&1000).map(String::as_str), Some("alice"));
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
}
