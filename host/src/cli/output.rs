//! Text for people. The server's JSON is read leniently: a missing field
//! prints as `?` instead of failing, so output stays useful if the server
//! grows or renames fields (`--json` is the exact, stable form).
//!
//! Event data and states are printed as the text the server sent (`RawValue`),
//! never re-encoded through `Value`: a 30-digit integer stays one, and so does
//! every escape and key order.

use std::io::{self, Write};

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::json_text::pretty;

/// A field as text: strings bare, null as `?`, anything else as compact JSON.
pub(crate) fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "?".to_owned(),
        other => other.to_string(),
    }
}

/// `name@version`, whether the server sends that string or an object.
fn module_label(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Object(_) if value["name"].is_string() => Some(format!(
            "{}@{}",
            text(&value["name"]),
            text(&value["version"])
        )),
        other => Some(other.to_string()),
    }
}

/// A JSON value's text as sent, `null` included (unlike `Option`'s default).
fn raw_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn raw_or_unknown(raw: Option<&RawValue>) -> &str {
    raw.map_or("?", RawValue::get)
}

/// One recorded event, as the text output reads it.
#[derive(Deserialize)]
pub(crate) struct EventText<'a> {
    #[serde(default)]
    position: Value,
    #[serde(default)]
    aggregate_type: Value,
    #[serde(default)]
    aggregate_id: Value,
    #[serde(default)]
    version: Value,
    #[serde(default)]
    event_type: Value,
    #[serde(borrow, default, deserialize_with = "raw_text")]
    data: Option<&'a RawValue>,
}

impl EventText<'_> {
    pub(crate) fn position(&self) -> Option<u64> {
        self.position.as_u64()
    }
}

/// A command's answer.
#[derive(Deserialize)]
pub(crate) struct SendText<'a> {
    #[serde(default)]
    aggregate_type: Value,
    #[serde(default)]
    aggregate_id: Value,
    #[serde(default)]
    version: Value,
    #[serde(default)]
    position: Value,
    #[serde(default)]
    module: Value,
    #[serde(borrow, default)]
    events: Vec<EventText<'a>>,
}

/// An aggregate's state.
#[derive(Deserialize)]
pub(crate) struct StateText<'a> {
    #[serde(default)]
    aggregate_type: Value,
    #[serde(default)]
    aggregate_id: Value,
    #[serde(default)]
    version: Value,
    /// Servers before `folded_by` sent only this (the same module).
    #[serde(default)]
    module: Value,
    #[serde(default)]
    folded_by: Value,
    #[serde(default)]
    last_event_producer: Value,
    #[serde(borrow, default, deserialize_with = "raw_text")]
    state: Option<&'a RawValue>,
}

/// A page of events.
#[derive(Deserialize)]
pub(crate) struct EventPageText<'a> {
    #[serde(borrow, default)]
    events: Vec<EventText<'a>>,
}

fn stream_name(aggregate_type: &Value, aggregate_id: &Value) -> String {
    format!("{}/{}", text(aggregate_type), text(aggregate_id))
}

/// `bank-account/acc-1 -> version 3 (position 17) by bank-account@1.0.0`,
/// then one line per new event.
pub(crate) fn send_result(out: &mut dyn Write, v: &SendText) -> io::Result<()> {
    write!(
        out,
        "{} -> version {}",
        stream_name(&v.aggregate_type, &v.aggregate_id),
        text(&v.version)
    )?;
    if !v.position.is_null() {
        write!(out, " (position {})", text(&v.position))?;
    }
    if let Some(module) = module_label(&v.module) {
        write!(out, " by {module}")?;
    }
    writeln!(out)?;
    if v.events.is_empty() {
        return writeln!(out, "  (no new events)");
    }
    for e in &v.events {
        writeln!(
            out,
            "  #{} v{} {} {}",
            text(&e.position),
            text(&e.version),
            text(&e.event_type),
            raw_or_unknown(e.data)
        )?;
    }
    Ok(())
}

/// `bank-account/acc-1 @ version 3 (bank-account@1.0.0)`, then the state,
/// indented without re-encoding it. When the module that folded the state is
/// not the one that produced the last event folded (a past version, a hot
/// swap): `(folded by bank-account@2.0.0; last event by bank-account@1.0.0)`.
pub(crate) fn state_result(out: &mut dyn Write, v: &StateText) -> io::Result<()> {
    write!(
        out,
        "{} @ version {}",
        stream_name(&v.aggregate_type, &v.aggregate_id),
        text(&v.version)
    )?;
    let folded_by = module_label(&v.folded_by).or_else(|| module_label(&v.module));
    match (folded_by, module_label(&v.last_event_producer)) {
        (Some(folded), Some(producer)) if folded != producer => {
            write!(out, " (folded by {folded}; last event by {producer})")?;
        }
        (Some(folded), _) => write!(out, " ({folded})")?,
        (None, Some(producer)) => write!(out, " (last event by {producer})")?,
        (None, None) => {}
    }
    writeln!(out)?;
    writeln!(out, "{}", pretty(raw_or_unknown(v.state)))
}

/// `#17 bank-account/acc-1 v3 Deposited {"amount":5}`
pub(crate) fn event_line(out: &mut dyn Write, e: &EventText) -> io::Result<()> {
    writeln!(
        out,
        "#{} {} v{} {} {}",
        text(&e.position),
        stream_name(&e.aggregate_type, &e.aggregate_id),
        text(&e.version),
        text(&e.event_type),
        raw_or_unknown(e.data)
    )
}

pub(crate) fn event_page(out: &mut dyn Write, v: &EventPageText) -> io::Result<()> {
    for e in &v.events {
        event_line(out, e)?;
    }
    Ok(())
}

/// `uploaded bank-account@1.0.0: component, 1.2 MiB, sha256:..., active`
pub(crate) fn module_pushed(out: &mut dyn Write, created: bool, v: &Value) -> io::Result<()> {
    write!(
        out,
        "{} {}@{}: {}, {}, {}",
        if created { "uploaded" } else { "unchanged" },
        text(&v["name"]),
        text(&v["version"]),
        text(&v["kind"]),
        size(&v["size"]),
        text(&v["digest"])
    )?;
    if v["active"].as_bool() == Some(true) {
        write!(out, ", active")?;
    }
    writeln!(out)
}

pub(crate) fn module_activated(out: &mut dyn Write, v: &Value) -> io::Result<()> {
    match v["canary_percent"].as_u64() {
        Some(percent) => writeln!(
            out,
            "{}@{} is a canary for {percent}% of the aggregate ids ({})",
            text(&v["name"]),
            text(&v["version"]),
            text(&v["digest"])
        ),
        None => writeln!(
            out,
            "{}@{} is now active ({})",
            text(&v["name"]),
            text(&v["version"]),
            text(&v["digest"])
        ),
    }
}

pub(crate) fn module_rolled_back(out: &mut dyn Write, v: &Value) -> io::Result<()> {
    let name = text(&v["name"]);
    if v["canary_dropped"].as_bool() == Some(true) {
        write!(
            out,
            "{name}: canary {} rolled back; {} decides",
            text(&v["from"]),
            text(&v["to"])
        )?;
    } else {
        write!(
            out,
            "{name}: rolled back from {} to {}",
            text(&v["from"]),
            text(&v["to"])
        )?;
    }
    if v["forced"].as_bool() == Some(true) {
        let retired: Vec<String> = v["retired"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        writeln!(
            out,
            " (forced: retired {}; every aggregate goes back)",
            retired.join(", ")
        )
    } else {
        writeln!(
            out,
            " (aggregates whose last event {} produced stay on it; --force moves them back too)",
            text(&v["from"])
        )
    }
}

/// A what-if report: totals, a row per command type, then the samples with
/// the recorded outcome and the candidate's side by side.
pub(crate) fn module_whatif(out: &mut dyn Write, v: &Value) -> io::Result<()> {
    const KINDS: [&str; 6] = [
        "unchanged",
        "accepted_to_rejected",
        "rejected_to_accepted",
        "different_events",
        "different_rejection",
        "failed",
    ];
    writeln!(
        out,
        "{} decided {} journaled commands of {} again:",
        text(&v["candidate"]),
        v["commands"].as_u64().unwrap_or(0),
        text(&v["module"])
    )?;
    if v["journal_enabled"] == false {
        writeln!(
            out,
            "warning: this server journals no commands (--journal-days 0): nothing to decide again"
        )?;
    }
    let count = |counts: &Value, kind: &str| counts[kind].as_u64().unwrap_or(0);
    for kind in KINDS {
        writeln!(out, "  {:<22}{}", kind, count(&v["totals"], kind))?;
    }
    if let Some(types) = v["by_command_type"].as_object() {
        writeln!(out, "by command type:")?;
        for (name, counts) in types {
            let parts: Vec<String> = KINDS
                .iter()
                .filter(|k| count(counts, k) > 0)
                .map(|k| format!("{k} {}", count(counts, k)))
                .collect();
            writeln!(out, "  {name}: {}", parts.join(", "))?;
        }
    }
    let show = |o: &Value| match o["outcome"].as_str() {
        Some("accepted") => {
            let events: Vec<String> = o["events"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| format!("{} {}", text(&e["event_type"]), text(&e["data"])))
                .collect();
            format!("accepted [{}]", events.join(", "))
        }
        Some("rejected") => format!("rejected {}", text(&o["code"])),
        Some("malformed") => format!("malformed: {}", text(&o["reason"])),
        _ => format!("failed: {}", text(&o["error"])),
    };
    for s in v["samples"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "{} {}/{} at version {}: {}",
            text(&s["change"]),
            text(&s["aggregate_id"]),
            text(&s["command_id"]),
            s["decided_at"].as_u64().unwrap_or(0),
            text(&s["command"])
        )?;
        writeln!(out, "    was  {}", show(&s["recorded"]))?;
        writeln!(out, "    now  {}", show(&s["candidate"]))?;
    }
    if let Some(next) = v["next_since"].as_str() {
        writeln!(out, "more: --since {next}")?;
    }
    Ok(())
}

/// One row per version; `*` marks the active one.
pub(crate) fn module_list(out: &mut dyn Write, v: &Value) -> io::Result<()> {
    let mut rows = vec![
        [
            "MODULE", "VERSION", "ACTIVE", "KIND", "SIZE", "UPLOADED", "DIGEST",
        ]
        .map(String::from),
    ];
    for module in v["modules"].as_array().into_iter().flatten() {
        for version in module["versions"].as_array().into_iter().flatten() {
            rows.push([
                text(&module["name"]),
                text(&version["version"]),
                if version["active"].as_bool() == Some(true) {
                    "*"
                } else {
                    ""
                }
                .to_owned(),
                text(&version["kind"]),
                size(&version["size"]),
                version["uploaded_at_ms"]
                    .as_u64()
                    .map_or("?".to_owned(), utc_time),
                short_digest(&text(&version["digest"])),
            ]);
        }
    }
    if rows.len() == 1 {
        return writeln!(out, "no modules");
    }
    let mut widths = [0; 7];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn size(value: &Value) -> String {
    let Some(bytes) = value.as_u64() else {
        return text(value);
    };
    let b = bytes as f64; // shown to one decimal, so precision loss is moot
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", b / 1024.0),
        _ => format!("{:.1} MiB", b / 1_048_576.0),
    }
}

/// Enough of a digest to tell versions apart in a table, like `docker images`.
fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algorithm, hex)) => {
            format!("{algorithm}:{}", hex.chars().take(12).collect::<String>())
        }
        None => digest.chars().take(12).collect(),
    }
}

/// `2023-11-14 22:13:20Z` from unix milliseconds, without a date crate.
fn utc_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rest = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> String {
        let mut out = Vec::new();
        f(&mut out).expect("writing to memory");
        String::from_utf8(out).expect("utf-8")
    }

    const EVENT: &str = r#"{"position":17,"aggregate_type":"bank-account","aggregate_id":"acc-1","version":3,
        "event_id":"e","event_type":"Deposited","data":{"amount":5, "big":123456789012345678901234567890,"k":"\u00e9","k":1E2},
        "metadata":{"recorded_at_ms":0,"extra":{}}}"#;
    const DATA: &str = r#"{"amount":5, "big":123456789012345678901234567890,"k":"\u00e9","k":1E2}"#;

    fn parse<'a, T: Deserialize<'a>>(text: &'a str) -> T {
        serde_json::from_str(text).expect("test JSON")
    }

    #[test]
    fn formats_send_and_events_with_the_data_as_sent() {
        let reply = format!(
            r#"{{"aggregate_type":"bank-account","aggregate_id":"acc-1","version":3,
                "position":17,"module":"bank-account@1.0.0","events":[{EVENT}]}}"#
        );
        assert_eq!(
            render(|out| send_result(out, &parse(&reply))),
            format!(
                "bank-account/acc-1 -> version 3 (position 17) by bank-account@1.0.0\n  #17 v3 Deposited {DATA}\n"
            )
        );
        let page = format!(r#"{{"events":[{EVENT}],"next_position":18,"head":17}}"#);
        assert_eq!(
            render(|out| event_page(out, &parse(&page))),
            format!("#17 bank-account/acc-1 v3 Deposited {DATA}\n")
        );
        let nothing =
            r#"{"aggregate_type":"t","aggregate_id":"a","version":0,"position":null,"events":[]}"#;
        assert_eq!(
            render(|out| send_result(out, &parse(nothing))),
            "t/a -> version 0\n  (no new events)\n"
        );
    }

    #[test]
    fn formats_state_naming_the_folding_module_and_the_last_producer() {
        let past = r#"{"aggregate_type":"t","aggregate_id":"a","version":1,"module":"m@2.0.0",
                       "folded_by":"m@2.0.0","last_event_producer":"m@1.0.0","state":{}}"#;
        assert_eq!(
            render(|out| state_result(out, &parse(past))),
            "t/a @ version 1 (folded by m@2.0.0; last event by m@1.0.0)\n{}\n"
        );
        let same = r#"{"aggregate_type":"t","aggregate_id":"a","version":1,"module":"m@2.0.0",
                       "folded_by":"m@2.0.0","last_event_producer":"m@2.0.0","state":{}}"#;
        assert_eq!(
            render(|out| state_result(out, &parse(same))),
            "t/a @ version 1 (m@2.0.0)\n{}\n"
        );
    }

    #[test]
    fn formats_state_with_a_module_object() {
        let reply = r#"{"aggregate_type":"t","aggregate_id":"a b","version":0,
                        "module":{"name":"m","version":"2.0.0"},"state":{"x":1,"n":100000000000000000000001}}"#;
        assert_eq!(
            render(|out| state_result(out, &parse(reply))),
            "t/a b @ version 0 (m@2.0.0)\n{\n  \"x\": 1,\n  \"n\": 100000000000000000000001\n}\n"
        );
    }

    #[test]
    fn formats_the_module_table() {
        let list = json!({"modules":[{"name":"bank-account","active_version":"1.0.0","versions":[
            {"version":"1.0.0","kind":"component","digest":"sha256:0123456789abcdef","size":2048,
             "uploaded_at_ms":1_700_000_000_000u64,"active":true}]}]});
        assert_eq!(
            render(|out| module_list(out, &list)),
            "MODULE        VERSION  ACTIVE  KIND       SIZE     UPLOADED              DIGEST\n\
             bank-account  1.0.0    *       component  2.0 KiB  2023-11-14 22:13:20Z  sha256:0123456789ab\n"
        );
        assert_eq!(
            render(|out| module_list(out, &json!({"modules":[]}))),
            "no modules\n"
        );
    }

    #[test]
    fn converts_dates() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc_time(4_102_444_799_000), "2099-12-31 23:59:59Z");
    }
}
