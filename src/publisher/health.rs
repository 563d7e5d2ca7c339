//! Health: what Kafka (or the sink) says is wrong, named, counted and
//! logged without flooding.
//!
//! librdkafka reports problems in two places: the client's error callback
//! (connection, TLS, SASL: not tied to a container) and each message's
//! delivery report (invalid topic, authorization, size: tied to the
//! container and topic it was sent for). Both go through [`Health`], which
//! - classifies the text into a [`Cause`] (TLS verification, authentication,
//!   authorization, invalid topic ...), so the log says the real cause and
//!   not only "cannot reach Kafka";
//! - logs each (container or client, cause) when it first appears and again
//!   at most once a minute while it lasts, with a count of the suppressed
//!   repeats ([`crate::log::Limiter`]);
//! - keeps the agent-wide numbers in [`Metrics`] (errors by cause, Kafka
//!   reachable 1/0, the last error).
//!
//! "Kafka reachable" follows deliveries, not sockets (a health check that
//! only sees a connection lies while the output fails): it drops to 0 on a
//! client error, or when records have waited for an acknowledgement for
//! [`STALL_AFTER`] without any delivery; it returns to 1 at the next
//! successful delivery.

use super::metrics::Metrics;
use crate::log::{Level, Limiter};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A broker's failed connection while a delivery succeeded this recently
/// says nothing about Kafka as a whole.
const ONE_BROKER_GRACE: Duration = Duration::from_secs(5);
/// Records in flight this long without any acknowledgement: unreachable.
pub const STALL_AFTER: Duration = Duration::from_secs(10);
/// Repeats of one warning (per container or client, per cause) are logged
/// at most this often.
pub const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// What an error is about, from librdkafka's (or the sink's) text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// TLS handshake or certificate verification failed.
    Tls,
    /// SASL authentication failed (wrong user or password, mechanism).
    Authentication,
    /// The broker refused access to the topic or cluster (ACLs).
    Authorization,
    /// The broker refuses the topic name.
    InvalidTopic,
    /// The topic does not exist (and is not created automatically).
    UnknownTopic,
    /// A message larger than the broker or client accepts.
    TooLarge,
    /// The broker takes the request but refuses the records in it: its
    /// validation (a schema on the topic) or a policy. Sending the same
    /// records again gets the same answer (Kafka's INVALID_RECORD and
    /// POLICY_VIOLATION are not retriable).
    Rejected,
    /// Connection refused, reset, name not resolved, all brokers down.
    Transport,
    /// The destination is closed for good (e.g. `run`'s standard output).
    Closed,
    Other,
}

impl Cause {
    pub const ALL: [Cause; 10] = [
        Cause::Tls,
        Cause::Authentication,
        Cause::Authorization,
        Cause::InvalidTopic,
        Cause::UnknownTopic,
        Cause::TooLarge,
        Cause::Rejected,
        Cause::Transport,
        Cause::Closed,
        Cause::Other,
    ];

    /// A cause that concerns one topic, not the connection to Kafka: one
    /// container's bad topic must not make the whole agent look cut off
    /// (`kafka_reachable`, "delivering again" flapping) while every other
    /// container ships.
    pub fn topic_level(self, text: &str) -> bool {
        match self {
            Cause::InvalidTopic | Cause::UnknownTopic | Cause::TooLarge | Cause::Rejected => true,
            Cause::Authorization => text.to_ascii_lowercase().contains("topic"),
            _ => false,
        }
    }

    pub fn classify(text: &str) -> Cause {
        let t = text.to_ascii_lowercase();
        let has = |ps: &[&str]| ps.iter().any(|p| t.contains(p));
        if has(&["broken pipe", "standard output closed"]) {
            Cause::Closed
        } else if has(&["connection refused", "failed to resolve", "all broker"]) {
            // Before TLS: a refused connection to an ssl:// address is transport.
            Cause::Transport
        } else if has(&[
            "ssl handshake",
            "ssl_handshake",
            "ssl routines",
            "certificate",
            "(ssl)",
            "ssl error",
            "tls",
        ]) {
            Cause::Tls
        } else if has(&["sasl", "authentication"]) {
            Cause::Authentication
        } else if has(&["authorization", "not authorized"]) {
            Cause::Authorization
        } else if has(&[
            "invalidtopic",
            "invalid topic",
            "topicexception",
            "topic exception",
        ]) {
            Cause::InvalidTopic
        } else if has(&["unknowntopic", "unknown topic"]) {
            Cause::UnknownTopic
        } else if has(&["too large", "toolarge", "message.max.bytes"]) {
            Cause::TooLarge
        } else if has(&[
            "invalidrecord",
            "invalid_record",
            "failed to validate record",
            "policyviolation",
            "policy_violation",
            "policy violation",
        ]) {
            Cause::Rejected
        } else if has(&[
            "transport",
            "connection refused",
            "connect to",
            "disconnected",
            "all broker",
            "allbrokersdown",
            "resolve",
            "timed out",
            "timedout",
            "reachable",
        ]) {
            Cause::Transport
        } else {
            Cause::Other
        }
    }

    /// Errors that retrying will not fix without someone changing a
    /// setting, a certificate or an ACL, or creating a topic.
    pub fn permanent(self) -> bool {
        matches!(
            self,
            Cause::Tls
                | Cause::Authentication
                | Cause::Authorization
                | Cause::InvalidTopic
                | Cause::UnknownTopic
                | Cause::Rejected
                | Cause::Closed
        )
    }

    /// The name used in log lines and metric names.
    pub fn name(self) -> &'static str {
        match self {
            Cause::Tls => "tls",
            Cause::Authentication => "authentication",
            Cause::Authorization => "authorization",
            Cause::InvalidTopic => "invalid_topic",
            Cause::UnknownTopic => "unknown_topic",
            Cause::TooLarge => "too_large",
            Cause::Rejected => "rejected",
            Cause::Transport => "transport",
            Cause::Closed => "closed",
            Cause::Other => "other",
        }
    }

    pub fn what(self) -> &'static str {
        match self {
            Cause::Tls => "TLS handshake or certificate verification failed (check kafka.ssl.* settings and the broker's certificate)",
            Cause::Authentication => "SASL authentication failed (check kafka.sasl.* settings)",
            Cause::Authorization => "not authorized by the broker (check its ACLs for this topic)",
            Cause::InvalidTopic => "the broker refuses this topic name",
            Cause::UnknownTopic => "the topic does not exist on the broker",
            Cause::TooLarge => "message too large for the broker",
            Cause::Rejected => "the broker refuses the records (its validation of the topic's records, such as a schema, or a policy)",
            Cause::Transport => "cannot reach Kafka",
            Cause::Closed => "the destination is closed",
            Cause::Other => "Kafka error",
        }
    }
}

/// The publisher's view of the sink's health; see the module doc.
pub struct Health {
    metrics: Arc<Metrics>,
    limiter: Limiter,
    /// A client-level problem (not tied to a container), since when.
    pub client_problem: Option<(Cause, Instant)>,
    unhealthy: bool,
    /// When the last poll brought a successful delivery (set by the
    /// publisher once per poll: a clock read per record costs).
    pub last_delivery: Option<Instant>,
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Health {
        metrics.kafka_reachable.store(1, Relaxed);
        Health {
            metrics,
            limiter: Limiter::new(REPEAT_EVERY),
            client_problem: None,
            unhealthy: false,
            last_delivery: None,
        }
    }

    /// A warning that may repeat (spool read errors, checkpoints ...):
    /// logged at most once a minute per `key`.
    pub fn warn(&mut self, key: &str, msg: impl FnOnce() -> String) {
        self.limiter.emit(Level::Warning, key, msg);
    }

    /// Forgets a finished container's repeat counters.
    pub fn forget(&mut self, container: &str) {
        self.limiter.forget(&format!("{container}\0"));
    }

    /// An error from the client (error callback, start-up check);
    /// `one_broker`: about one broker's connection only.
    pub fn client_error(&mut self, text: &str, one_broker: bool) -> Cause {
        let cause = Cause::classify(text);
        self.count(cause, text);
        if cause.topic_level(text) {
            // About one topic (librdkafka reports it globally too): the
            // container using it is named by its delivery errors.
            return cause;
        }
        let delivering = self
            .last_delivery
            .is_some_and(|t| t.elapsed() < ONE_BROKER_GRACE);
        if one_broker && cause == Cause::Transport && delivering {
            // One broker is down while others take the records: named, but
            // Kafka is unreachable only once no broker is left (librdkafka's
            // AllBrokersDown) or acknowledgements stall.
            self.limiter.emit(Level::Warning, "kafka\0broker", || {
                format!(
                    "Kafka: cannot reach Kafka broker: {text}; the others are used while it is down"
                )
            });
            return cause;
        }
        if !matches!(self.client_problem, Some((c, _)) if c == cause) {
            self.client_problem = Some((cause, Instant::now()));
        }
        self.metrics.kafka_reachable.store(0, Relaxed);
        self.unhealthy = true;
        self.limiter
            .emit(Level::Error, &format!("kafka\0{}", cause.name()), || {
                format!(
                    "Kafka: {}: {text}; records stay in the spool and are retried",
                    cause.what()
                )
            });
        cause
    }

    /// A failed delivery (or send) of one container's record.
    pub fn container_error(&mut self, container: &str, topic: &str, text: &str) -> Cause {
        let cause = Cause::classify(text);
        self.count(cause, text);
        if !cause.topic_level(text) {
            self.unhealthy = true;
            self.metrics.kafka_reachable.store(0, Relaxed);
        } else if cause != Cause::UnknownTopic {
            // The broker itself answered (it refused the records, the topic
            // name, the size or the ACL): Kafka is reachable again, even if
            // no delivery follows (helper-10: a container whose records are
            // all refused kept `kafka_reachable` 0, and its give-up waited
            // for ever, after one outage). An unknown topic may be
            // librdkafka's own view of the metadata: not counted.
            self.client_problem = None;
            self.metrics.kafka_reachable.store(1, Relaxed);
        }
        self.limiter.emit(
            Level::Error,
            &format!("{container}\0{}", cause.name()),
            || {
                format!(
                    "container {container}, topic {topic}: {}: {text}; its records stay in the spool and are retried with backoff",
                    cause.what()
                )
            },
        );
        cause
    }

    /// Records have waited for acknowledgement too long (broker frozen or
    /// unreachable without an error yet).
    pub fn stalled(&mut self, for_: Duration) {
        if self.metrics.kafka_reachable.swap(0, Relaxed) == 1 {
            self.unhealthy = true;
            self.limiter.emit(Level::Error, "kafka\0stalled", || {
                format!(
                    "Kafka: no delivery acknowledged for {} s while records wait; records stay in the spool",
                    for_.as_secs()
                )
            });
        }
    }

    /// A successful delivery.
    pub fn delivered(&mut self) {
        self.client_problem = None;
        self.metrics.kafka_reachable.store(1, Relaxed);
        if self.unhealthy {
            self.unhealthy = false;
            self.metrics.set_error(None);
            // One failing container among healthy ones would make this
            // flap: limited like the warnings.
            self.limiter.emit(Level::Info, "kafka\0recovered", || {
                "delivering again".into()
            });
        }
    }

    fn count(&self, cause: Cause, text: &str) {
        Metrics::add(&self.metrics.errors[cause as usize], 1);
        self.metrics
            .set_error(Some(format!("{}: {text}", cause.name())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_texts_are_classified() {
        let c = Cause::classify;
        assert_eq!(c("ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed"), Cause::Tls);
        assert_eq!(c("Authentication (Local: Authentication failure): SASL SCRAM-SHA-256 mechanism handshake failed"), Cause::Authentication);
        assert_eq!(c("Message production error: TopicAuthorizationFailed (Broker: Topic authorization failed)"), Cause::Authorization);
        assert_eq!(
            c("Message production error: InvalidTopic (Broker: Invalid topic)"),
            Cause::InvalidTopic
        );
        assert_eq!(
            c("Message production error: TopicException (Broker: Invalid topic)"),
            Cause::InvalidTopic
        );
        assert_eq!(c("Message production error: UnknownTopicOrPartition (Broker: Unknown topic or partition)"), Cause::UnknownTopic);
        assert_eq!(
            c("Message production error: MessageSizeTooLarge (Broker: Message size too large)"),
            Cause::TooLarge
        );
        assert_eq!(c("Global error: BrokerTransportFailure (Local: Broker transport failure): 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused"), Cause::Transport);
        assert_eq!(
            c("Message production error: InvalidRecord (Broker: Broker failed to validate record)"),
            Cause::Rejected
        );
        assert_eq!(
            c("Message production error: PolicyViolation (Broker: Policy violation)"),
            Cause::Rejected
        );
        assert_eq!(c("Broken pipe (os error 32)"), Cause::Closed);
        assert_eq!(c("FAIL: ssl://127.0.0.1:9092/bootstrap: Connection setup timed out in state SSL_HANDSHAKE (after 10023ms in state SSL_HANDSHAKE)"), Cause::Tls);
        assert_eq!(c("ssl://127.0.0.1:9093/bootstrap: Connect to ipv4#127.0.0.1:9093 failed: Connection refused (after 0ms in state CONNECT)"), Cause::Transport);
        assert!(Cause::Tls.permanent() && !Cause::Transport.permanent());
        let t = "Message production error: TopicAuthorizationFailed (Broker: Topic authorization failed)";
        assert!(c(t).topic_level(t));
        let t = "ClusterAuthorizationFailed (Broker: Cluster authorization failed)";
        assert!(!c(t).topic_level(t), "{:?}", c(t));
        assert!(Cause::UnknownTopic.topic_level("") && !Cause::Transport.topic_level(""));
        for (i, c) in Cause::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
