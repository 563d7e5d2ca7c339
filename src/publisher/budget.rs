//! The agent-wide spool budget: `spool_max_total_size` for all spools
//! together, and `spool_min_free` on the spool's filesystem.
//!
//! Who enforces it: the publisher, because only it sees every container
//! (the spool root is root's; a companion sees only its own `data/`), so
//! only it can be fair: over budget, it drops the oldest unsent segment of
//! the container that holds the most, again until the budget holds, and a
//! quiet task's logs survive a noisy neighbour. It never blocks a
//! companion: it only deletes whole closed segments that it has not started
//! to read. Each companion also keeps `spool_min_free` itself before every
//! write (see `SpoolWriter`), the backstop for a burst between two of the
//! publisher's checks (every [`CHECK_EVERY`]).
//!
//! Every drop is reported: the segment is read first, and its records'
//! exact `_seq` ranges go into a `budget` notice on the container's stream
//! (see `notices`); the notices it held are reported again.

use super::*;
use crate::spool::notice::{Loss, LossReason};
use crate::spool::reader::{summarize_file, SegmentSummary};
use crate::spool::writer::fs_space;

/// How often sizes and free space are checked ...
pub const CHECK_EVERY: Duration = Duration::from_millis(200);
/// ... and how often while the spools hold more than [`NEAR`] of the
/// budget: a check that comes late (a busy machine, the publisher thread
/// waiting for a core) let a stress run's noisy neighbours overshoot a
/// 32 MB budget by 0.8 MB at 200 ms.
pub const CHECK_NEAR: Duration = Duration::from_millis(50);
pub const NEAR: f64 = 0.8;
/// The least a container may have in flight, however small the spool.
const MIN_ROOM_SHARE: usize = 64 << 10;
/// Drops start at this share of the budget, so that what companions write
/// between two checks fits in the rest: the budget holds unless they write
/// more than a tenth of it in [`CHECK_EVERY`]. The budget is
/// `spool_max_total_size`, or, when the filesystem has less room, what the
/// spools hold plus the free space above `spool_min_free` (a spool on a
/// 256 MB filesystem may use about 240 MB of it; the tenth of the 4 GB
/// default used to be kept free on top of the floor, so such a filesystem
/// dropped every unread segment at once).
const START_AT: f64 = 0.9;
/// ... and go on down to this share (fewer, larger passes).
const DOWN_TO: f64 = 0.85;

impl Publisher {
    pub(super) fn enforce_budget(&mut self) {
        for c in self.containers.values_mut() {
            if std::mem::take(&mut c.size_dirty) {
                c.spool_bytes = spool_bytes(c.reader.dir());
            }
        }
        // Also refreshes what each reader holds open (`pinned`).
        let keys: Vec<String> = self.containers.keys().cloned().collect();
        for k in keys {
            self.release_unlinked_ahead(&k);
        }
        let retained = self.retained_segments();
        let total: u64 = self.containers.values().map(held).sum::<u64>()
            + retained.iter().filter(|r| r.3).map(|r| r.1).sum::<u64>();
        let (avail, fs_size) = fs_space(&self.opts.spool_dir).unwrap_or((u64::MAX, 0));
        let floor = self.config.defaults.spool_min_free.bytes(fs_size);
        let budget = budget(self.config.spool_max_total_size, total, avail, floor);
        // Records in flight are read again from the spool after a
        // take-back, so the segments they are in stay on disk until they
        // are acknowledged: bounded here by the room (on a 2 MB spool
        // filesystem a 4 MB share held every segment, and the companion
        // could write no newer line).
        self.room_share = ((budget / 4.0) as usize).max(MIN_ROOM_SHARE);
        self.budget_near = total as f64 > budget * NEAR;
        if total as f64 <= budget * START_AT {
            return;
        }
        let mut need = total.saturating_sub((budget * DOWN_TO) as u64);
        // Data kept only for replay (`spool_retain`) goes first, oldest
        // first; it was delivered, so it is no loss.
        for (_, size, path, _) in retained {
            if need == 0 {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                need = need.saturating_sub(size);
                for c in self.containers.values_mut() {
                    c.size_dirty = true;
                }
            }
        }
        while need > 0 {
            // The container that holds the most and has something to drop.
            let mut order: Vec<(u64, String)> = self
                .containers
                .values()
                .map(|c| (held(c), c.key.clone()))
                .collect();
            order.sort_unstable_by(|a, b| b.cmp(a));
            let victim = order.into_iter().find_map(|(_, k)| {
                let c = &self.containers[&k];
                droppable(c).map(|s| (k, s))
            });
            let Some((key, seg)) = victim else {
                let (t, a) = (total, avail);
                self.health.warn("budget\0stuck", || {
                    format!(
                        "spool over its budget ({} MB in spools, {} MB free) but nothing more can be dropped (only data being read or written)",
                        t >> 20,
                        a >> 20
                    )
                });
                return;
            };
            let freed = self.drop_segment(&key, seg, total, avail);
            need = need.saturating_sub(freed.max(1));
        }
    }

    /// Drops one segment of `key` for the budget; returns its size.
    fn drop_segment(&mut self, key: &str, seg: u64, total: u64, avail: u64) -> u64 {
        let c = self.containers.get_mut(key).expect("container");
        let path = segment_path(c.reader.dir(), seg);
        let summary = crate::spool::reader::summarize_segment(&path);
        let size = std::fs::symlink_metadata(&path)
            .map(|m| m.len())
            .unwrap_or(0);
        if std::fs::remove_file(&path).is_err() {
            c.size_dirty = true;
            return size;
        }
        c.reader.release(seg);
        c.spool_bytes = c.spool_bytes.saturating_sub(size);
        let records = self.name_dropped(key, summary);
        if records == 0 {
            // Nothing of it was lost (an empty segment): nothing to say.
            return size;
        }
        let c = &self.containers[key];
        let held = held(c) + size;
        let max = self.config.spool_max_total_size;
        let (_, fs_size) = fs_space(&self.opts.spool_dir).unwrap_or((0, 0));
        let floor = self.config.defaults.spool_min_free.bytes(fs_size);
        self.health.warn(&format!("{key}\0budget"), || {
            format!(
                "spool budget: dropped {records} records ({} KB) of container {key}, the one holding the most ({} MB); spools hold {} MB of spool_max_total_size {} MB, {} MB free of spool_min_free {} MB",
                size >> 10,
                held >> 20,
                total >> 20,
                max >> 20,
                avail >> 20,
                floor >> 20
            )
        });
        size
    }

    /// Lets go of the segments of `key` that its companion unlinked (to
    /// keep its `spool_max_size` or `spool_min_free`) after the reader read
    /// them, and that a take-back or a rewind left ahead of the reader:
    /// the reader's descriptor was all that kept their records, and their
    /// space taken. Kept until the budget needed it, a 2 MB filesystem
    /// stayed full of them, and the companion lost every newer line it
    /// could not write. What they held is named lost (`budget`). Those it
    /// keeps (records in flight from them) stay in `pinned`.
    pub(super) fn release_unlinked_ahead(&mut self, key: &str) {
        let Some(c) = self.containers.get_mut(key) else {
            return;
        };
        let reading = c.reader.position().segment.max(c.acked.segment);
        let (ahead, kept): (Vec<_>, Vec<_>) = c
            .reader
            .kept_unlinked()
            .into_iter()
            .partition(|p| p.0 > reading);
        c.pinned = kept;
        let (mut records, mut bytes) = (0, 0);
        for (seg, size) in ahead {
            let c = self.containers.get_mut(key).expect("container");
            let summary = c
                .reader
                .release(seg)
                .map(|f| summarize_file(&f))
                .unwrap_or_default();
            records += self.name_dropped(key, summary);
            bytes += size;
        }
        if records > 0 {
            self.health.warn(&format!("{key}\0released"), || {
                format!(
                    "spool budget: container {key}: {records} records ({} KB) waiting to be sent again were in segments its companion had dropped from the spool; their space is freed and they are named lost",
                    bytes >> 10
                )
            });
        }
    }

    /// Names lost what a dropped segment held and no notice named before;
    /// reports again what its companion notices said. Returns the records.
    fn name_dropped(&mut self, key: &str, summary: SegmentSummary) -> u64 {
        let c = self.containers.get_mut(key).expect("container");
        let mut records = 0;
        for (stream, span) in summary.spans {
            // Named through the ledger: every record not named before,
            // read once or not (nothing in it is in flight).
            let named = ledger::Ranges::from_pairs(&span.ranges);
            let keep = c.ledger.dropped(stream, &named);
            let n = span.records.min(keep.count());
            if n == 0 {
                continue;
            }
            records += n;
            c.notices.add_loss(Loss {
                reason: LossReason::Budget,
                stream: Some(stream),
                records: n,
                bytes: span.bytes * n / span.records.max(1),
                seqs: keep.pairs().to_vec(),
            });
        }
        for l in summary.notices {
            // What a dropped companion notice said is reported again, once
            // the reader has passed those records: some may still be read
            // (from a segment the reader holds open after the companion
            // unlinked it), and those are not lost.
            match (l.stream, l.seqs.is_empty()) {
                (Some(stream), false) => {
                    let named = ledger::Ranges::from_pairs(&l.seqs);
                    c.ledger.announce(stream, l.reason, &named);
                }
                _ => c.notices.add_loss(l),
            }
        }
        Metrics::add(&self.metrics.dropped[LossReason::Budget as usize], records);
        records
    }
}

impl Publisher {
    /// Delivered segments kept for `spool_retain`, oldest first: (mtime,
    /// size, path, in a finished container) — finished containers' whole
    /// spools, and active ones' segments before their checkpoint.
    fn retained_segments(&self) -> Vec<(std::time::SystemTime, u64, PathBuf, bool)> {
        if self.config.spool_retain.is_zero() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut add = |data: &Path, below: Option<u64>, finished: bool| {
            for s in list_segments(data).unwrap_or_default() {
                if below.is_some_and(|b| s >= b) {
                    continue;
                }
                let p = segment_path(data, s);
                if let Ok(m) = std::fs::symlink_metadata(&p) {
                    out.push((
                        m.modified().unwrap_or(std::time::UNIX_EPOCH),
                        m.len(),
                        p,
                        finished,
                    ));
                }
            }
        };
        for k in &self.retained {
            add(
                &crate::spool::data_dir(&self.opts.spool_dir.join(k)),
                None,
                true,
            );
        }
        for c in self.containers.values() {
            add(c.reader.dir(), Some(c.acked.segment), false);
        }
        out.sort();
        out
    }
}

/// What the spools may hold: `max_total`, or less when the filesystem has
/// less room (`total` held now, `avail` free, `floor` to keep free).
fn budget(max_total: u64, total: u64, avail: u64, floor: u64) -> f64 {
    max_total.min(total.saturating_add(avail.saturating_sub(floor))) as f64
}

/// Bytes of a container's segments on disk.
fn spool_bytes(data: &Path) -> u64 {
    list_segments(data)
        .unwrap_or_default()
        .into_iter()
        .map(|s| {
            std::fs::symlink_metadata(segment_path(data, s))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum()
}

/// What a container's spool takes on disk: its segments, and those its
/// reader still holds open after they were unlinked.
fn held(c: &Container) -> u64 {
    c.spool_bytes + c.pinned.iter().map(|p| p.1).sum::<u64>()
}

/// The oldest segment of `c` the budget may drop: after the one being read
/// (nothing in flight comes from it), and not the one its live companion
/// is writing. (Segments the reader holds open after they were unlinked
/// are let go by `release_unlinked_ahead` when they are ahead of it.)
fn droppable(c: &Container) -> Option<u64> {
    let dir = c.reader.dir();
    let segs = list_segments(dir).ok()?;
    let reading = c.reader.position().segment.max(c.acked.segment);
    let live = !dir.join(crate::spool::DONE_FILE).exists();
    let newest = *segs.last()?;
    segs.into_iter()
        .find(|&s| s > reading && !(live && s == newest))
}

#[cfg(test)]
mod tests {
    use super::budget;
    const MB: u64 = 1 << 20;

    #[test]
    fn the_budget_is_the_room_there_is_up_to_the_maximum() {
        // A 256 MB filesystem, 16 MB in spools, 239 MB free, 12.8 MB floor:
        // about 242 MB, far from the 90% at which drops start.
        let b = budget(4096 * MB, 16 * MB, 239 * MB, 13 * MB);
        assert_eq!(b as u64, 242 * MB);
        assert!(16.0 * MB as f64 <= b * super::START_AT);
        // An empty spool on it has nothing to drop either.
        assert!(budget(4096 * MB, 0, 255 * MB, 13 * MB) > 0.0);
        // A large filesystem: the configured maximum.
        assert_eq!(
            budget(4096 * MB, MB, 100_000 * MB, 5000 * MB) as u64,
            4096 * MB
        );
        // Others filled the disk to the floor: the spools keep what they
        // hold and no more (drops from 90% of it).
        assert_eq!(budget(4096 * MB, 100 * MB, 0, 5000 * MB) as u64, 100 * MB);
    }
}
