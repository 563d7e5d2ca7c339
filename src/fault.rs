//! Fault injection for tests: with the `fault-injection` feature (off by
//! default; `scripts/test.sh` turns it on), `GELF_FAULT_INJECT=<point>[,...]`
//! makes [`hit`] panic at those points, so tests can prove that a panic
//! never reaches the agent. Without the feature [`hit`] is empty.
//!
//! Points: `prepare` (inside the bridge's prepare), `publisher` (the
//! publisher loop, once per process: the supervisor must restart it).
//! [`active`] reads the same variable for faults that last: `fence`.
//!
//! `GELF_FAULT_DELAY=<point>=<ms>[,...]` makes [`delay_ms`] return that
//! delay, which the code at the point sleeps once, to widen a race as a
//! descheduled thread would on a loaded machine. Points: `exit-check`
//! (the publisher, before it first looks whether `run` may end),
//! `companion-lock` (spawning a companion, after its lock file is made and
//! before it is the spool's `companion.lock`).

#[cfg(feature = "fault-injection")]
pub fn hit(point: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static PUBLISHER_ONCE: AtomicBool = AtomicBool::new(false);
    let Ok(v) = std::env::var("GELF_FAULT_INJECT") else {
        return;
    };
    if !v.split(',').any(|p| p.trim() == point) {
        return;
    }
    if point == "publisher" && PUBLISHER_ONCE.swap(true, Ordering::SeqCst) {
        return;
    }
    panic!("injected fault at {point}");
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn hit(_point: &str) {}

/// Whether `GELF_FAULT_INJECT` names `point` (read once per process), for
/// faults that last rather than panic. Points: `fence` (the Kafka sink
/// reports every delivery as the broker fencing the producer, as a broker
/// that fences every new producer would).
#[cfg(feature = "fault-injection")]
pub fn active(point: &str) -> bool {
    static POINTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    POINTS
        .get_or_init(|| {
            std::env::var("GELF_FAULT_INJECT")
                .unwrap_or_default()
                .split(',')
                .map(|p| p.trim().to_string())
                .collect()
        })
        .iter()
        .any(|p| p == point)
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn active(_point: &str) -> bool {
    false
}

/// The delay asked for at `point` by `GELF_FAULT_DELAY` (see above), the
/// first time it is asked for; 0 after that, and without the feature.
#[cfg(feature = "fault-injection")]
pub fn delay_ms(point: &str) -> u64 {
    use std::sync::Mutex;
    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let Ok(v) = std::env::var("GELF_FAULT_DELAY") else {
        return 0;
    };
    let Some(ms) = v.split(',').find_map(|p| {
        let (name, ms) = p.trim().split_once('=')?;
        (name == point).then(|| ms.parse::<u64>().ok())?
    }) else {
        return 0;
    };
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.iter().any(|p| p == point) {
        return 0;
    }
    seen.push(point.to_string());
    ms
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn delay_ms(_point: &str) -> u64 {
    0
}
