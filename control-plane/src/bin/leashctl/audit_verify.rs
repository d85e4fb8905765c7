//! `leashctl audit verify`: read the chained trail (from the control plane, or an
//! export file) and check it here, with the library's verifier (`audit_verify.rs`), so
//! the check does not depend on the control plane telling the truth about itself
//! beyond the checkpoint key it publishes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use leash_control_plane::audit_verify::{self, Verified};
use leash_proto::cli::{print_line, Fail};
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

/// Exit code for a trail that fails verification: 1, "bad input" in docs/CLI.md: the
/// trail read is not what was written.
const TAMPERED: i32 = 1;

/// Verify the control plane's whole kept trail, or `from_export`.
pub(crate) async fn verify(
    c: &mut AdminClient<Channel>,
    from_export: Option<PathBuf>,
    key: Option<&str>,
) -> Result<(), Fail> {
    if let Some(p) = from_export {
        return from_file(&p, key);
    }
    let req = v1::AuditTailRequest {
        chain: true,
        after_id: 0,
        ..Default::default()
    };
    let mut stream = c.audit_tail(req).await?.into_inner();
    // Verified as it arrives, on a thread of its own: the trail is never held whole.
    let (tx, rx) = std::sync::mpsc::sync_channel::<String>(4096);
    let worker = std::thread::spawn(move || audit_verify::verify(rx));
    while let Some(e) = stream.message().await? {
        if tx.send(e.json).is_err() {
            // The verifier stopped at a break; what it found is reported below.
            break;
        }
    }
    drop(tx);
    report(join(worker)?, key)
}

/// Verify an export file (no control plane needed), a line at a time.
pub(crate) fn from_file(path: &Path, key: Option<&str>) -> Result<(), Fail> {
    let cannot = |e: std::io::Error| Fail::usage(format!("cannot read {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut failed = None;
    let lines = BufReader::new(file).lines().map_while(|l| match l {
        Ok(l) => Some(l),
        Err(e) => {
            failed = Some(e);
            None
        }
    });
    let r = audit_verify::verify(lines);
    if let Some(e) = failed {
        return Err(cannot(e));
    }
    report(r, key)
}

type Outcome = Result<Verified, audit_verify::Tampered>;

fn join(worker: std::thread::JoinHandle<Outcome>) -> Result<Outcome, Fail> {
    worker
        .join()
        .map_err(|_| Fail("the verifier stopped unexpectedly".into(), TAMPERED))
}

fn report(r: Outcome, pinned: Option<&str>) -> Result<(), Fail> {
    let v = r.map_err(|t| Fail(format!("the audit trail does not verify: {t}"), TAMPERED))?;
    if let Some(k) = pinned {
        if let Some(other) = v.keys.iter().find(|id| id.as_str() != k) {
            return Err(Fail(
                format!("the audit trail does not verify: its checkpoints are signed by key {other}, not by the expected key {k}"),
                TAMPERED,
            ));
        }
        if v.keys.is_empty() && v.range.is_some() {
            return Err(Fail(
                format!(
                    "the audit trail does not verify: no checkpoint signed by the expected key {k}"
                ),
                TAMPERED,
            ));
        }
    }
    if let Some((a, b)) = v.unchained {
        print_line(format_args!(
            "events {a}..{b} were written before the chain began: not verifiable"
        ));
    }
    let range = match v.range {
        Some((a, b)) => format!("verified events {a}..{b} (from {})", v.start),
        None => "no chained events to verify".to_string(),
    };
    let last = match v.last_checkpoint {
        Some((id, at_ms)) => format!(
            ", last checkpoint at event {id} ({})",
            leash_proto::cli::time(at_ms / 1000)
        ),
        None => String::new(),
    };
    let n = v.checkpoints;
    let plural = if n == 1 { "" } else { "s" };
    print_line(format_args!("{range}, {n} checkpoint{plural}{last}"));
    Ok(())
}
