//! `mesos-gelf forward`: a Kafka topic to Graylog over GELF TCP, TLS or UDP,
//! for sites without Graylog's own Kafka input.
//!
//! At least once: a consumer group with manual commits; an offset is
//! committed only once Graylog is known to have read the message (`tail`),
//! and everything not known to be read is sent again after any connection
//! loss. When Graylog is down the forwarder stops consuming and reconnects
//! with backoff, so nothing is buffered without bound and nothing is
//! skipped. Messages that
//! are not valid GELF are counted, logged once per kind, then skipped or
//! wrapped (`--invalid skip|wrap`), never passed on broken.

pub mod check;
pub mod output;
pub mod tail;

use crate::log;
use check::Invalid;
use output::{Output, Proof, Target, TlsOptions, UdpOptions};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tail::{Pending, Tail};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidPolicy {
    Skip,
    Wrap,
}

pub struct ForwardOptions {
    /// librdkafka consumer properties (`kafka.*` without the prefix).
    pub kafka: BTreeMap<String, String>,
    pub topic: String,
    pub target: Target,
    pub tls: TlsOptions,
    pub udp: UdpOptions,
    pub invalid: InvalidPolicy,
    /// Commit after this many messages (or `commit_interval`), whichever first.
    pub commit_every: usize,
    pub commit_interval: Duration,
    pub stats_interval: Duration,
    pub host: String,
    /// A message stays in the tail (sent again after a connection loss)
    /// until this many bytes were acknowledged after it ...
    pub hold_bytes: u64,
    /// ... or Graylog closed the connection after ours, which is asked
    /// for once the oldest message kept was sent this long ago.
    pub confirm_after: Duration,
}

impl ForwardOptions {
    /// Consumption pauses while the tail holds this much.
    fn tail_cap(&self) -> usize {
        (self.hold_bytes as usize).saturating_mul(4).max(1 << 20)
    }
}

#[derive(Default)]
struct Stats {
    /// Messages Graylog is known to have read (their offsets committed).
    forwarded: u64,
    /// Messages sent again on a new connection.
    resent: u64,
    invalid: BTreeMap<Invalid, u64>,
    dropped_udp: u64,
    reconnects: u64,
}

/// Graceful stop: how long the peer has to close after our FIN.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Longest wait between confirmations that keep failing.
const CONFIRM_MAX: Duration = Duration::from_secs(600);
/// How often an open connection is looked at for a reset while messages
/// keep coming (when none come, at every pass).
const PEER_CHECK_EVERY: Duration = Duration::from_secs(1);
/// A connection that lived this long resets the reconnect backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// Runs until `stop`: then flushes, closes the connection so that the peer
/// shows what it read, commits that, returns.
pub fn run(opts: &ForwardOptions, stop: Arc<AtomicBool>) -> Result<(), String> {
    if !opts.kafka.contains_key("group.id") {
        return Err("`kafka.group.id` is required (offsets are committed for the group)".into());
    }
    let mut cc = ClientConfig::new();
    cc.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    for (k, v) in &opts.kafka {
        cc.set(k, v);
    }
    let consumer: BaseConsumer = cc
        .create()
        .map_err(|e| format!("invalid Kafka configuration: {e}"))?;
    consumer
        .subscribe(&[opts.topic.as_str()])
        .map_err(|e| format!("subscribe {}: {e}", opts.topic))?;
    Forwarder {
        opts,
        consumer,
        stats: Stats::default(),
        out: None,
        unflushed: Vec::new(),
        tail: Tail::new(opts.hold_bytes),
        confirm_after: opts.confirm_after,
        retry_at: None,
        connected_at: Instant::now(),
        last_peer_check: Instant::now(),
        released: Vec::new(),
        last_commit: Instant::now(),
        backoff: Backoff::new(),
        down_since: None,
        logged_kinds: BTreeSet::new(),
    }
    .run(&stop)
}

/// Doubling reconnect delay, 0.5 s to 30 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_millis(500))
    }
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(30));
        d
    }
}

struct Forwarder<'a> {
    opts: &'a ForwardOptions,
    consumer: BaseConsumer,
    stats: Stats,
    out: Option<Output>,
    /// Taken from Kafka, written to `out`'s buffer (or waiting for a
    /// connection), not yet flushed; oldest first.
    unflushed: Vec<Pending>,
    /// Flushed, not yet known to be read.
    tail: Tail,
    /// Known to be read, offsets not yet committed.
    released: Vec<Pending>,
    last_commit: Instant,
    backoff: Backoff,
    /// When to ask Graylog to confirm the tail by a close (doubles after a
    /// confirmation that does not come, so that a slow reader still gets
    /// through: every failed one sends the tail again).
    confirm_after: Duration,
    /// No connection before this (after a connection that failed young).
    retry_at: Option<Instant>,
    connected_at: Instant,
    last_peer_check: Instant,
    down_since: Option<Instant>,
    logged_kinds: BTreeSet<Invalid>,
}

impl Forwarder<'_> {
    fn run(mut self, stop: &AtomicBool) -> Result<(), String> {
        let mut last_stats = (Instant::now(), 0u64);
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            // 1. A connection, or wait (consumption pauses while Graylog is down).
            let waiting = self.retry_at.is_some_and(|t| Instant::now() < t);
            if self.out.is_none() && (waiting || !self.connect()) {
                if stopping {
                    self.commit()?;
                    log::warn(&format!(
                        "stopping while Graylog is unreachable; {} messages not known to be read will be read again from Kafka",
                        self.unflushed.len()
                    ));
                    return Ok(());
                }
                if !waiting {
                    self.retry_at = Some(Instant::now() + self.backoff.next());
                }
                sleep_unless(stop, Duration::from_millis(50));
                continue;
            }
            // 2. Take a message while not stopping and there is room.
            let room = self.unflushed.len() < self.opts.commit_every
                && self.tail.bytes() < self.opts.tail_cap();
            let got = !stopping && room && self.take_one();
            if self.out.is_none() {
                continue;
            }
            // 3. Flush when the batch is full, old, or nothing more came.
            let due = self.unflushed.len() >= self.opts.commit_every
                || self.last_commit.elapsed() >= self.opts.commit_interval
                || stopping
                || !got;
            if due && !self.unflushed.is_empty() && !self.flush() {
                continue;
            }
            // 4. What Graylog shows it read leaves the tail; commit it.
            if let Some(acked) = self.out.as_ref().and_then(Output::acked) {
                let read = self.tail.release(acked);
                if !read.is_empty() {
                    self.backoff = Backoff::new();
                }
                self.released.extend(read);
            }
            // A reset or close while there is nothing to write would go
            // unnoticed, and the tail would wait for the next message.
            if !got || self.last_peer_check.elapsed() >= PEER_CHECK_EVERY {
                self.last_peer_check = Instant::now();
                if let Some(why) = self.out.as_ref().and_then(Output::peer_gone) {
                    self.fail(&why);
                    continue;
                }
            }
            if !stopping
                && self.unflushed.is_empty()
                && self
                    .tail
                    .oldest_age(Instant::now())
                    .is_some_and(|a| a >= self.confirm_after)
            {
                self.confirm(stop);
                continue;
            }
            if self.released.len() >= self.opts.commit_every
                || self.last_commit.elapsed() >= self.opts.commit_interval
            {
                self.commit()?;
            }
            if stopping {
                return self.finish();
            }
            if !room {
                // The tail is full: wait for evidence, not in a spin.
                sleep_unless(stop, Duration::from_millis(20));
            }
            if last_stats.0.elapsed() >= self.opts.stats_interval {
                self.log_progress(last_stats);
                last_stats = (Instant::now(), self.stats.forwarded);
            }
        }
    }

    /// Closes the connection so that Graylog's close confirms it read the
    /// tail (see `Output::close_read_by_peer`); the next pass reconnects.
    /// Without that confirmation, the tail is sent again.
    fn confirm(&mut self, stop: &AtomicBool) {
        let Some(o) = self.out.take() else { return };
        let n = self.tail.len();
        match o.close_read_by_peer(self.confirm_after.max(CLOSE_WAIT), stop) {
            Proof::Read => {
                let all = self.tail.take_all();
                self.released.extend(all);
                self.confirm_after = self.opts.confirm_after;
                self.backoff = Backoff::new();
                self.retry_at = None;
            }
            proof => {
                let why = match proof {
                    Proof::Failed(e) => e,
                    _ => format!(
                        "Graylog did not close the connection within {} s",
                        self.confirm_after.max(CLOSE_WAIT).as_secs()
                    ),
                };
                log::warn(&format!(
                    "Graylog did not confirm reading the last {n} messages ({why}); sending them again on a new connection, and asking again after {} s",
                    (self.confirm_after * 2).min(CONFIRM_MAX).as_secs()
                ));
                self.confirm_after = (self.confirm_after * 2).min(CONFIRM_MAX);
                self.send_tail_again();
            }
        }
    }

    /// Connects and sends again what is not known to be read. False when
    /// Graylog cannot be reached (or failed again during the resend).
    fn connect(&mut self) -> bool {
        let o = match Output::connect(&self.opts.target, &self.opts.tls, &self.opts.udp) {
            Ok(o) => o,
            Err(e) => {
                if self.down_since.is_none() {
                    log::error(&format!(
                        "Graylog unreachable: {e}; consumption paused, retrying with backoff"
                    ));
                    self.down_since = Some(Instant::now());
                }
                return false;
            }
        };
        if let Some(t) = self.down_since.take() {
            log::info(&format!(
                "connected to {:?} again after {:.1} s; sending again the {} messages not known to be read",
                self.opts.target,
                t.elapsed().as_secs_f64(),
                self.unflushed.len()
            ));
            self.stats.reconnects += 1;
        }
        self.out = Some(o);
        self.connected_at = Instant::now();
        let again: Vec<Vec<u8>> = self
            .unflushed
            .iter()
            .filter(|p| !p.payload.is_empty())
            .map(|p| p.payload.clone())
            .collect();
        for payload in again {
            if let Err(e) = self.send(&payload) {
                self.fail(&e);
                return false;
            }
            self.stats.resent += 1;
        }
        true
    }

    /// Polls one message and writes it to the connection's buffer. True if
    /// one was taken.
    fn take_one(&mut self) -> bool {
        let m = match self.consumer.poll(Duration::from_millis(100)) {
            None => return false,
            Some(Err(e)) => {
                log::warn(&format!("Kafka: {e}"));
                return false;
            }
            Some(Ok(m)) => m,
        };
        let (partition, offset) = (m.partition(), m.offset());
        let kafka_time = m.timestamp().to_millis();
        let payload = m.payload().unwrap_or_default().to_vec();
        drop(m);
        let payload = match check::check(&payload) {
            Ok(()) => payload,
            Err(kind) => self.invalid(&payload, (partition, offset, kafka_time), kind),
        };
        let sent = if payload.is_empty() {
            Ok(false)
        } else {
            self.send(&payload)
        };
        // A message dropped (UDP) is committed but not counted forwarded.
        let payload = match sent {
            Ok(false) => Vec::new(),
            _ => payload,
        };
        self.unflushed.push(Pending {
            partition,
            offset,
            payload,
        });
        if let Err(e) = sent {
            self.fail(&e);
        }
        true
    }

    /// What is sent for a message that is not valid GELF (empty: nothing).
    fn invalid(
        &mut self,
        payload: &[u8],
        (partition, offset, kafka_time): (i32, i64, Option<i64>),
        kind: Invalid,
    ) -> Vec<u8> {
        *self.stats.invalid.entry(kind).or_default() += 1;
        if self.logged_kinds.insert(kind) {
            log::warn(&format!(
                "message at {}/{partition}/{offset} is not valid GELF ({}); {} such messages (logged once per kind)",
                self.opts.topic,
                kind.name(),
                match self.opts.invalid {
                    InvalidPolicy::Skip => "skipping",
                    InvalidPolicy::Wrap => "wrapping",
                }
            ));
        }
        match self.opts.invalid {
            InvalidPolicy::Skip => Vec::new(),
            InvalidPolicy::Wrap => {
                let timestamp = kafka_time
                    .map(|ms| ms as f64 / 1000.0)
                    .unwrap_or_else(|| crate::spool::record::now_micros() as f64 / 1e6);
                let origin = check::Origin {
                    topic: &self.opts.topic,
                    partition,
                    offset,
                    timestamp,
                };
                check::wrap(payload, kind, &self.opts.host, &origin)
            }
        }
    }

    /// Writes one message. Ok(false): UDP cannot carry it (dropped, counted).
    fn send(&mut self, payload: &[u8]) -> Result<bool, String> {
        let o = self.out.as_mut().expect("connected");
        if !o.send(payload)? {
            self.stats.dropped_udp += 1;
            log::warn(&format!(
                "a {}-byte message needs more than {} UDP chunks; dropped",
                payload.len(),
                output::MAX_CHUNKS
            ));
            return Ok(false);
        }
        Ok(true)
    }

    /// Flushes the batch into the tail (UDP has no evidence to wait for:
    /// flushed is sent). False if the connection failed.
    fn flush(&mut self) -> bool {
        let o = self.out.as_mut().expect("connected");
        if let Err(e) = o.flush() {
            self.fail(&e);
            return false;
        }
        let batch = std::mem::take(&mut self.unflushed);
        match o.written() {
            Some(wire_end) => self.tail.push(batch, wire_end),
            None => self.released.extend(batch),
        }
        true
    }

    /// The connection is gone: everything not known to be read is sent
    /// again on the next one, oldest first.
    fn fail(&mut self, e: &str) {
        self.out = None;
        // A connection that fails young is not a recovery: wait out the
        // backoff before the next (a Graylog or a load balancer that
        // resets every connection at once made a reconnect loop).
        if self.connected_at.elapsed() >= HEALTHY_AFTER {
            self.backoff = Backoff::new();
        } else {
            self.retry_at = Some(Instant::now() + self.backoff.next());
        }
        self.send_tail_again();
        if self.down_since.is_none() {
            log::error(&format!(
                "Graylog connection lost: {e}; reconnecting, then sending again the {} messages not known to be read",
                self.unflushed.len()
            ));
            self.down_since = Some(Instant::now());
        }
    }

    /// Puts everything not known to be read back before what waits to be
    /// flushed, oldest first: the next connection sends it again.
    fn send_tail_again(&mut self) {
        let mut again = self.tail.take_all();
        again.append(&mut self.unflushed);
        self.unflushed = again;
    }

    fn commit(&mut self) -> Result<(), String> {
        self.last_commit = Instant::now();
        if self.released.is_empty() {
            return Ok(());
        }
        self.stats.forwarded += self
            .released
            .iter()
            .filter(|p| !p.payload.is_empty())
            .count() as u64;
        let batch = std::mem::take(&mut self.released);
        commit(&self.consumer, &self.opts.topic, &batch)
    }

    /// Stopping with everything flushed: a close the peer answers shows it
    /// read the whole tail; otherwise the tail is left for the next
    /// forwarder to read again from Kafka.
    fn finish(mut self) -> Result<(), String> {
        // Already stopping: the wait is bounded by CLOSE_WAIT alone.
        let why = match self.out.take() {
            Some(o) => match o.close_read_by_peer(CLOSE_WAIT, &AtomicBool::new(false)) {
                Proof::Read => {
                    let all = self.tail.take_all();
                    self.released.extend(all);
                    String::new()
                }
                Proof::NoAnswer => format!(
                    "Graylog did not close the connection within {} s",
                    CLOSE_WAIT.as_secs()
                ),
                Proof::Failed(e) => e,
            },
            None => "no connection".into(),
        };
        self.commit()?;
        let left = self.tail.len();
        if left > 0 {
            log::warn(&format!(
                "stopped: {} messages forwarded; the last {left} are not known to be read ({why}) and will be forwarded again",
                self.stats.forwarded,
            ));
        } else {
            log::info(&format!(
                "stopped: {} messages forwarded",
                self.stats.forwarded
            ));
        }
        Ok(())
    }

    fn log_progress(&self, (since, before): (Instant, u64)) {
        let rate = (self.stats.forwarded - before) as f64 / since.elapsed().as_secs_f64();
        let lag = match lag(&self.consumer) {
            Some(Lag::Waiting) => {
                "unknown (no partition assigned: waiting for the group, or for Kafka)".to_string()
            }
            Some(Lag::Messages(n)) => n.to_string(),
            None => "?".into(),
        };
        log::info(&format!(
            "forwarded {} ({rate:.0}/s), lag {lag}, not yet known read {}, resent {}, reconnects {}, invalid {:?}, udp dropped {}",
            self.stats.forwarded,
            self.tail.len() + self.unflushed.len(),
            self.stats.resent,
            self.stats.reconnects,
            self.stats
                .invalid
                .iter()
                .map(|(k, v)| (k.name(), *v))
                .collect::<Vec<_>>(),
            self.stats.dropped_udp
        ));
    }
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < d && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20).min(d));
    }
}

/// Commits, per partition, the offset after the last message of the batch.
fn commit(consumer: &BaseConsumer, topic: &str, batch: &[Pending]) -> Result<(), String> {
    let mut next: HashMap<i32, i64> = HashMap::new();
    for p in batch {
        let e = next.entry(p.partition).or_insert(p.offset + 1);
        *e = (*e).max(p.offset + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for (part, off) in next {
        tpl.add_partition_offset(topic, part, Offset::Offset(off))
            .map_err(|e| e.to_string())?;
    }
    // A failed commit is not fatal: those messages are read again later.
    if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
        log::warn(&format!(
            "offset commit failed ({e}); the messages may be forwarded again"
        ));
    }
    Ok(())
}

enum Lag {
    /// No partition is assigned yet: nothing to measure.
    Waiting,
    Messages(i64),
}

/// Messages in the assigned partitions not yet consumed.
fn lag(consumer: &BaseConsumer) -> Option<Lag> {
    let pos = consumer.position().ok()?;
    if pos.count() == 0 {
        return Some(Lag::Waiting);
    }
    let mut total = 0;
    for e in pos.elements() {
        let (_, high) = consumer
            .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(1))
            .ok()?;
        if let Offset::Offset(o) = e.offset() {
            total += (high - o).max(0);
        }
    }
    Some(Lag::Messages(total))
}
