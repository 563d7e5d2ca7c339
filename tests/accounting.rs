//! Exact loss accounting: every stdout `_seq` of a container either
//! reaches Kafka or is named as lost by exactly one notice; never both,
//! never neither, whatever happened to the spool in between (the companion
//! dropped segments the publisher had already read, a segment was deleted
//! or damaged, the spool filesystem filled up so that the companion could
//! not even write its notices). See `publisher::ledger`.

mod support;

use mesos_gelf_logger::config::Config;
use mesos_gelf_logger::logger::Logger;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;

/// What Kafka got for one container's stdout.
#[derive(Default)]
struct Account {
    id: String,
    /// `stdout` or `stderr`.
    stream: String,
    arrived: BTreeSet<u64>,
    /// `_seq` -> the reason of every notice naming it.
    named: BTreeMap<u64, Vec<String>>,
    /// Notices seen, by (stream, notice `_seq`): a notice delivered twice
    /// (at least once) is counted once.
    notices: BTreeSet<(String, u64)>,
    corrected: u64,
    /// `_seq`s notices called `_earlier_seqs` (accounted for before a
    /// publisher restart: shipped, or named by an earlier notice).
    earlier: BTreeSet<u64>,
    /// The largest running total each reason reached in the companion's
    /// notices (`_lost_total_<reason>`).
    totals: BTreeMap<String, u64>,
    /// Every `_seq` below this is accounted for ([`Account::complete`]).
    next: u64,
}

fn ranges_of(v: &Value) -> Vec<(u64, u64)> {
    match v["_lost_seq_ranges"].as_str() {
        Some(t) => parse_ranges(t),
        None => match (v["_lost_first_seq"].as_u64(), v["_lost_last_seq"].as_u64()) {
            (Some(a), Some(b)) => vec![(a, b)],
            _ => Vec::new(),
        },
    }
}

/// `a-b,c,d-e` as inclusive ranges (the notices' text form).
fn parse_ranges(t: &str) -> Vec<(u64, u64)> {
    mesos_gelf_logger::spool::notice::parse_seqs_text(t).collect()
}

impl Account {
    fn new(id: &str) -> Account {
        Account::of(id, "stdout")
    }

    fn of(id: &str, stream: &str) -> Account {
        Account {
            id: id.to_string(),
            stream: stream.to_string(),
            next: 1,
            ..Default::default()
        }
    }

    fn add(&mut self, m: &Consumed) {
        let v = m.json();
        if v["_container_id"] != self.id.as_str() {
            return;
        }
        let stream = v["_stream"].as_str().unwrap_or("").to_string();
        let seq = v["_seq"].as_u64().unwrap_or(0);
        match stream.as_str() {
            s if s == self.stream => {
                self.arrived.insert(seq);
            }
            "mesos-gelf" | "mesos-gelf-publisher" => {
                if v["_lost_stream"] != self.stream.as_str() || !self.notices.insert((stream, seq))
                {
                    return;
                }
                if std::env::var("ACCT_DEBUG").is_ok() {
                    eprintln!("notice: {v}");
                }
                if v["_shipped_seqs"].is_string() {
                    self.corrected += 1;
                }
                for (a, b) in parse_ranges(v["_earlier_seqs"].as_str().unwrap_or("")) {
                    self.earlier.extend(a..=b);
                }
                if v["_stream"] == "mesos-gelf" {
                    for (k, t) in v.as_object().unwrap() {
                        if let (Some(r), Some(t)) = (k.strip_prefix("_lost_total_"), t.as_u64()) {
                            let e = self.totals.entry(r.to_string()).or_default();
                            *e = (*e).max(t);
                        }
                    }
                }
                let reason = v["_loss_reason"].as_str().unwrap_or("?").to_string();
                for (a, b) in ranges_of(&v) {
                    for s in a..=b {
                        self.named.entry(s).or_default().push(reason.clone());
                    }
                }
            }
            _ => {}
        }
    }

    /// Every `_seq` of 1..=n arrived or is named. Called after every
    /// message: it resumes from the lowest `_seq` still unaccounted, so a
    /// run costs O(n) in all (scanning from 1 each time was O(n) per
    /// message: with 400,000 `_seq`s named early, minutes of CPU on a busy
    /// machine, and the test timed out while nothing was missing).
    fn complete(&mut self, n: u64) -> bool {
        while self.next <= n
            && (self.arrived.contains(&self.next) || self.named.contains_key(&self.next))
        {
            self.next += 1;
        }
        self.next > n
    }

    fn lost(&self, reason: &str) -> u64 {
        self.named.values().filter(|r| r[0] == reason).count() as u64
    }

    /// Every `_seq` of 1..=n arrived or is named, exactly once.
    fn assert_exact(&self, n: u64) {
        let missing: Vec<u64> = (1..=n)
            .filter(|s| !self.arrived.contains(s) && !self.named.contains_key(s))
            .take(10)
            .collect();
        assert!(
            missing.is_empty(),
            "neither shipped nor named: {missing:?}..."
        );
        let both: Vec<u64> = self
            .named
            .keys()
            .filter(|s| self.arrived.contains(s))
            .copied()
            .take(10)
            .collect();
        assert!(both.is_empty(), "shipped and named as lost: {both:?}...");
        let twice: Vec<(&u64, &Vec<String>)> = self
            .named
            .iter()
            .filter(|(_, r)| r.len() > 1)
            .take(5)
            .collect();
        assert!(twice.is_empty(), "named twice: {twice:?}");
        assert!(
            self.arrived
                .iter()
                .chain(self.named.keys())
                .all(|&s| (1..=n).contains(&s)),
            "a _seq beyond {n}"
        );
        let mut by: BTreeMap<&str, u64> = BTreeMap::new();
        for r in self.named.values() {
            *by.entry(r[0].as_str()).or_default() += 1;
        }
        eprintln!(
            "{} {}: {} shipped, lost {by:?}, {} notices corrected",
            self.id,
            self.stream,
            self.arrived.len(),
            self.corrected
        );
    }
}

fn consume_account(addr: &str, topic: &str, id: &str, n: u64) -> Account {
    consume_stream(addr, topic, id, "stdout", n)
}

fn consume_stream(addr: &str, topic: &str, id: &str, stream: &str, n: u64) -> Account {
    let mut acc = Account::of(id, stream);
    consume_until(
        addr,
        topic,
        Duration::from_secs(180),
        // Time for a duplicate or a second notice to show up.
        Duration::from_secs(2),
        |m| {
            acc.add(m);
            acc.complete(n)
        },
    );
    acc
}

fn logger(pairs: &[(&str, &str)]) -> Logger {
    Logger::new(Config::from_pairs(pairs).unwrap(), bin()).unwrap()
}

fn prepare(l: &Logger, d: &Path, id: &str) -> (std::fs::File, PathBuf) {
    let sbx = d.join(id);
    std::fs::create_dir_all(&sbx).unwrap();
    let json = serde_json::json!({"directory": sbx.display().to_string()}).to_string();
    let p = l.prepare(id, &json, None).unwrap();
    drop(std::fs::File::from(p.stderr));
    (std::fs::File::from(p.stdout), sbx)
}

fn numbered(from: u64, to: u64) -> Vec<u8> {
    let mut s = String::new();
    for i in from..=to {
        s.push_str(&format!("line {i}\n"));
    }
    s.into_bytes()
}

#[test]
fn segments_dropped_at_the_cap_after_they_were_read_are_not_reported_lost() {
    // The broker freezes: nothing is acknowledged, so the checkpoint stays
    // and the companion, at its 1 MB cap, drops its oldest segments: the
    // very records the publisher has already read and holds in flight.
    // They reach Kafka once the broker thaws; the companion's notices are
    // corrected to the records really lost.
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let mut l = logger(&[
        ("kafka.bootstrap.servers", &broker.addr()),
        ("spool_dir", spool.to_str().unwrap()),
        ("topic", "acct-cap"),
        ("spool_max_size", "1MB"),
        ("spool_segment_size", "128KB"),
    ]);
    l.initialize(None).unwrap();
    let (mut out, _) = prepare(&l, d.path(), "c-cap");
    out.write_all(b"line 1\n").unwrap();
    let mut first = Account::new("c-cap");
    consume_until(
        &broker.addr(),
        "acct-cap",
        Duration::from_secs(60),
        Duration::ZERO,
        |m| {
            first.add(m);
            first.complete(1)
        },
    );
    broker.freeze();
    let n = 100_000;
    out.write_all(&numbered(2, n)).unwrap();
    drop(out);
    assert!(wait_for_file(
        &spool.join("c-cap/data/done"),
        Duration::from_secs(60)
    ));
    broker.thaw();
    let acc = consume_account(&broker.addr(), "acct-cap", "c-cap", n);
    acc.assert_exact(n);
    assert!(acc.lost("spool_cap") > 0, "the cap dropped records");
    assert_eq!(
        acc.totals["spool_cap"],
        acc.lost("spool_cap"),
        "the notices' running total counts what they name"
    );
    // The agent's counter says the same number.
    let t0 = std::time::Instant::now();
    loop {
        let m = l.metrics().snapshot();
        if m["records_dropped/spool_cap"] == acc.lost("spool_cap") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "metrics {} vs named {}",
            m["records_dropped/spool_cap"],
            acc.lost("spool_cap")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A finished spool of `n` lines of `id`, with no publisher.
fn spool_of(spool: &Path, d: &Path, id: &str, n: u64, extra: &[(&str, &str)]) {
    let mut pairs = vec![("spool_dir", spool.to_str().unwrap()), ("topic", "acct")];
    pairs.extend_from_slice(extra);
    let l = logger(&pairs);
    let (mut out, _) = prepare(&l, d, id);
    // Write errors are the companion's to report, not the test's.
    let _ = out.write_all(&numbered(1, n));
    drop(out);
    assert!(wait_for_file(
        &spool.join(id).join("data/done"),
        Duration::from_secs(60)
    ));
}

fn publish_until_empty(spool: &Path, addr: &str) -> Ran {
    run_bounded(
        Command::new(bin())
            .args(["publish", "--until-empty", "--spool-dir"])
            .arg(spool)
            .args(["--set", &format!("kafka.bootstrap.servers={addr}")]),
        Duration::from_secs(180),
    )
}

#[test]
fn deleted_damaged_and_lost_tail_segments_are_named_missing() {
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let n = 40_000;
    spool_of(
        &spool,
        d.path(),
        "c-damaged",
        n,
        &[("spool_segment_size", "64KB")],
    );
    let data = spool.join("c-damaged/data");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 8, "{} segments", segs.len());
    // A segment deleted, one damaged in its middle, and the last one gone.
    std::fs::remove_file(&segs[2]).unwrap();
    let mut bytes = std::fs::read(&segs[4]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&segs[4], &bytes).unwrap();
    std::fs::remove_file(segs.last().unwrap()).unwrap();
    let ran = publish_until_empty(&spool, &broker.addr());
    ran.assert_code(0);
    assert!(
        ran.stderr().contains("reported as `missing`"),
        "{}",
        ran.stderr()
    );
    let acc = consume_account(&broker.addr(), "acct", "c-damaged", n);
    acc.assert_exact(n);
    assert!(acc.lost("missing") > 0);
    assert!(
        acc.named.contains_key(&n),
        "the lost tail is named, up to the last line"
    );
}

#[test]
fn a_spool_filesystem_too_full_for_notices_still_names_every_lost_line() {
    // No publisher while the task writes, and the spool filesystem fills
    // up (something else took the space) just after the container started:
    // the companion loses records and cannot write its notices, not even at
    // the end. The publisher finds the gaps and the lost tail (the
    // companion's `done` names its last `_seq`, in room made at start).
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&d.path().join("spoolfs"), 1024);
    let spool = fs.0.join("spool");
    let l = logger(&[
        ("spool_dir", spool.to_str().unwrap()),
        ("topic", "acct-full"),
    ]);
    let (mut out, sbx) = prepare(&l, d.path(), "c-full");
    out.write_all(b"line 1\n").unwrap();
    // The first line reached the spool; then the filesystem is full.
    let data = spool.join("c-full/data");
    let t0 = std::time::Instant::now();
    while !std::fs::read_dir(&data).unwrap().flatten().any(|e| {
        e.file_name().to_string_lossy().starts_with("seg-") && e.metadata().unwrap().len() > 8
    }) {
        assert!(t0.elapsed() < Duration::from_secs(30), "first line spooled");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ballast = fs.fill(0);
    let n = 20_000;
    out.write_all(&numbered(2, n)).unwrap();
    drop(out);
    assert!(wait_for_file(&data.join("done"), Duration::from_secs(60)));
    // Space again, for the publisher's checkpoints (the companion is gone).
    std::fs::remove_file(ballast).unwrap();
    let ran = publish_until_empty(&spool, &broker.addr());
    ran.assert_code(0);
    let acc = consume_account(&broker.addr(), "acct-full", "c-full", n);
    acc.assert_exact(n);
    assert!(acc.lost("missing") > 0, "named by the publisher");
    assert_eq!(
        std::fs::read_to_string(sbx.join("stdout"))
            .unwrap()
            .lines()
            .count() as u64,
        n,
        "the sandbox file has every line"
    );
}

/// `mesos-gelf run` of `script` in the background, its spool in `spool`.
fn spawn_run(
    spool: &Path,
    sbx: &Path,
    addr: &str,
    topic: &str,
    id: &str,
    extra: &[&str],
    script: &str,
) -> std::process::Child {
    let mut c = Command::new(bin());
    c.args(["run", "--container-id", id, "--sandbox"])
        .arg(sbx)
        .args(["--set", &format!("spool_dir={}", spool.display())])
        .args(["--set", &format!("kafka.bootstrap.servers={addr}")])
        .args(["--set", &format!("topic={topic}")]);
    for e in extra {
        c.args(["--set", e]);
    }
    // run's own messages, next to the sandbox (never in a spool
    // filesystem under test): see `run_said`.
    let said = std::fs::File::create(sbx.with_extension("run-stderr")).unwrap();
    c.args(["--", "sh", "-c", script])
        .stdout(std::process::Stdio::null())
        .stderr(said)
        .spawn()
        .unwrap()
}

/// What `run` started by [`spawn_run`] with this sandbox wrote to stderr.
fn run_said(sbx: &Path) -> String {
    std::fs::read_to_string(sbx.with_extension("run-stderr")).unwrap_or_default()
}

fn lines_in(f: &Path) -> u64 {
    std::fs::read(f)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
        .unwrap_or(0)
}

fn wait_lines(f: &Path, n: u64) {
    let t0 = std::time::Instant::now();
    while lines_in(f) < n {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{} has {} of {n} lines",
            f.display(),
            lines_in(f)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (60 s at most) until the stored account in `ledger` (a
/// container's `<spool>/<key>/ledger`) satisfies `ok`; returns its text.
fn wait_ledger(ledger: &Path, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let t0 = std::time::Instant::now();
    loop {
        let s = std::fs::read_to_string(ledger).unwrap_or_default();
        if ok(&s) {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{what}: the stored account is {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_publisher_restart_never_turns_shipped_lines_into_losses() {
    // The agent (here `run`) dies after its lines were delivered and
    // checkpointed; the container ends while no publisher runs. The next
    // publisher resumes with the account stored at the checkpoint, so the
    // `done` marker's last `_seq`s are not mistaken for a lost tail.
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let go = d.path().join("go");
    let mut run = spawn_run(
        &spool,
        &d.path().join("sbx"),
        &broker.addr(),
        "acct-restart",
        "c-restart",
        &[],
        &format!(
            "seq 1 1000; seq 1 10 >&2; while [ ! -e {} ]; do sleep 0.05; done",
            go.display()
        ),
    );
    // Delivered and checkpointed: the stored account says so.
    wait_ledger(&spool.join("c-restart/ledger"), "never checkpointed", |s| {
        s.starts_with("stdout=1000 stderr=10 ")
    });
    assert!(wait_for_file(
        &spool.join("c-restart/data/checkpoint"),
        Duration::from_secs(30)
    ));
    run.kill().unwrap();
    run.wait().unwrap();
    std::fs::write(&go, b"").unwrap();
    assert!(wait_for_file(
        &spool.join("c-restart/data/done"),
        Duration::from_secs(60)
    ));
    let ran = publish_until_empty(&spool, &broker.addr());
    ran.assert_code(0);
    assert!(!ran.stderr().contains("missing"), "{}", ran.stderr());
    for (stream, n) in [("stdout", 1000), ("stderr", 10)] {
        let acc = consume_stream(&broker.addr(), "acct-restart", "c-restart", stream, n);
        acc.assert_exact(n);
        assert!(acc.named.is_empty(), "{stream}: nothing lost");
    }
}

#[test]
fn a_notice_reported_again_after_a_freeze_names_each_line_once() {
    // A frozen broker and a 64 KB cap: the companion's first notice is
    // read (and sent into the freeze), then its segment goes at the cap
    // and the companion reports its losses again, merged into a later
    // notice. Each lost `_seq` is still named once.
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let sbx = d.path().join("sbx");
    let g = |i: u32| d.path().join(format!("go{i}"));
    let wait = |i: u32| format!("while [ ! -e {} ]; do sleep 0.05; done", g(i).display());
    let n = 30_010;
    let mut run = spawn_run(
        &spool,
        &sbx,
        &broker.addr(),
        "acct-again",
        "c-again",
        &["spool_max_size=64KB"],
        &format!(
            "seq 1 100; {}; seq 101 3000; {}; seq 3001 30000; {}; seq 30001 30010",
            wait(1),
            wait(2),
            wait(3)
        ),
    );
    let mut first = Account::new("c-again");
    consume_until(
        &broker.addr(),
        "acct-again",
        Duration::from_secs(60),
        Duration::ZERO,
        |m| {
            first.add(m);
            first.complete(100)
        },
    );
    broker.freeze();
    std::fs::write(g(1), b"").unwrap();
    wait_lines(&sbx.join("stdout"), 3000);
    std::fs::write(g(2), b"").unwrap();
    wait_lines(&sbx.join("stdout"), 30_000);
    broker.thaw();
    std::fs::write(g(3), b"").unwrap();
    assert!(wait_child(&mut run, Duration::from_secs(120)).is_some_and(|s| s.success()));
    let acc = consume_account(&broker.addr(), "acct-again", "c-again", n);
    acc.assert_exact(n);
    assert!(acc.lost("spool_cap") > 0);
    assert_eq!(acc.totals["spool_cap"], acc.lost("spool_cap"));
}

#[test]
fn budget_drops_during_a_freeze_never_name_lines_read_after_all() {
    // A 2 MB spool filesystem and a frozen broker: the companion keeps the
    // filesystem's free space by dropping its oldest segments, including
    // one the publisher is still reading (unlinked under it); the
    // publisher drops segments for its budget, with the companion's
    // notices in them, and reports those again. Records the reader still
    // got are never named lost.
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&d.path().join("spoolfs"), 2048);
    let spool = fs.0.join("spool");
    let sbx = d.path().join("sbx");
    let go = d.path().join("go");
    // The topic exists before the freeze.
    let mut warm = Account::new("c-warm");
    let mut w = spawn_run(
        &d.path().join("spool-warm"),
        &d.path().join("sbx-warm"),
        &broker.addr(),
        "acct-budget",
        "c-warm",
        &[],
        "echo warm",
    );
    let warm_end = wait_child(&mut w, Duration::from_secs(60));
    // Shown with a failure below.
    eprintln!(
        "warm run ended {warm_end:?}, said: {}",
        run_said(&d.path().join("sbx-warm"))
    );
    assert!(warm_end.is_some_and(|s| s.success()));
    consume_until(
        &broker.addr(),
        "acct-budget",
        Duration::from_secs(60),
        Duration::ZERO,
        |m| {
            warm.add(m);
            warm.complete(1)
        },
    );
    broker.freeze();
    let mut run = spawn_run(
        &spool,
        &sbx,
        &broker.addr(),
        "acct-budget",
        "c-budget",
        &[],
        &format!(
            "seq 1 400000; seq 1 2000 >&2; while [ ! -e {} ]; do sleep 0.05; done; seq 400001 400100",
            go.display()
        ),
    );
    wait_lines(&sbx.join("stdout"), 400_000);
    wait_lines(&sbx.join("stderr"), 2000);
    broker.thaw();
    std::fs::write(&go, b"").unwrap();
    assert!(wait_child(&mut run, Duration::from_secs(180)).is_some_and(|s| s.success()));
    for (stream, n) in [("stdout", 400_100), ("stderr", 2000)] {
        let acc = consume_stream(&broker.addr(), "acct-budget", "c-budget", stream, n);
        acc.assert_exact(n);
    }
}

#[test]
fn a_publisher_killed_between_two_rounds_of_losses_keeps_the_account_exact() {
    // Losses at the cap while the broker is frozen are shipped and
    // checkpointed; the publisher (`run`) is then killed, and the companion
    // loses more at its cap with no publisher at all. Its later notices
    // carry running totals that count the first round too, and may report
    // first-round losses again: the next publisher, resuming from the
    // stored account, names every lost line once and keeps the totals equal
    // to what was named (helper-3 saw 27,394 claimed against 11,983 named).
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let sbx = d.path().join("sbx");
    let g = |i: u32| d.path().join(format!("go{i}"));
    let wait = |i: u32| format!("while [ ! -e {} ]; do sleep 0.05; done", g(i).display());
    let n = 60_010;
    let mut run = spawn_run(
        &spool,
        &sbx,
        &broker.addr(),
        "acct-kill",
        "c-kill",
        &["spool_max_size=64KB"],
        &format!(
            "seq 1 100; {}; seq 101 30000; {}; seq 30001 60000; {}; seq 60001 60010",
            wait(1),
            wait(2),
            wait(3)
        ),
    );
    let mut first = Account::new("c-kill");
    consume_until(
        &broker.addr(),
        "acct-kill",
        Duration::from_secs(60),
        Duration::ZERO,
        |m| {
            first.add(m);
            first.complete(100)
        },
    );
    broker.freeze();
    std::fs::write(g(1), b"").unwrap();
    wait_lines(&sbx.join("stdout"), 30_000);
    broker.thaw();
    // Round one is shipped or named, and checkpointed with its account.
    consume_until(
        &broker.addr(),
        "acct-kill",
        Duration::from_secs(120),
        Duration::ZERO,
        |m| {
            first.add(m);
            first.complete(30_000)
        },
    );
    assert!(first.lost("spool_cap") > 0, "round one lost nothing");
    wait_ledger(
        &spool.join("c-kill/ledger"),
        "round one never checkpointed",
        |s| s.starts_with("stdout=30000 "),
    );
    run.kill().unwrap();
    run.wait().unwrap();
    // Round two: no publisher; the companion drops at its cap alone.
    std::fs::write(g(2), b"").unwrap();
    wait_lines(&sbx.join("stdout"), 60_000);
    std::fs::write(g(3), b"").unwrap();
    assert!(wait_for_file(
        &spool.join("c-kill/data/done"),
        Duration::from_secs(60)
    ));
    let ran = publish_until_empty(&spool, &broker.addr());
    ran.assert_code(0);
    let acc = consume_account(&broker.addr(), "acct-kill", "c-kill", n);
    acc.assert_exact(n);
    assert!(
        acc.named.keys().any(|&s| s > 30_000),
        "round two lost nothing"
    );
    // The running total counts every line named once. It may also count
    // lines the first publisher shipped from the segment the companion
    // dropped after the checkpoint: the resumed publisher calls them
    // `_earlier_seqs` but cannot tell them from lines an earlier notice
    // named (src/publisher/ledger.rs), so at most those are over.
    let (total, named) = (acc.totals["spool_cap"], acc.lost("spool_cap"));
    assert!(
        total >= named && total - named <= acc.earlier.len() as u64,
        "total {total}, named {named}, earlier {}",
        acc.earlier.len()
    );
}

#[test]
fn rate_limit_and_cap_losses_together_each_keep_their_reason_and_total() {
    // A burst over the rate limit while the broker is frozen: the limit
    // cuts lines out of the spool here and there, and the cap then drops
    // the segments around those gaps, on both streams at once. Every line
    // is named once, under the reason that really lost it, and each
    // reason's running total equals what was named for it.
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let sbx = d.path().join("sbx");
    let g = |i: u32| d.path().join(format!("go{i}"));
    let wait = |i: u32| format!("while [ ! -e {} ]; do sleep 0.05; done", g(i).display());
    let mut run = spawn_run(
        &spool,
        &sbx,
        &broker.addr(),
        "acct-rate-cap",
        "c-rc",
        &[
            "spool_max_size=64KB",
            "rate_limit_lines=20000",
            "rate_limit_burst=1",
        ],
        &format!(
            "seq 1 100; {}; i=101; while [ $i -le 150000 ]; do seq $i $((i + 9999)); seq $i $((i + 99)) >&2; i=$((i + 10000)); done; {}; seq 150101 150110; seq 150001 150010 >&2",
            wait(1),
            wait(2)
        ),
    );
    let mut first = Account::new("c-rc");
    consume_until(
        &broker.addr(),
        "acct-rate-cap",
        Duration::from_secs(60),
        Duration::ZERO,
        |m| {
            first.add(m);
            first.complete(100)
        },
    );
    broker.freeze();
    std::fs::write(g(1), b"").unwrap();
    wait_lines(&sbx.join("stdout"), 150_100);
    broker.thaw();
    std::fs::write(g(2), b"").unwrap();
    assert!(wait_child(&mut run, Duration::from_secs(120)).is_some_and(|s| s.success()));
    let mut named_by_reason: BTreeMap<String, u64> = BTreeMap::new();
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for (stream, n) in [("stdout", 150_110), ("stderr", 1_510)] {
        let acc = consume_stream(&broker.addr(), "acct-rate-cap", "c-rc", stream, n);
        acc.assert_exact(n);
        for reason in ["spool_cap", "rate_limit"] {
            *named_by_reason.entry(reason.into()).or_default() += acc.lost(reason);
        }
        for (r, t) in &acc.totals {
            let e = totals.entry(r.clone()).or_default();
            *e = (*e).max(*t);
        }
    }
    assert!(named_by_reason["spool_cap"] > 0, "{named_by_reason:?}");
    assert!(named_by_reason["rate_limit"] > 0, "{named_by_reason:?}");
    for reason in ["spool_cap", "rate_limit"] {
        assert_eq!(
            totals.get(reason).copied().unwrap_or(0),
            named_by_reason[reason],
            "{reason}: running total against lines named (all: {totals:?} / {named_by_reason:?})"
        );
    }
}

#[test]
fn lines_named_before_a_publisher_restart_are_not_named_again_as_missing() {
    // Rate-limited stderr lines (never spooled) are named by a notice that
    // Kafka acknowledges; the cap then drops the segment holding that
    // notice, and the publisher is killed. Its successor resumes after the
    // checkpoint, sees the rate-limited `_seq`s as a gap, and must know
    // from the stored account that they were named already.
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let sbx = d.path().join("sbx");
    let g = |i: u32| d.path().join(format!("go{i}"));
    let wait = |i: u32| format!("while [ ! -e {} ]; do sleep 0.05; done", g(i).display());
    let mut run = spawn_run(
        &spool,
        &sbx,
        &broker.addr(),
        "acct-named",
        "c-named",
        &[
            "spool_max_size=64KB",
            "rate_limit_lines=200",
            "rate_limit_burst=1",
        ],
        &format!(
            "seq 1 300 >&2; {}; seq 1 20000; {}; seq 301 310 >&2",
            wait(1),
            wait(2)
        ),
    );
    // The rate-limit notice is acknowledged and stored with the account.
    let stored = wait_ledger(
        &spool.join("c-named/ledger"),
        "the rate-limit notice was never stored as named",
        |s| s.contains(" named.stderr="),
    );
    assert!(stored.starts_with("stdout=0 stderr=200 "), "{stored}");
    broker.freeze();
    std::fs::write(g(1), b"").unwrap();
    wait_lines(&sbx.join("stdout"), 20_000);
    // The notice's segment went at the cap (64 KB of 20,000 lines).
    run.kill().unwrap();
    run.wait().unwrap();
    broker.thaw();
    std::fs::write(g(2), b"").unwrap();
    assert!(wait_for_file(
        &spool.join("c-named/data/done"),
        Duration::from_secs(60)
    ));
    let ran = publish_until_empty(&spool, &broker.addr());
    ran.assert_code(0);
    assert!(!ran.stderr().contains("missing"), "{}", ran.stderr());
    let acc = consume_stream(&broker.addr(), "acct-named", "c-named", "stderr", 310);
    acc.assert_exact(310);
    assert_eq!(acc.lost("rate_limit"), 100, "201-300");
    assert_eq!(acc.lost("missing"), 0);
}

#[test]
fn budget_notices_left_by_a_stopped_publisher_are_not_named_again_as_missing() {
    // helper-1: `run` dropped segments for the budget while Kafka was
    // unreachable; its `budget` notices waited in publisher-notices.json
    // when it was stopped. The next publisher sent them, and also named
    // the same 78,847 `_seq`s `missing` (its ledger did not know them).
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let go = d.path().join("go");
    let n = 100_000;
    let mut run = spawn_run(
        &spool,
        &d.path().join("sbx"),
        &format!("127.0.0.1:{}", free_port()),
        "acct-pending",
        "c-pending",
        &["spool_max_total_size=3MB", "spool_segment_size=256KB"],
        &format!(
            "seq 1 {n}; while [ ! -e {} ]; do sleep 0.05; done",
            go.display()
        ),
    );
    // The budget dropped segments and the notice waits for Kafka.
    let notices = spool.join("c-pending/publisher-notices.json");
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&notices).is_ok_and(|s| s.contains("budget")) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no budget notice waiting in {}",
            notices.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Stopped (a second signal: at once), the container ends meanwhile.
    for _ in 0..2 {
        unsafe { libc::kill(run.id() as i32, libc::SIGINT) };
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(wait_child(&mut run, Duration::from_secs(60)).is_some());
    std::fs::write(&go, b"").unwrap();
    assert!(wait_for_file(
        &spool.join("c-pending/data/done"),
        Duration::from_secs(60)
    ));
    let ran = publish_until_empty(&spool, &broker.addr());
    ran.assert_code(0);
    let acc = consume_account(&broker.addr(), "acct-pending", "c-pending", n);
    acc.assert_exact(n);
    assert!(acc.lost("budget") > 0, "the budget dropped nothing");
    assert_eq!(acc.lost("missing"), 0, "{}", ran.stderr());
}

#[test]
fn an_outage_on_a_small_spool_filesystem_keeps_the_newest_lines_and_says_what_was_lost() {
    // helper-2: on a 16 MB filesystem with the default 8 MB segments, an
    // outage lost all 100,000 lines (31,050 `budget`, 68,950 `missing`):
    // the floor dropped the segment the reader held open (its space stays
    // taken until closed), then the budget the newest one. Segments now
    // stay under a sixteenth of the room. And `run`, stopped, said "every
    // line ... was delivered" when none was.
    let d = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&d.path().join("fs"), 16 * 1024);
    let spool = fs.0.join("spool");
    let go = d.path().join("go");
    let n: u64 = 100_000;
    let script = format!(
        "i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo \"$i {}\"; done; while [ ! -e {} ]; do sleep 0.05; done",
        "x".repeat(190),
        go.display()
    );
    let mut run = Command::new(bin())
        .args(["run", "--container-id", "c-small", "--sandbox"])
        .arg(d.path().join("sbx"))
        .args(["--set", &format!("spool_dir={}", spool.display())])
        .args([
            "--set",
            &format!("kafka.bootstrap.servers=127.0.0.1:{}", free_port()),
        ])
        .args(["--set", "topic=acct-small"])
        // One sandbox file to count the lines in.
        .args(["--set", "sandbox_max_size=100MB"])
        .args(["--", "sh", "-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_lines(&d.path().join("sbx/stdout"), n);
    // The segments are small against the room.
    let seg = std::fs::read_dir(spool.join("c-small/data"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .map(|e| e.metadata().unwrap().len())
        .max()
        .unwrap();
    assert!(seg <= 1 << 20, "a segment of {seg} bytes on a 16 MB spool");
    // Stopped while the output is still open: it names what was lost.
    unsafe { libc::kill(run.id() as i32, libc::SIGTERM) };
    unsafe { libc::kill(run.id() as i32, libc::SIGTERM) };
    assert!(wait_child(&mut run, Duration::from_secs(60)).is_some());
    let mut err = String::new();
    std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        !err.contains("was delivered,") || err.contains("named lost"),
        "run claims delivery: {err}"
    );
    std::fs::write(&go, b"").unwrap();
    assert!(wait_for_file(
        &spool.join("c-small/data/done"),
        Duration::from_secs(60)
    ));
    let broker = Broker::start();
    let ran = publish_until_empty(&spool, &broker.addr());
    ran.assert_code(0);
    let acc = consume_account(&broker.addr(), "acct-small", "c-small", n);
    acc.assert_exact(n);
    // Most of what fits (about 15 MB of 232-byte frames) is kept, and the
    // newest line with it.
    assert!(
        acc.arrived.len() as u64 >= 30_000,
        "only {} of {n} kept",
        acc.arrived.len()
    );
    assert!(acc.arrived.contains(&n), "the newest line was dropped");
}

#[test]
fn an_outage_on_a_2mb_spool_filesystem_keeps_the_newest_of_both_streams() {
    // Issue 32.3: on a 2 MB filesystem with the broker down for the first
    // 12 s, the records handed to librdkafka pinned the oldest segments:
    // `_seq` 1-22,049 were delivered and everything newer dropped, the last
    // line included ("nothing more can be dropped"). Once records taken
    // back were read again from the segments the reader kept open, those
    // pinned the whole filesystem: every line after the first 12,741 was
    // lost (`missing`).
    outage_keeps_the_newest(2048);
}

#[test]
fn an_outage_on_an_8mb_spool_filesystem_keeps_the_newest_of_both_streams() {
    // Issue 32.3: on 8 MB, the oldest ~1.1 MB was pinned the same way.
    outage_keeps_the_newest(8192);
}

/// `seqs` as ranges, for a message.
fn ranges(seqs: &std::collections::BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in seqs {
        match out.last_mut() {
            Some(r) if r.1 + 1 == s => r.1 = s,
            _ => out.push((s, s)),
        }
    }
    out
}

/// 100,000 lines of 100 bytes, every tenth on stderr, into a spool on a
/// `kb` filesystem while the broker is down (12 s): the newest of each
/// stream are kept, and everything else is named.
fn outage_keeps_the_newest(kb: u64) {
    let d = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&d.path().join("fs"), kb);
    let spool = fs.0.join("spool");
    let sbx = d.path().join("sbx");
    let port = free_port();
    let go = d.path().join("go");
    let n: u64 = 100_000;
    // Every tenth line on stderr: each stream numbers its own `_seq`.
    let script = format!(
        "i=0; while [ $i -lt {n} ]; do i=$((i+1)); if [ $((i % 10)) -eq 0 ]; then echo \"$i {pad}\" >&2; else echo \"$i {pad}\"; fi; done; while [ ! -e {} ]; do sleep 0.05; done",
        go.display(),
        pad = "x".repeat(100),
    );
    let addr = format!("127.0.0.1:{port}");
    let mut run = spawn_run(&spool, &sbx, &addr, "acct-tiny", "c-tiny", &[], &script);
    std::thread::sleep(Duration::from_secs(12));
    let broker = Broker::start_on(port);
    wait_lines(&sbx.join("stdout"), n - n / 10);
    wait_lines(&sbx.join("stderr"), n / 10);
    std::fs::write(&go, b"").unwrap();
    let out = consume_stream(&broker.addr(), "acct-tiny", "c-tiny", "stdout", n - n / 10);
    let err = consume_stream(&broker.addr(), "acct-tiny", "c-tiny", "stderr", n / 10);
    assert!(
        wait_child(&mut run, Duration::from_secs(120)).is_some(),
        "{}",
        run_said(&sbx)
    );
    out.assert_exact(n - n / 10);
    err.assert_exact(n / 10);
    // The metrics count every record named lost, at least once (the
    // companion's notices and the publisher's name some of the same
    // records). Known: in some runs on 8 MB `budget` counts about one
    // segment's records more than were named; printed, not asserted.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(spool.join("metrics.json")).unwrap()).unwrap();
    for reason in ["budget", "spool_write"] {
        let counted = m[format!("records_dropped/{reason}")].as_u64().unwrap_or(0);
        let named = out.lost(reason) + err.lost(reason);
        assert!(
            counted >= named,
            "records_dropped/{reason} {counted} < {named} named: {m}"
        );
        eprintln!("records_dropped/{reason}: {counted}, named {named}");
    }
    for (acc, last) in [(&out, n - n / 10), (&err, n / 10)] {
        assert!(
            acc.arrived.contains(&last),
            "{}: the newest line was dropped; run said {}",
            acc.stream,
            run_said(&sbx)
        );
        assert!(acc.lost("budget") > 0, "{}: nothing dropped", acc.stream);
        // The newest, not the oldest, are what the spool kept: of the
        // older half, only the rest of the segment the reader was in when
        // the outage began (a sixteenth of the room at most).
        let old = acc.arrived.iter().filter(|&&s| s <= last / 2).count();
        assert!(
            old * 5 <= acc.arrived.len(),
            "{}: {old} of the oldest half shipped, of {}: the oldest were kept ({:?})",
            acc.stream,
            acc.arrived.len(),
            ranges(&acc.arrived)
        );
        assert_eq!(acc.lost("missing"), 0, "{}: lines went missing", acc.stream);
    }
}
