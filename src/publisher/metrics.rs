//! Publisher numbers, shared with whoever reports them: the agent's
//! `/metrics/snapshot` (through the bridge, see [`Metrics::values`]),
//! `<spool_dir>/metrics.json`, the log summary and tests.
//!
//! Everything is an atomic, so a reader (a libprocess thread serving
//! `/metrics/snapshot`) never blocks on, or takes a lock from, the
//! publisher. Only `last_error` is behind a mutex, and it is not a metric.
//! Only agent-wide numbers live here: per-container detail would make
//! metric names unbounded.

use super::health::Cause;
use crate::spool::notice::LossReason;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Names of the plain metrics (see README's metric table).
const BASE_NAMES: [&str; 21] = [
    "records_published",
    "bytes_published",
    "records_in_flight",
    "delivery_failures",
    "records_retried",
    "messages_truncated",
    "loss_notices",
    "spool_bytes_pending",
    "oldest_pending_age_ms",
    "containers_active",
    "containers_finished",
    "companions_running",
    "kafka_reachable",
    "publisher_active",
    "companions_died",
    "publisher_restarts",
    "containers_unspooled",
    "delivery_latency_p50_us",
    "delivery_latency_p99_us",
    "delivery_latency_max_us",
    "producer_rebuilds",
];

#[derive(Default)]
pub struct Metrics {
    pub records_published: AtomicU64,
    pub bytes_published: AtomicU64,
    pub in_flight: AtomicU64,
    /// Records sent again after a failed delivery or a sink rebuild.
    pub retried: AtomicU64,
    /// Failed deliveries (each leads to a retry or, too large, a drop).
    pub failed: AtomicU64,
    /// Messages cut to fit `max_message_bytes` or the broker's limit.
    pub truncated: AtomicU64,
    /// Torn / corrupt spool frames skipped, segments dropped at the cap.
    pub torn_frames: AtomicU64,
    pub skipped_segments: AtomicU64,
    /// Loss notices read from the spools.
    pub loss_notices: AtomicU64,
    /// Records lost, by [`LossReason`] (sandbox_write counts bytes).
    pub dropped: [AtomicU64; LossReason::ALL.len()],
    /// Errors reported by Kafka (or the sink), by [`Cause`].
    pub errors: [AtomicU64; Cause::ALL.len()],
    pub containers_active: AtomicU64,
    pub containers_finished: AtomicU64,
    /// Companion processes running for the adopted containers.
    pub companions_running: AtomicU64,
    /// Companions that died before their container's output ended.
    pub companions_died: AtomicU64,
    /// Times the sink (the Kafka producer) was rebuilt: it broke (fenced,
    /// a fatal error) or nothing was acknowledged for long.
    pub producer_rebuilds: AtomicU64,
    /// Times the publisher thread panicked and was restarted.
    pub publisher_restarts: AtomicU64,
    /// Containers started without a spool (it could not be created):
    /// sandbox files only.
    pub containers_unspooled: AtomicU64,
    /// Read -> acknowledged over the last metrics window (see `latency`).
    pub latency_p50_us: AtomicU64,
    pub latency_p99_us: AtomicU64,
    pub latency_max_us: AtomicU64,
    pub spool_bytes_pending: AtomicU64,
    pub oldest_pending_age_ms: AtomicU64,
    /// 1 while deliveries succeed (see `health`), 0 otherwise.
    pub kafka_reachable: AtomicU64,
    /// 1 while this publisher holds the spool lock and ships.
    pub publisher_active: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl Metrics {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    /// The plain counters and gauges, in the order of [`BASE_NAMES`].
    fn base(&self) -> [&AtomicU64; BASE_NAMES.len()] {
        [
            &self.records_published,
            &self.bytes_published,
            &self.in_flight,
            &self.failed,
            &self.retried,
            &self.truncated,
            &self.loss_notices,
            &self.spool_bytes_pending,
            &self.oldest_pending_age_ms,
            &self.containers_active,
            &self.containers_finished,
            &self.companions_running,
            &self.kafka_reachable,
            &self.publisher_active,
            &self.companions_died,
            &self.publisher_restarts,
            &self.containers_unspooled,
            &self.latency_p50_us,
            &self.latency_p99_us,
            &self.latency_max_us,
            &self.producer_rebuilds,
        ]
    }

    /// Every metric's name, fixed for the life of the process (the agent
    /// registers one gauge per name); index `i` is [`Metrics::value`]`(i)`.
    pub fn names() -> &'static [String] {
        static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        NAMES.get_or_init(|| {
            let mut v: Vec<String> = BASE_NAMES.iter().map(|s| s.to_string()).collect();
            for r in LossReason::ALL {
                v.push(if r == LossReason::SandboxWrite {
                    "bytes_dropped/sandbox_write".to_string()
                } else {
                    format!("records_dropped/{}", r.name())
                });
            }
            for c in Cause::ALL {
                v.push(format!("kafka_errors/{}", c.name()));
            }
            v
        })
    }

    /// The value of metric `i` (see [`Metrics::names`]): one atomic load,
    /// no lock, no allocation; safe from any thread.
    pub fn value(&self, i: usize) -> Option<u64> {
        let base = self.base();
        let load = |a: &AtomicU64| a.load(Relaxed);
        if i < base.len() {
            return Some(load(base[i]));
        }
        let i = i - base.len();
        if i < self.dropped.len() {
            return Some(load(&self.dropped[i]));
        }
        self.errors.get(i - self.dropped.len()).map(load)
    }

    /// Every metric as (name, value).
    pub fn values(&self) -> Vec<(String, f64)> {
        Metrics::names()
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), self.value(i).unwrap_or(0) as f64))
            .collect()
    }

    /// `metrics.json`: every value, plus the last error's text.
    pub fn snapshot(&self) -> Value {
        let mut m: Map<String, Value> = self
            .values()
            .into_iter()
            .map(|(k, v)| (k, json!(v as u64)))
            .collect();
        m.insert(
            "last_error".into(),
            json!(self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()),
        );
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_line_up() {
        let m = Metrics::default();
        Metrics::add(&m.dropped[LossReason::TooLarge as usize], 7);
        Metrics::add(&m.errors[Cause::Tls as usize], 3);
        m.kafka_reachable.store(1, Relaxed);
        let names = Metrics::names();
        let at = |n: &str| m.value(names.iter().position(|x| x == n).unwrap()).unwrap();
        assert_eq!(at("records_dropped/too_large"), 7);
        assert_eq!(at("kafka_errors/tls"), 3);
        assert_eq!(at("kafka_reachable"), 1);
        assert_eq!(m.value(names.len()), None);
        let mut sorted = names.to_vec();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "unique names");
    }
}
