//! The kinds of workload `leashctl workload add --kind` accepts, and what a kind
//! changes: only a shared agent may (and must) act on behalf of someone. Workload
//! records store the kind as its text; it is parsed here at the boundaries.

use std::fmt;
use std::str::FromStr;

/// A workload's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    /// A long-running service.
    Service,
    /// A batch or CI job.
    Job,
    /// An automated agent acting for itself.
    Agent,
    /// An agent that acts on behalf of people: every request names one.
    SharedAgent,
    /// A sandboxed process.
    Sandbox,
}

/// A kind that is not one of [`WorkloadKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind {0:?}; use one of {list}", list = WorkloadKind::list())]
pub struct UnknownWorkloadKind(pub String);

impl WorkloadKind {
    /// Every kind, in the order `workload add` lists them.
    pub const ALL: [WorkloadKind; 5] = [
        WorkloadKind::Service,
        WorkloadKind::Job,
        WorkloadKind::Agent,
        WorkloadKind::SharedAgent,
        WorkloadKind::Sandbox,
    ];

    /// The kind as stored and as the CLI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Service => "service",
            WorkloadKind::Job => "job",
            WorkloadKind::Agent => "agent",
            WorkloadKind::SharedAgent => "shared-agent",
            WorkloadKind::Sandbox => "sandbox",
        }
    }

    /// The kind of a stored workload (`None` for text that names no kind).
    pub fn of(stored: &str) -> Option<WorkloadKind> {
        stored.parse().ok()
    }

    /// Whether a workload of this kind acts on behalf of someone (`--on-behalf-of`).
    pub fn acts_on_behalf(self) -> bool {
        self == WorkloadKind::SharedAgent
    }

    fn list() -> String {
        WorkloadKind::ALL.map(WorkloadKind::as_str).join(", ")
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WorkloadKind {
    type Err = UnknownWorkloadKind;

    fn from_str(s: &str) -> Result<WorkloadKind, UnknownWorkloadKind> {
        WorkloadKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownWorkloadKind(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_matches_the_stored_list() {
        for k in WorkloadKind::ALL {
            assert_eq!(k.as_str().parse::<WorkloadKind>(), Ok(k));
        }
        let names: Vec<&str> = WorkloadKind::ALL.map(WorkloadKind::as_str).to_vec();
        assert_eq!(names, crate::model::WORKLOAD_KINDS);
        assert_eq!(
            "robot".parse::<WorkloadKind>().unwrap_err().to_string(),
            "unknown kind \"robot\"; use one of service, job, agent, shared-agent, sandbox"
        );
        assert!(WorkloadKind::SharedAgent.acts_on_behalf());
        assert!(!WorkloadKind::Agent.acts_on_behalf());
    }
}
