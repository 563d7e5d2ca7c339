//! The two JSON writers the encoder runs for every record: a string with
//! its escapes, and an integer. Both write into the message buffer
//! directly (serde_json's serializer and `write!` went through
//! `io::Write` and `fmt`, about 8% of the publisher's CPU).
//!
//! The escapes are serde_json's, byte for byte: `\"`, `\\`, `\b`, `\f`,
//! `\n`, `\r`, `\t`, and `\u00XX` for the other control characters; every
//! other char, DEL and non-ASCII included, is written as it is.

/// Escape of each byte: 0 none, `u` as `\u00XX`, else the char after `\`.
const ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// True if one of the 8 bytes of `w` needs an escape (a control char,
/// `"` or `\`): the usual word-at-a-time zero-byte test, for bytes below
/// 0x20 and for bytes equal to 0x22 or 0x5C.
#[inline]
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w;
    let q = w ^ (ONES * b'"' as u64);
    let quote = q.wrapping_sub(ONES) & !q;
    let b = w ^ (ONES * b'\\' as u64);
    let backslash = b.wrapping_sub(ONES) & !b;
    (below_space | quote | backslash) & HIGH != 0
}

/// Appends `s` as a JSON string, quotes included.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut done = 0; // bytes of `b` already written
    let mut i = 0;
    while i < b.len() {
        // Runs of plain text (nearly every line is one run) are skipped a
        // block at a time, then copied at once.
        i = skip_plain(b, i);
        if i >= b.len() {
            break;
        }
        // `skip_plain` stops exactly at a byte that needs an escape.
        let c = b[i];
        let e = ESCAPE[c as usize];
        out.extend_from_slice(&b[done..i]);
        out.push(b'\\');
        out.push(e);
        if e == b'u' {
            out.extend_from_slice(b"00");
            out.push(HEX[(c >> 4) as usize]);
            out.push(HEX[(c & 0xf) as usize]);
        }
        i += 1;
        done = i;
    }
    out.extend_from_slice(&b[done..]);
    out.push(b'"');
}

/// The index of the first byte at or after `i` that may need an escape
/// (exactly: every byte before it needs none), or `b.len()`.
#[inline]
fn skip_plain(b: &[u8], mut i: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        // SSE2 is part of x86_64: 16 bytes per step, straight to the byte
        // (the word test below needs 12 operations per 8 bytes, and then
        // looks at the word's bytes one by one). push_str was 2.7% of the
        // whole pipeline's CPU.
        use std::arch::x86_64::*;
        while i + 16 <= b.len() {
            // SAFETY: 16 bytes from `i` lie within `b` (unaligned load);
            // SSE2 is always available on x86_64.
            let m = unsafe {
                let v = _mm_loadu_si128(b.as_ptr().add(i) as *const __m128i);
                // Unsigned v <= 0x1f: max(v, 0x1f) == 0x1f.
                let ctrl =
                    _mm_cmpeq_epi8(_mm_max_epu8(v, _mm_set1_epi8(0x1f)), _mm_set1_epi8(0x1f));
                let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
                let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
                _mm_movemask_epi8(_mm_or_si128(ctrl, _mm_or_si128(quote, backslash))) as u32
            };
            if m != 0 {
                return i + m.trailing_zeros() as usize;
            }
            i += 16;
        }
    }
    while i + 8 <= b.len() {
        let w = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if needs_escape(w) {
            break;
        }
        i += 8;
    }
    while i < b.len() && ESCAPE[b[i] as usize] == 0 {
        i += 1;
    }
    i
}

/// Appends `n` in decimal (itoa: two digits per step, as serde_json).
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `n` in decimal, with its sign.
pub fn push_i64(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `n` (< 1,000,000) as exactly six digits: the microseconds of a
/// GELF timestamp.
pub fn push_micros(out: &mut Vec<u8>, n: u32) {
    let mut buf = [b'0'; 6];
    let mut n = n.min(999_999);
    for d in buf.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(s: &str) -> String {
        let mut v = Vec::new();
        push_str(&mut v, s);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn strings_escape_exactly_as_serde_json() {
        // Every char below 0x80 at every position of a 16-byte block and
        // of a word, with runs of plain text around it of every length up
        // to two blocks.
        for c in 0u8..0x80 {
            for pre in 0..33 {
                for post in [0, 1, 7, 8, 9, 15, 16, 17] {
                    let s = format!("{}{}{}", "a".repeat(pre), c as char, "b".repeat(post));
                    assert_eq!(ours(&s), serde_json::to_string(&s).unwrap(), "{s:?}");
                }
            }
        }
        // Two escapes in one block, non-ASCII bytes (which the unsigned
        // compare must not take for control chars) around them.
        for pre in 0..20 {
            let s = format!("{}\"x\\é\u{1}ü\u{7f}{}", "é".repeat(pre), "a".repeat(pre));
            assert_eq!(ours(&s), serde_json::to_string(&s).unwrap(), "{s:?}");
        }
        for s in [
            "",
            "plain",
            "é ü 日本語 \u{1F600}",
            "\u{7f}\u{80}\u{ff}\u{fffd}",
            "\"quoted\\\" \\\\ \n\r\t\u{8}\u{c}\u{0}\u{1b}[31mred",
            "long line without anything to escape at all, over many words",
        ] {
            assert_eq!(ours(s), serde_json::to_string(s).unwrap(), "{s:?}");
        }
        // Every output reads back as its input.
        let all: String = (0u32..0x800).filter_map(char::from_u32).collect();
        let back: String = serde_json::from_str(&ours(&all)).unwrap();
        assert_eq!(back, all);
    }

    #[test]
    fn integers_and_micros() {
        for n in [0u64, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            let mut v = Vec::new();
            push_u64(&mut v, n);
            assert_eq!(v, n.to_string().into_bytes());
        }
        for n in [0i64, -1, 7, -1_700_000_000, i64::MIN, i64::MAX] {
            let mut v = Vec::new();
            push_i64(&mut v, n);
            assert_eq!(v, n.to_string().into_bytes());
        }
        for n in [0u32, 7, 123_456, 999_999] {
            let mut v = Vec::new();
            push_micros(&mut v, n);
            assert_eq!(v, format!("{n:06}").into_bytes());
        }
    }
}
