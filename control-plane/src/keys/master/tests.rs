//! The sealed format, the start-up check and rotation, against a real store.

use std::sync::Arc;

use super::*;
use crate::keys::Keys;
use crate::store::SledStore;

fn store(dir: &Path) -> Arc<SledStore> {
    SledStore::open(dir, crate::clock::Clock::default()).expect("store")
}

/// A data dir with a store, a master key and the CA and JWT keys sealed in it.
async fn fresh() -> (tempfile::TempDir, Arc<SledStore>, MasterKey, Keys) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let master = MasterKey::load_checked(dir.path(), &*s)
        .await
        .expect("master");
    let keys = Keys::load_or_create(&*s, &master, "td")
        .await
        .expect("keys");
    (dir, s, master, keys)
}

fn key_file(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok()
}

#[test]
fn a_sealed_record_carries_the_key_id_and_binds_name_and_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = MasterKey::load_or_create(dir.path()).expect("master");
    let sealed = m.seal("secret/a/1", b"value").expect("seal");
    assert_eq!(sealed[0], FORMAT);
    assert_eq!(sealed_key_id(&sealed), Some(m.id()));
    assert_eq!(m.id().to_string().len(), 16);
    assert_eq!(&*m.open("secret/a/1", &sealed).expect("open"), b"value");
    assert!(m.open("secret/a/2", &sealed).is_err(), "the name is bound");
    let mut other_id = sealed.clone();
    other_id[1] ^= 1;
    let e = m
        .open("secret/a/1", &other_id)
        .expect_err("another key's id");
    assert!(matches!(e, KeyError::WrongKey { .. }), "{e}");
    let mut flipped = sealed.clone();
    *flipped.last_mut().expect("bytes") ^= 1;
    assert!(
        m.open("secret/a/1", &flipped).is_err(),
        "tampering is caught"
    );
}

#[test]
fn a_record_from_before_key_ids_still_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = MasterKey::load_or_create(dir.path()).expect("master");
    let legacy = legacy_seal(&m, "ca-key", b"old bytes");
    assert_eq!(&*m.open("ca-key", &legacy).expect("open"), b"old bytes");
    assert!(m.open("jwt-key-1", &legacy).is_err());
}

/// Seal as the control plane did before key ids: `nonce || ciphertext`, name as AAD.
fn legacy_seal(m: &MasterKey, name: &str, plain: &[u8]) -> Vec<u8> {
    let ring = m.ring();
    // A nonce whose first byte is the format byte: the hardest case to tell apart.
    let nonce = [FORMAT, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7];
    let mut buf = plain.to_vec();
    ring.current
        .aead
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(name.as_bytes()),
            &mut buf,
        )
        .expect("seal");
    [nonce.as_slice(), &buf].concat()
}

#[tokio::test]
async fn rotation_rewraps_every_sealed_record_and_the_old_key_is_refused_after() {
    let (dir, s, m, k1) = fresh().await;
    let old_file = key_file(dir.path(), MASTER_KEY_FILE).expect("key file");
    let old_id = m.id();
    let before = s.sealed_records().expect("records");
    assert_eq!(before.len(), 2, "ca-key and jwt-key-1: {before:?}");
    let r = m.rotate(&*s, "root").await.expect("rotate");
    assert_eq!(r.old, old_id);
    assert_eq!(r.new, m.id());
    assert_ne!(r.old, r.new);
    assert_eq!(r.records, 2);
    assert!(key_file(dir.path(), NEW_KEY_FILE).is_none());
    assert_ne!(
        key_file(dir.path(), MASTER_KEY_FILE),
        Some(old_file.clone())
    );
    for rec in s.sealed_records().expect("records") {
        assert_eq!(sealed_key_id(&rec.sealed), Some(r.new), "{}", rec.name);
    }
    // The same keys come back under the new master key, in process and at a restart.
    let k2 = Keys::load_or_create(&*s, &m, "td").await.expect("keys");
    assert_eq!(k1.ca_pin(), k2.ca_pin());
    assert_eq!(k1.signing_key().kid, k2.signing_key().kid);
    let again = MasterKey::load_checked(dir.path(), &*s)
        .await
        .expect("restart");
    assert_eq!(again.id(), r.new);
    let event = s.events(0, 100).expect("events");
    let e = event
        .iter()
        .find(|e| e.kind == "master-key-rotated")
        .expect("audited");
    assert_eq!(e.detail["old_key_id"], old_id.to_string());
    assert_eq!(e.detail["new_key_id"], r.new.to_string());

    // Back to the old key file: refused, naming both ids.
    std::fs::write(dir.path().join(MASTER_KEY_FILE), &old_file).expect("write");
    let e = MasterKey::load_checked(dir.path(), &*s)
        .await
        .expect_err("old key")
        .to_string();
    assert!(
        e.contains(&format!("sealed with master key {}", r.new)),
        "{e}"
    );
    assert!(e.contains(&format!("the loaded key is {old_id}")), "{e}");
}

#[tokio::test]
async fn records_from_before_key_ids_get_the_header_at_the_next_rotation() {
    let (dir, s, m, _k) = fresh().await;
    let ca = s.blob("ca-key").expect("blob").expect("ca");
    let plain = m.open("ca-key", &ca).expect("open");
    s.put_blob("ca-key", legacy_seal(&m, "ca-key", &plain))
        .await
        .expect("put");
    // A legacy record starts fine with its key.
    MasterKey::load_checked(dir.path(), &*s)
        .await
        .expect("start");
    m.rotate(&*s, "root").await.expect("rotate");
    let ca = s.blob("ca-key").expect("blob").expect("ca");
    assert_eq!(sealed_key_id(&ca), Some(m.id()));
    assert_eq!(*m.open("ca-key", &ca).expect("open"), *plain);
}

#[tokio::test]
async fn a_rotation_cut_before_its_commit_keeps_the_old_key() {
    let (dir, s, m, _k) = fresh().await;
    let old = key_file(dir.path(), MASTER_KEY_FILE).expect("key");
    // As left by a kill after `master.key.new` was written, before the re-wrap.
    let (_new, bytes) = Key::generate().expect("key");
    write_key_file(&dir.path().join(NEW_KEY_FILE), &bytes).expect("write");
    let again = MasterKey::load_checked(dir.path(), &*s)
        .await
        .expect("start");
    assert_eq!(again.id(), m.id());
    assert!(key_file(dir.path(), NEW_KEY_FILE).is_none(), "removed");
    assert_eq!(key_file(dir.path(), MASTER_KEY_FILE), Some(old));
    // A torn `master.key.new` is no better, and is removed too.
    std::fs::write(dir.path().join(NEW_KEY_FILE), "0123").expect("write");
    let again = MasterKey::load_checked(dir.path(), &*s)
        .await
        .expect("start");
    assert_eq!(again.id(), m.id());
    assert!(
        !dir.path().join(NEW_KEY_FILE).exists(),
        "a torn master.key.new is removed"
    );
}

#[tokio::test]
async fn a_rotation_cut_after_its_commit_is_finished_at_start() {
    let (dir, s, m, k1) = fresh().await;
    // As left by a kill after the re-wrap committed, before the rename; plus one record
    // still under the old key (sealed by a write that committed just after).
    let (new, bytes) = Key::generate().expect("key");
    let new = Arc::new(new);
    write_key_file(&dir.path().join(NEW_KEY_FILE), &bytes).expect("write");
    let n = s
        .rewrap_sealed(rewrap_to(m.ring(), new.clone()), None)
        .await
        .expect("rewrap");
    assert_eq!(n, 2);
    s.put_blob("jwt-key-9", m.seal("jwt-key-9", b"late").expect("seal"))
        .await
        .expect("put");
    let again = MasterKey::load_checked(dir.path(), &*s)
        .await
        .expect("start");
    assert_eq!(again.id(), new.id);
    assert!(key_file(dir.path(), NEW_KEY_FILE).is_none(), "renamed");
    assert_eq!(
        key_file(dir.path(), MASTER_KEY_FILE),
        Some(hex::encode(&*bytes))
    );
    for rec in s.sealed_records().expect("records") {
        assert_eq!(sealed_key_id(&rec.sealed), Some(new.id), "{}", rec.name);
    }
    let k2 = Keys::load_or_create(&*s, &again, "td").await.expect("keys");
    assert_eq!(k1.ca_pin(), k2.ca_pin());
}

#[tokio::test]
async fn a_wrong_or_missing_key_is_refused_at_start() {
    let (dir, s, m, _k) = fresh().await;
    let (other, bytes) = Key::generate().expect("key");
    std::fs::write(dir.path().join(MASTER_KEY_FILE), hex::encode(&*bytes)).expect("write");
    let e = MasterKey::load_checked(dir.path(), &*s)
        .await
        .expect_err("wrong key");
    assert!(
        matches!(e, KeyError::WrongKey { sealed_with, loaded } if sealed_with == m.id() && loaded == other.id),
        "{e}"
    );
    std::fs::remove_file(dir.path().join(MASTER_KEY_FILE)).expect("rm");
    let e = MasterKey::load_checked(dir.path(), &*s)
        .await
        .expect_err("missing key")
        .to_string();
    assert!(
        e.contains(&m.id().to_string()) && e.contains("restore"),
        "{e}"
    );
    assert!(
        key_file(dir.path(), MASTER_KEY_FILE).is_none(),
        "no new key is made for sealed data"
    );
}

#[tokio::test]
async fn a_failing_rewrap_changes_nothing() {
    let (_dir, s, _m, _k) = fresh().await;
    let before = s.sealed_records().expect("records");
    let mut seen = 0;
    let e = s
        .rewrap_sealed(
            Box::new(move |_, _| {
                seen += 1;
                if seen == 2 {
                    Err("boom".into())
                } else {
                    Ok(Some(b"replaced".to_vec()))
                }
            }),
            None,
        )
        .await
        .expect_err("fails");
    assert!(e.to_string().contains("nothing was changed"), "{e}");
    let after = s.sealed_records().expect("records");
    assert_eq!(
        before.iter().map(|r| &r.sealed).collect::<Vec<_>>(),
        after.iter().map(|r| &r.sealed).collect::<Vec<_>>()
    );
}
