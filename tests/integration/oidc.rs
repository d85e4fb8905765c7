//! The control plane's HTTPS listener (`[http]`) as relying parties use it: the system
//! `curl` against every route (trusting the Leash CA), RFC 7662 `/introspect` with and
//! without client authentication (HTTP Basic, form fields, a host certificate), PyJWT's
//! `PyJWKClient` discovering the issuer and verifying a token from `leash get`, `leashctl
//! oidc export` against what the listener serves, and start-up refusals of a bad
//! `[http]` table.
//!
//! Tokens and client secrets travel to curl on stdin or in files, never in arguments (a
//! failing command line is printed).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use leash_tests::{bin, python, Cluster, Options, COMMAND_TIMEOUT};
use serde_json::Value;

use crate::{basic, API_AUD};

/// A free local port (for an issuer URL that must name the listener's port).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A cluster whose control plane serves `[http]` with `extra` config before the table.
fn with_http(top: &str, http: &str) -> Cluster {
    Cluster::with(Options::default().config(&format!("{top}\n[http]\n{http}")))
}

/// The address the control plane logged as "http listening on ADDR".
pub(crate) fn http_addr(c: &Cluster) -> SocketAddr {
    c.eventually("the http listener's address in the log", || {
        c.control_plane_log()
            .lines()
            .find_map(|l| l.split("http listening on ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok())
    })
}

pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// The Leash CA as a PEM file (from the first agent's state dir).
pub(crate) fn ca_file(c: &Cluster) -> PathBuf {
    let der = std::fs::read(c.agent(0).state_dir.join("ca.crt")).expect("the agent's ca.crt");
    let p = c.dir().join("leash-ca.pem");
    std::fs::write(&p, pem("CERTIFICATE", &der)).expect("write the CA");
    p
}

/// The first agent's host certificate and key as PEM files.
pub(crate) fn host_cert_files(c: &Cluster) -> (PathBuf, PathBuf) {
    let dir = &c.agent(0).state_dir;
    let cert = c.dir().join("host-cert.pem");
    let key = c.dir().join("host-key.pem");
    let read = |n: &str| std::fs::read(dir.join(n)).expect("host credential");
    std::fs::write(&cert, pem("CERTIFICATE", &read("host.crt"))).expect("write");
    std::fs::write(&key, pem("PRIVATE KEY", &read("host.key"))).expect("write");
    (cert, key)
}

/// What curl got: status, headers (lowercase names), body.
#[derive(Debug)]
pub(crate) struct Got {
    pub(crate) status: u16,
    pub(crate) headers: String,
    pub(crate) body: String,
}

impl Got {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {self:?}"))
    }
}

/// `curl --cacert CA ARGS https://localhost:PORT/PATH`, with `stdin` as the body when
/// given (`--data-binary @-`).
pub(crate) fn curl(c: &Cluster, ca: &Path, path: &str, args: &[&str], stdin: Option<&str>) -> Got {
    let addr = http_addr(c);
    let headers = c.dir().join("curl-headers.txt");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("-D")
        .arg(&headers)
        .args(["-w", "\n%{http_code}"])
        .args(args);
    if stdin.is_some() {
        cmd.args(["--data-binary", "@-"]);
    }
    cmd.arg(format!("https://localhost:{}{path}", addr.port()));
    let out = leash_tests::process::run(cmd, stdin.map(str::as_bytes), COMMAND_TIMEOUT);
    out.code(0);
    let (body, code) = out
        .stdout
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("no status line\n{out}"));
    Got {
        status: code.trim().parse().unwrap_or_else(|_| panic!("{out}")),
        headers: std::fs::read_to_string(&headers)
            .unwrap_or_default()
            .to_lowercase(),
        body: body.to_string(),
    }
}

/// A header file for curl's `-H @FILE` (so a secret is not an argument).
fn header_file(c: &Cluster, name: &str, line: &str) -> String {
    let p = c.dir().join(name);
    std::fs::write(&p, format!("{line}\n")).expect("write header file");
    format!("@{}", p.display())
}

/// An `Authorization: Basic` header file of its own (each call a new file).
fn basic_auth(c: &Cluster, id: &str, secret: &str) -> String {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let v = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    header_file(
        c,
        &format!("auth-header-{n}.txt"),
        &format!("Authorization: Basic {v}"),
    )
}

/// `leashctl introspection-client create NAME --output json`: the secret (remembered).
fn create_client(c: &Cluster, name: &str) -> String {
    let v = c
        .leashctl(&[
            "introspection-client",
            "create",
            name,
            "--description",
            "a test verifier",
            "--output",
            "json",
        ])
        .json();
    assert_eq!(v["client_id"], name, "{v}");
    let secret = v["client_secret"]
        .as_str()
        .expect("client_secret")
        .to_string();
    c.remember_secret(&secret);
    secret
}

#[test]
fn discovery_keys_health_and_export_match_over_https() {
    let port = free_port();
    let issuer = format!("https://localhost:{port}");
    let c = with_http(
        &format!("issuer = {issuer:?}"),
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    assert_eq!(http_addr(&c).port(), port);
    let ca = ca_file(&c);

    let d = curl(&c, &ca, "/.well-known/openid-configuration", &[], None);
    assert_eq!(d.status, 200, "{d:?}");
    assert!(
        d.headers.contains("content-type: application/json"),
        "{d:?}"
    );
    let doc = d.json();
    assert_eq!(doc["issuer"], issuer.as_str());
    assert_eq!(doc["jwks_uri"], format!("{issuer}/keys"));
    assert_eq!(
        doc["introspection_endpoint"],
        format!("{issuer}/introspect")
    );
    assert_eq!(doc["id_token_signing_alg_values_supported"][0], "ES256");
    assert_eq!(doc["subject_types_supported"][0], "public");

    let k = curl(&c, &ca, "/keys", &[], None);
    assert_eq!(k.status, 200, "{k:?}");
    assert_eq!(k.json(), c.leashctl(&["jwks"]).json());
    assert_eq!(k.json()["keys"][0]["alg"], "ES256");

    let h = curl(&c, &ca, "/healthz", &[], None);
    assert_eq!((h.status, h.json()["status"].clone()), (200, "ok".into()));

    // Wrong paths, methods and sizes.
    let nf = curl(&c, &ca, "/nope", &[], None);
    assert_eq!(nf.status, 404, "{nf:?}");
    let m = curl(&c, &ca, "/keys", &["-X", "POST"], None);
    assert_eq!(m.status, 405, "{m:?}");
    assert!(m.headers.contains("allow: get, head"), "{m:?}");
    let m = curl(&c, &ca, "/introspect", &[], None);
    assert_eq!(m.status, 405, "{m:?}");
    assert!(m.headers.contains("allow: post"), "{m:?}");
    let big = format!("token={}", "a".repeat(64 * 1024));
    let t = curl(&c, &ca, "/introspect", &[], Some(&big));
    assert_eq!(t.status, 413, "{t:?}");
    // The listener still serves afterwards.
    assert_eq!(curl(&c, &ca, "/healthz", &[], None).status, 200);

    // Without the Leash CA, curl does not trust the default certificate.
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10"])
        .arg(format!("https://localhost:{port}/keys"));
    let out = leash_tests::process::run(cmd, None, COMMAND_TIMEOUT);
    assert_ne!(
        out.code, 0,
        "curl trusted a certificate it has no CA for\n{out}"
    );

    // `oidc export` writes the same bytes the listener serves, and keeps what exists.
    let site = c.dir().join("site");
    let out = c.leashctl(&["oidc", "export", site.to_str().expect("utf-8")]);
    out.code(0);
    let discovery_file = site.join(".well-known").join("openid-configuration");
    assert_eq!(
        std::fs::read_to_string(&discovery_file).expect("discovery file"),
        curl(&c, &ca, "/.well-known/openid-configuration", &[], None).body
    );
    assert_eq!(
        std::fs::read_to_string(site.join("keys")).expect("keys file"),
        curl(&c, &ca, "/keys", &[], None).body
    );
    std::fs::write(site.join("keys"), "old").expect("write");
    c.leashctl(&["oidc", "export", site.to_str().expect("utf-8")])
        .code(1)
        .stderr_has(&["exists", "--force"]);
    assert_eq!(
        std::fs::read_to_string(site.join("keys")).expect("keys"),
        "old"
    );
    c.leashctl(&["oidc", "export", site.to_str().expect("utf-8"), "--force"])
        .code(0);
    assert_eq!(
        std::fs::read_to_string(site.join("keys")).expect("keys"),
        k.body
    );
}

#[test]
fn introspect_answers_only_authenticated_callers() {
    // Port 0: the address comes from the log.
    let c = with_http("", "listen = \"127.0.0.1:0\"");
    basic(&c);
    let ca = ca_file(&c);
    let f = c.get("api", &[]);
    let form = format!("token={}&token_type_hint=access_token", f.token);

    // Nobody: 401 with a challenge, and nothing about the token.
    let none = curl(&c, &ca, "/introspect", &[], Some(&form));
    assert_eq!(none.status, 401, "{none:?}");
    assert!(none.headers.contains("www-authenticate: basic"), "{none:?}");
    assert_eq!(none.json()["error"], "invalid_client");
    assert!(!none.body.contains("active") && !none.body.contains("ci/job"));

    let secret = create_client(&c, "sts");
    let listed = c
        .leashctl(&["introspection-client", "list", "--output", "json"])
        .json();
    assert_eq!(listed[0]["client_id"], "sts", "{listed}");
    assert!(!listed.to_string().contains(&secret));

    // client_secret_basic: the answer `leashctl introspect` gives.
    let auth = basic_auth(&c, "sts", &secret);
    let b = curl(&c, &ca, "/introspect", &["-H", &auth], Some(&form));
    assert_eq!(b.status, 200, "{b:?}");
    assert!(b.headers.contains("cache-control: no-store"), "{b:?}");
    let admin = c.leashctl_stdin(&["introspect", "-"], &f.token).json();
    assert_eq!(b.json(), admin);
    assert_eq!(b.json()["active"], true);
    assert_eq!(b.json()["aud"], API_AUD);

    // client_secret_post.
    let post = format!("{form}&client_id=sts&client_secret={secret}");
    let p = curl(&c, &ca, "/introspect", &[], Some(&post));
    assert_eq!((p.status, p.json()["active"].clone()), (200, true.into()));

    // Wrong secret and unknown client: the same 401, whatever the token.
    let wrong = basic_auth(&c, "sts", "leash-ic.not-the-secret");
    let w = curl(&c, &ca, "/introspect", &["-H", &wrong], Some(&form));
    assert_eq!(w.status, 401, "{w:?}");
    let unknown = basic_auth(&c, "nobody", &secret);
    let u = curl(
        &c,
        &ca,
        "/introspect",
        &["-H", &unknown],
        Some("token=garbage"),
    );
    assert_eq!((u.status, &u.body), (401, &w.body));
    // Two methods at once are refused.
    let both = curl(&c, &ca, "/introspect", &["-H", &auth], Some(&post));
    assert_eq!(both.status, 400, "{both:?}");
    // No token.
    let nt = curl(
        &c,
        &ca,
        "/introspect",
        &["-H", &auth],
        Some("token_type_hint=x"),
    );
    assert_eq!(
        (nt.status, nt.json()["error"].clone()),
        (400, "invalid_request".into())
    );

    // tls_client_auth with the agent's host certificate.
    let (cert, key) = host_cert_files(&c);
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let m = curl(
        &c,
        &ca,
        "/introspect",
        &["--cert", &cert, "--key", &key],
        Some(&form),
    );
    assert_eq!(
        (m.status, m.json()["active"].clone()),
        (200, true.into()),
        "{m:?}"
    );

    // Revoked: inactive, with the reason, for every method.
    c.leashctl(&["revoke", "--lease", &f.lease_id, "--wait"])
        .code(0);
    let r = curl(&c, &ca, "/introspect", &["-H", &auth], Some(&form));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (r.json()["active"].clone(), r.json()["state"].clone()),
        (false.into(), "revoked".into())
    );
    let r = curl(
        &c,
        &ca,
        "/introspect",
        &["--cert", &cert, "--key", &key],
        Some(&form),
    );
    assert_eq!(r.json()["active"], false, "{r:?}");
    let g = curl(
        &c,
        &ca,
        "/introspect",
        &["-H", &auth],
        Some("token=garbage"),
    );
    assert_eq!(g.json(), serde_json::json!({ "active": false }));

    // A removed client's secret stops working at once; removing it again is not found.
    c.leashctl(&["introspection-client", "remove", "sts"])
        .code(0);
    let gone = curl(&c, &ca, "/introspect", &["-H", &auth], Some(&form));
    assert_eq!(gone.status, 401, "{gone:?}");
    c.leashctl(&["introspection-client", "remove", "sts"])
        .code(4)
        .stderr_has(&["no introspection client", "sts"]);
    c.leashctl(&["introspection-client", "create", "bad:name"])
        .code(1);

    let kinds: Vec<String> = c
        .audit()
        .iter()
        .filter_map(|e| e["type"].as_str().map(str::to_string))
        .filter(|t| t.starts_with("introspection-client"))
        .collect();
    assert_eq!(
        kinds,
        [
            "introspection-client-created",
            "introspection-client-removed"
        ]
    );
    c.assert_no_secret_leaked();
}

/// PyJWT's `PyJWKClient` follows the discovery document to `/keys` and verifies a
/// token from `leash get`, trusting only the Leash CA.
const PYJWT: &str = r#"
import json, os, ssl, sys, urllib.request
import jwt
ctx = ssl.create_default_context(cafile=os.environ["LEASH_CA"])
issuer = os.environ["ISSUER"]
with urllib.request.urlopen(issuer + "/.well-known/openid-configuration", context=ctx) as r:
    doc = json.load(r)
assert doc["issuer"] == issuer, doc
client = jwt.PyJWKClient(doc["jwks_uri"], ssl_context=ctx)
token = os.environ["TOKEN"]
key = client.get_signing_key_from_jwt(token)
# The test clock may run ahead of the real one (LEEWAY, seconds).
claims = jwt.decode(token, key.key, algorithms=doc["id_token_signing_alg_values_supported"],
                    audience=os.environ["AUD"], issuer=issuer,
                    leeway=int(os.environ.get("LEEWAY", "0")))
print(json.dumps({"sub": claims["sub"], "kid": key.key_id}))
try:
    jwt.decode(token[:-4] + "AAAA", key.key, algorithms=["ES256"], audience=os.environ["AUD"], issuer=issuer,
               leeway=int(os.environ.get("LEEWAY", "0")))
    print("tampered token verified", file=sys.stderr)
    sys.exit(3)
except jwt.InvalidSignatureError:
    pass
"#;

#[test]
fn pyjwt_discovers_the_issuer_and_verifies_a_token() {
    let port = free_port();
    let issuer = format!("https://localhost:{port}");
    // Agents must not fail closed when the clock moves past publish_ahead below.
    let c = Cluster::with(Options::default().max_offline("1h").config(&format!(
        "issuer = {issuer:?}\n[http]\nlisten = \"127.0.0.1:{port}\""
    )));
    basic(&c);
    let ca = ca_file(&c);
    let f = c.get("api", &[]);
    assert_eq!(crate::claims(&f.token)["iss"], issuer.as_str());
    let out = python::run_script(
        PYJWT,
        &[],
        &[
            ("LEASH_CA", ca.to_str().expect("utf-8")),
            ("ISSUER", &issuer),
            ("TOKEN", &f.token),
            ("AUD", API_AUD),
        ],
        Duration::from_secs(60),
    );
    let v = out.json();
    assert_eq!(v["sub"], "spiffe://it.example/ci/job", "{out}");
    let kid = c.leashctl(&["jwks"]).json()["keys"][0]["kid"].clone();
    assert_eq!(v["kid"], kid);

    // After a JWT key rotation: the verifier, fetching `/keys` again, verifies a token
    // signed by the new key, and the one signed before by the old key still verifies.
    let rotated = c
        .leashctl(&["key", "rotate", "jwt", "--output", "json"])
        .json();
    let new_kid = rotated["id"].as_str().expect("id").to_string();
    c.advance_clock(Duration::from_secs(601));
    let g = c.eventually("a token signed by the new key", || {
        let g = c.get("api", &["--fresh"]);
        (crate::header(&g.token)["kid"] == new_kid.as_str()).then_some(g)
    });
    let old_kid = kid.as_str().expect("kid").to_string();
    for (token, want) in [(&g.token, &new_kid), (&f.token, &old_kid)] {
        let out = python::run_script(
            PYJWT,
            &[],
            &[
                ("LEASH_CA", ca.to_str().expect("utf-8")),
                ("ISSUER", &issuer),
                ("TOKEN", token),
                ("AUD", API_AUD),
                // The test clock is 601 s ahead of the real one now.
                ("LEEWAY", "700"),
            ],
            Duration::from_secs(60),
        );
        assert_eq!(out.json()["kid"], want.as_str(), "{out}");
    }
    c.assert_no_secret_leaked();
}

#[test]
fn operator_certificate_files_are_served_and_bad_ones_stop_the_start() {
    // A certificate of the operator's own (here self-signed) is what the listener serves.
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let cert_file = dir.path().join("http.pem");
    let key_file = dir.path().join("http.key");
    std::fs::write(&cert_file, cert.pem()).expect("write");
    std::fs::write(&key_file, key.serialize_pem()).expect("write");
    let c = with_http(
        "",
        &format!(
            "listen = \"127.0.0.1:0\"\ncert_file = {:?}\nkey_file = {:?}",
            cert_file.display().to_string(),
            key_file.display().to_string()
        ),
    );
    let k = curl(&c, &cert_file, "/keys", &[], None);
    assert_eq!(k.status, 200, "{k:?}");

    // A missing key file, a key file that is not PEM, a missing [http] listen: the
    // control plane does not start, and says which file or key is wrong.
    let missing = dir.path().join("missing.key");
    let garbage = dir.path().join("garbage.key");
    std::fs::write(&garbage, "not a key").expect("write");
    for (http, words) in [
        (
            format!(
                "listen = \"127.0.0.1:0\"\ncert_file = {:?}\nkey_file = {:?}",
                cert_file.display().to_string(),
                missing.display().to_string()
            ),
            vec!["key_file".to_string(), missing.display().to_string()],
        ),
        (
            format!(
                "listen = \"127.0.0.1:0\"\ncert_file = {:?}\nkey_file = {:?}",
                cert_file.display().to_string(),
                garbage.display().to_string()
            ),
            vec!["key_file".to_string(), "no PEM private key".to_string()],
        ),
        (
            format!("cert_file = {:?}", cert_file.display().to_string()),
            vec!["http.listen".to_string()],
        ),
    ] {
        let data = dir.path().join("data");
        let config = dir.path().join("cp.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nadmin_socket = {:?}\n[http]\n{http}\n",
                data.display().to_string(),
                dir.path().join("admin.sock").display().to_string()
            ),
        )
        .expect("write config");
        for extra in [&["--check-config"][..], &[][..]] {
            let mut cmd = Command::new(bin("leash-control-plane"));
            cmd.arg("serve").arg("--config").arg(&config).args(extra);
            let out = leash_tests::process::run(cmd, None, COMMAND_TIMEOUT);
            out.code(1);
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            out.stderr_has(&words);
        }
    }
}

/// Sends a request head promising a body it never sends; prints the status line the
/// listener answers with and how long it took.
const SLOW_BODY: &str = r#"
import os, socket, ssl, sys, time
ctx = ssl.create_default_context(cafile=os.environ["LEASH_CA"])
port = int(os.environ["PORT"])
with socket.create_connection(("127.0.0.1", port)) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        start = time.monotonic()
        s.sendall(b"POST /introspect HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\ntoken=")
        s.settimeout(30)
        data = s.recv(4096)
        print(data.split(b"\r\n")[0].decode(), round(time.monotonic() - start))
"#;

#[test]
fn a_body_that_never_arrives_is_cut_off() {
    let c = with_http("", "listen = \"127.0.0.1:0\"");
    let ca = ca_file(&c);
    let port = http_addr(&c).port().to_string();
    let out = python::run_script(
        SLOW_BODY,
        &[],
        &[("LEASH_CA", ca.to_str().expect("utf-8")), ("PORT", &port)],
        Duration::from_secs(60),
    );
    out.code(0);
    let line = out.stdout.trim();
    assert!(line.starts_with("HTTP/1.1 408"), "{out}");
    let secs: u64 = line
        .rsplit(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(99);
    assert!((9..=15).contains(&secs), "cut off after {secs}s\n{out}");
}

#[test]
fn an_issuer_with_a_path_is_served_under_it() {
    let port = free_port();
    let issuer = format!("https://localhost:{port}/leash/");
    let c = with_http(
        &format!("issuer = {issuer:?}"),
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let ca = ca_file(&c);
    let d = curl(
        &c,
        &ca,
        "/leash/.well-known/openid-configuration",
        &[],
        None,
    );
    assert_eq!(d.status, 200, "{d:?}");
    let jwks_uri = d.json()["jwks_uri"].as_str().expect("jwks_uri").to_string();
    assert_eq!(jwks_uri, format!("https://localhost:{port}/leash/keys"));
    let k = curl(&c, &ca, "/leash/keys", &[], None);
    assert_eq!(k.json(), c.leashctl(&["jwks"]).json());
    // The root still answers; other prefixes do not.
    assert_eq!(curl(&c, &ca, "/keys", &[], None).status, 200);
    assert_eq!(curl(&c, &ca, "/other/keys", &[], None).status, 404);
}
