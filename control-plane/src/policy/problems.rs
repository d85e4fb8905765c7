//! Parser and validator diagnostics as [`Problem`]s with a line and column.

use miette::Diagnostic;

use super::error::Problem;

pub(super) fn position(text: &str, offset: usize) -> (u32, u32) {
    // The offset comes from the parser's diagnostic: never slice inside a character.
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() as u32 + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0) as u32
        + 1;
    (line, col)
}

pub(super) fn problems(text: &str, d: &dyn Diagnostic, fallback: String) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(related) = d.related() {
        for r in related {
            out.extend(problems(text, r, r.to_string()));
        }
        if !out.is_empty() {
            return out;
        }
    }
    let help = d.help().map(|h| format!(" ({h})")).unwrap_or_default();
    let label = d.labels().and_then(|mut l| l.next());
    let (line, col) = label.map(|l| position(text, l.offset())).unwrap_or((0, 0));
    out.push(Problem {
        line,
        col,
        message: format!("{fallback}{help}"),
    });
    out
}
