//! Indenting JSON text for people without re-encoding it: strings and numbers
//! are copied as written (a 30-digit integer stays one, `\u00e9` stays an
//! escape), only the whitespace between tokens changes.

/// `text` indented by two spaces per level, like `serde_json::to_string_pretty`.
/// Meant for text that is JSON; anything else comes out with its whitespace
/// rearranged but its other characters intact.
pub fn pretty(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 2);
    let mut depth = 0usize;
    let mut chars = text.char_indices().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => {
                out.push('"');
                let mut escaped = false;
                for (_, c) in chars.by_ref() {
                    out.push(c);
                    match c {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                out.push(c);
                if text[at + 1..].trim_start().starts_with(close) {
                    // An empty container stays on one line: `{}`, `[]`.
                    for (_, next) in chars.by_ref() {
                        if next == close {
                            break;
                        }
                    }
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            ' ' | '\t' | '\n' | '\r' => {}
            other => out.push(other),
        }
    }
    out
}
