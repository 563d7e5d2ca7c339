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

mod ack;
mod adopt;
pub mod kafka;
pub mod metrics;
mod pump;
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
