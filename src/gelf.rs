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

/// Encodes records of one container.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// `,"host":...,"_container_id":...` etc., serialised once.
    container_fields: Vec<u8>,
    level_stdout: u8,
    level_stderr: u8,
    max_bytes: usize,
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
        push_field(&mut f, "host", host);
        push_field(&mut f, "_container_id", &id.container_id);
        if !id.parents.is_empty() {
            push_field(&mut f, "_parent_container_id", &id.parents.join("."));
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
        seen.extend(["_container_id", "_stream", "_seq", "_id"].map(String::from));
        for (k, v) in opt {
            if let Some(v) = v {
                push_field(&mut f, k, v);
            }
        }
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
        }
        for (k, v) in static_fields {
            let name = format!("_{}", sanitize_name(k));
            if seen.contains(&name) {
                continue;
            }
            push_field(&mut f, &name, v);
            seen.push(name);
        }
        Encoder {
            container_fields: f,
            level_stdout: settings.level_stdout,
            level_stderr: settings.level_stderr,
            max_bytes,
        }
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Lowers the size limit (after the broker rejected a message as too large).
    pub fn set_max_bytes(&mut self, n: usize) {
        self.max_bytes = n;
    }

    /// Appends the GELF JSON of `rec` to `out` (no trailing newline).
    /// Returns true when the payload had to be truncated to fit.
    pub fn encode(&self, rec: &Record, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        self.encode_payload(rec, &rec.payload, None, out);
        let len = out.len() - start;
        if len <= self.max_bytes {
            return false;
        }
        // Too large for the sink: cut the payload by the excess (plus room for
        // the markers and escaping growth), retrying with less if needed.
        let mut keep = rec.payload.len().saturating_sub(len - self.max_bytes + 128);
        loop {
            out.truncate(start);
            let cut = utf8_floor(&rec.payload, keep);
            self.encode_payload(rec, &rec.payload[..cut], Some(rec.payload.len()), out);
            if out.len() - start <= self.max_bytes || cut == 0 {
                return true;
            }
            keep = cut / 2;
        }
    }

    fn encode_payload(
        &self,
        rec: &Record,
        payload: &[u8],
        original: Option<usize>,
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
            Stream::Notice => 4,
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
        out.extend_from_slice(&self.container_fields);
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
