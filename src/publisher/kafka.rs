//! The Kafka sink: one librdkafka producer (statically linked) per publisher.
//!
//! Defaults chosen for logs, each overridable with `kafka.<property>`:
//! idempotent producer with `acks=all` (no duplicates or reordering from
//! client retries), lz4 compression, `linger.ms=5`, and
//! `message.timeout.ms=0`: librdkafka retries a message until the broker takes
//! it, however long the broker is away. The spool, not librdkafka's queue,
//! holds the backlog: the publisher bounds what is in flight.
//!
//! Callbacks only move data into channels; the publisher loop does the work.

use super::sink::{Delivery, DeliveryError, SendError, Sink, Ticket};
use crossbeam_channel::{unbounded, Receiver, Sender};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use std::collections::BTreeMap;
use std::time::Duration;

/// librdkafka properties we set unless the operator sets them.
pub const DEFAULTS: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("compression.type", "lz4"),
    ("linger.ms", "5"),
    ("message.timeout.ms", "0"),
    ("queue.buffering.max.messages", "200000"),
    ("queue.buffering.max.kbytes", "32768"),
    ("socket.keepalive.enable", "true"),
    ("reconnect.backoff.max.ms", "5000"),
    // A connection that does not get through its set-up (TCP, TLS, SASL)
    // in 10 s is reported, with the state it was stuck in: a TLS client
    // against a plaintext listener just hangs in SSL_HANDSHAKE otherwise.
    ("socket.connection.setup.timeout.ms", "10000"),
];

struct Ctx {
    deliveries: Sender<Delivery>,
    errors: Sender<String>,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        let _ = self.errors.send(format!("{error}: {reason}"));
    }
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        // librdkafka's chatter stays out of the agent log, but its errors
        // and its broker connection failures (`FAIL`) go to the publisher: some causes (a TLS
        // handshake against a plaintext listener, SASL) appear only here.
        // The publisher classifies them and logs each cause rate-limited.
        if (level as i32) <= (RDKafkaLogLevel::Error as i32) || fac == "FAIL" {
            let _ = self.errors.send(format!("{fac}: {log_message}"));
        }
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Box<Ticket>) {
        let result = match result {
            Ok(_) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), m)) => {
                Err(DeliveryError::TooLarge(format!(
                    "message of {} bytes rejected as too large",
                    m.payload_len()
                )))
            }
            Err((e, _)) => Err(DeliveryError::Other(e.to_string())),
        };
        let _ = self.deliveries.send(Delivery {
            ticket: *ticket,
            result,
        });
    }
}

pub struct KafkaSink {
    producer: BaseProducer<Ctx>,
    deliveries: Receiver<Delivery>,
    errors: Receiver<String>,
}

/// The full librdkafka configuration: our defaults, then the operator's.
pub fn client_config(props: &BTreeMap<String, String>) -> ClientConfig {
    let mut cc = ClientConfig::new();
    for (k, v) in DEFAULTS {
        cc.set(*k, *v);
    }
    for (k, v) in props {
        cc.set(k, v);
    }
    // rust-rdkafka derives librdkafka's log level from the `log` crate,
    // which nothing configures here: ask for warnings and errors (see
    // `Ctx::log`), not silence.
    cc.set_log_level(RDKafkaLogLevel::Warning);
    cc
}

/// Checks the `kafka.*` parameters by building a producer from them (no
/// network I/O): an unknown or invalid property is named in the error.
pub fn validate(props: &BTreeMap<String, String>) -> Result<(), String> {
    client_config(props)
        .create::<BaseProducer>()
        .map(|_| ())
        .map_err(|e| format!("invalid Kafka configuration (kafka.* parameters): {e}"))
}

impl KafkaSink {
    /// Builds the producer. Unknown or invalid properties fail here, with
    /// librdkafka's message naming the property.
    pub fn new(props: &BTreeMap<String, String>) -> Result<KafkaSink, String> {
        props
            .get("bootstrap.servers")
            .ok_or("parameter `kafka.bootstrap.servers` is required for the Kafka sink")?;
        let (dtx, drx) = unbounded();
        let (etx, erx) = unbounded();
        let producer: BaseProducer<Ctx> = client_config(props)
            .create_with_context(Ctx {
                deliveries: dtx,
                errors: etx,
            })
            .map_err(|e| format!("invalid Kafka configuration: {e}"))?;
        Ok(KafkaSink {
            producer,
            deliveries: drx,
            errors: erx,
        })
    }
}

impl Sink for KafkaSink {
    fn send(
        &mut self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        ticket: Ticket,
    ) -> Result<(), SendError> {
        let rec = BaseRecord::with_opaque_to(topic, Box::new(ticket))
            .key(key)
            .payload(payload);
        match self.producer.send(rec) {
            Ok(()) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(SendError::Full)
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => Err(
                SendError::TooLarge(format!("{} bytes exceed message.max.bytes", payload.len())),
            ),
            Err((e, _)) => {
                if self.producer.client().fatal_error().is_some() {
                    Err(SendError::Fatal(e.to_string()))
                } else {
                    Err(SendError::Other(e.to_string()))
                }
            }
        }
    }

    fn poll(&mut self, timeout: Duration, out: &mut Vec<Delivery>) {
        self.producer.poll(timeout);
        out.extend(self.deliveries.try_iter());
    }

    fn fatal(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code:?}: {reason}"))
    }

    fn take_errors(&mut self) -> Vec<String> {
        self.errors.try_iter().collect()
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        // Whatever was not delivered stays in the spool and is sent again.
        self.producer
            .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        self.producer.poll(Duration::ZERO);
    }
}
