//! GELF 1.1, as Graylog keeps it.
//!
//! One record becomes one JSON object:
//!
//! ```text
//! {"version":"1.1","short_message":..,["full_message":..,]
//!  "timestamp":<seconds.micros>,"level":<0-7>,"_stream":"stdout","_seq":N,
//!  [line-part fields,] [parsed fields,] "host":.., <container fields>,
//!  <label fields>, <static fields>}
//! ```
//!
//! - [`encode`]: the encoder (container fields serialised once, size
//!   limits, the floor form);
//! - [`parse`]: glog, JSON and logfmt lines to level, time and fields;
//! - [`json`]: the string escaper and integer writer every record runs;
//! - [`names`]: field names and values as Graylog keeps them (no blank
//!   strings, no reserved or colliding names, no booleans, no value over
//!   32,766 bytes).

pub mod encode;
pub mod json;
pub mod names;
pub mod parse;

pub use encode::{utf8_floor, Encoder, Fit, MIN_MESSAGE_BYTES};
pub use names::{is_field_byte, sanitize_name};
