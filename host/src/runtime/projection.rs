//! Calls into a projection component, and the host side of its `read-model`
//! import. Like aggregates, every call gets a fresh, metered instance, so a
//! projection's only memory between calls is its read model.
//!
//! The runtime does not know where documents live: the caller passes a
//! [`DocumentSource`] (the committed read model) and gets back the
//! [`DocumentChanges`] the guest made, to commit with its checkpoint.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

use super::RuntimeConfig;
use super::bindings::{EventSelector, Projection, ProjectionPre, QueryError, RecordedEvent};
use super::error::{GuestError, RuntimeError, SandboxLimit};
use super::sandbox::{CallSettings, HostState, Observed};

/// Longest document key, in bytes.
pub const MAX_DOC_KEY_LEN: usize = 512;
/// Largest document, in bytes of JSON text. Keeps values small in sled.
pub const MAX_DOC_LEN: usize = 64 * 1024;
/// Most documents one `scan` returns.
pub const MAX_SCAN_LIMIT: usize = 1000;
/// Most bytes of keys and documents one `scan` returns; a scan whose answer
/// would be larger fails the call (`guest_limit_exceeded`): ask for fewer.
pub const MAX_SCAN_BYTES: usize = 8 << 20;
/// Most bytes one `scan` may read from the committed documents (more than it
/// returns when this call's deletes hide some).
const MAX_SCAN_READ_BYTES: usize = 4 * MAX_SCAN_BYTES;
/// Most document writes (puts and deletes of distinct keys) one `apply` call may
/// make, and their bytes: a batch's writes are committed in one store batch,
/// which holds up appends while it is written.
pub const MAX_BATCH_WRITES: usize = 10_000;
pub const MAX_BATCH_WRITE_BYTES: usize = 4 << 20;

/// The committed documents of one projection version, as a guest call reads them.
pub trait DocumentSource: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<String>, String>;
    /// Up to `limit` documents whose keys start with `prefix` and sort after
    /// `after`, in key order, stopping early after the document that takes
    /// their keys and texts past `max_bytes`.
    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(String, String)>, String>;
}

/// What an `apply` wrote: key -> new document, or `None` for a delete.
pub type DocumentChanges = BTreeMap<String, Option<String>>;

/// A guest call's view of the read model: the committed documents with this
/// call's own writes laid over them.
pub struct ReadModelSession {
    source: Arc<dyn DocumentSource>,
    changes: DocumentChanges,
    /// Bytes of keys and documents in `changes`.
    change_bytes: usize,
    writable: bool,
}

impl ReadModelSession {
    fn get(&self, key: &str) -> Result<Option<String>, String> {
        match self.changes.get(key) {
            Some(change) => Ok(change.clone()),
            None => self.source.get(key),
        }
    }

    fn write(&mut self, key: String, doc: Option<String>) -> wasmtime::Result<()> {
        let what = if doc.is_some() { "put" } else { "delete" };
        self.check_write(&key, doc.as_deref())
            .map_err(|e| trap(what, e))?;
        let added = key.len() + doc.as_ref().map_or(0, String::len);
        let replaced = self
            .changes
            .get(&key)
            .map(|old| key.len() + old.as_ref().map_or(0, String::len));
        if replaced.is_none() && self.changes.len() >= MAX_BATCH_WRITES {
            return Err(SandboxLimit(format!(
                "one apply call may write at most {MAX_BATCH_WRITES} documents"
            ))
            .into());
        }
        let bytes = self.change_bytes - replaced.unwrap_or(0) + added;
        if bytes > MAX_BATCH_WRITE_BYTES {
            return Err(SandboxLimit(format!(
                "one apply call may write at most {MAX_BATCH_WRITE_BYTES} bytes of keys and documents"
            ))
            .into());
        }
        self.change_bytes = bytes;
        self.changes.insert(key, doc);
        Ok(())
    }

    fn check_write(&self, key: &str, doc: Option<&str>) -> Result<(), String> {
        if !self.writable {
            return Err("the read model is read-only during a query".into());
        }
        check_key(key)?;
        if let Some(doc) = &doc {
            if doc.len() > MAX_DOC_LEN {
                return Err(format!(
                    "document {key:?} is {} bytes; the limit is {MAX_DOC_LEN}",
                    doc.len()
                ));
            }
            crate::json_text::check_stored(doc)
                .map_err(|e| format!("document {key:?} is not valid JSON: {e}"))?;
        }
        Ok(())
    }

    /// The committed scan merged with this call's writes, read from the source
    /// a bounded page at a time (this call's deletes may hide what a page
    /// holds, so it may take more than one).
    fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> wasmtime::Result<Vec<(String, String)>> {
        if limit > MAX_SCAN_LIMIT {
            return Err(trap(
                "scan",
                format!(
                    "a scan returns at most {MAX_SCAN_LIMIT} documents, {limit} were asked for"
                ),
            ));
        }
        let too_big = || -> wasmtime::Error {
            SandboxLimit(format!(
                "a read-model scan may return at most {MAX_SCAN_BYTES} bytes of keys and documents; ask for fewer"
            ))
            .into()
        };
        let mut out = Vec::new();
        let (mut returned, mut read) = (0usize, 0usize);
        let mut cursor = match after {
            Some(after) if after >= prefix => Some(after.to_string()),
            _ => None,
        };
        while out.len() < limit {
            let page = self
                .source
                .scan(prefix, cursor.as_deref(), limit, MAX_SCAN_BYTES)
                .map_err(|e| trap("scan", e))?;
            let page_bytes: usize = page.iter().map(|(k, d)| k.len() + d.len()).sum();
            read += page_bytes;
            if read > MAX_SCAN_READ_BYTES {
                return Err(too_big());
            }
            // Whether the source has nothing after this page (else it ends at its last key).
            let to_the_end = page.len() < limit && page_bytes <= MAX_SCAN_BYTES;
            let upper = (!to_the_end).then(|| page[page.len() - 1].0.clone());
            let lower = match &cursor {
                Some(c) => Bound::Excluded(c.clone()),
                None => Bound::Included(prefix.to_string()),
            };
            let mut merged: BTreeMap<String, String> = page.into_iter().collect();
            let overlay = self
                .changes
                .range((lower, Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .take_while(|(k, _)| upper.as_ref().is_none_or(|u| *k <= u));
            for (key, change) in overlay {
                match change {
                    Some(doc) => merged.insert(key.clone(), doc.clone()),
                    None => merged.remove(key),
                };
            }
            for (key, doc) in merged {
                if out.len() == limit {
                    break;
                }
                returned += key.len() + doc.len();
                if returned > MAX_SCAN_BYTES {
                    return Err(too_big());
                }
                out.push((key, doc));
            }
            match upper {
                Some(upper) => cursor = Some(upper),
                None => break,
            }
        }
        Ok(out)
    }
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_DOC_KEY_LEN {
        return Err(format!(
            "document keys are 1 to {MAX_DOC_KEY_LEN} bytes, this one is {}",
            key.len()
        ));
    }
    // Keys are shown to people (diffs, verify reports, the CLI).
    if key.chars().any(char::is_control) {
        return Err(format!("document key {key:?} contains a control character"));
    }
    Ok(())
}

/// A misused read-model call traps the guest with the reason.
fn trap(what: &str, reason: String) -> wasmtime::Error {
    wasmtime::Error::msg(format!("read-model {what}: {reason}"))
}

impl super::bindings::read_model::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        self.read_model()?.get(&key).map_err(|e| trap("get", e))
    }

    fn put(&mut self, key: String, doc: String) -> wasmtime::Result<()> {
        self.read_model()?.write(key, Some(doc))
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.read_model()?.write(key, None)
    }

    fn scan(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Vec<(String, String)>> {
        self.read_model()?
            .scan(&prefix, after.as_deref(), limit as usize)
    }
}

impl HostState {
    fn read_model(&mut self) -> wasmtime::Result<&mut ReadModelSession> {
        self.read_model
            .as_mut()
            .ok_or_else(|| wasmtime::Error::msg("this call has no read model"))
    }
}

/// A compiled, checked projection component. Cheap to clone.
#[derive(Clone)]
pub struct ProjectionModule {
    inner: Arc<Inner>,
}

struct Inner {
    pre: ProjectionPre<HostState>,
    settings: CallSettings,
}

/// Which events a projection wants; empty lists admit everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub event_types: Vec<String>,
    pub aggregate_types: Vec<String>,
}

/// A query the guest did not answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryFailure {
    UnknownQuery(String),
    BadArguments(String),
}

impl ProjectionModule {
    pub(super) fn new(
        engine: &Engine,
        linker: &Linker<HostState>,
        component: &Component,
        with_wasi: bool,
        label: &str,
        config: &RuntimeConfig,
    ) -> Result<ProjectionModule, RuntimeError> {
        let pre = linker
            .instantiate_pre(component)
            .and_then(ProjectionPre::new)
            .map_err(|e| {
                RuntimeError::InvalidModule(format!(
                    "does not implement refold:domain/projection: {e:#}"
                ))
            })?;
        Ok(ProjectionModule {
            inner: Arc::new(Inner {
                pre,
                settings: CallSettings::new(engine, with_wasi, label, config),
            }),
        })
    }

    pub fn label(&self) -> &str {
        self.inner.settings.label()
    }

    /// The wall-clock deadline of one call into this module.
    pub fn deadline(&self) -> std::time::Duration {
        self.inner.settings.deadline()
    }

    pub fn imports_wasi(&self) -> bool {
        self.inner.settings.with_wasi()
    }

    /// The events this projection wants.
    pub fn selector(&self) -> Result<Selector, GuestError> {
        let selector: EventSelector =
            self.call(None, |guest, store| guest.call_subscription(store))?;
        Ok(Selector {
            event_types: selector.event_types,
            aggregate_types: selector.aggregate_types,
        })
    }

    /// Applies `events` over the committed documents in `source`; returns the
    /// changes to commit. Nothing is written anywhere by this call.
    pub fn apply(
        &self,
        source: Arc<dyn DocumentSource>,
        events: &[RecordedEvent],
        versions: &[u32],
    ) -> Result<DocumentChanges, GuestError> {
        let session = ReadModelSession {
            source,
            changes: DocumentChanges::new(),
            change_bytes: 0,
            writable: true,
        };
        // Fuel scales with the batch: what one event may use live, each event may
        // use in a replay's batch of many.
        let observed = super::aggregate::given(versions);
        let (result, session) =
            self.call_with(&observed, Some(session), events.len(), |guest, store| {
                guest.call_apply(store, events)
            })?;
        result.map_err(GuestError::failed)?;
        Ok(session.map(|s| s.changes).unwrap_or_default())
    }

    /// Answers a named query, read-only. The outer error is the guest failing.
    pub fn query(
        &self,
        source: Arc<dyn DocumentSource>,
        name: &str,
        args: &str,
    ) -> Result<Result<String, QueryFailure>, GuestError> {
        let session = ReadModelSession {
            source,
            changes: DocumentChanges::new(),
            change_bytes: 0,
            writable: false,
        };
        let (result, _) =
            self.call_with(&Observed::default(), Some(session), 1, |guest, store| {
                guest.call_query(store, name, args)
            })?;
        let answer = match result {
            Ok(answer) => Ok(super::error::bounded_answer(
                "the query",
                answer,
                self.inner.settings.max_answer_bytes(),
            )?),
            Err(e) => Err(e),
        };
        Ok(answer.map_err(|e| match e {
            QueryError::UnknownQuery(q) => QueryFailure::UnknownQuery(q),
            QueryError::BadArguments(why) => QueryFailure::BadArguments(why),
        }))
    }

    fn call<T>(
        &self,
        session: Option<ReadModelSession>,
        f: impl FnOnce(&Projection, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, GuestError> {
        self.call_with(&Observed::default(), session, 1, f)
            .map(|(value, _)| value)
    }

    /// Projections observe nothing but their arguments and read model: no
    /// clock reading but zero, randomness seeded from nothing.
    fn call_with<T>(
        &self,
        observed: &Observed,
        session: Option<ReadModelSession>,
        fuel_units: usize,
        f: impl FnOnce(&Projection, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<(T, Option<ReadModelSession>), GuestError> {
        let pre = &self.inner.pre;
        self.inner
            .settings
            .run(observed, session, fuel_units, 1, |store| {
                let guest = pre.instantiate(&mut *store)?;
                f(&guest, store)
            })
            .map(|(value, state)| (value, state.read_model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Committed documents in memory, counting the bytes each scan reads.
    struct Committed(BTreeMap<String, String>);

    impl DocumentSource for Committed {
        fn get(&self, key: &str) -> Result<Option<String>, String> {
            Ok(self.0.get(key).cloned())
        }
        fn scan(
            &self,
            prefix: &str,
            after: Option<&str>,
            limit: usize,
            max_bytes: usize,
        ) -> Result<Vec<(String, String)>, String> {
            let lower = after.map_or(Bound::Included(prefix), Bound::Excluded);
            let mut bytes = 0;
            Ok(self
                .0
                .range::<str, _>((lower, Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .take(limit)
                .take_while(|(k, v)| {
                    let within = bytes <= max_bytes;
                    bytes += k.len() + v.len();
                    within
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect())
        }
    }

    fn session(docs: usize, doc_len: usize) -> ReadModelSession {
        let doc = format!("\"{}\"", "x".repeat(doc_len.saturating_sub(2)));
        let committed = (0..docs)
            .map(|i| (format!("d/{i:05}"), doc.clone()))
            .collect();
        ReadModelSession {
            source: Arc::new(Committed(committed)),
            changes: DocumentChanges::new(),
            change_bytes: 0,
            writable: true,
        }
    }

    #[test]
    fn a_scan_pages_past_this_calls_deletes_and_merges_its_puts() {
        let mut s = session(3000, 10);
        for i in 0..1500 {
            s.write(format!("d/{i:05}"), None).unwrap();
        }
        s.write("d/01600x".into(), Some("1".into())).unwrap();
        let page = s.scan("d/", None, 1000).unwrap();
        assert_eq!(page.len(), 1000);
        assert_eq!(page[0].0, "d/01500");
        assert!(
            page.iter().any(|(k, _)| k == "d/01600x"),
            "this call's put is seen"
        );
        assert_eq!(
            page[999].0, "d/02498",
            "the put takes one place in key order"
        );
        let rest = s.scan("d/", Some("d/02998"), 1000).unwrap();
        assert_eq!(
            rest,
            vec![("d/02999".to_string(), "\"xxxxxxxx\"".to_string())]
        );
    }

    #[test]
    fn a_scan_answer_is_bounded_in_bytes() {
        let s = session(200, 60 * 1024);
        let within = s.scan("d/", None, 100).expect("6 MB is within the limit");
        assert_eq!(within.len(), 100);
        let err = s
            .scan("d/", None, 200)
            .expect_err("12 MB is over the limit");
        let limit = err.downcast_ref::<SandboxLimit>().expect("a sandbox limit");
        assert!(limit.0.contains("at most"), "{}", limit.0);
    }

    #[test]
    fn deletes_that_hide_much_committed_data_cannot_make_a_scan_read_without_bound() {
        let mut s = session(1000, 60 * 1024);
        for i in 0..1000 {
            s.write(format!("d/{i:05}"), None).unwrap();
        }
        let err = s
            .scan("d/", None, 10)
            .expect_err("reading 60 MB to find nothing is refused");
        assert!(err.downcast_ref::<SandboxLimit>().is_some(), "{err:#}");
    }
}
