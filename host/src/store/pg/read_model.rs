//! Projection read models on PostgreSQL: the same contents as sled's
//! `projection.rs` (documents, the checkpoint, skip records, the schema
//! versions seen, generations and the scratch generation of a verify), shared
//! by every host and written only under a lease ([`super::Lease`]).
//!
//! A batch's documents, its checkpoint, a skip record and the schema versions
//! commit in one transaction that holds the lease row and compares-and-sets
//! the checkpoint's position: after a crash or a takeover the next runner
//! resumes from a checkpoint that matches the documents exactly, and a runner
//! whose lease moved on cannot write at all.

use std::collections::BTreeMap;

use deadpool_postgres::Pool;

use super::super::error::StoreError;
use super::super::format;
use super::super::projection::{
    MAX_SCHEMA_TYPES, ProjectionCheckpoint, SCRATCH_GENERATION, SchemaVersionsSeen, SkipRecord,
    check_id,
};
use super::super::types::RecordedEvent;
use super::leases::{Lease, Refused, hold};
use super::{PgStore, big, pg_error, pool_error};

const LOCK_CLASS: i32 = 0x7270; // "rp": the advisory-lock namespace of read models
const SCRATCH: i64 = SCRATCH_GENERATION as i64;

/// One projection version's read model, in one generation. Cheap to clone.
#[derive(Clone)]
pub struct PgReadModel {
    pool: Pool,
    name: String,
    version: String,
    generation: i64,
}

async fn delete_generations(
    tx: &deadpool_postgres::Transaction<'_>,
    name: &str,
    version: &str,
    condition: &str,
    generation: i64,
) -> Result<(), StoreError> {
    for table in [
        "refold_documents",
        "refold_skips",
        "refold_read_model_state",
    ] {
        tx.execute(
            &format!(
                "DELETE FROM {table} WHERE name = $1 AND version = $2 AND generation {condition} $3"
            ),
            &[&name, &version, &generation],
        )
        .await
        .map_err(|e| pg_error("deleting a read model generation", e))?;
    }
    Ok(())
}

impl PgStore {
    async fn read_model_tx<T>(
        &self,
        name: &str,
        version: &str,
        work: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        check_id(name, version)?;
        let mut client = self.inner.pool.get().await.map_err(pool_error)?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| pg_error("opening a read model", e))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&LOCK_CLASS, &format!("{name}@{version}")],
        )
        .await
        .map_err(|e| pg_error("locking a read model", e))?;
        // The read model's row before its documents and state, as a commit
        // takes them: a drop or rebuild and a commit never deadlock.
        tx.execute(
            "SELECT 1 FROM refold_read_models WHERE name = $1 AND version = $2 FOR UPDATE",
            &[&name, &version],
        )
        .await
        .map_err(|e| pg_error("locking a read model", e))?;
        let out = work(&tx).await?;
        tx.commit()
            .await
            .map_err(|e| pg_error("opening a read model", e))?;
        Ok(out)
    }

    fn model(&self, name: &str, version: &str, generation: i64) -> PgReadModel {
        PgReadModel {
            pool: self.inner.pool.clone(),
            name: name.to_string(),
            version: version.to_string(),
            generation,
        }
    }

    /// The read model of `name@version` in its current generation, created
    /// empty if it has none. Removes what an interrupted rebuild left (older
    /// generations); a scratch generation is its verify's to delete.
    pub async fn read_model(&self, name: &str, version: &str) -> Result<PgReadModel, StoreError> {
        let generation = self
            .read_model_tx(name, version, async |tx| {
                tx.execute(
                    "INSERT INTO refold_read_models (name, version, generation) VALUES ($1, $2, 0) \
                     ON CONFLICT DO NOTHING",
                    &[&name, &version],
                )
                .await
                .map_err(|e| pg_error("creating a read model", e))?;
                let generation: i64 = tx
                    .query_one(
                        "SELECT generation FROM refold_read_models WHERE name = $1 AND version = $2",
                        &[&name, &version],
                    )
                    .await
                    .map_err(|e| pg_error("reading a read model", e))?
                    .get(0);
                delete_generations(tx, name, version, "<", generation).await?;
                Ok(generation)
            })
            .await?;
        Ok(self.model(name, version, generation))
    }

    /// The read model of a *registered* `name@version` (None once the module
    /// version is gone: dropped on some host), created empty if it has none;
    /// the check and the creation are one transaction.
    pub async fn registered_read_model(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<PgReadModel>, StoreError> {
        let generation = self
            .read_model_tx(name, version, async |tx| {
                let registered = tx
                    .query_opt(
                        "SELECT 1 FROM refold_modules WHERE name = $1 AND version = $2 FOR SHARE",
                        &[&name, &version],
                    )
                    .await
                    .map_err(|e| pg_error("reading the module registry", e))?
                    .is_some();
                if !registered {
                    return Ok(None);
                }
                tx.execute(
                    "INSERT INTO refold_read_models (name, version, generation) VALUES ($1, $2, 0) \
                     ON CONFLICT DO NOTHING",
                    &[&name, &version],
                )
                .await
                .map_err(|e| pg_error("creating a read model", e))?;
                Ok(Some(
                    tx.query_one(
                        "SELECT generation FROM refold_read_models WHERE name = $1 AND version = $2",
                        &[&name, &version],
                    )
                    .await
                    .map_err(|e| pg_error("reading a read model", e))?
                    .get::<_, i64>(0),
                ))
            })
            .await?;
        Ok(generation.map(|g| self.model(name, version, g)))
    }

    /// The generation `name@version`'s read model is in (None: it has none).
    pub async fn current_generation(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(self
            .client()
            .await?
            .query_opt(
                "SELECT generation FROM refold_read_models WHERE name = $1 AND version = $2",
                &[&name, &version],
            )
            .await
            .map_err(|e| pg_error("reading a read model", e))?
            .map(|r| r.get(0)))
    }

    /// Starts `name@version` over in a new, empty generation (a rebuild) and
    /// deletes the old one, in one transaction.
    pub async fn reset_read_model(
        &self,
        name: &str,
        version: &str,
    ) -> Result<PgReadModel, StoreError> {
        let current = self.read_model(name, version).await?.generation;
        let next = current + 1;
        if next >= SCRATCH {
            return Err(StoreError::Unavailable(format!(
                "{name}@{version} was rebuilt {current} times; it has no generation left"
            )));
        }
        self.read_model_tx(name, version, async |tx| {
            tx.execute(
                "UPDATE refold_read_models SET generation = $3 WHERE name = $1 AND version = $2",
                &[&name, &version, &next],
            )
            .await
            .map_err(|e| pg_error("starting a generation", e))?;
            delete_generations(tx, name, version, "=", current).await
        })
        .await?;
        Ok(self.model(name, version, next))
    }

    /// The scratch generation of `name@version`, emptied: what a verify
    /// rebuilds into. No reader sees it.
    pub async fn scratch_read_model(
        &self,
        name: &str,
        version: &str,
    ) -> Result<PgReadModel, StoreError> {
        self.delete_scratch_read_model(name, version).await?;
        Ok(self.model(name, version, SCRATCH))
    }

    pub async fn delete_scratch_read_model(
        &self,
        name: &str,
        version: &str,
    ) -> Result<(), StoreError> {
        self.read_model_tx(name, version, async |tx| {
            delete_generations(tx, name, version, "=", SCRATCH).await
        })
        .await
    }

    /// Deletes every generation of `name@version` (a dropped projection version).
    pub async fn delete_read_model(&self, name: &str, version: &str) -> Result<(), StoreError> {
        self.read_model_tx(name, version, async |tx| {
            delete_generations(tx, name, version, ">=", 0).await?;
            tx.execute(
                "DELETE FROM refold_read_models WHERE name = $1 AND version = $2",
                &[&name, &version],
            )
            .await
            .map_err(|e| pg_error("deleting a read model", e))?;
            Ok(())
        })
        .await
    }
}

impl PgReadModel {
    pub fn generation(&self) -> i64 {
        self.generation
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    pub async fn checkpoint(&self) -> Result<ProjectionCheckpoint, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT checkpoint FROM refold_read_model_state \
                 WHERE name = $1 AND version = $2 AND generation = $3",
                &[&self.name, &self.version, &self.generation],
            )
            .await
            .map_err(|e| pg_error("reading a projection checkpoint", e))?;
        match row {
            Some(r) => format::decode_v1(b"refold_read_model_state", r.get(0)),
            None => Ok(ProjectionCheckpoint::default()),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .client()
            .await?
            .query_opt(
                "SELECT doc FROM refold_documents \
                 WHERE name = $1 AND version = $2 AND generation = $3 AND key = $4",
                &[&self.name, &self.version, &self.generation, &key],
            )
            .await
            .map_err(|e| pg_error("reading a document", e))?
            .map(|r| r.get(0)))
    }

    /// Up to `limit` documents whose keys start with `prefix`, after `after`,
    /// in byte order of their keys (as on sled), stopping early after the
    /// document that takes the keys and texts read past `max_bytes`.
    pub async fn scan_bounded(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        // A prefix match without LIKE's wildcards: the keys from the prefix up
        // to its last possible extension, filtered exactly below.
        let rows = self
            .client()
            .await?
            .query(
                "SELECT key, doc FROM refold_documents \
                 WHERE name = $1 AND version = $2 AND generation = $3 \
                   AND key >= $4 AND ($5::text IS NULL OR key > $5) \
                   AND left(key, length($4)) = $4 \
                 ORDER BY key LIMIT $6",
                &[
                    &self.name,
                    &self.version,
                    &self.generation,
                    &prefix,
                    &after,
                    &big(limit as u64),
                ],
            )
            .await
            .map_err(|e| pg_error("scanning documents", e))?;
        let mut out = Vec::with_capacity(rows.len());
        let mut bytes = 0usize;
        for row in rows {
            if bytes > max_bytes {
                break;
            }
            let (key, doc): (String, String) = (row.get(0), row.get(1));
            bytes = bytes.saturating_add(key.len() + doc.len());
            out.push((key, doc));
        }
        Ok(out)
    }

    /// Every document in key order, for digests and diffs.
    pub async fn documents(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.scan_bounded("", None, usize::MAX, usize::MAX).await
    }

    pub async fn skips(&self) -> Result<Vec<SkipRecord>, StoreError> {
        self.client()
            .await?
            .query(
                "SELECT record FROM refold_skips \
                 WHERE name = $1 AND version = $2 AND generation = $3 ORDER BY position",
                &[&self.name, &self.version, &self.generation],
            )
            .await
            .map_err(|e| pg_error("reading skips", e))?
            .iter()
            .map(|r| format::decode_v1(b"refold_skips", r.get(0)))
            .collect()
    }

    pub async fn schema_versions(&self) -> Result<SchemaVersionsSeen, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT schema_versions FROM refold_read_model_state \
                 WHERE name = $1 AND version = $2 AND generation = $3",
                &[&self.name, &self.version, &self.generation],
            )
            .await
            .map_err(|e| pg_error("reading a read model's schema versions", e))?;
        match row.and_then(|r| r.get::<_, Option<Vec<u8>>>(0)) {
            Some(bytes) => format::decode_v1(b"refold_read_model_state", &bytes),
            None => Ok(SchemaVersionsSeen::new()),
        }
    }

    /// Commits a batch under `lease`: its document changes, the checkpoint
    /// (moved from position `from`), a skip record and the schema versions the
    /// applied events bring, in one transaction; refused, writing nothing,
    /// when the lease's token moved on or the checkpoint is not at `from`.
    pub async fn commit(
        &self,
        lease: &Lease,
        from: u64,
        changes: &BTreeMap<String, Option<String>>,
        checkpoint: &ProjectionCheckpoint,
        skip: Option<&SkipRecord>,
        applied: &[RecordedEvent],
    ) -> Result<Result<(), Refused>, StoreError> {
        if checkpoint.position < from {
            return Ok(Err(Refused::CheckpointBackwards {
                from,
                to: checkpoint.position,
            }));
        }
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| pg_error("starting a read-model commit", e))?;
        if let Err(refused) = hold(&tx, lease).await? {
            return Ok(Err(refused));
        }
        // Only into the current generation: a rebuild or a drop on another
        // host leaves this runner's model behind, and its writes with it.
        let current: Option<i64> = tx
            .query_opt(
                "SELECT generation FROM refold_read_models WHERE name = $1 AND version = $2 FOR SHARE",
                &[&self.name, &self.version],
            )
            .await
            .map_err(|e| pg_error("checking a read model's generation", e))?
            .map(|r| r.get(0));
        if self.generation != SCRATCH && current != Some(self.generation) {
            return Ok(Err(Refused::GenerationGone {
                name: format!("{}@{}", self.name, self.version),
                generation: self.generation,
            }));
        }
        let key = (&self.name, &self.version, &self.generation);
        tx.execute(
            "INSERT INTO refold_read_model_state \
             (name, version, generation, position, checkpoint, schema_versions, token) \
             VALUES ($1, $2, $3, 0, $4, NULL, $5) ON CONFLICT DO NOTHING",
            &[
                key.0,
                key.1,
                key.2,
                &format::encode_v1(&ProjectionCheckpoint::default()),
                &lease.token,
            ],
        )
        .await
        .map_err(|e| pg_error("creating a read model's state", e))?;
        let state = tx
            .query_one(
                "SELECT position, schema_versions FROM refold_read_model_state \
                 WHERE name = $1 AND version = $2 AND generation = $3 FOR UPDATE",
                &[key.0, key.1, key.2],
            )
            .await
            .map_err(|e| pg_error("reading a read model's state", e))?;
        let position = state.get::<_, i64>(0) as u64;
        if position != from {
            return Ok(Err(Refused::CheckpointMoved {
                name: lease.name.clone(),
                expected: from,
                actual: position,
            }));
        }
        // The schema versions, merged as on sled (a record that does not read
        // is started afresh: it is for people, not for correctness).
        let mut seen: SchemaVersionsSeen = state
            .get::<_, Option<Vec<u8>>>(1)
            .and_then(|b| format::decode_v1(b"refold_read_model_state", &b).ok())
            .unwrap_or_default();
        let mut changed = false;
        for event in applied {
            if !seen.contains_key(&event.event_type) && seen.len() >= MAX_SCHEMA_TYPES {
                continue;
            }
            changed |= seen
                .entry(event.event_type.clone())
                .or_default()
                .insert(event.schema_version);
        }
        let schema_versions = changed.then(|| format::encode_v1(&seen));
        tx.execute(
            "UPDATE refold_read_model_state SET position = $4, checkpoint = $5, \
             schema_versions = coalesce($6, schema_versions), token = $7 \
             WHERE name = $1 AND version = $2 AND generation = $3",
            &[
                key.0,
                key.1,
                key.2,
                &big(checkpoint.position),
                &format::encode_v1(checkpoint),
                &schema_versions,
                &lease.token,
            ],
        )
        .await
        .map_err(|e| pg_error("moving a checkpoint", e))?;
        let (upserts, deletes): (Vec<_>, Vec<_>) = changes.iter().partition(|(_, d)| d.is_some());
        if !upserts.is_empty() {
            let keys: Vec<&str> = upserts.iter().map(|(k, _)| k.as_str()).collect();
            let docs: Vec<&str> = upserts
                .iter()
                .map(|(_, d)| d.as_deref().unwrap_or(""))
                .collect();
            tx.execute(
                "INSERT INTO refold_documents (name, version, generation, key, doc) \
                 SELECT $1, $2, $3, k, d FROM unnest($4::text[], $5::text[]) AS t(k, d) \
                 ON CONFLICT (name, version, generation, key) DO UPDATE SET doc = EXCLUDED.doc",
                &[key.0, key.1, key.2, &keys, &docs],
            )
            .await
            .map_err(|e| pg_error("writing documents", e))?;
        }
        if !deletes.is_empty() {
            let keys: Vec<&str> = deletes.iter().map(|(k, _)| k.as_str()).collect();
            tx.execute(
                "DELETE FROM refold_documents \
                 WHERE name = $1 AND version = $2 AND generation = $3 AND key = ANY($4)",
                &[key.0, key.1, key.2, &keys],
            )
            .await
            .map_err(|e| pg_error("deleting documents", e))?;
        }
        if let Some(skip) = skip {
            tx.execute(
                "INSERT INTO refold_skips (name, version, generation, position, record) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (name, version, generation, position) DO UPDATE SET record = EXCLUDED.record",
                &[key.0, key.1, key.2, &big(skip.position), &format::encode_v1(skip)],
            )
            .await
            .map_err(|e| pg_error("recording a skip", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| pg_error("committing a read-model batch", e))?;
        Ok(Ok(()))
    }
}
