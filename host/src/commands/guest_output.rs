//! The rules for what an aggregate's `handle` returns. A guest is untrusted:
//! whatever it says ends up in the log or in a client's error, so each piece
//! is bounded here, and a breach is the module's fault (`invalid_guest_output`,
//! 422), never blamed on the client and never half-written.
//! `docs/wit-contract.md` ("What the host checks") documents each rule.

use crate::store::{
    MAX_EVENT_DATA_LEN, MAX_EVENTS_PER_APPEND, MAX_METADATA_ID_LEN, check_event_type,
};

/// Longest rejection code, in bytes.
pub const MAX_REJECTION_CODE_LEN: usize = 64;
/// The characters of a rejection code besides ASCII letters and digits.
pub const REJECTION_CODE_SEPARATORS: &str = "-_.";
/// Longest rejection message or `malformed` reason, in bytes.
pub const MAX_GUEST_MESSAGE_LEN: usize = 1024;

/// How many events one command may produce: what one append may carry.
pub fn check_event_count(count: usize) -> Result<(), String> {
    if count > MAX_EVENTS_PER_APPEND {
        return Err(format!(
            "handle returned {count} events; a command may produce at most {MAX_EVENTS_PER_APPEND}"
        ));
    }
    Ok(())
}

/// One new event: its type's character set, its data's size and JSON rules.
/// The type is checked first, so the reasons that echo it echo something plain.
pub fn check_event(index: usize, event_type: &str, data: &str) -> Result<(), String> {
    check_event_type(event_type).map_err(|r| format!("event #{index}: {r}"))?;
    if data.len() > MAX_EVENT_DATA_LEN {
        return Err(format!(
            "event #{index} ({event_type}) has {} bytes of data; the limit is {MAX_EVENT_DATA_LEN}",
            data.len()
        ));
    }
    crate::json_text::check_stored(data)
        .map_err(|e| format!("event #{index} ({event_type}) has data that is not JSON: {e}"))
}

/// The module's `name@version` tags every event it produces. Uploads keep it
/// short enough; a version registered before that rule may not be.
pub fn check_producer(label: &str) -> Result<(), String> {
    if label.len() > MAX_METADATA_ID_LEN {
        return Err(format!(
            "its label is {} bytes and events carry at most {MAX_METADATA_ID_LEN}; upload it under a shorter version",
            label.len()
        ));
    }
    Ok(())
}

/// A rejection's code is for machines: 1 to 64 bytes of ASCII letters,
/// digits and `-`, `_`, `.`. Its message is one line for people.
pub fn check_rejection(code: &str, message: &str) -> Result<(), String> {
    if code.is_empty() || code.len() > MAX_REJECTION_CODE_LEN {
        return Err(format!(
            "a rejection code is 1 to {MAX_REJECTION_CODE_LEN} bytes; this one is {}",
            code.len()
        ));
    }
    if !code
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || REJECTION_CODE_SEPARATORS.contains(c))
    {
        return Err(format!(
            "the rejection code \"{}\" holds characters other than ASCII letters, digits and {REJECTION_CODE_SEPARATORS}",
            code.escape_default()
        ));
    }
    check_message("the rejection message", message)
}

/// A `malformed` reason is shown to the client as is.
pub fn check_malformed(reason: &str) -> Result<(), String> {
    check_message("the malformed reason", reason)
}

fn check_message(what: &str, text: &str) -> Result<(), String> {
    if text.len() > MAX_GUEST_MESSAGE_LEN {
        return Err(format!(
            "{what} is {} bytes; the limit is {MAX_GUEST_MESSAGE_LEN}",
            text.len()
        ));
    }
    // Control characters would reach terminals through the CLI (escape
    // sequences); invisible formatting characters (bidi overrides, zero-width
    // spaces) would make a message read as something it is not.
    if text.chars().any(char::is_control) {
        return Err(format!("{what} contains a control character"));
    }
    if let Some(c) = text.chars().find(|&c| is_invisible_format(c)) {
        return Err(format!(
            "{what} contains the invisible formatting character U+{:04X}",
            c as u32
        ));
    }
    Ok(())
}

/// Unicode format characters that change how text reads without showing:
/// bidirectional overrides and isolates, zero-width characters, soft hyphens.
pub fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_may_not_hide_bidi_overrides_or_zero_width_characters() {
        assert!(check_malformed("amount \u{202E}001 si").is_err());
        assert!(check_malformed("zero\u{200B}width").is_err());
        assert_eq!(check_malformed("montant invalide: «5»"), Ok(()));
    }

    #[test]
    fn rejection_codes_are_short_and_plain() {
        assert_eq!(check_rejection("insufficient-funds", "not enough"), Ok(()));
        assert_eq!(check_rejection("a.b_C-9", ""), Ok(()));
        for code in [
            "",
            "has space",
            "comma,",
            "bidi\u{202e}",
            "é",
            &"x".repeat(65),
        ] {
            assert!(check_rejection(code, "m").is_err(), "{code:?}");
        }
        assert!(check_rejection("c", &"m".repeat(1025)).is_err());
        assert!(check_rejection("c", "line\nbreak").is_err());
        assert!(check_rejection("c", "\u{1b}[31mred").is_err());
        assert_eq!(check_rejection("c", &"é".repeat(512)), Ok(()));
    }

    #[test]
    fn events_are_counted_typed_and_checked() {
        assert_eq!(check_event_count(1000), Ok(()));
        assert!(check_event_count(1001).unwrap_err().contains("1001"));
        assert_eq!(check_event(0, "Deposited", "{\"n\":1}"), Ok(()));
        for ty in ["a,b", "a b", "a\u{200b}b", "a\u{202e}b", ""] {
            assert!(check_event(0, ty, "{}").is_err(), "{ty:?}");
        }
        let dup = check_event(3, "T", "{\"a\":1,\"a\":2}").unwrap_err();
        assert!(
            dup.contains("event #3 (T)") && dup.contains("twice"),
            "{dup}"
        );
        assert!(check_event(0, "T", "{} ").is_err());
    }
}
