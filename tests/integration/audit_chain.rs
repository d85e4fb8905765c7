//! The tamper-evident audit trail: `leashctl audit verify` over the control plane's own
//! store and over an export finds an edited, deleted, inserted or reordered event, and a
//! truncated tail, and names it; an untouched trail verifies; `audit export --follow`
//! streams new events and checkpoints; a store from before the chain says which events
//! predate it; retention leaves a signed anchor the chain verifies from.
//!
//! The store is tampered with the control plane stopped, by opening its sled database
//! directly (a copy of the data dir is restored before each tampering).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use leash_control_plane::audit_chain::value_hash;
use leash_tests::{Cluster, Daemon, Options};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn cluster(extra: &str) -> Cluster {
    Cluster::with(Options::default().no_agent().config(&format!(
        "{extra}[audit]\ncheckpoint_every = 4\ncheckpoint_interval = \"1s\"\n"
    )))
}

/// `n` audit events (`join-token-created`).
fn events(c: &Cluster, n: usize) {
    for _ in 0..n {
        c.join_token(&["--ttl", "1h"]);
    }
}

/// The whole kept trail, exported.
fn export(c: &Cluster) -> Vec<String> {
    c.leashctl(&["audit", "export", "--since", "1"])
        .ok()
        .lines()
        .map(str::to_string)
        .collect()
}

fn parsed(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Ids of the events in an export, and of its periodic checkpoints.
fn ids(lines: &[String]) -> (Vec<u64>, Vec<u64>) {
    let mut ev = Vec::new();
    let mut cp = Vec::new();
    for v in parsed(lines) {
        match v["type"].as_str() {
            Some("audit.checkpoint") => cp.push(v["id"].as_u64().expect("id")),
            Some("audit.key") | Some("audit.chain") => {}
            _ => ev.push(v["id"].as_u64().expect("id")),
        }
    }
    (ev, cp)
}

/// Wait until a periodic checkpoint signs the newest event.
fn checkpointed(c: &Cluster) -> Vec<String> {
    c.eventually("a checkpoint of the newest event", || {
        let lines = export(c);
        let (ev, cp) = ids(&lines);
        (ev.last().is_some() && cp.last() == ev.last()).then_some(lines)
    })
}

fn verify(c: &Cluster) -> leash_tests::Output {
    c.leashctl(&["audit", "verify"])
}

fn verify_file(c: &Cluster, lines: &[String]) -> leash_tests::Output {
    let f = c.dir().join("export.jsonl");
    std::fs::write(&f, lines.join("\n") + "\n").expect("write the export");
    c.leashctl(&[
        "audit",
        "verify",
        "--from-export",
        f.to_str().expect("utf-8"),
    ])
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// Open the stopped control plane's sled database and change it with `f(events, meta)`.
fn tamper(data_dir: &Path, f: impl FnOnce(&sled::Tree, &sled::Tree)) {
    let db = sled::open(data_dir.join("db")).expect("open the store");
    let events = db.open_tree("events").expect("events");
    let meta = db.open_tree("meta").expect("meta");
    f(&events, &meta);
    db.flush().expect("flush");
}

fn get(t: &sled::Tree, id: u64) -> Value {
    let v = t
        .get(id.to_be_bytes())
        .expect("read")
        .unwrap_or_else(|| panic!("no event {id}"));
    serde_json::from_slice(&v).expect("an event")
}

fn put(t: &sled::Tree, id: u64, v: &Value) {
    t.insert(id.to_be_bytes(), serde_json::to_vec(v).expect("json"))
        .expect("write");
}

/// Restore the pristine data dir, tamper with it, start the control plane, verify
/// (expecting exit 1 naming `event N` and one of `words`), stop it.
fn tampered_store(
    c: &mut Cluster,
    pristine: &Path,
    what: &str,
    f: impl FnOnce(&sled::Tree, &sled::Tree),
    event: Option<u64>,
    words: &[&str],
) {
    let data = c.data_dir.clone();
    copy_dir(pristine, &data);
    tamper(&data, f);
    c.restart_control_plane();
    let out = verify(c);
    out.code(1);
    let named = event.is_none_or(|e| out.stderr.contains(&format!("event {e} ")));
    assert!(
        named && out.stderr.contains("event ") && words.iter().any(|w| out.stderr.contains(w)),
        "{what}: verify should name event {event:?} ({words:?}):\n{out}"
    );
    c.stop_control_plane();
}

#[test]
fn verify_finds_each_tampering_of_the_store_and_names_the_event() {
    if leash_tests::sled_only("it edits the sled database files of a stopped control plane") {
        return;
    }
    let mut c = cluster("");
    events(&c, 10);
    let lines = checkpointed(&c);
    let (ev, cp) = ids(&lines);
    assert!(ev.len() >= 10 && cp.len() >= 2, "{lines:?}");
    let last = *ev.last().expect("events");
    let out = verify(&c);
    out.code(0);
    assert!(
        out.stdout
            .contains(&format!("verified events 1..{last} (from genesis)"))
            && out
                .stdout
                .contains(&format!("last checkpoint at event {last}")),
        "{out}"
    );
    // Every event carries the chain fields; the chain is the hashes.
    let evs: Vec<Value> = parsed(&lines)
        .into_iter()
        .filter(|v| v["id"].is_u64() && v["type"] != "audit.checkpoint")
        .collect();
    for w in evs.windows(2) {
        assert_eq!(w[1]["prev_hash"], w[0]["hash"], "{w:?}");
        assert_eq!(w[1]["hash"].as_str(), Some(value_hash(&w[1]).as_str()));
    }

    assert_eq!(c.stop_control_plane(), 0);
    let pristine: PathBuf = c.dir().join("pristine");
    copy_dir(&c.data_dir, &pristine);
    let k = 5;

    tampered_store(
        &mut c,
        &pristine,
        "edited",
        |t, _| {
            let mut v = get(t, k);
            v["actor"] = "mallory".into();
            put(t, k, &v);
        },
        Some(k),
        &["edited"],
    );
    tampered_store(
        &mut c,
        &pristine,
        "deleted",
        |t, _| {
            t.remove(k.to_be_bytes()).expect("remove");
        },
        Some(k + 1),
        &["missing"],
    );
    tampered_store(
        &mut c,
        &pristine,
        "inserted (renumbered after it, hash and link forged)",
        |t, m| {
            for id in (k..=last).rev() {
                let mut v = get(t, id);
                v["id"] = (id + 1).into();
                put(t, id + 1, &v);
            }
            let mut forged = get(t, k - 1);
            forged["id"] = k.into();
            forged["actor"] = "mallory".into();
            forged["prev_hash"] = get(t, k - 1)["hash"].clone();
            forged["hash"] = value_hash(&forged).into();
            put(t, k, &forged);
            m.insert("event_id", &(last + 1).to_be_bytes())
                .expect("meta");
        },
        Some(k + 1),
        &["edited", "prev_hash", "inserted"],
    );
    tampered_store(
        &mut c,
        &pristine,
        "reordered",
        |t, _| {
            let (a, b) = (get(t, k), get(t, k + 1));
            put(t, k, &b);
            put(t, k + 1, &a);
        },
        Some(k + 1),
        &["missing", "moved"],
    );
    tampered_store(
        &mut c,
        &pristine,
        "reordered, ids kept in place",
        |t, _| {
            let (mut a, mut b) = (get(t, k), get(t, k + 1));
            a["id"] = (k + 1).into();
            b["id"] = k.into();
            put(t, k, &b);
            put(t, k + 1, &a);
        },
        Some(k),
        &["edited"],
    );
    tampered_store(
        &mut c,
        &pristine,
        "tail truncated",
        |t, _| {
            for id in last - 2..=last {
                t.remove(id.to_be_bytes()).expect("remove");
            }
        },
        None,
        &["truncated", "missing"],
    );
    // The tail truncated and the head rewound to match: the last checkpoint still
    // signs an event that is gone.
    let cut = last - 2;
    tampered_store(
        &mut c,
        &pristine,
        "tail truncated, head rewound",
        |t, m| {
            let keep = get(t, cut - 1);
            for id in cut..=last {
                t.remove(id.to_be_bytes()).expect("remove");
            }
            let head = serde_json::json!({ "id": cut - 1, "hash": keep["hash"] });
            m.insert("audit_head", serde_json::to_vec(&head).expect("json"))
                .expect("meta");
            m.insert("event_id", &(cut - 1).to_be_bytes())
                .expect("meta");
        },
        None,
        &["truncated", "rewritten"],
    );

    // The untouched copy still verifies.
    copy_dir(&pristine, &c.data_dir);
    c.restart_control_plane();
    verify(&c).code(0);
}

#[test]
fn verify_finds_each_tampering_of_an_export_and_names_its_line() {
    let c = cluster("");
    events(&c, 8);
    let lines = checkpointed(&c);
    let out = verify_file(&c, &lines);
    out.code(0);
    assert!(out.stdout.contains("verified events 1.."), "{out}");
    // Pinned to the key the control plane signs with, and to another one.
    let key: Value = serde_json::from_str(&lines[0]).expect("the key line");
    let key_id = key["key_id"].as_str().expect("key_id").to_string();
    c.leashctl(&["audit", "verify", "--key", &key_id]).code(0);
    let out = c.leashctl(&["audit", "verify", "--key", "0123456789abcdef"]);
    out.code(1);
    assert!(
        out.stderr.contains(&format!("signed by key {key_id}")),
        "{out}"
    );
    // Line numbers (1-based) of the events, by id.
    let at = |id: u64| {
        1 + lines
            .iter()
            .position(|l| {
                let v: Value = serde_json::from_str(l).expect("json");
                v["id"] == id && v["type"] != "audit.checkpoint"
            })
            .expect("the event is exported")
    };
    let k = 4;
    let named = |edited: Vec<String>, event: u64, line: usize, what: &str| {
        let out = verify_file(&c, &edited);
        out.code(1);
        assert!(
            out.stderr.contains(&format!("event {event} (line {line})")),
            "{what}: should name event {event} on line {line}:\n{out}"
        );
    };

    let mut edited = lines.clone();
    edited[at(k) - 1] = edited[at(k) - 1].replace("join-token-created", "join-token-revoked");
    named(edited, k, at(k), "edited");

    let mut deleted = lines.clone();
    deleted.remove(at(k) - 1);
    named(deleted, k + 1, at(k + 1) - 1, "deleted");

    let mut inserted = lines.clone();
    let mut forged: Value = serde_json::from_str(&lines[at(k) - 1]).expect("json");
    forged["actor"] = "mallory".into();
    forged["hash"] = value_hash(&forged).into();
    inserted.insert(at(k) - 1, forged.to_string());
    // The forged event takes k's place; the real k after it comes out of order.
    named(inserted, k, at(k) + 1, "inserted");

    let mut reordered = lines.clone();
    reordered.swap(at(k) - 1, at(k + 1) - 1);
    named(reordered, k + 1, at(k), "reordered");

    // The tail truncated: the last event and what follows it.
    let (ev, _) = ids(&lines);
    let last = *ev.last().expect("events");
    let mut truncated = lines.clone();
    truncated.truncate(at(last) - 1);
    let out = verify_file(&c, &truncated);
    out.code(1);
    assert!(out.stderr.contains("truncated"), "{out}");
}

#[test]
fn export_follow_streams_new_events_and_checkpoints_that_verify() {
    let c = cluster("");
    events(&c, 2);
    let mut follow = c.leashctl_command();
    follow.args(["audit", "export", "--follow", "--since", "1"]);
    let mut d = Daemon::spawn("audit export --follow", follow);
    d.wait_for_line("\"audit.chain\"", WAIT);
    events(&c, 4);
    let (ev, _) = ids(&export(&c));
    let last = *ev.last().expect("events");
    // An event's `id` is followed by `at_ms`, a checkpoint's by `hash`.
    d.wait_for_line(&format!("\"id\":{last},\"at_ms\""), WAIT);
    d.wait_for_line(&format!("\"id\":{last},\"hash\""), WAIT);
    let lines: Vec<String> = d
        .log()
        .text()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(str::to_string)
        .collect();
    d.kill9();
    let (seen, cps) = ids(&lines);
    assert_eq!(seen, (1..=last).collect::<Vec<_>>(), "{lines:?}");
    assert!(cps.contains(&last), "{lines:?}");
    let out = verify_file(&c, &lines);
    out.code(0);
    assert!(
        out.stdout.contains(&format!("verified events 1..{last}")),
        "{out}"
    );
}

#[test]
fn a_store_from_before_the_chain_verifies_from_its_genesis() {
    if leash_tests::sled_only("it edits the sled database files of a stopped control plane") {
        return;
    }
    let mut c = cluster("");
    events(&c, 3);
    let (ev, _) = ids(&export(&c));
    let old = *ev.last().expect("events");
    assert_eq!(c.stop_control_plane(), 0);
    // What an older version wrote: no chain fields, no chain records.
    tamper(&c.data_dir.clone(), |t, m| {
        for id in 1..=old {
            let mut v = get(t, id);
            let o = v.as_object_mut().expect("object");
            o.remove("hash");
            o.remove("prev_hash");
            put(t, id, &v);
        }
        for k in ["audit_head", "audit_genesis", "audit_anchor"] {
            m.remove(k).expect("meta");
        }
    });
    c.restart_control_plane();
    events(&c, 2);
    checkpointed(&c);
    let out = verify(&c);
    out.code(0);
    assert!(
        out.stdout.contains(&format!(
            "events 1..{old} were written before the chain began"
        )) && out
            .stdout
            .contains(&format!("verified events {}..", old + 1)),
        "{out}"
    );
    // An event without a hash after the genesis is not let through.
    assert_eq!(c.stop_control_plane(), 0);
    tamper(&c.data_dir.clone(), |t, _| {
        let mut v = get(t, old + 1);
        v.as_object_mut().expect("object").remove("hash");
        put(t, old + 1, &v);
    });
    c.restart_control_plane();
    let out = verify(&c);
    out.code(1);
    assert!(out.stderr.contains(&format!("event {} ", old + 1)), "{out}");
}

#[test]
fn retention_leaves_a_signed_anchor_the_chain_verifies_from() {
    // event_retention is a top-level key: written before the [audit] table.
    let c = cluster("event_retention = \"1m\"\n");
    events(&c, 5);
    checkpointed(&c);
    c.advance_clock(Duration::from_secs(120));
    events(&c, 2);
    let out = c.eventually("retention to forget the old events", || {
        let out = verify(&c);
        (out.code == 0 && out.stdout.contains("from anchor")).then_some(out)
    });
    assert!(out.stdout.contains("verified events"), "{out}");
    let lines = export(&c);
    let (ev, _) = ids(&lines);
    assert!(ev.len() <= 3, "old events were forgotten: {ev:?}");
    verify_file(&c, &lines).code(0);
    // Forgetting one more event than retention did is found.
    let (ev, _) = ids(&lines);
    let first = ev[0];
    let cut: Vec<String> = lines
        .iter()
        .filter(|l| {
            let v: Value = serde_json::from_str(l).expect("json");
            !(v["id"] == first && v["type"] != "audit.checkpoint")
        })
        .cloned()
        .collect();
    let out = verify_file(&c, &cut);
    out.code(1);
    assert!(
        out.stderr.contains(&format!("event {}", first + 1)),
        "{out}"
    );
}
