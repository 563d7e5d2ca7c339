//! The GELF encoder: one record (and its container's identity) to one
//! JSON object, within a size limit.
//!
//! The container part never changes for a container, so [`Encoder::new`]
//! serialises it once and [`Encoder::encode`] only writes the per-record
//! fields. Guarantees:
//! - the output is one valid JSON object (serde_json escapes `"`, `\`, NUL
//!   and every control character); values are strings or numbers only;
//! - invalid UTF-8 becomes U+FFFD; the sandbox files keep the raw bytes;
//! - every name and value survives Graylog (see [`super::names`]): a blank
//!   line gets a visible stand-in, markers are numbers;
//! - an encoding longer than the limit is cut (payload truncated on a
//!   character boundary) and marked `_truncated: 1`, `_original_bytes`.

use super::names::{is_field_byte, safe_value, sanitize_name, visible_message};
use super::parse::{self, Value};
use crate::config::{Config, ContainerSettings, LabelFilter};
use crate::metadata::Identity;
use crate::spool::notice;
use crate::spool::record::{flags, Record, Stream};
use std::borrow::Cow;
use std::io::Write;

use super::json::{push_i64, push_micros, push_str, push_u64};

/// `,"name":"value"`, the value made safe for Graylog (never blank, at
/// most 32,766 bytes).
fn push_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b',');
    push_str(out, name);
    out.push(b':');
    push_str(out, &safe_value(value).0);
}

/// `,"name":<string or number>`.
fn push_value(out: &mut Vec<u8>, name: &str, v: &Value) {
    match v {
        Value::Str(s) => push_field(out, name, s),
        Value::Num(n) => {
            out.push(b',');
            push_str(out, name);
            let _ = write!(out, ":{n}");
        }
    }
}

/// Names of the per-record fields the encoder writes itself (without the
/// leading `_`): a parsed key never takes one of them.
const RECORD_FIELDS: [&str; 18] = [
    "stream",
    "seq",
    "line_part",
    "line_continues",
    "unterminated",
    "truncated",
    "original_bytes",
    "fields_dropped",
    "parse_cut",
    "thread_id",
    "src_file",
    "src_line",
    "loss_reason",
    "lost_stream",
    "lost_records",
    "lost_bytes",
    "lost_first_seq",
    "lost_last_seq",
];

/// What one record becomes before it is written.
struct Body<'a> {
    short: Cow<'a, str>,
    full: Option<Cow<'a, str>>,
    level: u8,
    ts_micros: i64,
    fields: Vec<(String, Value)>,
    cut: u32,
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
    parse: parse::Settings,
    /// Names (without `_`) this container's messages already use.
    taken: Vec<String>,
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
        let mut e = Encoder::with_parts(
            &config.host,
            identity,
            settings,
            &config.labels,
            config.static_fields.iter(),
            config.max_message_bytes,
        );
        e.parse.message_keys = config.parse_message_keys.clone();
        e.parse.numbers = config.parse_numbers;
        e
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
        seen.extend(["_container_id", "_parent_container_id", "_id"].map(String::from));
        seen.extend(RECORD_FIELDS.iter().map(|n| format!("_{n}")));
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
        let taken = seen
            .iter()
            .map(|n| n.trim_start_matches('_').to_string())
            .collect();
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
            parse: parse::Settings {
                parsers: settings.parse.clone(),
                ..Default::default()
            },
            taken,
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
        // `simdutf8` checks valid text (nearly every line) with SIMD, where
        // `from_utf8_lossy` alone walks it byte by byte; only the invalid
        // go the slow way.
        let text = match simdutf8::basic::from_utf8(&rec.payload) {
            Ok(t) => Cow::Borrowed(t),
            Err(_) => String::from_utf8_lossy(&rec.payload),
        };
        let mut body = self.body(rec, &text);
        let start = out.len();
        self.write(rec, &body, None, out);
        if out.len() - start <= self.max_bytes {
            return Fit::Whole;
        }
        // Too large: cut the message (and full message) by the excess plus
        // room for the markers, halving until it fits; if even empty ones
        // do not, leave the parsed fields out too.
        let total = body.short.len() + body.full.as_ref().map_or(0, |f| f.len());
        let mut keep = total.saturating_sub(out.len() - start - self.max_bytes + 128);
        let (short, full) = (body.short.clone(), body.full.clone());
        loop {
            out.truncate(start);
            body.short = Cow::Owned(cut_str(&short, keep).to_string());
            body.full = full
                .as_ref()
                .map(|f| Cow::Owned(cut_str(f, keep).to_string()));
            self.write(rec, &body, Some(rec.payload.len()), out);
            if out.len() - start <= self.max_bytes {
                return Fit::Cut;
            }
            if keep == 0 {
                if body.fields.is_empty() {
                    out.truncate(start);
                    return Fit::Over;
                }
                body.cut += body.fields.len() as u32;
                body.fields.clear();
                continue;
            }
            keep /= 2;
        }
    }

    /// Message, level, time and fields of `rec`: a notice's own fields, or
    /// what the first matching parser finds in the (first) line.
    fn body<'a>(&self, rec: &Record, text: &'a str) -> Body<'a> {
        let stream_level = match rec.stream {
            Stream::Stdout => self.level_stdout,
            Stream::Stderr => self.level_stderr,
            Stream::Notice | Stream::PublisherNotice => 4,
        };
        if matches!(rec.stream, Stream::Notice | Stream::PublisherNotice) {
            // A notice's payload is JSON (text + loss fields).
            let n = notice::parse(text.as_bytes());
            let fields = n
                .fields
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::Number(n) => Value::Num(n),
                        serde_json::Value::String(s) => Value::Str(s),
                        other => Value::Str(other.to_string()),
                    };
                    (k.trim_start_matches('_').to_string(), v)
                })
                .collect();
            return Body {
                short: Cow::Owned(visible_message(&n.text).into_owned()),
                full: None,
                level: stream_level,
                ts_micros: rec.ts_micros,
                fields,
                cut: 0,
            };
        }
        let multiline = rec.flags & flags::MULTILINE != 0;
        let first = if multiline {
            text.split('\n').next().unwrap_or("")
        } else {
            text
        };
        let parsed = parse::parse(first, rec.ts_micros, &self.parse, &self.taken);
        let (short, level, ts, fields, cut) = match parsed {
            Some(p) => (
                p.message.map_or(Cow::Borrowed(first), Cow::Owned),
                p.level.unwrap_or(stream_level),
                p.ts_micros.unwrap_or(rec.ts_micros),
                p.fields,
                p.cut,
            ),
            None => (
                Cow::Borrowed(first),
                stream_level,
                rec.ts_micros,
                Vec::new(),
                0,
            ),
        };
        let short = match visible_message(&short) {
            Cow::Borrowed(_) => short,
            Cow::Owned(v) => Cow::Owned(v),
        };
        Body {
            short,
            full: multiline.then_some(Cow::Borrowed(text)),
            level,
            ts_micros: ts,
            fields,
            cut,
        }
    }

    fn write(&self, rec: &Record, b: &Body, original: Option<usize>, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"version\":\"1.1\",\"short_message\":");
        push_str(out, &visible_message(&b.short));
        if let Some(full) = &b.full {
            out.extend_from_slice(b",\"full_message\":");
            push_str(out, &visible_message(full));
        }
        out.extend_from_slice(b",\"timestamp\":");
        push_i64(out, b.ts_micros.div_euclid(1_000_000));
        out.push(b'.');
        push_micros(out, b.ts_micros.rem_euclid(1_000_000) as u32);
        out.extend_from_slice(b",\"level\":");
        push_u64(out, u64::from(b.level));
        out.extend_from_slice(b",\"_stream\":\"");
        out.extend_from_slice(rec.stream.name().as_bytes());
        out.extend_from_slice(b"\",\"_seq\":");
        push_u64(out, rec.seq);
        if rec.part > 0 {
            out.extend_from_slice(b",\"_line_part\":");
            push_u64(out, u64::from(rec.part));
            out.extend_from_slice(if rec.flags & flags::CONTINUES != 0 {
                b",\"_line_continues\":1"
            } else {
                b",\"_line_continues\":0"
            });
        }
        if rec.flags & flags::UNTERMINATED != 0 {
            out.extend_from_slice(b",\"_unterminated\":1");
        }
        if let Some(n) = original {
            out.extend_from_slice(b",\"_truncated\":1,\"_original_bytes\":");
            push_u64(out, n as u64);
        }
        for (k, v) in &b.fields {
            push_value(out, &format!("_{k}"), v);
        }
        if b.cut > 0 {
            out.extend_from_slice(b",\"_parse_cut\":");
            push_u64(out, u64::from(b.cut));
        }
        out.extend_from_slice(&self.chosen);
        out.push(b'}');
    }
}

/// At most `n` bytes of `s`, on a char boundary.
fn cut_str(s: &str, n: usize) -> &str {
    &s[..s.floor_char_boundary(n)]
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
        let e = enc(vec![
            ("team", "x"),
            ("has space", "y"),
            ("id", "z"),
            ("a.b", "dotted"),
        ]);
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
        assert_eq!(v["_label_a_b"], "dotted", "`.` becomes `_`");
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
        assert_eq!(v["_truncated"], 1);
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

#[cfg(test)]
mod parse_tests {
    use super::*;
    use serde_json::Value as J;

    fn enc(parsers: &str) -> Encoder {
        let settings = ContainerSettings {
            parse: parse::Parser::list(parsers).unwrap(),
            ..Default::default()
        };
        let id = Identity {
            container_id: "c1".into(),
            task_id: Some("t1".into()),
            ..Default::default()
        };
        Encoder::with_parts(
            "agent-1",
            &id,
            &settings,
            &LabelFilter::All,
            std::iter::empty(),
            900_000,
        )
    }

    fn one(e: &Encoder, stream: Stream, flags_: u8, payload: &str) -> J {
        let r = Record {
            stream,
            flags: flags_,
            part: 0,
            seq: 1,
            ts_micros: 1_795_428_005_000_000,
            payload: payload.as_bytes().to_vec(),
        };
        let mut out = Vec::new();
        e.encode(&r, &mut out);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn glog_lines_get_their_own_level_json_gets_fields() {
        let e = enc("glog,json");
        let v = one(
            &e,
            Stream::Stderr,
            0,
            "I1123 10:00:00.000001 7 exec.cpp:1] Executor registered",
        );
        assert_eq!(v["level"], 6, "an executor's info line is not an error");
        assert_eq!(v["short_message"], "Executor registered");
        assert_eq!(v["_src_file"], "exec.cpp");
        assert_eq!(v["_src_line"], 1);
        let v = one(
            &e,
            Stream::Stdout,
            0,
            r#"{"level":"error","msg":"boom","task_id":"spoof","user_id":7}"#,
        );
        assert_eq!(v["level"], 3);
        assert_eq!(v["short_message"], "boom");
        assert_eq!(v["_task_id"], "t1", "identity cannot be overwritten");
        assert_eq!(v["_log_task_id"], "spoof");
        assert_eq!(v["_user_id"], "7");
        // parse=none: the line as it is.
        let v = one(
            &enc("none"),
            Stream::Stderr,
            0,
            "I1123 10:00:00.000001 7 exec.cpp:1] x",
        );
        assert_eq!(v["level"], 3);
    }

    #[test]
    fn multiline_records_are_parsed_by_their_first_line() {
        let e = enc("glog");
        let v = one(
            &e,
            Stream::Stderr,
            flags::MULTILINE,
            "W1123 10:00:00.000001 7 slave.cpp:285] \n*****\nAgent bound to loopback",
        );
        assert_eq!(v["level"], 4);
        assert!(
            v["short_message"].as_str().unwrap().starts_with("W1123"),
            "empty glog message: the line"
        );
        assert!(v["full_message"].as_str().unwrap().contains("Agent bound"));
    }

    #[test]
    fn blank_lines_markers_and_value_types() {
        let e = enc("none");
        for (line, want) in [
            ("", "(empty line)"),
            ("   ", "(blank line: \"   \")"),
            ("\t", "(blank line: \"\\t\")"),
        ] {
            assert_eq!(one(&e, Stream::Stdout, 0, line)["short_message"], want);
        }
        let r = Record {
            stream: Stream::Stdout,
            flags: flags::CONTINUES | flags::UNTERMINATED,
            part: 2,
            seq: 9,
            ts_micros: 1,
            payload: b"x".to_vec(),
        };
        let mut out = Vec::new();
        e.encode(&r, &mut out);
        let v: J = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (
                v["_line_part"].as_u64(),
                v["_line_continues"].as_u64(),
                v["_unterminated"].as_u64()
            ),
            (Some(2), Some(1), Some(1))
        );
        for (_, x) in v.as_object().unwrap() {
            assert!(x.is_string() || x.is_number(), "{v}");
        }
    }
}
