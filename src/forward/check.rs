//! Is a Kafka message valid GELF? And the wrapper for those that are not.

use serde_json::{json, Value};

/// Why a message is not valid GELF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invalid {
    NotJson,
    NotObject,
    NoHost,
    NoShortMessage,
}

impl Invalid {
    pub fn name(self) -> &'static str {
        match self {
            Invalid::NotJson => "not_json",
            Invalid::NotObject => "not_an_object",
            Invalid::NoHost => "missing_host",
            Invalid::NoShortMessage => "missing_short_message",
        }
    }
}

/// Checks what Graylog's GELF input requires: a JSON object with a
/// non-empty string `host` and `short_message`.
pub fn check(payload: &[u8]) -> Result<(), Invalid> {
    let v: Value = serde_json::from_slice(payload).map_err(|_| Invalid::NotJson)?;
    let o = v.as_object().ok_or(Invalid::NotObject)?;
    let nonempty = |k: &str| {
        o.get(k)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    if !nonempty("host") {
        return Err(Invalid::NoHost);
    }
    if !nonempty("short_message") {
        return Err(Invalid::NoShortMessage);
    }
    Ok(())
}

/// Where a message came from.
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The Kafka record's timestamp, seconds.
    pub timestamp: f64,
}

/// Wraps an invalid message as valid GELF carrying the original text (at
/// most 32 KiB of it) and where it came from.
pub fn wrap(payload: &[u8], why: Invalid, host: &str, origin: &Origin) -> Vec<u8> {
    let mut end = payload.len().min(32 * 1024);
    while end > 0 && end < payload.len() && (payload[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    let text = String::from_utf8_lossy(&payload[..end]);
    let short = if text.trim().is_empty() {
        "(empty message)".into()
    } else {
        text.into_owned()
    };
    json!({
        "version": "1.1",
        "host": host,
        "short_message": short,
        "timestamp": origin.timestamp,
        "level": 4,
        "_invalid_gelf": why.name(),
        "_kafka_topic": origin.topic,
        "_kafka_partition": origin.partition,
        "_kafka_offset": origin.offset,
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity() {
        assert_eq!(
            check(br#"{"version":"1.1","host":"h","short_message":"m"}"#),
            Ok(())
        );
        assert_eq!(check(b"plain text"), Err(Invalid::NotJson));
        assert_eq!(check(b"[1,2]"), Err(Invalid::NotObject));
        assert_eq!(check(br#"{"short_message":"m"}"#), Err(Invalid::NoHost));
        assert_eq!(
            check(br#"{"host":"h","short_message":""}"#),
            Err(Invalid::NoShortMessage)
        );
        let o = Origin {
            topic: "t",
            partition: 0,
            offset: 7,
            timestamp: 1.5,
        };
        let w = wrap(b"\xffbroken", Invalid::NotJson, "fwd", &o);
        assert_eq!(check(&w), Ok(()));
    }
}
