//! A whole in-process host over a real store, runtime and registry, with the
//! real guest components built by `refold-test-guests`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use refold::commands::{CommandConfig, CommandOutcome, CommandRequest, CommandService};
use refold::modules::ModuleRegistry;
use refold::runtime::{Runtime, RuntimeConfig};
use refold::store::{Backend, Durability, Store, StoreConfig};

pub struct Host {
    pub store: Store,
    pub runtime: Arc<Runtime>,
    pub modules: Arc<ModuleRegistry>,
    pub commands: CommandService,
}

pub fn runtime_config(dir: &Path) -> RuntimeConfig {
    RuntimeConfig {
        fuel_per_call: 200_000_000,
        deadline: Duration::from_secs(10),
        memory_bytes: 32 << 20,
        cache_dir: Some(dir.join("cache")),
        compile: super::http::compile_config(),
        ..RuntimeConfig::default()
    }
}

impl Host {
    pub async fn start(dir: &Path) -> Host {
        Host::start_with(dir, runtime_config(dir), CommandConfig::default()).await
    }

    pub async fn start_with(dir: &Path, runtime: RuntimeConfig, commands: CommandConfig) -> Host {
        let store = Store::open(StoreConfig::new(dir.join("events")).durability(Durability::Fsync))
            .expect("store opens");
        let runtime = Arc::new(Runtime::new(runtime).expect("runtime starts"));
        let backend = Backend::sled(store.clone(), dir.join("modules")).expect("modules directory");
        let modules = Arc::new(
            ModuleRegistry::open(backend.clone(), runtime.clone())
                .await
                .expect("registry opens"),
        );
        let commands = CommandService::new(backend, modules.clone(), commands);
        Host {
            store,
            runtime,
            modules,
            commands,
        }
    }

    pub async fn upload(&self, name: &str, version: &str, path: &str) {
        let bytes = std::fs::read(path).expect("guest component built");
        self.modules
            .upload(name, version, bytes, true, true)
            .await
            .expect("module uploads");
    }

    pub async fn send(
        &self,
        aggregate_type: &str,
        id: &str,
        command: &str,
    ) -> Result<CommandOutcome, refold::commands::CommandError> {
        self.commands
            .execute(CommandRequest {
                aggregate_type: aggregate_type.into(),
                aggregate_id: id.into(),
                command: command.into(),
                ..CommandRequest::default()
            })
            .await
    }

    pub async fn stop(self) {
        self.store.close().await;
    }
}
