//! Delivery latency: how long records took from the companion reading them
//! to the broker acknowledging them, as p50 / p99 / max over each metrics
//! window (`metrics_interval_ms`).
//!
//! A fixed histogram, no allocation per record: 8 buckets per power of two
//! of microseconds, so a quantile is reported as the upper bound of its
//! bucket (at most 12.5% above the true value, never below it). A record
//! re-sent from the spool after an outage counts with its whole wait:
//! that is the latency its reader saw.

/// Sub-buckets per power of two.
const SUB: u32 = 8;
/// Powers of two covered: up to 2^40 µs (12 days); beyond, the last bucket.
const BUCKETS: usize = (SUB as usize) * 41;

pub struct Latency {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    max_us: u64,
}

impl Default for Latency {
    fn default() -> Latency {
        Latency {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            max_us: 0,
        }
    }
}

/// The bucket of `us`: values below 2 * SUB have one each; above, each
/// power of two [2^e, 2^(e+1)) is cut into SUB equal parts.
fn bucket(us: u64) -> usize {
    if us < u64::from(2 * SUB) {
        return us as usize;
    }
    let e = 63 - us.leading_zeros(); // 2^e <= us, e >= 4
    let shift = e - SUB.trailing_zeros(); // part width 2^shift
    let part = (us >> shift) - u64::from(SUB); // 0..SUB
    let i = (u64::from(e - SUB.trailing_zeros()) * u64::from(SUB) + u64::from(SUB) + part) as usize;
    i.min(BUCKETS - 1)
}

/// The largest value of bucket `i` (inverse of [`bucket`]).
fn upper(i: usize) -> u64 {
    let sub = SUB as usize;
    if i < 2 * sub {
        return i as u64;
    }
    let shift = (i / sub - 1) as u32; // part width 2^shift
    let part = (i % sub) as u64;
    ((u64::from(SUB) + part + 1) << shift) - 1
}

/// p50, p99 and max of one window, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Latency {
    /// One record acknowledged `us` microseconds after it was read.
    pub fn record(&mut self, us: u64) {
        self.counts[bucket(us)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    /// The window's figures (None if nothing was acknowledged in it), and
    /// a new window.
    pub fn take(&mut self) -> Option<Summary> {
        if self.total == 0 {
            return None;
        }
        let at = |q: f64| {
            let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, n) in self.counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return upper(i).min(self.max_us);
                }
            }
            self.max_us
        };
        let s = Summary {
            p50_us: at(0.5),
            p99_us: at(0.99),
            max_us: self.max_us,
        };
        *self = Latency::default();
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_within_an_eighth() {
        let mut last = 0;
        for us in (0..200_000u64).chain([1 << 20, 1 << 30, (1 << 40) - 1]) {
            let b = bucket(us);
            assert!(b >= last, "bucket order at {us}");
            last = b;
            let u = upper(b);
            assert!(u >= us, "upper {u} below {us}");
            assert!(u as f64 <= us as f64 * 1.125 + 1.0, "{us} -> {u}");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_of_a_window_then_a_new_one() {
        let mut l = Latency::default();
        assert_eq!(l.take(), None);
        for us in 1..=1000u64 {
            l.record(us * 10); // 10 µs .. 10 ms
        }
        let s = l.take().unwrap();
        assert!((5000..=5625).contains(&s.p50_us), "{s:?}");
        assert!((9900..=10_000).contains(&s.p99_us), "{s:?}");
        assert_eq!(s.max_us, 10_000);
        assert_eq!(l.take(), None, "the next window starts empty");
        l.record(7);
        assert_eq!(
            l.take(),
            Some(Summary {
                p50_us: 7,
                p99_us: 7,
                max_us: 7
            })
        );
    }
}
