//! Architecture checks on the daemons' source, run as tests so they cannot regress:
//!
//! - no import circles among the files of `control-plane/src` and of `agentd/src` (the
//!   binaries in `src/bin` and `main.rs` aside): if `a.rs` uses `crate::b`, then `b.rs`
//!   and everything it uses must not use `crate::a` (docs/ARCHITECTURE.md);
//! - no source file longer than [`MAX_LINES`], not counting `#[cfg(test)] mod … { }`
//!   blocks and files named `tests.rs`.
//!
//! The import graph is read from the text: a file depends on every file that one of its
//! `crate::`, `super::` or `self::` paths (including the items of a `{ … }` group) leads
//! to, and a `mod.rs` or `lib.rs` also on each child module it `use`s or re-exports. Test
//! modules and comments are left out. Cycles are the strongly connected components of
//! that graph (Tarjan's algorithm).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest a source file may be, tests aside.
const MAX_LINES: usize = 800;

/// A module, as the path of names from the crate root (`[]` is `lib.rs`).
type Module = Vec<String>;

/// The workspace root (this crate is `tests/`).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display()));
        for e in entries {
            let p = e.expect("a directory entry").path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The library's files by module, without `src/bin/` and `src/main.rs`.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut files = BTreeMap::new();
    for p in rust_files(src) {
        let rel = p.strip_prefix(src).expect("under src");
        let mut parts: Vec<String> = rel
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.first().is_some_and(|f| f == "bin") || parts == ["main"] {
            continue;
        }
        if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
            parts.pop();
        }
        files.insert(parts, p);
    }
    files
}

/// Where the `#[cfg(test)] mod NAME {` that starts at or after `from` begins and where its
/// body starts (just past the `{`).
fn next_test_module(text: &str, from: usize) -> Option<(usize, usize)> {
    let mut at = from;
    while let Some(i) = text[at..].find("#[cfg(test)]") {
        let start = at + i;
        let rest = &text[start + "#[cfg(test)]".len()..];
        let trimmed = rest.trim_start();
        let skipped = rest.len() - trimmed.len();
        if let Some(after_mod) = trimmed.strip_prefix("mod") {
            let after_ws = after_mod.trim_start();
            let name_len = after_ws
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(after_ws.len());
            if after_ws.len() < after_mod.len() && name_len > 0 {
                let after_name = after_ws[name_len..].trim_start();
                if after_name.starts_with('{') {
                    let body = text.len() - after_name.len() + 1;
                    return Some((start, body));
                }
            }
        }
        at = start + "#[cfg(test)]".len() + skipped;
    }
    None
}

/// `text` without its `#[cfg(test)] mod … { }` blocks (braces counted naively, which is
/// enough for this code base: no test module has an unbalanced brace in a string).
fn strip_test_modules(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some((start, body)) = next_test_module(text, at) {
        out.push_str(&text[at..start]);
        let mut depth = 1;
        let mut end = text.len();
        for (i, c) in text[body..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => continue,
            }
            if depth == 0 {
                end = body + i + 1;
                break;
            }
        }
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

/// `text` with `//` comments (and doc comments) removed.
fn strip_line_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The `::name::name…` path starting at `s`, and the rest of `s` after it.
fn path_tail(s: &str) -> (Vec<String>, &str) {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(r) = rest.strip_prefix("::") {
        let n = r.find(|c: char| !is_ident(c)).unwrap_or(r.len());
        if n == 0 {
            break;
        }
        parts.push(r[..n].to_string());
        rest = &r[n..];
    }
    (parts, rest)
}

/// The paths a `{ … }` group at the start of `s` names (each item's leading path).
fn group_items(s: &str) -> Vec<Vec<String>> {
    let Some(body) = s.strip_prefix("::{") else {
        return Vec::new();
    };
    let mut items = Vec::new();
    let mut depth = 0;
    let mut item = String::new();
    for c in body.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    items.push(item);
    items
        .iter()
        .filter_map(|i| {
            let i = i.trim();
            let n = i.find(|c: char| !is_ident(c)).unwrap_or(i.len());
            if n == 0 {
                return None;
            }
            let (mut more, _) = path_tail(&i[n..]);
            let mut p = vec![i[..n].to_string()];
            p.append(&mut more);
            Some(p)
        })
        .collect()
}

/// The longest prefix of `path` that is a file's module.
fn resolve<'a>(files: &'a BTreeMap<Module, PathBuf>, path: &[String]) -> Option<&'a Module> {
    (0..=path.len())
        .rev()
        .find_map(|k| files.get_key_value(&path[..k]).map(|(m, _)| m))
}

/// The file-level import graph of the crate whose sources are in `src`.
fn import_graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let files = modules(src);
    let mut graph: BTreeMap<Module, BTreeSet<Module>> =
        files.keys().map(|m| (m.clone(), BTreeSet::new())).collect();
    for (m, p) in &files {
        if p.to_string_lossy().ends_with("tests.rs") {
            continue;
        }
        let raw =
            std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        let text = strip_line_comments(&strip_test_modules(&raw));
        let is_mod = p
            .file_name()
            .is_some_and(|n| n == "mod.rs" || n == "lib.rs");
        let mut edges = BTreeSet::new();
        for (i, _) in text.match_indices("::") {
            let before = &text[..i];
            let word_start = before.rfind(|c: char| !is_ident(c)).map_or(0, |j| j + 1);
            let base: Vec<String> = match &before[word_start..] {
                "crate" => Vec::new(),
                // `super` in `a/b.rs` and in `a/b/mod.rs` alike is the module above `a::b`.
                "super" if !m.is_empty() => m[..m.len() - 1].to_vec(),
                "self" => m.clone(),
                _ => continue,
            };
            // `super::super::x`: each further `super` climbs one more level.
            let (tail, rest) = path_tail(&text[i..]);
            let mut base = base;
            let mut tail = tail.as_slice();
            while tail.first().is_some_and(|t| t == "super") {
                base.pop();
                tail = &tail[1..];
            }
            let mut targets = vec![[base.clone(), tail.to_vec()].concat()];
            for item in group_items(rest) {
                targets.push([base.clone(), tail.to_vec(), item].concat());
            }
            for t in targets {
                if let Some(r) = resolve(&files, &t) {
                    if r != m && !r.is_empty() {
                        edges.insert(r.clone());
                    }
                }
            }
        }
        if is_mod {
            // `use child::…` / `pub use child::…` in a mod.rs: the parent depends on it.
            for (i, _) in text.match_indices("use ") {
                let before_ok = !text[..i].chars().last().is_some_and(is_ident);
                let after = text[i + 4..].trim_start();
                let n = after.find(|c: char| !is_ident(c)).unwrap_or(after.len());
                if before_ok && n > 0 && after[n..].starts_with("::") {
                    let child = [m.clone(), vec![after[..n].to_string()]].concat();
                    if files.contains_key(&child) {
                        edges.insert(child);
                    }
                }
            }
        }
        graph.insert(m.clone(), edges);
    }
    graph
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct Tarjan<'g> {
        graph: &'g BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'g Module, usize>,
        low: BTreeMap<&'g Module, usize>,
        stack: Vec<&'g Module>,
        on_stack: BTreeSet<&'g Module>,
        next: usize,
        found: Vec<Vec<Module>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, v: &'g Module) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on_stack.insert(v);
            let graph = self.graph;
            for w in &graph[v] {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                loop {
                    let w = self.stack.pop().expect("on the stack");
                    self.on_stack.remove(w);
                    comp.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    self.found.push(comp);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.found
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "lib".into()
    } else {
        m.join("/")
    }
}

/// Each cycle of the crate in `src`, with the edges among its files, for a failure message.
fn describe_cycles(src: &Path) -> Vec<String> {
    let graph = import_graph(src);
    cycles(&graph)
        .iter()
        .map(|comp| {
            let members: BTreeSet<&Module> = comp.iter().collect();
            let mut s = format!(
                "a circle among {}:\n",
                comp.iter().map(name).collect::<Vec<_>>().join(", ")
            );
            for m in comp {
                let to: Vec<String> = graph[m]
                    .iter()
                    .filter(|t| members.contains(t))
                    .map(name)
                    .collect();
                s.push_str(&format!("  {} -> {}\n", name(m), to.join(", ")));
            }
            s
        })
        .collect()
}

/// Lines of `path` that count towards [`MAX_LINES`].
fn counted_lines(path: &Path) -> usize {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    strip_test_modules(&text).lines().count()
}

#[test]
fn no_import_circles_in_either_daemon() {
    let root = workspace();
    let mut found = Vec::new();
    for krate in ["control-plane", "agentd"] {
        let src = root.join(krate).join("src");
        let graph = import_graph(&src);
        assert!(
            graph.len() > 5 && graph.values().any(|e| !e.is_empty()),
            "read no import graph from {}: {graph:?}",
            src.display()
        );
        for c in describe_cycles(&src) {
            found.push(format!("{krate}: {c}"));
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn no_daemon_source_file_is_over_the_line_limit() {
    let root = workspace();
    let mut long = Vec::new();
    let mut seen = 0;
    for krate in ["control-plane", "agentd"] {
        for p in rust_files(&root.join(krate).join("src")) {
            if p.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            seen += 1;
            let n = counted_lines(&p);
            if n > MAX_LINES {
                long.push(format!(
                    "{}: {n} lines",
                    p.strip_prefix(&root).unwrap_or(&p).display()
                ));
            }
        }
    }
    assert!(
        seen > 10,
        "found only {seen} source files under {}",
        root.display()
    );
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines (tests aside); split by concept:\n{}",
        long.join("\n")
    );
}

/// A small crate in a temp dir: `files` are (path under src, text).
fn synthetic(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (p, text) in files {
        let path = dir.path().join("src").join(p);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
    }
    dir
}

#[test]
fn the_circle_check_finds_a_circle_and_only_a_real_one() {
    // a -> b -> c/mod.rs -> (re-exported child) c/d -> a: one circle of four files.
    let dir = synthetic(&[
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\npub mod e;\n"),
        ("a.rs", "use crate::b::Thing;\n"),
        ("b.rs", "pub struct Thing;\npub fn f() { crate::c::g() }\n"),
        ("c/mod.rs", "mod d;\npub use d::g;\n"),
        ("c/d.rs", "use crate::{a, e::E};\npub fn g() {}\n"),
        // e only uses others from its tests and a comment: no edge, no circle.
        (
            "e.rs",
            "// see crate::a\npub struct E;\n#[cfg(test)]\nmod tests {\n    use crate::c::g;\n    #[test]\n    fn t() { g() }\n}\n",
        ),
        ("bin/tool.rs", "use crate::a;\n"),
        ("main.rs", "use crate::a;\n"),
    ]);
    let src = dir.path().join("src");
    let found = describe_cycles(&src);
    assert_eq!(found.len(), 1, "{found:#?}");
    for m in ["a", "b", "c", "c/d"] {
        assert!(
            found[0].contains(&format!("  {m} -> ")),
            "{m} missing: {}",
            found[0]
        );
    }
    assert!(!found[0].contains("  e -> "), "{}", found[0]);
    let graph = import_graph(&src);
    assert_eq!(
        graph[&vec!["e".to_string()]],
        BTreeSet::new(),
        "a test module's or a comment's path counted"
    );
    assert!(graph[&vec!["c".to_string(), "d".to_string()]].contains(&vec!["e".to_string()]));

    // `super::` from a child back to its parent, without the parent using the child:
    // no circle.
    let dir = synthetic(&[
        ("lib.rs", "pub mod p;\n"),
        ("p/mod.rs", "mod q;\npub struct S;\n"),
        ("p/q.rs", "use super::S;\n"),
    ]);
    assert!(describe_cycles(&dir.path().join("src")).is_empty());
}

#[test]
fn the_line_count_leaves_out_test_modules() {
    let body: String = (0..MAX_LINES).map(|i| format!("// {i}\n")).collect();
    let dir = synthetic(&[
        (
            "long.rs",
            &format!("fn f() {{}}\n#[cfg(test)]\nmod tests {{\n{body}}}\n"),
        ),
        ("longer.rs", &format!("fn f() {{}}\n{body}")),
    ]);
    let src = dir.path().join("src");
    assert_eq!(counted_lines(&src.join("long.rs")), 2);
    assert_eq!(counted_lines(&src.join("longer.rs")), MAX_LINES + 1);
}
