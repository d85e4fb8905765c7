//! A replica's cache of the few rows every Issue reads before its batch: the workload,
//! the credential, and the host behind the client certificate (`serials`, `hosts`).
//! Without it each of those is a round trip to the database per request.
//!
//! The cache only saves reads made outside a batch. Every write still checks, inside its
//! batch and under the batch lock, what it depends on (a disabled workload or
//! credential, an evicted host, a rotated secret: `store::tx::issue_job`), so a row read
//! from the cache a moment stale can cost a refused write, never a lease that escapes a
//! revocation. Rows leave the cache:
//! - when this replica's writer commits a batch that wrote them (before it answers);
//! - when another replica's commit names them: the writer puts the keys its batch wrote
//!   to these trees in the payload of its `NOTIFY` (or `*`, all, when they do not fit);
//! - all at once whenever the listening connection was lost (notifications may have
//!   been missed), and nothing is cached until it listens again;
//! - after [`MAX_AGE`] in any case, which bounds how stale a row can be should a
//!   notification never arrive.
//!
//! A read that raced an invalidation is not cached: every invalidation moves a
//! generation, and a row read from the database is kept only if the generation did not
//! move while it was being read.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The trees whose rows are cached.
pub(super) const CACHED: [&str; 4] = ["workloads", "credentials", "hosts", "serials"];
/// The longest a row stays cached.
pub(super) const MAX_AGE: Duration = Duration::from_secs(2);
/// More rows than this and the cache starts over (a bound on memory, not a tuning knob:
/// the rows an Issue reads are a fleet's workloads, credentials and hosts).
const MAX_ROWS: usize = 100_000;
/// The longest `NOTIFY` payload sent; a batch that wrote more keys sends `*`.
pub(super) const MAX_PAYLOAD: usize = 7_000;

/// Whether `tree` is one of [`CACHED`]; its static name if so.
pub(super) fn cached_tree(tree: &str) -> Option<&'static str> {
    CACHED.iter().copied().find(|t| *t == tree)
}

type Row = Option<Vec<u8>>;

#[derive(Default)]
struct Inner {
    /// Moves on every invalidation.
    generation: u64,
    /// Off while the listener is not listening.
    on: bool,
    rows: HashMap<(&'static str, Vec<u8>), (Row, Instant)>,
}

/// See the module documentation.
#[derive(Default)]
pub(super) struct RowCache {
    inner: Mutex<Inner>,
}

/// What a lookup found.
pub(super) enum Lookup {
    /// The row (or its absence), fresh enough.
    Hit(Row),
    /// Not cached: read it, then [`RowCache::fill`] with this generation.
    Miss(u64),
    /// Not a cached tree, or the cache is off.
    Bypass,
}

impl RowCache {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn lookup(&self, tree: &'static str, key: &[u8]) -> Lookup {
        if cached_tree(tree).is_none() {
            return Lookup::Bypass;
        }
        let g = self.inner();
        if !g.on {
            return Lookup::Bypass;
        }
        match g.rows.get(&(tree, key.to_vec())) {
            Some((row, at)) if at.elapsed() < MAX_AGE => Lookup::Hit(row.clone()),
            _ => Lookup::Miss(g.generation),
        }
    }

    /// Keep `row`, read from the database, if nothing was invalidated since
    /// `generation` (when the read began).
    pub(super) fn fill(&self, tree: &'static str, key: &[u8], row: Row, generation: u64) {
        let mut g = self.inner();
        if !g.on || g.generation != generation {
            return;
        }
        if g.rows.len() >= MAX_ROWS {
            g.rows.clear();
        }
        g.rows.insert((tree, key.to_vec()), (row, Instant::now()));
    }

    /// Forget the rows of `keys` (tree, key).
    pub(super) fn forget<'a>(&self, keys: impl IntoIterator<Item = (&'static str, &'a [u8])>) {
        let mut g = self.inner();
        g.generation += 1;
        for (tree, key) in keys {
            g.rows.remove(&(tree, key.to_vec()));
        }
    }

    /// Forget every row.
    pub(super) fn forget_all(&self) {
        let mut g = self.inner();
        g.generation += 1;
        g.rows.clear();
    }

    /// Cache (`true`: the listener listens) or not (everything is forgotten).
    pub(super) fn set_on(&self, on: bool) {
        let mut g = self.inner();
        g.generation += 1;
        g.rows.clear();
        g.on = on;
    }

    /// Take up a `NOTIFY` payload from [`payload`].
    pub(super) fn notified(&self, payload: &str) {
        if payload.is_empty() {
            return;
        }
        if payload == "*" {
            return self.forget_all();
        }
        let mut keys = Vec::new();
        for item in payload.split(',') {
            let parsed = item
                .split_once(':')
                .and_then(|(t, k)| Some((cached_tree(t)?, hex::decode(k).ok()?)));
            match parsed {
                Some(k) => keys.push(k),
                // Not from this version: be safe.
                None => return self.forget_all(),
            }
        }
        self.forget(keys.iter().map(|(t, k)| (*t, k.as_slice())));
    }
}

/// The `NOTIFY` payload naming the cached rows a batch wrote: `tree:hexkey,…`, empty
/// when it wrote none, `*` when they do not fit in [`MAX_PAYLOAD`]. Only lowercase
/// names, hex digits, `:`, `,` and `*`: safe inside an SQL string literal.
pub(super) fn payload<'a>(written: impl IntoIterator<Item = (&'static str, &'a [u8])>) -> String {
    let mut out = String::new();
    for (tree, key) in written {
        if cached_tree(tree).is_none() {
            continue;
        }
        if out.len() + tree.len() + 2 + key.len() * 2 > MAX_PAYLOAD {
            return "*".into();
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(tree);
        out.push(':');
        out.push_str(&hex::encode(key));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(c: &RowCache, tree: &'static str, key: &[u8]) -> Option<Row> {
        match c.lookup(tree, key) {
            Lookup::Hit(r) => Some(r),
            _ => None,
        }
    }

    fn miss(c: &RowCache, tree: &'static str, key: &[u8]) -> u64 {
        match c.lookup(tree, key) {
            Lookup::Miss(g) => g,
            _ => panic!("expected a miss"),
        }
    }

    #[test]
    fn only_the_issue_trees_are_cached_and_only_while_listening() {
        let c = RowCache::default();
        assert!(matches!(c.lookup("workloads", b"w"), Lookup::Bypass), "off");
        c.set_on(true);
        assert!(matches!(c.lookup("leases", b"l"), Lookup::Bypass));
        let g = miss(&c, "workloads", b"w");
        c.fill("workloads", b"w", Some(b"v".to_vec()), g);
        assert_eq!(hit(&c, "workloads", b"w"), Some(Some(b"v".to_vec())));
        // An absent row is cached as absent.
        let g = miss(&c, "hosts", b"h");
        c.fill("hosts", b"h", None, g);
        assert_eq!(hit(&c, "hosts", b"h"), Some(None));
        c.set_on(false);
        assert!(matches!(c.lookup("workloads", b"w"), Lookup::Bypass));
        c.set_on(true);
        miss(&c, "workloads", b"w");
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_kept() {
        let c = RowCache::default();
        c.set_on(true);
        let g = miss(&c, "workloads", b"w");
        // Another replica's commit names the row while it is being read.
        c.notified(&payload([("workloads", &b"w"[..])]));
        c.fill("workloads", b"w", Some(b"old".to_vec()), g);
        miss(&c, "workloads", b"w");
    }

    #[test]
    fn notifications_forget_the_rows_they_name_or_everything() {
        let c = RowCache::default();
        c.set_on(true);
        for k in [&b"a"[..], b"b"] {
            let g = miss(&c, "credentials", k);
            c.fill("credentials", k, Some(k.to_vec()), g);
        }
        c.notified(&payload([("credentials", &b"a"[..]), ("leases", b"x")]));
        miss(&c, "credentials", b"a");
        assert!(hit(&c, "credentials", b"b").is_some());
        c.notified("*");
        miss(&c, "credentials", b"b");
        let g = miss(&c, "credentials", b"b");
        c.fill("credentials", b"b", None, g);
        c.notified("credentials:zz");
        miss(&c, "credentials", b"b");
    }

    #[test]
    fn a_payload_too_long_says_everything_and_leaves_other_trees_out() {
        assert_eq!(payload([("leases", &b"l"[..])]), "");
        assert_eq!(
            payload([
                ("hosts", &b"h1"[..]),
                ("events", b"e"),
                ("serials", b"\x01")
            ]),
            "hosts:6831,serials:01"
        );
        let big = vec![7u8; MAX_PAYLOAD];
        assert_eq!(payload([("hosts", big.as_slice())]), "*");
    }
}
