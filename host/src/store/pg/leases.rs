//! Leases with fencing tokens, and read-model commits fenced by them: the
//! PostgreSQL side of "one runner per projection version across all hosts".
//!
//! A runner takes the lease named after its projection version, renews it
//! well within its time, and commits each batch of documents with
//! [`ReadModels::commit`], which in one transaction checks that the lease's
//! token is still the runner's (holding the lease row, so no takeover can
//! interleave) and compares-and-sets the checkpoint. A lease that lapses is
//! taken over by any host with a new token; from then on the old holder's
//! renewals and commits fail with [`Refused::LeaseLost`], so no batch is ever
//! applied twice.
//!
//! Not wired to the projection runner yet: the services still keep read
//! models in sled. These are the primitives that runner will use.

use std::time::Duration;

use deadpool_postgres::Pool;

use super::super::error::StoreError;
use super::super::types::Position;
use super::{big, pg_error, pool_error};

/// A held lease: its name, who holds it, and the fencing token it was granted with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    pub token: i64,
}

/// Why a lease operation or a fenced commit was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Another holder has the lease (or took it over): this one must stop.
    LeaseLost { name: String, token: i64 },
    /// The read model's checkpoint is not where the commit says it starts.
    CheckpointMoved {
        name: String,
        expected: Position,
        actual: Position,
    },
}

/// Leases and fenced read models over one database.
#[derive(Clone)]
pub struct ReadModels {
    pool: Pool,
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl ReadModels {
    pub(crate) fn new(pool: Pool) -> Self {
        ReadModels { pool }
    }

    /// Takes the lease `name` for `holder` for `ttl` if it is free or has
    /// lapsed (a new token), or renews it if `holder` already has it (the same
    /// token). None when another holder's lease is still running.
    pub async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let row = client
            .query_opt(
                "INSERT INTO refold_leases AS l (name, holder, token, expires_at) \
                 VALUES ($1, $2, 1, clock_timestamp() + $3::float8 * interval '1 millisecond') \
                 ON CONFLICT (name) DO UPDATE SET \
                   token = CASE WHEN l.holder = $2 AND l.expires_at >= clock_timestamp() \
                                THEN l.token ELSE l.token + 1 END, \
                   holder = $2, \
                   expires_at = clock_timestamp() + $3::float8 * interval '1 millisecond' \
                 WHERE l.holder = $2 OR l.expires_at < clock_timestamp() \
                 RETURNING token",
                &[&name, &holder, &(ttl_ms(ttl) as f64)],
            )
            .await
            .map_err(|e| pg_error("taking a lease", e))?;
        Ok(row.map(|r| Lease {
            name: name.to_string(),
            holder: holder.to_string(),
            token: r.get(0),
        }))
    }

    /// Extends a held lease. Fails with `LeaseLost` once another holder took
    /// it over (a lapsed lease nobody took is still this holder's).
    pub async fn renew(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Result<(), Refused>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let n = client
            .execute(
                "UPDATE refold_leases SET expires_at = clock_timestamp() + $3::float8 * interval '1 millisecond' \
                 WHERE name = $1 AND token = $2",
                &[&lease.name, &lease.token, &(ttl_ms(ttl) as f64)],
            )
            .await
            .map_err(|e| pg_error("renewing a lease", e))?;
        Ok(if n == 1 {
            Ok(())
        } else {
            Err(Refused::LeaseLost {
                name: lease.name.clone(),
                token: lease.token,
            })
        })
    }

    /// The read model's checkpoint (0 when it has none yet).
    pub async fn checkpoint(&self, name: &str) -> Result<Position, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let row = client
            .query_opt(
                "SELECT checkpoint FROM refold_read_models WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(|e| pg_error("reading a checkpoint", e))?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0) as Position))
    }

    pub async fn document(&self, name: &str, key: &str) -> Result<Option<String>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let row = client
            .query_opt(
                "SELECT doc FROM refold_documents WHERE name = $1 AND key = $2",
                &[&name, &key],
            )
            .await
            .map_err(|e| pg_error("reading a document", e))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Writes a batch's document changes (None deletes) and moves the
    /// checkpoint from `from` to `to`, in one transaction, only while `lease`
    /// (named after the read model) is still the holder's and the checkpoint
    /// is still `from`.
    pub async fn commit(
        &self,
        lease: &Lease,
        from: Position,
        to: Position,
        changes: &[(String, Option<String>)],
    ) -> Result<Result<(), Refused>, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| pg_error("starting a read-model commit", e))?;
        // Holding the lease row until COMMIT: a takeover waits for this
        // commit, and a commit after a takeover sees the new token.
        let token: Option<i64> = tx
            .query_opt(
                "SELECT token FROM refold_leases WHERE name = $1 FOR SHARE",
                &[&lease.name],
            )
            .await
            .map_err(|e| pg_error("checking a lease", e))?
            .map(|r| r.get(0));
        if token != Some(lease.token) {
            return Ok(Err(Refused::LeaseLost {
                name: lease.name.clone(),
                token: lease.token,
            }));
        }
        tx.execute(
            "INSERT INTO refold_read_models (name, checkpoint, token) VALUES ($1, 0, $2) \
             ON CONFLICT (name) DO NOTHING",
            &[&lease.name, &lease.token],
        )
        .await
        .map_err(|e| pg_error("creating a read model", e))?;
        let moved = tx
            .execute(
                "UPDATE refold_read_models SET checkpoint = $3, token = $4 \
                 WHERE name = $1 AND checkpoint = $2",
                &[&lease.name, &big(from), &big(to), &lease.token],
            )
            .await
            .map_err(|e| pg_error("moving a checkpoint", e))?;
        if moved != 1 {
            let actual: i64 = tx
                .query_one(
                    "SELECT checkpoint FROM refold_read_models WHERE name = $1",
                    &[&lease.name],
                )
                .await
                .map_err(|e| pg_error("reading a checkpoint", e))?
                .get(0);
            return Ok(Err(Refused::CheckpointMoved {
                name: lease.name.clone(),
                expected: from,
                actual: actual as Position,
            }));
        }
        let (upserts, deletes): (Vec<_>, Vec<_>) = changes.iter().partition(|(_, d)| d.is_some());
        if !upserts.is_empty() {
            let keys: Vec<&str> = upserts.iter().map(|(k, _)| k.as_str()).collect();
            let docs: Vec<&str> = upserts
                .iter()
                .map(|(_, d)| d.as_deref().unwrap_or(""))
                .collect();
            tx.execute(
                "INSERT INTO refold_documents (name, key, doc) \
                 SELECT $1, k, d FROM unnest($2::text[], $3::text[]) AS t(k, d) \
                 ON CONFLICT (name, key) DO UPDATE SET doc = EXCLUDED.doc",
                &[&lease.name, &keys, &docs],
            )
            .await
            .map_err(|e| pg_error("writing documents", e))?;
        }
        if !deletes.is_empty() {
            let keys: Vec<&str> = deletes.iter().map(|(k, _)| k.as_str()).collect();
            tx.execute(
                "DELETE FROM refold_documents WHERE name = $1 AND key = ANY($2)",
                &[&lease.name, &keys],
            )
            .await
            .map_err(|e| pg_error("deleting documents", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| pg_error("committing a read-model batch", e))?;
        Ok(Ok(()))
    }
}
