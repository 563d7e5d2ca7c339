//! The Kafka sink: one librdkafka producer (statically linked) per publisher.
//!
//! Defaults chosen for logs, each overridable with `kafka.<property>`:
//! idempotent producer with `acks=all` (no duplicates or reordering from
//! client retries), lz4 compression, `linger.ms=5`, and
//! `message.timeout.ms=0`: librdkafka retries a message until the broker takes
//! it, however long the broker is away. The spool, not librdkafka's queue,
//! holds the backlog: the publisher bounds what is in flight.
//!
//! Callbacks only move data into a channel or a list; the publisher loop
//! does the work. Per record sent there is no allocation of ours: the
//! ticket waits in a slab of this sink and librdkafka carries only its
//! slot number, and delivery reports (which run on the publisher's own
//! thread, inside `poll`) collect in a vector behind an uncontended lock.

use super::sink::{ClientError, Delivery, DeliveryError, SendError, Sink, Ticket};
use crossbeam_channel::{unbounded, Receiver, Sender};
use rdkafka::bindings as rdsys;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaRespErr;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_void, CString};
use std::sync::Mutex;
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
    /// (slab slot, result) of each delivery report since the last poll.
    deliveries: Mutex<Vec<(usize, Result<(), DeliveryError>)>>,
    errors: Sender<ClientError>,
    /// Set when the broker fenced this producer (see `delivery`).
    fenced: Mutex<Option<String>>,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        // A broker's connection failed (librdkafka says so per broker, and
        // says AllBrokersDown once none is left).
        let one_broker = matches!(
            error,
            KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure)
        );
        let _ = self.errors.send(ClientError {
            text: format!("{error}: {reason}"),
            one_broker,
        });
    }
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        // librdkafka's chatter stays out of the agent log, but its errors
        // and its broker connection failures (`FAIL`) go to the publisher: some causes (a TLS
        // handshake against a plaintext listener, SASL) appear only here.
        // The publisher classifies them and logs each cause rate-limited.
        if (level as i32) <= (RDKafkaLogLevel::Error as i32) || fac == "FAIL" {
            let _ = self.errors.send(ClientError {
                text: format!("{fac}: {log_message}"),
                // A connection to one broker failed (FAIL is per broker).
                one_broker: fac == "FAIL",
            });
        }
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: usize) {
        let fenced = KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced);
        let result = match result {
            // Fault injection: a broker that fences every producer.
            Ok(_) if crate::fault::active("fence") => Err(self.fence(&fenced)),
            Ok(_) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), m)) => {
                Err(DeliveryError::TooLarge(format!(
                    "message of {} bytes rejected as too large",
                    m.payload_len()
                )))
            }
            // An idempotent producer the broker fenced stays fenced:
            // librdkafka neither raises a fatal error nor asks for a new
            // producer id, so every later record of every container fails
            // the same way (tansu fences after a batch it refused). The
            // producer is broken, not the record: say so, and `fatal`
            // has it rebuilt.
            Err((e, _)) if *e == fenced => Err(self.fence(e)),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue), _)) => {
                Err(DeliveryError::TakenBack)
            }
            Err((e, _)) => Err(DeliveryError::Other(e.to_string())),
        };
        if let Ok(mut d) = self.deliveries.lock() {
            d.push((slot, result));
        }
    }
}

impl Ctx {
    /// Marks the producer fenced (see `delivery`): `fatal` reports it.
    fn fence(&self, e: &KafkaError) -> DeliveryError {
        let text = e.to_string();
        if let Ok(mut f) = self.fenced.lock() {
            f.get_or_insert_with(|| text.clone());
        }
        DeliveryError::SinkBroken(text)
    }
}

/// Tickets of the records librdkafka holds, by slot; freed slots are
/// reused, so it never grows past the most records ever in flight.
#[derive(Default)]
struct Slab {
    tickets: Vec<Ticket>,
    free: Vec<usize>,
}

impl Slab {
    fn put(&mut self, t: Ticket) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.tickets[i] = t;
                i
            }
            None => {
                self.tickets.push(t);
                self.tickets.len() - 1
            }
        }
    }

    fn take(&mut self, i: usize) -> Option<Ticket> {
        let t = *self.tickets.get(i)?;
        self.free.push(i);
        Some(t)
    }
}

/// A librdkafka topic handle, kept per topic: a send names its topic by
/// handle, where a send by name takes the client's write lock, looks the
/// topic up and converts its name to a C string, for every record (with
/// the lock contended by librdkafka's broker thread, ~5% of the
/// publisher's CPU).
struct TopicHandle(Rkt);

/// The raw handle, as a send passes it.
#[derive(Clone, Copy)]
struct Rkt(*mut rdsys::rd_kafka_topic_t);

// SAFETY: librdkafka topic handles may be used from any thread.
unsafe impl Send for Rkt {}

impl Drop for TopicHandle {
    fn drop(&mut self) {
        // SAFETY: a handle from rd_kafka_topic_new, released once, before
        // the client (KafkaSink's fields drop after its `topics`).
        unsafe { rdsys::rd_kafka_topic_destroy(self.0 .0) };
    }
}

/// Handles kept at most: one per topic in use, so far more than an agent
/// has; past it all are released and made again as needed.
const TOPICS_KEPT: usize = 1024;

/// `RD_KAFKA_PARTITION_UA` (a C macro, not in the bindings): let the
/// partitioner choose, by the key.
const PARTITION_UA: i32 = -1;

pub struct KafkaSink {
    /// Before `producer`: released before the client is destroyed.
    topics: HashMap<String, TopicHandle>,
    /// The topic of the last send and its handle (one of `topics`).
    last_topic: Option<(String, Rkt)>,
    /// Before `producer`: wake-ups are turned off before the client goes.
    wake: Option<super::wake::Wake>,
    producer: BaseProducer<Ctx>,
    /// Topics get the caching partitioner (see `partition`): true unless
    /// the operator chose a partitioner.
    cached_partitioner: bool,
    slab: Slab,
    /// The reports `poll` takes from the context (kept to reuse its room).
    reports: Vec<(usize, Result<(), DeliveryError>)>,
    errors: Receiver<ClientError>,
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
/// `acks=0` is refused: the broker then acknowledges nothing, and every
/// record would leave the spool as delivered whether the broker took it
/// or not. Settings that weaken delivery otherwise are warned about.
pub fn validate(props: &BTreeMap<String, String>) -> Result<(), String> {
    let is = |k: &str, v: &str| props.get(k).is_some_and(|x| x.trim() == v);
    if is("acks", "0") {
        return Err("kafka.acks=0 is refused: Kafka then acknowledges nothing, so records would leave the spool as delivered even when no broker took them (at least once needs acks=all, the default)".into());
    }
    client_config(props)
        .create::<BaseProducer>()
        .map(|_| ())
        .map_err(|e| format!("invalid Kafka configuration (kafka.* parameters): {e}"))?;
    if is("acks", "1") {
        crate::log::warn("kafka.acks=1: a partition leader that fails after acknowledging a record and before its followers copied it loses that record, and nothing tells mesos-gelf (at least once needs acks=all, the default)");
    }
    if is("enable.idempotence", "false") {
        crate::log::warn("kafka.enable.idempotence=false: records sent again after an error may reach Kafka twice or out of order");
    }
    Ok(())
}

impl KafkaSink {
    /// Builds the producer. Unknown or invalid properties fail here, with
    /// librdkafka's message naming the property.
    pub fn new(props: &BTreeMap<String, String>) -> Result<KafkaSink, String> {
        props
            .get("bootstrap.servers")
            .ok_or("parameter `kafka.bootstrap.servers` is required for the Kafka sink")?;
        let (etx, erx) = unbounded();
        let producer: BaseProducer<Ctx> = client_config(props)
            .create_with_context(Ctx {
                deliveries: Mutex::new(Vec::new()),
                errors: etx,
                fenced: Mutex::new(None),
            })
            .map_err(|e| format!("invalid Kafka configuration: {e}"))?;
        // SAFETY: a live client, which the sink drops after `wake`.
        let wake = unsafe { super::wake::Wake::new(producer.client().native_ptr()) };
        Ok(KafkaSink {
            topics: HashMap::new(),
            last_topic: None,
            wake,
            producer,
            cached_partitioner: !props.contains_key("partitioner"),
            slab: Slab::default(),
            reports: Vec::new(),
            errors: erx,
        })
    }
}

impl KafkaSink {
    /// The handle of `topic`, made on its first use.
    fn topic(&mut self, topic: &str) -> Result<Rkt, SendError> {
        // Nearly every send names the topic of the send before it.
        if let Some((name, rkt)) = &self.last_topic {
            if name == topic {
                return Ok(*rkt);
            }
        }
        if let Some(h) = self.topics.get(topic) {
            self.last_topic = Some((topic.to_string(), h.0));
            return Ok(h.0);
        }
        if self.topics.len() >= TOPICS_KEPT {
            self.last_topic = None;
            self.topics.clear();
        }
        let name = CString::new(topic)
            .map_err(|_| SendError::Other(format!("topic name {topic:?} holds a NUL byte")))?;
        let rk = self.producer.client().native_ptr();
        // NULL conf = the client's default topic settings, as a send by
        // name uses; `partition::topic_conf` is those plus its partitioner.
        let conf = if self.cached_partitioner {
            // SAFETY: a live client.
            unsafe { super::partition::topic_conf(rk) }
        } else {
            std::ptr::null_mut()
        };
        // SAFETY: a live client, a C string, and a topic configuration
        // that librdkafka takes over (or NULL).
        let rkt = unsafe { rdsys::rd_kafka_topic_new(rk, name.as_ptr(), conf) };
        if rkt.is_null() {
            return Err(SendError::Other(format!(
                "librdkafka refused a handle for topic {topic:?}"
            )));
        }
        let rkt = Rkt(rkt);
        self.topics.insert(topic.to_string(), TopicHandle(rkt));
        self.last_topic = Some((topic.to_string(), rkt));
        Ok(rkt)
    }
}

impl Sink for KafkaSink {
    fn send(
        &mut self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        timestamp_ms: i64,
        ticket: Ticket,
    ) -> Result<(), SendError> {
        let rkt = self.topic(topic)?;
        let slot = self.slab.put(ticket);
        // SAFETY: the client and the topic handle are alive; key and
        // payload are copied (F_COPY) before this returns; the opaque is
        // the slot number, which the delivery report gives back as the
        // context's `usize` DeliveryOpaque (rust-rdkafka's own send passes
        // its opaque the same way).
        let err = unsafe {
            rdsys::rd_kafka_producev(
                self.producer.client().native_ptr(),
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_RKT,
                rkt.0,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_PARTITION,
                PARTITION_UA,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_MSGFLAGS,
                rdsys::RD_KAFKA_MSG_F_COPY,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE,
                payload.as_ptr() as *mut c_void,
                payload.len(),
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_KEY,
                key.as_ptr() as *const c_void,
                key.len(),
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_TIMESTAMP,
                timestamp_ms,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_OPAQUE,
                slot as *mut c_void,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_END,
            )
        };
        if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Ok(());
        }
        self.slab.take(slot);
        match RDKafkaErrorCode::from(err) {
            RDKafkaErrorCode::QueueFull => Err(SendError::Full),
            RDKafkaErrorCode::MessageSizeTooLarge => Err(SendError::TooLarge(format!(
                "{} bytes exceed message.max.bytes",
                payload.len()
            ))),
            code => {
                let e = KafkaError::MessageProduction(code).to_string();
                if self.producer.client().fatal_error().is_some() {
                    Err(SendError::Fatal(e))
                } else {
                    Err(SendError::Other(e))
                }
            }
        }
    }

    fn poll(&mut self, timeout: Duration, out: &mut Vec<Delivery>) {
        self.producer.poll(timeout);
        // rust-rdkafka serves one event (one produce response's reports)
        // per poll; take what else is there, so a wake-up is not needed
        // for what was already queued.
        for _ in 0..64 {
            if !self.wake.as_ref().is_some_and(|w| w.pending()) {
                break;
            }
            self.producer.poll(Duration::ZERO);
        }
        if let Ok(mut d) = self.producer.context().deliveries.lock() {
            std::mem::swap(&mut *d, &mut self.reports);
        }
        let slab = &mut self.slab;
        out.extend(self.reports.drain(..).filter_map(|(slot, result)| {
            // Every slot librdkafka reports was put there by `send`.
            slab.take(slot).map(|ticket| Delivery { ticket, result })
        }));
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        self.wake.as_ref().map(|w| w.fd())
    }

    fn fatal(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code:?}: {reason}"))
            .or_else(|| {
                let f = self.producer.context().fenced.lock();
                f.ok().and_then(|f| f.clone())
            })
    }

    fn take_errors(&mut self) -> Vec<ClientError> {
        self.errors.try_iter().collect()
    }

    /// librdkafka spins its broker thread (poll with a zero timeout, a
    /// whole core) while a partition has as many requests in flight as
    /// idempotence allows (5) and more messages queued past `linger.ms`:
    /// it computes a wake-up for the queued batch that it may not send.
    /// Purging the queue (never what is in flight, which would leave a
    /// gap in the sequence) ends that; librdkafka advances its sequence
    /// base over the purged messages itself.
    fn take_back_queued(&mut self) {
        self.producer
            .purge(rdkafka::producer::PurgeConfig::default().queue());
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
