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

    /// Every metric as (name, value), names fixed for the life of the
    /// process (the agent registers one gauge per name). Reads atomics only.
    pub fn values(&self) -> Vec<(String, f64)> {
        let g = |c: &AtomicU64| c.load(Relaxed) as f64;
        let mut v: Vec<(String, f64)> = vec![
            ("records_published".into(), g(&self.records_published)),
            ("bytes_published".into(), g(&self.bytes_published)),
            ("records_in_flight".into(), g(&self.in_flight)),
            ("delivery_failures".into(), g(&self.failed)),
            ("records_retried".into(), g(&self.retried)),
            ("messages_truncated".into(), g(&self.truncated)),
            ("loss_notices".into(), g(&self.loss_notices)),
            ("spool_bytes_pending".into(), g(&self.spool_bytes_pending)),
            (
                "oldest_pending_age_ms".into(),
                g(&self.oldest_pending_age_ms),
            ),
            ("containers_active".into(), g(&self.containers_active)),
            ("containers_finished".into(), g(&self.containers_finished)),
            ("companions_running".into(), g(&self.companions_running)),
            ("kafka_reachable".into(), g(&self.kafka_reachable)),
            ("publisher_active".into(), g(&self.publisher_active)),
        ];
        for r in LossReason::ALL {
            let name = if r == LossReason::SandboxWrite {
                "bytes_dropped/sandbox_write".to_string()
            } else {
                format!("records_dropped/{}", r.name())
            };
            v.push((name, g(&self.dropped[r as usize])));
        }
        for c in Cause::ALL {
            v.push((
                format!("kafka_errors/{}", c.name()),
                g(&self.errors[c as usize]),
            ));
        }
        v
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
