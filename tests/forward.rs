//! `mesos-gelf forward` against a real broker and real TCP/UDP listeners.

mod support;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use std::collections::HashMap;
use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

fn produce(addr: &str, topic: &str, msgs: &[Vec<u8>]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for m in msgs {
        loop {
            // One key, one partition: Kafka orders per partition (the logger
            // keys by container id the same way).
            match p.send(
                BaseRecord::<str, [u8]>::to(topic)
                    .key("container-1")
                    .payload(m),
            ) {
                Ok(()) => break,
                Err(_) => {
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

fn gelf(i: usize) -> Vec<u8> {
    format!(r#"{{"version":"1.1","host":"h","short_message":"message {i}","timestamp":1795470000.5,"level":6,"_seq":{i}}}"#).into_bytes()
}

/// A GELF TCP input: collects NUL-terminated frames from every connection.
struct Graylog {
    port: u16,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    resets: Arc<Mutex<Vec<usize>>>,
    /// When each connection was accepted.
    accepted: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
}

/// Closes `c` with an RST (SO_LINGER 0), as a crashing Graylog node or a
/// load balancer does: whatever its kernel holds unread is thrown away.
fn reset(c: std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: SO_LINGER takes a struct linger.
    unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    drop(c);
}

/// Adds the NUL-terminated frames in `bytes` to `out`; `cur` holds the
/// unfinished one.
fn split_frames(bytes: &[u8], cur: &mut Vec<u8>, out: &Mutex<Vec<Vec<u8>>>) {
    for &b in bytes {
        if b == 0 {
            out.lock().unwrap().push(std::mem::take(cur));
        } else {
            cur.push(b);
        }
    }
}

/// Reads frames from `c` into `out` until it holds `n`.
fn read_frames(c: &mut std::net::TcpStream, out: &Mutex<Vec<Vec<u8>>>, n: usize) {
    let mut cur = Vec::new();
    let mut buf = [0u8; 4096];
    while out.lock().unwrap().len() < n {
        let k = c.read(&mut buf).unwrap();
        assert!(k > 0, "the forwarder closed early");
        split_frames(&buf[..k], &mut cur, out);
    }
}

/// What a test Graylog received, frame by frame.
type Frames = Arc<Mutex<Vec<Vec<u8>>>>;

/// Messages 0..n (GELF, `_seq` i) in `topic`.
fn produce_numbered(broker: &Broker, topic: &str, n: usize) {
    let msgs: Vec<Vec<u8>> = (0..n).map(gelf).collect();
    produce(&broker.addr(), topic, &msgs);
}

/// A Graylog that takes one connection and reads `n` frames from it: its
/// port, the frames, and the connection once they are read (then it reads
/// no more; the caller decides how it ends).
fn one_connection(n: usize) -> (u16, Frames, std::thread::JoinHandle<std::net::TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let frames = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let f2 = frames.clone();
    let first = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        read_frames(&mut c, &f2, n);
        c
    });
    (port, frames, first)
}

/// Distinct frames received, and all of them (duplicates included).
fn distinct(frames: &Mutex<Vec<Vec<u8>>>) -> (usize, usize) {
    let f = frames.lock().unwrap();
    let d: std::collections::HashSet<&Vec<u8>> = f.iter().collect();
    (d.len(), f.len())
}

impl Graylog {
    /// A Graylog on `port` after one that died: what that one received
    /// counts as received.
    fn taking_over(port: u16, frames: &Mutex<Vec<Vec<u8>>>) -> Graylog {
        let g = Graylog::start_on(port);
        g.frames
            .lock()
            .unwrap()
            .extend(frames.lock().unwrap().drain(..));
        g
    }

    fn start_on(port: u16) -> Graylog {
        Graylog::start_resetting(port, &[])
    }

    /// A GELF TCP input that reads and processes every byte it receives,
    /// and resets the connection each time the frames it has received (in
    /// all, duplicates counted) pass one of `resets_at`.
    fn start_resetting(port: u16, resets_at: &[usize]) -> Graylog {
        let resets = Arc::new(Mutex::new(resets_at.to_vec()));
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        l.set_nonblocking(true).unwrap();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s, resets_kept) = (frames.clone(), stop.clone(), resets.clone());
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let accepted_kept = accepted.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        accepted.lock().unwrap().push(Instant::now());
                        let (f, s, resets) = (f.clone(), s.clone(), resets.clone());
                        std::thread::spawn(move || {
                            c.set_read_timeout(Some(Duration::from_millis(100)))
                                .unwrap();
                            let mut cur = Vec::new();
                            let mut buf = [0u8; 65536];
                            while !s.load(Ordering::Relaxed) {
                                match c.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        split_frames(&buf[..n], &mut cur, &f);
                                        let total = f.lock().unwrap().len();
                                        let mut r = resets.lock().unwrap();
                                        if r.first().is_some_and(|&at| total >= at) {
                                            r.remove(0);
                                            reset(c);
                                            return;
                                        }
                                    }
                                    Err(_) => continue,
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Graylog {
            port,
            frames,
            resets: resets_kept,
            accepted: accepted_kept,
            stop,
        }
    }

    fn resets_left(&self) -> Vec<usize> {
        self.resets.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.frames.lock().unwrap().len()
    }

    fn wait_for(&self, n: usize, limit: Duration) {
        let t0 = Instant::now();
        while self.count() < n {
            assert!(
                t0.elapsed() < limit,
                "only {} of {n} frames arrived",
                self.count()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Graylog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn spawn_forward(addr: &str, topic: &str, group: &str, to: &str, extra: &[&str]) -> Child {
    Command::new(bin())
        .args([
            "forward",
            "--set",
            &format!("kafka.bootstrap.servers={addr}"),
        ])
        .args([
            "--set",
            &format!("kafka.group.id={group}"),
            "--set",
            &format!("topic={topic}"),
        ])
        .args(["--set", "kafka.session.timeout.ms=6000", "--to", to])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stderr_of(c: &mut Child) -> String {
    let mut s = String::new();
    c.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

fn sigterm(c: &mut Child) -> std::process::ExitStatus {
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    c.wait().unwrap()
}

#[test]
fn hundred_thousand_messages_in_order_exactly_once_byte_identical() {
    let broker = Broker::start();
    let msgs: Vec<Vec<u8>> = (0..100_000).map(gelf).collect();
    produce(&broker.addr(), "fwd-tcp", &msgs);
    let g = Graylog::start_on(free_port());
    let mut f = spawn_forward(
        &broker.addr(),
        "fwd-tcp",
        "g1",
        &format!("tcp://127.0.0.1:{}", g.port),
        &[],
    );
    g.wait_for(100_000, Duration::from_secs(180));
    std::thread::sleep(Duration::from_millis(500));
    let st = sigterm(&mut f);
    assert!(st.success(), "clean exit on SIGTERM: {st}");
    let frames = g.frames.lock().unwrap();
    assert_eq!(frames.len(), 100_000, "exactly once");
    assert!(
        frames.iter().zip(&msgs).all(|(a, b)| a == b),
        "in order, byte-identical"
    );
}

#[test]
fn graylog_down_then_up_and_forwarder_killed_mid_stream_lose_nothing() {
    let broker = Broker::start();
    let n = 20_000;
    let msgs: Vec<Vec<u8>> = (0..n).map(gelf).collect();
    produce(&broker.addr(), "fwd-outage", &msgs);
    let port = free_port();
    let to = format!("tcp://127.0.0.1:{port}");
    let window = ["--commit-every", "500", "--resend-window-bytes", "100000"];
    let mut f = spawn_forward(&broker.addr(), "fwd-outage", "g2", &to, &window);
    std::thread::sleep(Duration::from_secs(3)); // Graylog is down meanwhile
    let g = Graylog::start_on(port);
    g.wait_for(n / 2, Duration::from_secs(180));
    unsafe { libc::kill(f.id() as i32, libc::SIGKILL) };
    f.wait().unwrap();
    let err = stderr_of(&mut f);
    assert!(err.contains("Graylog unreachable"), "{err}");
    assert_eq!(
        err.matches("Graylog unreachable").count(),
        1,
        "logged once per state change: {err}"
    );
    let before = g.count();
    let mut f2 = spawn_forward(&broker.addr(), "fwd-outage", "g2", &to, &window);
    let t0 = Instant::now();
    loop {
        let frames = g.frames.lock().unwrap();
        let distinct: std::collections::HashSet<&Vec<u8>> = frames.iter().collect();
        if distinct.len() == n {
            break;
        }
        drop(frames);
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "not everything arrived after the restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(sigterm(&mut f2).success());
    let dups = g.count() - n;
    // At most what was not committed: the resend window (100,000 bytes:
    // about 950 of these messages), what was read but not yet committed
    // (up to 500), one batch not yet flushed (500) and what the kernel had
    // not yet had acknowledged.
    assert!(
        dups <= 2_500,
        "{dups} duplicates (killed after {before} frames)"
    );
    eprintln!("forwarder SIGKILL after {before} frames: {dups} duplicates after restart");
}

/// Waits until every one of `n` distinct frames arrived.
fn wait_distinct(frames: &Mutex<Vec<Vec<u8>>>, n: usize, limit: Duration) -> (usize, usize) {
    let t0 = Instant::now();
    loop {
        let (d, all) = distinct(frames);
        if d == n {
            return (d, all);
        }
        assert!(
            t0.elapsed() < limit,
            "only {d} of {n} distinct messages arrived ({all} frames in all)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn graylog_resetting_the_connection_loses_nothing() {
    let broker = Broker::start();
    let n = 20_000;
    let msgs: Vec<Vec<u8>> = (0..n).map(gelf).collect();
    produce(&broker.addr(), "fwd-reset", &msgs);
    let resets = [3_000, 6_000, 9_000, 12_000, 15_000];
    let g = Graylog::start_resetting(free_port(), &resets);
    let mut f = spawn_forward(
        &broker.addr(),
        "fwd-reset",
        "g-reset",
        &format!("tcp://127.0.0.1:{}", g.port),
        &[],
    );
    let (_, all) = wait_distinct(&g.frames, n, Duration::from_secs(180));
    assert!(g.resets_left().is_empty(), "the server reset 5 times");
    assert!(sigterm(&mut f).success());
    let err = stderr_of(&mut f);
    assert!(err.contains("sending again"), "{err}");
    eprintln!("5 resets: {n} of {n} delivered, {} duplicates", all - n);
}

#[test]
fn graylog_killed_with_unread_data_in_its_buffer_loses_nothing() {
    let (broker, n) = (Broker::start(), 20_000);
    produce_numbered(&broker, "fwd-kill", n);
    // A Graylog that reads 5,000 messages, stalls (its receive buffer fills
    // with what the forwarder keeps writing, all of it acknowledged by its
    // kernel), and then dies: the unread bytes are gone.
    let (port, frames, first) = one_connection(5_000);
    let stalled = std::thread::spawn(move || {
        let c = first.join().unwrap();
        // Stalled: wait until the kernel holds unread data, then die.
        let t0 = Instant::now();
        let unread = loop {
            let mut unread: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int.
            unsafe {
                libc::ioctl(
                    std::os::fd::AsRawFd::as_raw_fd(&c),
                    libc::FIONREAD,
                    &mut unread,
                )
            };
            if unread > 50_000 {
                break unread;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "nothing piled up unread"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        (c, unread)
    });
    let mut f = spawn_forward(
        &broker.addr(),
        "fwd-kill",
        "g-kill",
        &format!("tcp://127.0.0.1:{port}"),
        &[],
    );
    let (c, unread) = stalled.join().unwrap();
    reset(c);
    let received = frames.lock().unwrap().len();
    let g = Graylog::taking_over(port, &frames);
    let (_, all) = wait_distinct(&g.frames, n, Duration::from_secs(180));
    assert!(sigterm(&mut f).success());
    eprintln!(
        "killed after {received} frames with {unread} bytes unread: {n} of {n} delivered, {} duplicates",
        all - n
    );
}

#[test]
fn invalid_messages_are_counted_and_skipped_or_wrapped() {
    let broker = Broker::start();
    let msgs: Vec<Vec<u8>> = vec![
        gelf(1),
        b"plain text, not json".to_vec(),
        b"[1,2,3]".to_vec(),
        br#"{"short_message":"no host"}"#.to_vec(),
        b"another plain line".to_vec(),
        gelf(2),
    ];
    produce(&broker.addr(), "fwd-invalid", &msgs);
    let g = Graylog::start_on(free_port());
    let to = format!("tcp://127.0.0.1:{}", g.port);
    let mut f = spawn_forward(
        &broker.addr(),
        "fwd-invalid",
        "g-skip",
        &to,
        &["--invalid", "skip"],
    );
    g.wait_for(2, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(1));
    assert!(sigterm(&mut f).success());
    assert_eq!(*g.frames.lock().unwrap(), vec![gelf(1), gelf(2)]);
    let err = stderr_of(&mut f);
    assert_eq!(err.matches("(not_json)").count(), 1, "once per kind: {err}");
    assert!(
        err.contains("(not_an_object)") && err.contains("(missing_host)"),
        "{err}"
    );

    let g2 = Graylog::start_on(free_port());
    let mut f = spawn_forward(
        &broker.addr(),
        "fwd-invalid",
        "g-wrap",
        &format!("tcp://127.0.0.1:{}", g2.port),
        &["--invalid", "wrap"],
    );
    g2.wait_for(6, Duration::from_secs(120));
    assert!(sigterm(&mut f).success());
    let frames = g2.frames.lock().unwrap();
    for fr in frames.iter() {
        assert_gelf(&serde_json::from_slice(fr).unwrap());
    }
    let wrapped: serde_json::Value = serde_json::from_slice(&frames[1]).unwrap();
    assert_eq!(wrapped["short_message"], "plain text, not json");
    assert_eq!(wrapped["_invalid_gelf"], "not_json");
    assert_eq!(wrapped["_kafka_offset"], 1);
}

fn udp_receive(sock: &UdpSocket, limit: Duration) -> Vec<u8> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut parts: HashMap<u8, Vec<u8>> = HashMap::new();
    let mut total = None;
    let t0 = Instant::now();
    let mut buf = [0u8; 65536];
    while t0.elapsed() < limit {
        let Ok(n) = sock.recv(&mut buf) else { continue };
        let d = &buf[..n];
        if d[..2] != [0x1e, 0x0f] {
            return d.to_vec();
        }
        total = Some(d[11]);
        parts.insert(d[10], d[12..].to_vec());
        if Some(parts.len() as u8) == total {
            return (0..total.unwrap())
                .flat_map(|i| parts[&i].clone())
                .collect();
        }
    }
    panic!(
        "no complete UDP message ({} chunks of {total:?})",
        parts.len()
    );
}

#[test]
fn udp_large_message_arrives_as_gelf_chunks_that_reassemble() {
    let broker = Broker::start();
    let big = format!(
        r#"{{"version":"1.1","host":"h","short_message":"{}"}}"#,
        "x".repeat(20_000)
    )
    .into_bytes();
    produce(&broker.addr(), "fwd-udp", std::slice::from_ref(&big));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let mut f = spawn_forward(
        &broker.addr(),
        "fwd-udp",
        "g-udp",
        &format!("udp://127.0.0.1:{port}"),
        &[],
    );
    let got = udp_receive(&sock, Duration::from_secs(120));
    assert!(sigterm(&mut f).success());
    assert_eq!(got, big);
    // Gzipped: the reassembled bytes decompress to the message.
    let mut f = spawn_forward(
        &broker.addr(),
        "fwd-udp",
        "g-udp-gz",
        &format!("udp://127.0.0.1:{port}"),
        &["--gzip"],
    );
    let got = udp_receive(&sock, Duration::from_secs(120));
    assert!(sigterm(&mut f).success());
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&got[..])
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain, big);
}

#[test]
fn forward_requires_a_group_and_a_valid_target() {
    let out = Command::new(bin())
        .args([
            "forward",
            "--set",
            "kafka.bootstrap.servers=127.0.0.1:9",
            "--to",
            "tcp://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kafka.group.id"));
    let out = Command::new(bin())
        .args([
            "forward",
            "--set",
            "kafka.bootstrap.servers=h:9",
            "--set",
            "kafka.group.id=g",
            "--to",
            "http://x:1",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scheme"));
}

#[test]
fn tls_delivers_nul_framed_messages_and_verifies_the_server() {
    use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};
    let d = tempfile::tempdir().unwrap();
    let (key, cert) = (d.path().join("key.pem"), d.path().join("cert.pem"));
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let mut acc = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    acc.set_private_key_file(&key, SslFiletype::PEM).unwrap();
    acc.set_certificate_chain_file(&cert).unwrap();
    let acc = acc.build();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let frames = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let f2 = frames.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let Ok(mut s) = acc.accept(c) else { continue };
            let mut cur = Vec::new();
            let mut buf = [0u8; 16384];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                for &b in &buf[..n] {
                    if b == 0 {
                        f2.lock().unwrap().push(std::mem::take(&mut cur));
                    } else {
                        cur.push(b);
                    }
                }
            }
        }
    });
    let broker = Broker::start();
    let msgs: Vec<Vec<u8>> = (0..1000).map(gelf).collect();
    produce(&broker.addr(), "fwd-tls", &msgs);
    // Without the CA the server is not trusted: nothing is delivered.
    let mut bad = spawn_forward(
        &broker.addr(),
        "fwd-tls",
        "g-tls-bad",
        &format!("tls://localhost:{port}"),
        &[],
    );
    std::thread::sleep(Duration::from_secs(4));
    assert!(sigterm(&mut bad).success());
    assert!(stderr_of(&mut bad).contains("TLS handshake"));
    assert!(frames.lock().unwrap().is_empty());
    let mut f = spawn_forward(
        &broker.addr(),
        "fwd-tls",
        "g-tls",
        &format!("tls://localhost:{port}"),
        &["--tls-ca", cert.to_str().unwrap()],
    );
    let t0 = Instant::now();
    while frames.lock().unwrap().len() < 1000 {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "TLS delivery stalled"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sigterm(&mut f).success());
    assert_eq!(*frames.lock().unwrap(), msgs);
}

/// A Graylog (or a proxy before it) that closes its side, stops reading
/// and keeps the connection: its FIN came before ours and proves nothing,
/// so what it did not read is sent again, never committed (helper-1: at a
/// stop it was taken for a confirmation; 5,000 of 20,000 reported
/// forwarded and lost).
#[test]
fn a_graylog_that_closed_its_side_first_confirms_nothing() {
    let (broker, n) = (Broker::start(), 20_000);
    produce_numbered(&broker, "fwd-half", n);
    let (port, frames, first) = one_connection(5_000);
    let to = format!("tcp://127.0.0.1:{port}");
    let mut f = spawn_forward(&broker.addr(), "fwd-half", "g-half", &to, &[]);
    let c = first.join().unwrap();
    // Closes its side, stops reading, keeps the connection.
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(sigterm(&mut f).success());
    let err = stderr_of(&mut f);
    assert!(!err.contains("stopped: 20000"), "{err}");
    reset(c);
    let g = Graylog::taking_over(port, &frames);
    let mut f = spawn_forward(&broker.addr(), "fwd-half", "g-half", &to, &[]);
    let (_, all) = wait_distinct(&g.frames, n, Duration::from_secs(180));
    assert!(sigterm(&mut f).success());
    eprintln!("half-closed peer: {n} of {n}, {} duplicates", all - n);
}

/// A reset while the topic is quiet is noticed without a message to write:
/// what Graylog had not read goes out again on a new connection at once
/// (helper-1: it waited for the next message, forever on a quiet topic).
#[test]
fn a_reset_on_a_quiet_topic_is_noticed_and_the_tail_sent_again() {
    let broker = Broker::start();
    let n = 20_000;
    produce_numbered(&broker, "fwd-quiet", n);
    let g = Graylog::start_resetting(free_port(), &[15_000]);
    let mut f = spawn_forward(
        &broker.addr(),
        "fwd-quiet",
        "g-quiet",
        &format!("tcp://127.0.0.1:{}", g.port),
        &[],
    );
    let (_, all) = wait_distinct(&g.frames, n, Duration::from_secs(120));
    assert!(g.resets_left().is_empty());
    assert!(sigterm(&mut f).success());
    eprintln!("reset on a quiet topic: {n} of {n}, {} duplicates", all - n);
}

/// A Graylog that keeps reading, slowly, and then dies: an age alone is no
/// proof (helper-1: after 30 s a time rule took 12,000 of its messages for
/// read while it had read 4,847). The tail is confirmed by a close, which a
/// slow reader cannot give in time: it is sent again, nothing is lost.
#[test]
fn a_slow_graylog_that_dies_loses_nothing() {
    let broker = Broker::start();
    let n = 20_000;
    produce_numbered(&broker, "fwd-slow", n);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let frames = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let f2 = frames.clone();
    // Reads 2 KB every 20 ms (100 KB/s) on each connection, for 6 s in all.
    let slow = std::thread::spawn(move || {
        l.set_nonblocking(true).unwrap();
        let t0 = Instant::now();
        let mut conns = Vec::new();
        while t0.elapsed() < Duration::from_secs(6) {
            if let Ok((c, _)) = l.accept() {
                c.set_nonblocking(true).unwrap();
                conns.push((c, Vec::new()));
            }
            for (c, cur) in conns.iter_mut() {
                let mut buf = [0u8; 2048];
                if let Ok(k) = c.read(&mut buf) {
                    split_frames(&buf[..k], cur, &f2);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        conns
    });
    let to = format!("tcp://127.0.0.1:{port}");
    let mut f = spawn_forward(
        &broker.addr(),
        "fwd-slow",
        "g-slow",
        &to,
        &["--confirm-after-s", "1"],
    );
    for (c, _) in slow.join().unwrap() {
        reset(c);
    }
    let g = Graylog::taking_over(port, &frames);
    let (_, all) = wait_distinct(&g.frames, n, Duration::from_secs(180));
    assert!(sigterm(&mut f).success());
    eprintln!("slow Graylog killed: {n} of {n}, {} duplicates", all - n);
}

/// With the topic quiet, Graylog confirms the tail by closing after ours:
/// the offsets are committed, so a forwarder SIGKILLed later sends nothing
/// again.
#[test]
fn a_confirmed_tail_is_committed_and_not_sent_again() {
    let broker = Broker::start();
    let n = 2_000;
    produce_numbered(&broker, "fwd-confirm", n);
    let g = Graylog::start_on(free_port());
    let to = format!("tcp://127.0.0.1:{}", g.port);
    let extra = ["--confirm-after-s", "1", "--stats-interval-s", "1"];
    let mut f = spawn_forward(&broker.addr(), "fwd-confirm", "g-confirm", &to, &extra);
    let log = log_lines(&mut f);
    wait_line(&log, &format!("forwarded {n} "));
    unsafe { libc::kill(f.id() as i32, libc::SIGKILL) };
    f.wait().unwrap();
    assert_eq!(g.count(), n, "each once so far");
    // A successor in the group starts at the committed end: it sends
    // nothing, and says so in its progress line.
    let mut f2 = spawn_forward(&broker.addr(), "fwd-confirm", "g-confirm", &to, &extra);
    let log = log_lines(&mut f2);
    wait_line(&log, "lag 0");
    assert!(sigterm(&mut f2).success());
    assert_eq!(g.count(), n, "nothing sent twice");
}

/// A Graylog (or a load balancer) that resets every connection at once:
/// reconnects back off (0.5 s, 1 s, 2 s ...), not a loop (helper-1: 43
/// reconnects in 20 s, each after 0-0.5 s).
#[test]
fn connections_that_fail_young_back_off() {
    let broker = Broker::start();
    let n = 1_000;
    produce_numbered(&broker, "fwd-flap", n);
    let g = Graylog::start_resetting(free_port(), &[1, 2, 3, 4]);
    let mut f = spawn_forward(
        &broker.addr(),
        "fwd-flap",
        "g-flap",
        &format!("tcp://127.0.0.1:{}", g.port),
        &[],
    );
    let (_, all) = wait_distinct(&g.frames, n, Duration::from_secs(120));
    assert!(sigterm(&mut f).success());
    let at = g.accepted.lock().unwrap().clone();
    assert!(at.len() >= 5, "{} connections", at.len());
    // After the 4 young failures: waits of 0.5 + 1 + 2 + 4 s at least
    // (less scheduling): before, all 5 connections came within a second.
    let spread = at[4].duration_since(at[0]);
    assert!(
        spread >= Duration::from_secs(6),
        "5 connections within {spread:?}"
    );
    eprintln!(
        "flapping Graylog: {n} of {n}, {} duplicates, 5 connections over {spread:?}",
        all - n
    );
}

/// The lines `c` writes to stderr, collected by a thread (the pipe stays
/// read, so its last lines never meet a closed pipe).
fn log_lines(c: &mut Child) -> Arc<Mutex<Vec<String>>> {
    use std::io::BufRead;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l2 = lines.clone();
    let err = c.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines() {
            match line {
                Ok(l) => l2.lock().unwrap().push(l),
                Err(_) => break,
            }
        }
    });
    lines
}

/// Waits (up to 2 minutes) for a logged line holding `what`.
fn wait_line(lines: &Mutex<Vec<String>>, what: &str) {
    let t0 = Instant::now();
    while !lines.lock().unwrap().iter().any(|l| l.contains(what)) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no line with {what:?} in {:?}",
            lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
