//! `mesos-gelf spool`: what is waiting, where, since when, what was lost;
//! the records themselves; and sending them again.
//!
//! All of it reads the spool through `mesos_gelf_logger::spool` (the same
//! frame decoder and reader as the publisher) and takes no lock: it never
//! changes the spool. Errors are one line and exit status 2.

use clap::{Args, Subcommand};
use mesos_gelf_logger::gelf::{Encoder, Fit};
use mesos_gelf_logger::log::printable;
use mesos_gelf_logger::publisher::kafka::KafkaSink;
use mesos_gelf_logger::publisher::sink::{Sink, Ticket};
use mesos_gelf_logger::spool::inspect::{self, Status};
use mesos_gelf_logger::spool::notice::LossReason;
use mesos_gelf_logger::spool::record::now_micros;
use mesos_gelf_logger::spool::{
    container_key, data_dir, ContainerMeta, Next, Position, SpoolReader,
};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum SpoolCmd {
    /// One row per container: backlog, age, checkpoint, losses, companion.
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// Print a container's spooled records (raw lines, or the GELF that
    /// would be sent).
    Cat {
        /// Container id (or its spool directory name).
        container: String,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        range: Range,
        /// Print each record as the exact GELF message the publisher sends.
        #[arg(long)]
        gelf: bool,
        /// Parameters for --gelf (host, field.*, labels ...), as key=value.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Send a container's spooled records to Kafka again (e.g. after a
    /// topic was lost); needs `spool_retain` for records already delivered.
    Replay {
        container: String,
        /// Topic to send to.
        #[arg(long)]
        topic: String,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        range: Range,
        /// Parameters (kafka.bootstrap.servers ... host, field.*), key=value.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
}

#[derive(Args)]
pub struct Common {
    /// The spool root (default: the agent module's).
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct Range {
    /// First `_seq` (of any stream) to include.
    #[arg(long)]
    from_seq: Option<u64>,
    /// Last `_seq` to include.
    #[arg(long)]
    to_seq: Option<u64>,
}

impl Range {
    fn has(&self, seq: u64) -> bool {
        self.from_seq.is_none_or(|f| seq >= f) && self.to_seq.is_none_or(|t| seq <= t)
    }
}

fn root(c: &Common) -> Result<PathBuf, String> {
    let d = c
        .spool_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(mesos_gelf_logger::logger::DEFAULT_SPOOL_DIR));
    if !d.is_dir() {
        return Err(format!("spool directory {} does not exist", d.display()));
    }
    // A spool is root's, mode 0700: say so, not that it is no spool.
    if let Err(e) = std::fs::read_dir(&d) {
        return Err(format!("cannot read {}: {e}", d.display()));
    }
    if !inspect::is_spool_root(&d) {
        return Err(format!(
            "{} is not a mesos-gelf spool (no publisher.lock, metrics.json or container spool in it)",
            d.display()
        ));
    }
    Ok(d)
}

/// The container's spool directory, by id or directory name. The id wins:
/// `container_key` gives its directory, taken when its `meta.json` names
/// that very id (a directory name that is also another container's id,
/// such as a hashed name, would otherwise pick the wrong one). Otherwise a
/// plain directory name (one path component, never `./x` or `x/`).
fn container_dir(root: &Path, name: &str) -> Result<PathBuf, String> {
    let is_spool =
        |d: &Path| d.join(mesos_gelf_logger::spool::META_FILE).is_file() || data_dir(d).is_dir();
    let by_id = root.join(container_key(name));
    if is_spool(&by_id) {
        let named = mesos_gelf_logger::spool::ContainerMeta::load(&by_id)
            .map(|m| m.identity.container_id == name)
            .unwrap_or(false);
        if named || !is_spool(&root.join(name)) {
            return Ok(by_id);
        }
    }
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    if plain && is_spool(&root.join(name)) {
        return Ok(root.join(name));
    }
    Err(format!(
        "no container {} in the spool {}",
        name.escape_debug(),
        root.display()
    ))
}

pub fn main(cmd: SpoolCmd) -> Result<i32, String> {
    match cmd {
        SpoolCmd::Status { common } => status(&common),
        SpoolCmd::Cat {
            container,
            common,
            range,
            gelf,
            set,
        } => cat(&container, &common, &range, gelf, &set),
        SpoolCmd::Replay {
            container,
            topic,
            common,
            range,
            set,
        } => replay(&container, &topic, &common, &range, &set),
    }
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}K", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}

fn age(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1000 => format!("{ms}ms"),
        Some(ms) if ms < 120_000 => format!("{}s", ms / 1000),
        Some(ms) if ms < 7_200_000 => format!("{}m", ms / 60_000),
        Some(ms) => format!("{}h", ms / 3_600_000),
    }
}

fn status(c: &Common) -> Result<i32, String> {
    let root = root(c)?;
    let now = now_micros();
    // Per-container losses the running publisher saw (delivered notices).
    let metrics: Value = std::fs::read(root.join("metrics.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let mut rows: Vec<Status> = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| format!("cannot read {}: {e}", root.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .filter(|p| p.join(mesos_gelf_logger::spool::META_FILE).is_file() || data_dir(p).is_dir())
        .collect();
    entries.sort();
    for d in entries {
        let mut st = inspect::status(&d, now);
        if let Some(l) = metrics["containers"][&st.key]["losses"].as_object() {
            for (k, n) in l {
                if let (Some(r), Some(n)) = (LossReason::from_name(k), n.as_u64()) {
                    match st.losses.iter_mut().find(|(x, _)| *x == r) {
                        Some((_, m)) => *m = (*m).max(n),
                        None => st.losses.push((r, n)),
                    }
                }
            }
        }
        rows.push(st);
    }
    rows.sort_by(|a, b| {
        b.pending_bytes
            .cmp(&a.pending_bytes)
            .then(a.key.cmp(&b.key))
    });
    let total_records: u64 = rows.iter().map(|r| r.pending_records).sum();
    let total_bytes: u64 = rows.iter().map(|r| r.pending_bytes).sum();
    let oldest = rows.iter().filter_map(|r| r.oldest_pending_ms).max();
    let mut out = std::io::stdout().lock();
    if c.json {
        let v = json!({
            "spool_dir": root.display().to_string(),
            "containers": rows.iter().map(Status::to_json).collect::<Vec<_>>(),
            "totals": {
                "containers": rows.len(),
                "pending_records": total_records,
                "pending_bytes": total_bytes,
                "oldest_pending_ms": oldest,
                "retained_bytes": rows.iter().map(|r| r.retained_bytes).sum::<u64>(),
            },
            "publisher": metrics.get("publisher_active").cloned().unwrap_or(Value::Null),
        });
        let _ = writeln!(out, "{v}");
        return Ok(0);
    }
    let _ = writeln!(
        out,
        "{:<40} {:<24} {:<16} {:>9} {:>8} {:>7} {:>12} {:<9} LOST",
        "CONTAINER", "TASK", "APP", "PENDING", "BYTES", "OLDEST", "CHECKPOINT", "COMPANION"
    );
    let cut = |s: &str, n: usize| -> String {
        // Control characters shown escaped: an id or task id with a
        // newline or an escape sequence must not forge or colour a row.
        let s = printable(s);
        if s.chars().count() <= n {
            s.to_string()
        } else {
            let t: String = s.chars().take(n - 1).collect();
            format!("{t}…")
        }
    };
    for r in &rows {
        let lost: Vec<String> = r
            .losses
            .iter()
            .map(|(k, n)| format!("{}={n}", k.name()))
            .collect();
        let mut lost = lost.join(",");
        if r.torn > 0 {
            lost.push_str(&format!(
                "{}torn_frames={}",
                if lost.is_empty() { "" } else { "," },
                r.torn
            ));
        }
        let _ = writeln!(
            out,
            "{:<40} {:<24} {:<16} {:>9} {:>8} {:>7} {:>12} {:<9} {}",
            cut(&r.container_id, 40),
            cut(r.task_id.as_deref().unwrap_or("-"), 24),
            cut(r.app.as_deref().unwrap_or("-"), 16),
            r.pending_records,
            human(r.pending_bytes),
            age(r.oldest_pending_ms),
            r.checkpoint
                .map_or("-".into(), |p| format!("{}:{}", p.segment, p.offset)),
            r.companion,
            if lost.is_empty() { "-".into() } else { lost }
        );
    }
    for r in rows.iter().filter(|r| r.problem.is_some()) {
        let _ = writeln!(
            out,
            "{}: {}",
            cut(&r.key, 80),
            printable(r.problem.as_deref().unwrap_or_default())
        );
    }
    let _ = writeln!(
        out,
        "{} containers, {} records ({}) pending, oldest {}",
        rows.len(),
        total_records,
        human(total_bytes),
        age(oldest)
    );
    Ok(0)
}

/// Every record of the container's spool in `range`, oldest first, with
/// the count of corrupt frames skipped.
fn records(
    dir: &Path,
    range: &Range,
    mut each: impl FnMut(&mesos_gelf_logger::spool::Record) -> Result<(), String>,
) -> Result<u64, String> {
    let mut r = SpoolReader::at(&data_dir(dir), Position::default());
    loop {
        match r.read_next() {
            Ok(Next::Record(rec, _)) => {
                if range.has(rec.seq) {
                    each(&rec)?;
                }
            }
            Ok(Next::Pending) | Ok(Next::Finished) => break,
            Err(e) => return Err(format!("reading {}: {e}", dir.display())),
        }
    }
    Ok(r.torn)
}

fn encoder(dir: &Path, sets: &[String]) -> Result<(Encoder, ContainerMeta), String> {
    let config = super::config_from_sets(sets)?;
    let meta = ContainerMeta::load(dir)?;
    Ok((Encoder::new(&config, &meta.identity, &meta.settings), meta))
}

fn cat(name: &str, c: &Common, range: &Range, gelf: bool, sets: &[String]) -> Result<i32, String> {
    let root = root(c)?;
    let dir = container_dir(&root, name)?;
    let enc = if gelf {
        Some(encoder(&dir, sets)?.0)
    } else {
        None
    };
    // A spool whose meta.json this release cannot read (a newer format,
    // garbage) is shown, and said to be one.
    if let Err(e) = mesos_gelf_logger::spool::ContainerMeta::load(&dir) {
        eprintln!("mesos-gelf: warning: {}", printable(&e));
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut buf = Vec::new();
    let mut closed = false;
    let torn = records(&dir, range, |rec| {
        let r = if let Some(e) = &enc {
            buf.clear();
            e.encode(rec, &mut buf);
            out.write_all(&buf).and_then(|_| out.write_all(b"\n"))
        } else if c.json {
            let v = json!({
                "stream": rec.stream.name(),
                "seq": rec.seq,
                "part": rec.part,
                "ts_micros": rec.ts_micros,
                "line": String::from_utf8_lossy(&rec.payload),
            });
            writeln!(out, "{v}")
        } else {
            out.write_all(&rec.payload)
                .and_then(|_| out.write_all(b"\n"))
        };
        r.map_err(|e| {
            closed = e.kind() == std::io::ErrorKind::BrokenPipe;
            format!("writing: {e}")
        })
    });
    let torn = match torn {
        // `spool cat ... | head`: the reader has what it wanted; end as a
        // shell reports SIGPIPE, quietly.
        Err(_) if closed => return Ok(141),
        t => t?,
    };
    let _ = out.flush();
    if torn > 0 {
        return Err(format!(
            "{}: {torn} corrupt frame(s) (a torn write or a damaged segment): from each, the rest of its segment was skipped; the records before it and the following segments are shown",
            dir.display()
        ));
    }
    Ok(0)
}

fn replay(
    name: &str,
    topic: &str,
    c: &Common,
    range: &Range,
    sets: &[String],
) -> Result<i32, String> {
    mesos_gelf_logger::config::check_topic(topic).map_err(|e| format!("--topic: {e}"))?;
    let root = root(c)?;
    let dir = container_dir(&root, name)?;
    let (enc, meta) = encoder(&dir, sets)?;
    let config = super::config_from_sets(sets)?;
    if !config.has_kafka() {
        return Err("replay needs --set kafka.bootstrap.servers=HOST:PORT".into());
    }
    let mut sink = KafkaSink::new(&config.kafka)?;
    let key =
        meta.identity.container_id.as_bytes()[..meta.identity.container_id.len().min(128)].to_vec();
    let (mut sent, mut acked, mut failed) = (0u64, 0u64, 0u64);
    let mut deliveries = Vec::new();
    let mut buf = Vec::new();
    let mut last_error = None;
    let mut drain = |sink: &mut KafkaSink, wait: Duration, acked: &mut u64, failed: &mut u64| {
        sink.poll(wait, &mut deliveries);
        for d in deliveries.drain(..) {
            match d.result {
                Ok(()) => *acked += 1,
                Err(e) => {
                    *failed += 1;
                    last_error = Some(format!("{e:?}"));
                }
            }
        }
    };
    let torn = records(&dir, range, |rec| {
        buf.clear();
        if enc.encode(rec, &mut buf) == Fit::Over {
            return Ok(());
        }
        let ticket = Ticket {
            container: 1,
            generation: 0,
            index: sent,
            pos: Position::default(),
            bytes: buf.len(),
        };
        let t0 = Instant::now();
        loop {
            match sink.send(topic, &key, &buf, now_micros() / 1000, ticket) {
                Ok(()) => break,
                Err(mesos_gelf_logger::publisher::sink::SendError::Full) => {
                    drain(
                        &mut sink,
                        Duration::from_millis(10),
                        &mut acked,
                        &mut failed,
                    );
                    if t0.elapsed() > Duration::from_secs(60) {
                        return Err("Kafka accepts nothing (queue full for 60 s)".into());
                    }
                }
                Err(e) => return Err(format!("cannot send: {e:?}")),
            }
        }
        sent += 1;
        drain(&mut sink, Duration::ZERO, &mut acked, &mut failed);
        Ok(())
    })?;
    // Wait for every delivery report (or give up after a minute without any).
    let mut last = (acked + failed, Instant::now());
    let mut said = false;
    while acked + failed < sent {
        drain(
            &mut sink,
            Duration::from_millis(50),
            &mut acked,
            &mut failed,
        );
        if acked + failed != last.0 {
            last = (acked + failed, Instant::now());
        } else if !said && last.1.elapsed() > Duration::from_secs(5) {
            // Once, so a dead broker is not a minute of silence.
            said = true;
            let why = sink.take_errors().pop().map(|e| e.text);
            eprintln!(
                "mesos-gelf: waiting for Kafka to acknowledge {} of {sent} records (giving up after 60 s without any){}",
                sent - acked - failed,
                why.map_or(String::new(), |e| format!(": {}", printable(&e)))
            );
        } else if last.1.elapsed() > Duration::from_secs(60) {
            for e in sink.take_errors() {
                last_error = Some(e.text);
            }
            break;
        }
    }
    eprintln!(
        "mesos-gelf: replayed {acked} of {sent} records of {} to {}{}{}",
        printable(&meta.identity.container_id),
        printable(topic),
        if torn > 0 {
            format!(" ({torn} corrupt frames skipped)")
        } else {
            String::new()
        },
        last_error.map_or(String::new(), |e| format!("; last error: {e}"))
    );
    Ok(if acked == sent && torn == 0 { 0 } else { 3 })
}
