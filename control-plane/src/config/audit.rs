//! The `[audit]` table: how often the control plane signs an audit checkpoint (see
//! `checkpoints.rs`). Errors are a key and a message, which `config.rs` turns into its
//! `Value` error (this file uses nothing of its parent).

use std::time::Duration;

use serde::Deserialize;

/// Default `checkpoint_every`.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;
/// Default `checkpoint_interval`.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// `[audit]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFileConfig {
    /// Sign a checkpoint after this many events (1 to 1000000).
    pub checkpoint_every: Option<u64>,
    /// And at least this often while there are new events, e.g. "1m" (1s to 1d).
    pub checkpoint_interval: Option<String>,
}

/// `[audit]` resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    /// Events between checkpoints.
    pub checkpoint_every: u64,
    /// Longest time new events wait for a checkpoint.
    pub checkpoint_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
        }
    }
}

/// A bad `[audit]` value: the key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditValueError {
    /// The key, e.g. `audit.checkpoint_every`.
    pub key: &'static str,
    /// Why.
    pub message: String,
}

/// Check `[audit]` and fill in the defaults.
pub fn resolve(f: Option<&AuditFileConfig>) -> Result<AuditConfig, AuditValueError> {
    let mut c = AuditConfig::default();
    let Some(f) = f else { return Ok(c) };
    if let Some(n) = f.checkpoint_every {
        if !(1..=1_000_000).contains(&n) {
            return Err(AuditValueError {
                key: "audit.checkpoint_every",
                message: format!("{n} is out of range: it must be between 1 and 1000000"),
            });
        }
        c.checkpoint_every = n;
    }
    if let Some(s) = &f.checkpoint_interval {
        let excerpt: String = s.chars().take(40).collect();
        let d = humantime::parse_duration(s).map_err(|e| AuditValueError {
            key: "audit.checkpoint_interval",
            message: format!("{excerpt:?} is not a duration ({e}); write e.g. \"30s\", \"1m\""),
        })?;
        if d < Duration::from_secs(1) || d > Duration::from_secs(86_400) {
            return Err(AuditValueError {
                key: "audit.checkpoint_interval",
                message: format!("{excerpt:?} is out of range: it must be between 1s and 1d"),
            });
        }
        c.checkpoint_interval = d;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        assert_eq!(resolve(None), Ok(AuditConfig::default()));
        let f = AuditFileConfig {
            checkpoint_every: Some(5),
            checkpoint_interval: Some("10s".into()),
        };
        let c = resolve(Some(&f)).expect("valid");
        assert_eq!(
            (c.checkpoint_every, c.checkpoint_interval),
            (5, Duration::from_secs(10))
        );
        let f = AuditFileConfig {
            checkpoint_every: Some(0),
            checkpoint_interval: None,
        };
        assert_eq!(
            resolve(Some(&f)).expect_err("0").key,
            "audit.checkpoint_every"
        );
        let f = AuditFileConfig {
            checkpoint_every: None,
            checkpoint_interval: Some("100ms".into()),
        };
        assert_eq!(
            resolve(Some(&f)).expect_err("too short").key,
            "audit.checkpoint_interval"
        );
    }
}
