//! A real cluster's failures (issue 37.3): three Apache Kafka nodes, a
//! topic of 3 partitions with 3 replicas and `min.insync.replicas=2`, the
//! producer idempotent with `acks=all` (our defaults), every node in
//! `kafka.bootstrap.servers`. Several containers, each a real companion,
//! write throughout into one spool; one `publish` process ships it. Each
//! test breaks the cluster its own way and then asserts: every `_seq` of
//! every container delivered (duplicates counted and printed), no writer
//! blocked, the publisher's CPU during the outage against its idle CPU, and
//! what its metrics said.
//!
//! The clusters are heavy for a 2-core machine (three JVMs each), so the
//! tests take turns.

mod support;

use mesos_gelf_logger::config::Config;
use mesos_gelf_logger::logger::Logger;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// One cluster at a time.
static TURN: Mutex<()> = Mutex::new(());

const TOPIC: &str = "cluster-logs";
const CONTAINERS: usize = 4;
/// Lines per second per container.
const RATE: u64 = 250;

/// A writer thread per container: numbered lines at [`RATE`], until told
/// to stop; it keeps the slowest write it saw.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Duration)>,
}

impl Writer {
    fn start(mut out: std::fs::File) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut n = 0u64;
            let mut worst = Duration::ZERO;
            while !s.load(Ordering::Relaxed) {
                // Ten lines per write, on schedule.
                let due = t0 + Duration::from_millis((n / 10 + 1) * 10_000 / RATE);
                if let Some(w) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
                let mut buf = String::new();
                for i in n + 1..=n + 10 {
                    buf.push_str(&format!("line {i}\n"));
                }
                let w0 = Instant::now();
                out.write_all(buf.as_bytes())
                    .expect("write to the companion");
                worst = worst.max(w0.elapsed());
                n += 10;
            }
            (n, worst)
        });
        Writer { stop, thread }
    }

    /// Stops it; returns (lines written, slowest write). Its pipe closes.
    fn finish(self) -> (u64, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The cluster, the containers writing, and their publisher.
struct Rig {
    cluster: KafkaCluster,
    /// Kept while the containers it prepared write.
    _logger: Logger,
    spool: PathBuf,
    writers: Vec<(String, Writer)>,
    publish: Child,
    /// The publisher's CPU, % of a core, while writes flow and every
    /// broker is up.
    flowing_cpu: f64,
    dir: tempfile::TempDir,
}

/// What [`Rig::outage`] measured.
struct Outage {
    cpu: f64,
    lasted: Duration,
    /// `kafka_reachable` went to 0 during it.
    unreachable_seen: bool,
    /// `records_in_flight` at its highest during it.
    in_flight_max: u64,
}

impl Rig {
    fn start() -> Rig {
        let cluster = KafkaCluster::start(3);
        let servers = cluster.bootstrap();
        cluster.tool(
            "org.apache.kafka.tools.TopicCommand",
            &[
                "--bootstrap-server",
                &servers,
                "--create",
                "--topic",
                TOPIC,
                "--partitions",
                "3",
                "--replication-factor",
                "3",
                "--config",
                "min.insync.replicas=2",
            ],
        );
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let cfg = Config::from_pairs(&[("spool_dir", spool.to_str().unwrap()), ("topic", TOPIC)])
            .unwrap();
        let logger = Logger::new(cfg, bin()).unwrap();
        let mut writers = Vec::new();
        for i in 0..CONTAINERS {
            let id = format!("c-{i}");
            let sbx = dir.path().join(&id);
            std::fs::create_dir_all(&sbx).unwrap();
            let json = serde_json::json!({"directory": sbx.display().to_string()}).to_string();
            let p = logger.prepare(&id, &json, None).unwrap();
            drop(std::fs::File::from(p.stderr));
            writers.push((id, Writer::start(std::fs::File::from(p.stdout))));
        }
        let publish = Command::new(bin())
            .args(["publish", "--spool-dir"])
            .arg(&spool)
            .args(["--set", &format!("kafka.bootstrap.servers={servers}")])
            .args(["--set", "metrics_interval_ms=100"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("publish.log")).unwrap())
            .spawn()
            .unwrap();
        let mut rig = Rig {
            cluster,
            _logger: logger,
            spool,
            writers,
            publish,
            flowing_cpu: 0.0,
            dir,
        };
        rig.wait_metric("records_published", |v| v >= 2_000);
        let (c0, t0) = (rig.cpu(), Instant::now());
        std::thread::sleep(Duration::from_secs(3));
        rig.flowing_cpu = (rig.cpu() - c0) * 100.0 / t0.elapsed().as_secs_f64();
        rig
    }

    fn cpu(&self) -> f64 {
        cpu_secs(self.publish.id())
    }

    fn metrics(&self) -> Value {
        std::fs::read(self.spool.join("metrics.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    fn metric(&self, name: &str) -> u64 {
        self.metrics()[name].as_u64().unwrap_or(0)
    }

    fn wait_metric(&self, name: &str, ok: impl Fn(u64) -> bool) {
        let t0 = Instant::now();
        while !ok(self.metric(name)) {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "{name} is {}: {}",
                self.metric(name),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("publish.log")).unwrap_or_default()
    }

    /// Runs `outage` (which breaks the cluster and may mend it), sampling
    /// the publisher's metrics meanwhile.
    fn outage(&mut self, outage: impl FnOnce(&mut KafkaCluster) + Send) -> Outage {
        let (c0, t0) = (self.cpu(), Instant::now());
        let done = AtomicBool::new(false);
        let metrics = self.spool.join("metrics.json");
        let (unreachable_seen, in_flight_max) = std::thread::scope(|s| {
            let sampler = s.spawn(|| {
                let (mut unreachable, mut in_flight) = (false, 0);
                while !done.load(Ordering::Relaxed) {
                    if let Some(m) = std::fs::read(&metrics)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    {
                        if m["kafka_reachable"] == 0 && !unreachable {
                            eprintln!("kafka_reachable 0: {m}");
                            unreachable = true;
                        }
                        in_flight = in_flight.max(m["records_in_flight"].as_u64().unwrap_or(0));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                (unreachable, in_flight)
            });
            outage(&mut self.cluster);
            done.store(true, Ordering::Relaxed);
            sampler.join().unwrap()
        });
        let lasted = t0.elapsed();
        Outage {
            cpu: (self.cpu() - c0) * 100.0 / lasted.as_secs_f64(),
            lasted,
            unreachable_seen,
            in_flight_max,
        }
    }

    /// Lets writes go on for a while, stops them, and waits until every
    /// line of every container is in Kafka: asserts none lost and no write
    /// blocked; returns the duplicates, and prints a report.
    fn finish(mut self, name: &str, o: &Outage) -> u64 {
        std::thread::sleep(Duration::from_secs(3));
        let mut written = BTreeMap::new();
        let mut worst = Duration::ZERO;
        for (id, w) in std::mem::take(&mut self.writers) {
            let (n, slowest) = w.finish();
            worst = worst.max(slowest);
            written.insert(id, n);
        }
        let total: u64 = written.values().sum();
        // Per container: how often each `_seq` arrived, and the lowest
        // not seen yet (so each message costs O(1) on average).
        let mut seen: BTreeMap<String, (Vec<u32>, u64)> = written
            .iter()
            .map(|(id, &n)| (id.clone(), (vec![0; n as usize + 1], 1)))
            .collect();
        let mut dups = 0u64;
        let mut open = seen.len();
        consume_until(
            &self.cluster.bootstrap(),
            TOPIC,
            Duration::from_secs(300),
            Duration::from_secs(3),
            |m| {
                let v = m.json();
                let (Some(id), Some(seq)) = (v["_container_id"].as_str(), v["_seq"].as_u64())
                else {
                    return false;
                };
                let Some((got, next)) = seen.get_mut(id) else {
                    return false;
                };
                if v["_stream"] != "stdout" || seq as usize >= got.len() {
                    return false;
                }
                got[seq as usize] += 1;
                if got[seq as usize] > 1 {
                    dups += 1;
                }
                let was_open = (*next as usize) < got.len();
                while (*next as usize) < got.len() && got[*next as usize] > 0 {
                    *next += 1;
                }
                if was_open && *next as usize == got.len() {
                    open -= 1;
                }
                open == 0
            },
        );
        let lost: u64 = seen
            .values()
            .map(|(got, _)| got[1..].iter().filter(|&&c| c == 0).count() as u64)
            .sum();
        unsafe { libc::kill(self.publish.id() as i32, libc::SIGTERM) };
        let ended = wait_child(&mut self.publish, Duration::from_secs(60));
        let m = self.metrics();
        eprintln!(
            "{name}: {total} lines of {CONTAINERS} containers, lost {lost}, duplicates {dups}; \
             slowest write {worst:?}; outage {:.1} s: publisher CPU {:.1}% of a core (flowing, all up: {:.1}%), \
             kafka_reachable 0 seen: {}, records_in_flight max {}; records_retried {}, producer_rebuilds {}, delivery_failures {}",
            o.lasted.as_secs_f64(),
            o.cpu,
            self.flowing_cpu,
            o.unreachable_seen,
            o.in_flight_max,
            m["records_retried"],
            m["producer_rebuilds"],
            m["delivery_failures"],
        );
        assert_eq!(
            lost,
            0,
            "{name}: lines lost; publisher said: {}",
            self.log()
        );
        assert!(
            worst < Duration::from_secs(2),
            "{name}: a write to a companion took {worst:?}"
        );
        assert!(ended.is_some(), "{name}: publish ignored SIGTERM");
        dups
    }
}

impl Drop for Rig {
    /// A test that fails leaves no publisher behind (nor writers: their
    /// threads end with the test process).
    fn drop(&mut self) {
        let _ = self.publish.kill();
        let _ = self.publish.wait();
    }
}

/// Waits until no partition of the cluster is under-replicated: the
/// condition on which a rolling restart moves to the next broker.
fn wait_in_sync(cluster: &KafkaCluster) {
    let t0 = Instant::now();
    loop {
        let out = cluster.tool(
            "org.apache.kafka.tools.TopicCommand",
            &[
                "--bootstrap-server",
                &cluster.bootstrap(),
                "--describe",
                "--under-replicated-partitions",
            ],
        );
        if out.trim().is_empty() {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "still under-replicated after 180 s: {out}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Restarts every node in turn, each down 5 s (`down` takes it down:
/// SIGTERM or SIGKILL), the next once no partition is under-replicated.
fn rolling_restart(c: &mut KafkaCluster, down: fn(&mut KafkaNode)) {
    for i in 0..c.nodes.len() {
        down(&mut c.nodes[i]);
        std::thread::sleep(Duration::from_secs(5));
        c.nodes[i].start();
        wait_in_sync(c);
    }
}

/// Containers write through a rolling restart of every node.
fn through_a_rolling_restart(name: &str, down: fn(&mut KafkaNode)) {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let mut rig = Rig::start();
    let o = rig.outage(|c| rolling_restart(c, down));
    rig.finish(name, &o);
}

#[test]
fn a_rolling_restart_by_sigterm_loses_nothing() {
    through_a_rolling_restart("rolling restart, SIGTERM", KafkaNode::stop);
}

#[test]
fn a_rolling_restart_by_sigkill_loses_nothing() {
    through_a_rolling_restart("rolling restart, SIGKILL", KafkaNode::kill);
}

#[test]
fn one_broker_killed_and_left_down_shipping_goes_on() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let mut rig = Rig::start();
    let before = rig.metric("records_published");
    let o = rig.outage(|c| {
        c.nodes[2].kill();
        std::thread::sleep(Duration::from_secs(15));
    });
    // Two replicas stay in sync: records went on being acknowledged.
    // (`kafka_reachable` is printed by `finish`: each of the dead broker's
    // connection errors set it to 0 before; it stayed 1 in 3 of 4 runs
    // since, and why it went 0 once is not known yet.)
    let during = rig.metric("records_published") - before;
    assert!(
        during >= (CONTAINERS as u64) * RATE * 5,
        "only {during} records published in 15 s with one broker down"
    );
    rig.finish("one broker down for good", &o);
}

#[test]
fn two_brokers_down_30s_below_min_isr_waits_then_resumes() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let mut rig = Rig::start();
    let o = rig.outage(|c| {
        c.nodes[1].kill();
        c.nodes[2].kill();
        std::thread::sleep(Duration::from_secs(30));
        c.nodes[1].spawn();
        c.nodes[2].spawn();
        c.nodes[1].wait_started();
        c.nodes[2].wait_started();
    });
    rig.finish("two brokers down 30 s", &o);
}

#[test]
fn all_three_down_30s_then_back_loses_nothing() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let mut rig = Rig::start();
    let o = rig.outage(|c| {
        for n in &mut c.nodes {
            n.kill();
        }
        std::thread::sleep(Duration::from_secs(30));
        for n in &mut c.nodes {
            n.spawn();
        }
        for n in &mut c.nodes {
            n.wait_started();
        }
    });
    assert!(
        o.unreachable_seen,
        "kafka_reachable stayed 1 with every broker down"
    );
    rig.finish("all three down 30 s", &o);
}

/// A GELF TCP input: every NUL-terminated frame of every connection.
struct Graylog {
    port: u16,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
}

impl Graylog {
    fn start() -> Graylog {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (frames.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((mut c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let (f, s) = (f.clone(), s.clone());
                std::thread::spawn(move || {
                    use std::io::Read;
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    let mut cur = Vec::new();
                    let mut buf = [0u8; 65536];
                    while !s.load(Ordering::Relaxed) {
                        match c.read(&mut buf) {
                            Ok(0) => return,
                            Ok(k) => {
                                for &b in &buf[..k] {
                                    if b == 0 {
                                        f.lock().unwrap().push(std::mem::take(&mut cur));
                                    } else {
                                        cur.push(b);
                                    }
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => return,
                        }
                    }
                });
            }
        });
        Graylog { port, frames, stop }
    }

    /// (distinct `_seq`s, frames in all).
    fn received(&self) -> (usize, usize) {
        let f = self.frames.lock().unwrap();
        let d: std::collections::HashSet<u64> = f
            .iter()
            .filter_map(|m| serde_json::from_slice::<Value>(m).ok()?["_seq"].as_u64())
            .collect();
        (d.len(), f.len())
    }

    fn wait_distinct(&self, n: usize, what: &str) {
        let t0 = Instant::now();
        while self.received().0 < n {
            assert!(
                t0.elapsed() < Duration::from_secs(240),
                "{what}: {} of {n} arrived",
                self.received().0
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Graylog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// GELF message `_seq` i, keyed over six "containers" (so over every
/// partition), produced with `acks=all`; returns once all are acknowledged.
fn produce_range(servers: &str, topic: &str, from: u64, to: u64) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for i in from..to {
        let m = format!(
            r#"{{"version":"1.1","host":"h","short_message":"message {i}","timestamp":1795470000.5,"level":6,"_seq":{i}}}"#
        );
        let key = format!("container-{}", i % 6);
        while p.send(BaseRecord::to(topic).key(&key).payload(&m)).is_err() {
            p.poll(Duration::from_millis(10));
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(120))
        .expect("every message acknowledged");
}

fn create_topic(cluster: &KafkaCluster, topic: &str) {
    cluster.tool(
        "org.apache.kafka.tools.TopicCommand",
        &[
            "--bootstrap-server",
            &cluster.bootstrap(),
            "--create",
            "--topic",
            topic,
            "--partitions",
            "3",
            "--replication-factor",
            "3",
            "--config",
            "min.insync.replicas=2",
        ],
    );
}

/// `forward` in group `group` from `topic` to `g`, its stderr in `log`.
fn spawn_forward(cluster: &KafkaCluster, topic: &str, g: &Graylog, log: &Path) -> Child {
    Command::new(bin())
        .args(["forward", "--set"])
        .arg(format!("kafka.bootstrap.servers={}", cluster.bootstrap()))
        .args(["--set", "kafka.group.id=cluster-forwarders"])
        .args(["--set", &format!("topic={topic}")])
        .args(["--set", "kafka.session.timeout.ms=6000"])
        .args(["--set", "kafka.auto.offset.reset=earliest"])
        .args(["--stats-interval-s", "1"])
        .args(["--to", &format!("tcp://127.0.0.1:{}", g.port)])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// The lag each progress line of a forwarder's log gave.
fn lags(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            Some(
                l.split_once(", lag ")?
                    .1
                    .split_once(", not yet")?
                    .0
                    .to_string(),
            )
        })
        .collect()
}

/// Waits until a forwarder's last progress line gives a lag that is a
/// number (it holds partitions), and `ok` with it.
fn wait_lag(log: &Path, what: &str, ok: impl Fn(u64) -> bool) {
    let t0 = Instant::now();
    while !lags(log)
        .last()
        .and_then(|l| l.parse::<u64>().ok())
        .is_some_and(&ok)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{what}: lag lines {:?}",
            lags(log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_forwarders_in_a_group_one_killed_the_other_takes_its_partitions() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = KafkaCluster::start(3);
    let topic = "fwd-group";
    create_topic(&cluster, topic);
    let g = Graylog::start();
    let d = tempfile::tempdir().unwrap();
    let (log1, log2) = (d.path().join("f1.log"), d.path().join("f2.log"));
    let mut f1 = spawn_forward(&cluster, topic, &g, &log1);
    let mut f2 = spawn_forward(&cluster, topic, &g, &log2);
    // Both hold partitions, and both forward.
    wait_lag(&log1, "first forwarder", |_| true);
    wait_lag(&log2, "second forwarder", |_| true);
    produce_range(&cluster.bootstrap(), topic, 0, 10_000);
    g.wait_distinct(10_000, "before the kill");
    unsafe { libc::kill(f1.id() as i32, libc::SIGKILL) };
    f1.wait().unwrap();
    // What comes now is on every partition: the killed one's too, which
    // only the other can take over.
    let n = 30_000u64;
    produce_range(&cluster.bootstrap(), topic, 10_000, n);
    g.wait_distinct(n as usize, "after the kill");
    wait_lag(&log2, "the survivor, at the end", |l| l == 0);
    unsafe { libc::kill(f2.id() as i32, libc::SIGTERM) };
    assert!(wait_child(&mut f2, Duration::from_secs(60)).is_some());
    let (distinct, all) = g.received();
    let mut said = lags(&log2);
    said.dedup();
    eprintln!(
        "forwarders in a group, one SIGKILLed: {distinct} of {n} arrived, {} duplicates; the survivor's lag, as it changed: {said:?}",
        all - distinct
    );
    assert_eq!(distinct, n as usize);
}

#[test]
fn forwarders_in_a_group_through_a_rolling_restart_lose_nothing() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = KafkaCluster::start(3);
    let topic = "fwd-rolling";
    create_topic(&cluster, topic);
    let g = Graylog::start();
    let d = tempfile::tempdir().unwrap();
    let mut f1 = spawn_forward(&cluster, topic, &g, &d.path().join("f1.log"));
    let mut f2 = spawn_forward(&cluster, topic, &g, &d.path().join("f2.log"));
    // Messages produced before, during and after the restart.
    let servers = cluster.bootstrap();
    let producing = {
        let servers = servers.clone();
        std::thread::spawn(move || {
            for k in 0..40u64 {
                produce_range(&servers, topic, k * 1_000, (k + 1) * 1_000);
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    g.wait_distinct(2_000, "before the restart");
    rolling_restart(&mut cluster, KafkaNode::stop);
    producing.join().unwrap();
    let n = 40_000;
    g.wait_distinct(n, "after the restart");
    for f in [&mut f1, &mut f2] {
        unsafe { libc::kill(f.id() as i32, libc::SIGTERM) };
        assert!(wait_child(f, Duration::from_secs(60)).is_some());
    }
    let (distinct, all) = g.received();
    eprintln!(
        "forwarders in a group through a rolling restart: {distinct} of {n} arrived, {} duplicates",
        all - distinct
    );
    assert_eq!(distinct, n);
}
