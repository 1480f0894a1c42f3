//! One host's group commit on PostgreSQL.
//!
//! One task owns one connection. It takes the first waiting append, drains
//! whatever else is queued, decides each against the stream versions it
//! believes (an LRU of what it last read or wrote, and earlier appends of the
//! same batch), encodes the events, and commits the batch with one statement,
//! `refold_append` (migrations/0001_event_log.sql): one round trip in the
//! steady state. The database re-checks every belief under row locks and
//! assigns positions and chain values as the last step, holding the head row.
//!
//! Other hosts write too, so a belief can be stale. A write's belief is checked
//! by the database (RF001); a refusal or an idempotent repeat is only ever
//! answered from versions read in this commit (`fresh`), never from the cache.
//! Command ids are checked optimistically: a recorded one makes the database
//! refuse the batch (RF002), and the next attempt reads the records first.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::super::error::StoreError;
use super::super::format::{self, EventRecordRef};
use super::super::journal::{JournalEntry, JournalOutcome, encode_entry};
use super::super::types::*;
use super::{big, pg_error};

/// Appends are gathered into one batch until it holds this many events.
const MAX_BATCH_EVENTS: usize = 4096;
/// A batch that keeps losing races (RF001/RF002/RF003, deadlocks) is retried
/// this many times before its appenders are told the store is too contended.
const MAX_ATTEMPTS: usize = 64;
/// Stream versions this host remembers.
const VERSION_CACHE: usize = 65_536;

pub(crate) struct PgAppend {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    pub command: Option<(String, Option<RequestFingerprint>)>,
    /// The command's journal entry, committed with its events when it writes.
    pub journal: Option<Box<JournalEntry>>,
    pub reply: oneshot::Sender<Result<CommandAppend, StoreError>>,
}

pub(crate) struct PgWriter {
    client: Client,
    append: Statement,
    versions: lru::LruCache<StreamId, Belief>,
    /// How far the newest commit's `recorded_at_ms` was ahead of this host's
    /// clock when it last lost a race on it (RF003): added to the clock, so a
    /// host whose clock is behind another's does not keep losing.
    skew_ms: u64,
    last_recorded_at_ms: u64,
    config: tokio_postgres::Config,
    head: Arc<watch::Sender<Position>>,
}

/// What this host believes about a stream: its version, and the first
/// version and event id of its last append when this host wrote it (versions
/// never change, so a different id there proves an append is no repeat).
#[derive(Clone, Copy)]
struct Belief {
    version: StreamVersion,
    tail: Option<(StreamVersion, Uuid)>,
}

/// A position in a plan: relative to the batch's base (1 = its first event)
/// until the database assigns the base, or already absolute (a repeat).
#[derive(Clone, Copy)]
struct PlannedResult {
    result: AppendResult,
    relative: bool,
}

enum Decision {
    /// The flag: the refusal rests on an earlier append of the same batch, so it
    /// stands only if the batch commits.
    Refused(StoreError, bool),
    Repeat(PlannedResult),
    Write(PlannedResult),
}

/// What a batch decided, before it is committed.
#[derive(Default)]
struct Plan {
    decisions: Vec<Decision>,
    /// Streams with writes: (stream, believed base version, new version).
    streams: Vec<(StreamId, StreamVersion, StreamVersion)>,
    events: EventColumns,
    commands: CommandColumns,
    journal: JournalColumns,
    /// Per stream written: the first version and event id of its last append.
    tails: HashMap<StreamId, (StreamVersion, Uuid)>,
}

#[derive(Default)]
struct EventColumns {
    types: Vec<String>,
    ids: Vec<String>,
    versions: Vec<i64>,
    event_types: Vec<String>,
    bodies: Vec<Vec<u8>>,
}

#[derive(Default)]
struct CommandColumns {
    ids: Vec<String>,
    types: Vec<String>,
    sids: Vec<String>,
    versions: Vec<i64>,
    first: Vec<i32>,
    last: Vec<i32>,
    fingerprints: Vec<Option<Vec<u8>>>,
}

#[derive(Default)]
struct JournalColumns {
    received: Vec<i64>,
    ids: Vec<String>,
    types: Vec<String>,
    first: Vec<i32>,
    last: Vec<i32>,
    entries: Vec<Vec<u8>>,
}

/// Why a batch must be decided again.
enum Retry {
    /// These streams' versions must be read before deciding.
    Refresh(Vec<StreamId>),
    /// The batch's command records must be read before deciding.
    Commands,
}

impl PgWriter {
    pub async fn new(
        config: tokio_postgres::Config,
        head: Arc<watch::Sender<Position>>,
    ) -> Result<Self, StoreError> {
        let (client, append) = Self::connect(&config).await?;
        let row = client
            .query_one("SELECT recorded_at_ms FROM refold_head WHERE id = 1", &[])
            .await
            .map_err(|e| pg_error("reading the head", e))?;
        Ok(PgWriter {
            client,
            append,
            versions: lru::LruCache::new(
                std::num::NonZeroUsize::new(VERSION_CACHE).expect("not zero"),
            ),
            skew_ms: 0,
            last_recorded_at_ms: row.get::<_, i64>(0) as u64,
            config,
            head,
        })
    }

    /// The writer's connection, driven by its own task (which ends with it).
    async fn connect(config: &tokio_postgres::Config) -> Result<(Client, Statement), StoreError> {
        let (client, _task) = super::connect(config, None).await?;
        // A statement that hangs (a half-open connection, a stuck lock) fails
        // instead of holding every append of this host.
        client
            .batch_execute("SET statement_timeout = '30s'")
            .await
            .map_err(|e| pg_error("configuring the writer's connection", e))?;
        let append = client
            .prepare(
                "SELECT refold_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                 $17, $18, $19, $20, $21, $22, $23)",
            )
            .await
            .map_err(|e| pg_error("preparing the append", e))?;
        Ok((client, append))
    }

    /// After the connection closed (PostgreSQL restarted, a network cut):
    /// a new one, with backoff; every belief is dropped.
    async fn reconnect(&mut self) -> Result<(), StoreError> {
        self.versions.clear();
        let mut wait = std::time::Duration::from_millis(50);
        let mut last = None;
        for _ in 0..5 {
            match Self::connect(&self.config).await {
                Ok((client, append)) => {
                    self.client = client;
                    self.append = append;
                    tracing::info!("the PostgreSQL writer reconnected");
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        Err(last.expect("at least one attempt"))
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<PgAppend>) {
        while let Some(first) = rx.recv().await {
            let mut events = first.events.len();
            let mut batch = vec![first];
            while events < MAX_BATCH_EVENTS {
                match rx.try_recv() {
                    Ok(next) => {
                        events += next.events.len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            if self.client.is_closed()
                && let Err(e) = self.reconnect().await
            {
                answer_all(batch, e);
                continue;
            }
            self.commit(batch).await;
        }
    }

    async fn commit(&mut self, requests: Vec<PgAppend>) {
        let mut fresh: HashSet<StreamId> = HashSet::new();
        let mut known_commands: Option<HashMap<String, CommandRecord>> = None;
        for _ in 0..MAX_ATTEMPTS {
            // Streams this host has no belief about are read first.
            let unknown: Vec<StreamId> = unique_streams(&requests)
                .filter(|s| !self.versions.contains(s))
                .collect();
            if let Err(e) = self.refresh(&unknown, &mut fresh).await {
                return answer_all(requests, e);
            }
            let recorded_at_ms =
                (crate::clock::now_ms() + self.skew_ms).max(self.last_recorded_at_ms);
            let plan = match self
                .decide(&requests, recorded_at_ms, &fresh, known_commands.as_ref())
                .await
            {
                Ok(Ok(plan)) => plan,
                Ok(Err(Retry::Commands)) => {
                    let ids: Vec<String> = requests
                        .iter()
                        .filter_map(|r| r.command.as_ref().map(|(id, _)| id.clone()))
                        .collect();
                    match command_records(&self.client, &ids).await {
                        Ok(records) => known_commands = Some(records),
                        Err(e) => return answer_all(requests, e),
                    }
                    continue;
                }
                Ok(Err(Retry::Refresh(streams))) => {
                    if let Err(e) = self.refresh(&streams, &mut fresh).await {
                        return answer_all(requests, e);
                    }
                    continue;
                }
                Err(e) => return answer_all(requests, e),
            };
            if plan.events.bodies.is_empty() {
                return reply(requests, plan, 0);
            }
            match self.execute(&plan, recorded_at_ms).await {
                Ok(base) => {
                    for (stream, _, new_version) in &plan.streams {
                        let tail = plan.tails.get(stream).copied();
                        self.versions.put(
                            stream.clone(),
                            Belief {
                                version: *new_version,
                                tail,
                            },
                        );
                    }
                    self.last_recorded_at_ms = recorded_at_ms;
                    let head = base + plan.events.bodies.len() as u64;
                    super::raise(&self.head, head);
                    return reply(requests, plan, base);
                }
                Err(err) => {
                    let code = err.as_db_error().map(|d| d.code().code().to_string());
                    match code.as_deref() {
                        // The database does not match its own events: altered by hand. A
                        // unique violation means the same (appends never reuse a position or
                        // a stream version otherwise). Not a race: no retry.
                        Some("RF004") | Some("23505") => {
                            self.versions.clear();
                            let reason = err
                                .as_db_error()
                                .map(|d| d.message().to_string())
                                .unwrap_or_default();
                            tracing::error!(%reason, "the PostgreSQL log does not match its head; refusing the batch");
                            return answer_writes(
                                requests,
                                plan,
                                StoreError::Corrupt {
                                    key: "refold_head / refold_streams".into(),
                                    reason: format!(
                                        "{reason}: the database was changed outside Refold; nothing was written"
                                    ),
                                },
                            );
                        }
                        // A belief was stale: another host wrote to a stream of the batch.
                        Some("RF001") | Some("40P01") | Some("40001") => {
                            for (stream, _, _) in &plan.streams {
                                self.versions.pop(stream);
                                fresh.remove(stream);
                            }
                        }
                        Some("RF002") => {
                            let ids: Vec<String> = requests
                                .iter()
                                .filter_map(|r| r.command.as_ref().map(|(id, _)| id.clone()))
                                .collect();
                            match command_records(&self.client, &ids).await {
                                Ok(records) => known_commands = Some(records),
                                Err(e) => return answer_all(requests, e),
                            }
                        }
                        Some("RF003") => {
                            let head_recorded = err
                                .as_db_error()
                                .and_then(|d| d.message().parse::<u64>().ok())
                                .unwrap_or(recorded_at_ms + 1);
                            self.last_recorded_at_ms = self.last_recorded_at_ms.max(head_recorded);
                            let now = crate::clock::now_ms();
                            self.skew_ms = self.skew_ms.max(head_recorded.saturating_sub(now));
                        }
                        _ => {
                            // The outcome is unknown (the connection may have dropped after
                            // COMMIT): forget every belief and say so; a retry with the same
                            // command id or event ids is answered from what was committed.
                            self.versions.clear();
                            self.skew_ms = 0;
                            let e = pg_error("committing a batch", err);
                            tracing::error!(error = %e, "PostgreSQL append failed");
                            return answer_writes(requests, plan, e);
                        }
                    }
                }
            }
        }
        answer_all(
            requests,
            StoreError::Unavailable(format!(
                "the batch lost {MAX_ATTEMPTS} races with other hosts' appends in a row; retry"
            )),
        );
    }

    /// Reads the versions of `streams` into the cache and marks them fresh.
    async fn refresh(
        &mut self,
        streams: &[StreamId],
        fresh: &mut HashSet<StreamId>,
    ) -> Result<(), StoreError> {
        let mut seen = HashSet::new();
        let streams: Vec<&StreamId> = streams.iter().filter(|s| seen.insert(*s)).collect();
        if streams.is_empty() {
            return Ok(());
        }
        let types: Vec<&str> = streams.iter().map(|s| s.aggregate_type()).collect();
        let ids: Vec<&str> = streams.iter().map(|s| s.aggregate_id()).collect();
        let rows = self
            .client
            .query(
                "SELECT s.stream_type, s.stream_id, s.version FROM refold_streams s \
                 JOIN unnest($1::text[], $2::text[]) AS t(ty, id) \
                   ON s.stream_type = t.ty AND s.stream_id = t.id",
                &[&types, &ids],
            )
            .await
            .map_err(|e| pg_error("reading stream versions", e))?;
        let found: HashMap<(String, String), u64> = rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get::<_, i64>(2) as u64))
            .collect();
        for stream in streams {
            let key = (
                stream.aggregate_type().to_string(),
                stream.aggregate_id().to_string(),
            );
            let version = found.get(&key).copied().unwrap_or(0);
            self.versions.put(
                (*stream).clone(),
                Belief {
                    version,
                    tail: None,
                },
            );
            fresh.insert((*stream).clone());
        }
        Ok(())
    }

    /// Decides every request in order, as the sled writer's `stage` does.
    async fn decide(
        &mut self,
        requests: &[PgAppend],
        recorded_at_ms: u64,
        fresh: &HashSet<StreamId>,
        known_commands: Option<&HashMap<String, CommandRecord>>,
    ) -> Result<Result<Plan, Retry>, StoreError> {
        let mut plan = Plan::default();
        // Per stream written in this batch: base version, staged (id, offset) per version.
        let mut pending: HashMap<StreamId, (StreamVersion, Vec<(Uuid, u64)>)> = HashMap::new();
        let mut pending_commands: HashMap<
            String,
            (StreamId, Option<RequestFingerprint>, PlannedResult),
        > = HashMap::new();
        let mut stale: Vec<StreamId> = Vec::new();
        for req in requests {
            // 1. The command id.
            if let Some((command_id, fingerprint)) = &req.command {
                let recorded = match pending_commands.get(command_id) {
                    Some((stream, fp, planned)) => Some((
                        CommandRecord {
                            stream: stream.clone(),
                            result: planned.result,
                            fingerprint: *fp,
                        },
                        planned.relative,
                    )),
                    None => known_commands
                        .and_then(|k| k.get(command_id))
                        .map(|r| (r.clone(), false)),
                };
                if let Some((record, relative)) = recorded {
                    plan.decisions.push(
                        if record.same_request(&req.stream, fingerprint.as_ref()) {
                            Decision::Repeat(PlannedResult {
                                result: record.result,
                                relative,
                            })
                        } else {
                            Decision::Refused(
                                StoreError::CommandIdInUse {
                                    command_id: command_id.clone(),
                                    stream: record.stream,
                                },
                                relative,
                            )
                        },
                    );
                    continue;
                }
            }
            // 2. The stream's version, as of this batch.
            let belief = self.versions.get(&req.stream).copied().unwrap_or(Belief {
                version: 0,
                tail: None,
            });
            let (version, checked, in_batch) = match pending.get(&req.stream) {
                Some((b, staged)) => (b + staged.len() as u64, true, true),
                None => (belief.version, fresh.contains(&req.stream), false),
            };
            // 3. The idempotency rule (the same as the sled writer's).
            let n = req.events.len() as u64;
            let place = req.expected.repeat_place(version, n);
            // A different first id where this host last wrote settles it: no repeat.
            let place = place.filter(|p| {
                in_batch
                    || !matches!(belief.tail, Some((v, id)) if v == *p && id != req.events[0].event_id)
            });
            let refusing = place.is_some() || !req.expected.admits(version);
            if refusing && req.command.is_some() && known_commands.is_none() {
                // A command is refused or repeated only once its record is known.
                return Ok(Err(Retry::Commands));
            }
            if refusing && !checked {
                // Never refuse or repeat on a belief: read the stream first.
                stale.push(req.stream.clone());
                plan.decisions.push(Decision::Refused(
                    StoreError::Unavailable("undecided".into()),
                    false,
                ));
                continue;
            }
            if let Some(place) = place {
                match self
                    .repeat(req, place, version, pending.get(&req.stream))
                    .await?
                {
                    RepeatCheck::NotARepeat => {}
                    RepeatCheck::Repeat(planned) => {
                        plan.decisions.push(Decision::Repeat(planned));
                        continue;
                    }
                    RepeatCheck::Duplicate(e) => {
                        plan.decisions.push(Decision::Refused(e, in_batch));
                        continue;
                    }
                }
            }
            if !req.expected.admits(version) {
                plan.decisions.push(Decision::Refused(
                    StoreError::WrongExpectedVersion {
                        stream: req.stream.clone(),
                        expected: req.expected,
                        actual: version,
                    },
                    in_batch,
                ));
                continue;
            }
            // 4. A write: encode the events at their versions.
            let first_offset = plan.events.bodies.len() as u64 + 1;
            plan.tails
                .insert(req.stream.clone(), (version + 1, req.events[0].event_id));
            let entry = pending
                .entry(req.stream.clone())
                .or_insert_with(|| (version, Vec::new()));
            for (i, event) in req.events.iter().enumerate() {
                let event_version = version + 1 + i as u64;
                let body = format::encode_event_body(&EventRecordRef {
                    stream: &req.stream,
                    version: event_version,
                    event_id: &event.event_id,
                    event_type: &event.event_type,
                    data: &event.data,
                    recorded_at_ms,
                    metadata: &event.metadata,
                    schema_version: event.schema_version,
                });
                plan.events
                    .types
                    .push(req.stream.aggregate_type().to_string());
                plan.events.ids.push(req.stream.aggregate_id().to_string());
                plan.events.versions.push(big(event_version));
                plan.events.event_types.push(event.event_type.clone());
                plan.events.bodies.push(body);
                entry.1.push((event.event_id, first_offset + i as u64));
            }
            let planned = PlannedResult {
                result: AppendResult {
                    stream_version: version + n,
                    first_position: first_offset,
                    last_position: first_offset + n - 1,
                },
                relative: true,
            };
            if let Some((command_id, fingerprint)) = &req.command {
                let c = &mut plan.commands;
                c.ids.push(command_id.clone());
                c.types.push(req.stream.aggregate_type().to_string());
                c.sids.push(req.stream.aggregate_id().to_string());
                c.versions.push(big(version + n));
                c.first.push(first_offset as i32);
                c.last.push((first_offset + n - 1) as i32);
                c.fingerprints.push(fingerprint.map(|f| f.to_vec()));
                pending_commands.insert(
                    command_id.clone(),
                    (req.stream.clone(), *fingerprint, planned),
                );
            }
            if let Some(entry) = &req.journal {
                let j = &mut plan.journal;
                j.received.push(big(entry.received_at_ms));
                j.ids.push(entry.command_id.clone());
                j.types.push(entry.aggregate_type.clone());
                j.first.push(first_offset as i32);
                j.last.push((first_offset + n - 1) as i32);
                // The positions are the columns': the entry is stored without them.
                j.entries.push(encode_entry(&JournalEntry {
                    outcome: JournalOutcome::Accepted {
                        first_position: None,
                        last_position: None,
                    },
                    ..(**entry).clone()
                }));
            }
            plan.decisions.push(Decision::Write(planned));
        }
        if !stale.is_empty() {
            return Ok(Err(Retry::Refresh(stale)));
        }
        for (stream, (base, staged)) in pending {
            let new_version = base + staged.len() as u64;
            plan.streams.push((stream, base, new_version));
        }
        Ok(Ok(plan))
    }

    /// Does `req` repeat what the stream holds from `place` on?
    async fn repeat(
        &self,
        req: &PgAppend,
        place: StreamVersion,
        version: StreamVersion,
        pending: Option<&(StreamVersion, Vec<(Uuid, u64)>)>,
    ) -> Result<RepeatCheck, StoreError> {
        let n = req.events.len() as u64;
        let last = (place + n - 1).min(version);
        // The ids and positions at versions place..=last: staged ones from this
        // batch (relative), the rest from the database (immutable once there).
        let mut held: Vec<(Uuid, u64, bool)> = Vec::new();
        let base = pending.map_or(version, |(b, _)| *b);
        if place <= base {
            let rows = self
                .client
                .query(
                    "SELECT position, chain, body FROM refold_events \
                     WHERE stream_type = $1 AND stream_id = $2 AND version BETWEEN $3 AND $4 \
                     ORDER BY version",
                    &[
                        &req.stream.aggregate_type(),
                        &req.stream.aggregate_id(),
                        &big(place),
                        &big(last.min(base)),
                    ],
                )
                .await
                .map_err(|e| pg_error("reading a stream's events", e))?;
            for row in &rows {
                let event = super::decode_row(row)?;
                held.push((event.event_id, event.position, false));
            }
        }
        if let Some((b, staged)) = pending {
            for v in place.max(b + 1)..=last {
                let (id, offset) = staged[(v - b - 1) as usize];
                held.push((id, offset, true));
            }
        }
        let Some(&(first_id, first_position, relative)) = held.first() else {
            return Ok(RepeatCheck::NotARepeat);
        };
        if first_id != req.events[0].event_id {
            return Ok(RepeatCheck::NotARepeat);
        }
        let duplicate = || {
            RepeatCheck::Duplicate(StoreError::DuplicateEventId {
                event_id: first_id,
                stream: req.stream.clone(),
                version: place,
            })
        };
        if place + n - 1 > version || held.len() as u64 != n {
            return Ok(duplicate());
        }
        for (event, (id, _, _)) in req.events.iter().zip(&held) {
            if event.event_id != *id {
                return Ok(duplicate());
            }
        }
        let (_, last_position, last_relative) = *held.last().expect("n >= 1");
        if relative != last_relative {
            // A repeat spanning committed and staged events cannot be expressed
            // in one result; it is also not something a client can have sent.
            return Ok(duplicate());
        }
        Ok(RepeatCheck::Repeat(PlannedResult {
            result: AppendResult {
                stream_version: place + n - 1,
                first_position,
                last_position,
            },
            relative,
        }))
    }

    async fn execute(
        &self,
        plan: &Plan,
        recorded_at_ms: u64,
    ) -> Result<u64, tokio_postgres::Error> {
        let s_types: Vec<&str> = plan.streams.iter().map(|s| s.0.aggregate_type()).collect();
        let s_ids: Vec<&str> = plan.streams.iter().map(|s| s.0.aggregate_id()).collect();
        let s_assumed: Vec<i64> = plan.streams.iter().map(|s| big(s.1)).collect();
        let s_new: Vec<i64> = plan.streams.iter().map(|s| big(s.2)).collect();
        let e = &plan.events;
        let c = &plan.commands;
        let recorded = big(recorded_at_ms);
        let j = &plan.journal;
        let params: [&(dyn ToSql + Sync); 23] = [
            &s_types,
            &s_ids,
            &s_assumed,
            &s_new,
            &e.types,
            &e.ids,
            &e.versions,
            &e.event_types,
            &e.bodies,
            &c.ids,
            &c.types,
            &c.sids,
            &c.versions,
            &c.first,
            &c.last,
            &c.fingerprints,
            &j.received,
            &j.ids,
            &j.types,
            &j.first,
            &j.last,
            &j.entries,
            &recorded,
        ];
        let row = self.client.query_one(&self.append, &params).await?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

enum RepeatCheck {
    NotARepeat,
    Repeat(PlannedResult),
    Duplicate(StoreError),
}

fn unique_streams(requests: &[PgAppend]) -> impl Iterator<Item = StreamId> + '_ {
    let mut seen = HashSet::new();
    requests
        .iter()
        .filter(move |r| seen.insert(r.stream.clone()))
        .map(|r| r.stream.clone())
}

fn absolute(planned: PlannedResult, base: u64) -> AppendResult {
    let mut r = planned.result;
    if planned.relative {
        r.first_position += base;
        r.last_position += base;
    }
    r
}

fn reply(requests: Vec<PgAppend>, plan: Plan, base: u64) {
    for (req, decision) in requests.into_iter().zip(plan.decisions) {
        let answer = match decision {
            Decision::Refused(e, _) => Err(e),
            Decision::Repeat(p) => Ok(CommandAppend {
                result: absolute(p, base),
                repeated: true,
            }),
            Decision::Write(p) => Ok(CommandAppend {
                result: absolute(p, base),
                repeated: false,
            }),
        };
        let _ = req.reply.send(answer);
    }
}

fn answer_all(requests: Vec<PgAppend>, err: StoreError) {
    for req in requests {
        let _ = req.reply.send(Err(same_error(&err)));
    }
}

/// The batch's writes may or may not have committed; refusals stand.
fn answer_writes(requests: Vec<PgAppend>, plan: Plan, err: StoreError) {
    for (req, decision) in requests.into_iter().zip(plan.decisions) {
        let answer = match decision {
            Decision::Refused(e, false) => Err(e),
            Decision::Repeat(p) if !p.relative => Ok(CommandAppend {
                result: p.result,
                repeated: true,
            }),
            _ => Err(same_error(&err)),
        };
        let _ = req.reply.send(answer);
    }
}

/// The same error again, for each waiter of a batch (`StoreError` is not `Clone`).
fn same_error(err: &StoreError) -> StoreError {
    match err {
        StoreError::Storage { context, message } => StoreError::Storage {
            context,
            message: message.clone(),
        },
        StoreError::Corrupt { key, reason } => StoreError::Corrupt {
            key: key.clone(),
            reason: reason.clone(),
        },
        other => StoreError::Unavailable(other.to_string()),
    }
}

pub(crate) async fn stream_version(
    client: &deadpool_postgres::Object,
    stream: &StreamId,
) -> Result<StreamVersion, StoreError> {
    let statement = client
        .prepare_cached(
            "SELECT version FROM refold_streams WHERE stream_type = $1 AND stream_id = $2",
        )
        .await
        .map_err(|e| pg_error("preparing a stream version read", e))?;
    let row = client
        .query_opt(
            &statement,
            &[&stream.aggregate_type(), &stream.aggregate_id()],
        )
        .await
        .map_err(|e| pg_error("reading a stream version", e))?;
    Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
}

const COMMAND_COLUMNS: &str = "command_id, stream_type, stream_id, stream_version, first_position, last_position, fingerprint";

fn command_row(row: &tokio_postgres::Row) -> Result<(String, CommandRecord), StoreError> {
    let id: String = row.get(0);
    let fingerprint: Option<Vec<u8>> = row.get(6);
    let fingerprint = match fingerprint {
        None => None,
        Some(f) => Some(f.as_slice().try_into().map_err(|_| StoreError::Corrupt {
            key: format!("refold_commands/{id}"),
            reason: "the fingerprint is not 32 bytes".into(),
        })?),
    };
    let record = CommandRecord {
        stream: StreamId::from_parts_unchecked(row.get(1), row.get(2)),
        result: AppendResult {
            stream_version: row.get::<_, i64>(3) as u64,
            first_position: row.get::<_, i64>(4) as u64,
            last_position: row.get::<_, i64>(5) as u64,
        },
        fingerprint,
    };
    Ok((id, record))
}

pub(crate) async fn command_record(
    client: &Client,
    command_id: &str,
) -> Result<Option<CommandRecord>, StoreError> {
    let ids = [command_id.to_string()];
    Ok(command_records(client, &ids).await?.remove(command_id))
}

async fn command_records(
    client: &Client,
    ids: &[String],
) -> Result<HashMap<String, CommandRecord>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = client
        .query(
            &format!("SELECT {COMMAND_COLUMNS} FROM refold_commands WHERE command_id = ANY($1)"),
            &[&ids],
        )
        .await
        .map_err(|e| pg_error("reading command records", e))?;
    rows.iter().map(command_row).collect()
}
