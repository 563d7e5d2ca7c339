//! Per-container rate limits (`rate_limit_lines`, `rate_limit_bytes`): a
//! token bucket per unit, refilled every second by the limit and holding at
//! most `rate_limit_burst` seconds' worth. A record over the limit is not
//! spooled (so not shipped); it is still in the sandbox files, keeps its
//! `_seq`, and is reported as a `rate_limit` loss with its exact range.
//! The container is never slowed: the companion reads at full speed.

use crate::config::ContainerSettings;

struct Bucket {
    rate: f64,
    cap: f64,
    tokens: f64,
}

impl Bucket {
    fn new(per_second: u64, burst_s: u64) -> Option<Bucket> {
        (per_second > 0).then(|| {
            let cap = per_second as f64 * burst_s.max(1) as f64;
            Bucket {
                rate: per_second as f64,
                cap,
                tokens: cap,
            }
        })
    }

    fn refill(&mut self, dt_s: f64) {
        self.tokens = (self.tokens + self.rate * dt_s).min(self.cap);
    }
}

pub struct RateLimit {
    lines: Option<Bucket>,
    bytes: Option<Bucket>,
    last_us: i64,
}

impl RateLimit {
    /// None when neither limit is set.
    pub fn new(s: &ContainerSettings, now_us: i64) -> Option<RateLimit> {
        let lines = Bucket::new(s.rate_limit_lines, s.rate_limit_burst);
        let bytes = Bucket::new(s.rate_limit_bytes, s.rate_limit_burst);
        (lines.is_some() || bytes.is_some()).then_some(RateLimit {
            lines,
            bytes,
            last_us: now_us,
        })
    }

    /// Whether a record of `len` bytes, made at `now_us`, may be shipped;
    /// it takes its tokens if so.
    pub fn admit(&mut self, len: usize, now_us: i64) -> bool {
        let dt = (now_us - self.last_us).max(0) as f64 / 1e6;
        self.last_us = self.last_us.max(now_us);
        for b in [&mut self.lines, &mut self.bytes].into_iter().flatten() {
            b.refill(dt);
        }
        let fits_lines = self.lines.as_ref().is_none_or(|b| b.tokens >= 1.0);
        let fits_bytes = self.bytes.as_ref().is_none_or(|b| b.tokens >= len as f64);
        if !(fits_lines && fits_bytes) {
            return false;
        }
        if let Some(b) = &mut self.lines {
            b.tokens -= 1.0;
        }
        if let Some(b) = &mut self.bytes {
            b.tokens -= len as f64;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let s = ContainerSettings {
            rate_limit_lines: 100,
            rate_limit_burst: 2,
            ..Default::default()
        };
        let mut r = RateLimit::new(&s, 0).unwrap();
        let first: usize = (0..1000).filter(|_| r.admit(10, 0)).count();
        assert_eq!(first, 200, "the burst: 2 s worth");
        // 10 s later at most 10 s × 100 more, capped by the burst.
        let later: usize = (0..1000).filter(|_| r.admit(10, 10_000_000)).count();
        assert_eq!(later, 200);
        let at_rate: usize = (1..=100)
            .filter(|i| r.admit(10, 10_000_000 + i * 10_000))
            .count();
        assert!((99..=100).contains(&at_rate), "{at_rate} in 1 s at 100/s");
        assert!(RateLimit::new(&ContainerSettings::default(), 0).is_none());
    }

    #[test]
    fn bytes_limit_counts_payload_bytes() {
        let s = ContainerSettings {
            rate_limit_bytes: 1000,
            rate_limit_burst: 1,
            ..Default::default()
        };
        let mut r = RateLimit::new(&s, 0).unwrap();
        assert!(r.admit(600, 0));
        assert!(!r.admit(600, 0));
        assert!(r.admit(400, 0));
    }
}
