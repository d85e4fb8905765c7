//! The `[metrics]` table: a plain-HTTP listener that serves only `/metrics` (see
//! `crate::http::metrics`), for a control plane that runs no HTTPS listener (`[http]`)
//! or whose scraper should not reach that one. Errors are a key and a message, which
//! `config.rs` turns into its `Value` error (this file uses nothing of its parent).

use std::net::SocketAddr;

use serde::Deserialize;

/// `[metrics]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFileConfig {
    /// Listen address, e.g. "127.0.0.1:9464" (port 0 picks a free one).
    pub listen: Option<String>,
}

/// A bad `[metrics]` value: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsValueError {
    /// The key, e.g. `metrics.listen`.
    pub key: &'static str,
    /// Why.
    pub message: String,
}

/// Check `[metrics]`: the listen address, the only key, is required.
pub fn resolve(file: MetricsFileConfig) -> Result<SocketAddr, MetricsValueError> {
    let err = |message: String| MetricsValueError {
        key: "metrics.listen",
        message,
    };
    let Some(s) = file.listen else {
        return Err(err(
            "is required in [metrics] (e.g. listen = \"127.0.0.1:9464\"); leave out the whole [metrics] table to serve no plain-HTTP metrics".into(),
        ));
    };
    if s.len() > 64 {
        return Err(err(format!(
            "is {} characters long; write an address such as \"127.0.0.1:9464\"",
            s.len()
        )));
    }
    s.parse().map_err(|e| {
        err(format!(
            "{s:?} is not a socket address ({e}); write e.g. \"127.0.0.1:9464\""
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_required_and_checked() {
        let ok = resolve(MetricsFileConfig {
            listen: Some("127.0.0.1:9464".into()),
        });
        assert_eq!(ok, Ok("127.0.0.1:9464".parse().unwrap()));
        let missing = resolve(MetricsFileConfig::default()).unwrap_err();
        assert!(missing.message.contains("is required"), "{missing:?}");
        let bad = resolve(MetricsFileConfig {
            listen: Some("localhost".into()),
        })
        .unwrap_err();
        assert!(bad.message.contains("not a socket address"), "{bad:?}");
        let long = resolve(MetricsFileConfig {
            listen: Some("1".repeat(100)),
        })
        .unwrap_err();
        assert!(long.message.contains("characters long"), "{long:?}");
    }
}
