//! The JSON documents of `get`, `whoami` and `status`: what `leash … --output json`
//! prints and what the HTTP API (`http.rs`) answers, built in one place so the two
//! never drift apart.
//!
//! A JWT's document carries the credential as `token`; a brokered secret's as `value`,
//! with its `version` and `format`. [`field`] picks one field of a `json`-format secret;
//! its errors name the credential and the field, never the value.

use leash_proto::cli::time;
use leash_proto::names;
use leash_proto::v1;
use serde_json::{json, Value};

/// The kind of a brokered secret (`FetchResponse::kind`).
pub const SECRET: &str = "secret";

/// Why a field of a secret could not be picked. The messages never hold the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FieldError {
    /// Only `json`-format secrets have fields.
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
}

fn is_secret(r: &v1::FetchResponse) -> bool {
    r.kind == SECRET
}

/// The document of a fetched credential (`leash get --output json`).
pub fn fetched(r: &v1::FetchResponse) -> Value {
    let kind = if r.kind.is_empty() { "jwt" } else { &r.kind };
    if is_secret(r) {
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
    }
}

/// Field `name` of the `json`-format secret `r`, fetched as `credential` (the field's
/// value itself: a string as a JSON string, anything else as it is).
pub fn field(r: &v1::FetchResponse, credential: &str, name: &str) -> Result<Value, FieldError> {
    let credential = names::excerpt(credential).to_string();
    let quoted_field = names::excerpt(name).to_string();
    if !is_secret(r) || r.format != "json" {
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
            credential,
            what,
            field: quoted_field,
        });
    }
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(&r.token) else {
        return Err(FieldError::NotAnObject { credential });
    };
    let mut known: Vec<String> = fields
        .keys()
        .map(|k| names::excerpt(k).to_string())
        .collect();
    known.sort();
    fields.remove(name).ok_or(FieldError::Missing {
        credential,
        field: quoted_field,
        fields: if known.is_empty() {
            "(none)".into()
        } else {
            known.join(", ")
        },
    })
}

/// The document of a fetched secret with only field `name` of its value (the HTTP API's
/// `field=`): `value` is the field, and `field` says which.
pub fn fetched_field(
    r: &v1::FetchResponse,
    credential: &str,
    name: &str,
) -> Result<Value, FieldError> {
    let v = field(r, credential, name)?;
    let mut doc = fetched(r);
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
        let d = fetched(&jwt());
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
        assert_eq!(fetched(&old)["kind"], "jwt");
    }

    #[test]
    fn a_secret_document_carries_the_value_version_and_format() {
        let d = fetched(&secret("text", "sk_live_1\n"));
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
