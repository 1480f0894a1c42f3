//! Seals on PostgreSQL: the same signed checkpoints as sled's writer makes
//! (`integrity::Seal`, the same encoding), over segments of at most
//! [`SEAL_INTERVAL`] positions, each starting where the previous one ended.
//!
//! Any host may seal: `refold_seal_head`'s row lock serializes sealers, so
//! segments never overlap or leave a gap, whichever host made them. Each
//! host's follower seals once the unsealed positions reach the interval (with
//! its signer, if it has one); [`PgStore::seal`] seals on demand.
//!
//! Not yet read by proofs or `refold verify` (they read sled); the seals are
//! checked by their tests against the chain values they cover.

use super::super::error::StoreError;
use super::super::format;
use super::super::integrity::{self, SEAL_INTERVAL, Seal, SealSigner};
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
