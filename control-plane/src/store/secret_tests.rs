//! Unit tests of the store's brokered secrets: versions, the shared namespace, rotation
//! revoking older versions' leases in the same write, revocations scheduled across a
//! reopen, removal, and the lease write refusing a disabled or rotated secret.

use std::sync::Arc;

use super::tests::reopen;
use super::*;
use crate::clock::Clock;
use crate::fixtures::{lease, token, workload};

fn secret(name: &str, version: u32) -> Credential {
    Credential {
        name: name.into(),
        kind: SECRET_KIND.into(),
        default_ttl: 300,
        max_ttl: 3600,
        default_action: "read".into(),
        owner: Some("team".into()),
        format: "text".into(),
        current_version: version,
        ..Default::default()
    }
}

fn version(v: u32) -> SecretVersion {
    SecretVersion {
        version: v,
        created_at: 0,
        created_by: "root".into(),
        size: 3,
        fingerprint: format!("fp{v}"),
        sealed: vec![v as u8; 40],
    }
}

fn write(name: &str, expected: u32, older: Older) -> SecretWrite {
    SecretWrite {
        def: secret(name, expected + 1),
        expected,
        version: version(expected + 1),
        older,
        event: Event::new("secret-put").credential(name),
    }
}

fn revoke_now() -> Older {
    Older::Revoke {
        reason: "rotated".into(),
        actor: "root".into(),
    }
}

/// A store with workload `w`, host `h`, and secret `s` at version 1.
async fn store(dir: &std::path::Path, clock: &Clock) -> Arc<SledStore> {
    let s = SledStore::open(dir, clock.clone()).expect("open");
    s.put_workload(workload("w"), Event::new("workload-added"))
        .await
        .expect("workload");
    s.put_join_token(token("t"), Event::new("x"))
        .await
        .expect("token");
    s.enroll(
        "t",
        "x",
        crate::fixtures::host("h", "01"),
        0,
        Event::new("enrolled"),
    )
    .await
    .expect("enroll");
    s.put_secret(write("s", 0, Older::Keep)).await.expect("put");
    s
}

/// Issue lease `id` of secret `s` holding `version`, expiring at `expires_at`.
async fn issue(s: &SledStore, id: &str, version: u32, expires_at: i64) -> Result<u64> {
    let l = Lease {
        credential: "s".into(),
        version,
        expires_at,
        ..lease(id, "w")
    };
    s.issue_lease(l, Event::new("issued").lease(id), Vec::new())
        .await
}

fn state(s: &SledStore, id: &str) -> LeaseState {
    s.lease(id).expect("read").expect("lease").state
}

#[tokio::test]
async fn every_put_adds_a_version_and_a_stale_write_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Clock::default();
    let s = store(dir.path(), &clock).await;
    s.put_secret(write("s", 1, Older::Keep)).await.expect("v2");
    let vs: Vec<u32> = s
        .secret_versions("s")
        .expect("versions")
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(vs, [1, 2]);
    assert_eq!(
        s.credential("s")
            .expect("read")
            .expect("def")
            .current_version,
        2
    );
    // A writer that saw version 1 current comes second: nothing is overwritten.
    let e = s
        .put_secret(write("s", 1, Older::Keep))
        .await
        .expect_err("stale");
    assert!(matches!(e, StoreError::Stale(_)), "{e}");
    assert_eq!(
        s.secret_version("s", 2)
            .expect("read")
            .expect("v2")
            .fingerprint,
        "fp2"
    );
    // A new secret whose name was taken meanwhile, by a secret or another kind.
    let e = s
        .put_secret(write("s", 0, Older::Keep))
        .await
        .expect_err("taken");
    assert!(matches!(e, StoreError::Stale(_)), "{e}");
    let jwt = Credential {
        name: "api".into(),
        kind: "jwt".into(),
        audiences: vec!["a".into()],
        ..Default::default()
    };
    s.put_credential(jwt.clone(), Event::new("credential-added"))
        .await
        .expect("jwt");
    let e = s
        .put_secret(write("api", 0, Older::Keep))
        .await
        .expect_err("clash");
    assert!(
        matches!(&e, StoreError::Conflict(m) if m.contains("kind jwt")),
        "{e}"
    );
    let e = s
        .put_credential(
            Credential {
                name: "s".into(),
                ..jwt
            },
            Event::new("credential-added"),
        )
        .await
        .expect_err("clash");
    assert!(
        matches!(&e, StoreError::Conflict(m) if m.contains("kind secret")),
        "{e}"
    );
    assert!(s.secret_versions("api").expect("versions").is_empty());
}

#[tokio::test]
async fn a_rotation_revokes_only_older_versions_leases_in_the_same_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Clock::default();
    let s = store(dir.path(), &clock).await;
    let far = clock.now() + 3600;
    issue(&s, "old", 1, far).await.expect("v1 lease");
    let before = s.current_seq();
    let w = s
        .put_secret(write("s", 1, revoke_now()))
        .await
        .expect("rotate");
    let rev = w.revocation.expect("a revocation");
    assert_eq!(rev.lease_ids, ["old"]);
    assert_eq!(rev.target, RevocationTarget::Leases(vec!["old".into()]));
    assert_eq!(state(&s, "old"), LeaseState::Revoked);
    assert_eq!(
        s.lease("old")
            .expect("read")
            .expect("lease")
            .reason
            .as_deref(),
        Some("rotated")
    );
    // The revocation is in the change log agents replay, after the version's write.
    let log = s.changes_since(before).expect("log").expect("retained");
    assert!(log
        .iter()
        .any(|c| matches!(c, Change::Revoked { revocation } if revocation.seq == rev.seq)));
    // A lease of version 1 minted before the rotation cannot be written after it.
    let e = issue(&s, "late", 1, far).await.expect_err("stale");
    assert!(matches!(e, StoreError::Stale(_)), "{e}");
    issue(&s, "new", 2, far).await.expect("v2 lease");
    let w = s
        .put_secret(write("s", 2, revoke_now()))
        .await
        .expect("rotate");
    assert_eq!(w.revocation.expect("rev").lease_ids, ["new"]);
    // The event of the write carries the revocation.
    let ev = s.events(0, 1000).expect("events");
    let put = ev
        .iter()
        .rev()
        .find(|e| e.kind == "secret-put")
        .expect("event");
    assert_eq!(put.detail["leases"], 1);
}

#[tokio::test]
async fn a_grace_period_schedules_a_revocation_that_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Clock::default();
    let now = clock.now();
    {
        let s = store(dir.path(), &clock).await;
        issue(&s, "long", 1, now + 3600).await.expect("lease");
        issue(&s, "short", 1, now + 60).await.expect("lease");
        let w = s
            .put_secret(write(
                "s",
                1,
                Older::RevokeAt {
                    at: now + 300,
                    reason: "rotated to version 2".into(),
                    actor: "root".into(),
                },
            ))
            .await
            .expect("rotate");
        assert!(w.revocation.is_none());
        assert_eq!(w.older_leases.len(), 2);
        assert_eq!(state(&s, "long"), LeaseState::Active);
        assert!(s.scheduled_due(now + 299, 10).expect("due").is_empty());
    }
    let s = reopen(dir.path(), &clock);
    // The short lease expired by itself before the grace ended.
    s.finish_leases(vec!["short".into()], LeaseState::Expired, "expired".into())
        .await
        .expect("expire");
    let due = s.scheduled_due(now + 300, 10).expect("due");
    assert_eq!(due.len(), 1, "{due:?}");
    let rev = s
        .run_scheduled(due[0].clone())
        .await
        .expect("run")
        .expect("a revocation");
    assert_eq!(rev.lease_ids, ["long"]);
    assert_eq!(rev.reason, "rotated to version 2");
    assert_eq!(state(&s, "long"), LeaseState::Revoked);
    assert_eq!(state(&s, "short"), LeaseState::Expired);
    // Done once: it is forgotten.
    assert!(s.scheduled_due(now + 300, 10).expect("due").is_empty());
    assert!(s
        .run_scheduled(due[0].clone())
        .await
        .expect("run")
        .is_none());
}

#[tokio::test]
async fn disable_and_remove_revoke_and_the_lease_write_refuses_a_disabled_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Clock::default();
    let s = store(dir.path(), &clock).await;
    let far = clock.now() + 3600;
    issue(&s, "a", 1, far).await.expect("lease");
    let (c, rev) = s
        .set_secret_disabled("s", true, "root".into(), "leaked".into())
        .await
        .expect("disable");
    assert!(c.disabled);
    assert_eq!(rev.expect("rev").lease_ids, ["a"]);
    let e = issue(&s, "b", 1, far).await.expect_err("disabled");
    assert!(
        matches!(&e, StoreError::Refused(m) if m.contains("disabled")),
        "{e}"
    );
    // A rotation of a disabled secret is refused; a new version may be put.
    let e = s
        .put_secret(write("s", 1, revoke_now()))
        .await
        .expect_err("disabled");
    assert!(
        matches!(&e, StoreError::Conflict(m) if m.contains("disabled")),
        "{e}"
    );
    s.put_secret(write("s", 1, Older::Keep)).await.expect("put");
    s.set_secret_disabled("s", false, "root".into(), "fixed".into())
        .await
        .expect("enable");
    issue(&s, "c", 2, far).await.expect("lease");
    let (rev, versions) = s.remove_secret("s", "root".into()).await.expect("remove");
    assert_eq!(
        (rev.lease_ids.as_slice(), versions),
        (&["c".to_string()][..], 2)
    );
    assert!(s.credential("s").expect("read").is_none());
    assert!(s.secret_versions("s").expect("versions").is_empty());
    let e = s.remove_secret("s", "root".into()).await.expect_err("gone");
    assert!(matches!(e, StoreError::NotFound(_)), "{e}");
    let kinds: Vec<String> = s
        .events(0, 1000)
        .expect("events")
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| k.starts_with("secret-"))
        .collect();
    assert!(
        kinds.ends_with(&[
            "secret-disabled".into(),
            "secret-put".into(),
            "secret-enabled".into(),
            "secret-removed".into()
        ]),
        "{kinds:?}"
    );
}

/// A `postgres` credential's connection string is a sealed version too; removing a
/// credential whose leases end outside Leash is refused while one is active or its end
/// is pending, and otherwise takes the definition and every version in one write.
#[tokio::test]
async fn remove_credential_keeps_a_definition_whose_ends_are_pending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Clock::default();
    let s = store(dir.path(), &clock).await;
    let pg = |expected: u32, kind: &str| SecretWrite {
        def: Credential {
            kind: kind.into(),
            ..secret("pg", expected + 1)
        },
        ..write("pg", expected, Older::Keep)
    };
    let e = s.put_secret(pg(0, "jwt")).await.expect_err("not sealed");
    assert!(matches!(e, StoreError::Refused(_)), "{e}");
    s.put_secret(pg(0, "postgres")).await.expect("version 1");
    s.put_secret(pg(1, "postgres")).await.expect("version 2");
    let e = s
        .put_secret(write("pg", 2, Older::Keep))
        .await
        .expect_err("kind");
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    let far = clock.now() + 3600;
    let l = Lease {
        credential: "pg".into(),
        ends_outside: true,
        expires_at: far,
        ..lease("p1", "w")
    };
    s.issue_lease(l, Event::new("issued").lease("p1"), Vec::new())
        .await
        .expect("lease");
    let refused = |r: Result<(Option<Revocation>, u32)>, what: &str| {
        let e = r.expect_err(what);
        assert!(
            matches!(&e, StoreError::Conflict(m) if m.contains(what)),
            "{e}"
        );
    };
    let rm = |revoke: bool| s.remove_credential("pg", "root".into(), "gone".into(), revoke);
    refused(rm(false).await, "1 active leases");
    s.revoke(
        RevocationTarget::Leases(vec!["p1".into()]),
        "revoked".into(),
        "root".into(),
        vec![],
    )
    .await
    .expect("revoke");
    refused(rm(false).await, "1 pending ends");
    assert_eq!(s.secret_versions("pg").expect("versions").len(), 2);
    assert!(s.credential("pg").expect("read").is_some());
    // With the revocation in the same write (a kind with nothing to end outside).
    issue(&s, "a", 1, far).await.expect("lease of s");
    let (rev, versions) = s
        .remove_credential("s", "root".into(), "".into(), true)
        .await
        .expect("remove s");
    assert_eq!(rev.expect("revocation").lease_ids, ["a"]);
    assert_eq!(versions, 1);
    assert!(s.credential("s").expect("read").is_none());
    assert!(s.secret_versions("s").expect("versions").is_empty());
    let e = s
        .remove_credential("s", "root".into(), "".into(), true)
        .await
        .expect_err("gone");
    assert!(matches!(e, StoreError::NotFound(_)), "{e}");
    let removed = s
        .events(0, 1000)
        .expect("events")
        .into_iter()
        .find(|e| e.kind == "credential-removed")
        .expect("credential-removed");
    assert_eq!(removed.credential.as_deref(), Some("s"));
}
