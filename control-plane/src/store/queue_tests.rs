//! Unit tests of the queue of ended leases (`queue`): each entry's state, failed
//! attempts with their events, what survives a reopen, an entry from before entries had
//! a state, and the signal that wakes the queue's worker.

use std::sync::Arc;

use super::*;
use crate::clock::Clock;
use crate::fixtures::{host, lease, token, workload};

async fn open(dir: &std::path::Path, clock: &Clock) -> Arc<SledStore> {
    // sled may hold the file lock a moment after the last handle is dropped.
    for _ in 0..100 {
        if let Ok(s) = SledStore::open(dir, clock.clone()) {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    SledStore::open(dir, clock.clone()).expect("open")
}

/// A store with workload `w` on host `h` and leases `out` (ends outside Leash, of
/// credential `db`) and `jwt` (does not), both active.
async fn store(dir: &std::path::Path, clock: &Clock) -> Arc<SledStore> {
    let s = open(dir, clock).await;
    s.put_workload(workload("w"), Event::new("x"))
        .await
        .expect("workload");
    s.put_join_token(token("t"), Event::new("x"))
        .await
        .expect("token");
    s.enroll("t", "x", host("h", "01"), 0, Event::new("enrolled"))
        .await
        .expect("enroll");
    for l in [
        Lease {
            ends_outside: true,
            credential: "db".into(),
            ..lease("out", "w")
        },
        lease("jwt", "w"),
    ] {
        let id = l.id.clone();
        let extra = vec![Event::new("role-created").lease(&id)];
        s.issue_lease(l, Event::new("issued").lease(&id), extra)
            .await
            .expect("lease");
    }
    s
}

async fn revoke(s: &SledStore, target: RevocationTarget) {
    s.revoke(target, "test".into(), "root".into(), Vec::new())
        .await
        .expect("revoke");
}

fn types(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

#[tokio::test]
async fn the_issue_write_records_the_minted_events_after_the_issued_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path(), &Clock::default()).await;
    let events = s.lease_events("out").expect("events");
    assert_eq!(types(&events), ["issued", "role-created"]);
    assert_eq!(events[1].id, events[0].id + 1, "in the same write");
}

#[tokio::test]
async fn a_queued_end_keeps_its_attempts_and_last_error_across_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Clock::default();
    {
        let s = store(dir.path(), &clock).await;
        assert_eq!(s.pending_ends(None).expect("queue"), []);
        let before = clock.now_ms();
        revoke(&s, RevocationTarget::All).await;
        let p = s.pending_end("out").expect("read").expect("queued");
        assert_eq!((p.lease.as_str(), p.credential.as_str()), ("out", "db"));
        assert!(
            p.since_ms >= before && p.since_ms <= clock.now_ms(),
            "{p:?}"
        );
        assert_eq!((p.attempts, p.last_error.as_str()), (0, ""));
        assert_eq!(s.pending_end("jwt").expect("read"), None, "not its kind's");

        for (n, error) in [(1, "connection refused"), (2, "timed out")] {
            clock.advance_ms(1_000);
            let at = clock.now_ms();
            let event = Event::new("drop-failed")
                .lease("out")
                .detail(serde_json::json!({"role": "r"}));
            s.end_failed("out", error.into(), at, event)
                .await
                .expect("failed");
            let p = s.pending_end("out").expect("read").expect("queued");
            assert_eq!((p.attempts, p.last_error.as_str()), (n, error));
            assert_eq!(p.last_attempt_ms, at);
        }
        let failed: Vec<Event> = s
            .lease_events("out")
            .expect("events")
            .into_iter()
            .filter(|e| e.kind == "drop-failed")
            .collect();
        assert_eq!(failed.len(), 2);
        assert_eq!(
            failed[1].detail,
            serde_json::json!({"role": "r", "error": "timed out", "attempt": 2})
        );
    }
    let s = open(dir.path(), &clock).await;
    let all = s.pending_ends(None).expect("queue");
    assert_eq!(all.len(), 1);
    assert_eq!(
        (all[0].attempts, all[0].last_error.as_str()),
        (2, "timed out")
    );
    assert_eq!(s.pending_ends(Some("db")).expect("queue"), all);
    assert_eq!(s.pending_ends(Some("other")).expect("queue"), []);

    // Done: off the queue with the kind's events, in one write.
    let done = Event::new("role-dropped").lease("out");
    s.forget_ended(vec![("out".into(), vec![done])])
        .await
        .expect("forget");
    assert_eq!(s.pending_end("out").expect("read"), None);
    assert_eq!(s.ended_leases(10).expect("queue"), []);
    let events = s.lease_events("out").expect("events");
    assert_eq!(events.last().map(|e| e.kind.as_str()), Some("role-dropped"));
}

#[tokio::test]
async fn a_long_error_is_cut_and_an_entry_from_before_states_reads_as_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path(), &Clock::default()).await;
    revoke(&s, RevocationTarget::Lease("out".into())).await;
    s.end_failed("out", "x".repeat(5_000), 1, Event::new("end-failed"))
        .await
        .expect("failed");
    let p = s.pending_end("out").expect("read").expect("queued");
    assert_eq!(
        p.last_error.chars().count(),
        super::queue::MAX_ERROR_CHARS + 1
    );
    // As queued before entries had a state: an empty value.
    s.t.ended.insert("out", &[]).expect("raw");
    let p = s.pending_end("out").expect("read").expect("queued");
    assert_eq!(
        p,
        PendingEnd {
            lease: "out".into(),
            credential: "db".into(),
            ..PendingEnd::default()
        },
        "the credential is read from the lease"
    );
}

#[tokio::test]
async fn only_a_write_that_queues_a_lease_counts_as_queued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path(), &Clock::default()).await;
    let mut rx = s.ended_changes();
    let start = *rx.borrow_and_update();
    revoke(&s, RevocationTarget::Lease("jwt".into())).await;
    assert!(!rx.has_changed().expect("open"), "nothing was queued");
    revoke(&s, RevocationTarget::Lease("out".into())).await;
    assert!(rx.has_changed().expect("open"));
    let queued = *rx.borrow_and_update();
    assert_eq!(queued.queued, start.queued + 1);
    s.end_failed("out", "down".into(), 1, Event::new("end-failed"))
        .await
        .expect("failed");
    let failed = *rx.borrow_and_update();
    assert_eq!(
        (failed.queued, failed.changed),
        (queued.queued, queued.changed + 1),
        "a failed attempt changes the queue but queues nothing"
    );
    s.forget_ended(vec![("out".into(), Vec::new())])
        .await
        .expect("forget");
    assert_eq!(rx.borrow_and_update().changed, failed.changed + 1);
}
