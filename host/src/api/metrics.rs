//! Prometheus metrics: one registry, rendered at `/metrics`.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
}

pub struct Metrics {
    registry: Registry,
    commands: Family<Outcome, Counter>,
    command_seconds: Histogram,
    appended: Counter,
    head: Gauge<u64, AtomicU64>,
    subscribers: Gauge,
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
        Metrics {
            registry,
            commands,
            command_seconds,
            appended,
            head,
            subscribers,
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

    pub fn render(&self, head: u64) -> String {
        self.head.set(head);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
