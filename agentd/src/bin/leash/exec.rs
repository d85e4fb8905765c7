//! `leash exec`: run a command as a task.
//!
//! This process is the task's root. It becomes a child subreaper so double-forked helpers
//! stay below it, registers the task with the agent, fetches the credentials bound to the
//! task into the command's environment, runs the command (forwarding signals), and when
//! the command exits (however it exits) ends the task: the agent wipes the task's
//! credentials and answers, and the control plane marks their leases `completed` right
//! after (this process does not wait for that write). Leftover processes
//! then get SIGTERM, and SIGKILL after `--grace`. If this process is killed instead, the
//! agent sees the root's pidfd close and does the same.
//!
//! Credentials come from `--env VAR=NAME[:ACTION]` (or `VAR=leash://…`), from
//! `--env-file` lines (`leash_proto::envfile`), and from variables of our own environment whose
//! value is a `leash://` reference (`--resolve-env`, on by default); a later source wins
//! for the same variable (environment, then env files in order, then `--env`). Unless
//! `--no-masking`, the child's output goes through the filter of `mask.rs`, wired by
//! `stdio.rs` (pipes, or a pty when our stdout is a terminal).
//!
//! Exit status: the command's own; 128+N if it died of signal N; 125 when leash itself
//! failed; 126 when the command cannot be run; 127 when it is not found.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use leash_proto::cli::{parse_secs, status_exit};
use leash_proto::envfile;
use leash_proto::reference::{self, Reference};
use leash_proto::v1;
use leash_proto::v1::agent_client::AgentClient;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

use crate::mask::{self, Patterns};
use crate::served;
use crate::stdio;

pub(crate) const LEASH_FAILED: u8 = 125;

fn fail(m: impl std::fmt::Display) -> u8 {
    eprintln!("leash exec: {m}");
    LEASH_FAILED
}

/// `VAR=CREDENTIAL[:ACTION]` or `VAR=leash://…`.
fn parse_env(spec: &str) -> Result<(String, Reference), String> {
    let (var, rest) = spec
        .split_once('=')
        .ok_or_else(|| format!("--env {spec:?} must look like VAR=CREDENTIAL[:ACTION]"))?;
    if !envfile::valid_var(var) {
        return Err(format!(
            "--env {spec:?}: {var:?} is not a valid variable name"
        ));
    }
    if reference::is_reference(rest) {
        let r = reference::parse(rest).map_err(|e| format!("--env {var}: {e}"))?;
        return Ok((var.to_string(), r));
    }
    let (cred, action) = match rest.split_once(':') {
        Some((c, a)) => (c, a),
        None => (rest, ""),
    };
    if cred.is_empty() {
        return Err(format!("--env {spec:?} names no credential"));
    }
    Ok((
        var.to_string(),
        Reference {
            name: cred.to_string(),
            action: action.to_string(),
            ..Reference::default()
        },
    ))
}

/// What a variable of the child's environment is set to, and where that was said.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Plain(String),
    Credential(Reference, String),
}

/// Every variable `leash exec` sets, from the parent environment (`resolve_env`), the env
/// files and the `--env` flags, a later one winning.
fn sources(
    parent: impl Iterator<Item = (String, String)>,
    resolve_env: bool,
    files: &[(String, String)],
    envs: &[String],
) -> Result<BTreeMap<String, Source>, String> {
    let mut out = BTreeMap::new();
    if resolve_env {
        for (var, value) in parent {
            if reference::is_reference(&value) {
                let r = reference::parse(&value).map_err(|e| {
                    format!("${var} of the environment: {e} (or run with --no-resolve-env to pass it on as it is)")
                })?;
                out.insert(var.clone(), Source::Credential(r, format!("${var}")));
            }
        }
    }
    for (path, text) in files {
        for line in envfile::parse(path, text).map_err(|e| e.to_string())? {
            let v = match line.value {
                envfile::Value::Plain(p) => Source::Plain(p),
                envfile::Value::Reference(r) => {
                    Source::Credential(r, format!("{path} line {}", line.number))
                }
            };
            out.insert(line.var, v);
        }
    }
    for spec in envs {
        let (var, r) = parse_env(spec)?;
        out.insert(var.clone(), Source::Credential(r, format!("--env {var}")));
    }
    Ok(out)
}

/// `leash exec`'s options.
#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) task_name: Option<String>,
    pub(crate) envs: Vec<String>,
    pub(crate) env_files: Vec<PathBuf>,
    pub(crate) resolve_env: bool,
    pub(crate) masking: bool,
    pub(crate) grace: String,
    pub(crate) command: Vec<String>,
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

/// Whether any process is still our child, once the zombies are reaped. Every live
/// descendant has one: as a subreaper we inherit the orphans, so the top of its chain
/// below us is a child of ours (or still a zombie, which [`reap`] would have cleared).
fn has_children() -> bool {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => return true,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::ECHILD) => return false,
            Err(_) => return true,
        }
    }
}

/// SIGTERM every leftover process of the task, then SIGKILL after `grace`.
async fn stop_leftovers(grace: Duration) {
    // The common case, the command left nothing behind, without reading all of `/proc`.
    if !has_children() {
        return;
    }
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
pub async fn run(socket: PathBuf, o: Options) -> u8 {
    let grace = match parse_secs(&o.grace) {
        Ok(g) => Duration::from_secs(u64::from(g)),
        Err(m) => return fail(format!("--grace: {m}")),
    };
    let mut files = Vec::new();
    for f in &o.env_files {
        match std::fs::read_to_string(f) {
            Ok(t) => files.push((f.display().to_string(), t)),
            Err(e) => return fail(format!("cannot read the env file {}: {e}", f.display())),
        }
    }
    let parent = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let sources = match sources(parent, o.resolve_env, &files, &o.envs) {
        Ok(s) => s,
        Err(m) => return fail(m),
    };
    drop(files);
    let Some((program, args)) = o.command.split_first() else {
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
            name: o
                .task_name
                .unwrap_or_else(|| leash_proto::names::sanitize(program)),
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
    // (label, value) of everything to mask: what was injected, and for a postgres
    // credential its URL and password.
    let mut injected: Vec<(String, String)> = Vec::new();
    for (var, source) in &sources {
        let (r, origin) = match source {
            Source::Plain(v) => {
                cmd.env(var, v);
                continue;
            }
            Source::Credential(r, origin) => (r, origin),
        };
        let fetched = agent
            .fetch(served::request(r, &task.handle))
            .await
            .map_err(|s| {
                format!(
                    "cannot fetch {} for ${var} ({origin}): {}",
                    r.name,
                    status_exit(&s).0
                )
            })
            .and_then(|resp| {
                let resp = resp.into_inner();
                let text = served::text(&resp, r).map_err(|m| format!("${var} ({origin}): {m}"))?;
                // What to mask: the text, or for a postgres credential its URL and password
                // whatever field was injected.
                Ok((served::masked(&resp, r, &text), text))
            });
        match fetched {
            Ok((masked, text)) => {
                if o.masking && masked.iter().any(|(_, v)| v.len() < mask::MIN_MASKED) {
                    eprintln!(
                        "leash exec: ${var} is shorter than {} bytes and is not masked",
                        mask::MIN_MASKED
                    );
                }
                cmd.env(var, &text);
                injected.extend(masked);
            }
            Err(m) => {
                let _ = agent
                    .end_task(v1::EndTaskRequest {
                        handle: task.handle.clone(),
                        ..Default::default()
                    })
                    .await;
                return fail(m);
            }
        }
    }
    let patterns = if o.masking {
        Patterns::new(&injected).map(Arc::new)
    } else {
        None
    };
    drop(injected);
    let filtered = match patterns.map(|p| stdio::wire(&mut cmd, p)).transpose() {
        Ok(f) => f,
        Err(e) => {
            let _ = agent
                .end_task(v1::EndTaskRequest {
                    handle: task.handle.clone(),
                    ..Default::default()
                })
                .await;
            return fail(format!(
                "cannot set up masking of the command's output: {e} (--no-masking runs it without)"
            ));
        }
    };

    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = agent
                .end_task(v1::EndTaskRequest {
                    handle: task.handle.clone(),
                    ..Default::default()
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
    let pty = filtered.as_ref().is_some_and(stdio::Filtered::has_pty);
    for kind in [
        SignalKind::window_change(),
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
    ] {
        if kind == SignalKind::window_change() && !pty {
            // Without a pty of its own the child shares our terminal and hears it itself.
            continue;
        }
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
                if k == SignalKind::window_change() {
                    if let Some(f) = &filtered {
                        f.resized();
                    }
                } else if let (Some(pid), Ok(sig)) = (pid, Signal::try_from(k.as_raw_value())) {
                    let _ = kill(pid, sig);
                }
            }
        }
    };

    // The command is done: take its credentials back first, then stop what it left.
    // The agent answers once it has wiped them; the control plane marks their leases
    // completed right after, without this process (whose command's exit status is known)
    // waiting for that write (docs/SECURITY.md: the wipe on the host is what ends them
    // here; the completion stops any copy that got out from passing introspection).
    match agent
        .end_task(v1::EndTaskRequest {
            handle: task.handle.clone(),
            complete_in_background: true,
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
    if let Some(f) = filtered {
        // Whatever the task's processes wrote goes out before we exit; they are all gone
        // now, so the filters see the end of their input at once.
        f.finish(Duration::from_secs(5));
    }

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
        let (v, r) = parse_env("DEPLOY_TOKEN=deploy-api:deploy").unwrap();
        assert_eq!(
            (v.as_str(), r.name.as_str(), r.action.as_str()),
            ("DEPLOY_TOKEN", "deploy-api", "deploy")
        );
        let (v, r) = parse_env("T=api").unwrap();
        assert_eq!(
            (v.as_str(), r.name.as_str(), r.action.as_str()),
            ("T", "api", "")
        );
        let (_, r) = parse_env("T=leash://api?action=read&ttl=1m#f").unwrap();
        assert_eq!(
            (r.name.as_str(), r.action.as_str(), r.ttl_seconds),
            ("api", "read", 60)
        );
        assert_eq!(r.field.as_deref(), Some("f"));
        assert!(parse_env("=api").is_err());
        assert!(parse_env("1X=api").is_err());
        assert!(parse_env("X").is_err());
        assert!(parse_env("X=").is_err());
        assert!(parse_env("X=leash://").is_err());
    }

    fn cred(name: &str, origin: &str) -> Source {
        Source::Credential(
            Reference {
                name: name.into(),
                ..Reference::default()
            },
            origin.into(),
        )
    }

    #[test]
    fn later_sources_win_and_resolve_env_can_be_turned_off() {
        let parent = || {
            vec![
                ("A".to_string(), "leash://from-env".to_string()),
                ("B".to_string(), "leash://b".to_string()),
                ("HOME".to_string(), "/root".to_string()),
            ]
            .into_iter()
        };
        let files = vec![(".env".to_string(), "B=plain\nC=leash://c\n".to_string())];
        let envs = vec!["C=flag".to_string()];
        let got = sources(parent(), true, &files, &envs).unwrap();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got["A"], cred("from-env", "$A"));
        assert_eq!(got["B"], Source::Plain("plain".into()));
        assert_eq!(got["C"], cred("flag", "--env C"));
        let got = sources(parent(), false, &files, &[]).unwrap();
        assert!(!got.contains_key("A"));
        assert_eq!(got["C"], cred("c", ".env line 2"));
        let bad = vec![("X".to_string(), "leash://x?nope=1".to_string())];
        let e = sources(bad.clone().into_iter(), true, &[], &[]).unwrap_err();
        assert!(e.starts_with("$X of the environment: the reference"), "{e}");
        assert!(sources(bad.into_iter(), false, &[], &[])
            .unwrap()
            .is_empty());
    }
}
