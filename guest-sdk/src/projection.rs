//! What a projection author implements ([`Projection`]) and sees ([`Envelope`]).

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Docs, Schema};

/// A projection: folds events of the global log into a read model of JSON
/// documents ([`Docs`]) and answers named queries from it.
///
/// It is stateless: everything it knows lives in the read model, which the
/// host keeps per projection version. Like an aggregate it must be
/// deterministic (no clock but the events', no I/O), so a rebuild from the log
/// gives the same documents.
pub trait Projection {
    /// The events it decodes, tagged with `#[serde(tag = "type")]` like an
    /// aggregate's (an aggregate's own `Event` enum can be reused as is).
    /// Every event the [`subscription`](Projection::subscription) admits must
    /// decode: a failure stops the projection at that event.
    type Event: DeserializeOwned;

    /// The events it wants; the host passes it no others. Default: the whole log.
    fn subscription() -> Selector {
        Selector::all()
    }

    /// The upcasters that bring older events to the shapes `Event` decodes
    /// ([`Schema`]); an aggregate's can be reused as is. Default: none.
    fn schema() -> Schema {
        Schema::new()
    }

    /// Applies one event to the read model. An error stops the projection at
    /// this event: none of the batch's writes are kept.
    ///
    /// The usual shape is get, change, put, with the documents as plain
    /// structs (`Serialize + Deserialize + Clone`, no borrowed fields):
    ///
    /// ```ignore
    /// #[derive(Clone, Default, Serialize, Deserialize)]
    /// struct Account { owner: String, balance: i64 }
    ///
    /// fn apply(docs: &mut Docs<'_>, event: &Envelope<Event>) -> Result<(), String> {
    ///     let key = format!("account/{}", event.aggregate_id);
    ///     let mut account: Account = docs.get(&key)?.unwrap_or_default();
    ///     match &event.event {
    ///         Event::Opened { owner } => account.owner.clone_from(owner),
    ///         Event::Deposited { amount } => account.balance += amount,
    ///     }
    ///     docs.put(&key, &account)
    /// }
    /// ```
    ///
    /// Within a batch, [`Docs`] keeps each document as the value last put (or
    /// first got): getting it again as the same type is a clone, and it becomes
    /// JSON once, when the batch is written. Its `Serialize` and `Deserialize`
    /// must therefore round-trip, as derived ones of plain data do.
    fn apply(docs: &mut Docs<'_>, event: &Envelope<Self::Event>) -> Result<(), String>;

    /// Answers a named query from the read model (read-only). `args` is the
    /// caller's JSON arguments (`{}` when there are none). Default: no queries.
    fn query(docs: &Docs<'_>, name: &str, args: &Value) -> Result<Value, QueryError> {
        let _ = (docs, name, args);
        Err(QueryError::UnknownQuery)
    }
}

/// An event of the global log with its decoded payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope<E> {
    /// Its position in the global log: 1, 2, 3, ... (positions the
    /// subscription filters out are skipped, so a projection sees gaps).
    pub position: u64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Its version in its aggregate's stream: 1, 2, 3, ...
    pub version: u64,
    pub event_id: String,
    pub event_type: String,
    /// Unix milliseconds when it was committed.
    pub recorded_at_ms: u64,
    pub event: E,
}

/// Which events a projection wants. An empty list admits everything, so the
/// default (both empty) is the whole log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub event_types: Vec<String>,
    pub aggregate_types: Vec<String>,
}

impl Selector {
    /// Every event of the log.
    pub fn all() -> Self {
        Selector::default()
    }

    /// The events of these aggregate types (of any event type).
    pub fn aggregate_types<S: Into<String>>(types: impl IntoIterator<Item = S>) -> Self {
        Selector {
            event_types: Vec::new(),
            aggregate_types: types.into_iter().map(Into::into).collect(),
        }
    }

    /// The events of these event types (of any aggregate type).
    pub fn event_types<S: Into<String>>(types: impl IntoIterator<Item = S>) -> Self {
        Selector {
            event_types: types.into_iter().map(Into::into).collect(),
            aggregate_types: Vec::new(),
        }
    }

    /// Narrows this selector to these event types as well.
    pub fn with_event_types<S: Into<String>>(mut self, types: impl IntoIterator<Item = S>) -> Self {
        self.event_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Whether an event of this aggregate type and event type is admitted,
    /// by the contract's rule (an empty list admits everything).
    pub fn matches(&self, aggregate_type: &str, event_type: &str) -> bool {
        (self.aggregate_types.is_empty()
            || self.aggregate_types.iter().any(|t| t == aggregate_type))
            && (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
    }
}

/// Why a query gave no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryError {
    /// The projection has no query by this name.
    UnknownQuery,
    /// The query exists; its arguments do not fit it (a sentence saying why).
    BadArguments(String),
}

impl QueryError {
    pub fn bad_arguments(reason: impl Into<String>) -> Self {
        QueryError::BadArguments(reason.into())
    }
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::UnknownQuery => f.write_str("unknown query"),
            QueryError::BadArguments(reason) => write!(f, "bad arguments: {reason}"),
        }
    }
}

impl std::error::Error for QueryError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_lists_admit_everything() {
        assert!(Selector::all().matches("a", "B"));
        let s = Selector::aggregate_types(["bank-account"]);
        assert!(s.matches("bank-account", "Opened"));
        assert!(!s.matches("order", "Opened"));
        let s = s.with_event_types(["Opened", "Closed"]);
        assert!(s.matches("bank-account", "Closed"));
        assert!(!s.matches("bank-account", "Deposited"));
        assert!(Selector::event_types(["X"]).matches("any", "X"));
    }
}
