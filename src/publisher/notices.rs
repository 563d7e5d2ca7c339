//! Notices the publisher itself writes into a container's stream: losses
//! that happen on its side of the spool (segments dropped for the agent-wide
//! budget, records no size limit could fit, a companion that died), with
//! the same JSON payload as the companions' notices ([`crate::spool::notice`])
//! and `_stream: mesos-gelf-publisher`, numbered by their own `_seq`.
//!
//! They are kept in `<spool_dir>/<key>/publisher-notices.json` (root's
//! directory, out of the task's reach) until Kafka acknowledges them, so a
//! publisher restart or a long outage does not lose them; a loss is stored
//! there as soon as it is recorded, before it becomes a notice (a publisher
//! killed in between left its last budget drops to be named `missing`). Losses of one
//! reason and stream merge (exact `_seq` ranges) and become at most one
//! notice per second per container. They travel outside the container's
//! in-order acknowledgement (a ticket with [`NOTICE_GENERATION`]): a
//! notice's delivery never moves the spool checkpoint.

use crate::spool::notice::{self, Loss, LossReason};
use crate::spool::record::{Record, Stream};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The generation of a notice's ticket (records use small numbers).
pub const NOTICE_GENERATION: u64 = u64::MAX;
const FILE: &str = "publisher-notices.json";
/// At most one batch of notices per container this often.
const EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Notices {
    file: PathBuf,
    /// The last `_seq` used.
    seq: u64,
    /// Built, not yet acknowledged (persisted): (seq, payload).
    pending: Vec<(u64, Vec<u8>)>,
    /// Sent, waiting for their delivery report.
    in_flight: Vec<u64>,
    /// Losses not yet turned into notices, merged.
    losses: Vec<Loss>,
    totals: [u64; LossReason::ALL.len()],
    last_built: Option<Instant>,
    retry_at: Option<Instant>,
}

impl Notices {
    /// Loads what a previous publisher left unacknowledged for `dir`.
    pub fn load(dir: &Path) -> Notices {
        let file = dir.join(FILE);
        let mut n = Notices {
            file,
            ..Default::default()
        };
        let Ok(bytes) = std::fs::read(&n.file) else {
            return n;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            return n;
        };
        n.seq = v["seq"].as_u64().unwrap_or(0);
        if let Some(p) = v["pending"].as_array() {
            for e in p {
                if let (Some(s), Some(t)) = (e["seq"].as_u64(), e["payload"].as_str()) {
                    n.pending.push((s, t.as_bytes().to_vec()));
                }
            }
        }
        if let Some(l) = v["losses"].as_array() {
            for p in l.iter().filter_map(Value::as_str) {
                n.losses.extend(notice::loss_of(p.as_bytes()));
            }
        }
        if let Some(t) = v["totals"].as_object() {
            for (k, v) in t {
                if let (Some(r), Some(x)) = (LossReason::from_name(k), v.as_u64()) {
                    n.totals[r as usize] = x;
                }
            }
        }
        n
    }

    fn persist(&self) {
        let v = json!({
            "seq": self.seq,
            "pending": self.pending.iter().map(|(s, p)| json!({
                "seq": s, "payload": String::from_utf8_lossy(p)})).collect::<Vec<_>>(),
            "losses": self.losses.iter().map(|l| String::from_utf8_lossy(
                &notice::record(0, String::new(), Some(l), &[]).payload).into_owned())
                .collect::<Vec<_>>(),
            "totals": LossReason::ALL.iter()
                .map(|r| (r.name().to_string(), json!(self.totals[*r as usize])))
                .collect::<serde_json::Map<_, _>>(),
        });
        let dir = self.file.parent().unwrap_or(Path::new("."));
        // Replaced without fsync: safe across a crash of any process, as
        // the checkpoint (see `spool`, "Durability"); it is rewritten for
        // every loss recorded, which may be many a second.
        let _ = crate::spool::write_replace(dir, FILE, v.to_string().as_bytes());
    }

    /// Records a loss; it is reported within a second (merged with others
    /// of its reason and stream).
    pub fn add_loss(&mut self, loss: Loss) {
        self.totals[loss.reason as usize] += loss.records;
        match self
            .losses
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
            None => self.losses.push(loss),
        }
        self.persist();
    }

    /// A notice without a loss range (e.g. the companion died).
    pub fn add_text(&mut self, text: String) {
        self.seq += 1;
        let r = notice::record(self.seq, text, None, &[]);
        self.pending.push((self.seq, r.payload));
        self.persist();
    }

    /// The `_seq` ranges of `stream` in losses not yet made into notices
    /// (nor stored: a restart before then forgets them).
    pub fn unbuilt_seqs(&self, stream: Stream) -> Vec<(u64, u64)> {
        self.losses
            .iter()
            .filter(|l| l.stream == Some(stream))
            .flat_map(|l| l.seqs.iter().copied())
            .collect()
    }

    /// The losses of the notices built but not yet acknowledged: the
    /// successor of a publisher that stopped before Kafka took them sends
    /// them, and its ledger must count their `_seq`s as named (or it names
    /// them again as `missing`).
    pub fn pending_losses(&self) -> Vec<Loss> {
        self.pending
            .iter()
            .filter_map(|(_, p)| notice::loss_of(p))
            .chain(self.losses.iter().cloned())
            .collect()
    }

    /// Nothing left to report or to wait for.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.losses.is_empty()
    }

    /// Notices to send now: turns merged losses into notices (at most once
    /// a second) and returns every pending one not already in flight.
    pub fn due(&mut self) -> Vec<Record> {
        let now = Instant::now();
        if !self.losses.is_empty() && self.last_built.is_none_or(|t| now - t >= EVERY) {
            self.last_built = Some(now);
            let totals: Vec<(LossReason, u64)> = LossReason::ALL
                .into_iter()
                .filter(|r| self.totals[*r as usize] > 0)
                .map(|r| (r, self.totals[r as usize]))
                .collect();
            for l in std::mem::take(&mut self.losses) {
                self.seq += 1;
                let r = notice::record(self.seq, describe(&l), Some(&l), &totals);
                self.pending.push((self.seq, r.payload));
            }
            self.persist();
        }
        if self.retry_at.is_some_and(|t| now < t) {
            return Vec::new();
        }
        let out: Vec<Record> = self
            .pending
            .iter()
            .filter(|(s, _)| !self.in_flight.contains(s))
            .map(|(s, p)| Record {
                stream: Stream::PublisherNotice,
                flags: 0,
                part: 0,
                seq: *s,
                ts_micros: crate::spool::record::now_micros(),
                payload: p.clone(),
            })
            .collect();
        self.in_flight.extend(out.iter().map(|r| r.seq));
        out
    }

    /// The delivery report of notice `seq`.
    pub fn delivered(&mut self, seq: u64, ok: bool) {
        self.in_flight.retain(|s| *s != seq);
        if ok {
            self.pending.retain(|(s, _)| *s != seq);
            self.persist();
        } else {
            self.retry_at = Some(Instant::now() + Duration::from_secs(5));
        }
    }

    /// Forgets what is in flight (the sink was rebuilt): sent again.
    pub fn resend(&mut self) {
        self.in_flight.clear();
    }
}

fn describe(l: &Loss) -> String {
    let stream = l.stream.map_or("", |s| s.name());
    let range = match (l.seqs.first(), l.seqs.last()) {
        (Some(f), Some(t)) if l.seqs.len() == 1 => format!(" (_seq {} to {})", f.0, t.1),
        (Some(_), Some(_)) => format!(" (_seq {})", l.ranges_text()),
        _ => String::new(),
    };
    match l.reason {
        LossReason::Budget => format!(
            "mesos-gelf dropped {} {stream} records{range}, {} bytes: the agent's spool budget was reached (this container held the most; its oldest segments not being read go first)",
            l.records, l.bytes
        ),
        LossReason::Missing => format!(
            "mesos-gelf lost {} {stream} records{range}: they are not in the spool and no notice names them (a damaged or deleted spool segment, or a loss the companion could not report, e.g. on a full spool filesystem)",
            l.records
        ),
        LossReason::TooLarge => format!(
            "mesos-gelf dropped {} {stream} records{range}: too large for the broker even when cut",
            l.records
        ),
        other => format!(
            "mesos-gelf lost {} {stream} records{range}: {}",
            l.records,
            other.name()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_persist_until_delivered_and_merge_ranges() {
        let d = tempfile::tempdir().unwrap();
        let mut n = Notices::load(d.path());
        for (a, b) in [(1, 10), (11, 20), (30, 40)] {
            n.add_loss(Loss {
                reason: LossReason::Budget,
                stream: Some(Stream::Stdout),
                records: b - a + 1,
                bytes: 100,
                seqs: vec![(a, b)],
            });
        }
        let due = n.due();
        assert_eq!(due.len(), 1, "one notice per reason and stream");
        let v: Value = serde_json::from_slice(&due[0].payload).unwrap();
        assert_eq!(v["ranges"], "1-20,30-40");
        assert_eq!(v["records"], 31);
        assert!(n.due().is_empty(), "in flight");
        // A new publisher finds it again until it is acknowledged.
        let mut again = Notices::load(d.path());
        assert_eq!(again.due().len(), 1);
        n.delivered(due[0].seq, true);
        assert!(n.is_empty());
        assert!(Notices::load(d.path()).due().is_empty());
    }

    #[test]
    fn a_loss_is_stored_as_soon_as_it_is_recorded() {
        // Killed before the loss became a notice, a publisher left it to
        // be named `missing` by its successor (helper-2).
        let d = tempfile::tempdir().unwrap();
        let mut n = Notices::load(d.path());
        let loss = Loss {
            reason: LossReason::Budget,
            stream: Some(Stream::Stdout),
            records: 11,
            bytes: 1100,
            seqs: vec![(5, 10), (20, 24)],
        };
        n.add_loss(loss.clone());
        let again = Notices::load(d.path());
        assert_eq!(again.pending_losses(), vec![loss.clone()]);
        assert_eq!(again.totals[LossReason::Budget as usize], 11);
        // Built into a notice, it is stored as that, once.
        n.due();
        let again = Notices::load(d.path());
        assert_eq!(again.pending_losses(), vec![loss]);
        assert!(again.losses.is_empty());
    }
}
