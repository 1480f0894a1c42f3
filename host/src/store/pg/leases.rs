//! Leases with fencing tokens: the PostgreSQL side of "one runner per
//! projection version across all hosts".
//!
//! A runner takes the lease named after its projection version, renews it
//! well within its time, and commits each batch with
//! [`super::PgReadModel::commit`], which checks in the same transaction that
//! the lease's token is still the runner's (holding the lease row, so no
//! takeover can interleave). A lease that lapses is taken over by any host
//! with a new token; from then on the old holder's renewals and commits fail
//! with [`Refused::LeaseLost`], so no batch is ever applied twice.
//!
//! The projection runner takes them through `projections::tenure`.

use std::time::Duration;

use deadpool_postgres::Pool;

use super::super::error::StoreError;
use super::super::types::Position;
use super::{pg_error, pool_error};

/// A holder name no other holder has: the host name, the process id, when
/// the process started and a number unique in the process (two services in
/// one process are two holders). Holders that share a name share a token.
pub fn unique_holder() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static STARTED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let started = *STARTED.get_or_init(crate::clock::now_ms);
    format!(
        "{host}:{}:{started}:{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

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
    /// The commit would move the checkpoint back (events would be applied twice).
    CheckpointBackwards { from: Position, to: Position },
    /// The read model was rebuilt (a new generation) or dropped since this
    /// runner opened it: its batch belongs to nothing any more.
    GenerationGone { name: String, generation: i64 },
}

/// The leases of one database.
#[derive(Clone)]
pub struct Leases {
    pool: Pool,
}

fn ttl_ms(ttl: Duration) -> f64 {
    (ttl.as_millis().min(i64::MAX as u128) as f64).max(1.0)
}

impl Leases {
    pub(crate) fn new(pool: Pool) -> Self {
        Leases { pool }
    }

    /// Takes the lease `name` for `holder` for `ttl` if it is free or has
    /// lapsed (a new token), or renews it if `holder` already has it (the same
    /// token). None when another holder's lease is still running. The
    /// database's clock decides what lapsed.
    ///
    /// A standby asks every second: when the statement's snapshot shows
    /// another holder's running lease, it inserts nothing, so it neither
    /// locks the row nor writes (an `ON CONFLICT DO UPDATE` locks the
    /// conflicting row, and so writes it, even when its `WHERE` is false).
    /// Otherwise the conflict clause decides again, under the row's lock.
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
                 SELECT $1::text, $2::text, 1, \
                        clock_timestamp() + $3::float8 * interval '1 millisecond' \
                 WHERE NOT EXISTS (SELECT 1 FROM refold_leases r WHERE r.name = $1::text \
                   AND r.holder <> $2::text AND r.expires_at >= clock_timestamp()) \
                 ON CONFLICT (name) DO UPDATE SET \
                   token = CASE WHEN l.holder = $2 AND l.expires_at >= clock_timestamp() \
                                THEN l.token ELSE l.token + 1 END, \
                   holder = $2, \
                   expires_at = clock_timestamp() + $3::float8 * interval '1 millisecond' \
                 WHERE l.holder = $2 OR l.expires_at < clock_timestamp() \
                 RETURNING token",
                &[&name, &holder, &ttl_ms(ttl)],
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
                "UPDATE refold_leases \
                 SET expires_at = clock_timestamp() + $3::float8 * interval '1 millisecond' \
                 WHERE name = $1 AND token = $2",
                &[&lease.name, &lease.token, &ttl_ms(ttl)],
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
}

impl Leases {
    /// Gives a held lease up (at a clean stop), so another host takes over at
    /// once rather than after its time; nothing if it moved on already.
    pub async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .execute(
                "UPDATE refold_leases SET expires_at = clock_timestamp() - interval '1 millisecond' \
                 WHERE name = $1 AND token = $2",
                &[&lease.name, &lease.token],
            )
            .await
            .map_err(|e| pg_error("releasing a lease", e))?;
        Ok(())
    }
}

/// Checks, inside `tx`, that `lease` still holds: takes the lease row in
/// share mode until COMMIT, so a takeover waits for this transaction and a
/// commit after a takeover sees the new token.
pub(crate) async fn hold(
    tx: &deadpool_postgres::Transaction<'_>,
    lease: &Lease,
) -> Result<Result<(), Refused>, StoreError> {
    let token: Option<i64> = tx
        .query_opt(
            "SELECT token FROM refold_leases WHERE name = $1 FOR SHARE",
            &[&lease.name],
        )
        .await
        .map_err(|e| pg_error("checking a lease", e))?
        .map(|r| r.get(0));
    Ok(if token == Some(lease.token) {
        Ok(())
    } else {
        Err(Refused::LeaseLost {
            name: lease.name.clone(),
            token: lease.token,
        })
    })
}
