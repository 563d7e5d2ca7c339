//! Fault injection for tests: with the `fault-injection` feature (off by
//! default; `scripts/test.sh` turns it on), `GELF_FAULT_INJECT=<point>[,...]`
//! makes [`hit`] panic at those points, so tests can prove that a panic
//! never reaches the agent. Without the feature [`hit`] is empty.
//!
//! Points: `prepare` (inside the bridge's prepare), `publisher` (the
//! publisher loop, once per process: the supervisor must restart it).

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
