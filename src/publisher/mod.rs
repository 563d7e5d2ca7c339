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
mod budget;
pub mod health;
pub mod kafka;
pub mod latency;
mod ledger;
pub mod metrics;
mod notices;
mod partition;
mod pump;
pub mod sink;
mod wake;
pub mod watch;

use crate::config::Config;
use crate::gelf::Encoder;
use crate::log;
use crate::spool::lock::{LockError, SpoolLock};
use crate::spool::record::Stream;
use crate::spool::{
    list_segments, segment_path, ContainerMeta, Next, Position, Record, SpoolReader,
};
use health::{Health, STALL_AFTER};

/// A sink with records in flight and no delivery for this long is rebuilt:
/// a broker restarted without its state (or replaced behind the same
/// address) answers the old producer id with UnknownProducerId for ever,
/// and librdkafka keeps retrying it silently. A new producer gets a new id.
/// Harmless when the broker is simply down: the new producer waits too.
const REBUILD_STALLED_AFTER: Duration = Duration::from_secs(30);
/// Records in flight without a delivery for this long: what the sink holds
/// unsent is taken back, and records wait in the spool, not in librdkafka,
/// whose broker thread spins a core over a queue it may not send (see
/// `KafkaSink::take_back_queued`). Taking back costs no duplicate: those
/// records never left.
const TAKE_BACK_AFTER: Duration = Duration::from_millis(200);
/// While held back: what goes out when nothing is in flight (one request,
/// so nothing waits queued behind it).
const PROBE_WINDOW: usize = 64 * 1024;
const REBUILD_STALLED_MAX: Duration = Duration::from_secs(600);
/// A sink that breaks again (a broker that fences every new producer) is
/// rebuilt after 1 s, doubling to this, until a delivery succeeds: not in
/// a loop of new producers and connections.
const REBUILD_BROKEN_MAX: Duration = Duration::from_secs(60);
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
#[derive(Clone)]
pub struct Options {
    pub spool_dir: PathBuf,
    /// Return once no container is left in the spool (run, tests). May be
    /// set while running (`run` sets it once its container is prepared).
    pub exit_when_empty: Arc<AtomicBool>,
    pub stop: Arc<AtomicBool>,
    /// Another publisher holds the spool: wait for it (the agent: tasks keep
    /// spooling, shipping resumes when it lets go) instead of failing.
    pub wait_for_lock: bool,
    /// With `exit_when_empty`: end with an error once every remaining
    /// container has been blocked this long by a permanent error (TLS,
    /// authentication, authorization, invalid topic). A closed destination
    /// ends it at once. None: never (the agent retries forever).
    pub give_up_after: Option<Duration>,
    /// With `give_up_after`: also give up on a container whose companion is
    /// alive, everything it wrote delivered, and nothing new for that long
    /// (`publish --until-empty`: a spool whose task still runs will not
    /// become empty). Off for `run`: there the live companion is its own
    /// command's, and a task may be quiet for hours; `run` waits as a pipe
    /// does.
    pub give_up_while_open: bool,
    /// Notices for containers without a spool (see `Logger::prepare`).
    pub orphans: Arc<std::sync::Mutex<Vec<crate::logger::Orphan>>>,
}

impl Options {
    /// The agent's publisher: waits for the lock, never gives up.
    pub fn agent(spool_dir: &Path, stop: Arc<AtomicBool>) -> Options {
        Options {
            spool_dir: spool_dir.to_path_buf(),
            exit_when_empty: Arc::new(AtomicBool::new(false)),
            stop,
            wait_for_lock: true,
            give_up_after: None,
            give_up_while_open: false,
            orphans: Default::default(),
        }
    }
}

const BATCH: usize = 1024;
const RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// A container whose deliveries keep failing waits at most this long
/// between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// Also checkpoint after this many acknowledged records, so a crash resends
/// at most this many already-delivered records (plus what was in flight).
/// Each checkpoint replaces two files (ledger, checkpoint) and lists the
/// segments, about 0.4 ms on ext4: at 4,096 that was 4% of the whole
/// pipeline's CPU at full speed (perf), at 16,384 it is 1%.
pub const CHECKPOINT_RECORDS: u64 = 16_384;
/// An idle container is read again this often without an inotify event:
/// often when it is not watched, rarely (a safety net) when it is, so a
/// thousand idle containers cost the agent next to nothing.
const RECHECK_EVERY: Duration = Duration::from_millis(250);
const RECHECK_WATCHED: Duration = Duration::from_secs(5);
const RESCAN_EVERY: Duration = Duration::from_secs(2);
/// The default of `give_up_after` for `run` and `publish --until-empty`.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

struct InFlight {
    index: u64,
    pos: Position,
    ts_micros: i64,
    bytes: usize,
    acked: bool,
    stream: Stream,
    seq: u64,
    payload_len: usize,
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
    /// Encoded bytes of `inflight` (this container's share of the window).
    inflight_bytes: usize,
    acked: Position,
    stored: Position,
    acked_since_store: u64,
    last_store: Instant,
    may_have_data: bool,
    /// inotify tells of its new records (else it is polled).
    watched: bool,
    last_try: Instant,
    finished: bool,
    retry_at: Option<Instant>,
    held: Option<(Record, Position)>,
    /// Deliveries fail with this cause, since then (cleared by a success).
    failing: Option<(health::Cause, Instant)>,
    /// The wait before the next attempt after a failure (doubles).
    backoff: Duration,
    /// Losses counted in the metrics so far, by reason (the largest
    /// totals seen in this container's notices, less `loss_trimmed`).
    loss_totals: [u64; crate::spool::notice::LossReason::ALL.len()],
    /// Records companion notices named as lost that the publisher had
    /// read and shipped (see [`ledger`]), by reason.
    loss_trimmed: [u64; crate::spool::notice::LossReason::ALL.len()],
    /// The last companion notice `_seq` whose correction was counted.
    notices_corrected: u64,
    /// Companion notices as corrected (sent or not, and the payload), by
    /// `_seq`, until acknowledged: read again, they come out the same.
    corrected: std::collections::BTreeMap<u64, (bool, Vec<u8>)>,
    /// What was read and what never was, per stream.
    ledger: ledger::Ledger,
    /// The last stdout and stderr `_seq` acknowledged in order.
    acked_seqs: [u64; 2],
    /// The ledger knows everything before its first record (read from the
    /// start, or resumed with a stored account): its account is stored.
    ledger_known: bool,
    /// Torn frames already added to the metrics.
    torn_counted: u64,
    /// A nested container whose task is not known yet: its records wait
    /// (at most [`NESTED_WAIT`]) until the executor links it.
    nested: Option<NestedWait>,
    identity: crate::metadata::Identity,
    settings: crate::config::ContainerSettings,
    /// Losses on the publisher's side, reported on the container's stream.
    notices: notices::Notices,
    /// Spool bytes on disk (refreshed when the directory changes).
    spool_bytes: u64,
    size_dirty: bool,
    /// Segments unlinked while its reader holds them open: (segment,
    /// bytes), refreshed with the budget's checks.
    pinned: Vec<(u64, u64)>,
    /// Its companion died before finishing (reported once).
    companion_gone: bool,
    /// Holds a spool format newer than this release reads: left alone.
    refused: bool,
    /// When a record was last read from its spool (or it was adopted).
    last_read: Instant,
    /// The read time (`ts_micros`) of the oldest record sent and taken
    /// back by a rewind, until the next acknowledgement: a container
    /// waiting out a backoff still has records that old.
    rewound_ts: Option<i64>,
}

impl Container {
    /// Records sent and not yet acknowledged (a failing container's probe).
    fn unacked(&self) -> usize {
        self.inflight.iter().filter(|e| !e.acked).count()
    }

    /// The read time of its oldest record not yet acknowledged, if it has
    /// read one: in flight, held back, or taken back by a rewind.
    fn oldest_pending_ts(&self) -> Option<i64> {
        self.inflight
            .front()
            .map(|e| e.ts_micros)
            .or(self.held.as_ref().map(|h| h.0.ts_micros))
            .or(self.rewound_ts)
    }

    /// Takes back the records from `index` on, which the sink handed back
    /// unsent (`DeliveryError::TakenBack`): they are read again from there,
    /// after the records before them, which stay in flight. Returns how
    /// many were taken back.
    fn take_back_from(&mut self, index: u64) -> u64 {
        let Some(front) = self.inflight.front().map(|e| e.index) else {
            return 0;
        };
        let i = index.wrapping_sub(front) as usize;
        let Some(first) = self.inflight.get(i) else {
            return 0;
        };
        self.rewound_ts = self.rewound_ts.or(Some(first.ts_micros));
        let from = self.start_of(i);
        let n = (self.inflight.len() - i) as u64;
        for e in self.inflight.drain(i..) {
            self.inflight_bytes = self.inflight_bytes.saturating_sub(e.bytes);
        }
        self.next_index = index;
        self.held = None;
        self.finished = false;
        self.may_have_data = true;
        self.reader.seek(from);
        n
    }

    /// Where in-flight record `i` starts: where the one before it ended (a
    /// record's position is where the next one starts), or, in another
    /// segment, that segment's start. Never a segment before it: that one
    /// may be gone (dropped at the cap) and the reader would skip to the
    /// first that is left, past records it then never reads again.
    fn start_of(&self, i: usize) -> Position {
        let before = match i {
            0 => self.acked,
            _ => self.inflight[i - 1].pos,
        };
        let segment = self.inflight[i].pos.segment;
        if before.segment == segment {
            before
        } else {
            Position { segment, offset: 0 }
        }
    }

    /// Takes back everything sent and not acknowledged: it is read again
    /// from the last acknowledged record, and deliveries still due for it
    /// are ignored. Returns how many records were taken back.
    fn rewind(&mut self) -> u64 {
        let n = self.inflight.len() as u64;
        if n > 0 || self.held.is_some() {
            self.rewound_ts = self.rewound_ts.or(self.oldest_pending_ts());
            // Its quiet-time clock (give-up, orphans) restarts only when
            // it had something out: an idle one is not made younger.
            self.last_read = Instant::now();
        }
        let from = match self.inflight.front() {
            Some(_) => self.start_of(0),
            None => self.acked,
        };
        self.generation += 1;
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.held = None;
        self.finished = false;
        self.reader.seek(from);
        n
    }
}

struct NestedWait {
    lookup: crate::nested::Lookup,
    since: Instant,
    last_try: Option<Instant>,
}

/// How long a nested container's records wait for its task to be linked.
const NESTED_WAIT: Duration = Duration::from_secs(10);

pub struct Publisher {
    config: Arc<Config>,
    opts: Options,
    make_sink: SinkFactory,
    sink: Box<dyn Sink>,
    containers: BTreeMap<String, Container>,
    slots: HashMap<u64, String>,
    next_slot: u64,
    /// Container directories seen without a readable meta.json yet.
    unready: BTreeMap<String, Instant>,
    /// Entries of the spool root that are not ours (logged once).
    ignored: std::collections::BTreeSet<String>,
    /// Container spools in a newer format than this release reads: kept
    /// for one that does; `--until-empty` never ends 0 while they hold data.
    newer: std::collections::BTreeSet<String>,
    /// Finished containers kept for `spool_retain` (replay), not published.
    retained: std::collections::BTreeSet<String>,
    watcher: Watcher,
    metrics: Arc<Metrics>,
    health: Health,
    lock: Option<SpoolLock>,
    /// Publishing without the lock (it could not be made).
    unlocked: bool,
    in_flight_bytes: usize,
    in_flight_msgs: u64,
    /// Since when records have been in flight without any delivery.
    stall_since: Option<Instant>,
    /// Acknowledgements stalled and the sink's queue was taken back (see
    /// [`TAKE_BACK_AFTER`]); until the next delivery, records go out only
    /// when none is in flight, at most [`PROBE_WINDOW`] bytes at a time.
    held_back: bool,
    /// The window of this pump pass (see `held_back`).
    window: usize,
    /// What the records in flight of one container may take on a spool
    /// filesystem with little room: a quarter of the spool budget (see
    /// `budget`), so that what the reader must keep to send again never
    /// fills it.
    room_share: usize,
    /// The spools held more than [`budget::NEAR`] of the budget at the
    /// last check: it is checked more often.
    budget_near: bool,
    /// A delivery succeeded since the last [`Publisher::after_deliveries`].
    acked_in_poll: bool,
    /// Read -> acknowledged of the records delivered in this metrics window.
    latency: latency::Latency,
    /// The time the deliveries being handled arrived (one clock read per
    /// poll), microseconds since the epoch as records' `ts_micros`.
    poll_now_us: i64,
    /// How long a stall may last before the sink is rebuilt (doubles after
    /// each rebuild, back to [`REBUILD_STALLED_AFTER`] on a delivery).
    rebuild_after: Duration,
    /// Rebuilds of a broken sink since the last successful delivery, and
    /// when the last one was (see [`REBUILD_BROKEN_MAX`]).
    broken_rebuilds: (u32, Option<Instant>),
    /// A container's records were refused (`Rejected`) since the sink was
    /// last built: a break that follows is explained by it.
    rejected_since_rebuild: bool,
    /// Since when the sink has broken without a rejection to explain it
    /// and nothing was delivered (cleared by a delivery).
    broken_since: Option<Instant>,
    /// The sink said its destination is gone for good.
    closed: Option<String>,
    scratch: Vec<u8>,
}

impl Publisher {
    /// Creates the spool root if need be and takes its lock (unless
    /// `wait_for_lock`: then [`run`](Self::run) waits for it).
    pub fn new(
        config: Arc<Config>,
        opts: Options,
        mut make_sink: SinkFactory,
        metrics: Arc<Metrics>,
    ) -> Result<Publisher, String> {
        std::fs::create_dir_all(&opts.spool_dir)
            .map_err(|e| format!("cannot create spool_dir {}: {e}", opts.spool_dir.display()))?;
        let mut unlocked = false;
        let lock = match SpoolLock::acquire(&opts.spool_dir) {
            Ok(l) => Some(l),
            Err(LockError::Held(_)) if opts.wait_for_lock => None,
            Err(e @ LockError::Held(_)) => return Err(e.describe(&opts.spool_dir)),
            // The lock file cannot be made (spool filesystem full or read
            // only): shipping what is spooled matters more, and frees space.
            Err(e) => {
                log::error(&format!(
                    "{}; publishing without the lock",
                    e.describe(&opts.spool_dir)
                ));
                unlocked = true;
                None
            }
        };
        let watcher = Watcher::new(&opts.spool_dir)
            .map_err(|e| format!("cannot watch spool_dir {}: {e}", opts.spool_dir.display()))?;
        let sink = make_sink()?;
        metrics
            .publisher_active
            .store(u64::from(lock.is_some() || unlocked), Ordering::Relaxed);
        Ok(Publisher {
            config,
            opts,
            make_sink,
            sink,
            containers: BTreeMap::new(),
            slots: HashMap::new(),
            next_slot: 1,
            unready: BTreeMap::new(),
            ignored: Default::default(),
            newer: Default::default(),
            retained: Default::default(),
            watcher,
            health: Health::new(metrics.clone()),
            metrics,
            lock,
            unlocked,
            in_flight_bytes: 0,
            in_flight_msgs: 0,
            stall_since: None,
            held_back: false,
            window: 0,
            room_share: usize::MAX,
            acked_in_poll: false,
            budget_near: false,
            latency: Default::default(),
            poll_now_us: 0,
            rebuild_after: REBUILD_STALLED_AFTER,
            broken_rebuilds: (0, None),
            rejected_since_rebuild: false,
            broken_since: None,
            closed: None,
            scratch: Vec::with_capacity(64 * 1024),
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Waits for another publisher to let go of the spool (the agent's
    /// mode); false when stopped first.
    fn wait_for_lock(&mut self) -> bool {
        let mut since: Option<Instant> = None;
        while self.lock.is_none() && !self.unlocked {
            match SpoolLock::acquire(&self.opts.spool_dir) {
                Ok(l) => {
                    if let Some(t) = since {
                        log::info(&format!(
                            "took over spool {} after waiting {} s for the other publisher",
                            self.opts.spool_dir.display(),
                            t.elapsed().as_secs()
                        ));
                    }
                    self.lock = Some(l);
                    self.metrics.publisher_active.store(1, Ordering::Relaxed);
                }
                Err(e) => {
                    since.get_or_insert_with(Instant::now);
                    let msg = e.describe(&self.opts.spool_dir);
                    self.health.warn("lock", || {
                        format!("{msg}; not publishing until it exits (containers keep spooling)")
                    });
                    for _ in 0..20 {
                        if self.stopping() {
                            return false;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
        true
    }

    /// Runs until `stop` is set (or, with `exit_when_empty`, until the spool
    /// has no container left). Err: gave up (see `give_up_after`), with
    /// what remains and why.
    pub fn run(&mut self) -> Result<(), String> {
        if !self.wait_for_lock() {
            return Ok(());
        }
        // No blocking start-up check: the producer connects at once and
        // reports what fails through its error callback (`check_errors`),
        // while this loop already spools, enforces the budget and watches.
        self.scan_root();
        let mut events = Vec::new();
        let mut deliveries = Vec::new();
        let mut last_rescan = Instant::now();
        let mut last_metrics = Instant::now();
        // At once: it also sets the room records in flight may take.
        self.enforce_budget();
        let mut last_budget = Instant::now();
        let mut result = Ok(());
        loop {
            if self.stopping() {
                break;
            }
            crate::fault::hit("publisher");
            for e in events.drain(..) {
                match e {
                    Event::Root => self.scan_root(),
                    Event::Overflow => {
                        // Events were lost: any container may have data.
                        for c in self.containers.values_mut() {
                            c.may_have_data = true;
                            c.size_dirty = true;
                        }
                        self.scan_root();
                    }
                    Event::Container(k) => {
                        if let Some(c) = self.containers.get_mut(&k) {
                            c.may_have_data = true;
                            c.size_dirty = true;
                            self.release_unlinked_ahead(&k);
                        } else if self.unready.contains_key(&k) {
                            self.try_adopt(&k);
                        }
                    }
                }
            }
            if last_rescan.elapsed() >= RESCAN_EVERY {
                last_rescan = Instant::now();
                self.scan_root();
                self.sweep_retained();
                self.drop_vanished();
                self.check_companions();
                self.update_pending_metrics();
            }
            // A broken sink takes nothing until it is rebuilt (what is
            // sent to it now fails too); the loop still waits below.
            // A break that follows a refused batch is rebuilt at once and
            // does not count towards the backoff: the refused container
            // waits out its own (helper-9: ten refused containers' probes
            // pushed the backoff to a minute, starving a healthy one).
            let explained = self.rejected_since_rebuild;
            let broken = match self.sink.fatal() {
                Some(f) if explained || self.broken_rebuild_due() => {
                    if !explained {
                        self.broken_rebuilds.0 += 1;
                        self.broken_since.get_or_insert_with(Instant::now);
                    }
                    self.broken_rebuilds.1 = Some(Instant::now());
                    self.rebuild_sink(&f);
                    false
                }
                Some(_) => true,
                None => false,
            };
            let every = if self.budget_near {
                budget::CHECK_NEAR
            } else {
                budget::CHECK_EVERY
            };
            if last_budget.elapsed() >= every {
                last_budget = Instant::now();
                self.enforce_budget();
            }
            let progress = !broken && {
                self.send_orphans();
                self.pump_all()
            };
            // Never a blocking poll: rust-rdkafka's BaseProducer::poll spins
            // on the clock until its timeout (seen at ~10% of a core while
            // the broker was down). We wait on inotify below instead.
            self.sink.poll(Duration::ZERO, &mut deliveries);
            // Deliveries free room in the window: a container held back by
            // it (its own share or the whole) may send at once, so look
            // again without waiting; the wake-up for these deliveries was
            // spent on this poll, and waiting for the next one cost every
            // window-bound round the fallback wait (50 ms): 15k lines/s
            // with a 1 MB window, against 300k with it not binding.
            let delivered = !deliveries.is_empty();
            if delivered {
                self.poll_now_us = crate::spool::record::now_micros();
            }
            for d in deliveries.drain(..) {
                self.on_delivery(d);
            }
            self.after_deliveries();
            self.metrics
                .in_flight
                .store(self.in_flight_msgs, Ordering::Relaxed);
            self.check_errors();
            self.store_and_finish();
            let pause = crate::fault::delay_ms("exit-check");
            if pause > 0 {
                std::thread::sleep(Duration::from_millis(pause));
            }
            if self.opts.exit_when_empty.load(Ordering::Acquire) {
                // The flag may have been set after this pass read the
                // directory's events (`run` sets it right after prepare()
                // put the container in place): look at the directory itself
                // before ending, or a line could be left in the spool.
                if self.containers.is_empty() && !self.unready_with_data() {
                    self.scan_root();
                }
                if self.containers.is_empty() && !self.unready_with_data() {
                    result = self.left_for_a_newer_release();
                    break;
                }
                if let Some(why) = self.gave_up() {
                    result = Err(why);
                    break;
                }
            }
            if last_metrics.elapsed()
                >= Duration::from_millis(self.config.metrics_interval_ms.max(100))
            {
                last_metrics = Instant::now();
                self.write_metrics();
            }
            let wake = self.sink.wake_fd();
            let wait_ms = match (progress || delivered, self.in_flight_msgs) {
                (true, _) => 0,
                (false, 0) => 100,
                // Deliveries outstanding and the sink wakes us for them
                // (`wake`): this is only the fallback.
                (false, _) if wake.is_some() => 50,
                // Otherwise look for them again soon (less often while the
                // broker is unreachable).
                (false, _) if self.stall_since.is_some_and(|t| t.elapsed() < STALL_AFTER) => 5,
                (false, _) => 50,
            };
            self.watcher.wait(wait_ms, wake, &mut events);
        }
        // Persist what was confirmed; the rest is sent again next time.
        let mut deliveries = Vec::new();
        self.sink.poll(Duration::from_millis(0), &mut deliveries);
        self.poll_now_us = crate::spool::record::now_micros();
        for d in deliveries {
            self.on_delivery(d);
        }
        self.after_deliveries();
        self.metrics
            .in_flight
            .store(self.in_flight_msgs, Ordering::Relaxed);
        for c in self.containers.values_mut() {
            if c.acked != c.stored {
                let _ = c.reader.acknowledge(c.acked, self.config.spool_retain);
            }
        }
        self.update_pending_metrics();
        self.write_metrics();
        result
    }

    /// Sends the notices of containers that started without a spool.
    fn send_orphans(&mut self) {
        let batch = match self.opts.orphans.try_lock() {
            Ok(mut v) if !v.is_empty() => std::mem::take(&mut *v),
            _ => return,
        };
        let mut again = Vec::new();
        for o in batch {
            let enc = Encoder::new(&self.config, &o.identity, &o.settings);
            let mut rec = crate::spool::notice::record(1, o.text.clone(), None, &[]);
            rec.stream = Stream::PublisherNotice;
            self.scratch.clear();
            enc.encode(&rec, &mut self.scratch);
            let ticket = Ticket {
                container: 0,
                generation: notices::NOTICE_GENERATION,
                index: 0,
                pos: Position::default(),
                bytes: self.scratch.len(),
            };
            match self.sink.send(
                &o.settings.topic,
                o.identity.container_id.as_bytes(),
                &self.scratch,
                crate::spool::record::now_micros() / 1000,
                ticket,
            ) {
                Ok(()) => {
                    self.in_flight_bytes += ticket.bytes;
                    self.in_flight_msgs += 1;
                }
                Err(_) => again.push(o),
            }
        }
        if !again.is_empty() {
            if let Ok(mut v) = self.opts.orphans.lock() {
                v.extend(again);
            }
        }
    }

    /// Whether a broken sink may be rebuilt now: at once the first time
    /// after a delivery, then 1 s, 2 s ... up to [`REBUILD_BROKEN_MAX`].
    fn broken_rebuild_due(&self) -> bool {
        match self.broken_rebuilds {
            (0, _) | (_, None) => true,
            (n, Some(t)) => {
                let wait = Duration::from_secs(1 << (n - 1).min(6)).min(REBUILD_BROKEN_MAX);
                t.elapsed() >= wait
            }
        }
    }

    /// Ending with nothing left to publish: an error if spools this
    /// release cannot read still hold records.
    fn left_for_a_newer_release(&self) -> Result<(), String> {
        let left: Vec<&str> = self
            .newer
            .iter()
            .filter(|k| self.opts.spool_dir.join(k).is_dir())
            .map(String::as_str)
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} container spool(s) in a newer format than this release reads ({}) remain in {}: upgrade mesos-gelf to ship them",
            left.len(),
            left.iter().take(10).copied().collect::<Vec<_>>().join(", "),
            self.opts.spool_dir.display()
        ))
    }

    /// With `give_up_after`: why to stop waiting, if every container left
    /// is blocked by a permanent error for that long (at once when the
    /// destination is closed).
    fn gave_up(&self) -> Option<String> {
        let after = self.opts.give_up_after?;
        // Named, so the operator knows which spools to look at (at most a
        // few: the line must stay one line).
        let named = |mut names: Vec<&str>| {
            const NAMED: usize = 10;
            names.sort_unstable();
            let more = names.len().saturating_sub(NAMED);
            names.truncate(NAMED);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!("{}{more}", names.join(", "))
        };
        let remaining = |left: Vec<&str>| {
            format!(
                "undelivered records of {} container(s) ({}) remain in {}",
                left.len(),
                named(left),
                self.opts.spool_dir.display()
            )
        };
        let all = || self.containers.values().map(|c| c.key.as_str()).collect();
        let closed = self.closed.clone().or_else(|| {
            self.containers.values().find_map(|c| match c.failing {
                Some((health::Cause::Closed, _)) => Some("standard output closed".to_string()),
                _ => None,
            })
        });
        if let Some(m) = closed {
            return Some(format!("{m}; {}", remaining(all())));
        }
        if self.containers.is_empty() {
            return None;
        }
        let client = matches!(self.health.client_problem,
            Some((c, t)) if c.permanent() && t.elapsed() >= after);
        // Kafka cannot be reached now (transport): a container's permanent
        // cause seen before may be fixed by the time it is back (a schema
        // changed while the broker restarted), so that is waited for.
        let cut_off = matches!(self.health.client_problem, Some((c, _)) if !c.permanent());
        // Nothing to send, no `done`, nothing new for that long, and no
        // companion lock at all (a spool copied by hand, or left by a
        // version without the lock): it will not end by itself. (A
        // companion that died leaves its lock file: `check_companions`
        // marks that spool done.)
        let orphan = |c: &Container| {
            c.inflight.is_empty()
                && c.held.is_none()
                && !c.finished
                && c.last_read.elapsed() >= after
                && !c.reader.dir().join(crate::spool::DONE_FILE).exists()
                && crate::spool::companion_alive(c.reader.dir()).is_none()
        };
        // Everything written so far delivered, but the companion alive:
        // some process of the command still holds its output open. More
        // may come, or never; it waits in the spool for the next publisher.
        let open = |c: &Container| {
            self.opts.give_up_while_open
                && c.inflight.is_empty()
                && c.held.is_none()
                && !c.finished
                && c.failing.is_none()
                && c.rewound_ts.is_none()
                && c.last_read.elapsed() >= after
                && c.notices.is_empty()
                && crate::spool::companion_alive(c.reader.dir()) == Some(true)
        };
        let own = |c: &Container| {
            !cut_off && matches!(c.failing, Some((f, t)) if f.permanent() && t.elapsed() >= after)
        };
        let held_by_client = |c: &Container| client && (!c.inflight.is_empty() || c.held.is_some());
        if !self
            .containers
            .values()
            .all(|c| own(c) || orphan(c) || open(c) || held_by_client(c))
        {
            return None;
        }
        let keys = |f: &dyn Fn(&Container) -> bool| -> Vec<&str> {
            self.containers
                .values()
                .filter(|c| f(c))
                .map(|c| c.key.as_str())
                .collect()
        };
        let mut parts = Vec::new();
        let opens = if client { vec![] } else { keys(&|c| open(c)) };
        if !opens.is_empty() {
            parts.push(format!(
                "giving up on {}: everything written so far is delivered, but for {} s nothing new came and the output is still open (its companion is alive: a process of the command still holds its stdout or stderr); what it writes later waits in {} for the next publisher",
                named(opens.clone()),
                after.as_secs(),
                self.opts.spool_dir.display()
            ));
        }
        let orphans = if client {
            vec![]
        } else {
            // (never also open: that needs a live companion, this none)
            keys(&|c| orphan(c))
        };
        if !orphans.is_empty() {
            parts.push(format!(
                "giving up on {}: no new records for {} s, no `done` marker and no live companion (a spool copied by hand, or one whose companion is gone without a trace)",
                named(orphans.clone()),
                after.as_secs(),
            ));
        }
        if opens.len() + orphans.len() < self.containers.len() {
            // The permanent cause that blocks a container, not the
            // client's last error, which may be a consequence (an
            // idempotent producer is fenced after its records were refused).
            // Each container's own cause, by cause (helper-10: one cause
            // was given for all, though most had another).
            let mut by_cause: BTreeMap<&str, (health::Cause, Vec<&str>)> = BTreeMap::new();
            for c in self.containers.values() {
                if let Some((f, _)) = c.failing.filter(|_| own(c)) {
                    by_cause
                        .entry(f.name())
                        .or_insert((f, vec![]))
                        .1
                        .push(&c.key);
                }
            }
            let own_cause = (!by_cause.is_empty()).then(|| {
                let several = by_cause.len() > 1;
                by_cause
                    .into_values()
                    .map(|(f, keys)| {
                        if several {
                            format!("{}: {}: {}", f.name(), f.what(), named(keys))
                        } else {
                            format!("{}: {}", f.name(), f.what())
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            });
            let why = own_cause.unwrap_or_else(|| {
                self.metrics
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_else(|| "permanent Kafka error".into())
            });
            parts.push(format!(
                "giving up after {} s of a permanent error ({why})",
                after.as_secs()
            ));
        }
        // Everything but the open ones (which delivered all they wrote).
        let left = keys(&|c| !opens.contains(&c.key.as_str()));
        if !left.is_empty() {
            parts.push(remaining(left));
        }
        Some(parts.join("; "))
    }

    /// `<spool_dir>/metrics.json`: the agent-wide numbers, and per
    /// container what an operator asks first (kept out of the agent's
    /// metrics, whose names must stay bounded).
    fn write_metrics(&mut self) {
        // The latency figures cover the window since the last write.
        let l = self.latency.take().unwrap_or_default();
        self.metrics
            .latency_p50_us
            .store(l.p50_us, Ordering::Relaxed);
        self.metrics
            .latency_p99_us
            .store(l.p99_us, Ordering::Relaxed);
        self.metrics
            .latency_max_us
            .store(l.max_us, Ordering::Relaxed);
        let mut v = self.metrics.snapshot();
        let per: serde_json::Map<String, serde_json::Value> = self
            .containers
            .values()
            .map(|c| {
                let oldest = c
                    .oldest_pending_ts()
                    .map(|t| (crate::spool::record::now_micros() - t).max(0) / 1000);
                (
                    c.key.clone(),
                    serde_json::json!({
                        "topic": c.topic,
                        "task_id": c.identity.task_id,
                        "in_flight": c.inflight.len(),
                        "oldest_pending_age_ms": oldest,
                        "failing": c.failing.map(|(cause, t)| serde_json::json!({
                            "cause": cause.name(),
                            "for_s": t.elapsed().as_secs(),
                        })),
                        "waiting_for_task_link": c.nested.is_some(),
                        "losses": crate::spool::notice::LossReason::ALL
                            .iter()
                            .filter(|r| c.loss_totals[**r as usize] > 0)
                            .map(|r| (r.name().to_string(), serde_json::json!(c.loss_totals[*r as usize])))
                            .collect::<serde_json::Map<_, _>>(),
                    }),
                )
            })
            .collect();
        v["containers"] = serde_json::Value::Object(per);
        let _ = crate::spool::write_replace(
            &self.opts.spool_dir,
            "metrics.json",
            v.to_string().as_bytes(),
        );
    }
}

/// Sleeps `d` in short steps; false if `stop` was set meanwhile.
fn nap(d: Duration, stop: &AtomicBool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < d {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !stop.load(Ordering::Relaxed)
}

/// The publisher thread: runs a publisher, and if it panics (a bug of
/// ours), logs it, counts it (`publisher_restarts`) and starts a new one
/// from the spool after a backoff (1 s doubling to 60 s), so one bug never
/// ends shipping for every container until the agent restarts.
fn supervise(
    config: Arc<Config>,
    opts: Options,
    metrics: Arc<Metrics>,
    mut next: Option<Publisher>,
) -> Result<(), String> {
    let mut backoff = Duration::from_secs(1);
    let mut limiter = log::Limiter::new(health::REPEAT_EVERY);
    loop {
        if opts.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut p = match next.take() {
            Some(p) => p,
            None => match Publisher::new(
                config.clone(),
                opts.clone(),
                sink_factory(&config),
                metrics.clone(),
            ) {
                Ok(p) => p,
                Err(e) => {
                    limiter.emit(log::Level::Error, "new", || {
                        format!("cannot start the publisher: {e}; retrying")
                    });
                    if !nap(backoff, &opts.stop) {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.run()));
        metrics.publisher_active.store(0, Ordering::Relaxed);
        drop(p);
        match r {
            Ok(result) => return result,
            Err(panic) => {
                Metrics::add(&metrics.publisher_restarts, 1);
                log::error(&format!(
                    "the publisher failed (panic: {}); restarting it from the spool in {} s (a bug: please report it)",
                    panic_text(&panic),
                    backoff.as_secs()
                ));
                if !nap(backoff, &opts.stop) {
                    return Ok(());
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// A panic's message.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into())
}

/// A publisher running on its own thread (the agent module, `run`).
pub struct Handle {
    pub stop: Arc<AtomicBool>,
    exit_when_empty: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Handle {
    /// Starts the publisher thread. In the agent (`wait_for_lock`) a
    /// publisher that cannot start yet (spool directory not writable) is
    /// retried in the thread, with backoff, and the agent starts anyway;
    /// elsewhere that error is returned.
    pub fn spawn(
        config: Arc<Config>,
        opts: Options,
        metrics: Arc<Metrics>,
    ) -> Result<Handle, String> {
        let (stop, exit_when_empty) = (opts.stop.clone(), opts.exit_when_empty.clone());
        let first = match Publisher::new(
            config.clone(),
            opts.clone(),
            sink_factory(&config),
            metrics.clone(),
        ) {
            Ok(p) => Some(p),
            Err(e) if opts.wait_for_lock => {
                log::error(&format!(
                    "{e}; containers start with their sandbox files only until the spool works (retrying)"
                ));
                None
            }
            Err(e) => return Err(e),
        };
        let m = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("mesos-gelf-publisher".into())
            .spawn(move || supervise(config, opts, m, first))
            .map_err(|e| format!("cannot start the publisher thread: {e}"))?;
        Ok(Handle {
            stop,
            exit_when_empty,
            metrics,
            thread: Some(thread),
        })
    }

    /// From now on the thread returns once the spool is empty.
    pub fn finish_when_empty(&self) {
        self.exit_when_empty.store(true, Ordering::Release);
    }

    /// True once the thread has returned.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for the thread to return (with `exit_when_empty`: the spool is
    /// empty, or it gave up: Err says why).
    pub fn join(mut self) -> Result<(), String> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err("the publisher thread panicked".into()),
            None => Ok(()),
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
