//! Key rotation through the real binaries: `leashctl key rotate jwt|ca` and `key list`,
//! the JWKS before, during and after a JWT key rotation, `kill -9` right after a
//! rotation and between states, and a CA rotation a running agent follows at its next
//! renewal, with no restart and no re-enrollment.

use std::time::Duration;

use leash_tests::{Cluster, Options};

use crate::basic;

/// A little past `[keys] publish_ahead` (default 10 minutes).
const PAST_PUBLISH_AHEAD: Duration = Duration::from_secs(601);
/// A little past the longest anything may live here (`host_cert_ttl`, 24 hours by
/// default): the old keys of a rotation are retired by then.
const PAST_EVERYTHING: Duration = Duration::from_secs(25 * 3600);
/// Longer than the clock jumps, so agents do not fail closed when the clock moves.
const MAX_OFFLINE: &str = "2d";

/// `leashctl key list --output json`.
fn keys(c: &Cluster) -> Vec<serde_json::Value> {
    c.leashctl(&["key", "list", "--output", "json"])
        .json()
        .as_array()
        .expect("a list")
        .clone()
}

/// (id, state) of every key of `kind`, oldest first.
fn states(c: &Cluster, kind: &str) -> Vec<(String, String)> {
    keys(c)
        .iter()
        .filter(|k| k["kind"] == kind)
        .map(|k| {
            (
                k["id"].as_str().expect("id").to_string(),
                k["state"].as_str().expect("state").to_string(),
            )
        })
        .collect()
}

fn jwks_kids(c: &Cluster) -> Vec<String> {
    c.leashctl(&["jwks"]).json()["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_string())
        .collect()
}

/// `leashctl key rotate KIND --output json`, which must succeed: the new key's id.
fn rotate(c: &Cluster, kind: &str) -> String {
    let v = c
        .leashctl(&["key", "rotate", kind, "--output", "json"])
        .json();
    assert_eq!(v["kind"], kind, "{v}");
    assert_eq!(v["state"], "next", "{v}");
    v["id"].as_str().expect("id").to_string()
}

/// The list is consistent: one active key per kind, at most one next, and the JWKS is
/// exactly the published JWT keys.
fn assert_consistent(c: &Cluster) {
    // The list and the JWKS of one moment: read again while a key changed state between.
    let (list, mut kids) = c.eventually("a key list and a JWKS of the same moment", || {
        let before = keys(c);
        let kids = jwks_kids(c);
        (keys(c) == before).then_some((before, kids))
    });
    for kind in ["jwt", "ca"] {
        let count = |state: &str| {
            list.iter()
                .filter(|k| k["kind"] == kind && k["state"] == state)
                .count()
        };
        assert_eq!(count("active"), 1, "{kind}: {list:?}");
        assert!(count("next") <= 1, "{kind}: {list:?}");
    }
    let mut published: Vec<String> = list
        .iter()
        .filter(|k| k["kind"] == "jwt" && k["state"] != "retired")
        .map(|k| k["id"].as_str().expect("id").to_string())
        .collect();
    published.sort();
    kids.sort();
    assert_eq!(kids, published, "{list:?}");
}

/// The `kid` of a token, and whether its signature verifies against the JWKS
/// `leashctl jwks` prints now (times are the test clock's, checked by the caller).
fn verifies(c: &Cluster, token: &str) -> (String, bool) {
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
    let kid = decode_header(token)
        .expect("a JWT header")
        .kid
        .expect("a kid");
    let jwks = c.leashctl(&["jwks"]).json();
    let Some(key) = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == kid.as_str())
    else {
        return (kid, false);
    };
    let dk = DecodingKey::from_ec_components(
        key["x"].as_str().expect("x"),
        key["y"].as_str().expect("y"),
    )
    .expect("an EC key");
    let mut v = Validation::new(Algorithm::ES256);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let ok = decode::<serde_json::Value>(token, &dk, &v).is_ok();
    (kid, ok)
}

fn wait_state(c: &Cluster, kind: &str, id: &str, state: &str) {
    c.eventually(&format!("{kind} key {id} is {state}"), || {
        states(c, kind)
            .iter()
            .any(|(i, s)| i == id && s == state)
            .then_some(())
    });
}

fn audit_kinds(c: &Cluster, id: &str) -> Vec<String> {
    c.audit()
        .into_iter()
        .filter(|e| e["detail"]["id"] == id)
        .filter_map(|e| e["type"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_jwt_key_is_published_first_signs_after_publish_ahead_and_retires_after_its_tokens() {
    let mut c = Cluster::with(Options::default().max_offline(MAX_OFFLINE));
    basic(&c);
    let before = c.get("api", &["--fresh"]).token;
    let (old, ok) = verifies(&c, &before);
    assert!(ok);
    assert_eq!(states(&c, "jwt"), vec![(old.clone(), "active".to_string())]);

    let new = rotate(&c, "jwt");
    assert_ne!(new, old);
    assert_eq!(
        jwks_kids(&c),
        vec![old.clone(), new.clone()],
        "published at once"
    );
    let again = c.leashctl(&["key", "rotate", "jwt"]);
    assert_eq!(again.code, 1, "{again}");
    assert!(again.stderr.contains("already waiting"), "{again}");
    assert!(again.stderr.contains(&new), "{again}");
    let (kid, _) = verifies(&c, &c.get("api", &["--fresh"]).token);
    assert_eq!(kid, old, "the next key does not sign yet");
    let table = c.leashctl(&["key", "list"]).ok();
    assert!(table.starts_with("KIND"), "{table}");
    assert!(table.contains("next"), "{table}");

    c.advance_clock(PAST_PUBLISH_AHEAD);
    wait_state(&c, "jwt", &new, "active");
    assert_eq!(
        states(&c, "jwt"),
        vec![
            (old.clone(), "retiring".into()),
            (new.clone(), "active".into())
        ]
    );
    let after = c.get("api", &["--fresh"]).token;
    assert_eq!(
        verifies(&c, &after),
        (new.clone(), true),
        "signed by the new key"
    );
    assert_eq!(
        verifies(&c, &before),
        (old.clone(), true),
        "the old token still verifies"
    );
    let retiring = keys(&c)
        .into_iter()
        .find(|k| k["id"] == old.as_str())
        .expect("old");
    assert!(
        retiring["retires_at_unix"].as_i64().expect("retires_at") > 0,
        "{retiring}"
    );
    assert_consistent(&c);

    c.advance_clock(PAST_EVERYTHING);
    wait_state(&c, "jwt", &old, "retired");
    assert_eq!(
        jwks_kids(&c),
        vec![new.clone()],
        "a retired key is unpublished"
    );
    assert_eq!(verifies(&c, &before), (old.clone(), false));
    assert_eq!(verifies(&c, &after), (new.clone(), true));
    assert_eq!(
        audit_kinds(&c, &new),
        ["key-published", "key-activated"],
        "events of the new key"
    );
    assert_eq!(audit_kinds(&c, &old), ["key-retiring", "key-retired"]);

    c.restart_control_plane();
    assert_consistent(&c);
    assert_eq!(jwks_kids(&c), vec![new.clone()]);
    let token = c.eventually("the agent reconnects and fetches", || {
        let out = c.leash(&["get", "api", "--fresh"]);
        (out.code == 0).then(|| out.stdout.trim().to_string())
    });
    assert_eq!(verifies(&c, &token), (new, true));
}

#[test]
fn kill_9_right_after_a_rotation_and_between_states_leaves_a_consistent_state() {
    let mut c = Cluster::with(Options::default().max_offline(MAX_OFFLINE));
    basic(&c);
    let before = c.get("api", &["--fresh"]).token;
    let fetch = |c: &Cluster| {
        c.eventually("the agent reconnects and fetches", || {
            let out = c.leash(&["get", "api", "--fresh"]);
            (out.code == 0).then(|| out.stdout.trim().to_string())
        })
    };
    let jwt = rotate(&c, "jwt");
    let ca = rotate(&c, "ca");
    c.kill_control_plane();
    c.restart_control_plane();
    assert_consistent(&c);
    assert_eq!(states(&c, "jwt")[1], (jwt.clone(), "next".to_string()));
    assert_eq!(states(&c, "ca")[1], (ca.clone(), "next".to_string()));

    // Killed whenever the activation happens to be: before it, or after.
    c.advance_clock(PAST_PUBLISH_AHEAD);
    std::thread::sleep(Duration::from_millis(150));
    c.kill_control_plane();
    c.restart_control_plane();
    assert_consistent(&c);
    wait_state(&c, "jwt", &jwt, "active");
    wait_state(&c, "ca", &ca, "active");
    assert_consistent(&c);
    let after = fetch(&c);
    assert_eq!(verifies(&c, &after), (jwt.clone(), true));
    assert!(
        verifies(&c, &before).1,
        "the token from before still verifies"
    );

    // Past 70% of the host certificate's day: the agent renews under the new CA.
    c.advance_clock(Duration::from_secs(17 * 3600));
    let state = c.agent(0).state_dir.clone();
    c.eventually("the agent's certificate is signed by the new CA", || {
        signed_by(&state.join("host.crt"), &ca).then_some(())
    });
    c.advance_clock(PAST_EVERYTHING - Duration::from_secs(17 * 3600));
    std::thread::sleep(Duration::from_millis(150));
    c.kill_control_plane();
    c.restart_control_plane();
    assert_consistent(&c);
    c.eventually("the old keys retire", || {
        let l = keys(&c);
        (l.iter().filter(|k| k["state"] == "retired").count() == 2).then_some(())
    });
    assert_consistent(&c);
    assert_eq!(jwks_kids(&c), vec![jwt.clone()]);
    assert!(!verifies(&c, &before).1, "the retired key is unpublished");
    assert_eq!(verifies(&c, &after), (jwt, true));
    // The agent renewed under the new CA before the old one retired: it reconnects to
    // the control plane now serving under the new CA.
    c.restart_control_plane();
    fetch(&c);
}

/// Whether the certificate in `path` (DER) names `ca_id` (in its issuer: a host
/// certificate's own names are the host's).
fn signed_by(path: &std::path::Path, ca_id: &str) -> bool {
    let der = std::fs::read(path).expect("certificate");
    der.windows(ca_id.len()).any(|w| w == ca_id.as_bytes())
}

/// How many DER certificates follow each other in the file at `path`.
fn count_certs(path: &std::path::Path) -> usize {
    let bytes = std::fs::read(path).expect("ca.crt");
    let mut at = 0;
    let mut n = 0;
    while at < bytes.len() {
        // SEQUENCE, then its length in the long form (a certificate is over 127 bytes).
        assert_eq!(bytes[at], 0x30, "a DER certificate at {at}");
        let len_bytes = usize::from(bytes[at + 1] & 0x7f);
        let len = bytes[at + 2..at + 2 + len_bytes]
            .iter()
            .fold(0usize, |acc, b| acc << 8 | usize::from(*b));
        at += 2 + len_bytes + len;
        n += 1;
    }
    assert_eq!(at, bytes.len());
    n
}

#[test]
fn a_running_agent_moves_to_a_new_ca_at_its_next_renewal_without_restart_or_enrollment() {
    let mut c = Cluster::with(
        Options::default()
            .max_offline(MAX_OFFLINE)
            .config("host_cert_ttl = \"1h\"\n"),
    );
    basic(&c);
    c.get("api", &["--fresh"]);
    let state = c.agent(0).state_dir.clone();
    let old_pin = c.ca_pin.clone();
    let old = states(&c, "ca")[0].0.clone();

    let new = rotate(&c, "ca");
    c.advance_clock(PAST_PUBLISH_AHEAD);
    wait_state(&c, "ca", &new, "active");
    // A host enrolling during the overlap pins the old CA (the one served), gets its
    // certificate from the new one, and trusts both.
    c.add_agent("host-2", &[]);
    let state2 = c.agent(1).state_dir.clone();
    assert!(signed_by(&state2.join("host.crt"), &new));
    assert_eq!(count_certs(&state2.join("ca.crt")), 2);
    // Past 70% of the host certificate's hour: the agent renews, under the new CA.
    c.advance_clock(Duration::from_secs(45 * 60));
    c.eventually("the agent's certificate is signed by the new CA", || {
        signed_by(&state.join("host.crt"), &new).then_some(())
    });
    assert_eq!(
        count_certs(&state.join("ca.crt")),
        2,
        "both CAs are trusted"
    );
    let f = c.get("api", &["--fresh"]);
    assert!(!f.token.is_empty());

    c.advance_clock(PAST_EVERYTHING);
    wait_state(&c, "ca", &old, "retired");
    assert_eq!(audit_kinds(&c, &old), ["key-retiring", "key-retired"]);
    // Without a restart, new connections are served under the new CA: a join token made
    // now pins it, and a new host enrolls with it.
    c.add_agent("host-3", &[]);
    assert!(signed_by(&c.agent(2).state_dir.join("host.crt"), &new));
    assert_eq!(count_certs(&c.agent(2).state_dir.join("ca.crt")), 1);
    // After a restart the first agent reconnects: it learned the new CA at renewal.
    c.restart_control_plane();
    assert_ne!(
        c.ca_pin, old_pin,
        "the control plane serves under the new CA"
    );
    assert_consistent(&c);
    for i in 0..3 {
        c.eventually("each agent reconnects and fetches", || {
            let out = c.leash_at(i, &["get", "api", "--fresh"]);
            (out.code == 0).then_some(())
        });
    }
}

/// The DER certificates that follow each other in `bytes` (an agent's `ca.crt`), as one
/// PEM file at `path`.
fn pem_bundle(bytes: &[u8], path: &std::path::Path) {
    let mut at = 0;
    let mut pem = String::new();
    while at < bytes.len() {
        let len_bytes = usize::from(bytes[at + 1] & 0x7f);
        let len = bytes[at + 2..at + 2 + len_bytes]
            .iter()
            .fold(0usize, |acc, b| acc << 8 | usize::from(*b));
        let end = at + 2 + len_bytes + len;
        pem.push_str(&crate::oidc::pem("CERTIFICATE", &bytes[at..end]));
        at = end;
    }
    std::fs::write(path, pem).expect("write the CA bundle");
}

#[test]
fn the_https_listener_follows_a_ca_rotation_without_restart() {
    let mut c = Cluster::with(
        Options::default()
            .max_offline(MAX_OFFLINE)
            .config("host_cert_ttl = \"1h\"\n[http]\nlisten = \"127.0.0.1:0\"\n"),
    );
    basic(&c);
    let state = c.agent(0).state_dir.clone();
    let old = states(&c, "ca")[0].0.clone();
    let new = rotate(&c, "ca");
    c.advance_clock(PAST_PUBLISH_AHEAD);
    wait_state(&c, "ca", &new, "active");
    c.advance_clock(Duration::from_secs(45 * 60));
    c.eventually("the agent's certificate is signed by the new CA", || {
        signed_by(&state.join("host.crt"), &new).then_some(())
    });
    let both = c.dir().join("both-cas.pem");
    pem_bundle(&std::fs::read(state.join("ca.crt")).expect("ca.crt"), &both);

    // A host certificate from the new CA authenticates /introspect, with no restart.
    let token = c.get("api", &["--fresh"]).token;
    let (cert, key) = crate::oidc::host_cert_files(&c);
    let form = format!("token={token}");
    let args = [
        "--cert",
        cert.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
    ];
    let got = crate::oidc::curl(&c, &both, "/introspect", &args, Some(&form));
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.json()["active"], true, "{got:?}");

    // Once the old CA retires, the listener's default certificate is made under the new
    // one: a client that trusts only the new CA connects.
    c.advance_clock(PAST_EVERYTHING);
    wait_state(&c, "ca", &old, "retired");
    c.add_agent("host-2", &[]);
    let only_new = c.dir().join("new-ca.pem");
    pem_bundle(
        &std::fs::read(c.agent(1).state_dir.join("ca.crt")).expect("ca.crt"),
        &only_new,
    );
    assert_eq!(count_certs(&c.agent(1).state_dir.join("ca.crt")), 1);
    let health = crate::oidc::curl(&c, &only_new, "/healthz", &[], None);
    assert_eq!(health.status, 200, "{health:?}");
    c.eventually("the log says serving under a new CA", || {
        c.control_plane_log()
            .contains("serving under a new CA")
            .then_some(())
    });
}
