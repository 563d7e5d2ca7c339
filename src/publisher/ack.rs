//! Acknowledgements: delivery reports advance each container's position,
//! checkpoints persist it, finished spools are removed; failures rewind.

use super::*;

impl Publisher {
    pub(super) fn on_delivery(&mut self, d: Delivery) {
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(d.ticket.bytes);
        self.in_flight_msgs = self.in_flight_msgs.saturating_sub(1);
        let Some(key) = self.slots.get(&d.ticket.container) else {
            return;
        };
        let Some(c) = self.containers.get_mut(key) else {
            return;
        };
        if d.ticket.generation != c.generation {
            return;
        }
        match d.result {
            Ok(()) => {
                Metrics::add(&self.metrics.records_published, 1);
                Metrics::add(&self.metrics.bytes_published, d.ticket.bytes as u64);
                if let Some(front) = c.inflight.front() {
                    let i = (d.ticket.index - front.index) as usize;
                    if let Some(e) = c.inflight.get_mut(i) {
                        e.acked = true;
                    }
                }
                while c.inflight.front().is_some_and(|e| e.acked) {
                    c.acked = c.inflight.pop_front().expect("front").pos;
                    c.acked_since_store += 1;
                }
                if !self.healthy {
                    self.healthy = true;
                    self.metrics.set_error(None);
                    log::info("delivering again");
                }
            }
            Err(e) => {
                Metrics::add(&self.metrics.failed, 1);
                let msg = match &e {
                    DeliveryError::TooLarge(m) => {
                        let n = (c.encoder.max_bytes() / 2).max(1024);
                        c.encoder.set_max_bytes(n);
                        format!("{m}; cutting {}'s messages to {n} bytes", c.key)
                    }
                    DeliveryError::Other(m) => m.clone(),
                };
                Metrics::add(&self.metrics.retried, c.inflight.len() as u64);
                c.generation += 1;
                c.inflight.clear();
                c.held = None;
                c.finished = false;
                c.reader.seek(c.acked);
                c.retry_at = Some(Instant::now() + RETRY_BACKOFF);
                if self.healthy {
                    log::error(&format!(
                        "delivery failed, retrying from the last acknowledged record: {msg}"
                    ));
                    self.healthy = false;
                }
                self.metrics.set_error(Some(msg));
            }
        }
    }

    pub(super) fn rebuild_sink(&mut self, why: &str) {
        log::error(&format!(
            "sink failed ({why}); rebuilding it and resending everything unacknowledged"
        ));
        self.metrics.set_error(Some(why.to_string()));
        loop {
            match (self.make_sink)() {
                Ok(s) => {
                    self.sink = s;
                    break;
                }
                Err(e) => {
                    log::error(&e);
                    std::thread::sleep(RETRY_BACKOFF);
                    if self.opts.stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
        }
        self.in_flight_bytes = 0;
        self.in_flight_msgs = 0;
        for c in self.containers.values_mut() {
            Metrics::add(&self.metrics.retried, c.inflight.len() as u64);
            c.generation += 1;
            c.inflight.clear();
            c.held = None;
            c.finished = false;
            c.may_have_data = true;
            c.reader.seek(c.acked);
        }
    }

    pub(super) fn check_errors(&mut self) {
        let errs = self.sink.take_errors();
        if let Some(last) = errs.last() {
            if self.healthy {
                log::error(&format!(
                    "Kafka: {last}; records stay in the spool and are retried"
                ));
                self.healthy = false;
            }
            self.metrics.set_error(Some(last.clone()));
        }
    }

    pub(super) fn store_and_finish(&mut self) {
        let mut done = Vec::new();
        for c in self.containers.values_mut() {
            let complete = c.finished && c.inflight.is_empty() && c.held.is_none();
            let due = c.last_store.elapsed() >= CHECKPOINT_EVERY
                || c.acked_since_store >= CHECKPOINT_RECORDS;
            if c.acked != c.stored && (complete || due) {
                match c.reader.acknowledge(c.acked) {
                    Ok(()) => {
                        c.stored = c.acked;
                        c.acked_since_store = 0;
                    }
                    Err(e) => log::warn(&format!(
                        "cannot store checkpoint in {}: {e}",
                        c.dir.display()
                    )),
                }
                c.last_store = Instant::now();
            }
            if complete {
                done.push(c.key.clone());
            }
        }
        for k in done {
            let c = self.containers.remove(&k).expect("container");
            Metrics::add(&self.metrics.torn_frames, c.reader.torn);
            Metrics::add(&self.metrics.skipped_segments, c.reader.skipped_segments);
            self.slots.remove(&c.slot);
            self.watcher.unwatch(&k);
            if let Err(e) = std::fs::remove_dir_all(&c.dir) {
                log::warn(&format!(
                    "cannot remove finished spool {}: {e}",
                    c.dir.display()
                ));
            }
            Metrics::add(&self.metrics.containers_finished, 1);
        }
        self.metrics
            .containers_active
            .store(self.containers.len() as u64, Ordering::Relaxed);
    }

    /// Spool bytes not yet deleted, and the age of the oldest record read
    /// but not yet acknowledged.
    pub(super) fn update_pending_metrics(&self) {
        let mut bytes = 0u64;
        let mut oldest: Option<i64> = None;
        for c in self.containers.values() {
            for s in list_segments(c.reader.dir()).unwrap_or_default() {
                bytes += std::fs::metadata(segment_path(c.reader.dir(), s))
                    .map(|m| m.len())
                    .unwrap_or(0);
            }
            let ts = c
                .inflight
                .front()
                .map(|e| e.ts_micros)
                .or(c.held.as_ref().map(|h| h.0.ts_micros));
            if let Some(t) = ts {
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
        }
        self.metrics
            .spool_bytes_pending
            .store(bytes, Ordering::Relaxed);
        let age = oldest.map(|t| ((crate::spool::record::now_micros() - t).max(0) / 1000) as u64);
        self.metrics
            .oldest_pending_age_ms
            .store(age.unwrap_or(0), Ordering::Relaxed);
    }
}
