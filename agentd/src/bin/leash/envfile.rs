//! `leash exec --env-file F`: the `.env`-style file a migrated project keeps, where each
//! `VAR=leash://…` line names a credential and each plain `VAR=value` line is passed
//! through as it is.
//!
//! The rules: blank lines and lines starting with `#` are skipped; an `export ` prefix is
//! accepted; a value in matching single or double quotes loses the quotes (nothing inside
//! is unescaped). A malformed line is an error that names the file and the line number
//! and never shows the value (a plain line may hold a key not yet migrated).

use leash_proto::names;
use leash_proto::reference::{self, Reference};

/// What a variable is set to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// A plain value, passed through.
    Plain(String),
    /// A credential to fetch.
    Reference(Reference),
}

/// One `VAR=…` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    /// Its 1-based line number.
    pub(crate) number: usize,
    /// The variable.
    pub(crate) var: String,
    /// Its value.
    pub(crate) value: Value,
}

/// Whether `var` is a name a shell can export.
pub(crate) fn valid_var(var: &str) -> bool {
    !var.is_empty()
        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !var.starts_with(|c: char| c.is_ascii_digit())
}

/// Parse the text of env file `path` (shown in errors).
pub(crate) fn parse(path: &str, text: &str) -> Result<Vec<Line>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let at = || format!("{path} line {number}");
        let line = raw.trim_start();
        if line.trim_end().is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((var, value)) = line.split_once('=') else {
            return Err(format!(
                "{}: expected VAR=VALUE (or VAR=leash://NAME), a # comment or a blank line",
                at()
            ));
        };
        let var = var.trim_end();
        if !valid_var(var) {
            return Err(format!(
                "{}: {} is not a variable name (letters, digits and _, not starting with a digit)",
                at(),
                names::excerpt(var)
            ));
        }
        let value = unquote(value.trim()).ok_or_else(|| {
            format!(
                "{}: the value of {var} opens a quote it does not close",
                at()
            )
        })?;
        let value = if reference::is_reference(value) {
            Value::Reference(reference::parse(value).map_err(|e| format!("{}: {var}: {e}", at()))?)
        } else {
            Value::Plain(value.to_string())
        };
        out.push(Line {
            number,
            var: var.to_string(),
            value,
        });
    }
    Ok(out)
}

/// `"v"` or `'v'` without its quotes; `None` for a quote that is opened and not closed.
fn unquote(v: &str) -> Option<&str> {
    for q in ['"', '\''] {
        if let Some(rest) = v.strip_prefix(q) {
            return rest.strip_suffix(q);
        }
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_lines() {
        let text = "# migrated\n\nOPENAI_API_KEY=leash://team-web/openai-key\nexport DB=leash://db?action=read#password\n  PORT = 8080\nNAME=\"two words\"\nEMPTY=\nQ='leash://quoted'\n";
        let lines = parse(".env", text).expect("good file");
        let got: Vec<(usize, &str)> = lines.iter().map(|l| (l.number, l.var.as_str())).collect();
        assert_eq!(
            got,
            [
                (3, "OPENAI_API_KEY"),
                (4, "DB"),
                (5, "PORT"),
                (6, "NAME"),
                (7, "EMPTY"),
                (8, "Q")
            ]
        );
        match &lines[1].value {
            Value::Reference(r) => {
                assert_eq!(r.name, "db");
                assert_eq!(r.action, "read");
                assert_eq!(r.field.as_deref(), Some("password"));
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(lines[2].value, Value::Plain("8080".into()));
        assert_eq!(lines[3].value, Value::Plain("two words".into()));
        assert_eq!(lines[4].value, Value::Plain(String::new()));
        assert!(matches!(&lines[5].value, Value::Reference(r) if r.name == "quoted"));
    }

    #[test]
    fn malformed_lines_name_the_line_and_never_the_value() {
        let cases: &[(&str, &str)] = &[
            ("A=1\nsk_live_SECRET\n", ".env line 2: expected VAR=VALUE"),
            (
                "A=1\n\n1X=sk_live_SECRET\n",
                ".env line 3: \"1X\" is not a variable name",
            ),
            (
                "=sk_live_SECRET\n",
                ".env line 1: \"\" is not a variable name",
            ),
            (
                "K=\"sk_live_SECRET\n",
                ".env line 1: the value of K opens a quote",
            ),
            ("K=leash://x?bogus=1\n", ".env line 1: K: the reference"),
        ];
        for (text, want) in cases {
            let e = parse(".env", text).expect_err(text);
            assert!(e.starts_with(want), "{text:?}: {e}");
            assert!(!e.contains("sk_live"), "the error shows the value: {e}");
        }
    }
}
