//! Unit tests of the HTTP API's parsing and error documents (the end-to-end cases are in
//! tests/integration/agent_http.rs).

use super::*;

fn bad(r: Result<impl std::fmt::Debug, Failure>) -> Failure {
    r.expect_err("refused")
}

#[test]
fn paths_name_the_endpoints() {
    assert_eq!(endpoint("/v1/whoami").expect("ok"), Endpoint::WhoAmI);
    assert_eq!(endpoint("/v1/status").expect("ok"), Endpoint::Status);
    assert_eq!(
        endpoint("/v1/credentials/api").expect("ok"),
        Endpoint::Credential("api".into())
    );
    // A name with a slash, as is or percent-encoded.
    for p in [
        "/v1/credentials/team-web/stripe-key",
        "/v1/credentials/team-web%2Fstripe-key",
    ] {
        assert_eq!(
            endpoint(p).expect("ok"),
            Endpoint::Credential("team-web/stripe-key".into())
        );
    }
    let f = bad(endpoint("/v1/credentials/"));
    assert_eq!(
        (f.status, f.reason),
        (StatusCode::BAD_REQUEST, Reason::Invalid)
    );
    let f = bad(endpoint("/v1/credentials/%ff"));
    assert_eq!(f.status, StatusCode::BAD_REQUEST);
    assert!(f.message.contains("UTF-8"), "{}", f.message);
    let long = format!("/{}", "x".repeat(5000));
    for p in ["/", "/v1", "/v1/whoami/", "/v2/status", long.as_str()] {
        let f = bad(endpoint(p));
        assert_eq!(
            (f.status, f.reason),
            (StatusCode::NOT_FOUND, Reason::NotFound)
        );
        assert!(
            f.message.contains("GET /v1/credentials/NAME"),
            "{}",
            f.message
        );
        assert!(!f.message.contains("xxxxx"), "the path is not echoed");
    }
}

#[test]
fn the_query_takes_the_options_of_leash_get() {
    let q = CredentialQuery::parse(
        "action=deploy&audience=https%3A%2F%2Fapi.example&ttl=2m&as=ci%2Fjob&field=token&fresh",
    )
    .expect("ok");
    assert_eq!(
        q,
        CredentialQuery {
            action: "deploy".into(),
            audience: "https://api.example".into(),
            ttl_seconds: 120,
            as_workload: "ci/job".into(),
            field: Some("token".into()),
            fresh: true,
        }
    );
    assert_eq!(
        CredentialQuery::parse("").expect("ok"),
        CredentialQuery::default()
    );
    assert!(!CredentialQuery::parse("fresh=false").expect("ok").fresh);
    assert!(CredentialQuery::parse("fresh=1").expect("ok").fresh);
    // `+` is a space in a query (as form encoding writes it).
    assert_eq!(
        CredentialQuery::parse("audience=a+b").expect("ok").audience,
        "a b"
    );
    let r = CredentialQuery::parse("ttl=90")
        .expect("ok")
        .request("api".into());
    assert_eq!((r.credential.as_str(), r.ttl_seconds), ("api", 90));
    assert!(r.task_handle.is_empty() && r.on_behalf_of.is_empty());
}

#[test]
fn bad_queries_are_refused_without_echoing_them_whole() {
    let long = "y".repeat(10_000);
    for (q, says) in [
        (
            "colour=blue".to_string(),
            "unknown query parameter \"colour\"",
        ),
        ("action=a&action=b".to_string(), "given twice"),
        ("ttl=soon".to_string(), "not a duration"),
        ("fresh=maybe".to_string(), "fresh=true"),
        ("field=".to_string(), "names no field"),
        ("action=%c3%28".to_string(), "not UTF-8"),
        (format!("{long}=1"), "unknown query parameter"),
        (format!("ttl={long}"), "not a duration"),
    ] {
        let f = bad(CredentialQuery::parse(&q));
        assert_eq!(
            (f.status, f.reason),
            (StatusCode::BAD_REQUEST, Reason::Invalid),
            "{q}"
        );
        assert!(f.message.contains(says), "{q}: {}", f.message);
        assert!(f.message.len() < 400, "{q}: {} bytes", f.message.len());
    }
    assert!(no_query("").is_ok());
    assert_eq!(bad(no_query("x=1")).status, StatusCode::BAD_REQUEST);
}

#[test]
fn errors_carry_the_reason_its_exit_code_and_its_http_status() {
    for (r, s, code) in [
        (Reason::Invalid, 400, 1),
        (Reason::Denied, 403, 2),
        (Reason::Pending, 409, 3),
        (Reason::NotFound, 404, 4),
        (Reason::Unavailable, 503, 5),
        (Reason::Timeout, 504, 6),
    ] {
        let f = Failure::from(CallError::new(r, "why"));
        assert_eq!(f.status.as_u16(), s);
        let d = f.document();
        assert_eq!(d["error"]["reason"], r.as_str());
        assert_eq!(d["error"]["exit_code"], code);
        assert_eq!(d["error"]["message"], "why");
        assert!(d["error"].get("approval_id").is_none());
    }
    // Over the request allowance: 429, with the reason gRPC callers get (bad input).
    let f = Failure::from(CallError::TooManyRequests(1000));
    assert_eq!(f.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(f.document()["error"]["reason"], "INVALID");
    assert!(f.message.contains("too many requests"));
    // A pending approval names the approval.
    let mut s = Reason::Pending.status("approval ap-1 is pending");
    s.metadata_mut().insert(
        leash_proto::reason::APPROVAL_KEY,
        "ap-1".parse().expect("metadata"),
    );
    let f = Failure::from(CallError::ControlPlane(s));
    assert_eq!(f.status, StatusCode::CONFLICT);
    assert_eq!(f.document()["error"]["approval_id"], "ap-1");
    assert_eq!(f.document()["error"]["reason"], "PENDING");
}

#[test]
fn a_field_error_is_bad_input() {
    let f = Failure::from(FieldError::Missing {
        credential: "\"db\"".into(),
        field: "\"password\"".into(),
        fields: "\"user\"".into(),
    });
    assert_eq!(
        (f.status, f.reason),
        (StatusCode::BAD_REQUEST, Reason::Invalid)
    );
}

#[test]
fn any_request_body_counts_as_a_body() {
    let req = || {
        Request::builder()
            .uri("/v1/status")
            .body(())
            .expect("request")
    };
    assert!(!has_body(&req()));
    for (k, v) in [
        (header::CONTENT_LENGTH, "5"),
        (header::TRANSFER_ENCODING, "chunked"),
    ] {
        let mut r = req();
        r.headers_mut().insert(k, HeaderValue::from_static(v));
        assert!(has_body(&r), "{v}");
    }
    let mut zero = req();
    zero.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    assert!(!has_body(&zero));
}
