//! The module registry on PostgreSQL, shared by every host: module versions
//! and their bytes, the active version and its history, routing (canaries,
//! retired versions), replay-check records, process checkpoints and aggregate
//! snapshots. The same records and rules as sled's `catalog.rs`, with two
//! differences that several hosts need:
//!
//! - changes of one name are serialized across hosts by a transaction-scoped
//!   advisory lock on the name (sled relies on the registry's in-process lock);
//! - every change of what runs bumps `refold_catalog_version` and notifies
//!   `refold_catalog`, so every host learns of it within moments
//!   ([`super::PgStore::watch_catalog`]: the notification, or a poll).
//!
//! As on sled, only a registered version is made active and the active
//! version is never removed; here both are checked under the name's lock,
//! because another host may be doing the other at the same moment.

use deadpool_postgres::Transaction;
use sha2::Digest as _;

use super::super::catalog::{Activation, CheckRecord, ModulePut, ModuleRecord, Routing};
use super::super::error::StoreError;
use super::super::format;
use super::super::types::{StreamId, StreamVersion};
use super::{PgStore, big, pg_error};

const LOCK_CLASS: i32 = 0x7266; // "rf": the advisory-lock namespace of catalog names

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    format::decode_v1(what.as_bytes(), bytes)
}

impl PgStore {
    /// Registers a module version and its bytes if that version is free.
    pub async fn put_module(
        &self,
        record: &ModuleRecord,
        bytes: &[u8],
    ) -> Result<ModulePut, StoreError> {
        if record.name.is_empty() || record.name.len() > 64 {
            return Err(StoreError::InvalidStream(format!(
                "module name {:?} must be 1 to 64 bytes",
                record.name
            )));
        }
        // The record must describe these bytes: a record claiming another
        // component's digest would otherwise squat that digest's bytes.
        let actual: [u8; 32] = sha2::Sha256::digest(bytes).into();
        if actual != record.digest || bytes.len() as u64 != record.size {
            return Err(StoreError::InvalidStream(format!(
                "module {}@{}: the record's digest and size are not those of its bytes",
                record.name, record.version
            )));
        }
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| pg_error("registering a module", e))?;
        let inserted = tx
            .execute(
                "INSERT INTO refold_modules (name, version, digest, record) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
                &[
                    &record.name,
                    &record.version,
                    &&record.digest[..],
                    &format::encode_v1(record),
                ],
            )
            .await
            .map_err(|e| pg_error("registering a module", e))?;
        if inserted == 0 {
            let row = tx
                .query_one(
                    "SELECT record FROM refold_modules WHERE name = $1 AND version = $2",
                    &[&record.name, &record.version],
                )
                .await
                .map_err(|e| pg_error("reading the module registry", e))?;
            let existing: ModuleRecord = decode("refold_modules", row.get(0))?;
            return Ok(if existing.digest == record.digest {
                ModulePut::AlreadyPresent(existing)
            } else {
                ModulePut::Conflict(existing)
            });
        }
        tx.execute(
            "INSERT INTO refold_module_bytes (digest, bytes) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&&record.digest[..], &bytes],
        )
        .await
        .map_err(|e| pg_error("storing module bytes", e))?;
        bump(&tx).await?;
        tx.commit()
            .await
            .map_err(|e| pg_error("registering a module", e))?;
        Ok(ModulePut::Created)
    }

    /// A module's component bytes, by digest, checked against it.
    pub async fn module_bytes(&self, digest: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT bytes FROM refold_module_bytes WHERE digest = $1",
                &[&&digest[..]],
            )
            .await
            .map_err(|e| pg_error("reading module bytes", e))?;
        let Some(row) = row else { return Ok(None) };
        let bytes: Vec<u8> = row.get(0);
        let actual: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        if actual != *digest {
            return Err(StoreError::Corrupt {
                key: format!(
                    "refold_module_bytes/{}",
                    super::super::integrity::to_hex(digest)
                ),
                reason: "the stored bytes do not have their digest".into(),
            });
        }
        Ok(Some(bytes))
    }

    pub async fn module(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<ModuleRecord>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                "SELECT record FROM refold_modules WHERE name = $1 AND version = $2",
                &[&name, &version],
            )
            .await
            .map_err(|e| pg_error("reading the module registry", e))?
            .map(|r| decode("refold_modules", r.get(0)))
            .transpose()
    }

    pub async fn modules(&self) -> Result<Vec<ModuleRecord>, StoreError> {
        let client = self.client().await?;
        client
            .query(
                "SELECT record FROM refold_modules ORDER BY name, version",
                &[],
            )
            .await
            .map_err(|e| pg_error("reading the module registry", e))?
            .iter()
            .map(|r| decode("refold_modules", r.get(0)))
            .collect()
    }

    pub async fn active_module(&self, name: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query_opt(
                "SELECT version FROM refold_active WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(|e| pg_error("reading the module registry", e))?
            .map(|r| r.get(0)))
    }

    pub async fn active_modules(&self) -> Result<Vec<(String, String)>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query("SELECT name, version FROM refold_active ORDER BY name", &[])
            .await
            .map_err(|e| pg_error("reading the module registry", e))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    /// Points `name` at `version` and appends that to its history; activating
    /// the active version changes nothing. Serialized per name across hosts.
    pub async fn set_active_module(&self, name: &str, version: &str) -> Result<(), StoreError> {
        self.set_routing(name, Some(version), None).await
    }

    /// Sets `name`'s routing (None: leaves it as it is) and, if `active` is
    /// given and differs from the active version, activates it: one
    /// transaction, serialized per name across hosts, every host notified.
    pub async fn set_routing(
        &self,
        name: &str,
        active: Option<&str>,
        routing: Option<&Routing>,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| pg_error("changing a module's routing", e))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&LOCK_CLASS, &name],
        )
        .await
        .map_err(|e| pg_error("locking a module name", e))?;
        let mut changed = false;
        if let Some(version) = active {
            let current: Option<String> = tx
                .query_opt(
                    "SELECT version FROM refold_active WHERE name = $1",
                    &[&name],
                )
                .await
                .map_err(|e| pg_error("reading the module registry", e))?
                .map(|r| r.get(0));
            if current.as_deref() != Some(version) {
                // Under the name's lock, which a removal takes too: a version
                // removed on another host a moment ago is not made active.
                let registered = tx
                    .query_opt(
                        "SELECT 1 FROM refold_modules WHERE name = $1 AND version = $2",
                        &[&name, &version],
                    )
                    .await
                    .map_err(|e| pg_error("reading the module registry", e))?
                    .is_some();
                if !registered {
                    return Err(StoreError::ModuleNotRegistered {
                        name: name.to_string(),
                        version: version.to_string(),
                    });
                }
                let last = tx
                    .query_opt(
                        "SELECT seq, at_ms FROM refold_activations WHERE name = $1 \
                         ORDER BY seq DESC LIMIT 1",
                        &[&name],
                    )
                    .await
                    .map_err(|e| pg_error("reading the activation history", e))?;
                let (seq, last_at): (i32, i64) =
                    last.map_or((0, 0), |r| (r.get::<_, i32>(0) + 1, r.get(1)));
                let at_ms = big(crate::clock::now_ms()).max(last_at);
                tx.execute(
                    "INSERT INTO refold_active (name, version) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version",
                    &[&name, &version],
                )
                .await
                .map_err(|e| pg_error("activating a module", e))?;
                tx.execute(
                    "INSERT INTO refold_activations (name, seq, version, at_ms) VALUES ($1, $2, $3, $4)",
                    &[&name, &seq, &version, &at_ms],
                )
                .await
                .map_err(|e| pg_error("recording an activation", e))?;
                changed = true;
            }
        }
        if let Some(routing) = routing {
            if *routing == Routing::default() {
                tx.execute("DELETE FROM refold_routing WHERE name = $1", &[&name])
                    .await
                    .map_err(|e| pg_error("changing a module's routing", e))?;
            } else {
                tx.execute(
                    "INSERT INTO refold_routing (name, record) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record",
                    &[&name, &format::encode_v1(routing)],
                )
                .await
                .map_err(|e| pg_error("changing a module's routing", e))?;
            }
            changed = true;
        }
        if changed {
            bump(&tx).await?;
        }
        tx.commit()
            .await
            .map_err(|e| pg_error("changing a module's routing", e))
    }

    pub async fn routing(&self, name: &str) -> Result<Routing, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query_opt(
                "SELECT record FROM refold_routing WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(|e| pg_error("reading the module registry", e))?
            .map(|r| decode::<Routing>("refold_routing", r.get(0)))
            .transpose()?
            .unwrap_or_default())
    }

    /// Every name's routing that has one, by name.
    pub async fn routings(&self) -> Result<Vec<(String, Routing)>, StoreError> {
        let client = self.client().await?;
        client
            .query(
                "SELECT name, record FROM refold_routing ORDER BY name COLLATE \"C\"",
                &[],
            )
            .await
            .map_err(|e| pg_error("reading the module registry", e))?
            .iter()
            .map(|r| Ok((r.get(0), decode::<Routing>("refold_routing", r.get(1))?)))
            .collect()
    }

    /// How many streams of `aggregate_type` have events.
    pub async fn count_streams(&self, aggregate_type: &str) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM refold_streams WHERE stream_type = $1",
                &[&aggregate_type],
            )
            .await
            .map_err(|e| pg_error("counting streams", e))?
            .get(0);
        Ok(n as u64)
    }

    /// Up to `limit` ids of `aggregate_type`'s streams after `after`, in byte order.
    pub async fn stream_ids(
        &self,
        aggregate_type: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query(
                "SELECT stream_id FROM refold_streams WHERE stream_type = $1 \
                 AND ($2::text IS NULL OR stream_id COLLATE \"C\" > $2::text COLLATE \"C\") \
                 ORDER BY stream_id COLLATE \"C\" LIMIT $3",
                &[
                    &aggregate_type,
                    &after,
                    &(limit.min(i64::MAX as usize) as i64),
                ],
            )
            .await
            .map_err(|e| pg_error("listing streams", e))?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    pub async fn activations(&self, name: &str) -> Result<Vec<Activation>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query(
                "SELECT version, at_ms FROM refold_activations WHERE name = $1 ORDER BY seq",
                &[&name],
            )
            .await
            .map_err(|e| pg_error("reading the activation history", e))?
            .iter()
            .map(|r| Activation {
                version: r.get(0),
                at_ms: r.get::<_, i64>(1) as u64,
            })
            .collect())
    }

    pub async fn check_record(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<CheckRecord>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                "SELECT record FROM refold_checks WHERE name = $1 AND version = $2",
                &[&name, &version],
            )
            .await
            .map_err(|e| pg_error("reading a check record", e))?
            .map(|r| decode("refold_checks", r.get(0)))
            .transpose()
    }

    pub async fn set_check_record(
        &self,
        name: &str,
        version: &str,
        record: &CheckRecord,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO refold_checks (name, version, record) VALUES ($1, $2, $3) \
                 ON CONFLICT (name, version) DO UPDATE SET record = EXCLUDED.record",
                &[&name, &version, &format::encode_v1(record)],
            )
            .await
            .map_err(|e| pg_error("saving a check record", e))?;
        Ok(())
    }

    pub async fn process_checkpoint(&self, name: &str) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query_opt(
                "SELECT position FROM refold_process_checkpoints WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(|e| pg_error("reading a process checkpoint", e))?
            .map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    /// Moves process `name`'s checkpoint forward (never back: two hosts'
    /// runners may race to save it).
    pub async fn set_process_checkpoint(
        &self,
        name: &str,
        position: u64,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO refold_process_checkpoints (name, position) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET position = greatest(refold_process_checkpoints.position, EXCLUDED.position)",
                &[&name, &big(position)],
            )
            .await
            .map_err(|e| pg_error("saving a process checkpoint", e))?;
        Ok(())
    }

    /// Forgets a module version (its bytes stay: another version may share
    /// them). Refused for the active version: under the name's lock, so an
    /// activation on another host and this removal never both happen.
    pub async fn delete_module(&self, name: &str, version: &str) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| pg_error("deleting a module", e))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&LOCK_CLASS, &name],
        )
        .await
        .map_err(|e| pg_error("locking a module name", e))?;
        let active = tx
            .query_opt(
                "SELECT 1 FROM refold_active WHERE name = $1 AND version = $2",
                &[&name, &version],
            )
            .await
            .map_err(|e| pg_error("reading the module registry", e))?
            .is_some();
        if active {
            return Err(StoreError::ModuleActive {
                name: name.to_string(),
                version: version.to_string(),
            });
        }
        tx.execute(
            "DELETE FROM refold_modules WHERE name = $1 AND version = $2",
            &[&name, &version],
        )
        .await
        .map_err(|e| pg_error("deleting a module", e))?;
        bump(&tx).await?;
        tx.commit()
            .await
            .map_err(|e| pg_error("deleting a module", e))
    }

    /// Keeps `state` as the stream's state at `version` under `module_digest`
    /// (a newer version only: hosts may race to save one).
    pub async fn save_snapshot(
        &self,
        stream: &StreamId,
        module_digest: &[u8; 32],
        version: StreamVersion,
        state: &[u8],
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO refold_snapshots (stream_type, stream_id, module_digest, version, state) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (stream_type, stream_id, module_digest) DO UPDATE \
                 SET version = EXCLUDED.version, state = EXCLUDED.state \
                 WHERE refold_snapshots.version < EXCLUDED.version",
                &[
                    &stream.aggregate_type(),
                    &stream.aggregate_id(),
                    &&module_digest[..],
                    &big(version),
                    &state,
                ],
            )
            .await
            .map_err(|e| pg_error("saving a snapshot", e))?;
        Ok(true)
    }

    pub async fn load_snapshot(
        &self,
        stream: &StreamId,
        module_digest: &[u8; 32],
    ) -> Result<Option<(StreamVersion, Vec<u8>)>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query_opt(
                "SELECT version, state FROM refold_snapshots \
                 WHERE stream_type = $1 AND stream_id = $2 AND module_digest = $3",
                &[
                    &stream.aggregate_type(),
                    &stream.aggregate_id(),
                    &&module_digest[..],
                ],
            )
            .await
            .map_err(|e| pg_error("loading a snapshot", e))?
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1))))
    }

    /// The catalog's version as the database has it (see [`PgStore::watch_catalog`]).
    pub async fn catalog_version(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query_one(
                "SELECT version FROM refold_catalog_version WHERE id = 1",
                &[],
            )
            .await
            .map_err(|e| pg_error("reading the catalog version", e))?
            .get(0))
    }
}

/// Marks the catalog changed: every host's watcher wakes at COMMIT.
async fn bump(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(
        "WITH v AS (UPDATE refold_catalog_version SET version = version + 1 WHERE id = 1 RETURNING version) \
         SELECT pg_notify('refold_catalog', version::text) FROM v",
        &[],
    )
    .await
    .map_err(|e| pg_error("marking the catalog changed", e))?;
    Ok(())
}
