//! Prometheus metrics: one registry, rendered at `/metrics`.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

use crate::commands::CacheStats;
use crate::modules::PoolStats;
use crate::projections::{ProjectionView, RunState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
}

/// One projection version.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub projection: String,
    pub version: String,
}

/// One projection version in one run state (an enum as a gauge per state,
/// 1 for the state it is in).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub projection: String,
    pub version: String,
    pub state: String,
}

/// One process.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcessLabels {
    pub process: String,
}

/// One process and a status of its instances, or an outcome of its commands.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcessKindLabels {
    pub process: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModuleLabels {
    pub module: String,
}

/// One module version and one outcome of the commands it decided.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModuleOutcomeLabels {
    pub module: String,
    pub version: String,
    pub outcome: String,
}

type U64Gauges<L> = Family<L, Gauge<u64, AtomicU64>>;

pub struct Metrics {
    registry: Registry,
    commands: Family<Outcome, Counter>,
    command_seconds: Histogram,
    appended: Counter,
    head: Gauge<u64, AtomicU64>,
    subscribers: Gauge,
    cache_entries: Gauge<u64, AtomicU64>,
    cache_bytes: Gauge<u64, AtomicU64>,
    cache_max_bytes: Gauge<u64, AtomicU64>,
    guest_threads: Gauge<u64, AtomicU64>,
    guest_running: Gauge<u64, AtomicU64>,
    guest_queued: Gauge<u64, AtomicU64>,
    guest_calls: Counter<u64, AtomicU64>,
    guest_demoted: Counter<u64, AtomicU64>,
    guest_queued_by_module: U64Gauges<ModuleLabels>,
    guest_running_by_module: U64Gauges<ModuleLabels>,
    store_writable: Gauge<u64, AtomicU64>,
    projection_position: U64Gauges<VersionLabels>,
    projection_lag: U64Gauges<VersionLabels>,
    projection_live: U64Gauges<VersionLabels>,
    projection_rate: Family<VersionLabels, Gauge<f64, AtomicU64>>,
    projection_state: U64Gauges<StateLabels>,
    process_checkpoint: U64Gauges<ProcessLabels>,
    process_lag: U64Gauges<ProcessLabels>,
    process_instances: U64Gauges<ProcessKindLabels>,
    process_pending: U64Gauges<ProcessLabels>,
    process_queued: U64Gauges<ProcessLabels>,
    process_stalled: U64Gauges<ProcessLabels>,
    process_failing: U64Gauges<ProcessLabels>,
    process_commands: Family<ProcessKindLabels, Counter>,
    module_commands: Family<ModuleOutcomeLabels, Counter>,
    /// Scrapes one at a time: counters are caught up to totals read elsewhere.
    rendering: std::sync::Mutex<()>,
}

/// Readings taken when `/metrics` is scraped.
pub struct Readings {
    pub head: u64,
    pub cache: CacheStats,
    pub pool: PoolStats,
    /// False once a storage failure stopped writes.
    pub store_writable: bool,
    pub projections: Vec<ProjectionView>,
    pub processes: Vec<crate::processes::ProcessView>,
    /// Commands per (module, version) since the start, by outcome.
    pub module_outcomes: Vec<((String, String), crate::modules::OutcomeCounts)>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("refold");
        let commands = Family::<Outcome, Counter>::default();
        let command_seconds = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
        ]);
        let appended = Counter::default();
        let head = Gauge::<u64, AtomicU64>::default();
        let subscribers = Gauge::default();
        registry.register(
            "commands",
            "Commands handled, by outcome (ok or an error code)",
            commands.clone(),
        );
        registry.register(
            "command_duration_seconds",
            "Time to handle a command",
            command_seconds.clone(),
        );
        registry.register(
            "events_appended",
            "Events appended by commands",
            appended.clone(),
        );
        registry.register(
            "head_position",
            "Position of the last durable event",
            head.clone(),
        );
        registry.register(
            "subscribers",
            "Open event subscriptions",
            subscribers.clone(),
        );
        let cache_entries = registered(
            &mut registry,
            "state_cache_entries",
            "Aggregate states held in the state cache",
        );
        let cache_bytes = registered(
            &mut registry,
            "state_cache_bytes",
            "Bytes of aggregate state held in the state cache",
        );
        let cache_max_bytes = registered(
            &mut registry,
            "state_cache_max_bytes",
            "The state cache's byte budget",
        );
        let guest_threads = registered(
            &mut registry,
            "guest_threads",
            "Threads that run guest code (base threads plus extra ones started for waiting modules)",
        );
        let guest_running = registered(
            &mut registry,
            "guest_calls_running",
            "Guest calls running now",
        );
        let guest_queued = registered(
            &mut registry,
            "guest_calls_queued",
            "Guest calls waiting for a thread",
        );
        let guest_calls = Counter::<u64, AtomicU64>::default();
        registry.register(
            "guest_calls",
            "Guest calls run by the guest pool",
            guest_calls.clone(),
        );
        let guest_demoted = Counter::<u64, AtomicU64>::default();
        registry.register(
            "guest_calls_demoted",
            "Guest calls that ran long enough to have their thread's OS priority lowered",
            guest_demoted.clone(),
        );
        let guest_queued_by_module = registered(
            &mut registry,
            "guest_calls_queued_by_module",
            "Guest calls waiting for a thread, per module with calls queued or running",
        );
        let guest_running_by_module = registered(
            &mut registry,
            "guest_calls_running_by_module",
            "Guest calls running now, per module with calls queued or running",
        );
        let store_writable = registered(
            &mut registry,
            "store_writable",
            "1 while the store accepts writes; 0 after a storage failure stopped them (restart the process)",
        );
        let projection_position = registered(
            &mut registry,
            "projection_position",
            "The last log position a projection version has processed",
        );
        let projection_lag = registered(
            &mut registry,
            "projection_lag_events",
            "Log positions between the head and a projection version's position",
        );
        let projection_live = registered(
            &mut registry,
            "projection_live",
            "1 for the version readers of a projection see",
        );
        let projection_rate = registered(
            &mut registry,
            "projection_events_per_second",
            "While a projection version catches up, positions processed per second",
        );
        let projection_state = registered(
            &mut registry,
            "projection_state",
            "1 for the state a projection version is in (starting, catching_up, caught_up, failed)",
        );
        let process_checkpoint = registered(
            &mut registry,
            "process_checkpoint",
            "The log position up to which a process has taken every event in",
        );
        let process_lag = registered(
            &mut registry,
            "process_lag_events",
            "Log positions between the head and a process's checkpoint",
        );
        let process_instances = registered(
            &mut registry,
            "process_instances",
            "A process's instances by status (kind: running, completed, failed)",
        );
        let process_pending = registered(
            &mut registry,
            "process_pending_commands",
            "Commands a process has recorded and not yet had an outcome for",
        );
        let process_queued = registered(
            &mut registry,
            "process_queued_inputs",
            "Inputs waiting for a busy process instance",
        );
        let process_stalled = registered(
            &mut registry,
            "process_stalled_instances",
            "Process instances stopped at an input (a failing or misbehaving react)",
        );
        let process_failing = registered(
            &mut registry,
            "process_reader_stopped",
            "1 while a process's log reader is stopped (a failing route or subscription)",
        );
        let process_commands = Family::<ProcessKindLabels, Counter>::default();
        registry.register(
            "process_commands",
            "Commands a process sent, by outcome (kind: sent, accepted, rejected, retried)",
            process_commands.clone(),
        );
        let module_commands = Family::<ModuleOutcomeLabels, Counter>::default();
        registry.register(
            "module_commands",
            "Commands each aggregate module version decided since the start, by outcome (accepted, rejected, failed, refused; sticky: decided by this version because the aggregate's last event was its)",
            module_commands.clone(),
        );
        Metrics {
            registry,
            commands,
            command_seconds,
            appended,
            head,
            subscribers,
            cache_entries,
            cache_bytes,
            cache_max_bytes,
            guest_threads,
            guest_running,
            guest_queued,
            guest_calls,
            guest_demoted,
            guest_queued_by_module,
            guest_running_by_module,
            store_writable,
            projection_position,
            projection_lag,
            projection_live,
            projection_rate,
            projection_state,
            process_checkpoint,
            process_lag,
            process_instances,
            process_pending,
            process_queued,
            process_stalled,
            process_failing,
            process_commands,
            module_commands,
            rendering: std::sync::Mutex::new(()),
        }
    }

    pub fn command(&self, outcome: &str, took: Duration, events: usize) {
        self.commands
            .get_or_create(&Outcome {
                outcome: outcome.to_string(),
            })
            .inc();
        self.command_seconds.observe(took.as_secs_f64());
        self.appended.inc_by(events as u64);
    }

    pub fn subscriber_opened(&self) {
        self.subscribers.inc();
    }

    pub fn subscriber_closed(&self) {
        self.subscribers.dec();
    }

    pub fn render(&self, readings: &Readings) -> String {
        let _one_at_a_time = self.rendering.lock().unwrap_or_else(|e| e.into_inner());
        self.head.set(readings.head);
        self.cache_entries.set(readings.cache.entries as u64);
        self.cache_bytes.set(readings.cache.bytes as u64);
        self.cache_max_bytes.set(readings.cache.max_bytes as u64);
        self.guest_threads.set(readings.pool.threads as u64);
        self.guest_running.set(readings.pool.running as u64);
        self.guest_queued.set(readings.pool.queued as u64);
        let run = readings.pool.jobs_run;
        self.guest_calls
            .inc_by(run.saturating_sub(self.guest_calls.get()));
        let demoted = readings.pool.demoted;
        self.guest_demoted
            .inc_by(demoted.saturating_sub(self.guest_demoted.get()));
        self.store_writable.set(u64::from(readings.store_writable));
        // Modules and versions come and go: each scrape shows the ones there now.
        self.guest_queued_by_module.clear();
        self.guest_running_by_module.clear();
        for (module, queued, running) in &readings.pool.modules {
            let labels = ModuleLabels {
                module: module.clone(),
            };
            self.guest_queued_by_module
                .get_or_create(&labels)
                .set(*queued as u64);
            self.guest_running_by_module
                .get_or_create(&labels)
                .set(*running as u64);
        }
        self.projection_position.clear();
        self.projection_lag.clear();
        self.projection_live.clear();
        self.projection_rate.clear();
        self.projection_state.clear();
        for projection in &readings.projections {
            for version in &projection.versions {
                let labels = VersionLabels {
                    projection: projection.name.clone(),
                    version: version.version.clone(),
                };
                let status = &version.status;
                self.projection_position
                    .get_or_create(&labels)
                    .set(status.position);
                self.projection_lag.get_or_create(&labels).set(version.lag);
                self.projection_live
                    .get_or_create(&labels)
                    .set(u64::from(version.live));
                self.projection_rate
                    .get_or_create(&labels)
                    .set(status.events_per_second);
                for state in RunState::ALL {
                    self.projection_state
                        .get_or_create(&StateLabels {
                            projection: projection.name.clone(),
                            version: version.version.clone(),
                            state: state.as_str().to_owned(),
                        })
                        .set(u64::from(status.state == state));
                }
            }
        }
        for gauges in [
            &self.process_checkpoint,
            &self.process_lag,
            &self.process_pending,
            &self.process_queued,
            &self.process_stalled,
            &self.process_failing,
        ] {
            gauges.clear();
        }
        self.process_instances.clear();
        for p in &readings.processes {
            let labels = ProcessLabels {
                process: p.name.clone(),
            };
            self.process_checkpoint
                .get_or_create(&labels)
                .set(p.checkpoint);
            self.process_lag.get_or_create(&labels).set(p.lag);
            self.process_pending
                .get_or_create(&labels)
                .set(p.pending_commands as u64);
            self.process_queued
                .get_or_create(&labels)
                .set(p.queued_inputs as u64);
            self.process_stalled
                .get_or_create(&labels)
                .set(p.stalled_instances as u64);
            self.process_failing
                .get_or_create(&labels)
                .set(u64::from(p.failure.is_some()));
            let kind = |kind: &str| ProcessKindLabels {
                process: p.name.clone(),
                kind: kind.to_string(),
            };
            for (status, count) in [
                ("running", p.instances.running),
                ("completed", p.instances.completed),
                ("failed", p.instances.failed),
            ] {
                self.process_instances
                    .get_or_create(&kind(status))
                    .set(count as u64);
            }
            for (outcome, total) in [
                ("sent", p.commands_sent),
                ("accepted", p.commands_accepted),
                ("rejected", p.commands_rejected),
                ("retried", p.command_retries),
            ] {
                let counter = self.process_commands.get_or_create(&kind(outcome));
                counter.inc_by(total.saturating_sub(counter.get()));
            }
        }
        for ((module, version), counts) in &readings.module_outcomes {
            for (outcome, total) in [
                ("accepted", counts.accepted),
                ("rejected", counts.rejected),
                ("failed", counts.failed),
                ("refused", counts.refused),
                ("sticky", counts.sticky),
            ] {
                let counter = self.module_commands.get_or_create(&ModuleOutcomeLabels {
                    module: module.clone(),
                    version: version.clone(),
                    outcome: outcome.to_string(),
                });
                counter.inc_by(total.saturating_sub(counter.get()));
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// A new metric of type `M`, registered under `name`; the handle to update it.
fn registered<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
