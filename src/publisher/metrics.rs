//! Publisher counters, shared with whoever reports them (the module's log,
//! `<spool_dir>/metrics.json`, tests).

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    pub records_published: AtomicU64,
    pub bytes_published: AtomicU64,
    pub in_flight: AtomicU64,
    /// Records sent again after a failed delivery or a sink rebuild.
    pub retried: AtomicU64,
    /// Failed deliveries (each leads to a retry).
    pub failed: AtomicU64,
    /// Messages cut to fit `max_message_bytes` or the broker's limit.
    pub truncated: AtomicU64,
    /// Torn / corrupt spool frames skipped, segments dropped at the cap.
    pub torn_frames: AtomicU64,
    pub skipped_segments: AtomicU64,
    /// Loss notices the companions wrote (spool cap, disk full).
    pub loss_notices: AtomicU64,
    pub containers_active: AtomicU64,
    pub containers_finished: AtomicU64,
    pub spool_bytes_pending: AtomicU64,
    pub oldest_pending_age_ms: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl Metrics {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    pub fn snapshot(&self) -> Value {
        let g = |c: &AtomicU64| c.load(Relaxed);
        json!({
            "records_published": g(&self.records_published),
            "bytes_published": g(&self.bytes_published),
            "in_flight": g(&self.in_flight),
            "retried": g(&self.retried),
            "failed": g(&self.failed),
            "truncated": g(&self.truncated),
            "torn_frames": g(&self.torn_frames),
            "skipped_segments": g(&self.skipped_segments),
            "loss_notices": g(&self.loss_notices),
            "containers_active": g(&self.containers_active),
            "containers_finished": g(&self.containers_finished),
            "spool_bytes_pending": g(&self.spool_bytes_pending),
            "oldest_pending_age_ms": g(&self.oldest_pending_age_ms),
            "last_error": self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        })
    }
}
