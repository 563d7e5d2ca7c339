//! Structured lines to GELF fields: glog prefixes, JSON objects, logfmt.
//!
//! The setting `parse` lists the parsers to try, in order (default `glog`;
//! `none` for none); the first whose format the line matches wins, and a
//! line that matches none ships unchanged. A joined multiline record is
//! parsed by its first line.
//!
//! What a parser finds becomes: the message (`short_message`), the level,
//! the timestamp, and fields. Field names and values are shaped by
//! [`Fields`] so that Graylog keeps them (see `gelf::names`), and capped
//! ([`MAX_FIELDS`] per record, [`MAX_NAME`] bytes per name, [`MAX_DEPTH`]
//! levels of nesting, [`MAX_TOTAL`] bytes of values); whatever was cut is
//! counted in `_parse_cut`.

pub mod glog;
pub mod json;
pub mod logfmt;
pub mod time;

use super::names::{reserved, sanitize_name};

pub const MAX_FIELDS: usize = 100;
pub const MAX_NAME: usize = 100;
pub const MAX_DEPTH: usize = 8;
pub const MAX_TOTAL: usize = 64 * 1024;

/// One parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parser {
    Glog,
    Json,
    Logfmt,
}

impl Parser {
    /// `none`, or a comma list of `glog`, `json`, `logfmt`.
    pub fn list(s: &str) -> Result<Vec<Parser>, String> {
        let t = s.trim();
        if t == "none" || t.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for p in t.split(',').map(str::trim) {
            let parser = match p {
                "glog" => Parser::Glog,
                "json" => Parser::Json,
                "logfmt" => Parser::Logfmt,
                other => {
                    return Err(format!(
                        "unknown parser `{other}` (use none, or a list of glog, json, logfmt)"
                    ))
                }
            };
            if !out.contains(&parser) {
                out.push(parser);
            }
        }
        Ok(out)
    }

    pub fn name(self) -> &'static str {
        match self {
            Parser::Glog => "glog",
            Parser::Json => "json",
            Parser::Logfmt => "logfmt",
        }
    }
}

/// How parsed numbers are shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numbers {
    /// As strings: a key that is a number in one line and text in the next
    /// keeps one type, so Graylog's index mapping never rejects a message.
    String,
    /// As numbers (for applications whose keys never change type).
    Keep,
}

/// What the encoder passes to the parsers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub parsers: Vec<Parser>,
    /// Keys whose value becomes `short_message`, first present wins.
    pub message_keys: Vec<String>,
    pub numbers: Numbers,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            parsers: vec![Parser::Glog],
            message_keys: vec!["msg".into(), "message".into(), "short_message".into()],
            numbers: Numbers::String,
        }
    }
}

/// A field value: GELF allows strings and numbers only.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Num(serde_json::Number),
}

/// What a parser made of a line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// The message; None: the line itself.
    pub message: Option<String>,
    pub level: Option<u8>,
    pub ts_micros: Option<i64>,
    /// Names without the leading `_`, already safe and unique.
    pub fields: Vec<(String, Value)>,
    /// Keys or values cut or left out by the caps.
    pub cut: u32,
}

/// Tries the parsers in order on `line`.
pub fn parse(line: &str, arrival_us: i64, s: &Settings, taken: &[String]) -> Option<Parsed> {
    s.parsers.iter().find_map(|p| match p {
        Parser::Glog => glog::parse(line, arrival_us),
        Parser::Json => json::parse(line, arrival_us, s, taken),
        Parser::Logfmt => logfmt::parse(line, arrival_us, s, taken),
    })
}

/// A syslog level from a name or a number (JSON `level`, `severity` ...).
pub fn level_of(v: &serde_json::Value) -> Option<u8> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().filter(|n| *n <= 7).map(|n| n as u8),
        serde_json::Value::String(s) => level_name(s),
        _ => None,
    }
}

pub fn level_name(s: &str) -> Option<u8> {
    Some(match s.trim().to_ascii_lowercase().as_str() {
        "emerg" | "emergency" | "panic" => 0,
        "alert" => 1,
        "crit" | "critical" | "fatal" => 2,
        "err" | "error" => 3,
        "warn" | "warning" => 4,
        "notice" => 5,
        "info" | "informational" => 6,
        "debug" | "trace" => 7,
        n => return n.parse::<u8>().ok().filter(|n| *n <= 7),
    })
}

/// A number Graylog can index as a long or a double without changing it.
fn graylog_number(n: &serde_json::Number) -> bool {
    n.is_i64()
        || n.as_u64().is_some_and(|u| u <= i64::MAX as u64)
        || (n.is_f64() && {
            // A float written as one (not an integer beyond 2^53) that a
            // double holds as written.
            let t = n.to_string();
            t.contains(['.', 'e', 'E']) && n.as_f64().is_some_and(|v| exact_in_f64(&t, v))
        })
}

/// Whether `v`, parsed from the JSON number `text`, stands for it: finite,
/// not flushed to zero or to a subnormal (`1e-400` became 0.0), and with no
/// more significant digits than a double keeps (17).
fn exact_in_f64(text: &str, v: f64) -> bool {
    let mantissa = text.split(['e', 'E']).next().unwrap_or("");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0');
    v.is_finite()
        && significant.len() <= 17
        && if v == 0.0 {
            significant.is_empty()
        } else {
            v.abs() >= f64::MIN_POSITIVE
        }
}

/// Collects an application's keys as GELF fields: sanitised names (`.` and
/// other bytes become `_`), the prefix `log_` for a name Graylog reserves or
/// we already use (`_container_id`, `_seq` ...), the first of two keys
/// that end up with one name wins, and the caps.
pub struct Fields<'a> {
    taken: &'a [String],
    pub out: Vec<(String, Value)>,
    pub cut: u32,
    total: usize,
    numbers: Numbers,
}

impl<'a> Fields<'a> {
    pub fn new(taken: &'a [String], numbers: Numbers) -> Fields<'a> {
        Fields {
            taken,
            out: Vec::new(),
            cut: 0,
            total: 0,
            numbers,
        }
    }

    fn used(&self, n: &str) -> bool {
        self.taken.iter().any(|t| t == n) || self.out.iter().any(|(k, _)| k == n)
    }

    pub fn add(&mut self, key: &str, v: Value) {
        let mut name = sanitize_name(key.trim_start_matches('_'));
        if name.len() > MAX_NAME {
            name.truncate(MAX_NAME);
            self.cut += 1;
        }
        if reserved(&name) || self.taken.contains(&name) || name.starts_with("label_") {
            name = format!("log_{name}");
        }
        if self.used(&name) || self.out.len() >= MAX_FIELDS {
            self.cut += 1;
            return;
        }
        let v = match (v, self.numbers) {
            (Value::Num(n), Numbers::String) => Value::Str(n.to_string()),
            // Graylog stores numbers as longs or doubles: anything else
            // (an integer past i64, 1e999) stays exact as a string.
            (Value::Num(n), Numbers::Keep) if !graylog_number(&n) => Value::Str(n.to_string()),
            (v, _) => v,
        };
        let len = match &v {
            Value::Str(s) if s.len() > super::names::MAX_VALUE_BYTES => {
                // Cut when written (see names::safe_value); counted here.
                self.cut += 1;
                super::names::MAX_VALUE_BYTES
            }
            Value::Str(s) => s.len(),
            Value::Num(_) => 8,
        };
        if self.total + len > MAX_TOTAL {
            self.cut += 1;
            return;
        }
        self.total += len;
        self.out.push((name, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_lists_and_levels() {
        assert_eq!(Parser::list("none").unwrap(), vec![]);
        assert_eq!(
            Parser::list("json, glog").unwrap(),
            vec![Parser::Json, Parser::Glog]
        );
        assert!(Parser::list("yaml").is_err());
        assert_eq!(level_name("WARNING"), Some(4));
        assert_eq!(level_name("fatal"), Some(2));
        assert_eq!(level_name("7"), Some(7));
        assert_eq!(level_name("loud"), None);
    }

    #[test]
    fn fields_are_safe_unique_and_capped() {
        let taken = vec!["container_id".to_string(), "seq".to_string()];
        let mut f = Fields::new(&taken, Numbers::String);
        f.add("a.b", Value::Str("1".into()));
        f.add("a_b", Value::Str("2".into()));
        f.add("_id", Value::Str("x".into()));
        f.add("container_id", Value::Str("spoof".into()));
        f.add("n", Value::Num(7.into()));
        f.add("gl2_x", Value::Str("y".into()));
        let names: Vec<&str> = f.out.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["a_b", "log_id", "log_container_id", "n", "log_gl2_x"]
        );
        assert_eq!(f.cut, 1, "a_b after a.b");
        assert_eq!(f.out[3].1, Value::Str("7".into()), "numbers as strings");
        for i in 0..1000 {
            f.add(&format!("k{i}"), Value::Str("v".into()));
        }
        assert_eq!(f.out.len(), MAX_FIELDS);
    }
}
