//! The spool on real files: torn tails, checkpoints, the cap with a reader
//! that never acknowledges, and a real companion process writing into it.

mod support;

use mesos_gelf_logger::config::ContainerSettings;
use mesos_gelf_logger::metadata::Identity;
use mesos_gelf_logger::spool::notice::LossReason;
use mesos_gelf_logger::spool::record::{now_micros, Stream};
use mesos_gelf_logger::spool::{
    list_segments, segment_path, ContainerMeta, Next, Position, Record, SpoolReader, SpoolWriter,
};
use std::io::Write;
use std::path::Path;

fn rec(seq: u64, payload: &[u8]) -> Record {
    Record {
        stream: Stream::Stdout,
        flags: 0,
        part: 0,
        seq,
        ts_micros: now_micros(),
        payload: payload.to_vec(),
    }
}

fn read_all(dir: &Path) -> (Vec<Record>, SpoolReader, bool) {
    let mut r = SpoolReader::at(dir, Position::default());
    let mut out = Vec::new();
    loop {
        match r.read_next().unwrap() {
            Next::Record(rec, _) => out.push(rec),
            Next::Pending => return (out, r, false),
            Next::Finished => return (out, r, true),
        }
    }
}

#[test]
fn torn_tail_at_every_byte_offset_is_detected_and_skipped() {
    let d = tempfile::tempdir().unwrap();
    let mut w = SpoolWriter::open(d.path(), 1 << 20, 1 << 30).unwrap();
    for i in 1..=5u64 {
        w.append(&rec(
            i,
            format!("record number {i} with some payload").as_bytes(),
        ));
    }
    w.flush();
    w.finish(&mut 0, [5, 0]).unwrap();
    let seg = segment_path(d.path(), list_segments(d.path()).unwrap()[0]);
    let full = std::fs::read(&seg).unwrap();
    let last_len = Record::frame_len(format!("record number {} with some payload", 5).len());
    let last_start = full.len() - last_len;
    for cut in last_start..full.len() {
        std::fs::write(&seg, &full[..cut]).unwrap();
        let (recs, r, finished) = read_all(d.path());
        assert!(
            finished,
            "cut {cut}: the writer is done, so the tail is torn, not pending"
        );
        assert_eq!(recs.len(), 4, "cut {cut}");
        for (i, x) in recs.iter().enumerate() {
            assert_eq!(x.seq, i as u64 + 1);
            assert_eq!(
                x.payload,
                format!("record number {} with some payload", i + 1).as_bytes()
            );
        }
        assert_eq!(r.torn, u64::from(cut > last_start), "cut {cut}");
    }
    // A flipped byte inside an earlier record: that segment's rest is skipped, never misread.
    let mut bad = full.clone();
    bad[20] ^= 0xff;
    std::fs::write(&seg, &bad).unwrap();
    let (recs, r, _) = read_all(d.path());
    assert!(recs.is_empty());
    assert_eq!(r.torn, 1);
}

#[test]
fn a_short_tail_is_pending_while_the_writer_is_live() {
    let d = tempfile::tempdir().unwrap();
    let mut w = SpoolWriter::open(d.path(), 1 << 20, 1 << 30).unwrap();
    w.append(&rec(1, b"one"));
    w.flush();
    let seg = segment_path(d.path(), 1);
    // Half a frame, as a reader may see mid-write.
    let mut half = Vec::new();
    rec(2, b"two").encode_frame(&mut half);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&half[..10])
        .unwrap();
    let mut r = SpoolReader::at(d.path(), Position::default());
    assert!(matches!(r.read_next().unwrap(), Next::Record(x, _) if x.payload == b"one"));
    assert!(matches!(r.read_next().unwrap(), Next::Pending));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&half[10..])
        .unwrap();
    assert!(matches!(r.read_next().unwrap(), Next::Record(x, _) if x.payload == b"two"));
    assert_eq!(r.torn, 0);
}

#[test]
fn checkpoint_resume_and_acknowledged_segments_are_deleted() {
    let d = tempfile::tempdir().unwrap();
    let mut w = SpoolWriter::open(d.path(), 4096, 1 << 30).unwrap();
    for i in 1..=2000u64 {
        w.append(&rec(i, format!("line {i}").as_bytes()));
        if i % 50 == 0 {
            w.flush();
        }
    }
    w.finish(&mut 0, [2000, 0]).unwrap();
    assert!(list_segments(d.path()).unwrap().len() > 5);
    let (mut r, _) = SpoolReader::open(d.path());
    let mut pos = Position::default();
    for _ in 0..1000 {
        match r.read_next().unwrap() {
            Next::Record(_, p) => pos = p,
            other => panic!("{other:?}"),
        }
    }
    r.acknowledge(pos, std::time::Duration::ZERO).unwrap();
    assert!(list_segments(d.path())
        .unwrap()
        .iter()
        .all(|&s| s >= pos.segment));
    // A new reader (publisher restart) resumes right after record 1000.
    let (mut r2, warn) = SpoolReader::open(d.path());
    assert!(warn.is_none());
    match r2.read_next().unwrap() {
        Next::Record(x, _) => assert_eq!(x.seq, 1001),
        other => panic!("{other:?}"),
    }
}

/// Writes `n` records with `flush_every` records per flush (0: one batch at
/// the end), then checks the cap: the newest are kept, what is kept is
/// contiguous, and the notices' `_seq` ranges name exactly the rest.
fn cap_keeps_newest(cap: u64, n: u64, flush_every: u64) {
    let d = tempfile::tempdir().unwrap();
    let mut w = SpoolWriter::open(d.path(), cap / 4, cap).unwrap();
    for i in 1..=n {
        w.append(&rec(
            i,
            format!("{i:08} padding padding padding").as_bytes(),
        ));
        if flush_every > 0 && i % flush_every == 0 {
            w.flush();
        }
    }
    w.flush();
    let totals = w.finish(&mut 0, [n, 0]).unwrap();
    let dropped = totals
        .iter()
        .find(|(r, _)| *r == LossReason::SpoolCap)
        .unwrap()
        .1;
    let total: u64 = list_segments(d.path())
        .unwrap()
        .iter()
        .map(|&s| std::fs::metadata(segment_path(d.path(), s)).unwrap().len())
        .sum();
    assert!(
        total <= cap,
        "the spool stays under its cap: {total} > {cap}"
    );
    let (recs, _, finished) = read_all(d.path());
    assert!(finished);
    let data: Vec<&Record> = recs.iter().filter(|r| r.stream == Stream::Stdout).collect();
    assert!(!data.is_empty(), "something is kept");
    assert_eq!(data.len() as u64 + dropped, n, "kept + dropped = written");
    assert_eq!(data.last().unwrap().seq, n, "the newest are kept");
    assert!(
        data.windows(2).all(|p| p[1].seq == p[0].seq + 1),
        "what is kept is contiguous"
    );
    // The notices name every dropped seq exactly once, and no kept one.
    let mut named = std::collections::BTreeSet::new();
    for r in recs.iter().filter(|r| r.stream == Stream::Notice) {
        let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(v["reason"], "spool_cap", "{v}");
        assert_eq!(v["stream"], "stdout", "{v}");
        let seqs = support::lost_seqs(&v);
        assert_eq!(v["records"].as_u64().unwrap(), seqs.len() as u64, "{v}");
        for s in seqs {
            assert!(named.insert(s), "seq {s} named twice");
        }
        assert!(v["text"].as_str().unwrap().contains("dropped"), "{v}");
    }
    let expected: std::collections::BTreeSet<u64> = (1..data[0].seq).collect();
    assert_eq!(named, expected, "notices name exactly the dropped seqs");
}

#[test]
fn spool_cap_drops_oldest_without_blocking_and_reports_it() {
    cap_keeps_newest(64 * 1024, 20_000, 100);
}

/// A batch larger than the whole (minimum) cap used to drop every segment,
/// the newest included, so nothing recent was kept.
#[test]
fn a_burst_larger_than_the_smallest_cap_keeps_the_newest_records() {
    cap_keeps_newest(64 * 1024, 20_000, 0);
    cap_keeps_newest(64 * 1024, 20_000, 7_000);
    cap_keeps_newest(1 << 20, 100_000, 0);
}

#[test]
fn companion_never_blocks_on_a_full_spool_and_reports_drops() {
    let root = tempfile::tempdir().unwrap();
    let spool = root.path().join("spool");
    let sandbox = root.path().join("sandbox");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::create_dir_all(&sandbox).unwrap();
    let settings = ContainerSettings {
        spool_max_size: 64 * 1024,
        ..Default::default()
    };
    ContainerMeta {
        identity: Identity {
            container_id: "c".into(),
            sandbox: sandbox.display().to_string(),
            ..Default::default()
        },
        settings,
        run_as: None,
    }
    .store(&spool)
    .unwrap();
    let (mut out, err, mut child) = support::start_companion(&spool, &sandbox);
    drop(err);
    // Nobody reads the spool. 10 MB must still go through at once.
    let t0 = std::time::Instant::now();
    let line = format!("{}\n", "x".repeat(99));
    for _ in 0..100_000 {
        out.write_all(line.as_bytes()).unwrap();
    }
    drop(out);
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(t0.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(
        std::fs::metadata(sandbox.join("stdout")).unwrap().len(),
        10_000_000
    );
    let (recs, _, finished) = read_all(&spool.join("data"));
    assert!(finished);
    let notices: Vec<serde_json::Value> = recs
        .iter()
        .filter(|r| r.stream == Stream::Notice)
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    assert!(
        !notices.is_empty() && notices.iter().all(|n| n["reason"] == "spool_cap"),
        "{notices:?}"
    );
    let kept: Vec<u64> = recs
        .iter()
        .filter(|r| r.stream == Stream::Stdout)
        .map(|r| r.seq)
        .collect();
    let named: Vec<u64> = notices.iter().flat_map(support::lost_seqs).collect();
    let mut all: Vec<u64> = kept.iter().chain(named.iter()).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=100_000).collect::<Vec<_>>(),
        "every seq is kept or named lost, once"
    );
    let (kept, reported) = (kept.len() as u64, named.len() as u64);
    assert!(
        kept > 0 && kept < 100_000,
        "kept {kept}, reported {reported}, {notices:?}"
    );
    assert_eq!(kept + reported, 100_000, "kept + reported lost = written");
    assert_eq!(
        recs.iter()
            .rfind(|r| r.stream == Stream::Stdout)
            .unwrap()
            .seq,
        100_000,
        "the newest are kept"
    );
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
}

/// `data/` belongs to the task's user and the publisher reads it as root: a
/// task that plants links and FIFOs there must not make the publisher write
/// through a link, read another container's spool, or wait forever.
#[test]
fn planted_links_and_fifos_in_data_are_never_followed_written_or_waited_on() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    // Another container's spool, which the task would like shipped as its own.
    let other = d.path().join("other");
    let mut w = SpoolWriter::open(&other, 1 << 20, 1 << 30).unwrap();
    w.append(&rec(1, b"another container's secret"));
    w.finish(&mut 0, [1, 0]).unwrap();
    // A root-owned file the task would like overwritten, and a checkpoint
    // elsewhere that would skip the task's records if it were read.
    let victim = d.path().join("victim");
    std::fs::write(&victim, "keep\n").unwrap();
    let elsewhere = d.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    mesos_gelf_logger::spool::checkpoint::store(
        &elsewhere,
        Position {
            segment: 99,
            offset: 8,
        },
    )
    .unwrap();

    let mut w = SpoolWriter::open(&data, 1 << 20, 1 << 30).unwrap();
    for i in 1..=3 {
        w.append(&rec(i, format!("line {i}").as_bytes()));
    }
    w.flush();
    drop(w);
    mkfifo(&segment_path(&data, 2));
    std::os::unix::fs::symlink(segment_path(&other, 1), segment_path(&data, 3)).unwrap();
    std::os::unix::fs::symlink(&victim, data.join("checkpoint.tmp")).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("checkpoint"), data.join("checkpoint")).unwrap();
    // The companion restarted: it writes after the highest segment (4).
    let mut w = SpoolWriter::open(&data, 1 << 20, 1 << 30).unwrap();
    for i in 4..=6 {
        w.append(&rec(i, format!("line {i}").as_bytes()));
    }
    w.finish(&mut 0, [6, 0]).unwrap();

    // Read on another thread so that a hang fails the test instead of
    // stalling it.
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = data.clone();
    std::thread::spawn(move || {
        let (mut r, warning) = SpoolReader::open(&dir);
        let mut got = Vec::new();
        let mut last = Position::default();
        let finished = loop {
            match r.read_next().unwrap() {
                Next::Record(x, p) => {
                    got.push(String::from_utf8(x.payload).unwrap());
                    last = p;
                }
                Next::Pending => break false,
                Next::Finished => break true,
            }
        };
        r.acknowledge(last, std::time::Duration::ZERO).unwrap();
        tx.send((warning, got, r.torn, finished)).unwrap();
    });
    let (warning, got, torn, finished) = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the reader hung on a planted FIFO");
    let warning = warning.expect("a linked checkpoint is reported");
    assert!(warning.contains("not a regular file"), "{warning}");
    assert_eq!(
        got,
        ["line 1", "line 2", "line 3", "line 4", "line 5", "line 6"],
        "every record of its own, from the start, nothing of the other's"
    );
    assert_eq!(torn, 2, "the FIFO and the link are counted as torn");
    assert!(finished);
    // The checkpoint was written as a new regular file; the link planted as
    // its temporary file was removed, its target never touched.
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
    let meta = std::fs::symlink_metadata(data.join("checkpoint")).unwrap();
    assert!(meta.file_type().is_file());
    assert!(!data.join("checkpoint.tmp").exists());
    assert_eq!(
        mesos_gelf_logger::spool::checkpoint::load(&elsewhere).unwrap(),
        Some(Position {
            segment: 99,
            offset: 8
        }),
        "the other checkpoint is untouched"
    );
    // A FIFO as the checkpoint reads as corrupt at once.
    std::fs::remove_file(data.join("checkpoint")).unwrap();
    mkfifo(&data.join("checkpoint"));
    let t0 = std::time::Instant::now();
    let (r, warning) = SpoolReader::open(&data);
    assert!(t0.elapsed() < std::time::Duration::from_secs(1));
    assert!(warning.unwrap().contains("not a regular file"));
    assert_eq!(r.position(), Position::default());
}

/// Records read, then taken back from the sink, are read again even when
/// the companion unlinked their segments meanwhile (its cap, a full
/// filesystem): the reader keeps the descriptors of segments it passed
/// until they are acknowledged. Before, a seek back into an unlinked
/// segment skipped to the first one left, past records the ledger counted
/// as read: lost, and never named.
#[test]
fn a_seek_back_reads_again_segments_unlinked_since() {
    let d = tempfile::tempdir().unwrap();
    // Small segments: the records span several.
    let mut w = SpoolWriter::open(d.path(), 200, 1 << 30).unwrap();
    for i in 1..=40u64 {
        w.append(&rec(i, format!("record {i} with a payload").as_bytes()));
        w.flush();
    }
    w.finish(&mut 0, [40, 0]).unwrap();
    let segs = list_segments(d.path()).unwrap();
    assert!(segs.len() >= 4, "{segs:?}");
    let (first, mut r, finished) = read_all(d.path());
    assert!(finished && first.len() == 40);
    for s in &segs[..segs.len() - 1] {
        std::fs::remove_file(segment_path(d.path(), *s)).unwrap();
    }
    r.seek(Position {
        segment: segs[0],
        offset: 0,
    });
    let mut again = Vec::new();
    while let Next::Record(rec, _) = r.read_next().unwrap() {
        again.push(rec.seq);
    }
    assert_eq!(again, (1..=40).collect::<Vec<_>>());
    // Acknowledged past them, they are let go: a new seek back finds
    // only what is on disk.
    r.release_before(*segs.last().unwrap());
    r.seek(Position {
        segment: segs[0],
        offset: 0,
    });
    let mut left = Vec::new();
    while let Next::Record(rec, _) = r.read_next().unwrap() {
        left.push(rec.seq);
    }
    assert_eq!(left.last(), Some(&40));
    assert!(left.len() < 40, "{left:?}");
}
