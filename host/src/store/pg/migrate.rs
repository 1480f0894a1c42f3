//! The schema: versioned migrations kept in the repository (`migrations/`),
//! applied in order by whichever host starts first. Each runs in its own
//! transaction with its record in `refold_migrations`, under an advisory lock,
//! so hosts starting together apply each migration exactly once, and a
//! database from a newer build is refused rather than misread.

use tokio_postgres::Client;

use super::super::error::StoreError;
use super::pg_error;

/// `(version, name, sql)`, in order. Never edit a released one: add the next.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "event_log",
        include_str!("migrations/0001_event_log.sql"),
    ),
    (
        2,
        "read_models",
        include_str!("migrations/0002_read_models.sql"),
    ),
    (3, "catalog", include_str!("migrations/0003_catalog.sql")),
    (4, "seals", include_str!("migrations/0004_seals.sql")),
];

/// Arbitrary, fixed: the advisory lock key migrations hold ("refold" in ASCII).
const MIGRATION_LOCK: i64 = 0x7265_666f_6c64;

/// The schema version this build reads and writes.
pub fn schema_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

pub(crate) async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS refold_migrations (\
               version integer PRIMARY KEY, name text NOT NULL, \
               applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .or_else(|e| {
            // Two hosts creating it at once: one of them loses the race on the catalog.
            if e.as_db_error()
                .is_some_and(|d| d.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
            {
                Ok(())
            } else {
                Err(pg_error("creating refold_migrations", e))
            }
        })?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| pg_error("starting a migration", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| pg_error("taking the migration lock", e))?;
    let applied: Vec<i32> = tx
        .query(
            "SELECT version FROM refold_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(|e| pg_error("reading refold_migrations", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(newest) = applied.last()
        && *newest > schema_version()
    {
        return Err(StoreError::Corrupt {
            key: "refold_migrations".into(),
            reason: format!(
                "the database is at schema version {newest}, newer than this build's {}; \
                 run a newer refold",
                schema_version()
            ),
        });
    }
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(|e| pg_error("applying a migration", e))?;
        tx.execute(
            "INSERT INTO refold_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(|e| pg_error("recording a migration", e))?;
        tracing::info!(version, name, "applied PostgreSQL migration");
    }
    tx.commit()
        .await
        .map_err(|e| pg_error("committing migrations", e))
}
