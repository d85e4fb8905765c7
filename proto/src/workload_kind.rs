//! The kinds of workload `leashctl workload add --kind` accepts, and what a kind
//! changes: only a shared agent may (and must) act on behalf of someone. Both daemons
//! decide by it (the control plane on Issue, the agent before it asks), so it lives in
//! the protocol crate. Stored records and JSON carry a kind as its text (`shared-agent`);
//! the gRPC messages carry the same text, parsed here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A workload's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

    /// The kind a text names (`None` for text that names no kind), e.g. the `kind` of a
    /// workload in a gRPC message.
    pub fn of(text: &str) -> Option<WorkloadKind> {
        text.parse().ok()
    }

    /// Whether a workload of this kind acts on behalf of someone (`--on-behalf-of`).
    pub fn acts_on_behalf(self) -> bool {
        self == WorkloadKind::SharedAgent
    }

    fn list() -> String {
        WorkloadKind::ALL.map(WorkloadKind::as_str).join(", ")
    }
}

impl AsRef<str> for WorkloadKind {
    fn as_ref(&self) -> &str {
        self.as_str()
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

/// As its text, so records written when the field was a string read unchanged.
impl Serialize for WorkloadKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for WorkloadKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<WorkloadKind, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_as_the_text_the_cli_uses() {
        for k in WorkloadKind::ALL {
            assert_eq!(k.as_str().parse::<WorkloadKind>(), Ok(k));
            assert_eq!(WorkloadKind::of(k.as_str()), Some(k));
            let json = serde_json::to_string(&k).expect("encode");
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(
                serde_json::from_str::<WorkloadKind>(&json).expect("decode"),
                k
            );
        }
        let names: Vec<&str> = WorkloadKind::ALL.map(WorkloadKind::as_str).to_vec();
        assert_eq!(
            names,
            ["service", "job", "agent", "shared-agent", "sandbox"]
        );
        assert_eq!(
            "robot".parse::<WorkloadKind>().unwrap_err().to_string(),
            "unknown kind \"robot\"; use one of service, job, agent, shared-agent, sandbox"
        );
        assert_eq!(WorkloadKind::of("Shared-Agent"), None);
        assert!(WorkloadKind::SharedAgent.acts_on_behalf());
        assert!(!WorkloadKind::Agent.acts_on_behalf());
    }

    #[test]
    fn text_that_names_no_kind_does_not_decode() {
        let err = serde_json::from_str::<WorkloadKind>("\"robot\"").unwrap_err();
        assert!(err.to_string().contains("unknown kind \"robot\""), "{err}");
        assert!(serde_json::from_str::<WorkloadKind>("3").is_err());
    }
}
