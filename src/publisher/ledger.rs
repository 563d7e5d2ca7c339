//! The publisher's ledger of one container: which `_seq`s of stdout and
//! stderr it read, which it never saw, and which of those a notice
//! explained. It makes the loss accounting exact in both directions:
//!
//! - **No silent loss.** A `_seq` that jumps (a segment deleted or damaged,
//!   a loss the companion could not report because its spool filesystem
//!   was full) is a gap. A gap no notice explains within
//!   [`REPORT_AFTER`] (once the reader has caught up with the writer; at
//!   the latest after [`REPORT_ANYWAY`], and at once when the container
//!   ends) is reported by the publisher as reason `missing`, with its exact
//!   ranges. The companion writes its last `_seq`s into the `done` marker,
//!   so a lost tail is a gap too.
//! - **No false loss.** A companion notice that names records this
//!   publisher already read (the companion dropped a segment at its cap
//!   after the publisher read it, before the checkpoint moved) is trimmed
//!   to what was really never read; if nothing is left, it is not shipped.
//!
//! Everything here is idempotent: records and notices read again after a
//! retry (the reader seeks back to the last acknowledged record) change
//! nothing and trim the same way. The ledger lives in memory: after a
//! publisher restart it starts at the first record it reads again, so a gap
//! found but not yet reported before the restart is found again only if it
//! lies after the checkpoint.

use crate::spool::record::Stream;
use std::time::{Duration, Instant};

/// How long a gap may wait for the notice that explains it (companions
/// batch their notices, and write them late when the spool was full).
pub const REPORT_AFTER: Duration = Duration::from_secs(60);
/// A gap is reported after this long even if the reader never caught up.
pub const REPORT_ANYWAY: Duration = Duration::from_secs(600);
/// Ranges kept per set before the closest two merge (a few read `_seq`s
/// may then count as never read: bounded memory beats exactness there).
const MAX_RANGES: usize = 1024;

/// Sorted, disjoint, inclusive `_seq` ranges.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    pub fn from_pairs(pairs: &[(u64, u64)]) -> Ranges {
        let mut r = Ranges::default();
        for &(a, b) in pairs {
            r.insert(a, b);
        }
        r
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn pairs(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// How many `_seq`s.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|(a, b)| b - a + 1).sum()
    }

    pub fn insert(&mut self, a: u64, b: u64) {
        if a > b {
            return;
        }
        let v = &mut self.0;
        let i = v.partition_point(|r| r.1.saturating_add(1) < a);
        let (mut lo, mut hi, mut j) = (a, b, i);
        while j < v.len() && v[j].0 <= hi.saturating_add(1) {
            lo = lo.min(v[j].0);
            hi = hi.max(v[j].1);
            j += 1;
        }
        v.splice(i..j, [(lo, hi)]);
        if v.len() > MAX_RANGES {
            let k = (0..v.len() - 1)
                .min_by_key(|&k| v[k + 1].0 - v[k].1)
                .expect("two ranges");
            v[k].1 = v[k + 1].1;
            v.remove(k + 1);
        }
    }

    pub fn insert_all(&mut self, other: &Ranges) {
        for &(a, b) in &other.0 {
            self.insert(a, b);
        }
    }

    /// This set without `other`.
    pub fn minus(&self, other: &Ranges) -> Ranges {
        let mut out = Vec::new();
        for &(a, b) in &self.0 {
            // u128: a range may end at u64::MAX.
            let mut lo = a as u128;
            for &(c, d) in other.0.iter().filter(|r| r.1 >= a && r.0 <= b) {
                if c as u128 > lo {
                    out.push((lo as u64, c - 1));
                }
                lo = lo.max(d as u128 + 1);
            }
            if lo <= b as u128 {
                out.push((lo as u64, b));
            }
        }
        Ranges(out)
    }

    /// The part of this set also in `other`.
    pub fn and(&self, other: &Ranges) -> Ranges {
        self.minus(&self.minus(other))
    }
}

/// One stream's account.
#[derive(Debug, Default)]
struct Track {
    /// The lowest `_seq` this publisher speaks for: 1 when it read the
    /// spool from its start, else the first one it read.
    base: Option<u64>,
    /// Every `_seq` from `base` below this was read or is in `gaps`.
    next: u64,
    /// Never read.
    gaps: Ranges,
    /// Named by a notice (possibly before the gap was seen).
    explained: Ranges,
    /// Reported as `missing` by the publisher.
    reported: Ranges,
    /// Gaps not explained yet, with when they were seen.
    waiting: Vec<(u64, u64, Instant)>,
}

impl Track {
    fn read(&mut self, seq: u64, now: Instant) {
        let Some(_) = self.base else {
            self.base = Some(seq);
            self.next = seq.saturating_add(1);
            return;
        };
        if seq < self.next {
            return; // read again after a retry
        }
        if seq > self.next {
            self.gap(self.next, seq - 1, now);
        }
        self.next = seq.saturating_add(1);
    }

    fn gap(&mut self, a: u64, b: u64, now: Instant) {
        self.gaps.insert(a, b);
        if self.waiting.len() >= MAX_RANGES {
            // Merge the two oldest (the span between them is not all
            // gap: `due` keeps only what is in `gaps`).
            let (_, b1, _) = self.waiting.remove(1);
            self.waiting[0].1 = b1;
        }
        self.waiting.push((a, b, now));
    }

    /// Splits a notice's ranges into (never read: kept, read: trimmed),
    /// and marks the kept ones explained.
    fn notice(&mut self, named: &Ranges) -> (Ranges, Ranges) {
        let Some(base) = self.base else {
            // Nothing read yet: everything it names may be lost.
            self.explained.insert_all(named);
            return (named.clone(), Ranges::default());
        };
        // Read = [base, next) minus the gaps.
        let mut read = Ranges::default();
        if self.next > base {
            read.insert(base, self.next - 1);
        }
        let read = read.minus(&self.gaps);
        let keep = named.minus(&read);
        let trimmed = named.minus(&keep);
        self.explained.insert_all(&keep);
        (keep, trimmed)
    }

    fn end(&mut self, last: u64, now: Instant) {
        if self.base.is_none() {
            // Nothing of this stream read: all of it, if it had any.
            self.base = Some(1);
            self.next = 1;
        }
        if last >= self.next {
            self.gap(self.next, last, now);
            self.next = last.saturating_add(1);
        }
    }

    /// The unexplained gaps due for a report (all of them when `now_all`).
    fn due(&mut self, now: Instant, caught_up: bool, now_all: bool) -> Ranges {
        if self.waiting.is_empty() {
            return Ranges::default();
        }
        let mut out = Ranges::default();
        self.waiting.retain(|&(a, b, seen)| {
            let age = now.saturating_duration_since(seen);
            let due = now_all || age >= REPORT_ANYWAY || (caught_up && age >= REPORT_AFTER);
            if due {
                out.insert(a, b);
            }
            !due
        });
        let out = out
            .and(&self.gaps)
            .minus(&self.explained)
            .minus(&self.reported);
        self.reported.insert_all(&out);
        out
    }
}

/// See the module doc.
#[derive(Debug, Default)]
pub struct Ledger {
    streams: [Track; 2],
}

fn slot(s: Stream) -> Option<usize> {
    match s {
        Stream::Stdout => Some(0),
        Stream::Stderr => Some(1),
        _ => None,
    }
}

impl Ledger {
    /// `from_start`: the publisher reads this spool from its beginning (no
    /// checkpoint), so `_seq` 1 is the first one it should see.
    pub fn new(from_start: bool) -> Ledger {
        let mut l = Ledger::default();
        if from_start {
            for t in &mut l.streams {
                t.base = Some(1);
                t.next = 1;
            }
        }
        l
    }

    /// A record was read.
    pub fn read(&mut self, stream: Stream, seq: u64, now: Instant) {
        if let Some(i) = slot(stream) {
            self.streams[i].read(seq, now);
        }
    }

    /// A notice names `named` of `stream` as lost: returns (what was never
    /// read, what was read and so not lost).
    pub fn notice(&mut self, stream: Stream, named: &Ranges) -> (Ranges, Ranges) {
        match slot(stream) {
            Some(i) => self.streams[i].notice(named),
            None => (named.clone(), Ranges::default()),
        }
    }

    /// The companion's last `_seq`s (from its `done` marker).
    pub fn end(&mut self, last: [u64; 2], now: Instant) {
        for (t, l) in self.streams.iter_mut().zip(last) {
            t.end(l, now);
        }
    }

    /// Gaps to report as `missing` now, per stream.
    pub fn due(&mut self, now: Instant, caught_up: bool, ended: bool) -> Vec<(Stream, Ranges)> {
        [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .zip(self.streams.iter_mut())
            .map(|(s, t)| (s, t.due(now, caught_up, ended)))
            .filter(|(_, r)| !r.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(p: &[(u64, u64)]) -> Ranges {
        Ranges::from_pairs(p)
    }

    #[test]
    fn ranges_minus_and_within() {
        let a = r(&[(1, 10), (20, 30)]);
        assert_eq!(a.minus(&r(&[(5, 22)])), r(&[(1, 4), (23, 30)]));
        assert_eq!(a.minus(&r(&[(0, 100)])), Ranges::default());
        assert_eq!(a.minus(&Ranges::default()), a);
        assert_eq!(a.and(&r(&[(8, 25)])), r(&[(8, 10), (20, 25)]));
        assert_eq!(a.count(), 21);
        let top = r(&[(5, u64::MAX)]);
        assert_eq!(top.minus(&r(&[(7, u64::MAX)])), r(&[(5, 6)]));
        assert_eq!(top.minus(&r(&[(7, 9)])), r(&[(5, 6), (10, u64::MAX)]));
    }

    #[test]
    fn a_gap_nobody_explains_is_reported_once_and_exactly() {
        let t0 = Instant::now();
        let mut l = Ledger::new(true);
        for s in (1..=10).chain(21..=30) {
            l.read(Stream::Stdout, s, t0);
        }
        // Read again after a retry: nothing changes.
        for s in 5..=25 {
            l.read(Stream::Stdout, s, t0);
        }
        assert!(l.due(t0, true, false).is_empty(), "waits for a notice");
        let later = t0 + REPORT_AFTER;
        assert!(l.due(later, false, false).is_empty(), "not caught up yet");
        assert_eq!(
            l.due(later, true, false),
            vec![(Stream::Stdout, r(&[(11, 20)]))]
        );
        assert!(l.due(later, true, true).is_empty(), "reported once");
    }

    #[test]
    fn a_notice_explains_a_gap_and_is_trimmed_to_what_was_never_read() {
        let t0 = Instant::now();
        let mut l = Ledger::new(true);
        for s in (1..=10).chain(21..=30) {
            l.read(Stream::Stdout, s, t0);
        }
        // The companion says 1-20 went at its cap; 1-10 were read (and
        // are shipped), 11-20 never were.
        let (keep, trimmed) = l.notice(Stream::Stdout, &r(&[(1, 20)]));
        assert_eq!(
            (keep.clone(), trimmed.clone()),
            (r(&[(11, 20)]), r(&[(1, 10)]))
        );
        // The same notice read again trims the same way.
        assert_eq!(l.notice(Stream::Stdout, &r(&[(1, 20)])), (keep, trimmed));
        assert!(l.due(t0, true, true).is_empty(), "explained");
        // A notice naming only read records is empty.
        assert!(l.notice(Stream::Stdout, &r(&[(2, 3)])).0.is_empty());
    }

    #[test]
    fn a_notice_may_come_before_the_gap_and_the_tail_counts() {
        let t0 = Instant::now();
        let mut l = Ledger::new(true);
        l.read(Stream::Stderr, 1, t0);
        // Announced before the records after it are read.
        let (keep, _) = l.notice(Stream::Stderr, &r(&[(2, 5)]));
        assert_eq!(keep, r(&[(2, 5)]));
        l.read(Stream::Stderr, 6, t0);
        // The companion ended at 9 (stderr) and 3 (stdout, never read).
        l.end([3, 9], t0);
        assert_eq!(
            l.due(t0, false, true),
            vec![
                (Stream::Stdout, r(&[(1, 3)])),
                (Stream::Stderr, r(&[(7, 9)]))
            ]
        );
    }

    #[test]
    fn after_a_restart_the_ledger_starts_at_the_first_record_read() {
        let t0 = Instant::now();
        let mut l = Ledger::new(false);
        l.read(Stream::Stdout, 500, t0);
        l.read(Stream::Stdout, 501, t0);
        // Below the first record read: unknown, so a notice stands.
        assert_eq!(l.notice(Stream::Stdout, &r(&[(10, 20)])).0, r(&[(10, 20)]));
        assert!(l.due(t0, true, true).is_empty());
    }

    #[test]
    fn memory_stays_bounded_under_many_gaps() {
        let t0 = Instant::now();
        let mut l = Ledger::new(true);
        for s in (1..200_000).step_by(2) {
            l.read(Stream::Stdout, s, t0);
        }
        let due = l.due(t0, true, true);
        assert!(due[0].1.pairs().len() <= MAX_RANGES);
        assert!(l.streams[0].gaps.pairs().len() <= MAX_RANGES);
    }
}
