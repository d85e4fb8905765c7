//! Plain HTTP/1.1 + JSON on the agent socket, beside gRPC: curl, a Python client using
//! only its standard library, and raw requests; the same lease as `leash get`, errors as
//! JSON with their HTTP statuses, malformed and oversized requests, idle connections,
//! revocation, and the per-uid caps shared with gRPC.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use leash_tests::{my_uid, Cluster};
use serde_json::Value;

use crate::{apply_policy, basic};

/// A client in another language: Python's `http.client` over an AF_UNIX socket. It
/// sends `count` GETs of `path` on one keep-alive connection and prints one JSON line
/// per answer: the status, the Retry-After header and the body.
const PYTHON_CLIENT: &str = r#"
import http.client, json, socket, sys

class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path):
        super().__init__("leash", timeout=20)
        self.socket_path = socket_path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.socket_path)
        self.sock = s

sock, path = sys.argv[1], sys.argv[2]
count = int(sys.argv[3]) if len(sys.argv) > 3 else 1
conn = UnixHTTPConnection(sock)
for _ in range(count):
    conn.request("GET", path)
    r = conn.getresponse()
    body = json.loads(r.read())
    print(json.dumps({"status": r.status, "retry_after": r.getheader("Retry-After"), "body": body}))
"#;

/// Whether `program --version` runs.
pub(crate) fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `curl --unix-socket SOCK http://leash/TARGET`: the HTTP status and the JSON body.
pub(crate) fn curl(c: &Cluster, target: &str) -> (u16, Value) {
    let sock = c.agent(0).socket.clone();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--unix-socket"])
        .arg(&sock)
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://leash{target}"));
    let out = c.run(cmd);
    out.code(0);
    let (body, code) = out
        .stdout
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("no status line\n{out}"));
    let code: u16 = code.trim().parse().unwrap_or_else(|_| panic!("{out}"));
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON: {e}\n{out}"));
    (code, body)
}

/// The Python client: one `(status, retry_after, body)` per request.
fn python(c: &Cluster, target: &str, count: usize) -> Vec<(u16, Option<String>, Value)> {
    let script = c.dir().join("leash_http.py");
    if !script.exists() {
        std::fs::write(&script, PYTHON_CLIENT).expect("write the Python client");
    }
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg(&c.agent(0).socket)
        .arg(target)
        .arg(count.to_string());
    let out = c.run(cmd);
    out.code(0);
    out.stdout
        .lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {e}\n{out}"));
            (
                v["status"].as_u64().unwrap_or(0) as u16,
                v["retry_after"].as_str().map(str::to_string),
                v["body"].clone(),
            )
        })
        .collect()
}

/// Send `request` on a new connection and read until the agent closes it: the status,
/// the head and the body.
fn raw(sock: &Path, request: &[u8]) -> (u16, String, String) {
    let mut s = UnixStream::connect(sock).expect("connect to the agent socket");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    // The agent may answer and close before reading all of an oversized request.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    split_response(&out)
}

fn split_response(out: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {:?}", &text[..text.len().min(200)]));
    (status, head.to_string(), body.to_string())
}

/// `GET target` on a new connection (closed after the answer): status and JSON body.
fn get(sock: &Path, target: &str) -> (u16, Value) {
    let req = format!("GET {target} HTTP/1.1\r\nHost: leash\r\nConnection: close\r\n\r\n");
    let (status, head, body) = raw(sock, req.as_bytes());
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON: {e}: {body}"));
    (status, v)
}

/// Assert an error document: its HTTP status, reason, exit code and message words.
#[track_caller]
fn error(answer: (u16, Value), status: u16, reason: &str, exit: i64, says: &[&str]) -> Value {
    let (s, v) = answer;
    assert_eq!(s, status, "{v}");
    let e = &v["error"];
    assert_eq!(e["reason"], reason, "{v}");
    assert_eq!(e["exit_code"], exit, "{v}");
    let m = e["message"].as_str().unwrap_or_default();
    for w in says {
        assert!(m.contains(w), "{w:?} not in {m:?}");
    }
    v
}

fn socket(c: &Cluster) -> PathBuf {
    c.agent(0).socket.clone()
}

#[test]
fn curl_python_and_leash_get_share_one_lease() {
    let c = Cluster::start();
    basic(&c);
    let sock = socket(&c);

    // Over raw HTTP first: a fresh lease, the document of `leash get --output json`.
    let (s, first) = get(&sock, "/v1/credentials/api");
    assert_eq!(s, 200, "{first}");
    let token = first["token"].as_str().expect("token").to_string();
    c.remember_secret(&token);
    assert_eq!(first["kind"], "jwt");
    assert_eq!(first["cached"], false);
    assert_eq!(first["workload"], "ci/job");
    assert_eq!(first["audience"], crate::API_AUD);
    let lease = first["lease_id"].as_str().expect("lease_id").to_string();

    // `leash get` is served the same lease from the cache, with the same fields.
    let cli = c.get("api", &[]);
    assert_eq!((cli.lease_id.as_str(), cli.cached), (lease.as_str(), true));
    assert_eq!(cli.token, token);
    for k in [
        "token",
        "expires_at",
        "expires_at_unix",
        "lease_id",
        "workload",
        "audience",
    ] {
        assert_eq!(cli.json[k], first[k], "{k}");
    }
    assert_eq!(c.lease(&lease)["workload"], "ci/job");

    if have("curl") {
        let (s, v) = curl(&c, "/v1/credentials/api");
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (v["lease_id"].as_str(), v["cached"].as_bool()),
            (Some(lease.as_str()), Some(true))
        );
        assert_eq!(v["token"], token.as_str());
        let (s, w) = curl(&c, "/v1/whoami");
        assert_eq!(s, 200, "{w}");
        assert_eq!(w["uid"], my_uid());
        assert_eq!(w["workloads"], serde_json::json!(["ci/job"]));
        assert_eq!(w["host"], "host-1");
        assert!(
            w["exe_path"].as_str().is_some_and(|p| p.ends_with("curl")),
            "{w}"
        );
        // A different request is a different lease, as with `leash get --ttl 2m`.
        let (s, v) = curl(&c, "/v1/credentials/api?ttl=2m&fresh=true");
        assert_eq!((s, v["cached"].as_bool()), (200, Some(false)), "{v}");
        assert_ne!(v["lease_id"], lease.as_str());
    } else {
        eprintln!("skipped the curl part: curl is missing");
    }

    if have("python3") {
        let answers = python(&c, "/v1/credentials/api", 2);
        assert_eq!(answers.len(), 2);
        for (s, _, v) in &answers {
            assert_eq!(*s, 200, "{v}");
            assert_eq!(v["lease_id"], lease.as_str());
            assert_eq!(v["cached"], true);
        }
        let (s, _, st) = &python(&c, "/v1/status", 1)[0];
        assert_eq!(*s, 200, "{st}");
        let cli = c.status();
        let keys = |v: &Value| {
            let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(st),
            keys(&cli),
            "the document of `leash status --output json`"
        );
        assert_eq!(
            (st["host"].as_str(), st["state"].as_str()),
            (Some("host-1"), Some("ready"))
        );
        let (s, _, w) = &python(&c, "/v1/whoami", 1)[0];
        assert_eq!(*s, 200, "{w}");
        assert_eq!(w["workloads"], serde_json::json!(["ci/job"]));
    } else {
        eprintln!("skipped the Python part: python3 is missing");
    }

    // One lease for all of them (plus the ttl=2m one): nothing else was issued.
    let issued = c
        .audit()
        .iter()
        .filter(|e| e["type"] == "issued" && e["credential"] == "api")
        .count();
    assert_eq!(issued, if have("curl") { 2 } else { 1 });
    c.assert_no_secret_leaked();
}

const APPROVAL_POLICY: &str = r#"@id("reads")
permit(principal, action == Leash::Action::"read", resource);

@id("admin-needs-approval")
@approval("required")
permit(principal, action == Leash::Action::"admin", resource);
"#;

#[test]
fn errors_are_json_with_reason_exit_code_and_http_status() {
    let mut c = Cluster::start();
    let sock = socket(&c);
    // No workload matches this caller yet.
    error(
        get(&sock, "/v1/credentials/api"),
        403,
        "DENIED",
        2,
        &["no workload matches", "leashctl workload add"],
    );
    basic(&c);
    c.credential("db", &["--audience", "https://db.example"]);
    // Denied by the control plane: not allowed this credential.
    error(
        get(&sock, "/v1/credentials/db"),
        403,
        "DENIED",
        2,
        &["--allow db"],
    );
    // Unknown credential.
    error(
        get(&sock, "/v1/credentials/nope"),
        404,
        "NOT_FOUND",
        4,
        &["no credential named \"nope\""],
    );
    // Bad input: in the query, and as the control plane judges it.
    error(
        get(&sock, "/v1/credentials/api?ttl=soon"),
        400,
        "INVALID",
        1,
        &["ttl \"soon\" is not a duration"],
    );
    error(
        get(&sock, "/v1/credentials/api?colour=blue"),
        400,
        "INVALID",
        1,
        &[
            "unknown query parameter \"colour\"",
            "action, audience, ttl",
        ],
    );
    error(
        get(&sock, "/v1/credentials/api?ttl=9000h"),
        400,
        "INVALID",
        1,
        &["above the max_ttl"],
    );
    error(
        get(&sock, "/v1/credentials/api?as=someone%2Felse"),
        403,
        "DENIED",
        2,
        &["not attested as workload \"someone/else\""],
    );
    error(
        get(&sock, "/v1/credentials/api?field=password"),
        400,
        "INVALID",
        1,
        &["not a json-format secret", "\"password\""],
    );
    // No such endpoint; the path is not echoed.
    let v = error(
        get(&sock, "/v1/secrets-and-more"),
        404,
        "NOT_FOUND",
        4,
        &["GET /v1/credentials/NAME"],
    );
    assert!(!v.to_string().contains("secrets-and-more"), "{v}");
    error(
        get(&sock, "/v1/whoami?x=1"),
        400,
        "INVALID",
        1,
        &["no query"],
    );
    // Another method: 405 with Allow.
    let (s, head, body) = raw(
        &sock,
        b"DELETE /v1/credentials/api HTTP/1.1\r\nHost: leash\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(s, 405, "{head}\n{body}");
    assert!(head.to_ascii_lowercase().contains("allow: get"), "{head}");
    assert!(body.contains("\"INVALID\""), "{body}");
    // A body: 413, and the connection is not reused.
    let (s, head, body) = raw(
        &sock,
        b"GET /v1/credentials/api HTTP/1.1\r\nHost: leash\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(s, 413, "{head}\n{body}");
    assert!(body.contains("no request body"), "{body}");

    // Waiting for a human: 409 with the approval id.
    c.my_workload("ops/tool", "team-ops", &[]);
    apply_policy(&c, "approval.cedar", APPROVAL_POLICY, &[]);
    let v = error(
        get(&sock, "/v1/credentials/api?as=ops%2Ftool&action=admin"),
        409,
        "PENDING",
        3,
        &["leashctl approval approve"],
    );
    let id = v["error"]["approval_id"].as_str().expect("approval_id");
    assert!(id.starts_with("ap-"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(id),
        "{v}"
    );
    c.leashctl(&["approval", "approve", id]).ok();
    let (s, v) = get(&sock, "/v1/credentials/api?as=ops%2Ftool&action=admin");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["action"], "admin");
    c.remember_secret(v["token"].as_str().unwrap_or_default());
    assert!(c.agent_alive(0));
}

#[test]
fn malformed_oversized_and_idle_connections_are_refused_and_the_agent_keeps_serving() {
    let mut c = Cluster::start();
    basic(&c);
    let sock = socket(&c);
    let before = c.get("api", &[]);

    // Not HTTP at all, and a broken request line: 400 from the parser.
    for junk in [
        &b"hello there\r\n\r\n"[..],
        b"GET /v1/status HTTP/9.9\r\n\r\n",
        b"GET /v1/status HTTP/1.1\r\nBad Header\r\n\r\n",
    ] {
        let (s, head, _) = raw(&sock, junk);
        assert_eq!(s, 400, "{:?}: {head}", String::from_utf8_lossy(junk));
    }
    // A request head over the socket's 64 KiB limit: 431.
    let huge = format!(
        "GET /v1/status HTTP/1.1\r\nHost: leash\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let (s, head, _) = raw(&sock, huge.as_bytes());
    assert_eq!(s, 431, "{head}");
    // A long request target (under the head limit): 414, as JSON, not echoed.
    let long = format!(
        "GET /v1/credentials/{} HTTP/1.1\r\nHost: leash\r\nConnection: close\r\n\r\n",
        "n".repeat(20 * 1024)
    );
    let (s, _, body) = raw(&sock, long.as_bytes());
    assert_eq!(s, 414, "{body}");
    assert!(
        body.contains("over the limit") && !body.contains("nnnnnnnn"),
        "{body}"
    );
    // A long name within the target limit is checked like any name, and quoted cut.
    let (s, v) = get(&sock, &format!("/v1/credentials/{}", "n".repeat(4000)));
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().len() < 1024, "{v}");

    // Keep-alive: two requests on one connection, then it is closed once idle.
    let mut conn = UnixStream::connect(&sock).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    for _ in 0..2 {
        conn.write_all(b"GET /v1/status HTTP/1.1\r\nHost: leash\r\n\r\n")
            .expect("write");
        let (s, head, body) = read_one(&mut conn);
        assert_eq!(s, 200, "{head}\n{body}");
    }
    let idle = Instant::now();
    let mut buf = [0u8; 64];
    let n = conn
        .read(&mut buf)
        .expect("the agent closes, it does not reset");
    assert_eq!(n, 0, "the idle connection was closed");
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(25),
        "closed after {waited:?}; the idle timeout is 10 s"
    );

    // gRPC on the same socket is unaffected, and so is the cache.
    assert!(c.agent_alive(0), "{}", c.logs_dump());
    let after = c.get("api", &[]);
    assert_eq!((after.lease_id, after.cached), (before.lease_id, true));
}

/// Read one HTTP/1.1 response with a Content-Length body from a kept connection.
fn read_one(conn: &mut UnixStream) -> (u16, String, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).expect("read a response");
        assert!(n > 0, "closed before a whole response: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            if body.len() >= len {
                return split_response(&got);
            }
        }
    }
}

#[test]
fn revocation_wipes_what_http_callers_were_given() {
    let c = Cluster::start();
    basic(&c);
    let sock = socket(&c);
    let (s, first) = get(&sock, "/v1/credentials/api");
    assert_eq!(s, 200, "{first}");
    c.remember_secret(first["token"].as_str().unwrap_or_default());
    let lease = first["lease_id"].as_str().expect("lease").to_string();
    let (_, again) = get(&sock, "/v1/credentials/api");
    assert_eq!(
        (again["lease_id"].as_str(), again["cached"].as_bool()),
        (Some(lease.as_str()), Some(true))
    );
    assert_eq!(c.cached_at(0), 1);

    c.leashctl(&[
        "revoke",
        "--lease",
        &lease,
        "--reason",
        "test",
        "--wait",
        "--timeout",
        "10s",
    ])
    .ok();
    // Acknowledged means wiped: the next HTTP caller gets a new lease.
    assert_eq!(c.cached_at(0), 0);
    let (s, next) = get(&sock, "/v1/credentials/api");
    assert_eq!(s, 200, "{next}");
    c.remember_secret(next["token"].as_str().unwrap_or_default());
    assert_eq!(next["cached"], false);
    assert_ne!(next["lease_id"], lease.as_str());
    assert_ne!(next["token"], first["token"]);
    assert_eq!(c.lease(&lease)["state"], "revoked");
    c.assert_no_secret_leaked();
}

#[test]
fn http_callers_share_the_connection_cap_and_request_allowance() {
    let c = Cluster::with(leash_tests::Options::default().agent_args(&[
        "--max-connections-per-uid",
        "3",
        "--requests-per-uid",
        "20",
    ]));
    basic(&c);
    let sock = socket(&c);
    // Three silent connections use up this uid's allowance: the next HTTP request is
    // answered 503 with the limit, as gRPC callers are told.
    let held: Vec<UnixStream> = (0..3)
        .map(|_| UnixStream::connect(&sock).expect("connect"))
        .collect();
    c.eventually("an HTTP request over the connection cap is refused", || {
        let (s, v) = get(&sock, "/v1/status");
        (s == 503).then_some(v)
    });
    let v = error(
        get(&sock, "/v1/whoami"),
        503,
        "UNAVAILABLE",
        5,
        &["too many connections", "limit 3"],
    );
    assert!(v["error"].get("approval_id").is_none());
    drop(held);
    c.eventually("the connections were released", || {
        (get(&sock, "/v1/whoami").0 == 200).then_some(())
    });

    if !have("python3") {
        eprintln!("skipped the request-allowance part: python3 is missing");
        return;
    }
    // A burst on one kept connection: past 20 a second, 429 with Retry-After. Moving
    // the clock refills the allowance, so the burst starts full however slow this
    // machine is.
    c.advance_clock(Duration::from_millis(1100));
    let answers = python(&c, "/v1/whoami", 200);
    let ok = answers.iter().filter(|(s, _, _)| *s == 200).count();
    let limited: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert!(ok >= 20, "the allowance was not served: {ok}");
    assert!(!limited.is_empty(), "200 requests at once were not limited");
    let (_, retry, body) = limited[0];
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(body["error"]["reason"], "INVALID");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("too many requests")),
        "{body}"
    );
    assert_eq!(ok + limited.len(), 200, "nothing but 200 and 429");
    c.advance_clock(Duration::from_millis(1100));
    c.leash(&["whoami"]).code(0);
}

#[test]
#[ignore = "needs root: a second uid through setpriv"]
fn an_http_caller_of_another_uid_is_attested_as_itself() {
    leash_tests::require_root();
    if !have("curl") {
        eprintln!("skipped: curl is missing");
        return;
    }
    let c = Cluster::start();
    basic(&c);
    let curl = which("curl");
    let mut cmd = leash_tests::as_nobody(&curl);
    cmd.args(["-sS", "--unix-socket"])
        .arg(socket(&c))
        .arg("http://leash/v1/credentials/api");
    let out = c.run(cmd);
    out.code(0);
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(v["error"]["reason"], "DENIED", "{v}");
    let m = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("no workload matches") && m.contains("unix:uid:65534"),
        "{m}"
    );
    assert!(!out.stdout.contains("eyJ"), "no token for another uid");
}

/// Where `program` is on $PATH.
fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(program))
                .find(|f| f.is_file())
        })
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}
