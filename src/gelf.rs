//! GELF 1.1 encoding and field-name sanitising.
//!
//! One record becomes one JSON object:
//!
//! ```text
//! {"version":"1.1","host":..,"short_message":..,["full_message":..,]
//!  "timestamp":<seconds.micros>,"level":<0-7>,"_stream":"stdout","_seq":N,
//!  [line-part fields,] <container fields>, <label fields>, <static fields>}
//! ```
//!
//! The container part never changes for a container, so [`Encoder::new`]
//! serialises it once and [`Encoder::encode`] only appends the per-record
//! fields. Guarantees:
//! - the output is one valid JSON object (serde_json escapes `"`, `\`, NUL
//!   and every control character);
//! - invalid UTF-8 becomes U+FFFD; the sandbox files keep the raw bytes;
//! - field names contain only `[A-Za-z0-9_.-]` (others become `_`) and
//!   `_id`, reserved by Graylog, is never emitted;
//! - an empty line gets `short_message` `(empty line)`: Graylog rejects an
//!   empty `short_message`;
//! - an encoding longer than the sink's limit is cut (payload truncated on a
//!   character boundary) and marked `_truncated: true`, `_original_bytes`.

use crate::config::{Config, ContainerSettings, LabelFilter};
use crate::metadata::Identity;
use crate::spool::notice;
use crate::spool::record::{flags, Record, Stream};
use std::borrow::Cow;

/// Bytes allowed in a GELF additional field name (after the leading `_`).
pub fn is_field_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-'
}

/// Sanitises a label key or other free text into a field-name fragment.
pub fn sanitize_name(s: &str) -> String {
    s.bytes()
        .map(|b| if is_field_byte(b) { b as char } else { '_' })
        .collect()
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing JSON to a Vec cannot fail");
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b',');
    push_str(out, name);
    out.push(b':');
    push_str(out, value);
}

/// The smallest message limit an encoder accepts: the floor form (host and
/// container id of at most 64 bytes each, the per-record fields, a few
/// bytes of the line) always fits in it.
pub const MIN_MESSAGE_BYTES: usize = 600;

/// Bytes of host and container id kept in the floor form.
const FLOOR_ID_BYTES: usize = 64;

/// How an encoding turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// The whole record.
    Whole,
    /// The payload was cut to fit (`_truncated`, `_original_bytes`).
    Cut,
    /// Not even an empty payload fits the limit: nothing usable was written.
    Over,
}

/// Which container fields go into each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldSet {
    /// Identity, labels, static fields.
    All,
    /// Identity only: labels and static fields left out.
    Identity,
    /// The floor: host and container id, cut to 64 plain bytes each.
    Floor,
}

/// Encodes records of one container.
///
/// The container fields (identity, labels, static fields) are fixed for a
/// container and may be large (a task controls its labels), so they are
/// never allowed to take more than half of the message limit: past that,
/// labels and static fields are left out, then the identity is reduced to
/// host and container id, and each message says how many fields were left
/// out (`_fields_dropped`). The other half holds the per-record fields and
/// the line, cut if need be. So every record fits any limit of at least
/// [`MIN_MESSAGE_BYTES`].
#[derive(Debug, Clone)]
pub struct Encoder {
    /// `,"host":...,"_container_id":...` etc., serialised once per set.
    all: Vec<u8>,
    identity: Vec<u8>,
    floor: Vec<u8>,
    /// Fields in `all`, and in `identity`.
    all_count: usize,
    identity_count: usize,
    /// The set in use at the current limit, with its `_fields_dropped`.
    set: FieldSet,
    chosen: Vec<u8>,
    level_stdout: u8,
    level_stderr: u8,
    max_bytes: usize,
}

/// `s` as a plain name: `[A-Za-z0-9._:-]`, others `_`, at most `n` bytes.
fn plain(s: &str, n: usize) -> String {
    s.bytes()
        .take(n)
        .map(|b| {
            if is_field_byte(b) || b == b':' {
                b as char
            } else {
                '_'
            }
        })
        .collect()
}

impl Encoder {
    pub fn new(config: &Config, identity: &Identity, settings: &ContainerSettings) -> Encoder {
        Encoder::with_parts(
            &config.host,
            identity,
            settings,
            &config.labels,
            config.static_fields.iter(),
            config.max_message_bytes,
        )
    }

    pub fn with_parts<'a>(
        host: &str,
        id: &Identity,
        settings: &ContainerSettings,
        labels: &LabelFilter,
        static_fields: impl Iterator<Item = (&'a String, &'a String)>,
        max_bytes: usize,
    ) -> Encoder {
        let mut f = Vec::with_capacity(512);
        let mut count = 2;
        push_field(&mut f, "host", host);
        push_field(&mut f, "_container_id", &id.container_id);
        if !id.parents.is_empty() {
            push_field(&mut f, "_parent_container_id", &id.parents.join("."));
            count += 1;
        }
        let opt = [
            ("_framework_id", &id.framework_id),
            ("_executor_id", &id.executor_id),
            ("_task_id", &id.task_id),
            ("_task_name", &id.task_name),
            ("_agent_id", &id.agent_id),
            ("_app", &id.app),
            ("_app_version", &id.app_version),
            ("_user", &id.user),
        ];
        let mut seen: Vec<String> = opt.iter().map(|(k, _)| k.to_string()).collect();
        seen.extend(
            ["_container_id", "_stream", "_seq", "_id", "_fields_dropped"].map(String::from),
        );
        for (k, v) in opt {
            if let Some(v) = v {
                push_field(&mut f, k, v);
                count += 1;
            }
        }
        let identity = f.clone();
        let identity_count = count;
        for (k, v) in &id.labels {
            if !labels.allows(k) {
                continue;
            }
            let name = format!("_label_{}", sanitize_name(k));
            if seen.contains(&name) {
                continue; // two keys sanitised to one name: the first wins
            }
            push_field(&mut f, &name, v);
            seen.push(name);
            count += 1;
        }
        for (k, v) in static_fields {
            let name = format!("_{}", sanitize_name(k));
            if seen.contains(&name) {
                continue;
            }
            push_field(&mut f, &name, v);
            seen.push(name);
            count += 1;
        }
        let mut floor = Vec::with_capacity(2 * FLOOR_ID_BYTES + 32);
        push_field(&mut floor, "host", &plain(host, FLOOR_ID_BYTES));
        push_field(
            &mut floor,
            "_container_id",
            &plain(&id.container_id, FLOOR_ID_BYTES),
        );
        let mut e = Encoder {
            all: f,
            identity,
            floor,
            all_count: count,
            identity_count,
            set: FieldSet::All,
            chosen: Vec::new(),
            level_stdout: settings.level_stdout,
            level_stderr: settings.level_stderr,
            max_bytes: 0,
        };
        e.set_max_bytes(max_bytes);
        e
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Container fields left out at the current limit (0: none).
    pub fn fields_dropped(&self) -> usize {
        match self.set {
            FieldSet::All => 0,
            FieldSet::Identity => self.all_count - self.identity_count,
            FieldSet::Floor => self.all_count - 2,
        }
    }

    /// Sets the size limit (lowered after the broker rejected a message as
    /// too large; never below [`MIN_MESSAGE_BYTES`]) and picks the container
    /// fields that fit in half of it.
    pub fn set_max_bytes(&mut self, n: usize) {
        self.max_bytes = n.max(MIN_MESSAGE_BYTES);
        let budget = self.max_bytes / 2;
        self.set = if self.all.len() <= budget {
            FieldSet::All
        } else if self.identity.len() + 32 <= budget {
            FieldSet::Identity
        } else {
            FieldSet::Floor
        };
        self.chosen = match self.set {
            FieldSet::All => self.all.clone(),
            FieldSet::Identity => self.identity.clone(),
            FieldSet::Floor => self.floor.clone(),
        };
        let dropped = self.fields_dropped();
        if dropped > 0 {
            use std::io::Write;
            let _ = write!(self.chosen, ",\"_fields_dropped\":{dropped}");
        }
    }

    /// Appends the GELF JSON of `rec` to `out` (no trailing newline), cut to
    /// the limit if need be. On [`Fit::Over`] `out` is left as it was.
    pub fn encode(&self, rec: &Record, out: &mut Vec<u8>) -> Fit {
        if matches!(rec.stream, Stream::Notice | Stream::PublisherNotice) {
            // A notice's payload is JSON (text + loss fields): ship the text
            // as the message and the rest as fields.
            let n = notice::parse(&rec.payload);
            let mut r = rec.clone();
            r.payload = n.text.into_bytes();
            return self.encode_with(&r, &n.fields, out);
        }
        self.encode_with(rec, &[], out)
    }

    fn encode_with(
        &self,
        rec: &Record,
        fields: &[(String, serde_json::Value)],
        out: &mut Vec<u8>,
    ) -> Fit {
        let start = out.len();
        self.encode_payload(rec, &rec.payload, None, fields, out);
        let len = out.len() - start;
        if len <= self.max_bytes {
            return Fit::Whole;
        }
        // Too large for the sink: cut the payload by the excess (plus room for
        // the markers and escaping growth), retrying with less if needed.
        let mut keep = rec.payload.len().saturating_sub(len - self.max_bytes + 128);
        loop {
            out.truncate(start);
            let cut = utf8_floor(&rec.payload, keep);
            self.encode_payload(
                rec,
                &rec.payload[..cut],
                Some(rec.payload.len()),
                fields,
                out,
            );
            if out.len() - start <= self.max_bytes {
                return Fit::Cut;
            }
            if cut == 0 {
                out.truncate(start);
                return Fit::Over;
            }
            keep = cut / 2;
        }
    }

    fn encode_payload(
        &self,
        rec: &Record,
        payload: &[u8],
        original: Option<usize>,
        fields: &[(String, serde_json::Value)],
        out: &mut Vec<u8>,
    ) {
        let text: Cow<str> = String::from_utf8_lossy(payload);
        let multiline = rec.flags & flags::MULTILINE != 0;
        let short: &str = if multiline {
            text.split('\n').next().unwrap_or("")
        } else {
            &text
        };
        out.extend_from_slice(b"{\"version\":\"1.1\",\"short_message\":");
        if short.is_empty() {
            push_str(out, "(empty line)");
        } else {
            push_str(out, short);
        }
        if multiline {
            out.extend_from_slice(b",\"full_message\":");
            push_str(out, &text);
        }
        let level = match rec.stream {
            Stream::Stdout => self.level_stdout,
            Stream::Stderr => self.level_stderr,
            Stream::Notice | Stream::PublisherNotice => 4,
        };
        let secs = rec.ts_micros.div_euclid(1_000_000);
        let micros = rec.ts_micros.rem_euclid(1_000_000);
        use std::io::Write;
        let _ = write!(
            out,
            ",\"timestamp\":{secs}.{micros:06},\"level\":{level},\"_stream\":\"{}\",\"_seq\":{}",
            rec.stream.name(),
            rec.seq
        );
        if rec.part > 0 {
            let _ = write!(
                out,
                ",\"_line_part\":{},\"_line_continues\":{}",
                rec.part,
                rec.flags & flags::CONTINUES != 0
            );
        }
        if rec.flags & flags::UNTERMINATED != 0 {
            out.extend_from_slice(b",\"_unterminated\":true");
        }
        if let Some(n) = original {
            let _ = write!(out, ",\"_truncated\":true,\"_original_bytes\":{n}");
        }
        for (k, v) in fields {
            out.push(b',');
            push_str(out, k);
            out.push(b':');
            serde_json::to_writer(&mut *out, v).expect("writing JSON to a Vec cannot fail");
        }
        out.extend_from_slice(&self.chosen);
        out.push(b'}');
    }
}

/// The largest `n' <= n` that does not split a UTF-8 sequence of `b`
/// (when `b` is valid there; for invalid bytes any cut is as good).
pub fn utf8_floor(b: &[u8], n: usize) -> usize {
    let mut n = n.min(b.len());
    let lowest = n.saturating_sub(3);
    while n > lowest && n < b.len() && (b[n] & 0xC0) == 0x80 {
        n -= 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn rec(stream: Stream, payload: &[u8]) -> Record {
        Record {
            stream,
            flags: 0,
            part: 0,
            seq: 5,
            ts_micros: 1_763_890_000_000_042,
            payload: payload.to_vec(),
        }
    }

    fn enc(labels: Vec<(&str, &str)>) -> Encoder {
        let id = Identity {
            container_id: "c1".into(),
            framework_id: Some("fw".into()),
            labels: labels
                .into_iter()
                .map(|(a, b)| (a.into(), b.into()))
                .collect(),
            ..Default::default()
        };
        let statics = [("dc".to_string(), "eu1".to_string())];
        Encoder::with_parts(
            "agent-1",
            &id,
            &ContainerSettings::default(),
            &LabelFilter::All,
            statics.iter().map(|(a, b)| (a, b)),
            1000,
        )
    }

    fn json(e: &Encoder, r: &Record) -> Value {
        let mut out = Vec::new();
        e.encode(r, &mut out);
        serde_json::from_slice(&out)
            .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn fields_levels_and_timestamp() {
        let e = enc(vec![("team", "x"), ("has space", "y"), ("id", "z")]);
        let v = json(&e, &rec(Stream::Stdout, b"hello"));
        assert_eq!(v["version"], "1.1");
        assert_eq!(v["host"], "agent-1");
        assert_eq!(v["short_message"], "hello");
        assert_eq!(v["level"], 6);
        assert_eq!(v["_seq"], 5);
        assert_eq!(v["_stream"], "stdout");
        assert_eq!(v["_framework_id"], "fw");
        assert_eq!(v["_label_team"], "x");
        assert_eq!(v["_label_has_space"], "y");
        assert_eq!(v["_label_id"], "z");
        assert_eq!(v["_dc"], "eu1");
        assert!(v.get("_id").is_none());
        assert!(v.get("full_message").is_none());
        assert_eq!(v["timestamp"].as_f64().unwrap(), 1_763_890_000.000042);
        assert_eq!(json(&e, &rec(Stream::Stderr, b"x"))["level"], 3);
    }

    #[test]
    fn hostile_bytes_stay_valid_json() {
        let e = enc(vec![]);
        let v = json(&e, &rec(Stream::Stdout, b"a\0b\x1b[31m\"q\"\\ \xff\xfe"));
        assert_eq!(v["short_message"], "a\0b\u{1b}[31m\"q\"\\ \u{fffd}\u{fffd}");
        assert_eq!(
            json(&e, &rec(Stream::Stdout, b""))["short_message"],
            "(empty line)"
        );
    }

    #[test]
    fn too_large_is_truncated_and_marked() {
        let e = enc(vec![]);
        let big = "é".repeat(2000);
        let mut out = Vec::new();
        e.encode(&rec(Stream::Stdout, big.as_bytes()), &mut out);
        assert!(out.len() <= 1000, "{}", out.len());
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["_truncated"], true);
        assert_eq!(v["_original_bytes"], 4000);
        assert!(!v["short_message"].as_str().unwrap().contains('\u{fffd}'));
    }

    #[test]
    fn multiline_has_full_message() {
        let e = enc(vec![]);
        let mut r = rec(Stream::Stderr, b"Traceback:\n  File x\nKeyError");
        r.flags = flags::MULTILINE;
        let v = json(&e, &r);
        assert_eq!(v["short_message"], "Traceback:");
        assert_eq!(v["full_message"], "Traceback:\n  File x\nKeyError");
    }
}
