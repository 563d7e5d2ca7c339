//! glog lines, as every Mesos executor and many C++ services write them:
//!
//! ```text
//! Lmmdd hh:mm:ss.uuuuuu threadid file:line] message
//! ```
//!
//! `L` is the level: I→6 (info), W→4 (warning), E→3 (error), F→2 (fatal).
//! The time is the writer's local time without a year: it is read in the
//! agent host's time zone (its `TZ`, else `/etc/localtime`), in the year
//! that puts it at most a day after the record's arrival. A date glog
//! itself zeroes (`0000 00:00:00.000000`, its RAW lines) keeps the arrival
//! time. Thread id, file and line become `_thread_id`, `_src_file`,
//! `_src_line`. A line that does not match exactly is not glog.

use super::{time, Parsed, Value};

/// The parts of a glog prefix, or None.
struct Prefix<'a> {
    level: u8,
    date: [u32; 7],
    thread: u64,
    file: &'a str,
    line: u64,
    message: &'a str,
}

fn num(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let d = b.get(at..at + n)?;
    d.iter().try_fold(0u32, |a, &c| {
        c.is_ascii_digit().then(|| a * 10 + u32::from(c - b'0'))
    })
}

fn prefix(line: &str) -> Option<Prefix<'_>> {
    let b = line.as_bytes();
    let level = match b.first()? {
        b'I' => 6,
        b'W' => 4,
        b'E' => 3,
        b'F' => 2,
        _ => return None,
    };
    // "Lmmdd hh:mm:ss.uuuuuu " is 22 bytes.
    if b.len() < 22
        || b[5] != b' '
        || b[8] != b':'
        || b[11] != b':'
        || b[14] != b'.'
        || b[21] != b' '
    {
        return None;
    }
    let date = [
        num(b, 1, 2)?,
        num(b, 3, 2)?,
        num(b, 6, 2)?,
        num(b, 9, 2)?,
        num(b, 12, 2)?,
        num(b, 15, 6)?,
        0,
    ];
    let mut i = 22;
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    let t0 = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    if i == t0 || b.get(i) != Some(&b' ') || i - t0 > 19 {
        return None;
    }
    let thread: u64 = line[t0..i].parse().ok()?;
    i += 1;
    let f0 = i;
    while b.get(i).is_some_and(|c| !matches!(c, b':' | b' ' | b']')) {
        i += 1;
    }
    if i == f0 || b.get(i) != Some(&b':') {
        return None;
    }
    let file = &line[f0..i];
    i += 1;
    let l0 = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    if i == l0 || b.get(i) != Some(&b']') || i - l0 > 19 {
        return None;
    }
    let src_line: u64 = line[l0..i].parse().ok()?;
    i += 1;
    let message = match b.get(i) {
        None => "",
        Some(b' ') => &line[i + 1..],
        Some(_) => return None,
    };
    Some(Prefix {
        level,
        date,
        thread,
        file,
        line: src_line,
        message,
    })
}

/// Microseconds of a glog date, read as local time in the year that puts
/// it closest before `arrival` (allowing a day of clock skew).
fn when(d: [u32; 7], arrival: i64) -> Option<i64> {
    let [mo, day, h, mi, s, us, _] = d;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // The latest year, from the arrival's, in which the date exists (29
    // February) and that puts it at most a day after the arrival.
    let year = time::local_year(arrival);
    (0..8).find_map(|back| {
        let y = year - back;
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        if mo == 2 && day == 29 && !leap {
            return None;
        }
        time::local(y, mo, day, h, mi, s, us).filter(|t| *t <= arrival + 86_400_000_000)
    })
}

pub fn parse(line: &str, arrival_us: i64) -> Option<Parsed> {
    let p = prefix(line)?;
    Some(Parsed {
        // An empty glog message (the first line of a multi-line record)
        // keeps the whole line as the message.
        message: (!p.message.trim().is_empty()).then(|| p.message.to_string()),
        level: Some(p.level),
        ts_micros: when(p.date, arrival_us),
        fields: vec![
            ("thread_id".into(), Value::Num(p.thread.into())),
            ("src_file".into(), Value::Str(p.file.to_string())),
            ("src_line".into(), Value::Num(p.line.into())),
        ],
        cut: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(s: &str) -> i64 {
        // A local-time arrival a few seconds after `s` (mmdd hh:mm:ss).
        let b = s.as_bytes();
        time::local(
            2026,
            num(b, 0, 2).unwrap(),
            num(b, 2, 2).unwrap(),
            23,
            0,
            0,
            0,
        )
        .unwrap()
    }

    #[test]
    fn executor_lines() {
        let p = parse(
            "I1125 08:32:35.417428 20742 exec.cpp:237] Executor registered on agent X-S0",
            arrival("1125"),
        )
        .unwrap();
        assert_eq!(p.level, Some(6));
        assert_eq!(
            p.message.as_deref(),
            Some("Executor registered on agent X-S0")
        );
        assert_eq!(p.ts_micros, time::local(2026, 11, 25, 8, 32, 35, 417_428));
        assert_eq!(p.fields[0], ("thread_id".into(), Value::Num(20742.into())));
        assert_eq!(
            p.fields[1],
            ("src_file".into(), Value::Str("exec.cpp".into()))
        );
        assert_eq!(p.fields[2], ("src_line".into(), Value::Num(237.into())));
        // Thread ids are padded; levels by letter.
        let w = parse(
            "W1125 07:36:54.948560  173 slave.cpp:285] ",
            arrival("1125"),
        )
        .unwrap();
        assert_eq!((w.level, w.message), (Some(4), None));
        let e = parse("E0101 00:00:01.000000 1 a.cc:1] x", arrival("1231")).unwrap();
        assert_eq!(e.level, Some(3));
        assert_eq!(e.ts_micros, time::local(2026, 1, 1, 0, 0, 1, 0));
        let f = parse("F0101 00:00:01.000000 1 a.cc:1] x", arrival("0101")).unwrap();
        assert_eq!(f.level, Some(2));
        // 29 February seen in November 2026: 2024's.
        let feb = parse("I0229 12:00:00.000000 1 a.cc:1] x", arrival("1125")).unwrap();
        assert_eq!(feb.ts_micros, time::local(2024, 2, 29, 12, 0, 0, 0));
        // December seen in January: last year.
        let dec = parse("I1231 23:59:59.000000 1 a.cc:1] x", arrival("0101")).unwrap();
        assert_eq!(dec.ts_micros, time::local(2025, 12, 31, 23, 59, 59, 0));
        // glog's RAW line: a zero date keeps the arrival time.
        let raw = parse(
            "W0000 00:00:00.000000 17173 logging.cpp:102] RAW: Received signal SIGTERM",
            arrival("1125"),
        )
        .unwrap();
        assert_eq!((raw.level, raw.ts_micros), (Some(4), None));
    }

    #[test]
    fn near_misses_are_not_glog() {
        for l in [
            "WARNING: Logging before InitGoogleLogging() is written to STDERR",
            "I1125 08:32:35.417428 exec.cpp:237] no thread",
            "I1125 08:32:35.41742 20742 exec.cpp:237] short micros",
            "X1125 08:32:35.417428 20742 exec.cpp:237] level X",
            "I1125 08:32:35.417428 20742 exec.cpp:237]no space",
            "I1125 08:32:35.417428 20742 exec cpp:237] space in file",
            "I1125 08:32:35.417428 20742 exec.cpp:] no line",
            "**************************************************",
            "",
            "I",
        ] {
            assert!(parse(l, 0).is_none(), "{l}");
        }
    }
}
