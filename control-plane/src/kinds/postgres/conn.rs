//! The admin connection of a `postgres` credential: parsing its connection string (a
//! `postgresql://` URL or `key=value` pairs), connecting over TCP (TLS when `sslmode`
//! asks for it, verified against `sslrootcert` or the system's CA bundle) or a Unix
//! socket, and a small pool of open connections. No message here ever holds the
//! connection string or its password.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use percent_encoding::percent_decode_str;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::model::PostgresDef;

/// Where the system's CA certificates are, when `sslrootcert` names no file.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per credential (Issue at concurrency 16 needs no more).
pub const POOL_SIZE: usize = 16;

/// What went wrong connecting or talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The connection string is wrong (exit 1).
    #[error("{0}")]
    Invalid(String),
    /// PostgreSQL could not be reached (exit 5).
    #[error("{0}")]
    Unreachable(String),
    /// PostgreSQL answered with an error.
    #[error("{0}")]
    Server(String),
}

/// A parsed admin connection string.
pub struct ConnSpec {
    config: Config,
    tls: Option<MakeRustlsConnect>,
    /// The non-secret parts, as stored with the definition.
    pub def: PostgresDef,
    /// To take out of any driver message, should one ever hold it.
    password: Option<String>,
}

impl std::fmt::Debug for ConnSpec {
    /// The summary only: never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnSpec")
            .field("summary", &summary(&self.def))
            .finish_non_exhaustive()
    }
}

/// `user@host:port/db sslmode=…` (or `(unix socket)`): what admins are shown.
pub fn summary(d: &PostgresDef) -> String {
    if d.socket {
        format!(
            "{}@{}:{}/{} (unix socket)",
            d.user, d.host, d.port, d.dbname
        )
    } else {
        format!(
            "{}@{}:{}/{} sslmode={}",
            d.user, d.host, d.port, d.dbname, d.sslmode
        )
    }
}

/// The options Leash reads itself before the driver parses the rest.
#[derive(Debug, Default)]
struct Extracted {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

fn take_option(key: &str, value: &str, ex: &mut Extracted) -> Option<String> {
    match key {
        "sslmode" => {
            ex.sslmode = Some(value.to_string());
            // The driver knows disable, prefer and require; with rustls every TLS
            // connection verifies the server's certificate and name anyway.
            Some(match value {
                "verify-ca" | "verify-full" => "require".to_string(),
                v => v.to_string(),
            })
        }
        "sslrootcert" => {
            ex.sslrootcert = Some(value.to_string());
            None
        }
        _ => Some(value.to_string()),
    }
}

/// Take `sslmode` and `sslrootcert` out of a URL's query.
fn rewrite_url(dsn: &str, ex: &mut Extracted) -> String {
    let Some((base, query)) = dsn.split_once('?') else {
        return dsn.to_string();
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode_str(k).decode_utf8_lossy().into_owned();
        let value = percent_decode_str(v).decode_utf8_lossy().into_owned();
        if key == "sslmode" || key == "sslrootcert" {
            if let Some(v) = take_option(&key, &value, ex) {
                kept.push(format!("{key}={v}"));
            }
        } else {
            kept.push(pair.to_string());
        }
    }
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// Take `sslmode` and `sslrootcert` out of `key=value` pairs (values may be quoted).
fn rewrite_pairs(dsn: &str, ex: &mut Extracted) -> String {
    let mut tokens: Vec<String> = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in dsn.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' => {
                cur.push(c);
                escaped = true;
            }
            '\'' => {
                cur.push(c);
                quoted = !quoted;
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    tokens.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        tokens.push(cur);
    }
    let mut kept = Vec::new();
    for t in tokens {
        match t.split_once('=') {
            Some((k, v)) if k.trim() == "sslmode" || k.trim() == "sslrootcert" => {
                let v = v.trim().trim_matches('\'');
                if let Some(v) = take_option(k.trim(), v, ex) {
                    kept.push(format!("{}={v}", k.trim()));
                }
            }
            _ => kept.push(t),
        }
    }
    kept.join(" ")
}

/// Parse an admin connection string. The message of an error names the part that is
/// wrong, never the string itself.
pub fn parse(dsn: &str) -> Result<ConnSpec, ConnError> {
    let dsn = dsn.trim();
    let bad = |m: String| ConnError::Invalid(m);
    if dsn.is_empty() {
        return Err(bad(
            "the connection file is empty; write the admin connection string in it, e.g. postgresql://leash_admin:PASSWORD@HOST:5432/DB?sslmode=verify-full".into(),
        ));
    }
    let mut ex = Extracted::default();
    let url = dsn.starts_with("postgres://") || dsn.starts_with("postgresql://");
    let rewritten = if url {
        rewrite_url(dsn, &mut ex)
    } else {
        rewrite_pairs(dsn, &mut ex)
    };
    let mut config = Config::from_str(&rewritten).map_err(|e| {
        let why = parse_reason(&e);
        bad(format!(
            "the connection string could not be parsed{why}; write a postgresql://USER:PASSWORD@HOST:PORT/DB URL or key=value pairs"
        ))
    })?;
    let password = config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let user = config
        .get_user()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| bad("the connection string names no user: add USER@ before the host (postgresql://USER:PASSWORD@HOST/DB) or user=USER".into()))?
        .to_string();
    let dbname = config
        .get_dbname()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| bad("the connection string names no database: add /DB after the host (postgresql://USER:PASSWORD@HOST/DB) or dbname=DB".into()))?
        .to_string();
    let (host, socket) = match config.get_hosts() {
        [Host::Tcp(h)] => (h.clone(), false),
        [Host::Unix(p)] => (p.to_string_lossy().into_owned(), true),
        [] => return Err(bad("the connection string names no host: add @HOST (or host=/socket/dir for a Unix socket)".into())),
        _ => return Err(bad("the connection string names several hosts; give exactly one".into())),
    };
    let port = match config.get_ports() {
        [] => 5432,
        [p] => *p,
        _ => {
            return Err(bad(
                "the connection string names several ports; give exactly one".into(),
            ))
        }
    };
    let mode = ex.sslmode.clone().unwrap_or_else(|| "prefer".into());
    if !matches!(
        mode.as_str(),
        "disable" | "prefer" | "require" | "verify-ca" | "verify-full"
    ) {
        return Err(bad(format!(
            "unknown sslmode {}; use disable, prefer, require or verify-full",
            leash_proto::names::excerpt(&mode)
        )));
    }
    let tls = if socket || mode == "disable" {
        config.ssl_mode(SslMode::Disable);
        None
    } else {
        Some(tls_connector(ex.sslrootcert.as_deref())?)
    };
    config.connect_timeout(CONNECT_TIMEOUT);
    config.application_name("leash-control-plane");
    Ok(ConnSpec {
        config,
        tls,
        def: PostgresDef {
            user,
            host,
            port,
            socket,
            dbname,
            sslmode: if socket { String::new() } else { mode },
            ..PostgresDef::default()
        },
        password,
    })
}

/// The driver's reason a string did not parse, when it names an option rather than
/// quoting a piece of the string.
fn parse_reason(e: &tokio_postgres::Error) -> String {
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        let m = s.to_string();
        if m.contains("option `") && !m.contains("but got") {
            return format!(" ({m})");
        }
        src = s.source();
    }
    String::new()
}

fn tls_connector(rootcert: Option<&str>) -> Result<MakeRustlsConnect, ConnError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let path = rootcert.unwrap_or(SYSTEM_ROOTS);
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ConnError::Invalid(format!(
                "cannot read the CA certificates in {path} ({e}); name a PEM file with sslrootcert=FILE, or use a Unix socket"
            ))
        })?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ConnError::Invalid(format!(
            "{path} holds no usable CA certificate; name one with sslrootcert=FILE"
        )));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ConnError::Invalid(format!("TLS setup failed: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

impl ConnSpec {
    /// Open one connection; its I/O runs on a task of its own until the client is
    /// dropped.
    pub async fn connect(&self) -> Result<Client, ConnError> {
        let r = match &self.tls {
            None => self.config.connect(NoTls).await.map(|(c, conn)| {
                tokio::spawn(conn);
                c
            }),
            Some(tls) => self.config.connect(tls.clone()).await.map(|(c, conn)| {
                tokio::spawn(conn);
                c
            }),
        };
        r.map_err(|e| self.connect_error(&e))
    }

    /// [`ConnSpec::connect`], sending the payload of every notification the connection
    /// receives (after `LISTEN`) to `notes`.
    pub async fn connect_listening(
        &self,
        notes: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<Client, ConnError> {
        let r = match &self.tls {
            None => self.config.connect(NoTls).await.map(|(c, conn)| {
                tokio::spawn(forward_notes(conn, notes));
                c
            }),
            Some(tls) => self.config.connect(tls.clone()).await.map(|(c, conn)| {
                tokio::spawn(forward_notes(conn, notes));
                c
            }),
        };
        r.map_err(|e| self.connect_error(&e))
    }

    fn connect_error(&self, e: &tokio_postgres::Error) -> ConnError {
        let where_ = if self.def.socket {
            format!(
                "the Unix socket in {} (port {})",
                self.def.host, self.def.port
            )
        } else {
            format!("{}:{}", self.def.host, self.def.port)
        };
        let why = self.message(e);
        match e.as_db_error() {
            Some(_) => ConnError::Server(format!(
                "PostgreSQL at {where_} refused the role {}: {why}",
                self.def.user
            )),
            None => ConnError::Unreachable(format!(
                "cannot reach PostgreSQL at {where_}: {why}; check that it is up and the connection string's host and port"
            )),
        }
    }

    /// The driver's message for `e`, with PostgreSQL's own text for a server error, and
    /// never the password.
    pub fn message(&self, e: &tokio_postgres::Error) -> String {
        let m = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => {
                let mut m = e.to_string();
                let mut src = std::error::Error::source(e);
                while let Some(s) = src {
                    m = format!("{m}: {s}");
                    src = s.source();
                }
                m
            }
        };
        scrub(m, self.password.as_deref())
    }
}

/// `m` with `secret` taken out, should a driver ever quote it.
fn scrub(m: String, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() && m.contains(s) => m.replace(s, "***"),
        _ => m,
    }
}

/// Open admin connections of one credential's connection version, reused between calls.
pub struct Pool {
    spec: ConnSpec,
    idle: Mutex<Vec<Client>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("spec", &self.spec).finish()
    }
}

impl Pool {
    /// A pool for `spec`, with no connection open yet.
    pub fn new(spec: ConnSpec) -> Pool {
        Pool {
            spec,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The connection string's parts.
    pub fn spec(&self) -> &ConnSpec {
        &self.spec
    }

    /// An open connection: an idle one, else a new one.
    pub async fn get(&self) -> Result<Client, ConnError> {
        loop {
            let c = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match c {
                Some(c) if !c.is_closed() => return Ok(c),
                Some(_) => continue,
                None => return self.spec.connect().await,
            }
        }
    }

    /// Give back a connection that is in a clean state (no transaction open).
    pub fn put(&self, c: Client) {
        if c.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL_SIZE {
            idle.push(c);
        }
    }
}

/// Drive a connection, forwarding its notifications until it closes.
async fn forward_notes<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    notes: tokio::sync::mpsc::UnboundedSender<String>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
        match m {
            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                let _ = notes.send(n.payload().to_string());
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
}
