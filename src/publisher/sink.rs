//! The sink interface the publisher loop drives, and the stdout sink.
//!
//! A sink accepts encoded messages with a [`Ticket`] and later reports each
//! ticket back as a [`Delivery`], in order per container. Only a delivered
//! ticket lets the publisher advance that container's checkpoint.

use crate::spool::Position;
use std::io::Write;
use std::time::Duration;

/// Identifies one sent record: its container slot, the container's retry
/// generation (stale deliveries after a rewind are ignored), its send index
/// and the spool position after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub container: u64,
    pub generation: u64,
    pub index: u64,
    pub pos: Position,
    pub bytes: usize,
}

#[derive(Debug)]
pub struct Delivery {
    pub ticket: Ticket,
    pub result: Result<(), DeliveryError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// The message is larger than the broker accepts.
    TooLarge(String),
    /// Not this record's fault: the sink can no longer deliver anything
    /// (the broker fenced the producer) and says so in [`Sink::fatal`];
    /// the publisher rebuilds it and sends the record again.
    SinkBroken(String),
    /// Handed back unsent at our request (`Sink::take_back_queued`): not
    /// a failure; the record is read again and sent later.
    TakenBack,
    Other(String),
}

#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The sink's queue is full: poll, then send again.
    Full,
    /// The message can never be sent as it is (too large for the client).
    TooLarge(String),
    /// The sink is broken and must be rebuilt (e.g. fatal idempotence error).
    Fatal(String),
    /// The destination is gone for good (`run`'s standard output closed).
    Closed(String),
    Other(String),
}

/// A destination for GELF messages.
pub trait Sink: Send {
    /// Hands one message over. `timestamp_ms` is its Kafka timestamp (ms
    /// since the epoch): the publisher reads the clock once per batch and
    /// passes it, instead of librdkafka reading it for every message (2-3%
    /// of the pipeline's CPU in a profile at full speed).
    fn send(
        &mut self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        timestamp_ms: i64,
        ticket: Ticket,
    ) -> Result<(), SendError>;
    /// Collects finished deliveries, waiting up to `timeout` for one.
    fn poll(&mut self, timeout: Duration, out: &mut Vec<Delivery>);
    /// A descriptor that becomes readable when `poll` has something to
    /// collect (see `wake`); the publisher waits on it beside inotify.
    /// None: the publisher looks again every few milliseconds instead.
    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// A fatal state that requires a new sink, if any.
    fn fatal(&self) -> Option<String> {
        None
    }
    /// Hands back, as `DeliveryError::TakenBack` deliveries, the records
    /// the sink holds and has not yet sent (those sent stay in flight).
    fn take_back_queued(&mut self) {}
    /// Errors the client reported since the last call (connection state).
    fn take_errors(&mut self) -> Vec<ClientError> {
        Vec::new()
    }
}

/// An error the client reported outside any delivery.
#[derive(Debug, Clone)]
pub struct ClientError {
    pub text: String,
    /// About one broker's connection: the others may serve, so it says
    /// nothing about Kafka as a whole (one broker of three down made
    /// `kafka_reachable` flap to 0 while every record was delivered).
    pub one_broker: bool,
}

/// Writes one GELF object per line to a writer (standard output for `run`).
/// A message counts as delivered once the writer has flushed it.
pub struct LineSink<W: Write + Send> {
    out: W,
    pending: Vec<Ticket>,
}

impl<W: Write + Send> LineSink<W> {
    pub fn new(out: W) -> Self {
        LineSink {
            out,
            pending: Vec::new(),
        }
    }
}

impl<W: Write + Send> Sink for LineSink<W> {
    fn send(
        &mut self,
        _topic: &str,
        _key: &[u8],
        payload: &[u8],
        _timestamp_ms: i64,
        ticket: Ticket,
    ) -> Result<(), SendError> {
        if self.pending.len() >= 4096 {
            return Err(SendError::Full);
        }
        let r = self
            .out
            .write_all(payload)
            .and_then(|_| self.out.write_all(b"\n"));
        r.map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                SendError::Closed(format!("standard output closed ({e})"))
            } else {
                SendError::Other(e.to_string())
            }
        })?;
        self.pending.push(ticket);
        Ok(())
    }

    fn poll(&mut self, _timeout: Duration, out: &mut Vec<Delivery>) {
        if self.pending.is_empty() {
            return;
        }
        let result = self
            .out
            .flush()
            .map_err(|e| DeliveryError::Other(e.to_string()));
        out.extend(self.pending.drain(..).map(|ticket| Delivery {
            ticket,
            result: result.clone(),
        }));
    }
}
