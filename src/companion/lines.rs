//! Bytes → records: line splitting, long-line parts, idle flush and
//! optional multiline joining, for one stream.
//!
//! - A record is a line without its `\n`; one trailing `\r` is dropped.
//! - A line longer than `max_line_bytes` is shipped in parts as soon as each
//!   part is full (memory stays bounded for a gigabyte without a newline).
//!   Parts carry `part` = 1, 2, ... and the CONTINUES flag on all but the last.
//! - Bytes without a newline are shipped after `idle_flush` of silence, and
//!   at end of stream, flagged UNTERMINATED; what follows on the same line
//!   becomes the next part.
//! - With a `multiline_start` regex, a whole line that does not match is
//!   joined (with `\n`) to the record before it, up to `multiline_max_bytes`
//!   (past it, a new record starts: nothing is dropped) and until
//!   `multiline_timeout` of silence.
//! - `seq` counts this stream's records from 1, in the order they are made.

use crate::gelf::utf8_floor;
use crate::spool::record::{flags, Record, Stream};
use regex::bytes::Regex;

struct Joiner {
    start: Regex,
    max: usize,
    timeout_us: i64,
    buf: Vec<u8>,
    lines: u32,
    ts: i64,
    last: i64,
}

pub struct Assembler {
    stream: Stream,
    max_line: usize,
    idle_us: i64,
    partial: Vec<u8>,
    partial_ts: i64,
    last_data: i64,
    /// Parts of the current line already shipped.
    part: u32,
    joiner: Option<Joiner>,
    seq: u64,
    /// Payload buffers handed back once their records were spooled
    /// ([`recycle`](Self::recycle)): the next lines are read into them
    /// instead of into a new allocation each.
    spare: Vec<Vec<u8>>,
}

/// At most this many spare buffers of at most this capacity are kept per
/// stream (bounds the memory they hold to 16 KiB).
const SPARE_BUFFERS: usize = 32;
const SPARE_CAPACITY: usize = 512;

impl Assembler {
    pub fn new(
        stream: Stream,
        max_line: usize,
        idle_flush_ms: u64,
        multiline: Option<(Regex, usize, u64)>,
    ) -> Assembler {
        Assembler {
            stream,
            max_line: max_line.max(1),
            idle_us: idle_flush_ms as i64 * 1000,
            partial: Vec::new(),
            partial_ts: 0,
            last_data: 0,
            part: 0,
            joiner: multiline.map(|(start, max, timeout_ms)| Joiner {
                start,
                max,
                timeout_us: timeout_ms as i64 * 1000,
                buf: Vec::new(),
                lines: 0,
                ts: 0,
                last: 0,
            }),
            seq: 0,
            spare: Vec::new(),
        }
    }

    /// Takes back a spooled record's payload buffer for a later line.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS && buf.capacity() <= SPARE_CAPACITY {
            buf.clear();
            self.spare.push(buf);
        }
    }

    pub fn stream(&self) -> Stream {
        self.stream
    }

    /// Records made so far (the last `seq` used).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    fn emit(&mut self, flags: u8, part: u32, ts: i64, payload: Vec<u8>, out: &mut Vec<Record>) {
        self.seq += 1;
        out.push(Record {
            stream: self.stream,
            flags,
            part,
            seq: self.seq,
            ts_micros: ts,
            payload,
        });
    }

    fn flush_joiner(&mut self, out: &mut Vec<Record>) {
        let Some(j) = self.joiner.as_mut() else {
            return;
        };
        if j.lines == 0 {
            return;
        }
        let payload = std::mem::take(&mut j.buf);
        let f = if j.lines > 1 { flags::MULTILINE } else { 0 };
        let ts = j.ts;
        j.lines = 0;
        self.emit(f, 0, ts, payload, out);
    }

    /// A whole line (not split into parts).
    fn line(&mut self, line: Vec<u8>, ts: i64, out: &mut Vec<Record>) {
        let Some(j) = self.joiner.as_mut() else {
            return self.emit(0, 0, ts, line, out);
        };
        let starts =
            j.lines == 0 || j.start.is_match(&line) || j.buf.len() + 1 + line.len() > j.max;
        if starts {
            self.flush_joiner(out);
            let j = self.joiner.as_mut().expect("joiner");
            j.buf = line;
            j.lines = 1;
            j.ts = ts;
        } else {
            j.buf.push(b'\n');
            j.buf.extend_from_slice(&line);
            j.lines += 1;
        }
        self.joiner.as_mut().expect("joiner").last = ts;
    }

    /// Ships the first `n` bytes of the partial line as a part.
    fn ship_part(&mut self, n: usize, flags: u8, out: &mut Vec<Record>) {
        self.flush_joiner(out);
        let rest = self.partial.split_off(n);
        let payload = std::mem::replace(&mut self.partial, rest);
        self.part += 1;
        let (part, ts) = (self.part, self.partial_ts);
        self.emit(flags, part, ts, payload, out);
    }

    /// Feeds bytes read at `ts` (microseconds).
    pub fn feed(&mut self, mut data: &[u8], ts: i64, out: &mut Vec<Record>) {
        self.last_data = ts;
        while !data.is_empty() {
            if self.partial.is_empty() {
                self.partial_ts = ts;
            }
            match memchr::memchr(b'\n', data) {
                Some(i) => {
                    self.partial.extend_from_slice(&data[..i]);
                    data = &data[i + 1..];
                    self.end_line(ts, out);
                }
                None => {
                    self.partial.extend_from_slice(data);
                    data = &[];
                    while self.partial.len() > self.max_line {
                        let n = utf8_floor(&self.partial, self.max_line).max(1);
                        self.ship_part(n, flags::CONTINUES, out);
                    }
                }
            }
        }
    }

    fn end_line(&mut self, ts: i64, out: &mut Vec<Record>) {
        if self.partial.last() == Some(&b'\r') {
            self.partial.pop();
        }
        while self.partial.len() > self.max_line {
            let n = utf8_floor(&self.partial, self.max_line).max(1);
            self.ship_part(n, flags::CONTINUES, out);
        }
        if self.part > 0 {
            let n = self.partial.len();
            self.ship_part(n, 0, out);
        } else {
            let next = self.spare.pop().unwrap_or_default();
            let line = std::mem::replace(&mut self.partial, next);
            let lts = self.partial_ts;
            self.line(line, lts, out);
        }
        self.part = 0;
        let _ = ts;
    }

    /// Ships what has waited too long: an unterminated line after the idle
    /// timeout, a joined record after the multiline timeout.
    pub fn tick(&mut self, now: i64, out: &mut Vec<Record>) {
        if !self.partial.is_empty() && now - self.last_data >= self.idle_us {
            let n = self.partial.len();
            self.ship_part(n, flags::CONTINUES | flags::UNTERMINATED, out);
        }
        if let Some(j) = &self.joiner {
            if j.lines > 0 && now - j.last >= j.timeout_us {
                self.flush_joiner(out);
            }
        }
    }

    /// When [`tick`](Self::tick) next has work, in microseconds, if ever.
    pub fn deadline(&self) -> Option<i64> {
        let a = (!self.partial.is_empty()).then(|| self.last_data + self.idle_us);
        let b = self
            .joiner
            .as_ref()
            .filter(|j| j.lines > 0)
            .map(|j| j.last + j.timeout_us);
        match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        }
    }

    /// End of stream: ships everything held.
    pub fn finish(&mut self, out: &mut Vec<Record>) {
        if !self.partial.is_empty() || self.part > 0 {
            if self.part == 0 {
                self.flush_joiner(out);
                let payload = std::mem::take(&mut self.partial);
                let ts = self.partial_ts;
                self.emit(flags::UNTERMINATED, 0, ts, payload, out);
            } else if !self.partial.is_empty() {
                let n = self.partial.len();
                self.ship_part(n, flags::UNTERMINATED, out);
            }
        }
        self.part = 0;
        self.flush_joiner(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(a: &mut Assembler, chunks: &[&[u8]]) -> Vec<Record> {
        let mut out = Vec::new();
        for c in chunks {
            a.feed(c, 1, &mut out);
        }
        a.finish(&mut out);
        out
    }

    fn payloads(r: &[Record]) -> Vec<String> {
        r.iter()
            .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
            .collect()
    }

    #[test]
    fn lines_crlf_and_unterminated_tail() {
        let mut a = Assembler::new(Stream::Stdout, 100, 500, None);
        let r = run(&mut a, &[b"one\r\ntw", b"o\n\nthree"]);
        assert_eq!(payloads(&r), ["one", "two", "", "three"]);
        assert_eq!(r.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(r[3].flags, flags::UNTERMINATED);
        assert_eq!(r[3].part, 0);
    }

    #[test]
    fn long_lines_are_split_into_marked_parts() {
        let mut a = Assembler::new(Stream::Stdout, 4, 500, None);
        let r = run(&mut a, &[b"abcdefghij\nxy\n"]);
        assert_eq!(payloads(&r), ["abcd", "efgh", "ij", "xy"]);
        assert_eq!(r[0].part, 1);
        assert_eq!(r[0].flags, flags::CONTINUES);
        assert_eq!(r[2].part, 3);
        assert_eq!(r[2].flags, 0);
        assert_eq!(r[3].part, 0);
    }

    #[test]
    fn idle_flush_then_rest_of_line() {
        let mut a = Assembler::new(Stream::Stdout, 100, 500, None);
        let mut out = Vec::new();
        a.feed(b"Password: ", 1_000, &mut out);
        assert!(out.is_empty());
        assert_eq!(a.deadline(), Some(501_000));
        a.tick(501_000, &mut out);
        a.feed(b"ok\n", 600_000, &mut out);
        assert_eq!(payloads(&out), ["Password: ", "ok"]);
        assert_eq!(out[0].part, 1);
        assert_eq!(out[0].flags, flags::CONTINUES | flags::UNTERMINATED);
        assert_eq!(out[1].part, 2);
    }

    #[test]
    fn multiline_joins_and_bounds() {
        let re = Regex::new(r"^\d{4}-").unwrap();
        let mut a = Assembler::new(Stream::Stderr, 1000, 500, Some((re, 30, 1000)));
        let r = run(
            &mut a,
            &[b"2026-01 ERROR x\n\tat a\n\tat b\n2026-02 INFO y\n\tat 0123456789012345678901234567\n"],
        );
        assert_eq!(
            payloads(&r),
            [
                "2026-01 ERROR x\n\tat a\n\tat b",
                "2026-02 INFO y",
                "\tat 0123456789012345678901234567"
            ]
        );
        assert_eq!(r[0].flags, flags::MULTILINE);
        assert_eq!(r[1].flags, 0);
    }
}
