//! The companion's side of the spool: append frames, roll segments, enforce
//! the per-container cap by dropping the oldest unsent segment.
//!
//! The writer never blocks on the reader and never fails its caller: a write
//! error (disk full, I/O error) loses the frames in hand, counts them, and
//! makes the next write start a fresh segment so the torn one is skipped by
//! the reader instead of hiding later frames.

use super::record::Record;
use super::{list_segments, segment_path, MAGIC};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// One segment this writer created and may still have to drop.
#[derive(Debug)]
struct Segment {
    index: u64,
    bytes: u64,
    records: u64,
}

/// Counters of what the writer could not keep.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Losses {
    /// Records dropped because the spool reached its cap (oldest first).
    pub dropped_records: u64,
    pub dropped_bytes: u64,
    /// Records lost to write errors (e.g. the spool's filesystem is full).
    pub failed_records: u64,
    pub failed_bytes: u64,
}

pub struct SpoolWriter {
    dir: PathBuf,
    segment_size: u64,
    cap: u64,
    file: Option<File>,
    /// Segments written by this writer that may still exist, oldest first.
    segments: VecDeque<Segment>,
    next_index: u64,
    pending: Vec<u8>,
    pending_records: u64,
    pub losses: Losses,
    /// Losses already reported in a notice record.
    reported: Losses,
    pub last_error: Option<String>,
}

impl SpoolWriter {
    /// Opens the spool in `dir` for appending. Never reuses a segment: the
    /// first write goes to a new one after the highest existing.
    pub fn open(dir: &Path, segment_size: u64, cap: u64) -> std::io::Result<SpoolWriter> {
        std::fs::create_dir_all(dir)?;
        let last = list_segments(dir)?.last().copied().unwrap_or(0);
        Ok(SpoolWriter {
            dir: dir.to_path_buf(),
            segment_size,
            cap,
            file: None,
            segments: VecDeque::new(),
            next_index: last + 1,
            pending: Vec::with_capacity(256 * 1024),
            pending_records: 0,
            losses: Losses::default(),
            reported: Losses::default(),
            last_error: None,
        })
    }

    /// Queues a record; it reaches the file at the next [`flush`](Self::flush).
    pub fn append(&mut self, rec: &Record) {
        rec.encode_frame(&mut self.pending);
        self.pending_records += 1;
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    fn new_segment(&mut self) -> std::io::Result<()> {
        let index = self.next_index;
        self.next_index += 1;
        let path = segment_path(&self.dir, index);
        let mut f = OpenOptions::new()
            .append(true)
            .create_new(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)?;
        if let Err(e) = f.write_all(MAGIC) {
            // Disk full: leave no empty segment behind for every attempt.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        self.file = Some(f);
        self.segments.push_back(Segment {
            index,
            bytes: MAGIC.len() as u64,
            records: 0,
        });
        Ok(())
    }

    /// Writes the queued frames. On error the frames are counted as lost and
    /// the segment is abandoned.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let need_roll = match self.segments.back() {
            Some(s) => self.file.is_none() || s.bytes >= self.segment_size,
            None => true,
        };
        if need_roll {
            self.file = None;
            self.enforce_cap(self.pending.len() as u64);
            if let Err(e) = self.new_segment() {
                self.fail(format!(
                    "cannot create a spool segment in {}: {e}",
                    self.dir.display()
                ));
                return;
            }
        }
        let f = self.file.as_mut().expect("segment open");
        match f.write_all(&self.pending) {
            Ok(()) => {
                let s = self.segments.back_mut().expect("segment");
                s.bytes += self.pending.len() as u64;
                s.records += self.pending_records;
                self.pending.clear();
                self.pending_records = 0;
            }
            Err(e) => {
                // Part of the frames may be in the file: abandon this segment
                // so that the reader skips its torn tail and moves on.
                self.file = None;
                self.fail(format!("spool write failed in {}: {e}", self.dir.display()));
            }
        }
    }

    fn fail(&mut self, msg: String) {
        self.losses.failed_records += self.pending_records;
        self.losses.failed_bytes += self.pending.len() as u64;
        self.pending.clear();
        self.pending_records = 0;
        self.last_error = Some(msg);
    }

    /// Drops the oldest segments (not the one being written) until `extra`
    /// more bytes fit under the cap. Segments the publisher already deleted
    /// (fully delivered) are forgotten without counting.
    fn enforce_cap(&mut self, extra: u64) {
        self.segments
            .retain(|s| segment_path(&self.dir, s.index).exists());
        let mut total: u64 = self.segments.iter().map(|s| s.bytes).sum();
        while total + extra > self.cap && !self.segments.is_empty() {
            let s = self.segments.pop_front().expect("segment");
            total -= s.bytes;
            if std::fs::remove_file(segment_path(&self.dir, s.index)).is_ok() {
                self.losses.dropped_records += s.records;
                self.losses.dropped_bytes += s.bytes - MAGIC.len() as u64;
            }
        }
    }

    /// A notice record describing losses not yet reported, if any.
    pub fn take_loss_notice(&mut self, seq: u64) -> Option<Record> {
        let l = self.losses;
        let r = self.reported;
        if l == r {
            return None;
        }
        self.reported = l;
        let mut msg = String::from("mesos-gelf lost log records:");
        if l.dropped_records > r.dropped_records {
            msg.push_str(&format!(
                " {} records ({} bytes) dropped, oldest first, because the spool reached its cap of {} bytes (Kafka slow or down?);",
                l.dropped_records - r.dropped_records,
                l.dropped_bytes - r.dropped_bytes,
                self.cap
            ));
        }
        if l.failed_records > r.failed_records {
            msg.push_str(&format!(
                " {} records ({} bytes) could not be written to the spool: {};",
                l.failed_records - r.failed_records,
                l.failed_bytes - r.failed_bytes,
                self.last_error.as_deref().unwrap_or("write error")
            ));
        }
        msg.push_str(&format!(
            " totals so far: dropped={} failed={}",
            l.dropped_records, l.failed_records
        ));
        Some(Record::notice(seq, msg))
    }

    /// Marks the spool complete: no frame will follow.
    pub fn finish(mut self) -> std::io::Result<Losses> {
        self.flush();
        if let Some(f) = self.file.take() {
            let _ = f.sync_data();
        }
        super::mark_done(&self.dir)?;
        Ok(self.losses)
    }
}
