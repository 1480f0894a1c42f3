//! The store's one error type: each variant is something a caller can act on.

use std::path::PathBuf;

use super::types::{EventId, ExpectedVersion, StreamId, StreamVersion};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stream is not at the version the writer expected. Re-read and decide again.
    #[error("wrong expected version for stream {stream}: expected {expected}, actual {actual}")]
    WrongExpectedVersion {
        stream: StreamId,
        expected: ExpectedVersion,
        /// The stream's current version (0: the stream does not exist).
        actual: StreamVersion,
    },

    /// The aggregate type or id is not acceptable.
    #[error("invalid stream: {0}")]
    InvalidStream(String),

    /// An event of the append is not acceptable; nothing was written.
    #[error("invalid event #{index} of the append: {reason}")]
    InvalidEvent { index: usize, reason: String },

    /// An event id of the append is already used, and the append is not an exact
    /// repeat of an earlier one (see docs/store-format.md, "Idempotency").
    #[error(
        "event id {event_id} is already recorded at {stream} version {version}, and this append does not repeat that write"
    )]
    DuplicateEventId {
        event_id: EventId,
        stream: StreamId,
        version: StreamVersion,
    },

    /// The command id was already used for a different request: a command on
    /// another stream, or (when both fingerprints are known) another request.
    #[error(
        "command id {command_id} was already used for a different request (a command on {stream})"
    )]
    CommandIdInUse {
        command_id: String,
        stream: StreamId,
    },

    /// Another process holds the data directory.
    #[error(
        "data directory {path} is in use by another process ({holder}); stop it or choose another directory"
    )]
    Locked { path: PathBuf, holder: String },

    /// The disk or sled failed. After a failed write the store refuses further
    /// writes until it is reopened, because what reached the disk is unknown.
    #[error("storage failure while {context}: {message}")]
    Storage {
        context: &'static str,
        message: String,
    },

    /// A record on disk could not be decoded (corruption, or a newer format).
    #[error("corrupt or unreadable record {key}: {reason}")]
    Corrupt { key: String, reason: String },

    /// No seal covers the event yet, so there is no proof for it yet.
    #[error(
        "event {position} is not sealed yet; the next seal is due at position {next_seal_at} (or ask for one: POST /v1/integrity/seal)"
    )]
    NotSealedYet { position: u64, next_seal_at: u64 },

    /// The log is not what its hash chain and seals say: altered on disk.
    #[error("integrity violation at position {position}: {reason}")]
    IntegrityViolation { position: u64, reason: String },

    /// The store is closed, or stopped writing after a storage failure.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),

    /// This backend does not offer the operation (see `store::backend`).
    #[error("{what} is not available on the {backend} backend")]
    Unsupported {
        what: &'static str,
        backend: &'static str,
    },

    /// A projection version's lease moved to another host (or its checkpoint
    /// did): this host must stop running it; nothing was written.
    #[error("the lease is lost: {0}")]
    LeaseLost(String),

    /// An activation names a module version the registry does not hold (it
    /// was removed, perhaps by another host a moment before).
    #[error("{name}@{version} is not registered (it may have been removed on another host)")]
    ModuleNotRegistered { name: String, version: String },

    /// A removal names the active version (it may have been activated by
    /// another host a moment before).
    #[error("{name}@{version} is the active version and cannot be removed")]
    ModuleActive { name: String, version: String },
}

impl StoreError {
    pub(crate) fn storage(context: &'static str, err: impl std::fmt::Display) -> Self {
        StoreError::Storage {
            context,
            message: err.to_string(),
        }
    }

    /// A stable machine-readable code, used by the HTTP API and logs.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::WrongExpectedVersion { .. } => "wrong_expected_version",
            StoreError::InvalidStream(_) => "invalid_stream",
            StoreError::InvalidEvent { .. } => "invalid_event",
            StoreError::DuplicateEventId { .. } => "duplicate_event_id",
            StoreError::CommandIdInUse { .. } => "command_id_in_use",
            StoreError::Locked { .. } => "data_dir_locked",
            StoreError::Storage { .. } => "storage_failure",
            StoreError::Corrupt { .. } => "corrupt_record",
            StoreError::NotSealedYet { .. } => "not_sealed_yet",
            StoreError::IntegrityViolation { .. } => "integrity_violation",
            StoreError::Unavailable(_) => "store_unavailable",
            StoreError::Unsupported { .. } => "not_supported_by_backend",
            StoreError::LeaseLost(_) => "lease_lost",
            StoreError::ModuleNotRegistered { .. } => "not_found",
            StoreError::ModuleActive { .. } => "module_active",
        }
    }
}
