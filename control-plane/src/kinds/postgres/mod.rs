//! The `postgres` kind: a PostgreSQL login role per lease, created with the grants of
//! the lease's action when it is issued and dropped, its sessions cut, when it ends.
//!
//! The admin connection string is stored sealed like a brokered secret's value (a
//! version under the credential's name); the definition keeps only its non-secret parts
//! ([`PostgresDef`]). Every role carries a marker comment (`leash-managed lease=…
//! credential=… created=…`): the drop and the reconciler touch no role without it.
//! Role names, passwords and statements are built in [`sql`]; connections in [`conn`].

pub mod conn;
pub mod sql;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use leash_proto::v1;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::json;
use tokio_postgres::{Client, SimpleQueryMessage};

use self::conn::{ConnError, ConnSpec, Pool};
use self::sql::{RoleFields, SqlError, Values};
use super::{CredentialKind, Env, KindError, KindEvent, Material, MintRequest, Minted, Reconciled};
use crate::clock::Clock;
use crate::model::{secret_aad, Credential, Lease, LeaseState, PostgresDef};

/// How many times a mint that collided with a concurrent catalog update is run again.
const MAX_COLLISIONS: u32 = 6;

/// Whether a server error is a collision with a concurrent transaction, gone when the
/// transaction is run again: a serialization failure, a deadlock, a lock not available,
/// or two grants updating one object's privileges at once.
fn retryable(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        matches!(d.code().code(), "40001" | "40P01" | "55P03")
            || (d.code().code() == "XX000" && d.message().contains("concurrently updated"))
    })
}

/// Whether a server error is a limit of the server rather than a wrong statement:
/// insufficient resources (class 53) or a program limit (class 54, e.g. an object's
/// privilege list that has grown past a row's size).
fn capacity(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|d| matches!(&d.code().code()[..2], "53" | "54"))
}

/// What is percent-encoded in a URL's host (a socket directory) and database: all but
/// the characters RFC 3986 leaves unreserved.
const URL_PART: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The kind's name.
pub const POSTGRES_KIND: &str = "postgres";
/// `CONNECTION LIMIT` of each role when the definition sets none.
pub const DEFAULT_CONNECTION_LIMIT: u32 = 10;
/// A marked role whose lease the store does not know is left alone this long after it
/// was created: its lease may be being written right now.
const RECONCILE_GRACE_SECS: i64 = 120;

/// The `postgres` credential kind.
pub struct Postgres {
    clock: Clock,
    pools: Mutex<HashMap<String, (u32, Arc<Pool>)>>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").finish_non_exhaustive()
    }
}

impl Postgres {
    /// The kind, deciding by `clock` which unknown roles are old enough to reconcile.
    pub fn new(clock: Clock) -> Postgres {
        Postgres {
            clock,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// The pool of `c`'s current connection version, opening the sealed connection
    /// string the first time.
    fn pool(&self, env: Env<'_>, c: &Credential) -> Result<Arc<Pool>, KindError> {
        let version = c.current_version;
        if let Some((v, p)) = self.pools_lock().get(&c.name) {
            if *v == version {
                return Ok(p.clone());
            }
        }
        let dsn = open_connection(env, &c.name, version)?;
        let spec = conn::parse(&dsn).map_err(|e| {
            KindError::Unavailable(format!(
                "the stored connection string of {} does not parse: {e}",
                c.name
            ))
        })?;
        let pool = Arc::new(Pool::new(spec));
        self.pools_lock()
            .insert(c.name.clone(), (version, pool.clone()));
        Ok(pool)
    }

    fn pools_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, Arc<Pool>)>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drop `role` if it carries the marker of `lease` (any lease when `None`). Returns
    /// the sessions cut, or `None` when there was no such role to drop.
    async fn drop_marked(
        &self,
        pool: &Pool,
        def: &PostgresDef,
        role: &str,
        lease: Option<&str>,
        expires_at: i64,
    ) -> Result<Option<u64>, KindError> {
        let client = pool.get().await.map_err(unavailable)?;
        let r = drop_with(&client, pool.spec(), def, role, lease, expires_at).await;
        if !matches!(r, Err(KindError::Unavailable(_))) {
            pool.put(client);
        }
        r
    }
}

fn unavailable(e: ConnError) -> KindError {
    KindError::Unavailable(e.to_string())
}

fn invalid(e: SqlError) -> KindError {
    KindError::Invalid(e.0)
}

/// The admin connection string of version `version` of credential `name`, unsealed.
fn open_connection(env: Env<'_>, name: &str, version: u32) -> Result<String, KindError> {
    let u = |m: String| KindError::Unavailable(m);
    let v = env
        .store
        .secret_version(name, version)
        .map_err(|e| u(e.to_string()))?
        .ok_or_else(|| u(format!("the connection string of {name} (version {version}) is missing from the store; add the credential again")))?;
    let plain = env
        .master
        .open(&secret_aad(name, version), &v.sealed)
        .map_err(|e| u(format!("cannot open the connection string of {name}: {e}")))?;
    String::from_utf8(plain.to_vec())
        .map_err(|_| u(format!("the connection string of {name} is not UTF-8 text")))
}

/// The body of a drop on one connection (see [`sql::drop_role`]).
async fn drop_with(
    client: &Client,
    spec: &ConnSpec,
    def: &PostgresDef,
    role: &str,
    lease: Option<&str>,
    expires_at: i64,
) -> Result<Option<u64>, KindError> {
    let fail = |e: tokio_postgres::Error| {
        let m = spec.message(&e);
        KindError::Unavailable(format!("dropping role {role} failed: {m}"))
    };
    let found = rows(
        client
            .simple_query(&sql::role_comment(role))
            .await
            .map_err(fail)?,
    );
    let Some(row) = found.first() else {
        return Ok(None);
    };
    let marker = row
        .get(1)
        .and_then(|c| c.as_deref())
        .and_then(sql::parse_marker);
    match (&marker, lease) {
        (None, _) => {
            tracing::warn!(role, "a role with the name of a lease's role carries no leash-managed marker; it was left alone");
            return Ok(None);
        }
        (Some(m), Some(l)) if m.lease != l => {
            tracing::warn!(role, lease = l, marked = %m.lease, "a role carries another lease's marker; it was left alone");
            return Ok(None);
        }
        _ => {}
    }
    let revoke = if def.revoke_sql.is_empty() {
        None
    } else {
        let exp = sql::timestamp(expires_at);
        Some(
            sql::substitute(
                &def.revoke_sql,
                "--revoke-sql",
                Values {
                    name: role,
                    password: "",
                    expiration: &exp,
                },
            )
            .map_err(invalid)?,
        )
    };
    let gone = |e: &tokio_postgres::Error| {
        e.as_db_error()
            .is_some_and(|d| d.code() == &tokio_postgres::error::SqlState::UNDEFINED_OBJECT)
    };
    match client.simple_query(&sql::disable_login(role)).await {
        Ok(_) => {}
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(fail(e)),
    }
    // Revoking what the role was granted collides with concurrent grants on the same
    // objects like a mint does (see `retryable`); such a drop is run again at once.
    let text = sql::drop_role(role, revoke.as_deref());
    let mut collided = 0;
    let out = loop {
        match client.simple_query(&text).await {
            Ok(out) => break out,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) if retryable(&e) && collided < MAX_COLLISIONS => {
                collided += 1;
                tokio::time::sleep(std::time::Duration::from_millis(2 << collided)).await;
            }
            Err(e) => return Err(fail(e)),
        }
    };
    let cut = rows(out)
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok(Some(cut))
}

/// The rows of a simple query's answer, as text.
fn rows(msgs: Vec<SimpleQueryMessage>) -> Vec<Vec<Option<String>>> {
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// What a client is given: the JSON document of the design (`user`, `password`, `host`,
/// `port`, `dbname`, `url`).
pub fn material(def: &PostgresDef, user: &str, password: &str) -> String {
    let db = utf8_percent_encode(&def.dbname, URL_PART);
    let url = if def.socket {
        format!(
            "postgresql://{user}:{password}@{}:{}/{db}",
            utf8_percent_encode(&def.host, URL_PART),
            def.port
        )
    } else {
        let host = if def.host.contains(':') {
            format!("[{}]", def.host)
        } else {
            def.host.clone()
        };
        format!(
            "postgresql://{user}:{password}@{host}:{}/{db}?sslmode={}",
            def.port, def.sslmode
        )
    };
    json!({
        "user": user,
        "password": password,
        "host": def.host,
        "port": def.port,
        "dbname": def.dbname,
        "url": url,
    })
    .to_string()
}

/// The checks of a definition that need no database: template, statements, limits.
fn check_definition(def: &v1::Credential) -> Result<(), KindError> {
    let template = if def.role_template.is_empty() {
        sql::DEFAULT_TEMPLATE
    } else {
        &def.role_template
    };
    sql::check_template(template).map_err(invalid)?;
    if def.grants.is_empty() {
        return Err(KindError::Invalid(
            "a postgres credential needs at least one --grant ACTION=SQL (e.g. --grant read=\"GRANT SELECT ON ALL TABLES IN SCHEMA app TO {{name}}\")".into(),
        ));
    }
    for (action, g) in &def.grants {
        sql::check_statement(g, &format!("--grant {action}")).map_err(invalid)?;
    }
    if !def.revoke_sql.is_empty() {
        sql::check_statement(&def.revoke_sql, "--revoke-sql").map_err(invalid)?;
        if def.revoke_sql.contains("{{password}}") {
            return Err(KindError::Invalid(
                "--revoke-sql cannot use {{password}}: the password is not kept; use {{name}} or {{expiration}}".into(),
            ));
        }
    }
    if def.connection_limit > i32::MAX as u32 {
        return Err(KindError::Invalid(format!(
            "--connection-limit {} is too large",
            def.connection_limit
        )));
    }
    Ok(())
}

/// Everything `credential add --kind postgres` checks before storing the definition:
/// the connection string parses, PostgreSQL answers, the admin role has `CREATEROLE`,
/// and each grant (and the revoke statement) runs, in a transaction rolled back. Returns
/// the definition's non-secret parts.
pub async fn check(dsn: &str, def: &v1::Credential) -> Result<PostgresDef, KindError> {
    check_definition(def)?;
    let spec = conn::parse(dsn).map_err(|e| match e {
        ConnError::Unreachable(m) => KindError::Unavailable(m),
        e => KindError::Invalid(e.to_string()),
    })?;
    let client = spec.connect().await.map_err(|e| match e {
        ConnError::Unreachable(m) => KindError::Unavailable(m),
        e => KindError::Invalid(e.to_string()),
    })?;
    let server = |e: tokio_postgres::Error| {
        let m = spec.message(&e);
        if e.as_db_error().is_some() {
            KindError::Invalid(m)
        } else {
            KindError::Unavailable(format!("PostgreSQL stopped answering: {m}"))
        }
    };
    let row = rows(
        client
            .simple_query(
                "SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user",
            )
            .await
            .map_err(server)?,
    );
    if row
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .as_deref()
        != Some("t")
    {
        let u = &spec.def.user;
        return Err(KindError::Invalid(format!(
            "role {u} lacks CREATEROLE: ALTER ROLE {u} CREATEROLE (as a superuser) or use another admin role"
        )));
    }
    let mut out = spec.def.clone();
    out.role_template = if def.role_template.is_empty() {
        sql::DEFAULT_TEMPLATE.to_string()
    } else {
        def.role_template.clone()
    };
    out.grants = def.grants.clone().into_iter().collect();
    out.revoke_sql = def.revoke_sql.clone();
    out.connection_limit = if def.connection_limit == 0 {
        DEFAULT_CONNECTION_LIMIT
    } else {
        def.connection_limit
    };
    let password = sql::new_password().map_err(invalid)?;
    let verifier = sql::scram_verifier(&password).map_err(invalid)?;
    let role = format!(
        "leash_check_{}",
        &password[..12].to_ascii_lowercase().replace('-', "_")
    );
    let exp = sql::timestamp(crate::clock::now_ms() / 1000 + 60);
    for (action, grant) in &out.grants {
        let flag = format!("--grant {action}");
        let values = Values {
            name: &role,
            password: &password,
            expiration: &exp,
        };
        let mut text = sql::create_role(sql::NewRole {
            values,
            verifier: &verifier,
            connection_limit: out.connection_limit,
            marker: "leash-check",
            grant,
            grant_flag: &flag,
        })
        .map_err(invalid)?;
        if !out.revoke_sql.is_empty() {
            text.push_str(";\n");
            text.push_str(
                &sql::substitute(&out.revoke_sql, "--revoke-sql", values).map_err(invalid)?,
            );
        }
        client.simple_query("BEGIN").await.map_err(server)?;
        let tried = client.simple_query(&text).await;
        client.simple_query("ROLLBACK").await.map_err(server)?;
        if let Err(e) = tried {
            let m = spec.message(&e);
            return Err(if e.as_db_error().is_some() {
                KindError::Invalid(format!(
                    "{flag} (or --revoke-sql) fails in PostgreSQL: {m}; fix the statement (it was tried in a transaction that was rolled back)"
                ))
            } else {
                KindError::Unavailable(format!("PostgreSQL stopped answering: {m}"))
            });
        }
    }
    Ok(out)
}

#[async_trait::async_trait]
impl CredentialKind for Postgres {
    fn name(&self) -> &'static str {
        POSTGRES_KIND
    }

    fn validate(&self, def: &v1::Credential) -> Result<(), KindError> {
        check_definition(def)
    }

    async fn mint(&self, env: Env<'_>, req: MintRequest<'_>) -> Result<Minted, KindError> {
        let c = req.credential;
        let def = c.postgres.as_ref().ok_or_else(|| {
            KindError::Unavailable(format!(
                "credential {} has no postgres definition; add it again with leashctl credential add",
                c.name
            ))
        })?;
        let grant = def.grants.get(req.action).ok_or_else(|| {
            KindError::Invalid(format!(
                "credential {} has no --grant for action {}; its actions are {}",
                c.name,
                req.action,
                def.grants.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let role = sql::role_name(
            &def.role_template,
            RoleFields {
                workload: &req.workload.name,
                lease: req.lease_id,
                credential: &c.name,
                action: req.action,
            },
        )
        .map_err(invalid)?;
        let expires_at = req.now + i64::from(req.ttl);
        let password = zeroize::Zeroizing::new(sql::new_password().map_err(invalid)?);
        let verifier = sql::scram_verifier(&password).map_err(invalid)?;
        let exp = sql::timestamp(expires_at);
        let marker = sql::marker(req.lease_id, &c.name, req.now);
        let flag = format!("--grant {}", req.action);
        let text = sql::create_role(sql::NewRole {
            values: Values {
                name: &role,
                password: &password,
                expiration: &exp,
            },
            verifier: &verifier,
            connection_limit: def.connection_limit,
            marker: &marker,
            grant,
            grant_flag: &flag,
        })
        .map_err(invalid)?;
        let pool = self.pool(env, c)?;
        // A pooled connection may have died with a server restart; a query that fails
        // on one before reaching the server is tried once more on a new connection.
        // Concurrent grants on one object collide in PostgreSQL's catalog ("tuple
        // concurrently updated"): the transaction rolled back and is simply run again.
        let (mut closed, mut collided) = (0, 0);
        loop {
            let client = pool.get().await.map_err(unavailable)?;
            match client.simple_query(&text).await {
                Ok(_) => {
                    pool.put(client);
                    break;
                }
                Err(e) if retryable(&e) && collided < MAX_COLLISIONS => {
                    pool.put(client);
                    collided += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(2 << collided)).await;
                }
                Err(e) if e.as_db_error().is_some() => {
                    // The implicit transaction rolled back: no role is left, and the
                    // connection is clean.
                    let m = pool.spec().message(&e);
                    pool.put(client);
                    return Err(if capacity(&e) || retryable(&e) {
                        KindError::Unavailable(format!(
                            "PostgreSQL could not create the role for action {} of {} now: {m}; no role was left behind; try again (a grant of a group role, GRANT app_read TO {{{{name}}}}, scales where a grant on a table does not; see docs/DATABASES.md)",
                            req.action, c.name
                        ))
                    } else {
                        KindError::Invalid(format!(
                            "PostgreSQL refused to create the role for action {} of {}: {m}; no role was left behind; fix the credential's --grant {} (leashctl credential add)",
                            req.action, c.name, req.action
                        ))
                    });
                }
                Err(e) if client.is_closed() && closed < 1 => {
                    closed += 1;
                    tracing::debug!(error = %pool.spec().message(&e), "a pooled PostgreSQL connection was closed; trying a new one");
                }
                Err(e) => {
                    return Err(KindError::Unavailable(format!(
                        "PostgreSQL at {}:{} failed while creating the role: {}",
                        def.host,
                        def.port,
                        pool.spec().message(&e)
                    )))
                }
            }
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, password.as_bytes());
        Ok(Minted {
            material: Material::Token(material(def, &role, &password)),
            expires_at,
            fingerprint: hex::encode(&digest.as_ref()[..8]),
            version: 0,
            format: "json".into(),
            events: vec![KindEvent {
                kind: "role-created",
                detail: json!({"role": role, "database": def.dbname, "grant": req.action}),
            }],
        })
    }

    fn ends_outside(&self) -> bool {
        true
    }

    async fn end(&self, env: Env<'_>, lease: &Lease) -> Result<Vec<KindEvent>, KindError> {
        let c = env
            .store
            .credential(&lease.credential)
            .map_err(|e| KindError::Unavailable(e.to_string()))?;
        let Some((c, def)) = c.and_then(|c| c.postgres.clone().map(|d| (c, d))) else {
            return Ok(Vec::new());
        };
        let Ok(role) = sql::role_name(
            &def.role_template,
            RoleFields {
                workload: &lease.workload,
                lease: &lease.id,
                credential: &c.name,
                action: &lease.action,
            },
        ) else {
            // No role can have been made for a name that cannot be formed.
            return Ok(Vec::new());
        };
        let pool = self.pool(env, &c)?;
        let cut = self
            .drop_marked(&pool, &def, &role, Some(&lease.id), lease.expires_at)
            .await?;
        Ok(cut
            .map(|n| KindEvent {
                kind: "role-dropped",
                detail: json!({"role": role, "sessions_terminated": n}),
            })
            .into_iter()
            .collect())
    }

    fn end_failed_event(&self) -> &'static str {
        "drop-failed"
    }

    fn end_step(&self) -> &'static str {
        "drop"
    }

    async fn reconcile(&self, env: Env<'_>, c: &Credential) -> Result<Reconciled, KindError> {
        let Some(def) = c.postgres.as_ref() else {
            return Ok(Vec::new());
        };
        let pool = self.pool(env, c)?;
        let client = pool.get().await.map_err(unavailable)?;
        let listed = client.simple_query(&sql::marked_roles()).await;
        let listed = match listed {
            Ok(l) => {
                pool.put(client);
                rows(l)
            }
            Err(e) => {
                return Err(KindError::Unavailable(format!(
                    "cannot list the roles of {}: {}",
                    c.name,
                    pool.spec().message(&e)
                )))
            }
        };
        let now = self.clock.now();
        let mut out = Vec::new();
        for row in listed {
            let (Some(Some(role)), Some(Some(comment))) = (row.first(), row.get(1)) else {
                continue;
            };
            let Some(m) = sql::parse_marker(comment) else {
                continue;
            };
            if m.credential != c.name {
                continue;
            }
            let keep = match env
                .store
                .lease(&m.lease)
                .map_err(|e| KindError::Unavailable(e.to_string()))?
            {
                Some(l) => l.state == LeaseState::Active,
                None => m.created > now - RECONCILE_GRACE_SECS,
            };
            if keep {
                continue;
            }
            if let Some(n) = self.drop_marked(&pool, def, role, None, now).await? {
                tracing::info!(role = %role, lease = %m.lease, credential = %c.name,
                    "dropped a leash-managed role whose lease is not active");
                out.push((
                    m.lease.clone(),
                    KindEvent {
                        kind: "role-dropped",
                        detail: json!({"role": role, "sessions_terminated": n, "reconciled": true}),
                    },
                ));
            }
        }
        Ok(out)
    }
}
