//! Text a caller chooses, and text shown back to people.
//!
//! One rule for every free-text field a workload sends (on-behalf-of, task names, the
//! names in a request), checked by the agent and again by the control plane, so nothing
//! stored can later forge a line or send an escape sequence to an admin's terminal or a
//! log; and the escaping that every printer and status message applies to stored or
//! received text anyway (data stored before the rule existed, or reaching a printer by
//! another path, is shown escaped, never raw).
//!
//! - [`check_name`]: names and labels: Unicode letters and digits plus `-_.:@/+=` and
//!   space, at most [`MAX_NAME_BYTES`] bytes.
//! - [`check_text`]: values that are not names (an audience is a URL): any printable
//!   character, no control, format or separator characters.
//! - [`escape`]: control and invisible characters as `\x1b`, `\n`, `\u{202e}`.
//! - [`excerpt`]: an escaped, bounded quotation of input for an error message.
//! - [`sanitize`]: turn arbitrary text into a valid name (a default task name taken from
//!   a command path).

use std::borrow::Cow;
use std::fmt::Write as _;

/// Longest name a caller may choose, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Punctuation allowed in a name besides letters and digits.
pub const NAME_PUNCTUATION: &str = "-_.:@/+= ";

/// How many characters of a caller's input an error message quotes at most.
pub const EXCERPT_CHARS: usize = 64;

/// The rule, as error messages state it.
pub const NAME_RULE: &str = "letters, digits, spaces and - _ . : @ / + =, at most 256 bytes";

/// Why a caller's text was refused. Messages name the field and the rule and describe
/// the offending character by code point, never quoting the value itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Over the length cap.
    #[error("{field} is {len} bytes long; at most {max} bytes are allowed")]
    TooLong {
        /// The field, as the caller knows it.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A character outside the allowed set.
    #[error("{field} contains {what} U+{code:04X} at byte {at}; allowed: {rule}")]
    Character {
        /// The field, as the caller knows it.
        field: &'static str,
        /// "a control character", "an invisible formatting character", "the character".
        what: &'static str,
        /// The offending code point.
        code: u32,
        /// Its byte offset.
        at: usize,
        /// The whole rule.
        rule: &'static str,
    },
}

/// Characters that change how text around them is shown without being visible: bidi
/// embeddings, overrides and isolates, zero-width characters, line and paragraph
/// separators, soft hyphens, interlinear annotations and tag characters (Unicode
/// categories Cf, Zl and Zp).
pub fn is_invisible(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x034F
            | 0x061C
            | 0x0600..=0x0605
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

fn unsafe_char(c: char) -> Option<&'static str> {
    if c.is_control() {
        Some("a control character")
    } else if is_invisible(c) {
        Some("an invisible formatting character")
    } else {
        None
    }
}

/// Whether `c` may appear in a name.
pub fn name_char(c: char) -> bool {
    unsafe_char(c).is_none() && (c.is_alphanumeric() || NAME_PUNCTUATION.contains(c))
}

/// Check a name a caller chose (on-behalf-of, a task name, a workload or credential
/// name). An empty value passes: whether a field is required is the caller's business.
pub fn check_name(field: &'static str, value: &str) -> Result<(), NameError> {
    if value.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong {
            field,
            len: value.len(),
            max: MAX_NAME_BYTES,
        });
    }
    match value.char_indices().find(|&(_, c)| !name_char(c)) {
        None => Ok(()),
        Some((at, c)) => Err(NameError::Character {
            field,
            what: unsafe_char(c).unwrap_or("the character"),
            code: c as u32,
            at,
            rule: NAME_RULE,
        }),
    }
}

/// The rule [`check_text`] applies, as error messages state it.
pub const TEXT_RULE: &str =
    "printable characters only (no control or invisible formatting characters)";

/// Check a value that is not a name (an audience URL): printable characters only. Its
/// length is bounded by the request size; show it with [`excerpt`].
pub fn check_text(field: &'static str, value: &str) -> Result<(), NameError> {
    match value
        .char_indices()
        .find_map(|(at, c)| unsafe_char(c).map(|what| (at, c, what)))
    {
        None => Ok(()),
        Some((at, c, what)) => Err(NameError::Character {
            field,
            what,
            code: c as u32,
            at,
            rule: TEXT_RULE,
        }),
    }
}

/// `s` with control and invisible characters escaped (`\n`, `\t`, `\r`, `\x1b`,
/// `\u{202e}`) and backslashes doubled, so what is printed is exactly what is stored and
/// cannot move the cursor, end a line, or change the terminal's state.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || unsafe_char(c).is_some()) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if unsafe_char(c).is_some() => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A quotation of caller input for an error or log message: escaped, at most
/// [`EXCERPT_CHARS`] characters of it, and its full length when it was cut:
/// `"https://aaaa…" (20000 bytes)`.
pub fn excerpt(s: &str) -> String {
    let n = s.chars().count();
    if n <= EXCERPT_CHARS {
        return format!("\"{}\"", escape(s));
    }
    let head: String = s.chars().take(EXCERPT_CHARS).collect();
    format!("\"{}…\" ({} bytes)", escape(&head), s.len())
}

/// Turn arbitrary text into a name that passes [`check_name`]: characters outside the
/// rule become `_`, and it is cut to [`MAX_NAME_BYTES`] on a character boundary.
pub fn sanitize(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = if name_char(c) { c } else { '_' };
        if out.len() + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_people_use_pass() {
        for ok in [
            "",
            "alice",
            "alice@example.com",
            "deploy web",
            "ci/job-42:build=main+fix",
            "Zoë Ωmega 東京",
            "./deploy.sh",
            &"a".repeat(MAX_NAME_BYTES),
        ] {
            assert_eq!(check_name("task name", ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn control_format_and_long_names_are_refused_without_echo() {
        let cases = [
            ("a\u{1b}[8mb", 1, 0x1b, "a control character"),
            ("ok\nstate: revoked", 2, 0x0a, "a control character"),
            ("bell\u{7}", 4, 0x07, "a control character"),
            ("cr\r", 2, 0x0d, "a control character"),
            (
                "x\u{202e}gnp.exe",
                1,
                0x202e,
                "an invisible formatting character",
            ),
            (
                "zero\u{200b}width",
                4,
                0x200b,
                "an invisible formatting character",
            ),
            ("c1\u{9b}31m", 2, 0x9b, "a control character"),
            ("semi;colon", 4, 0x3b, "the character"),
            (
                "tag\u{e0041}",
                3,
                0xe0041,
                "an invisible formatting character",
            ),
        ];
        for (v, at, code, what) in cases {
            let e = check_name("on-behalf-of", v).expect_err(v);
            assert_eq!(
                e,
                NameError::Character {
                    field: "on-behalf-of",
                    what,
                    code,
                    at,
                    rule: NAME_RULE
                },
                "{v:?}"
            );
            let m = e.to_string();
            assert!(m.starts_with("on-behalf-of contains"), "{m}");
            assert!(m.contains(NAME_RULE), "{m}");
            assert!(
                !m.chars().any(|c| c.is_control() || is_invisible(c)),
                "{m:?}"
            );
        }
        let long = "a".repeat(60 * 1024);
        let e = check_name("task name", &long).expect_err("60 KB");
        let m = e.to_string();
        assert!(m.contains("61440 bytes long; at most 256 bytes"), "{m}");
        assert!(m.len() < 200, "{m}");
        assert!(
            check_name("x", &"é".repeat(129)).is_err(),
            "bytes, not chars"
        );
    }

    #[test]
    fn text_allows_urls_but_not_controls() {
        assert_eq!(
            check_text("audience", "https://api.example/v1?x=1&y=%20#f"),
            Ok(())
        );
        assert!(check_text("audience", "https://a\u{1b}]0;x\u{7}").is_err());
        assert!(check_text("audience", "https://a\u{2066}").is_err());
    }

    #[test]
    fn escaping_shows_every_byte_and_hides_nothing() {
        assert_eq!(escape("plain name"), "plain name");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\u{1b}[8m\nstate: active\r\t\u{7}"),
            "a\\x1b[8m\\nstate: active\\r\\t\\x07"
        );
        assert_eq!(escape("x\u{202e}y\u{9b}"), "x\\u{202e}y\\u{009b}");
        assert_eq!(escape("back\\slash"), "back\\\\slash");
        let e = escape("\u{1b}\u{7}\n\r\u{0}\u{7f}\u{85}\u{2028}\u{feff}");
        assert!(
            !e.chars().any(|c| c.is_control() || is_invisible(c)),
            "{e:?}"
        );
    }

    #[test]
    fn excerpts_are_bounded() {
        assert_eq!(excerpt("https://api.example"), "\"https://api.example\"");
        let long = format!("https://{}", "a".repeat(20_000 - 8));
        let x = excerpt(&long);
        assert!(x.starts_with("\"https://aaaa"), "{x}");
        assert!(x.ends_with("…\" (20000 bytes)"), "{x}");
        assert!(x.chars().count() < EXCERPT_CHARS + 20, "{x}");
        assert_eq!(excerpt("a\u{1b}b"), "\"a\\x1bb\"");
    }

    #[test]
    fn sanitized_names_pass_the_rule() {
        assert_eq!(sanitize("./deploy.sh"), "./deploy.sh");
        assert_eq!(sanitize("run\u{1b}[8m(x);"), "run__8m_x__");
        let s = sanitize(&"é".repeat(1000));
        assert!(s.len() <= MAX_NAME_BYTES && s.len() >= MAX_NAME_BYTES - 1);
        assert_eq!(check_name("task name", &s), Ok(()));
    }
}
