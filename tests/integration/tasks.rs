//! Tasks: `leash exec` puts task-bound credentials in its command's
//! environment; when the task ends (the command exits, is SIGKILLed, or `leash exec`
//! itself is SIGKILLed) the agent wipes them, the control plane marks their leases
//! `completed` and introspection says inactive, and leftover processes are stopped.
//! Membership is ancestry plus the handle; the runner API (`leash task start/end`).
//!
//! Scripts write what they see to files in a work dir; tests compare lengths, prefixes
//! and claims, and never print a token.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use leash_tests::{bin, Cluster, Daemon, Output};
use nix::sys::signal::Signal;

use crate::{basic, claims};

/// A fresh work dir for scripts, under the cluster's temp dir.
pub(crate) fn workdir(c: &Cluster, name: &str) -> PathBuf {
    let d = c.dir().join(name);
    std::fs::create_dir_all(&d).expect("work dir");
    d
}

/// `leash exec ARGS` against the first agent, run in `work`, with `$LEASH_BIN` set for
/// scripts and no `$LEASH_TASK` inherited from the test's environment.
pub(crate) fn exec_command(c: &Cluster, work: &Path, args: &[&str]) -> Command {
    let mut cmd = c.leash_command(0);
    cmd.current_dir(work)
        .env("LEASH_BIN", bin("leash"))
        .env_remove("LEASH_TASK")
        .arg("exec")
        .args(args);
    cmd
}

pub(crate) fn exec(c: &Cluster, work: &Path, args: &[&str]) -> Output {
    c.run(exec_command(c, work, args))
}

/// A file a script wrote, trimmed; panics (naming it) if it is missing.
pub(crate) fn read(work: &Path, name: &str) -> String {
    std::fs::read_to_string(work.join(name))
        .unwrap_or_else(|e| panic!("{} was not written: {e}", work.join(name).display()))
        .trim()
        .to_string()
}

/// A token a script wrote: checked to be a JWT (by shape, never printed) and remembered
/// as a secret.
pub(crate) fn read_token(c: &Cluster, work: &Path, name: &str) -> String {
    let t = read(work, name);
    assert!(
        t.starts_with("eyJ") && t.split('.').count() == 3 && t.len() > 100,
        "the command's environment variable is not a JWT ({} bytes, prefix {:?})",
        t.len(),
        t.get(..3).unwrap_or_default()
    );
    c.remember_secret(&t);
    t
}

/// Whether `pid` is a live (non-zombie) process.
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

pub(crate) fn write_script(work: &Path, name: &str, text: &str) {
    std::fs::write(work.join(name), text).expect("write script");
}

/// Wait until `name` exists in `work` (written atomically by the scripts).
pub(crate) fn wait_file(c: &Cluster, work: &Path, name: &str) -> String {
    c.eventually(&format!("the script writes {name}"), || {
        work.join(name).exists().then(|| read(work, name))
    })
}

/// The task id (`t-…`) of a `LEASH_TASK` handle.
fn task_of(handle: &str) -> String {
    let (id, secret) = handle
        .split_once('.')
        .unwrap_or_else(|| panic!("a handle is ID.SECRET, got {} bytes", handle.len()));
    assert!(id.starts_with("t-") && !secret.is_empty(), "{id}");
    id.to_string()
}

/// Assert that the lease ended with the task: `completed`, inactive to introspection,
/// with task-started and completed on its timeline. `leash exec` returns once the agent
/// has wiped the task's credentials; the control plane's completion follows at once, so
/// it is waited for here.
#[track_caller]
fn assert_completed(c: &Cluster, lease_id: &str, token: &str, task_name: &str) {
    let lease = c.eventually(&format!("lease {lease_id} is completed"), || {
        let lease = c.lease(lease_id);
        (lease["state"] == "completed").then_some(lease)
    });
    assert!(
        lease["reason"]
            .as_str()
            .unwrap_or_default()
            .contains(task_name),
        "the completion does not name the task {task_name:?}: {lease}"
    );
    crate::assert_timeline_order(&lease, &["task-started", "issued", "completed"]);
    let intro = c.leashctl(&["introspect", token]).json();
    assert_eq!(intro["active"], false, "{intro}");
    assert_eq!(intro["state"], "completed", "{intro}");
}

#[test]
fn exec_child_sees_its_credential_and_the_lease_completes_when_it_exits() {
    let c = Cluster::start();
    basic(&c);
    let work = workdir(&c, "normal");
    let out = exec(
        &c,
        &work,
        &[
            "--task-name",
            "job-1",
            "--env",
            "TOKEN=api",
            "--",
            "sh",
            "-c",
            r#"printf %s "$TOKEN" > token; printf %s "$LEASH_TASK" > handle; printf %s "$LEASH_AGENT_SOCKET" > socket"#,
        ],
    );
    out.code(0);
    let token = read_token(&c, &work, "token");
    assert!(
        !out.stdout.contains(&token) && !out.stderr.contains(&token),
        "leash exec printed the credential"
    );
    let handle = read(&work, "handle");
    let task = task_of(&handle);
    assert_eq!(
        read(&work, "socket"),
        c.agent(0).socket.display().to_string()
    );
    let cl = claims(&token);
    assert_eq!(cl["leash"]["task"], task.as_str(), "{cl}");
    assert_eq!(cl["aud"], crate::API_AUD);
    let lease_id = cl["jti"].as_str().expect("jti").to_string();
    let lease = c.lease(&lease_id);
    assert_eq!(lease["task"], task.as_str(), "{lease}");
    assert_eq!(lease["workload"], "ci/job");
    // The child exited: the task's credential was wiped before leash exec returned, and
    // the control plane completed its lease.
    assert_completed(&c, &lease_id, &token, "job-1");
    let leases = c.leashctl(&["lease", "list", "--output", "json"]).json();
    let listed = leases
        .as_array()
        .expect("array")
        .iter()
        .find(|l| l["id"] == lease_id.as_str())
        .unwrap_or_else(|| panic!("{lease_id} not listed: {leases}"));
    assert_eq!(listed["state"], "completed");
    assert_eq!(c.cached_at(0), 0, "the task's credential is wiped");
    let audit = c.audit();
    let started = audit
        .iter()
        .find(|e| e["type"] == "task-started" && e["task"] == task.as_str())
        .unwrap_or_else(|| panic!("no task-started event for {task}"));
    assert_eq!(started["detail"]["name"], "job-1", "{started}");
    assert!(audit
        .iter()
        .any(|e| e["type"] == "completed" && e["lease"] == lease_id.as_str()));
    // The handle of an ended task is worthless.
    let mut cmd = c.leash_command(0);
    cmd.env("LEASH_TASK", &handle).args(["get", "api"]);
    c.run(cmd).code(2).stderr_has(&["ended"]);
    c.assert_no_secret_leaked();
}

#[test]
fn exec_child_killed_by_sigkill_still_completes_its_lease() {
    let c = Cluster::start();
    basic(&c);
    let work = workdir(&c, "sigkill-child");
    let out = exec(
        &c,
        &work,
        &[
            "--task-name",
            "doomed",
            "--env",
            "TOKEN=api",
            "--",
            "sh",
            "-c",
            r#"printf %s "$TOKEN" > token; kill -9 $$"#,
        ],
    );
    out.code(128 + 9);
    let token = read_token(&c, &work, "token");
    let lease_id = claims(&token)["jti"].as_str().expect("jti").to_string();
    assert_completed(&c, &lease_id, &token, "doomed");
    assert_eq!(c.cached_at(0), 0);
}

#[test]
fn sigkill_of_leash_exec_itself_ends_the_task_and_stops_its_child() {
    let c = Cluster::start();
    basic(&c);
    let work = workdir(&c, "sigkill-exec");
    let cmd = exec_command(
        &c,
        &work,
        &[
            "--task-name",
            "orphaned",
            "--grace",
            "1s",
            "--env",
            "TOKEN=api",
            "--",
            "sh",
            "-c",
            r#"printf %s "$TOKEN" > token; echo $$ > child.tmp; mv child.tmp child.pid; exec sleep 300"#,
        ],
    );
    let mut d = Daemon::spawn("leash exec", cmd);
    let child: i32 = wait_file(&c, &work, "child.pid")
        .parse()
        .expect("child pid");
    let token = read_token(&c, &work, "token");
    let lease_id = claims(&token)["jti"].as_str().expect("jti").to_string();
    assert_eq!(c.lease(&lease_id)["state"], "active");
    assert_eq!(c.cached_at(0), 1);
    assert!(alive(child));
    // The agent records the task's process tree every 300 ms (it stops the processes it
    // last saw in the task); let it see the child before its parent disappears.
    c.eventually("the agent's task scan saw the child", || {
        c.agent_tracks_task_process("host-1", child).then_some(())
    });
    d.signal(Signal::SIGKILL);
    assert_eq!(
        d.wait_exit(Duration::from_secs(10)),
        -1,
        "killed by a signal"
    );
    c.eventually(
        "the agent ended the task: lease completed, credential wiped, child stopped",
        || {
            let done =
                c.lease(&lease_id)["state"] == "completed" && c.cached_at(0) == 0 && !alive(child);
            done.then_some(())
        },
    );
    assert_completed(&c, &lease_id, &token, "orphaned");
    assert!(
        c.agent_log("host-1").contains("root process exited"),
        "the agent did not log why the task ended"
    );
}

#[test]
fn exit_codes_pass_through_and_leash_failures_are_125_126_127() {
    let c = Cluster::start();
    basic(&c);
    let work = workdir(&c, "codes");
    exec(&c, &work, &["--", "sh", "-c", "exit 7"]).code(7);
    exec(&c, &work, &["--env", "T=api", "--", "true"]).code(0);
    // leash itself failed: an unknown credential, a bad --env, no command, no agent.
    let out = exec(&c, &work, &["--env", "T=nosuch", "--", "true"]);
    out.code(125).stderr_has(&["nosuch"]);
    exec(&c, &work, &["--env", "NOEQUALS", "--", "true"])
        .code(125)
        .stderr_has(&["VAR=CREDENTIAL"]);
    exec(&c, &work, &["--env", "T=api"]).code(125);
    let mut cmd = Command::new(bin("leash"));
    cmd.arg("--socket")
        .arg(c.dir().join("no-agent-here.sock"))
        .args(["exec", "--", "true"]);
    c.run(cmd).code(125).stderr_has(&["no leash agent answers"]);
    // The command cannot run: not found (by path and by $PATH), not executable.
    exec(
        &c,
        &work,
        &["--env", "T=api", "--", "/nonexistent/leash-test-command"],
    )
    .code(127);
    exec(&c, &work, &["--", "leash-test-no-such-command"]).code(127);
    let plain = work.join("not-executable.sh");
    std::fs::write(&plain, "#!/bin/sh\nexit 0\n").expect("write");
    exec(&c, &work, &["--", plain.to_str().expect("utf-8")]).code(126);
    // Whatever happened, nothing the tasks fetched is left active or cached.
    let active = c
        .leashctl(&["lease", "list", "--active", "--output", "json"])
        .json();
    assert_eq!(active, serde_json::json!([]), "{active}");
    let all = c.leashctl(&["lease", "list", "--output", "json"]).json();
    let all = all.as_array().expect("array");
    assert!(
        all.len() >= 2 && all.iter().all(|l| l["state"] == "completed"),
        "{all:?}"
    );
    assert_eq!(c.cached_at(0), 0);
}

#[test]
fn double_forked_descendant_stays_in_the_task_and_is_stopped_at_the_end() {
    let c = Cluster::start();
    basic(&c);
    let work = workdir(&c, "double-fork");
    // The helper: fetches the task credential, then runs as a daemon would.
    write_script(
        &work,
        "orphan.sh",
        r#""$LEASH_BIN" get api --output json > inner.json 2> inner.err
echo $? > inner.rc
echo $$ > orphan.tmp && mv orphan.tmp orphan.pid
exec sleep 300
"#,
    );
    // The job: double-forks the helper (the subshell exits at once, so the helper is
    // re-parented), records who adopted it, and exits without waiting for it.
    write_script(
        &work,
        "job.sh",
        r#"echo $PPID > exec.pid
( sh ./orphan.sh </dev/null >/dev/null 2>&1 & )
i=0
while [ ! -s orphan.pid ]; do sleep 0.05; i=$((i+1)); if [ $i -gt 400 ]; then exit 99; fi; done
o=$(cat orphan.pid)
i=0
while :; do
  ppid=$(cut -d' ' -f4 /proc/$o/stat)
  if [ "$ppid" = "$PPID" ] || [ $i -gt 100 ]; then break; fi
  sleep 0.05; i=$((i+1))
done
echo "$ppid" > orphan.ppid
printf %s "$TOKEN" > token
exit 0
"#,
    );
    let out = exec(
        &c,
        &work,
        &[
            "--task-name",
            "forky",
            "--grace",
            "1s",
            "--env",
            "TOKEN=api",
            "--",
            "sh",
            "./job.sh",
        ],
    );
    out.code(0).stderr_has(&["leftover process"]);
    let token = read_token(&c, &work, "token");
    let lease_id = claims(&token)["jti"].as_str().expect("jti").to_string();
    let orphan: i32 = read(&work, "orphan.pid").parse().expect("orphan pid");
    assert_eq!(
        read(&work, "orphan.ppid"),
        read(&work, "exec.pid"),
        "the double-forked helper was not re-parented to leash exec (the subreaper)"
    );
    // Still inside the task: it got the task's own credential.
    assert_eq!(
        read(&work, "inner.rc"),
        "0",
        "the helper's leash get failed: {}",
        read(&work, "inner.err")
    );
    let inner: serde_json::Value =
        serde_json::from_str(&read(&work, "inner.json")).expect("inner json");
    assert_eq!(
        inner["lease_id"],
        lease_id.as_str(),
        "{}",
        inner["lease_id"]
    );
    assert_eq!(inner["cached"], true);
    c.remember_secret(inner["token"].as_str().unwrap_or_default());
    // And stopped at the end.
    c.eventually("the helper is stopped", || (!alive(orphan)).then_some(()));
    assert_completed(&c, &lease_id, &token, "forky");
}

#[test]
fn non_descendant_with_the_handle_is_refused_and_gets_only_its_own_credential() {
    let c = Cluster::start();
    basic(&c);
    let work = workdir(&c, "outsider");
    let cmd = exec_command(
        &c,
        &work,
        &[
            "--task-name",
            "guarded",
            "--env",
            "TOKEN=api",
            "--",
            "sh",
            "-c",
            r#"printf %s "$TOKEN" > token
printf %s "$LEASH_TASK" > handle.tmp && mv handle.tmp handle
i=0; while [ ! -e done ]; do sleep 0.05; i=$((i+1)); if [ $i -gt 600 ]; then exit 98; fi; done"#,
        ],
    );
    let mut d = Daemon::spawn("leash exec", cmd);
    let handle = wait_file(&c, &work, "handle");
    let token = read_token(&c, &work, "token");
    let task_lease = claims(&token)["jti"].as_str().expect("jti").to_string();

    // The test process: same uid, not a descendant of the task root, with the handle.
    let mut cmd = c.leash_command(0);
    cmd.env("LEASH_TASK", &handle)
        .args(["get", "api", "--output", "json"]);
    let out = c.run(cmd);
    out.code(2).stderr_has(&["not inside the task"]);
    assert!(out.stdout.is_empty(), "{out}");
    let mut cmd = c.leash_command(0);
    cmd.env("LEASH_TASK", &handle)
        .args(["get", "api", "--fresh"]);
    c.run(cmd).code(2);
    // Without the handle it gets its own credential, never the task's.
    let mut cmd = c.leash_command(0);
    cmd.env_remove("LEASH_TASK")
        .args(["get", "api", "--output", "json"]);
    let own = c.run(cmd).json();
    let own_lease = own["lease_id"].as_str().expect("lease_id").to_string();
    assert_ne!(own_lease, task_lease);
    assert_eq!(own["cached"], false);
    let own_claims = claims(own["token"].as_str().expect("token"));
    assert!(own_claims["leash"].get("task").is_none(), "{own_claims}");
    assert_eq!(c.cached_at(0), 2);

    std::fs::write(work.join("done"), "").expect("touch");
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0);
    assert_completed(&c, &task_lease, &token, "guarded");
    // Ending the task left the outsider's own credential alone.
    assert_eq!(c.lease(&own_lease)["state"], "active");
    let again = c.get("api", &[]);
    assert_eq!(again.lease_id, own_lease);
    assert!(again.cached);
}

#[test]
fn start_task_with_a_foreign_root_is_refused() {
    let c = Cluster::start();
    basic(&c);
    // A sibling of `leash`: neither its ancestor nor its descendant.
    let mut sibling = Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("spawn sleep");
    let pid = sibling.id().to_string();
    let out = c.leash(&["task", "start", "--root-pid", &pid]);
    let _ = sibling.kill();
    let _ = sibling.wait();
    out.code(2)
        .stderr_has(&["neither you, your ancestor nor your descendant"]);
    assert!(out.stdout.is_empty(), "no handle is printed\n{out}");
    // No such process.
    c.leash(&["task", "start", "--root-pid", "2147483646"])
        .code(1)
        .stderr_has(&["no process"]);
    assert!(
        !c.audit().iter().any(|e| e["type"] == "task-started"),
        "a refused task was recorded as started"
    );
}

#[test]
#[ignore = "needs root: starts a process as uid 65534 with setpriv"]
fn start_task_with_another_uids_root_is_refused() {
    leash_tests::require_root();
    let c = Cluster::start();
    basic(&c);
    let mut other = leash_tests::as_nobody(Path::new("/bin/sleep"))
        .arg("60")
        .spawn()
        .expect("spawn sleep as nobody");
    let pid = other.id().to_string();
    c.eventually("setpriv has exec'd sleep as uid 65534", || {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        st.lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534"))
            .then_some(())
    });
    let out = c.leash(&["task", "start", "--root-pid", &pid]);
    let _ = other.kill();
    let _ = other.wait();
    out.code(2).stderr_has(&["does not run as your uid"]);
    assert!(
        !c.audit().iter().any(|e| e["type"] == "task-started"),
        "a refused task was recorded as started"
    );
}

#[test]
fn runner_hooks_start_and_end_a_task_around_later_processes() {
    let c = Cluster::start();
    basic(&c);
    let work = workdir(&c, "runner");
    // The pre-job hook: starts the task with its caller (the runner's worker) as root,
    // then exits at once; the job's processes come later.
    write_script(
        &work,
        "pre-job.sh",
        r#""$LEASH_BIN" task start --root-pid "$PPID" --name job-7 --print-env > task.env.tmp 2> start.err
echo $? > start.rc
mv task.env.tmp task.env
"#,
    );
    write_script(
        &work,
        "worker.sh",
        r#"wait_for() { i=0; while [ ! -e "$1" ]; do sleep 0.05; i=$((i+1)); if [ $i -gt 600 ]; then exit 97; fi; done; }
sh ./pre-job.sh
. ./task.env
export LEASH_TASK
"$LEASH_BIN" get api --output json > step.json 2> step.err
echo $? > step.tmp && mv step.tmp step.rc
wait_for go-end
"$LEASH_BIN" task end 2> end.err
echo $? > end.tmp && mv end.tmp end.rc
wait_for go-exit
"#,
    );
    let mut cmd = Command::new("sh");
    cmd.arg("./worker.sh")
        .current_dir(&work)
        .env("LEASH_AGENT_SOCKET", &c.agent(0).socket)
        .env("LEASH_BIN", bin("leash"))
        .env_remove("LEASH_TASK");
    let mut worker = Daemon::spawn("runner worker", cmd);
    let step_rc = wait_file(&c, &work, "step.rc");
    assert_eq!(read(&work, "start.rc"), "0", "{}", read(&work, "start.err"));
    let env = read(&work, "task.env");
    assert_eq!(env.lines().count(), 1, "--print-env prints one line");
    let handle = env
        .strip_prefix("LEASH_TASK=")
        .unwrap_or_else(|| {
            panic!(
                "--print-env did not print LEASH_TASK=… ({} bytes)",
                env.len()
            )
        })
        .to_string();
    let task = task_of(&handle);
    assert_eq!(
        step_rc,
        "0",
        "the job step's leash get failed: {}",
        read(&work, "step.err")
    );
    let step: serde_json::Value =
        serde_json::from_str(&read(&work, "step.json")).expect("step json");
    let token = step["token"].as_str().expect("token").to_string();
    c.remember_secret(&token);
    let lease_id = step["lease_id"].as_str().expect("lease_id").to_string();
    assert_eq!(claims(&token)["leash"]["task"], task.as_str());
    let lease = c.lease(&lease_id);
    assert_eq!(lease["state"], "active", "{lease}");
    assert_eq!(lease["task"], task.as_str(), "{lease}");
    assert_eq!(c.cached_at(0), 1);
    let started = c
        .audit()
        .into_iter()
        .find(|e| e["type"] == "task-started" && e["task"] == task.as_str())
        .unwrap_or_else(|| panic!("no task-started event for {task}"));
    assert_eq!(started["detail"]["name"], "job-7", "{started}");
    assert_eq!(
        started["detail"]["root_pid"],
        worker.pid().as_raw(),
        "the root is the hook's caller, the worker: {started}"
    );

    // EndTask without the handle, or with a wrong one, is refused; the task goes on.
    let mut cmd = c.leash_command(0);
    cmd.env_remove("LEASH_TASK").args(["task", "end"]);
    c.run(cmd).code(1).stderr_has(&["no task handle"]);
    let forged = format!("{task}.{}", "A".repeat(43));
    c.leash(&["task", "end", "--handle", &forged])
        .code(2)
        .stderr_has(&["handle"]);
    c.leash(&["task", "end", "--handle", "garbage"]).code(2);
    assert_eq!(c.lease(&lease_id)["state"], "active");
    assert_eq!(c.cached_at(0), 1);

    // The post-job hook ends it: wiped and completed; the runner's processes live on.
    std::fs::write(work.join("go-end"), "").expect("touch");
    let end_rc = wait_file(&c, &work, "end.rc");
    assert_eq!(end_rc, "0", "{}", read(&work, "end.err"));
    assert!(
        read(&work, "end.err").contains("1 credential(s) wiped, 1 lease(s) completed"),
        "{}",
        read(&work, "end.err")
    );
    assert_completed(&c, &lease_id, &token, "job-7");
    assert_eq!(c.cached_at(0), 0);
    assert!(
        worker.exited().is_none(),
        "ending a task by handle kills nothing"
    );
    assert!(c
        .audit()
        .iter()
        .any(|e| e["type"] == "completed" && e["lease"] == lease_id.as_str()));
    std::fs::write(work.join("go-exit"), "").expect("touch");
    assert_eq!(worker.wait_exit(Duration::from_secs(20)), 0);
}

#[test]
fn signals_to_leash_exec_are_forwarded_to_the_command() {
    let c = Cluster::start();
    basic(&c);
    let work = workdir(&c, "signals");
    let cmd = exec_command(
        &c,
        &work,
        &[
            "--task-name",
            "trapper",
            "--env",
            "TOKEN=api",
            "--",
            "sh",
            "-c",
            r#"trap 'echo term > got; exit 3' TERM
printf %s "$TOKEN" > token
echo ready > ready.tmp && mv ready.tmp ready
i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; exit 99"#,
        ],
    );
    let mut d = Daemon::spawn("leash exec", cmd);
    wait_file(&c, &work, "ready");
    let token = read_token(&c, &work, "token");
    let lease_id = claims(&token)["jti"].as_str().expect("jti").to_string();
    d.signal(Signal::SIGTERM);
    assert_eq!(
        d.wait_exit(Duration::from_secs(20)),
        3,
        "the command's own status after its trap"
    );
    assert_eq!(read(&work, "got"), "term");
    assert_completed(&c, &lease_id, &token, "trapper");
}

#[test]
fn runner_task_ends_by_itself_when_its_root_exits_and_stops_what_it_left() {
    let c = Cluster::start();
    basic(&c);
    let work = workdir(&c, "runner-dies");
    write_script(
        &work,
        "worker.sh",
        r#""$LEASH_BIN" task start --name job-8 --print-env > task.env 2> start.err
. ./task.env
export LEASH_TASK
"$LEASH_BIN" get api --output json > step.json 2> step.err
sleep 300 </dev/null >/dev/null 2>&1 &
echo $! > bg.tmp && mv bg.tmp bg.pid
i=0; while [ ! -e go-exit ]; do sleep 0.05; i=$((i+1)); if [ $i -gt 600 ]; then exit 97; fi; done
exit 0
"#,
    );
    let mut cmd = Command::new("sh");
    cmd.arg("./worker.sh")
        .current_dir(&work)
        .env("LEASH_AGENT_SOCKET", &c.agent(0).socket)
        .env("LEASH_BIN", bin("leash"))
        .env_remove("LEASH_TASK");
    // `leash task start` without --root-pid: the root is its caller, the worker.
    let mut worker = Daemon::spawn("runner worker", cmd);
    let bg: i32 = wait_file(&c, &work, "bg.pid").parse().expect("bg pid");
    let step: serde_json::Value =
        serde_json::from_str(&read(&work, "step.json")).unwrap_or_else(|e| {
            panic!(
                "the step's leash get failed ({e}): {}",
                read(&work, "step.err")
            )
        });
    let token = step["token"].as_str().expect("token").to_string();
    c.remember_secret(&token);
    let lease_id = step["lease_id"].as_str().expect("lease_id").to_string();
    assert_eq!(c.lease(&lease_id)["state"], "active");
    assert!(alive(bg));
    // The agent records the task's process tree every 300 ms (it stops the processes it
    // last saw in the task); let it see the background job before the worker exits.
    c.eventually("the agent's task scan saw the background job", || {
        c.agent_tracks_task_process("host-1", bg).then_some(())
    });
    std::fs::write(work.join("go-exit"), "").expect("touch");
    assert_eq!(worker.wait_exit(Duration::from_secs(20)), 0);
    c.eventually(
        "the agent ended the task: lease completed, credential wiped, leftover stopped",
        || {
            let done =
                c.lease(&lease_id)["state"] == "completed" && c.cached_at(0) == 0 && !alive(bg);
            done.then_some(())
        },
    );
    assert_completed(&c, &lease_id, &token, "job-8");
}

/// Wait up to `limit` for `child` to exit; its output, or None if it still runs.
fn exited_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_task_starts_without_waiting_for_the_control_plane_and_its_credential_waits_for_the_record() {
    use std::io::Read;
    use std::process::Stdio;
    let c = Cluster::start();
    basic(&c);
    // A stopped control plane: its durable `task-started` write cannot happen yet.
    c.signal_control_plane(Signal::SIGSTOP);
    let mut start = c.leash_command(0);
    start
        .env_remove("LEASH_TASK")
        .args(["task", "start", "--name", "early"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut start = start.spawn().expect("spawn leash task start");
    let started = exited_within(&mut start, Duration::from_secs(5));
    let Some(st) = started else {
        c.signal_control_plane(Signal::SIGCONT);
        let _ = start.kill();
        panic!("leash task start waited for the control plane's write (it should answer once the agent has recorded the task)");
    };
    let mut handle = String::new();
    start
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut handle)
        .expect("read the handle");
    let handle = handle.trim().to_string();
    if !st.success() {
        c.signal_control_plane(Signal::SIGCONT);
        panic!("leash task start failed: {st}");
    }
    let task = task_of(&handle);
    // A credential for the task is issued only after the task's start is recorded: it
    // waits while the control plane is stopped.
    let mut get = c.leash_command(0);
    get.env("LEASH_TASK", &handle)
        .args(["get", "api", "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut get = get.spawn().expect("spawn leash get");
    let early = exited_within(&mut get, Duration::from_millis(500));
    c.signal_control_plane(Signal::SIGCONT);
    assert!(
        early.is_none(),
        "leash get answered while the control plane was stopped: {early:?}"
    );
    let out = get.wait_with_output().expect("leash get");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "leash get in the task failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let token = json["token"].as_str().expect("token").to_string();
    c.remember_secret(&token);
    assert_eq!(claims(&token)["leash"]["task"], task.as_str());
    let lease_id = json["lease_id"].as_str().expect("lease_id").to_string();
    // The store keeps the order: task-started, then issued, then completed.
    c.leash(&["task", "end", "--handle", &handle]).code(0);
    assert_completed(&c, &lease_id, &token, "early");
    c.assert_no_secret_leaked();
}

#[test]
fn exec_returns_once_the_credentials_are_wiped_and_the_lease_completes_after() {
    use std::process::Stdio;
    let c = Cluster::start();
    basic(&c);
    let work = workdir(&c, "end-in-background");
    let mut cmd = exec_command(
        &c,
        &work,
        &[
            "--task-name",
            "quick-end",
            "--env",
            "TOKEN=api",
            "--",
            "sh",
            "-c",
            r#"printf %s "$TOKEN" > token.tmp && mv token.tmp token; i=0; while [ ! -e go ]; do sleep 0.05; i=$((i+1)); [ $i -gt 600 ] && exit 97; done; exit 3"#,
        ],
    );
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut leash = cmd.spawn().expect("spawn leash exec");
    let token = wait_file(&c, &work, "token");
    c.remember_secret(&token);
    let lease_id = claims(&token)["jti"].as_str().expect("jti").to_string();
    assert_eq!(c.cached_at(0), 1);
    // The control plane cannot write now: the command's end must not wait for it.
    c.signal_control_plane(Signal::SIGSTOP);
    std::fs::write(work.join("go"), "").expect("touch go");
    let ended = exited_within(&mut leash, Duration::from_secs(5));
    let cached = c.cached_at(0);
    c.signal_control_plane(Signal::SIGCONT);
    let Some(st) = ended else {
        let _ = leash.kill();
        panic!("leash exec waited for the control plane after its command exited");
    };
    assert_eq!(st.code(), Some(3), "the command's exit status");
    assert_eq!(
        cached, 0,
        "the task's credential was wiped before leash exec returned"
    );
    assert_completed(&c, &lease_id, &token, "quick-end");
    c.assert_no_secret_leaked();
}
