//! Apache Kafka itself, from its Maven jars (scripts/kafka.sh gathers them
//! once per machine): one combined broker/controller, or a cluster of three
//! in KRaft mode, on loopback, each node a JVM with a small heap and its
//! own folder (config, data, log) that outlives a kill, so a node restarts
//! with its log as a real broker does.

use super::free_port;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The jar folder: KAFKA_LIBS (README's test command sets it), or where
/// scripts/kafka.sh caches it. Tests that need it fail loudly without it.
pub fn kafka_libs() -> PathBuf {
    if let Ok(p) = std::env::var("KAFKA_LIBS") {
        return PathBuf::from(p);
    }
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/kafka.sh");
    let p = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or(""),
    );
    assert!(
        out.status.success() && p.is_dir(),
        "Apache Kafka's jars are missing: scripts/kafka.sh failed (README's test command runs it)"
    );
    p
}

/// How long a node may take to start on a busy 2-core machine.
const START_LIMIT: Duration = Duration::from_secs(120);

/// The broker's log4j2 config: INFO to its log ...
const LOG4J2: &str = "status = error
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
";
/// ... and the tools': warnings only, on stderr (their stdout is the answer).
const TOOLS_LOG4J2: &str = "status = error
appender.out.type = Console
appender.out.name = out
appender.out.target = SYSTEM_ERR
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
";

/// A random KRaft cluster id (16 bytes, base64url without padding; never
/// starting with '-', which the storage tool would take for an option, as
/// Kafka's own `Uuid.randomUuid` ensures).
fn cluster_id() -> String {
    loop {
        let id = random_id();
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn random_id() -> String {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = String::new();
    for x in b {
        bits = (bits << 8) | x as u32;
        n += 8;
        while n >= 6 {
            n -= 6;
            out.push(A[((bits >> n) & 63) as usize] as char);
        }
    }
    if n > 0 {
        out.push(A[((bits << (6 - n)) & 63) as usize] as char);
    }
    out
}

/// A JVM in `dir` with the jars; `log4j2` names its log config there.
fn java(libs: &Path, dir: &Path, log4j2: &str) -> Command {
    let mut c = Command::new("java");
    c.args([
        "-Xms64m",
        "-Xmx384m",
        "-XX:+UseG1GC",
        "-XX:TieredStopAtLevel=1",
    ])
    .arg(format!(
        "-Dlog4j2.configurationFile={}",
        dir.join(log4j2).display()
    ))
    .arg("-cp")
    .arg(format!("{}/*", libs.display()))
    .current_dir(dir)
    .stdin(Stdio::null());
    c
}

/// What makes one node of a cluster.
struct Node {
    id: u32,
    port: u16,
    controller_port: u16,
    /// The static controller quorum (`controller.quorum.voters`), or none:
    /// a single node, its own quorum.
    voters: Option<String>,
    cluster: String,
    /// Replicas of every topic (and `min.insync.replicas` 2 when more).
    replicas: u32,
    /// Where clients are told to connect (host:port), if not the node.
    advertised: Option<String>,
}

/// One Apache Kafka node (broker and controller in one process).
pub struct KafkaNode {
    child: Option<Child>,
    pub id: u32,
    pub port: u16,
    pub controller_port: u16,
    dir: PathBuf,
    libs: PathBuf,
    /// The log's length when the node was last spawned: where
    /// [`wait_started`](Self::wait_started) looks.
    log_from: u64,
}

impl KafkaNode {
    /// Writes the node's config and formats its storage; not started.
    fn prepare(dir: &Path, n: &Node) -> KafkaNode {
        let Node {
            id,
            port,
            controller_port: cport,
            ref voters,
            ref cluster,
            replicas,
            ref advertised,
        } = *n;
        let libs = kafka_libs();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("log4j2.properties"), LOG4J2).unwrap();
        std::fs::write(dir.join("tools-log4j2.properties"), TOOLS_LOG4J2).unwrap();
        let min_isr = replicas.min(2);
        let quorum = match voters {
            Some(v) => format!("controller.quorum.voters={v}"),
            None => format!("controller.quorum.bootstrap.servers=127.0.0.1:{cport}"),
        };
        let config = format!(
            "process.roles=broker,controller
node.id={id}
{quorum}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
advertised.listeners=PLAINTEXT://{advertised}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=1
default.replication.factor={replicas}
min.insync.replicas={min_isr}
offsets.topic.replication.factor={replicas}
offsets.topic.num.partitions=3
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor={replicas}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=2097152
num.network.threads=2
num.io.threads=2
auto.create.topics.enable=true
",
            data = dir.join("data").display(),
            advertised = advertised.clone().unwrap_or(format!("127.0.0.1:{port}")),
        );
        std::fs::write(dir.join("server.properties"), config).unwrap();
        let mut format = java(&libs, dir, "tools-log4j2.properties");
        format
            .args(["kafka.tools.StorageTool", "format", "-t", cluster])
            .args(["-c", "server.properties"]);
        if voters.is_none() {
            format.arg("--standalone");
        }
        let out = format.output().expect("java");
        assert!(
            out.status.success(),
            "formatting Apache Kafka node {id}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        KafkaNode {
            child: None,
            id,
            port,
            controller_port: cport,
            dir: dir.to_path_buf(),
            libs,
            log_from: 0,
        }
    }

    /// Starts the node's JVM (its log appends to `broker.log`).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} runs already", self.id);
        self.log_from = std::fs::metadata(self.log_path()).map_or(0, |m| m.len());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = java(&self.libs, &self.dir, "log4j2.properties")
            .args(["kafka.Kafka", "server.properties"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start java");
        self.child = Some(child);
    }

    /// Starts the node and waits until its broker serves (a combined node
    /// of a cluster serves only once a quorum of controllers is up).
    pub fn start(&mut self) {
        self.spawn();
        self.wait_started();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    /// The node's log (everything it printed across its restarts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits for "Kafka Server started" in what the node logged since it
    /// was last spawned.
    pub fn wait_started(&mut self) {
        let t0 = Instant::now();
        loop {
            let log = self.log();
            if log
                .get(self.log_from as usize..)
                .is_some_and(|l| l.contains("Kafka Server started"))
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return;
            }
            if let Some(c) = &mut self.child {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "Apache Kafka node {} exited ({st}) while starting: {}",
                        self.id,
                        tail(&log)
                    );
                }
            }
            assert!(
                t0.elapsed() < START_LIMIT,
                "Apache Kafka node {} did not start in {START_LIMIT:?}: {}",
                self.id,
                tail(&log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGKILL (also when frozen), and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: a controlled shutdown (its leaderships move first); waits
    /// for the process to end (SIGKILL after two minutes, and says so).
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while c.try_wait().ok().flatten().is_none() {
            if t0.elapsed() > Duration::from_secs(120) {
                eprintln!(
                    "Apache Kafka node {} ignored SIGTERM for 120 s: killed",
                    self.id
                );
                let _ = c.kill();
                let _ = c.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for KafkaNode {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Apache Kafka nodes in one KRaft cluster, each broker and controller.
pub struct KafkaCluster {
    pub nodes: Vec<KafkaNode>,
    _dir: tempfile::TempDir,
}

impl KafkaCluster {
    /// One node, its own controller quorum: the single broker of the
    /// Kafka tests (replication factor 1).
    pub fn single() -> KafkaCluster {
        KafkaCluster::single_on(free_port(), None)
    }

    /// One node on `port` that tells clients to connect to `advertised`
    /// (host:port; a TLS proxy in front of it), or to itself.
    pub fn single_on(port: u16, advertised: Option<&str>) -> KafkaCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut node = KafkaNode::prepare(
            &dir.path().join("node-1"),
            &Node {
                id: 1,
                port,
                controller_port: free_port(),
                voters: None,
                cluster: cluster_id(),
                replicas: 1,
                advertised: advertised.map(str::to_string),
            },
        );
        node.start();
        KafkaCluster {
            nodes: vec![node],
            _dir: dir,
        }
    }

    /// `n` nodes, each a voter of the controller quorum; topics default to
    /// `n` replicas and `min.insync.replicas` 2. All start together (a node
    /// waits for a quorum before it serves).
    pub fn start(n: u32) -> KafkaCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, (_, c))| format!("{}@127.0.0.1:{c}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let id = cluster_id();
        let mut nodes: Vec<KafkaNode> = ports
            .iter()
            .enumerate()
            .map(|(i, &(p, c))| {
                let i = i as u32 + 1;
                KafkaNode::prepare(
                    &dir.path().join(format!("node-{i}")),
                    &Node {
                        id: i,
                        port: p,
                        controller_port: c,
                        voters: Some(voters.clone()),
                        cluster: id.clone(),
                        replicas: n,
                        advertised: None,
                    },
                )
            })
            .collect();
        for node in &mut nodes {
            node.spawn();
        }
        for node in &mut nodes {
            node.wait_started();
        }
        KafkaCluster { nodes, _dir: dir }
    }

    /// Every node's address, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(KafkaNode::addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs one of Kafka's command-line tools (a main class of its jars)
    /// against the cluster; returns what it printed on stdout.
    pub fn tool(&self, class: &str, args: &[&str]) -> String {
        let node = &self.nodes[0];
        let out = java(&node.libs, &node.dir, "tools-log4j2.properties")
            .arg(class)
            .args(args)
            .output()
            .expect("java");
        assert!(
            out.status.success(),
            "{class} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
