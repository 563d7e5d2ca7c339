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
//! - **No double naming.** What an earlier notice named (the companion
//!   reports again the losses of a notice it dropped at its cap) is taken
//!   out of a later one. What a notice the publisher itself dropped unread
//!   (budget) had said is reported again only once the reader has passed
//!   those `_seq`s: a reader still in a segment the companion unlinked
//!   under it may read some of them after all.
//!
//! Everything here is idempotent: records and notices read again after a
//! retry (the reader seeks back to the last acknowledged record) change
//! nothing and come out the same. The account at each checkpoint (the
//! last `_seq` acknowledged per stream, and the `_seq`s after it that
//! acknowledged notices named) is stored next to the spool ([`FILE`]), so
//! a publisher that resumes (agent restart) knows what came before and
//! does not name those again. Gaps found before the checkpoint and not
//! yet explained go with the account too (`open`): the successor still
//! waits for their notice and names them `missing` if none comes (they
//! were lost silently before: a notice arriving after the restart called
//! them `_earlier_seqs`). With the account go the
//! corrections made to the companion's running loss totals, so they stay
//! right across restarts. A notice read after a restart that names
//! `_seq`s before the stored account calls them `_earlier_seqs` (an
//! earlier publisher shipped or named them; which, it no longer knows);
//! records of those a publisher shipped and the companion reports only
//! now stay in its running totals. Records a killed publisher
//! had sent but never saw acknowledged may still reach Kafka (at least
//! once) and may then also be named lost: nobody can know.

use crate::spool::notice::LossReason;
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
        crate::spool::notice::add_range(&mut self.0, a, b, MAX_RANGES);
    }

    pub fn insert_all(&mut self, other: &Ranges) {
        for &(a, b) in &other.0 {
            self.insert(a, b);
        }
    }

    /// This set without `other` (both sorted: one pass over each).
    pub fn minus(&self, other: &Ranges) -> Ranges {
        let mut out = Vec::new();
        let mut j = 0;
        for &(a, b) in &self.0 {
            while j < other.0.len() && other.0[j].1 < a {
                j += 1;
            }
            // u128: a range may end at u64::MAX.
            let mut lo = a as u128;
            for &(c, d) in other.0[j..].iter().take_while(|r| r.0 <= b) {
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

    /// `a-b,c,...` (empty for none).
    pub fn to_text(&self) -> String {
        crate::spool::notice::seqs_text(&self.0)
    }

    /// Reads [`to_text`](Self::to_text); unreadable parts are skipped.
    pub fn from_text(t: &str) -> Ranges {
        let mut r = Ranges::default();
        for (a, b) in crate::spool::notice::parse_seqs_text(t) {
            r.insert(a, b);
        }
        r
    }
}

/// One stream's account.
#[derive(Debug, Default)]
struct Track {
    /// The lowest `_seq` this publisher speaks for: 1 when it read the
    /// spool from its start or resumed with a stored account, else the
    /// first one it read.
    base: Option<u64>,
    /// Every `_seq` from `base` below this was read or is in `gaps`.
    next: u64,
    /// Resumed with a stored account: every `_seq` below this was
    /// accounted for by an earlier publisher (shipped, or named lost; it
    /// cannot tell which), so a notice naming them says nothing new.
    resumed: u64,
    /// Never read.
    gaps: Ranges,
    /// Named by a notice (possibly before the gap was seen): never named
    /// again.
    explained: Ranges,
    /// Reported as `missing` by the publisher.
    reported: Ranges,
    /// Gaps not explained yet, with when they were seen.
    waiting: Vec<(u64, u64, Instant)>,
    /// Losses the publisher reports again for a notice it dropped unread
    /// (budget), by reason, for `_seq`s the reader has not passed yet:
    /// named only once they turn out to be gaps.
    announced: Vec<(LossReason, Ranges)>,
    /// Ready to report: (reason, ranges).
    ready: Vec<(LossReason, Ranges)>,
    /// Read records that notices have named so far (a notice reported
    /// again names them again: counted off the totals once).
    shipped_named: Ranges,
    /// Named lost by the publisher itself (a segment dropped ahead of the
    /// reader) and not yet named by a companion notice: when one names
    /// them too, they come off the companion's running totals, which the
    /// publisher's count already holds.
    dropped: Ranges,
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
        let gap = Ranges::from_pairs(&[(a, b)]);
        for (reason, r) in &mut self.announced {
            let now_named = r.and(&gap).minus(&self.explained);
            *r = r.minus(&gap);
            if !now_named.is_empty() {
                self.explained.insert_all(&now_named);
                self.ready.push((*reason, now_named));
            }
        }
        self.announced.retain(|(_, r)| !r.is_empty());
        if self.waiting.len() >= MAX_RANGES {
            // Merge the two oldest (the span between them is not all
            // gap: `due` keeps only what is in `gaps`).
            let (_, b1, _) = self.waiting.remove(1);
            self.waiting[0].1 = b1;
        }
        self.waiting.push((a, b, now));
    }

    /// What has been read: [base, next) without the gaps.
    fn read_ranges(&self) -> Ranges {
        let mut read = Ranges::default();
        if let Some(base) = self.base {
            if self.next > base {
                read.insert(base, self.next - 1);
            }
        }
        read.minus(&self.gaps)
    }

    /// Splits a notice's ranges (see [`Checked`]) and marks the kept ones
    /// explained.
    fn notice(&mut self, named: &Ranges) -> Checked {
        let mut before = Ranges::default();
        if self.resumed > 1 {
            before.insert(1, self.resumed - 1);
        }
        // Gaps the earlier publisher left open are not accounted for.
        let before = before.minus(&self.gaps);
        let prior = named.and(&before);
        let named = named.minus(&prior);
        let read = named.and(&self.read_ranges());
        let rest = named.minus(&read);
        let keep = rest.minus(&self.explained).minus(&self.reported);
        let mut earlier = rest.minus(&keep);
        earlier.insert_all(&prior);
        self.explained.insert_all(&keep);
        let shipped_new = read.minus(&self.shipped_named).count();
        self.shipped_named.insert_all(&read);
        let ours = earlier.and(&self.dropped);
        self.dropped = self.dropped.minus(&ours);
        Checked {
            keep,
            shipped: read,
            earlier,
            shipped_new,
            named_by_publisher: ours.count(),
        }
    }

    /// `named` were in a segment dropped ahead of the reader: none of
    /// them is in flight or will be read again, read once or not (a
    /// take-back read them before the drop), so all are lost but what was
    /// named before.
    fn dropped(&mut self, named: &Ranges) -> Ranges {
        let mut before = Ranges::default();
        if self.resumed > 1 {
            before.insert(1, self.resumed - 1);
        }
        let before = before.minus(&self.gaps);
        let keep = named
            .minus(&before)
            .minus(&self.explained)
            .minus(&self.reported);
        self.explained.insert_all(&keep);
        self.dropped.insert_all(&keep);
        keep
    }

    fn announce(&mut self, reason: LossReason, named: &Ranges) {
        if self.base.is_none() {
            // Nothing read yet: it stands as it is.
            let keep = named.minus(&self.explained).minus(&self.reported);
            self.explained.insert_all(&keep);
            if !keep.is_empty() {
                self.ready.push((reason, keep));
            }
            return;
        }
        let mut ahead = Ranges::default();
        ahead.insert(self.next, u64::MAX);
        let behind = named.minus(&ahead);
        let now = behind
            .and(&self.gaps)
            .minus(&self.explained)
            .minus(&self.reported);
        if !now.is_empty() {
            self.explained.insert_all(&now);
            self.ready.push((reason, now));
        }
        let later = named.and(&ahead);
        if !later.is_empty() {
            match self.announced.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, r)) => r.insert_all(&later),
                None => self.announced.push((reason, later)),
            }
        }
    }

    fn end(&mut self, last: u64, now: Instant) {
        if self.base.is_none() {
            // Resumed without a stored account and nothing read since:
            // what came before is not known, so nothing is claimed.
            return;
        }
        if last >= self.next {
            self.gap(self.next, last, now);
            self.next = last.saturating_add(1);
        }
    }

    /// Losses due for a report: announced ones that proved real, and the
    /// unexplained gaps (all of them when `now_all`) as `missing`.
    fn due(&mut self, now: Instant, caught_up: bool, now_all: bool) -> Vec<(LossReason, Ranges)> {
        let mut out = std::mem::take(&mut self.ready);
        if self.waiting.is_empty() {
            return out;
        }
        let mut gone = Ranges::default();
        self.waiting.retain(|&(a, b, seen)| {
            let age = now.saturating_duration_since(seen);
            let due = now_all || age >= REPORT_ANYWAY || (caught_up && age >= REPORT_AFTER);
            if due {
                gone.insert(a, b);
            }
            !due
        });
        let missing = gone
            .and(&self.gaps)
            .minus(&self.explained)
            .minus(&self.reported);
        self.reported.insert_all(&missing);
        if !missing.is_empty() {
            out.push((LossReason::Missing, missing));
        }
        out
    }
}

/// A notice's `_seq`s, checked against the ledger.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Never read and not named before: lost, as the notice says.
    pub keep: Ranges,
    /// Read (and so shipped) before they were dropped: not lost.
    pub shipped: Ranges,
    /// Named by an earlier notice already (a notice dropped unread and
    /// reported again): lost, but said once.
    pub earlier: Ranges,
    /// How many of `shipped` no earlier notice named: what comes off the
    /// companion's running totals, which count each record once.
    pub shipped_new: u64,
    /// How many of `earlier` the publisher named itself (and counted):
    /// they come off the companion's running totals too.
    pub named_by_publisher: u64,
}

/// See the module doc.
#[derive(Debug, Default)]
pub struct Ledger {
    streams: [Track; 2],
    /// Companion notices already checked, by their `_seq`: read again
    /// after a retry, a notice is trimmed exactly as the first time.
    /// Pruned as notices are acknowledged.
    checked: std::collections::BTreeMap<u64, (Option<usize>, Checked)>,
}

fn slot(s: Stream) -> Option<usize> {
    match s {
        Stream::Stdout => Some(0),
        Stream::Stderr => Some(1),
        _ => None,
    }
}

/// What a publisher leaves its successor (see [`FILE`]): the last `_seq`s
/// acknowledged, and how far it had corrected the companion's running loss
/// totals (records its notices named that had been shipped, by reason, and
/// the last notice counted), so the totals stay right across a restart.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Account {
    pub acked: [u64; 2],
    pub trimmed: [u64; LossReason::ALL.len()],
    pub notices_corrected: u64,
    /// Per stream, `_seq`s after `acked` that acknowledged notices named
    /// (e.g. rate-limited lines, never spooled): a successor would take
    /// them for a gap nobody explained and name them again as `missing`.
    pub named: [Ranges; 2],
    /// Per stream, gaps up to `acked` that no notice explained yet: the
    /// successor waits for their notice, or names them `missing`.
    pub open: [Ranges; 2],
}

/// Where the ledger keeps, per container, the last `_seq` of each stream
/// acknowledged at the last checkpoint (`<spool_dir>/<key>/ledger`, root's
/// directory): a publisher that resumes knows what came before.
pub const FILE: &str = "ledger";

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

    /// Resuming at a checkpoint at which `acked` (stdout, stderr) were the
    /// last `_seq`s acknowledged: everything up to them is accounted for.
    pub fn resume(account: &Account) -> Ledger {
        let mut l = Ledger::default();
        let now = Instant::now();
        for (i, t) in l.streams.iter_mut().enumerate() {
            t.base = Some(1);
            t.next = account.acked[i].saturating_add(1);
            t.resumed = t.next;
            t.explained = account.named[i].clone();
            let open = account.open[i].minus(&t.explained);
            for &(a, b) in open.pairs() {
                t.waiting.push((a, b, now));
            }
            t.gaps = open;
        }
        l
    }

    /// For [`Account::open`]: gaps up to `acked` that no notice explained
    /// and that were not reported yet.
    pub fn open_gaps(&self, acked: [u64; 2]) -> [Ranges; 2] {
        let mut out: [Ranges; 2] = Default::default();
        for (i, t) in self.streams.iter().enumerate() {
            let mut upto = Ranges::default();
            upto.insert(1, acked[i]);
            out[i] = t.gaps.and(&upto).minus(&t.explained).minus(&t.reported);
        }
        out
    }

    /// For [`Account::named`]: what this publisher's notices named after
    /// `acked`, without what companion notices not yet acknowledged named
    /// (they are read again after a restart and must still name it).
    pub fn named_after(&self, acked: [u64; 2]) -> [Ranges; 2] {
        let mut out: [Ranges; 2] = Default::default();
        for (i, t) in self.streams.iter().enumerate() {
            let mut after = Ranges::default();
            after.insert(acked[i].saturating_add(1), u64::MAX);
            let mut named = t.explained.and(&after);
            named.insert_all(&t.reported.and(&after));
            let mut unacked = Ranges::default();
            for (s, c) in self.checked.values() {
                if *s == Some(i) {
                    unacked.insert_all(&c.keep);
                }
            }
            out[i] = named.minus(&unacked);
        }
        out
    }

    /// The stored account of a container directory, if any.
    pub fn load(dir: &std::path::Path) -> Option<Account> {
        let s = std::fs::read_to_string(dir.join(FILE)).ok()?;
        let mut a = Account {
            acked: crate::spool::parse_seqs(&s)?,
            ..Default::default()
        };
        for kv in s.split_whitespace() {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            match k {
                "named.stdout" => a.named[0] = Ranges::from_text(v),
                "named.stderr" => a.named[1] = Ranges::from_text(v),
                "open.stdout" => a.open[0] = Ranges::from_text(v),
                "open.stderr" => a.open[1] = Ranges::from_text(v),
                _ => {}
            }
            let Ok(v) = v.parse() else { continue };
            if k == "notices_corrected" {
                a.notices_corrected = v;
            } else if let Some(r) = k.strip_prefix("trimmed.").and_then(LossReason::from_name) {
                a.trimmed[r as usize] = v;
            }
        }
        Some(a)
    }

    /// Stores the account for the checkpoint about to be written (before
    /// it: a stored account ahead of the checkpoint only makes records
    /// read again count as read again, never as gaps).
    pub fn store(dir: &std::path::Path, a: &Account) -> std::io::Result<()> {
        use std::fmt::Write;
        let mut text = format!("stdout={} stderr={}", a.acked[0], a.acked[1]);
        let _ = write!(text, " notices_corrected={}", a.notices_corrected);
        for r in LossReason::ALL {
            if a.trimmed[r as usize] > 0 {
                let _ = write!(text, " trimmed.{}={}", r.name(), a.trimmed[r as usize]);
            }
        }
        for (name, named) in ["stdout", "stderr"].into_iter().zip(&a.named) {
            if !named.is_empty() {
                let _ = write!(text, " named.{name}={}", named.to_text());
            }
        }
        for (name, open) in ["stdout", "stderr"].into_iter().zip(&a.open) {
            if !open.is_empty() {
                let _ = write!(text, " open.{name}={}", open.to_text());
            }
        }
        text.push('\n');
        crate::spool::write_replace(dir, FILE, text.as_bytes())
    }

    /// A record was read.
    pub fn read(&mut self, stream: Stream, seq: u64, now: Instant) {
        if let Some(i) = slot(stream) {
            self.streams[i].read(seq, now);
        }
    }

    /// A notice names `named` of `stream` as lost. `id`: the companion
    /// notice's `_seq`, so that reading it again gives the same answer.
    pub fn notice(&mut self, stream: Stream, named: &Ranges, id: Option<u64>) -> Checked {
        if let Some((_, r)) = id.and_then(|i| self.checked.get(&i)) {
            return r.clone();
        }
        let r = match slot(stream) {
            Some(i) => self.streams[i].notice(named),
            None => Checked {
                keep: named.clone(),
                ..Default::default()
            },
        };
        if let Some(i) = id {
            if self.checked.len() >= 4 * MAX_RANGES {
                self.checked.pop_first();
            }
            self.checked.insert(i, (slot(stream), r.clone()));
        }
        r
    }

    /// The publisher dropped a segment ahead of its reader holding `named`
    /// of `stream`: what of them is lost and not named before.
    pub fn dropped(&mut self, stream: Stream, named: &Ranges) -> Ranges {
        match slot(stream) {
            Some(i) => self.streams[i].dropped(named),
            None => named.clone(),
        }
    }

    /// Companion notice `id` was acknowledged: it will not be read again.
    pub fn notice_done(&mut self, id: u64) {
        while self
            .checked
            .first_key_value()
            .is_some_and(|(k, _)| *k <= id)
        {
            self.checked.pop_first();
        }
    }

    /// The publisher reports `named` lost for `reason` (what a notice it
    /// had to drop unread said): named once the reader has passed them and
    /// they are not there; never if they are read after all.
    pub fn announce(&mut self, stream: Stream, reason: LossReason, named: &Ranges) {
        if let Some(i) = slot(stream) {
            self.streams[i].announce(reason, named);
        }
    }

    /// The companion's last `_seq`s (from its `done` marker).
    pub fn end(&mut self, last: [u64; 2], now: Instant) {
        for (t, l) in self.streams.iter_mut().zip(last) {
            t.end(l, now);
        }
    }

    /// Losses to report now: (stream, reason, ranges).
    pub fn due(
        &mut self,
        now: Instant,
        caught_up: bool,
        ended: bool,
    ) -> Vec<(Stream, LossReason, Ranges)> {
        let mut out = Vec::new();
        for (s, t) in [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .zip(self.streams.iter_mut())
        {
            for (reason, r) in t.due(now, caught_up, ended) {
                out.push((s, reason, r));
            }
        }
        out
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

    fn missing(s: Stream, p: &[(u64, u64)]) -> (Stream, LossReason, Ranges) {
        (s, LossReason::Missing, r(p))
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
            vec![missing(Stream::Stdout, &[(11, 20)])]
        );
        assert!(l.due(later, true, true).is_empty(), "reported once");
    }

    #[test]
    fn a_gap_open_at_the_checkpoint_is_still_named_after_a_restart() {
        // helper-1: the cap dropped a segment the reader never saw (gap
        // 11-20); the checkpoint passed it (acked 30) before the notice
        // came, and the publisher was killed. Its successor must still
        // name 11-20: with the notice's reason when it comes (not as
        // `_earlier_seqs`), else as `missing`.
        let t0 = Instant::now();
        let mut l = Ledger::new(true);
        for s in (1..=10).chain(21..=30) {
            l.read(Stream::Stdout, s, t0);
        }
        let account = Account {
            acked: [30, 0],
            named: l.named_after([30, 0]),
            open: l.open_gaps([30, 0]),
            ..Default::default()
        };
        assert_eq!(account.open[0], r(&[(11, 20)]));
        let d = tempfile::tempdir().unwrap();
        Ledger::store(d.path(), &account).unwrap();
        let back = Ledger::load(d.path()).unwrap();
        assert_eq!(back, account);
        // The notice arrives after the restart: 11-20 kept, 1-10 and
        // 21-30 (before the account) are the earlier publisher's.
        let mut next = Ledger::resume(&back);
        let c = next.notice(Stream::Stdout, &r(&[(1, 30)]), Some(7));
        assert_eq!(c.keep, r(&[(11, 20)]));
        assert_eq!(c.earlier, r(&[(1, 10), (21, 30)]));
        assert!(next.due(t0 + REPORT_ANYWAY, true, true).is_empty());
        // No notice at all: reported missing once the successor waited.
        let mut next = Ledger::resume(&back);
        for s in 31..=40 {
            next.read(Stream::Stdout, s, Instant::now());
        }
        assert!(next.due(Instant::now(), true, false).is_empty(), "waits");
        assert_eq!(
            next.due(Instant::now() + REPORT_AFTER, true, false),
            vec![missing(Stream::Stdout, &[(11, 20)])]
        );
        // Explained or reported gaps are not left open.
        assert!(next.open_gaps([40, 0])[0].is_empty());
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
        let c = l.notice(Stream::Stdout, &r(&[(1, 20)]), Some(1));
        assert_eq!(
            (c.keep.clone(), c.shipped.clone()),
            (r(&[(11, 20)]), r(&[(1, 10)]))
        );
        // The same notice read again trims the same way.
        assert_eq!(l.notice(Stream::Stdout, &r(&[(1, 20)]), Some(1)), c);
        assert!(l.due(t0, true, true).is_empty(), "explained");
        // A notice naming only read records is empty; one naming again
        // what an earlier one named (the companion reports a dropped
        // notice again) keeps only what is new.
        assert!(l
            .notice(Stream::Stdout, &r(&[(2, 3)]), Some(2))
            .keep
            .is_empty());
        let c = l.notice(Stream::Stdout, &r(&[(1, 40)]), Some(3));
        assert_eq!(c.keep, r(&[(31, 40)]));
        assert_eq!(c.shipped, r(&[(1, 10), (21, 30)]));
        assert_eq!(c.earlier, r(&[(11, 20)]));
        assert_eq!(c.shipped_new, 10, "1-10 were named shipped before");
        l.notice_done(3);
        assert!(l.checked.is_empty());
    }

    #[test]
    fn a_notice_may_come_before_the_gap_and_the_tail_counts() {
        let t0 = Instant::now();
        let mut l = Ledger::new(true);
        l.read(Stream::Stderr, 1, t0);
        // Announced before the records after it are read.
        let c = l.notice(Stream::Stderr, &r(&[(2, 5)]), None);
        assert_eq!(c.keep, r(&[(2, 5)]));
        l.read(Stream::Stderr, 6, t0);
        // The companion ended at 9 (stderr) and 3 (stdout, never read).
        l.end([3, 9], t0);
        assert_eq!(
            l.due(t0, false, true),
            vec![
                missing(Stream::Stdout, &[(1, 3)]),
                missing(Stream::Stderr, &[(7, 9)])
            ]
        );
    }

    #[test]
    fn a_segment_dropped_ahead_of_the_reader_is_lost_read_once_or_not() {
        let t0 = Instant::now();
        let mut l = Ledger::new(true);
        // 1-100 read, then taken back: the reader is at 41 again when the
        // budget drops the segment of 61-120.
        for s in 1..=100 {
            l.read(Stream::Stdout, s, t0);
        }
        // A companion notice named 61-70 (read then: shipped, it said) and
        // 111-115 (never read: lost).
        let c = l.notice(Stream::Stdout, &r(&[(61, 70), (111, 115)]), Some(7));
        assert_eq!(c.keep, r(&[(111, 115)]));
        assert_eq!(
            l.dropped(Stream::Stdout, &r(&[(61, 120)])),
            r(&[(61, 110), (116, 120)])
        );
        // Read on: 41-60, then 121. Nothing is named twice or missing.
        for s in (41..=60).chain([121]) {
            l.read(Stream::Stdout, s, t0);
        }
        assert!(l.due(t0, true, true).is_empty());
    }

    #[test]
    fn announced_losses_are_named_only_for_what_is_not_read_after_all() {
        let t0 = Instant::now();
        let mut l = Ledger::new(true);
        l.read(Stream::Stdout, 1, t0);
        // A dropped notice said 2-100 went; the reader, still in a segment
        // unlinked under it, then reads 2-50.
        l.announce(Stream::Stdout, LossReason::Budget, &r(&[(2, 100)]));
        assert!(l.due(t0, true, false).is_empty(), "not passed yet");
        for s in 2..=50 {
            l.read(Stream::Stdout, s, t0);
        }
        l.read(Stream::Stdout, 101, t0);
        assert_eq!(
            l.due(t0, true, false),
            vec![(Stream::Stdout, LossReason::Budget, r(&[(51, 100)]))]
        );
        assert!(l.due(t0, true, true).is_empty(), "explained, not missing");
    }

    #[test]
    fn after_a_restart_the_stored_account_keeps_what_was_shipped_shipped() {
        let t0 = Instant::now();
        let d = tempfile::tempdir().unwrap();
        let mut a = Account {
            acked: [1000, 10],
            notices_corrected: 7,
            ..Default::default()
        };
        a.trimmed[LossReason::SpoolCap as usize] = 42;
        Ledger::store(d.path(), &a).unwrap();
        assert_eq!(Ledger::load(d.path()), Some(a.clone()));
        let mut l = Ledger::resume(&a);
        // Nothing more read; the companion ended at 1000 / 12.
        l.end([1000, 12], t0);
        assert_eq!(
            l.due(t0, true, true),
            vec![missing(Stream::Stderr, &[(11, 12)])]
        );
        // A notice naming records an earlier publisher accounted for
        // (shipped or named: it cannot know which) says nothing new, and
        // claims none of them shipped.
        let c = l.notice(Stream::Stdout, &r(&[(1, 500)]), None);
        assert!(c.keep.is_empty());
        assert!(c.shipped.is_empty());
        assert_eq!(c.earlier, r(&[(1, 500)]));
        assert_eq!(c.shipped_new, 0);
        // What this publisher read itself is shipped.
        l.read(Stream::Stdout, 1001, t0);
        let c = l.notice(Stream::Stdout, &r(&[(990, 1001)]), None);
        assert_eq!(c.shipped, r(&[(1001, 1001)]));
        assert_eq!(c.earlier, r(&[(990, 1000)]));
        // Without a stored account nothing is claimed.
        let mut l = Ledger::new(false);
        l.end([1000, 10], t0);
        assert!(l.due(t0, true, true).is_empty());
        let mut l = Ledger::new(false);
        l.read(Stream::Stdout, 500, t0);
        assert_eq!(
            l.notice(Stream::Stdout, &r(&[(10, 20)]), None).keep,
            r(&[(10, 20)])
        );
    }

    #[test]
    fn what_acknowledged_notices_named_after_the_checkpoint_survives_a_restart() {
        let t0 = Instant::now();
        let d = tempfile::tempdir().unwrap();
        let mut l = Ledger::new(true);
        for seq in 1..=200 {
            l.read(Stream::Stderr, seq, t0);
        }
        // 201-300 rate-limited (never spooled): named by notice 7, which
        // is acknowledged; notice 8 (310-320) is not yet.
        assert_eq!(
            l.notice(Stream::Stderr, &r(&[(201, 300)]), Some(7)).keep,
            r(&[(201, 300)])
        );
        assert_eq!(
            l.notice(Stream::Stderr, &r(&[(310, 320)]), Some(8)).keep,
            r(&[(310, 320)])
        );
        l.notice_done(7);
        let a = Account {
            acked: [0, 200],
            named: l.named_after([0, 200]),
            ..Default::default()
        };
        assert_eq!(a.named[1], r(&[(201, 300)]));
        Ledger::store(d.path(), &a).unwrap();
        assert_eq!(Ledger::load(d.path()), Some(a.clone()));
        // The successor reads 301-309, 321-330, then the end: 201-300 is
        // no gap to report, and notice 8, read again, still names its own.
        let mut l = Ledger::resume(&a);
        for seq in (301..=309).chain(321..=330) {
            l.read(Stream::Stderr, seq, t0);
        }
        let again = l.notice(Stream::Stderr, &r(&[(310, 320)]), Some(8));
        assert_eq!(again.keep, r(&[(310, 320)]));
        assert!(again.earlier.is_empty());
        l.end([0, 330], t0);
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
        assert!(due[0].2.pairs().len() <= MAX_RANGES);
        assert!(l.streams[0].gaps.pairs().len() <= MAX_RANGES);
    }
}
