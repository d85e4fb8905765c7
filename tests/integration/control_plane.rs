//! The control plane: enrollment and its refusals, mTLS, the Sync stream as a
//! test agent sees it, Issue and the JWT claims, durability across SIGKILL, and bad
//! input of every kind.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use leash_agentd::identity;
use leash_proto::v1;
use leash_proto::v1::control_message::Msg;
use leash_tests::{as_nobody, bin, my_uid, process, require_root, Cluster, TRUST_DOMAIN, WAIT};
use ring::rand::SecureRandom;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::{basic, cp_client, host_credentials, rt, timeline_types, API_AUD};

/// The `denied` events of the audit trail whose reason mentions `fragment`.
fn denied_events(c: &Cluster, fragment: &str) -> Vec<serde_json::Value> {
    c.audit()
        .into_iter()
        .filter(|e| e["type"] == "denied")
        .filter(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.to_lowercase().contains(&fragment.to_lowercase()))
        })
        .collect()
}

/// Start an agent with `token`: it must exit 2 saying `reason`, and the control plane
/// must record a `denied` event saying the same.
#[track_caller]
fn assert_refused(c: &Cluster, token: &str, reason: &str) {
    let (code, log) = c.enroll_expecting_exit(token, &[]);
    assert_eq!(code, 2, "a refused enrollment exits 2\n{log}");
    assert!(
        log.to_lowercase().contains(&reason.to_lowercase()),
        "the agent does not say {reason:?}\n{log}"
    );
    // The log is read from the daemon's pipe by a thread: wait for the line rather than
    // race the reader.
    c.eventually("the control plane logs the refusal", || {
        c.control_plane_log()
            .contains("enrollment refused")
            .then_some(())
    });
    assert!(
        !denied_events(c, reason).is_empty(),
        "no denied event mentions {reason:?}\n{:#?}",
        c.audit()
    );
}

fn random_secret() -> String {
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("randomness");
    URL_SAFE_NO_PAD.encode(b)
}

/// `leash-join.v1.<id>.<secret>.<pin>` split into its parts.
fn token_parts(t: &str) -> (String, String, String) {
    let p: Vec<&str> = t.splitn(5, '.').collect();
    assert_eq!(p.len(), 5, "unexpected token format {t:?}");
    (p[2].to_string(), p[3].to_string(), p[4].to_string())
}

#[test]
fn enrollment_registers_the_host_and_the_agent_serves() {
    let c = Cluster::start();
    let hosts = c.leashctl(&["host", "list", "--output", "json"]).json();
    let hosts = hosts.as_array().expect("host list is an array");
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(hosts[0]["name"], "host-1");
    assert_eq!(hosts[0]["connected"], true);
    assert_eq!(hosts[0]["evicted"], false);

    // The token was consumed by this host, and its secret is never listed.
    let list = c.leashctl(&["join-token", "list", "--output", "json"]);
    let tokens = list.json();
    assert_eq!(tokens[0]["state"], "used", "{tokens}");
    assert_eq!(tokens[0]["used_by"], "host-1", "{tokens}");
    for s in c.secrets() {
        let (_, secret, _) = token_parts(&s);
        assert!(
            !list.stdout.contains(&secret),
            "join-token list shows a secret\n{list}"
        );
    }

    let enrolled: Vec<_> = c
        .audit()
        .into_iter()
        .filter(|e| e["type"] == "enrolled")
        .collect();
    assert_eq!(enrolled.len(), 1, "{enrolled:?}");
    assert_eq!(enrolled[0]["host"], "host-1");

    let st = c.status();
    assert_eq!(st["state"], "ready", "{st}");
    assert_eq!(st["synced"], true, "{st}");
    assert_eq!(st["host"], "host-1", "{st}");
    // Serving: whoami attests us.
    let me = c.leash(&["whoami", "--output", "json"]).json();
    assert_eq!(me["uid"], my_uid());

    // Modes as docs/SECURITY.md sets them: admin socket 0660; workload socket 0666 in a 0755
    // dir; state and data dirs 0700, the host's files 0600.
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&c.admin_socket), 0o660, "admin socket");
    let sock = &c.agent(0).socket;
    assert_eq!(mode(sock), 0o666, "workload socket");
    assert_eq!(
        mode(sock.parent().expect("dir")),
        0o755,
        "workload socket dir"
    );
    assert_eq!(mode(&c.agent(0).state_dir), 0o700, "state dir");
    for f in leash_tests::files_under(&c.agent(0).state_dir) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    assert_eq!(mode(&c.data_dir), 0o700, "data dir");
}

#[test]
fn agent_flags_can_only_narrow_what_the_token_binds() {
    let mut c = Cluster::start();
    // Labels: a subset is fine, anything else is refused.
    let token = c.join_token(&[
        "--name", "runner-1", "--label", "role=ci", "--label", "zone=a",
    ]);
    let (code, log) = c.enroll_expecting_exit(&token, &["--label", "role=prod"]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("not bound in the join token"), "{log}");
    // The name bound in the token cannot be changed either.
    let (code, log) = c.enroll_expecting_exit(&token, &["--name", "runner-2"]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("binds the name"), "{log}");
    // The refusals did not use the token up: narrowing works with it.
    let i = c.add_agent_with("runner-1", &token, &["--label", "role=ci"]);
    let hosts = c.leashctl(&["host", "list", "--output", "json"]).json();
    let h = hosts
        .as_array()
        .expect("array")
        .iter()
        .find(|h| h["name"] == "runner-1")
        .unwrap_or_else(|| panic!("{hosts}"));
    assert_eq!(h["labels"], serde_json::json!({ "role": "ci" }), "{hosts}");
    assert_eq!(c.status_at(i)["host"], "runner-1");
    // A token without a name lets the agent choose one, but never a taken one.
    let free = c.join_token(&[]);
    let (code, log) = c.enroll_expecting_exit(&free, &["--name", "host-1"]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("taken"), "{log}");
    c.leashctl(&["join-token", "create", "--name", "host-1"])
        .code(1)
        .stderr_has(&["never reused"]);
    c.leashctl(&["join-token", "create", "--ttl", "30d"])
        .code(1)
        .stderr_has(&["7 days"]);
}

#[test]
fn binaries_answer_version_and_usage_errors_exit_1() {
    for b in ["leash-control-plane", "leashctl", "leash-agentd", "leash"] {
        let mut cmd = Command::new(bin(b));
        cmd.arg("--version");
        let out = process::run(cmd, None, Duration::from_secs(20));
        assert!(out.ok().starts_with(b), "{out}");
        // clap would exit 2, which Leash reserves for "denied".
        let mut cmd = Command::new(bin(b));
        cmd.arg("--no-such-flag");
        process::run(cmd, None, Duration::from_secs(20))
            .code(1)
            .stderr_has(&["--no-such-flag"]);
    }
    let mut cmd = Command::new(bin("leash"));
    cmd.args(["--socket", "/nonexistent/agent.sock", "get"]);
    process::run(cmd, None, Duration::from_secs(20)).code(1);
    let mut cmd = Command::new(bin("leashctl"));
    cmd.args([
        "--admin-socket",
        "/nonexistent/admin.sock",
        "revoke",
        "--lease",
        "l-1",
        "--all",
    ]);
    process::run(cmd, None, Duration::from_secs(20)).code(1);
    let mut cmd = Command::new(bin("leashctl"));
    cmd.args([
        "--admin-socket",
        "/nonexistent/admin.sock",
        "workload",
        "list",
    ]);
    process::run(cmd, None, Duration::from_secs(20))
        .code(5)
        .stderr_has(&["leash-control-plane running"]);
}

#[test]
fn stale_socket_files_are_replaced_only_if_they_are_sockets() {
    // The control plane: a regular file where the admin socket goes is left alone.
    let dir = tempfile::tempdir().expect("temp dir");
    let sock = dir.path().join("admin.sock");
    std::fs::write(&sock, "precious").expect("write");
    let mut cmd = Command::new(bin("leash-control-plane"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--admin-socket")
        .arg(&sock)
        .env("LEASH_LOG", "info");
    let out = process::run(cmd, None, Duration::from_secs(20));
    assert_ne!(out.code, 0, "{out}");
    out.stderr_has(&["not a socket"]);
    assert_eq!(
        std::fs::read_to_string(&sock).expect("still there"),
        "precious"
    );

    // A socket left behind by a killed control plane is replaced.
    let mut c = Cluster::start();
    c.kill_control_plane();
    assert!(
        c.admin_socket.exists(),
        "SIGKILL leaves the socket file behind"
    );
    c.restart_control_plane();
    c.leashctl(&["host", "list"]).ok();

    // The agent: the same for its workload socket.
    c.kill_agent_at(0);
    let agent_sock = c.agent(0).socket.clone();
    assert!(agent_sock.exists(), "SIGKILL leaves the socket file behind");
    c.start_agent();
    c.leash(&["status"]).ok();
    c.stop_agent();
    std::fs::write(&agent_sock, "precious").expect("write");
    let mut d = c.spawn_agent_unready(0);
    let code = d.wait_exit(WAIT);
    assert_ne!(code, 0, "{}", d.log().text());
    assert!(
        d.log().text().contains("not a socket"),
        "{}",
        d.log().text()
    );
    assert_eq!(
        std::fs::read_to_string(&agent_sock).expect("still there"),
        "precious"
    );
}

#[test]
fn audit_tail_follows_and_export_reads_back() {
    let c = Cluster::start();
    let mut follow = c.leashctl_command();
    follow.args(["audit", "tail", "--follow", "--lines", "1"]);
    let mut d = leash_tests::Daemon::spawn("audit tail --follow", follow);
    d.wait_for_line("\"type\":", WAIT);
    basic(&c);
    c.get("api", &[]);
    let line = d.wait_for_line("\"issued\"", WAIT);
    let e: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(e["host"], "host-1");
    assert_eq!(e["workload"], "ci/job");
    assert!(
        e["detail"]["fingerprint"]
            .as_str()
            .is_some_and(|f| !f.is_empty()),
        "{e}"
    );
    drop(d);
    let out = c.leashctl(&["audit", "export", "--since", "1h"]);
    let kinds: Vec<String> = out
        .ok()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("JSON line")["type"].to_string()
        })
        .collect();
    for k in [
        "join-token-created",
        "enrolled",
        "credential-added",
        "workload-added",
        "issued",
    ] {
        assert!(
            kinds.iter().any(|x| x.trim_matches('"') == k),
            "{k} missing from {kinds:?}"
        );
    }
    c.leashctl(&["audit", "export", "--since", "yesterday"])
        .code(1);
}

#[test]
fn reused_join_token_is_refused() {
    let mut c = Cluster::start();
    let token = c.join_token(&["--name", "host-2"]);
    c.add_agent_with_token("host-2", &token);
    assert_refused(&c, &token, "already used");
}

#[test]
fn expired_join_token_is_refused() {
    let c = Cluster::start();
    let token = c.join_token(&["--ttl", "1s"]);
    let (id, _, _) = token_parts(&token);
    // Past its TTL on the control plane's clock, rather than waiting for it.
    c.advance_clock(Duration::from_secs(2));
    c.eventually("the join token has expired", || {
        let v = c
            .leashctl(&["join-token", "list", "--output", "json"])
            .json();
        v.as_array()?
            .iter()
            .any(|t| t["id"] == id.as_str() && t["state"] == "expired")
            .then_some(())
    });
    assert_refused(&c, &token, "expired");
}

#[test]
fn revoked_join_token_is_refused() {
    let c = Cluster::start();
    let token = c.join_token(&[]);
    let (id, _, _) = token_parts(&token);
    c.leashctl(&["join-token", "revoke", &id]).ok();
    let v = c
        .leashctl(&["join-token", "list", "--output", "json"])
        .json();
    assert!(
        v.as_array()
            .expect("array")
            .iter()
            .any(|t| t["id"] == id.as_str() && t["state"] == "revoked"),
        "{v}"
    );
    assert_refused(&c, &token, "revoked");
    // Unknown token ids are reported as such.
    c.leashctl(&["join-token", "revoke", "jt-000000000000"])
        .code(4);
}

#[test]
fn forged_and_malformed_join_tokens_are_refused() {
    let c = Cluster::start();
    let real = c.join_token(&[]);
    let (id, _, pin) = token_parts(&real);
    // A real id with a secret of the right format that was never minted.
    let forged = format!("leash-join.v1.{id}.{}.{pin}", random_secret());
    assert_refused(&c, &forged, "does not match");
    // Without the secret, a token's bound name is not revealed, whatever name is asked.
    let bound = c.join_token(&["--name", "bound-host"]);
    let (bid, _, _) = token_parts(&bound);
    let forged = format!("leash-join.v1.{bid}.{}.{pin}", random_secret());
    let (code, log) = c.enroll_expecting_exit(&forged, &["--name", "other-host"]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("does not match"), "{log}");
    assert!(!log.contains("bound-host"), "the bound name leaked\n{log}");
    // An id that was never minted.
    let unknown = format!("leash-join.v1.jt-0123456789ab.{}.{pin}", random_secret());
    // Refused with its reason; its audit record is the source's aggregated
    // `enroll-refused` event (see host_trust.rs), not a `denied` event of its own.
    let (code, log) = c.enroll_expecting_exit(&unknown, &[]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("unknown join token"), "{log}");
    // Not a token at all: refused by the agent before it calls anyone.
    let (code, log) = c.enroll_expecting_exit("leash-join.v1.nonsense", &[]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("malformed join token"), "{log}");
    // The real token was not burnt by the forgeries.
    let v = c
        .leashctl(&["join-token", "list", "--output", "json"])
        .json();
    assert!(
        v.as_array()
            .expect("array")
            .iter()
            .any(|t| t["id"] == id.as_str() && t["state"] == "active"),
        "{v}"
    );
}

#[test]
fn join_token_from_another_control_plane_is_refused_by_its_pin() {
    let c = Cluster::start();
    let other = Cluster::control_plane_only();
    assert_ne!(c.ca_pin, other.ca_pin);
    let token = other.join_token(&[]);
    let (code, log) = c.enroll_expecting_exit(&token, &[]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("does not match the pin"), "{log}");
}

#[test]
fn calls_other_than_enroll_need_a_client_certificate() {
    let c = Cluster::start();
    let rt = rt();
    rt.block_on(async {
        let mut cp = cp_client(&c, None)
            .await
            .expect("TLS without a client certificate");
        let need_cert = |what: &str, r: Result<(), tonic::Status>| {
            let s = r.expect_err(what);
            assert_eq!(s.code(), Code::PermissionDenied, "{what}: {s:?}");
            assert!(s.message().contains("client certificate"), "{what}: {s:?}");
        };
        need_cert(
            "Issue",
            cp.issue(v1::IssueRequest {
                workload: "ci/job".into(),
                credential: "api".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        );
        need_cert(
            "Renew",
            cp.renew(v1::RenewRequest::default()).await.map(drop),
        );
        need_cert(
            "Introspect",
            cp.introspect(v1::IntrospectRequest::default())
                .await
                .map(drop),
        );
        need_cert(
            "CompleteTask",
            cp.complete_task(v1::CompleteTaskRequest::default())
                .await
                .map(drop),
        );
        let hello = v1::AgentMessage {
            msg: Some(v1::agent_message::Msg::Hello(v1::SyncHello {
                protocol_version: leash_proto::PROTOCOL_VERSION,
                last_seq: 0,
                agent_version: "test".into(),
            })),
        };
        need_cert(
            "Sync",
            cp.sync(tokio_stream::iter(vec![hello])).await.map(drop),
        );
        // Enroll is answered without one: here it is refused for its token, not for the
        // missing certificate.
        let s = cp
            .enroll(v1::EnrollRequest {
                protocol_version: leash_proto::PROTOCOL_VERSION,
                join_token: "leash-join.v1.nonsense".into(),
                ..Default::default()
            })
            .await
            .expect_err("a nonsense token is refused");
        assert!(!s.message().contains("client certificate"), "{s:?}");
        assert!(s.message().contains("join token"), "{s:?}");
    });

    // A certificate from another control plane's CA is not accepted either.
    let other = Cluster::control_plane_only();
    let token = other.join_token(&["--name", "stranger"]);
    let state = other.dir().join("stranger-state");
    let addrs = [other.addr.to_string()];
    identity::prepare_state_dir(&state).expect("state dir");
    rt.block_on(identity::enroll(
        &state,
        &addrs,
        &token,
        None,
        None,
        BTreeMap::new(),
    ))
    .expect("the stranger enrolls with its own control plane");
    let creds = host_credentials(&state);
    let r = rt.block_on(async {
        let mut cp = cp_client(&c, Some(creds))
            .await
            .map_err(|e| e.to_string())?;
        cp.issue(v1::IssueRequest {
            workload: "ci/job".into(),
            credential: "api".into(),
            ..Default::default()
        })
        .await
        .map(drop)
        .map_err(|s| format!("{s:?}"))
    });
    assert!(r.is_err(), "a foreign client certificate was accepted");
    // ...and the control plane still serves its own agent.
    assert_eq!(c.status()["synced"], true);
    c.leashctl(&["host", "list"]).ok();
}

/// Open a Sync stream as an agent would, resuming from `last_seq`.
pub(crate) async fn open_sync(
    cp: &mut leash_proto::v1::control_plane_client::ControlPlaneClient<tonic::transport::Channel>,
    last_seq: u64,
) -> (
    tokio::sync::mpsc::Sender<v1::AgentMessage>,
    tonic::Streaming<v1::ControlMessage>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Hello(v1::SyncHello {
            protocol_version: leash_proto::PROTOCOL_VERSION,
            last_seq,
            agent_version: "test".into(),
        })),
    })
    .await
    .expect("hello queued");
    let inbound = cp
        .sync(ReceiverStream::new(rx))
        .await
        .expect("Sync is accepted with the host certificate")
        .into_inner();
    (tx, inbound)
}

/// The next message that is not a heartbeat or a trust bundle (neither is sequenced).
pub(crate) async fn next_msg(inbound: &mut tonic::Streaming<v1::ControlMessage>) -> Msg {
    loop {
        let m = tokio::time::timeout(WAIT, inbound.message())
            .await
            .expect("a Sync message within the timeout")
            .expect("the Sync stream is healthy")
            .expect("the Sync stream is open");
        match m.msg.expect("message has a body") {
            Msg::Heartbeat(_) | Msg::Bundle(_) => continue,
            other => return other,
        }
    }
}

#[test]
fn sync_sends_state_caught_up_changes_and_resumes_from_a_sequence() {
    let c = Cluster::control_plane_only();
    c.credential("api", &["--audience", API_AUD]);
    c.leashctl(&[
        "workload",
        "add",
        "before",
        "--owner",
        "team",
        "--selector",
        "unix:uid:4242",
        "--allow",
        "api",
    ])
    .ok();
    let token = c.join_token(&["--name", "raw-1"]);
    let state = c.dir().join("raw-state");
    let addrs = [c.addr.to_string()];
    let rt = rt();
    identity::prepare_state_dir(&state).expect("state dir");
    let id = rt
        .block_on(identity::enroll(
            &state,
            &addrs,
            &token,
            None,
            None,
            BTreeMap::new(),
        ))
        .expect("the test agent enrolls");
    assert_eq!(id.desc.host, "raw-1");
    assert_eq!(id.desc.trust_domain, TRUST_DOMAIN);
    let mut cp = rt
        .block_on(cp_client(&c, Some(host_credentials(&state))))
        .expect("mTLS with the host certificate");

    // A fresh agent: the initial state as a snapshot, then "caught up".
    let (tx, mut inbound) = rt.block_on(open_sync(&mut cp, 0));
    let snap = match rt.block_on(next_msg(&mut inbound)) {
        Msg::Snapshot(s) => s,
        other => panic!("expected a snapshot first, got {other:?}"),
    };
    let names: Vec<_> = snap
        .workloads
        .iter()
        .filter_map(|e| e.workload.as_ref())
        .map(|w| w.name.clone())
        .collect();
    assert_eq!(names, vec!["before".to_string()]);
    let caught_up = match rt.block_on(next_msg(&mut inbound)) {
        Msg::CaughtUp(c) => c,
        other => panic!("expected caught-up after the snapshot, got {other:?}"),
    };
    assert!(caught_up.seq >= snap.seq);
    assert_eq!(caught_up.max_offline_secs, 300);
    rt.block_on(tx.send(v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Ack(v1::SyncAck {
            seq: caught_up.seq,
        })),
    }))
    .expect("ack");

    // A change made now is pushed, with a higher sequence number.
    c.leashctl(&[
        "workload",
        "add",
        "after",
        "--owner",
        "team",
        "--selector",
        "unix:uid:4242",
        "--allow",
        "api",
    ])
    .ok();
    let pushed = match rt.block_on(next_msg(&mut inbound)) {
        Msg::Workload(e) => e,
        other => panic!("expected the new workload, got {other:?}"),
    };
    assert_eq!(
        pushed.workload.as_ref().map(|w| w.name.as_str()),
        Some("after")
    );
    assert!(pushed.seq > caught_up.seq, "{pushed:?} after {caught_up:?}");
    // Heartbeats flow and carry the sequence reached.
    let hb = rt.block_on(async {
        loop {
            let m = tokio::time::timeout(WAIT, inbound.message())
                .await
                .expect("a heartbeat within the timeout")
                .expect("healthy stream")
                .expect("open stream");
            if let Some(Msg::Heartbeat(h)) = m.msg {
                return h;
            }
        }
    });
    assert!(hb.seq >= pushed.seq, "{hb:?}");
    drop(tx);
    drop(inbound);

    // Resume from the caught-up sequence: only what was missed, no snapshot.
    let (_tx2, mut inbound) = rt.block_on(open_sync(&mut cp, caught_up.seq));
    match rt.block_on(next_msg(&mut inbound)) {
        Msg::Workload(e) => {
            assert_eq!(e.workload.as_ref().map(|w| w.name.as_str()), Some("after"));
            assert_eq!(e.seq, pushed.seq);
        }
        other => panic!("expected the missed workload on resume, got {other:?}"),
    }
    match rt.block_on(next_msg(&mut inbound)) {
        Msg::CaughtUp(cu) => assert_eq!(cu.seq, pushed.seq),
        other => panic!("expected caught-up after the backlog, got {other:?}"),
    }
    drop(inbound);

    // Resume from the latest sequence: straight to caught up.
    let (_tx3, mut inbound) = rt.block_on(open_sync(&mut cp, pushed.seq));
    match rt.block_on(next_msg(&mut inbound)) {
        Msg::CaughtUp(cu) => assert_eq!(cu.seq, pushed.seq),
        other => panic!("expected caught-up at once, got {other:?}"),
    }

    // Issue over mTLS, for a caller the agent attested.
    let attested = |uid: u32| v1::Attested {
        pid: 1,
        uid,
        gid: uid,
        selectors: vec![format!("unix:uid:{uid}")],
        ..Default::default()
    };
    let r = rt
        .block_on(cp.issue(v1::IssueRequest {
            workload: "after".into(),
            credential: "api".into(),
            attested: Some(attested(4242)),
            ..Default::default()
        }))
        .expect("Issue for a matching caller")
        .into_inner();
    assert!(!r.token.is_empty() && r.lease_id.starts_with("l-"), "{r:?}");
    assert_eq!(r.audience, API_AUD);
    let lease = c.lease(&r.lease_id);
    assert_eq!(lease["host"], "raw-1");
    assert_eq!(lease["state"], "active");
    // A caller whose selectors do not match the workload's gets nothing.
    let s = rt
        .block_on(cp.issue(v1::IssueRequest {
            workload: "after".into(),
            credential: "api".into(),
            attested: Some(attested(1)),
            ..Default::default()
        }))
        .expect_err("selectors must match");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    c.remember_secret(&r.token);
    c.assert_no_secret_leaked();
}

#[test]
fn unknown_names_exit_4() {
    let c = Cluster::start();
    basic(&c);
    c.leash(&["get", "nope"])
        .code(4)
        .stderr_has(&["no credential named \"nope\""]);
    c.leashctl(&["workload", "show", "nope"])
        .code(4)
        .stderr_has(&["no workload named"]);
    c.leashctl(&["lease", "show", "l-nope"])
        .code(4)
        .stderr_has(&["no lease"]);
    c.leashctl(&["host", "evict", "nope"])
        .code(4)
        .stderr_has(&["no host named"]);
    c.leashctl(&["revoke", "--lease", "l-nope"]).code(4);
    c.leashctl(&["revoke", "--workload", "nope"]).code(4);
    c.leashctl(&["revoke", "--credential", "nope"]).code(4);
    c.leashctl(&["revoke", "--owner", "nope"]).code(4);
    c.leashctl(&["revoke", "--host", "nope"]).code(4);
    c.leashctl(&["lease", "list", "--workload", "nope"]).code(4);
    // Nothing was issued on the way.
    let leases = c.leashctl(&["lease", "list", "--output", "json"]).json();
    assert_eq!(leases.as_array().map(Vec::len), Some(0), "{leases}");
}

#[test]
fn workloads_need_an_owner_and_a_uid_or_gid_selector() {
    let c = Cluster::control_plane_only();
    let uid = format!("unix:uid:{}", my_uid());
    c.leashctl(&[
        "workload",
        "add",
        "no-owner",
        "--kind",
        "job",
        "--selector",
        &uid,
    ])
    .code(1)
    .stderr_has(&["owner"]);
    c.leashctl(&[
        "workload",
        "add",
        "blank-owner",
        "--owner",
        "  ",
        "--selector",
        &uid,
    ])
    .code(1)
    .stderr_has(&["owner"]);
    c.leashctl(&[
        "workload",
        "add",
        "path-only",
        "--owner",
        "team",
        "--selector",
        "unix:path:/usr/bin/bash",
    ])
    .code(1)
    .stderr_has(&["unix:uid"]);
    c.leashctl(&["workload", "add", "no-selector", "--owner", "team"])
        .code(1)
        .stderr_has(&["selector"]);
    c.leashctl(&[
        "workload",
        "add",
        "bad-selector",
        "--owner",
        "team",
        "--selector",
        "uid=0",
    ])
    .code(1)
    .stderr_has(&["invalid selector"]);
    c.leashctl(&[
        "workload",
        "add",
        "bad-kind",
        "--owner",
        "team",
        "--kind",
        "robot",
        "--selector",
        &uid,
    ])
    .code(1)
    .stderr_has(&["unknown kind"]);
    // None of those was stored; a proper one is.
    let list = c.leashctl(&["workload", "list", "--output", "json"]).json();
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
    c.leashctl(&[
        "workload",
        "add",
        "by-group",
        "--owner",
        "team",
        "--selector",
        "unix:group:root",
    ])
    .ok();
    let w = c
        .leashctl(&["workload", "show", "by-group", "--output", "json"])
        .json();
    assert_eq!(w["owner"], "team");
    assert_eq!(w["spiffe_id"], format!("spiffe://{TRUST_DOMAIN}/by-group"));
    // Names are unique.
    c.leashctl(&[
        "workload",
        "add",
        "by-group",
        "--owner",
        "other",
        "--selector",
        &uid,
    ])
    .code(1)
    .stderr_has(&["already exists"]);
}

#[test]
fn audience_not_allowed_and_ttl_above_max_are_invalid() {
    let c = Cluster::start();
    c.credential(
        "api",
        &[
            "--audience",
            "https://a.example",
            "--audience",
            "https://b.example",
            "--ttl",
            "5m",
            "--max-ttl",
            "10m",
        ],
    );
    c.my_workload("ci/job", "team-ci", &["api"]);
    c.leash(&["get", "api", "--audience", "https://evil.example"])
        .code(1)
        .stderr_has(&["audience", "not allowed"]);
    c.leash(&["get", "api", "--ttl", "11m"])
        .code(1)
        .stderr_has(&["max_ttl"]);
    c.leash(&["get", "api", "--ttl", "soon"])
        .code(1)
        .stderr_has(&["--ttl"]);
    c.leash(&["get", "api", "--action", "launch"])
        .code(1)
        .stderr_has(&["unknown action"]);
    let leases = c.leashctl(&["lease", "list", "--output", "json"]).json();
    assert_eq!(
        leases.as_array().map(Vec::len),
        Some(0),
        "refused requests issued leases: {leases}"
    );
    // Within the limits it works.
    let f = c.get("api", &["--audience", "https://b.example", "--ttl", "10m"]);
    assert_eq!(f.json["audience"], "https://b.example");
    // Credential definitions are checked too.
    c.leashctl(&[
        "credential",
        "add",
        "bad",
        "--audience",
        "x",
        "--ttl",
        "1h",
        "--max-ttl",
        "5m",
    ])
    .code(1)
    .stderr_has(&["--max-ttl"]);
    c.leashctl(&["credential", "add", "no-aud", "--ttl", "5m"])
        .code(1)
        .stderr_has(&["--audience"]);
    c.leashctl(&[
        "credential",
        "add",
        "zero",
        "--audience",
        "x",
        "--ttl",
        "0s",
    ])
    .code(1);
}

#[test]
fn config_with_an_unknown_key_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let check = |text: &str| {
        let f = dir.path().join("cp.toml");
        std::fs::write(&f, text).expect("write config");
        let mut cmd = Command::new(bin("leash-control-plane"));
        cmd.args(["serve", "--config"])
            .arg(&f)
            .arg("--check-config");
        process::run(cmd, None, Duration::from_secs(20))
    };
    let base = format!(
        "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nadmin_socket = \"{}\"\n",
        dir.path().join("data").display(),
        dir.path().join("admin.sock").display()
    );
    let ok = check(&format!("{base}trust_domain = \"corp.example\"\nmax_offline = \"2m\"\nheartbeat = \"200ms\"\n[admins]\nalice = 1000\n"));
    assert!(ok.ok().contains("valid"), "{ok}");

    let bad = check(&format!("{base}lisen = \"127.0.0.1:1\"\n"));
    assert_ne!(bad.code, 0, "{bad}");
    bad.stderr_has(&["lisen"]);
    let bad = check(&format!("{base}[admins]\nalice = 1000\nbob = \"x\"\n"));
    assert_ne!(bad.code, 0, "{bad}");
    let bad = check(&format!(
        "{base}max_offline = \"5m\"\nheartbeat = \"10m\"\n"
    ));
    assert_ne!(bad.code, 0, "{bad}");
    bad.stderr_has(&["heartbeat"]);
    let bad = check(&format!("{base}heartbeat = \"10ms\"\n"));
    assert_ne!(bad.code, 0, "{bad}");
    bad.stderr_has(&["heartbeat"]);
    // --check-config started nothing.
    assert!(!dir.path().join("admin.sock").exists());
}

#[test]
#[ignore = "needs root: runs leashctl as uid 65534 with setpriv"]
fn admin_call_from_a_non_admin_uid_is_denied() {
    require_root();
    let c = Cluster::control_plane_only();
    // Make the socket reachable, so that only the uid check stands in the way.
    use std::os::unix::fs::PermissionsExt;
    let dir = c.admin_socket.parent().expect("socket dir");
    // Traversable but not writable by others: leashctl refuses a socket in a directory
    // others could write to.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    std::fs::set_permissions(&c.admin_socket, std::fs::Permissions::from_mode(0o777))
        .expect("chmod socket");
    let ctl = c.copy_for_other_uids("leashctl");
    for args in [
        vec!["workload", "list"],
        vec!["join-token", "create"],
        vec!["revoke", "--all"],
        vec!["jwks"],
    ] {
        let mut cmd = as_nobody(&ctl);
        cmd.arg("--admin-socket").arg(&c.admin_socket).args(&args);
        let out = c.run(cmd);
        out.code(2).stderr_has(&["uid 65534", "not a leash admin"]);
        assert!(out.stdout.trim().is_empty(), "{out}");
    }
    // The denied calls changed nothing; root still administers.
    let tokens = c
        .leashctl(&["join-token", "list", "--output", "json"])
        .json();
    assert_eq!(tokens.as_array().map(Vec::len), Some(0), "{tokens}");
    c.leashctl(&["workload", "list"]).ok();
}

#[test]
fn oversized_messages_get_a_clear_error_and_services_keep_serving() {
    let c = Cluster::start();
    basic(&c);
    // Through the CLI: a 100 KiB credential name.
    let big = "x".repeat(100 * 1024);
    let out = c.leash(&["get", &big]);
    assert_ne!(out.code, 0, "{out}");
    out.stderr_has(&["message"]);
    assert!(out.stdout.is_empty(), "{out}");
    c.get("api", &[]);

    let rt = rt();
    rt.block_on(async {
        // A raw client on the workload socket: over the limit, then a normal call on the
        // same connection and on a new one.
        let ch = leash_proto::uds::connect(&c.agent(0).socket)
            .await
            .expect("agent socket");
        let mut agent = v1::agent_client::AgentClient::new(ch);
        let s = agent
            .fetch(v1::FetchRequest {
                credential: "y".repeat(leash_proto::MAX_WORKLOAD_REQUEST_BYTES + 1024),
                ..Default::default()
            })
            .await
            .expect_err("a request over the limit is refused");
        assert!(
            matches!(
                s.code(),
                Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
            ),
            "{s:?}"
        );
        assert!(
            s.message().contains("too large") || s.message().contains("limit"),
            "{s:?}"
        );
        agent
            .status(v1::StatusRequest {})
            .await
            .expect("the connection still works");
        let ch = leash_proto::uds::connect(&c.agent(0).socket)
            .await
            .expect("agent socket");
        v1::agent_client::AgentClient::new(ch)
            .status(v1::StatusRequest {})
            .await
            .expect("a new connection works");

        // The admin socket: 5 MiB is over the control plane's limit.
        let ch = leash_proto::uds::connect(&c.admin_socket)
            .await
            .expect("admin socket");
        let mut admin = v1::admin_client::AdminClient::new(ch);
        let s = admin
            .add_workload(v1::AddWorkloadRequest {
                workload: Some(v1::Workload {
                    name: "w".repeat(leash_proto::MAX_MESSAGE_BYTES + 1024),
                    owner: "team".into(),
                    kind: "job".into(),
                    selectors: vec!["unix:uid:0".into()],
                    ..Default::default()
                }),
            })
            .await
            .expect_err("an admin request over the limit is refused");
        assert_ne!(s.code(), Code::Ok);

        // The agent-facing port, without a certificate: an oversized Enroll.
        let mut cp = cp_client(&c, None).await.expect("TLS");
        let s = cp
            .enroll(v1::EnrollRequest {
                protocol_version: leash_proto::PROTOCOL_VERSION,
                join_token: "t".repeat(leash_proto::MAX_MESSAGE_BYTES + 1024),
                ..Default::default()
            })
            .await
            .expect_err("an oversized Enroll is refused");
        assert_ne!(s.code(), Code::Ok);
    });
    // Everything still serves.
    let ws = c.leashctl(&["workload", "list", "--output", "json"]).json();
    assert_eq!(ws.as_array().map(Vec::len), Some(1), "{ws}");
    let again = c.get("api", &["--fresh"]);
    assert!(!again.cached);
    assert_eq!(c.status()["synced"], true);
}

/// Verify `token` against the JWKS `leashctl jwks` prints; returns header and claims.
fn verify(c: &Cluster, token: &str, aud: &str) -> (jsonwebtoken::Header, serde_json::Value) {
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
    let jwks = c.leashctl(&["jwks"]).json();
    let header = decode_header(token).expect("a JWT header");
    let kid = header.kid.clone().expect("kid is always set");
    let key = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("no key {kid} in {jwks}"));
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    let dk = DecodingKey::from_ec_components(
        key["x"].as_str().expect("x"),
        key["y"].as_str().expect("y"),
    )
    .expect("an EC key");
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[aud]);
    v.set_issuer(&[format!("spiffe://{TRUST_DOMAIN}")]);
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
    let data =
        decode::<serde_json::Value>(token, &dk, &v).expect("the token verifies against the JWKS");
    (data.header, data.claims)
}

#[test]
fn issued_jwt_verifies_against_the_jwks_and_claims_match_the_design() {
    let c = Cluster::start();
    c.credential(
        "deploy-api",
        &[
            "--audience",
            "https://deploy.example",
            "--audience",
            "https://other.example",
            "--ttl",
            "5m",
            "--scope",
            "read=deploy:read",
            "--scope",
            "deploy=deploy:write",
            "--scope",
            "deploy=deploy:status",
        ],
    );
    c.credential(
        "plain",
        &["--audience", "https://plain.example", "--ttl", "2m"],
    );
    c.my_workload("ci/deploy-web", "team-web", &["deploy-api", "plain"]);

    let f = c.get(
        "deploy-api",
        &[
            "--action",
            "deploy",
            "--audience",
            "https://other.example",
            "--ttl",
            "90s",
        ],
    );
    let (header, claims) = verify(&c, &f.token, "https://other.example");
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(claims["iss"], format!("spiffe://{TRUST_DOMAIN}"));
    assert_eq!(
        claims["sub"],
        format!("spiffe://{TRUST_DOMAIN}/ci/deploy-web")
    );
    assert_eq!(claims["aud"], "https://other.example");
    assert_eq!(claims["jti"], f.lease_id.as_str());
    let (iat, nbf, exp) = (
        claims["iat"].as_i64().expect("iat"),
        claims["nbf"].as_i64().expect("nbf"),
        claims["exp"].as_i64().expect("exp"),
    );
    assert_eq!(exp - iat, 90, "{claims}");
    assert_eq!(nbf, iat, "{claims}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!((iat - now).abs() < 60, "iat {iat} is far from now {now}");
    assert_eq!(f.json["expires_at_unix"], exp);
    assert_eq!(
        claims["scope"], "deploy:write deploy:status",
        "only the action's scopes"
    );
    assert_eq!(
        claims["leash"],
        serde_json::json!({ "host": "host-1", "action": "deploy", "owner": "team-web" }),
        "no task outside a task"
    );
    assert!(claims.get("obo").is_none(), "{claims}");

    // Defaults: the first audience, the default action and TTL; no scopes defined, no
    // `scope` claim.
    let p = c.get("plain", &[]);
    let (_, claims) = verify(&c, &p.token, "https://plain.example");
    assert!(claims.get("scope").is_none(), "{claims}");
    assert_eq!(claims["leash"]["action"], "read");
    assert_eq!(
        claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
        120
    );
    assert_eq!(claims["jti"], p.lease_id.as_str());

    // A tampered token does not verify, nor does the right token for another audience.
    let mut parts: Vec<String> = p.token.split('.').map(str::to_string).collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).expect("payload")).expect("json");
    payload["sub"] = format!("spiffe://{TRUST_DOMAIN}/admin").into();
    parts[1] = URL_SAFE_NO_PAD.encode(payload.to_string());
    let forged = parts.join(".");
    let jwks = c.leashctl(&["jwks"]).json();
    let key = &jwks["keys"][0];
    let dk = jsonwebtoken::DecodingKey::from_ec_components(
        key["x"].as_str().expect("x"),
        key["y"].as_str().expect("y"),
    )
    .expect("key");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["https://plain.example"]);
    assert!(jsonwebtoken::decode::<serde_json::Value>(&forged, &dk, &v).is_err());
    v.set_audience(&["https://elsewhere.example"]);
    assert!(jsonwebtoken::decode::<serde_json::Value>(&p.token, &dk, &v).is_err());

    // An action the credential defines no scopes for is refused.
    c.leash(&["get", "deploy-api", "--action", "write"])
        .code(1)
        .stderr_has(&["no scopes for action \"write\""]);

    // A shared agent acts for someone, and the token says for whom.
    let uid = format!("unix:uid:{}", my_uid());
    c.leashctl(&[
        "workload",
        "add",
        "assistant",
        "--owner",
        "team-ai",
        "--kind",
        "shared-agent",
        "--selector",
        &uid,
        "--allow",
        "plain",
    ])
    .ok();
    c.wait_visible(0, "assistant");
    c.leash(&["get", "plain", "--as", "assistant"])
        .code(2)
        .stderr_has(&["--on-behalf-of"]);
    let obo = c.get(
        "plain",
        &["--as", "assistant", "--on-behalf-of", "alice@example.com"],
    );
    let (_, claims) = verify(&c, &obo.token, "https://plain.example");
    assert_eq!(claims["obo"], "alice@example.com", "{claims}");
    assert_eq!(claims["sub"], format!("spiffe://{TRUST_DOMAIN}/assistant"));
    assert_eq!(claims["leash"]["owner"], "team-ai");
    let bob = c.get(
        "plain",
        &["--as", "assistant", "--on-behalf-of", "bob@example.com"],
    );
    assert_ne!(
        bob.lease_id, obo.lease_id,
        "a credential for alice is never served for bob"
    );
    assert_eq!(c.lease(&bob.lease_id)["on_behalf_of"], "bob@example.com");

    // The lease records what was issued, not the token.
    let lease = c.lease(&f.lease_id);
    assert_eq!(lease["workload"], "ci/deploy-web");
    assert_eq!(lease["credential"], "deploy-api");
    assert_eq!(lease["action"], "deploy");
    assert_eq!(lease["audience"], "https://other.example");
    assert_eq!(lease["host"], "host-1");
    assert!(!lease.to_string().contains(&f.token));
}

#[test]
fn lease_survives_sigkill_right_after_an_acknowledged_issue() {
    let mut c = Cluster::start();
    basic(&c);
    let f = c.get("api", &["--fresh"]);
    c.kill_control_plane();
    c.restart_control_plane();
    let lease = c.lease(&f.lease_id);
    assert_eq!(lease["state"], "active", "{lease}");
    assert_eq!(lease["workload"], "ci/job");
    assert_eq!(lease["host"], "host-1");
    assert_eq!(
        timeline_types(&lease).first().map(String::as_str),
        Some("issued"),
        "{lease}"
    );
    // The agent reconnects to the restarted control plane and keeps issuing.
    c.eventually("the agent re-synced", || {
        (c.status()["synced"] == true).then_some(())
    });
    let g = c.get("api", &["--fresh"]);
    assert_ne!(g.lease_id, f.lease_id);
}

#[test]
fn host_certificate_renewal_over_mtls() {
    let c = Cluster::control_plane_only();
    let token = c.join_token(&["--name", "raw-2"]);
    let state = c.dir().join("raw-2-state");
    let addrs = [c.addr.to_string()];
    identity::prepare_state_dir(&state).expect("state dir");
    let rt = rt();
    let first = rt
        .block_on(identity::enroll(
            &state,
            &addrs,
            &token,
            None,
            None,
            BTreeMap::new(),
        ))
        .expect("enroll");
    let renewed = rt
        .block_on(identity::renew(&state, &addrs, &first))
        .expect("renew with the current certificate");
    assert_ne!(renewed.cert, first.cert, "a new certificate");
    assert!(renewed.desc.not_after >= first.desc.not_after);
    assert_eq!(renewed.desc.host, "raw-2");
    // The renewed certificate (saved in the state dir) is accepted on a new connection.
    let mut cp = rt
        .block_on(cp_client(&c, Some(host_credentials(&state))))
        .expect("mTLS");
    let (_tx, mut inbound) = rt.block_on(open_sync(&mut cp, 0));
    assert!(matches!(
        rt.block_on(next_msg(&mut inbound)),
        Msg::Snapshot(_)
    ));
    assert!(c
        .audit()
        .iter()
        .any(|e| e["type"] == "renewed" && e["host"] == "raw-2"));
    // An evicted host cannot renew.
    c.leashctl(&["host", "evict", "raw-2"]).ok();
    let e = rt
        .block_on(identity::renew(&state, &addrs, &renewed))
        .expect_err("an evicted host cannot renew");
    assert!(e.to_string().contains("evicted"), "{e}");
}

#[test]
#[ignore = "needs root: runs leashctl as uid 65534 with setpriv"]
fn configured_admins_are_authorised_and_recorded_by_name() {
    require_root();
    let c = Cluster::with(
        leash_tests::Options::default()
            .no_agent()
            .config("[admins]\nops = 65534"),
    );
    use std::os::unix::fs::PermissionsExt;
    let dir = c.admin_socket.parent().expect("socket dir");
    // Traversable but not writable by others: leashctl refuses a socket in a directory
    // others could write to.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    std::fs::set_permissions(&c.admin_socket, std::fs::Permissions::from_mode(0o777))
        .expect("chmod socket");
    let ctl = c.copy_for_other_uids("leashctl");
    let nobody = |args: &[&str]| {
        let mut cmd = as_nobody(&ctl);
        cmd.arg("--admin-socket").arg(&c.admin_socket).args(args);
        c.run(cmd)
    };
    nobody(&[
        "workload",
        "add",
        "svc",
        "--owner",
        "team",
        "--selector",
        "unix:uid:4242",
    ])
    .ok();
    let audit = nobody(&["audit", "tail"]).ok();
    let added: serde_json::Value = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["type"] == "workload-added")
        .unwrap_or_else(|| panic!("no workload-added event in\n{audit}"));
    assert_eq!(added["actor"], "ops", "{added}");
    // With admins configured, only they are admins: root is not one of them.
    c.leashctl(&["workload", "list"])
        .code(2)
        .stderr_has(&["uid 0", "not a leash admin"]);
}

#[test]
fn ended_leases_and_old_events_are_forgotten_after_their_retention() {
    let c = Cluster::with(
        leash_tests::Options::default()
            .config("lease_retention = \"1m\"\nevent_retention = \"3m\""),
    );
    c.credential(
        "kept-jwt",
        &[
            "--kind",
            "jwt",
            "--audience",
            API_AUD,
            "--ttl",
            "1h",
            "--max-ttl",
            "2h",
        ],
    );
    c.my_workload("team/kept", "team", &["kept-jwt"]);
    let ended = c.get("kept-jwt", &[]).lease_id;
    c.leashctl(&["revoke", "--lease", &ended, "--wait", "--timeout", "10s"])
        .ok();
    assert_eq!(c.lease(&ended)["state"], "revoked");
    let mentions = |id: &str| c.audit().iter().filter(|e| e["lease"] == id).count();
    assert!(mentions(&ended) >= 2, "issued and revoked are recorded");

    // Two minutes on: the revoked lease is kept (retention counts from its expiry, an
    // hour after issue), its events are not three minutes old yet.
    c.advance_clock(Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.lease(&ended)["state"],
        "revoked",
        "kept until expiry + 1m"
    );
    assert!(mentions(&ended) >= 2, "events are kept for 3m");

    // Past its expiry and the minute after it: forgotten, with a message that says why,
    // and its events with it (older than three minutes by now).
    c.advance_clock(Duration::from_secs(3600));
    let out = c.eventually("the revoked lease is forgotten", || {
        let out = c.leashctl(&["lease", "show", &ended]);
        (out.code == 4).then_some(out)
    });
    out.stderr_has(&["no lease", "lease_retention", "1m"]);
    c.eventually("its events are deleted", || {
        (mentions(&ended) == 0).then_some(())
    });

    // What is new is kept: a lease issued now, and its events.
    let fresh = c.eventually("the agent serves again after the clock jump", || {
        let out = c.leash(&["get", "kept-jwt", "--output", "json", "--fresh"]);
        (out.code == 0).then(|| out.json()["lease_id"].as_str().map(String::from))?
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.lease(&fresh)["state"], "active");
    assert!(mentions(&fresh) >= 1);
}
