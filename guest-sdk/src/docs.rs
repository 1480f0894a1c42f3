//! [`Docs`]: a projection's view of its read model, a write-back cache over
//! the host's `read-model` import (in Wasm) or an in-memory map (natively).
//!
//! The cache holds documents as typed values: what `put` was given, or what
//! the first `get` decoded. Getting and putting one key again and again within
//! a batch (a running total, an account touched by many events) costs a clone,
//! not a JSON parse and a JSON serialization each time; each changed document
//! is serialized once, when the batch is flushed.

use std::any::Any;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
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
///
/// The cache keeps the values themselves, not their JSON: [`Docs::get`] of a
/// key last [`put`](Docs::put) (or got) as the same type `T` returns a clone of
/// that value, and a changed document is serialized once, at the end of the
/// batch. So `T`'s `Serialize` and `Deserialize` must round-trip (what a
/// later batch decodes from the stored JSON equals what was put), as derived
/// impls of plain data do; a field that is `#[serde(skip)]`ped, or an `f64`
/// that JSON does not carry exactly, would make the read model depend on where
/// batches begin and end.
#[derive(Debug)]
pub struct Docs<'a> {
    backend: Backend<'a>,
    cache: RefCell<Cache>,
}

type Cache = HashMap<String, Slot, BuildHasherDefault<KeyHasher>>;

#[derive(Debug)]
enum Backend<'a> {
    /// Natively: a map of JSON texts, read-only while the batch runs.
    Memory(&'a BTreeMap<String, String>),
    /// In the component: the host's `read-model` import.
    #[cfg(target_family = "wasm")]
    Host,
}

/// One key in the cache.
#[derive(Debug)]
struct Slot {
    /// Written during this batch; else as the store has it.
    dirty: bool,
    /// `None`: absent from the store (clean) or deleted (dirty).
    doc: Option<Doc>,
}

/// A document: its JSON text, its decoded value, or both (never neither).
#[derive(Debug)]
struct Doc {
    /// The store's text (clean), or the value's serialization (dirty; `None`
    /// until something needs it: the flush, a scan, a `get` as another type).
    text: Option<String>,
    value: Option<Typed>,
}

/// A value of some type `T`, and how to serialize it if `T` is the type it
/// was put as (a value decoded by `get` keeps its text, so it needs none).
struct Typed {
    value: Box<dyn Any>,
    to_json: Option<fn(&dyn Any) -> serde_json::Result<String>>,
}

impl std::fmt::Debug for Typed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Typed(..)")
    }
}

fn to_json<T: Serialize + 'static>(value: &dyn Any) -> serde_json::Result<String> {
    let value = value
        .downcast_ref::<T>()
        .expect("a typed document holds the type it was put as");
    serde_json::to_string(value)
}

impl Slot {
    /// Makes `doc` the key's document, to be serialized when its text is needed.
    fn put<T: Serialize + Clone + 'static>(&mut self, doc: &T) {
        self.dirty = true;
        // The same type again (the common case): reuse the allocation.
        if let Some(Doc {
            text,
            value: Some(typed),
        }) = &mut self.doc
            && let Some(held) = typed.value.downcast_mut::<T>()
        {
            held.clone_from(doc);
            *text = None;
            typed.to_json = Some(to_json::<T>);
            return;
        }
        self.doc = Some(Doc {
            text: None,
            value: Some(Typed {
                value: Box::new(doc.clone()),
                to_json: Some(to_json::<T>),
            }),
        });
    }
}

impl Doc {
    /// The JSON text, serializing the value (once) if there is none yet.
    /// An error if it does not serialize or is above [`MAX_DOC_BYTES`].
    fn text(&mut self, key: &str) -> Result<&str, String> {
        if self.text.is_none() {
            self.text = Some(self.serialize(key)?);
        }
        Ok(self.text.as_deref().expect("just set"))
    }

    fn serialize(&self, key: &str) -> Result<String, String> {
        let typed = self
            .value
            .as_ref()
            .expect("a document has its text, its value or both");
        let to_json = typed
            .to_json
            .expect("a value with no text is one that was put, with its serializer");
        let text = to_json(&*typed.value)
            .map_err(|e| format!("the document for {key:?} does not serialize: {e}"))?;
        if text.len() > MAX_DOC_BYTES {
            return Err(format!(
                "the document for {key:?} is {} bytes of JSON, above the limit of {MAX_DOC_BYTES}",
                text.len()
            ));
        }
        Ok(text)
    }

    /// The document as a `T`: a clone of the value if it is one, else
    /// decoded from the text (and kept, for the next `get` of a `T`).
    fn get<T: DeserializeOwned + Clone + 'static>(&mut self, key: &str) -> Result<T, String> {
        if let Some(value) = self
            .value
            .as_ref()
            .and_then(|typed| typed.value.downcast_ref::<T>())
        {
            return Ok(value.clone());
        }
        let decoded: T = decode(key, self.text(key)?)?;
        // The text stays: it is what the store has (clean) or will get
        // (dirty), whatever `T` would serialize to.
        self.value = Some(Typed {
            value: Box::new(decoded.clone()),
            to_json: None,
        });
        Ok(decoded)
    }
}

impl<'a> Docs<'a> {
    /// Documents over an in-memory store of JSON texts; writes stay in the
    /// cache until [`Docs::into_writes`].
    pub(crate) fn in_memory(store: &'a BTreeMap<String, String>) -> Self {
        Docs {
            backend: Backend::Memory(store),
            cache: RefCell::default(),
        }
    }

    /// Documents over the host's `read-model` import.
    #[cfg(target_family = "wasm")]
    pub(crate) fn host() -> Docs<'static> {
        Docs {
            backend: Backend::Host,
            cache: RefCell::default(),
        }
    }

    /// The document at `key`, decoded; `Ok(None)` if there is none.
    /// An error if the document does not decode as `T`.
    ///
    /// If the cache holds the document as a `T` (it was last put, or got, as
    /// one in this batch), this is a clone of it, without JSON.
    pub fn get<T: DeserializeOwned + Clone + 'static>(
        &self,
        key: &str,
    ) -> Result<Option<T>, String> {
        if !valid_key(key) {
            return Ok(None); // the store cannot hold it
        }
        let mut cache = self.cache.borrow_mut();
        if let Some(slot) = cache.get_mut(key) {
            return slot.doc.as_mut().map(|doc| doc.get(key)).transpose();
        }
        let doc = self.backend.get(key).map(|text| Doc {
            text: Some(text),
            value: None,
        });
        let slot = cache
            .entry(key.to_owned())
            .or_insert(Slot { dirty: false, doc });
        slot.doc.as_mut().map(|doc| doc.get(key)).transpose()
    }

    /// Stores `doc` at `key`, replacing what was there. An error if the key is
    /// empty or longer than [`MAX_KEY_BYTES`].
    ///
    /// The cache keeps a clone of `doc`; it is serialized at the end of the
    /// batch (or when a scan or a `get` as another type needs its JSON), and
    /// only if it is still the key's document then. If it does not serialize
    /// or is larger than [`MAX_DOC_BYTES`] as JSON, the batch fails there.
    pub fn put<T: Serialize + Clone + 'static>(
        &mut self,
        key: &str,
        doc: &T,
    ) -> Result<(), String> {
        if !valid_key(key) {
            return Err(format!(
                "read-model keys are 1 to {MAX_KEY_BYTES} bytes, not {} ({key:?})",
                key.len()
            ));
        }
        let cache = self.cache.get_mut();
        if let Some(slot) = cache.get_mut(key) {
            slot.put(doc);
        } else {
            let mut slot = Slot {
                dirty: true,
                doc: None,
            };
            slot.put(doc);
            cache.insert(key.to_owned(), slot);
        }
        Ok(())
    }

    /// Removes `key`; removing an absent key does nothing.
    pub fn delete(&mut self, key: &str) {
        if !valid_key(key) {
            return;
        }
        let cache = self.cache.get_mut();
        match cache.get_mut(key) {
            Some(slot) => {
                slot.dirty = true;
                slot.doc = None;
            }
            None => {
                cache.insert(
                    key.to_owned(),
                    Slot {
                        dirty: true,
                        doc: None,
                    },
                );
            }
        }
    }

    /// Up to `limit` documents whose keys start with `prefix`, in byte order
    /// of their keys, after `after` (exclusive) when it is given. Unlike one
    /// host call, `limit` may exceed [`MAX_SCAN`]: this pages through.
    ///
    /// An error if a document does not decode, or a document written in this
    /// batch does not serialize.
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
        let mut cache = self.cache.borrow_mut();
        // The batch's writes under the prefix need their JSON: serialized in
        // key order, so the first that fails is the same on every run.
        let written_under = |(key, slot): &(&String, &Slot)| slot.dirty && key.starts_with(prefix);
        let mut unserialized: Vec<String> = cache
            .iter()
            .filter(written_under)
            .filter(|(_, slot)| slot.doc.as_ref().is_some_and(|doc| doc.text.is_none()))
            .map(|(key, _)| key.clone())
            .collect();
        unserialized.sort_unstable();
        for key in &unserialized {
            if let Some(doc) = cache.get_mut(key).and_then(|slot| slot.doc.as_mut()) {
                doc.text(key)?;
            }
        }
        // ... and then, in key order, as JSON text (`None`: deleted).
        let mut written: Vec<(&str, Option<&str>)> = cache
            .iter()
            .filter(written_under)
            .map(|(key, slot)| {
                let text = slot.doc.as_ref().map(|doc| {
                    doc.text
                        .as_deref()
                        .expect("serialized just above for the scan")
                });
                (key.as_str(), text)
            })
            .collect();
        written.sort_unstable_by_key(|(key, _)| *key);
        loop {
            let page = self
                .backend
                .scan(prefix, cursor.as_deref(), page_size as u32);
            // A full page may have more after it: the cache's writes are merged
            // up to its last key only, and the next page carries on from there.
            let upper = (page.len() >= page_size).then(|| page[page.len() - 1].0.clone());
            let mut chunk: BTreeMap<String, String> = page.into_iter().collect();
            let lower = cursor.as_deref();
            let in_page = written.iter().filter(|(key, _)| {
                lower.is_none_or(|l| *key > l) && upper.as_deref().is_none_or(|u| *key <= u)
            });
            for (key, text) in in_page {
                match text {
                    Some(text) => {
                        chunk.insert(key.to_string(), text.to_string());
                    }
                    None => {
                        chunk.remove(*key);
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

    /// The batch's writes, in key order: `(key, Some(doc))` to store, `(key,
    /// None)` to remove. This is where each changed document is serialized:
    /// an error if one does not serialize or is above [`MAX_DOC_BYTES`].
    pub(crate) fn into_writes(self) -> Result<Vec<(String, Option<String>)>, String> {
        let mut writes = self
            .cache
            .into_inner()
            .into_iter()
            .filter(|(_, slot)| slot.dirty)
            .collect::<Vec<_>>();
        // The cache's order is arbitrary; the host gets the writes in key order.
        writes.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        writes
            .into_iter()
            .map(|(key, slot)| {
                let text = match slot.doc {
                    None => None,
                    Some(Doc {
                        text: Some(text), ..
                    }) => Some(text),
                    Some(doc) => Some(doc.serialize(&key)?),
                };
                Ok((key, text))
            })
            .collect()
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

/// The cache's hash: keys are the projection's own (often long, with long
/// shared prefixes such as `account/acc-0001234`), so a fast multiply-rotate
/// hash over 8 bytes at a time with a final mix, and fixed, with no random
/// seed: the guest needs no entropy, and the cache's order is never observed
/// (writes are sorted before they leave).
#[derive(Default)]
struct KeyHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl KeyHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for KeyHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn finish(&self) -> u64 {
        // fmix64 (MurmurHash3): every bit of the state reaches the low bits
        // the table indexes by and the high bits it tags with.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
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
        let writes = docs.into_writes().unwrap();
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
        assert_eq!(docs.get::<i64>("").unwrap(), None);
        // A document is measured when it is serialized: at the end of the
        // batch, and only if it is still the key's document then.
        docs.put("big", &"x".repeat(MAX_DOC_BYTES)).unwrap();
        docs.put("big", &"x".repeat(MAX_DOC_BYTES - 2)).unwrap();
        assert_eq!(docs.into_writes().unwrap().len(), 2);
        let mut docs = Docs::in_memory(&base);
        docs.put("fine", &1).unwrap();
        docs.put("big", &"x".repeat(MAX_DOC_BYTES - 1)).unwrap();
        let error = docs.into_writes().unwrap_err();
        assert!(error.contains("\"big\" is 65537 bytes"), "{error}");
        // A scan that needs its JSON finds out as well.
        let mut docs = Docs::in_memory(&base);
        docs.put("big", &"x".repeat(MAX_DOC_BYTES)).unwrap();
        assert!(docs.scan_all("b").unwrap_err().contains("above the limit"));
        assert_eq!(docs.scan_all("a").unwrap(), vec![]);
    }

    #[test]
    fn a_document_that_does_not_serialize_fails_the_batch() {
        let base = BTreeMap::new();
        let mut docs = Docs::in_memory(&base);
        // JSON object keys are strings; these are not.
        let bad = BTreeMap::from([(vec![1u8], 1)]);
        docs.put("bad", &bad).unwrap();
        assert!(
            docs.get::<Value>("bad")
                .unwrap_err()
                .contains("\"bad\" does not serialize")
        );
        assert!(
            docs.into_writes()
                .unwrap_err()
                .contains("\"bad\" does not serialize")
        );
    }

    #[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Account {
        owner: String,
        balance: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    }

    #[test]
    fn typed_documents_round_trip_without_json_and_flush_once_as_json() {
        let base = store(&[
            (
                "acc/1",
                json!({"owner": "Ada", "balance": 5, "extra": true}),
            ),
            ("acc/2", json!({"balance": 1, "owner": "Bob"})),
        ]);
        let mut docs = Docs::in_memory(&base);
        let mut ada: Account = docs.get("acc/1").unwrap().unwrap();
        assert_eq!(ada.balance, 5);
        // Read as another type, a clean document is decoded from the store's text.
        assert_eq!(
            docs.get::<Value>("acc/1").unwrap().unwrap()["extra"],
            json!(true)
        );
        for i in 0..10 {
            ada.balance += i;
            docs.put("acc/1", &ada).unwrap();
            ada = docs.get("acc/1").unwrap().unwrap();
        }
        assert_eq!(ada.balance, 50);
        // As another type, it is what its JSON decodes to.
        let ada_json: Value = docs.get("acc/1").unwrap().unwrap();
        assert_eq!(ada_json, json!({"owner": "Ada", "balance": 50}));
        // ... and as the type again, the value put.
        assert_eq!(docs.get::<Account>("acc/1").unwrap().unwrap(), ada);
        docs.put("acc/3", &json!({"owner": "Cy"})).unwrap();
        docs.put(
            "acc/3",
            &Account {
                owner: "Cy".into(),
                balance: -1,
                note: Some("new".into()),
            },
        )
        .unwrap();
        assert!(docs.get::<i64>("acc/2").is_err());
        assert!(docs.get::<i64>("acc/3").unwrap_err().contains("\"acc/3\""));
        docs.put("acc/4", &1).unwrap();
        docs.delete("acc/4");
        assert_eq!(docs.get::<Account>("acc/4").unwrap(), None);
        let scanned = docs.scan_all("acc/").unwrap();
        assert_eq!(
            scanned,
            vec![
                ("acc/1".into(), json!({"owner": "Ada", "balance": 50})),
                ("acc/2".into(), json!({"balance": 1, "owner": "Bob"})),
                (
                    "acc/3".into(),
                    json!({"owner": "Cy", "balance": -1, "note": "new"})
                ),
            ]
        );
        docs.put("acc/3", &Account::default()).unwrap();
        let writes = docs.into_writes().unwrap();
        assert_eq!(
            writes,
            vec![
                (
                    "acc/1".into(),
                    Some(r#"{"owner":"Ada","balance":50}"#.into())
                ),
                ("acc/3".into(), Some(r#"{"owner":"","balance":0}"#.into())),
                ("acc/4".into(), None),
            ]
        );
    }

    #[test]
    fn writes_leave_in_key_order_whatever_the_cache_order() {
        let base = BTreeMap::new();
        let mut docs = Docs::in_memory(&base);
        let mut keys: Vec<String> = (0..2000)
            .map(|i| format!("account/acc-{:07}", (i * 7919) % 2000))
            .collect();
        for key in &keys {
            docs.put(key, &key.len()).unwrap();
        }
        docs.delete("account/acc-0000007");
        keys.sort();
        let writes = docs.into_writes().unwrap();
        assert_eq!(
            writes.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            keys.iter().collect::<Vec<_>>()
        );
        assert_eq!(writes[7].1, None);
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
