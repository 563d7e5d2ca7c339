//! The publisher's side of the spool: read frames in order from a position,
//! tell pending tails from torn ones, delete acknowledged segments.

use super::checkpoint::{self, Position};
use super::record::{decode_frame, decode_frame_into, Decoded, Record, HEADER_LEN};
use super::{list_segments, segment_path, DONE_FILE, MAGIC};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Read size. Kept small because the publisher holds one reader per
/// container; the buffer is released whenever a reader has caught up.
const READ_CHUNK: usize = 64 * 1024;

/// What [`SpoolReader::read_next`] found.
#[derive(Debug)]
pub enum Next {
    /// A record, and the position just after it.
    Record(Record, Position),
    /// Nothing more for now; the companion is still writing.
    Pending,
    /// The companion finished and every frame has been read.
    Finished,
}

pub struct SpoolReader {
    dir: PathBuf,
    pos: Position,
    file: Option<File>,
    /// Bytes read from the file starting at `pos.offset`.
    buf: Vec<u8>,
    start: usize,
    /// Torn or corrupt segment tails skipped so far.
    pub torn: u64,
    /// Segments that vanished before they were read (dropped at the cap).
    pub skipped_segments: u64,
    /// A payload buffer handed back ([`recycle`](Self::recycle)) for the
    /// next record.
    spare: Vec<u8>,
    /// Segments read past, whose records may be read again: a seek back
    /// (records taken back from the sink) may land in one the companion
    /// has unlinked since, to keep its cap or the filesystem's free space,
    /// and only a descriptor still reads it. Released once acknowledged past
    /// ([`release_before`](Self::release_before)); at most [`KEPT_SEGMENTS`].
    kept: Vec<(u64, File)>,
}

/// Descriptors of segments read past, kept per reader (see `kept`): what
/// is in flight bounds them (a container's share of `max_in_flight_bytes`
/// over the segment size); this only guards the process's descriptors.
const KEPT_SEGMENTS: usize = 256;

/// Payload buffers up to this size are reused; larger ones (a long line's
/// parts) are freed, so an idle container holds no more than this.
const SPARE_KEPT: usize = 4096;

impl SpoolReader {
    /// Opens at the stored checkpoint, or at the oldest segment. A corrupt
    /// checkpoint is reported in the returned warning.
    pub fn open(dir: &Path) -> (SpoolReader, Option<String>) {
        let (pos, warning) = match checkpoint::load(dir) {
            Ok(Some(p)) => (p, None),
            Ok(None) => (Position::default(), None),
            Err(w) => (Position::default(), Some(w)),
        };
        (SpoolReader::at(dir, pos), warning)
    }

    pub fn at(dir: &Path, pos: Position) -> SpoolReader {
        SpoolReader {
            dir: dir.to_path_buf(),
            pos,
            file: None,
            buf: Vec::new(),
            spare: Vec::new(),
            start: 0,
            torn: 0,
            skipped_segments: 0,
            kept: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The position of the next frame to return.
    pub fn position(&self) -> Position {
        Position {
            segment: self.pos.segment,
            offset: self.pos.offset + self.start as u64,
        }
    }

    /// Restarts reading at `pos` (after a failed delivery).
    pub fn seek(&mut self, pos: Position) {
        // The descriptor of `pos`'s segment, if this reader still has one:
        // the file may be gone from the directory.
        let mut reuse = None;
        if let Some(f) = self.file.take() {
            if self.pos.segment == pos.segment {
                reuse = Some(f);
            } else {
                self.keep(self.pos.segment, f);
            }
        }
        if reuse.is_none() {
            if let Some(i) = self.kept.iter().position(|(s, _)| *s == pos.segment) {
                reuse = Some(self.kept.remove(i).1);
            }
        }
        self.pos = pos;
        self.buf.clear();
        self.start = 0;
        if let Some(mut f) = reuse {
            if self.pos.offset < MAGIC.len() as u64 {
                self.pos.offset = 0;
            }
            if f.seek(SeekFrom::Start(self.pos.offset)).is_ok() {
                self.file = Some(f);
            }
        }
    }

    fn keep(&mut self, segment: u64, f: File) {
        if segment == 0 || self.kept.iter().any(|(s, _)| *s == segment) {
            return;
        }
        self.kept.push((segment, f));
        if self.kept.len() > KEPT_SEGMENTS {
            // The oldest goes first.
            let oldest = (0..self.kept.len())
                .min_by_key(|&i| self.kept[i].0)
                .expect("not empty");
            self.kept.remove(oldest);
        }
    }

    /// Kept segments that are no longer in the directory (unlinked by the
    /// companion or the budget), with their size: their space stays taken
    /// while this reader holds them.
    pub fn kept_unlinked(&self) -> Vec<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        self.kept
            .iter()
            .filter_map(|(s, f)| {
                let m = f.metadata().ok()?;
                (m.nlink() == 0).then_some((*s, m.len()))
            })
            .collect()
    }

    /// Forgets the descriptor of `segment` (dropped by the budget), and
    /// hands it over (to summarize what it held).
    pub fn release(&mut self, segment: u64) -> Option<File> {
        let i = self.kept.iter().position(|(s, _)| *s == segment)?;
        Some(self.kept.remove(i).1)
    }

    /// Forgets the descriptors of segments before `segment`: every record
    /// in them was acknowledged.
    pub fn release_before(&mut self, segment: u64) {
        if self.kept.iter().any(|(s, _)| *s < segment) {
            self.kept.retain(|(s, _)| *s >= segment);
        }
    }

    fn writer_moved_on(&self) -> bool {
        if self.dir.join(DONE_FILE).exists() {
            return true;
        }
        list_segments(&self.dir)
            .map(|s| s.iter().any(|&i| i > self.pos.segment))
            .unwrap_or(false)
    }

    /// Opens the current segment or the first one after it. A segment that
    /// is not a regular file (a link or FIFO the task planted in its `data/`)
    /// is counted as torn and skipped, never followed or waited on.
    fn open_segment(&mut self) -> std::io::Result<bool> {
        let mut f = loop {
            let segs = list_segments(&self.dir)?;
            let from = self.pos.segment.max(1);
            let listed = segs.iter().copied().find(|&i| i >= from);
            // A segment read before (see `kept`) is read again through its
            // descriptor, whether or not it is still listed.
            let kept = self
                .kept
                .iter()
                .map(|(s, _)| *s)
                .filter(|&s| s >= from)
                .min();
            if let Some(k) = kept.filter(|&k| listed.is_none_or(|l| k <= l)) {
                let i = self.kept.iter().position(|(s, _)| *s == k).expect("kept");
                let f = self.kept.remove(i).1;
                // Read again: what lies between was passed (and counted)
                // the first time.
                if k != self.pos.segment {
                    self.pos = Position {
                        segment: k,
                        offset: 0,
                    };
                }
                break f;
            }
            let Some(first) = listed else {
                return Ok(false);
            };
            if first != self.pos.segment {
                if self.pos.segment != 0 {
                    self.skipped_segments += 1;
                }
                self.pos = Position {
                    segment: first,
                    offset: 0,
                };
            }
            match super::open_untrusted(&segment_path(&self.dir, first)) {
                Ok(f) => break f,
                // Dropped at the cap between the listing and the open:
                // look again (the listing no longer holds it).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                    self.torn += 1;
                    self.pos = Position {
                        segment: first + 1,
                        offset: 0,
                    };
                }
                Err(e) => return Err(e),
            }
        };
        if self.pos.offset < MAGIC.len() as u64 {
            self.pos.offset = 0;
        }
        // A kept descriptor is wherever it was left.
        f.seek(SeekFrom::Start(self.pos.offset))?;
        self.file = Some(f);
        self.buf.clear();
        self.start = 0;
        Ok(true)
    }

    /// Reads more bytes into the buffer; returns how many.
    fn fill(&mut self, want: usize) -> std::io::Result<usize> {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.pos.offset += self.start as u64;
            self.start = 0;
        }
        let fd = self.file.as_ref().expect("open").as_raw_fd();
        let old = self.buf.len();
        let need = want.max(READ_CHUNK);
        // Read into the spare capacity, never zeroed first: an idle
        // container is looked at again and again, and zeroing a chunk for a
        // read that returns nothing was most of the idle publisher's CPU.
        self.buf.reserve(need);
        let n = loop {
            let spare = self.buf.spare_capacity_mut();
            // SAFETY: the kernel writes at most `need` bytes into the Vec's
            // spare capacity, which holds at least `need`.
            let r = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), need) };
            if r >= 0 {
                break r as usize;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        // SAFETY: the read initialised exactly `n` bytes after `old`.
        unsafe { self.buf.set_len(old + n) };
        Ok(n)
    }

    /// Frees the read buffer of a reader that has consumed all it read
    /// (hundreds of idle containers must not each hold a chunk).
    fn release_buffer(&mut self) {
        self.pos.offset += self.start as u64;
        self.start = 0;
        self.buf = Vec::new();
        self.spare = Vec::new();
    }

    /// Hands back a record's payload buffer, to be filled by the next read
    /// instead of a new allocation.
    pub fn recycle(&mut self, payload: Vec<u8>) {
        if payload.capacity() <= SPARE_KEPT && payload.capacity() > self.spare.capacity() {
            self.spare = payload;
        }
    }

    fn advance_segment(&mut self) {
        if let Some(f) = self.file.take() {
            self.keep(self.pos.segment, f);
        }
        self.pos = Position {
            segment: self.pos.segment + 1,
            offset: 0,
        };
        self.file = None;
        self.buf.clear();
        self.start = 0;
    }

    /// The next record, or why there is none.
    ///
    /// Whether the writer has moved on (a newer segment or `done` exists) is
    /// only asked at the end of the readable bytes, and is asked *before* a
    /// last read: if it had moved on, that read sees all it will ever write.
    pub fn read_next(&mut self) -> std::io::Result<Next> {
        loop {
            if self.file.is_none() && !self.open_segment()? {
                let done = self.dir.join(DONE_FILE).exists();
                // A segment may have appeared just before `done`.
                if done && !self.open_segment()? {
                    return Ok(Next::Finished);
                }
                if !done {
                    return Ok(Next::Pending);
                }
            }
            if self.pos.offset == 0 && self.start == 0 && self.buf.len() < MAGIC.len() {
                self.fill(MAGIC.len())?;
                if self.buf.len() < MAGIC.len() {
                    let moved_on = self.writer_moved_on();
                    self.fill(MAGIC.len())?;
                    if self.buf.len() < MAGIC.len() {
                        if moved_on {
                            self.advance_segment();
                            continue;
                        }
                        return Ok(Next::Pending);
                    }
                }
            }
            if self.pos.offset == 0 && self.start == 0 {
                if self.buf[..MAGIC.len() - 1] == MAGIC[..MAGIC.len() - 1]
                    && self.buf[MAGIC.len() - 1] != MAGIC[MAGIC.len() - 1]
                {
                    // A newer spool format: never skipped as torn (that
                    // would lose it); this version refuses to read on.
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::Unsupported,
                        format!(
                            "segment {} is spool format {}, newer than this mesos-gelf reads ({}): upgrade mesos-gelf; the spool is kept",
                            self.pos.segment,
                            String::from_utf8_lossy(&self.buf[..MAGIC.len()]),
                            String::from_utf8_lossy(MAGIC)
                        ),
                    ));
                }
                if &self.buf[..MAGIC.len()] != MAGIC {
                    self.torn += 1;
                    self.advance_segment();
                    continue;
                }
                self.start = MAGIC.len();
            }
            match decode_frame_into(&self.buf[self.start..], &mut self.spare) {
                Decoded::Frame(rec, len) => {
                    self.start += len;
                    return Ok(Next::Record(rec, self.position()));
                }
                Decoded::Short(need) => {
                    let have = self.buf.len() - self.start;
                    if self.fill(need.max(HEADER_LEN) - have)? > 0 {
                        continue;
                    }
                    let moved_on = self.writer_moved_on();
                    if self.fill(need.max(HEADER_LEN) - have)? > 0 {
                        continue;
                    }
                    if !moved_on {
                        if have == 0 {
                            self.release_buffer();
                        }
                        return Ok(Next::Pending);
                    }
                    if have > 0 {
                        self.torn += 1;
                    }
                    self.advance_segment();
                }
                Decoded::Bad => {
                    let moved_on = self.writer_moved_on();
                    if !moved_on {
                        // Corruption in the newest segment: the writer abandons
                        // a segment after a failed write, so wait for that.
                        self.fill(0)?;
                        return Ok(Next::Pending);
                    }
                    self.torn += 1;
                    self.advance_segment();
                }
            }
        }
    }

    /// Persists `pos` as the checkpoint and deletes the segments before it
    /// (those last written `retain` ago or more: retained for replay).
    pub fn acknowledge(&self, pos: Position, retain: std::time::Duration) -> std::io::Result<()> {
        checkpoint::store(&self.dir, pos)?;
        for s in list_segments(&self.dir)? {
            if s < pos.segment {
                delete_if_older(&segment_path(&self.dir, s), retain);
            }
        }
        Ok(())
    }
}

/// What one segment holds, per stream: count, bytes and exact `_seq`
/// ranges; and the losses its notices report.
#[derive(Debug, Default)]
pub struct SegmentSummary {
    pub spans: Vec<(super::record::Stream, SpanSummary)>,
    pub notices: Vec<super::notice::Loss>,
}

#[derive(Debug, Default, Clone)]
pub struct SpanSummary {
    pub records: u64,
    pub bytes: u64,
    pub ranges: Vec<(u64, u64)>,
}

/// Reads every valid frame of one segment (before it is dropped), without
/// following links or blocking on FIFOs; an unreadable or torn tail just
/// ends the summary.
pub fn summarize_segment(path: &Path) -> SegmentSummary {
    match super::open_untrusted(path) {
        Ok(f) => summarize_file(&f),
        Err(_) => SegmentSummary::default(),
    }
}

/// As [`summarize_segment`], through a descriptor (from its start,
/// wherever the descriptor was left).
pub fn summarize_file(f: &File) -> SegmentSummary {
    use super::record::Stream;
    use std::os::unix::fs::FileExt;
    let mut out = SegmentSummary::default();
    let mut bytes = vec![0u8; 64 << 10];
    let mut len = 0;
    while len < 1 << 30 {
        if len == bytes.len() {
            bytes.resize(len * 2, 0);
        }
        match f.read_at(&mut bytes[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    bytes.truncate(len);
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return out;
    }
    let mut at = MAGIC.len();
    let mut spans: Vec<(Stream, SpanSummary)> = Vec::new();
    while let Decoded::Frame(rec, len) = decode_frame(&bytes[at..]) {
        at += len;
        if rec.stream == Stream::Notice {
            out.notices.extend(super::notice::loss_of(&rec.payload));
            continue;
        }
        let i = match spans.iter().position(|(s, _)| *s == rec.stream) {
            Some(i) => i,
            None => {
                spans.push((rec.stream, SpanSummary::default()));
                spans.len() - 1
            }
        };
        let sp = &mut spans[i].1;
        sp.records += 1;
        sp.bytes += rec.payload.len() as u64;
        match sp.ranges.last_mut() {
            Some(r) if r.1 + 1 == rec.seq => r.1 = rec.seq,
            _ => sp.ranges.push((rec.seq, rec.seq)),
        }
    }
    out.spans = spans;
    out
}

/// Deletes `path` if it was last modified `age` ago or more; true if gone.
pub fn delete_if_older(path: &Path, age: std::time::Duration) -> bool {
    let old = age.is_zero()
        || std::fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|e| e >= age);
    old && std::fs::remove_file(path).is_ok()
}
