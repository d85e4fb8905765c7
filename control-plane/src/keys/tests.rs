//! Tests of key loading, signing and rotation (keys.rs, keys/*.rs).

use super::*;
use crate::store::SledStore;
use rcgen::CertificateParams;

/// A fresh store and master key in a temp dir, and the keys created in them.
async fn fresh(td: &str) -> (tempfile::TempDir, Arc<SledStore>, MasterKey, Keys) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path(), crate::clock::Clock::default()).expect("store");
    let master = MasterKey::load_or_create(dir.path()).expect("master");
    let keys = Keys::load_or_create(&*store, &master, td)
        .await
        .expect("keys");
    (dir, store, master, keys)
}

#[tokio::test]
async fn keys_persist_encrypted_and_reload() {
    let (dir, store, master, k1) = fresh("td.example").await;
    let k2 = Keys::load_or_create(&*store, &master, "td.example")
        .await
        .expect("keys again");
    assert_eq!(k1.ca_pin(), k2.ca_pin());
    assert_eq!(k1.signing_key().kid, k2.signing_key().kid);
    // The stored CA key is not the plain PKCS#8.
    let sealed = store.blob("ca-key").expect("blob").expect("present");
    assert!(
        master.open("jwt-key-1", &sealed).is_err(),
        "AAD binds the name"
    );
    let mode = std::fs::metadata(dir.path().join("master.key")).expect("file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    let jwks = k1.jwks();
    assert_eq!(
        jwks["keys"][0]["kid"],
        serde_json::json!(k1.signing_key().kid)
    );
}

#[tokio::test]
async fn host_cert_has_our_names_not_the_csr_ones() {
    let (_dir, _store, _master, k) = fresh("td").await;
    let host_key = KeyPair::generate().expect("key");
    let csr = CertificateParams::new(vec!["evil.example".to_string()])
        .expect("params")
        .serialize_request(&host_key)
        .expect("csr");
    let (der, serial, _) = k
        .sign_host_cert(csr.der(), "runner-1", std::time::Duration::from_secs(3600))
        .expect("signed");
    assert_eq!(cert_serial(&der).as_deref(), Some(serial.as_str()));
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
    let san = format!("{:?}", cert.subject_alternative_name().expect("ext"));
    assert!(san.contains("spiffe://td/leash/host/runner-1"), "{san}");
    assert!(!san.contains("evil.example"), "{san}");
    assert!(k
        .sign_host_cert(b"garbage", "x", std::time::Duration::from_secs(60))
        .is_err());
}

#[tokio::test]
async fn a_lifetime_past_year_9999_is_an_error_not_a_panic() {
    let (_dir, _store, _master, k) = fresh("td").await;
    let host_key = KeyPair::generate().expect("key");
    let csr = CertificateParams::new(Vec::new())
        .expect("params")
        .serialize_request(&host_key)
        .expect("csr");
    for secs in [99_999_999 * 86_400, u64::MAX] {
        let e = k
            .sign_host_cert(csr.der(), "h", std::time::Duration::from_secs(secs))
            .expect_err("out of range");
        assert!(matches!(e, KeyError::Lifetime(s) if s == secs), "{e}");
    }
}

#[test]
fn a_master_key_readable_by_others_is_refused_unless_accepted() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    // No file yet: it will be created 0600.
    assert!(MasterKey::check_file_mode(dir.path(), false)
        .expect("missing is fine")
        .is_none());
    let _master = MasterKey::load_or_create(dir.path()).expect("master");
    let path = dir.path().join("master.key");
    assert!(MasterKey::check_file_mode(dir.path(), false)
        .expect("0600 is fine")
        .is_none());
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let e = MasterKey::check_file_mode(dir.path(), false)
            .expect_err("readable")
            .to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains(&format!("{mode:04o}")), "{e}");
        assert!(e.contains("chmod 600"), "{e}");
        let w = MasterKey::check_file_mode(dir.path(), true)
            .expect("accepted")
            .expect("with a warning");
        assert!(w.contains("accept_readable_master_key"), "{w}");
    }
}

const TIMING: Timing = Timing {
    publish_ahead: 600,
    host_cert_ttl: 3600,
    shared: false,
};

fn states(k: &Keys, kind: KeyKind) -> Vec<(String, KeyState)> {
    k.list()
        .into_iter()
        .filter(|r| r.kind == kind)
        .map(|r| (r.id, r.state))
        .collect()
}

fn jwks_kids(k: &Keys) -> Vec<String> {
    k.jwks()["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|j| j["kid"].as_str().expect("kid").to_string())
        .collect()
}

fn key_events(store: &SledStore) -> Vec<(String, serde_json::Value)> {
    store
        .events(0, 1000)
        .expect("events")
        .into_iter()
        .filter(|e| e.kind.starts_with("key-"))
        .map(|e| (e.kind, e.detail))
        .collect()
}

#[tokio::test]
async fn a_jwt_key_is_published_then_signs_then_retires_once_its_tokens_expired() {
    let (_dir, store, master, k) = fresh("td").await;
    let t0 = k.list()[0].created + 10;
    let old = k.signing_key().kid.clone();
    // A token the old key signed, valid until t0 + 900.
    k.signing_key().record_expiry(t0 + 900);
    let next = k
        .rotate(KeyKind::Jwt, "alice", &*store, &master, t0, TIMING)
        .await
        .expect("rotate");
    assert_eq!(next.state, KeyState::Next);
    assert_eq!(next.activates_at, t0 + 600);
    assert_eq!(jwks_kids(&k), vec![old.clone(), next.id.clone()]);
    assert_eq!(k.signing_key().kid, old, "a next key does not sign yet");
    let e = k
        .rotate(KeyKind::Jwt, "alice", &*store, &master, t0 + 1, TIMING)
        .await
        .expect_err("one next at a time");
    assert!(
        matches!(e, KeyError::RotationPending { ref id, .. } if *id == next.id),
        "{e}"
    );

    assert!(!k
        .advance(&*store, &master, t0 + 599, TIMING)
        .await
        .expect("early"));
    assert!(k
        .advance(&*store, &master, t0 + 600, TIMING)
        .await
        .expect("due"));
    assert_eq!(k.signing_key().kid, next.id);
    assert_eq!(
        states(&k, KeyKind::Jwt),
        vec![
            (old.clone(), KeyState::Retiring),
            (next.id.clone(), KeyState::Active)
        ]
    );
    let rec = k.list().into_iter().find(|r| r.id == old).expect("old");
    assert_eq!(rec.retiring_since, t0 + 600);
    // Loaded active at start: whatever it signed before may live as long as any
    // credential or host certificate (here host_cert_ttl, the larger), counted from load.
    assert!(rec.retires_at >= t0 + 900, "{rec:?}");
    assert_eq!(jwks_kids(&k), vec![old.clone(), next.id.clone()]);

    assert!(k
        .advance(&*store, &master, rec.retires_at, TIMING)
        .await
        .expect("retire"));
    assert_eq!(jwks_kids(&k), vec![next.id.clone()]);
    assert_eq!(
        states(&k, KeyKind::Jwt)[0],
        (old.clone(), KeyState::Retired)
    );
    // The private key is erased; the records survive a reload.
    assert!(store.blob("jwt-key-1").expect("blob").is_none());
    let again = Keys::load(&*store, &master, "td", rec.retires_at + 1)
        .await
        .expect("reload");
    assert_eq!(again.list(), k.list());
    assert_eq!(again.signing_key().kid, next.id);
    let events: Vec<String> = key_events(&store).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        events,
        [
            "key-published",
            "key-activated",
            "key-retiring",
            "key-retired"
        ]
    );
    assert_eq!(
        key_events(&store)[0].1,
        serde_json::json!({ "kind": "jwt", "id": next.id })
    );
}

#[tokio::test]
async fn a_key_made_in_this_process_retires_when_its_last_token_expires() {
    let (_dir, store, master, k) = fresh("td").await;
    let t0 = k.list()[0].created + 10;
    let b = k
        .rotate(KeyKind::Jwt, "a", &*store, &master, t0, TIMING)
        .await
        .expect("b");
    k.advance(&*store, &master, t0 + 600, TIMING)
        .await
        .expect("b active");
    let c = k
        .rotate(KeyKind::Jwt, "a", &*store, &master, t0 + 700, TIMING)
        .await
        .expect("c");
    // b signed one token, valid until t0 + 2000.
    k.signing_key().record_expiry(t0 + 2000);
    k.advance(&*store, &master, t0 + 1300, TIMING)
        .await
        .expect("c active");
    let rb = k.list().into_iter().find(|r| r.id == b.id).expect("b");
    assert_eq!(rb.state, KeyState::Retiring);
    assert_eq!(rb.retires_at, t0 + 2000, "exactly its last token's expiry");
    k.advance(&*store, &master, t0 + 2000, TIMING)
        .await
        .expect("b retired");
    assert_eq!(jwks_kids(&k).last(), Some(&c.id));
    assert!(!jwks_kids(&k).contains(&b.id));
}

#[tokio::test]
async fn a_ca_rotation_keeps_serving_under_the_old_ca_until_it_retires() {
    let (_dir, store, master, k) = fresh("td").await;
    let t0 = k.list()[0].created + 10;
    let old = k.serving_ca();
    let host_key = KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(Vec::new())
        .expect("params")
        .serialize_request(&host_key)
        .expect("csr");
    let next = k
        .rotate(KeyKind::Ca, "a", &*store, &master, t0, TIMING)
        .await
        .expect("rotate");
    assert_eq!(k.bundle_ders().len(), 2, "published at once");
    k.advance(&*store, &master, t0 + 600, TIMING)
        .await
        .expect("active");
    assert_eq!(k.serving_ca().id, old.id, "still serving under the old CA");
    assert_eq!(k.ca_pin(), old.pin);
    let (der, _, _) = k
        .sign_host_cert(csr.der(), "h", std::time::Duration::from_secs(3600))
        .expect("signed");
    // The host certificate chains to the new CA, not the old one.
    let verifies = |ca: &[u8]| {
        let (_, ca) = x509_parser::parse_x509_certificate(ca).expect("ca");
        let (_, leaf) = x509_parser::parse_x509_certificate(&der).expect("leaf");
        leaf.issuer() == ca.subject()
            && leaf
                .verify_signature(Some(&ca.tbs_certificate.subject_pki))
                .is_ok()
    };
    let bundle = k.bundle_ders();
    assert!(verifies(&bundle[1]), "signed by the new CA");
    assert!(!verifies(&bundle[0]), "not by the old one");
    let old_rec = k.list().into_iter().find(|r| r.id == old.id).expect("old");
    k.advance(&*store, &master, old_rec.retires_at, TIMING)
        .await
        .expect("retired");
    assert_eq!(k.serving_ca().id, next.id, "serving under the new CA");
    assert_eq!(k.bundle_ders().len(), 1);
    assert!(k.is_published_ca_pin(&k.ca_pin()));
    assert!(!k.is_published_ca_pin(&old.pin));
}

#[tokio::test]
async fn a_rotation_cut_short_leaves_no_key_behind_and_master_rotation_rewraps_new_keys() {
    let (dir, store, master, k) = fresh("td").await;
    let t0 = k.list()[0].created + 10;
    // A sealed key with no record, as a kill between the two writes would leave it.
    store
        .put_blob(
            "jwt-key-deadbeef",
            master.seal("jwt-key-deadbeef", b"x").expect("seal"),
        )
        .await
        .expect("blob");
    let next = k
        .rotate(KeyKind::Ca, "a", &*store, &master, t0, TIMING)
        .await
        .expect("rotate");
    let k2 = Keys::load(&*store, &master, "td", t0)
        .await
        .expect("reload");
    assert!(store.blob("jwt-key-deadbeef").expect("read").is_none());
    assert_eq!(k2.list(), k.list());
    let master = Arc::new(master);
    let r = master.rotate(&*store, "a").await.expect("rotate master");
    assert!(r.records >= 3, "{r:?}");
    let reopened = MasterKey::load_checked(dir.path(), &*store)
        .await
        .expect("new master");
    let k3 = Keys::load(&*store, &reopened, "td", t0)
        .await
        .expect("reload");
    assert_eq!(k3.bundle_ders()[1], k.bundle_ders()[1]);
    assert!(k3.list().iter().any(|r| r.id == next.id));
}

#[tokio::test]
async fn keys_from_before_rotation_become_records_with_their_blobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path(), crate::clock::Clock::default()).expect("store");
    let master = MasterKey::load_or_create(dir.path()).expect("master");
    // What an older control plane stored: the CA key and certificate, one JWT key.
    let material::NewCa { pkcs8, der, .. } =
        CaKey::generate(|_| material::first_ca_cn("td")).expect("ca");
    store
        .put_blob("ca-key", master.seal("ca-key", &pkcs8).expect("seal"))
        .await
        .expect("ca");
    store.put_blob("ca-cert", der.clone()).await.expect("cert");
    let jwt = JwtKey::generate().expect("jwt");
    store
        .put_blob("jwt-key-1", master.seal("jwt-key-1", &jwt).expect("seal"))
        .await
        .expect("jwt");
    let k = Keys::load(&*store, &master, "td", 100).await.expect("load");
    assert_eq!(k.ca_der().to_vec(), der);
    let kid = JwtKey::from_pkcs8(&jwt, Default::default())
        .expect("kid")
        .kid;
    assert_eq!(k.signing_key().kid, kid);
    let recs = k.list();
    assert_eq!(recs.len(), 2);
    assert!(recs
        .iter()
        .all(|r| r.state == KeyState::Active && r.created == 100));
}

/// Two control planes on one store (as replicas of a shared store are): a rotation by one
/// is taken up by the other's `reload`, keys it already held keep signing, and a change
/// made from an older read of the records is refused, not written over the newer one.
#[tokio::test]
async fn a_second_holder_of_the_store_reloads_a_rotation_and_cannot_overwrite_it() {
    let (_dir, store, master, k1) = fresh("td").await;
    let k2 = Keys::load_or_create(&*store, &master, "td")
        .await
        .expect("second");
    let t0 = crate::clock::Clock::system().now();
    let old = k1.signing_key().kid.clone();
    let next = k1
        .rotate(KeyKind::Jwt, "alice", &*store, &master, t0, TIMING)
        .await
        .expect("rotate");
    assert_eq!(jwks_kids(&k2), vec![old.clone()], "not yet reloaded");
    assert!(k2.reload(&*store, &master, t0).await.expect("reload"));
    assert!(!k2.reload(&*store, &master, t0).await.expect("again"));
    assert_eq!(jwks_kids(&k2), vec![old.clone(), next.id.clone()]);
    // The second rotates from what the store says, so the pending key is seen.
    let e = k2
        .rotate(KeyKind::Jwt, "bob", &*store, &master, t0, TIMING)
        .await
        .expect_err("one next at a time, across holders");
    assert!(matches!(e, KeyError::RotationPending { .. }), "{e}");
    // The first activates it; the second reads that and signs with it.
    assert!(k1
        .advance(&*store, &master, t0 + 600, TIMING)
        .await
        .expect("due"));
    assert!(k2.reload(&*store, &master, t0 + 600).await.expect("reload"));
    assert_eq!(k2.signing_key().kid, next.id);

    // A write guarded by an older read of the records is refused and writes nothing.
    let before = store.blob(RECORDS_BLOB).expect("read");
    let e = store
        .put_key_blobs_if(
            RECORDS_BLOB,
            None,
            vec![(RECORDS_BLOB.to_string(), b"[]".to_vec())],
            Vec::new(),
            Vec::new(),
        )
        .await
        .expect_err("stale");
    assert!(matches!(e, crate::store::StoreError::Conflict(_)), "{e}");
    assert_eq!(store.blob(RECORDS_BLOB).expect("read"), before);
}

/// On a shared store a key that stops signing stays published for the longest lifetime
/// anything may have, even when this control plane saw nothing signed with it: another
/// one may have signed with it.
#[tokio::test]
async fn on_a_shared_store_a_retiring_key_waits_for_the_longest_lifetime() {
    for shared in [false, true] {
        let (_dir, store, master, k) = fresh("td").await;
        let t0 = crate::clock::Clock::system().now();
        // A key activated while running (not loaded active), which signed nothing here.
        let first = k
            .rotate(KeyKind::Jwt, "alice", &*store, &master, t0, TIMING)
            .await
            .expect("rotate");
        let timing = TIMING.on_shared_store(shared);
        assert!(k
            .advance(&*store, &master, t0 + 600, timing)
            .await
            .expect("due"));
        k.rotate(KeyKind::Jwt, "alice", &*store, &master, t0 + 601, TIMING)
            .await
            .expect("rotate again");
        assert!(k
            .advance(&*store, &master, t0 + 1201, timing)
            .await
            .expect("due"));
        let rec = k
            .list()
            .into_iter()
            .find(|r| r.id == first.id)
            .expect("first");
        if shared {
            assert_eq!(rec.state, KeyState::Retiring);
            assert_eq!(rec.retires_at, t0 + 1201 + 3600);
            assert!(jwks_kids(&k).contains(&first.id), "still published");
        } else {
            // Alone, what it saw signed is all there is: nothing, so it retires at once.
            assert_eq!(rec.state, KeyState::Retired);
        }
    }
}
