//! Event schema versions and upcasters.
//!
//! Events live for decades and their shapes change. Every recorded event
//! carries the schema version its producer declared for its type (1 when it
//! declared none). A module declares the current version of the event types it
//! emits, and registers upcasters: one step each, from a type at one version
//! to the events it now stands for (the same type one version up, a renamed
//! type, or several events when one was split). Before an older event reaches
//! `apply` (an aggregate's, a projection's or a process's), its steps run in
//! order until every event it became is in a shape the module knows. The log
//! itself is never rewritten.
//!
//! ```ignore
//! fn schema() -> Schema {
//!     Schema::new()
//!         .current("Opened", 2)
//!         // v1 `Opened { owner, overdraft_limit }` became `Opened { holder }`
//!         // and, when there was a limit, `OverdraftLimitSet { limit }`.
//!         .upcast("Opened", 1, |data| {
//!             let mut out = vec![Upcast::new("Opened", 2, json!({ "holder": data["owner"] }))];
//!             if data["overdraft_limit"].as_i64().unwrap_or(0) != 0 {
//!                 out.push(Upcast::new("OverdraftLimitSet", 1, json!({ "limit": data["overdraft_limit"] })));
//!             }
//!             Ok(out)
//!         })
//! }
//! ```
//!
//! An event for whose (type, version) no upcaster is registered is decoded as
//! it is: a change that only adds a field with a serde default needs no step.
//! Every other change does, and the host's replay check (`refold module
//! check`) names the streams a missing one breaks before the version goes live.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// The most upcasting steps one chain may take, from a recorded event to
/// one of the events it becomes (a guard against upcasters that lead back to
/// where they started).
pub const MAX_UPCAST_STEPS: usize = 64;
/// The most events one recorded event may become.
pub const MAX_UPCAST_EVENTS: usize = 10_000;

type Step = Box<dyn Fn(Value) -> Result<Vec<Upcast>, String>>;

/// A module's event schema: the current version of each event type it emits
/// and the upcasters from older versions. See the [module docs](self).
#[derive(Default)]
pub struct Schema {
    current: BTreeMap<String, u32>,
    steps: BTreeMap<(String, u32), Step>,
}

/// One event an upcaster produces: its type, the schema version its data is
/// in, and the data (a JSON object, without the `type` tag).
#[derive(Clone, Debug, PartialEq)]
pub struct Upcast {
    pub event_type: String,
    pub version: u32,
    pub data: Value,
}

impl Upcast {
    pub fn new(event_type: impl Into<String>, version: u32, data: Value) -> Self {
        Upcast {
            event_type: event_type.into(),
            version,
            data,
        }
    }
}

/// An event in the shape the module knows now: its type and JSON data text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Current {
    pub event_type: String,
    pub data: String,
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schema")
            .field("current", &self.current)
            .field("steps", &self.steps.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Schema {
    /// No versions declared (every type at 1) and no upcasters.
    pub fn new() -> Self {
        Schema::default()
    }

    /// Declares that this module emits `event_type` at `version` (1 or more).
    pub fn current(mut self, event_type: impl Into<String>, version: u32) -> Self {
        assert!(version >= 1, "schema versions start at 1");
        self.current.insert(event_type.into(), version);
        self
    }

    /// Registers the step from `event_type` at `from_version`: given that
    /// event's data, the events it stands for one step on.
    pub fn upcast(
        mut self,
        event_type: impl Into<String>,
        from_version: u32,
        step: impl Fn(Value) -> Result<Vec<Upcast>, String> + 'static,
    ) -> Self {
        self.steps
            .insert((event_type.into(), from_version), Box::new(step));
        self
    }

    /// The version this module emits `event_type` at (1 unless declared).
    pub fn version_of(&self, event_type: &str) -> u32 {
        self.current.get(event_type).copied().unwrap_or(1)
    }

    /// The declared versions other than 1, as the component tells the host.
    pub fn declared(&self) -> Vec<(String, u32)> {
        self.current
            .iter()
            .filter(|(_, v)| **v != 1)
            .map(|(t, v)| (t.clone(), *v))
            .collect()
    }

    /// Has this schema any upcaster at all? When not, every event is decoded
    /// as it is, without looking at its version.
    pub fn has_upcasters(&self) -> bool {
        !self.steps.is_empty()
    }

    /// Does an event of this type and version need upcasting?
    pub fn needs_upcast(&self, event_type: &str, version: u32) -> bool {
        !self.steps.is_empty() && self.steps.contains_key(&(event_type.to_string(), version))
    }

    /// Brings one recorded event to the shapes this module knows: the events
    /// it stands for, in order (the event itself when it needs no step).
    pub fn upcast_event(
        &self,
        event_type: &str,
        version: u32,
        data: &str,
    ) -> Result<Vec<Current>, String> {
        if !self.needs_upcast(event_type, version) {
            return Ok(vec![Current {
                event_type: event_type.to_string(),
                data: data.to_string(),
            }]);
        }
        let value: Value = serde_json::from_str(data)
            .map_err(|e| format!("event {event_type} v{version} is not JSON: {e}"))?;
        let mut out = Vec::new();
        // Depth first, so the events keep their order; each with the number
        // of steps its chain has taken.
        let mut pending = vec![(Upcast::new(event_type, version, value), 0usize)];
        while let Some((event, depth)) = pending.pop() {
            let key = (event.event_type.clone(), event.version);
            match self.steps.get(&key) {
                None => {
                    if out.len() >= MAX_UPCAST_EVENTS {
                        return Err(format!(
                            "upcasting {event_type} v{version} made more than {MAX_UPCAST_EVENTS} events"
                        ));
                    }
                    out.push(Current {
                        event_type: event.event_type,
                        data: serde_json::to_string(&event.data).expect("a JSON value serializes"),
                    })
                }
                Some(step) => {
                    if depth >= MAX_UPCAST_STEPS {
                        return Err(format!(
                            "upcasting {event_type} v{version} took more than {MAX_UPCAST_STEPS} steps in a row (do two upcasters lead back to each other?)"
                        ));
                    }
                    let next = step(event.data).map_err(|e| {
                        format!("the upcaster from {} v{} failed: {e}", key.0, key.1)
                    })?;
                    for produced in next.into_iter().rev() {
                        if !produced.data.is_object() {
                            return Err(format!(
                                "the upcaster from {} v{} produced {} data that is not a JSON object",
                                key.0, key.1, produced.event_type
                            ));
                        }
                        pending.push((produced, depth + 1));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Runs `f` on every event the batch stands for, in order: each
    /// `(type, data)` with its version from `versions` (the host's
    /// `given-versions`, or a native caller's). Events that need no step
    /// are passed through without a copy.
    pub fn for_each_current<'a>(
        &self,
        events: impl IntoIterator<Item = (&'a str, &'a str)>,
        versions: &[u32],
        mut f: impl FnMut(&str, &str) -> Result<(), String>,
    ) -> Result<(), String> {
        if !self.has_upcasters() {
            for (event_type, data) in events {
                f(event_type, data)?;
            }
            return Ok(());
        }
        for (i, (event_type, data)) in events.into_iter().enumerate() {
            let version = version_at(versions, i)?;
            if self.needs_upcast(event_type, version) {
                for current in self.upcast_event(event_type, version, data)? {
                    f(&current.event_type, &current.data)?;
                }
            } else {
                f(event_type, data)?;
            }
        }
        Ok(())
    }
}

/// The version of the `i`th event of a call, from the host's list.
pub(crate) fn version_at(versions: &[u32], i: usize) -> Result<u32, String> {
    versions.get(i).copied().ok_or_else(|| {
        format!(
            "the host gave {} schema versions for a call with more events",
            versions.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bank() -> Schema {
        Schema::new()
            .current("Opened", 3)
            .upcast("Opened", 1, |data| {
                Ok(vec![Upcast::new(
                    "Opened",
                    2,
                    json!({ "holder": data["owner"], "limit": data["overdraft_limit"] }),
                )])
            })
            .upcast("Opened", 2, |data| {
                let mut out = vec![Upcast::new(
                    "Opened",
                    3,
                    json!({ "holder": data["holder"] }),
                )];
                if data["limit"].as_i64().unwrap_or(0) != 0 {
                    out.push(Upcast::new(
                        "OverdraftLimitSet",
                        1,
                        json!({ "limit": data["limit"] }),
                    ));
                }
                Ok(out)
            })
    }

    #[test]
    fn a_v1_event_takes_every_step_in_order() {
        let out = bank()
            .upcast_event("Opened", 1, r#"{"owner":"ann","overdraft_limit":50}"#)
            .unwrap();
        assert_eq!(
            out,
            vec![
                Current {
                    event_type: "Opened".into(),
                    data: r#"{"holder":"ann"}"#.into()
                },
                Current {
                    event_type: "OverdraftLimitSet".into(),
                    data: r#"{"limit":50}"#.into()
                },
            ]
        );
        // From v2, only the second step.
        let out = bank()
            .upcast_event("Opened", 2, r#"{"holder":"bo","limit":0}"#)
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, r#"{"holder":"bo"}"#);
    }

    #[test]
    fn current_and_unknown_versions_pass_through_unchanged() {
        let schema = bank();
        let text = r#"{ "holder" : "ann" }"#;
        let out = schema.upcast_event("Opened", 3, text).unwrap();
        assert_eq!(out[0].data, text, "no step: the bytes as given");
        assert_eq!(schema.version_of("Opened"), 3);
        assert_eq!(schema.version_of("Closed"), 1);
        assert_eq!(schema.declared(), vec![("Opened".to_string(), 3)]);
    }

    #[test]
    fn batches_expand_in_order_and_need_a_version_per_event() {
        let schema = bank();
        let mut seen = Vec::new();
        schema
            .for_each_current(
                [
                    ("Opened", r#"{"owner":"ann","overdraft_limit":5}"#),
                    ("Deposited", r#"{"amount":1}"#),
                ],
                &[1, 1],
                |t, d| {
                    seen.push(format!("{t} {d}"));
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(
            seen,
            [
                r#"Opened {"holder":"ann"}"#,
                r#"OverdraftLimitSet {"limit":5}"#,
                r#"Deposited {"amount":1}"#
            ]
        );
        let err = schema
            .for_each_current([("Deposited", "{}")], &[], |_, _| Ok(()))
            .unwrap_err();
        assert!(err.contains("schema versions"), "{err}");
    }

    #[test]
    fn a_wide_split_is_not_a_loop() {
        let schema = Schema::new()
            .upcast("Order", 1, |_| {
                Ok((0..100)
                    .map(|i| Upcast::new("Line", 1, json!({ "n": i })))
                    .collect())
            })
            .upcast("Line", 1, |d| Ok(vec![Upcast::new("Line", 2, d)]));
        let out = schema.upcast_event("Order", 1, "{}").unwrap();
        assert_eq!(out.len(), 100);
        assert_eq!(out[99].data, r#"{"n":99}"#);
    }

    #[test]
    fn a_failing_or_looping_upcaster_is_an_error_naming_the_step() {
        let schema = Schema::new()
            .upcast("A", 1, |_| Err("no owner".into()))
            .upcast("B", 1, |d| Ok(vec![Upcast::new("C", 1, d)]))
            .upcast("C", 1, |d| Ok(vec![Upcast::new("B", 1, d)]))
            .upcast("D", 1, |_| Ok(vec![Upcast::new("D", 2, json!(7))]));
        let err = schema.upcast_event("A", 1, "{}").unwrap_err();
        assert!(err.contains("from A v1 failed: no owner"), "{err}");
        let err = schema.upcast_event("B", 1, "{}").unwrap_err();
        assert!(err.contains("steps"), "{err}");
        let err = schema.upcast_event("D", 1, "{}").unwrap_err();
        assert!(err.contains("not a JSON object"), "{err}");
        let err = schema.upcast_event("A", 1, "not json").unwrap_err();
        assert!(err.contains("not JSON"), "{err}");
    }
}
