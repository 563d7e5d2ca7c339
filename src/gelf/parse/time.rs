//! Timestamps found in lines: RFC 3339, epoch numbers, and glog's local
//! `mmdd hh:mm:ss.uuuuuu` (no year, no zone).

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(s: &[u8], n: usize) -> Option<u32> {
    let d = s.get(..n)?;
    d.iter().try_fold(0u32, |a, &b| {
        b.is_ascii_digit().then(|| a * 10 + u32::from(b - b'0'))
    })
}

/// `2026-11-23T10:00:00.123Z`, `2026-11-23 10:00:00+01:00` ... as
/// microseconds since the epoch.
pub fn rfc3339(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (digits(b, 4)?, digits(&b[5..], 2)?, digits(&b[8..], 2)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, se) = (
        digits(&b[11..], 2)?,
        digits(&b[14..], 2)?,
        digits(&b[17..], 2)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                micros = micros * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..6 {
            micros *= 10;
        }
    }
    let offset_s: i64 = match b.get(i) {
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
            let (oh, om) = (digits(&b[i + 1..], 2)?, digits(&b[i + 4..], 2)?);
            let o = i64::from(oh * 3600 + om * 60);
            if sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + se) - offset_s;
    Some(secs * 1_000_000 + micros)
}

/// An epoch number: seconds, milliseconds or microseconds (by magnitude).
pub fn epoch(n: f64) -> Option<i64> {
    if !n.is_finite() || n <= 0.0 {
        return None;
    }
    let us = if n < 1e11 {
        n * 1e6
    } else if n < 1e14 {
        n * 1e3
    } else if n < 1e17 {
        n
    } else {
        return None;
    };
    Some(us as i64)
}

/// A local wall-clock time of the agent host (its `TZ`, else
/// `/etc/localtime`) as microseconds since the epoch.
pub fn local(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, micros: u32) -> Option<i64> {
    // SAFETY: mktime reads and normalises a zeroed tm we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = y - 1900;
    tm.tm_mon = mo as i32 - 1;
    tm.tm_mday = d as i32;
    tm.tm_hour = h as i32;
    tm.tm_min = mi as i32;
    tm.tm_sec = s as i32;
    tm.tm_isdst = -1;
    let t = unsafe { libc::mktime(&mut tm) };
    (t != -1).then(|| t * 1_000_000 + i64::from(micros))
}

/// The local year of an epoch time in microseconds.
pub fn local_year(us: i64) -> i32 {
    let t = (us / 1_000_000) as libc::time_t;
    // SAFETY: localtime_r into a zeroed tm we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&t, &mut tm) };
    tm.tm_year + 1900
}

/// A time is believable for a record that arrived at `arrival`: at most a
/// day before it (a delayed batch) and an hour after (clock skew).
pub fn sane(t: i64, arrival: i64) -> bool {
    t >= arrival - 86_400_000_000 && t <= arrival + 3_600_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_and_epochs() {
        assert_eq!(rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339("2026-11-23T10:00:00.123Z"),
            Some(1_795_428_000_123_000)
        );
        assert_eq!(
            rfc3339("2026-11-23T11:00:00.123+01:00"),
            Some(1_795_428_000_123_000)
        );
        assert_eq!(rfc3339("2026-11-23 10:00:00Z"), Some(1_795_428_000_000_000));
        for bad in [
            "2026-13-01T00:00:00Z",
            "yesterday",
            "2026-11-23T10:00:00",
            "2026-11-23T10:00:00.Z",
        ] {
            assert_eq!(rfc3339(bad), None, "{bad}");
        }
        assert_eq!(epoch(1_795_428_000.5), Some(1_795_428_000_500_000));
        assert_eq!(epoch(1_795_428_000_123.0), Some(1_795_428_000_123_000));
        assert_eq!(epoch(-1.0), None);
    }
}
