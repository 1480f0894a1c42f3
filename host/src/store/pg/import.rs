//! `refold migrate --to postgres://...`: copies a stopped sled data
//! directory's event log into an empty PostgreSQL database, then verifies the
//! copy. Both sides keep the same record bytes, so the copy is exact: every
//! event's chain value is recomputed from its body on the way in (a sled log
//! that does not verify is not copied), and after the commit the database's
//! log is walked again and compared with the source, byte for byte.
//!
//! One transaction: a failed or interrupted copy leaves the database as it
//! was. The head row is locked for its length, so a host started on the
//! database meanwhile waits rather than appending into a half-copied log.

use std::collections::HashMap;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use super::super::Store;
use super::super::error::StoreError;
use super::super::format::canonical_body;
use super::super::integrity::{self, Digest};
use super::super::types::*;
use super::{big, connect, migrate, pg_error};

/// Events read from sled per page.
const PAGE: usize = 4096;

/// What a migration copied and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportReport {
    pub events: u64,
    pub streams: u64,
    pub command_records: u64,
    /// The chain value at the last event, equal on both sides.
    pub head_chain: Digest,
}

fn copy_error(e: tokio_postgres::Error) -> StoreError {
    pg_error("copying into PostgreSQL", e)
}

/// Copies `source`'s event log, streams and command records into the empty
/// database at `url`, then verifies the copy. `progress(done, total)` is
/// called per page, twice over (copy, then verify).
pub async fn import_from_sled(
    source: &Store,
    url: &str,
    progress: &mut (dyn FnMut(&str, u64, u64) + Send),
) -> Result<ImportReport, StoreError> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Unavailable(format!("not a PostgreSQL connection string: {e}")))?;
    let (mut client, _conn) = connect(&config, None).await?;
    migrate::migrate(&mut client).await?;
    let head = source.head();

    let tx = client
        .transaction()
        .await
        .map_err(|e| pg_error("starting the copy", e))?;
    let row = tx
        .query_one(
            "SELECT position FROM refold_head WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(|e| pg_error("locking the head", e))?;
    let target_head = row.get::<_, i64>(0);
    let held: i64 = tx
        .query_one(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM refold_events LIMIT 1) e) \
                  + (SELECT count(*) FROM (SELECT 1 FROM refold_streams LIMIT 1) s) \
                  + (SELECT count(*) FROM (SELECT 1 FROM refold_commands LIMIT 1) c)",
            &[],
        )
        .await
        .map_err(|e| pg_error("reading the target", e))?
        .get(0);
    if target_head != 0 || held != 0 {
        return Err(StoreError::Unavailable(format!(
            "the target database already holds a log (head {target_head}, or events, streams or \
             command records); migrate into an empty database"
        )));
    }

    // Events, with their chain checked as they go.
    let sink = tx
        .copy_in(
            "COPY refold_events (position, stream_type, stream_id, version, event_type, chain, body) \
             FROM STDIN BINARY",
        )
        .await
        .map_err(copy_error)?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::TEXT,
            Type::BYTEA,
            Type::BYTEA,
        ],
    );
    tokio::pin!(writer);
    let mut streams: HashMap<StreamId, StreamVersion> = HashMap::new();
    let mut chain = integrity::ZERO;
    let mut recorded_at_ms = 0u64;
    let mut next = 1;
    while next <= head {
        let page = source.read_all(next, PAGE, &EventFilter::all())?;
        for e in &page.events {
            if e.position != next {
                return Err(StoreError::IntegrityViolation {
                    position: next,
                    reason: format!("the source log jumps from {} to {}", next - 1, e.position),
                });
            }
            let body = canonical_body(e);
            let want = integrity::chain_next(&chain, e.position, &body);
            if want != e.chain {
                return Err(StoreError::IntegrityViolation {
                    position: e.position,
                    reason: "the source's chain value does not follow from its record; run \
                             `refold verify --data-dir` and copy only a log that verifies"
                        .into(),
                });
            }
            chain = e.chain;
            recorded_at_ms = e.recorded_at_ms;
            let version = streams.entry(e.stream.clone()).or_default();
            *version = (*version).max(e.version);
            writer
                .as_mut()
                .write(&[
                    &big(e.position),
                    &e.stream.aggregate_type(),
                    &e.stream.aggregate_id(),
                    &big(e.version),
                    &e.event_type.as_str(),
                    &&e.chain[..],
                    &body,
                ])
                .await
                .map_err(copy_error)?;
            next += 1;
        }
        if page.events.is_empty() {
            break;
        }
        progress("copying", next - 1, head);
    }
    writer.finish().await.map_err(copy_error)?;
    if next != head + 1 {
        return Err(StoreError::IntegrityViolation {
            position: next,
            reason: format!("the source log ends at {} before its head {head}", next - 1),
        });
    }

    let sink = tx
        .copy_in("COPY refold_streams (stream_type, stream_id, version) FROM STDIN BINARY")
        .await
        .map_err(copy_error)?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TEXT, Type::INT8]);
    tokio::pin!(writer);
    for (stream, version) in &streams {
        writer
            .as_mut()
            .write(&[
                &stream.aggregate_type(),
                &stream.aggregate_id(),
                &big(*version),
            ])
            .await
            .map_err(copy_error)?;
    }
    writer.finish().await.map_err(copy_error)?;

    let commands = source.command_records()?;
    let sink = tx
        .copy_in(
            "COPY refold_commands (command_id, stream_type, stream_id, stream_version, \
             first_position, last_position, fingerprint) FROM STDIN BINARY",
        )
        .await
        .map_err(copy_error)?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::INT8,
            Type::INT8,
            Type::BYTEA,
        ],
    );
    tokio::pin!(writer);
    for (id, r) in &commands {
        let fingerprint = r.fingerprint.map(|f| f.to_vec());
        writer
            .as_mut()
            .write(&[
                &id.as_str(),
                &r.stream.aggregate_type(),
                &r.stream.aggregate_id(),
                &big(r.result.stream_version),
                &big(r.result.first_position),
                &big(r.result.last_position),
                &fingerprint,
            ])
            .await
            .map_err(copy_error)?;
    }
    writer.finish().await.map_err(copy_error)?;

    tx.execute(
        "UPDATE refold_head SET position = $1, chain = $2, recorded_at_ms = $3 WHERE id = 1",
        &[&big(head), &&chain[..], &big(recorded_at_ms)],
    )
    .await
    .map_err(|e| pg_error("setting the head", e))?;
    tx.commit()
        .await
        .map_err(|e| pg_error("committing the copy", e))?;

    // Verify: the database's log, walked again, is the source's, byte for byte.
    let mut previous = integrity::ZERO;
    let mut at = 1;
    while at <= head {
        let rows = client
            .query(
                "SELECT position, chain, body FROM refold_events WHERE position >= $1 \
                 ORDER BY position LIMIT $2",
                &[&big(at), &(PAGE as i64)],
            )
            .await
            .map_err(|e| pg_error("reading the copy back", e))?;
        if rows.is_empty() {
            break;
        }
        let page = source.read_all(at, PAGE, &EventFilter::all())?;
        if page.events.len() != rows.len() {
            return Err(StoreError::IntegrityViolation {
                position: at,
                reason: "the copy does not hold the source's events".into(),
            });
        }
        for (row, source_event) in rows.iter().zip(&page.events) {
            let copied = super::decode_row(row)?;
            let body: &[u8] = row.get("body");
            let recomputed = integrity::chain_next(&previous, copied.position, body);
            if copied != *source_event || recomputed != copied.chain {
                return Err(StoreError::IntegrityViolation {
                    position: copied.position,
                    reason: "the copied event differs from the source".into(),
                });
            }
            previous = copied.chain;
            at = copied.position + 1;
        }
        progress("verifying", at - 1, head);
    }
    let counted: (i64, i64, i64, Vec<u8>) = {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM refold_events), (SELECT count(*) FROM refold_streams), \
                 (SELECT count(*) FROM refold_commands), (SELECT chain FROM refold_head WHERE id = 1)",
                &[],
            )
            .await
            .map_err(|e| pg_error("counting the copy", e))?;
        (row.get(0), row.get(1), row.get(2), row.get(3))
    };
    if at != head + 1
        || counted.0 as u64 != head
        || counted.1 as usize != streams.len()
        || counted.2 as usize != commands.len()
        || counted.3 != chain
    {
        return Err(StoreError::IntegrityViolation {
            position: at,
            reason: format!(
                "the copy's counts differ: {} events, {} streams, {} command records against {head}, {}, {}",
                counted.0,
                counted.1,
                counted.2,
                streams.len(),
                commands.len()
            ),
        });
    }
    Ok(ImportReport {
        events: head,
        streams: streams.len() as u64,
        command_records: commands.len() as u64,
        head_chain: chain,
    })
}
