//! logfmt lines: `key=value key2="quoted value"` and nothing else.
//!
//! A line is logfmt when it consists only of such pairs, with at least two
//! of them or one of the message keys. Keys are unquoted and hold no `=`,
//! space or quote; values are bare (up to the next space) or double-quoted
//! with `\"` and `\\` escapes. Message, level and time keys are read as for
//! JSON; every other key becomes a field (values are strings: logfmt has no
//! types).

use super::{level_name, time, Fields, Parsed, Settings, Value};

fn pairs(line: &str) -> Option<Vec<(&str, String)>> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while b.get(i) == Some(&b' ') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let k0 = i;
        while b.get(i).is_some_and(|c| !matches!(c, b'=' | b' ' | b'"')) {
            i += 1;
        }
        if i == k0 || b.get(i) != Some(&b'=') {
            return None;
        }
        let key = &line[k0..i];
        i += 1;
        let value = if b.get(i) == Some(&b'"') {
            i += 1;
            let mut v = String::new();
            loop {
                match b.get(i)? {
                    b'"' => {
                        i += 1;
                        break;
                    }
                    b'\\' if matches!(b.get(i + 1), Some(b'"') | Some(b'\\')) => {
                        v.push(b[i + 1] as char);
                        i += 2;
                    }
                    _ => {
                        let c = line[i..].chars().next()?;
                        v.push(c);
                        i += c.len_utf8();
                    }
                }
            }
            if b.get(i).is_some_and(|c| *c != b' ') {
                return None;
            }
            v
        } else {
            let v0 = i;
            while b.get(i).is_some_and(|c| *c != b' ') {
                if b[i] == b'"' {
                    return None;
                }
                i += 1;
            }
            line[v0..i].to_string()
        };
        out.push((key, value));
    }
    Some(out)
}

pub fn parse(line: &str, arrival_us: i64, s: &Settings, taken: &[String]) -> Option<Parsed> {
    if !line.contains('=') {
        return None;
    }
    let kv = pairs(line.trim())?;
    let msg = kv
        .iter()
        .find(|(k, _)| s.message_keys.iter().any(|m| m == k));
    if kv.len() < 2 && msg.is_none() {
        return None;
    }
    let mut p = Parsed {
        message: msg.map(|(_, v)| v.clone()),
        ..Default::default()
    };
    let level = kv
        .iter()
        .find(|(k, v)| ["level", "severity", "lvl"].contains(k) && level_name(v).is_some());
    p.level = level.and_then(|(_, v)| level_name(v));
    let ts = kv.iter().find_map(|(k, v)| {
        ["time", "ts", "timestamp"]
            .contains(k)
            .then(|| time::rfc3339(v).or_else(|| v.parse::<f64>().ok().and_then(time::epoch)))
            .flatten()
            .filter(|t| time::sane(*t, arrival_us))
            .map(|t| (*k, t))
    });
    p.ts_micros = ts.map(|(_, t)| t);
    let mut f = Fields::new(taken, s.numbers);
    for (k, v) in &kv {
        let used = msg.is_some_and(|(m, _)| m == k)
            || level.is_some_and(|(l, _)| l == k)
            || ts.is_some_and(|(t, _)| t == *k);
        if !used {
            f.add(k, Value::Str(v.clone()));
        }
    }
    p.cut = f.cut;
    p.fields = f.out;
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_quotes_and_non_logfmt() {
        let s = Settings::default();
        let at = time::rfc3339("2026-11-23T10:00:05Z").unwrap();
        let p = parse(
            r#"time=2026-11-23T10:00:00Z level=warn msg="disk \"almost\" full" path=/var used=93%"#,
            at,
            &s,
            &[],
        )
        .unwrap();
        assert_eq!(p.message.as_deref(), Some("disk \"almost\" full"));
        assert_eq!(p.level, Some(4));
        assert_eq!(p.ts_micros, time::rfc3339("2026-11-23T10:00:00Z"));
        assert_eq!(
            p.fields,
            vec![
                ("path".into(), Value::Str("/var".into())),
                ("used".into(), Value::Str("93%".into()))
            ]
        );
        for l in [
            "just text",
            "a=1",
            "x = 1",
            "a=1 b",
            "a=\"unterminated b=2",
            "a=1 b=\"x\"y",
            "GET /index.html?a=1&b=2 HTTP/1.1",
        ] {
            assert!(parse(l, at, &s, &[]).is_none(), "{l}");
        }
        assert!(parse("msg=hello", at, &s, &[]).is_some());
    }
}
