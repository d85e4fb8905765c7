//! Machine-readable error reasons.
//!
//! Every error a Leash service returns carries one of these in the `leash-reason` gRPC
//! metadata entry (and the matching gRPC code). The CLIs map the reason to an exit code
//! mechanically with [`Reason::exit_code`], so the same failure exits the same way from
//! `leash` and `leashctl`.

use std::fmt;
use std::str::FromStr;

/// Metadata key carrying the reason.
pub const REASON_KEY: &str = "leash-reason";
/// Metadata key carrying the approval id of a `PENDING` answer.
pub const APPROVAL_KEY: &str = "leash-approval-id";

/// Why a request failed, as the caller's scripts see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// Bad input: unknown flag, TTL above max, audience not allowed, ambiguous workload.
    Invalid,
    /// No identity, or policy said no.
    Denied,
    /// Waiting for a human approval.
    Pending,
    /// The named thing does not exist.
    NotFound,
    /// No agent, no control plane and nothing cached, or failing closed.
    Unavailable,
    /// Gave up waiting.
    Timeout,
}

impl Reason {
    /// The exit code docs/CLI.md documents for this reason.
    pub fn exit_code(self) -> i32 {
        match self {
            Reason::Invalid => 1,
            Reason::Denied => 2,
            Reason::Pending => 3,
            Reason::NotFound => 4,
            Reason::Unavailable => 5,
            Reason::Timeout => 6,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Invalid => "INVALID",
            Reason::Denied => "DENIED",
            Reason::Pending => "PENDING",
            Reason::NotFound => "NOT_FOUND",
            Reason::Unavailable => "UNAVAILABLE",
            Reason::Timeout => "TIMEOUT",
        }
    }

    fn code(self) -> tonic::Code {
        match self {
            Reason::Invalid => tonic::Code::InvalidArgument,
            Reason::Denied => tonic::Code::PermissionDenied,
            Reason::Pending => tonic::Code::FailedPrecondition,
            Reason::NotFound => tonic::Code::NotFound,
            Reason::Unavailable => tonic::Code::Unavailable,
            Reason::Timeout => tonic::Code::DeadlineExceeded,
        }
    }

    /// A status with this reason attached. A message over [`MAX_STATUS_MESSAGE_BYTES`]
    /// is cut (it travels in an HTTP/2 header: an oversized one fails the whole call as
    /// a protocol error, hiding what was wrong); quote caller input with
    /// [`crate::names::excerpt`] so it never comes to that.
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        let mut status = tonic::Status::new(self.code(), bounded(message.into()));
        if let Ok(v) = self.as_str().parse() {
            status.metadata_mut().insert(REASON_KEY, v);
        }
        status
    }

    /// The reason a status carries; falls back on its gRPC code for statuses that did
    /// not come from a Leash service (a transport failure, a message over the limit).
    pub fn of(status: &tonic::Status) -> Reason {
        if let Some(r) = status
            .metadata()
            .get(REASON_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse().ok())
        {
            return r;
        }
        match status.code() {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => Reason::Invalid,
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => Reason::Denied,
            tonic::Code::FailedPrecondition => Reason::Pending,
            tonic::Code::NotFound => Reason::NotFound,
            tonic::Code::DeadlineExceeded => Reason::Timeout,
            tonic::Code::ResourceExhausted => Reason::Invalid,
            _ => Reason::Unavailable,
        }
    }
}

/// Longest status message a Leash service sends.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 1024;

fn bounded(mut m: String) -> String {
    if m.len() <= MAX_STATUS_MESSAGE_BYTES {
        return m;
    }
    let total = m.len();
    let mut cut = MAX_STATUS_MESSAGE_BYTES - 64;
    while !m.is_char_boundary(cut) {
        cut -= 1;
    }
    m.truncate(cut);
    m.push_str(&format!("… (message cut; it was {total} bytes)"));
    m
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Reason {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "INVALID" => Reason::Invalid,
            "DENIED" => Reason::Denied,
            "PENDING" => Reason::Pending,
            "NOT_FOUND" => Reason::NotFound,
            "UNAVAILABLE" => Reason::Unavailable,
            "TIMEOUT" => Reason::Timeout,
            _ => return Err(()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_round_trips_through_a_status() {
        for r in [
            Reason::Invalid,
            Reason::Denied,
            Reason::Pending,
            Reason::NotFound,
            Reason::Unavailable,
            Reason::Timeout,
        ] {
            let s = r.status("x");
            assert_eq!(Reason::of(&s), r);
        }
        assert_eq!(Reason::Timeout.exit_code(), 6);
    }

    #[test]
    fn long_messages_are_cut_to_fit_a_header() {
        let s = Reason::Invalid.status(format!("no workload named {}", "é".repeat(30_000)));
        assert!(
            s.message().len() <= MAX_STATUS_MESSAGE_BYTES,
            "{}",
            s.message().len()
        );
        assert!(s.message().starts_with("no workload named éé"));
        assert!(s.message().ends_with("… (message cut; it was 60018 bytes)"));
        assert_eq!(Reason::Denied.status("short").message(), "short");
    }

    #[test]
    fn plain_statuses_map_by_code() {
        assert_eq!(
            Reason::of(&tonic::Status::unavailable("down")),
            Reason::Unavailable
        );
        assert_eq!(Reason::of(&tonic::Status::not_found("x")), Reason::NotFound);
    }
}
