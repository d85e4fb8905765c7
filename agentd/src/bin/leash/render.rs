//! `leash render TEMPLATE [-o OUT] [--force]`: fill `{{ leash://NAME… }}` placeholders
//! with credentials, for tools that read only config files.
//!
//! A rendered file is a copy of credentials on disk that Leash can neither wipe nor
//! revoke, so: OUT is written with mode 0600 (through a temp file in the same directory,
//! renamed over OUT); a directory that others can read or write is refused unless
//! `--force`; and every run warns on stderr. `leash exec` is the better tool wherever the
//! program reads its environment.
//!
//! Placeholders whose text does not start with `leash://` (another tool's templating)
//! are left as they are. Each distinct reference is fetched once.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use leash_proto::cli::{print_str, Fail};
use leash_proto::names;
use leash_proto::reference::{self, Reference};
use leash_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

use crate::served;

/// A placeholder: where it is in the template, and what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placeholder {
    start: usize,
    end: usize,
    text: String,
}

/// Every `{{ leash://… }}` placeholder of `template` (named `path` in errors), checked.
pub(crate) fn placeholders(
    path: &str,
    template: &str,
) -> Result<Vec<(Placeholder, Reference)>, String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(open) = template[from..].find("{{").map(|i| from + i) {
        let Some(close) = template[open + 2..].find("}}").map(|i| open + 2 + i) else {
            break;
        };
        let inner = template[open + 2..close].trim();
        if reference::is_reference(inner) {
            let line = template[..open].matches('\n').count() + 1;
            let r = reference::parse(inner).map_err(|e| format!("{path} line {line}: {e}"))?;
            out.push((
                Placeholder {
                    start: open,
                    end: close + 2,
                    text: inner.to_string(),
                },
                r,
            ));
        }
        from = close + 2;
    }
    Ok(out)
}

/// `template` with each placeholder replaced by `values[its text]`.
pub(crate) fn fill(
    template: &str,
    found: &[(Placeholder, Reference)],
    values: &BTreeMap<String, String>,
) -> String {
    let mut out = String::with_capacity(template.len());
    let mut pos = 0;
    for (p, _) in found {
        out.push_str(&template[pos..p.start]);
        out.push_str(values.get(&p.text).map(String::as_str).unwrap_or_default());
        pos = p.end;
    }
    out.push_str(&template[pos..]);
    out
}

/// Refuse a directory others can read or write (unless `force`): a file there is one
/// `ls` away from anyone on the host.
pub(crate) fn check_dir(dir: &Path, force: bool) -> Result<(), String> {
    let md =
        std::fs::metadata(dir).map_err(|e| format!("cannot write into {}: {e}", dir.display()))?;
    if !md.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let mode = md.mode() & 0o7777;
    if mode & 0o066 != 0 && !force {
        return Err(format!(
            "refusing to write credentials into {} (mode {mode:04o}): others can read or write that directory. Render into a directory only you can use (mode 0700), or pass --force",
            dir.display()
        ));
    }
    Ok(())
}

/// Write `text` to `out` with mode 0600: a temp file beside it, synced, renamed over it.
fn write_private(out: &Path, text: &str) -> Result<(), String> {
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .ok_or_else(|| format!("-o {}: not a file name", out.display()))?;
    let tmp = dir.join(format!(
        ".{}.leash-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", out.display())
    })
}

/// Run `leash render`.
pub(crate) async fn run(
    c: &mut AgentClient<Channel>,
    template: PathBuf,
    out: Option<PathBuf>,
    force: bool,
) -> Result<(), Fail> {
    let path = template.display().to_string();
    let text = std::fs::read_to_string(&template)
        .map_err(|e| Fail(format!("cannot read the template {path}: {e}"), 1))?;
    let found = placeholders(&path, &text).map_err(|m| Fail(m, 1))?;
    if let Some(o) = &out {
        let dir = o
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        check_dir(dir, force).map_err(|m| Fail(m, 1))?;
    }
    let task = std::env::var("LEASH_TASK").unwrap_or_default();
    let mut values = BTreeMap::new();
    for (p, r) in &found {
        if values.contains_key(&p.text) {
            continue;
        }
        let resp = c
            .fetch(served::request(r, &task))
            .await
            .map_err(|s| {
                let (m, code) = leash_proto::cli::status_exit(&s);
                Fail(format!("{}: {m}", names::excerpt(&p.text)), code)
            })?
            .into_inner();
        let v = served::text(&resp, r).map_err(|m| Fail(m, 1))?;
        values.insert(p.text.clone(), v);
    }
    let rendered = fill(&text, &found, &values);
    drop(values);
    match out {
        Some(o) => {
            write_private(&o, &rendered).map_err(|m| Fail(m, 1))?;
            eprintln!(
                "warning: {} now holds {} credential(s) on disk, where Leash cannot wipe or revoke them; delete it when done, and prefer `leash exec` for programs that read their environment",
                o.display(),
                found.len()
            );
        }
        None => {
            eprintln!("warning: the rendered text holds {} credential(s); anything that stores it keeps a copy Leash cannot wipe or revoke (prefer `leash exec`)", found.len());
            print_str(&rendered);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_and_filled() {
        let t = "url: {{ leash://db#url }}\nkey: {{leash://api?ttl=1m}}\nother: {{ .Values.x }}\nagain: {{ leash://db#url }}\n";
        let found = placeholders("t.yaml", t).expect("good template");
        assert_eq!(found.len(), 3);
        assert_eq!(found[1].1.ttl_seconds, 60);
        let values = BTreeMap::from([
            ("leash://db#url".to_string(), "postgres://x".to_string()),
            ("leash://api?ttl=1m".to_string(), "eyJ".to_string()),
        ]);
        assert_eq!(
            fill(t, &found, &values),
            "url: postgres://x\nkey: eyJ\nother: {{ .Values.x }}\nagain: postgres://x\n"
        );
    }

    #[test]
    fn a_bad_placeholder_names_its_line() {
        let e = placeholders("t.conf", "a\nb\nc = {{ leash://api?bogus=1 }}\n").unwrap_err();
        assert!(
            e.starts_with("t.conf line 3: the reference \"leash://api?bogus=1\""),
            "{e}"
        );
        // An unclosed brace is left alone.
        assert!(placeholders("t", "x {{ leash://api").unwrap().is_empty());
    }

    #[test]
    fn directories_others_can_use_are_refused_unless_forced() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        for (mode, ok) in [
            (0o700, true),
            (0o711, true),
            (0o755, false),
            (0o770, false),
            (0o703, false),
        ] {
            std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(check_dir(d.path(), false).is_ok(), ok, "mode {mode:o}");
            assert!(check_dir(d.path(), true).is_ok());
        }
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let out = d.path().join("app.conf");
        write_private(&out, "k=v").unwrap();
        write_private(&out, "k=w").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "k=w");
        assert_eq!(std::fs::metadata(&out).unwrap().mode() & 0o777, 0o600);
    }
}
