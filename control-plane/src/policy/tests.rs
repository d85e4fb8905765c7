//! Unit tests of the policy engine: default deny, `--allow` links, forbid, approval,
//! positioned errors, civil time and the diff.

use std::collections::BTreeMap;

use super::decide::civil;
use super::problems::position;
use super::*;
use crate::model::{Credential, Host, Workload};
use leash_proto::workload_kind::WorkloadKind;

#[test]
fn a_position_inside_a_character_does_not_panic() {
    assert_eq!(position("é", 1), (1, 1));
    assert_eq!(position("a\nxé", 4), (2, 2));
    assert_eq!(position("abc", 99), (1, 4));
}

fn actions() -> Vec<String> {
    ["read", "write", "deploy", "admin"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn w(allow: &[&str]) -> Workload {
    Workload {
        name: "ci/deploy".into(),
        owner: "team-web".into(),
        kind: WorkloadKind::Job,
        selectors: vec!["unix:uid:1".into()],
        hosts: BTreeMap::new(),
        allow: allow.iter().map(|s| s.to_string()).collect(),
        expires_at: 0,
        disabled: false,
        created_at: 0,
        x509_svid_ttl: 0,
    }
}

fn c() -> Credential {
    Credential {
        name: "deploy-api".into(),
        kind: "jwt".into(),
        audiences: vec!["a".into()],
        default_ttl: 300,
        max_ttl: 3600,
        default_action: "read".into(),
        scopes: BTreeMap::new(),
        created_at: 0,
        ..Default::default()
    }
}

fn host(role: &str) -> Host {
    Host {
        name: "runner-1".into(),
        labels: [("role".to_string(), role.to_string())].into(),
        enrolled_at: 0,
        last_seen: 0,
        evicted: false,
        cert_serial: "01".into(),
        cert_not_after: 0,
    }
}

fn facts(ttl: i64, now: i64) -> Facts {
    Facts {
        uid: 1,
        ttl_seconds: ttl,
        now,
        ..Default::default()
    }
}

#[test]
fn default_deny_and_allow_links() {
    let e = Engine::new(&actions()).expect("engine");
    let v = e
        .decide(&w(&[]), &c(), "read", &host("ci"), &facts(60, 0))
        .expect("decide");
    assert!(!v.allow);
    e.relink(&[w(&["deploy-api"])]).expect("relink");
    let v = e
        .decide(
            &w(&["deploy-api"]),
            &c(),
            "read",
            &host("ci"),
            &facts(60, 0),
        )
        .expect("decide");
    assert!(v.allow && !v.approval_required, "{v:?}");
    assert_eq!(v.reasons[0], "allow:ci/deploy:deploy-api");
}

#[test]
fn forbid_wins_ttl_cap_host_label_and_time() {
    let e = Engine::new(&actions()).expect("engine");
    let text = r#"
permit(principal, action == Leash::Action::"deploy", resource)
when { context.ttl_seconds <= 600 && context.host.hasTag("role") && context.host.getTag("role") == "ci" };
forbid(principal, action, resource) when { context.hour < 6 };
"#;
    e.install(1, text, &[]).expect("valid");
    let mid_day = 1_795_867_200; // 2026-11-28T12:00:00Z
    let ok = e
        .decide(&w(&[]), &c(), "deploy", &host("ci"), &facts(300, mid_day))
        .expect("decide");
    assert!(ok.allow, "{ok:?}");
    let long = e
        .decide(&w(&[]), &c(), "deploy", &host("ci"), &facts(601, mid_day))
        .expect("decide");
    assert!(!long.allow);
    let wrong_host = e
        .decide(&w(&[]), &c(), "deploy", &host("dev"), &facts(300, mid_day))
        .expect("decide");
    assert!(!wrong_host.allow);
    let night = e
        .decide(
            &w(&[]),
            &c(),
            "deploy",
            &host("ci"),
            &facts(300, mid_day - 9 * 3600),
        )
        .expect("decide");
    assert!(!night.allow, "forbid wins at 03:00");
    let read = e
        .decide(&w(&[]), &c(), "read", &host("ci"), &facts(300, mid_day))
        .expect("decide");
    assert!(!read.allow, "only deploy is permitted");
}

#[test]
fn approval_annotation() {
    let e = Engine::new(&actions()).expect("engine");
    let text = r#"
@approval("required")
permit(principal, action == Leash::Action::"admin", resource);
"#;
    e.install(1, text, &[w(&["deploy-api"])]).expect("valid");
    let v = e
        .decide(
            &w(&["deploy-api"]),
            &c(),
            "admin",
            &host("ci"),
            &facts(60, 0),
        )
        .expect("decide");
    assert!(
        v.allow && !v.approval_required,
        "an unannotated permit (the allow link) also matched"
    );
    let mut other = w(&[]);
    other.name = "ci/other".into();
    let v = e
        .decide(&other, &c(), "admin", &host("ci"), &facts(60, 0))
        .expect("decide");
    assert!(v.allow && v.approval_required, "{v:?}");
}

#[test]
fn errors_carry_positions() {
    let e = Engine::new(&actions()).expect("engine");
    let Err(PolicyError::Invalid(p)) =
        e.check("permit(principal, action, resource)\nwhen { context.nope > 1 };")
    else {
        panic!("expected a validation error");
    };
    assert_eq!(p[0].line, 2, "{p:?}");
    let Err(PolicyError::Invalid(p)) = e.check("permit(principal,\n  action resource);") else {
        panic!("expected a parse error");
    };
    assert_eq!(p[0].line, 2, "{p:?}");
    assert!(p[0].col > 0);
}

#[test]
fn civil_time() {
    assert_eq!(civil(0), (0, 4, "1970-01-01T00:00:00Z".into()));
    assert_eq!(civil(1_795_867_200).0, 12);
    assert_eq!(civil(1_795_867_200).1, 6, "2026-11-28 is a Saturday");
}

#[test]
fn diff_marks_changes() {
    let d = diff("a\nb\nc\n", "a\nc\nd\n");
    assert_eq!(d, "  a\n- b\n  c\n+ d\n");
}
