//! The JSON documents of `get`, `whoami` and `status`: what `leash … --output json`
//! prints and what the HTTP API (`http.rs`) answers, built in one place so the two
//! never drift apart.
//!
//! A JWT's document carries the credential as `token`; a brokered secret's as `value`,
//! with its `version` and `format`; a postgres credential's (a login role made for the
//! lease) as its fields `user`, `password`, `host`, `port`, `dbname` and `url` at the top
//! level. [`field`] picks one field of a `json`-format secret or of a postgres
//! credential, [`text`] gives what a credential stands for as text (a postgres
//! credential's `url`); their errors name the credential and the field, never the value.

use leash_proto::cli::time;
use leash_proto::names;
use leash_proto::v1;
use serde_json::{json, Map, Value};

/// The kind of a brokered secret (`FetchResponse::kind`).
pub const SECRET: &str = "secret";

/// The kind of a PostgreSQL login role made for the lease (`FetchResponse::kind`). Its
/// material (the token) is the JSON object of [`POSTGRES_FIELDS`].
pub const POSTGRES: &str = "postgres";

/// The fields of a postgres credential, in the order its documents list them.
pub const POSTGRES_FIELDS: [&str; 6] = ["user", "password", "host", "port", "dbname", "url"];

/// Why a field of a secret could not be picked. The messages never hold the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldError {
    /// Only `json`-format secrets and postgres credentials have fields.
    #[error("credential {credential} is {what}, not a json-format secret: it has no field {field}; drop the field")]
    NotJson {
        /// The credential (quoted).
        credential: String,
        /// What it is instead (`a jwt`, `a text-format secret`).
        what: String,
        /// The field asked for (quoted).
        field: String,
    },
    /// The secret has no such field.
    #[error("credential {credential} has no field {field}; its fields are: {fields}")]
    Missing {
        /// The credential (quoted).
        credential: String,
        /// The field asked for (quoted).
        field: String,
        /// The fields it has (quoted, sorted; names only, never values).
        fields: String,
    },
    /// A json-format secret whose value is not a JSON object (stored before the check,
    /// or changed by hand).
    #[error("credential {credential} is a json-format secret whose value is not a JSON object; ask its owner to put it again")]
    NotAnObject {
        /// The credential (quoted).
        credential: String,
    },
    /// A postgres credential whose material is not the JSON object the control plane
    /// makes (a control plane of another version, or a bug there).
    #[error("credential {credential} is a postgres credential whose material is not a JSON object with the string fields url and password; the control plane sent something this leash does not understand: check that the agent and the control plane are of the same version")]
    Malformed {
        /// The credential (quoted).
        credential: String,
    },
}

fn is_secret(r: &v1::FetchResponse) -> bool {
    r.kind == SECRET
}

fn is_postgres(r: &v1::FetchResponse) -> bool {
    r.kind == POSTGRES
}

/// The fields of postgres credential `r`, fetched as `credential`: its material parsed,
/// with `url` and `password` checked to be strings (what every use of it relies on).
pub fn postgres(r: &v1::FetchResponse, credential: &str) -> Result<Map<String, Value>, FieldError> {
    match serde_json::from_str::<Value>(&r.token) {
        Ok(Value::Object(fields))
            if fields.get("url").is_some_and(Value::is_string)
                && fields.get("password").is_some_and(Value::is_string) =>
        {
            Ok(fields)
        }
        _ => Err(FieldError::Malformed {
            credential: names::excerpt(credential).to_string(),
        }),
    }
}

/// The lease fields every document of a fetched credential carries.
fn lease_fields(r: &v1::FetchResponse, kind: &str) -> Map<String, Value> {
    let Value::Object(m) = json!({
        "kind": kind,
        "lease_id": r.lease_id,
        "expires_at": time(r.expires_at_unix),
        "expires_at_unix": r.expires_at_unix,
        "workload": r.workload,
        "action": r.action,
        "cached": r.cached,
    }) else {
        unreachable!("a JSON object literal")
    };
    m
}

/// The document of credential `r`, fetched as `credential` (`leash get --output json`).
/// Fails only for a postgres credential whose material is malformed.
pub fn fetched(r: &v1::FetchResponse, credential: &str) -> Result<Value, FieldError> {
    let kind = if r.kind.is_empty() { "jwt" } else { &r.kind };
    if is_postgres(r) {
        let mut fields = postgres(r, credential)?;
        let mut doc = Map::new();
        for name in POSTGRES_FIELDS {
            if let Some(v) = fields.remove(name) {
                doc.insert(name.to_string(), v);
            }
        }
        doc.extend(lease_fields(r, kind));
        return Ok(Value::Object(doc));
    }
    Ok(if is_secret(r) {
        json!({
            "value": r.token,
            "version": r.version,
            "format": if r.format.is_empty() { "text" } else { &r.format },
            "kind": kind,
            "lease_id": r.lease_id,
            "expires_at": time(r.expires_at_unix),
            "expires_at_unix": r.expires_at_unix,
            "workload": r.workload,
            "action": r.action,
            "cached": r.cached,
        })
    } else {
        json!({
            "token": r.token,
            "kind": kind,
            "expires_at": time(r.expires_at_unix),
            "expires_at_unix": r.expires_at_unix,
            "lease_id": r.lease_id,
            "workload": r.workload,
            "action": r.action,
            "audience": r.audience,
            "cached": r.cached,
        })
    })
}

/// What credential `r` stands for as text when no field is named (`leash get` without
/// `--field`, `leash exec --env`, a `leash://` reference): a JWT or a secret's value as
/// it is, a postgres credential's connection `url`.
pub fn text(r: &v1::FetchResponse, credential: &str) -> Result<String, FieldError> {
    if !is_postgres(r) {
        return Ok(r.token.clone());
    }
    match postgres(r, credential)?.remove("url") {
        Some(Value::String(url)) => Ok(url),
        _ => unreachable!("postgres() checked that url is a string"),
    }
}

/// The parts of postgres credential `r` that are secret, `(field, text)`: the `url` and
/// the `password` (the other fields name the role and the server). Empty for any other
/// kind, or when the material is malformed.
pub fn postgres_secrets(r: &v1::FetchResponse) -> Vec<(&'static str, String)> {
    if !is_postgres(r) {
        return Vec::new();
    }
    let Ok(mut fields) = postgres(r, "") else {
        return Vec::new();
    };
    ["url", "password"]
        .into_iter()
        .filter_map(|name| match fields.remove(name) {
            Some(Value::String(s)) => Some((name, s)),
            _ => None,
        })
        .collect()
}

/// Field `name` of the `json`-format secret or postgres credential `r`, fetched as
/// `credential` (the field's value itself: a string as a JSON string, anything else as it
/// is, e.g. a postgres `port` as a number).
pub fn field(r: &v1::FetchResponse, credential: &str, name: &str) -> Result<Value, FieldError> {
    let quoted_field = names::excerpt(name).to_string();
    let mut fields = if is_postgres(r) {
        postgres(r, credential)?
    } else if !is_secret(r) || r.format != "json" {
        // Kind and format come from the control plane, not the caller.
        let what = if is_secret(r) {
            let format = if r.format.is_empty() {
                "text"
            } else {
                &r.format
            };
            format!("a {format}-format secret")
        } else {
            format!("a {}", if r.kind.is_empty() { "jwt" } else { &r.kind })
        };
        return Err(FieldError::NotJson {
            credential: names::excerpt(credential).to_string(),
            what,
            field: quoted_field,
        });
    } else {
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(&r.token) else {
            return Err(FieldError::NotAnObject {
                credential: names::excerpt(credential).to_string(),
            });
        };
        fields
    };
    let mut known: Vec<String> = fields
        .keys()
        .map(|k| names::excerpt(k).to_string())
        .collect();
    known.sort();
    fields.remove(name).ok_or(FieldError::Missing {
        credential: names::excerpt(credential).to_string(),
        field: quoted_field,
        fields: if known.is_empty() {
            "(none)".into()
        } else {
            known.join(", ")
        },
    })
}

/// The document of a fetched credential with only field `name` of it (the HTTP API's
/// `field=`, `leash get --field F --output json`): `value` is the field, and `field`
/// says which. A postgres credential's document then holds that one field as `value`
/// and none of the others (nor the password, unless it was asked for).
pub fn fetched_field(
    r: &v1::FetchResponse,
    credential: &str,
    name: &str,
) -> Result<Value, FieldError> {
    let v = field(r, credential, name)?;
    let mut doc = if is_postgres(r) {
        let kind = r.kind.as_str();
        Value::Object(lease_fields(r, kind))
    } else {
        fetched(r, credential)?
    };
    doc["value"] = v;
    doc["field"] = Value::String(name.to_string());
    Ok(doc)
}

/// The document of `leash whoami`.
pub fn whoami(r: &v1::WhoAmIResponse) -> Value {
    let a = r.attested.clone().unwrap_or_default();
    json!({
        "pid": a.pid, "uid": a.uid, "gid": a.gid, "user": a.user,
        "exe_path": a.exe_path, "exe_sha256": a.exe_sha256,
        "selectors": a.selectors, "workloads": r.workloads, "host": r.host,
    })
}

/// The document of `leash status`; only the health fields when the agent could not
/// attest the caller.
pub fn status(r: &v1::StatusResponse) -> Value {
    if r.health_only {
        return json!({
            "health_only": true, "state": r.state,
            "synced": r.synced, "last_seq": r.last_seq,
            "last_heartbeat": time(r.last_heartbeat_unix_ms / 1000),
            "last_heartbeat_unix_ms": r.last_heartbeat_unix_ms,
        });
    }
    json!({
        "version": r.version, "host": r.host, "state": r.state,
        "synced": r.synced, "last_seq": r.last_seq,
        "last_heartbeat": time(r.last_heartbeat_unix_ms / 1000),
        "last_heartbeat_unix_ms": r.last_heartbeat_unix_ms,
        "cached_credentials": r.cached_credentials, "workloads": r.workloads,
        "control_plane": r.control_plane, "max_offline_secs": r.max_offline_secs,
        "reason": (!r.reason.is_empty()).then_some(&r.reason),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt() -> v1::FetchResponse {
        v1::FetchResponse {
            token: "eyJ.a.b".into(),
            expires_at_unix: 1_700_000_000,
            lease_id: "l-1".into(),
            workload: "ci/job".into(),
            cached: true,
            action: "read".into(),
            audience: "https://api.example".into(),
            kind: "jwt".into(),
            version: 0,
            format: String::new(),
        }
    }

    fn secret(format: &str, value: &str) -> v1::FetchResponse {
        v1::FetchResponse {
            token: value.into(),
            kind: SECRET.into(),
            version: 3,
            format: format.into(),
            audience: String::new(),
            ..jwt()
        }
    }

    #[test]
    fn a_jwt_document_carries_the_token_and_its_kind() {
        let d = fetched(&jwt(), "api").expect("jwt");
        assert_eq!(d["token"], "eyJ.a.b");
        assert_eq!(d["kind"], "jwt");
        assert_eq!(d["audience"], "https://api.example");
        assert_eq!(d["cached"], true);
        assert_eq!(d["expires_at"], "2023-11-14T22:13:20Z");
        assert!(d.get("value").is_none());
        // From a control plane that reports no kind: a JWT.
        let old = v1::FetchResponse {
            kind: String::new(),
            ..jwt()
        };
        assert_eq!(fetched(&old, "api").expect("jwt")["kind"], "jwt");
    }

    #[test]
    fn a_secret_document_carries_the_value_version_and_format() {
        let d = fetched(&secret("text", "sk_live_1\n"), "s").expect("secret");
        let keys: Vec<&str> = d
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = vec![
            "value",
            "version",
            "lease_id",
            "expires_at",
            "expires_at_unix",
            "workload",
            "action",
            "cached",
            "kind",
            "format",
        ];
        want.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(d["value"], "sk_live_1\n", "exactly, trailing newline kept");
        assert_eq!(
            (d["version"].as_u64(), d["kind"].as_str()),
            (Some(3), Some("secret"))
        );
        assert_eq!(d["format"], "text");
    }

    #[test]
    fn a_field_of_a_json_secret() {
        let s = secret("json", r#"{"user":"svc","password":"hunter2","port":5432}"#);
        assert_eq!(
            field(&s, "db", "password"),
            Ok(Value::String("hunter2".into()))
        );
        assert_eq!(field(&s, "db", "port"), Ok(json!(5432)));
        let d = fetched_field(&s, "db", "user").expect("field");
        assert_eq!(
            (d["value"].as_str(), d["field"].as_str()),
            (Some("svc"), Some("user"))
        );
        assert_eq!(d["version"], 3);

        let e = field(&s, "db", "host").expect_err("no such field");
        let m = e.to_string();
        assert!(m.contains("\"db\"") && m.contains("\"host\""), "{m}");
        assert!(!m.contains("hunter2"), "never the value: {m}");

        let e = field(&secret("text", "hunter2"), "db", "password").expect_err("text");
        let m = e.to_string();
        assert!(
            m.contains("text-format secret") && !m.contains("hunter2"),
            "{m}"
        );
        let e = field(&jwt(), "api", "sub").expect_err("jwt");
        assert!(e.to_string().contains("a jwt"), "{e}");
        let e = field(&secret("json", "[\"hunter2\"]"), "db", "x").expect_err("array");
        assert!(matches!(e, FieldError::NotAnObject { .. }) && !e.to_string().contains("hunter2"));
    }

    const PG_PASSWORD: &str = "Zm9vYmFyYmF6cXV4cXV1eHF1dXpxdXV6cXV1enF1dXo";

    fn pg_material() -> String {
        format!(
            r#"{{"user":"leash_ci_job_l1","password":"{PG_PASSWORD}","host":"db.internal","port":5432,"dbname":"app","url":"postgresql://leash_ci_job_l1:{PG_PASSWORD}@db.internal:5432/app?sslmode=require"}}"#
        )
    }

    fn pg(material: &str) -> v1::FetchResponse {
        v1::FetchResponse {
            token: material.into(),
            kind: POSTGRES.into(),
            format: "json".into(),
            audience: String::new(),
            action: "write".into(),
            cached: false,
            ..jwt()
        }
    }

    #[test]
    fn a_postgres_document_has_its_fields_at_the_top_level_and_no_token() {
        let d = fetched(&pg(&pg_material()), "app-db").expect("postgres");
        let mut keys: Vec<&str> = d
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        let mut want = vec![
            "kind",
            "user",
            "password",
            "host",
            "port",
            "dbname",
            "url",
            "lease_id",
            "expires_at",
            "expires_at_unix",
            "workload",
            "action",
            "cached",
        ];
        want.sort_unstable();
        assert_eq!(keys, want, "exactly the documented fields: {d}");
        assert_eq!(d["kind"], "postgres");
        assert_eq!(d["port"], 5432, "the port is a number");
        assert_eq!(d["password"], PG_PASSWORD);
        assert_eq!(d["user"], "leash_ci_job_l1");
        assert_eq!(d["action"], "write");
        assert!(d["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("postgresql://leash_ci_job_l1:")));
        assert_eq!(d["expires_at"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn a_postgres_credential_stands_for_its_url_and_has_fields() {
        let r = pg(&pg_material());
        let url = text(&r, "app-db").expect("url");
        assert_eq!(
            url,
            format!(
                "postgresql://leash_ci_job_l1:{PG_PASSWORD}@db.internal:5432/app?sslmode=require"
            )
        );
        // Other kinds stand for their token as it is.
        assert_eq!(text(&jwt(), "api").unwrap(), "eyJ.a.b");
        assert_eq!(text(&secret("text", "v\n"), "s").unwrap(), "v\n");
        for (name, want) in [
            ("user", json!("leash_ci_job_l1")),
            ("password", json!(PG_PASSWORD)),
            ("host", json!("db.internal")),
            ("port", json!(5432)),
            ("dbname", json!("app")),
            ("url", json!(url)),
        ] {
            assert_eq!(field(&r, "app-db", name), Ok(want), "{name}");
        }
        let e = field(&r, "app-db", "pass").expect_err("no such field");
        let m = e.to_string();
        assert!(
            m.contains(r#"no field "pass"; its fields are: "dbname", "host", "password", "port", "url", "user""#),
            "{m}"
        );
        assert!(!m.contains(PG_PASSWORD), "never the value: {m}");
    }

    #[test]
    fn a_postgres_field_document_holds_only_that_field() {
        let r = pg(&pg_material());
        let d = fetched_field(&r, "app-db", "user").expect("field");
        assert_eq!(
            (d["value"].as_str(), d["field"].as_str(), d["kind"].as_str()),
            (Some("leash_ci_job_l1"), Some("user"), Some("postgres"))
        );
        assert_eq!(d["lease_id"], "l-1");
        assert!(
            !d.to_string().contains(PG_PASSWORD),
            "asked for the user, got the password too: {d}"
        );
        let d = fetched_field(&r, "app-db", "port").expect("port");
        assert_eq!(d["value"], 5432);
    }

    #[test]
    fn malformed_postgres_material_is_refused_without_showing_it() {
        for bad in [
            "not json at all hunter2hunter2",
            r#"["hunter2hunter2"]"#,
            r#"{"password":"hunter2hunter2"}"#,
            r#"{"url":"postgresql://u:hunter2hunter2@h/db"}"#,
            r#"{"url":"postgresql://u:hunter2hunter2@h/db","password":5}"#,
        ] {
            let r = pg(bad);
            for e in [
                fetched(&r, "app-db").expect_err(bad),
                text(&r, "app-db").expect_err(bad),
                field(&r, "app-db", "user").expect_err(bad),
                fetched_field(&r, "app-db", "user").expect_err(bad),
            ] {
                assert!(matches!(e, FieldError::Malformed { .. }), "{bad}: {e:?}");
                let m = e.to_string();
                assert!(m.contains("\"app-db\" is a postgres credential"), "{m}");
                assert!(!m.contains("hunter2"), "never the value: {m}");
            }
            assert!(postgres_secrets(&r).is_empty());
        }
    }

    #[test]
    fn the_secret_parts_of_a_postgres_credential() {
        let r = pg(&pg_material());
        let s = postgres_secrets(&r);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0, "url");
        assert!(s[0].1.contains(PG_PASSWORD));
        assert_eq!(s[1], ("password", PG_PASSWORD.to_string()));
        assert!(postgres_secrets(&jwt()).is_empty());
        assert!(postgres_secrets(&secret("json", r#"{"password":"x"}"#)).is_empty());
    }

    #[test]
    fn whoami_and_status_documents() {
        let w = v1::WhoAmIResponse {
            attested: Some(v1::Attested {
                pid: 7,
                uid: 1000,
                selectors: vec!["unix:uid:1000".into()],
                ..Default::default()
            }),
            spiffe_ids: "spiffe://td/ci/job".into(),
            workloads: vec!["ci/job".into()],
            host: "host-1".into(),
        };
        let d = whoami(&w);
        assert_eq!(
            (d["uid"].as_u64(), d["host"].as_str()),
            (Some(1000), Some("host-1"))
        );
        assert_eq!(d["workloads"], json!(["ci/job"]));
        let s = v1::StatusResponse {
            state: "ready".into(),
            synced: true,
            health_only: true,
            host: "hidden".into(),
            ..Default::default()
        };
        let d = status(&s);
        assert_eq!(d["health_only"], true);
        assert!(d.get("host").is_none(), "health only: {d}");
        let d = status(&v1::StatusResponse {
            health_only: false,
            ..s
        });
        assert_eq!(d["host"], "hidden");
        assert!(d["reason"].is_null());
    }
}
