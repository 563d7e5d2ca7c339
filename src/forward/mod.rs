//! `mesos-gelf forward`: a Kafka topic to Graylog over GELF TCP, TLS or UDP,
//! for sites without Graylog's own Kafka input.
//!
//! At least once: a consumer group with manual commits; an offset is
//! committed only after its message was written to the socket and, for
//! TCP/TLS, the socket flushed. When Graylog is down the forwarder stops
//! consuming, reconnects with backoff and resends what was not flushed, so
//! nothing is buffered without bound and nothing is skipped. Messages that
//! are not valid GELF are counted, logged once per kind, then skipped or
//! wrapped (`--invalid skip|wrap`), never passed on broken.

pub mod check;
pub mod output;

use crate::log;
use check::Invalid;
use output::{Output, Target, TlsOptions, UdpOptions};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
}

/// One message taken from Kafka and not yet committed.
struct Pending {
    partition: i32,
    offset: i64,
    payload: Vec<u8>,
}

#[derive(Default)]
struct Stats {
    forwarded: u64,
    invalid: BTreeMap<Invalid, u64>,
    dropped_udp: u64,
    reconnects: u64,
}

/// Runs until `stop`: then finishes the batch in hand, commits, returns.
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

    let mut stats = Stats::default();
    let mut out: Option<Output> = None;
    let mut batch: Vec<Pending> = Vec::new();
    let mut last_commit = Instant::now();
    let mut last_stats = (Instant::now(), 0u64);
    let mut backoff = Duration::from_millis(500);
    let mut down_since: Option<Instant> = None;
    let mut logged_kinds: BTreeSet<Invalid> = BTreeSet::new();

    loop {
        let stopping = stop.load(Ordering::Relaxed);
        // 1. A connection, or wait (consumption pauses while Graylog is down).
        if out.is_none() {
            match Output::connect(&opts.target, &opts.tls, &opts.udp) {
                Ok(o) => {
                    if let Some(t) = down_since.take() {
                        log::info(&format!(
                            "connected to {:?} again after {:.1} s",
                            opts.target,
                            t.elapsed().as_secs_f64()
                        ));
                        stats.reconnects += 1;
                    }
                    backoff = Duration::from_millis(500);
                    out = Some(o);
                    // Resend what was taken but not flushed before the failure.
                    if let Err(e) = resend(out.as_mut().unwrap(), &batch, opts, &mut stats) {
                        out = None;
                        log::warn(&format!("resend failed: {e}"));
                        continue;
                    }
                }
                Err(e) => {
                    if down_since.is_none() {
                        log::error(&format!(
                            "Graylog unreachable: {e}; consumption paused, retrying with backoff"
                        ));
                        down_since = Some(Instant::now());
                    }
                    if stopping {
                        log::warn("stopping while Graylog is unreachable; uncommitted messages will be read again");
                        return Ok(());
                    }
                    sleep_unless(&stop, backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            }
        }
        // 2. Take messages while not stopping and the batch has room.
        let mut got = false;
        if !stopping && batch.len() < opts.commit_every {
            if let Some(r) = consumer.poll(Duration::from_millis(100)) {
                match r {
                    Ok(m) => {
                        got = true;
                        let payload = m.payload().unwrap_or_default();
                        let (partition, offset) = (m.partition(), m.offset());
                        let send = match check::check(payload) {
                            Ok(()) => Some(payload.to_vec()),
                            Err(kind) => {
                                *stats.invalid.entry(kind).or_default() += 1;
                                if logged_kinds.insert(kind) {
                                    log::warn(&format!(
                                        "message at {}/{partition}/{offset} is not valid GELF ({}); {} such messages (logged once per kind)",
                                        opts.topic,
                                        kind.name(),
                                        match opts.invalid { InvalidPolicy::Skip => "skipping", InvalidPolicy::Wrap => "wrapping" }
                                    ));
                                }
                                match opts.invalid {
                                    InvalidPolicy::Skip => None,
                                    InvalidPolicy::Wrap => {
                                        let timestamp = m
                                            .timestamp()
                                            .to_millis()
                                            .map(|ms| ms as f64 / 1000.0)
                                            .unwrap_or_else(|| {
                                                crate::spool::record::now_micros() as f64 / 1e6
                                            });
                                        let origin = check::Origin {
                                            topic: &opts.topic,
                                            partition,
                                            offset,
                                            timestamp,
                                        };
                                        Some(check::wrap(payload, kind, &opts.host, &origin))
                                    }
                                }
                            }
                        };
                        let payload = send.unwrap_or_default();
                        if !payload.is_empty() {
                            if let Err(e) = send_one(out.as_mut().unwrap(), &payload, &mut stats) {
                                batch.push(Pending {
                                    partition,
                                    offset,
                                    payload,
                                });
                                fail(&mut out, &mut down_since, &e);
                                continue;
                            }
                        }
                        batch.push(Pending {
                            partition,
                            offset,
                            payload,
                        });
                    }
                    Err(e) => log::warn(&format!("Kafka: {e}")),
                }
            }
        }
        // 3. Flush and commit when the batch is full, old, or we stop.
        let due = batch.len() >= opts.commit_every
            || last_commit.elapsed() >= opts.commit_interval
            || stopping
            || (!got && !batch.is_empty());
        if due && !batch.is_empty() {
            if let Err(e) = out.as_mut().unwrap().flush() {
                fail(&mut out, &mut down_since, &e);
                continue;
            }
            stats.forwarded += batch.iter().filter(|p| !p.payload.is_empty()).count() as u64;
            commit(&consumer, &opts.topic, &batch)?;
            batch.clear();
            last_commit = Instant::now();
        }
        if stopping && batch.is_empty() {
            log::info(&format!("stopped: {} messages forwarded", stats.forwarded));
            return Ok(());
        }
        if last_stats.0.elapsed() >= opts.stats_interval {
            let rate =
                (stats.forwarded - last_stats.1) as f64 / last_stats.0.elapsed().as_secs_f64();
            log::info(&format!(
                "forwarded {} ({rate:.0}/s), lag {}, reconnects {}, invalid {:?}, udp dropped {}",
                stats.forwarded,
                lag(&consumer)
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "?".into()),
                stats.reconnects,
                stats
                    .invalid
                    .iter()
                    .map(|(k, v)| (k.name(), *v))
                    .collect::<Vec<_>>(),
                stats.dropped_udp
            ));
            last_stats = (Instant::now(), stats.forwarded);
        }
    }
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < d && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fail(out: &mut Option<Output>, down_since: &mut Option<Instant>, e: &str) {
    *out = None;
    if down_since.is_none() {
        log::error(&format!("Graylog connection lost: {e}; reconnecting"));
        *down_since = Some(Instant::now());
    }
}

fn send_one(o: &mut Output, payload: &[u8], stats: &mut Stats) -> Result<(), String> {
    if !o.send(payload)? {
        stats.dropped_udp += 1;
        log::warn(&format!(
            "a {}-byte message needs more than {} UDP chunks; dropped",
            payload.len(),
            output::MAX_CHUNKS
        ));
    }
    Ok(())
}

fn resend(
    o: &mut Output,
    batch: &[Pending],
    _opts: &ForwardOptions,
    stats: &mut Stats,
) -> Result<(), String> {
    for p in batch.iter().filter(|p| !p.payload.is_empty()) {
        send_one(o, &p.payload, stats)?;
    }
    Ok(())
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

/// Messages in the assigned partitions not yet consumed.
fn lag(consumer: &BaseConsumer) -> Option<i64> {
    let pos = consumer.position().ok()?;
    let mut total = 0;
    for e in pos.elements() {
        let (_, high) = consumer
            .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(1))
            .ok()?;
        if let Offset::Offset(o) = e.offset() {
            total += (high - o).max(0);
        }
    }
    Some(total)
}
