//! [`Docs`]: a projection's view of its read model, a write-back cache over
//! the host's `read-model` import (in Wasm) or an in-memory map (natively).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Bound;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The longest key the host accepts, in bytes (keys are 1 to 512 bytes).
pub const MAX_KEY_BYTES: usize = 512;
/// The largest document the host accepts, in bytes of JSON text.
pub const MAX_DOC_BYTES: usize = 64 * 1024;
/// The most documents one host `scan` returns; [`Docs::scan`] pages past it.
pub const MAX_SCAN: u32 = 1000;

/// A projection's read model: JSON documents by string key.
///
/// Reads go to a cache first and then to the store; writes are buffered in the
/// cache and reach the store only when the whole batch has been applied
/// without error, once per changed key, in key order. A failed batch leaves
/// the store untouched. Reads, scans included, see the batch's own writes.
#[derive(Debug)]
pub struct Docs<'a> {
    backend: Backend<'a>,
    cache: RefCell<BTreeMap<String, Slot>>,
}

#[derive(Debug)]
enum Backend<'a> {
    /// Natively: a map of JSON texts, read-only while the batch runs.
    Memory(&'a BTreeMap<String, String>),
    /// In the component: the host's `read-model` import.
    #[cfg(target_family = "wasm")]
    Host,
}

#[derive(Debug)]
enum Slot {
    /// As the store has it (`None`: absent).
    Clean(Option<String>),
    /// Written during this batch (`None`: deleted).
    Dirty(Option<String>),
}

impl Slot {
    fn doc(&self) -> Option<&str> {
        match self {
            Slot::Clean(doc) | Slot::Dirty(doc) => doc.as_deref(),
        }
    }
}

impl<'a> Docs<'a> {
    /// Documents over an in-memory store of JSON texts; writes stay in the
    /// cache until [`Docs::into_writes`].
    pub(crate) fn in_memory(store: &'a BTreeMap<String, String>) -> Self {
        Docs {
            backend: Backend::Memory(store),
            cache: RefCell::new(BTreeMap::new()),
        }
    }

    /// Documents over the host's `read-model` import.
    #[cfg(target_family = "wasm")]
    pub(crate) fn host() -> Docs<'static> {
        Docs {
            backend: Backend::Host,
            cache: RefCell::new(BTreeMap::new()),
        }
    }

    /// The document at `key`, decoded; `Ok(None)` if there is none.
    /// An error if the document does not decode as `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        if !valid_key(key) {
            return Ok(None); // the store cannot hold it
        }
        if let Some(slot) = self.cache.borrow().get(key) {
            return slot.doc().map(|doc| decode(key, doc)).transpose();
        }
        let doc = self.backend.get(key);
        let decoded = doc.as_deref().map(|doc| decode(key, doc)).transpose();
        self.cache
            .borrow_mut()
            .insert(key.to_owned(), Slot::Clean(doc));
        decoded
    }

    /// Stores `doc` at `key`, replacing what was there. An error if the key is
    /// empty or longer than [`MAX_KEY_BYTES`], or the document does not
    /// serialize or is larger than [`MAX_DOC_BYTES`] as JSON.
    pub fn put<T: Serialize + ?Sized>(&mut self, key: &str, doc: &T) -> Result<(), String> {
        if !valid_key(key) {
            return Err(format!(
                "read-model keys are 1 to {MAX_KEY_BYTES} bytes, not {} ({key:?})",
                key.len()
            ));
        }
        let text = serde_json::to_string(doc)
            .map_err(|e| format!("the document for {key:?} does not serialize: {e}"))?;
        if text.len() > MAX_DOC_BYTES {
            return Err(format!(
                "the document for {key:?} is {} bytes of JSON, above the limit of {MAX_DOC_BYTES}",
                text.len()
            ));
        }
        self.set(key, Some(text));
        Ok(())
    }

    /// Removes `key`; removing an absent key does nothing.
    pub fn delete(&mut self, key: &str) {
        if valid_key(key) {
            self.set(key, None);
        }
    }

    fn set(&mut self, key: &str, doc: Option<String>) {
        let cache = self.cache.get_mut();
        match cache.get_mut(key) {
            Some(slot) => *slot = Slot::Dirty(doc),
            None => {
                cache.insert(key.to_owned(), Slot::Dirty(doc));
            }
        }
    }

    /// Up to `limit` documents whose keys start with `prefix`, in byte order
    /// of their keys, after `after` (exclusive) when it is given. Unlike one
    /// host call, `limit` may exceed [`MAX_SCAN`]: this pages through.
    pub fn scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Value)>, String> {
        let limit = limit as usize;
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let page_size = limit.min(MAX_SCAN as usize);
        let mut cursor = after.map(str::to_owned);
        let cache = self.cache.borrow();
        loop {
            let page = self
                .backend
                .scan(prefix, cursor.as_deref(), page_size as u32);
            // A full page may have more after it: the cache's writes are merged
            // up to its last key only, and the next page carries on from there.
            let upper = (page.len() >= page_size).then(|| page[page.len() - 1].0.clone());
            let mut chunk: BTreeMap<String, String> = page.into_iter().collect();
            let lower = match cursor.as_deref() {
                Some(after) if after >= prefix => Bound::Excluded(after),
                _ => Bound::Included(prefix),
            };
            let written =
                cache
                    .range::<str, _>((lower, Bound::Unbounded))
                    .take_while(|(key, _)| {
                        key.starts_with(prefix)
                            && upper.as_deref().is_none_or(|u| key.as_str() <= u)
                    });
            for (key, slot) in written {
                match slot {
                    Slot::Clean(_) => {} // the store has the same
                    Slot::Dirty(Some(doc)) => {
                        chunk.insert(key.clone(), doc.clone());
                    }
                    Slot::Dirty(None) => {
                        chunk.remove(key);
                    }
                }
            }
            for (key, doc) in chunk {
                if out.len() == limit {
                    return Ok(out);
                }
                let value = decode(&key, &doc)?;
                out.push((key, value));
            }
            match upper {
                Some(upper) if out.len() < limit => cursor = Some(upper),
                _ => return Ok(out),
            }
        }
    }

    /// Every document whose key starts with `prefix`, in key order.
    pub fn scan_all(&self, prefix: &str) -> Result<Vec<(String, Value)>, String> {
        self.scan(prefix, None, u32::MAX)
    }

    /// The batch's writes, in key order: `(key, Some(doc))` to store, `(key, None)` to remove.
    pub(crate) fn into_writes(self) -> impl Iterator<Item = (String, Option<String>)> {
        self.cache
            .into_inner()
            .into_iter()
            .filter_map(|(key, slot)| match slot {
                Slot::Clean(_) => None,
                Slot::Dirty(doc) => Some((key, doc)),
            })
    }
}

impl Backend<'_> {
    fn get(&self, key: &str) -> Option<String> {
        match self {
            Backend::Memory(store) => store.get(key).cloned(),
            #[cfg(target_family = "wasm")]
            Backend::Host => crate::projection_bindings::refold::domain::read_model::get(key),
        }
    }

    fn scan(&self, prefix: &str, after: Option<&str>, limit: u32) -> Vec<(String, String)> {
        match self {
            Backend::Memory(store) => {
                let lower = match after {
                    Some(after) if after >= prefix => Bound::Excluded(after),
                    _ => Bound::Included(prefix),
                };
                store
                    .range::<str, _>((lower, Bound::Unbounded))
                    .take_while(|(key, _)| key.starts_with(prefix))
                    .take(limit as usize)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }
            #[cfg(target_family = "wasm")]
            Backend::Host => {
                crate::projection_bindings::refold::domain::read_model::scan(prefix, after, limit)
            }
        }
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_BYTES
}

fn decode<T: DeserializeOwned>(key: &str, doc: &str) -> Result<T, String> {
    serde_json::from_str(doc).map_err(|e| format!("the document at {key:?} does not decode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store(entries: &[(&str, Value)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn keys(docs: &[(String, Value)]) -> Vec<&str> {
        docs.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn reads_see_buffered_writes_and_the_store_sees_them_only_at_the_end() {
        let base = store(&[("a", json!(1)), ("b", json!(2))]);
        let mut docs = Docs::in_memory(&base);
        assert_eq!(docs.get::<i64>("a").unwrap(), Some(1));
        docs.put("a", &10).unwrap();
        docs.put("c", &3).unwrap();
        docs.delete("b");
        docs.delete("never");
        assert_eq!(docs.get::<i64>("a").unwrap(), Some(10));
        assert_eq!(docs.get::<i64>("b").unwrap(), None);
        assert_eq!(docs.get::<i64>("zz").unwrap(), None);
        assert!(docs.get::<String>("a").unwrap_err().contains("\"a\""));
        let writes: Vec<_> = docs.into_writes().collect();
        assert_eq!(
            writes,
            vec![
                ("a".into(), Some("10".into())),
                ("b".into(), None),
                ("c".into(), Some("3".into())),
                ("never".into(), None),
            ]
        );
    }

    #[test]
    fn keys_and_documents_respect_the_hosts_limits() {
        let base = BTreeMap::new();
        let mut docs = Docs::in_memory(&base);
        assert!(docs.put("", &1).is_err());
        assert!(docs.put(&"k".repeat(MAX_KEY_BYTES + 1), &1).is_err());
        docs.put(&"k".repeat(MAX_KEY_BYTES), &1).unwrap();
        assert!(docs.put("big", &"x".repeat(MAX_DOC_BYTES)).is_err());
        assert_eq!(docs.get::<i64>("").unwrap(), None);
    }

    #[test]
    fn scans_merge_the_store_with_the_batchs_writes() {
        let base: BTreeMap<String, String> = (0..2500)
            .map(|i| (format!("acc/{i:05}"), i.to_string()))
            .chain([("acb".into(), "0".into()), ("b".into(), "0".into())])
            .collect();
        let mut docs = Docs::in_memory(&base);
        docs.delete("acc/00000");
        docs.delete("acc/00001");
        docs.put("acc/00001x", &-1).unwrap();
        docs.delete("acc/01500");
        docs.put("acc/99999", &99).unwrap();
        docs.put("acd", &0).unwrap();

        let first = docs.scan("acc/", None, 3).unwrap();
        assert_eq!(keys(&first), ["acc/00001x", "acc/00002", "acc/00003"]);
        let next = docs.scan("acc/", Some("acc/00003"), 2).unwrap();
        assert_eq!(keys(&next), ["acc/00004", "acc/00005"]);

        let all = docs.scan_all("acc/").unwrap();
        assert_eq!(all.len(), 2500 - 3 + 2);
        assert_eq!(all.last().unwrap(), &("acc/99999".to_string(), json!(99)));
        assert!(!keys(&all).contains(&"acc/01500"));
        assert!(keys(&all).windows(2).all(|w| w[0] < w[1]));

        // Pages of exactly MAX_SCAN with deletions in them still fill up.
        let page = docs.scan("acc/", None, MAX_SCAN).unwrap();
        assert_eq!(page.len(), MAX_SCAN as usize);
        let rest = docs
            .scan("acc/", Some(&page.last().unwrap().0), u32::MAX)
            .unwrap();
        assert_eq!(page.len() + rest.len(), all.len());

        assert_eq!(keys(&docs.scan("ac", Some("acc/~"), 10).unwrap()), ["acd"]);
        assert_eq!(docs.scan("acc/", None, 0).unwrap(), vec![]);
        assert_eq!(docs.scan("zzz", None, 10).unwrap(), vec![]);
        assert_eq!(
            docs.scan("", None, u32::MAX).unwrap().len(),
            2500 - 3 + 2 + 3
        );
    }
}
