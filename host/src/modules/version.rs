//! One registered version and where its compilation stands. A version is
//! registered (its record and file exist) before it can run: after a start
//! without its cached artifact it compiles in the background, and requests
//! for it wait a little, then hear that it is not ready.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::LoadedModule;
use crate::store::ModuleRecord;

/// Where a registered version's compilation stands.
#[derive(Clone)]
pub enum CompileState {
    /// Compiling in the background (the server started without its artifact).
    Compiling,
    /// Compiled, checked and ready to run.
    Ready(Arc<LoadedModule>),
    /// Its compilation at startup failed. It does not run until the same
    /// bytes are uploaded again, or a later start compiles it.
    Failed { code: &'static str, reason: String },
}

impl CompileState {
    pub fn as_str(&self) -> &'static str {
        match self {
            CompileState::Compiling => "compiling",
            CompileState::Ready(_) => "ready",
            CompileState::Failed { .. } => "failed",
        }
    }
}

/// A registered version as the registry lists it.
#[derive(Clone)]
pub struct ModuleVersion {
    pub record: ModuleRecord,
    pub state: CompileState,
}

/// A request reached a version that cannot run yet.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotReady {
    #[error(
        "{module} is still compiling (the server started without its compiled artifact); retry in {} s",
        .retry_after.as_secs()
    )]
    Compiling {
        module: String,
        retry_after: Duration,
    },
    #[error(
        "{module} could not be compiled when the server started ({code}: {reason}); upload the same bytes again to retry"
    )]
    CompileFailed {
        module: String,
        code: &'static str,
        reason: String,
    },
}

impl NotReady {
    pub fn code(&self) -> &'static str {
        match self {
            NotReady::Compiling { .. } => "module_compiling",
            NotReady::CompileFailed { .. } => "module_compile_failed",
        }
    }
}

/// A registered version: its record, and its compile state on a watch
/// channel that waiters subscribe to.
pub(super) struct Registered {
    pub record: ModuleRecord,
    pub state: watch::Sender<CompileState>,
}

impl Registered {
    pub fn new(record: ModuleRecord, state: CompileState) -> Arc<Registered> {
        Arc::new(Registered {
            record,
            state: watch::Sender::new(state),
        })
    }

    /// `name@version`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.record.name, self.record.version)
    }

    pub fn ready(&self) -> Option<Arc<LoadedModule>> {
        match &*self.state.borrow() {
            CompileState::Ready(module) => Some(module.clone()),
            _ => None,
        }
    }

    pub fn snapshot(&self) -> ModuleVersion {
        ModuleVersion {
            record: self.record.clone(),
            state: self.state.borrow().clone(),
        }
    }

    /// The compiled module now, or once its compilation ends within `wait`.
    pub async fn wait_ready(&self, wait: Duration) -> Result<Arc<LoadedModule>, NotReady> {
        if let Some(module) = self.ready() {
            return Ok(module);
        }
        let mut state = self.state.subscribe();
        let _ = tokio::time::timeout(
            wait,
            state.wait_for(|s| !matches!(s, CompileState::Compiling)),
        )
        .await;
        self.now(wait)
    }

    /// Waits for a compilation under way to end, however long its budget lets it run.
    pub async fn wait_compiled(&self) -> CompileState {
        let mut state = self.state.subscribe();
        let _ = state
            .wait_for(|s| !matches!(s, CompileState::Compiling))
            .await;
        self.state.borrow().clone()
    }

    /// The module, or why it cannot run; `retry_after` for one still compiling.
    pub fn now(&self, retry_after: Duration) -> Result<Arc<LoadedModule>, NotReady> {
        match &*self.state.borrow() {
            CompileState::Ready(module) => Ok(module.clone()),
            CompileState::Compiling => Err(NotReady::Compiling {
                module: self.label(),
                retry_after: retry_after.max(Duration::from_secs(1)),
            }),
            CompileState::Failed { code, reason } => Err(NotReady::CompileFailed {
                module: self.label(),
                code,
                reason: reason.clone(),
            }),
        }
    }
}
