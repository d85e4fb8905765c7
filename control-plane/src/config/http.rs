//! The `[http]` table: the optional HTTPS listener that publishes the OIDC discovery
//! document, the JWKS and RFC 7662 introspection (see `crate::http`).
//!
//! Only the shape is checked here (an address, both of `cert_file` and `key_file` or
//! neither, plain DNS names); the files themselves are read when the listener starts
//! (and by `--check-config`), where an unreadable one stops the start naming it.
//! Errors are a key and a message, which `config.rs` turns into its `Value` error (this
//! file uses nothing of its parent).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// A bad `[http]` value: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpValueError {
    /// The key, e.g. `http.listen`.
    pub key: &'static str,
    /// Why.
    pub message: String,
}

/// `[http]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFileConfig {
    /// Listen address, e.g. "0.0.0.0:8444" (port 0 picks a free one).
    pub listen: Option<String>,
    /// PEM certificate chain to serve (leaf first), e.g. a publicly trusted one.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Names of the default certificate (signed by the Leash CA).
    pub server_names: Option<Vec<String>>,
}

/// Where the listener's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpCert {
    /// Files the operator supplied.
    Files {
        /// PEM chain, leaf first.
        cert_file: PathBuf,
        /// PEM private key.
        key_file: PathBuf,
    },
    /// A certificate the Leash CA signs at every start for these names (DNS names or IP
    /// addresses), never written to disk.
    Default {
        /// The subject alternative names.
        server_names: Vec<String>,
    },
}

/// The resolved `[http]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// The serving certificate.
    pub cert: HttpCert,
}

/// Longest DNS name.
const MAX_NAME_LEN: usize = 253;

fn value(key: &'static str, message: String) -> HttpValueError {
    HttpValueError { key, message }
}

/// At most 64 characters of a value, for error messages.
fn clip(s: &str) -> String {
    if s.chars().count() <= 64 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(64).collect::<String>())
    }
}

/// A file path: not empty, no NUL byte.
fn validate_path(key: &'static str, p: &std::path::Path) -> Result<(), HttpValueError> {
    let bytes = p.as_os_str().as_encoded_bytes();
    if bytes.is_empty() {
        return Err(value(key, "must not be empty".into()));
    }
    if bytes.contains(&0) {
        return Err(value(key, "must not contain a NUL byte".into()));
    }
    Ok(())
}

/// A server name: an IP address, or a DNS name (letters, digits, '-', '.', and a
/// leading "*." wildcard).
fn valid_server_name(n: &str) -> bool {
    if n.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = n.strip_prefix("*.").unwrap_or(n);
    !name.is_empty()
        && n.len() <= MAX_NAME_LEN
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The default names: `localhost` and this machine's host name.
fn default_names() -> Vec<String> {
    let mut names = vec!["localhost".to_string()];
    if let Ok(h) = nix::unistd::gethostname() {
        if let Some(h) = h.to_str() {
            let h = h.to_ascii_lowercase();
            if h != "localhost" && valid_server_name(&h) {
                names.push(h);
            }
        }
    }
    names
}

/// Check `[http]` and fill its defaults.
pub fn resolve(file: HttpFileConfig) -> Result<HttpConfig, HttpValueError> {
    let Some(listen_s) = file.listen else {
        return Err(value(
            "http.listen",
            "is required in [http] (e.g. listen = \"0.0.0.0:8444\"); leave out the whole [http] table to serve no HTTPS".into(),
        ));
    };
    let listen = listen_s.parse().map_err(|e| {
        value(
            "http.listen",
            format!(
                "{:?} is not a socket address ({e}); write e.g. \"0.0.0.0:8444\"",
                clip(&listen_s)
            ),
        )
    })?;
    let cert = match (file.cert_file, file.key_file) {
        (Some(cert_file), Some(key_file)) => {
            validate_path("http.cert_file", &cert_file)?;
            validate_path("http.key_file", &key_file)?;
            if file.server_names.is_some() {
                return Err(value(
                    "http.server_names",
                    "names only the default certificate; with cert_file the names are the certificate's own: leave server_names out".into(),
                ));
            }
            HttpCert::Files {
                cert_file,
                key_file,
            }
        }
        (Some(_), None) => {
            return Err(value(
                "http.key_file",
                "is missing: cert_file needs the key_file of its private key (PEM)".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(value(
                "http.cert_file",
                "is missing: key_file needs the cert_file of its certificate chain (PEM)".into(),
            ))
        }
        (None, None) => {
            let server_names = file.server_names.unwrap_or_else(default_names);
            if server_names.is_empty() {
                return Err(value(
                    "http.server_names",
                    "must name at least one DNS name or IP address (leave it out for localhost and this host's name)".into(),
                ));
            }
            if let Some(bad) = server_names.iter().find(|n| !valid_server_name(n)) {
                return Err(value(
                    "http.server_names",
                    format!("{:?} is neither a DNS name nor an IP address", clip(bad)),
                ));
            }
            HttpCert::Default { server_names }
        }
    };
    Ok(HttpConfig { listen, cert })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Config, ConfigError, FileConfig, Overrides};
    use super::*;

    fn resolve_text(text: &str) -> Result<Config, ConfigError> {
        let file = FileConfig::parse(text, Path::new("test.toml"))?;
        Config::resolve(file, Overrides::default())
    }

    fn refused(text: &str, words: &[&str]) {
        let e = resolve_text(text).expect_err(text).to_string();
        for w in words {
            assert!(e.contains(w), "{text:?}: {e} lacks {w:?}");
        }
    }

    #[test]
    fn absent_means_no_listener_and_defaults_name_localhost() {
        assert_eq!(resolve_text("").expect("defaults").http, None);
        let c = resolve_text("[http]\nlisten = \"127.0.0.1:0\"\n").expect("valid");
        let h = c.http.expect("an http listener");
        assert_eq!(h.listen.port(), 0);
        match h.cert {
            HttpCert::Default { server_names } => {
                assert_eq!(server_names[0], "localhost");
            }
            other => panic!("{other:?}"),
        }
        let c = resolve_text(
            "[http]\nlisten = \"0.0.0.0:8444\"\nserver_names = [\"leash.corp.example\", \"10.0.0.1\"]\n",
        )
        .expect("valid");
        assert_eq!(
            c.http.expect("http").cert,
            HttpCert::Default {
                server_names: vec!["leash.corp.example".into(), "10.0.0.1".into()]
            }
        );
        let c = resolve_text(
            "[http]\nlisten = \"0.0.0.0:8444\"\ncert_file = \"/etc/leash/http.pem\"\nkey_file = \"/etc/leash/http.key\"\n",
        )
        .expect("valid");
        assert_eq!(
            c.http.expect("http").cert,
            HttpCert::Files {
                cert_file: "/etc/leash/http.pem".into(),
                key_file: "/etc/leash/http.key".into()
            }
        );
    }

    #[test]
    fn mistakes_are_named() {
        refused("[http]\nlisen = \"x\"\n", &["lisen"]);
        refused("[http]\ncert_file = \"/a\"\n", &["http.listen", "required"]);
        refused(
            "[http]\nlisten = \"nowhere\"\n",
            &["http.listen", "0.0.0.0:8444"],
        );
        refused(
            "[http]\nlisten = \"127.0.0.1:0\"\ncert_file = \"/a.pem\"\n",
            &["http.key_file", "missing"],
        );
        refused(
            "[http]\nlisten = \"127.0.0.1:0\"\nkey_file = \"/a.key\"\n",
            &["http.cert_file", "missing"],
        );
        refused(
            "[http]\nlisten = \"127.0.0.1:0\"\ncert_file = \"/a\"\nkey_file = \"/b\"\nserver_names = [\"x\"]\n",
            &["http.server_names", "default certificate"],
        );
        refused(
            "[http]\nlisten = \"127.0.0.1:0\"\nserver_names = []\n",
            &["http.server_names", "at least one"],
        );
        refused(
            "[http]\nlisten = \"127.0.0.1:0\"\nserver_names = [\"no spaces.example\"]\n",
            &["http.server_names", "no spaces.example"],
        );
        refused(
            "[http]\nlisten = \"127.0.0.1:0\"\ncert_file = \"\"\nkey_file = \"/b\"\n",
            &["http.cert_file", "empty"],
        );
    }
}
