//! JSON application logs: a line that is one JSON object.
//!
//! - `short_message`: the first present of the message keys (`msg`,
//!   `message`, `short_message` by default), else the line itself;
//! - `level`: from `level`, `severity` or `lvl` (names emerg..debug, fatal,
//!   warn, trace, or 0-7), else the stream's level;
//! - `timestamp`: from `time`, `ts` or `timestamp` (RFC 3339, or epoch
//!   seconds, milliseconds or microseconds) when within a day before to an
//!   hour after the record's arrival; otherwise the arrival time, with the
//!   original kept as a field;
//! - every other key becomes a field (see [`super::Fields`]): nested
//!   objects flattened as `a_b`, arrays as their JSON text, booleans as
//!   `"true"`/`"false"`, nulls left out, numbers as strings unless
//!   `parse_numbers=keep`. Deeper than [`super::MAX_DEPTH`]: the JSON text.
//!
//! Anything that is not exactly one JSON object (invalid, truncated, an
//! array, trailing text) is not JSON and ships unchanged.

use super::{level_of, time, Fields, Parsed, Settings, Value, MAX_DEPTH};
use serde_json::Value as J;

const LEVEL_KEYS: [&str; 3] = ["level", "severity", "lvl"];
const TIME_KEYS: [&str; 3] = ["time", "ts", "timestamp"];

fn flatten(f: &mut Fields, key: &str, v: &J, depth: usize) {
    match v {
        J::Null => {}
        J::Bool(b) => f.add(key, Value::Str(b.to_string())),
        J::Number(n) => f.add(key, Value::Num(n.clone())),
        J::String(s) => f.add(key, Value::Str(s.clone())),
        J::Array(_) => f.add(key, Value::Str(v.to_string())),
        J::Object(o) => {
            if depth >= MAX_DEPTH {
                f.cut += 1;
                f.add(key, Value::Str(v.to_string()));
                return;
            }
            for (k, v) in o {
                flatten(f, &format!("{key}_{k}"), v, depth + 1);
            }
        }
    }
}

pub fn parse(line: &str, arrival_us: i64, s: &Settings, taken: &[String]) -> Option<Parsed> {
    let t = line.trim();
    if !(t.starts_with('{') && t.ends_with('}')) {
        return None;
    }
    let J::Object(o) = serde_json::from_str::<J>(t).ok()? else {
        return None;
    };
    let mut p = Parsed::default();
    let msg_key = s
        .message_keys
        .iter()
        .find(|k| o.get(k.as_str()).is_some_and(|v| v.is_string()))
        .cloned();
    if let Some(k) = &msg_key {
        p.message = o.get(k).and_then(J::as_str).map(String::from);
    }
    let level_key = LEVEL_KEYS
        .iter()
        .find(|k| o.get(**k).and_then(level_of).is_some());
    if let Some(k) = level_key {
        p.level = o.get(*k).and_then(level_of);
    }
    let time_key = TIME_KEYS.iter().find(|k| {
        o.get(**k)
            .and_then(|v| match v {
                J::String(s) => time::rfc3339(s),
                J::Number(n) => n.as_f64().and_then(time::epoch),
                _ => None,
            })
            .is_some_and(|t| time::sane(t, arrival_us))
    });
    if let Some(k) = time_key {
        p.ts_micros = o.get(*k).and_then(|v| match v {
            J::String(s) => time::rfc3339(s),
            J::Number(n) => n.as_f64().and_then(time::epoch),
            _ => None,
        });
    }
    let mut f = Fields::new(taken, s.numbers);
    for (k, v) in &o {
        let used = Some(k) == msg_key.as_ref()
            || level_key.is_some_and(|l| l == k)
            || time_key.is_some_and(|t| t == k);
        if !used {
            flatten(&mut f, k, v, 1);
        }
    }
    p.cut = f.cut;
    p.fields = f.out;
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> i64 {
        time::rfc3339("2026-11-23T10:00:05Z").unwrap()
    }

    fn get<'a>(p: &'a Parsed, k: &str) -> Option<&'a Value> {
        p.fields.iter().find(|(n, _)| n == k).map(|(_, v)| v)
    }

    #[test]
    fn app_logs() {
        let s = Settings::default();
        let p = parse(
            r#"{"level": "info", "msg": "request served", "path": "/api/cart", "status": 200, "duration_ms": 12.5, "ts": "2026-11-23T10:00:00.123Z"}"#,
            at(),
            &s,
            &[],
        )
        .unwrap();
        assert_eq!(p.message.as_deref(), Some("request served"));
        assert_eq!(p.level, Some(6));
        assert_eq!(p.ts_micros, time::rfc3339("2026-11-23T10:00:00.123Z"));
        assert_eq!(get(&p, "status"), Some(&Value::Str("200".into())));
        assert_eq!(get(&p, "duration_ms"), Some(&Value::Str("12.5".into())));
        assert!(get(&p, "ts").is_none() && get(&p, "msg").is_none());
        let p = parse(
            r#"{"level":"error","msg":"payment declined","order_id":981234,"error":{"code":"card_declined"},"ok":false,"tags":[1,2],"n":null}"#,
            at(),
            &s,
            &[],
        )
        .unwrap();
        assert_eq!(p.level, Some(3));
        assert_eq!(
            get(&p, "error_code"),
            Some(&Value::Str("card_declined".into()))
        );
        assert_eq!(get(&p, "ok"), Some(&Value::Str("false".into())));
        assert_eq!(get(&p, "tags"), Some(&Value::Str("[1,2]".into())));
        assert!(get(&p, "n").is_none());
        assert_eq!(p.ts_micros, None, "no time key: arrival");
    }

    #[test]
    fn spoofing_odd_times_and_non_objects() {
        let s = Settings::default();
        let taken = vec!["container_id".to_string(), "seq".to_string()];
        let p = parse(
            r#"{"short_message": "app tries to spoof gelf", "host": "evil", "_id": "x", "level": 0, "container_id": "c9", "_seq": 5, "time": "1999-01-01T00:00:00Z"}"#,
            at(),
            &s,
            &taken,
        )
        .unwrap();
        assert_eq!(p.message.as_deref(), Some("app tries to spoof gelf"));
        assert_eq!(p.level, Some(0));
        let names: Vec<&str> = p.fields.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names.contains(&"log_host") && names.contains(&"log_id"),
            "{names:?}"
        );
        assert!(
            names.contains(&"log_container_id") && names.contains(&"log_seq"),
            "{names:?}"
        );
        assert_eq!(p.ts_micros, None, "1999 is not believable: arrival time");
        assert_eq!(
            get(&p, "time"),
            Some(&Value::Str("1999-01-01T00:00:00Z".into()))
        );
        for l in [
            "{\"truncated json",
            "[1,2]",
            "{} trailing",
            "not json",
            "{\"a\":1} {\"b\":2}",
        ] {
            assert!(parse(l, at(), &s, &[]).is_none(), "{l}");
        }
        let deep = format!("{}1{}", "{\"a\":".repeat(20), "}".repeat(20));
        let p = parse(&deep, at(), &s, &[]).unwrap();
        assert_eq!(p.fields.len(), 1);
        assert!(p.cut >= 1);
        let many: String = format!(
            "{{{}}}",
            (0..10_000)
                .map(|i| format!("\"k{i}\":{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let p = parse(&many, at(), &s, &[]).unwrap();
        assert_eq!(p.fields.len(), super::super::MAX_FIELDS);
        assert_eq!(p.cut as usize, 10_000 - super::super::MAX_FIELDS);
    }
}
