//! The companion's side of the spool: append frames, roll segments, enforce
//! the per-container cap by dropping the oldest unsent data.
//!
//! The writer never blocks on the reader and never fails its caller: a write
//! error (disk full, I/O error) loses the frames in hand, counts them, and
//! makes the next write start a fresh segment so the torn one is skipped by
//! the reader instead of hiding later frames.
//!
//! The cap keeps the newest records, whatever the burst: frames are written
//! in chunks of at most one segment, room for each chunk is made by
//! dropping the oldest segments, and a batch larger than the whole cap first
//! loses its own oldest frames. Every loss is recorded with its reason, its
//! stream and its exact `_seq` range, and comes out as a notice record
//! ([`super::notice`]) through [`SpoolWriter::take_loss_notices`].

use super::notice::{self, Loss, LossReason};
use super::record::{Record, Stream, HEADER_LEN};
use super::{list_segments, segment_path, MAGIC};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The queue of frames waiting for [`SpoolWriter::flush`] starts this large
/// and is shrunk back to it after a larger batch.
const PENDING_KEPT: usize = 64 * 1024;

/// Notices of one kind are written at most this often (a burst of drops
/// becomes one notice per reason and stream, with the whole range).
pub const NOTICE_EVERY: Duration = Duration::from_secs(1);

/// What one stream has in a segment (or lost in one go).
#[derive(Debug, Default, Clone)]
struct Span {
    records: u64,
    bytes: u64,
    /// The `_seq`s, as ranges: records the rate limit kept out of the
    /// spool leave gaps, and a loss must not name them (they have a notice
    /// of their own, with the right reason).
    seqs: Vec<(u64, u64)>,
}

impl Span {
    fn add(&mut self, seq: u64, bytes: u64) {
        self.records += 1;
        self.bytes += bytes;
        match self.seqs.last_mut() {
            Some(r) if r.1.saturating_add(1) == seq => r.1 = seq,
            _ => notice::add_range(&mut self.seqs, seq, seq, notice::MAX_RANGES),
        }
    }
}

/// Index of a stream in per-stream arrays (publisher notices never reach
/// a spool; they would count as notices).
fn slot(s: Stream) -> usize {
    (s as usize - 1).min(2)
}

/// One segment this writer created and may still have to drop.
#[derive(Debug)]
struct Segment {
    index: u64,
    bytes: u64,
    spans: [Span; 3],
    /// The losses the notices in it report: reported again if it is
    /// dropped, so no lost `_seq` goes unnamed.
    notices: Vec<Loss>,
}

/// The frames at the start of `buf` (whole frames only): length, stream, seq.
fn frames(buf: &[u8]) -> impl Iterator<Item = (usize, Stream, u64)> + '_ {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + HEADER_LEN + 24 > buf.len() {
            return None;
        }
        let body = u32::from_le_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        let len = HEADER_LEN + body;
        let stream = Stream::from_u8(buf[off + HEADER_LEN]).unwrap_or(Stream::Notice);
        let seq = u64::from_le_bytes(buf[off + 16..off + 24].try_into().unwrap());
        off += len;
        Some((len, stream, seq))
    })
}

/// Bytes of the whole frames at the start of `buf` that fit in `room`.
fn fitting(buf: &[u8], room: u64) -> usize {
    let mut n = 0usize;
    for (len, _, _) in frames(buf) {
        if (n + len) as u64 > room {
            break;
        }
        n += len;
    }
    n
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
    /// Losses not yet reported, in order.
    unreported: Vec<Loss>,
    /// Cumulative losses by reason (records; bytes for SandboxWrite).
    totals: [u64; LossReason::ALL.len()],
    /// `totals` as the last notice written gave them.
    noticed_totals: [u64; LossReason::ALL.len()],
    /// Of `unreported`, what is reported again (in the totals already),
    /// by reason and stream.
    requeued: Vec<(LossReason, Option<Stream>, u64)>,
    last_notice: Option<Instant>,
    pub last_error: Option<String>,
    /// Why the sandbox files could not be written (for the notice).
    pub sandbox_error: Option<String>,
    min_free: Option<crate::config::MinFree>,
}

/// (available bytes, size) of the filesystem holding `dir`.
pub fn fs_space(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs into a zeroed struct with a valid path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let f = st.f_frsize as u64;
    Some((st.f_bavail as u64 * f, st.f_blocks as u64 * f))
}

impl SpoolWriter {
    /// Opens the spool in `dir` for appending. Never reuses a segment: the
    /// first write goes to a new one after the highest existing.
    pub fn open(dir: &Path, segment_size: u64, cap: u64) -> std::io::Result<SpoolWriter> {
        std::fs::create_dir_all(dir)?;
        super::reserve_done(dir);
        let last = list_segments(dir)?.last().copied().unwrap_or(0);
        Ok(SpoolWriter {
            dir: dir.to_path_buf(),
            segment_size: segment_size.max(1),
            cap,
            file: None,
            segments: VecDeque::new(),
            next_index: last + 1,
            pending: Vec::with_capacity(PENDING_KEPT),
            unreported: Vec::new(),
            noticed_totals: [0; LossReason::ALL.len()],
            requeued: Vec::new(),
            totals: [0; LossReason::ALL.len()],
            last_notice: None,
            last_error: None,
            sandbox_error: None,
            min_free: None,
        })
    }

    /// Queues a record; it reaches the file at the next [`flush`](Self::flush).
    pub fn append(&mut self, rec: &Record) {
        rec.encode_frame(&mut self.pending);
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Cumulative losses for `reason` (records; bytes for SandboxWrite).
    pub fn total(&self, reason: LossReason) -> u64 {
        self.totals[reason as usize]
    }

    /// Records a loss to report (also used for the sandbox's lost bytes).
    /// Losses of one reason and stream accumulate until the next notice,
    /// their `_seq` ranges merged where they touch.
    pub fn record_loss(&mut self, loss: Loss) {
        self.totals[loss.reason as usize] += if loss.reason == LossReason::SandboxWrite {
            loss.bytes
        } else {
            loss.records
        };
        match self
            .unreported
            .iter_mut()
            .find(|l| l.reason == loss.reason && l.stream == loss.stream)
        {
            Some(prev) => {
                prev.records += loss.records;
                prev.bytes += loss.bytes;
                for (a, b) in loss.seqs {
                    prev.add_range(a, b);
                }
            }
            None => self.unreported.push(loss),
        }
    }

    /// A loss reported by a notice that was itself dropped: reported again
    /// (the totals already count it).
    fn requeue(&mut self, loss: Loss) {
        let before = self.totals;
        let (reason, stream) = (loss.reason, loss.stream);
        self.record_loss(loss);
        let counted = self.totals[reason as usize] - before[reason as usize];
        self.totals = before;
        match self
            .requeued
            .iter_mut()
            .find(|r| r.0 == reason && r.1 == stream)
        {
            Some(r) => r.2 += counted,
            None => self.requeued.push((reason, stream, counted)),
        }
    }

    /// Records the records of `spans` as lost. Notice records are not
    /// counted: what they said is reported again (see `requeue`).
    fn lose_spans(&mut self, reason: LossReason, spans: &[Span; 3]) {
        for s in [Stream::Stdout, Stream::Stderr] {
            let sp = &spans[slot(s)];
            if sp.records > 0 {
                self.record_loss(Loss {
                    reason,
                    stream: Some(s),
                    records: sp.records,
                    bytes: sp.bytes,
                    seqs: sp.seqs.clone(),
                });
            }
        }
    }

    /// Records the frames of `pending[from..to]` as lost for `reason`
    /// (a notice among them is reported again instead).
    fn lose_frames(&mut self, reason: LossReason, from: usize, to: usize) {
        let mut spans: [Span; 3] = Default::default();
        let mut requeued = Vec::new();
        let mut at = from;
        for (len, s, seq) in frames(&self.pending[from..to]) {
            spans[slot(s)].add(seq, (len - HEADER_LEN - 24) as u64);
            if s == Stream::Notice {
                requeued.extend(notice::loss_of(
                    &self.pending[at + HEADER_LEN + 24..at + len],
                ));
            }
            at += len;
        }
        self.lose_spans(reason, &spans);
        for l in requeued {
            self.requeue(l);
        }
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
            spans: Default::default(),
            notices: Vec::new(),
        });
        Ok(())
    }

    /// Writes the queued frames, in chunks of at most one segment, keeping
    /// the spool under its cap (oldest data dropped first). On a write error
    /// the unwritten frames are counted as lost and the segment abandoned.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        // A batch larger than the whole cap keeps only its newest frames.
        let room = self.cap.saturating_sub(MAGIC.len() as u64);
        if self.pending.len() as u64 > room {
            let total = self.pending.len();
            let mut cut = 0;
            for (len, _, _) in frames(&self.pending) {
                if ((total - cut) as u64) <= room {
                    break;
                }
                cut += len;
            }
            self.lose_frames(LossReason::SpoolCap, 0, cut);
            self.pending.drain(..cut);
            // What follows is not contiguous with the open segment: start a
            // new one, so every segment's `_seq` ranges stay exact.
            self.file = None;
        }
        self.keep_min_free();
        let mut off = 0;
        while off < self.pending.len() {
            let in_current = match (&self.file, self.segments.back()) {
                (Some(_), Some(s)) => fitting(
                    &self.pending[off..],
                    self.segment_size.saturating_sub(s.bytes),
                ),
                _ => 0,
            };
            let end = if in_current > 0 {
                self.make_room(in_current as u64);
                off + in_current
            } else {
                // Roll: a fresh segment takes at least one frame.
                self.file = None;
                let rest = &self.pending[off..];
                let first = frames(rest).next().map_or(rest.len(), |f| f.0);
                let n = fitting(rest, self.segment_size).max(first);
                self.make_room(n as u64 + MAGIC.len() as u64);
                if let Err(e) = self.new_segment() {
                    let msg = format!(
                        "cannot create a spool segment in {}: {e}",
                        self.dir.display()
                    );
                    self.fail(off, msg);
                    return;
                }
                off + n
            };
            let f = self.file.as_mut().expect("segment open");
            if let Err(e) = f.write_all(&self.pending[off..end]) {
                // Part of the frames may be in the file: abandon this segment
                // so that the reader skips its torn tail and moves on.
                self.file = None;
                let msg = format!("spool write failed in {}: {e}", self.dir.display());
                self.fail(off, msg);
                return;
            }
            let s = self.segments.back_mut().expect("segment");
            s.bytes += (end - off) as u64;
            let mut at = off;
            for (len, st, seq) in frames(&self.pending[off..end]) {
                s.spans[slot(st)].add(seq, (len - HEADER_LEN - 24) as u64);
                if st == Stream::Notice {
                    let body = &self.pending[at + HEADER_LEN + 24..at + len];
                    s.notices.extend(notice::loss_of(body));
                }
                at += len;
            }
            off = end;
        }
        self.pending.clear();
        // One giant record must not keep its buffer for the container's life.
        if self.pending.capacity() > 2 * PENDING_KEPT {
            self.pending.shrink_to(PENDING_KEPT);
        }
    }

    /// Keeps `spool_min_free` on the spool filesystem: before writing, our
    /// own oldest closed segments go, then, if that is not enough, the
    /// oldest of the frames in hand (both reported as `budget` losses). The
    /// publisher keeps the floor fairly (largest container first); this is
    /// the backstop for a burst between its checks.
    fn keep_min_free(&mut self) {
        let Some(mf) = self.min_free else {
            return;
        };
        let Some((mut avail, size)) = fs_space(&self.dir) else {
            return;
        };
        let floor = mf.bytes(size);
        let need = self.pending.len() as u64 + MAGIC.len() as u64;
        if avail >= floor + need {
            return;
        }
        self.segments
            .retain(|s| segment_path(&self.dir, s.index).exists());
        let open = usize::from(self.file.is_some());
        while avail < floor + need && self.segments.len() > open {
            let s = self.segments.pop_front().expect("segment");
            if std::fs::remove_file(segment_path(&self.dir, s.index)).is_ok() {
                avail += s.bytes;
                self.lose_spans(LossReason::Budget, &s.spans);
                for l in s.notices {
                    self.requeue(l);
                }
            }
        }
        if avail >= floor + need {
            return;
        }
        let room = avail.saturating_sub(floor + MAGIC.len() as u64);
        let total = self.pending.len();
        let mut cut = 0;
        for (len, _, _) in frames(&self.pending) {
            if ((total - cut) as u64) <= room {
                break;
            }
            cut += len;
        }
        // Never written: lost to a full filesystem, not to a budget.
        self.lose_frames(LossReason::SpoolWrite, 0, cut);
        self.pending.drain(..cut);
        self.file = None;
    }

    /// Keeps `spool_min_free` free on the spool's filesystem from now on.
    pub fn set_min_free(&mut self, m: crate::config::MinFree) {
        self.min_free = Some(m);
    }

    /// The frames from `from` on could not be written.
    fn fail(&mut self, from: usize, msg: String) {
        let to = self.pending.len();
        self.lose_frames(LossReason::SpoolWrite, from, to);
        self.pending.clear();
        self.last_error = Some(msg);
    }

    /// Drops the oldest closed segments until `extra` more bytes fit under
    /// the cap. Segments the publisher already deleted (fully delivered)
    /// are forgotten without counting. The open segment is never dropped.
    fn make_room(&mut self, extra: u64) {
        // What this writer wrote bounds what is on disk (the publisher only
        // deletes): under the cap by that count, nothing needs a look at
        // the directory. This runs before every write, and stat'ing every
        // segment plus reading the checkpoint each time was most of the
        // companion's system calls.
        let written: u64 = self.segments.iter().map(|s| s.bytes).sum();
        if written + extra <= self.cap {
            return;
        }
        self.segments
            .retain(|s| segment_path(&self.dir, s.index).exists());
        let open = usize::from(self.file.is_some());
        let mut total: u64 = self.segments.iter().map(|s| s.bytes).sum();
        // Segments before the publisher's checkpoint were delivered (kept
        // only for `spool_retain`): they go first, and are no loss.
        let delivered = match super::checkpoint::load(&self.dir) {
            Ok(Some(p)) => p.segment,
            _ => 0,
        };
        while total + extra > self.cap && self.segments.len() > open {
            let s = self.segments.pop_front().expect("segment");
            total -= s.bytes;
            if std::fs::remove_file(segment_path(&self.dir, s.index)).is_ok()
                && s.index >= delivered
            {
                self.lose_spans(LossReason::SpoolCap, &s.spans);
                for l in s.notices {
                    self.requeue(l);
                }
            }
        }
    }

    /// How long until [`take_loss_notices`](Self::take_loss_notices) has
    /// notices to give, if losses wait for one: the companion must wake up
    /// then even if its container writes nothing more (else a burst's loss
    /// notice would wait for the container's next line, maybe for hours).
    pub fn notice_due_in(&self) -> Option<Duration> {
        if self.unreported.is_empty() {
            return None;
        }
        Some(
            self.last_notice
                .map_or(Duration::ZERO, |t| NOTICE_EVERY.saturating_sub(t.elapsed())),
        )
    }

    /// Notice records for the losses not yet reported: one per reason and
    /// stream, at most once per [`NOTICE_EVERY`] unless `now` is forced (at
    /// the end). `seq` is the container's last notice sequence number.
    pub fn take_loss_notices(&mut self, seq: &mut u64, force: bool) -> Vec<Record> {
        if self.unreported.is_empty()
            || (!force && self.last_notice.is_some_and(|t| t.elapsed() < NOTICE_EVERY))
        {
            return Vec::new();
        }
        self.last_notice = Some(Instant::now());
        // Each notice's running totals count the losses of the notices up
        // to it, not those of the notices after it in the same batch: the
        // publisher takes the records it had shipped off each notice's
        // totals as it reads it, so a total that ran ahead of its notice
        // would keep a later notice's shipped records in. A loss reported
        // again adds nothing: it is in the totals already.
        let mut running = self.noticed_totals;
        let losses = std::mem::take(&mut self.unreported);
        let out = losses
            .iter()
            .map(|l| {
                let i = l.reason as usize;
                let amount = if l.reason == LossReason::SandboxWrite {
                    l.bytes
                } else {
                    l.records
                };
                let again = self
                    .requeued
                    .iter()
                    .find(|r| r.0 == l.reason && r.1 == l.stream)
                    .map_or(0, |r| r.2);
                running[i] = (running[i] + amount.saturating_sub(again)).min(self.totals[i]);
                let totals: Vec<(LossReason, u64)> = LossReason::ALL
                    .into_iter()
                    .filter(|r| running[*r as usize] > 0)
                    .map(|r| (r, running[r as usize]))
                    .collect();
                *seq += 1;
                notice::record(*seq, self.describe(l), Some(l), &totals)
            })
            .collect();
        self.noticed_totals = self.totals;
        self.requeued.clear();
        out
    }

    fn describe(&self, l: &Loss) -> String {
        let stream = l.stream.map_or("", |s| s.name());
        let range = match (l.seqs.first(), l.seqs.last()) {
            (Some(f), Some(t)) if l.seqs.len() == 1 => format!(" (_seq {} to {})", f.0, t.1),
            (Some(_), Some(_)) => format!(" (_seq {})", l.ranges_text()),
            _ => String::new(),
        };
        match l.reason {
            LossReason::SpoolCap => format!(
                "mesos-gelf dropped {} {stream} records{range}, {} bytes, oldest first: the spool reached its cap of {} bytes (Kafka slow or down?)",
                l.records, l.bytes, self.cap
            ),
            LossReason::SpoolWrite => format!(
                "mesos-gelf lost {} {stream} records{range}, {} bytes: they could not be written to the spool: {}",
                l.records,
                l.bytes,
                self.last_error.as_deref().unwrap_or("write error")
            ),
            LossReason::Budget => format!(
                "mesos-gelf dropped {} {stream} records{range}, {} bytes, oldest first: the spool filesystem reached its minimum free space",
                l.records, l.bytes
            ),
            LossReason::RateLimit => format!(
                "mesos-gelf did not ship {} {stream} records{range}, {} bytes: over this container's rate limit (they are in the sandbox files)",
                l.records, l.bytes
            ),
            LossReason::SandboxWrite => format!(
                "mesos-gelf could not write {} bytes of {stream} to the sandbox files ({}); those lines are still shipped",
                l.bytes,
                self.sandbox_error.as_deref().unwrap_or("write error")
            ),
            other => format!(
                "mesos-gelf lost {} {stream} records{range}: {}",
                l.records,
                other.name()
            ),
        }
    }

    /// Marks the spool complete: no frame will follow. Reports what is
    /// left to report first (the notices' own room may drop more, which is
    /// reported in turn). Returns the cumulative losses by reason.
    /// `last` is the last `_seq` of stdout and stderr, kept in `done`.
    pub fn finish(
        mut self,
        notice_seq: &mut u64,
        last: [u64; 2],
    ) -> std::io::Result<Vec<(LossReason, u64)>> {
        self.flush();
        for _ in 0..4 {
            let notices = self.take_loss_notices(notice_seq, true);
            if notices.is_empty() {
                break;
            }
            for n in &notices {
                self.append(n);
            }
            self.flush();
        }
        let totals = LossReason::ALL
            .into_iter()
            .map(|r| (r, self.totals[r as usize]))
            .collect();
        if let Some(f) = self.file.take() {
            let _ = f.sync_data();
        }
        super::mark_done_at(&self.dir, last)?;
        Ok(totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(stream: Stream, records: u64, a: u64, b: u64) -> Loss {
        Loss {
            reason: LossReason::SpoolCap,
            stream: Some(stream),
            records,
            bytes: records * 10,
            seqs: vec![(a, b)],
        }
    }

    fn cap_totals(notices: &[Record]) -> Vec<u64> {
        notices
            .iter()
            .map(|n| {
                let p = notice::parse(&n.payload);
                p.totals
                    .iter()
                    .find(|(r, _)| *r == LossReason::SpoolCap)
                    .map_or(0, |t| t.1)
            })
            .collect()
    }

    #[test]
    fn each_notice_of_a_batch_totals_the_losses_up_to_it() {
        let d = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::open(d.path(), 1 << 20, 1 << 30).unwrap();
        let mut seq = 0;
        assert_eq!(w.notice_due_in(), None, "nothing to report");
        w.record_loss(loss(Stream::Stdout, 10, 1, 10));
        w.record_loss(loss(Stream::Stderr, 2, 1, 2));
        assert_eq!(w.notice_due_in(), Some(Duration::ZERO));
        let n = w.take_loss_notices(&mut seq, false);
        assert_eq!(cap_totals(&n), [10, 12]);
        // Held by the once-a-second limit, and due within that second.
        w.record_loss(loss(Stream::Stderr, 3, 3, 5));
        assert!(w.take_loss_notices(&mut seq, false).is_empty());
        assert!(w.notice_due_in().is_some_and(|d| d <= NOTICE_EVERY));
        let n = w.take_loss_notices(&mut seq, true);
        assert_eq!(cap_totals(&n), [15]);
        assert_eq!(seq, 3);
        // A loss reported again (its notice dropped) adds nothing.
        w.requeue(loss(Stream::Stdout, 10, 1, 10));
        w.record_loss(loss(Stream::Stderr, 1, 6, 6));
        let n = w.take_loss_notices(&mut seq, true);
        assert_eq!(cap_totals(&n), [15, 16]);
        assert_eq!(w.notice_due_in(), None);
    }

    #[test]
    fn records_dropped_at_the_cap_never_name_the_rate_limited_gaps() {
        let d = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::open(d.path(), 300, 700).unwrap();
        let rec = |seq: u64| Record {
            stream: Stream::Stdout,
            flags: 0,
            part: 0,
            seq,
            ts_micros: 0,
            payload: vec![b'x'; 20],
        };
        // 6-8 and 12 were kept out by the rate limit (their own notice).
        for seq in (1..=40).filter(|s| !(6..=8).contains(s) && *s != 12) {
            w.append(&rec(seq));
            w.flush();
        }
        let mut seq = 0;
        let mut named = Vec::new();
        for n in w.take_loss_notices(&mut seq, true) {
            let l = notice::loss_of(&n.payload).expect("a loss");
            assert_eq!(l.reason, LossReason::SpoolCap);
            let count: u64 = l.seqs.iter().map(|r| r.1 - r.0 + 1).sum();
            assert_eq!(count, l.records, "ranges {:?}", l.seqs);
            named.extend(l.seqs);
        }
        assert_eq!(named.first().map(|r| r.0), Some(1), "{named:?}");
        assert!(named.len() >= 3, "dropped past the gaps: {named:?}");
        for gap in [6, 7, 8, 12] {
            assert!(
                !named.iter().any(|r| (r.0..=r.1).contains(&gap)),
                "{gap} named: {named:?}"
            );
        }
    }
}
