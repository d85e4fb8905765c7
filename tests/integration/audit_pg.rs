//! The tamper-evident audit trail on the PostgreSQL store: events edited, deleted or
//! reordered in the database's `kv` table, behind the control plane's back, are found
//! by `leashctl audit verify` and named; the untouched trail verifies.
//!
//! The sled store's tampering is tested in `audit_chain.rs`; this test brings its own
//! PostgreSQL server, so it runs whichever store the rest of the suite uses.

use leash_tests::pg::Pg;
use leash_tests::{Cluster, Options};

use crate::pg_store::{store_config, store_database};

/// The events table of the store, keyed by the big-endian event id (as on sled).
fn event_key(id: u64) -> String {
    format!("tree = 'events' AND key = int8send({id}::bigint)")
}

/// `leashctl audit verify` must fail naming `event N` (when given) and one of `words`.
fn refused(c: &Cluster, what: &str, event: Option<u64>, words: &[&str]) {
    let out = c.leashctl(&["audit", "verify"]);
    out.code(1);
    let named = event.is_none_or(|e| out.stderr.contains(&format!("event {e} ")));
    assert!(
        named && words.iter().any(|w| out.stderr.contains(w)),
        "{what}: verify should name event {event:?} ({words:?}):\n{out}"
    );
}

#[test]
#[ignore = "needs root: runs PostgreSQL as the postgres user"]
fn verify_finds_events_tampered_with_in_the_postgres_store() {
    leash_tests::require_root();
    let pg = Pg::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = store_database(&pg, tmp.path());
    let mut c = Cluster::with(Options::default().no_agent().config(&format!(
        "{}[audit]\ncheckpoint_every = 4\ncheckpoint_interval = \"1s\"\n",
        store_config(&url)
    )));
    for _ in 0..10 {
        c.join_token(&["--ttl", "1h"]);
    }
    // Wait for a checkpoint that signs the newest event, so a cut tail is seen too.
    let last: u64 = c.eventually("a checkpoint of the newest event", || {
        let lines = c
            .leashctl(&["audit", "export", "--since", "1"])
            .ok()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
            .collect::<Vec<_>>();
        let newest = |checkpoint: bool| {
            lines
                .iter()
                .filter(|v| {
                    let t = v["type"].as_str().unwrap_or_default();
                    (t == "audit.checkpoint") == checkpoint
                        && t != "audit.key"
                        && t != "audit.chain"
                })
                .filter_map(|v| v["id"].as_u64())
                .max()
        };
        let (ev, cp) = (newest(false), newest(true));
        (ev.is_some() && ev == cp).then(|| ev.expect("an event"))
    });
    c.leashctl(&["audit", "verify"]).code(0);
    assert_eq!(c.stop_control_plane(), 0);
    let k = 5;
    pg.sql(
        "leash",
        "CREATE TABLE pristine AS SELECT * FROM kv WHERE tree = 'events'",
    );
    let restore = || {
        pg.sql(
            "leash",
            "DELETE FROM kv WHERE tree = 'events'; INSERT INTO kv SELECT * FROM pristine",
        );
    };

    // An edited actor.
    pg.sql(
        "leash",
        &format!(
            "UPDATE kv SET value = convert_to((convert_from(value, 'UTF8')::jsonb \
             || '{{\"actor\": \"mallory\"}}')::text, 'UTF8') WHERE {}",
            event_key(k)
        ),
    );
    c.restart_control_plane();
    refused(&c, "edited", Some(k), &["edited"]);
    assert_eq!(c.stop_control_plane(), 0);

    // A deleted event: the next one no longer links to what precedes it.
    restore();
    pg.sql("leash", &format!("DELETE FROM kv WHERE {}", event_key(k)));
    c.restart_control_plane();
    refused(&c, "deleted", Some(k + 1), &["missing"]);
    assert_eq!(c.stop_control_plane(), 0);

    // Two events swapped.
    restore();
    pg.sql(
        "leash",
        &format!(
            "UPDATE kv SET value = (SELECT value FROM pristine WHERE {b}) WHERE {a}; \
             UPDATE kv SET value = (SELECT value FROM pristine WHERE {a}) WHERE {b}",
            a = event_key(k),
            b = event_key(k + 1)
        ),
    );
    c.restart_control_plane();
    refused(&c, "reordered", Some(k + 1), &["missing", "moved"]);
    assert_eq!(c.stop_control_plane(), 0);

    // The tail cut: the last checkpoint signs an event that is gone.
    restore();
    pg.sql(
        "leash",
        &format!(
            "DELETE FROM kv WHERE tree = 'events' \
             AND key BETWEEN int8send({}::bigint) AND int8send({last}::bigint)",
            last - 2
        ),
    );
    c.restart_control_plane();
    refused(&c, "tail truncated", None, &["truncated", "missing"]);
    assert_eq!(c.stop_control_plane(), 0);

    // Put back as it was, the trail verifies again.
    restore();
    c.restart_control_plane();
    let out = c.leashctl(&["audit", "verify"]);
    out.code(0);
    assert!(
        out.stdout.contains(&format!("verified events 1..{last}")),
        "{out}"
    );
}
