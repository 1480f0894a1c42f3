//! Seals on PostgreSQL: the same signed checkpoints as sled's writer makes
//! (`integrity::Seal`, the same encoding), over segments of at most
//! [`SEAL_INTERVAL`] positions, each starting where the previous one ended.
//!
//! Any host may seal: `refold_seal_head`'s row lock serializes sealers, so
//! segments never overlap or leave a gap, whichever host made them. Each
//! host's follower seals once the unsealed positions reach the interval (with
//! its signer, if it has one); [`PgStore::seal`] seals on demand.
//!
//! Proofs, `GET /v1/integrity` and the re-walk read them (below).

use super::super::EventStore;
use super::super::chain::{EventProof, IntegrityStatus, VerifyFailure, VerifyReport};
use super::super::error::StoreError;
use super::super::format;
use super::super::integrity::{self, Digest, SEAL_INTERVAL, Seal, SealSigner, ZERO};
use super::super::types::Position;
use super::{PgStore, big, pg_error, pool_error};

impl PgStore {
    /// Seals every committed position not sealed yet (in segments of at most
    /// [`SEAL_INTERVAL`]) and returns the newest seal (None: nothing was ever
    /// committed).
    pub async fn seal(&self) -> Result<Option<Seal>, StoreError> {
        match seal_upto(&self.inner.pool, self.inner.signer.as_deref(), 1).await? {
            Some(seal) => Ok(Some(seal)),
            None => Ok(self.seals(0, 1, true).await?.pop()),
        }
    }

    /// Up to `limit` seals, oldest first from the one covering `position`
    /// (or, `newest_first`, the newest ones first).
    pub async fn seals(
        &self,
        position: Position,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<Seal>, StoreError> {
        let client = self.inner.pool.get().await.map_err(pool_error)?;
        let sql = if newest_first {
            "SELECT last_position, record FROM refold_seals WHERE last_position >= $1 \
             ORDER BY last_position DESC LIMIT $2"
        } else {
            "SELECT last_position, record FROM refold_seals WHERE last_position >= $1 \
             ORDER BY last_position LIMIT $2"
        };
        client
            .query(sql, &[&big(position), &big(limit as u64)])
            .await
            .map_err(|e| pg_error("reading seals", e))?
            .iter()
            .map(|r| {
                let last = r.get::<_, i64>(0) as u64;
                format::decode_seal(&format::seal_key(last), r.get(1))
            })
            .collect()
    }
}

/// Seals the unsealed committed positions in segments of at most
/// [`SEAL_INTERVAL`], while at least `minimum` are unsealed (1: all of them;
/// [`SEAL_INTERVAL`]: full segments only, as the follower does). Returns the
/// newest seal it made.
pub(crate) async fn seal_upto(
    pool: &deadpool_postgres::Pool,
    signer: Option<&SealSigner>,
    minimum: u64,
) -> Result<Option<Seal>, StoreError> {
    {
        let mut client = pool.get().await.map_err(pool_error)?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| pg_error("sealing", e))?;
        let sealed = tx
            .query_one(
                "SELECT sealed FROM refold_seal_head WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await
            .map_err(|e| pg_error("locking the seals", e))?
            .get::<_, i64>(0) as Position;
        let head = tx
            .query_one("SELECT position FROM refold_head WHERE id = 1", &[])
            .await
            .map_err(|e| pg_error("reading the head", e))?
            .get::<_, i64>(0) as Position;
        let mut from = sealed + 1;
        let mut newest = None;
        while head >= from && head - from + 1 >= minimum {
            let last = head.min(from + SEAL_INTERVAL - 1);
            let rows = tx
                .query(
                    "SELECT position, chain FROM refold_events \
                     WHERE position BETWEEN $1 AND $2 ORDER BY position",
                    &[&big(from), &big(last)],
                )
                .await
                .map_err(|e| pg_error("reading chain values", e))?;
            if rows.len() as u64 != last - from + 1 {
                return Err(StoreError::IntegrityViolation {
                    position: from,
                    reason: "the events to seal are not all there".into(),
                });
            }
            let mut chains = Vec::with_capacity(rows.len());
            for row in &rows {
                let chain: &[u8] = row.get(1);
                chains.push(<[u8; 32]>::try_from(chain).map_err(|_| {
                    StoreError::IntegrityViolation {
                        position: row.get::<_, i64>(0) as u64,
                        reason: "a chain value that is not 32 bytes".into(),
                    }
                })?);
            }
            let mut seal = Seal {
                first_position: from,
                last_position: last,
                root: integrity::merkle_root(&chains),
                chain: *chains.last().expect("at least one"),
                sealed_at_ms: crate::clock::now_ms(),
                signature: None,
                public_key: None,
            };
            if let Some(signer) = signer {
                signer.sign(&mut seal);
            }
            tx.execute(
                "INSERT INTO refold_seals (last_position, first_position, record) VALUES ($1, $2, $3)",
                &[&big(last), &big(from), &format::encode_seal(&seal)],
            )
            .await
            .map_err(|e| pg_error("writing a seal", e))?;
            from = last + 1;
            newest = Some(seal);
        }
        tx.execute(
            "UPDATE refold_seal_head SET sealed = $1 WHERE id = 1",
            &[&big(from - 1)],
        )
        .await
        .map_err(|e| pg_error("moving the seals' head", e))?;
        tx.commit().await.map_err(|e| pg_error("sealing", e))?;
        Ok(newest)
    }
}

/// Proofs, the chain's status and the re-walk over PostgreSQL's seals: what
/// `chain.rs` answers on sled, from the same records (events keep sled's
/// chain values and canonical bodies, seals sled's encoding), so a proof from
/// either backend checks with the same code (`refold verify`).
impl PgStore {
    /// The head, its chain value, the newest seal and where the next is due.
    pub async fn integrity(&self) -> Result<IntegrityStatus, StoreError> {
        let head = EventStore::head(self);
        let chain = match head {
            0 => ZERO,
            p => self.chain_at(p).await?,
        };
        let last_seal = self.seal_at_or_before(head).await?;
        Ok(IntegrityStatus {
            head,
            chain,
            next_seal_at: last_seal.as_ref().map_or(0, |s| s.last_position) + SEAL_INTERVAL,
            last_seal,
            public_key: self.inner.signer.as_ref().map(|s| s.public_key()),
        })
    }

    /// The proof that the event at `position` is in the log (see sled's
    /// `Store::proof`): the covering seal's segment is re-walked first, so an
    /// altered log yields `IntegrityViolation`, never a proof.
    pub async fn proof(&self, position: Position) -> Result<Option<EventProof>, StoreError> {
        let head = EventStore::head(self);
        if position == 0 || position > head {
            return Ok(None);
        }
        let violation = |at: Position, reason: &str| StoreError::IntegrityViolation {
            position: at,
            reason: reason.to_string(),
        };
        let Some(seal) = self.seals(position, 1, false).await?.pop() else {
            return Err(StoreError::NotSealedYet {
                position,
                next_seal_at: self
                    .seal_at_or_before(head)
                    .await?
                    .map_or(0, |s| s.last_position)
                    + SEAL_INTERVAL,
            });
        };
        if seal.first_position > position {
            return Err(violation(
                seal.first_position - 1,
                "the seal that should end here is missing",
            ));
        }
        let previous = self
            .anchor(seal.first_position)
            .await?
            .map_err(|f| violation(f.position, &f.reason))?;
        let rows = self
            .segment(seal.first_position, seal.last_position)
            .await?;
        let chains = walk(previous, seal.first_position, seal.last_position, &rows)
            .map_err(|f| violation(f.position, &f.reason))?;
        if integrity::merkle_root(&chains) != seal.root || chains.last() != Some(&seal.chain) {
            return Err(violation(
                seal.last_position,
                "the seal does not match the events it covers",
            ));
        }
        let leaf_index = position - seal.first_position;
        let i = leaf_index as usize;
        let previous_chain = if i == 0 { previous } else { chains[i - 1] };
        let body = rows[i].2.clone();
        Ok(Some(EventProof {
            event: format::decode_event_body(position, chains[i], &body)
                .map_err(|e| violation(position, &format!("the record is unreadable: {e}")))?,
            path: integrity::inclusion_path(&chains, i),
            body,
            previous_chain,
            seal,
            leaf_index,
        }))
    }

    /// Re-walks the chain and the seals over `from..=to`, widened to whole
    /// seals (see sled's `Store::verify_log`). Positions after the newest
    /// seal are walked too; on PostgreSQL hosts seal full segments a moment
    /// after they fill, so an unsealed tail longer than a segment is not a
    /// failure here.
    pub async fn verify_log(
        &self,
        from: Position,
        to: Option<Position>,
        trusted_key: Option<&Digest>,
        progress: &mut dyn FnMut(Position, Position) -> bool,
    ) -> Result<VerifyReport, StoreError> {
        let head = EventStore::head(self);
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
        let client = self.client().await?;
        let bound = |sql: &'static str, at: Position| {
            let client = &client;
            async move {
                client
                    .query_one(sql, &[&big(at), &big(head)])
                    .await
                    .map(|r| r.get::<_, Option<i64>>(0).map(|p| p as Position))
                    .map_err(|e| pg_error("reading the seals", e))
            }
        };
        let start = bound(
            "SELECT max(last_position) FROM refold_seals WHERE last_position < $1 AND $2::bigint >= 0",
            from,
        )
        .await?
        .map_or(1, |p| p + 1);
        let end = bound(
            "SELECT min(last_position) FROM refold_seals WHERE last_position >= $1 AND last_position <= $2",
            to,
        )
        .await?
        .unwrap_or(head);
        report.from = start;
        report.to = end;
        let mut previous = match self.anchor(start).await? {
            Ok(chain) => chain,
            Err(failure) => {
                report.failure = Some(failure);
                return Ok(report);
            }
        };
        let seals: Vec<Seal> = client
            .query(
                "SELECT last_position, record FROM refold_seals \
                 WHERE last_position BETWEEN $1 AND $2 ORDER BY last_position",
                &[&big(start), &big(end)],
            )
            .await
            .map_err(|e| pg_error("reading seals", e))?
            .iter()
            .map(|r| format::decode_seal(&format::seal_key(r.get::<_, i64>(0) as u64), r.get(1)))
            .collect::<Result<_, _>>()?;
        let mut next = start;
        // Each seal's segment, then the unsealed tail a segment at a time.
        let mut segments: Vec<(Position, Option<&Seal>)> =
            seals.iter().map(|s| (s.last_position, Some(s))).collect();
        let sealed_to = seals.last().map_or(start - 1, |s| s.last_position);
        let mut tail = sealed_to + 1;
        while tail <= end {
            let last = end.min(tail + SEAL_INTERVAL - 1);
            segments.push((last, None));
            tail = last + 1;
        }
        for (last, seal) in segments {
            let rows = self.segment(next, last).await?;
            let chains = match walk(previous, next, last, &rows) {
                Ok(chains) => chains,
                Err(failure) => {
                    report.events += failure.position - next;
                    report.failure = Some(failure);
                    return Ok(report);
                }
            };
            report.events += chains.len() as u64;
            let chain = *chains.last().expect("a segment has events");
            if let Some(seal) = seal {
                if let Err(reason) =
                    super::super::chain::check_seal(seal, next, &chains, chain, trusted_key)
                {
                    report.failure = Some(VerifyFailure {
                        position: seal.last_position,
                        reason,
                    });
                    return Ok(report);
                }
                report.seals += 1;
                report.unsigned_seals += u64::from(seal.signature.is_none());
            }
            previous = chain;
            next = last + 1;
            if !progress(last, end) {
                return Ok(report);
            }
        }
        Ok(report)
    }

    async fn chain_at(&self, position: Position) -> Result<Digest, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT chain FROM refold_events WHERE position = $1",
                &[&big(position)],
            )
            .await
            .map_err(|e| pg_error("reading a chain value", e))?
            .ok_or_else(|| StoreError::IntegrityViolation {
                position,
                reason: "the event is missing".into(),
            })?;
        digest(position, row.get(0)).map_err(|f| StoreError::IntegrityViolation {
            position,
            reason: f.reason,
        })
    }

    async fn seal_at_or_before(&self, position: Position) -> Result<Option<Seal>, StoreError> {
        self.client()
            .await?
            .query_opt(
                "SELECT last_position, record FROM refold_seals WHERE last_position <= $1 \
                 ORDER BY last_position DESC LIMIT 1",
                &[&big(position)],
            )
            .await
            .map_err(|e| pg_error("reading seals", e))?
            .map(|r| format::decode_seal(&format::seal_key(r.get::<_, i64>(0) as u64), r.get(1)))
            .transpose()
    }

    /// `(chain, body)` of the events `first..=last`, in order (gaps show as a short answer).
    async fn segment(
        &self,
        first: Position,
        last: Position,
    ) -> Result<Vec<(Position, Vec<u8>, Vec<u8>)>, StoreError> {
        Ok(self
            .client()
            .await?
            .query(
                "SELECT position, chain, body FROM refold_events \
                 WHERE position BETWEEN $1 AND $2 ORDER BY position",
                &[&big(first), &big(last)],
            )
            .await
            .map_err(|e| pg_error("reading events", e))?
            .iter()
            .map(|r| (r.get::<_, i64>(0) as Position, r.get(1), r.get(2)))
            .collect())
    }

    /// The chain value a walk from `start` begins with (see sled's `anchor`):
    /// zero at 1, else the stored value at `start - 1`, which must be the one
    /// a seal ending there vouches for.
    async fn anchor(&self, start: Position) -> Result<Result<Digest, VerifyFailure>, StoreError> {
        if start <= 1 {
            return Ok(Ok(ZERO));
        }
        let at = start - 1;
        let stored = match self.chain_at(at).await {
            Ok(chain) => chain,
            Err(StoreError::IntegrityViolation { reason, .. }) => {
                return Ok(Err(VerifyFailure {
                    position: at,
                    reason: format!("the event before the walk is unreadable: {reason}"),
                }));
            }
            Err(e) => return Err(e),
        };
        if let Some(seal) = self.seals(at, 1, false).await?.pop()
            && seal.last_position == at
            && seal.chain != stored
        {
            return Ok(Err(VerifyFailure {
                position: at,
                reason: "the event's chain value is not the one its seal vouches for".into(),
            }));
        }
        Ok(Ok(stored))
    }
}

type Row = (Position, Vec<u8>, Vec<u8>);

fn digest(position: Position, bytes: &[u8]) -> Result<Digest, VerifyFailure> {
    <[u8; 32]>::try_from(bytes).map_err(|_| VerifyFailure {
        position,
        reason: "a chain value that is not 32 bytes".into(),
    })
}

/// The chain values of `rows` (the events `first..=last`), each recomputed
/// from the one before and its body and checked against the stored one.
fn walk(
    mut previous: Digest,
    first: Position,
    last: Position,
    rows: &[Row],
) -> Result<Vec<Digest>, VerifyFailure> {
    let mut chains = Vec::with_capacity(rows.len());
    let mut expected = first;
    for (position, stored, body) in rows {
        if *position != expected {
            return Err(VerifyFailure {
                position: expected,
                reason: "the event is missing".into(),
            });
        }
        let stored = digest(*position, stored)?;
        if let Err(e) = format::decode_event_body(*position, stored, body) {
            return Err(VerifyFailure {
                position: *position,
                reason: format!("the record is unreadable: {e}"),
            });
        }
        let chain = integrity::chain_next(&previous, *position, body);
        if chain != stored {
            return Err(VerifyFailure {
                position: *position,
                reason: "the record does not match its chain value (the record or its chain \
                         value was altered)"
                    .into(),
            });
        }
        chains.push(chain);
        previous = chain;
        expected += 1;
    }
    if expected != last + 1 {
        return Err(VerifyFailure {
            position: expected,
            reason: "the event is missing".into(),
        });
    }
    Ok(chains)
}
