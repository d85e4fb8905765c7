//! The key-value engine under the store: ordered trees of byte keys and byte values,
//! either sled trees (the embedded default) or rows of one PostgreSQL table
//! (`kv(tree, key, value)`, see `pg`). Everything above (the writer's jobs in `tx`,
//! `secrets`, `queue`, `retention`, the reads in `sled_impl`) is written once against
//! [`Tree`], with sled's names and ordering (keys compare as bytes), so both engines
//! hold the same records under the same keys.

use std::collections::VecDeque;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use sled::IVec;

use super::error::Result;

/// How many rows one PostgreSQL round trip of an iteration reads.
const PAGE: usize = 256;

/// What a PostgreSQL tree reads and writes through: the writer's transaction (which sees
/// its own buffered writes) or the pool of reader connections (read-only).
pub(super) trait Backend: Send + Sync {
    /// The value under `key`.
    fn get(&self, tree: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Up to `limit` rows of `tree` within the bounds, ascending (descending if `rev`),
    /// and the key up to which the range is now known (`None`: to its end).
    fn page(
        &self,
        tree: &'static str,
        lo: &Bound<Vec<u8>>,
        hi: &Bound<Vec<u8>>,
        rev: bool,
        limit: usize,
    ) -> Result<Page>;
    /// Set (`Some`) or delete (`None`) the value under `key`.
    fn put(&self, tree: &'static str, key: &[u8], value: Option<Vec<u8>>) -> Result<()>;
}

/// One page of rows.
pub(super) struct Page {
    /// The rows, in iteration order.
    pub(super) rows: Vec<(Vec<u8>, Vec<u8>)>,
    /// The last key the page covers (the next page starts after it), or `None` when the
    /// page reached the end of the range.
    pub(super) upto: Option<Vec<u8>>,
}

/// A tree of one engine.
#[derive(Clone)]
pub(super) enum Tree {
    /// A sled tree.
    Sled(sled::Tree),
    /// The rows of one tree in PostgreSQL.
    Pg {
        /// The tree's name (the `tree` column).
        name: &'static str,
        /// Through what it is read and written.
        via: Arc<dyn Backend>,
    },
}

fn bound(b: Bound<&impl AsRef<[u8]>>) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The smallest key above every key that starts with `prefix` (`None`: there is none).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Tree {
    pub(super) fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<IVec>> {
        match self {
            Tree::Sled(t) => Ok(t.get(key)?),
            Tree::Pg { name, via } => Ok(via.get(name, key.as_ref())?.map(IVec::from)),
        }
    }

    pub(super) fn insert(&self, key: impl AsRef<[u8]>, value: impl Into<IVec>) -> Result<()> {
        match self {
            Tree::Sled(t) => {
                t.insert(key, value)?;
                Ok(())
            }
            Tree::Pg { name, via } => {
                let v: IVec = value.into();
                via.put(name, key.as_ref(), Some(v.to_vec()))
            }
        }
    }

    /// Remove `key`, returning what it held.
    pub(super) fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<IVec>> {
        match self {
            Tree::Sled(t) => Ok(t.remove(key)?),
            Tree::Pg { name, via } => {
                let old = via.get(name, key.as_ref())?;
                if old.is_some() {
                    via.put(name, key.as_ref(), None)?;
                }
                Ok(old.map(IVec::from))
            }
        }
    }

    pub(super) fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// The first (smallest) entry.
    pub(super) fn first(&self) -> Result<Option<(IVec, IVec)>> {
        match self {
            Tree::Sled(t) => Ok(t.first()?),
            Tree::Pg { name, via } => {
                let p = via.page(name, &Bound::Unbounded, &Bound::Unbounded, false, 1)?;
                Ok(p.rows
                    .into_iter()
                    .next()
                    .map(|(k, v)| (IVec::from(k), IVec::from(v))))
            }
        }
    }

    pub(super) fn is_empty(&self) -> Result<bool> {
        Ok(self.first()?.is_none())
    }

    /// Every entry, in key order.
    pub(super) fn iter(&self) -> Iter {
        self.range::<&[u8], _>(..)
    }

    /// The entries whose key starts with `prefix`.
    pub(super) fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        match self {
            Tree::Sled(t) => Iter::Sled(t.scan_prefix(prefix), false),
            Tree::Pg { name, via } => {
                let lo = Bound::Included(prefix.as_ref().to_vec());
                let hi = match prefix_end(prefix.as_ref()) {
                    Some(e) => Bound::Excluded(e),
                    None => Bound::Unbounded,
                };
                Iter::Pg(PgIter::new(name, via.clone(), lo, hi))
            }
        }
    }

    /// The entries within `range`.
    pub(super) fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter {
        match self {
            Tree::Sled(t) => Iter::Sled(t.range(range), false),
            Tree::Pg { name, via } => Iter::Pg(PgIter::new(
                name,
                via.clone(),
                bound(range.start_bound()),
                bound(range.end_bound()),
            )),
        }
    }

    /// Delete every entry (tests rebuild indexes from nothing).
    #[cfg(test)]
    pub(super) fn clear(&self) -> Result<()> {
        let keys: Vec<IVec> = self.iter().keys().collect::<Result<_>>()?;
        for k in keys {
            self.remove(k)?;
        }
        Ok(())
    }
}

/// An iteration over a PostgreSQL tree, one page at a time.
pub(super) struct PgIter {
    name: &'static str,
    via: Arc<dyn Backend>,
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    rev: bool,
    buf: VecDeque<(Vec<u8>, Vec<u8>)>,
    done: bool,
    failed: bool,
}

impl PgIter {
    fn new(
        name: &'static str,
        via: Arc<dyn Backend>,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
    ) -> PgIter {
        PgIter {
            name,
            via,
            lo,
            hi,
            rev: false,
            buf: VecDeque::new(),
            done: false,
            failed: false,
        }
    }

    fn next_row(&mut self) -> Option<Result<(IVec, IVec)>> {
        while self.buf.is_empty() {
            if self.done || self.failed {
                return None;
            }
            match self.via.page(self.name, &self.lo, &self.hi, self.rev, PAGE) {
                Ok(p) => {
                    self.buf.extend(p.rows);
                    match p.upto {
                        Some(k) if self.rev => self.hi = Bound::Excluded(k),
                        Some(k) => self.lo = Bound::Excluded(k),
                        None => self.done = true,
                    }
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        self.buf
            .pop_front()
            .map(|(k, v)| Ok((IVec::from(k), IVec::from(v))))
    }
}

/// An iteration over a tree of either engine.
pub(super) enum Iter {
    /// sled's iterator, walked from the end when the flag is set.
    Sled(sled::Iter, bool),
    Pg(PgIter),
}

impl Iter {
    /// The same entries, from the last. Call before iterating.
    pub(super) fn rev(self) -> Iter {
        match self {
            Iter::Sled(i, rev) => Iter::Sled(i, !rev),
            Iter::Pg(mut i) => {
                i.rev = !i.rev;
                Iter::Pg(i)
            }
        }
    }

    /// Only the keys.
    pub(super) fn keys(self) -> Keys {
        Keys(self)
    }

    /// Only the values.
    pub(super) fn values(self) -> Values {
        Values(self)
    }
}

impl Iterator for Iter {
    type Item = Result<(IVec, IVec)>;
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Sled(i, false) => i.next().map(|r| r.map_err(Into::into)),
            Iter::Sled(i, true) => i.next_back().map(|r| r.map_err(Into::into)),
            Iter::Pg(i) => i.next_row(),
        }
    }
}

/// The keys of an [`Iter`].
pub(super) struct Keys(Iter);

impl Iterator for Keys {
    type Item = Result<IVec>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|r| r.map(|(k, _)| k))
    }
}

/// The values of an [`Iter`].
pub(super) struct Values(Iter);

impl Values {
    /// The same values, from the last.
    pub(super) fn rev(self) -> Values {
        Values(self.0.rev())
    }
}

impl Iterator for Values {
    type Item = Result<IVec>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|r| r.map(|(_, v)| v))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    type Rows = BTreeMap<(&'static str, Vec<u8>), Vec<u8>>;

    /// An engine in memory, answering pages as PostgreSQL does (bytewise key order,
    /// at most `limit` rows).
    #[derive(Default)]
    struct Mem(Mutex<Rows>);

    impl Backend for Mem {
        fn get(&self, tree: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
            Ok(self.0.lock().unwrap().get(&(tree, key.to_vec())).cloned())
        }
        fn page(
            &self,
            tree: &'static str,
            lo: &Bound<Vec<u8>>,
            hi: &Bound<Vec<u8>>,
            rev: bool,
            limit: usize,
        ) -> Result<Page> {
            let m = self.0.lock().unwrap();
            let mut rows: Vec<(Vec<u8>, Vec<u8>)> = m
                .iter()
                .filter(|((t, k), _)| *t == tree && (lo.clone(), hi.clone()).contains(k))
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect();
            if rev {
                rows.reverse();
            }
            rows.truncate(limit);
            let upto = (rows.len() == limit).then(|| rows[limit - 1].0.clone());
            Ok(Page { rows, upto })
        }
        fn put(&self, tree: &'static str, key: &[u8], value: Option<Vec<u8>>) -> Result<()> {
            let mut m = self.0.lock().unwrap();
            match value {
                Some(v) => m.insert((tree, key.to_vec()), v),
                None => m.remove(&(tree, key.to_vec())),
            };
            Ok(())
        }
    }

    fn tree() -> Tree {
        Tree::Pg {
            name: "t",
            via: Arc::new(Mem::default()),
        }
    }

    fn strings(i: impl Iterator<Item = Result<IVec>>) -> Vec<String> {
        i.map(|k| String::from_utf8_lossy(&k.expect("read")).into_owned())
            .collect()
    }

    #[test]
    fn a_postgres_tree_reads_like_a_sled_tree_across_pages() {
        let t = tree();
        let s = Tree::Sled(
            sled::Config::new()
                .temporary(true)
                .open()
                .expect("sled")
                .open_tree("t")
                .expect("tree"),
        );
        // More than two pages, keys that sort differently as text and as numbers.
        for i in 0..(2 * PAGE + 17) {
            let k = format!("k{i}");
            t.insert(&k, k.as_bytes()).expect("insert");
            s.insert(&k, k.as_bytes()).expect("insert");
        }
        t.insert(b"other", &[1]).expect("insert");
        s.insert(b"other", &[1]).expect("insert");
        let both = |f: Read<'_>| (f(&t), f(&s));
        type Read<'a> = &'a dyn Fn(&Tree) -> Vec<String>;
        let cases: [Read<'_>; 6] = [
            &|x| strings(x.iter().keys()),
            &|x| strings(x.iter().values().rev()),
            &|x| strings(x.scan_prefix("k1").keys()),
            &|x| strings(x.range("k2".."k3").keys()),
            &|x| strings(x.range::<&[u8], _>(..=&b"k100"[..]).keys()),
            &|x| strings(x.range("k5"..).values().rev().take(3)),
        ];
        for (i, f) in cases.iter().enumerate() {
            let (pg, sled) = both(*f);
            assert!(!pg.is_empty(), "case {i}");
            assert_eq!(pg, sled, "case {i}");
        }
        assert_eq!(
            t.first().expect("first").map(|(k, _)| k.to_vec()),
            Some(b"k0".to_vec())
        );
        assert_eq!(t.remove("k0").expect("remove").as_deref(), Some(&b"k0"[..]));
        assert_eq!(t.remove("k0").expect("remove"), None);
        assert!(!t.contains_key("k0").expect("contains"));
        assert!(!t.is_empty().expect("empty"));
        t.clear().expect("clear");
        assert!(t.is_empty().expect("empty"));
    }

    #[test]
    fn a_prefix_ends_at_its_successor() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
