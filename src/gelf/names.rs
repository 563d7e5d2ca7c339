//! Field names and values as Graylog keeps them.
//!
//! Graylog is stricter than the GELF 1.1 text and drops what it does not
//! like without a word (its `GelfCodec` and `Message` classes, see
//! ../shared/PEERS.md). What we emit is shaped here so that nothing is
//! dropped:
//! - names: a leading `_`, then only `[A-Za-z0-9_-]` (`.` would become `_`
//!   at index time and could collide with another name, so we turn it into
//!   `_` ourselves and can see the collision);
//! - never a name Graylog reserves or sets itself, once its `_` is
//!   stripped ([`reserved`]); a parsed application key that would be one
//!   gets the prefix `log_`;
//! - values: strings or numbers only (no booleans, nulls, arrays, objects);
//!   a string never blank after Java's `String.trim()` (which removes every
//!   char up to U+0020: a blank value is dropped, a blank `short_message`
//!   drops the message), and never over [`MAX_VALUE_BYTES`] bytes (one such
//!   keyword value fails the whole message at indexing).

use std::borrow::Cow;

/// The longest string value Graylog indexes (a keyword's Lucene limit,
/// Graylog2/graylog2-server#873). `short_message` and `full_message` are
/// text fields without this limit.
pub const MAX_VALUE_BYTES: usize = 32_766;

/// Bytes allowed in a field name after the leading `_`.
pub fn is_field_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Free text (a label key, an application's JSON key) as a field-name
/// fragment: anything outside `[A-Za-z0-9_-]` becomes `_`.
pub fn sanitize_name(s: &str) -> String {
    s.bytes()
        .map(|b| if is_field_byte(b) { b as char } else { '_' })
        .collect()
}

/// Names Graylog refuses, or has already set, once the leading `_` is
/// stripped (plus `host`, `version` and `short_message`, GELF's own).
pub fn reserved(name_without_underscore: &str) -> bool {
    const NAMES: [&str; 17] = [
        "id",
        "ttl",
        "source",
        "all",
        "index",
        "type",
        "score",
        "message",
        "timestamp",
        "full_message",
        "short_message",
        "level",
        "facility",
        "file",
        "line",
        "host",
        "version",
    ];
    let n = name_without_underscore;
    NAMES.contains(&n) || n.starts_with("gl2_") || n.is_empty()
}

/// Graylog's `String.trim()`: every char up to U+0020 off both ends.
pub fn java_trim(s: &str) -> &str {
    s.trim_matches(|c: char| c <= '\u{20}')
}

/// `s` written so that every char shows: `\t`, `\0`, `\u{1b}` ... (as Rust
/// prints string escapes); spaces stay spaces.
pub fn escaped(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == ' ' {
                " ".to_string()
            } else {
                c.escape_debug().to_string()
            }
        })
        .collect()
}

/// A message text Graylog keeps: an empty line is `(empty line)`, a line
/// that is blank after Java's trim (spaces, tabs, NUL, ESC, control bytes)
/// becomes `(blank line: "<its chars escaped>")`.
pub fn visible_message(s: &str) -> Cow<'_, str> {
    if s.is_empty() {
        Cow::Borrowed("(empty line)")
    } else if java_trim(s).is_empty() {
        Cow::Owned(format!("(blank line: \"{}\")", escaped(s)))
    } else {
        Cow::Borrowed(s)
    }
}

/// A string field value Graylog keeps and indexes: blank after trim shows
/// escaped (`(blank: "…")`, `(empty)`), and at most [`MAX_VALUE_BYTES`]
/// bytes (cut on a char boundary). The bool says it was cut.
pub fn safe_value(s: &str) -> (Cow<'_, str>, bool) {
    if s.is_empty() {
        return (Cow::Borrowed("(empty)"), false);
    }
    if java_trim(s).is_empty() {
        return (Cow::Owned(format!("(blank: \"{}\")", escaped(s))), false);
    }
    if s.len() > MAX_VALUE_BYTES {
        let cut = s.floor_char_boundary(MAX_VALUE_BYTES - 16);
        return (Cow::Owned(format!("{}…[cut]", &s[..cut])), true);
    }
    (Cow::Borrowed(s), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_values_and_messages_survive_graylog() {
        assert_eq!(sanitize_name("a.b c/d"), "a_b_c_d");
        assert!(reserved("id") && reserved("gl2_x") && reserved("source") && !reserved("id2"));
        assert_eq!(visible_message(""), "(empty line)");
        assert_eq!(visible_message("   "), "(blank line: \"   \")");
        assert_eq!(visible_message("\t"), "(blank line: \"\\t\")");
        assert_eq!(visible_message("\0"), "(blank line: \"\\0\")");
        assert_eq!(visible_message("\u{1b}"), "(blank line: \"\\u{1b}\")");
        assert_eq!(visible_message(" x "), " x ");
        for s in ["", " ", "\t\u{1}", &"é".repeat(20_000)] {
            let (v, _) = safe_value(s);
            assert!(
                !java_trim(&v).is_empty() && v.len() <= MAX_VALUE_BYTES,
                "{s:?}"
            );
        }
        assert!(safe_value(&"x".repeat(40_000)).1);
    }
}
