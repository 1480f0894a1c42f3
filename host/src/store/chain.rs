//! The tamper-evident log: the writer's chain state at boot, seals on demand,
//! inclusion proofs and the re-walk that verifies chain and seals
//! (docs/store-format.md, "Hash chain" and "Seals").
//!
//! The writer extends the chain (`writer.rs`); everything here only reads,
//! except `seal`, which asks the writer.

use super::Store;
use super::error::StoreError;
use super::format;
use super::integrity::{self, Digest, SEAL_INTERVAL, Seal, SealSigner, ZERO};
use super::types::{Position, RecordedEvent};
pub(crate) use super::writer::ChainState;
use super::writer::WriterMessage;

/// One event and what proves it is in the log: its chain value, the Merkle
/// path from that value to the root of the seal that covers it.
#[derive(Clone, Debug)]
pub struct EventProof {
    pub event: RecordedEvent,
    /// The record's canonical bytes after the position (the stored body).
    pub body: Vec<u8>,
    /// The chain value at `event.position - 1` (32 zero bytes at position 1).
    pub previous_chain: Digest,
    pub seal: Seal,
    /// The event's leaf index in the seal: `position - seal.first_position`.
    pub leaf_index: u64,
    pub path: Vec<Digest>,
}

/// The chain and seals as they stand.
#[derive(Clone, Debug)]
pub struct IntegrityStatus {
    pub head: Position,
    /// The chain value at `head` (32 zero bytes for an empty log).
    pub chain: Digest,
    pub last_seal: Option<Seal>,
    /// Where the next automatic seal will be written.
    pub next_seal_at: Position,
    /// The key that signs seals written by this process, if any.
    pub public_key: Option<Digest>,
}

/// What a re-walk of the chain found.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    /// The range walked: whole seals around what was asked for.
    pub from: Position,
    pub to: Position,
    pub events: u64,
    pub seals: u64,
    /// Seals among `seals` that carry no signature: nothing but this walk
    /// vouches for them (a walk with a trusted key fails on the first).
    pub unsigned_seals: u64,
    /// The first position where the log is not what its chain and seals say.
    pub failure: Option<VerifyFailure>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct VerifyFailure {
    pub position: Position,
    pub reason: String,
}

/// Progress of a walk: called every few thousand events with (position, last
/// position of the walk); returning false stops the walk early.
pub type Progress<'a> = &'a mut dyn FnMut(Position, Position) -> bool;

/// The writer's chain state after the last durable event: the chain value at
/// the head, and the chain values since the last seal (at most 4,095 reads).
/// The last position the newest seal covers, from its key (0: none).
pub(crate) fn last_seal_end(db: &sled::Db) -> Result<Position, StoreError> {
    Ok(seal_key_at_or_before(db, u64::MAX)?.unwrap_or(0))
}

pub(crate) fn load_chain_state(
    db: &sled::Db,
    head: Position,
    signer: Option<std::sync::Arc<SealSigner>>,
) -> Result<ChainState, StoreError> {
    // Seal keys only: a seal that does not decode is for `verify` to report.
    let segment_first = seal_key_at_or_before(db, u64::MAX)?.map_or(1, |last| last + 1);
    if segment_first > head + 1 {
        return Err(StoreError::Corrupt {
            key: "K".into(),
            reason: format!(
                "a seal ends at {} beyond the log's head {head}",
                segment_first - 1
            ),
        });
    }
    let chain = match head {
        0 => ZERO,
        p => stored_chain(db, p)?,
    };
    let mut segment = Vec::with_capacity(SEAL_INTERVAL as usize);
    if segment_first <= head {
        // What the writer continues from must be whole: every position since
        // the last seal, fewer than a seal's worth (else a seal is missing).
        if head - segment_first + 1 >= SEAL_INTERVAL {
            return Err(StoreError::Corrupt {
                key: "K".into(),
                reason: format!(
                    "{} events since the last seal, which ends at {}: a seal is missing",
                    head - segment_first + 1,
                    segment_first - 1
                ),
            });
        }
        let tail = db.range(format::event_key(segment_first)..=format::event_key(head));
        for (expected, item) in (segment_first..).zip(tail) {
            let (key, value) = item.map_err(|e| StoreError::storage("reading the log", e))?;
            let position = format::position_of_event_key(&key)?;
            if position != expected {
                return Err(format::corrupt(
                    &format::event_key(expected),
                    "the event is missing",
                ));
            }
            segment.push(format::split_event(position, &value)?.0);
        }
    }
    Ok(ChainState {
        chain,
        segment,
        segment_first,
        signer,
    })
}

impl Store {
    /// The chain value at the head, the newest durable seal, the signing key.
    pub fn integrity(&self) -> Result<IntegrityStatus, StoreError> {
        let head = self.head();
        let db = &self.inner.db;
        let chain = match head {
            0 => ZERO,
            p => stored_chain(db, p)?,
        };
        let last_seal = durable_seal_at_or_before(db, self.sealed_upto().min(head))?;
        Ok(IntegrityStatus {
            head,
            chain,
            next_seal_at: next_seal_at(last_seal.as_ref()),
            last_seal,
            public_key: self.inner.public_key,
        })
    }

    /// Seals every event since the last seal now (the writer also seals every
    /// 4,096 positions on its own). Answers the newest seal: None only while
    /// the log is empty.
    pub async fn seal(&self) -> Result<Option<Seal>, StoreError> {
        self.ask_writer(WriterMessage::Seal).await
    }

    /// The proof that the event at `position` is in the log: None when there is
    /// no such durable event, `NotSealedYet` when no seal covers it yet. Re-walks
    /// the chain over the covering seal first (once per process and seal), so a
    /// log altered there yields `IntegrityViolation`, never a proof.
    pub fn proof(&self, position: Position) -> Result<Option<EventProof>, StoreError> {
        let head = self.head();
        if position == 0 || position > head {
            return Ok(None);
        }
        let db = &self.inner.db;
        let violation = |at: Position, reason: &str| StoreError::IntegrityViolation {
            position: at,
            reason: reason.to_string(),
        };
        // Only durable seals: a seal a crash could take back proves nothing.
        let sealed = self.sealed_upto().min(head);
        let Some(last) = seal_key_at_or_after(db, position, sealed)? else {
            return Err(StoreError::NotSealedYet {
                position,
                next_seal_at: seal_key_at_or_before(db, sealed)?.unwrap_or(0) + SEAL_INTERVAL,
            });
        };
        let seal = read_seal(db, last)
            .map_err(|e| violation(last, &format!("the seal is unreadable: {e}")))?;
        if seal.first_position > position {
            return Err(violation(
                seal.first_position - 1,
                "the seal that should end here is missing",
            ));
        }
        if seal.last_position - seal.first_position >= SEAL_INTERVAL {
            return Err(violation(
                seal.first_position + SEAL_INTERVAL - 1,
                "the seal that should end here is missing",
            ));
        }
        let chains = self.verified_seal(&seal)?;
        // The event itself, against the chain values the walk verified.
        let leaf_index = position - seal.first_position;
        let previous_chain = match leaf_index {
            0 => match anchor(db, seal.first_position)? {
                Ok(chain) => chain,
                Err(failure) => return Err(violation(failure.position, &failure.reason)),
            },
            i => chains[i as usize - 1],
        };
        let chain = chains[leaf_index as usize];
        let value = db
            .get(format::event_key(position))
            .map_err(|e| violation(position, &format!("the storage is unreadable here: {e}")))?
            .ok_or_else(|| violation(position, "the event is missing"))?;
        let (stored, body) = format::split_event(position, &value)
            .map_err(|e| violation(position, &format!("the record is unreadable: {e}")))?;
        if stored != chain || integrity::chain_next(&previous_chain, position, body) != chain {
            return Err(violation(
                position,
                "the record does not match its chain value",
            ));
        }
        Ok(Some(EventProof {
            event: format::decode_event_body(position, chain, body)
                .map_err(|e| violation(position, &format!("the record is unreadable: {e}")))?,
            path: integrity::inclusion_path(&chains, leaf_index as usize),
            body: body.to_vec(),
            previous_chain,
            seal,
            leaf_index,
        }))
    }

    /// The chain values a seal covers, re-walked from the previous seal's value
    /// and checked against its root, once per process: sealed events never
    /// change, so later proofs in the same seal reuse the walk (a cache of the
    /// last few seals).
    fn verified_seal(&self, seal: &Seal) -> Result<std::sync::Arc<Vec<Digest>>, StoreError> {
        if let Some(chains) = self
            .inner
            .verified_seals
            .lock()
            .expect("not poisoned")
            .get(&seal.last_position)
        {
            return Ok(chains.clone());
        }
        let db = &self.inner.db;
        let violation = |at: Position, reason: &str| StoreError::IntegrityViolation {
            position: at,
            reason: reason.to_string(),
        };
        let mut previous = match anchor(db, seal.first_position)? {
            Ok(chain) => chain,
            Err(failure) => return Err(violation(failure.position, &failure.reason)),
        };
        let mut chains =
            Vec::with_capacity((seal.last_position - seal.first_position + 1) as usize);
        let mut expected = seal.first_position;
        let range = format::event_key(seal.first_position)..=format::event_key(seal.last_position);
        for item in db.range(range) {
            let (key, value) = item.map_err(|e| {
                violation(expected, &format!("the storage is unreadable here: {e}"))
            })?;
            let at = format::position_of_event_key(&key)?;
            if at != expected {
                return Err(violation(expected, "the event is missing"));
            }
            let (stored, body) = format::split_event(at, &value)
                .map_err(|e| violation(at, &format!("the record is unreadable: {e}")))?;
            let chain = integrity::chain_next(&previous, at, body);
            if chain != stored {
                return Err(violation(at, "the record does not match its chain value"));
            }
            chains.push(chain);
            previous = chain;
            expected += 1;
        }
        if expected != seal.last_position + 1 {
            return Err(violation(expected, "the event is missing"));
        }
        if integrity::merkle_root(&chains) != seal.root || previous != seal.chain {
            return Err(violation(
                seal.last_position,
                "the seal does not match the events it covers",
            ));
        }
        let chains = std::sync::Arc::new(chains);
        self.inner
            .verified_seals
            .lock()
            .expect("not poisoned")
            .put(seal.last_position, chains.clone());
        Ok(chains)
    }

    /// Re-walks the chain and the seals over `from..=to` (widened to whole
    /// seals; `to` defaults to the head) and reports the first position where
    /// a record, a chain value or a seal is not what the rest says. With
    /// `trusted_key`, every seal must carry a valid signature by that key.
    pub fn verify_log(
        &self,
        from: Position,
        to: Option<Position>,
        trusted_key: Option<&Digest>,
        progress: Progress<'_>,
    ) -> Result<VerifyReport, StoreError> {
        let head = self.head();
        let db = &self.inner.db;
        let from = from.max(1);
        let to = to.unwrap_or(head).min(head);
        let mut report = VerifyReport {
            from,
            to,
            events: 0,
            seals: 0,
            unsigned_seals: 0,
            failure: None,
        };
        if from > to {
            return Ok(report);
        }
        // Whole seals: start after the last seal before `from`, end where the
        // first seal at or after `to` ends (or at the head). From the seal keys
        // alone: a seal that does not decode is reported by the walk.
        let start = seal_key_at_or_before(db, from - 1)?.map_or(1, |last| last + 1);
        let end = seal_key_at_or_after(db, to, self.sealed_upto().min(head))?.unwrap_or(head);
        report.from = start;
        report.to = end;
        let fail = |report: &mut VerifyReport, position: Position, reason: String| {
            report.failure = Some(VerifyFailure { position, reason });
        };
        let mut previous = match anchor(db, start)? {
            Ok(chain) => chain,
            Err(failure) => {
                report.failure = Some(failure);
                return Ok(report);
            }
        };
        let mut seals = db
            .range(format::seal_key(start)..=format::seal_key(end))
            .peekable();
        let mut segment: Vec<Digest> = Vec::with_capacity(SEAL_INTERVAL as usize);
        let mut segment_first = start;
        let mut expected = start;
        for item in db.range(format::event_key(start)..=format::event_key(end)) {
            // Damage below our records (sled's own pages) is damage too: it is
            // named at the position the walk could not read.
            let (key, value) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    fail(
                        &mut report,
                        expected,
                        format!("the storage is unreadable here: {e}"),
                    );
                    return Ok(report);
                }
            };
            let position = format::position_of_event_key(&key)?;
            if position != expected {
                fail(&mut report, expected, "the event is missing".into());
                return Ok(report);
            }
            let checked = format::split_event(position, &value).and_then(|(stored, body)| {
                format::decode_event_body(position, stored, body)?;
                Ok((stored, integrity::chain_next(&previous, position, body)))
            });
            let chain = match checked {
                Ok((stored, chain)) if stored == chain => chain,
                Ok(_) => {
                    let reason = "the record does not match its chain value (the record or \
                                  its chain value was altered)";
                    fail(&mut report, position, reason.into());
                    return Ok(report);
                }
                Err(e) => {
                    fail(
                        &mut report,
                        position,
                        format!("the record is unreadable: {e}"),
                    );
                    return Ok(report);
                }
            };
            previous = chain;
            segment.push(chain);
            report.events += 1;
            expected += 1;
            // The next seal must end here or later.
            if let Some(item) = seals.peek() {
                let (key, value) = match item.as_ref() {
                    Ok(kv) => kv,
                    Err(e) => {
                        let reason = format!("the seals' storage is unreadable here: {e}");
                        fail(&mut report, position, reason);
                        return Ok(report);
                    }
                };
                let seal_at = format::position_of_event_key(key)?;
                if seal_at < position {
                    fail(
                        &mut report,
                        seal_at,
                        "a seal ends where no event was".into(),
                    );
                    return Ok(report);
                }
                if seal_at == position {
                    let mut signed = false;
                    let checked = format::decode_seal(key, value).map(|seal| {
                        signed = seal.signature.is_some();
                        check_seal(&seal, segment_first, &segment, chain, trusted_key)
                    });
                    match checked {
                        Ok(Ok(())) => {}
                        Ok(Err(reason)) => {
                            fail(&mut report, seal_at, reason);
                            return Ok(report);
                        }
                        Err(e) => {
                            fail(&mut report, seal_at, format!("the seal is unreadable: {e}"));
                            return Ok(report);
                        }
                    }
                    seals.next();
                    report.seals += 1;
                    if !signed {
                        report.unsigned_seals += 1;
                    }
                    segment.clear();
                    segment_first = position + 1;
                }
            }
            if segment.len() as u64 > SEAL_INTERVAL {
                let missing = segment_first + SEAL_INTERVAL - 1;
                fail(&mut report, missing, "the seal due here is missing".into());
                return Ok(report);
            }
            if report.events.is_multiple_of(4096) && !progress(position, end) {
                return Ok(report);
            }
        }
        if expected != end + 1 {
            fail(&mut report, expected, "the event is missing".into());
        }
        if !report.events.is_multiple_of(4096) {
            progress(end, end);
        }
        Ok(report)
    }
}

/// Why `seal` does not cover `segment` (the chain values from `first`), if it does not.
pub(super) fn check_seal(
    seal: &Seal,
    first: Position,
    segment: &[Digest],
    chain: Digest,
    trusted_key: Option<&Digest>,
) -> Result<(), String> {
    if seal.first_position != first {
        return Err(format!(
            "the seal starts at {} but the previous one ended at {}",
            seal.first_position,
            first - 1
        ));
    }
    if seal.root != integrity::merkle_root(segment) {
        return Err("the seal's Merkle root does not match the events it covers".into());
    }
    if seal.chain != chain {
        return Err("the seal's chain value does not match the chain".into());
    }
    integrity::verify_seal_signature(seal, trusted_key)
        .map_err(|e| format!("the seal's signature: {e}"))
}

/// The stored chain value of the event at `position`.
fn stored_chain(db: &sled::Db, position: Position) -> Result<Digest, StoreError> {
    let value = db
        .get(format::event_key(position))
        .map_err(|e| StoreError::storage("reading an event", e))?
        .ok_or_else(|| format::corrupt(&format::event_key(position), "the event is missing"))?;
    Ok(format::split_event(position, &value)?.0)
}

/// The chain value a walk from `start` begins with: 32 zero bytes at 1; else
/// the stored chain value at `start - 1`, which, where a seal ends there, must
/// be the one that seal vouches for (else the failure names `start - 1`).
fn anchor(db: &sled::Db, start: Position) -> Result<Result<Digest, VerifyFailure>, StoreError> {
    if start <= 1 {
        return Ok(Ok(ZERO));
    }
    let at = start - 1;
    let fail = |reason: String| {
        Ok(Err(VerifyFailure {
            position: at,
            reason,
        }))
    };
    let stored = match stored_chain(db, at) {
        Ok(chain) => chain,
        Err(StoreError::Corrupt { reason, .. }) => {
            return fail(format!("the event before the walk is unreadable: {reason}"));
        }
        Err(e) => return Err(e),
    };
    if seal_key_at_or_after(db, at, at)?.is_some() {
        match read_seal(db, at) {
            Ok(seal) if seal.chain == stored => {}
            Ok(_) => {
                return fail("the event's chain value is not the one its seal vouches for".into());
            }
            Err(e) => return fail(format!("the seal is unreadable: {e}")),
        }
    }
    Ok(Ok(stored))
}

/// The last position of the first seal in `from..=to`, from its key alone.
fn seal_key_at_or_after(
    db: &sled::Db,
    from: Position,
    to: Position,
) -> Result<Option<Position>, StoreError> {
    if from > to {
        return Ok(None);
    }
    db.range(format::seal_key(from)..=format::seal_key(to))
        .next()
        .transpose()
        .map_err(|e| StoreError::storage("reading the seals", e))?
        .map(|(key, _)| format::position_of_event_key(&key))
        .transpose()
}

/// The last position of the newest seal ending at or before `position`.
fn seal_key_at_or_before(
    db: &sled::Db,
    position: Position,
) -> Result<Option<Position>, StoreError> {
    db.range(format::seal_key(0)..=format::seal_key(position))
        .next_back()
        .transpose()
        .map_err(|e| StoreError::storage("reading the seals", e))?
        .map(|(key, _)| format::position_of_event_key(&key))
        .transpose()
}

fn read_seal(db: &sled::Db, last: Position) -> Result<Seal, StoreError> {
    let key = format::seal_key(last);
    let value = db
        .get(key)
        .map_err(|e| StoreError::storage("reading a seal", e))?
        .ok_or_else(|| format::corrupt(&key, "the seal is missing"))?;
    format::decode_seal(&key, &value)
}

/// The newest seal that ends at or before `position`.
fn durable_seal_at_or_before(
    db: &sled::Db,
    position: Position,
) -> Result<Option<Seal>, StoreError> {
    seal_key_at_or_before(db, position)?
        .map(|last| read_seal(db, last))
        .transpose()
}

fn next_seal_at(last: Option<&Seal>) -> Position {
    last.map_or(0, |s| s.last_position) + SEAL_INTERVAL
}
