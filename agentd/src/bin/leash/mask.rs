//! Masking for `leash exec`: the child's stdout and stderr pass through a filter that
//! replaces every injected credential with `<leash:NAME>` (a field with
//! `<leash:NAME#FIELD>`). For a postgres credential that is its connection URL and its
//! password, whichever field was injected (`served::masked`).
//!
//! What is caught: each injected value as it is, with trailing whitespace trimmed, in
//! standard and URL-safe base64 (padded or not, starting at the value's first byte), and
//! percent-encoded (RFC 3986, `encodeURIComponent` and form encoding, upper-case hex).
//! A value split across reads is still caught: the filter holds back the end of what it
//! has read while that end could be the start of a value, and lets it go as soon as it
//! cannot (or at end of output).
//!
//! What is not caught: anything else a program does to a value before printing it
//! (hashing, hex, reversing, compressing, encrypting, base64 of a longer text the value
//! sits inside at another alignment, lower-case percent-encoding, one character at a
//! time with other output between). Values shorter than [`MIN_MASKED`] bytes are not
//! masked, since they would replace ordinary text. Masking guards against accidents in
//! logs, not against a program that wants to leak what it was given.
//!
//! The search is leftmost-longest, whichever of three searchers does it:
//! - When every form begins with one of at most [`MAX_ANCHORS`] distinct prefixes (the
//!   common case of one injected token or key: its raw form, and its base64), each
//!   prefix is found by `memchr`'s SIMD substring search, one pass per prefix, and the
//!   forms are checked where one is found. On log text this is about twice as fast as
//!   Teddy below (100 MB with one JWT's forms: 15 ms against 33 ms on the benchmark
//!   machine).
//! - Otherwise `aho-corasick`'s SIMD searcher for a few patterns (Teddy, up to 128), used
//!   directly: the automaton's own choice for a handful of JWTs is a scan for their first
//!   bytes (`e` of `eyJ…`, `Z` of its base64), which ordinary text is full of, and it ran
//!   at a third of the speed of copying the output.
//! - For more patterns, the `aho-corasick` automaton: one pass however many values.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};

use aho_corasick::{packed, AhoCorasick, Input, Match, MatchKind, Span};
use base64::Engine;
use leash_agentd::sys;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Shorter values are not masked.
pub(crate) const MIN_MASKED: usize = 4;

/// Bytes read from the child at a time: as much as a pipe enlarged by
/// [`crate::stdio`] holds, so one read drains it.
pub(crate) const CHUNK: usize = 1024 * 1024;

/// RFC 3986 unreserved characters stay as they are.
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// What JavaScript's `encodeURIComponent` leaves alone.
const URI_COMPONENT: &AsciiSet = &RFC3986
    .remove(b'!')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*');
/// `application/x-www-form-urlencoded` (spaces become `+` afterwards).
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b' ');

/// The values to mask, compiled once and shared by the stdout and stderr filters. Its
/// `Debug` shows counts, never the values.
pub(crate) struct Patterns {
    search: Search,
    patterns: Vec<Vec<u8>>,
    replacement: Vec<Vec<u8>>,
    /// Which bytes start some pattern (to find a held-back tail quickly).
    first: [bool; 256],
    max_len: usize,
}

/// At most this many distinct prefixes are searched for one by one ([`Anchors`]); with
/// more, one pass of Teddy is faster (measured: 4 prefixes took as long as Teddy).
const MAX_ANCHORS: usize = 3;

/// The longest prefix of the patterns that [`Anchors`] searches for.
const ANCHOR_LEN: usize = 16;

impl std::fmt::Debug for Patterns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let search = match &self.search {
            Search::Anchors(a) => format!("{} prefixes", a.groups.len()),
            Search::Packed(_) => "teddy".to_string(),
            Search::Automaton(_) => "automaton".to_string(),
        };
        f.debug_struct("Patterns")
            .field("patterns", &self.patterns.len())
            .field("search", &search)
            .finish_non_exhaustive()
    }
}

/// How the patterns are searched for (all leftmost-longest, so they find the same).
enum Search {
    /// One SIMD substring search per distinct prefix, for patterns with few prefixes.
    Anchors(Anchors),
    /// Teddy (SIMD), for up to 128 patterns.
    Packed(packed::Searcher),
    /// The automaton, for more.
    Automaton(AhoCorasick),
}

/// The patterns grouped by their first `len` bytes (every pattern has at least `len`):
/// a pattern can only start where its group's prefix does.
struct Anchors {
    groups: Vec<Group>,
}

struct Group {
    prefix: memchr::memmem::Finder<'static>,
    /// The indexes of the group's patterns, longest first.
    patterns: Vec<usize>,
}

impl Anchors {
    /// `None` when the patterns begin with more than [`MAX_ANCHORS`] distinct prefixes.
    fn new(patterns: &[Vec<u8>]) -> Option<Anchors> {
        let len = patterns.iter().map(Vec::len).min()?.min(ANCHOR_LEN);
        // (prefix, the indexes of the patterns that begin with it)
        let mut groups: Vec<(&[u8], Vec<usize>)> = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            let prefix = &p[..len];
            match groups.iter_mut().find(|(g, _)| *g == prefix) {
                Some((_, members)) => members.push(i),
                None => groups.push((prefix, vec![i])),
            }
        }
        if groups.len() > MAX_ANCHORS {
            return None;
        }
        let group = |(prefix, mut members): (&[u8], Vec<usize>)| {
            members.sort_by_key(|&i| std::cmp::Reverse(patterns[i].len()));
            Group {
                prefix: memchr::memmem::Finder::new(prefix).into_owned(),
                patterns: members,
            }
        };
        Some(Anchors {
            groups: groups.into_iter().map(group).collect(),
        })
    }

    /// The leftmost-longest match of `patterns` (those it was made from) in `buf[from..]`:
    /// for each group, its first whole pattern (the longest where several start at the
    /// same place), looked for only up to where the best match so far starts.
    fn find_from(&self, patterns: &[Vec<u8>], buf: &[u8], from: usize) -> Option<Match> {
        let mut best: Option<Match> = None;
        for g in &self.groups {
            let plen = g.prefix.needle().len();
            let mut at = from;
            loop {
                // A prefix that starts after the best match cannot beat it.
                let end = best.map_or(buf.len(), |b| (b.start() + plen).min(buf.len()));
                if at >= end {
                    break;
                }
                let Some(i) = g.prefix.find(&buf[at..end]) else {
                    break;
                };
                let start = at + i;
                let whole = g
                    .patterns
                    .iter()
                    .map(|&id| (id, &patterns[id]))
                    .find(|(_, p)| buf[start..].starts_with(p));
                if let Some((id, p)) = whole {
                    let better = best.is_none_or(|b| {
                        start < b.start() || (start == b.start() && p.len() > b.len())
                    });
                    if better {
                        best = Some(Match::must(id, start..start + p.len()));
                    }
                    break;
                }
                at = start + 1;
            }
        }
        best
    }
}

impl Search {
    fn new(patterns: &[Vec<u8>]) -> Option<Search> {
        if let Some(a) = Anchors::new(patterns) {
            return Some(Search::Anchors(a));
        }
        if let Some(s) = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostLongest)
            .builder()
            .extend(patterns)
            .build()
        {
            return Some(Search::Packed(s));
        }
        AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(patterns)
            .ok()
            .map(Search::Automaton)
    }

    /// The leftmost-longest match of `patterns` (those it was made from) in `buf[from..]`.
    fn find_from(&self, patterns: &[Vec<u8>], buf: &[u8], from: usize) -> Option<Match> {
        let span = Span::from(from..buf.len());
        match self {
            Search::Anchors(a) => a.find_from(patterns, buf, from),
            Search::Packed(s) => s.find_in(buf, span),
            Search::Automaton(ac) => ac.find(Input::new(buf).span(span)),
        }
    }
}

/// The forms of `value` the filter looks for.
fn forms(value: &str) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let mut out = Vec::new();
    let mut bases = vec![value];
    let trimmed = value.trim_end();
    if trimmed != value {
        bases.push(trimmed);
    }
    for v in bases {
        if v.len() < MIN_MASKED {
            continue;
        }
        out.push(v.as_bytes().to_vec());
        for e in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            out.push(e.encode(v).into_bytes());
        }
        out.push(utf8_percent_encode(v, RFC3986).to_string().into_bytes());
        out.push(
            utf8_percent_encode(v, URI_COMPONENT)
                .to_string()
                .into_bytes(),
        );
        out.push(
            utf8_percent_encode(v, FORM)
                .to_string()
                .replace(' ', "+")
                .into_bytes(),
        );
    }
    out
}

impl Patterns {
    /// Patterns for `(name, value)` pairs; `None` when no value is long enough to mask.
    pub(crate) fn new(values: &[(String, String)]) -> Option<Patterns> {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut replacement = Vec::new();
        for (name, value) in values {
            for f in forms(value) {
                if !patterns.contains(&f) {
                    patterns.push(f);
                    replacement.push(format!("<leash:{name}>").into_bytes());
                }
            }
        }
        if patterns.is_empty() {
            return None;
        }
        let search = Search::new(&patterns)?;
        let mut first = [false; 256];
        for p in &patterns {
            first[usize::from(p[0])] = true;
        }
        let max_len = patterns.iter().map(Vec::len).max().unwrap_or(0);
        Some(Patterns {
            search,
            patterns,
            replacement,
            first,
            max_len,
        })
    }

    /// Where the part of `buf` that could be the start of a pattern begins (`buf.len()`
    /// when none could): that part is held back until more is read.
    fn hold_from(&self, buf: &[u8]) -> usize {
        let from = buf.len().saturating_sub(self.max_len - 1);
        (from..buf.len())
            .find(|&t| {
                self.first[usize::from(buf[t])]
                    && self
                        .patterns
                        .iter()
                        .any(|p| p.len() > buf.len() - t && p.starts_with(&buf[t..]))
            })
            .unwrap_or(buf.len())
    }

    /// Filter `buf` into `out`; returns how many bytes of `buf` were dealt with (the rest
    /// must be offered again with what is read next). At `eof` everything is.
    #[cfg(test)]
    pub(crate) fn filter(&self, buf: &[u8], eof: bool, out: &mut Vec<u8>) -> usize {
        let (done, masked) = self.scan(buf, eof, out);
        if !masked {
            out.extend_from_slice(&buf[..done]);
        }
        done
    }

    /// As `filter`, without copying what needs no mask: returns how many bytes of `buf`
    /// were dealt with and whether any was masked. When none was, `out` is untouched and
    /// those bytes go out as they are (the common case: most output holds no value).
    fn scan(&self, buf: &[u8], eof: bool, out: &mut Vec<u8>) -> (usize, bool) {
        let hold = if eof { buf.len() } else { self.hold_from(buf) };
        // One search finds whether anything before `hold` is masked at all.
        let mut next = match self.search.find_from(&self.patterns, buf, 0) {
            Some(m) if m.start() < hold => Some(m),
            _ => return (hold, false),
        };
        let mut pos = 0;
        while let Some(m) = next {
            // A match that starts before `hold` lies wholly inside `buf`, and is the
            // match the whole stream would have there (see `hold_from`).
            if m.start() >= hold {
                break;
            }
            out.extend_from_slice(&buf[pos..m.start()]);
            out.extend_from_slice(&self.replacement[m.pattern().as_usize()]);
            pos = m.end();
            next = self.search.find_from(&self.patterns, buf, pos);
        }
        if pos < hold {
            out.extend_from_slice(&buf[pos..hold]);
            pos = hold;
        }
        (pos, true)
    }
}

/// Copy `input` to `output` through the filter until `input` ends. A failed write ends
/// the copy (and the caller drops `input`, so the child sees its reader gone, as it would
/// without masking). EIO from a pty whose last slave closed counts as the end.
pub(crate) fn pump(p: &Patterns, mut input: impl Read, mut output: impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK + p.max_len];
    let mut filled = 0;
    let mut out = Vec::new();
    loop {
        let n = match input.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => 0,
            Err(e) => return Err(e),
        };
        filled += n;
        let eof = n == 0;
        out.clear();
        let (done, masked) = p.scan(&buf[..filled], eof, &mut out);
        let ready = if masked { &out[..] } else { &buf[..done] };
        if !ready.is_empty() {
            output.write_all(ready)?;
            output.flush()?;
        }
        buf.copy_within(done..filled, 0);
        filled -= done;
        if eof {
            return Ok(());
        }
    }
}

/// As [`pump`], for `input` a pipe, without a second copy of what goes out unchanged.
/// The pipe's pages are duplicated with `tee(2)` (shared, not copied) into a pipe of our
/// own, and read from there to be scanned; then what needs no mask moves on from `input`
/// to `output` with `splice(2)`, and the rest of what was read leaves `input` for
/// `/dev/null`. Only masked output and the bytes held back at the end of a read (see
/// [`Patterns::hold_from`]) are written from memory. A kernel that will not tee `input`
/// gets [`pump`]; an `output` that takes no splice (a file opened to append, some
/// terminals) is written from memory. The same bytes come out in the same order as
/// through [`pump`], and a failed write ends the copy in the same way.
pub(crate) fn pump_pipe(p: &Patterns, input: File, output: File) -> io::Result<()> {
    let Ok((peek_r, peek_w)) = io::pipe() else {
        return pump(p, input, output);
    };
    // As large as the pipe we read from (`crate::stdio`), so one tee takes all it holds.
    let _ = nix::fcntl::fcntl(
        peek_w.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(CHUNK as libc::c_int),
    );
    let null = File::options().write(true).open("/dev/null").ok();
    let mut buf = vec![0u8; CHUNK + p.max_len];
    // `buf[..held]` has left `input` already and is not yet out (the held-back tail);
    // everything `input` holds is new.
    let mut held = 0;
    let mut out = Vec::new();
    let mut can_splice = true;
    let mut first = true;
    loop {
        let n = match sys::tee(input.as_fd(), peek_w.as_fd(), CHUNK) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if first && e.raw_os_error() == Some(libc::EINVAL) => {
                return pump(p, input, output)
            }
            Err(e) => return Err(e),
        };
        first = false;
        (&peek_r).read_exact(&mut buf[held..held + n])?;
        let filled = held + n;
        let eof = n == 0;
        out.clear();
        let (done, masked) = p.scan(&buf[..filled], eof, &mut out);
        // How many of the `n` new bytes went out straight from `input`.
        let mut spliced = 0;
        if masked {
            (&output).write_all(&out)?;
        } else {
            (&output).write_all(&buf[..done.min(held)])?;
            if done > held {
                if can_splice && splice_all(&input, &output, done - held)? {
                    spliced = done - held;
                } else {
                    can_splice = false;
                    (&output).write_all(&buf[held..done])?;
                }
            }
        }
        discard(&input, null.as_ref(), n - spliced)?;
        buf.copy_within(done..filled, 0);
        held = filled - done;
        if eof {
            return Ok(());
        }
    }
}

/// Move exactly `len` bytes from the pipe `input` to `output`. `Ok(false)` when `output`
/// takes no splice (nothing moved then).
fn splice_all(input: &File, output: &File, len: usize) -> io::Result<bool> {
    let mut moved = 0;
    while moved < len {
        match sys::splice(input.as_fd(), output.as_fd(), len - moved) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => moved += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if moved == 0 && e.raw_os_error() == Some(libc::EINVAL) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Take `len` bytes (that it holds) out of the pipe `input` unseen: spliced into
/// `/dev/null` when it is open, read otherwise.
fn discard(input: &File, null: Option<&File>, len: usize) -> io::Result<()> {
    let mut left = len;
    if let Some(null) = null {
        while left > 0 {
            match sys::splice(input.as_fd(), null.as_fd(), left) {
                Ok(0) => break,
                Ok(k) => left -= k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    let mut scratch = [0u8; 4096];
    while left > 0 {
        let k = left.min(scratch.len());
        (&*input).read_exact(&mut scratch[..k])?;
        left -= k;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";

    fn patterns() -> Patterns {
        Patterns::new(&[
            ("api".into(), JWT.into()),
            ("db".into(), "p@ss w/rd+&x".into()),
            ("short".into(), "abc".into()),
        ])
        .expect("patterns")
    }

    /// Filter `input` delivered in the given pieces.
    fn run(p: &Patterns, pieces: &[&[u8]]) -> String {
        let mut pending = Vec::new();
        let mut out = Vec::new();
        for piece in pieces {
            pending.extend_from_slice(piece);
            let done = p.filter(&pending, false, &mut out);
            pending.drain(..done);
        }
        let done = p.filter(&pending, true, &mut out);
        assert_eq!(done, pending.len());
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn values_and_their_encodings_are_masked() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let p = patterns();
        let b64 = STANDARD.encode(JWT);
        let text = format!(
            "token={JWT}\nb64={b64} url={} pw=p%40ss%20w%2Frd%2B%26x form=p%40ss+w%2Frd%2B%26x raw=p@ss w/rd+&x ok=abc\n",
            URL_SAFE_NO_PAD.encode("p@ss w/rd+&x")
        );
        assert_eq!(
            run(&p, &[text.as_bytes()]),
            "token=<leash:api>\nb64=<leash:api> url=<leash:db> pw=<leash:db> form=<leash:db> raw=<leash:db> ok=abc\n"
        );
    }

    #[test]
    fn a_value_split_across_reads_is_masked_at_every_split() {
        let p = patterns();
        let text = format!("before {JWT} after");
        let b = text.as_bytes();
        for cut in 0..=b.len() {
            assert_eq!(
                run(&p, &[&b[..cut], &b[cut..]]),
                "before <leash:api> after",
                "split at {cut}"
            );
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = b.chunks(1).collect();
        assert_eq!(run(&p, &bytes), "before <leash:api> after");
    }

    #[test]
    fn nothing_is_held_back_that_cannot_start_a_value() {
        let p = patterns();
        let mut out = Vec::new();
        // A prompt with no possible start of a value at its end goes out whole.
        assert_eq!(p.filter(b"Password: ", false, &mut out), 10);
        assert_eq!(out, b"Password: ");
        // The start of a JWT is held until it is known not to be one.
        out.clear();
        assert_eq!(p.filter(b"x eyJhb", false, &mut out), 2);
        assert_eq!(out, b"x ");
        out.clear();
        assert_eq!(p.filter(b"eyJhbX", false, &mut out), 6);
        assert_eq!(out, b"eyJhbX");
    }

    #[test]
    fn short_values_are_not_masked_and_no_values_means_no_filter() {
        assert!(Patterns::new(&[("s".into(), "abc".into())]).is_none());
        assert!(Patterns::new(&[]).is_none());
        let p = Patterns::new(&[("s".into(), "abcd\n".into())]).expect("4 bytes");
        assert_eq!(run(&p, &[b"abcd\nabcd!"]), "<leash:s><leash:s>!");
    }

    #[test]
    fn debug_shows_no_value() {
        let shown = format!("{:?}", patterns());
        assert!(shown.contains("patterns"), "{shown}");
        assert!(!shown.contains("eyJ") && !shown.contains("p@ss"), "{shown}");
        assert!(!shown.contains("101, 121, 74"), "bytes of a value: {shown}");
    }

    #[test]
    fn many_values_past_the_simd_limit_are_masked_too() {
        // 40 values of 8 forms each: more patterns than the SIMD searcher takes.
        let values: Vec<(String, String)> = (0..40)
            .map(|i| (format!("k{i}"), format!("value-{i:03} w/ space")))
            .collect();
        let p = Patterns::new(&values).expect("patterns");
        assert!(matches!(p.search, Search::Automaton(_)));
        assert!(matches!(patterns().search, Search::Packed(_)));
        assert_eq!(
            run(&p, &[b"a value-007 w/ space b value-039%20w%2F%20space c"]),
            "a <leash:k7> b <leash:k39> c"
        );
    }

    /// Every searcher that takes `patterns`, built directly.
    fn searchers(patterns: &[Vec<u8>]) -> Vec<Search> {
        let mut out = vec![Search::Automaton(
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(patterns)
                .expect("automaton"),
        )];
        if let Some(s) = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostLongest)
            .builder()
            .extend(patterns)
            .build()
        {
            out.push(Search::Packed(s));
        }
        if let Some(a) = Anchors::new(patterns) {
            out.push(Search::Anchors(a));
        }
        out
    }

    #[test]
    fn the_searchers_find_the_same_matches() {
        // Forms that share prefixes and contain one another, so that leftmost-longest
        // has choices to make.
        let sets: Vec<Vec<(String, String)>> = vec![
            vec![("api".into(), JWT.into())],
            vec![("k".into(), "sk-live-abcdef".into())],
            vec![("k".into(), "abcd".into()), ("l".into(), "abcdabcd".into())],
            vec![("k".into(), "aaaa".into()), ("l".into(), "aaaab".into())],
        ];
        // A small xorshift generator: the same texts on every run.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for values in &sets {
            let p = Patterns::new(values).expect("patterns");
            let all = searchers(&p.patterns);
            assert!(all.len() >= 2, "{values:?}");
            assert!(all.iter().any(|s| matches!(s, Search::Anchors(_))));
            for _ in 0..300 {
                // Text made of whole forms, cut forms and filler.
                let mut text = Vec::new();
                for _ in 0..(next() % 12) {
                    let f = &p.patterns[next() as usize % p.patterns.len()];
                    match next() % 4 {
                        0 => text.extend_from_slice(f),
                        1 => text.extend_from_slice(&f[..next() as usize % f.len()]),
                        2 => text.extend_from_slice(b" a"),
                        _ => text.push(f[0]),
                    }
                }
                for from in 0..=text.len() {
                    let want = all[0].find_from(&p.patterns, &text, from);
                    for s in &all[1..] {
                        assert_eq!(
                            s.find_from(&p.patterns, &text, from),
                            want,
                            "{values:?} in {:?} from {from}",
                            String::from_utf8_lossy(&text)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn pump_passes_unmasked_output_through_unchanged() {
        let p = patterns();
        // No value at all, and a value's first bytes at many read boundaries.
        let mut text = Vec::new();
        for i in 0..200_000 {
            text.extend_from_slice(format!("line {i} eyJhbGci status=200 p@ss\n").as_bytes());
        }
        let mut out = Vec::new();
        pump(&p, io::Cursor::new(&text), &mut out).expect("pump");
        assert_eq!(out.len(), text.len());
        assert!(out == text, "output differs from input");
    }

    #[test]
    fn pump_copies_everything_through_small_reads() {
        let p = patterns();
        let mut text = Vec::new();
        for i in 0..20_000 {
            text.extend_from_slice(format!("line {i} {JWT}\n").as_bytes());
        }
        let mut out = Vec::new();
        pump(&p, io::Cursor::new(&text), &mut out).expect("pump");
        let out = String::from_utf8(out).expect("utf-8");
        assert!(!out.contains(JWT));
        assert_eq!(out.matches("<leash:api>").count(), 20_000);
        assert!(out.ends_with("line 19999 <leash:api>\n"));
    }

    /// `text` written into a pipe `piece` bytes at a time, through [`pump_pipe`] into
    /// `output`; what `pump_pipe` returned.
    fn through_pipe(p: &Patterns, text: &[u8], piece: usize, output: File) -> io::Result<()> {
        let (r, mut w) = io::pipe().expect("pipe");
        std::thread::scope(|s| {
            s.spawn(move || {
                for c in text.chunks(piece) {
                    if w.write_all(c).is_err() {
                        break;
                    }
                }
            });
            pump_pipe(p, File::from(std::os::fd::OwnedFd::from(r)), output)
        })
    }

    /// As [`through_pipe`] into another pipe; what came out of it.
    fn pipe_to_pipe(p: &Patterns, text: &[u8], piece: usize) -> Vec<u8> {
        let (mut out_r, out_w) = io::pipe().expect("pipe");
        std::thread::scope(|s| {
            let reader = s.spawn(move || {
                let mut v = Vec::new();
                out_r.read_to_end(&mut v).expect("read");
                v
            });
            through_pipe(
                p,
                text,
                piece,
                File::from(std::os::fd::OwnedFd::from(out_w)),
            )
            .expect("pump_pipe");
            reader.join().expect("reader")
        })
    }

    /// Log lines with values, their first bytes and near misses at every alignment.
    fn mixed_text(lines: usize) -> Vec<u8> {
        let mut text = Vec::new();
        for i in 0..lines {
            let line = match i % 5 {
                0 => format!("line {i} token={JWT} ok\n"),
                1 => format!("line {i} eyJhbGci status=200 p@ss\n"),
                2 => format!(
                    "line {i} pw=p%40ss%20w%2Frd%2B%26x {}\n",
                    "x".repeat(i % 97)
                ),
                3 => format!("{JWT}{JWT}"),
                _ => format!("line {i} eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJ"),
            };
            text.extend_from_slice(line.as_bytes());
        }
        text
    }

    #[test]
    fn pump_pipe_gives_what_pump_gives_whatever_the_writes() {
        let p = patterns();
        let small = mixed_text(60);
        let big = mixed_text(60_000);
        for (text, pieces) in [
            (&small, &[1usize, 2, 3, 7, 61][..]),
            (&big, &[4096, 65_536 + 3, 1 << 20, 3 << 20][..]),
        ] {
            let mut want = Vec::new();
            pump(&p, io::Cursor::new(text), &mut want).expect("pump");
            assert!(want.windows(JWT.len()).all(|w| w != JWT.as_bytes()));
            for &piece in pieces {
                let got = pipe_to_pipe(&p, text, piece);
                assert!(got == want, "writes of {piece} bytes: output differs");
            }
        }
        // Nothing to mask at all: every byte goes out as it came.
        let plain: Vec<u8> = (0..3_000_000u32)
            .map(|i| b"abcdefgh\n"[i as usize % 9])
            .collect();
        assert!(pipe_to_pipe(&p, &plain, 100_000) == plain);
    }

    #[test]
    fn pump_pipe_writes_to_files_appended_to_or_not() {
        let p = patterns();
        let text = mixed_text(20_000);
        let mut want = Vec::new();
        pump(&p, io::Cursor::new(&text), &mut want).expect("pump");
        let dir = tempfile::tempdir().expect("tempdir");
        // A file opened to append takes no splice: written from memory instead.
        let appended = dir.path().join("appended");
        std::fs::write(&appended, b"before\n").expect("write");
        let f = File::options().append(true).open(&appended).expect("open");
        through_pipe(&p, &text, 65_536, f).expect("pump_pipe");
        let mut expect = b"before\n".to_vec();
        expect.extend_from_slice(&want);
        assert!(std::fs::read(&appended).expect("read") == expect);
        let plain = dir.path().join("plain");
        let f = File::create(&plain).expect("create");
        through_pipe(&p, &text, 65_536, f).expect("pump_pipe");
        assert!(std::fs::read(&plain).expect("read") == want);
    }

    #[test]
    fn pump_pipe_stops_with_broken_pipe_when_nobody_reads_its_output() {
        let p = patterns();
        let (out_r, out_w) = io::pipe().expect("pipe");
        drop(out_r);
        let text = mixed_text(1000);
        let e = through_pipe(
            &p,
            &text,
            4096,
            File::from(std::os::fd::OwnedFd::from(out_w)),
        )
        .expect_err("no reader");
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
    }

    #[test]
    fn a_postgres_url_and_its_password_alone_are_both_masked() {
        let pw = "c3VwZXJzZWNyZXRwYXNzd29yZGZvcmFsZWFzZTAwMDA";
        let url = format!("postgresql://leash_ci_job_l1:{pw}@127.0.0.1:5432/app?sslmode=disable");
        let p = Patterns::new(&[
            ("app-db".into(), url.clone()),
            ("app-db#password".into(), pw.into()),
        ])
        .expect("patterns");
        let text = format!(
            "connecting to {url}\npassword is {pw}\nPGPASSWORD={pw} role leash_ci_job_l1\n"
        );
        let out = run(&p, &[text.as_bytes()]);
        assert_eq!(
            out,
            "connecting to <leash:app-db>\npassword is <leash:app-db#password>\nPGPASSWORD=<leash:app-db#password> role leash_ci_job_l1\n"
        );
        // The URL percent-encoded (as a program passing it on in a query string would).
        let enc = utf8_percent_encode(&url, RFC3986).to_string();
        assert_eq!(run(&p, &[enc.as_bytes()]), "<leash:app-db>");
        // Split anywhere, the password alone is still caught.
        let b = format!("pw={pw};").into_bytes();
        for cut in 0..=b.len() {
            assert_eq!(
                run(&p, &[&b[..cut], &b[cut..]]),
                "pw=<leash:app-db#password>;",
                "split at {cut}"
            );
        }
    }
}
