//! The agent: the workload socket and its bad input, matching, attestation
//! (interpreters, other uids), the cache with the control plane away, restarts, and
//! secrets kept off logs and disks.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use leash_tests::process::world_executable;
use leash_tests::{
    as_nobody, bin, files_under, my_uid, process, require_root, Cluster, COMMAND_TIMEOUT,
};

use crate::{basic, API_AUD};

fn whoami(c: &Cluster) -> serde_json::Value {
    c.leash(&["whoami", "--output", "json"]).json()
}

fn selectors(v: &serde_json::Value) -> Vec<String> {
    v["selectors"]
        .as_array()
        .expect("selectors")
        .iter()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

#[test]
fn no_agent_socket_exits_5() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sock = dir.path().join("nothing-here.sock");
    let mut cmd = Command::new(bin("leash"));
    cmd.arg("--socket").arg(&sock).args(["get", "api"]);
    let out = process::run(cmd, None, COMMAND_TIMEOUT);
    out.code(5)
        .stderr_has(&["no leash agent answers", "leash-agentd"]);
    assert!(out.stdout.is_empty(), "{out}");
    // Through the environment variable too.
    let mut cmd = Command::new(bin("leash"));
    cmd.env("LEASH_AGENT_SOCKET", &sock).arg("status");
    process::run(cmd, None, COMMAND_TIMEOUT).code(5);
}

#[test]
fn caller_matching_no_workload_is_denied() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    // A workload for another uid only.
    c.leashctl(&[
        "workload",
        "add",
        "other",
        "--owner",
        "team",
        "--selector",
        "unix:uid:4242",
        "--allow",
        "api",
    ])
    .ok();
    let out = c.leash(&["get", "api"]);
    out.code(2).stderr_has(&[
        "no workload matches",
        &format!("unix:uid:{}", my_uid()),
        "leashctl workload add",
    ]);
    assert!(out.stdout.is_empty(), "{out}");
    // --as cannot claim someone else's workload.
    c.leash(&["get", "api", "--as", "other"])
        .code(2)
        .stderr_has(&["not attested as workload"]);
    let me = whoami(&c);
    assert_eq!(me["workloads"], serde_json::json!([]), "{me}");

    // Matching a workload is not enough: it must be allowed the credential.
    c.credential("db", &["--audience", "https://db.example"]);
    c.my_workload("ci/job", "team-ci", &["api"]);
    c.leash(&["get", "db"])
        .code(2)
        .stderr_has(&["\"db\"", "--allow db"]);
    assert!(c
        .audit()
        .iter()
        .any(|e| e["type"] == "denied" && e["workload"] == "ci/job" && e["credential"] == "db"));
    c.get("api", &[]);

    // A workload past its expiry gets nothing.
    let uid = format!("unix:uid:{}", my_uid());
    c.leashctl(&[
        "workload",
        "add",
        "old",
        "--owner",
        "team",
        "--selector",
        &uid,
        "--allow",
        "api",
        "--expires-at",
        "2001-01-01T00:00:00Z",
    ])
    .ok();
    c.wait_visible(0, "old");
    c.leash(&["get", "api", "--as", "old"])
        .code(2)
        .stderr_has(&["expired"]);
}

#[test]
fn cache_serves_only_requests_it_satisfies_and_refreshes_past_half_life() {
    let c = Cluster::start();
    c.credential(
        "api",
        &[
            "--audience",
            API_AUD,
            "--audience",
            "https://second.example",
            "--ttl",
            "5m",
        ],
    );
    c.credential("brief", &["--audience", API_AUD, "--ttl", "4s"]);
    c.my_workload("ci/job", "team-ci", &["api", "brief"]);
    let creds = c
        .leashctl(&["credential", "list", "--output", "json"])
        .json();
    assert_eq!(creds.as_array().map(Vec::len), Some(2), "{creds}");

    let a = c.get("api", &[]);
    assert!(!a.cached);
    let again = c.get("api", &[]);
    assert!(again.cached);
    assert_eq!(again.lease_id, a.lease_id);
    // Another audience, TTL or action is another credential.
    let aud = c.get("api", &["--audience", "https://second.example"]);
    assert!(!aud.cached);
    assert_ne!(aud.lease_id, a.lease_id);
    assert_eq!(
        c.get("api", &["--audience", "https://second.example"])
            .lease_id,
        aud.lease_id
    );
    let ttl = c.get("api", &["--ttl", "2m"]);
    assert!(!ttl.cached && ttl.lease_id != a.lease_id);
    let write = c.get("api", &["--action", "write"]);
    assert!(!write.cached && write.lease_id != a.lease_id);
    assert_eq!(write.json["action"], "write");
    // --fresh bypasses the cache, and what it gets replaces the cached one.
    let fresh = c.get("api", &["--fresh"]);
    assert!(!fresh.cached && fresh.lease_id != a.lease_id);
    assert_eq!(c.get("api", &[]).lease_id, fresh.lease_id);
    assert_eq!(c.cached_at(0), 4);

    // Past half its lifetime, a credential is refreshed on demand, before it expires.
    let b = c.get("brief", &[]);
    let expires = b.json["expires_at_unix"].as_i64().expect("expires_at_unix");
    // 2.5 s of its 4 s on the daemons' clock, rather than waiting for them.
    c.advance_clock(Duration::from_millis(2500));
    let refreshed = c.eventually("the brief credential is refreshed", || {
        let g = c.get("brief", &[]);
        let now = c.clock_now_ms().div_euclid(1000);
        (g.lease_id != b.lease_id).then_some((g, now))
    });
    assert!(!refreshed.0.cached);
    assert!(
        refreshed.1 < expires,
        "refreshed only after expiry ({} >= {expires})",
        refreshed.1
    );
}

#[test]
fn connections_and_requests_per_uid_are_capped() {
    let mut c = Cluster::with(leash_tests::Options::default().agent_args(&[
        "--max-connections-per-uid",
        "4",
        "--requests-per-uid",
        "20",
    ]));
    basic(&c);
    let sock = c.agent(0).socket.clone();
    // Four idle connections use up this uid's allowance...
    let held: Vec<UnixStream> = (0..4)
        .map(|_| UnixStream::connect(&sock).expect("connect"))
        .collect();
    c.eventually("a fifth connection is refused", || {
        (c.leash(&["status"]).code != 0).then_some(())
    });
    // ...and are given back when closed.
    drop(held);
    c.eventually("the connections were released", || {
        (c.leash(&["status"]).code == 0).then_some(())
    });

    // Requests: a burst over the limit is slowed down, with a clear error. The calls
    // above took from this uid's request allowance (20 a second): move the agent's clock
    // past a second so it is full again, and the burst below starts from a full
    // allowance however slow this machine is.
    c.advance_clock(Duration::from_millis(1100));
    let rt = crate::rt();
    let (ok, limited) = rt.block_on(async {
        let ch = leash_proto::uds::connect(&sock)
            .await
            .expect("agent socket");
        let agent = leash_proto::v1::agent_client::AgentClient::new(ch);
        // All at once on one connection, so the burst is over the limit however slow
        // this machine is.
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..120 {
            let mut a = agent.clone();
            set.spawn(async move { a.who_am_i(leash_proto::v1::WhoAmIRequest {}).await });
        }
        let (mut ok, mut limited) = (0, Vec::new());
        while let Some(r) = set.join_next().await {
            match r.expect("request task") {
                Ok(_) => ok += 1,
                Err(s) => limited.push(s),
            }
        }
        (ok, limited)
    });
    assert!(ok >= 20, "the burst allowance was not served: {ok}");
    assert!(!limited.is_empty(), "120 requests at once were not limited");
    assert!(
        limited[0].message().contains("too many requests"),
        "{:?}",
        limited[0]
    );
    c.eventually("the limit refills", || {
        (c.leash(&["whoami"]).code == 0).then_some(())
    });
    assert!(c.agent_alive(0));
}

#[test]
fn several_matching_workloads_need_as() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    c.my_workload("team/alpha", "team-a", &["api"]);
    c.my_workload("team/beta", "team-b", &["api"]);
    let out = c.leash(&["get", "api"]);
    out.code(1)
        .stderr_has(&["several workloads match", "team/alpha", "team/beta", "--as"]);
    assert!(out.stdout.is_empty(), "{out}");
    let b = c.get("api", &["--as", "team/beta"]);
    assert_eq!(b.json["workload"], "team/beta");
    let a = c.get("api", &["--as", "team/alpha"]);
    assert_eq!(a.json["workload"], "team/alpha");
    assert_ne!(a.lease_id, b.lease_id);
    assert_eq!(c.lease(&a.lease_id)["workload"], "team/alpha");
}

/// Deterministic junk.
fn junk(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u8
        })
        .collect()
}

#[test]
fn garbage_on_the_workload_socket_does_not_stop_the_agent() {
    let mut c = Cluster::start();
    basic(&c);
    let before = c.get("api", &[]);
    let sock = c.agent(0).socket.clone();
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut huge_frame = PREFACE.to_vec();
    // A DATA frame header claiming 16 MiB on stream 1, then a little junk.
    huge_frame.extend_from_slice(&[0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01]);
    huge_frame.extend(junk(512, 7));
    let mut bad_headers = PREFACE.to_vec();
    // An empty SETTINGS frame, then HEADERS on stream 1 with an invalid HPACK block.
    bad_headers.extend_from_slice(&[0, 0, 0, 0x04, 0, 0, 0, 0, 0]);
    bad_headers.extend_from_slice(&[0, 0, 16, 0x01, 0x04, 0, 0, 0, 1]);
    bad_headers.extend(junk(16, 9));
    let payloads: Vec<Vec<u8>> = vec![
        junk(8192, 1),
        b"GET / HTTP/1.1\r\nHost: leash\r\n\r\n".to_vec(),
        huge_frame,
        bad_headers,
        PREFACE.to_vec(),
        Vec::new(),
    ];
    for p in &payloads {
        let mut s = UnixStream::connect(&sock).expect("connect to the agent socket");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        s.set_write_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let _ = s.write_all(p);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    // Many connections at once, dropped without a word.
    let held: Vec<UnixStream> = (0..50)
        .filter_map(|_| UnixStream::connect(&sock).ok())
        .collect();
    assert_eq!(held.len(), 50);
    drop(held);

    assert!(c.agent_alive(0), "the agent died\n{}", c.logs_dump());
    let after = c.get("api", &[]);
    assert_eq!(after.lease_id, before.lease_id, "the cache survived too");
    assert!(after.cached);
    assert_eq!(c.status()["state"], "ready");
}

#[test]
fn control_plane_away_cached_hits_are_served_and_misses_exit_5() {
    let mut c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    c.credential("db", &["--audience", "https://db.example"]);
    c.my_workload("ci/job", "team-ci", &["api", "db"]);
    let f = c.get("api", &[]);
    c.kill_control_plane();

    let hit = c.get("api", &[]);
    assert_eq!(hit.lease_id, f.lease_id, "the cached credential is served");
    assert_eq!(hit.token, f.token);
    assert!(hit.cached);
    let miss = c.leash(&["get", "db"]);
    miss.code(5).stderr_has(&["control plane"]);
    assert!(miss.stdout.is_empty(), "{miss}");
    c.eventually("the agent reports the control plane away", || {
        let s = c.status();
        (s["state"] == "offline" && s["synced"] == false).then_some(())
    });
    // Still served while offline, and still refused for what is not cached.
    assert_eq!(c.get("api", &[]).lease_id, f.lease_id);
    c.leash(&["get", "db"])
        .code(5)
        .stderr_has(&["control plane is unreachable"]);

    c.restart_control_plane();
    c.eventually("the agent re-synced", || {
        let s = c.status();
        (s["state"] == "ready" && s["synced"] == true).then_some(())
    });
    let db = c.get("db", &[]);
    assert!(!db.cached);
}

#[test]
fn restarted_agent_resumes_without_a_token_and_keeps_no_credential_on_disk() {
    let mut c = Cluster::start();
    basic(&c);
    let f = c.get("api", &[]);
    let last_seq = c.status()["last_seq"].as_u64().expect("last_seq");
    c.stop_agent();
    c.start_agent(); // no join token this time
    let st = c.status();
    assert_eq!(st["host"], "host-1", "{st}");
    assert_eq!(st["synced"], true, "{st}");
    assert!(
        st["last_seq"].as_u64().expect("last_seq") >= last_seq,
        "{st}"
    );
    assert_eq!(
        st["cached_credentials"], 0,
        "the cache lives in memory only: {st}"
    );
    // No second enrollment happened.
    let enrolled = c
        .audit()
        .into_iter()
        .filter(|e| e["type"] == "enrolled")
        .count();
    assert_eq!(enrolled, 1);
    let hosts = c.leashctl(&["host", "list", "--output", "json"]).json();
    assert_eq!(hosts.as_array().map(Vec::len), Some(1), "{hosts}");
    // It serves again, a new credential.
    let g = c.get("api", &[]);
    assert_ne!(g.lease_id, f.lease_id);
    assert!(!g.cached);
    // The state dir holds the identity and nothing else.
    let mut names: Vec<String> = files_under(&c.agent(0).state_dir)
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["ca.crt", "host.crt", "host.key", "identity.json"]
    );
    c.assert_no_secret_leaked();
}

#[test]
fn sync_pushes_workload_changes_to_the_agent() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    let st = c.status();
    assert_eq!(st["workloads"], 0, "{st}");
    let seq0 = st["last_seq"].as_u64().expect("last_seq");
    assert_eq!(whoami(&c)["workloads"], serde_json::json!([]));

    // Added while the agent runs: pushed, no restart.
    let uid = format!("unix:uid:{}", my_uid());
    c.leashctl(&[
        "workload",
        "add",
        "late",
        "--owner",
        "team",
        "--selector",
        &uid,
        "--allow",
        "api",
    ])
    .ok();
    c.eventually("whoami shows the new workload", || {
        (whoami(&c)["workloads"] == serde_json::json!(["late"])).then_some(())
    });
    let st = c.status();
    assert!(st["last_seq"].as_u64().expect("last_seq") > seq0, "{st}");
    assert_eq!(st["workloads"], 1);
    let f = c.get("api", &[]);
    assert_eq!(c.cached_at(0), 1);

    // A workload for hosts with another label is not sent here.
    c.leashctl(&[
        "workload",
        "add",
        "elsewhere",
        "--owner",
        "team",
        "--selector",
        &uid,
        "--hosts",
        "role=ci-runner",
    ])
    .ok();
    // Removal is pushed too, and takes the workload's credentials with it.
    c.leashctl(&["workload", "remove", "late"]).ok();
    c.eventually("the removal reached the agent", || {
        let st = c.status();
        (st["workloads"] == 0 && st["cached_credentials"] == 0).then_some(())
    });
    assert_eq!(whoami(&c)["workloads"], serde_json::json!([]));
    c.leash(&["get", "api"]).code(2);
    let lease = c.lease(&f.lease_id);
    assert_eq!(
        lease["state"], "revoked",
        "removing a workload revokes its leases: {lease}"
    );
}

#[test]
fn workloads_reach_only_hosts_their_label_selector_matches() {
    let mut c = Cluster::start();
    let runner = c.add_agent("runner-7", &[("role", "ci-runner")]);
    c.credential("api", &["--audience", API_AUD]);
    let uid = format!("unix:uid:{}", my_uid());
    c.leashctl(&[
        "workload",
        "add",
        "ci/deploy",
        "--owner",
        "team",
        "--selector",
        &uid,
        "--hosts",
        "role=ci-runner",
        "--allow",
        "api",
    ])
    .ok();
    c.wait_visible(runner, "ci/deploy");
    assert_eq!(c.get_at(runner, "api", &[]).json["workload"], "ci/deploy");
    // host-1 has no such label: the workload never reaches it.
    assert_eq!(c.status_at(0)["workloads"], 0);
    c.leash_at(0, &["get", "api"]).code(2);
    let me = c.leash_at(0, &["whoami", "--output", "json"]).json();
    assert_eq!(me["workloads"], serde_json::json!([]), "{me}");
}

#[test]
#[ignore = "needs root: runs leash as uid 65534 with setpriv"]
fn second_uid_matching_no_workload_is_refused() {
    require_root();
    let c = Cluster::start();
    basic(&c); // for root only
    let leash = c.copy_for_other_uids("leash");
    let mut cmd = as_nobody(&leash);
    cmd.arg("--socket")
        .arg(&c.agent(0).socket)
        .args(["get", "api"]);
    let out = c.run(cmd);
    out.code(2)
        .stderr_has(&["no workload matches", "unix:uid:65534"]);
    assert!(out.stdout.is_empty(), "{out}");
    // The same request from root is served.
    c.get("api", &[]);
    // The refusal left no lease behind.
    let leases = c.leashctl(&["lease", "list", "--output", "json"]).json();
    assert_eq!(leases.as_array().map(Vec::len), Some(1), "{leases}");
}

#[test]
fn script_run_through_leash_is_attested_as_its_interpreter() {
    let c = Cluster::start();
    c.credential("api", &["--audience", API_AUD]);
    let sh = std::fs::canonicalize("/bin/sh").expect("/bin/sh");
    let sh = sh.to_string_lossy().into_owned();
    let leash = bin("leash");
    let leash_path = leash.to_string_lossy().into_owned();
    let uid = format!("unix:uid:{}", my_uid());
    let path = format!("unix:path:{sh}");
    c.leashctl(&[
        "workload",
        "add",
        "scripted",
        "--owner",
        "team",
        "--kind",
        "job",
        "--selector",
        &uid,
        "--selector",
        &path,
        "--allow",
        "api",
    ])
    .ok();

    // `sh -c "leash …; true"` keeps sh as leash's parent.
    let via_sh = |args: &str| {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!("\"$LEASH\" {args}; true"))
            .env("LEASH", &leash)
            .env("LEASH_AGENT_SOCKET", &c.agent(0).socket);
        c.run(cmd)
    };
    let me = c.eventually("the scripted workload reached the agent", || {
        let v = via_sh("whoami --output json").json();
        (v["workloads"] == serde_json::json!(["scripted"])).then_some(v)
    });
    assert_eq!(me["exe_path"], sh.as_str(), "{me}");
    let sels = selectors(&me);
    assert!(sels.contains(&path), "{sels:?}");
    assert!(
        !sels.iter().any(|s| s.contains(&leash_path)),
        "attested as leash itself: {sels:?}"
    );
    assert!(
        sels.iter().any(|s| s.starts_with("unix:sha256:")),
        "{sels:?}"
    );

    let got = via_sh("get api --output json").json();
    assert_eq!(got["workload"], "scripted");

    // A script file: its interpreter is the parent too.
    let script = c.dir().join("deploy.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n\"$LEASH\" get api --output json\nexit $?\n",
    )
    .expect("script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut cmd = Command::new(&script);
    cmd.env("LEASH", &leash)
        .env("LEASH_AGENT_SOCKET", &c.agent(0).socket);
    assert_eq!(c.run(cmd).json()["workload"], "scripted");

    // Called straight from this test binary, leash's parent is not the interpreter.
    let direct = whoami(&c);
    assert_ne!(direct["exe_path"], sh.as_str());
    c.leash(&["get", "api"]).code(2);
}

#[test]
#[ignore = "needs root: runs leash as uid 65534 with setpriv"]
fn leash_run_by_root_as_another_uid_is_attested_with_its_own_uid() {
    require_root();
    let c = Cluster::start();
    let check = |program: &std::path::Path| {
        let mut cmd = as_nobody(program);
        cmd.arg("--socket")
            .arg(&c.agent(0).socket)
            .args(["whoami", "--output", "json"]);
        let v = c.run(cmd).json();
        assert_eq!(v["uid"], 65534, "{v}");
        assert_eq!(v["gid"], 65534, "{v}");
        let sels = selectors(&v);
        assert!(sels.contains(&"unix:uid:65534".to_string()), "{sels:?}");
        assert!(
            !sels.contains(&"unix:uid:0".to_string()),
            "root lent its uid: {sels:?}"
        );
        assert!(
            !sels.contains(&"unix:gid:0".to_string()),
            "root lent its gid: {sels:?}"
        );
        v
    };
    // A copy of leash (not the installed CLI: attested as itself).
    let copy = c.copy_for_other_uids("leash");
    let v = check(&copy);
    assert_eq!(v["exe_path"], copy.to_string_lossy().as_ref(), "{v}");
    // The installed CLI: path selectors would come from its parent, but the parent is
    // root, so there are none.
    let installed = bin("leash");
    if world_executable(&installed) {
        let v = check(&installed);
        assert_eq!(v["exe_path"], "", "a root parent lent its path: {v}");
        assert!(
            !selectors(&v).iter().any(|s| s.starts_with("unix:path:")),
            "{v}"
        );
    } else {
        eprintln!(
            "note: {} is not executable by other uids; checked the copy only",
            installed.display()
        );
    }
}

#[test]
fn secrets_never_reach_logs_or_disk() {
    let mut c = Cluster::start();
    basic(&c);
    let f = c.get("api", &[]);
    c.get("api", &[]); // a cache hit
                       // Text output: the secret alone on stdout.
    assert_eq!(c.leash(&["get", "api"]).stdout, format!("{}\n", f.token));
    c.leashctl(&["introspect", &f.token]).ok();
    c.leash(&["introspect", &f.token]).ok();
    c.leashctl(&["revoke", "--lease", &f.lease_id, "--wait"])
        .ok();
    c.get("api", &["--fresh"]);
    c.stop_agent();
    c.start_agent();
    c.get("api", &[]);
    c.kill_control_plane();
    c.restart_control_plane();
    c.eventually("the agent re-synced", || {
        (c.status()["synced"] == true).then_some(())
    });
    c.get("api", &["--fresh"]);
    assert!(
        c.secrets().len() >= 5,
        "tokens were remembered: {}",
        c.secrets().len()
    );
    c.assert_no_secret_leaked();
    // Nor in the audit trail.
    let audit = c.leashctl(&["audit", "export", "--since", "1h"]).ok();
    for s in c.secrets() {
        let sig = s.rsplit('.').next().unwrap_or_default();
        assert!(
            !audit.contains(&s) && !audit.contains(sig),
            "a secret is in the audit trail"
        );
    }
}

#[test]
#[ignore = "needs root: creates pid and mount namespaces with unshare"]
fn callers_in_other_namespaces_are_refused_and_user_namespaces_lend_no_root() {
    require_root();
    let c = Cluster::start();
    basic(&c);
    let leash = bin("leash");
    for (ns, flags) in [("pid", vec!["--pid", "--fork"]), ("mount", vec!["--mount"])] {
        let mut cmd = Command::new("unshare");
        cmd.args(&flags)
            .arg(&leash)
            .arg("--socket")
            .arg(&c.agent(0).socket)
            .args(["get", "api"]);
        let out = c.run(cmd);
        out.code(2)
            .stderr_has(&[&format!("different {ns} namespace")]);
        assert!(out.stdout.is_empty(), "{out}");
    }
    // Root inside its own user namespace: the CLI cannot tell root's files from another
    // unmapped user's there (both show as uid 65534), so it trusts neither and refuses
    // before anything is sent; the agent would attest the caller as uid 65534 anyway.
    let copy = c.copy_for_other_uids("leash");
    let mut cmd = as_nobody(std::path::Path::new("/usr/bin/unshare"));
    cmd.args(["--user", "--map-root-user"])
        .arg(&copy)
        .arg("--socket")
        .arg(&c.agent(0).socket)
        .args(["get", "api"]);
    let out = c.run(cmd);
    if out.code != 0 && out.stderr.contains("unshare failed") {
        eprintln!("note: unprivileged user namespaces are disabled here; skipped that part\n{out}");
        return;
    }
    out.code(5).stderr_has(&["uid 65534"]);
    assert!(out.stdout.is_empty(), "{out}");
}

/// Set for the copy of this test binary that `kept_connection_helper` runs as.
const KEPT_CONNECTION_SOCKET_ENV: &str = "LEASH_TEST_KEPT_CONNECTION_SOCKET";

#[test]
#[ignore = "helper: started as a child process by a kept_connection test"]
fn kept_connection_helper() {
    use leash_proto::v1;
    use leash_proto::v1::agent_client::AgentClient;
    let Some(socket) = std::env::var_os(KEPT_CONNECTION_SOCKET_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ch = leash_proto::uds::connect(std::path::Path::new(&socket))
            .await
            .expect("connect");
        let mut client = AgentClient::new(ch);
        let fetch = || v1::FetchRequest {
            credential: "api".into(),
            ..Default::default()
        };
        let show = |r: Result<tonic::Response<v1::FetchResponse>, tonic::Status>| match r {
            Ok(r) => format!("ok lease={}", r.into_inner().lease_id),
            Err(s) => format!("err {}", s.message()),
        };
        // Two requests on one connection: the second reuses the first's attestation.
        println!("FIRST {}", show(client.fetch(fetch()).await));
        println!("SECOND {}", show(client.fetch(fetch()).await));
        // Drop every id to nobody while keeping the connection (opened as root).
        nix::unistd::setgroups(&[]).expect("setgroups");
        let nobody_g = nix::unistd::Gid::from_raw(65534);
        let nobody_u = nix::unistd::Uid::from_raw(65534);
        nix::unistd::setresgid(nobody_g, nobody_g, nobody_g).expect("setresgid");
        nix::unistd::setresuid(nobody_u, nobody_u, nobody_u).expect("setresuid");
        println!("AFTER {}", show(client.fetch(fetch()).await));
    });
}

#[test]
#[ignore = "needs root: the helper drops from root to uid 65534 while keeping its connection"]
fn kept_connection_is_refused_once_its_process_changes_uid() {
    require_root();
    let c = Cluster::start();
    basic(&c);
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "agent::kept_connection_helper",
            "--ignored",
            "--nocapture",
        ])
        .env(KEPT_CONNECTION_SOCKET_ENV, &c.agent(0).socket)
        .output()
        .expect("run helper");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let line = |tag: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(tag))
            .unwrap_or_else(|| {
                panic!(
                    "helper printed no {tag} line\nstdout:\n{stdout}\nstderr:\n{}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    c.logs_dump()
                )
            })
            .trim()
            .to_string()
    };
    let first = line("FIRST");
    let second = line("SECOND");
    assert!(first.starts_with("ok lease="), "{first}");
    // The same credential from the cache, on the reused attestation.
    assert_eq!(second, first, "second request on the kept connection");
    let after = line("AFTER");
    assert!(
        after.starts_with("err attestation failed") && after.contains("65534"),
        "a process that changed its uid after connecting must be refused: {after}"
    );
}
