//! `leashctl audit verify`: read the chained trail (from the control plane, or an
//! export file) and check it here, with the library's verifier (`audit_verify.rs`), so
//! the check does not depend on the control plane telling the truth about itself
//! beyond the checkpoint key it publishes.

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
) -> Result<(), Fail> {
    if let Some(p) = from_export {
        return from_file(&p);
    }
    let req = v1::AuditTailRequest {
        chain: true,
        after_id: 0,
        ..Default::default()
    };
    let mut stream = c.audit_tail(req).await?.into_inner();
    let mut lines = Vec::new();
    while let Some(e) = stream.message().await? {
        lines.push(e.json);
    }
    report(verify_lines(&lines))
}

/// Verify an export file (no control plane needed).
pub(crate) fn from_file(path: &Path) -> Result<(), Fail> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Fail::usage(format!("cannot read {}: {e}", path.display())))?;
    report(verify_lines(&text.lines().collect::<Vec<_>>()))
}

fn verify_lines<S: AsRef<str>>(lines: &[S]) -> Result<Verified, audit_verify::Tampered> {
    audit_verify::verify(lines.iter().map(AsRef::as_ref))
}

fn report(r: Result<Verified, audit_verify::Tampered>) -> Result<(), Fail> {
    let v = r.map_err(|t| Fail(format!("the audit trail does not verify: {t}"), TAMPERED))?;
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
