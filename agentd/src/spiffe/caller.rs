//! Who is calling the SPIFFE Workload API: the security header check, attestation (the
//! same as for `Fetch`), the task the caller runs inside, and the cache key of one of
//! its SVIDs.

use std::sync::Arc;

use leash_proto::v1;
use tonic::metadata::MetadataMap;

use crate::attest::Attestation;
use crate::cache::Key;
use crate::calls::Calls;
use crate::server::Conn;

use super::error::{SpiffeError, SECURITY_HEADER};

/// An attested SPIFFE caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// What attestation found.
    pub attested: Arc<Attestation>,
    /// The live task (id, name) the caller runs inside, found by ancestry: SPIFFE
    /// clients carry no task handle.
    pub task: Option<(String, String)>,
}

/// Check the security header, attest the caller on `conn` and find its task.
pub fn attest(
    calls: &Calls,
    metadata: &MetadataMap,
    conn: Option<&Conn>,
) -> Result<Caller, SpiffeError> {
    let ok = metadata
        .get(SECURITY_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !ok {
        return Err(SpiffeError::MissingHeader);
    }
    let attested = calls.attest(conn)?;
    calls.serving()?;
    let task = calls.agent().tasks.containing(&attested);
    Ok(Caller { attested, task })
}

impl Caller {
    /// The cache key of this caller's credential `credential` as workload `w`.
    pub fn key(&self, w: &v1::Workload, credential: &str, audience: String) -> Key {
        Key {
            workload: w.name.clone(),
            credential: credential.to_string(),
            audience,
            action: String::new(),
            ttl: 0,
            task: self.task.as_ref().map(|(id, _)| id.clone()),
            obo: None,
        }
    }

    /// The task's name, or "" outside a task.
    pub fn task_name(&self) -> &str {
        self.task.as_ref().map(|(_, n)| n.as_str()).unwrap_or("")
    }

    /// Whether the caller is still inside its task (always true outside one).
    pub fn still_in_task(&self, calls: &Calls) -> bool {
        match &self.task {
            None => true,
            Some((id, _)) => calls
                .agent()
                .tasks
                .containing(&self.attested)
                .is_some_and(|(now, _)| &now == id),
        }
    }

    /// The workloads this caller matches now, or why it has none.
    pub fn workloads(&self, calls: &Calls) -> Result<Vec<Arc<v1::Workload>>, SpiffeError> {
        let ws = calls.matching(&self.attested);
        if ws.is_empty() {
            return Err(SpiffeError::NoIdentity(format!(
                "no workload matches this caller ({}), so it has no SPIFFE ID; ask an admin to register one with `leashctl workload add NAME --owner O --selector unix:uid:{}`",
                self.attested.selectors.iter().cloned().collect::<Vec<_>>().join(" "),
                self.attested.uid
            )));
        }
        Ok(ws)
    }
}

/// The SPIFFE ID of workload `name` in trust domain `td`.
pub fn spiffe_id(td: &str, name: &str) -> String {
    format!("spiffe://{td}/{name}")
}
