//! Issuance in-process: every ending path reaching a kind's end step, a failed flush,
//! and explain agreeing with Issue. The control plane's parts are the real ones (sled
//! store, keys, Cedar engine); only the clock is moved by hand.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use leash_proto::reason::Reason;
use leash_proto::v1;
use tonic::Status;

use super::ends::{process, Retries};
use super::{explain, issue, no_longer_permitted, IssueError};
use crate::clock::Clock;
use crate::config::{Config, FileConfig, Overrides};
use crate::keys::{Keys, MasterKey};
use crate::kinds::testing::Recorder;
use crate::model::{Credential, Event, Host, LeaseState, RevocationTarget, Workload};
use crate::policy::Engine;
use crate::state::Shared;
use crate::store::{SledStore, Storage, StoreError};

struct Fixture {
    dir: tempfile::TempDir,
    s: Shared,
    recorder: Recorder,
    clock: Clock,
    /// The next this many flushes fail.
    fail: Arc<AtomicU32>,
}

async fn shared(
    dir: &std::path::Path,
    clock: &Clock,
    fail: Arc<AtomicU32>,
    recorder: &Recorder,
) -> Shared {
    let store = SledStore::open_failing(dir, clock.clone(), fail).expect("store");
    let master = Arc::new(MasterKey::load_or_create(dir).expect("master key"));
    let keys = Arc::new(
        Keys::load_or_create(&*store, &master, "leash.test")
            .await
            .expect("keys"),
    );
    let text = format!("data_dir = {:?}\n", dir.display().to_string());
    let file = FileConfig::parse(&text, &dir.join("cp.toml")).expect("config");
    let config = Config::resolve(file, Overrides::default()).expect("config");
    let policy = Engine::new(&config.actions).expect("engine");
    policy
        .relink(&store.workloads().expect("workloads"))
        .expect("links");
    let (tx, _) = tokio::sync::mpsc::unbounded_channel();
    let mut s = Shared::new(config, store, keys, master, clock.clone(), policy, tx);
    s.kinds.add(recorder.clone());
    s
}

fn workload(name: &str, owner: &str, hosts: &[(&str, &str)]) -> Workload {
    Workload {
        name: name.into(),
        owner: owner.into(),
        kind: leash_proto::workload_kind::WorkloadKind::Service,
        selectors: Vec::new(),
        hosts: hosts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        allow: vec!["api".into(), "rec".into()],
        expires_at: 0,
        disabled: false,
        created_at: 0,
        x509_svid_ttl: 0,
    }
}

fn credential(name: &str, kind: &str) -> Credential {
    Credential {
        name: name.into(),
        kind: kind.into(),
        audiences: vec!["https://api.example".into()],
        default_ttl: 3600,
        max_ttl: 7200,
        default_action: "read".into(),
        scopes: BTreeMap::new(),
        created_at: 0,
        ..Default::default()
    }
}

fn host(name: &str, role: &str) -> Host {
    Host {
        labels: BTreeMap::from([("role".to_string(), role.to_string())]),
        cert_not_after: i64::MAX,
        ..crate::fixtures::host(name, &format!("serial-{name}"))
    }
}

/// A control plane with hosts `h1` (role ci) and `h2` (role dev), credentials `api`
/// (jwt) and `rec` (the recorder kind), and one workload per ending path.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Clock::default();
    let fail = Arc::new(AtomicU32::new(0));
    let recorder = Recorder::default();
    let s = shared(dir.path(), &clock, fail.clone(), &recorder).await;
    let st = &s.store;
    for (name, role) in [("h1", "ci"), ("h2", "dev")] {
        st.put_join_token(
            crate::fixtures::token(&format!("jt-{name}")),
            Event::new("x"),
        )
        .await
        .expect("token");
        st.enroll(
            &format!("jt-{name}"),
            "x",
            host(name, role),
            0,
            Event::new("enrolled"),
        )
        .await
        .expect("enroll");
    }
    st.put_credential(credential("api", "jwt"), Event::new("x"))
        .await
        .expect("api");
    st.put_credential(credential("rec", "recorder"), Event::new("x"))
        .await
        .expect("rec");
    for (w, owner) in [
        ("w/revoke", "team-a"),
        ("w/expire", "team-a"),
        ("w/task", "team-a"),
        ("w/policy", "team-a"),
        ("w/offboard", "team-o"),
        ("w/evict", "team-a"),
        ("w/disable", "team-a"),
    ] {
        st.put_workload(workload(w, owner, &[]), Event::new("x"))
            .await
            .expect("workload");
    }
    st.put_workload(
        workload("w/ci-only", "team-a", &[("role", "ci")]),
        Event::new("x"),
    )
    .await
    .expect("workload");
    // No --allow links: only Cedar policy decides for it.
    st.put_workload(
        Workload {
            allow: Vec::new(),
            ..workload("w/bare", "team-a", &[])
        },
        Event::new("x"),
    )
    .await
    .expect("workload");
    s.policy
        .relink(&st.workloads().expect("workloads"))
        .expect("links");
    Fixture {
        dir,
        s,
        recorder,
        clock,
        fail,
    }
}

fn ask(workload: &str, credential: &str) -> v1::IssueRequest {
    v1::IssueRequest {
        workload: workload.into(),
        credential: credential.into(),
        attested: Some(v1::Attested {
            uid: 1000,
            pid: 42,
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Fixture {
    fn host(&self, name: &str) -> Host {
        self.s.store.host(name).expect("read").expect("host")
    }

    async fn issue(&self, on: &str, r: v1::IssueRequest) -> Result<v1::IssueResponse, IssueError> {
        issue(&self.s, self.host(on), r).await
    }

    async fn lease(&self, on: &str, workload: &str, credential: &str) -> String {
        self.issue(on, ask(workload, credential))
            .await
            .expect("issued")
            .lease_id
    }
}

#[tokio::test]
async fn every_ending_path_reaches_the_kind_once() {
    let f = fixture().await;
    let st = f.s.store.clone();
    let revoke = f.lease("h1", "w/revoke", "rec").await;
    let expire = f
        .issue(
            "h1",
            v1::IssueRequest {
                ttl_seconds: 60,
                ..ask("w/expire", "rec")
            },
        )
        .await
        .expect("issued")
        .lease_id;
    let task = f
        .issue(
            "h1",
            v1::IssueRequest {
                task: "t-1".into(),
                ..ask("w/task", "rec")
            },
        )
        .await
        .expect("issued")
        .lease_id;
    let policy = f.lease("h1", "w/policy", "rec").await;
    let offboard = f.lease("h1", "w/offboard", "rec").await;
    let evict = f.lease("h2", "w/evict", "rec").await;
    let disable = f.lease("h1", "w/disable", "rec").await;
    // A kind with nothing to undo outside Leash queues nothing.
    let jwt = f.lease("h1", "w/revoke", "api").await;
    assert!(st.ended_leases(100).expect("queue").is_empty());

    st.revoke(
        RevocationTarget::Lease(revoke.clone()),
        "test".into(),
        "root".into(),
        Vec::new(),
    )
    .await
    .expect("revoke");
    st.revoke(
        RevocationTarget::Lease(jwt),
        "test".into(),
        "root".into(),
        Vec::new(),
    )
    .await
    .expect("revoke jwt");
    f.clock.advance_ms(120_000);
    let expired = crate::expiry::sweep(st.as_ref(), f.clock.now())
        .await
        .expect("sweep");
    assert_eq!(expired.iter().map(|l| &l.id).collect::<Vec<_>>(), [&expire]);
    st.finish_leases(
        vec![task.clone()],
        LeaseState::Completed,
        "task t-1 ended".into(),
    )
    .await
    .expect("complete");
    let workloads = st.workloads().expect("workloads");
    f.s.policy
        .install(
            1,
            "@id(\"no-policy-workload\")\nforbid(principal == Leash::Workload::\"w/policy\", action, resource);\n",
            &workloads,
        )
        .expect("install");
    let gone = no_longer_permitted(&f.s, &workloads).expect("re-evaluate");
    assert_eq!(gone, std::slice::from_ref(&policy));
    st.revoke(
        RevocationTarget::Leases(gone),
        "policy 1".into(),
        "root".into(),
        Vec::new(),
    )
    .await
    .expect("revoke");
    st.offboard_owner("team-o", "root".into())
        .await
        .expect("offboard");
    st.evict_host("h2", "root".into(), "test".into())
        .await
        .expect("evict");
    st.set_workload_disabled("w/disable", true, "root".into(), "test".into())
        .await
        .expect("disable");

    let mut want = vec![revoke, expire, task, policy, offboard, evict, disable];
    want.sort();
    assert_eq!(st.ended_leases(100).expect("queue").len(), want.len());
    let mut retries = Retries::default();
    assert_eq!(process(&f.s, &mut retries).await, want.len());
    let mut got = f.recorder.ended();
    got.sort();
    assert_eq!(got, want, "each ended lease reached its kind once");
    assert!(st.ended_leases(100).expect("queue").is_empty());
    assert_eq!(process(&f.s, &mut retries).await, 0);
    assert_eq!(f.recorder.ended().len(), want.len());
}

#[tokio::test]
async fn a_failed_end_step_is_kept_and_done_after_a_restart() {
    let f = fixture().await;
    let id = f.lease("h1", "w/revoke", "rec").await;
    f.s.store
        .revoke(
            RevocationTarget::Lease(id.clone()),
            "test".into(),
            "root".into(),
            Vec::new(),
        )
        .await
        .expect("revoke");
    f.recorder.failures.store(1, Ordering::SeqCst);
    let mut retries = Retries::default();
    assert_eq!(process(&f.s, &mut retries).await, 0, "the end step failed");
    assert!(f.recorder.ended().is_empty());
    assert_eq!(
        retries.pause_of(&id),
        Some(std::time::Duration::from_secs(1))
    );
    // Not tried again before its pause is over.
    assert_eq!(process(&f.s, &mut retries).await, 0);
    // The attempt, its error and the kind's failed-end event are durable; `lease show`
    // sees them.
    let p = f.s.store.pending_end(&id).expect("read").expect("queued");
    assert_eq!(
        (p.attempts, p.last_error.as_str()),
        (1, "the outside system did not answer")
    );
    let lease = f.s.store.lease(&id).expect("read").expect("lease");
    let shown = crate::wire::lease_with_end(&lease, Some(&p), "undo");
    assert!(shown.end_pending);
    assert_eq!(shown.end_attempts, 1);
    assert_eq!(shown.end_step, "undo");
    assert_eq!(shown.end_last_error, "the outside system did not answer");
    assert_eq!(shown.end_pending_since_unix, p.since_ms / 1000);
    let failed: Vec<Event> =
        f.s.store
            .lease_events(&id)
            .expect("events")
            .into_iter()
            .filter(|e| e.kind == "recorder-end-failed")
            .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].detail,
        serde_json::json!({"error": "the outside system did not answer", "attempt": 1})
    );
    assert_eq!(failed[0].workload.as_deref(), Some("w/revoke"));
    let Fixture {
        dir,
        s,
        recorder,
        clock,
        fail,
        ..
    } = f;
    drop(s);
    let s = shared(dir.path(), &clock, fail, &recorder).await;
    let queued = s.store.ended_leases(100).expect("queue");
    assert_eq!(
        queued.iter().map(|l| &l.id).collect::<Vec<_>>(),
        [&id],
        "the queue survives a restart"
    );
    assert_eq!(
        s.store.pending_end(&id).expect("read").map(|p| p.attempts),
        Some(1),
        "and so does the attempt count"
    );
    assert_eq!(process(&s, &mut Retries::default()).await, 1);
    assert_eq!(recorder.ended(), std::slice::from_ref(&id));
    assert_eq!(s.store.pending_end(&id).expect("read"), None);
    // The kind's events are on the lease's timeline, written with taking it off.
    let events = s.store.lease_events(&id).expect("events");
    let last = events.last().expect("events");
    assert_eq!(last.kind, "recorder-undone");
    assert_eq!(last.detail, serde_json::json!({"lease": id}));
    let lease = s.store.lease(&id).expect("read").expect("lease");
    let shown = crate::wire::lease_with_end(&lease, None, "undo");
    assert!(!shown.end_pending);
    assert_eq!(shown.end_step, "undo");
}

#[tokio::test]
async fn an_end_step_that_never_answers_times_out_and_frees_its_slot() {
    let f = fixture().await;
    let id = f.lease("h1", "w/revoke", "rec").await;
    f.s.store
        .revoke(
            RevocationTarget::Lease(id.clone()),
            "test".into(),
            "root".into(),
            Vec::new(),
        )
        .await
        .expect("revoke");
    f.recorder.end_ms.store(60_000, Ordering::SeqCst);
    let start = std::time::Instant::now();
    let mut retries = Retries::with_timeout(std::time::Duration::from_millis(200));
    assert_eq!(process(&f.s, &mut retries).await, 0);
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    let p = f.s.store.pending_end(&id).expect("read").expect("queued");
    assert_eq!(
        (p.attempts, p.last_error.as_str()),
        (1, "no answer within 200ms")
    );
}

#[tokio::test]
async fn a_lease_whose_kind_is_missing_stays_queued_and_says_why() {
    let f = fixture().await;
    let id = f.lease("h1", "w/revoke", "rec").await;
    f.s.store
        .revoke(
            RevocationTarget::Lease(id.clone()),
            "test".into(),
            "root".into(),
            Vec::new(),
        )
        .await
        .expect("revoke");
    // A control plane without the credential's kind (a downgrade).
    let (tx, _) = tokio::sync::mpsc::unbounded_channel();
    let without = Shared::new(
        f.s.config.clone(),
        f.s.store.clone(),
        f.s.keys.clone(),
        f.s.master.clone(),
        f.clock.clone(),
        Engine::new(&f.s.config.actions).expect("engine"),
        tx,
    );
    assert_eq!(process(&without, &mut Retries::default()).await, 0);
    let p =
        f.s.store
            .pending_end(&id)
            .expect("read")
            .expect("still queued");
    assert_eq!(p.attempts, 1);
    assert!(
        p.last_error
            .contains("credential rec is of kind recorder, which this control plane does not have"),
        "{p:?}"
    );
    let failed = f.s.store.lease_events(&id).expect("events");
    assert_eq!(failed.last().map(|e| e.kind.as_str()), Some("end-failed"));
    // With the kind back: ended at the next attempt.
    assert_eq!(process(&f.s, &mut Retries::default()).await, 1);
    assert_eq!(f.recorder.ended(), std::slice::from_ref(&id));
}

#[tokio::test]
async fn the_events_of_minting_are_written_with_the_lease() {
    let f = fixture().await;
    let id = f.lease("h1", "w/revoke", "rec").await;
    let events = f.s.store.lease_events(&id).expect("events");
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["issued", "recorder-set-up"]);
    let e = &events[1];
    assert_eq!(e.id, events[0].id + 1, "in the same write as the lease");
    assert_eq!(
        (
            e.lease.as_deref(),
            e.workload.as_deref(),
            e.credential.as_deref(),
            e.host.as_deref()
        ),
        (Some(id.as_str()), Some("w/revoke"), Some("rec"), Some("h1"))
    );
    assert_eq!(e.detail, serde_json::json!({"lease": id}));
    // A kind with nothing outside Leash has no such event.
    let jwt = f.lease("h1", "w/revoke", "api").await;
    let kinds: Vec<String> =
        f.s.store
            .lease_events(&jwt)
            .expect("events")
            .into_iter()
            .map(|e| e.kind)
            .collect();
    assert_eq!(kinds, ["issued"]);
}

#[tokio::test]
async fn a_lease_minted_but_not_written_is_ended_at_once() {
    let f = fixture().await;
    f.fail.store(1, Ordering::SeqCst);
    let err = f
        .issue("h1", ask("w/revoke", "rec"))
        .await
        .expect_err("the lease was not made durable");
    assert_eq!(err.reason(), Reason::Unavailable, "{err:?}");
    let ended = f.recorder.ended();
    assert_eq!(ended.len(), 1, "what minting set up was undone: {ended:?}");
    assert!(ended[0].starts_with("l-"), "{ended:?}");
    // A lease that was written is not ended.
    let _ = f.lease("h1", "w/revoke", "rec").await;
    assert_eq!(f.recorder.ended().len(), 1, "a written lease is not ended");
}

#[tokio::test]
async fn a_queued_lease_is_ended_at_once_not_on_a_poll() {
    let f = fixture().await;
    let s = Arc::new(f.s);
    let worker = tokio::spawn(super::ends::run(s.clone()));
    let mut took = Vec::new();
    for _ in 0..5 {
        let id = issue(
            &s,
            s.store.host("h1").expect("read").expect("h1"),
            ask("w/revoke", "rec"),
        )
        .await
        .expect("issued")
        .lease_id;
        s.store
            .revoke(
                RevocationTarget::Lease(id.clone()),
                "test".into(),
                "root".into(),
                Vec::new(),
            )
            .await
            .expect("revoke");
        let start = std::time::Instant::now();
        while !f.recorder.ended().contains(&id) {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(3),
                "not ended within 3 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        took.push(start.elapsed());
    }
    worker.abort();
    took.sort();
    // The worker's poll is 5 s: only the wake-up makes this fast.
    assert!(
        took[2] < std::time::Duration::from_millis(100),
        "median {:?} ({took:?})",
        took[2]
    );
}

#[tokio::test]
async fn leases_ended_together_are_ended_sixteen_at_a_time() {
    let f = fixture().await;
    f.recorder.end_ms.store(100, Ordering::SeqCst);
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(f.lease("h1", "w/revoke", "rec").await);
    }
    f.s.store
        .revoke(
            RevocationTarget::Workload("w/revoke".into()),
            "test".into(),
            "root".into(),
            Vec::new(),
        )
        .await
        .expect("revoke");
    let start = std::time::Instant::now();
    assert_eq!(process(&f.s, &mut Retries::default()).await, 40);
    let took = start.elapsed();
    assert_eq!(
        f.recorder.most_running.load(Ordering::SeqCst),
        super::ends::CONCURRENCY,
        "bounded, and not one after the other"
    );
    // One after the other would take 4 s; 16 at a time, three rounds of 100 ms.
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    let mut got = f.recorder.ended();
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
}

#[tokio::test]
async fn revoke_wait_is_done_only_once_the_end_steps_are() {
    use std::time::Duration;
    let f = fixture().await;
    let id = f.lease("h1", "w/revoke", "rec").await;
    let rev =
        f.s.store
            .revoke(
                RevocationTarget::Workload("w/revoke".into()),
                "test".into(),
                "root".into(),
                Vec::new(),
            )
            .await
            .expect("revoke");
    // h1 is not connected: past max_offline it has wiped by failing closed, so only the
    // end step is left to wait for.
    f.clock.advance_ms(600_000);
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    crate::revocation::wait(&f.s, rev.seq, Duration::from_millis(400), tx).await;
    let mut last = None;
    while let Ok(p) = rx.try_recv() {
        last = Some(p.expect("progress"));
    }
    let last = last.expect("a report");
    assert!(last.timed_out && !last.done, "{last:?}");
    assert_eq!(last.pending_hosts, Vec::<String>::new());
    assert_eq!((last.ends_total, last.ends_pending), (1, 1));
    assert_eq!(last.end_step, "undo");

    f.recorder.failures.store(1, Ordering::SeqCst);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<v1::RevocationProgress, Status>>(64);
    let drive = async {
        assert_eq!(process(&f.s, &mut Retries::default()).await, 0);
        let p = loop {
            let p = rx.recv().await.expect("open").expect("progress");
            if !p.end_errors.is_empty() {
                break p;
            }
        };
        assert!(!p.done, "{p:?}");
        assert_eq!((p.ends_total, p.ends_pending), (1, 1));
        assert_eq!(
            p.end_errors,
            [format!("{id}: the outside system did not answer")]
        );
        let start = std::time::Instant::now();
        assert_eq!(process(&f.s, &mut Retries::default()).await, 1);
        let p = loop {
            let p = rx.recv().await.expect("open").expect("progress");
            if p.done {
                break p;
            }
        };
        assert!(
            start.elapsed() < Duration::from_millis(200),
            "woken by the queue, not the tick: {:?}",
            start.elapsed()
        );
        assert_eq!((p.ends_total, p.ends_pending), (1, 0));
        assert!(p.end_errors.is_empty(), "{p:?}");
    };
    tokio::join!(
        crate::revocation::wait(&f.s, rev.seq, Duration::from_secs(10), tx),
        drive
    );
}

#[tokio::test]
async fn the_reconciler_asks_each_ends_outside_credential_and_records_what_it_undid() {
    use crate::kinds::KindEvent;
    let f = fixture().await;
    let id = f.lease("h1", "w/revoke", "rec").await;
    let undone = |n: u64| KindEvent {
        kind: "recorder-undone",
        detail: serde_json::json!({"n": n, "reconciled": true}),
    };
    *f.recorder.reconcile.lock().expect("lock") = Some(Ok(vec![
        (id.clone(), undone(1)),
        (String::new(), undone(2)),
    ]));
    let r = crate::reconcile::round(&f.s).await;
    assert_eq!(
        r,
        crate::reconcile::Round {
            credentials: 1,
            undone: 2,
            failed: 0
        }
    );
    assert_eq!(
        *f.recorder.reconciled.lock().expect("lock"),
        ["rec"],
        "only the kinds that end outside Leash are asked"
    );
    let on_lease = f.s.store.lease_events(&id).expect("events");
    let last = on_lease.last().expect("event");
    assert_eq!(last.kind, "recorder-undone");
    assert_eq!(last.actor.as_deref(), Some("reconciler"));
    assert_eq!(last.workload.as_deref(), Some("w/revoke"));
    let all = f.s.store.events(0, 1000).expect("events");
    assert!(
        all.iter().any(|e| e.kind == "recorder-undone"
            && e.lease.is_none()
            && e.credential.as_deref() == Some("rec")
            && e.detail["n"] == 2),
        "{all:?}"
    );
    // A failure is counted (and logged) and the next round asks again.
    *f.recorder.reconcile.lock().expect("lock") = Some(Err("database down".into()));
    let r = crate::reconcile::round(&f.s).await;
    assert_eq!((r.credentials, r.undone, r.failed), (1, 0, 1));
    let r = crate::reconcile::round(&f.s).await;
    assert_eq!((r.credentials, r.failed), (1, 0));
}

#[tokio::test]
async fn a_failed_flush_is_unavailable_and_audited_as_a_failure_not_a_denial() {
    let f = fixture().await;
    f.fail.store(1, Ordering::SeqCst);
    let err = f
        .issue("h1", ask("w/revoke", "api"))
        .await
        .expect_err("the lease was not made durable");
    assert!(
        matches!(err, IssueError::Store(StoreError::NotDurable(_))),
        "{err:?}"
    );
    assert_eq!(err.reason(), Reason::Unavailable);
    let status = Status::from(err);
    assert_eq!(Reason::of(&status), Reason::Unavailable, "{status:?}");
    let events = f.s.store.events(0, 1000).expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.kind == "issue-failed" && e.workload.as_deref() == Some("w/revoke")),
        "a failure event: {events:?}"
    );
    assert!(
        !events.iter().any(|e| e.kind == "denied"),
        "no denial: {events:?}"
    );
}

/// (what, host, workload, action, audience, ttl, Issue's reason or None if issued)
type Case<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    u32,
    Option<Reason>,
);

#[tokio::test]
async fn explain_and_issue_agree_on_a_table_of_cases() {
    let f = fixture().await;
    f.s.store
        .set_workload_disabled("w/disable", true, "root".into(), "test".into())
        .await
        .expect("disable");
    let workloads = f.s.store.workloads().expect("workloads");
    f.s.policy
        .install(
            1,
            "@id(\"short-reads\")\npermit(principal, action == Leash::Action::\"read\", resource)\nwhen { context.ttl_seconds <= 600 };\n\n@id(\"no-writes\")\nforbid(principal, action == Leash::Action::\"write\", resource);\n\n@id(\"admin-approval\")\n@approval(\"required\")\npermit(principal, action == Leash::Action::\"admin\", resource);\n",
            &workloads,
        )
        .expect("install");
    let cases: [Case<'_>; 10] = [
        ("allowed", "h1", "w/bare", "read", "", 300, None),
        (
            "forbidden by policy",
            "h1",
            "w/bare",
            "write",
            "",
            300,
            Some(Reason::Denied),
        ),
        (
            "needs approval",
            "h1",
            "w/bare",
            "admin",
            "",
            300,
            Some(Reason::Pending),
        ),
        (
            "no policy permits",
            "h1",
            "w/bare",
            "read",
            "",
            1200,
            Some(Reason::Denied),
        ),
        (
            "TTL above the maximum",
            "h1",
            "w/revoke",
            "read",
            "",
            9000,
            Some(Reason::Invalid),
        ),
        (
            "wrong host",
            "h2",
            "w/ci-only",
            "read",
            "",
            300,
            Some(Reason::Denied),
        ),
        ("right host", "h1", "w/ci-only", "read", "", 300, None),
        (
            "disabled workload",
            "h1",
            "w/disable",
            "read",
            "",
            300,
            Some(Reason::Denied),
        ),
        (
            "unknown audience",
            "h1",
            "w/revoke",
            "read",
            "https://other.example",
            300,
            Some(Reason::Invalid),
        ),
        (
            "unknown action",
            "h1",
            "w/revoke",
            "fly",
            "",
            300,
            Some(Reason::Invalid),
        ),
    ];
    for (what, on, w, action, audience, ttl, want) in cases {
        let r = v1::IssueRequest {
            action: action.into(),
            audience: audience.into(),
            ttl_seconds: ttl,
            ..ask(w, "api")
        };
        let issued = f.issue(on, r).await;
        assert_eq!(
            issued.as_ref().err().map(IssueError::reason),
            want,
            "{what}: Issue said {issued:?}"
        );
        let e = explain(
            &f.s,
            &v1::PolicyExplainRequest {
                workload: w.into(),
                credential: "api".into(),
                action: action.into(),
                audience: audience.into(),
                ttl_seconds: ttl,
                host: on.into(),
                ..Default::default()
            },
        );
        match e {
            Ok(e) => {
                assert_eq!(
                    e.decision == "allow",
                    issued.is_ok(),
                    "{what}: explain said {e:?}"
                );
                if let Some(Reason::Invalid | Reason::Denied) = want {
                    if !e.refusals.is_empty() {
                        let msg = issued
                            .as_ref()
                            .err()
                            .map(ToString::to_string)
                            .unwrap_or_default();
                        assert_eq!(e.refusals[0], msg, "{what}: the same words as Issue");
                    }
                }
            }
            // An unknown action is bad input to both.
            Err(err) => assert_eq!(Some(err.reason()), want, "{what}: explain failed: {err}"),
        }
    }
}

/// Store `value` as version `version` of secret `name`, sealed under `sealed_as`'s
/// associated data (its own, unless a test moves a value).
async fn put_secret(f: &Fixture, name: &str, version: u32, sealed_as: &str, value: &str) {
    use crate::model::{secret_aad, SecretVersion};
    use crate::store::{Older, SecretWrite};
    let def = Credential {
        name: name.into(),
        kind: "secret".into(),
        audiences: Vec::new(),
        actions: vec!["read".into()],
        format: "text".into(),
        current_version: version,
        owner: Some("team-a".into()),
        ..credential(name, "secret")
    };
    let sealed =
        f.s.master
            .seal(&secret_aad(sealed_as, version), value.as_bytes())
            .expect("seal");
    let v = SecretVersion {
        version,
        created_at: 0,
        created_by: "root".into(),
        size: value.len() as u32,
        fingerprint: crate::issuer::fingerprint(value),
        sealed,
    };
    f.s.store
        .put_secret(SecretWrite {
            def,
            expected: version - 1,
            version: v,
            older: Older::Keep,
            event: Event::new("secret-put"),
        })
        .await
        .expect("put secret");
}

#[tokio::test]
async fn a_secret_is_minted_from_its_current_version_and_a_moved_value_is_refused() {
    let f = fixture().await;
    f.s.store
        .put_workload(
            Workload {
                allow: vec!["sk".into(), "moved".into()],
                ..workload("w/secret", "team-a", &[])
            },
            Event::new("x"),
        )
        .await
        .expect("workload");
    f.s.relink();
    put_secret(&f, "sk", 1, "sk", "value-one").await;
    let r = f.issue("h1", ask("w/secret", "sk")).await.expect("issued");
    assert_eq!(
        (
            r.token.as_str(),
            r.kind.as_str(),
            r.version,
            r.format.as_str()
        ),
        ("value-one", "secret", 1, "text")
    );
    let lease = f.s.store.lease(&r.lease_id).expect("read").expect("lease");
    assert_eq!(lease.version, 1);
    assert_eq!(lease.fingerprint, crate::issuer::fingerprint("value-one"));
    put_secret(&f, "sk", 2, "sk", "value-two").await;
    let r = f.issue("h1", ask("w/secret", "sk")).await.expect("issued");
    assert_eq!((r.token.as_str(), r.version), ("value-two", 2));
    // A sealed value copied under another name does not open.
    put_secret(&f, "moved", 1, "sk", "value-one").await;
    let e = f
        .issue("h1", ask("w/secret", "moved"))
        .await
        .expect_err("moved");
    assert_eq!(e.reason(), Reason::Unavailable, "{e}");
    assert!(!e.to_string().contains("value-one"), "{e}");
    // An action the secret does not serve, an audience, and a disabled secret.
    let e = f
        .issue(
            "h1",
            v1::IssueRequest {
                action: "deploy".into(),
                ..ask("w/secret", "sk")
            },
        )
        .await
        .expect_err("action");
    assert_eq!(e.reason(), Reason::Denied);
    assert!(
        e.to_string().contains("serves only the actions read"),
        "{e}"
    );
    let e = f
        .issue(
            "h1",
            v1::IssueRequest {
                audience: "https://api.example".into(),
                ..ask("w/secret", "sk")
            },
        )
        .await
        .expect_err("audience");
    assert_eq!(e.reason(), Reason::Invalid, "{e}");
    f.s.store
        .set_secret_disabled("sk", true, "root".into(), "leaked".into())
        .await
        .expect("disable");
    let e = f
        .issue("h1", ask("w/secret", "sk"))
        .await
        .expect_err("disabled");
    assert_eq!(e.reason(), Reason::Denied);
    assert!(
        e.to_string().contains("credential \"sk\" is disabled"),
        "{e}"
    );
}

/// A jwt credential `multi` for three audiences.
async fn with_multi(f: &Fixture) {
    f.s.store
        .put_credential(
            Credential {
                audiences: vec!["https://a".into(), "https://b".into(), "https://c".into()],
                ..credential("multi", "jwt")
            },
            Event::new("x"),
        )
        .await
        .expect("multi");
    f.s.store
        .put_workload(
            Workload {
                allow: vec!["multi".into()],
                ..workload("w/multi", "team-a", &[])
            },
            Event::new("x"),
        )
        .await
        .expect("workload");
    f.s.relink();
}

fn several(audiences: &[&str]) -> v1::IssueRequest {
    v1::IssueRequest {
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
        ..ask("w/multi", "multi")
    }
}

#[tokio::test]
async fn several_audiences_make_one_token_with_an_aud_array_recorded_on_the_lease() {
    let f = fixture().await;
    with_multi(&f).await;
    let r = f
        .issue("h1", several(&["https://b", "https://a", "https://b"]))
        .await
        .expect("issued");
    assert_eq!(
        r.audiences,
        ["https://b", "https://a"],
        "in order, no repeats"
    );
    let claims = crate::issuer::verify(&f.s.keys, &r.token).expect("verifies");
    assert_eq!(
        serde_json::to_value(&claims.aud).expect("json"),
        serde_json::json!(["https://b", "https://a"])
    );
    let lease = f.s.store.lease(&r.lease_id).expect("read").expect("lease");
    assert_eq!(lease.audiences, ["https://b", "https://a"]);
    assert_eq!(lease.audience, "https://b");
    assert_eq!(
        crate::wire::lease_proto(&lease).audience,
        "https://b https://a"
    );
    // One audience asked as `audiences` is a plain `aud` string.
    let one = f
        .issue("h1", several(&["https://c"]))
        .await
        .expect("issued");
    let claims = crate::issuer::verify(&f.s.keys, &one.token).expect("verifies");
    assert_eq!(
        serde_json::to_value(&claims.aud).expect("json"),
        serde_json::json!("https://c")
    );
}

#[tokio::test]
async fn several_audiences_are_refused_by_name_by_kind_and_with_audience() {
    let f = fixture().await;
    with_multi(&f).await;
    let e = f
        .issue("h1", several(&["https://a", "https://evil"]))
        .await
        .expect_err("not listed");
    assert_eq!(e.reason(), Reason::Invalid);
    assert!(e.to_string().contains("https://evil"), "{e}");
    let e = f
        .issue(
            "h1",
            v1::IssueRequest {
                audience: "https://a".into(),
                ..several(&["https://b"])
            },
        )
        .await
        .expect_err("both");
    assert_eq!(e.reason(), Reason::Invalid);
    // The recorder kind takes one audience at most.
    let e = f
        .issue(
            "h1",
            v1::IssueRequest {
                audiences: vec!["https://api.example".into(), "https://b".into()],
                ..ask("w/revoke", "rec")
            },
        )
        .await
        .expect_err("kind");
    assert_eq!(e.reason(), Reason::Invalid);
    assert!(e.to_string().contains("one audience"), "{e}");
}

#[tokio::test]
async fn policy_decides_each_audience_when_issued_and_after_policy_apply() {
    let f = fixture().await;
    with_multi(&f).await;
    let kept = f
        .issue("h1", several(&["https://a", "https://c"]))
        .await
        .expect("issued")
        .lease_id;
    let workloads = f.s.store.workloads().expect("workloads");
    f.s.policy
        .install(
            1,
            "@id(\"not-b\")\nforbid(principal, action, resource) when { context.audience == \"https://b\" };\n",
            &workloads,
        )
        .expect("install");
    let e = f
        .issue("h1", several(&["https://a", "https://b"]))
        .await
        .expect_err("b is forbidden");
    assert_eq!(e.reason(), Reason::Denied);
    assert!(e.to_string().contains("not-b"), "{e}");
    // A lease for a and b issued before the policy is no longer permitted; one for a
    // and c is.
    f.s.policy.install(2, "", &workloads).expect("no policy");
    let both = f
        .issue("h1", several(&["https://a", "https://b"]))
        .await
        .expect("issued")
        .lease_id;
    f.s.policy
        .install(
            3,
            "@id(\"not-b\")\nforbid(principal, action, resource) when { context.audience == \"https://b\" };\n",
            &workloads,
        )
        .expect("install");
    let gone = no_longer_permitted(&f.s, &workloads).expect("re-evaluate");
    assert!(gone.contains(&both), "{gone:?}");
    assert!(!gone.contains(&kept), "{gone:?}");
}

#[tokio::test]
async fn an_x509_svid_lives_as_long_as_its_workload_says_within_max_ttl() {
    let f = fixture().await;
    f.s.store
        .put_credential(
            Credential {
                audiences: Vec::new(),
                ..credential("svid", "x509")
            },
            Event::new("x"),
        )
        .await
        .expect("svid");
    for (w, svid_ttl) in [
        ("w/svid-default", 0),
        ("w/svid-30m", 1800),
        ("w/svid-long", 100_000),
    ] {
        f.s.store
            .put_workload(
                Workload {
                    allow: vec!["svid".into()],
                    x509_svid_ttl: svid_ttl,
                    ..workload(w, "team-a", &[])
                },
                Event::new("x"),
            )
            .await
            .expect("workload");
    }
    f.s.relink();
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .der()
        .to_vec();
    // credential(): default ttl 3600, max 7200.
    for (w, want) in [
        ("w/svid-default", 3600),
        ("w/svid-30m", 1800),
        ("w/svid-long", 7200),
    ] {
        let r = f
            .issue(
                "h1",
                v1::IssueRequest {
                    csr_der: csr.clone(),
                    ..ask(w, "svid")
                },
            )
            .await
            .expect("issued");
        assert!(r.token.is_empty());
        assert_eq!(r.certificate_chain_der.len(), 1);
        assert_eq!(r.expires_at_unix - r.issued_at_unix, want, "{w}");
    }
    let e = f
        .issue("h1", ask("w/svid-30m", "svid"))
        .await
        .expect_err("no csr");
    assert_eq!(e.reason(), Reason::Invalid);
}
