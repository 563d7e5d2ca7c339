//! Acknowledgements: delivery reports advance each container's position,
//! checkpoints persist it, finished spools are removed; failures rewind.

use super::*;
use crate::gelf::MIN_MESSAGE_BYTES;
use crate::spool::notice::LossReason;
use health::{Cause, STALL_AFTER};
use latency::Latency;

/// Marks one record of `c` delivered (with the time it was acknowledged,
/// for the latency figures) or dropped, and advances the acknowledged
/// position over every leading delivered record.
fn mark_acked(c: &mut Container, index: u64, delivered: Option<(&mut Latency, i64)>) {
    if let Some(front) = c.inflight.front() {
        let i = index.wrapping_sub(front.index) as usize;
        if let Some(e) = c.inflight.get_mut(i) {
            e.acked = true;
            if let Some((l, now_us)) = delivered {
                l.record((now_us - e.ts_micros).max(0) as u64);
            }
        }
    }
    let segment = c.acked.segment;
    while c.inflight.front().is_some_and(|e| e.acked) {
        let e = c.inflight.pop_front().expect("front");
        c.rewound_ts = None;
        c.inflight_bytes = c.inflight_bytes.saturating_sub(e.bytes);
        c.acked = e.pos;
        c.acked_since_store += 1;
        acked_record(c, e.stream, e.seq);
    }
    if c.acked.segment != segment {
        c.reader.release_before(c.acked.segment);
    }
}

/// The ledger's side of an acknowledgement in order: the last `_seq` of
/// each stream at the checkpoint, and companion notices done with.
pub(super) fn acked_record(c: &mut Container, stream: Stream, seq: u64) {
    match stream {
        Stream::Stdout => c.acked_seqs[0] = c.acked_seqs[0].max(seq),
        Stream::Stderr => c.acked_seqs[1] = c.acked_seqs[1].max(seq),
        Stream::Notice => {
            c.ledger.notice_done(seq);
            while c
                .corrected
                .first_key_value()
                .is_some_and(|(k, _)| *k <= seq)
            {
                c.corrected.pop_first();
            }
        }
        Stream::PublisherNotice => {}
    }
}

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
        if d.ticket.generation == notices::NOTICE_GENERATION {
            c.notices.delivered(d.ticket.index, d.result.is_ok());
            return;
        }
        if d.ticket.generation != c.generation {
            return;
        }
        let text = match d.result {
            Ok(()) => {
                Metrics::add(&self.metrics.records_published, 1);
                Metrics::add(&self.metrics.bytes_published, d.ticket.bytes as u64);
                c.failing = None;
                c.backoff = RETRY_BACKOFF;
                mark_acked(
                    c,
                    d.ticket.index,
                    Some((&mut self.latency, self.poll_now_us)),
                );
                self.health.delivered();
                self.acked_in_poll = true;
                self.rebuild_after = super::REBUILD_STALLED_AFTER;
                self.broken_rebuilds.0 = 0;
                self.broken_since = None;
                return;
            }
            // The sink is rebuilt before the next send (`fatal`): this
            // container is neither failing nor backed off. Taken back now,
            // so it shows nothing in flight while the rebuild waits, and
            // sent again by the rebuilt sink.
            Err(DeliveryError::SinkBroken(_)) => {
                Metrics::add(&self.metrics.failed, 1);
                Metrics::add(&self.metrics.retried, c.rewind());
                return;
            }
            // Handed back unsent (`check_errors`): read again from there.
            Err(DeliveryError::TakenBack) => {
                Metrics::add(&self.metrics.retried, c.take_back_from(d.ticket.index));
                return;
            }
            Err(DeliveryError::TooLarge(m)) | Err(DeliveryError::Other(m)) => m,
        };
        Metrics::add(&self.metrics.failed, 1);
        let (k, topic) = (c.key.clone(), c.topic.clone());
        let cause = self.health.container_error(&k, &topic, &text);
        if cause == Cause::Rejected {
            // tansu fences the producer after refusing a batch: that
            // break is explained, and the refused container backs off.
            self.rejected_since_rebuild = true;
        }
        if cause == Cause::TooLarge && c.encoder.max_bytes() <= MIN_MESSAGE_BYTES {
            // The broker refuses even the floor form: this record is
            // dropped, counted and reported; the others stay in flight.
            Metrics::add(&self.metrics.dropped[LossReason::TooLarge as usize], 1);
            let front = c.inflight.front().map_or(0, |e| e.index);
            if let Some(e) = c.inflight.get(d.ticket.index.wrapping_sub(front) as usize) {
                let loss = pump::too_large(e.stream, e.seq, e.payload_len);
                c.notices.add_loss(loss);
            }
            mark_acked(c, d.ticket.index, None);
            return;
        }
        if cause == Cause::TooLarge {
            let n = (c.encoder.max_bytes() / 2).max(MIN_MESSAGE_BYTES);
            c.encoder.set_max_bytes(n);
        } else {
            // Failing since the first failure; a permanent cause is kept
            // over the transient ones it brings along (an invalid topic
            // also shows as "unknown topic").
            c.failing = Some(match c.failing {
                Some((f, t)) if f.permanent() && !cause.permanent() => (f, t),
                Some((_, t)) => (cause, t),
                None => (cause, Instant::now()),
            });
            c.backoff = (c.backoff * 2).min(MAX_BACKOFF);
        }
        // Resend from the last acknowledged record, after a backoff; the
        // deliveries still due for this generation are ignored.
        Metrics::add(&self.metrics.retried, c.rewind());
        let wait = if cause == Cause::TooLarge {
            Duration::ZERO
        } else {
            c.backoff
        };
        c.retry_at = Some(Instant::now() + wait);
    }

    /// After the deliveries of one poll: the stall clock restarts at the
    /// last acknowledgement (one clock read per poll, not per record).
    pub(super) fn after_deliveries(&mut self) {
        if std::mem::take(&mut self.acked_in_poll) {
            let now = Instant::now();
            self.health.last_delivery = Some(now);
            self.stall_since = (self.in_flight_msgs > 0).then_some(now);
            self.held_back = false;
        }
    }

    pub(super) fn rebuild_sink(&mut self, why: &str) {
        self.health.warn("sink\0rebuild", || {
            format!("sink failed ({why}); rebuilding it and resending everything unacknowledged")
        });
        self.metrics.set_error(Some(why.to_string()));
        Metrics::add(&self.metrics.producer_rebuilds, 1);
        self.rejected_since_rebuild = false;
        loop {
            match (self.make_sink)() {
                Ok(s) => {
                    self.sink = s;
                    break;
                }
                Err(e) => {
                    self.health.warn("sink\0build", || e);
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
            Metrics::add(&self.metrics.retried, c.rewind());
            c.may_have_data = true;
            c.notices.resend();
        }
    }

    pub(super) fn check_errors(&mut self) {
        for e in self.sink.take_errors() {
            self.health.client_error(&e.text, e.one_broker);
        }
        // Only records of containers whose deliveries do not fail count: a
        // probe for a bad topic may wait on librdkafka for a long time, and
        // says nothing about the connection.
        // (Looked at only with records in flight: not every idle pass.)
        let waiting = self.in_flight_msgs > 0 && {
            let probes: usize = self
                .containers
                .values()
                .filter(|c| c.failing.is_some())
                .map(Container::unacked)
                .sum();
            self.in_flight_msgs > probes as u64
        };
        // A sink that keeps breaking before any delivery (no rejection to
        // explain it) is as good as a broker that does not answer.
        if let Some(t) = self.broken_since {
            if t.elapsed() >= STALL_AFTER {
                self.health.stalled(t.elapsed());
            }
        }
        if !waiting {
            self.stall_since = None;
        } else if let Some(t) = self.stall_since {
            if t.elapsed() >= super::TAKE_BACK_AFTER && !self.held_back {
                self.take_back_queued();
            }
            if t.elapsed() >= STALL_AFTER {
                self.health.stalled(t.elapsed());
            }
            if t.elapsed() >= self.rebuild_after {
                let why = format!(
                    "no delivery acknowledged for {} s (broker down, frozen, or restarted without knowing this producer)",
                    t.elapsed().as_secs()
                );
                self.rebuild_after = (self.rebuild_after * 2).min(super::REBUILD_STALLED_MAX);
                self.stall_since = None;
                self.rebuild_sink(&why);
            }
        }
    }

    /// Acknowledgements stalled: takes back what the sink holds unsent and
    /// holds records back until a delivery (see [`super::TAKE_BACK_AFTER`]).
    /// The sink's answers are handled here, before anything more is sent.
    fn take_back_queued(&mut self) {
        self.held_back = true;
        self.sink.take_back_queued();
        let mut back = Vec::new();
        self.sink.poll(Duration::ZERO, &mut back);
        for d in back {
            self.on_delivery(d);
        }
        self.after_deliveries();
    }

    pub(super) fn store_and_finish(&mut self) {
        let mut done = Vec::new();
        let refused: Vec<String> = self
            .containers
            .values()
            .filter(|c| c.refused)
            .map(|c| c.key.clone())
            .collect();
        for k in refused {
            // Stored up to where this release could read; the rest is kept.
            let c = self.containers.remove(&k).expect("container");
            if c.inflight.is_empty() && c.acked != c.stored {
                let _ = c.reader.acknowledge(c.acked, self.config.spool_retain);
            }
            self.slots.remove(&c.slot);
            self.watcher.unwatch(&k);
            self.newer.insert(k.clone());
            self.ignored.insert(k);
        }
        for c in self.containers.values_mut() {
            let complete =
                c.finished && c.inflight.is_empty() && c.held.is_none() && c.notices.is_empty();
            let due = c.last_store.elapsed() >= CHECKPOINT_EVERY
                || c.acked_since_store >= CHECKPOINT_RECORDS;
            if c.acked != c.stored && (complete || due) {
                if c.ledger_known {
                    // Before the checkpoint (see `Ledger::store`).
                    let mut account = ledger::Account {
                        acked: c.acked_seqs,
                        trimmed: c.loss_trimmed,
                        notices_corrected: c.notices_corrected,
                        named: c.ledger.named_after(c.acked_seqs),
                        open: c.ledger.open_gaps(c.acked_seqs),
                    };
                    // Not what the publisher's own notices will name but
                    // have not built yet: they wait in publisher-notices.json,
                    // and a successor takes them from there (`adopt`).
                    for (i, s) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
                        let unbuilt = ledger::Ranges::from_pairs(&c.notices.unbuilt_seqs(s));
                        account.named[i] = account.named[i].minus(&unbuilt);
                    }
                    let _ = ledger::Ledger::store(&c.dir, &account);
                }
                match c.reader.acknowledge(c.acked, self.config.spool_retain) {
                    Ok(()) => {
                        c.stored = c.acked;
                        c.acked_since_store = 0;
                    }
                    Err(e) => {
                        let dir = c.dir.display().to_string();
                        self.health.warn(&format!("{}\0checkpoint", c.key), || {
                            format!("cannot store checkpoint in {dir}: {e}")
                        })
                    }
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
            Metrics::add(
                &self.metrics.dropped[LossReason::Torn as usize],
                c.reader.torn - c.torn_counted,
            );
            Metrics::add(&self.metrics.skipped_segments, c.reader.skipped_segments);
            self.slots.remove(&c.slot);
            self.watcher.unwatch(&k);
            self.health.forget(&k);
            Metrics::add(&self.metrics.containers_finished, 1);
            if !self.config.spool_retain.is_zero() {
                // Kept for replay; `sweep_retained` removes it in time.
                self.retained.insert(k);
                continue;
            }
            if let Err(e) = std::fs::remove_dir_all(&c.dir) {
                log::warn(&format!(
                    "cannot remove finished spool {}: {e}",
                    c.dir.display()
                ));
            }
        }
        self.metrics
            .containers_active
            .store(self.containers.len() as u64, Ordering::Relaxed);
    }

    /// Forgets containers whose directory vanished (removed by hand, or by
    /// another publisher that got in); says so once. Checked with the
    /// periodic rescan, not per loop.
    pub(super) fn drop_vanished(&mut self) {
        let vanished: Vec<String> = self
            .containers
            .values()
            .filter(|c| !c.dir.exists())
            .map(|c| c.key.clone())
            .collect();
        for k in vanished {
            let c = self.containers.remove(&k).expect("container");
            self.slots.remove(&c.slot);
            self.watcher.unwatch(&k);
            let dir = c.dir.display().to_string();
            self.health.warn(&format!("{k}\0vanished"), || {
                format!("container spool {dir} vanished while it was being published (removed by someone else)")
            });
            self.health.forget(&k);
        }
    }

    /// Removes retained data older than `spool_retain`: segments of
    /// finished containers, then the containers once empty.
    pub(super) fn sweep_retained(&mut self) {
        let retain = self.config.spool_retain;
        let keys: Vec<String> = self.retained.iter().cloned().collect();
        for k in keys {
            let dir = self.opts.spool_dir.join(&k);
            let data = crate::spool::data_dir(&dir);
            let segs = list_segments(&data).unwrap_or_default();
            let left = segs
                .iter()
                .filter(|s| {
                    !crate::spool::reader::delete_if_older(&segment_path(&data, **s), retain)
                })
                .count();
            if left == 0 || !dir.exists() {
                let _ = std::fs::remove_dir_all(&dir);
                self.retained.remove(&k);
            }
        }
    }

    /// Spool bytes not yet deleted, and the age of the oldest record read
    /// but not yet acknowledged.
    pub(super) fn update_pending_metrics(&mut self) {
        let mut bytes = 0u64;
        let mut oldest: Option<i64> = None;
        let mut running = 0u64;
        for c in self.containers.values_mut() {
            if !c.reader.dir().join(crate::spool::DONE_FILE).exists() {
                running += 1;
            }
            // Torn frames skipped since the last look: losses by reason.
            let torn = c.reader.torn - c.torn_counted;
            Metrics::add(&self.metrics.dropped[LossReason::Torn as usize], torn);
            c.torn_counted = c.reader.torn;
            for s in list_segments(c.reader.dir()).unwrap_or_default() {
                bytes += std::fs::metadata(segment_path(c.reader.dir(), s))
                    .map(|m| m.len())
                    .unwrap_or(0);
            }
            if let Some(t) = c.oldest_pending_ts() {
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
        }
        self.metrics
            .spool_bytes_pending
            .store(bytes, Ordering::Relaxed);
        self.metrics
            .companions_running
            .store(running, Ordering::Relaxed);
        let age = oldest.map(|t| ((crate::spool::record::now_micros() - t).max(0) / 1000) as u64);
        self.metrics
            .oldest_pending_age_ms
            .store(age.unwrap_or(0), Ordering::Relaxed);
    }
}
