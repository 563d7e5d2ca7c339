//! Loss notices: records mesos-gelf writes into a container's own stream
//! (stream 3, `_stream: mesos-gelf`) to say which records were lost and why.
//!
//! A notice's payload is a JSON object, so the publisher can both ship it as
//! GELF fields and count the losses by reason for the agent's metrics:
//!
//! ```text
//! {"text": "<human sentence>",
//!  "reason": "spool_cap",          (LossReason::name)
//!  "stream": "stdout",             the stream the lost records belonged to
//!  "records": 120, "bytes": 9000,  lost in this notice
//!  "first_seq": 5, "last_seq": 124,  the lost `_seq` range (inclusive)
//!  "ranges": "5-20,40-124",        only when the lost seqs have gaps
//!  "totals": {"spool_cap": 120, ...}}  cumulative per reason, this container
//! ```
//!
//! The totals are cumulative so that a reader that misses a notice (it can
//! itself be dropped at the cap) still counts every loss exactly once.
//! A notice without a range (e.g. sandbox bytes, a metadata problem) has no
//! `first_seq`/`last_seq`. Spools written before notices were JSON hold
//! plain text: it is shipped as the message, with no fields.

use super::record::{Record, Stream};
use serde_json::{json, Map, Value};

/// Why records were lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LossReason {
    /// The container's spool reached `spool_max_size`; the oldest went.
    SpoolCap,
    /// Writing the spool failed (its filesystem full, an I/O error).
    SpoolWrite,
    /// Writing the sandbox files failed (counted in bytes; still shipped).
    SandboxWrite,
    /// The publisher could not fit a record into the broker's size limit.
    TooLarge,
    /// A torn or corrupt spool frame skipped by the publisher.
    Torn,
    /// Over the container's `rate_limit_lines` / `rate_limit_bytes` (still
    /// in the sandbox files).
    RateLimit,
    /// Dropped by the publisher to keep the agent-wide spool budget
    /// (`spool_max_total_size`, `spool_min_free`), or by the companion when
    /// the spool filesystem reached `spool_min_free`.
    Budget,
    /// Never found in the spool and named by no notice (a damaged or
    /// deleted segment, a loss its companion could not report): found by
    /// the publisher's ledger (`publisher::ledger`).
    Missing,
}

impl LossReason {
    pub const ALL: [LossReason; 8] = [
        LossReason::SpoolCap,
        LossReason::SpoolWrite,
        LossReason::SandboxWrite,
        LossReason::TooLarge,
        LossReason::Torn,
        LossReason::RateLimit,
        LossReason::Budget,
        LossReason::Missing,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LossReason::SpoolCap => "spool_cap",
            LossReason::SpoolWrite => "spool_write",
            LossReason::SandboxWrite => "sandbox_write",
            LossReason::TooLarge => "too_large",
            LossReason::Torn => "torn",
            LossReason::RateLimit => "rate_limit",
            LossReason::Budget => "budget",
            LossReason::Missing => "missing",
        }
    }

    pub fn from_name(s: &str) -> Option<LossReason> {
        LossReason::ALL.into_iter().find(|r| r.name() == s)
    }
}

/// One loss to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub reason: LossReason,
    pub stream: Option<Stream>,
    pub records: u64,
    pub bytes: u64,
    /// The lost `_seq` ranges, inclusive, sorted and disjoint, when the
    /// loss is of whole records (empty otherwise).
    pub seqs: Vec<(u64, u64)>,
}

/// Ranges kept per loss before the closest two are merged (the notice then
/// names a few kept records as lost: never the other way round).
pub const MAX_RANGES: usize = 256;

/// Adds `a..=b` to sorted, disjoint, inclusive `seqs`, merging ranges that
/// touch; past `max` ranges the closest two are merged (they then cover a
/// few `_seq`s between them too). Shared by loss notices and the
/// publisher's ledger.
pub fn add_range(seqs: &mut Vec<(u64, u64)>, a: u64, b: u64, max: usize) {
    let i = seqs.partition_point(|r| r.1.saturating_add(1) < a);
    let (mut lo, mut hi, mut j) = (a, b, i);
    while j < seqs.len() && seqs[j].0 <= hi.saturating_add(1) {
        lo = lo.min(seqs[j].0);
        hi = hi.max(seqs[j].1);
        j += 1;
    }
    seqs.splice(i..j, [(lo, hi)]);
    if seqs.len() > max {
        let k = (0..seqs.len() - 1)
            .min_by_key(|&k| seqs[k + 1].0 - seqs[k].1)
            .expect("two ranges");
        seqs[k].1 = seqs[k + 1].1;
        seqs.remove(k + 1);
    }
}

impl Loss {
    /// Adds the lost range `a..=b`, merging ranges that touch.
    pub fn add_range(&mut self, a: u64, b: u64) {
        add_range(&mut self.seqs, a, b, MAX_RANGES);
    }

    /// The ranges as text: `5-124,300-310` (a GELF string field).
    pub fn ranges_text(&self) -> String {
        seqs_text(&self.seqs)
    }
}

/// Ranges as text: `5-124,300,310-320`.
pub fn seqs_text(pairs: &[SeqRange]) -> String {
    pairs
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads [`seqs_text`]; parts that are not numbers are skipped.
pub fn parse_seqs_text(t: &str) -> impl Iterator<Item = SeqRange> + '_ {
    t.split(',').filter_map(|p| {
        let (a, b) = p.split_once('-').unwrap_or((p, p));
        Some((a.parse().ok()?, b.parse().ok()?))
    })
}

/// Builds the notice record for `loss` (notice sequence `seq`), with the
/// container's cumulative totals by reason.
pub fn record(seq: u64, text: String, loss: Option<&Loss>, totals: &[(LossReason, u64)]) -> Record {
    let mut o = Map::new();
    o.insert("text".into(), Value::String(text));
    if let Some(l) = loss {
        o.insert("reason".into(), json!(l.reason.name()));
        if let Some(s) = l.stream {
            o.insert("stream".into(), json!(s.name()));
        }
        o.insert("records".into(), json!(l.records));
        o.insert("bytes".into(), json!(l.bytes));
        if let (Some(first), Some(last)) = (l.seqs.first(), l.seqs.last()) {
            o.insert("first_seq".into(), json!(first.0));
            o.insert("last_seq".into(), json!(last.1));
            if l.seqs.len() > 1 {
                o.insert("ranges".into(), json!(l.ranges_text()));
            }
        }
    }
    if !totals.is_empty() {
        let t: Map<String, Value> = totals
            .iter()
            .map(|(r, n)| (r.name().to_string(), json!(n)))
            .collect();
        o.insert("totals".into(), Value::Object(t));
    }
    let mut r = Record::notice(seq, String::new());
    r.payload = serde_json::to_vec(&Value::Object(o)).expect("JSON");
    r
}

/// The loss a notice payload reports, if it reports one (the writer uses
/// it to report again what a notice dropped at the cap had said).
pub fn loss_of(payload: &[u8]) -> Option<Loss> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let reason = LossReason::from_name(v.get("reason")?.as_str()?)?;
    let stream = match v.get("stream").and_then(Value::as_str) {
        Some("stdout") => Some(Stream::Stdout),
        Some("stderr") => Some(Stream::Stderr),
        Some("mesos-gelf") => Some(Stream::Notice),
        Some("mesos-gelf-publisher") => Some(Stream::PublisherNotice),
        _ => None,
    };
    let mut l = Loss {
        reason,
        stream,
        records: v.get("records").and_then(Value::as_u64).unwrap_or(0),
        bytes: v.get("bytes").and_then(Value::as_u64).unwrap_or(0),
        seqs: Vec::new(),
    };
    match v.get("ranges").and_then(Value::as_str) {
        Some(r) => {
            for (a, b) in parse_seqs_text(r) {
                l.add_range(a, b);
            }
        }
        None => {
            if let (Some(a), Some(b)) = (
                v.get("first_seq").and_then(Value::as_u64),
                v.get("last_seq").and_then(Value::as_u64),
            ) {
                l.add_range(a, b);
            }
        }
    }
    Some(l)
}

/// An inclusive `_seq` range.
pub type SeqRange = (u64, u64);

/// What the publisher found about a companion notice's `_seq`s (see
/// `publisher::ledger`).
pub struct Correction<'a> {
    /// Really lost, and named here for the first time.
    pub lost: &'a [SeqRange],
    /// Read and shipped before they were dropped: not lost.
    pub shipped: &'a [SeqRange],
    /// Named by an earlier notice already, or accounted for by an earlier
    /// publisher (before a restart).
    pub earlier: &'a [SeqRange],
}

fn ranges_text_of(pairs: &[SeqRange]) -> String {
    let mut l = Loss {
        reason: LossReason::Missing,
        stream: None,
        records: 0,
        bytes: 0,
        seqs: Vec::new(),
    };
    for &(a, b) in pairs {
        l.add_range(a, b);
    }
    l.ranges_text()
}

/// A companion notice as the publisher corrects it: its count, range and
/// text say only what is really lost and named here first;
/// `shipped_seqs` and `earlier_seqs` name the rest; `less` comes off each
/// reason's running total. None when the payload is not a JSON notice.
pub fn corrected(
    payload: &[u8],
    fix: Option<Correction>,
    less: &[(LossReason, u64)],
) -> Option<Vec<u8>> {
    let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(payload) else {
        return None;
    };
    if let Some(fix) = fix {
        let kept: u64 = fix.lost.iter().map(|(a, b)| b - a + 1).sum();
        let was = o.get("records").and_then(Value::as_u64).unwrap_or(kept);
        let records = was.min(kept);
        let bytes = o.get("bytes").and_then(Value::as_u64).unwrap_or(0);
        let bytes = if was > 0 {
            (bytes as u128 * records as u128 / was as u128) as u64
        } else {
            0
        };
        o.insert("records".into(), json!(records));
        o.insert("bytes".into(), json!(bytes));
        if let (Some(f), Some(l)) = (fix.lost.first(), fix.lost.last()) {
            o.insert("first_seq".into(), json!(f.0));
            o.insert("last_seq".into(), json!(l.1));
        }
        if fix.lost.len() > 1 {
            o.insert("ranges".into(), json!(ranges_text_of(fix.lost)));
        } else {
            o.remove("ranges");
        }
        let mut said = Vec::new();
        if !fix.shipped.is_empty() {
            let t = ranges_text_of(fix.shipped);
            said.push(format!(
                "_seq {t} had been read and shipped before they were dropped"
            ));
            o.insert("shipped_seqs".into(), json!(t));
        }
        if !fix.earlier.is_empty() {
            let t = ranges_text_of(fix.earlier);
            said.push(format!(
                "_seq {t} were accounted for earlier (named lost by an earlier notice, or, before a publisher restart, shipped or named)"
            ));
            o.insert("earlier_seqs".into(), json!(t));
        }
        let text = o
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        o.insert(
            "text".into(),
            json!(format!(
                "{text} [corrected by the publisher: {}; newly lost here: {records} records, _seq {}]",
                said.join("; "),
                ranges_text_of(fix.lost)
            )),
        );
    }
    if let Some(Value::Object(t)) = o.get_mut("totals") {
        for (r, n) in less {
            if let Some(v) = t.get_mut(r.name()) {
                *v = json!(v.as_u64().unwrap_or(0).saturating_sub(*n));
            }
        }
    }
    serde_json::to_vec(&Value::Object(o)).ok()
}

/// A notice payload as the publisher reads it.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub text: String,
    /// `(GELF field name, value)` pairs: `_loss_reason`, `_lost_records` ...
    pub fields: Vec<(String, Value)>,
    pub totals: Vec<(LossReason, u64)>,
}

/// Reads a notice payload (JSON, or the plain text of older spools).
pub fn parse(payload: &[u8]) -> Parsed {
    let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(payload) else {
        return Parsed {
            text: String::from_utf8_lossy(payload).into_owned(),
            ..Default::default()
        };
    };
    let mut p = Parsed {
        text: o
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or("mesos-gelf notice")
            .to_string(),
        ..Default::default()
    };
    for (k, field) in [
        ("reason", "_loss_reason"),
        ("stream", "_lost_stream"),
        ("records", "_lost_records"),
        ("bytes", "_lost_bytes"),
        ("first_seq", "_lost_first_seq"),
        ("last_seq", "_lost_last_seq"),
        ("ranges", "_lost_seq_ranges"),
        ("shipped_seqs", "_shipped_seqs"),
        ("earlier_seqs", "_earlier_seqs"),
    ] {
        if let Some(v) = o.get(k).filter(|v| v.is_string() || v.is_u64()) {
            p.fields.push((field.to_string(), v.clone()));
        }
    }
    if let Some(Value::Object(t)) = o.get("totals") {
        for (k, v) in t {
            if let (Some(r), Some(n)) = (LossReason::from_name(k), v.as_u64()) {
                p.totals.push((r, n));
                p.fields.push((format!("_lost_total_{k}"), json!(n)));
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_roundtrip_and_plain_text() {
        let l = Loss {
            reason: LossReason::SpoolCap,
            stream: Some(Stream::Stdout),
            records: 120,
            bytes: 9000,
            seqs: vec![(5, 124)],
        };
        let r = record(
            3,
            "lost".into(),
            Some(&l),
            &[(LossReason::SpoolCap, 200), (LossReason::SpoolWrite, 1)],
        );
        assert_eq!(r.stream, Stream::Notice);
        assert_eq!(r.seq, 3);
        let p = parse(&r.payload);
        assert_eq!(p.text, "lost");
        assert!(p.fields.contains(&("_lost_first_seq".into(), json!(5))));
        assert!(p.fields.contains(&("_lost_last_seq".into(), json!(124))));
        assert!(p
            .fields
            .contains(&("_loss_reason".into(), json!("spool_cap"))));
        assert_eq!(
            p.totals,
            vec![(LossReason::SpoolCap, 200), (LossReason::SpoolWrite, 1)]
        );
        assert_eq!(loss_of(&r.payload), Some(l));
        let old = parse(b"mesos-gelf lost log records: 3");
        assert_eq!(old.text, "mesos-gelf lost log records: 3");
        assert!(old.fields.is_empty() && old.totals.is_empty());
    }
}

#[cfg(test)]
mod range_tests {
    use super::*;

    #[test]
    fn ranges_merge_when_they_touch_in_any_order() {
        let mut l = Loss {
            reason: LossReason::SpoolCap,
            stream: None,
            records: 0,
            bytes: 0,
            seqs: vec![],
        };
        l.add_range(10, 20);
        l.add_range(30, 40);
        l.add_range(1, 5);
        assert_eq!(l.ranges_text(), "1-5,10-20,30-40");
        l.add_range(21, 29);
        assert_eq!(l.ranges_text(), "1-5,10-40");
        l.add_range(6, 9);
        assert_eq!(l.seqs, vec![(1, 40)]);
        for i in 0..1000u64 {
            l.add_range(100 + 3 * i, 100 + 3 * i);
        }
        assert!(l.seqs.len() <= MAX_RANGES);
        assert_eq!(l.seqs.last().unwrap().1, 100 + 3 * 999);
    }
}
