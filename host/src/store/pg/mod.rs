//! The event log on PostgreSQL: the backend for several stateless hosts over
//! one database (`refold serve --store postgres://...`).
//!
//! - `migrate`: the schema, created and migrated by the host on start
//!   (`migrations/*.sql`, applied in order under an advisory lock).
//! - `import`: `refold migrate --to postgres://`, a verified copy of a sled log.
//! - `leases`: leases with fencing tokens (one runner per projection version
//!   across hosts); `read_model`: read models (documents, checkpoint, skips,
//!   schema versions, generations) whose commits are fenced by them.
//! - `catalog`: the module registry with module bytes, shared by hosts.
//! - `writer`: this host's group commit: one task, one connection, one
//!   statement (`refold_append`) per batch.
//! - here: opening, reads, and the head: a LISTEN connection wakes followers
//!   when any host commits, and a poll every [`HEAD_POLL`] covers a lost
//!   notification or connection.
//!
//! Events keep the sled backend's bytes (chain value and canonical body), so
//! both backends decode, prove and verify them with the same code (`format`).

mod catalog;
mod import;
mod leases;
mod migrate;
mod read_model;
mod seals;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::{AsyncMessage, NoTls};

use super::error::StoreError;
use super::format;
use super::journal::{JournalCursor, JournalEntry, JournalOutcome, JournalPage, encode_entry};
use super::types::*;
use super::{EventStore, check_name, validate_append};
pub use import::{ImportReport, import_from_sled};
pub use leases::{Lease, Leases, Refused, unique_holder};
pub use read_model::PgReadModel;
use writer::{PgAppend, PgWriter};

/// How often a host re-reads the head when no notification came.
pub const HEAD_POLL: Duration = Duration::from_millis(500);

/// Connections in the read pool.
const POOL_SIZE: usize = 16;

/// The PostgreSQL-backed event log. Cheap to clone; all clones share one
/// writer task and one read pool.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    writer: mpsc::Sender<PgAppend>,
    /// Taken by `close`, so that subscriptions end when the writer and the
    /// follower (the other holders) are gone.
    head_tx: std::sync::Mutex<Option<Arc<watch::Sender<Position>>>>,
    head: watch::Receiver<Position>,
    /// Signs the seals this host makes.
    signer: Option<Arc<super::SealSigner>>,
    /// The catalog's version as last seen (`refold_catalog_version`).
    catalog: watch::Receiver<i64>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().map(std::mem::take).unwrap_or_default() {
            task.abort();
        }
    }
}

/// `postgres://...` connection text in a form safe to log (no password).
pub fn redacted(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(config) => {
            let hosts: Vec<String> = config
                .get_hosts()
                .iter()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .collect();
            format!(
                "postgres://{}@{}/{}",
                config.get_user().unwrap_or(""),
                hosts.join(","),
                config.get_dbname().unwrap_or("")
            )
        }
        Err(_) => "postgres://(unparsable)".into(),
    }
}

pub(crate) fn pg_error(context: &'static str, err: tokio_postgres::Error) -> StoreError {
    let message = match err.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => err.to_string(),
    };
    // A connection that closed (the database restarted, the network broke)
    // is a moment's unavailability, answered 503 and retried, not a fault of
    // what is stored.
    let io = std::error::Error::source(&err).is_some_and(|e| e.is::<std::io::Error>());
    if err.is_closed() || io {
        return StoreError::Unavailable(format!("{context}: {message}"));
    }
    StoreError::Storage { context, message }
}

fn pool_error(err: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("no PostgreSQL connection: {err}"))
}

/// Connects one client and drives its connection on a task; notifications
/// (if any) go to `notices`.
pub(crate) async fn connect(
    config: &tokio_postgres::Config,
    notices: Option<mpsc::UnboundedSender<(String, String)>>,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StoreError> {
    let (client, mut connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| pg_error("connecting to PostgreSQL", e))?;
    let task = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if let Some(tx) = &notices {
                        let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "PostgreSQL connection ended");
                    break;
                }
            }
        }
    });
    Ok((client, task))
}

impl PgStore {
    /// Connects, creates or migrates the schema, and starts this host's
    /// writer and head follower.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        Self::open_signed(url, None).await
    }

    /// [`PgStore::open`], with the key that signs the seals this host makes.
    pub async fn open_signed(
        url: &str,
        signer: Option<Arc<super::SealSigner>>,
    ) -> Result<PgStore, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Unavailable(format!("not a PostgreSQL connection string: {e}"))
        })?;
        // A database that is gone must be an error, not a hang.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.keepalives(true);
        // A host paused or cut off inside a transaction (a read-model commit
        // holds its lease row) must not hold other hosts up for longer than
        // this: the database ends such a session and its locks go.
        let options = config.get_options().unwrap_or("").to_string();
        config.options(format!("{options} -c idle_in_transaction_session_timeout=5000").trim());
        config.keepalives_idle(Duration::from_secs(30));
        {
            let (mut client, task) = connect(&config, None).await?;
            migrate::migrate(&mut client).await?;
            drop(client);
            let _ = task.await;
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("building the connection pool: {e}")))?;
        let head = read_head(&pool).await?;
        let (head_tx, head_rx) = watch::channel(head);
        let head_tx = Arc::new(head_tx);
        let (tx, rx) = mpsc::channel(8192);
        let writer = PgWriter::new(config.clone(), head_tx.clone()).await?;
        let writer_task = tokio::spawn(writer.run(rx));
        let catalog_version: i64 = pool
            .get()
            .await
            .map_err(pool_error)?
            .query_one(
                "SELECT version FROM refold_catalog_version WHERE id = 1",
                &[],
            )
            .await
            .map_err(|e| pg_error("reading the catalog version", e))?
            .get(0);
        let (catalog_tx, catalog_rx) = watch::channel(catalog_version);
        let catalog_tx = Arc::new(catalog_tx);
        let follower = tokio::spawn(follow_head(
            config,
            pool.clone(),
            Watched {
                head: head_tx.clone(),
                catalog: catalog_tx.clone(),
                signer: signer.clone(),
            },
        ));
        tracing::info!(store = %redacted(url), head, "event store open (PostgreSQL)");
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                writer: tx,
                head_tx: std::sync::Mutex::new(Some(head_tx)),
                head: head_rx,
                catalog: catalog_rx,
                signer,
                tasks: std::sync::Mutex::new(vec![writer_task, follower]),
            }),
        })
    }

    /// Stops this host's writer (appends after this fail with `Unavailable`)
    /// and its head follower. Committed events are the database's.
    pub async fn close(&self) {
        let tasks = self
            .inner
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        if let Ok(mut tx) = self.inner.head_tx.lock() {
            tx.take();
        }
    }

    /// Changes whenever any host changes what runs (an upload, an
    /// activation, a routing change, a deletion): within moments of the
    /// commit, by notification, else by the next poll ([`HEAD_POLL`]).
    pub fn watch_catalog(&self) -> watch::Receiver<i64> {
        self.inner.catalog.clone()
    }

    /// [`EventStore::append_command`], with the command's journal entry
    /// committed in the same transaction as its events (with their positions),
    /// as sled's `Store::append_command` does.
    pub async fn append_command_journaled(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command_id: &str,
        fingerprint: Option<RequestFingerprint>,
        journal: JournalEntry,
    ) -> Result<CommandAppend, StoreError> {
        check_name("command id", command_id, MAX_METADATA_ID_LEN)
            .map_err(|reason| StoreError::InvalidEvent { index: 0, reason })?;
        self.send(
            stream,
            expected,
            events,
            Some((command_id.to_string(), fingerprint)),
            Some(journal),
        )
        .await
    }

    /// Journals a refused command (an accepted one is journaled by its append).
    pub async fn journal_refused(&self, entry: &JournalEntry) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO refold_journal (received_at_ms, command_id, aggregate_type, entry) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (received_at_ms, command_id) DO UPDATE \
                 SET aggregate_type = EXCLUDED.aggregate_type, first_position = NULL, \
                     last_position = NULL, entry = EXCLUDED.entry",
                &[
                    &big(entry.received_at_ms),
                    &entry.command_id,
                    &entry.aggregate_type,
                    &encode_entry(entry),
                ],
            )
            .await
            .map_err(|e| pg_error("journaling a command", e))?;
        Ok(())
    }

    /// Up to `limit` entries of `aggregate_type`, in the order received, from
    /// `since_ms` (after `after_id` at that time, when given), reading at most
    /// `max_scan` entries in all: sled's `Store::journal_page`.
    pub async fn journal_page(
        &self,
        aggregate_type: &str,
        since_ms: u64,
        after_id: Option<&str>,
        limit: usize,
        max_scan: u64,
    ) -> Result<JournalPage, StoreError> {
        let client = self.client().await?;
        // Rows past what can be read tell whether a next page exists.
        let rows = client
            .query(
                "SELECT received_at_ms, command_id, aggregate_type, first_position, last_position, entry \
                 FROM refold_journal \
                 WHERE ($2::text IS NULL AND received_at_ms >= $1) \
                    OR ($2::text IS NOT NULL AND (received_at_ms, command_id) > ($1, $2::text COLLATE \"C\")) \
                 ORDER BY received_at_ms, command_id LIMIT $3",
                &[
                    &big(since_ms),
                    &after_id,
                    &big(max_scan.saturating_add(1)),
                ],
            )
            .await
            .map_err(|e| pg_error("reading the journal", e))?;
        let mut page = JournalPage {
            entries: Vec::new(),
            next: None,
            scanned: 0,
        };
        let mut read = 0usize;
        for row in &rows {
            if page.entries.len() >= limit || page.scanned >= max_scan {
                break;
            }
            read += 1;
            page.scanned += 1;
            let mut entry: JournalEntry = format::decode_v1(b"refold_journal", row.get(5))?;
            if let (Some(first), Some(last)) =
                (row.get::<_, Option<i64>>(3), row.get::<_, Option<i64>>(4))
            {
                entry.outcome = JournalOutcome::Accepted {
                    first_position: Some(first as u64),
                    last_position: Some(last as u64),
                };
            }
            page.next = Some(JournalCursor {
                received_at_ms: row.get::<_, i64>(0) as u64,
                command_id: row.get(1),
            });
            if row.get::<_, &str>(2) == aggregate_type {
                page.entries.push(entry);
            }
        }
        if read == rows.len() {
            page.next = None; // the page stopped at the journal's end
        }
        Ok(page)
    }

    /// Deletes the journal entries received before `before_ms`; returns how many.
    pub async fn prune_journal(&self, before_ms: u64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM refold_journal WHERE received_at_ms < $1",
                &[&big(before_ms)],
            )
            .await
            .map_err(|e| pg_error("pruning the journal", e))
    }

    /// The leases of this database (one projection runner per version across hosts).
    /// Whether the database answers (a `SELECT 1` through the pool), for health checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.client()
            .await?
            .simple_query("SELECT 1")
            .await
            .map(drop)
            .map_err(|e| pg_error("checking the database", e))
    }

    pub fn leases(&self) -> Leases {
        Leases::new(self.inner.pool.clone())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.inner.pool.get().await.map_err(pool_error)
    }

    async fn send(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command: Option<(String, Option<RequestFingerprint>)>,
        journal: Option<JournalEntry>,
    ) -> Result<CommandAppend, StoreError> {
        validate_append(&events)?;
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
            .send(PgAppend {
                stream: stream.clone(),
                expected,
                events,
                command,
                journal: journal.map(Box::new),
                reply,
            })
            .await
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer stopped before answering".into()))?
    }
}

async fn read_head(pool: &Pool) -> Result<Position, StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let row = client
        .query_one("SELECT position FROM refold_head WHERE id = 1", &[])
        .await
        .map_err(|e| pg_error("reading the head", e))?;
    Ok(row.get::<_, i64>(0) as Position)
}

/// Keeps `head` at the newest committed position of any host: woken by
/// `refold_log` notifications, and polling every [`HEAD_POLL`] regardless (a
/// notification can be lost with its connection). Reconnects after a failure.
/// Both watched values, and where their notifications come from.
struct Watched {
    head: Arc<watch::Sender<Position>>,
    catalog: Arc<watch::Sender<i64>>,
    /// The follower also seals full segments ([`super::integrity::SEAL_INTERVAL`]).
    signer: Option<Arc<super::SealSigner>>,
}

/// Moves a watched value forward (never back), waking its watchers only then.
pub(crate) fn raise<T: PartialOrd + Copy>(tx: &watch::Sender<T>, value: T) {
    tx.send_if_modified(|v| {
        if value > *v {
            *v = value;
            true
        } else {
            false
        }
    });
}

async fn poll_once(pool: &Pool, watched: &Watched) {
    let Ok(client) = pool.get().await else { return };
    let Ok(row) = client
        .query_one(
            "SELECT (SELECT position FROM refold_head WHERE id = 1), \
                    (SELECT version FROM refold_catalog_version WHERE id = 1), \
                    (SELECT sealed FROM refold_seal_head WHERE id = 1)",
            &[],
        )
        .await
    else {
        return;
    };
    drop(client);
    let head = row.get::<_, i64>(0) as Position;
    raise(&watched.head, head);
    raise(&watched.catalog, row.get::<_, i64>(1));
    let sealed = row.get::<_, i64>(2) as Position;
    if head.saturating_sub(sealed) >= super::integrity::SEAL_INTERVAL
        && let Err(e) = seals::seal_upto(
            pool,
            watched.signer.as_deref(),
            super::integrity::SEAL_INTERVAL,
        )
        .await
    {
        tracing::warn!(error = %e, "sealing failed; the next poll tries again");
    }
}

/// Keeps the head (and the catalog's version) at the newest any host
/// committed: woken by `refold_log` and `refold_catalog` notifications, and
/// polling every [`HEAD_POLL`] regardless (a notification can be lost with its
/// connection). Reconnects after a failure.
async fn follow_head(config: tokio_postgres::Config, pool: Pool, watched: Watched) {
    loop {
        let (tx, mut notices) = mpsc::unbounded_channel();
        let listener = match connect(&config, Some(tx)).await {
            Ok((client, task)) => match client
                .batch_execute("LISTEN refold_log; LISTEN refold_catalog")
                .await
            {
                Ok(()) => Some((client, task)),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN failed; polling only");
                    task.abort();
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "no LISTEN connection; polling only");
                None
            }
        };
        let mut poll = tokio::time::interval(HEAD_POLL);
        loop {
            tokio::select! {
                notice = notices.recv(), if listener.is_some() => match notice {
                    Some((channel, payload)) => match (channel.as_str(), payload.parse::<i64>()) {
                        ("refold_log", Ok(p)) => raise(&watched.head, p as Position),
                        ("refold_catalog", Ok(v)) => raise(&watched.catalog, v),
                        _ => {}
                    },
                    None => break, // the listening connection ended: reconnect
                },
                _ = poll.tick() => {
                    poll_once(&pool, &watched).await;
                    if listener.is_none() {
                        break; // try to LISTEN again
                    }
                }
            }
        }
        if let Some((_, task)) = listener {
            task.abort();
        }
        tokio::time::sleep(HEAD_POLL).await;
    }
}

fn decode_row(row: &tokio_postgres::Row) -> Result<RecordedEvent, StoreError> {
    let position = row.get::<_, i64>("position") as Position;
    let chain: &[u8] = row.get("chain");
    let body: &[u8] = row.get("body");
    let chain: [u8; 32] = chain.try_into().map_err(|_| {
        format::corrupt(
            &format::event_key(position),
            "the chain value is not 32 bytes",
        )
    })?;
    format::decode_event_body(position, chain, body)
}

/// u64 versions and positions as PostgreSQL bigints (values above i64::MAX
/// cannot exist in the log, so they clamp).
fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl EventStore for PgStore {
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendResult, StoreError>> + Send {
        let store = self.clone();
        let stream = stream.clone();
        async move {
            Ok(store
                .send(&stream, expected, events, None, None)
                .await?
                .result)
        }
    }

    fn append_command(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command_id: &str,
        fingerprint: Option<RequestFingerprint>,
    ) -> impl Future<Output = Result<CommandAppend, StoreError>> + Send {
        let store = self.clone();
        let stream = stream.clone();
        let command_id = command_id.to_string();
        async move {
            check_name("command id", &command_id, MAX_METADATA_ID_LEN)
                .map_err(|reason| StoreError::InvalidEvent { index: 0, reason })?;
            store
                .send(
                    &stream,
                    expected,
                    events,
                    Some((command_id, fingerprint)),
                    None,
                )
                .await
        }
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 || (direction == Direction::Backward && from == 0) {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let sql = match direction {
            Direction::Forward => {
                "SELECT position, chain, body FROM refold_events \
                 WHERE stream_type = $1 AND stream_id = $2 AND version >= $3 \
                 ORDER BY version LIMIT $4"
            }
            Direction::Backward => {
                "SELECT position, chain, body FROM refold_events \
                 WHERE stream_type = $1 AND stream_id = $2 AND version <= $3 \
                 ORDER BY version DESC LIMIT $4"
            }
        };
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|e| pg_error("preparing a stream read", e))?;
        let rows = client
            .query(
                &statement,
                &[
                    &stream.aggregate_type(),
                    &stream.aggregate_id(),
                    &big(from),
                    &big(limit as u64),
                ],
            )
            .await
            .map_err(|e| pg_error("reading a stream", e))?;
        rows.iter().map(decode_row).collect()
    }

    async fn read_all(
        &self,
        from: Position,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<LogPage, StoreError> {
        let from = from.max(1);
        let client = self.client().await?;
        // One statement, so the events and the head come from one snapshot.
        // At most MAX_SCAN_PER_READ positions are examined, as on sled.
        let statement = client
            .prepare_cached(
                "SELECT h.position AS head, e.position, e.chain, e.body \
                 FROM refold_head h LEFT JOIN LATERAL ( \
                   SELECT position, chain, body FROM refold_events \
                   WHERE position >= $1 AND position < $5 \
                     AND (cardinality($3::text[]) = 0 OR stream_type = ANY($3)) \
                     AND (cardinality($4::text[]) = 0 OR event_type = ANY($4)) \
                   ORDER BY position LIMIT $2) e ON true \
                 WHERE h.id = 1",
            )
            .await
            .map_err(|e| pg_error("preparing a log read", e))?;
        let rows = client
            .query(
                &statement,
                &[
                    &big(from),
                    &big(limit as u64),
                    &filter.aggregate_types,
                    &filter.event_types,
                    &big(from.saturating_add(super::read::MAX_SCAN_PER_READ as u64)),
                ],
            )
            .await
            .map_err(|e| pg_error("reading the log", e))?;
        let head = rows
            .first()
            .map(|r| r.get::<_, i64>("head") as Position)
            .unwrap_or(0);
        let mut page = LogPage {
            events: Vec::with_capacity(rows.len()),
            next_position: from,
            head,
        };
        for row in &rows {
            if row.get::<_, Option<i64>>("position").is_some() {
                page.events.push(decode_row(row)?);
            }
        }
        page.next_position = if limit > 0 && page.events.len() >= limit {
            page.events.last().map_or(from, |e| e.position + 1)
        } else {
            // Everything up to the scan bound (or the head) was examined.
            from.saturating_add(super::read::MAX_SCAN_PER_READ as u64)
                .min(head + 1)
                .max(from)
        };
        if limit == 0 {
            page.next_position = from;
        }
        if let Some(tx) = self.inner.head_tx.lock().ok().and_then(|t| t.clone()) {
            raise(&tx, head);
        }
        Ok(page)
    }

    async fn read_event(&self, position: Position) -> Result<Option<RecordedEvent>, StoreError> {
        if position == 0 {
            return Ok(None);
        }
        let client = self.client().await?;
        let statement = client
            .prepare_cached("SELECT position, chain, body FROM refold_events WHERE position = $1")
            .await
            .map_err(|e| pg_error("preparing an event read", e))?;
        let row = client
            .query_opt(&statement, &[&big(position)])
            .await
            .map_err(|e| pg_error("reading an event", e))?;
        row.as_ref().map(decode_row).transpose()
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion, StoreError> {
        let client = self.client().await?;
        writer::stream_version(&client, stream).await
    }

    async fn command_record(&self, command_id: &str) -> Result<Option<CommandRecord>, StoreError> {
        let client = self.client().await?;
        writer::command_record(&client, command_id).await
    }

    fn head(&self) -> Position {
        *self.inner.head.borrow()
    }

    fn watch_head(&self) -> watch::Receiver<Position> {
        self.inner.head.clone()
    }
}
