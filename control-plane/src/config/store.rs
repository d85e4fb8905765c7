//! The `[store]` table: where durable state lives. `kind = "sled"` (the default) keeps it
//! in the data directory; `kind = "postgres"` keeps it in a PostgreSQL database that
//! several control-plane replicas share.
//!
//! The database URL holds a password, so it is never written in the configuration: it
//! is read from `url_file` (or `$LEASH_STORE_URL` when no file is named) when the store
//! opens, and no message ever quotes it. This file uses nothing of its parent.

use std::path::PathBuf;

use serde::Deserialize;

/// The environment variable that holds the database URL when `url_file` is not set.
pub const STORE_URL_ENV: &str = "LEASH_STORE_URL";

/// `[store]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFileConfig {
    /// `sled` or `postgres`.
    pub kind: Option<String>,
    /// A file holding the PostgreSQL URL (`postgresql://USER:PASSWORD@HOST/DB`).
    pub url_file: Option<PathBuf>,
}

/// The resolved `[store]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// sled in the data directory.
    #[default]
    Sled,
    /// PostgreSQL; the URL is read from `url_file`, or from [`STORE_URL_ENV`] when `None`.
    Postgres {
        /// The file that holds the URL.
        url_file: Option<PathBuf>,
    },
}

/// A bad `[store]` value: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreValueError {
    /// The key, e.g. `store.kind`.
    pub key: &'static str,
    /// Why.
    pub message: String,
}

/// Check `[store]`.
pub fn resolve(file: StoreFileConfig) -> Result<StoreConfig, StoreValueError> {
    match file.kind.as_deref().unwrap_or("sled") {
        "sled" => match file.url_file {
            Some(_) => Err(StoreValueError {
                key: "store.url_file",
                message:
                    "only a postgres store has a URL; remove url_file or set kind = \"postgres\""
                        .into(),
            }),
            None => Ok(StoreConfig::Sled),
        },
        "postgres" => Ok(StoreConfig::Postgres {
            url_file: file.url_file,
        }),
        other => Err(StoreValueError {
            key: "store.kind",
            message: format!(
                "unknown store kind {:?}; use \"sled\" or \"postgres\"",
                other.chars().take(64).collect::<String>()
            ),
        }),
    }
}

/// Why the database URL could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StoreUrlError {
    /// `url_file` could not be read.
    #[error("cannot read the store URL file {path}: {source}; write the PostgreSQL URL (postgresql://USER:PASSWORD@HOST/DB) in it, readable by the control plane only")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Neither a file nor the variable.
    #[error("[store] kind = \"postgres\" needs the database URL: set url_file = \"/etc/leash/pg.url\" in [store], or ${STORE_URL_ENV}")]
    Missing,
}

impl StoreConfig {
    /// The database URL of a postgres store (`None` for sled). Read at open, never kept
    /// in the configuration.
    pub fn url(&self) -> Result<Option<String>, StoreUrlError> {
        match self {
            StoreConfig::Sled => Ok(None),
            StoreConfig::Postgres { url_file: Some(p) } => std::fs::read_to_string(p)
                .map(|s| Some(s.trim().to_string()))
                .map_err(|source| StoreUrlError::Read {
                    path: p.clone(),
                    source,
                }),
            StoreConfig::Postgres { url_file: None } => match std::env::var(STORE_URL_ENV) {
                Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
                _ => Err(StoreUrlError::Missing),
            },
        }
    }

    /// `sled` or `postgres`, as written in the configuration.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreConfig::Sled => "sled",
            StoreConfig::Postgres { .. } => "postgres",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(k: &str) -> StoreFileConfig {
        StoreFileConfig {
            kind: Some(k.into()),
            url_file: None,
        }
    }

    #[test]
    fn sled_is_the_default_and_postgres_is_chosen_by_kind() {
        assert_eq!(resolve(StoreFileConfig::default()), Ok(StoreConfig::Sled));
        assert_eq!(
            resolve(kind("postgres")),
            Ok(StoreConfig::Postgres { url_file: None })
        );
        let e = resolve(kind("mysql")).unwrap_err();
        assert_eq!(e.key, "store.kind");
        assert!(
            e.message.contains("\"sled\" or \"postgres\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_url_file_on_sled_is_refused() {
        let e = resolve(StoreFileConfig {
            kind: None,
            url_file: Some("/etc/leash/pg.url".into()),
        })
        .unwrap_err();
        assert_eq!(e.key, "store.url_file");
    }

    #[test]
    fn the_url_is_read_from_the_file_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("pg.url");
        std::fs::write(&p, "postgresql://u:pw@h/db\n").expect("write");
        let c = StoreConfig::Postgres {
            url_file: Some(p.clone()),
        };
        assert_eq!(
            c.url().expect("url").as_deref(),
            Some("postgresql://u:pw@h/db")
        );
        let missing = StoreConfig::Postgres {
            url_file: Some(dir.path().join("nope")),
        };
        let e = missing.url().unwrap_err().to_string();
        assert!(e.contains("nope") && !e.contains("pw"), "{e}");
    }
}
