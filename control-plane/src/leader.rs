//! Which replica runs the background workers. On sled there is one control plane and it
//! runs them all. Replicas of a shared PostgreSQL store take turns: the one holding a
//! session-level advisory lock ([`LEAD_LOCK`]) on a connection of its own runs the
//! workers that act on the whole store by themselves (expiry, scheduled revocations, the
//! end-of-lease queue, the reconciler, retention, audit checkpoints); the others stand by
//! and try for the lock every [`TRY_EVERY`].
//!
//! - A replica killed with `kill -9` closes its connection with it; the database frees the
//!   lock at once and another replica takes over within [`TRY_EVERY`].
//! - The leader asks the database every [`PING_EVERY`] whether its connection is alive; a
//!   ping that fails or takes longer than [`PING_TIMEOUT`] stops its workers at once
//!   (the lock may be gone with the connection).
//! - A leader that stops answering without closing its connection (frozen, cut off by
//!   the network) is ended by the database after [`IDLE_SESSION_TIMEOUT`] of silence
//!   (`idle_session_timeout` on that connection), which frees the lock. That is longer
//!   than the leader needs to notice ([`PING_EVERY`] + [`PING_TIMEOUT`]), so two
//!   replicas lead at once only when a leader was frozen for longer than that and runs
//!   a worker's step before its next ping; every worker's writes are read-check-writes
//!   under the store's batch lock, so such a step finds its work already done, except
//!   an end step a kind runs outside (docs/HA.md).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::kinds::postgres::conn::ConnSpec;
use crate::state::Shared;

/// The advisory lock the leading replica holds for as long as its lease connection lives.
pub const LEAD_LOCK: i64 = 0x006c_6561_6c64;
/// How often a standing-by replica tries for the lock.
pub const TRY_EVERY: Duration = Duration::from_secs(1);
/// How often the leader checks its connection.
pub const PING_EVERY: Duration = Duration::from_secs(1);
/// A ping slower than this counts as failed.
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// The database ends the lease connection after this long without a statement.
pub const IDLE_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// The connection's `application_name`, to find it in `pg_stat_activity`.
const APPLICATION_NAME: &str = "leash-control-plane lead";

/// The workers a leader runs: aborted when dropped (the lead lost, or shutdown).
struct Running(Vec<JoinHandle<()>>);

impl Drop for Running {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// Run the background workers `start` spawns while this replica leads, until aborted.
/// `spec` is the shared store's database, `None` on sled (always leading).
pub async fn run<F>(s: Arc<Shared>, spec: Option<Arc<ConnSpec>>, start: F)
where
    F: Fn() -> Vec<JoinHandle<()>>,
{
    let Some(spec) = spec else {
        s.leading.store(true, Ordering::Release);
        let _workers = Running(start());
        return std::future::pending().await;
    };
    s.leading.store(false, Ordering::Release);
    let mut said_standby = false;
    loop {
        let client = match take_lead(&spec, &mut said_standby).await {
            Some(c) => c,
            None => continue,
        };
        tracing::info!(
            "this replica leads: it runs the background workers (expiry, scheduled revocations, \
             end steps, reconciler, retention, audit checkpoints)"
        );
        s.leading.store(true, Ordering::Release);
        let workers = Running(start());
        let why = hold(&spec, &client).await;
        drop(workers);
        s.leading.store(false, Ordering::Release);
        said_standby = false;
        tracing::warn!(
            reason = %why,
            "this replica stopped leading the background workers; another replica takes them over"
        );
    }
}

/// Connect and try for the lock until it is held; `None` after a failed connection (after
/// a pause), to be called again.
async fn take_lead(spec: &ConnSpec, said_standby: &mut bool) -> Option<tokio_postgres::Client> {
    let client = match spec.connect().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot connect to try for the lead of the background workers; retrying");
            tokio::time::sleep(TRY_EVERY).await;
            return None;
        }
    };
    let setup = format!(
        "SET application_name = '{APPLICATION_NAME}'; SET idle_session_timeout = '{}ms'",
        IDLE_SESSION_TIMEOUT.as_millis()
    );
    if let Err(e) = client.batch_execute(&setup).await {
        if client.is_closed() || e.as_db_error().is_none() {
            tokio::time::sleep(TRY_EVERY).await;
            return None;
        }
        tracing::warn!(
            error = %spec.message(&e),
            "the database does not end silent sessions (idle_session_timeout needs PostgreSQL 14): \
             a frozen leader keeps the background workers until its connection drops"
        );
    }
    loop {
        let got = tokio::time::timeout(
            PING_TIMEOUT,
            client.query_one("SELECT pg_try_advisory_lock($1)", &[&LEAD_LOCK]),
        )
        .await;
        match got {
            Ok(Ok(row)) if row.get::<_, bool>(0) => return Some(client),
            Ok(Ok(_)) => {
                if !*said_standby {
                    *said_standby = true;
                    tracing::info!(
                        "another replica leads the background workers; this one stands by"
                    );
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %spec.message(&e), "cannot try for the lead of the background workers; retrying");
                tokio::time::sleep(TRY_EVERY).await;
                return None;
            }
            Err(_) => {
                tracing::warn!("the database did not answer a try for the lead in time; retrying");
                return None;
            }
        }
        tokio::time::sleep(TRY_EVERY).await;
    }
}

/// Keep the lead while the connection answers; returns why it ended.
async fn hold(spec: &ConnSpec, client: &tokio_postgres::Client) -> String {
    loop {
        tokio::time::sleep(PING_EVERY).await;
        match tokio::time::timeout(PING_TIMEOUT, client.simple_query("SELECT 1")).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("the lease connection failed: {}", spec.message(&e)),
            Err(_) => {
                return format!(
                    "the database did not answer a ping within {} s",
                    PING_TIMEOUT.as_secs()
                )
            }
        }
    }
}
