//! `leashctl secret import`: one secret per variable of an env file, then the same file
//! with every value replaced by its reference (`VAR=leash://NAME`), to keep in the
//! repository instead of the values. Errors name a line, never a value; values are
//! never printed.
//!
//! The file: `VAR=value` lines, an optional `export ` before the name, one pair of
//! matching quotes ('…' or "…") around a value removed; blank lines and `#` comments
//! are kept as they are in the reference file, and so are variables with an empty value
//! (a secret is never empty). A secret's name is the prefix and the variable's name
//! lowercased with `_` turned into `-`: `--prefix team-web/` and `STRIPE_KEY` make
//! `team-web/stripe-key`.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use leash_proto::cli::{print_str, Fail};
use leash_proto::names::escape as esc;
use leash_proto::v1;
use leash_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;
use zeroize::Zeroizing;

/// What `secret import` was asked.
pub(crate) struct Import {
    pub(crate) env_file: PathBuf,
    pub(crate) prefix: String,
    pub(crate) owner: String,
    pub(crate) write_refs: Option<PathBuf>,
    pub(crate) new_version: bool,
}

/// One line of the env file.
enum Line {
    /// Kept as it is (blank, comment, empty value).
    Keep(String),
    /// A variable to store: the reference line replaces it.
    Var {
        export: bool,
        var: String,
        name: String,
        value: Zeroizing<String>,
    },
}

/// The name of the secret for `var` under `prefix`.
pub(crate) fn secret_name(prefix: &str, var: &str) -> String {
    format!("{prefix}{}", var.to_ascii_lowercase().replace('_', "-"))
}

fn valid_var(k: &str) -> bool {
    k.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

/// Parse the file; a malformed line is named by number, its content never shown.
fn parse(text: &str, file: &str, prefix: &str) -> Result<Vec<Line>, Fail> {
    let mut out = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            out.push(Line::Keep(raw.to_string()));
            continue;
        }
        let (export, rest) = match line.strip_prefix("export ") {
            Some(r) => (true, r.trim_start()),
            None => (false, line),
        };
        let Some((var, value)) = rest.split_once('=') else {
            return Err(Fail::usage(format!(
                "{file}, line {n}: not VAR=value (the line is not shown: it may hold a secret)"
            )));
        };
        let var = var.trim();
        if !valid_var(var) {
            return Err(Fail::usage(format!(
                "{file}, line {n}: the variable name is not letters, digits and '_' (starting with a letter or '_')"
            )));
        }
        if let Some(first) = seen.insert(var.to_string(), n) {
            return Err(Fail::usage(format!(
                "{file}, line {n}: {var} is set again (first on line {first}); keep one"
            )));
        }
        let value = unquote(value.trim());
        if value.is_empty() {
            eprintln!("{file}, line {n}: {var} is empty: kept as it is (a secret is never empty)");
            out.push(Line::Keep(raw.to_string()));
            continue;
        }
        out.push(Line::Var {
            export,
            var: var.to_string(),
            name: secret_name(prefix, var),
            value: Zeroizing::new(value.to_string()),
        });
    }
    Ok(out)
}

/// The reference file: every variable's value replaced by its reference.
fn references(lines: &[Line]) -> String {
    let mut out = String::new();
    for l in lines {
        match l {
            Line::Keep(raw) => out.push_str(raw),
            Line::Var {
                export, var, name, ..
            } => {
                if *export {
                    out.push_str("export ");
                }
                out.push_str(&format!("{var}=leash://{name}"));
            }
        }
        out.push('\n');
    }
    out
}

/// Run `leashctl secret import`.
pub(crate) async fn import(c: &mut AdminClient<Channel>, a: Import) -> Result<(), Fail> {
    let file = a.env_file.display().to_string();
    let text = Zeroizing::new(
        std::fs::read_to_string(&a.env_file)
            .map_err(|e| Fail::usage(format!("cannot read {file}: {e}")))?,
    );
    let lines = parse(&text, &file, &a.prefix)?;
    let vars: Vec<(&String, &Zeroizing<String>)> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Var { name, value, .. } => Some((name, value)),
            Line::Keep(_) => None,
        })
        .collect();
    if vars.is_empty() {
        return Err(Fail::usage(format!("{file} sets no variable with a value")));
    }
    if let Some(p) = &a.write_refs {
        if p.exists() {
            return Err(Fail::usage(format!(
                "{} exists; the reference file is never overwritten: choose another --write-refs",
                p.display()
            )));
        }
    }
    // Check every name first, so nothing is written when one cannot be.
    let existing: BTreeMap<String, String> = c
        .list_credentials(v1::Empty {})
        .await?
        .into_inner()
        .credentials
        .into_iter()
        .map(|c| (c.name, c.kind))
        .collect();
    let mut taken = Vec::new();
    for (name, _) in &vars {
        match existing.get(name.as_str()).map(String::as_str) {
            None => {}
            Some("secret") if a.new_version => {}
            Some("secret") => taken.push(esc(name).into_owned()),
            Some(kind) => {
                return Err(Fail::usage(format!(
                    "a credential named {} (kind {kind}) exists; nothing was written: choose another --prefix",
                    esc(name)
                )))
            }
        }
    }
    if !taken.is_empty() {
        return Err(Fail::usage(format!(
            "these secrets exist already: {}; nothing was written. Add --new-version to add a version to each",
            taken.join(", ")
        )));
    }
    let mut done = Vec::new();
    for (name, value) in &vars {
        let new = !existing.contains_key(name.as_str());
        let put = c
            .put_secret(v1::PutSecretRequest {
                name: name.to_string(),
                value: value.as_bytes().to_vec(),
                owner: if new { a.owner.clone() } else { String::new() },
                format: if new { "text".into() } else { String::new() },
                ..Default::default()
            })
            .await;
        match put {
            Ok(r) => {
                let r = r.into_inner();
                eprintln!(
                    "secret {}: version {} ({} bytes, fingerprint {})",
                    esc(&r.name),
                    r.current_version,
                    r.size,
                    r.fingerprint
                );
                done.push(r.name);
            }
            Err(st) => {
                let Fail(m, code) = Fail::from(st);
                return Err(Fail(
                    format!(
                        "{m}\nstored before the failure: {}; no reference file was written",
                        if done.is_empty() {
                            "none".to_string()
                        } else {
                            done.join(", ")
                        }
                    ),
                    code,
                ));
            }
        }
    }
    let refs = references(&lines);
    match &a.write_refs {
        None => print_str(&refs),
        Some(p) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(p)
                .map_err(|e| Fail::usage(format!("cannot create {}: {e}", p.display())))?;
            f.write_all(refs.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| Fail(format!("cannot write {}: {e}", p.display()), 5))?;
            eprintln!(
                "wrote {} ({} reference(s)); the plaintext {file} can now be deleted",
                p.display(),
                done.len()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_references_and_malformed_lines() {
        assert_eq!(
            secret_name("team-web/", "STRIPE_KEY"),
            "team-web/stripe-key"
        );
        let text =
            "# keys\nexport STRIPE_KEY=\"sk_live_1\"\n\nEMPTY=\nDB_URL=postgres://u:p@h/db\n";
        let lines = parse(text, ".env", "p/").expect("parsed");
        assert_eq!(
            references(&lines),
            "# keys\nexport STRIPE_KEY=leash://p/stripe-key\n\nEMPTY=\nDB_URL=leash://p/db-url\n"
        );
        let values: Vec<String> = lines
            .iter()
            .filter_map(|l| match l {
                Line::Var { value, .. } => Some(value.to_string()),
                Line::Keep(_) => None,
            })
            .collect();
        assert_eq!(values, ["sk_live_1", "postgres://u:p@h/db"]);
        let Err(Fail(m, 1)) = parse("A=1\nsk_live_hunter2\n", ".env", "") else {
            panic!("accepted");
        };
        assert!(m.contains("line 2") && !m.contains("hunter2"), "{m}");
        let Err(Fail(m, 1)) = parse("A=1\nA=2\n", ".env", "") else {
            panic!("accepted");
        };
        assert!(m.contains("line 2") && m.contains("line 1"), "{m}");
    }
}
