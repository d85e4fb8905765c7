//! What the control plane believes a host about: usage reports, acknowledgments, what Sync tells each host; unauthenticated Enroll.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use leash_agentd::identity;
use leash_proto::v1;
use leash_proto::v1::control_message::Msg;
use leash_proto::v1::control_plane_client::ControlPlaneClient;
use leash_tests::{my_uid, process::Daemon, Cluster, Options, WAIT};
use tonic::transport::Channel;

use crate::{basic, cp_client, host_credentials, rt, timeline_types};

/// A well-formed join token for this control plane that was never minted.
fn unknown_token(c: &Cluster, n: usize) -> String {
    use base64::Engine;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([n as u8; 32]);
    format!("leash-join.v1.jt-{n:012x}.{secret}.{}", c.ca_pin)
}

/// One Enroll call with `token` and no client certificate.
async fn enroll_raw(cp: &mut ControlPlaneClient<Channel>, token: &str) -> tonic::Status {
    match cp
        .enroll(v1::EnrollRequest {
            protocol_version: leash_proto::PROTOCOL_VERSION,
            join_token: token.to_string(),
            name: "flood".into(),
            ..Default::default()
        })
        .await
    {
        Ok(_) => panic!("a bogus join token enrolled"),
        Err(s) => s,
    }
}

/// The audit events of type `kind`.
fn events_of(c: &Cluster, kind: &str) -> Vec<serde_json::Value> {
    c.audit()
        .into_iter()
        .filter(|e| e["type"] == kind)
        .collect()
}

#[test]
fn bogus_enrollments_leave_one_counted_event_per_source_and_malformed_ones_none() {
    // A long interval: the only flush is the one at shutdown, so the count is exact.
    let mut c = Cluster::with(
        Options::default()
            .no_agent()
            .config("enroll_source_burst = 1000\nenroll_refused_interval = \"1h\""),
    );
    let before = c.audit().len();
    let rt = rt();
    let mut cp = rt
        .block_on(cp_client(&c, None))
        .expect("TLS without a client cert");
    let malformed = [
        "hello".to_string(),
        "leash-join.v1.nonsense".to_string(),
        format!("leash-join.v1.jt-1.short.{}", c.ca_pin),
        format!(
            "leash-join.v1.{}.{}.{}",
            "a".repeat(100),
            "A".repeat(43),
            c.ca_pin
        ),
        "x".repeat(100_000),
        format!("leash-join.v1.jt-1.{}.sha256:zz", "A".repeat(43)),
    ];
    for t in malformed.iter().cycle().take(60) {
        let s = rt.block_on(enroll_raw(&mut cp, t));
        assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
        assert!(
            s.message().contains("malformed join token")
                || s.message().contains("not a Leash join token"),
            "{s:?}"
        );
        assert!(
            s.message().len() < 300,
            "the refusal echoes its input: {s:?}"
        );
    }
    for n in 0..40 {
        let s = rt.block_on(enroll_raw(&mut cp, &unknown_token(&c, n)));
        assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
        assert!(s.message().contains("unknown join token"), "{s:?}");
    }
    drop(cp);
    // Nothing is written per call...
    assert_eq!(
        c.audit().len(),
        before,
        "refused enrollments were recorded one by one:\n{:#?}",
        c.audit()
    );
    // ...and the count is not lost at shutdown.
    assert_eq!(c.stop_control_plane(), 0, "{}", c.control_plane_log());
    c.restart_control_plane();
    let refused = events_of(&c, "enroll-refused");
    assert_eq!(refused.len(), 1, "{refused:#?}");
    let e = &refused[0];
    let d = &e["detail"];
    assert_eq!(d["source"], "127.0.0.1", "{e}");
    assert_eq!(
        d["count"], 40,
        "malformed tokens are not counted, unknown ones are: {e}"
    );
    assert_eq!(d["kinds"]["unknown-token"], 40, "{e}");
    assert!(
        d["join_tokens"].as_array().is_some_and(|a| a.len() <= 8),
        "{e}"
    );
    assert!(events_of(&c, "denied").is_empty(), "{:#?}", c.audit());
    assert_eq!(c.audit().len(), before + 1, "{:#?}", c.audit());
}

#[test]
fn enroll_is_rate_limited_per_source_and_a_real_agent_enrolls_after_the_window() {
    let c = Cluster::with(Options::default().no_agent().config(
        "enroll_source_burst = 5\nenroll_source_per_minute = 60\nenroll_refused_interval = \"1s\"",
    ));
    let rt = rt();
    let mut cp = rt
        .block_on(cp_client(&c, None))
        .expect("TLS without a client cert");
    let mut limited = 0;
    let mut denied = 0;
    for n in 0..30 {
        let s = rt.block_on(enroll_raw(&mut cp, &unknown_token(&c, n)));
        match s.code() {
            tonic::Code::PermissionDenied => denied += 1,
            tonic::Code::Unavailable => {
                limited += 1;
                assert!(
                    s.message()
                        .starts_with("too many enrollment attempts from 127.0.0.1; retry in "),
                    "{s:?}"
                );
                assert!(s.message().ends_with('s'), "{s:?}");
            }
            other => panic!("unexpected {other:?}: {s:?}"),
        }
    }
    // A burst of 5 and one more a second: the calls above take well under 5 s.
    assert!(
        (5..=10).contains(&denied),
        "{denied} answered, {limited} limited"
    );
    assert_eq!(denied + limited, 30);
    // The refusals show up without a restart, counted (a flush may split them in two).
    let refused = c.eventually("the refused enrollments are recorded", || {
        let v = events_of(&c, "enroll-refused");
        let total: u64 = v.iter().filter_map(|e| e["detail"]["count"].as_u64()).sum();
        (total == denied).then_some(v)
    });
    assert!(refused.len() <= 2, "{refused:#?}");
    // After the window (one call a second refills the source's bucket, by the control
    // plane's clock, moved here), a real agent enrolls from the same address.
    c.advance_clock(Duration::from_millis(1500));
    let token = c.join_token(&["--name", "after-flood"]);
    let state = c.dir().join("after-flood");
    identity::prepare_state_dir(&state).expect("state dir");
    let id = rt
        .block_on(identity::enroll(
            &state,
            &[c.addr.to_string()],
            &token,
            None,
            None,
            BTreeMap::new(),
        ))
        .expect("a real enrollment after the flood");
    assert_eq!(id.desc.host, "after-flood");
}

/// A test-driven host: enrolled with a token binding `labels`, talking to the control
/// plane with the certificate in its state dir.
fn raw_host(
    c: &Cluster,
    rt: &tokio::runtime::Runtime,
    name: &str,
    labels: &[&str],
) -> ControlPlaneClient<Channel> {
    let mut args = vec!["--name", name];
    for l in labels {
        args.extend(["--label", l]);
    }
    let token = c.join_token(&args);
    let state: PathBuf = c.dir().join(format!("raw-{name}"));
    identity::prepare_state_dir(&state).expect("state dir");
    rt.block_on(identity::enroll(
        &state,
        &[c.addr.to_string()],
        &token,
        None,
        None,
        BTreeMap::new(),
    ))
    .expect("the test host enrolls");
    rt.block_on(cp_client(c, Some(host_credentials(&state))))
        .expect("mTLS with the host certificate")
}

struct Stream {
    tx: tokio::sync::mpsc::Sender<v1::AgentMessage>,
    inbound: tonic::Streaming<v1::ControlMessage>,
}

impl Stream {
    async fn open(cp: &mut ControlPlaneClient<Channel>, last_seq: u64) -> Stream {
        let (tx, inbound) = crate::control_plane::open_sync(cp, last_seq).await;
        Stream { tx, inbound }
    }

    /// The next message that is not a heartbeat.
    async fn next(&mut self) -> Msg {
        crate::control_plane::next_msg(&mut self.inbound).await
    }

    /// Messages up to and including the first one `until` accepts.
    async fn until(&mut self, until: impl Fn(&Msg) -> bool) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let m = self.next().await;
            let stop = until(&m);
            out.push(m);
            if stop {
                return out;
            }
        }
    }

    async fn send(&self, m: v1::agent_message::Msg) {
        self.tx
            .send(v1::AgentMessage { msg: Some(m) })
            .await
            .expect("the stream takes messages");
    }

    /// Read up to caught-up; returns its sequence.
    async fn caught_up(&mut self) -> u64 {
        let msgs = self.until(|m| matches!(m, Msg::CaughtUp(_))).await;
        match msgs.last() {
            Some(Msg::CaughtUp(c)) => c.seq,
            _ => unreachable!("until returns the caught-up message last"),
        }
    }
}

fn served_by(lease: &serde_json::Value, host: &str) -> bool {
    lease["timeline"]
        .as_array()
        .is_some_and(|t| t.iter().any(|e| e["type"] == "served" && e["host"] == host))
}

#[test]
fn a_host_cannot_report_usage_of_another_hosts_lease_nor_ack_what_it_was_not_sent() {
    let c = Cluster::start();
    basic(&c);
    let theirs = c.get("api", &[]).lease_id;
    let rt = rt();
    let mut cp = raw_host(&c, &rt, "raw-a", &[]);
    let mut s = rt.block_on(Stream::open(&mut cp, 0));
    let seq = rt.block_on(s.caught_up());
    rt.block_on(s.send(v1::agent_message::Msg::Ack(v1::SyncAck { seq })));
    // A lease of its own, so a report that is believed can be told from one that is not.
    let uid = my_uid();
    let own = rt
        .block_on(cp.issue(v1::IssueRequest {
            workload: "ci/job".into(),
            credential: "api".into(),
            attested: Some(v1::Attested {
                pid: 1,
                uid,
                gid: uid,
                selectors: vec![format!("unix:uid:{uid}")],
                ..Default::default()
            }),
            ..Default::default()
        }))
        .expect("Issue for raw-a")
        .into_inner();
    let usage = |id: &str| v1::LeaseUsage {
        lease_id: id.to_string(),
        count: 7,
        first_pid: 4242,
        first_exe: "/bin/forged".into(),
        last_pid: 4242,
        last_exe: "/bin/forged".into(),
        first_unix_ms: 1,
        last_unix_ms: 2,
    };
    rt.block_on(s.send(v1::agent_message::Msg::Usage(v1::UsageReport {
        leases: vec![usage(&theirs), usage(&own.lease_id), usage("l-nosuchlease")],
    })));
    // The client sends only while its runtime runs: drive it while polling.
    let drive =
        |ms: u64| rt.block_on(async { tokio::time::sleep(Duration::from_millis(ms)).await });
    c.eventually("raw-a's report on its own lease is recorded", || {
        drive(100);
        served_by(&c.lease(&own.lease_id), "raw-a").then_some(())
    });
    let lease = c.lease(&theirs);
    assert!(
        !served_by(&lease, "raw-a"),
        "raw-a's report made host-1's lease served by raw-a: {:?}",
        timeline_types(&lease)
    );

    // Acks for sequences not sent yet: a sync ack far ahead, and wipe acks for every
    // sequence the next revocations could take.
    rt.block_on(s.send(v1::agent_message::Msg::Ack(v1::SyncAck {
        seq: own.seq + 1_000_000,
    })));
    for q in own.seq + 1..=own.seq + 50 {
        rt.block_on(s.send(v1::agent_message::Msg::WipeAck(v1::WipeAck {
            seq: q,
            wiped: 1,
        })));
    }
    // Let them be processed before the revocation exists.
    drive(500);
    let mut wait = c.leashctl_command();
    wait.args([
        "revoke",
        "--lease",
        &own.lease_id,
        "--reason",
        "test",
        "--wait",
        "--timeout",
        "20s",
    ]);
    let mut waiter = Daemon::spawn("leashctl revoke --wait", wait);
    let rev = match rt
        .block_on(s.until(|m| matches!(m, Msg::Revocation(_))))
        .pop()
    {
        Some(Msg::Revocation(r)) => r,
        _ => unreachable!(),
    };
    assert!(rev.seq > own.seq && rev.seq <= own.seq + 50, "{rev:?}");
    assert_eq!(rev.lease_ids, vec![own.lease_id.clone()]);
    // Still waiting for raw-a: the early acks did not count.
    drive(2000);
    assert!(
        waiter.exited().is_none(),
        "revoke --wait finished before raw-a acknowledged the wipe:\n{}",
        waiter.log().text()
    );
    assert!(
        !timeline_types(&c.lease(&own.lease_id)).contains(&"wiped".to_string()),
        "{}",
        c.lease(&own.lease_id)
    );
    // The real acknowledgment ends the wait.
    rt.block_on(s.send(v1::agent_message::Msg::WipeAck(v1::WipeAck {
        seq: rev.seq,
        wiped: 1,
    })));
    let deadline = Instant::now() + WAIT;
    while waiter.exited().is_none() && Instant::now() < deadline {
        drive(100);
    }
    assert_eq!(waiter.wait_exit(WAIT), 0, "{}", waiter.log().text());
    c.eventually("the wipe is on the lease's timeline", || {
        timeline_types(&c.lease(&own.lease_id))
            .contains(&"wiped".to_string())
            .then_some(())
    });
    assert!(
        c.control_plane_log()
            .contains("ignored a wipe ack for a revocation not sent on this connection"),
        "{}",
        c.control_plane_log()
    );
}

#[test]
fn sync_names_to_a_host_only_the_workloads_and_revocation_details_that_concern_it() {
    let c = Cluster::start();
    basic(&c);
    let uid = format!("unix:uid:{}", my_uid());
    let workload = |name: &str, hosts: &str| {
        c.leashctl(&[
            "workload",
            "add",
            name,
            "--owner",
            "team-x",
            "--selector",
            &uid,
            "--hosts",
            hosts,
            "--allow",
            "api",
        ])
        .ok();
    };
    workload("secret-b1", "role=b");
    workload("mine", "role=a");
    let rt = rt();
    let mut cp = raw_host(&c, &rt, "raw-a", &["role=a"]);
    let mut s = rt.block_on(Stream::open(&mut cp, 0));
    let mut seen: Vec<Msg> = Vec::new();
    let first = rt.block_on(s.until(|m| matches!(m, Msg::CaughtUp(_))));
    let seq0 = match first.last() {
        Some(Msg::CaughtUp(c)) => c.seq,
        _ => unreachable!(),
    };
    assert!(
        format!("{first:?}").contains("\"mine\""),
        "the snapshot lacks raw-a's workload: {first:?}"
    );
    seen.extend(first);

    // Live: a workload for other hosts, host-1's lease revoked, a revocation of another
    // host's workload and of host-1 itself; then raw-a's own workload revoked (its epoch
    // must arrive) and a marker workload.
    workload("secret-b2", "role=b");
    let theirs = c.get("api", &[]).lease_id;
    c.leashctl(&["revoke", "--lease", &theirs, "--reason", "leak-on-host-1"])
        .ok();
    c.leashctl(&[
        "revoke",
        "--workload",
        "secret-b1",
        "--reason",
        "rotate-secret-b1",
    ])
    .ok();
    c.leashctl(&["revoke", "--workload", "mine", "--reason", "rotate-mine"])
        .ok();
    workload("marker", "role=a");
    let live = rt.block_on(s.until(|m| {
        matches!(m, Msg::Workload(e) if e.workload.as_ref().is_some_and(|w| w.name == "marker"))
    }));
    let mine_revoked = live.iter().any(|m| {
        matches!(m, Msg::Revocation(r) if r.reason == "rotate-mine"
            && matches!(r.target.as_ref().and_then(|t| t.target.as_ref()),
                Some(v1::revocation_target::Target::Workload(w)) if w == "mine"))
    });
    assert!(
        mine_revoked,
        "the revocation of raw-a's own workload lost its target: {live:#?}"
    );
    let revocations = live
        .iter()
        .filter(|m| matches!(m, Msg::Revocation(_)))
        .count();
    assert_eq!(
        revocations, 3,
        "every revocation still reaches raw-a: {live:#?}"
    );
    seen.extend(live);
    drop(s);

    // Resumed: a workload for other hosts added while raw-a was away.
    workload("secret-b3", "role=b");
    c.leashctl(&["workload", "remove", "secret-b2"]).ok();
    let mut s = rt.block_on(Stream::open(&mut cp, seq0));
    let resumed = rt.block_on(s.until(|m| matches!(m, Msg::CaughtUp(_))));
    seen.extend(resumed);

    let text = format!("{seen:?}");
    for secret in [
        "secret-b1",
        "secret-b2",
        "secret-b3",
        "host-1",
        "leak-on-host-1",
        "rotate-secret-b1",
        theirs.as_str(),
    ] {
        assert!(
            !text.contains(secret),
            "raw-a was told {secret:?}:\n{seen:#?}"
        );
    }
}

/// A directory only root may write to (but anyone may enter), holding a set-user-ID
/// root copy of `setpriv`.
fn setuid_setpriv(c: &Cluster) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = c.dir().join("suid");
    std::fs::create_dir_all(&dir).expect("suid dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let which = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("setpriv is installed");
    let dst = dir.join("setpriv");
    std::fs::copy(which, &dst).expect("copy setpriv");
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o4755)).expect("chmod u+s");
    dst
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

fn uids(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(str::to_string)
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "needs root: a task as uid 65534 that starts a set-user-ID root program"]
fn ending_a_task_leaves_running_what_its_owner_could_not_signal_and_says_so() {
    use std::os::unix::fs::PermissionsExt;
    leash_tests::require_root();
    let c = Cluster::start();
    let leash = c.copy_for_other_uids("leash");
    let suid = setuid_setpriv(&c);
    let work = c.dir().join("suid-task");
    std::fs::create_dir_all(&work).expect("work dir");
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let script = r#""$LEASH_BIN" task start --name suid-job --print-env > task.env 2> start.err || exit 90
. ./task.env
export LEASH_TASK
"$SUID_SETPRIV" --reuid 0 --regid 0 --clear-groups sleep 300 </dev/null >/dev/null 2>&1 &
echo $! > root.tmp && mv root.tmp root.pid
sleep 300 </dev/null >/dev/null 2>&1 &
echo $! > own.tmp && mv own.tmp own.pid
i=0; while [ ! -e go-exit ]; do sleep 0.05; i=$((i+1)); if [ $i -gt 600 ]; then exit 97; fi; done
exit 0
"#;
    std::fs::write(work.join("worker.sh"), script).expect("script");
    let mut cmd = leash_tests::as_nobody(Path::new("/bin/sh"));
    cmd.arg("./worker.sh")
        .current_dir(&work)
        .env("LEASH_AGENT_SOCKET", &c.agent(0).socket)
        .env("LEASH_BIN", &leash)
        .env("SUID_SETPRIV", &suid)
        .env_remove("LEASH_TASK");
    let mut worker = Daemon::spawn("task worker as nobody", cmd);
    let pid_in = |name: &str| -> i32 {
        c.eventually(&format!("{name} written"), || {
            std::fs::read_to_string(work.join(name))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        })
    };
    let rooted = pid_in("root.pid");
    let own = pid_in("own.pid");
    c.eventually("the set-user-ID program is fully root", || {
        uids(rooted).contains("\t0\t0\t0\t0").then_some(())
    });
    // The agent stops what it last saw in the task: let its scan (every 300 ms) see both.
    c.eventually("the agent's task scan saw both processes", || {
        (c.agent_tracks_task_process("host-1", rooted)
            && c.agent_tracks_task_process("host-1", own))
        .then_some(())
    });
    std::fs::write(work.join("go-exit"), "").expect("touch");
    let code = worker.wait_exit(WAIT);
    let kill = |pid: i32| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    if code != 0 {
        kill(rooted);
        kill(own);
        panic!(
            "the worker failed ({code}): {}",
            std::fs::read_to_string(work.join("start.err")).unwrap_or_default()
        );
    }
    let event = c.eventually(
        "the task's completed event lists what was left running",
        || {
            c.audit()
                .into_iter()
                .find(|e| e["type"] == "completed" && e["detail"]["left_running"].is_array())
        },
    );
    c.eventually("the task's own process is stopped", || {
        (!alive(own)).then_some(())
    });
    // Wait until the agent is done with the task's processes (past the 5 s grace
    // period, or sooner once only what the owner cannot signal is left) before checking
    // the root one is untouched: after that line the agent sends them nothing more.
    c.eventually("the agent is done stopping the task's processes", || {
        c.agent_log("host-1")
            .contains("done stopping the task's processes")
            .then_some(())
    });
    let still = alive(rooted);
    kill(rooted);
    kill(own);
    assert!(
        still,
        "the agent stopped a process the task owner could not signal"
    );
    let left = event["detail"]["left_running"].as_array().expect("array");
    assert!(
        left.iter()
            .any(|p| p["pid"] == rooted && p["exe"].as_str().is_some_and(|e| e.ends_with("sleep"))),
        "{event}"
    );
    assert!(!left.iter().any(|p| p["pid"] == own), "{event}");
}
