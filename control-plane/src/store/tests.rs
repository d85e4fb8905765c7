//! Unit tests of the sled store: sequencing, group commit, revocation, policy versions,
//! and what callers see when a flush fails.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::codec::enc;
use super::flush::Flush;
use super::*;
use crate::clock::Clock;
use crate::fixtures::{lease, token, workload};
use crate::model::ApprovalState;
use leash_proto::workload_kind::WorkloadKind;

#[tokio::test]
async fn writes_are_sequenced_durable_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = SledStore::open(dir.path(), Clock::default()).expect("open");
        let s1 = s
            .put_workload(workload("a"), Event::new("workload-added"))
            .await
            .expect("put");
        let s2 = s
            .put_workload(workload("b"), Event::new("workload-added"))
            .await
            .expect("put");
        assert!(s2 > s1);
        let changes = s.changes_since(s1).expect("log").expect("retained");
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].seq(), s2);
    }
    // sled's own I/O threads may hold the file lock a moment after the last handle
    // is dropped (a real restart is a new process and never sees this).
    let mut reopened = SledStore::open(dir.path(), Clock::default());
    for _ in 0..100 {
        if reopened.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        reopened = SledStore::open(dir.path(), Clock::default());
    }
    let s = reopened.expect("reopen");
    assert_eq!(s.workloads().expect("list").len(), 2);
    assert_eq!(s.current_seq(), 2);
    assert_eq!(s.events(0, 10).expect("events").len(), 2);
}

#[tokio::test]
async fn group_commit_serves_concurrent_writers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SledStore::open(dir.path(), Clock::default()).expect("open");
    s.put_workload(workload("w"), Event::new("x"))
        .await
        .expect("put");
    let t = token("t");
    s.put_join_token(t, Event::new("x")).await.expect("token");
    s.enroll("t", "x", host(), 0, Event::new("enrolled"))
        .await
        .expect("enroll");
    let mut handles = Vec::new();
    for i in 0..200 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            s.issue_lease(
                lease(&format!("l{i}"), "w"),
                Event::new("issued").lease(format!("l{i}")),
                Vec::new(),
            )
            .await
        }));
    }
    let mut seqs = BTreeSet::new();
    for h in handles {
        seqs.insert(h.await.expect("join").expect("issued"));
    }
    assert_eq!(seqs.len(), 200, "every lease got its own sequence number");
    assert_eq!(s.leases(None, true).expect("leases").len(), 200);
}

#[tokio::test]
async fn revocation_covers_and_disabled_workload_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SledStore::open(dir.path(), Clock::default()).expect("open");
    s.put_workload(workload("w"), Event::new("x"))
        .await
        .expect("put");
    s.put_workload(workload("v"), Event::new("x"))
        .await
        .expect("put");
    let t = token("t");
    s.put_join_token(t, Event::new("x")).await.expect("token");
    assert!(
        s.enroll("t", "y", host(), 0, Event::new("e"))
            .await
            .is_err(),
        "wrong secret"
    );
    s.enroll("t", "x", host(), 0, Event::new("e"))
        .await
        .expect("enroll");
    assert!(
        s.enroll("t", "x", host(), 0, Event::new("e"))
            .await
            .is_err(),
        "reuse"
    );
    s.issue_lease(
        lease("l1", "w"),
        Event::new("issued").lease("l1"),
        Vec::new(),
    )
    .await
    .expect("l1");
    s.issue_lease(
        lease("l2", "v"),
        Event::new("issued").lease("l2"),
        Vec::new(),
    )
    .await
    .expect("l2");
    let (_, rev) = s
        .set_workload_disabled("w", true, "root".into(), "test".into())
        .await
        .expect("disable");
    let rev = rev.expect("revocation");
    assert_eq!(rev.lease_ids, vec!["l1".to_string()]);
    assert_eq!(
        s.lease("l1").expect("get").expect("some").state,
        LeaseState::Revoked
    );
    assert_eq!(
        s.lease("l2").expect("get").expect("some").state,
        LeaseState::Active
    );
    assert!(s
        .issue_lease(lease("l3", "w"), Event::new("issued"), Vec::new())
        .await
        .is_err());
    let timeline: Vec<String> = s
        .lease_events("l1")
        .expect("events")
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(timeline, vec!["issued", "revoked"]);

    // Each host is told only the lease ids issued to it.
    for (i, name) in ["h1", "h2"].into_iter().enumerate() {
        let t = token(&format!("t{i}"));
        s.put_join_token(t, Event::new("x")).await.expect("token");
        let h = Host {
            name: name.into(),
            cert_serial: format!("1{i}"),
            ..host()
        };
        s.enroll(&format!("t{i}"), "x", h, 0, Event::new("e"))
            .await
            .expect("enroll");
    }
    for (id, h) in [("m1", "h1"), ("m2", "h2"), ("m3", "h1")] {
        let mut l = lease(id, "v");
        l.host = h.into();
        s.issue_lease(l, Event::new("issued"), Vec::new())
            .await
            .expect("lease");
    }
    let rev = s
        .revoke(
            RevocationTarget::Workload("v".into()),
            "test".into(),
            "root".into(),
            Vec::new(),
        )
        .await
        .expect("revoke");
    let mut all = rev.lease_ids.clone();
    all.sort();
    assert_eq!(all, ["l2", "m1", "m2", "m3"]);
    assert!(
        rev.lease_hosts.windows(2).all(|w| w[0] <= w[1]),
        "grouped by host: {:?}",
        rev.lease_hosts
    );
    let mut h1 = rev.lease_ids_for("h1");
    h1.sort();
    assert_eq!(h1, ["m1", "m3"]);
    assert_eq!(rev.lease_ids_for("h2"), ["m2"]);
    assert_eq!(rev.lease_ids_for("h"), ["l2"]);
    assert!(rev.lease_ids_for("elsewhere").is_empty());
    // A revocation recorded before per-host lists existed: every host gets every id.
    let old = Revocation {
        lease_hosts: Vec::new(),
        ..rev
    };
    assert_eq!(old.lease_ids_for("h2").len(), 4);
}

/// A flush that fails while `fail` is set, as a full disk makes sled's flush fail.
struct FailingFlush(Arc<std::sync::atomic::AtomicBool>);

impl Flush for FailingFlush {
    fn flush(&mut self, db: &sled::Db) -> sled::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            return Err(sled::Error::Io(std::io::Error::from_raw_os_error(28)));
        }
        db.flush().map(drop)
    }
}

#[tokio::test]
async fn a_failed_flush_is_unavailable_not_refused_and_publishes_nothing_until_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = SledStore::open_with(dir.path(), Clock::default(), FailingFlush(fail.clone()))
        .expect("open");
    s.put_workload(workload("w"), Event::new("x"))
        .await
        .expect("put");
    s.put_join_token(token("t"), Event::new("x"))
        .await
        .expect("token");
    s.enroll("t", "x", host(), 0, Event::new("enrolled"))
        .await
        .expect("enroll");
    s.issue_lease(
        lease("l1", "w"),
        Event::new("issued").lease("l1"),
        Vec::new(),
    )
    .await
    .expect("l1");
    let before = s.current_seq();
    let mut changes = s.subscribe_changes();

    fail.store(true, Ordering::SeqCst);
    let issued = s
        .issue_lease(
            lease("l2", "w"),
            Event::new("issued").lease("l2"),
            Vec::new(),
        )
        .await;
    assert!(
        matches!(issued, Err(StoreError::NotDurable(_))),
        "an issuance whose flush failed: {issued:?}"
    );
    let revoked = s
        .revoke(
            RevocationTarget::Lease("l1".into()),
            "test".into(),
            "root".into(),
            Vec::new(),
        )
        .await;
    let err = revoked.expect_err("a revocation whose flush failed is not acknowledged");
    assert!(matches!(err, StoreError::NotDurable(_)), "{err:?}");
    assert!(err.to_string().contains("not acknowledged"), "{err}");
    assert_eq!(s.current_seq(), before, "nothing non-durable is committed");
    assert!(
        changes.try_recv().is_err(),
        "nothing non-durable is published"
    );

    // Once flushes work again, the store continues without reusing a sequence number,
    // and what waited is published in order, before the new write.
    fail.store(false, Ordering::SeqCst);
    let l3 = s
        .issue_lease(
            lease("l3", "w"),
            Event::new("issued").lease("l3"),
            Vec::new(),
        )
        .await
        .expect("l3 after recovery");
    assert!(
        l3 > before + 2,
        "seq {l3} reuses a number of the failed batches"
    );
    assert_eq!(s.current_seq(), l3);
    // Published just after the callers are answered.
    let published = tokio::time::timeout(std::time::Duration::from_secs(5), changes.recv())
        .await
        .expect("the failed batch's revocation is published")
        .expect("published");
    assert!(
        matches!(&*published, Change::Revoked { revocation } if revocation.seq == before + 2),
        "{published:?}"
    );
    let log = s.changes_since(before).expect("log").expect("retained");
    assert_eq!(log.first().map(Change::seq), Some(before + 2));
}

fn host() -> Host {
    crate::fixtures::host("h", "01")
}

fn policy(version: u64) -> PolicyRecord {
    PolicyRecord {
        version,
        text: format!("// version {version}"),
        applied_at: 0,
        applied_by: "root".into(),
    }
}

#[tokio::test]
async fn policy_versions_are_typed_ordered_and_read_from_older_databases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SledStore::open(dir.path(), Clock::default()).expect("open");
    assert_eq!(s.current_policy().expect("current"), None);
    // As the store wrote them before it had typed methods: two raw blobs.
    s.put_blob("policy/v/1", enc(&policy(1)))
        .await
        .expect("blob");
    s.put_blob("policy/current", 1u64.to_be_bytes().to_vec())
        .await
        .expect("blob");
    assert_eq!(s.current_policy().expect("current"), Some(policy(1)));
    for v in 2..=11 {
        s.put_policy_version(policy(v)).await.expect("put");
    }
    assert_eq!(s.current_policy().expect("current"), Some(policy(11)));
    assert_eq!(s.policy_version(2).expect("v2"), Some(policy(2)));
    assert_eq!(s.policy_version(12).expect("v12"), None);
    let versions: Vec<u64> = s
        .policy_versions()
        .expect("list")
        .iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(versions, (1..=11).collect::<Vec<_>>());
    s.put_blob("policy/current", vec![1, 2, 3])
        .await
        .expect("blob");
    assert!(matches!(
        s.current_policy(),
        Err(StoreError::Corrupt { tree: "blobs", .. })
    ));
}

#[tokio::test]
async fn what_the_store_records_is_dated_by_its_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Clock::default();
    let s = SledStore::open(dir.path(), clock.clone()).expect("open");
    s.put_workload(workload("w"), Event::new("workload-added"))
        .await
        .expect("put");
    let day_ms = 86_400_000;
    clock.advance_ms(day_ms);
    let before = clock.now_ms();
    let rev = s
        .revoke(
            RevocationTarget::Workload("w".into()),
            "test".into(),
            "root".into(),
            vec![Event::new("revoke-requested")],
        )
        .await
        .expect("revoke");
    assert!(rev.at_ms >= before, "{} < {before}", rev.at_ms);
    let (_, _) = s
        .offboard_owner("team", "root".into())
        .await
        .expect("offboard");
    let offboarded = s.offboarded_owners().expect("owners");
    assert_eq!(offboarded.len(), 1);
    assert!(offboarded[0].1 >= before / 1000, "{offboarded:?}");
    let events = s.events(0, 100).expect("events");
    assert_eq!(events[0].kind, "workload-added");
    assert!(events[0].at_ms < before - day_ms / 2, "{:?}", events[0]);
    assert!(
        events[1..].iter().all(|e| e.at_ms >= before),
        "events after the clock moved are dated by it: {events:?}"
    );
    // An event dated by its maker keeps its date.
    let mut dated = Event::new("dated");
    dated.at_ms = 42;
    s.append_events(vec![dated]).await.expect("append");
    let last = s.events(0, 100).expect("events").pop().expect("one");
    assert_eq!((last.kind.as_str(), last.at_ms), ("dated", 42));
}

/// A workload and an approval exactly as the store wrote them when their kind and state
/// were plain text, byte for byte (serde JSON, fields in declaration order).
const OLD_WORKLOAD: &str = r#"{"name":"ci/helper","owner":"team-a","kind":"shared-agent","selectors":["unix:uid:1001"],"hosts":{"role":"ci"},"allow":["deploy-api"],"expires_at":0,"disabled":false,"created_at":1700000000}"#;
const OLD_APPROVAL: &str = r#"{"id":"ap-1a2b3c4d5e6f","workload":"ci/helper","credential":"deploy-api","action":"deploy","host":"h1","on_behalf_of":"alice","ttl":300,"audience":"api","policies":["p1"],"requested_at":1700000000,"state":"approved","decided_by":"root","reason":null,"valid_until":1700000600,"uses_left":3}"#;

#[tokio::test]
async fn records_stored_with_text_kinds_and_states_read_and_write_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        // Written straight into the trees, as an older control plane left them.
        let db = sled::open(dir.path().join("db")).expect("raw open");
        let w = db.open_tree("workloads").expect("tree");
        w.insert("ci/helper", OLD_WORKLOAD.as_bytes())
            .expect("insert");
        let a = db.open_tree("approvals").expect("tree");
        a.insert("ap-1a2b3c4d5e6f", OLD_APPROVAL.as_bytes())
            .expect("insert");
        for state in ["pending", "denied"] {
            let other = OLD_APPROVAL
                .replace("ap-1a2b3c4d5e6f", &format!("ap-{state}"))
                .replace("\"approved\"", &format!("{state:?}"));
            a.insert(format!("ap-{state}"), other.as_bytes())
                .expect("insert");
        }
        db.flush().expect("flush");
    }
    let s = SledStore::open(dir.path(), Clock::default()).expect("open");
    let w = s.workload("ci/helper").expect("read").expect("present");
    assert_eq!(w.kind, WorkloadKind::SharedAgent);
    assert_eq!(String::from_utf8(enc(&w)).expect("utf-8"), OLD_WORKLOAD);
    let a = s
        .approval("ap-1a2b3c4d5e6f")
        .expect("read")
        .expect("present");
    assert_eq!(a.state, ApprovalState::Approved);
    assert_eq!(String::from_utf8(enc(&a)).expect("utf-8"), OLD_APPROVAL);
    let mut states: Vec<(String, ApprovalState)> = s
        .approvals()
        .expect("list")
        .into_iter()
        .map(|a| (a.id, a.state))
        .collect();
    states.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        states,
        [
            ("ap-1a2b3c4d5e6f".to_string(), ApprovalState::Approved),
            ("ap-denied".to_string(), ApprovalState::Denied),
            ("ap-pending".to_string(), ApprovalState::Pending),
        ]
    );
    // Every kind is stored as the text the CLI spells.
    for kind in WorkloadKind::ALL {
        let mut w = w.clone();
        w.kind = kind;
        let text = String::from_utf8(enc(&w)).expect("utf-8");
        assert!(text.contains(&format!(r#""kind":"{kind}""#)), "{text}");
    }
}

/// Reopen a store whose previous handle was just dropped (see the first test).
pub(super) fn reopen(dir: &std::path::Path, clock: &Clock) -> Arc<SledStore> {
    let mut r = SledStore::open(dir, clock.clone());
    for _ in 0..100 {
        if r.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        r = SledStore::open(dir, clock.clone());
    }
    r.expect("reopen")
}

#[tokio::test]
async fn retention_forgets_only_what_is_older_than_its_period() {
    use crate::config::Retention;
    use crate::retention::sweep;
    use std::time::Duration;
    const MIN: i64 = 60_000;

    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Clock::default();
    let s = SledStore::open(dir.path(), clock.clone()).expect("open");
    s.put_workload(workload("w"), Event::new("workload-added"))
        .await
        .expect("workload");
    s.put_join_token(token("t"), Event::new("x"))
        .await
        .expect("token");
    s.enroll("t", "x", host(), 0, Event::new("enrolled"))
        .await
        .expect("enroll");
    let now = clock.now();
    let short = |id: &str| Lease {
        expires_at: now + 10,
        ..lease(id, "w")
    };
    for l in [
        short("ended"),
        Lease {
            ends_outside: true,
            ..short("end-pending")
        },
        Lease {
            expires_at: now + 100_000,
            ..lease("active", "w")
        },
    ] {
        let id = l.id.clone();
        s.issue_lease(l, Event::new("issued").lease(&id), Vec::new())
            .await
            .expect("lease");
    }
    for id in ["ended", "end-pending"] {
        s.revoke(
            RevocationTarget::Lease(id.into()),
            "test".into(),
            "root".into(),
            vec![],
        )
        .await
        .expect("revoke");
    }
    let retention = Retention {
        leases: Duration::from_secs(3600),
        events: Duration::from_secs(2 * 3600),
    };
    let pass = |s: Arc<SledStore>| {
        let cut = retention.cutoff(clock.now_ms());
        async move { sweep(&*s, cut).await.expect("sweep") }
    };
    assert!(!s.prune_due(retention.cutoff(clock.now_ms())).expect("due"));
    assert_eq!(
        pass(s.clone()).await,
        Pruned::default(),
        "nothing is old yet"
    );

    // A database from before the ended-lease index: it is built at open.
    s.t.lease_ended.clear().expect("clear");
    s.t.meta.remove("lease_ended_index").expect("meta");
    s.db.as_ref().expect("sled").flush().expect("flush");
    drop(s);
    let s = reopen(dir.path(), &clock);

    // 90 minutes on: the ended lease and the revocations are past the one-hour retention,
    // the events are not past their two hours.
    clock.advance_ms(90 * MIN);
    let p = pass(s.clone()).await;
    assert_eq!(
        p,
        Pruned {
            leases: 1,
            events: 0,
            revocations: 2
        }
    );
    assert!(s.lease("ended").expect("get").is_none());
    assert!(
        s.lease("active").expect("get").is_some(),
        "active leases stay"
    );
    assert!(
        s.lease("end-pending").expect("get").is_some(),
        "a lease whose end step is pending stays"
    );
    assert!(s.revocations_since(0).expect("revocations").is_empty());
    assert_eq!(
        s.lease_events("ended").expect("events").len(),
        2,
        "its events stay for their own period"
    );

    // Once its end step is done, the pending lease goes at the next pass.
    s.forget_ended(vec![("end-pending".into(), Vec::new())])
        .await
        .expect("forget");
    assert_eq!(pass(s.clone()).await.leases, 1);
    assert!(s.lease("end-pending").expect("get").is_none());

    // Two hours and a half on: every event so far is past its retention, with its indexes.
    clock.advance_ms(60 * MIN);
    let p = pass(s.clone()).await;
    assert!(p.events >= 8, "{p:?}");
    assert!(s.events(0, 1000).expect("events").is_empty());
    assert!(s.lease_events("ended").expect("events").is_empty());
    assert!(s.lease("active").expect("get").is_some());
    assert_eq!(pass(s.clone()).await, Pruned::default());
}

/// A target that names its leases (one lease, a list) is looked up by id rather than
/// by scanning every active lease: it must revoke what a scan would, in the same order
/// (the `active` index's, by id), each lease once, and never one that is not active.
#[tokio::test]
async fn named_targets_revoke_what_a_scan_would_in_the_same_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SledStore::open(dir.path(), Clock::default()).expect("open");
    s.put_workload(workload("w"), Event::new("x"))
        .await
        .expect("put");
    s.put_join_token(token("t"), Event::new("x"))
        .await
        .expect("token");
    s.enroll("t", "x", host(), 0, Event::new("e"))
        .await
        .expect("enroll");
    for id in ["l5", "l1", "l9", "l3", "l7"] {
        s.issue_lease(lease(id, "w"), Event::new("issued").lease(id), Vec::new())
            .await
            .expect("issue");
    }
    let one = s
        .revoke(
            RevocationTarget::Lease("l3".into()),
            "one".into(),
            "root".into(),
            vec![],
        )
        .await
        .expect("revoke l3");
    assert_eq!(one.lease_ids, vec!["l3".to_string()]);
    assert_eq!(one.hosts, vec!["h".to_string()]);
    let again = s
        .revoke(
            RevocationTarget::Lease("l3".into()),
            "again".into(),
            "root".into(),
            vec![],
        )
        .await
        .expect("revoke l3 again");
    assert!(again.lease_ids.is_empty(), "{again:?}");
    assert!(again.hosts.is_empty(), "{again:?}");
    let before = s.events(0, 1000).expect("events").len();
    let listed = s
        .revoke(
            RevocationTarget::Leases(
                ["l9", "l1", "nope", "l9", "l3", "l5"]
                    .map(String::from)
                    .to_vec(),
            ),
            "listed".into(),
            "root".into(),
            vec![],
        )
        .await
        .expect("revoke listed");
    assert_eq!(
        listed.lease_ids,
        ["l1", "l5", "l9"].map(String::from).to_vec()
    );
    assert_eq!(listed.lease_hosts, vec![0, 0, 0]);
    let revoked: Vec<(String, Option<String>, Option<String>)> = s
        .events(0, 1000)
        .expect("events")
        .into_iter()
        .skip(before)
        .map(|e| (e.kind, e.lease, e.reason))
        .collect();
    assert_eq!(
        revoked,
        ["l1", "l5", "l9"]
            .map(|l| (
                "revoked".to_string(),
                Some(l.to_string()),
                Some("listed".to_string())
            ))
            .to_vec()
    );
    for id in ["l1", "l3", "l5", "l9"] {
        let l = s.lease(id).expect("get").expect("some");
        assert_eq!(l.state, LeaseState::Revoked, "{id}");
    }
    // A scan (the workload's) now finds only the one left.
    let rest = s
        .revoke(
            RevocationTarget::Workload("w".into()),
            "rest".into(),
            "root".into(),
            vec![],
        )
        .await
        .expect("revoke rest");
    assert_eq!(rest.lease_ids, vec!["l7".to_string()]);
    assert!(s.leases(None, true).expect("active").is_empty());
}
