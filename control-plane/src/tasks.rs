//! Tasks as the control plane sees them: a task's start is recorded, and when the agent
//! says it ended, every lease still active in it on that host is completed (the ending
//! path that reaches a kind's end step through the store, like every other), with what
//! the task left running recorded in its own `completed` event.

use leash_proto::v1;

use crate::audit;
use crate::model::{Host, LeaseState};
use crate::state::Shared;
use crate::store::StoreError;

/// Most processes a task's `completed` event lists, whatever the agent sends.
const MAX_LEFT_RUNNING: usize = 64;

/// Record that `host` started task `r.task`.
pub async fn started(
    s: &Shared,
    host: &Host,
    r: &v1::TaskStartedRequest,
) -> Result<(), StoreError> {
    let e = audit::task_started(s.clock.now_ms(), &host.name, r);
    s.store.append_events(vec![e]).await
}

/// Complete every lease of task `r.task` still active on `host` (not only those the agent
/// still had cached); returns how many.
pub async fn complete(
    s: &Shared,
    host: &Host,
    r: &v1::CompleteTaskRequest,
) -> Result<u32, StoreError> {
    let ids: Vec<String> = s
        .store
        .leases(None, true)?
        .into_iter()
        .filter(|l| l.host == host.name && l.task.as_deref() == Some(r.task.as_str()))
        .map(|l| l.id)
        .collect();
    let label = if r.name.is_empty() {
        r.task.clone()
    } else {
        r.name.clone()
    };
    let done = s
        .store
        .finish_leases(ids, LeaseState::Completed, format!("task {label} ended"))
        .await?;
    if !r.left_running.is_empty() {
        // The task's own `completed` record: what it left running because its owner
        // could not have signalled it. Bounded whatever the agent sends.
        let left: Vec<serde_json::Value> = r
            .left_running
            .iter()
            .take(MAX_LEFT_RUNNING)
            .map(|p| serde_json::json!({ "pid": p.pid, "exe": p.exe.chars().take(256).collect::<String>() }))
            .collect();
        let e = audit::task_completed(
            s.clock.now_ms(),
            &host.name,
            &r.task,
            &label,
            r.left_running.len(),
            left,
        );
        s.store.append_events(vec![e]).await?;
    }
    Ok(u32::try_from(done.len()).unwrap_or(u32::MAX))
}
