//! Unit tests of `audit_verify`: an export made here, then tampered with in each way.

use base64::Engine as _;
use ring::signature::KeyPair as _;

use super::*;
use crate::audit_chain::{chain_line, event_hash, key_id, key_line, ChainState, Link};
use crate::model::Event;

fn signed(
    kp: &ring::signature::Ed25519KeyPair,
    id: u64,
    hash: &str,
    kind: CheckpointKind,
) -> Checkpoint {
    let kid = key_id(kp.public_key().as_ref());
    let msg = Checkpoint::signed_bytes(id, hash, 5, kind, &kid);
    Checkpoint {
        id,
        hash: hash.into(),
        at_ms: 5,
        kind,
        key_id: kid,
        signature: base64::engine::general_purpose::STANDARD.encode(kp.sign(&msg).as_ref()),
    }
}

/// Events 1..=n chained from genesis 1, a checkpoint at `n - 1`; as export lines.
fn export(n: u64) -> Vec<String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
    let kp = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
    let mut prev = ZERO_HASH.to_string();
    let mut events = Vec::new();
    for id in 1..=n {
        let mut e = Event::new("issued").actor(format!("host-{id}"));
        e.id = id;
        e.at_ms = id as i64;
        e.prev_hash = Some(prev.clone());
        let h = event_hash(&e);
        e.hash = Some(h.clone());
        prev = h;
        events.push(e);
    }
    let state = ChainState {
        genesis: 1,
        head: Link { id: n, hash: prev },
        anchor: None,
    };
    let mut lines = vec![
        key_line(kp.public_key().as_ref()).to_string(),
        chain_line(&state, 0).to_string(),
    ];
    for e in &events {
        lines.push(serde_json::to_string(e).expect("json"));
        if e.id == n - 1 {
            let cp = signed(
                &kp,
                e.id,
                e.hash.as_deref().unwrap_or_default(),
                CheckpointKind::Periodic,
            );
            lines.push(cp.line().to_string());
        }
    }
    lines
}

fn run(lines: &[String]) -> Result<Verified, Tampered> {
    verify(lines)
}

#[test]
fn an_untouched_export_verifies() {
    let v = run(&export(5)).expect("verifies");
    assert_eq!(v.range, Some((1, 5)));
    assert_eq!(v.checkpoints, 1);
    assert_eq!(v.last_checkpoint, Some((4, 5)));
    assert_eq!(v.start, "genesis");
    assert_eq!(v.keys.len(), 1);
}

#[test]
fn a_key_line_whose_id_is_not_its_hash_is_refused() {
    let mut l = export(5);
    let mut v: Value = serde_json::from_str(&l[0]).expect("json");
    v["key_id"] = "0123456789abcdef".into();
    l[0] = v.to_string();
    let t = run(&l).expect_err("refused");
    assert_eq!(t.line, 1, "{t}");
}

#[test]
fn an_edited_event_is_named() {
    let mut l = export(5);
    l[4] = l[4].replace("host-3", "host-9");
    let t = run(&l).expect_err("tampered");
    assert_eq!((t.event, t.line), (Some(3), 5), "{t}");
    assert!(t.what.contains("edited"), "{t}");
}

#[test]
fn a_deleted_event_is_named() {
    let mut l = export(5);
    l.remove(4);
    let t = run(&l).expect_err("tampered");
    assert_eq!(t.event, Some(4), "{t}");
    assert!(t.what.contains("missing"), "{t}");
}

#[test]
fn a_reordered_pair_is_named() {
    let mut l = export(5);
    l.swap(3, 4);
    let t = run(&l).expect_err("tampered");
    assert_eq!((t.event, t.line), (Some(3), 4), "{t}");
}

#[test]
fn an_inserted_event_is_named_even_with_a_good_hash() {
    let mut l = export(5);
    // A forged event 3, hashed and linked to event 2; the rest renumbered after it.
    let two: Event = serde_json::from_str(&l[3]).expect("event");
    let mut forged = Event::new("issued").actor("intruder");
    forged.id = 3;
    forged.prev_hash = two.hash.clone();
    forged.hash = Some(event_hash(&forged));
    l.insert(4, serde_json::to_string(&forged).expect("json"));
    let t = run(&l).expect_err("tampered");
    // The forged line itself verifies; the event after it, the original 3, does not.
    assert_eq!(t.line, 6, "{t}");
}

#[test]
fn a_truncated_tail_is_found() {
    let mut l = export(5);
    l.truncate(l.len() - 1); // event 5
    let t = run(&l).expect_err("head says 5");
    assert!(t.what.contains("truncated"), "{t}");
    // Without the chain line, the checkpoint at 4 still catches losing 4 and 5.
    let mut l = export(5);
    l.remove(1);
    let cp = l
        .iter()
        .position(|x| x.contains(CHECKPOINT_LINE))
        .expect("checkpoint");
    let cp_line = l.remove(cp);
    l.truncate(l.len() - 2);
    l.push(cp_line);
    let t = run(&l).expect_err("checkpoint says 4");
    assert_eq!(t.event, Some(4), "{t}");
    assert!(t.what.contains("truncated"), "{t}");
}

#[test]
fn a_forged_checkpoint_signature_is_found() {
    let mut l = export(5);
    let cp = l
        .iter()
        .position(|x| x.contains(CHECKPOINT_LINE))
        .expect("checkpoint");
    let mut v: Value = serde_json::from_str(&l[cp]).expect("json");
    v["at_ms"] = 6.into();
    l[cp] = v.to_string();
    let t = run(&l).expect_err("bad signature");
    assert!(t.what.contains("signature"), "{t}");
}
