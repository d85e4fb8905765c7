//! Tasks: a unit of work on this host (one CI job, one script run) whose credentials
//! exist only while it runs.
//!
//! A task has a root process, pinned by a pidfd. Membership is proven by ancestry with
//! start-time checks (the caller descends from the root) *plus* the per-task handle the
//! root was given; never by the handle alone. When the root exits (for any reason, even
//! SIGKILL) or the handle's holder ends the task, every credential bound to it is wiped,
//! the control plane marks its leases `completed`, and descendants still running get
//! SIGTERM, then SIGKILL after the task's grace period. Only descendants the task's
//! owner could signal itself (kill(2): the owner's uid is the target's real or saved
//! uid) are stopped; the others (a set-user-ID program that became another user for
//! good) are left running and listed in the task's `completed` event.
//!
//! The task logic needs four things from the rest of the agent, named by [`TaskHost`]:
//! the live tasks, the credential cache, the control-plane client and whether the agent
//! is caught up. It depends on no other part of the agent; every `/proc` fact comes from
//! `crate::procfs`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use leash_proto::reason::Reason;
use leash_proto::v1;
use leash_proto::v1::control_plane_client::ControlPlaneClient;
use ring::rand::SecureRandom;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::attest::Attestation;
use crate::cache::{Cache, Target};
use crate::procfs::{self, parent_and_start, process_uids, ProcessTree};

/// What the task logic needs from the agent that runs it.
pub trait TaskHost: Send + Sync + 'static {
    /// The live tasks.
    fn tasks(&self) -> &Tasks;
    /// The credential cache.
    fn cache(&self) -> &Cache;
    /// The client for unary calls to the control plane, when connected.
    fn client(&self) -> Option<ControlPlaneClient<Channel>>;
    /// Whether the agent is caught up with the control plane now.
    fn synced(&self) -> bool;
}

/// Why a task request was refused. The messages are the ones callers see.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The handle does not name a task this caller belongs to.
    #[error("this process is not inside the task named by LEASH_TASK (task credentials go only to the task's own processes); unset LEASH_TASK to get your own")]
    NotInTask,
    /// The handle names a task that has ended.
    #[error(
        "the task named by LEASH_TASK has ended; unset LEASH_TASK to get your own credentials"
    )]
    Ended,
    /// The requested root process does not exist.
    #[error("no process {0}")]
    NoProcess(i32),
    /// The calling process is gone.
    #[error("caller is gone")]
    CallerGone,
    /// The root runs as another uid.
    #[error(
        "process {root} does not run as your uid ({uid}); a task's root must have the caller's uid"
    )]
    OtherUid {
        /// The requested root.
        root: i32,
        /// The caller's uid.
        uid: u32,
    },
    /// The root is not related to the caller.
    #[error("process {0} is neither you, your ancestor nor your descendant; a task's root must be one of those")]
    Unrelated(i32),
    /// The root could not be pinned.
    #[error("cannot pin process {root}: {source}")]
    Pin {
        /// The requested root.
        root: i32,
        /// What the kernel answered.
        source: std::io::Error,
    },
    /// The root exited while the task was starting.
    #[error("process {0} exited while the task was starting")]
    RootExited(i32),
    /// No randomness for the handle.
    #[error("no randomness")]
    NoRandomness,
    /// EndTask without the task's handle, or from another uid.
    #[error("EndTask needs the task's handle (LEASH_TASK) from the process that started it")]
    NeedsHandle,
    /// EndTask for a task that is not live.
    #[error("no such task (it may have ended already)")]
    NoSuchTask,
}

impl TaskError {
    /// The reason a caller is given (and so its exit code).
    pub fn reason(&self) -> Reason {
        match self {
            TaskError::NoProcess(_) | TaskError::Pin { .. } | TaskError::RootExited(_) => {
                Reason::Invalid
            }
            TaskError::NoRandomness => Reason::Unavailable,
            TaskError::NoSuchTask => Reason::NotFound,
            TaskError::NotInTask
            | TaskError::Ended
            | TaskError::CallerGone
            | TaskError::OtherUid { .. }
            | TaskError::Unrelated(_)
            | TaskError::NeedsHandle => Reason::Denied,
        }
    }
}

/// How often the process tree of live tasks is recorded, so descendants can still be
/// found (and stopped) after the root is gone and they were re-parented.
const TRACK_INTERVAL: Duration = Duration::from_millis(300);
/// Default grace between SIGTERM and SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// Task completions kept for the control plane while it is unreachable. Past this the
/// oldest are dropped (their leases then end by expiry, as they did before), so a long
/// partition on a busy runner cannot grow the agent's memory without bound.
const MAX_UNREPORTED: usize = 10_000;

struct Task {
    id: String,
    name: String,
    secret_sha256: [u8; 32],
    root_pid: i32,
    root_start: u64,
    uid: u32,
    grace: Duration,
    /// Descendants seen at the last scan: (pid, start time).
    known: Mutex<HashSet<(i32, u64)>>,
    /// Turns true once the control plane has answered the task's `task-started` record
    /// (or it could not be sent). The record is written while the task already runs;
    /// an Issue or a CompleteTask for the task waits for it first, so the control
    /// plane's store keeps `task-started` before the task's `issued` and `completed`.
    recorded: watch::Receiver<bool>,
}

/// Wait until `recorded` turns true (or its sender is gone: the record was given up).
async fn until_recorded(mut recorded: watch::Receiver<bool>) {
    let _ = recorded.wait_for(|done| *done).await;
}

/// Live tasks on this host.
#[derive(Default)]
pub struct Tasks {
    map: Mutex<HashMap<String, Arc<Task>>>,
    /// Completions of tasks that ended while the control plane was unreachable: their
    /// credentials are already wiped here, and the control plane learns of the end
    /// (leases `completed`) once the agent has caught up again.
    unreported: Mutex<VecDeque<v1::CompleteTaskRequest>>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks").field("live", &self.len()).finish()
    }
}

fn sha(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn uid_of(pid: i32) -> Option<u32> {
    let ids = process_uids(pid)?;
    // All of real, effective, saved and fs must agree, as for callers.
    ids.iter().all(|&u| u == ids[0]).then_some(ids[0])
}

/// Most processes listed as left running in one `completed` event.
const MAX_LEFT_LISTED: usize = 64;

/// Whether `owner` could signal `pid` itself: kill(2) lets an unprivileged sender signal
/// a process whose real or saved set-user-ID is the sender's real or effective uid.
fn owner_may_signal(owner: u32, pid: i32) -> bool {
    if owner == 0 {
        return true;
    }
    match process_uids(pid) {
        Some([real, _, saved, _]) => real == owner || saved == owner,
        None => false,
    }
}

/// The task's remaining processes its owner could not signal.
fn left_alone(task: &Task) -> Vec<v1::LeftProcess> {
    let mut out: Vec<v1::LeftProcess> = descendants(task)
        .into_iter()
        .filter(|&(pid, _)| !owner_may_signal(task.uid, pid))
        .map(|(pid, _)| v1::LeftProcess {
            pid: pid as u32,
            exe: procfs::exe_or_comm(pid),
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out.truncate(MAX_LEFT_LISTED);
    out
}

/// `pid` descends from (or is) `root`, checked through start times.
fn descends(pid: i32, root: i32, root_start: u64) -> bool {
    procfs::is_ancestor_or_self(root, root_start, pid)
}

/// Parse `LEASH_TASK=<id>.<secret>`.
fn parse_handle(handle: &str) -> Option<(&str, Vec<u8>)> {
    let (id, secret) = handle.trim().split_once('.')?;
    let secret = URL_SAFE_NO_PAD.decode(secret).ok()?;
    (id.starts_with("t-") && secret.len() == 32).then_some((id, secret))
}

impl Tasks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Task>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of live tasks.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keep a completion the control plane did not receive, to send after reconnecting.
    fn defer(&self, req: v1::CompleteTaskRequest) {
        let mut q = self.unreported.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_UNREPORTED {
            if let Some(old) = q.pop_front() {
                tracing::warn!(task = %old.task, kept = MAX_UNREPORTED, "too many task completions waiting for the control plane: the oldest one's leases will expire instead of completing");
            }
        }
        q.push_back(req);
    }

    /// Take every completion waiting for the control plane.
    fn take_unreported(&self) -> Vec<v1::CompleteTaskRequest> {
        self.unreported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect()
    }

    /// How many completions wait for the control plane.
    pub fn unreported(&self) -> usize {
        self.unreported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// The task a request belongs to, proven by handle *and* ancestry. An empty handle
    /// means "not in a task". A handle the caller cannot back with ancestry is refused.
    pub fn membership(
        &self,
        handle: &str,
        caller: &Attestation,
    ) -> Result<Option<(String, String)>, TaskError> {
        if handle.trim().is_empty() {
            return Ok(None);
        }
        let (id, secret) = parse_handle(handle).ok_or(TaskError::NotInTask)?;
        let task = self.lock().get(id).cloned().ok_or(TaskError::Ended)?;
        // Comparing hashes of a 256-bit secret: timing reveals nothing useful.
        if sha(&secret) != task.secret_sha256
            || caller.uid != task.uid
            || !descends(caller.pid as i32, task.root_pid, task.root_start)
        {
            return Err(TaskError::NotInTask);
        }
        Ok(Some((task.id.clone(), task.name.clone())))
    }

    /// Wait until task `id`'s start is recorded at the control plane (see
    /// `Task::recorded`); false when the task is no longer live (it ended meanwhile: no
    /// credential is to be issued for it then).
    pub async fn wait_recorded(&self, id: &str) -> bool {
        let Some(recorded) = self.lock().get(id).map(|t| t.recorded.clone()) else {
            return false;
        };
        until_recorded(recorded).await;
        true
    }

    /// The live task a caller runs inside, by ancestry alone: for callers that cannot
    /// carry a handle (SPIFFE Workload API clients send none). Only binds the caller's
    /// credentials *to* a task (so they end with it), never grants anything the caller
    /// would not get outside it. The innermost task wins when tasks nest.
    pub fn containing(&self, caller: &Attestation) -> Option<(String, String)> {
        let tasks: Vec<Arc<Task>> = self
            .lock()
            .values()
            .filter(|t| t.uid == caller.uid)
            .cloned()
            .collect();
        tasks
            .into_iter()
            .filter(|t| descends(caller.pid as i32, t.root_pid, t.root_start))
            .max_by_key(|t| t.root_start)
            .map(|t| (t.id.clone(), t.name.clone()))
    }
}

/// Start a task for `caller`.
pub async fn start<H: TaskHost>(
    agent: &Arc<H>,
    caller: &Attestation,
    r: v1::StartTaskRequest,
) -> Result<v1::StartTaskResponse, TaskError> {
    let caller_pid = caller.pid as i32;
    let root = if r.root_pid == 0 {
        caller_pid
    } else {
        r.root_pid as i32
    };
    let (_, root_start) = parent_and_start(root).ok_or(TaskError::NoProcess(root))?;
    let (_, caller_start) = parent_and_start(caller_pid).ok_or(TaskError::CallerGone)?;
    if uid_of(root) != Some(caller.uid) {
        return Err(TaskError::OtherUid {
            root,
            uid: caller.uid,
        });
    }
    let related = root == caller_pid
        || descends(caller_pid, root, root_start)
        || descends(root, caller_pid, caller_start);
    if !related {
        return Err(TaskError::Unrelated(root));
    }
    let pidfd = crate::sys::pidfd_open(root).map_err(|source| TaskError::Pin { root, source })?;
    // Pinned: check it is still the process we vetted.
    if procfs::start_time(root) != Some(root_start) {
        return Err(TaskError::RootExited(root));
    }
    let mut rnd = [0u8; 32];
    let mut idb = [0u8; 8];
    let rng = ring::rand::SystemRandom::new();
    rng.fill(&mut rnd)
        .and_then(|_| rng.fill(&mut idb))
        .map_err(|_| TaskError::NoRandomness)?;
    let id = format!("t-{}", hex::encode(idb));
    let name = if r.name.trim().is_empty() {
        id.clone()
    } else {
        r.name.trim().chars().take(128).collect()
    };
    let grace = if r.grace_ms == 0 {
        DEFAULT_GRACE
    } else {
        Duration::from_millis(u64::from(r.grace_ms))
    };
    let (recorded_tx, recorded) = watch::channel(false);
    let task = Arc::new(Task {
        id: id.clone(),
        name: name.clone(),
        secret_sha256: sha(&rnd),
        root_pid: root,
        root_start,
        uid: caller.uid,
        grace,
        known: Mutex::new(HashSet::new()),
        recorded,
    });
    agent.tasks().lock().insert(id.clone(), task.clone());
    tracing::info!(task = %id, %name, root, uid = caller.uid, "task started");
    // The control plane's durable `task-started` write goes on while the caller gets its
    // handle and starts its work: nothing the task does needs it, except an Issue or the
    // task's completion, which wait for it (`Task::recorded`).
    let client = agent.client();
    let req = v1::TaskStartedRequest {
        task: id.clone(),
        name: name.clone(),
        root_pid: root as u32,
        uid: caller.uid,
    };
    let task_id = id.clone();
    tokio::spawn(async move {
        if let Some(mut c) = client {
            if let Err(e) = c.start_task(req).await {
                tracing::warn!(task = %task_id, error = %e.message(), "could not record task-started at the control plane");
            }
        }
        let _ = recorded_tx.send(true);
    });
    tokio::spawn(watch_root(agent.clone(), task, pidfd));
    Ok(v1::StartTaskResponse {
        handle: format!("{id}.{}", URL_SAFE_NO_PAD.encode(rnd)),
        task_id: id,
    })
}

/// End a task on request; needs its handle (and the caller's uid). With
/// `complete_in_background`, the answer comes once the credentials are wiped here, and
/// the control plane's completion follows without the caller waiting for it.
pub async fn end_by_handle<H: TaskHost>(
    agent: &Arc<H>,
    caller: &Attestation,
    r: v1::EndTaskRequest,
) -> Result<v1::EndTaskResponse, TaskError> {
    let (id, secret) = parse_handle(&r.handle).ok_or(TaskError::NeedsHandle)?;
    let task = agent
        .tasks()
        .lock()
        .get(id)
        .cloned()
        .ok_or(TaskError::NoSuchTask)?;
    if sha(&secret) != task.secret_sha256 || caller.uid != task.uid {
        return Err(TaskError::NeedsHandle);
    }
    // The runner that ends a task manages its own processes (its post-job hook is itself
    // a descendant of the root), so only the credentials go here.
    let why = "ended by its runner";
    if !r.complete_in_background {
        return Ok(finish(agent, &task, why, false).await);
    }
    let Some(ended) = wipe(agent, &task, false) else {
        return Ok(v1::EndTaskResponse::default());
    };
    let wiped = ended.wiped as u32;
    let agent = agent.clone();
    tokio::spawn(async move { complete(&agent, &task, ended, why).await });
    Ok(v1::EndTaskResponse {
        wiped,
        completed: 0,
    })
}

/// What is left to do for a task once its credentials are wiped on this host.
struct Ended {
    wiped: usize,
    req: v1::CompleteTaskRequest,
}

/// End the task on this host: forget it and wipe its credentials. None when it had
/// already ended.
fn wipe<H: TaskHost>(agent: &Arc<H>, task: &Arc<Task>, stop: bool) -> Option<Ended> {
    agent.tasks().lock().remove(&task.id)?;
    let leases = agent.cache().task_leases(&task.id);
    let wiped = agent
        .cache()
        .revoke(0, Target::Task(task.id.clone()), Vec::new());
    crate::metrics::wiped(crate::metrics::WipeCause::TaskEnd, wiped);
    let left_running = if stop { left_alone(task) } else { Vec::new() };
    if !left_running.is_empty() {
        tracing::warn!(task = %task.id, processes = ?left_running.iter().map(|p| p.pid).collect::<Vec<_>>(), "left running processes of the task its owner could not signal");
    }
    let req = v1::CompleteTaskRequest {
        task: task.id.clone(),
        lease_ids: leases,
        name: task.name.clone(),
        left_running,
    };
    Some(Ended { wiped, req })
}

/// Wipe, complete at the control plane, and (when the root died) stop descendants.
async fn finish<H: TaskHost>(
    agent: &Arc<H>,
    task: &Arc<Task>,
    why: &str,
    stop: bool,
) -> v1::EndTaskResponse {
    let Some(ended) = wipe(agent, task, stop) else {
        return v1::EndTaskResponse::default();
    };
    let wiped = ended.wiped as u32;
    let completed = complete(agent, task, ended, why).await;
    if stop {
        let t = task.clone();
        tokio::spawn(async move { stop_descendants(&t).await });
    }
    v1::EndTaskResponse { wiped, completed }
}

/// Mark the leases of a task wiped here `completed` at the control plane (or keep the
/// request for when it is reachable again); how many it completed.
async fn complete<H: TaskHost>(agent: &Arc<H>, task: &Arc<Task>, ended: Ended, why: &str) -> u32 {
    let Ended { wiped, req } = ended;
    let mut completed = 0;
    // `completed` after `task-started` in the store, however short the task was.
    until_recorded(task.recorded.clone()).await;
    if let Some(mut c) = agent.client() {
        match c.complete_task(req.clone()).await {
            Ok(r) => completed = r.into_inner().completed,
            Err(e) => {
                tracing::warn!(task = %task.id, error = %e.message(), "could not mark the task's leases completed; they will be once the control plane is reachable again");
                agent.tasks().defer(req);
                // Caught up again while this call was failing: that catch-up's report
                // ran without this one, so send it now.
                if agent.synced() {
                    tokio::spawn(report_unreported(agent.clone()));
                }
            }
        }
    } else {
        tracing::warn!(task = %task.id, "control plane unreachable: the task's leases will be marked completed once it is reachable again");
        agent.tasks().defer(req);
    }
    tracing::info!(task = %task.id, name = %task.name, wiped, completed, reason = why, "task ended");
    completed
}

/// Send the completions of tasks that ended while the control plane was unreachable
/// (called once the agent has caught up). What still fails is kept for the next time.
pub async fn report_unreported<H: TaskHost>(agent: Arc<H>) {
    let pending = agent.tasks().take_unreported();
    if pending.is_empty() {
        return;
    }
    let Some(c) = agent.client() else {
        for r in pending {
            agent.tasks().defer(r);
        }
        return;
    };
    let mut rest = pending.into_iter();
    while let Some(req) = rest.next() {
        let task = req.task.clone();
        match c.clone().complete_task(req.clone()).await {
            Ok(r) => {
                tracing::info!(task = %task, name = %req.name, completed = r.into_inner().completed, "task end reported after reconnecting");
            }
            Err(e) => {
                tracing::warn!(task = %task, error = %e.message(), "could not report a task's end yet; retrying after the next reconnect");
                agent.tasks().defer(req);
                for r in rest {
                    agent.tasks().defer(r);
                }
                return;
            }
        }
    }
}

/// Pids (with start times) of every live process that descends from the task root, or
/// that was recorded as a descendant earlier and still runs (re-parented orphans).
fn descendants(task: &Task) -> HashSet<(i32, u64)> {
    // From the root down when the kernel lists children (only the task's processes are
    // read); else the whole process table.
    let mut out = match procfs::descendants_of(task.root_pid, task.root_start) {
        Some(d) => d,
        None => ProcessTree::read().descendants(task.root_pid, task.root_start),
    };
    let known = task.known.lock().unwrap_or_else(|p| p.into_inner());
    for &(pid, start) in known.iter() {
        if procfs::start_time(pid) == Some(start) {
            out.insert((pid, start));
        }
    }
    out
}

async fn stop_descendants(task: &Task) {
    let send = |sig: i32| -> usize {
        let mut n = 0;
        for (pid, start) in descendants(task) {
            if let Ok(fd) = crate::sys::pidfd_open(pid) {
                // Pinned first, then the start time checked: never signal a recycled pid,
                // and never one the owner could not signal itself.
                if procfs::start_time(pid) == Some(start)
                    && owner_may_signal(task.uid, pid)
                    && crate::sys::pidfd_send_signal(fd.as_fd(), sig).is_ok()
                {
                    n += 1;
                }
            }
        }
        n
    };
    let termed = send(libc::SIGTERM);
    if termed > 0 {
        tracing::info!(task = %task.id, processes = termed, grace_ms = task.grace.as_millis() as u64, "stopping the task's remaining processes");
        if !wait_for_signalable_to_exit(task).await {
            let killed = send(libc::SIGKILL);
            if killed > 0 {
                tracing::info!(task = %task.id, processes = killed, "killed the task's processes after the grace period");
            }
        }
    }
    // The end of the task's process handling, whichever way it went (tests wait for it).
    tracing::info!(task = %task.id, "done stopping the task's processes");
}

/// Wait up to the task's grace period until no descendant the owner may signal is left;
/// whether none is.
async fn wait_for_signalable_to_exit(task: &Task) -> bool {
    let deadline = tokio::time::Instant::now() + task.grace;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if descendants(task)
            .into_iter()
            .all(|(pid, _)| !owner_may_signal(task.uid, pid))
        {
            return true;
        }
    }
    false
}

/// Wait for the root to exit (pidfd readable), recording descendants meanwhile.
async fn watch_root<H: TaskHost>(agent: Arc<H>, task: Arc<Task>, pidfd: OwnedFd) {
    let exited = crate::sys::pidfd_exited(pidfd);
    tokio::pin!(exited);
    // The first look after one interval: when the task starts its command has not been
    // spawned yet, so a look now would find nothing.
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + TRACK_INTERVAL, TRACK_INTERVAL);
    loop {
        tokio::select! {
            r = &mut exited => {
                let why = match r {
                    Ok(()) => "its root process exited",
                    Err(e) => {
                        tracing::warn!(task = %task.id, error = %e, "cannot watch the task root; ending the task");
                        "its root could not be watched"
                    }
                };
                finish(&agent, &task, why, true).await;
                return;
            }
            _ = tick.tick() => {
                if !agent.tasks().lock().contains_key(&task.id) {
                    return; // ended by handle
                }
                let d = descendants(&task);
                let mut known = task.known.lock().unwrap_or_else(|p| p.into_inner());
                let mut new: Vec<i32> = d.difference(&known).map(|(pid, _)| *pid).collect();
                if !new.is_empty() {
                    // Only at debug: a busy task starts many processes. Tests wait for
                    // this line instead of for a number of scans.
                    new.sort_unstable();
                    tracing::debug!(task = %task.id, pids = ?new, "tracking new processes of the task");
                }
                *known = d;
            }
        }
    }
}
