//! The one strict check of JSON text, used wherever JSON enters storage or is
//! served: event data (every appender), commands from clients, and what
//! guests answer (events, rendered states, read-model documents, query answers).
//!
//! Refold keeps JSON as the text it was given and serves that text, never a
//! re-encoding. So what is accepted must be what every reader can take:
//!
//! - RFC 8259 grammar: one value; whitespace only space, tab, LF and CR.
//! - At most [`MAX_DEPTH`] arrays and objects deep. A reader parsing a whole
//!   page (which wraps event data a few levels deeper) with serde_json's
//!   default limit of 128 still copes.
//! - Numbers finite as an f64: `1e400` is refused; a 30-digit integer is
//!   accepted (it is kept and served as written).
//! - Strings: only the escapes JSON has; a `\uD800`-`\uDBFF` escape followed by
//!   a `\uDC00`-`\uDFFF` one, never either alone; no raw control characters.
//! - No key twice in one object, comparing keys after decoding escapes.
//!
//! [`check_stored`] adds two rules for text that is stored and later served
//! inside envelopes, since what is served must be what was stored: no
//! whitespace before or after the value (an envelope cannot carry it), and no
//! carriage return anywhere (Server-Sent Events cannot carry one; inside
//! strings it is escaped as `\r` anyway).

mod pretty;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::HashSet;

pub use pretty::pretty;

/// The deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 64;

/// Why a text is not accepted, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{fault} at byte {offset}")]
pub struct JsonTextError {
    /// Byte offset into the text.
    pub offset: usize,
    pub fault: JsonFault,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JsonFault {
    #[error("expected {0}")]
    Expected(&'static str),
    #[error("nesting deeper than {MAX_DEPTH} arrays and objects")]
    TooDeep,
    #[error(
        "a number a 64-bit float reader cannot take (not finite, or at the edge serde_json refuses)"
    )]
    NumberOutOfRange,
    #[error("an unknown escape")]
    BadEscape,
    #[error("a surrogate escape that is not part of a pair")]
    LoneSurrogate,
    #[error("a raw control character in a string (escape it)")]
    ControlCharacter,
    #[error("the key {0:?} twice in one object")]
    DuplicateKey(String),
    #[error("text after the value")]
    TrailingText,
    #[error("whitespace around the value")]
    SurroundingWhitespace,
    #[error("a carriage return (U+000D) between tokens; Server-Sent Events cannot carry one")]
    CarriageReturn,
}

/// Checks `text` against the rules above.
pub fn check(text: &str) -> Result<(), JsonTextError> {
    let mut checker = Checker {
        bytes: text.as_bytes(),
        pos: 0,
    };
    checker.skip_whitespace();
    checker.value(0)?;
    checker.skip_whitespace();
    if checker.pos < checker.bytes.len() {
        return Err(checker.fail(JsonFault::TrailingText));
    }
    Ok(())
}

/// [`check`], no whitespace before or after the value, no carriage return.
pub fn check_stored(text: &str) -> Result<(), JsonTextError> {
    check(text)?;
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let bytes = text.as_bytes();
    if bytes.first().is_some_and(is_space) {
        return Err(JsonTextError {
            offset: 0,
            fault: JsonFault::SurroundingWhitespace,
        });
    }
    if bytes.last().is_some_and(is_space) {
        return Err(JsonTextError {
            offset: bytes.len() - 1,
            fault: JsonFault::SurroundingWhitespace,
        });
    }
    if let Some(offset) = text.find('\r') {
        return Err(JsonTextError {
            offset,
            fault: JsonFault::CarriageReturn,
        });
    }
    Ok(())
}

/// The bytes that end a run of plain string content: a quote, a backslash, a
/// control character. A table, as serde_json does it: faster than comparisons.
static STRING_STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// The keys seen in one object: a list while it is short (no hashing, no
/// allocation for most objects), a set once it is long (no quadratic scan).
#[derive(Default)]
struct Keys<'a> {
    few: Vec<Cow<'a, str>>,
    many: HashSet<Cow<'a, str>>,
}

impl<'a> Keys<'a> {
    const FEW: usize = 16;

    /// Adds `key`; gives it back if the object already has it.
    fn insert(&mut self, key: Cow<'a, str>) -> Option<Cow<'a, str>> {
        if self.many.is_empty() {
            if self.few.contains(&key) {
                return Some(key);
            }
            if self.few.len() < Self::FEW {
                self.few.push(key);
                return None;
            }
            self.many.extend(self.few.drain(..));
        }
        if self.many.contains(&key) {
            return Some(key);
        }
        self.many.insert(key);
        None
    }
}

struct Checker<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Checker<'a> {
    fn fail(&self, fault: JsonFault) -> JsonTextError {
        JsonTextError {
            offset: self.pos,
            fault,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), JsonTextError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.fail(JsonFault::Expected(what)))
        }
    }

    /// `depth` is the number of arrays and objects around this value.
    fn value(&mut self, depth: usize) -> Result<(), JsonTextError> {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string(false).map(drop),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            _ => Err(self.fail(JsonFault::Expected("a value"))),
        }
    }

    fn literal(&mut self, word: &'static str) -> Result<(), JsonTextError> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.fail(JsonFault::Expected(word)))
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), JsonTextError> {
        if depth > MAX_DEPTH {
            return Err(self.fail(JsonFault::TooDeep));
        }
        self.pos += 1;
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        let mut keys = Keys::default();
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.fail(JsonFault::Expected("a key in double quotes")));
            }
            let at = self.pos;
            let key = self.string(true)?;
            if let Some(dup) = keys.insert(key) {
                return Err(JsonTextError {
                    offset: at,
                    fault: JsonFault::DuplicateKey(dup.into_owned()),
                });
            }
            self.skip_whitespace();
            self.expect(b':', "':' after a key")?;
            self.skip_whitespace();
            self.value(depth)?;
            if !self.next_member(b'}', "',' or '}'")? {
                return Ok(());
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), JsonTextError> {
        if depth > MAX_DEPTH {
            return Err(self.fail(JsonFault::TooDeep));
        }
        self.pos += 1;
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.value(depth)?;
            if !self.next_member(b']', "',' or ']'")? {
                return Ok(());
            }
        }
    }

    /// After a member of an array or object: past a ',' (true: another member
    /// follows) or past `close` (false: the container ends).
    fn next_member(&mut self, close: u8, expected: &'static str) -> Result<bool, JsonTextError> {
        self.skip_whitespace();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                self.skip_whitespace();
                Ok(true)
            }
            Some(c) if c == close => {
                self.pos += 1;
                Ok(false)
            }
            _ => Err(self.fail(JsonFault::Expected(expected))),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), JsonTextError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let integer_digits = match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                1
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.fail(JsonFault::Expected("a digit"))),
        };
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.fail(JsonFault::Expected("a digit after '.'")));
            }
        }
        let mut exponent = false;
        if matches!(self.peek(), Some(b'e' | b'E')) {
            exponent = true;
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.fail(JsonFault::Expected("a digit in the exponent")));
            }
        }
        // Without an exponent, fewer than 300 digits before the point is
        // below 1e300: finite. Only the rest is worth parsing.
        if !exponent && integer_digits < 300 {
            return Ok(());
        }
        // The grammar above is a subset of what Rust's float parser takes, and
        // that parser rounds huge values to infinity instead of failing.
        // Readers parse with serde_json's default (faster, less exact)
        // algorithm, which refuses a few values just under the edge that
        // Rust's parser rounds to f64::MAX (`1.7976931348623158e308`): a
        // number either parser refuses is one some reader cannot read.
        let text = self.text(start, self.pos);
        let readable = serde_json::from_str::<f64>(text).is_ok_and(f64::is_finite);
        match text.parse::<f64>() {
            Ok(n) if n.is_finite() && readable => Ok(()),
            _ => Err(JsonTextError {
                offset: start,
                fault: JsonFault::NumberOutOfRange,
            }),
        }
    }

    /// A string starting at the opening quote. With `decode`, returns its
    /// text with escapes decoded (borrowed when it has none); else nothing.
    fn string(&mut self, decode: bool) -> Result<Cow<'a, str>, JsonTextError> {
        self.pos += 1;
        let mut decoded: Option<String> = None;
        let mut plain_from = self.pos;
        loop {
            match self.peek() {
                None => return Err(self.fail(JsonFault::Expected("a closing '\"'"))),
                Some(b'"') => {
                    let end = self.pos;
                    self.pos += 1;
                    return Ok(match decoded {
                        _ if !decode => Cow::Borrowed(""),
                        None => Cow::Borrowed(self.text(plain_from, end)),
                        Some(mut s) => {
                            s.push_str(self.text(plain_from, end));
                            Cow::Owned(s)
                        }
                    });
                }
                Some(b'\\') => {
                    let plain = self.text(plain_from, self.pos);
                    let c = self.escape()?;
                    if decode {
                        let s = decoded.get_or_insert_with(String::new);
                        s.push_str(plain);
                        s.push(c);
                    }
                    plain_from = self.pos;
                }
                Some(0x00..=0x1f) => return Err(self.fail(JsonFault::ControlCharacter)),
                // Skip to the next byte that matters. The text is a `str`, so
                // multi-byte characters are whole and never match these.
                Some(_) => {
                    let rest = &self.bytes[self.pos..];
                    self.pos += rest
                        .iter()
                        .position(|&b| STRING_STOP[b as usize])
                        .unwrap_or(rest.len());
                }
            }
        }
    }

    fn text(&self, from: usize, to: usize) -> &'a str {
        // Both ends sit next to ASCII quotes or escapes, so on char boundaries.
        std::str::from_utf8(&self.bytes[from..to]).unwrap_or("")
    }

    /// An escape starting at the backslash; returns the character it stands for.
    fn escape(&mut self) -> Result<char, JsonTextError> {
        let at = self.pos;
        self.pos += 1;
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                self.pos += 1;
                let unit = self.hex4()?;
                let lone = || JsonTextError {
                    offset: at,
                    fault: JsonFault::LoneSurrogate,
                };
                return match unit {
                    0xD800..=0xDBFF => {
                        if !self.bytes[self.pos..].starts_with(b"\\u") {
                            return Err(lone());
                        }
                        self.pos += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(lone());
                        }
                        let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                        char::from_u32(code).ok_or_else(lone)
                    }
                    0xDC00..=0xDFFF => Err(lone()),
                    _ => char::from_u32(unit).ok_or_else(lone),
                };
            }
            _ => {
                return Err(JsonTextError {
                    offset: at,
                    fault: JsonFault::BadEscape,
                });
            }
        };
        self.pos += 1;
        Ok(c)
    }

    fn hex4(&mut self) -> Result<u32, JsonTextError> {
        let mut unit = 0;
        for _ in 0..4 {
            let digit = self
                .peek()
                .and_then(|b| (b as char).to_digit(16))
                .ok_or_else(|| self.fail(JsonFault::Expected("four hex digits after \\u")))?;
            unit = unit * 16 + digit;
            self.pos += 1;
        }
        Ok(unit)
    }
}
