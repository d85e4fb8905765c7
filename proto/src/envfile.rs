//! The `.env`-style files `leash exec --env-file F` reads, as a migrated project keeps
//! them: each `VAR=leash://…` line names a credential, each plain `VAR=value` line is
//! passed through as it is.
//!
//! The rules: blank lines and lines starting with `#` are skipped; an `export ` prefix is
//! accepted; a value in matching single or double quotes loses the quotes (nothing inside
//! is unescaped). A malformed line is an error that names the file and the line number
//! and never shows any of the line but a valid variable name or a reference (a plain
//! line may hold a key not yet migrated, and a line missing its `VAR=` may be a bare key
//! that itself contains `=`, as base64 and URLs do).

use crate::reference::{self, Reference, ReferenceError};

/// What a variable is set to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A plain value, passed through.
    Plain(String),
    /// A credential to fetch.
    Reference(Reference),
}

/// One `VAR=…` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Its 1-based line number.
    pub number: usize,
    /// The variable.
    pub var: String,
    /// Its value.
    pub value: Value,
}

/// Why an env file was refused: the file, the line number, and what was wrong, never the
/// line's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvFileError {
    /// No `=` on a line that is not blank or a comment.
    #[error(
        "{path} line {line}: expected VAR=VALUE (or VAR=leash://NAME), a # comment or a blank line"
    )]
    NotAnAssignment {
        /// The file, as the user named it.
        path: String,
        /// 1-based.
        line: usize,
    },
    /// The text before the first `=` is not a variable name. It is not quoted: a line
    /// without `VAR=` may be a bare value that contains `=` itself.
    #[error("{path} line {line}: the text before the first = is not a variable name (letters, digits and _, not starting with a digit); the line is not shown, as it may hold a secret")]
    BadVariable {
        /// The file, as the user named it.
        path: String,
        /// 1-based.
        line: usize,
    },
    /// A value that opens a quote and does not close it.
    #[error("{path} line {line}: the value of {var} opens a quote it does not close")]
    OpenQuote {
        /// The file, as the user named it.
        path: String,
        /// 1-based.
        line: usize,
        /// The variable (a valid name).
        var: String,
    },
    /// A `leash://` value that is not a good reference (a reference holds no secret, so
    /// the error quotes it).
    #[error("{path} line {line}: {var}: {source}")]
    Reference {
        /// The file, as the user named it.
        path: String,
        /// 1-based.
        line: usize,
        /// The variable (a valid name).
        var: String,
        /// What was wrong with the reference (boxed: it is large, and rare).
        source: Box<ReferenceError>,
    },
}

/// Whether `var` is a name a shell can export.
pub fn valid_var(var: &str) -> bool {
    !var.is_empty()
        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !var.starts_with(|c: char| c.is_ascii_digit())
}

/// Parse the text of env file `path` (shown in errors).
pub fn parse(path: &str, text: &str) -> Result<Vec<Line>, EnvFileError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let number = i + 1;
        let line = raw.trim_start();
        if line.trim_end().is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((var, value)) = line.split_once('=') else {
            return Err(EnvFileError::NotAnAssignment {
                path: path.to_string(),
                line: number,
            });
        };
        let var = var.trim_end();
        if !valid_var(var) {
            return Err(EnvFileError::BadVariable {
                path: path.to_string(),
                line: number,
            });
        }
        let value = unquote(value.trim()).ok_or_else(|| EnvFileError::OpenQuote {
            path: path.to_string(),
            line: number,
            var: var.to_string(),
        })?;
        let value = if reference::is_reference(value) {
            Value::Reference(
                reference::parse(value).map_err(|source| EnvFileError::Reference {
                    path: path.to_string(),
                    line: number,
                    var: var.to_string(),
                    source: Box::new(source),
                })?,
            )
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
                ".env line 3: the text before the first = is not a variable name",
            ),
            (
                "=sk_live_SECRET\n",
                ".env line 1: the text before the first = is not a variable name",
            ),
            // A bare value that holds `=` itself: nothing of it is shown.
            (
                "A=1\npostgres://svc:sk_live_SECRET@db/app?sslmode=require\n",
                ".env line 2: the text before the first = is not a variable name",
            ),
            (
                "c2tfbGl2ZV9TRUNSRVQ+/w==\n",
                ".env line 1: the text before the first = is not a variable name",
            ),
            (
                "K=\"sk_live_SECRET\n",
                ".env line 1: the value of K opens a quote",
            ),
            ("K=leash://x?bogus=1\n", ".env line 1: K: the reference"),
        ];
        for (text, want) in cases {
            let e = parse(".env", text).expect_err(text).to_string();
            assert!(e.starts_with(want), "{text:?}: {e}");
            assert!(
                !e.contains("sk_live") && !e.contains("c2tf"),
                "the error shows the value: {e}"
            );
        }
    }
}
