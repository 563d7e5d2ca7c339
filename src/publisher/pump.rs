//! Pumping: records from each container's spool, encoded, into the sink,
//! within the in-flight window.
//!
//! Every pass makes progress or stops: a record is sent, held for the next
//! pass (sink queue full, container backing off), cut smaller, or dropped
//! and counted when it cannot fit the broker's limit even in its floor form
//! (see [`crate::gelf::Encoder`]). The stop flag is checked between records.

use super::*;
use crate::gelf::{Fit, MIN_MESSAGE_BYTES};
use crate::spool::notice::{self, LossReason};

/// A container whose deliveries fail sends one record at a time until one
/// succeeds (a probe), so a broken topic never fills the shared window.
const PROBE_RECORDS: usize = 1;

impl Publisher {
    pub(super) fn pump_all(&mut self) -> bool {
        let mut progress = false;
        self.window = match (self.held_back, self.in_flight_msgs) {
            (false, _) => self.config.max_in_flight_bytes,
            (true, 0) => PROBE_WINDOW.min(self.config.max_in_flight_bytes),
            (true, _) => 0,
        }
        .min(self.room_share.saturating_mul(2));
        let keys: Vec<String> = self.containers.keys().cloned().collect();
        for k in keys {
            if self.in_flight_bytes >= self.window || self.stopping() {
                break;
            }
            match self.pump(&k) {
                Ok(n) => progress |= n > 0,
                Err(SendError::Full) => break,
                Err(_) => {}
            }
        }
        progress
    }

    /// Sends up to BATCH records of one container. Err(Full) stops the round.
    pub(super) fn pump(&mut self, key: &str) -> Result<usize, SendError> {
        let now = Instant::now();
        // The Kafka timestamp of this batch (see `Sink::send`).
        let now_ms = crate::spool::record::now_micros() / 1000;
        let stop = self.opts.stop.clone();
        let c = self.containers.get_mut(key).expect("container");
        if c.retry_at.is_some_and(|t| now < t) {
            return Ok(0);
        }
        // A finished container may still have notices to send (a loss
        // found at its end): it goes on to them, not to its records.
        if c.finished && c.notices.is_empty() {
            return Ok(0);
        }
        // An idle container is left alone until inotify or the recheck
        // says otherwise; one with notices to send is not idle.
        if !c.finished
            && !c.may_have_data
            && c.held.is_none()
            && c.notices.is_empty()
            && c.last_try.elapsed()
                < if c.watched {
                    RECHECK_WATCHED
                } else {
                    RECHECK_EVERY
                }
        {
            return Ok(0);
        }
        if !settle_nested(&self.config, &mut self.health, c) {
            return Ok(0);
        }
        // The publisher's own notices first (rare; outside the in-order
        // acknowledgement of the spool's records).
        for n in c.notices.due() {
            self.scratch.clear();
            if c.encoder.encode(&n, &mut self.scratch) == Fit::Over {
                c.notices.delivered(n.seq, true);
                continue;
            }
            let ticket = Ticket {
                container: c.slot,
                generation: notices::NOTICE_GENERATION,
                index: n.seq,
                pos: Position::default(),
                bytes: self.scratch.len(),
            };
            match self
                .sink
                .send(&c.topic, &c.msg_key, &self.scratch, now_ms, ticket)
            {
                Ok(()) => {
                    self.in_flight_bytes += ticket.bytes;
                    self.in_flight_msgs += 1;
                }
                Err(_) => c.notices.delivered(n.seq, false),
            }
        }
        if c.finished {
            return Ok(0);
        }
        c.retry_at = None;
        c.last_try = now;
        // One container may take at most half the window, so another one
        // always finds room; a failing one sends a single probe.
        let own_limit = if c.failing.is_some() {
            0
        } else {
            (self.config.max_in_flight_bytes / 2).min(self.room_share)
        };
        let mut sent = 0;
        while sent < BATCH && self.in_flight_bytes < self.window {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            // Counted only for a failing container (whose window is a
            // probe): counting a full window for every record sent was
            // quadratic, 40% of the publisher's CPU.
            if c.failing.is_some() && c.unacked() >= PROBE_RECORDS {
                break;
            }
            if c.failing.is_none() && c.inflight_bytes >= own_limit {
                break;
            }
            let (rec, pos) = match c.held.take() {
                Some(h) => h,
                None => match c.reader.read_next() {
                    Ok(Next::Record(mut r, p)) => {
                        c.last_read = now;
                        if r.stream == Stream::Notice {
                            Metrics::add(&self.metrics.loss_notices, 1);
                            let keep = correct_notice(c, &mut r);
                            count_losses(&self.metrics, c, &r.payload);
                            if !keep {
                                // It named only records already shipped.
                                pass_over(c, &r, p);
                                continue;
                            }
                        } else {
                            c.ledger.read(r.stream, r.seq, now);
                        }
                        (r, p)
                    }
                    Ok(Next::Pending) => {
                        c.may_have_data = false;
                        report_missing(&self.metrics, &mut self.health, c, now, true, false);
                        break;
                    }
                    Ok(Next::Finished) => {
                        if let Some(last) = crate::spool::done_seqs(c.reader.dir()) {
                            c.ledger.end(last, now);
                        }
                        report_missing(&self.metrics, &mut self.health, c, now, true, true);
                        c.finished = true;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                        // A newer spool format: this release stops here and
                        // leaves the rest on disk for one that reads it.
                        log::error(&format!("{}: {e}", c.dir.display()));
                        c.refused = true;
                        break;
                    }
                    Err(e) => {
                        let dir = c.dir.display().to_string();
                        self.health.warn(&format!("{}\0read", c.key), || {
                            format!("reading spool {dir}: {e}; retrying")
                        });
                        c.retry_at = Some(now + RETRY_BACKOFF);
                        break;
                    }
                },
            };
            self.scratch.clear();
            match c.encoder.encode(&rec, &mut self.scratch) {
                Fit::Whole => {}
                Fit::Cut => Metrics::add(&self.metrics.truncated, 1),
                Fit::Over => {
                    // Cannot happen at or above the floor; counted if it does.
                    drop_record(
                        &self.metrics,
                        &mut self.health,
                        c,
                        &rec,
                        pos,
                        "does not fit even cut",
                    );
                    continue;
                }
            }
            let ticket = Ticket {
                container: c.slot,
                generation: c.generation,
                index: c.next_index,
                pos,
                bytes: self.scratch.len(),
            };
            match self
                .sink
                .send(&c.topic, &c.msg_key, &self.scratch, now_ms, ticket)
            {
                Ok(()) => {
                    c.next_index += 1;
                    c.inflight.push_back(InFlight {
                        index: ticket.index,
                        pos,
                        ts_micros: rec.ts_micros,
                        bytes: ticket.bytes,
                        acked: false,
                        stream: rec.stream,
                        seq: rec.seq,
                        payload_len: rec.payload.len(),
                    });
                    c.inflight_bytes += ticket.bytes;
                    self.in_flight_bytes += ticket.bytes;
                    self.in_flight_msgs += 1;
                    if self.stall_since.is_none() {
                        self.stall_since = Some(now);
                    }
                    sent += 1;
                    c.reader.recycle(rec.payload);
                }
                Err(SendError::Full) => {
                    c.held = Some((rec, pos));
                    return Err(SendError::Full);
                }
                Err(SendError::TooLarge(m)) => {
                    // The client refuses it outright: cut this container's
                    // messages smaller, down to the floor; at the floor the
                    // record is dropped and counted. Either way, progress.
                    let cur = c.encoder.max_bytes();
                    if cur > MIN_MESSAGE_BYTES {
                        let n = (cur / 2).max(MIN_MESSAGE_BYTES);
                        c.encoder.set_max_bytes(n);
                        let (k, dropped) = (c.key.clone(), c.encoder.fields_dropped());
                        self.health.warn(&format!("{k}\0too-large"), || {
                            format!(
                                "container {k}: {m}; cutting its messages, halving their size limit until the broker takes them (now {n} bytes){}",
                                if dropped > 0 {
                                    format!(" ({dropped} label/static fields left out)")
                                } else {
                                    String::new()
                                }
                            )
                        });
                        c.held = Some((rec, pos));
                    } else {
                        drop_record(&self.metrics, &mut self.health, c, &rec, pos, &m);
                    }
                }
                Err(SendError::Closed(m)) => {
                    c.held = Some((rec, pos));
                    self.closed = Some(m);
                    break;
                }
                Err(SendError::Fatal(m)) | Err(SendError::Other(m)) => {
                    c.held = Some((rec, pos));
                    c.retry_at = Some(now + c.backoff);
                    let (k, t) = (c.key.clone(), c.topic.clone());
                    self.health.container_error(&k, &t, &m);
                    break;
                }
            }
        }
        // Gaps waiting too long for a notice, also while never caught up.
        report_missing(&self.metrics, &mut self.health, c, now, false, false);
        self.metrics
            .in_flight
            .store(self.in_flight_msgs, Ordering::Relaxed);
        Ok(sent)
    }

    pub(super) fn stopping(&self) -> bool {
        self.opts.stop.load(Ordering::Relaxed)
    }
}

/// For a nested container: looks for its task (see [`crate::nested`]) and,
/// once found, rebuilds its encoder with the task's id, name and labels,
/// and its topic and levels from the task's `gelf.*` labels. False while
/// its records should still wait.
fn settle_nested(config: &Config, health: &mut Health, c: &mut Container) -> bool {
    let Some(w) = c.nested.as_mut() else {
        return true;
    };
    if w.last_try
        .is_some_and(|t| t.elapsed() < Duration::from_millis(200))
    {
        return false;
    }
    w.last_try = Some(Instant::now());
    let Some(task) = crate::nested::resolve(&w.lookup) else {
        if w.since.elapsed() < NESTED_WAIT {
            return false;
        }
        let k = c.key.clone();
        health.warn(&format!("{k}\0nested"), || {
            format!(
                "container {k}: nested, but no task linked to it after {} s; its records ship without _task_id",
                NESTED_WAIT.as_secs()
            )
        });
        c.nested = None;
        return true;
    };
    c.nested = None;
    let mut warnings = Vec::new();
    let overrides = c
        .identity
        .add_task(task.id, task.name, task.labels, &mut warnings);
    // Only what the publisher does can still change; the companion's
    // settings were fixed at prepare time (from the task's environment).
    let (late, early): (Vec<_>, Vec<_>) = overrides.into_iter().partition(|(k, _)| {
        [
            "gelf.topic",
            "gelf.level_stdout",
            "gelf.level_stderr",
            "gelf.parse",
        ]
        .contains(&k.as_str())
    });
    for (k, _) in early {
        warnings.push(format!(
            "label {k} of a nested task cannot apply after its container started (set it in the task's environment instead)"
        ));
    }
    let (settings, w) = c.settings.resolve(&config.env_prefix, &[], &late);
    warnings.extend(w);
    c.settings = settings;
    c.topic = c.settings.topic.clone();
    let limit = c.encoder.max_bytes();
    c.encoder = Encoder::new(config, &c.identity, &c.settings);
    c.encoder.set_max_bytes(limit.min(config.max_message_bytes));
    let k = c.key.clone();
    for m in warnings {
        health.warn(&format!("{k}\0nested-{m}"), || {
            format!("container {k}: {m}")
        });
    }
    true
}

/// Gives up on one record that no limit can fit: counted, reported by a
/// notice, logged (limited), and acknowledged in order so the container
/// moves on.
fn drop_record(
    metrics: &Metrics,
    health: &mut Health,
    c: &mut Container,
    rec: &Record,
    pos: Position,
    why: &str,
) {
    Metrics::add(&metrics.dropped[LossReason::TooLarge as usize], 1);
    c.notices
        .add_loss(too_large(rec.stream, rec.seq, rec.payload.len()));
    let (k, stream, seq, n) = (c.key.clone(), rec.stream.name(), rec.seq, rec.payload.len());
    health.warn(&format!("{k}\0dropped-too-large"), || {
        format!(
            "container {k}: dropped {stream} record _seq {seq} ({n} bytes): {why}, and it cannot be cut below {MIN_MESSAGE_BYTES} bytes"
        )
    });
    pass_over(c, rec, pos);
}

/// Moves past one record that is not sent (dropped, or a notice with
/// nothing left to say), acknowledged in order with the others.
fn pass_over(c: &mut Container, rec: &Record, pos: Position) {
    c.next_index += 1;
    if c.inflight.is_empty() {
        c.acked = pos;
        c.acked_since_store += 1;
        ack::acked_record(c, rec.stream, rec.seq);
    } else {
        c.inflight.push_back(InFlight {
            index: c.next_index - 1,
            pos,
            ts_micros: rec.ts_micros,
            bytes: 0,
            acked: true,
            stream: rec.stream,
            seq: rec.seq,
            payload_len: rec.payload.len(),
        });
    }
}

/// Adds a notice's losses to the agent-wide counts: its totals are
/// cumulative per container, so only the increase since the last one seen
/// counts (a notice read again after a retry adds nothing). The payload
/// has been through [`correct_notice`]: its totals no longer count what
/// the publisher had shipped.
fn count_losses(metrics: &Metrics, c: &mut Container, payload: &[u8]) {
    for (reason, total) in notice::parse(payload).totals {
        let i = reason as usize;
        if total > c.loss_totals[i] {
            Metrics::add(&metrics.dropped[i], total - c.loss_totals[i]);
            c.loss_totals[i] = total;
        }
    }
}

/// Checks a companion notice against the ledger: the `_seq`s it names that
/// the publisher already read (and so ships) are taken out of it, and out
/// of the running totals. False when nothing is left to report.
fn correct_notice(c: &mut Container, r: &mut Record) -> bool {
    // Read again after a retry: the same answer, totals included.
    if let Some((keep, p)) = c.corrected.get(&r.seq) {
        r.payload.clone_from(p);
        return *keep;
    }
    let keep = check_notice(c, r);
    if c.corrected.len() >= 4096 {
        c.corrected.pop_first();
    }
    c.corrected.insert(r.seq, (keep, r.payload.clone()));
    keep
}

fn check_notice(c: &mut Container, r: &mut Record) -> bool {
    let Some(loss) = notice::loss_of(&r.payload) else {
        return true;
    };
    let mut checked = ledger::Checked::default();
    if let (Some(stream), false) = (loss.stream, loss.seqs.is_empty()) {
        let named = ledger::Ranges::from_pairs(&loss.seqs);
        checked = c.ledger.notice(stream, &named, Some(r.seq));
    }
    let ledger::Checked {
        keep,
        shipped,
        earlier,
        shipped_new,
        named_by_publisher,
    } = checked;
    let counted = shipped_new + named_by_publisher;
    if counted > 0 && r.seq > c.notices_corrected {
        // Counted once, however often the notice is read again; the
        // companion's running totals count each record once, however
        // often its notices name it.
        c.notices_corrected = r.seq;
        let i = loss.reason as usize;
        c.loss_trimmed[i] += counted.min(loss.records);
    }
    let changed = !shipped.is_empty() || !earlier.is_empty();
    if c.loss_trimmed.iter().any(|&n| n > 0) || changed {
        // Every later notice's running totals come down too; corrected
        // also when it is not sent, as its totals are counted.
        let less: Vec<(LossReason, u64)> = LossReason::ALL
            .into_iter()
            .map(|r| (r, c.loss_trimmed[r as usize]))
            .collect();
        let fix = (changed && !keep.is_empty()).then_some(notice::Correction {
            lost: keep.pairs(),
            shipped: shipped.pairs(),
            earlier: earlier.pairs(),
        });
        if let Some(p) = notice::corrected(&r.payload, fix, &less) {
            r.payload = p;
        }
    }
    !changed || !keep.is_empty()
}

/// Reports what the ledger found: gaps no notice explained, as `missing`,
/// and losses of notices the publisher had to drop unread, now that the
/// reader has passed them (see [`ledger`]).
fn report_missing(
    metrics: &Metrics,
    health: &mut Health,
    c: &mut Container,
    now: Instant,
    caught_up: bool,
    ended: bool,
) {
    for (stream, reason, ranges) in c.ledger.due(now, caught_up, ended) {
        let n = ranges.count();
        Metrics::add(&metrics.dropped[reason as usize], n);
        if reason != LossReason::Missing {
            // A companion's loss, reported by the publisher: the
            // companion's later running totals include it.
            c.loss_totals[reason as usize] += n;
        }
        let loss = notice::Loss {
            reason,
            stream: Some(stream),
            records: n,
            bytes: 0,
            seqs: ranges.pairs().to_vec(),
        };
        if reason == LossReason::Missing {
            let (k, text) = (c.key.clone(), loss.ranges_text());
            health.warn(&format!("{k}\0missing"), || {
                format!(
                    "container {k}: {n} {} records (_seq {text}) are not in its spool and no notice names them (damaged or deleted segment, or an unreported loss); reported as `missing`",
                    stream.name()
                )
            });
        }
        c.notices.add_loss(loss);
    }
}

/// The loss of one record too large for any limit.
pub(super) fn too_large(stream: Stream, seq: u64, len: usize) -> crate::spool::notice::Loss {
    crate::spool::notice::Loss {
        reason: LossReason::TooLarge,
        stream: Some(stream),
        records: 1,
        bytes: len as u64,
        seqs: vec![(seq, seq)],
    }
}
