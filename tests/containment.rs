//! Failure containment (issue 13): an agent-wide spool budget that a noisy
//! task cannot take past the others, per-container rate limits, a spool that
//! cannot be made or a companion that dies never failing or hanging a task,
//! and for every record written but not shipped a notice naming it.

mod support;

use mesos_gelf_logger::config::Config;
use mesos_gelf_logger::logger::Logger;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

fn logger(pairs: &[(&str, &str)]) -> Logger {
    Logger::new(Config::from_pairs(pairs).unwrap(), bin()).unwrap()
}

fn prepare(l: &Logger, d: &Path, id: &str) -> (std::fs::File, std::fs::File, PathBuf) {
    let sbx = d.join(id);
    std::fs::create_dir_all(&sbx).unwrap();
    let json = serde_json::json!({"directory": sbx.display().to_string()}).to_string();
    let p = l.prepare(id, &json, None).unwrap();
    (
        std::fs::File::from(p.stdout),
        std::fs::File::from(p.stderr),
        sbx,
    )
}

/// Bytes of every spool segment under `spool`.
fn spool_usage(spool: &Path) -> u64 {
    let mut n = 0;
    for c in std::fs::read_dir(spool).into_iter().flatten().flatten() {
        for s in std::fs::read_dir(c.path().join("data"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if s.file_name().to_string_lossy().starts_with("seg-") {
                n += s.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    n
}

/// Per container: stdout `_seq`s delivered, and `_seq`s named lost by any
/// notice (the companion's or the publisher's).
#[derive(Default)]
struct Ledger {
    kept: BTreeMap<String, Vec<u64>>,
    named: BTreeMap<String, Vec<u64>>,
    union: BTreeMap<String, BTreeSet<u64>>,
    reasons: BTreeSet<String>,
}

impl Ledger {
    fn add(&mut self, v: &Value) {
        let cid = v["_container_id"].as_str().unwrap_or("").to_string();
        let seqs: Vec<u64> = match v["_stream"].as_str() {
            Some("stdout") => {
                let s = v["_seq"].as_u64().unwrap();
                self.kept.entry(cid.clone()).or_default().push(s);
                vec![s]
            }
            Some("mesos-gelf") | Some("mesos-gelf-publisher") if v["_lost_stream"] == "stdout" => {
                self.reasons
                    .insert(v["_loss_reason"].as_str().unwrap_or("").into());
                let l = lost_seqs(v);
                self.named.entry(cid.clone()).or_default().extend(&l);
                l
            }
            _ => return,
        };
        self.union.entry(cid).or_default().extend(seqs);
    }

    /// Every seq 1..=n of `cid` is kept or named.
    fn covers(&self, cid: &str, n: u64) -> bool {
        self.union
            .get(cid)
            .is_some_and(|u| u.range(1..=n).count() as u64 == n)
    }

    /// Seqs of `cid` kept or named (a cheap completeness check).
    fn count(&self, cid: &str) -> u64 {
        self.union.get(cid).map_or(0, |u| u.len() as u64)
    }
}

#[test]
fn a_noisy_neighbour_during_an_outage_cannot_take_the_disk_past_the_budget() {
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let port = free_port();
    let budget: u64 = 32 << 20;
    let mut l = logger(&[
        ("kafka.bootstrap.servers", &format!("127.0.0.1:{port}")),
        ("spool_dir", spool.to_str().unwrap()),
        ("topic", "budget"),
        ("spool_max_total_size", "32MB"),
        ("spool_segment_size", "256KB"),
    ]);
    l.initialize(None).unwrap();
    // Kafka is down. 190 quiet containers, 10 noisy ones writing 8 MB each
    // at 1 MB/s.
    let (quiet_n, noisy_n) = (300u64, 60_000u64);
    let mut noisy = Vec::new();
    let mut ids = Vec::new();
    for i in 0..200 {
        let id = format!("c{i:03}");
        let (mut out, err, _) = prepare(&l, d.path(), &id);
        drop(err);
        if i < 10 {
            noisy.push((id.clone(), out));
        } else {
            let mut buf = String::new();
            for s in 1..=quiet_n {
                buf.push_str(&format!("quiet {id} line {s}\n"));
            }
            out.write_all(buf.as_bytes()).unwrap();
        }
        ids.push(id);
    }
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, spool) = (peak.clone(), sampling.clone(), spool.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(spool_usage(&spool), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let line = "x".repeat(100);
    let writers: Vec<_> = noisy
        .into_iter()
        .map(|(id, mut out)| {
            let line = line.clone();
            std::thread::spawn(move || {
                let mut s = 0u64;
                while s < noisy_n {
                    let mut buf = String::new();
                    for _ in 0..1000 {
                        s += 1;
                        buf.push_str(&format!("{id} {s:08} {line}\n"));
                    }
                    out.write_all(buf.as_bytes()).unwrap();
                    std::thread::sleep(Duration::from_millis(120));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    // Every companion finished (its `done`), while Kafka is still away.
    let t0 = Instant::now();
    for id in &ids {
        while !spool.join(id).join("data/done").exists() {
            assert!(t0.elapsed() < Duration::from_secs(120), "{id} not finished");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    let during = spool_usage(&spool);
    assert!(peak <= budget, "spool peak {peak} > budget {budget}");
    // Kafka comes back: everything kept is delivered, and each loss named.
    let broker = Broker::start_on(port);
    let want = |id: &str| if id < "c010" { noisy_n } else { quiet_n };
    let mut ledger = Ledger::default();
    let mut complete = BTreeSet::new();
    consume_until(
        &broker.addr(),
        "budget",
        Duration::from_secs(300),
        Duration::from_secs(2),
        |m| {
            let v = m.json();
            ledger.add(&v);
            let id = v["_container_id"].as_str().unwrap_or("").to_string();
            if ids.contains(&id) && ledger.count(&id) >= want(&id) {
                complete.insert(id);
            }
            complete.len() == ids.len()
        },
    );
    let mut lost_noisy = 0;
    for id in &ids {
        let n = want(id);
        assert!(ledger.covers(id, n), "{id}: not every seq kept or named");
        let kept: BTreeSet<u64> = ledger.kept[id].iter().copied().collect();
        let named: BTreeSet<u64> = ledger
            .named
            .get(id)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        assert!(
            kept.is_disjoint(&named),
            "{id}: a delivered seq is named lost"
        );
        assert_eq!(
            kept.len() as u64 + named.len() as u64,
            n,
            "{id}: kept + named = written"
        );
        assert!(kept.contains(&n), "{id}: its newest line is kept");
        if n == quiet_n {
            assert!(named.is_empty(), "{id}: a quiet container lost lines");
        } else {
            lost_noisy += named.len();
        }
    }
    assert!(lost_noisy > 0, "the noisy containers were over the budget");
    assert_eq!(ledger.reasons, BTreeSet::from(["budget".to_string()]));
    let m = l.metrics().snapshot();
    assert_eq!(
        m["records_dropped/budget"].as_u64().unwrap() as usize,
        lost_noisy
    );
    eprintln!(
        "budget 32 MB, 200 containers (10 writing 8 MB each at 1 MB/s) during an outage: spool peak {:.1} MB, {:.1} MB at the end of the outage; {lost_noisy} noisy lines dropped and named, quiet containers lost 0, every container's newest line kept",
        peak as f64 / 1048576.0,
        during as f64 / 1048576.0
    );
    drop(l);
}

#[test]
fn a_rate_limited_task_ships_at_most_the_limit_and_names_the_rest() {
    let d = tempfile::tempdir().unwrap();
    let n = 20_000;
    let t0 = Instant::now();
    let ran = run_bounded(
        Command::new(bin())
            .args(["run", "--sandbox"])
            .arg(d.path())
            .args([
                "--set",
                "rate_limit_lines=500",
                "--set",
                "rate_limit_burst=2",
            ])
            .args([
                "--",
                "sh",
                "-c",
                &format!("seq 1 {n}; sleep 1; seq {} {}", n + 1, n + 100),
            ]),
        Duration::from_secs(60),
    );
    let elapsed = t0.elapsed().as_secs_f64();
    ran.assert_code(0);
    let n = n + 100;
    let msgs = gelf_lines(&ran.stdout);
    let mut ledger = Ledger::default();
    for m in &msgs {
        assert_gelf(m);
        let mut m = m.clone();
        m["_container_id"] = Value::from("c");
        ledger.add(&m);
    }
    let kept = ledger.kept["c"].len() as f64;
    assert!(
        kept <= 500.0 * elapsed + 1000.0 + 1.0,
        "{kept} shipped in {elapsed:.1} s at 500/s with a 2 s burst"
    );
    assert!(ledger.covers("c", n), "every missing seq is named");
    assert_eq!(ledger.reasons, BTreeSet::from(["rate_limit".to_string()]));
    let named = ledger.named["c"].len() as u64;
    assert_eq!(kept as u64 + named, n);
    // The sandbox has everything; the container was never slowed.
    let sbx = std::fs::read_to_string(d.path().join("stdout")).unwrap();
    assert_eq!(sbx.lines().count() as u64, n);
    eprintln!("rate limit 500/s, burst 2 s: {kept} of {n} lines shipped in {elapsed:.1} s, {named} named in rate_limit notices");
}

#[test]
fn a_spool_that_cannot_be_made_never_fails_the_task() {
    let d = tempfile::tempdir().unwrap();
    let ro = Tmpfs::mount_with(&d.path().join("ro"), "size=1m,ro");
    // `run`: the command runs, its sandbox is written, and `run` says its
    // lines were not shipped (exit 3), instead of refusing to start.
    let ran = run_bounded(
        Command::new(bin())
            .args(["run", "--sandbox"])
            .arg(d.path().join("sbx"))
            .args([
                "--set",
                &format!("spool_dir={}", ro.0.join("spool").display()),
            ])
            .args(["--", "echo", "still-runs"]),
        Duration::from_secs(30),
    );
    ran.assert_code(3);
    assert!(ran.stderr().contains("not shipped"), "{}", ran.stderr());
    assert_eq!(
        std::fs::read_to_string(d.path().join("sbx/stdout")).unwrap(),
        "still-runs\n"
    );
    // The agent module: initialize succeeds, each container starts with its
    // sandbox files, the metrics count it, and a notice reaches Kafka.
    let broker = Broker::start();
    let full = Tmpfs::mount(&d.path().join("full"), 256);
    full.fill(0);
    for (name, dir) in [("full", full.0.clone()), ("ro", ro.0.join("spool"))] {
        let mut l = logger(&[
            ("kafka.bootstrap.servers", &broker.addr()),
            ("spool_dir", dir.to_str().unwrap()),
            ("topic", "unspooled"),
        ]);
        l.initialize(None).expect("the agent starts");
        let id = format!("c-{name}");
        let (mut out, err, sbx) = prepare(&l, d.path(), &id);
        drop(err);
        writeln!(out, "line of {id}").unwrap();
        drop(out);
        assert!(wait_for_file(&sbx.join("stdout"), Duration::from_secs(10)));
        let t0 = Instant::now();
        while std::fs::read_to_string(sbx.join("stdout")).unwrap_or_default()
            != format!("line of {id}\n")
        {
            assert!(t0.elapsed() < Duration::from_secs(10), "sandbox of {id}");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(l.metrics().snapshot()["containers_unspooled"], 1);
        if name == "ro" {
            // No publisher can run on a read-only spool: its notice waits
            // in memory until the spool is writable again (the agent log
            // and the metrics say it now).
            drop(l);
            continue;
        }
        consume_until(
            &broker.addr(),
            "unspooled",
            Duration::from_secs(60),
            Duration::ZERO,
            |m| {
                let v = m.json();
                v["_container_id"] == id.as_str()
                    && v["_stream"] == "mesos-gelf-publisher"
                    && v["short_message"]
                        .as_str()
                        .unwrap()
                        .contains("without a spool")
            },
        );
        drop(l);
    }
}

#[test]
fn half_prepared_directories_are_not_waited_for_and_old_ones_are_removed() {
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    std::fs::create_dir_all(spool.join("c-half/data")).unwrap();
    let old = spool.join(".prep-c-gone-1-0");
    std::fs::create_dir_all(old.join("data")).unwrap();
    // Ten minutes old.
    let ten = std::time::SystemTime::now() - Duration::from_secs(600);
    std::fs::File::open(&old)
        .unwrap()
        .set_modified(ten)
        .unwrap();
    let ran = run_bounded(
        Command::new(bin())
            .args(["publish", "--until-empty", "--spool-dir"])
            .arg(&spool),
        Duration::from_secs(30),
    );
    ran.assert_code(0);
    assert!(!old.exists(), "an abandoned .prep- directory is removed");
    assert!(spool.join("c-half").exists(), "a young one is left alone");
}

fn companion_of(spool_key: &Path) -> u32 {
    let t0 = Instant::now();
    loop {
        if let Some(p) = companion_pids(&spool_key.display().to_string()).first() {
            return *p;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no companion");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_companion_is_noticed_its_spool_shipped_and_the_loss_reported() {
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let mut l = logger(&[
        ("kafka.bootstrap.servers", &broker.addr()),
        ("spool_dir", spool.to_str().unwrap()),
        ("topic", "died"),
    ]);
    l.initialize(None).unwrap();
    let (mut out, err, _) = prepare(&l, d.path(), "c-died");
    drop(err);
    for i in 1..=100 {
        writeln!(out, "{i}").unwrap();
    }
    let mut w = SeqWatch::new(&[("c-died", 100)]);
    consume_until(
        &broker.addr(),
        "died",
        Duration::from_secs(60),
        Duration::ZERO,
        |m| w.add(m),
    );
    let pid = companion_of(&spool.join("c-died"));
    // With CAP_SYS_RESOURCE (an agent's root has it; some sandboxes
    // withhold it) the companion lowers its oom_score_adj.
    let caps = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = caps
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    let adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    const CAP_SYS_RESOURCE: u32 = 24;
    if eff & (1 << CAP_SYS_RESOURCE) != 0 {
        assert_eq!(adj.trim(), "-500", "a poor target for the OOM killer");
    } else {
        eprintln!(
            "no CAP_SYS_RESOURCE here: oom_score_adj stays {}",
            adj.trim()
        );
    }
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    // What the task sees: its next write fails (SIGPIPE for a task that
    // does not ignore it, as with Mesos' own logrotate companion).
    let t0 = Instant::now();
    let e = loop {
        match writeln!(out, "after") {
            Err(e) => break e,
            Ok(()) => {
                assert!(t0.elapsed() < Duration::from_secs(10));
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    // The publisher notices, ships what was spooled, reports, cleans up.
    let t0 = Instant::now();
    while spool.join("c-died").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the dead companion's spool stays"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    consume_until(
        &broker.addr(),
        "died",
        Duration::from_secs(60),
        Duration::ZERO,
        |m| {
            let v = m.json();
            v["_stream"] == "mesos-gelf-publisher"
                && v["short_message"].as_str().unwrap().contains("died")
        },
    );
    assert_eq!(l.metrics().snapshot()["companions_died"], 1);
    drop(l);
}

#[test]
fn run_ends_when_its_companion_is_killed() {
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let ready = d.path().join("ready");
    let script = format!("echo a; touch {}; sleep 3; echo b", ready.display());
    let mut c = Command::new(bin())
        .args(["run", "--container-id", "c-run-died", "--sandbox"])
        .arg(d.path().join("sbx"))
        .args(["--set", &format!("spool_dir={}", spool.display())])
        .args(["--", "sh", "-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for_file(&ready, Duration::from_secs(30)));
    let pid = companion_of(&spool.join("c-run-died"));
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let st = wait_child(&mut c, Duration::from_secs(60));
    if st.is_none() {
        let _ = c.kill();
    }
    // The command died of SIGPIPE at `echo b`; run reports its status.
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(141),
        "run ended with the command's status"
    );
}

#[test]
fn a_spool_filesystem_smaller_than_the_budget_drops_nothing_while_it_has_room() {
    // helper-1: on a filesystem smaller than a tenth of
    // spool_max_total_size (4 GB by default), the publisher kept that
    // tenth free on top of spool_min_free, so during any outage it dropped
    // every unread segment with room to spare ("16 MB in spools, 239 MB
    // free"). A 64 MB filesystem now holds a 3 MB backlog whole.
    let d = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&d.path().join("fs"), 64 * 1024);
    let spool = fs.0.join("spool");
    let port = free_port();
    let mut l = logger(&[
        ("kafka.bootstrap.servers", &format!("127.0.0.1:{port}")),
        ("spool_dir", spool.to_str().unwrap()),
        ("topic", "roomy"),
        ("spool_segment_size", "64KB"),
        ("metrics_interval_ms", "100"),
    ]);
    l.initialize(None).unwrap();
    let (mut out, err, _) = prepare(&l, d.path(), "c-roomy");
    drop(err);
    let n = 30_000u64;
    for i in 1..=n {
        writeln!(out, "{i} {}", "x".repeat(90)).unwrap();
    }
    // Every record is in the spool: 32 bytes of frame around each line
    // (the sandbox is written first, the spool may still lag behind).
    let framed: u64 = (1..=n).map(|i| i.to_string().len() as u64 + 91 + 32).sum();
    let t0 = Instant::now();
    while spool_usage(&spool) < framed {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the spool holds {} of {framed} bytes",
            spool_usage(&spool)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The budget is checked every 200 ms in the publisher's loop, which
    // writes metrics.json every 100 ms here: five new metrics files after
    // the spool holds everything are two checks at least.
    let held = spool_usage(&spool);
    let metrics = spool.join("metrics.json");
    let inode = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&metrics).map(|m| m.ino()).unwrap_or(0)
    };
    let mut seen = BTreeSet::new();
    let t0 = Instant::now();
    while seen.len() < 6 {
        seen.insert(inode());
        assert!(t0.elapsed() < Duration::from_secs(60), "metrics.json");
        std::thread::sleep(Duration::from_millis(10));
    }
    let m: Value = serde_json::from_slice(&std::fs::read(&metrics).unwrap()).unwrap();
    assert_eq!(m["records_dropped/budget"], 0, "{m}");
    assert_eq!(spool_usage(&spool), held, "segments were dropped");
    // Kafka comes: everything arrives, and no notice names a loss.
    let broker = Broker::start_on(port);
    let mut w = SeqWatch::new(&[("c-roomy", n)]);
    let mut notices = 0;
    consume_until(
        &broker.addr(),
        "roomy",
        Duration::from_secs(120),
        Duration::from_secs(1),
        |m| {
            let v = m.json();
            if v["_stream"] != "stdout" {
                notices += 1;
            }
            w.add(m)
        },
    );
    assert_eq!(notices, 0, "a loss was reported");
    drop(out);
    drop(l);
}
