//! `refold serve`: open the data directory, build the services, serve HTTP,
//! and shut down gracefully (stop accepting, finish in-flight requests, end
//! subscriptions, close the store with a final flush).
//!
//! Data directory layout: `events/` (the store), `modules/` (component bytes
//! by digest), `cache/` (compiled artifacts).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, AppState, Limits, Metrics, Tokens};
use crate::commands::{CommandConfig, CommandService};
use crate::modules::ModuleRegistry;
use crate::projections::{ProjectionConfig, ProjectionService};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::store::{Durability, Store, StoreConfig};

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub tokens: Tokens,
    pub limits: Limits,
    pub runtime: RuntimeConfig,
    pub commands: CommandConfig,
    pub projections: ProjectionConfig,
    pub durability: Durability,
}

impl ServeConfig {
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        ServeConfig {
            data_dir: data_dir.into(),
            listen,
            tokens: Tokens::default(),
            limits: Limits::default(),
            runtime: RuntimeConfig::default(),
            commands: CommandConfig::default(),
            projections: ProjectionConfig::default(),
            durability: Durability::Fsync,
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
}

pub async fn start(config: ServeConfig) -> anyhow::Result<RunningServer> {
    if config.tokens.is_empty() && !config.listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {} without tokens: set --admin-token (and writer/reader tokens), or listen on a loopback address",
            config.listen
        );
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let store = Store::open(
        StoreConfig::new(config.data_dir.join("events")).durability(config.durability),
    )?;
    let runtime_config = RuntimeConfig {
        cache_dir: Some(config.data_dir.join("cache")),
        ..config.runtime.clone()
    };
    let runtime = Arc::new(Runtime::new(runtime_config)?);
    let modules = Arc::new(
        ModuleRegistry::open(store.clone(), runtime, config.data_dir.join("modules")).await?,
    );
    let commands = Arc::new(CommandService::new(
        store.clone(),
        modules.clone(),
        config.commands.clone(),
    ));
    let projections =
        ProjectionService::start(store.clone(), modules.clone(), config.projections.clone());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let app = AppState {
        store: store.clone(),
        modules,
        commands,
        projections: projections.clone(),
        metrics: Arc::new(Metrics::new()),
        limits: config.limits,
        shutdown: shutdown_rx.clone(),
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), head = store.head(), "refold is serving");
    let router = api::router(app.clone(), config.tokens.clone());
    let mut stop = shutdown_rx;
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
            .context("serving HTTP")?;
        // Every request has finished: stop the projection runners (each commits
        // the batch it is on), then flush and stop the writer.
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
