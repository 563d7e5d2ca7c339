//! `cargo bench`: throughput, CPU per line, memory and latency of the
//! pipeline, each next to a reference measured in the same run, printed as a
//! table. Needs the tansu broker (scripts/setup.sh; TANSU_BIN).
//!
//! The same binary re-invokes itself for helpers: `gen` (a paced line
//! generator), `bare` (a bare librdkafka producer), `companion` (runs the
//! real lean companion and records its rusage), `scale` (an in-process "agent").

#[path = "../tests/support/mod.rs"]
mod support;

use mesos_gelf_logger::config::Config;
use mesos_gelf_logger::logger::Logger;
use mesos_gelf_logger::publisher::kafka::client_config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::io::{BufRead, BufWriter, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LINES: usize = 1_000_000;

/// CPU seconds, peak RSS (KB) and wall time of a finished command.
#[derive(Clone, Copy, Default)]
struct Usage {
    wall: f64,
    cpu: f64,
    rss_kb: i64,
}

/// GNU time's report: wall, user, system seconds and peak RSS in KB. It
/// forks the measured command from itself (a small process): forked from
/// this bench, the child's peak RSS would count our pages before its exec.
const TIME_FMT: &str = "%e %U %S %M";

/// A command measured by /usr/bin/time into `out`.
fn timed(out: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("/usr/bin/time");
    c.args(["-f", TIME_FMT, "-o"]).arg(out).arg(program);
    c
}

fn wait_usage(child: &mut Child, out: &Path) -> Usage {
    let st = child.wait().unwrap();
    assert!(st.success(), "measured command failed: {st}");
    read_usage(out)
}

fn read_usage(path: &Path) -> Usage {
    let t0 = Instant::now();
    while !path.exists() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = std::fs::read_to_string(path).unwrap_or_default();
    // The last line: time may put "Command exited with ..." before it.
    let v: Vec<f64> = s
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(
        v.len(),
        4,
        "unexpected /usr/bin/time output in {}: {s}",
        path.display()
    );
    Usage {
        wall: v[0],
        cpu: v[1] + v[2],
        rss_kb: v[3] as i64,
    }
}

fn exe() -> PathBuf {
    std::env::current_exe().unwrap()
}

/// 1e6 lines of 100-200 bytes, varied but deterministic.
fn make_input(path: &Path) -> u64 {
    let mut w = BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let words = [
        "GET",
        "/api/cart",
        "status=200",
        "user=4711",
        "duration_ms=12.5",
        "INFO",
        "worker-3",
        "cache miss",
        "órder",
        "ok",
    ];
    let mut bytes = 0u64;
    for i in 0..LINES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 100 + (x % 101) as usize;
        let mut line = format!(
            "2026-11-23T10:00:{:02}.{:06}Z line={i}",
            i % 60,
            i % 1_000_000
        );
        let mut k = x;
        while line.len() < len {
            line.push(' ');
            line.push_str(words[(k % words.len() as u64) as usize]);
            k = k.rotate_left(7) ^ 0x5555;
        }
        let mut cut = len.min(line.len());
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        bytes += line.len() as u64 + 1;
        writeln!(w, "{line}").unwrap();
    }
    bytes
}

fn write_meta(spool: &Path, sandbox: &Path, topic: &str) {
    std::fs::create_dir_all(spool).unwrap();
    let meta = serde_json::json!({
        "version": 1,
        "identity": {"container_id": "bench", "sandbox": sandbox.display().to_string()},
        "settings": {"topic": topic},
    });
    std::fs::write(spool.join("meta.json"), meta.to_string()).unwrap();
}

/// `cat input | CMD` and the usage of CMD (a `timed` command writing `out`).
fn through_pipe(input: &Path, cmd: &mut Command, out: &Path) -> Usage {
    let mut cat = Command::new("cat")
        .arg(input)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut c = cmd
        .stdin(Stdio::from(cat.stdout.take().unwrap()))
        .spawn()
        .unwrap();
    let u = wait_usage(&mut c, out);
    cat.wait().unwrap();
    u
}

struct Row(String, String, String, String, String);

fn print_table(title: &str, rows: &[Row]) {
    println!("\n{title}");
    println!(
        "| {:<44} | {:>12} | {:>10} | {:>14} | {:>12} |",
        "what", "lines/s", "MB/s", "CPU s / 1e6", "peak RSS MB"
    );
    println!(
        "|{:-<46}|{:->14}|{:->12}|{:->16}|{:->14}|",
        "", "", "", "", ""
    );
    for r in rows {
        println!(
            "| {:<44} | {:>12} | {:>10} | {:>14} | {:>12} |",
            r.0, r.1, r.2, r.3, r.4
        );
    }
}

fn row(name: &str, u: Usage, lines: usize, bytes: u64) -> Row {
    Row(
        name.into(),
        format!("{:.0}", lines as f64 / u.wall),
        format!("{:.1}", bytes as f64 / u.wall / 1e6),
        format!("{:.2}", u.cpu * 1e6 / lines as f64),
        format!("{:.1}", u.rss_kb as f64 / 1024.0),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("gen") => return gen(args[2].parse().unwrap(), args[3].parse().unwrap()),
        Some("bare") => return bare(&args[2], &args[3], Path::new(&args[4]), &args[5..]),
        Some("companion") => return wrap_companion(&args[1..]),
        Some("scale") => return scale(&args[2], Path::new(&args[3])),
        _ => {}
    }
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    // The binaries were usually just linked: until written back, their
    // page-cache pages are dirty and smaps counts every companion's mapped
    // pages of them as its private dirty memory (0.7 MB each), which no
    // installed binary costs. Write them back before measuring memory.
    // SAFETY: sync() takes no arguments and cannot fail.
    unsafe { libc::sync() };
    if args.iter().any(|a| a == "parse") {
        return parse_cost(); // `cargo bench --bench pipeline -- parse`
    }
    if let Some(i) = args.iter().position(|a| a == "latency") {
        // `cargo bench --bench pipeline -- latency [--set key=value ...]`
        let sets: Vec<String> = args[i + 1..]
            .windows(2)
            .filter(|w| w[0] == "--set")
            .map(|w| w[1].clone())
            .collect();
        let broker = support::Broker::start();
        let root = tempfile::tempdir().unwrap();
        return latency(&support::bin(), &broker.addr(), root.path(), &sets);
    }
    if let Some(i) = args.iter().position(|a| a == "e2e") {
        // `cargo bench --bench pipeline -- e2e [ROUNDS] [--set kafka.key=value ...]`
        let rounds = args.get(i + 1).and_then(|a| a.parse().ok()).unwrap_or(5);
        let sets: Vec<String> = args[i + 1..]
            .windows(2)
            .filter(|w| w[0] == "--set")
            .map(|w| w[1].clone())
            .collect();
        return e2e_rounds(rounds, &sets);
    }
    if args.iter().any(|a| a == "window") {
        // `cargo bench --bench pipeline -- window`
        let broker = support::Broker::start();
        let root = tempfile::tempdir().unwrap();
        let input = root.path().join("input.txt");
        make_input(&input);
        return window_bound(&support::bin(), &broker.addr(), root.path(), &input);
    }
    if let Some(i) = args.iter().position(|a| a == "scale1000") {
        // `cargo bench --bench pipeline -- scale1000 [N]`
        let n = args.get(i + 1).and_then(|a| a.parse().ok()).unwrap_or(1000);
        return scale_many(n);
    }
    let bin = support::bin();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let input = r.join("input.txt");
    let bytes = make_input(&input);
    println!(
        "mesos-gelf benchmark: {LINES} lines, {:.1} MB, 100-200 bytes each; machine: {} cores, {}",
        bytes as f64 / 1e6,
        num_cpus(),
        kernel()
    );

    // 1. Companion vs tee / cat.
    let u = r.join("usage");
    let file = |n: &str| std::fs::File::create(r.join(n)).unwrap();
    let cat_u = through_pipe(&input, timed(&u, "cat").stdout(file("cat.out")), &u);
    let tee_u = through_pipe(
        &input,
        timed(&u, "tee").arg(r.join("tee1")).stdout(file("tee2")),
        &u,
    );
    let spool = r.join("spool1/bench");
    let sandbox = r.join("sbx1");
    std::fs::create_dir_all(&sandbox).unwrap();
    write_meta(&spool, &sandbox, "bench-publisher");
    let comp_u = through_pipe(
        &input,
        timed(&u, &bin)
            .args(["companion", "--spool"])
            .arg(&spool)
            .arg("--sandbox")
            .arg(&sandbox)
            .args(["--stdout-fd", "0", "--stderr-fd=-1"]),
        &u,
    );
    let lean_spool = r.join("spool1b/bench");
    write_meta(&lean_spool, &sandbox, "bench-publisher");
    let lean_u = through_pipe(
        &input,
        timed(&u, lean_companion())
            .args(["--spool"])
            .arg(&lean_spool)
            .arg("--sandbox")
            .arg(r.join("sbx1b"))
            .args(["--stdout-fd", "0", "--stderr-fd=-1"]),
        &u,
    );
    print_table(
        "1. Companion: pipe -> sandbox file + spool (reference: the same bytes through a pipe into cat / tee)",
        &[
            row("cat > f", cat_u, LINES, bytes),
            row("tee f1 > f2", tee_u, LINES, bytes),
            row("mesos-gelf companion", comp_u, LINES, bytes),
            row("mesos-gelf-companion (lean, the default)", lean_u, LINES, bytes),
        ],
    );
    println!("lean companion/tee throughput ratio: {:.2}x (target >= 0.6x); /cat: {:.2}x; peak RSS {:.1} MB (tee {:.1} MB; target < 4 MB); full binary as companion: {:.2}x tee, {:.1} MB",
        tee_u.wall / lean_u.wall, cat_u.wall / lean_u.wall, lean_u.rss_kb as f64 / 1024.0,
        tee_u.rss_kb as f64 / 1024.0, tee_u.wall / comp_u.wall, comp_u.rss_kb as f64 / 1024.0);
    // Memory that each of many companions costs on its own: private dirty
    // (not shared with the others) while a burst of short lines is in it.
    let (tee_rss, tee_priv) = memory_under_burst(Command::new("tee").arg(r.join("tee-burst")));
    let (lean_rss, lean_priv) = memory_under_burst(
        Command::new(lean_companion())
            .args(["--sandbox"])
            .arg(r.join("sbx-burst"))
            .arg("--spool")
            .arg(r.join("spool-burst/bench"))
            .args(["--stdout-fd", "0", "--stderr-fd=-1"]),
    );
    println!("under a burst of 200k short lines: lean companion RSS {:.1} MB, private dirty {:.2} MB (target < 1 MB); tee RSS {:.1} MB, private dirty {:.2} MB",
        lean_rss as f64 / 1024.0, lean_priv as f64 / 1024.0, tee_rss as f64 / 1024.0, tee_priv as f64 / 1024.0);

    // 2 + 3. The publisher, a bare producer and the whole pipeline, in
    // rounds: each round starts a fresh broker (tansu keeps every message
    // in memory, and one holding millions answers more slowly) and runs
    // the three in turn, in a rotating order; each figure is the median of
    // the rounds, and each ratio is taken within a round (this machine's
    // speed drifts between rounds by more than the differences measured).
    let gelf = pre_encode(&bin, r, &input);
    let gelf_bytes = std::fs::metadata(&gelf).unwrap().len();
    const ROUNDS: usize = 3;
    let (mut pubs, mut bares, mut runs, mut comps) = (vec![], vec![], vec![], vec![]);
    let mut broker = support::Broker::start();
    for round in 0..ROUNDS {
        if round > 0 {
            drop(broker);
            broker = support::Broker::start();
        }
        let addr = broker.addr();
        // This round's spool for `publish` (written by a companion, not measured).
        let root = r.join(format!("spool-pub-{round}"));
        let spool = root.join("bench");
        write_meta(&spool, &sandbox, "bench-publisher");
        through_pipe(
            &input,
            timed(&u, lean_companion())
                .args(["--spool"])
                .arg(&spool)
                .arg("--sandbox")
                .arg(r.join(format!("sbx-pub-{round}")))
                .args(["--stdout-fd", "0", "--stderr-fd=-1"]),
            &u,
        );
        for job in (0..3).map(|j| (j + round) % 3) {
            match job {
                0 => {
                    let mut b = timed(&u, exe())
                        .args(["bare", &addr, "bench-bare"])
                        .arg(&gelf)
                        .spawn()
                        .unwrap();
                    bares.push(wait_usage(&mut b, &u));
                }
                1 => {
                    let mut p = timed(&u, &bin)
                        .args(["publish", "--spool-dir"])
                        .arg(&root)
                        .args([
                            "--set",
                            &format!("kafka.bootstrap.servers={addr}"),
                            "--until-empty",
                        ])
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap();
                    pubs.push(wait_usage(&mut p, &u));
                }
                _ => {
                    let (run, comp) =
                        e2e_once(&bin, &addr, r, &input, &format!("-e2e-{round}"), &[]);
                    runs.push(run);
                    comps.push(comp);
                }
            }
        }
    }
    // The latency and scale runs get a fresh broker too.
    drop(broker);
    let broker = support::Broker::start();
    let addr = broker.addr();
    let med = |v: &[Usage], f: &dyn Fn(&Usage) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        percentile(&mut x, 0.5)
    };
    let median_usage = |v: &[Usage]| Usage {
        wall: med(v, &|u| u.wall),
        cpu: med(v, &|u| u.cpu),
        rss_kb: med(v, &|u| u.rss_kb as f64) as i64,
    };
    let ratios = |a: &dyn Fn(usize) -> f64| -> String {
        let mut v: Vec<f64> = (0..ROUNDS).map(|i| a(i) / bares[i].cpu).collect();
        let m = percentile(&mut v, 0.5);
        format!(
            "{m:.2}x (rounds: {})",
            (0..ROUNDS)
                .map(|i| format!("{:.2}", a(i) / bares[i].cpu))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    print_table(
        &format!("2. Publisher: spool -> GELF -> Kafka (reference: bare librdkafka producer, same settings, pre-encoded GELF); medians of {ROUNDS} rounds, each on a fresh broker"),
        &[
            row("bare producer (pre-encoded)", median_usage(&bares), LINES, gelf_bytes),
            row("mesos-gelf publish", median_usage(&pubs), LINES, gelf_bytes),
        ],
    );
    println!(
        "publisher/bare CPU per record: {}; publisher peak RSS {:.1} MB",
        ratios(&|i| pubs[i].cpu),
        median_usage(&pubs).rss_kb as f64 / 1024.0
    );
    let run_u = median_usage(&runs);
    let comp_u = median_usage(&comps);
    println!(
        "\n3. End to end: mesos-gelf run -- cat (1e6 lines) to Kafka; medians of {ROUNDS} rounds"
    );
    println!("| lines/s {:.0} | CPU s / 1e6 lines, all processes: {:.2} (run+publisher+cat {:.2}, companion {:.2}) | peak RSS MB: run {:.1}, companion {:.1} |",
        LINES as f64 / run_u.wall, med(&(0..ROUNDS).map(|i| Usage { wall: 0.0, cpu: runs[i].cpu + comps[i].cpu, rss_kb: 0 }).collect::<Vec<_>>(), &|u| u.cpu),
        run_u.cpu, comp_u.cpu, run_u.rss_kb as f64 / 1024.0, comp_u.rss_kb as f64 / 1024.0);
    println!(
        "end to end (companion + run/publisher + cat) / bare producer CPU: {}",
        ratios(&|i| runs[i].cpu + comps[i].cpu)
    );

    window_bound(&bin, &addr, r, &input);
    latency(&bin, &addr, r, &[]);

    // 5. Scale: 100 containers x 1000 lines/s in one "agent" process.
    let mut s = timed(&u, exe())
        .args(["scale", &addr])
        .arg(r.join("scale"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut report = String::new();
    std::io::Read::read_to_string(s.stdout.as_mut().unwrap(), &mut report).unwrap();
    let su = wait_usage(&mut s, &u);
    println!("\n5. Scale: 100 containers x 1000 lines/s for 10 s, one publisher");
    println!("{}| agent process (publisher + 100 writer threads): CPU {:.2} s over {:.1} s wall ({:.1}% of a core), peak RSS {:.1} MB (target < 64 MB) |",
        report, su.cpu, su.wall, su.cpu / su.wall * 100.0, su.rss_kb as f64 / 1024.0);
    parse_cost();
}

/// `mesos-gelf run` (`c` is the `bin` command, timed or not) with its own
/// sandbox, spool and topic on the broker at `addr`, plus extra `--set
/// key=value`s; the caller adds `-- <child>`. Every `run` in this bench is
/// built here, so the runs differ only where the arguments say.
fn run_cmd(
    mut c: Command,
    addr: &str,
    sandbox: &Path,
    spool: &Path,
    topic: &str,
    sets: &[String],
) -> Command {
    c.args(["run", "--sandbox"])
        .arg(sandbox)
        .args(["--set", &format!("kafka.bootstrap.servers={addr}")])
        .args(["--set", &format!("topic={topic}")])
        .args(["--set", &format!("spool_dir={}", spool.display())])
        .args(sets.iter().flat_map(|s| ["--set", s.as_str()]));
    c
}

/// One `run -- cat INPUT` to Kafka (topic `bench<tag>`) with `sets`: the
/// usage of `run` (with its publisher and `cat`) and of its companion,
/// which a wrapper measures (`companion_path` = this bench).
fn e2e_once(
    bin: &Path,
    addr: &str,
    r: &Path,
    input: &Path,
    tag: &str,
    sets: &[String],
) -> (Usage, Usage) {
    let u = r.join(format!("usage-{tag}"));
    let spool = r.join(format!("spool{tag}"));
    let mut all = sets.to_vec();
    all.push(format!("companion_path={}", exe().display()));
    let mut e = run_cmd(
        timed(&u, bin),
        addr,
        &r.join(format!("sbx{tag}")),
        &spool,
        &format!("bench{tag}"),
        &all,
    )
    .arg("--")
    .arg("cat")
    .arg(input)
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let run = wait_usage(&mut e, &u);
    (run, read_usage(&spool.join("companion.usage")))
}

/// Only the end-to-end comparison, with librdkafka settings to try
/// (`--set kafka.linger.ms=20`) applied to both sides: `rounds` pairs of
/// the bare producer and `run -- cat`, each pair on a fresh broker, in
/// alternating order; prints each pair's ratio and the median.
fn e2e_rounds(rounds: usize, sets: &[String]) {
    let bin = support::bin();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let input = r.join("input.txt");
    make_input(&input);
    let gelf = pre_encode(&bin, r, &input);
    let u = r.join("usage");
    let mut ratios = Vec::new();
    println!("end to end against the bare producer, settings {sets:?}");
    for round in 0..rounds {
        let broker = support::Broker::start();
        let addr = broker.addr();
        let (mut bare_cpu, mut e2e) = (0.0, (0.0, 0.0, 0.0));
        for job in [round % 2, (round + 1) % 2] {
            if job == 0 {
                let mut b = timed(&u, exe())
                    .args(["bare", &addr, "bench-bare"])
                    .arg(&gelf)
                    .args(sets)
                    .spawn()
                    .unwrap();
                bare_cpu = wait_usage(&mut b, &u).cpu;
            } else {
                let (run, comp) = e2e_once(&bin, &addr, r, &input, &format!("-e2e-{round}"), sets);
                e2e = (run.cpu + comp.cpu, comp.cpu, run.wall);
            }
        }
        let ratio = e2e.0 / bare_cpu;
        println!(
            "| round {round} | end to end {:.2} CPU s (companion {:.2}), {:.0} k lines/s | bare {bare_cpu:.2} CPU s | {ratio:.2}x |",
            e2e.0,
            e2e.1,
            LINES as f64 / e2e.2 / 1e3
        );
        ratios.push(ratio);
    }
    println!(
        "median end to end / bare CPU: {:.2}x",
        percentile(&mut ratios, 0.5)
    );
}

/// `run -- cat` with the in-flight window binding (`max_in_flight_bytes=1MB`)
/// against the default window, on one broker: deliveries that free room
/// must let the publisher send again at once, not after its fallback wait.
fn window_bound(bin: &Path, addr: &str, r: &Path, input: &Path) {
    let run = |window: Option<&str>, tag: &str| {
        let sets: Vec<String> = window
            .map(|w| format!("max_in_flight_bytes={w}"))
            .into_iter()
            .collect();
        e2e_once(bin, addr, r, input, &format!("-window-{tag}"), &sets).0
    };
    let full = run(None, "default");
    let small = run(Some("1MB"), "1mb");
    println!(
        "window-bound: run -- cat with max_in_flight_bytes=1MB {:.0} lines/s, default window (8 MB) {:.0} lines/s: {:.2}x (0.05x before deliveries let it send at once: 100k lines in 6.45 s against 0.31 s)",
        LINES as f64 / small.wall,
        LINES as f64 / full.wall,
        full.wall / small.wall
    );
}

/// Section 4, latency at three rates, two ways: from the child's write to the
/// broker's acknowledgement (the pipeline's own: the publisher's
/// `delivery_latency_*` figures over a whole run, measured with no
/// consumer taking the 2 cores), and to a consumer's receipt in a second
/// run (adds the consumer's CPU and the broker's fetch path: tansu answers
/// a fetch only after `fetch.wait.max.ms`, 5 ms here, however soon data is
/// there). `sets` are extra `--set key=value` for `run` (`cargo bench
/// --bench pipeline -- latency --set kafka.linger.ms=2` tries another one).
fn latency(bin: &Path, addr: &str, r: &Path, sets: &[String]) {
    println!("\n4. Latency (ms): child's write -> broker acknowledgement (the publisher's delivery_latency figures, no consumer running), and -> a consumer's receipt (second run; adds the consumer and the broker's fetch wait)");
    println!("| offered lines/s | lines | ack p50 | ack p99 | ack max | consumer p50 | consumer p99 | consumer max |");
    println!("|---|---|---|---|---|---|---|---|");
    for (rate, secs) in [(1_000u64, 3u64), (10_000, 3), (100_000, 2)] {
        let n = rate * secs;
        let start = |tag: &str| {
            let topic = format!("bench-lat-{rate}-{tag}-{}", std::process::id());
            let spool = r.join(format!("spool-lat-{rate}-{tag}"));
            // One metrics window for the whole run.
            let mut all = vec!["metrics_interval_ms=3600000".to_string()];
            all.extend_from_slice(sets);
            let run = run_cmd(
                Command::new(bin),
                addr,
                &r.join(format!("sbx-lat-{rate}-{tag}")),
                &spool,
                &topic,
                &all,
            )
            .arg("--")
            .arg(exe())
            .args(["gen", &rate.to_string(), &n.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
            (run, topic, spool)
        };
        let (mut run, _, spool) = start("ack");
        assert!(run.wait().unwrap().success());
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(spool.join("metrics.json")).unwrap()).unwrap();
        let ack = |k: &str| m[k].as_u64().unwrap_or(0) as f64 / 1000.0;
        let (mut run, topic, _) = start("consumer");
        let lat = consume_latency(addr, &topic, n as usize);
        run.wait().unwrap();
        let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
        println!(
            "| {rate} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            lat.len(),
            ack("delivery_latency_p50_us"),
            ack("delivery_latency_p99_us"),
            ack("delivery_latency_max_us"),
            q(0.5),
            q(0.99),
            lat[lat.len() - 1]
        );
    }
}

/// This thread's CPU time in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// CPU per record of the GELF encoder with parsers against without, on
/// the same records, in one run (best of 5, alternating).
fn parse_cost() {
    use mesos_gelf_logger::config::ContainerSettings;
    use mesos_gelf_logger::gelf::parse::Parser;
    use mesos_gelf_logger::gelf::Encoder;
    use mesos_gelf_logger::spool::record::{Record, Stream};
    let enc = |parsers: &str| {
        let settings = ContainerSettings {
            parse: Parser::list(parsers).unwrap(),
            ..Default::default()
        };
        let id = mesos_gelf_logger::metadata::Identity {
            container_id: "c".into(),
            task_id: Some("t".into()),
            ..Default::default()
        };
        Encoder::with_parts(
            "agent",
            &id,
            &settings,
            &mesos_gelf_logger::config::LabelFilter::All,
            std::iter::empty(),
            900_000,
        )
    };
    let n = 200_000;
    let recs = |f: &dyn Fn(usize) -> String| -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                stream: Stream::Stdout,
                flags: 0,
                part: 0,
                seq: i as u64,
                ts_micros: 1_795_428_005_000_000,
                payload: f(i).into_bytes(),
            })
            .collect()
    };
    let plain = recs(&|i| {
        format!("GET /api/cart/{i} 200 12.5ms user=anonymous agent=Mozilla/5.0 (X11; Linux x86_64)")
    });
    let json = recs(&|i| {
        format!(
            r#"{{"level":"info","msg":"request served","path":"/api/cart/{i}","status":200,"duration_ms":12.5,"ts":"2026-11-23T10:00:00.123Z","user":{{"id":{i},"tier":"gold"}}}}"#
        )
    });
    let cost = |e: &Encoder, rs: &[Record]| {
        let mut best = f64::MAX;
        let mut out = Vec::with_capacity(4096);
        for _ in 0..5 {
            let t0 = thread_cpu();
            for r in rs {
                out.clear();
                e.encode(r, &mut out);
            }
            best = best.min((thread_cpu() - t0) / rs.len() as f64 * 1e9);
        }
        best
    };
    let (none, glog, json_p) = (enc("none"), enc("glog"), enc("json"));
    let (a, b) = (cost(&none, &plain), cost(&glog, &plain));
    let (c, d) = (cost(&none, &json), cost(&json_p, &json));
    println!("\n6. GELF encoding CPU per record (encoder alone, best of 5, same records)");
    println!("| input | parse=none | with parser | ratio |");
    println!("|---|---|---|---|");
    println!("| plain lines (what every task pays) | {a:.0} ns | parse=glog (default): {b:.0} ns | {:.2}x |", b / a);
    println!(
        "| JSON lines | {c:.0} ns | parse=json: {d:.0} ns | {:.2}x |",
        d / c
    );
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("Linux {}", s.trim()))
        .unwrap_or_default()
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Writes `n` lines at `rate` per second, each carrying its write time,
/// after a warm-up line and a pause (topic creation, connections and the
/// consumer's start are not latency).
fn gen(rate: u64, n: u64) {
    let out = std::io::stdout();
    let mut out = out.lock();
    writeln!(out, "warm-up").unwrap();
    out.flush().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let t0 = Instant::now();
    let pad = "p".repeat(100);
    for i in 0..n {
        let due = Duration::from_micros(i * 1_000_000 / rate);
        let el = t0.elapsed();
        if due > el {
            out.flush().unwrap();
            std::thread::sleep(due - el);
        }
        writeln!(out, "t={} {pad}", now_us()).unwrap();
        if rate <= 10_000 {
            out.flush().unwrap();
        }
    }
    out.flush().unwrap();
}

fn consume_latency(addr: &str, topic: &str, n: usize) -> Vec<f64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", "bench")
        .set("fetch.wait.max.ms", "5")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    // Wait for the topic (created by the first produce).
    let t0 = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            if md
                .topics()
                .first()
                .is_some_and(|t| !t.partitions().is_empty())
            {
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "topic {topic} never appeared"
        );
    }
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    while lat.len() < n && t0.elapsed() < Duration::from_secs(120) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let now = now_us();
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let s = v["short_message"].as_str().unwrap();
            if let Some(t) = s
                .strip_prefix("t=")
                .and_then(|r| r.split(' ').next())
                .and_then(|t| t.parse::<u64>().ok())
            {
                lat.push(now.saturating_sub(t) as f64 / 1000.0);
            }
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    lat
}

/// A bare librdkafka producer with the publisher's settings, sending every
/// line of `file` and waiting for every delivery.
/// The same records, pre-encoded as GELF (the stdout sink of `run`), for
/// the bare producer: `<r>/gelf.txt`.
fn pre_encode(bin: &Path, r: &Path, input: &Path) -> PathBuf {
    let gelf = r.join("gelf.txt");
    let st = Command::new(bin)
        .args(["run", "--sandbox"])
        .arg(r.join("sbx-enc"))
        .arg("--")
        .arg("cat")
        .arg(input)
        .stdout(std::fs::File::create(&gelf).unwrap())
        .status()
        .unwrap();
    assert!(st.success());
    gelf
}

/// The reference: a bare librdkafka producer with our settings (and the
/// `kafka.key=value` overrides in `sets`) sending pre-encoded GELF lines.
fn bare(addr: &str, topic: &str, file: &Path, sets: &[String]) {
    let mut props = BTreeMap::new();
    props.insert("bootstrap.servers".to_string(), addr.to_string());
    for s in sets {
        if let Some((k, v)) = s.strip_prefix("kafka.").and_then(|s| s.split_once('=')) {
            props.insert(k.to_string(), v.to_string());
        }
    }
    let p: BaseProducer = client_config(&props).create().unwrap();
    let f = std::io::BufReader::new(std::fs::File::open(file).unwrap());
    for line in f.lines() {
        let line = line.unwrap();
        loop {
            match p.send(
                BaseRecord::<str, str>::to(topic)
                    .key("bench")
                    .payload(&line),
            ) {
                Ok(()) => break,
                Err((_, _)) => {
                    p.poll(Duration::from_millis(5));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(120)).unwrap();
}

fn lean_companion() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mesos-gelf-companion"))
}

/// RSS and private dirty KB (smaps_rollup) of `cmd` reading a pipe, taken
/// while it is still open after a burst of 200,000 short lines.
fn memory_under_burst(cmd: &mut Command) -> (u64, u64) {
    let mut c = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut w = c.stdin.take().unwrap();
    let mut burst = String::new();
    for i in 0..200_000 {
        burst.push_str(&format!("short line {i}\n"));
    }
    w.write_all(burst.as_bytes()).unwrap();
    // The whole burst is in a pipe of 64 KB: it was read once the write
    // returned but for the last 64 KB; give it a moment to settle.
    std::thread::sleep(Duration::from_millis(500));
    let smaps =
        std::fs::read_to_string(format!("/proc/{}/smaps_rollup", c.id())).unwrap_or_default();
    let kb = |k: &str| {
        smaps
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let out = (kb("Rss:"), kb("Private_Dirty:"));
    drop(w);
    c.wait().unwrap();
    out
}

/// Process CPU seconds (user + system) of `pid` from /proc.
fn cpu_of(pid: u32) -> f64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name in parentheses.
    let rest = st.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (n(11) + n(12)) / tick
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// `n` containers on one "agent" (this process: the module's Logger with
/// its publisher thread) with real companions, each writing one line and
/// then idle: prepare() time, the companions' memory, the publisher's
/// CPU while all are idle, file descriptors and inotify watches.
fn scale_many(n: usize) {
    let broker = support::Broker::start();
    let root = tempfile::tempdir().unwrap();
    let spool = root.path().join("spool");
    let cfg = Config::from_pairs(&[
        ("kafka.bootstrap.servers", broker.addr().as_str()),
        ("topic", "bench-many"),
        ("spool_dir", spool.to_str().unwrap()),
    ])
    .unwrap();
    // The companion an installed agent starts: the lean binary.
    let mut logger = Logger::new(cfg, lean_companion()).unwrap();
    logger.initialize(None).unwrap();
    let fds0 = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let mut times = Vec::with_capacity(n);
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let sbx = root.path().join(format!("sbx{i}"));
        std::fs::create_dir_all(&sbx).unwrap();
        let json = serde_json::json!({"directory": sbx.display().to_string()}).to_string();
        let t0 = Instant::now();
        let p = logger
            .prepare(&format!("many-{i:04}"), &json, None)
            .unwrap();
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        let mut out = std::fs::File::from(p.stdout);
        writeln!(out, "hello from {i}").unwrap();
        held.push((out, std::fs::File::from(p.stderr)));
    }
    // Every container's line delivered.
    let t0 = Instant::now();
    let m = logger.publisher().unwrap().metrics.clone();
    while m.snapshot()["records_published"].as_u64().unwrap_or(0) < n as u64 {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "lines not delivered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The companions: processes whose command line names this spool.
    let needle = spool.display().to_string();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_str().unwrap_or("").parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(&needle) {
            pids.push(pid);
        }
    }
    let (mut rss, mut private, mut dirty) = (0u64, 0u64, 0u64);
    for pid in &pids {
        let smaps =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        for l in smaps.lines() {
            let v = || {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if l.starts_with("Rss:") {
                rss += v();
            } else if l.starts_with("Private_Dirty:") {
                private += v();
                dirty += v();
            } else if l.starts_with("Private_Clean:") {
                private += v();
            }
        }
    }
    // Idle: the agent's (this process's) CPU over 10 s, all companions
    // idle with their pipes open; reference: a sleeping `sleep`.
    let me = std::process::id();
    let (c0, w0) = (cpu_of(me), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let idle = (cpu_of(me) - c0) / w0.elapsed().as_secs_f64();
    let comp_cpu: f64 = pids.iter().map(|p| cpu_of(*p)).sum();
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let mut watches = 0;
    for e in std::fs::read_dir("/proc/self/fdinfo").unwrap().flatten() {
        let info = std::fs::read_to_string(e.path()).unwrap_or_default();
        watches += info
            .lines()
            .filter(|l| l.starts_with("inotify wd:"))
            .count();
    }
    println!("\n{n} containers, one publisher, real companions (lean), each idle after one line");
    println!("| prepare() ms p50 / p99 / max | companions found | companion RSS sum / private sum (MB) | private (dirty) per companion (MB) | agent CPU while all idle | companions' CPU in total (s) | agent fds: 2 per container held by the test + publisher's | inotify watches |");
    println!("|---|---|---|---|---|---|---|---|");
    let max = times.iter().cloned().fold(0.0, f64::max);
    println!(
        "| {:.1} / {:.1} / {:.1} | {} | {:.0} / {:.0} | {:.2} ({:.2}) | {:.2}% of a core | {:.2} | {} (+{} since start; {} held by the test) | {} |",
        percentile(&mut times.clone(), 0.5),
        percentile(&mut times, 0.99),
        max,
        pids.len(),
        rss as f64 / 1024.0,
        private as f64 / 1024.0,
        private as f64 / 1024.0 / pids.len().max(1) as f64,
        dirty as f64 / 1024.0 / pids.len().max(1) as f64,
        idle * 100.0,
        comp_cpu,
        fds,
        fds - fds0,
        2 * n,
        watches
    );
    drop(held);
    drop(logger);
}

/// Becomes `/usr/bin/time ... mesos-gelf-companion ...` (same args and
/// fds), recording the companion's usage in `<spool root>/companion.usage`.
fn wrap_companion(args: &[String]) {
    let spool = args
        .iter()
        .position(|a| a == "--spool")
        .map(|i| PathBuf::from(&args[i + 1]))
        .unwrap();
    let out = spool.parent().unwrap().join("companion.usage");
    // The lean companion: what the module and `run` start by default.
    let err = timed(&out, lean_companion()).args(args).exec();
    panic!("exec /usr/bin/time: {err}");
}

/// The agent in one process: 100 containers prepared, one publisher thread,
/// 100 writer threads at 1000 lines/s each for 10 s.
fn scale(addr: &str, root: &Path) {
    let spool = root.join("spool");
    let cfg = Config::from_pairs(&[
        ("kafka.bootstrap.servers", addr),
        ("topic", "bench-scale"),
        ("spool_dir", spool.to_str().unwrap()),
    ])
    .unwrap();
    let mut logger = Logger::new(cfg, support::bin()).unwrap();
    logger.initialize(None).unwrap();
    let mut handles = Vec::new();
    for i in 0..100 {
        let sbx = root.join(format!("sbx{i}"));
        std::fs::create_dir_all(&sbx).unwrap();
        let json = serde_json::json!({"directory": sbx.display().to_string()}).to_string();
        let p = logger
            .prepare(&format!("scale-{i:03}"), &json, None)
            .unwrap();
        let mut out = std::fs::File::from(p.stdout);
        handles.push(std::thread::spawn(move || {
            let t0 = Instant::now();
            let line = format!("{}\n", "s".repeat(150));
            let mut written = 0u64;
            while t0.elapsed() < Duration::from_secs(10) {
                let due = (t0.elapsed().as_millis() as u64 + 10) * 1000 / 1000;
                while written < due {
                    out.write_all(line.as_bytes()).unwrap();
                    written += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let rate = written as f64 / t0.elapsed().as_secs_f64();
            drop(p.stderr);
            rate
        }));
    }
    let rates: Vec<f64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let t0 = Instant::now();
    while std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .any(|e| e.path().is_dir())
        && t0.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = logger.publisher().unwrap().metrics.snapshot();
    let min = rates.iter().cloned().fold(f64::MAX, f64::min);
    println!(
        "| writers' achieved rate: min {:.0} lines/s of 1000 offered | records published {} | drained {:.1} s after the writers stopped |",
        min, m["records_published"], t0.elapsed().as_secs_f64()
    );
    drop(logger);
}
