//! One spooled record and its frame encoding (see the format in `spool`).

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
    /// Written by mesos-gelf itself (drops, losses), not by the container.
    Notice = 3,
    /// Written by the publisher (never in a spool frame): losses on its
    /// side (see `publisher::notices`).
    PublisherNotice = 4,
}

impl Stream {
    pub fn from_u8(b: u8) -> Option<Stream> {
        match b {
            1 => Some(Stream::Stdout),
            2 => Some(Stream::Stderr),
            3 => Some(Stream::Notice),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Notice => "mesos-gelf",
            Stream::PublisherNotice => "mesos-gelf-publisher",
        }
    }
}

/// Record flags.
pub mod flags {
    /// A part of a line longer than `max_line_bytes`; more parts follow.
    pub const CONTINUES: u8 = 1;
    /// Shipped without a newline (idle timeout or end of stream).
    pub const UNTERMINATED: u8 = 2;
    /// Several lines joined by the multiline rule (payload holds `\n`s).
    pub const MULTILINE: u8 = 4;
}

pub const HEADER_LEN: usize = 8;
pub const BODY_FIXED: usize = 24;
/// The largest body a reader accepts; anything larger is corruption.
pub const MAX_BODY: usize = BODY_FIXED + (64 << 20);

/// A record as spooled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub stream: Stream,
    pub flags: u8,
    pub part: u32,
    pub seq: u64,
    pub ts_micros: i64,
    pub payload: Vec<u8>,
}

impl Record {
    /// A record written by mesos-gelf itself (losses, problems), now.
    pub fn notice(seq: u64, text: String) -> Record {
        Record {
            stream: Stream::Notice,
            flags: 0,
            part: 0,
            seq,
            ts_micros: now_micros(),
            payload: text.into_bytes(),
        }
    }

    /// Appends this record's frame to `out`.
    pub fn encode_frame(&self, out: &mut Vec<u8>) {
        let body_len = BODY_FIXED + self.payload.len();
        let start = out.len();
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
        out.push(self.stream as u8);
        out.push(self.flags);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.part.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.ts_micros.to_le_bytes());
        out.extend_from_slice(&self.payload);
        let crc = crc32c::crc32c(&out[start + HEADER_LEN..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// The frame length of a record with this payload.
    pub fn frame_len(payload_len: usize) -> usize {
        HEADER_LEN + BODY_FIXED + payload_len
    }
}

/// Result of decoding at the start of `buf`.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole valid frame of `usize` bytes.
    Frame(Record, usize),
    /// Not enough bytes yet; at least this many are needed.
    Short(usize),
    /// The bytes cannot be a valid frame (bad length, CRC or stream).
    Bad,
}

pub fn decode_frame(buf: &[u8]) -> Decoded {
    decode_frame_into(buf, &mut Vec::new())
}

/// [`decode_frame`], with the payload copied into `spare` (cleared first;
/// taken only for a whole frame): a reader that hands back each record's
/// buffer allocates none per record.
pub fn decode_frame_into(buf: &[u8], spare: &mut Vec<u8>) -> Decoded {
    if buf.len() < HEADER_LEN {
        return Decoded::Short(HEADER_LEN);
    }
    let body_len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
    if !(BODY_FIXED..=MAX_BODY).contains(&body_len) {
        return Decoded::Bad;
    }
    let total = HEADER_LEN + body_len;
    if buf.len() < total {
        return Decoded::Short(total);
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    let body = &buf[HEADER_LEN..total];
    if crc32c::crc32c(body) != crc {
        return Decoded::Bad;
    }
    let Some(stream) = Stream::from_u8(body[0]) else {
        return Decoded::Bad;
    };
    Decoded::Frame(
        Record {
            stream,
            flags: body[1],
            part: u32::from_le_bytes(body[4..8].try_into().unwrap()),
            seq: u64::from_le_bytes(body[8..16].try_into().unwrap()),
            ts_micros: i64::from_le_bytes(body[16..24].try_into().unwrap()),
            payload: {
                spare.clear();
                spare.extend_from_slice(&body[BODY_FIXED..]);
                std::mem::take(spare)
            },
        },
        total,
    )
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_micros() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_roundtrip_and_every_truncation_is_short() {
        let r = Record {
            stream: Stream::Stderr,
            flags: flags::CONTINUES,
            part: 2,
            seq: 77,
            ts_micros: 1_700_000_000_123_456,
            payload: b"hello\0world".to_vec(),
        };
        let mut buf = Vec::new();
        r.encode_frame(&mut buf);
        assert_eq!(buf.len(), Record::frame_len(r.payload.len()));
        assert_eq!(decode_frame(&buf), Decoded::Frame(r, buf.len()));
        for cut in 0..buf.len() {
            assert!(
                matches!(decode_frame(&buf[..cut]), Decoded::Short(_)),
                "cut {cut}"
            );
        }
        let mut bad = buf.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(decode_frame(&bad), Decoded::Bad);
    }
}
