//! Small pieces both CLIs (`leash`, `leashctl`) share: durations, tables and JSON,
//! turning a gRPC status into a message and an exit code ([`Fail`]), reading a token to
//! introspect, and writing to stdout that ends quietly when the reader has gone
//! (`leashctl audit tail | head`).

use crate::reason::Reason;

/// Parse a duration such as `30s`, `10m`, `1h`, `7d` into whole seconds.
pub fn parse_secs(s: &str) -> Result<u32, String> {
    // The input is quoted bounded and escaped: it may be anything a caller sent.
    let q = || crate::names::excerpt(s);
    let d = humantime_like(s)
        .ok_or_else(|| format!("{} is not a duration; write e.g. 30s, 10m, 2h", q()))?;
    u32::try_from(d).map_err(|_| format!("{} is too long", q()))
}

fn humantime_like(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "" | "s" | "sec" | "secs" => 1,
        "m" | "min" | "mins" => 60,
        "h" | "hr" | "hrs" => 3600,
        "d" | "day" | "days" => 86400,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Print rows as aligned columns under a header, to stdout. Cells are shown escaped
/// (see [`crate::names::escape`]): a stored value cannot end a row or reach the terminal
/// as a control sequence.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    print_str(&table(header, rows));
}

/// The text [`print_table`] prints.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| crate::names::escape(c).into_owned())
                .collect()
        })
        .collect();
    let mut text = String::new();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() || i >= widths.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    text
}

/// Exit status when stdout's reader has gone: what a shell reports for a tool that
/// SIGPIPE ended (128 + 13), so `set -o pipefail` scripts see the same as with
/// coreutils, but without a signal or a message.
pub const BROKEN_PIPE_EXIT: i32 = 141;

/// Write one line to stdout. If the reader has gone (EPIPE), exit quietly with
/// [`BROKEN_PIPE_EXIT`]; on any other write error, say so and exit 5.
///
/// Rust ignores SIGPIPE, so a write to a closed pipe returns `EPIPE` and `println!`
/// panics. Restoring SIGPIPE's default instead would also kill the CLI, silently, when a
/// daemon closes its socket mid-call, losing the exit code that says "unavailable".
pub fn print_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        stdout_failed(&e);
    }
}

/// Write to stdout without a newline; as [`print_line`].
pub fn print_str(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        stdout_failed(&e);
    }
}

/// End the process after a failed write to stdout: quietly if the reader has gone.
pub fn stdout_failed(e: &std::io::Error) -> ! {
    use std::io::Write;
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(BROKEN_PIPE_EXIT);
    }
    let _ = writeln!(std::io::stderr(), "error: cannot write to stdout: {e}");
    std::process::exit(5);
}

/// `println!` for the CLIs: a closed stdout ends the process quietly instead of
/// panicking (see [`cli::print_line`](crate::cli::print_line)).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::print_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::print_line(format_args!($($arg)*))
    };
}

/// Format unix seconds as RFC 3339 (UTC), or `-` for 0.
pub fn time(unix: i64) -> String {
    if unix <= 0 {
        return "-".into();
    }
    let secs = unix as u64;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Civil-from-days (proleptic Gregorian), enough for display.
    let days = (d / 86400) as i64;
    let rem = d % 86400;
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The message and exit code for a failed call.
pub fn status_exit(status: &tonic::Status) -> (String, i32) {
    let reason = Reason::of(status);
    let msg = match (reason, status.message()) {
        (_, m) if m.contains("message length too large") => format!(
            "{m}: the request is larger than the service accepts; shorten the names and values you pass"
        ),
        // Shown escaped: a message can quote what a caller sent.
        (_, m) if !m.is_empty() => crate::names::escape(m).into_owned(),
        (Reason::Unavailable, _) => "the service is unavailable".to_string(),
        (r, _) => r.as_str().to_lowercase(),
    };
    (msg, reason.exit_code())
}

/// Write a value as pretty JSON to stdout, as [`print_line`].
pub fn print_json<T: serde::Serialize>(v: &T) {
    print_line(format_args!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_default()
    ));
}

/// A failed command: the message for stderr and the exit code (docs/CLI.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail(pub String, pub i32);

impl Fail {
    /// Bad usage or input (exit 1).
    pub fn usage(m: impl Into<String>) -> Fail {
        Fail(m.into(), 1)
    }

    /// Print `error: MESSAGE` to stderr and return the exit status.
    pub fn exit(self) -> std::process::ExitCode {
        eprintln!("error: {}", self.0);
        std::process::ExitCode::from(self.1 as u8)
    }
}

impl From<tonic::Status> for Fail {
    fn from(s: tonic::Status) -> Self {
        let (m, c) = status_exit(&s);
        Fail(m, c)
    }
}

/// The token `introspect` asks about: the argument, or stdin (at most 64 KiB) when it is
/// absent or `-`; trimmed, and never empty.
pub fn token_arg(arg: Option<&str>) -> Result<String, Fail> {
    use std::io::Read;
    let token = match arg {
        None | Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .take(64 * 1024)
                .read_to_string(&mut s)
                .map_err(|e| Fail::usage(format!("cannot read the token from stdin: {e}")))?;
            s
        }
        Some(t) => t.to_string(),
    };
    if token.trim().is_empty() {
        return Err(Fail::usage(
            "no token given: pass it as an argument or on stdin with `-`",
        ));
    }
    Ok(token.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_secs("10m"), Ok(600));
        assert_eq!(parse_secs("45"), Ok(45));
        assert_eq!(parse_secs("2h"), Ok(7200));
        assert!(parse_secs("soon").is_err());
        assert!(parse_secs("").is_err());
    }

    #[test]
    fn tables_escape_stored_text() {
        let t = table(
            &["ID", "ON_BEHALF_OF", "STATE"],
            &[vec![
                "l-1".into(),
                "eve\u{1b}[8m\nl-2  x  active".into(),
                "revoked\u{7}".into(),
            ]],
        );
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(!t.contains('\u{1b}') && !t.contains('\u{7}'), "{t:?}");
        assert!(t.contains("eve\\x1b[8m\\nl-2  x  active"), "{t}");
        assert!(t.ends_with("revoked\\x07\n"), "{t:?}");
        // Widths are those of the escaped text, so the columns still line up.
        let header = t.lines().next().unwrap_or_default();
        let state_at = header.find("STATE").unwrap_or(0);
        assert_eq!(
            t.lines().nth(1).and_then(|l| l.get(state_at..)),
            Some("revoked\\x07")
        );
    }

    #[test]
    fn status_messages_are_shown_escaped() {
        let (m, code) = status_exit(&Reason::Invalid.status("bad \u{1b}[2J name"));
        assert_eq!((m.as_str(), code), ("bad \\x1b[2J name", 1));
    }

    #[test]
    fn times() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
