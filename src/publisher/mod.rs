//! The publisher: one loop over every container's spool, one sink.
//!
//! In the agent it is one background thread with one Kafka producer; it is
//! the same loop in `mesos-gelf publish` and inside `mesos-gelf run`.
//!
//! At-least-once: a record's spool position is acknowledged (checkpointed)
//! only after the sink confirms its delivery, and only up to the first
//! unconfirmed record. A failed delivery rewinds that container to its last
//! acknowledged position and sends again after a backoff; deliveries from
//! before the rewind are ignored (generation counter). A broken sink (e.g. a
//! fatal idempotence error after the broker lost its state) is rebuilt and
//! every container rewound. Duplicates are therefore bounded by what was in
//! flight (`max_in_flight_bytes`), and nothing acknowledged is sent again.
//!
//! The loop never writes to the spool's data and never blocks a companion:
//! a slow or absent sink only makes the spool grow, up to its cap.

pub mod kafka;
pub mod metrics;
pub mod sink;
pub mod watch;

use crate::config::Config;
use crate::gelf::Encoder;
use crate::log;
use crate::spool::record::Stream;
use crate::spool::{
    list_segments, segment_path, ContainerMeta, Next, Position, Record, SpoolReader,
};
use metrics::Metrics;
use sink::{Delivery, DeliveryError, SendError, Sink, Ticket};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use watch::{Event, Watcher};

/// Builds a sink; called again to rebuild after a fatal sink error.
pub type SinkFactory = Box<dyn FnMut() -> Result<Box<dyn Sink>, String> + Send>;

/// The sink the configuration asks for: Kafka when `kafka.bootstrap.servers`
/// is set, otherwise GELF lines on standard output.
pub fn sink_factory(config: &Config) -> SinkFactory {
    if config.has_kafka() {
        let props = config.kafka.clone();
        Box::new(move || Ok(Box::new(kafka::KafkaSink::new(&props)?) as Box<dyn Sink>))
    } else {
        Box::new(|| {
            let out = std::io::BufWriter::with_capacity(256 * 1024, std::io::stdout());
            Ok(Box::new(sink::LineSink::new(out)) as Box<dyn Sink>)
        })
    }
}

/// How a publisher runs.
pub struct Options {
    pub spool_dir: PathBuf,
    /// Return once no container is left in the spool (run, tests).
    pub exit_when_empty: bool,
    pub stop: Arc<AtomicBool>,
}

const BATCH: usize = 1024;
const RETRY_BACKOFF: Duration = Duration::from_secs(1);
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// Also checkpoint after this many acknowledged records, so a crash resends
/// at most this many already-delivered records (plus what was in flight).
pub const CHECKPOINT_RECORDS: u64 = 4096;
const RECHECK_EVERY: Duration = Duration::from_millis(250);
const RESCAN_EVERY: Duration = Duration::from_secs(2);

struct InFlight {
    index: u64,
    pos: Position,
    ts_micros: i64,
    acked: bool,
}

struct Container {
    key: String,
    dir: PathBuf,
    slot: u64,
    reader: SpoolReader,
    encoder: Encoder,
    topic: String,
    msg_key: Vec<u8>,
    generation: u64,
    next_index: u64,
    inflight: VecDeque<InFlight>,
    acked: Position,
    stored: Position,
    acked_since_store: u64,
    last_store: Instant,
    may_have_data: bool,
    last_try: Instant,
    finished: bool,
    retry_at: Option<Instant>,
    held: Option<(Record, Position)>,
}

pub struct Publisher {
    config: Arc<Config>,
    opts: Options,
    make_sink: SinkFactory,
    sink: Box<dyn Sink>,
    containers: BTreeMap<String, Container>,
    slots: HashMap<u64, String>,
    next_slot: u64,
    /// Directories seen without a readable meta.json yet.
    unready: BTreeMap<String, Instant>,
    watcher: Watcher,
    metrics: Arc<Metrics>,
    in_flight_bytes: usize,
    in_flight_msgs: u64,
    healthy: bool,
    scratch: Vec<u8>,
}

impl Publisher {
    pub fn new(
        config: Arc<Config>,
        opts: Options,
        mut make_sink: SinkFactory,
        metrics: Arc<Metrics>,
    ) -> Result<Publisher, String> {
        std::fs::create_dir_all(&opts.spool_dir)
            .map_err(|e| format!("cannot create spool_dir {}: {e}", opts.spool_dir.display()))?;
        let watcher = Watcher::new(&opts.spool_dir)
            .map_err(|e| format!("cannot watch spool_dir {}: {e}", opts.spool_dir.display()))?;
        let sink = make_sink()?;
        Ok(Publisher {
            config,
            opts,
            make_sink,
            sink,
            containers: BTreeMap::new(),
            slots: HashMap::new(),
            next_slot: 1,
            unready: BTreeMap::new(),
            watcher,
            metrics,
            in_flight_bytes: 0,
            in_flight_msgs: 0,
            healthy: true,
            scratch: Vec::with_capacity(64 * 1024),
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Runs until `stop` is set (or, with `exit_when_empty`, until the spool
    /// has no container left).
    pub fn run(&mut self) {
        if let Err(e) = self.sink.startup_check() {
            log::error(&format!(
                "{e}; records stay in the spool and are sent once it is reachable"
            ));
            self.healthy = false;
            self.metrics.set_error(Some(e));
        }
        self.scan_root();
        let mut events = Vec::new();
        let mut deliveries = Vec::new();
        let mut last_rescan = Instant::now();
        let mut last_metrics = Instant::now();
        loop {
            if self.opts.stop.load(Ordering::Relaxed) {
                break;
            }
            for e in events.drain(..) {
                match e {
                    Event::Root | Event::Overflow => self.scan_root(),
                    Event::Container(k) => {
                        if let Some(c) = self.containers.get_mut(&k) {
                            c.may_have_data = true;
                        } else if self.unready.contains_key(&k) {
                            self.try_adopt(&k);
                        }
                    }
                }
            }
            if last_rescan.elapsed() >= RESCAN_EVERY {
                last_rescan = Instant::now();
                self.scan_root();
                self.update_pending_metrics();
            }
            if let Some(f) = self.sink.fatal() {
                self.rebuild_sink(&f);
            }
            let progress = self.pump_all();
            // Never a blocking poll: rust-rdkafka's BaseProducer::poll spins
            // on the clock until its timeout (seen at ~10% of a core while
            // the broker was down). We wait on inotify below instead.
            self.sink.poll(Duration::ZERO, &mut deliveries);
            for d in deliveries.drain(..) {
                self.on_delivery(d);
            }
            self.metrics
                .in_flight
                .store(self.in_flight_msgs, Ordering::Relaxed);
            self.check_errors();
            self.store_and_finish();
            if self.opts.exit_when_empty && self.containers.is_empty() && self.unready.is_empty() {
                break;
            }
            if last_metrics.elapsed()
                >= Duration::from_millis(self.config.metrics_interval_ms.max(100))
            {
                last_metrics = Instant::now();
                self.write_metrics();
            }
            let wait_ms = match (progress, self.in_flight_msgs) {
                (true, _) => 0,
                (false, 0) => 100,
                // Deliveries outstanding: look for them again soon (less
                // often while the broker is unreachable).
                (false, _) if self.healthy => 5,
                (false, _) => 50,
            };
            self.watcher.wait(wait_ms, &mut events);
        }
        // Persist what was confirmed; the rest is sent again next time.
        let mut deliveries = Vec::new();
        self.sink.poll(Duration::from_millis(0), &mut deliveries);
        for d in deliveries {
            self.on_delivery(d);
        }
        self.metrics
            .in_flight
            .store(self.in_flight_msgs, Ordering::Relaxed);
        for c in self.containers.values_mut() {
            if c.acked != c.stored {
                let _ = c.reader.acknowledge(c.acked);
            }
        }
        self.write_metrics();
    }

    fn write_metrics(&self) {
        let v = self.metrics.snapshot();
        let _ = crate::spool::write_atomic(
            &self.opts.spool_dir,
            "metrics.json",
            v.to_string().as_bytes(),
        );
    }

    fn scan_root(&mut self) {
        let Ok(rd) = std::fs::read_dir(&self.opts.spool_dir) else {
            return;
        };
        for e in rd.flatten() {
            // DirEntry::file_type does not follow symlinks: a link is ignored.
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let key = e.file_name().to_string_lossy().into_owned();
            if !self.containers.contains_key(&key) {
                if !self.unready.contains_key(&key) {
                    self.watcher.watch_container(&e.path(), &key);
                    self.unready.insert(key.clone(), Instant::now());
                }
                self.try_adopt(&key);
            }
        }
        let keys: Vec<String> = self.unready.keys().cloned().collect();
        for k in keys {
            self.try_adopt(&k);
        }
    }

    /// Starts publishing a container once its metadata is readable (or,
    /// failing that, once it has data: then under a fallback identity).
    fn try_adopt(&mut self, key: &str) {
        let dir = self.opts.spool_dir.join(key);
        if !dir.is_dir() {
            self.unready.remove(key);
            self.watcher.unwatch(key);
            return;
        }
        let meta = match ContainerMeta::load(&dir) {
            Ok(m) => m,
            Err(e) => {
                let data = crate::spool::data_dir(&dir);
                let has_data = data.join(crate::spool::DONE_FILE).exists()
                    || list_segments(&data).map(|s| !s.is_empty()).unwrap_or(false);
                let waited = self
                    .unready
                    .get(key)
                    .map(|t| t.elapsed() > Duration::from_secs(2))
                    .unwrap_or(true);
                if !(has_data && waited) {
                    return;
                }
                log::error(&format!("{e}; publishing {key} under a fallback identity"));
                ContainerMeta {
                    identity: crate::metadata::Identity {
                        container_id: key.to_string(),
                        ..Default::default()
                    },
                    settings: self.config.defaults.clone(),
                    run_as: None,
                }
            }
        };
        self.unready.remove(key);
        let data = crate::spool::data_dir(&dir);
        self.watcher.watch_container(&data, key);
        let (reader, warning) = SpoolReader::open(&data);
        if let Some(w) = warning {
            log::warn(&w);
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        let acked = reader.position();
        let encoder = Encoder::new(&self.config, &meta.identity, &meta.settings);
        self.slots.insert(slot, key.to_string());
        self.containers.insert(
            key.to_string(),
            Container {
                key: key.to_string(),
                dir,
                slot,
                reader,
                encoder,
                topic: meta.settings.topic.clone(),
                msg_key: meta.identity.container_id.clone().into_bytes(),
                generation: 0,
                next_index: 0,
                inflight: VecDeque::new(),
                acked,
                stored: acked,
                acked_since_store: 0,
                last_store: Instant::now(),
                may_have_data: true,
                last_try: Instant::now(),
                finished: false,
                retry_at: None,
                held: None,
            },
        );
        self.metrics
            .containers_active
            .store(self.containers.len() as u64, Ordering::Relaxed);
    }

    fn pump_all(&mut self) -> bool {
        let mut progress = false;
        let keys: Vec<String> = self.containers.keys().cloned().collect();
        for k in keys {
            if self.in_flight_bytes >= self.config.max_in_flight_bytes {
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
    fn pump(&mut self, key: &str) -> Result<usize, SendError> {
        let now = Instant::now();
        let c = self.containers.get_mut(key).expect("container");
        if c.finished || c.retry_at.is_some_and(|t| now < t) {
            return Ok(0);
        }
        if !c.may_have_data && c.held.is_none() && c.last_try.elapsed() < RECHECK_EVERY {
            return Ok(0);
        }
        c.retry_at = None;
        c.last_try = now;
        let mut sent = 0;
        while sent < BATCH && self.in_flight_bytes < self.config.max_in_flight_bytes {
            let (rec, pos) = match c.held.take() {
                Some(h) => h,
                None => match c.reader.read_next() {
                    Ok(Next::Record(r, p)) => {
                        if r.stream == Stream::Notice {
                            Metrics::add(&self.metrics.loss_notices, 1);
                        }
                        (r, p)
                    }
                    Ok(Next::Pending) => {
                        c.may_have_data = false;
                        break;
                    }
                    Ok(Next::Finished) => {
                        c.finished = true;
                        break;
                    }
                    Err(e) => {
                        log::warn(&format!("reading spool {}: {e}", c.dir.display()));
                        c.retry_at = Some(now + RETRY_BACKOFF);
                        break;
                    }
                },
            };
            self.scratch.clear();
            if c.encoder.encode(&rec, &mut self.scratch) {
                Metrics::add(&self.metrics.truncated, 1);
            }
            let ticket = Ticket {
                container: c.slot,
                generation: c.generation,
                index: c.next_index,
                pos,
                bytes: self.scratch.len(),
            };
            match self.sink.send(&c.topic, &c.msg_key, &self.scratch, ticket) {
                Ok(()) => {
                    c.next_index += 1;
                    c.inflight.push_back(InFlight {
                        index: ticket.index,
                        pos,
                        ts_micros: rec.ts_micros,
                        acked: false,
                    });
                    self.in_flight_bytes += ticket.bytes;
                    self.in_flight_msgs += 1;
                    sent += 1;
                }
                Err(SendError::Full) => {
                    c.held = Some((rec, pos));
                    return Err(SendError::Full);
                }
                Err(SendError::TooLarge(m)) => {
                    let n = (c.encoder.max_bytes() / 2).max(1024);
                    c.encoder.set_max_bytes(n);
                    log::warn(&format!(
                        "{}: {m}; cutting its messages to {n} bytes",
                        c.key
                    ));
                    c.held = Some((rec, pos));
                }
                Err(SendError::Fatal(m)) | Err(SendError::Other(m)) => {
                    c.held = Some((rec, pos));
                    c.retry_at = Some(now + RETRY_BACKOFF);
                    self.metrics.set_error(Some(m));
                    break;
                }
            }
        }
        self.metrics
            .in_flight
            .store(self.in_flight_msgs, Ordering::Relaxed);
        Ok(sent)
    }

    fn on_delivery(&mut self, d: Delivery) {
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

    fn rebuild_sink(&mut self, why: &str) {
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

    fn check_errors(&mut self) {
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

    fn store_and_finish(&mut self) {
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
    fn update_pending_metrics(&self) {
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

/// A publisher running on its own thread (the agent module, `run`).
pub struct Handle {
    pub stop: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Handle {
    pub fn spawn(
        config: Arc<Config>,
        spool_dir: &Path,
        exit_when_empty: bool,
    ) -> Result<Handle, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(Metrics::default());
        let mut p = Publisher::new(
            config.clone(),
            Options {
                spool_dir: spool_dir.to_path_buf(),
                exit_when_empty,
                stop: stop.clone(),
            },
            sink_factory(&config),
            metrics.clone(),
        )?;
        let thread = std::thread::Builder::new()
            .name("mesos-gelf-publisher".into())
            .spawn(move || p.run())
            .map_err(|e| format!("cannot start the publisher thread: {e}"))?;
        Ok(Handle {
            stop,
            metrics,
            thread: Some(thread),
        })
    }

    /// Waits for the thread to return (with `exit_when_empty`: the spool is empty).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
