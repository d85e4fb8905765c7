//! `leash exec`: run a command as a task.
//!
//! This process is the task's root. It becomes a child subreaper so double-forked helpers
//! stay below it, registers the task with the agent, fetches the credentials bound to the
//! task into the command's environment, runs the command (forwarding signals), and when
//! the command exits (however it exits) ends the task: the agent wipes the task's
//! credentials and the control plane marks their leases `completed`. Leftover processes
//! then get SIGTERM, and SIGKILL after `--grace`. If this process is killed instead, the
//! agent sees the root's pidfd close and does the same.
//!
//! Exit status: the command's own; 128+N if it died of signal N; 125 when leash itself
//! failed; 126 when the command cannot be run; 127 when it is not found.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use leash_proto::cli::{parse_secs, status_exit};
use leash_proto::v1;
use leash_proto::v1::agent_client::AgentClient;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

pub(crate) const LEASH_FAILED: u8 = 125;

fn fail(m: impl std::fmt::Display) -> u8 {
    eprintln!("leash exec: {m}");
    LEASH_FAILED
}

/// `VAR=CREDENTIAL[:ACTION]`.
fn parse_env(spec: &str) -> Result<(String, String, String), String> {
    let (var, rest) = spec
        .split_once('=')
        .ok_or_else(|| format!("--env {spec:?} must look like VAR=CREDENTIAL[:ACTION]"))?;
    if var.is_empty()
        || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || var.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(format!(
            "--env {spec:?}: {var:?} is not a valid variable name"
        ));
    }
    let (cred, action) = match rest.split_once(':') {
        Some((c, a)) => (c, a),
        None => (rest, ""),
    };
    if cred.is_empty() {
        return Err(format!("--env {spec:?} names no credential"));
    }
    Ok((var.to_string(), cred.to_string(), action.to_string()))
}

/// Live (non-zombie) processes that descend from us.
fn descendants() -> HashSet<i32> {
    let me = std::process::id() as i32;
    let mut parent = std::collections::HashMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let state = fields.first().copied().unwrap_or("Z");
            let ppid: i32 = fields.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            parent.insert(pid, (ppid, state != "Z" && state != "X"));
        }
    }
    let mut out = HashSet::new();
    for (&pid, &(_, alive)) in &parent {
        if !alive {
            continue;
        }
        let mut cur = pid;
        for _ in 0..4096 {
            match parent.get(&cur) {
                Some(&(ppid, _)) if ppid == me => {
                    out.insert(pid);
                    break;
                }
                Some(&(ppid, _)) if ppid > 1 => cur = ppid,
                _ => break,
            }
        }
    }
    out
}

/// Reap whatever zombies we have (we are a subreaper, so orphans end up here).
fn reap() {
    while let Ok(st) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if st == nix::sys::wait::WaitStatus::StillAlive {
            break;
        }
    }
}

/// SIGTERM every leftover process of the task, then SIGKILL after `grace`.
async fn stop_leftovers(grace: Duration) {
    let left = descendants();
    if left.is_empty() {
        return;
    }
    eprintln!(
        "leash exec: stopping {} leftover process(es) of the task",
        left.len()
    );
    for pid in &left {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        reap();
        if descendants().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for pid in descendants() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    reap();
}

/// Run `leash exec`; returns the exit status.
pub async fn run(
    socket: PathBuf,
    task_name: Option<String>,
    envs: Vec<String>,
    grace: String,
    command: Vec<String>,
) -> u8 {
    let grace = match parse_secs(&grace) {
        Ok(g) => Duration::from_secs(u64::from(g)),
        Err(m) => return fail(format!("--grace: {m}")),
    };
    let specs: Vec<(String, String, String)> = match envs.iter().map(|e| parse_env(e)).collect() {
        Ok(v) => v,
        Err(m) => return fail(m),
    };
    let Some((program, args)) = command.split_first() else {
        return fail("no command given: leash exec [--env VAR=CRED] -- CMD ARGS");
    };
    if let Err(e) = leash_agentd::sys::set_child_subreaper() {
        return fail(format!("cannot become a child subreaper: {e}"));
    }
    let channel = match leash_proto::uds::connect(&socket).await {
        Ok(c) => c,
        Err(e) => return fail(format!("no Leash agent answers: {e}")),
    };
    let mut agent = AgentClient::new(channel);
    let task = match agent
        .start_task(v1::StartTaskRequest {
            root_pid: std::process::id(),
            // A command path may hold characters a task name may not: the default is
            // made to fit; a name given explicitly is checked by the agent as it is.
            name: task_name.unwrap_or_else(|| leash_proto::names::sanitize(program)),
            grace_ms: grace.as_millis().min(u128::from(u32::MAX)) as u32,
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return fail(format!("cannot start a task: {}", status_exit(&s).0)),
    };

    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("LEASH_TASK", &task.handle)
        .env("LEASH_AGENT_SOCKET", &socket);
    for (var, cred, action) in &specs {
        let r = agent
            .fetch(v1::FetchRequest {
                credential: cred.clone(),
                action: action.clone(),
                task_handle: task.handle.clone(),
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => {
                cmd.env(var, r.into_inner().token);
            }
            Err(s) => {
                let _ = agent
                    .end_task(v1::EndTaskRequest {
                        handle: task.handle.clone(),
                    })
                    .await;
                return fail(format!(
                    "cannot fetch {cred} for ${var}: {}",
                    status_exit(&s).0
                ));
            }
        }
    }

    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = agent
                .end_task(v1::EndTaskRequest {
                    handle: task.handle.clone(),
                })
                .await;
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                std::io::ErrorKind::PermissionDenied => 126,
                _ => 126,
            };
            eprintln!("leash exec: cannot run {program:?}: {e}");
            return code;
        }
    };
    drop(cmd); // the credentials in its environment block go with it
    let pid = child.id().map(|p| Pid::from_raw(p as i32));

    let mut sigs = Vec::new();
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ] {
        match signal(kind) {
            Ok(s) => sigs.push((kind, s)),
            Err(e) => eprintln!(
                "leash exec: cannot forward signal {}: {e}",
                kind.as_raw_value()
            ),
        }
    }
    let status = loop {
        let forwarded = futures::future::select_all(sigs.iter_mut().map(|(k, s)| {
            let k = *k;
            Box::pin(async move {
                s.recv().await;
                k
            })
        }));
        tokio::select! {
            st = child.wait() => break st,
            (k, _, _) = forwarded => {
                if let (Some(pid), Ok(sig)) = (pid, Signal::try_from(k.as_raw_value())) {
                    let _ = kill(pid, sig);
                }
            }
        }
    };

    // The command is done: take its credentials back first, then stop what it left.
    match agent
        .end_task(v1::EndTaskRequest {
            handle: task.handle.clone(),
        })
        .await
    {
        Ok(_) => {}
        Err(s) => eprintln!(
            "leash exec: could not end the task cleanly: {}",
            status_exit(&s).0
        ),
    }
    stop_leftovers(grace).await;

    match status {
        Ok(st) => {
            use std::os::unix::process::ExitStatusExt;
            if let Some(c) = st.code() {
                c as u8
            } else if let Some(sig) = st.signal() {
                (128 + sig) as u8
            } else {
                LEASH_FAILED
            }
        }
        Err(e) => fail(format!("lost track of the command: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_specs() {
        assert_eq!(
            parse_env("DEPLOY_TOKEN=deploy-api:deploy"),
            Ok(("DEPLOY_TOKEN".into(), "deploy-api".into(), "deploy".into()))
        );
        assert_eq!(
            parse_env("T=api"),
            Ok(("T".into(), "api".into(), String::new()))
        );
        assert!(parse_env("=api").is_err());
        assert!(parse_env("1X=api").is_err());
        assert!(parse_env("X").is_err());
        assert!(parse_env("X=").is_err());
    }
}
