//! `leash://` references: the text that names a credential (of any kind) in files and
//! environment variables, so a file can hold `API_KEY=leash://stripe-key` instead of the
//! key itself.
//!
//! ```text
//! leash://NAME
//! leash://NAME?action=deploy&audience=https://api.example&ttl=5m&as=ci/job
//! leash://NAME#field            (one field of a JSON-format secret)
//! ```
//!
//! Query values may be percent-encoded (`%26` for `&`, `%23` for `#`). A reference holds
//! no secret, so errors quote it (escaped and bounded by [`names::excerpt`]). `leash get`,
//! `leash exec`, `leash render` and the agent's HTTP API all parse references here.

use crate::names::{self, NameError};

/// What every reference starts with.
pub const SCHEME: &str = "leash://";

/// A parsed reference: which credential, and the options `leash get` would take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reference {
    /// The credential's name.
    pub name: String,
    /// `?action=`: the action class; empty for the credential's default.
    pub action: String,
    /// `?audience=`: empty for the credential's first.
    pub audience: String,
    /// `?ttl=` in seconds; 0 for the credential's default.
    pub ttl_seconds: u32,
    /// `?as=`: the workload, when several match the caller; empty otherwise.
    pub as_workload: String,
    /// `#field`: one field of a JSON-format secret.
    pub field: Option<String>,
}

/// Why a reference was refused. Every message quotes the reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// It does not start with `leash://`.
    #[error("{0} is not a reference: a reference starts with leash://, as in leash://NAME?action=read#field")]
    Scheme(String),
    /// `leash://` with no name after it.
    #[error("the reference {0} names no credential: write leash://NAME")]
    NoName(String),
    /// A name, option or field breaks the naming rule.
    #[error("the reference {reference}: {source}")]
    Name {
        /// The reference, quoted.
        reference: String,
        /// What was wrong.
        source: NameError,
    },
    /// An option that is not one of action, audience, ttl, as.
    #[error("the reference {reference} has an unknown option {option}; the options are action, audience, ttl and as")]
    UnknownOption {
        /// The reference, quoted.
        reference: String,
        /// The option, quoted.
        option: String,
    },
    /// `?action` without `=value`, or `?action=`.
    #[error("the reference {reference} gives option {option} no value; write {option}=VALUE")]
    EmptyOption {
        /// The reference, quoted.
        reference: String,
        /// The option.
        option: String,
    },
    /// The same option twice.
    #[error("the reference {reference} gives option {option} twice")]
    Duplicate {
        /// The reference, quoted.
        reference: String,
        /// The option.
        option: String,
    },
    /// A `%` not followed by two hex digits, or decoding to something other than UTF-8.
    #[error("the reference {reference} has a bad percent-encoding in {option}; write %XX with two hex digits of UTF-8")]
    Encoding {
        /// The reference, quoted.
        reference: String,
        /// The option.
        option: String,
    },
    /// `?ttl=` that is not a duration.
    #[error("the reference {reference}: ttl {message}")]
    Ttl {
        /// The reference, quoted.
        reference: String,
        /// What was wrong with the duration.
        message: String,
    },
    /// `#` with nothing after it.
    #[error("the reference {0} ends in an empty #field; write leash://NAME#FIELD or drop the #")]
    EmptyField(String),
}

/// Whether `text` is meant as a reference (it starts with `leash://`); [`parse`] says
/// whether it is a good one.
pub fn is_reference(text: &str) -> bool {
    text.starts_with(SCHEME)
}

/// Decode `%XX` escapes (and nothing else: `+` stays `+`, as audiences may hold it).
fn decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let ok = bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if !ok {
                return None;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// Parse a reference.
pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
    let quoted = || names::excerpt(text);
    let rest = text
        .strip_prefix(SCHEME)
        .ok_or_else(|| ReferenceError::Scheme(quoted()))?;
    let (rest, field) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (name, query) = match rest.split_once('?') {
        Some((n, q)) => (n, Some(q)),
        None => (rest, None),
    };
    let name_err = |source| ReferenceError::Name {
        reference: quoted(),
        source,
    };
    if name.is_empty() {
        return Err(ReferenceError::NoName(quoted()));
    }
    names::check_name("its credential name", name).map_err(name_err)?;
    let mut r = Reference {
        name: name.to_string(),
        ..Reference::default()
    };
    if let Some(f) = field {
        let f = decode(f).ok_or_else(|| ReferenceError::Encoding {
            reference: quoted(),
            option: "#field".into(),
        })?;
        if f.is_empty() {
            return Err(ReferenceError::EmptyField(quoted()));
        }
        names::check_text("its #field", &f).map_err(name_err)?;
        r.field = Some(f);
    }
    let mut seen: Vec<&str> = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        if pair.is_empty() {
            continue;
        }
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        if !["action", "audience", "ttl", "as"].contains(&key) {
            return Err(ReferenceError::UnknownOption {
                reference: quoted(),
                option: names::excerpt(key),
            });
        }
        if seen.contains(&key) {
            return Err(ReferenceError::Duplicate {
                reference: quoted(),
                option: key.into(),
            });
        }
        seen.push(key);
        let value = decode(raw).ok_or_else(|| ReferenceError::Encoding {
            reference: quoted(),
            option: key.into(),
        })?;
        if value.is_empty() {
            return Err(ReferenceError::EmptyOption {
                reference: quoted(),
                option: key.into(),
            });
        }
        match key {
            "action" => {
                names::check_name("its action", &value).map_err(name_err)?;
                r.action = value;
            }
            "audience" => {
                names::check_text("its audience", &value).map_err(name_err)?;
                r.audience = value;
            }
            "as" => {
                names::check_name("its workload (as)", &value).map_err(name_err)?;
                r.as_workload = value;
            }
            _ => {
                r.ttl_seconds =
                    crate::cli::parse_secs(&value).map_err(|message| ReferenceError::Ttl {
                        reference: quoted(),
                        message,
                    })?;
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_name() {
        assert_eq!(
            parse("leash://stripe-key"),
            Ok(Reference {
                name: "stripe-key".into(),
                ..Reference::default()
            })
        );
        assert!(is_reference("leash://x"));
        assert!(!is_reference("LEASH://x"));
        assert!(!is_reference("sk_live_abc"));
    }

    #[test]
    fn options_and_field() {
        let r = parse("leash://team-web/db?action=deploy&audience=https://api.example&ttl=5m&as=ci/job#password")
            .expect("good reference");
        assert_eq!(r.name, "team-web/db");
        assert_eq!(r.action, "deploy");
        assert_eq!(r.audience, "https://api.example");
        assert_eq!(r.ttl_seconds, 300);
        assert_eq!(r.as_workload, "ci/job");
        assert_eq!(r.field.as_deref(), Some("password"));
    }

    #[test]
    fn percent_encoded_values() {
        let r = parse("leash://api?audience=https://a.example/x%3Fy%3D1%26z%232#f%20g")
            .expect("good reference");
        assert_eq!(r.audience, "https://a.example/x?y=1&z#2");
        assert_eq!(r.field.as_deref(), Some("f g"));
        // `+` is kept (an audience may hold one).
        assert_eq!(parse("leash://api?audience=a+b").unwrap().audience, "a+b");
    }

    #[test]
    fn bad_references_are_errors_that_quote_them() {
        let cases: &[(&str, &str)] = &[
            ("stripe-key", "not a reference"),
            ("leash://", "names no credential"),
            ("leash://?action=read", "names no credential"),
            ("leash://api?colour=red", "unknown option \"colour\""),
            ("leash://api?action", "gives option action no value"),
            ("leash://api?action=", "gives option action no value"),
            (
                "leash://api?action=read&action=deploy",
                "option action twice",
            ),
            ("leash://api?ttl=soon", "ttl \"soon\" is not a duration"),
            (
                "leash://api?audience=%zz",
                "bad percent-encoding in audience",
            ),
            (
                "leash://api?audience=%ff",
                "bad percent-encoding in audience",
            ),
            ("leash://api#", "empty #field"),
            ("leash://a\u{1b}pi", "control character U+001B"),
            ("leash://api?action=re\nad", "control character U+000A"),
        ];
        for (text, want) in cases {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(
                e.contains(&names::excerpt(text)),
                "{text:?}: the error does not quote the reference: {e}"
            );
        }
    }

    /// A small deterministic generator (xorshift), so the never-panics test needs no
    /// extra crate and fails the same way every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn never_panics_on_any_input() {
        const PIECES: &[&str] = &[
            "leash://",
            "?",
            "#",
            "&",
            "=",
            "%",
            "%2",
            "%41",
            "%ff",
            "%e2%80%ae",
            "action",
            "audience",
            "ttl",
            "as",
            "field",
            "5m",
            "99999999999d",
            "api",
            "/",
            ":",
            " ",
            "\u{0}",
            "\n",
            "é",
            "\u{202e}",
            "🙂",
            "+",
            "leash:/",
            "",
            "x",
        ];
        let mut rng = Rng(0x5eed_1ea5);
        for _ in 0..50_000 {
            let n = (rng.next() % 12) as usize;
            let mut s = String::new();
            for _ in 0..n {
                s.push_str(PIECES[(rng.next() as usize) % PIECES.len()]);
            }
            // Either a reference or a message; never a panic.
            match parse(&s) {
                Ok(r) => assert!(!r.name.is_empty()),
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
        // Long inputs are quoted bounded.
        let long = format!("leash://{}", "a".repeat(100_000));
        let e = parse(&long).expect_err("too long").to_string();
        assert!(e.len() < 1_000, "{} bytes", e.len());
    }
}
