//! Where our log lines go: standard error by default; the agent module
//! routes them to the agent's glog through a function the shim registers.

use std::borrow::Cow;
use std::sync::RwLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info = 0,
    Warning = 1,
    Error = 2,
}

type Sink = fn(i32, &str);

static SINK: RwLock<Option<Sink>> = RwLock::new(None);

/// Routes log lines to `f(level, message)` (0 info, 1 warning, 2 error).
pub fn set_sink(f: Sink) {
    *SINK.write().unwrap_or_else(|e| e.into_inner()) = Some(f);
}

/// A character that could forge or hide a line of ours: a control
/// (newline, carriage return, escape ...) or invisible formatting (line and
/// paragraph separators, bidirectional overrides, zero-width characters).
pub fn unfit(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{061C}')
}

/// `s` with each unfit character written as its escape (`\n`, `\u{1b}`):
/// what a task controls (an override, a label, an id, a path) cannot start
/// a line of ours or move the terminal.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unfit) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if unfit(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Every line of ours goes out as one line: see [`printable`].
pub fn emit(level: Level, msg: &str) {
    let msg = &*printable(msg);
    let sink = *SINK.read().unwrap_or_else(|e| e.into_inner());
    match sink {
        Some(f) => f(level as i32, msg),
        None => {
            let tag = match level {
                Level::Info => "I",
                Level::Warning => "W",
                Level::Error => "E",
            };
            // Not eprintln!: a closed stderr must not panic a logger.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "mesos-gelf {tag}: {msg}");
        }
    }
}

pub fn info(msg: &str) {
    emit(Level::Info, msg)
}
pub fn warn(msg: &str) {
    emit(Level::Warning, msg)
}
pub fn error(msg: &str) {
    emit(Level::Error, msg)
}

/// Repeated warnings, limited: at most one line per key (e.g. container +
/// reason) per interval, carrying the count of the ones suppressed since.
/// The agent's log is not ours to fill; every warning that can repeat goes
/// through one of these.
pub struct Limiter {
    every: std::time::Duration,
    seen: std::collections::HashMap<String, (std::time::Instant, u64)>,
}

/// Keys a limiter remembers; past this, expired entries are forgotten first
/// (so a flood of distinct keys cannot grow memory without bound).
const LIMITER_KEYS: usize = 4096;

impl Limiter {
    pub fn new(every: std::time::Duration) -> Limiter {
        Limiter {
            every,
            seen: std::collections::HashMap::new(),
        }
    }

    /// Logs `msg()` unless a line with this key was logged less than one
    /// interval ago; then only counts it. Returns whether it was logged.
    pub fn emit(&mut self, level: Level, key: &str, msg: impl FnOnce() -> String) -> bool {
        let now = std::time::Instant::now();
        if let Some((last, suppressed)) = self.seen.get_mut(key) {
            if now.duration_since(*last) < self.every {
                *suppressed += 1;
                return false;
            }
            let n = std::mem::take(suppressed);
            *last = now;
            let mut m = msg();
            if n > 0 {
                m.push_str(&format!(
                    " ({n} more like this in the last {} s)",
                    self.every.as_secs()
                ));
            }
            emit(level, &m);
            return true;
        }
        if self.seen.len() >= LIMITER_KEYS {
            let every = self.every;
            self.seen.retain(|_, (t, _)| now.duration_since(*t) < every);
            if self.seen.len() >= LIMITER_KEYS {
                // Still full of live keys: count nothing new, log nothing.
                return false;
            }
        }
        self.seen.insert(key.to_string(), (now, 0));
        emit(level, &msg());
        true
    }

    /// Forgets every key that starts with `prefix` (a finished container).
    pub fn forget(&mut self, prefix: &str) {
        self.seen.retain(|k, _| !k.starts_with(prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static LINES: AtomicUsize = AtomicUsize::new(0);
    fn count(_: i32, _: &str) {
        LINES.fetch_add(1, Ordering::Relaxed);
    }

    #[test]
    fn limiter_logs_once_per_key_per_interval_and_stays_bounded() {
        set_sink(count);
        let mut l = Limiter::new(std::time::Duration::from_secs(60));
        let before = LINES.load(Ordering::Relaxed);
        for _ in 0..100_000 {
            l.emit(Level::Warning, "c1 too-large", || "x".into());
        }
        assert!(!l.emit(Level::Warning, "c1 too-large", || "x".into()));
        assert!(l.emit(Level::Warning, "c2 too-large", || "y".into()));
        for i in 0..20_000 {
            l.emit(Level::Warning, &format!("k{i}"), || "z".into());
        }
        assert!(l.seen.len() <= LIMITER_KEYS);
        let logged = LINES.load(Ordering::Relaxed) - before;
        assert!(logged <= 2 + LIMITER_KEYS, "{logged}");
        l.forget("c1");
        assert!(l.emit(Level::Warning, "c1 too-large", || "x".into()));
    }
}
