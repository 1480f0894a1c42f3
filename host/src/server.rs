//! `refold serve`: open the data directory, build the services, serve HTTP,
//! and shut down gracefully (stop accepting, finish in-flight requests, end
//! subscriptions, close the store with a final flush).
//!
//! Data directory layout: `events/` (the store), `modules/` (component bytes
//! by digest), `cache/` (compiled artifacts).
//!
//! `RunningServer::load_examples` registers components built at startup
//! (`refold serve --examples`; the building is `cli::tooling`'s).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sha2::Digest;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, AppState, ConnectionLimits, Limits, Metrics, Tokens};
use crate::commands::{CommandConfig, CommandService};
use crate::modules::{LoadedModule, ModuleError, ModuleRegistry};
use crate::projections::{ProjectionConfig, ProjectionService};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::store::pg::PgStore;
use crate::store::{Backend, Durability, SealSigner, Store, StoreConfig};

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub tokens: Tokens,
    pub limits: Limits,
    pub connections: ConnectionLimits,
    pub runtime: RuntimeConfig,
    pub commands: CommandConfig,
    pub projections: ProjectionConfig,
    pub durability: Durability,
    /// Signs every seal of the hash chain (`--signing-key`).
    pub signer: Option<Arc<SealSigner>>,
    /// A PostgreSQL connection string (`--store postgres://...`): the events,
    /// modules and read models live there, shared with other hosts, and
    /// `data_dir` keeps only this host's compiled-artifact cache. None: sled
    /// in `data_dir`.
    pub store_url: Option<String>,
}

impl ServeConfig {
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        ServeConfig {
            data_dir: data_dir.into(),
            listen,
            tokens: Tokens::default(),
            limits: Limits::default(),
            connections: ConnectionLimits::default(),
            runtime: RuntimeConfig::default(),
            commands: CommandConfig::default(),
            projections: ProjectionConfig::default(),
            durability: Durability::Fsync,
            signer: None,
            store_url: None,
        }
    }
}

/// A server that is accepting connections.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub app: AppState,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish, ends subscriptions, closes the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.send_replace(true);
        self.task.await.context("the server task panicked")?
    }

    /// Runs until the server stops on its own (after `trigger_shutdown`).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the server task panicked")?
    }

    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }

    /// Registers example components (`refold serve --examples`), each as
    /// `name@version` unless that version is registered already: an
    /// aggregate's new version becomes active, a projection's goes live once
    /// it has caught up. A version registered with other bytes stays as it is
    /// (versions are immutable). Stops at the first upload the registry refuses.
    pub async fn load_examples(
        &self,
        examples: Vec<Example>,
    ) -> Result<Vec<ExampleLoaded>, ModuleError> {
        let mut loaded = Vec::with_capacity(examples.len());
        for example in examples {
            if let Some(existing) = self.app.modules.get(&example.name, &example.version) {
                let digest: [u8; 32] = sha2::Sha256::digest(&example.bytes).into();
                loaded.push(if existing.record.digest == digest {
                    ExampleLoaded::AlreadyRegistered(existing)
                } else {
                    ExampleLoaded::Differs(existing)
                });
                continue;
            }
            let (_, module) = self
                .app
                .modules
                // The operator's own examples: a newer example version is
                // activated without a replay check (as `--force`).
                .upload(&example.name, &example.version, example.bytes, true, true)
                .await?;
            loaded.push(ExampleLoaded::Uploaded(module));
        }
        Ok(loaded)
    }
}

/// A component to register at startup.
pub struct Example {
    pub name: String,
    pub version: String,
    pub bytes: Vec<u8>,
}

/// What [`RunningServer::load_examples`] did with one example.
pub enum ExampleLoaded {
    /// Registered now.
    Uploaded(Arc<LoadedModule>),
    /// This version was registered with the same bytes already: nothing to do.
    AlreadyRegistered(Arc<LoadedModule>),
    /// This version is registered with other bytes, which stay; a changed
    /// example needs a new version.
    Differs(Arc<LoadedModule>),
}

/// Deletes command-journal entries older than `retention`, at start and then
/// every minute, until the server shuts down.
fn spawn_journal_pruning(store: Backend, retention: Duration, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            let cutoff = crate::clock::now_ms().saturating_sub(retention.as_millis() as u64);
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.prune_journal(cutoff)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(deleted = n, "pruned the command journal"),
                Ok(Err(e)) => tracing::warn!(error = %e, "could not prune the command journal"),
                Err(e) => tracing::warn!(error = %e, "pruning the command journal panicked"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                _ = stop.changed() => return,
            }
        }
    });
}

pub async fn start(config: ServeConfig) -> anyhow::Result<RunningServer> {
    if let Err(problem) = config.tokens.check() {
        bail!("refusing to start: {problem}");
    }
    if config.tokens.is_empty() && !config.listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {} without tokens: set --admin-token (and writer/reader tokens), or listen on a loopback address",
            config.listen
        );
    }
    let mut connections = config.connections;
    match api::raise_file_limit() {
        // Leave room for the store, modules, compile workers and logs.
        Ok(files) => {
            let room = (files as usize).saturating_sub(256).max(64);
            if connections.max_connections > room {
                tracing::warn!(
                    files,
                    max_connections = room,
                    "the open-file limit allows fewer connections than configured"
                );
                connections.max_connections = room;
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let store = match &config.store_url {
        None => Backend::sled(
            Store::open(
                StoreConfig::new(config.data_dir.join("events"))
                    .durability(config.durability)
                    .signer(config.signer.clone()),
            )?,
            config.data_dir.join("modules"),
        )?,
        Some(url) => Backend::postgres(PgStore::open_signed(url, config.signer.clone()).await?)?,
    };
    let runtime_config = RuntimeConfig {
        cache_dir: Some(config.data_dir.join("cache")),
        ..config.runtime.clone()
    };
    let runtime = Arc::new(Runtime::new(runtime_config)?);
    let modules = Arc::new(ModuleRegistry::open(store.clone(), runtime).await?);
    modules.follow_catalog();
    let commands = Arc::new(CommandService::new(
        store.clone(),
        modules.clone(),
        config.commands.clone(),
    ));
    let projections =
        ProjectionService::start(store.clone(), modules.clone(), config.projections.clone());
    let processes =
        crate::processes::ProcessService::start(store.clone(), commands.clone(), modules.clone());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    spawn_journal_pruning(
        store.clone(),
        config.commands.journal_retention,
        shutdown_rx.clone(),
    );
    let app = AppState {
        store: store.clone(),
        modules,
        commands,
        projections: projections.clone(),
        processes: processes.clone(),
        metrics: Arc::new(Metrics::new()),
        limits: config.limits,
        shutdown: shutdown_rx.clone(),
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), store = store.kind(), head = store.head(), "refold is serving");
    let router = api::router(app.clone(), config.tokens.clone());
    let stop = shutdown_rx;
    let task = tokio::spawn(async move {
        api::serve(listener, router, connections, stop).await;
        // Every request has finished: stop the process runners (what each
        // instance committed stays; commands in flight are sent again after a
        // start), the projection runners (each commits the batch it is on),
        // then flush and stop the writer.
        processes.shutdown().await;
        projections.shutdown().await;
        store.close().await;
        tracing::info!("refold stopped; everything acknowledged is on disk");
        Ok(())
    });
    Ok(RunningServer {
        addr,
        app,
        shutdown: shutdown_tx,
        task,
    })
}
