//! The SQL a `postgres` credential runs, built only by quoting: role names from the
//! template, the `{{name}}`/`{{password}}`/`{{expiration}}` placeholders of the grant
//! statements, the role's marker comment, the statements that create and drop a role,
//! and the password and its SCRAM verifier (so the password itself never travels in SQL
//! text or reaches a server log).

use std::fmt::Write as _;

use base64::Engine as _;
use postgres_protocol::escape::{escape_identifier, escape_literal};
use ring::rand::SecureRandom;

/// The role template when `--role-template` is not given.
pub const DEFAULT_TEMPLATE: &str = "leash_{workload}_{lease}";
/// The placeholders a role template takes.
pub const TEMPLATE_FIELDS: [&str; 4] = ["workload", "lease", "credential", "action"];
/// The placeholders a grant or revoke statement takes.
pub const SQL_PLACEHOLDERS: [&str; 3] = ["name", "password", "expiration"];
/// PostgreSQL's longest identifier (NAMEDATALEN - 1), in bytes.
pub const MAX_ROLE_BYTES: usize = 63;
/// What every role Leash creates carries as its comment, first; the reconciler and the
/// drop touch no role without it.
pub const MARKER: &str = "leash-managed";
/// PBKDF2 rounds of the stored SCRAM verifier. The password is 256 random bits, so
/// stretching it adds nothing against guessing; the rounds cost CPU on every Issue
/// and every login (PostgreSQL's own default, 4096, costs milliseconds of CPU per
/// role on this kind of machine).
const SCRAM_ITERATIONS: u32 = 64;
/// The length of a lease id (`l-` and 20 hex digits; see `random_id`).
pub const LEASE_ID_LEN: usize = 22;

/// What is wrong with a template or a statement; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SqlError(pub String);

/// Map a value into a role name part: lowercase ASCII letters, digits and `_`; anything
/// else becomes `_`.
pub fn name_part(v: &str) -> String {
    v.chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect()
}

/// The values a role name is made of.
#[derive(Debug, Clone, Copy)]
pub struct RoleFields<'a> {
    /// The workload's name.
    pub workload: &'a str,
    /// The lease id.
    pub lease: &'a str,
    /// The credential's name.
    pub credential: &'a str,
    /// The action.
    pub action: &'a str,
}

/// Check a role template at `credential add`: only known `{field}`s, `{lease}` present,
/// only `[a-z0-9_]` outside them, not starting with `pg_` (reserved by PostgreSQL), and
/// room for a lease id within 63 bytes.
pub fn check_template(t: &str) -> Result<(), SqlError> {
    let mut fixed = 0usize;
    let mut has_lease = false;
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let lit = &rest[..open];
        check_literal(t, lit)?;
        fixed += lit.len();
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| {
            SqlError(format!(
                "--role-template {t:?} has a '{{' with no '}}'; the placeholders are {}",
                template_fields()
            ))
        })?;
        let field = &after[..close];
        if !TEMPLATE_FIELDS.contains(&field) {
            return Err(SqlError(format!(
                "unknown placeholder {{{field}}} in --role-template; the placeholders are {}",
                template_fields()
            )));
        }
        match field {
            "lease" => {
                has_lease = true;
                fixed += LEASE_ID_LEN;
            }
            _ => fixed += 1,
        }
        rest = &after[close + 1..];
    }
    check_literal(t, rest)?;
    fixed += rest.len();
    if !has_lease {
        return Err(SqlError(format!(
            "--role-template {t:?} must contain {{lease}}: each lease gets its own role"
        )));
    }
    if t.starts_with("pg_") {
        return Err(SqlError(format!(
            "--role-template {t:?} starts with pg_, which PostgreSQL reserves for its own roles"
        )));
    }
    if fixed > MAX_ROLE_BYTES {
        return Err(SqlError(format!(
            "--role-template {t:?} makes names of at least {fixed} bytes (a lease id is {LEASE_ID_LEN}); PostgreSQL's limit is {MAX_ROLE_BYTES}: shorten the template"
        )));
    }
    Ok(())
}

fn check_literal(t: &str, lit: &str) -> Result<(), SqlError> {
    if let Some(c) = lit
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_'))
    {
        return Err(SqlError(format!(
            "--role-template {t:?} has {c:?} outside a placeholder; role names use only a-z, 0-9 and _"
        )));
    }
    Ok(())
}

fn template_fields() -> String {
    TEMPLATE_FIELDS
        .iter()
        .map(|f| format!("{{{f}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The role name for `f` by the (checked) template `t`.
pub fn role_name(t: &str, f: RoleFields<'_>) -> Result<String, SqlError> {
    let mut out = String::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').unwrap_or(after.len());
        out.push_str(&name_part(match &after[..close] {
            "workload" => f.workload,
            "lease" => f.lease,
            "credential" => f.credential,
            "action" => f.action,
            other => other,
        }));
        rest = after.get(close + 1..).unwrap_or("");
    }
    out.push_str(rest);
    if out.len() > MAX_ROLE_BYTES {
        return Err(SqlError(format!(
            "the role name for workload {:?} would be {} bytes; PostgreSQL's limit is {MAX_ROLE_BYTES}: shorten the credential's --role-template (e.g. leash_{{lease}}) or the workload's name",
            f.workload,
            out.len()
        )));
    }
    if out.starts_with("pg_") {
        return Err(SqlError(format!(
            "the role name {out:?} starts with pg_, which PostgreSQL reserves; change the credential's --role-template"
        )));
    }
    Ok(out)
}

/// One piece of a statement: text as written, or a placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Hole(&'a str),
}

fn pieces<'a>(sql: &'a str, flag: &str) -> Result<Vec<Piece<'a>>, SqlError> {
    let mut out = Vec::new();
    let mut rest = sql;
    while let Some(open) = rest.find("{{") {
        out.push(Piece::Text(&rest[..open]));
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| {
            SqlError(format!(
                "a '{{{{' with no '}}}}' in {flag}; the placeholders are {}",
                sql_placeholders()
            ))
        })?;
        let name = after[..close].trim();
        if !SQL_PLACEHOLDERS.contains(&name) {
            // Shown as written when it is a plain word, else quoted and cut short.
            let shown = if name.len() <= 40
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                name.to_string()
            } else {
                leash_proto::names::excerpt(name)
            };
            return Err(SqlError(format!(
                "unknown placeholder {{{{{shown}}}}} in {flag}; the placeholders are {}",
                sql_placeholders()
            )));
        }
        out.push(Piece::Hole(name));
        rest = &after[close + 2..];
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

fn sql_placeholders() -> String {
    SQL_PLACEHOLDERS
        .iter()
        .map(|p| format!("{{{{{p}}}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Check a grant or revoke statement's placeholders; `flag` names it in the message
/// (e.g. `--grant write`).
pub fn check_statement(sql: &str, flag: &str) -> Result<(), SqlError> {
    if sql.trim().is_empty() {
        return Err(SqlError(format!("{flag} is empty; give the SQL to run")));
    }
    pieces(sql, flag).map(|_| ())
}

/// What the placeholders stand for in one role's statements.
#[derive(Clone, Copy)]
pub struct Values<'a> {
    /// The role name.
    pub name: &'a str,
    /// The password.
    pub password: &'a str,
    /// The role's expiry, as a timestamp text.
    pub expiration: &'a str,
}

impl std::fmt::Debug for Values<'_> {
    /// Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Values")
            .field("name", &self.name)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// `sql` with its placeholders replaced: `{{name}}` as a quoted identifier,
/// `{{password}}` and `{{expiration}}` as quoted literals.
pub fn substitute(sql: &str, flag: &str, v: Values<'_>) -> Result<String, SqlError> {
    let mut out = String::with_capacity(sql.len() + 32);
    for p in pieces(sql, flag)? {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Hole("name") => out.push_str(&escape_identifier(v.name)),
            Piece::Hole("password") => out.push_str(&escape_literal(v.password)),
            Piece::Hole(_) => out.push_str(&escape_literal(v.expiration)),
        }
    }
    Ok(out)
}

/// The comment that marks a role as Leash's.
pub fn marker(lease: &str, credential: &str, created: i64) -> String {
    format!("{MARKER} lease={lease} credential={credential} created={created}")
}

/// A parsed marker comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// The lease id.
    pub lease: String,
    /// The credential's name.
    pub credential: String,
    /// Unix seconds.
    pub created: i64,
}

/// The marker in a role's comment, if the comment is one.
pub fn parse_marker(comment: &str) -> Option<Marker> {
    let mut words = comment.split(' ');
    if words.next()? != MARKER {
        return None;
    }
    let (mut lease, mut credential, mut created) = (None, None, None);
    for w in words {
        match w.split_once('=')? {
            ("lease", v) => lease = Some(v.to_string()),
            ("credential", v) => credential = Some(v.to_string()),
            ("created", v) => created = v.parse().ok(),
            _ => {}
        }
    }
    Some(Marker {
        lease: lease?,
        credential: credential?,
        created: created?,
    })
}

/// Unix seconds as a timestamptz literal's text, in UTC.
pub fn timestamp(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "infinity".to_string())
}

/// What creating one role needs.
#[derive(Debug, Clone, Copy)]
pub struct NewRole<'a> {
    /// The placeholders' values (name, password, expiry).
    pub values: Values<'a>,
    /// The SCRAM verifier of the password.
    pub verifier: &'a str,
    /// `CONNECTION LIMIT`.
    pub connection_limit: u32,
    /// The marker comment.
    pub marker: &'a str,
    /// The grant statement of the action, unsubstituted.
    pub grant: &'a str,
    /// Names the grant in messages (`--grant write`).
    pub grant_flag: &'a str,
}

/// The statements that create a role, its marker and its grants, as one text for a
/// single simple query: PostgreSQL runs a multi-statement simple query as one
/// transaction, so a failing grant leaves no role behind, in one round trip.
pub fn create_role(r: NewRole<'_>) -> Result<String, SqlError> {
    let q = escape_identifier(r.values.name);
    let mut s = String::with_capacity(512);
    let _ = write!(
        s,
        "CREATE ROLE {q} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD {} VALID UNTIL {} CONNECTION LIMIT {};\nCOMMENT ON ROLE {q} IS {};\n",
        escape_literal(r.verifier),
        escape_literal(r.values.expiration),
        r.connection_limit.min(i32::MAX as u32),
        escape_literal(r.marker),
    );
    s.push_str(&substitute(r.grant, r.grant_flag, r.values)?);
    Ok(s)
}

/// The first step of a drop: no new logins. Its own transaction, committed before the
/// sessions are cut, so none can log in between.
pub fn disable_login(role: &str) -> String {
    format!("ALTER ROLE {} NOLOGIN", escape_identifier(role))
}

/// The rest of a drop, one transaction: cut the sessions (the first result row is how
/// many), run the revoke statement, hand what it owns to the admin, drop the role. The
/// admin is made a member first: REASSIGN and DROP OWNED need the role's privileges.
pub fn drop_role(role: &str, revoke: Option<&str>) -> String {
    let q = escape_identifier(role);
    let mut s = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = {};\nGRANT {q} TO CURRENT_USER;\n",
        escape_literal(role)
    );
    if let Some(r) = revoke {
        s.push_str(r);
        s.push_str(";\n");
    }
    let _ = write!(
        s,
        "REASSIGN OWNED BY {q} TO CURRENT_USER;\nDROP OWNED BY {q};\nDROP ROLE {q};"
    );
    s
}

/// The query that finds a role's comment: one row (name, comment or NULL) when the role
/// exists.
pub fn role_comment(role: &str) -> String {
    format!(
        "SELECT r.rolname, d.description FROM pg_roles r LEFT JOIN pg_shdescription d ON d.objoid = r.oid AND d.classoid = 'pg_authid'::regclass WHERE r.rolname = {}",
        escape_literal(role)
    )
}

/// The query that lists every role carrying a marker: rows of (name, comment). Which
/// credential a role belongs to is read from the comment ([`parse_marker`]).
pub fn marked_roles() -> String {
    format!(
        "SELECT r.rolname, d.description FROM pg_roles r JOIN pg_shdescription d ON d.objoid = r.oid AND d.classoid = 'pg_authid'::regclass WHERE d.description LIKE {}",
        escape_literal(&format!("{MARKER} %")),
    )
}

/// A new password: 32 bytes from the OS RNG, URL-safe base64 without padding (43
/// characters that need no escaping in a URL).
pub fn new_password() -> Result<String, SqlError> {
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| SqlError("the OS random number generator failed".into()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677): the
/// server checks logins against it and never learns the password.
pub fn scram_verifier(password: &str) -> Result<String, SqlError> {
    use ring::{digest, hmac, pbkdf2};
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| SqlError("the OS random number generator failed".into()))?;
    let mut salted = [0u8; 32];
    let rounds = std::num::NonZeroU32::new(SCRAM_ITERATIONS).unwrap_or(std::num::NonZeroU32::MIN);
    // The password is base64 text, which SASLprep leaves as it is.
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &salt,
        password.as_bytes(),
        &mut salted,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        b64.encode(salt),
        b64.encode(stored_key.as_ref()),
        b64.encode(server_key.as_ref())
    ))
}
