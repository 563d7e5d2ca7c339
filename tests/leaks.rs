//! Resource leaks of the agent process across 500 containers: file
//! descriptors and threads of the whole process are counted, so this test
//! has a test binary (a process) of its own: nothing else runs beside it.

mod support;

use mesos_gelf_logger::config::Config;
use mesos_gelf_logger::logger::Logger;
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn companions_under(root: &Path) -> usize {
    companion_pids(&root.display().to_string()).len()
}

#[test]
fn five_hundred_containers_leak_no_fds_threads_processes_or_spools() {
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let cfg = Config::from_pairs(&[
        ("kafka.bootstrap.servers", broker.addr().as_str()),
        ("topic", "leaks"),
        ("spool_dir", spool.to_str().unwrap()),
    ])
    .unwrap();
    let mut logger = Logger::new(cfg, bin()).unwrap();
    logger.initialize(None).unwrap();
    let sbx = d.path().join("sbx");
    std::fs::create_dir_all(&sbx).unwrap();
    let json = serde_json::json!({"directory": sbx.display().to_string()}).to_string();
    // Warm up (producer connections) until the warm-up container is gone,
    // then measure.
    let p = logger.prepare("warm-up", &json, None).unwrap();
    drop(p);
    let m = logger.publisher().unwrap().metrics.clone();
    let t0 = Instant::now();
    while m.snapshot()["containers_finished"].as_u64() != Some(1) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "warm-up never finished"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (fds0, threads0) = (open_fds(), threads());
    for i in 0..500 {
        let p = logger
            .prepare(&format!("leak-{i:03}"), &json, None)
            .unwrap();
        let mut out = std::fs::File::from(p.stdout);
        writeln!(out, "line from {i}").unwrap();
    }
    let t0 = Instant::now();
    while std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .any(|e| e.path().is_dir())
        || companions_under(&spool) > 0
        || m.snapshot()["containers_finished"].as_u64() != Some(501)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "spools or companions left behind"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (fds1, threads1) = (open_fds(), threads());
    assert!(fds1 <= fds0 + 2, "fds {fds0} -> {fds1}");
    assert_eq!(threads1, threads0, "threads");
    let s = m.snapshot();
    assert_eq!(s["records_published"], 500);
    assert_eq!(s["containers_active"], 0);
    // Every container's one line, each once.
    let want: HashSet<String> = (0..500).map(|i| format!("line from {i}")).collect();
    let mut seen = HashSet::new();
    let msgs = consume_until(
        &broker.addr(),
        "leaks",
        Duration::from_secs(120),
        Duration::from_millis(500),
        |c| {
            let v = c.json();
            seen.insert(v["short_message"].as_str().unwrap_or("").to_string());
            want.is_subset(&seen)
        },
    );
    assert_eq!(msgs.len(), 500, "each line once");
    eprintln!(
        "500 containers: fds {fds0} -> {fds1}, threads {threads0} -> {threads1}, 0 companions and 0 spools left, {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
