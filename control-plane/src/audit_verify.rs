//! Verifying an audit export (the JSON lines of `leashctl audit export`, or what
//! `leashctl audit verify` reads from the control plane): the hash of every event, the
//! links between them, and every checkpoint's signature, event and hash. The first
//! break found is named by event id and line number.
//!
//! Lines are read one at a time (an export of millions of events is never held whole);
//! 32 bytes per event are kept, its hash, for the checkpoint checks.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::Value;

use crate::audit_chain::{
    key_id, value_hash, Checkpoint, CheckpointKind, CHAIN_LINE, CHECKPOINT_LINE, KEY_LINE,
    ZERO_HASH,
};

/// What was verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// First and last chained event verified.
    pub range: Option<(u64, u64)>,
    /// Events before the chain began (no hash), first and last id.
    pub unchained: Option<(u64, u64)>,
    /// Checkpoints whose signature, event and hash were checked.
    pub checkpoints: usize,
    /// The last checkpoint: event id and when it was signed (unix ms).
    pub last_checkpoint: Option<(u64, i64)>,
    /// Where the verified chain starts from: `genesis`, `anchor N` (retention forgot
    /// what came before; signed) or `event N (not in this export)`.
    pub start: String,
    /// The ids of the keys that signed the verified checkpoints.
    pub keys: Vec<String>,
}

/// A break in the trail: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tampered {
    /// The event id concerned, when there is one.
    pub event: Option<u64>,
    /// The line (1-based) of the input.
    pub line: usize,
    /// What is wrong.
    pub what: String,
}

impl std::fmt::Display for Tampered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.event {
            Some(id) => write!(f, "event {id} (line {}): {}", self.line, self.what),
            None => write!(f, "line {}: {}", self.line, self.what),
        }
    }
}

#[derive(Default)]
struct Chain {
    genesis: u64,
    after_id: u64,
    head: Option<(u64, String)>,
    anchor: Option<(u64, String)>,
}

fn bad(event: Option<u64>, line: usize, what: impl Into<String>) -> Tampered {
    Tampered {
        event,
        line,
        what: what.into(),
    }
}

/// Verify `lines` (the export, in order). `Ok` says what was verified.
pub fn verify<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> Result<Verified, Tampered> {
    let mut keys: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut chain: Option<Chain> = None;
    let mut checkpoints: Vec<(usize, Checkpoint)> = Vec::new();
    // Hashes of chained events by id, from `first`.
    let mut hashes: Vec<[u8; 32]> = Vec::new();
    let mut first: Option<u64> = None;
    let mut prev: Option<(u64, String)> = None;
    let mut unchained: Option<(u64, u64)> = None;
    let mut last_id: Option<u64> = None;
    let mut last_line = 0;
    let mut out = Verified::default();
    for (i, text) in lines.into_iter().enumerate() {
        let line = i + 1;
        last_line = line;
        let text = text.as_ref();
        if text.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(text)
            .map_err(|e| bad(None, line, format!("not a JSON object ({e})")))?;
        let kind = v.get("type").and_then(Value::as_str).unwrap_or_default();
        match kind {
            KEY_LINE => {
                let key = base64::engine::general_purpose::STANDARD
                    .decode(v["public_key"].as_str().unwrap_or_default())
                    .map_err(|_| bad(None, line, "the checkpoint key is not base64"))?;
                // The id is the key's own hash, never what the line claims: a pinned id
                // then pins the key.
                let id = key_id(&key);
                if v["key_id"].as_str() != Some(id.as_str()) {
                    return Err(bad(
                        None,
                        line,
                        "the checkpoint key's key_id is not its hash",
                    ));
                }
                keys.insert(id, key);
                continue;
            }
            CHAIN_LINE => {
                let s = |k: &str| v[k].as_str().map(str::to_string);
                let n = |k: &str| v[k].as_u64();
                chain = Some(Chain {
                    genesis: n("genesis").unwrap_or(1),
                    after_id: n("after_id").unwrap_or(0),
                    head: n("head_id").zip(s("head_hash")),
                    anchor: n("anchor_id").zip(s("anchor_hash")),
                });
                continue;
            }
            CHECKPOINT_LINE => {
                let cp: Checkpoint = serde_json::from_value(v)
                    .map_err(|e| bad(None, line, format!("not a checkpoint ({e})")))?;
                checkpoints.push((line, cp));
                continue;
            }
            _ => {}
        }
        let id = v["id"]
            .as_u64()
            .ok_or_else(|| bad(None, line, "an event without an id"))?;
        if let Some(l) = last_id {
            if id <= l {
                return Err(bad(
                    Some(id),
                    line,
                    format!("comes after event {l}: events were reordered or one was inserted"),
                ));
            }
        }
        last_id = Some(id);
        let Some(hash) = v.get("hash").and_then(Value::as_str) else {
            if prev.is_some() || chain.as_ref().is_some_and(|c| id >= c.genesis) {
                return Err(bad(
                    Some(id),
                    line,
                    "has no hash inside the chained part of the trail: inserted or edited",
                ));
            }
            unchained = Some((unchained.map_or(id, |u| u.0), id));
            continue;
        };
        if value_hash(&v) != hash {
            return Err(bad(
                Some(id),
                line,
                "its content does not match its hash: the event was edited",
            ));
        }
        let prev_hash = v["prev_hash"].as_str().unwrap_or_default();
        match &prev {
            Some((pid, phash)) => {
                if id != pid + 1 {
                    return Err(bad(
                        Some(id),
                        line,
                        format!(
                            "follows event {pid}: events {}..{} are missing here (deleted or moved)",
                            pid + 1,
                            id - 1
                        ),
                    ));
                }
                if prev_hash != phash {
                    return Err(bad(
                        Some(id),
                        line,
                        format!(
                            "its prev_hash is not the hash of event {pid}: an event was deleted, inserted or reordered here"
                        ),
                    ));
                }
            }
            None => out.start = start(chain.as_ref(), id, prev_hash, line)?,
        }
        if first.is_none() {
            first = Some(id);
        }
        hashes.push(raw(hash));
        prev = Some((id, hash.to_string()));
    }
    let end = last_line + 1;
    if let Some(c) = &chain {
        if let Some((hid, hhash)) = &c.head {
            match &prev {
                Some((pid, _)) if pid < hid => {
                    return Err(bad(
                        Some(*hid),
                        end,
                        format!("the chain's head is event {hid} but the trail ends at event {pid}: its tail was truncated"),
                    ))
                }
                Some((pid, phash)) if pid == hid && phash != hhash => {
                    return Err(bad(
                        Some(*hid),
                        end,
                        "the last event's hash is not the chain head's: the tail was replaced",
                    ))
                }
                None if *hid >= c.genesis.max(c.after_id + 1) && *hid > c.anchor.as_ref().map_or(0, |a| a.0) => {
                    return Err(bad(
                        Some(*hid),
                        end,
                        format!("the chain's head is event {hid} but the trail has no chained event: it was truncated"),
                    ))
                }
                _ => {}
            }
        }
        if let Some((aid, ahash)) = &c.anchor {
            let signed = checkpoints.iter().any(|(_, cp)| {
                cp.kind == CheckpointKind::Anchor
                    && cp.id == *aid
                    && &cp.hash == ahash
                    && keys.get(&cp.key_id).is_some_and(|k| cp.verify(k))
            });
            if !signed {
                return Err(bad(
                    Some(*aid),
                    end,
                    "the retention anchor (the last forgotten event) is not signed by an anchor checkpoint",
                ));
            }
        }
    }
    let last = prev.as_ref().map(|p| p.0);
    for (line, cp) in &checkpoints {
        let Some(key) = keys.get(&cp.key_id) else {
            return Err(bad(
                Some(cp.id),
                *line,
                format!(
                    "checkpoint signed by key {:?}, which the export does not carry",
                    cp.key_id
                ),
            ));
        };
        if !cp.verify(key) {
            return Err(bad(
                Some(cp.id),
                *line,
                "the checkpoint's signature does not verify",
            ));
        }
        if last.is_some_and(|l| cp.id > l)
            || (last.is_none()
                && cp.kind == CheckpointKind::Periodic
                && chain.as_ref().is_some_and(|c| cp.id > c.after_id))
        {
            return Err(bad(
                Some(cp.id),
                *line,
                format!(
                    "a checkpoint signs event {} but the trail ends at event {}: its tail was truncated",
                    cp.id,
                    last.map_or("none".to_string(), |l| l.to_string())
                ),
            ));
        }
        let Some(f) = first else { continue };
        if cp.id < f {
            // Before what this export holds (a partial export, or an anchor).
            continue;
        }
        if hashes[(cp.id - f) as usize] != raw(&cp.hash) {
            return Err(bad(
                Some(cp.id),
                *line,
                "the event's hash is not the one its checkpoint signed: the event (or one before it) was rewritten",
            ));
        }
        out.checkpoints += 1;
        if !out.keys.contains(&cp.key_id) {
            out.keys.push(cp.key_id.clone());
        }
        if out.last_checkpoint.is_none_or(|(id, _)| cp.id >= id) {
            out.last_checkpoint = Some((cp.id, cp.at_ms));
        }
    }
    out.range = first.zip(last);
    out.unchained = unchained;
    Ok(out)
}

/// The 32 bytes of a hex hash (zeros for anything else: it then matches no real hash,
/// and an event's own hash was already checked against its content).
fn raw(hex_hash: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    if hex::decode_to_slice(hex_hash, &mut out).is_err() {
        out = [0xff; 32];
    }
    out
}

/// Check where the chain's first event in the export links to, and say it.
fn start(chain: Option<&Chain>, id: u64, prev_hash: &str, line: usize) -> Result<String, Tampered> {
    let Some(c) = chain else {
        return Ok(if prev_hash == ZERO_HASH {
            "genesis".into()
        } else {
            format!("event {} (not in this export)", id.saturating_sub(1))
        });
    };
    if id == c.genesis && prev_hash == ZERO_HASH {
        return Ok("genesis".into());
    }
    if let Some((aid, ahash)) = &c.anchor {
        if id == aid + 1 {
            return if prev_hash == ahash {
                Ok(format!(
                    "anchor {aid} (events up to it were forgotten by retention)"
                ))
            } else {
                Err(bad(
                    Some(id),
                    line,
                    format!("its prev_hash is not the retention anchor's (event {aid}): events before it were deleted or edited"),
                ))
            };
        }
    }
    let expected = c
        .genesis
        .max(c.after_id + 1)
        .max(c.anchor.as_ref().map_or(0, |a| a.0 + 1));
    if id > expected {
        return Err(bad(
            Some(id),
            line,
            format!("the trail should start at event {expected}: events {expected}..{} are missing (deleted)", id - 1),
        ));
    }
    if id == c.genesis {
        return Err(bad(
            Some(id),
            line,
            "the first event of the chain does not link to its genesis: edited",
        ));
    }
    Ok(format!("event {} (not in this export)", id - 1))
}

#[cfg(test)]
#[path = "audit_verify_tests.rs"]
mod tests;
