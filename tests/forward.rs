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
    stop: Arc<AtomicBool>,
}

impl Graylog {
    fn start_on(port: u16) -> Graylog {
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        l.set_nonblocking(true).unwrap();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (frames.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let (f, s) = (f.clone(), s.clone());
                        std::thread::spawn(move || {
                            c.set_read_timeout(Some(Duration::from_millis(100)))
                                .unwrap();
                            let mut cur = Vec::new();
                            let mut buf = [0u8; 65536];
                            while !s.load(Ordering::Relaxed) {
                                match c.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        for &b in &buf[..n] {
                                            if b == 0 {
                                                f.lock().unwrap().push(std::mem::take(&mut cur));
                                            } else {
                                                cur.push(b);
                                            }
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
        Graylog { port, frames, stop }
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
    let mut f = spawn_forward(
        &broker.addr(),
        "fwd-outage",
        "g2",
        &to,
        &["--commit-every", "500"],
    );
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
    let mut f2 = spawn_forward(
        &broker.addr(),
        "fwd-outage",
        "g2",
        &to,
        &["--commit-every", "500"],
    );
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
    // At most what was taken but not committed: one batch of 500 (plus one
    // in flight to the socket).
    assert!(
        dups <= 501,
        "{dups} duplicates (killed after {before} frames)"
    );
    eprintln!("forwarder SIGKILL after {before} frames: {dups} duplicates after restart");
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
