//! What a fetched credential gives the commands that use it (`get`, `exec`, `render`):
//! its kind, the text to hand on (a JWT, a secret's value, or one `#field` of a JSON
//! secret), and the request a `leash://` reference stands for.
//!
//! Errors name the credential and the field, never the value.

use leash_proto::reference::Reference;
use leash_proto::v1;

/// The kind of a fetched credential; an older control plane sends none, meaning `jwt`.
pub(crate) fn kind(r: &v1::FetchResponse) -> &str {
    if r.kind.is_empty() {
        "jwt"
    } else {
        &r.kind
    }
}

/// Whether the credential is a brokered secret (printed exactly, no newline added).
pub(crate) fn is_secret(r: &v1::FetchResponse) -> bool {
    kind(r) == "secret"
}

/// Field `field` of the JSON-format secret `name`: a string as it is, anything else as
/// compact JSON. Refused (naming the field, never the value) for anything that is not a
/// JSON secret, and for a field it does not have.
pub(crate) fn field(r: &v1::FetchResponse, name: &str, field: &str) -> Result<String, String> {
    Ok(match field_value(r, name, field)? {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

/// [`field`] as a JSON value (for `--output json`); the agent's HTTP API takes fields
/// the same way (`leash_agentd::documents::field`).
pub(crate) fn field_value(
    r: &v1::FetchResponse,
    name: &str,
    field: &str,
) -> Result<serde_json::Value, String> {
    leash_agentd::documents::field(r, name, field).map_err(|e| e.to_string())
}

/// The text a reference stands for: the whole credential, or one field.
pub(crate) fn text(r: &v1::FetchResponse, reference: &Reference) -> Result<String, String> {
    match &reference.field {
        Some(f) => field(r, &reference.name, f),
        None => Ok(r.token.clone()),
    }
}

/// The Fetch a reference asks for, within task `task_handle` (empty: none).
pub(crate) fn request(reference: &Reference, task_handle: &str) -> v1::FetchRequest {
    v1::FetchRequest {
        credential: reference.name.clone(),
        action: reference.action.clone(),
        audience: reference.audience.clone(),
        ttl_seconds: reference.ttl_seconds,
        as_workload: reference.as_workload.clone(),
        task_handle: task_handle.to_string(),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn secret(value: &str, format: &str) -> v1::FetchResponse {
        v1::FetchResponse {
            token: value.into(),
            kind: "secret".into(),
            version: 3,
            format: format.into(),
            lease_id: "l-1".into(),
            expires_at_unix: 1_795_887_998,
            workload: "ci/job".into(),
            action: "read".into(),
            ..Default::default()
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(kind(&v1::FetchResponse::default()), "jwt");
        assert!(is_secret(&secret("v", "text")));
        assert!(!is_secret(&v1::FetchResponse::default()));
    }

    #[test]
    fn fields_of_a_json_secret() {
        let r = secret(
            r#"{"user":"svc","password":"hunter2-xyz","port":5432,"opts":{"tls":true}}"#,
            "json",
        );
        assert_eq!(field(&r, "db", "password").unwrap(), "hunter2-xyz");
        assert_eq!(field(&r, "db", "port").unwrap(), "5432");
        assert_eq!(field(&r, "db", "opts").unwrap(), r#"{"tls":true}"#);
        let e = field(&r, "db", "pass").unwrap_err();
        assert!(e.contains("no field \"pass\""), "{e}");
        assert!(
            e.contains("\"opts\", \"password\", \"port\", \"user\""),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "the error shows the value: {e}");
    }

    #[test]
    fn fields_only_of_json_secrets_and_never_the_value() {
        let e = field(&secret("sk_live_123456", "text"), "stripe", "x").unwrap_err();
        assert!(e.contains("a text-format secret"), "{e}");
        assert!(!e.contains("sk_live"), "{e}");
        let e = field(&secret("sk_live_123456", ""), "stripe", "x").unwrap_err();
        assert!(e.contains("text-format"), "{e}");
        let jwt = v1::FetchResponse {
            token: "eyJhbGciOi.x.y".into(),
            ..Default::default()
        };
        let e = field(&jwt, "api", "sub").unwrap_err();
        assert!(e.contains("is a jwt"), "{e}");
        let e = field(&secret("not json sk_live_1", "json"), "s", "x").unwrap_err();
        assert!(
            e.contains("not a JSON object") && !e.contains("sk_live"),
            "{e}"
        );
    }

    #[test]
    fn references_become_requests() {
        let r =
            leash_proto::reference::parse("leash://api?action=deploy&ttl=2m&as=ci/job#f").unwrap();
        let req = request(&r, "t-1.x");
        assert_eq!(req.credential, "api");
        assert_eq!(req.action, "deploy");
        assert_eq!(req.ttl_seconds, 120);
        assert_eq!(req.as_workload, "ci/job");
        assert_eq!(req.task_handle, "t-1.x");
        assert!(!req.fresh);
    }
}
