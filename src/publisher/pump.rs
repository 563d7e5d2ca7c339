//! Pumping: records from each container's spool, encoded, into the sink,
//! within the in-flight window.

use super::*;

impl Publisher {
    pub(super) fn pump_all(&mut self) -> bool {
        let mut progress = false;
        let keys: Vec<String> = self.containers.keys().cloned().collect();
        for k in keys {
            if self.in_flight_bytes >= self.config.max_in_flight_bytes {
                break;
            }
            match self.pump(&k) {
                Ok(n) => progress |= n > 0,
                Err(SendError::Full) => break,
                Err(_) => {}
            }
        }
        progress
    }

    /// Sends up to BATCH records of one container. Err(Full) stops the round.
    pub(super) fn pump(&mut self, key: &str) -> Result<usize, SendError> {
        let now = Instant::now();
        let c = self.containers.get_mut(key).expect("container");
        if c.finished || c.retry_at.is_some_and(|t| now < t) {
            return Ok(0);
        }
        if !c.may_have_data && c.held.is_none() && c.last_try.elapsed() < RECHECK_EVERY {
            return Ok(0);
        }
        c.retry_at = None;
        c.last_try = now;
        let mut sent = 0;
        while sent < BATCH && self.in_flight_bytes < self.config.max_in_flight_bytes {
            let (rec, pos) = match c.held.take() {
                Some(h) => h,
                None => match c.reader.read_next() {
                    Ok(Next::Record(r, p)) => {
                        if r.stream == Stream::Notice {
                            Metrics::add(&self.metrics.loss_notices, 1);
                        }
                        (r, p)
                    }
                    Ok(Next::Pending) => {
                        c.may_have_data = false;
                        break;
                    }
                    Ok(Next::Finished) => {
                        c.finished = true;
                        break;
                    }
                    Err(e) => {
                        log::warn(&format!("reading spool {}: {e}", c.dir.display()));
                        c.retry_at = Some(now + RETRY_BACKOFF);
                        break;
                    }
                },
            };
            self.scratch.clear();
            if c.encoder.encode(&rec, &mut self.scratch) {
                Metrics::add(&self.metrics.truncated, 1);
            }
            let ticket = Ticket {
                container: c.slot,
                generation: c.generation,
                index: c.next_index,
                pos,
                bytes: self.scratch.len(),
            };
            match self.sink.send(&c.topic, &c.msg_key, &self.scratch, ticket) {
                Ok(()) => {
                    c.next_index += 1;
                    c.inflight.push_back(InFlight {
                        index: ticket.index,
                        pos,
                        ts_micros: rec.ts_micros,
                        acked: false,
                    });
                    self.in_flight_bytes += ticket.bytes;
                    self.in_flight_msgs += 1;
                    sent += 1;
                }
                Err(SendError::Full) => {
                    c.held = Some((rec, pos));
                    return Err(SendError::Full);
                }
                Err(SendError::TooLarge(m)) => {
                    let n = (c.encoder.max_bytes() / 2).max(1024);
                    c.encoder.set_max_bytes(n);
                    log::warn(&format!(
                        "{}: {m}; cutting its messages to {n} bytes",
                        c.key
                    ));
                    c.held = Some((rec, pos));
                }
                Err(SendError::Fatal(m)) | Err(SendError::Other(m)) => {
                    c.held = Some((rec, pos));
                    c.retry_at = Some(now + RETRY_BACKOFF);
                    self.metrics.set_error(Some(m));
                    break;
                }
            }
        }
        self.metrics
            .in_flight
            .store(self.in_flight_msgs, Ordering::Relaxed);
        Ok(sent)
    }
}
