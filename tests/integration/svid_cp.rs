//! SVIDs as the control plane issues them, seen by a raw host (its own gRPC client with a
//! host certificate): X.509-SVIDs signed from a CSR (their names, lifetime, chain to the
//! CA in the trust bundle Sync sends, the per-workload lifetime, refusals, policy,
//! revocation) and one JWT for several audiences.

use std::collections::BTreeMap;
use std::time::Duration;

use leash_agentd::identity;
use leash_proto::v1;
use leash_proto::v1::control_message::Msg;
use leash_proto::v1::control_plane_client::ControlPlaneClient;
use leash_tests::{Cluster, TRUST_DOMAIN};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, UnixTime};
use tonic::transport::Channel;
use tonic::Code;
use x509_parser::extensions::GeneralName;

use crate::control_plane::{next_msg, open_sync};
use crate::{apply_policy, claims, cp_client, host_credentials, rt};

/// The uid the raw host's callers are attested as.
const UID: u32 = 4242;

/// Enroll a raw host named `name`; a control-plane client with its certificate.
fn raw_host(c: &Cluster, rt: &tokio::runtime::Runtime, name: &str) -> ControlPlaneClient<Channel> {
    let token = c.join_token(&["--name", name]);
    let state = c.dir().join(format!("raw-{name}"));
    identity::prepare_state_dir(&state).expect("state dir");
    rt.block_on(identity::enroll(
        &state,
        &[c.addr.to_string()],
        &token,
        None,
        None,
        BTreeMap::new(),
    ))
    .expect("the raw host enrolls");
    rt.block_on(cp_client(c, Some(host_credentials(&state))))
        .expect("mTLS with the host certificate")
}

/// A process of the test's workloads, as an agent would attest it.
fn attested() -> v1::Attested {
    v1::Attested {
        pid: 1,
        uid: UID,
        gid: UID,
        selectors: vec![format!("unix:uid:{UID}")],
        ..Default::default()
    }
}

/// A CSR for a fresh key of algorithm `alg`, as the agent makes one.
fn csr(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
    let key = KeyPair::generate_for(alg).expect("key");
    CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .der()
        .to_vec()
}

fn issue_svid(
    rt: &tokio::runtime::Runtime,
    cp: &mut ControlPlaneClient<Channel>,
    workload: &str,
    csr_der: Vec<u8>,
) -> Result<v1::IssueResponse, tonic::Status> {
    rt.block_on(cp.issue(v1::IssueRequest {
        workload: workload.into(),
        credential: "spiffe-x509".into(),
        attested: Some(attested()),
        csr_der,
        ..Default::default()
    }))
    .map(tonic::Response::into_inner)
}

fn add_workload(c: &Cluster, name: &str, extra: &[&str]) {
    let uid = format!("unix:uid:{UID}");
    let mut a = vec![
        "workload",
        "add",
        name,
        "--owner",
        "team-svid",
        "--selector",
        &uid,
    ];
    a.extend_from_slice(extra);
    c.leashctl(&a).ok();
}

/// Check that `leaf` chains to one of `cas` at `at` (unix seconds) for both TLS usages,
/// and return its URI SANs, other SANs, and validity.
fn check_leaf(leaf: &[u8], cas: &[Vec<u8>], at: i64) -> (Vec<String>, usize, i64, i64) {
    let ee_der = CertificateDer::from(leaf.to_vec());
    let ee = webpki::EndEntityCert::try_from(&ee_der).expect("the leaf parses");
    let ca_ders: Vec<CertificateDer<'static>> = cas
        .iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect();
    let anchors: Vec<_> = ca_ders
        .iter()
        .map(|d| webpki::anchor_from_trusted_cert(d).expect("anchor"))
        .collect();
    let time =
        UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(at).expect("positive")));
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            time,
            usage,
            None,
            None,
        )
        .expect("the leaf chains to the CA in the trust bundle");
    }
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).expect("x509");
    assert!(!cert.is_ca(), "an SVID is not a CA");
    let san = cert
        .subject_alternative_name()
        .expect("SAN parses")
        .expect("a SAN");
    let uris = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect::<Vec<_>>();
    let others = san.value.general_names.len() - uris.len();
    (
        uris,
        others,
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    )
}

#[test]
fn x509_svids_are_signed_from_a_csr_for_the_workloads_spiffe_id() {
    let c = Cluster::control_plane_only();
    // Other kinds' flags are refused by name; the default ttl is 1h.
    c.leashctl(&[
        "credential",
        "add",
        "bad",
        "--kind",
        "x509",
        "--audience",
        "https://a",
    ])
    .code(1)
    .stderr_has(&["--kind x509 takes no --audience"]);
    c.leashctl(&[
        "credential",
        "add",
        "spiffe-x509",
        "--kind",
        "x509",
        "--owner",
        "team-svid",
        "--max-ttl",
        "2h",
    ])
    .ok();
    let def = c
        .leashctl(&["credential", "show", "spiffe-x509", "--output", "json"])
        .json();
    assert_eq!(def["default_ttl_seconds"], 3600, "{def}");
    add_workload(&c, "svc/a", &["--allow", "spiffe-x509"]);
    add_workload(
        &c,
        "svc/b",
        &["--allow", "spiffe-x509", "--x509-svid-ttl", "30m"],
    );
    add_workload(
        &c,
        "svc/long",
        &["--allow", "spiffe-x509", "--x509-svid-ttl", "5h"],
    );
    let shown = c
        .leashctl(&["workload", "show", "svc/b", "--output", "json"])
        .json();
    assert_eq!(shown["x509_svid_ttl_seconds"], 1800, "{shown}");
    let table = c.leashctl(&["workload", "show", "svc/b"]).ok();
    assert!(table.contains("x509 ttl:   1800s"), "{table}");
    let table = c.leashctl(&["workload", "show", "svc/a"]).ok();
    assert!(
        table.contains("x509 ttl:   - (the x509 credential's ttl)"),
        "{table}"
    );

    let rt = rt();
    let mut cp = raw_host(&c, &rt, "svid-host");
    // The trust bundle comes right after caught-up.
    let (_tx, mut inbound) = rt.block_on(open_sync(&mut cp, 0));
    let bundle = rt.block_on(async {
        let mut seen = Vec::new();
        loop {
            let m = tokio::time::timeout(leash_tests::WAIT, inbound.message())
                .await
                .expect("a Sync message in time")
                .expect("healthy")
                .expect("open");
            match m.msg.expect("a body") {
                Msg::Heartbeat(_) => {}
                Msg::Bundle(b) => {
                    assert_eq!(seen, ["snapshot", "caught-up"]);
                    return b;
                }
                Msg::Snapshot(_) => seen.push("snapshot"),
                Msg::CaughtUp(_) => seen.push("caught-up"),
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    assert_eq!(bundle.ca_certificates_der.len(), 1, "{bundle:?}");
    let jwks: serde_json::Value = serde_json::from_str(&bundle.jwks_json).expect("JWKS JSON");
    let published = c.leashctl(&["jwks"]).json();
    assert_eq!(jwks, published, "the bundle's JWKS is the published one");

    // An SVID for svc/a: the leaf alone, for its SPIFFE ID alone, for the default hour.
    let r = issue_svid(&rt, &mut cp, "svc/a", csr(&rcgen::PKCS_ECDSA_P256_SHA256)).expect("issued");
    assert!(r.token.is_empty(), "no token for an X.509-SVID");
    assert_eq!(r.kind, "x509");
    assert_eq!(r.certificate_chain_der.len(), 1);
    let (uris, others, nb, na) = check_leaf(
        &r.certificate_chain_der[0],
        &bundle.ca_certificates_der,
        r.issued_at_unix + 1,
    );
    assert_eq!(uris, [format!("spiffe://{TRUST_DOMAIN}/svc/a")]);
    assert_eq!(others, 0, "the URI SAN is the only name");
    assert_eq!(nb, r.issued_at_unix);
    assert_eq!(na, r.issued_at_unix + 3600);
    assert_eq!(na, r.expires_at_unix);
    let lease = c.lease(&r.lease_id);
    assert_eq!(lease["state"], "active", "{lease}");
    assert_eq!(lease["host"], "svid-host");

    // The workload's own lifetime, and one above max_ttl clamped to it.
    for (w, want) in [("svc/b", 1800), ("svc/long", 7200)] {
        let r = issue_svid(&rt, &mut cp, w, csr(&rcgen::PKCS_ECDSA_P256_SHA256)).expect(w);
        let (uris, _, nb, na) = check_leaf(
            &r.certificate_chain_der[0],
            &bundle.ca_certificates_der,
            r.issued_at_unix,
        );
        assert_eq!(uris, [format!("spiffe://{TRUST_DOMAIN}/{w}")]);
        assert_eq!(na - nb, want, "{w}");
    }

    // No CSR, another curve, a broken signature: invalid, saying why.
    let e = issue_svid(&rt, &mut cp, "svc/a", Vec::new()).expect_err("no CSR");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("certificate signing request"), "{e:?}");
    let e =
        issue_svid(&rt, &mut cp, "svc/a", csr(&rcgen::PKCS_ECDSA_P384_SHA384)).expect_err("P-384");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("P-256"), "{e:?}");
    let mut bad = csr(&rcgen::PKCS_ECDSA_P256_SHA256);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let e = issue_svid(&rt, &mut cp, "svc/a", bad).expect_err("bad signature");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("signature"), "{e:?}");

    // Policy decides as for any kind.
    apply_policy(
        &c,
        "no-a.cedar",
        "@id(\"no-svid-for-a\")\nforbid(principal == Leash::Workload::\"svc/a\", action, resource);\n",
        &[],
    );
    let e = issue_svid(&rt, &mut cp, "svc/a", csr(&rcgen::PKCS_ECDSA_P256_SHA256))
        .expect_err("forbidden");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("no-svid-for-a"), "{e:?}");
    // The lease issued before the policy was revoked by it; svc/b's is revoked by hand,
    // and the revocation reaches the host.
    c.eventually("svc/a's lease revoked by the policy", || {
        (c.lease(&r.lease_id)["state"] == "revoked").then_some(())
    });
    let b = issue_svid(&rt, &mut cp, "svc/b", csr(&rcgen::PKCS_ECDSA_P256_SHA256))
        .expect("svc/b is still allowed");
    c.leashctl(&["revoke", "--lease", &b.lease_id]).ok();
    let leases = c
        .leashctl(&["lease", "list", "--workload", "svc/b", "--output", "json"])
        .json();
    let listed = leases
        .as_array()
        .and_then(|a| a.iter().find(|l| l["id"] == b.lease_id.as_str()))
        .unwrap_or_else(|| panic!("lease {} listed: {leases}", b.lease_id));
    assert_eq!(listed["state"], "revoked", "{listed}");
    let revocation = rt.block_on(async {
        loop {
            if let Msg::Revocation(r) = next_msg(&mut inbound).await {
                if r.lease_ids.contains(&b.lease_id) {
                    return r;
                }
            }
        }
    });
    assert!(revocation.seq > 0);
}

#[test]
fn one_jwt_for_several_audiences_carries_them_as_an_array() {
    let c = Cluster::control_plane_only();
    c.leashctl(&[
        "credential",
        "add",
        "multi",
        "--audience",
        "https://a.example",
        "--audience",
        "https://b.example",
        "--audience",
        "https://c.example",
    ])
    .ok();
    c.leashctl(&[
        "credential",
        "add",
        "spiffe-x509",
        "--kind",
        "x509",
        "--owner",
        "team-svid",
    ])
    .ok();
    add_workload(
        &c,
        "svc/multi",
        &["--allow", "multi", "--allow", "spiffe-x509"],
    );
    let rt = rt();
    let mut cp = raw_host(&c, &rt, "aud-host");
    let mut ask = |credential: &str, audiences: &[&str]| {
        rt.block_on(cp.issue(v1::IssueRequest {
            workload: "svc/multi".into(),
            credential: credential.into(),
            attested: Some(attested()),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }))
        .map(tonic::Response::into_inner)
    };
    let r = ask("multi", &["https://a.example", "https://b.example"]).expect("issued");
    assert_eq!(r.audiences, ["https://a.example", "https://b.example"]);
    let cl = claims(&r.token);
    assert_eq!(
        cl["aud"],
        serde_json::json!(["https://a.example", "https://b.example"]),
        "{cl}"
    );
    assert_eq!(cl["sub"], format!("spiffe://{TRUST_DOMAIN}/svc/multi"));
    let lease = c.lease(&r.lease_id);
    assert_eq!(
        lease["audience"], "https://a.example https://b.example",
        "{lease}"
    );
    c.remember_secret(&r.token);

    // One audience asked this way is a plain string.
    let one = ask("multi", &["https://c.example"]).expect("issued");
    assert_eq!(claims(&one.token)["aud"], "https://c.example");
    c.remember_secret(&one.token);

    // An audience the credential does not list is refused, naming it.
    let e = ask("multi", &["https://a.example", "https://evil.example"]).expect_err("not listed");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("https://evil.example"), "{e:?}");
    // Policy decides each audience.
    apply_policy(
        &c,
        "no-b.cedar",
        "@id(\"not-b\")\nforbid(principal, action, resource) when { context.audience == \"https://b.example\" };\n",
        &[],
    );
    let e = ask("multi", &["https://a.example", "https://b.example"]).expect_err("b forbidden");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("not-b"), "{e:?}");
    c.eventually("the a+b lease revoked by the policy", || {
        (c.lease(&r.lease_id)["state"] == "revoked").then_some(())
    });
    assert_eq!(c.lease(&one.lease_id)["state"], "active");
    // A kind that takes no audience takes no several either.
    let e = ask("spiffe-x509", &["https://a.example", "https://c.example"])
        .expect_err("x509 takes no audience");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    c.assert_no_secret_leaked();
}
