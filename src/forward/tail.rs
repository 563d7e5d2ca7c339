//! The retained tail: messages written to Graylog but not yet known to be
//! read by it.
//!
//! GELF over TCP has no acknowledgement. Bytes the kernel took, or that
//! Graylog's kernel acknowledged, can still be lost in its receive buffer
//! when it crashes or resets the connection. So a written message is kept
//! here, its offset not committed, until there is evidence that Graylog
//! read it, and everything kept is sent again after any connection loss
//! (duplicates, never loss). The evidence, on the connection it was last
//! sent on, is one of:
//! - `hold_bytes` more bytes acknowledged after it: a receive buffer (2 MiB
//!   for Graylog's default `recv_buffer_size` of 1 MiB, which Linux
//!   doubles) cannot hold them all unread, so Graylog read past it;
//! - Graylog closed the connection after our FIN (`Output::close_read_by_peer`),
//!   which the forwarder asks for when the oldest message kept is old.
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One message taken from Kafka and not yet committed.
pub struct Pending {
    pub partition: i32,
    pub offset: i64,
    /// Empty when nothing is sent for it (an invalid message skipped).
    pub payload: Vec<u8>,
}

/// Messages flushed together: their bytes end at `wire_end` of the
/// connection's byte count.
struct Flushed {
    msgs: Vec<Pending>,
    wire_end: u64,
    sent_at: Instant,
}

pub struct Tail {
    flushed: VecDeque<Flushed>,
    bytes: usize,
    hold_bytes: u64,
}

impl Tail {
    pub fn new(hold_bytes: u64) -> Tail {
        Tail {
            flushed: VecDeque::new(),
            bytes: 0,
            hold_bytes,
        }
    }

    /// How long ago the oldest message kept was sent on this connection.
    pub fn oldest_age(&self, now: Instant) -> Option<Duration> {
        self.flushed.front().map(|f| now.duration_since(f.sent_at))
    }

    /// Payload bytes kept (what a reconnect sends again).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.flushed.iter().map(|f| f.msgs.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.flushed.is_empty()
    }

    /// Keeps messages just flushed; the connection has written `wire_end`
    /// bytes in all.
    pub fn push(&mut self, msgs: Vec<Pending>, wire_end: u64) {
        if msgs.is_empty() {
            return;
        }
        self.bytes += msgs.iter().map(|p| p.payload.len()).sum::<usize>();
        self.flushed.push_back(Flushed {
            msgs,
            wire_end,
            sent_at: Instant::now(),
        });
    }

    /// Takes off the front what Graylog must have read, given that its
    /// TCP acknowledged `acked` bytes of the connection.
    pub fn release(&mut self, acked: u64) -> Vec<Pending> {
        let mut out = Vec::new();
        while let Some(f) = self.flushed.front() {
            if acked < f.wire_end.saturating_add(self.hold_bytes) {
                break;
            }
            out.extend(self.pop());
        }
        out
    }

    /// Everything kept, oldest first: what the peer showed it read by
    /// closing after our FIN, or what must be sent again on a new
    /// connection (where it is pushed anew, its evidence starting over).
    pub fn take_all(&mut self) -> Vec<Pending> {
        let mut out = Vec::new();
        while !self.flushed.is_empty() {
            out.extend(self.pop());
        }
        out
    }

    fn pop(&mut self) -> Vec<Pending> {
        let f = self.flushed.pop_front().expect("not empty");
        self.bytes -= f.msgs.iter().map(|p| p.payload.len()).sum::<usize>();
        f.msgs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(from: i64, n: i64) -> Vec<Pending> {
        (from..from + n)
            .map(|offset| Pending {
                partition: 0,
                offset,
                payload: vec![b'x'; 100],
            })
            .collect()
    }

    #[test]
    fn nothing_leaves_on_an_acknowledgement_alone() {
        let mut t = Tail::new(1000);
        t.push(msgs(0, 5), 500);
        assert!(t.release(500).is_empty());
        assert!(t.release(1499).is_empty());
        assert_eq!(t.len(), 5);
        assert_eq!(t.bytes(), 500);
    }

    #[test]
    fn bytes_acknowledged_past_the_hold_release_in_order() {
        let mut t = Tail::new(1000);
        t.push(msgs(0, 5), 500);
        t.push(msgs(5, 5), 1000);
        t.push(msgs(10, 5), 1500);
        let r = t.release(2000);
        assert_eq!(
            r.iter().map(|p| p.offset).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn the_oldest_age_is_that_of_the_front() {
        let mut t = Tail::new(1000);
        let t0 = Instant::now();
        assert_eq!(t.oldest_age(t0), None);
        t.push(msgs(0, 1), 100);
        t.push(msgs(1, 1), 200);
        let later = Instant::now() + Duration::from_secs(5);
        assert!(t.oldest_age(later).unwrap() >= Duration::from_secs(5));
    }

    #[test]
    fn take_all_returns_everything_oldest_first() {
        let mut t = Tail::new(1000);
        t.push(msgs(0, 3), 300);
        t.push(msgs(3, 3), 600);
        let all = t.take_all();
        assert_eq!(
            all.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5]
        );
        assert!(t.is_empty());
        assert_eq!(t.bytes(), 0);
    }
}
