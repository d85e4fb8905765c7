//! Unit tests of the audit chain in the store: every event linked as it is written,
//! the head durable across a reopen, and a retention pass leaving its anchor.

use super::*;
use crate::audit_chain::{event_hash, ZERO_HASH};
use crate::clock::Clock;

async fn append(s: &SledStore, n: usize) {
    let evs = (0..n)
        .map(|i| Event::new("x").actor(format!("a{i}")))
        .collect();
    s.append_events(evs).await.expect("append");
}

fn linked(s: &SledStore) -> Vec<Event> {
    let evs = s.events_after(0, usize::MAX).expect("events");
    let mut prev = ZERO_HASH.to_string();
    for e in &evs {
        assert_eq!(e.prev_hash.as_deref(), Some(prev.as_str()), "{e:?}");
        assert_eq!(e.hash.as_deref(), Some(event_hash(e).as_str()), "{e:?}");
        prev = e.hash.clone().expect("hash");
    }
    evs
}

#[tokio::test]
async fn events_are_linked_and_the_head_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = SledStore::open(dir.path(), Clock::default()).expect("open");
        append(&s, 3).await;
        append(&s, 2).await;
        let c = s.audit_chain().expect("chain");
        assert_eq!(c.genesis, 1);
        assert_eq!(c.head.id, 5);
        assert_eq!(
            Some(&c.head.hash),
            linked(&s).last().and_then(|e| e.hash.as_ref())
        );
    }
    let mut s = SledStore::open(dir.path(), Clock::default());
    for _ in 0..100 {
        if s.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        s = SledStore::open(dir.path(), Clock::default());
    }
    let s = s.expect("reopen");
    append(&s, 2).await;
    assert_eq!(linked(&s).len(), 7, "the chain goes on across the reopen");
    assert_eq!(s.audit_chain().expect("chain").genesis, 1);
}

#[tokio::test]
async fn retention_leaves_the_last_forgotten_event_as_the_anchor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Clock::default();
    let s = SledStore::open(dir.path(), clock.clone()).expect("open");
    append(&s, 4).await;
    let forgotten = s.events_after(0, usize::MAX).expect("events");
    let cut = Cutoff {
        leases_before: 0,
        events_before_ms: clock.now_ms() + 1,
    };
    let p = s.prune(cut, 3).await.expect("prune");
    assert_eq!(p.events, 3);
    let c = s.audit_chain().expect("chain");
    let anchor = c.anchor.expect("an anchor");
    assert_eq!(anchor.id, 3);
    assert_eq!(Some(&anchor.hash), forgotten[2].hash.as_ref());
    let kept = s.events_after(0, usize::MAX).expect("events");
    assert_eq!(kept[0].id, 4);
    assert_eq!(kept[0].prev_hash.as_ref(), Some(&anchor.hash));
}
