//! Event schema versions on the host's side: what a component declares for
//! the event types it emits (its optional `schema-versions` export, read once
//! when it is loaded), and the checks that bound the declaration.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, InstancePre};

use super::error::RuntimeError;
use super::sandbox::{CallSettings, HostState, Observed};

/// The export that declares versions. Components built before versions
/// existed have none: all their types are at version 1.
pub const EXPORT: &str = "schema-versions";
/// The most event types one module may declare versions for.
pub const MAX_DECLARED: usize = 1024;
/// The highest schema version (the store's bound too).
pub const MAX_VERSION: u32 = 65_535;
/// The fuel of the one `schema-versions` call, far below a module's usual
/// budget: returning a list takes little, and the call runs where guest code
/// usually does not (while a module loads, at boot and on upload), so a
/// hostile one holds that up for a few tens of milliseconds at most, and
/// fails the same way every time (fuel is deterministic).
pub const DECLARATION_FUEL: u64 = 50_000_000;
/// Its deadline: a safety net only, fuel ends a busy guest first.
pub const DECLARATION_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// The schema version of each event type a module emits: 1 unless declared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchemaVersions(Arc<BTreeMap<String, u32>>);

impl SchemaVersions {
    pub fn of(&self, event_type: &str) -> u32 {
        self.0.get(event_type).copied().unwrap_or(1)
    }

    /// The declared versions (those other than 1), by event type.
    pub fn declared(&self) -> &BTreeMap<String, u32> {
        &self.0
    }

    /// Reads the component's declaration, if it has one, with one call.
    pub(super) fn read(
        engine: &Engine,
        component: &Component,
        pre: &InstancePre<HostState>,
        settings: &CallSettings,
    ) -> Result<SchemaVersions, RuntimeError> {
        let exported = matches!(
            component.component_type().get_export(engine, EXPORT),
            Some(e) if matches!(e.ty, ComponentItem::ComponentFunc(_))
        );
        if !exported {
            return Ok(SchemaVersions::default());
        }
        let (list, _) = settings
            .run_within(
                &Observed::default(),
                None,
                DECLARATION_FUEL,
                DECLARATION_DEADLINE,
                |store| {
                    let instance = pre.instantiate(&mut *store)?;
                    let func = instance
                        .get_typed_func::<(), (Vec<(String, u32)>,)>(&mut *store, EXPORT)?;
                    let (list,) = func.call(&mut *store, ())?;
                    Ok(list)
                },
            )
            .map_err(|e| RuntimeError::InvalidModule(format!("{EXPORT} failed: {e}")))?;
        Self::check(list).map_err(|e| RuntimeError::InvalidModule(format!("{EXPORT}: {e}")))
    }

    /// Bounds a declaration: at most [`MAX_DECLARED`] types, each named as
    /// an event type may be and declared once, at 1 to [`MAX_VERSION`].
    pub fn check(list: Vec<(String, u32)>) -> Result<SchemaVersions, String> {
        if list.len() > MAX_DECLARED {
            return Err(format!(
                "declares {} event types; the limit is {MAX_DECLARED}",
                list.len()
            ));
        }
        let mut map = BTreeMap::new();
        for (event_type, version) in list {
            let shown = event_type.escape_default().to_string();
            let valid = !event_type.is_empty()
                && event_type.len() <= 256
                && event_type
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-:/".contains(&b));
            if !valid {
                return Err(format!(
                    "\"{}\" is not an event type (1 to 256 ASCII letters, digits and ._-:/)",
                    shown.chars().take(300).collect::<String>()
                ));
            }
            if !(1..=MAX_VERSION).contains(&version) {
                return Err(format!(
                    "{shown} is declared at version {version}; versions are 1 to {MAX_VERSION}"
                ));
            }
            if map.insert(event_type, version).is_some() {
                return Err(format!("{shown} is declared twice"));
            }
        }
        map.retain(|_, v| *v != 1);
        Ok(SchemaVersions(Arc::new(map)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_are_bounded_and_default_to_one() {
        let ok = SchemaVersions::check(vec![("Opened".into(), 2), ("Closed".into(), 1)]).unwrap();
        assert_eq!(ok.of("Opened"), 2);
        assert_eq!(ok.of("Closed"), 1);
        assert_eq!(ok.of("Other"), 1);
        assert_eq!(ok.declared().len(), 1);
        for bad in [
            vec![("".into(), 2)],
            vec![("a b".into(), 2)],
            vec![("A".into(), 0)],
            vec![("A".into(), MAX_VERSION + 1)],
            vec![("A".into(), 2), ("A".into(), 3)],
            vec![("x".repeat(257), 2)],
            (0..=MAX_DECLARED).map(|i| (format!("T{i}"), 2)).collect(),
        ] {
            assert!(SchemaVersions::check(bad).is_err());
        }
    }
}
