use proptest::prelude::*;
use serde_json::Value;

use super::*;

fn fault(text: &str) -> JsonFault {
    match check(text) {
        Err(e) => e.fault,
        Ok(()) => panic!("{text:?} should be refused"),
    }
}

#[test]
fn accepts_what_rfc_8259_allows_and_keeps_big_integers() {
    for text in [
        "0",
        "-0",
        "1E2",
        "1.0",
        "-1.5e-3",
        "1e-400",
        "123456789012345678901234567890",
        "\"\\u00e9\\ud83d\\ude00\\\"\\\\\\/\\b\\f\\n\\r\\t\"",
        "\"é😀\u{7f}\"",
        " {\"b\" :\t[1 ,\n2],\r\"a\":{} } ",
        "[[],{},\"\",null,true,false]",
    ] {
        assert_eq!(check(text), Ok(()), "{text:?}");
    }
}

#[test]
fn refuses_numbers_that_are_not_finite_floats() {
    for text in ["1e400", "-1e999", "[1.8e308]", "{\"a\":1e309}"] {
        assert_eq!(fault(text), JsonFault::NumberOutOfRange, "{text:?}");
    }
    assert_eq!(check("1.7976931348623157e308"), Ok(()));
    // Rust's parser rounds these to f64::MAX; serde_json's default refuses
    // them, so a reader of the event would fail: refused too.
    for text in ["1.7976931348623158e308", "[-1.7976931348623159e308]"] {
        assert_eq!(fault(text), JsonFault::NumberOutOfRange, "{text:?}");
        assert!(serde_json::from_str::<serde_json::Value>(text).is_err());
    }
}

#[test]
fn refuses_lone_and_misordered_surrogates_and_bad_escapes() {
    for text in [
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\udc00\\ud800\"",
        "\"\\ud800\\u0041\"",
        "\"\\ud800x\"",
        "{\"\\ud83d\":1}",
    ] {
        assert_eq!(fault(text), JsonFault::LoneSurrogate, "{text:?}");
    }
    assert_eq!(fault("\"\\q\""), JsonFault::BadEscape);
    assert_eq!(fault("\"\\x41\""), JsonFault::BadEscape);
    assert!(matches!(fault("\"\\u12\""), JsonFault::Expected(_)));
    assert_eq!(fault("\"a\tb\""), JsonFault::ControlCharacter);
    assert_eq!(fault("\"a\u{0}b\""), JsonFault::ControlCharacter);
}

#[test]
fn refuses_duplicate_keys_compared_after_decoding() {
    assert_eq!(
        fault("{\"a\":1,\"a\":2}"),
        JsonFault::DuplicateKey("a".into())
    );
    assert_eq!(
        fault("{\"a\":1,\"\\u0061\":2}"),
        JsonFault::DuplicateKey("a".into())
    );
    assert_eq!(
        fault("{\"😀\":1,\"\\ud83d\\ude00\":2}"),
        JsonFault::DuplicateKey("😀".into())
    );
    // Past the short list of keys, the set finds duplicates as well.
    let many: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
    assert_eq!(check(&format!("{{{}}}", many.join(","))), Ok(()));
    for dup in ["k0", "k15", "k16", "k39"] {
        assert_eq!(
            fault(&format!("{{{},\"{dup}\":0}}", many.join(","))),
            JsonFault::DuplicateKey(dup.into())
        );
    }
    // The same key in different objects is fine.
    assert_eq!(check("[{\"a\":1},{\"a\":{\"a\":2}}]"), Ok(()));
}

#[test]
fn refuses_nesting_deeper_than_the_limit() {
    let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    assert_eq!(check(&nested(MAX_DEPTH)), Ok(()));
    assert_eq!(fault(&nested(MAX_DEPTH + 1)), JsonFault::TooDeep);
    let objects = |n: usize| format!("{}1{}", "{\"k\":".repeat(n), "}".repeat(n));
    assert_eq!(check(&objects(MAX_DEPTH)), Ok(()));
    assert_eq!(fault(&objects(MAX_DEPTH + 1)), JsonFault::TooDeep);
    // Far past any stack: refused at the limit, not by overflowing.
    assert_eq!(fault(&"[".repeat(1 << 20)), JsonFault::TooDeep);
}

#[test]
fn refuses_what_the_grammar_does_not_allow() {
    for text in [
        "",
        " ",
        "01",
        "1.",
        ".5",
        "+1",
        "1e",
        "-",
        "NaN",
        "Infinity",
        "[1,]",
        "{\"a\":1,}",
        "{a:1}",
        "'a'",
        "[1 2]",
        "\"open",
        "tru",
        "nul",
        "\u{a0}1",
        "[\u{feff}]",
    ] {
        assert!(check(text).is_err(), "{text:?} should be refused");
    }
    assert_eq!(fault("{} {}"), JsonFault::TrailingText);
    assert_eq!(fault("1 2"), JsonFault::TrailingText);
}

#[test]
fn stored_text_has_no_whitespace_around_it_and_no_carriage_return() {
    assert_eq!(check_stored("{ \"a\" :\t\n1 }"), Ok(()));
    assert_eq!(
        check_stored("{\"a\":\r\n1}").map_err(|e| e.fault),
        Err(JsonFault::CarriageReturn)
    );
    for text in [" {}", "{}\n", "\t1", "1\r"] {
        assert_eq!(
            check_stored(text).map_err(|e| e.fault),
            Err(JsonFault::SurroundingWhitespace),
            "{text:?}"
        );
    }
}

#[test]
fn errors_say_where() {
    let err = check("[1, 1e400]").unwrap_err();
    assert_eq!(err.offset, 4);
    assert_eq!(
        err.to_string(),
        "a number a 64-bit float reader cannot take (not finite, or at the edge serde_json refuses) at byte 4"
    );
}

#[test]
fn pretty_keeps_every_token_as_written() {
    let text = "{\"n\":123456789012345678901234567890,\"e\":\"\\u00e9 ,:{\\\"\",\"l\":[1E2, -0 ,{}],\"o\":{ }}";
    assert_eq!(
        pretty(text),
        "{\n  \"n\": 123456789012345678901234567890,\n  \"e\": \"\\u00e9 ,:{\\\"\",\n  \"l\": [\n    1E2,\n    -0,\n    {}\n  ],\n  \"o\": {}\n}"
    );
    let value: Value = serde_json::from_str("{\"a\":[1,{\"b\":null}],\"c\":\"x\"}").unwrap();
    assert_eq!(
        pretty(&value.to_string()),
        serde_json::to_string_pretty(&value).unwrap()
    );
}

/// Writes every non-ASCII character of the strings in `json` as `\u` escapes
/// (astral ones as surrogate pairs), as some encoders do.
fn ascii_escaped(json: &str) -> String {
    let mut out = String::new();
    let mut units = [0u16; 2];
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

fn value(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const PIECES: [&str; 29] = [
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"a\"",
    "\"\\u0061\"",
    "\"\\ud83d\\ude00\"",
    "\"😀\"",
    "\"\\ud800\"",
    "\"\\udc00\"",
    "\"\\n\"",
    "\"\t\"",
    "\"\\q\"",
    "1",
    "-0",
    "0.5",
    "1E2",
    "1e400",
    "-1e-400",
    "01",
    "1.",
    "true",
    "null",
    "fals",
    " ",
    "\n",
    "\"k\":",
];

/// Fragments that make JSON, nearly-JSON and broken JSON when strung together,
/// and valid JSON with a fragment dropped in somewhere.
fn soup() -> impl Strategy<Value = String> {
    let strung = prop::collection::vec(prop::sample::select(PIECES.to_vec()), 0..24)
        .prop_map(|parts| parts.concat());
    let spliced = (
        value(4),
        any::<prop::sample::Index>(),
        prop::sample::select(PIECES.to_vec()),
    )
        .prop_map(|(value, at, piece)| {
            let mut text = serde_json::to_string(&value).unwrap();
            let boundaries: Vec<usize> = (0..=text.len())
                .filter(|i| text.is_char_boundary(*i))
                .collect();
            text.insert_str(boundaries[at.index(boundaries.len())], piece);
            text
        });
    prop_oneof![strung, spliced]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever serde_json writes from a `Value` is accepted, compact, pretty
    /// or with `\u` escapes, as long as it is no deeper than the limit.
    #[test]
    fn accepts_what_serde_json_writes(value in value(8)) {
        let compact = serde_json::to_string(&value).unwrap();
        prop_assert_eq!(check_stored(&compact), Ok(()));
        prop_assert_eq!(check(&serde_json::to_string_pretty(&value).unwrap()), Ok(()));
        let escaped = ascii_escaped(&compact);
        prop_assert_eq!(check(&escaped), Ok(()));
        // serde_json's float parsing is not exact without `float_roundtrip`:
        // compare parses of the different spellings, not with the original.
        let parsed = serde_json::from_str::<Value>(&compact).unwrap();
        prop_assert_eq!(serde_json::from_str::<Value>(&escaped).unwrap(), parsed.clone());
        prop_assert_eq!(serde_json::from_str::<Value>(&pretty(&compact)).unwrap(), parsed);
    }

    /// Accepted text always parses with serde_json; text serde_json parses is
    /// refused only for a documented rule that serde_json does not enforce.
    #[test]
    fn agrees_with_serde_json_except_for_documented_rules(text in soup()) {
        let ours = check(&text);
        let theirs = serde_json::from_str::<Value>(&text);
        match (&ours, &theirs) {
            (Ok(()), Err(e)) => prop_assert!(false, "accepted {:?}, serde_json says {}", text, e),
            (Err(e), Ok(_)) => prop_assert!(
                matches!(e.fault, JsonFault::DuplicateKey(_) | JsonFault::TooDeep),
                "refused {:?} ({}), serde_json accepts it", text, e
            ),
            _ => {}
        }
    }

    /// Arbitrary text never panics the checker or the indenter.
    #[test]
    fn never_panics_on_any_text(text in any::<String>()) {
        let _ = check(&text);
        let _ = pretty(&text);
    }
}
