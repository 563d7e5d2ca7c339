//! `mesos-gelf forward`: Kafka topic → Graylog (GELF TCP/TLS/UDP).

use clap::Args;
use mesos_gelf_logger::config::split_kv;
use mesos_gelf_logger::forward::output::{Target, TlsOptions, UdpOptions};
use mesos_gelf_logger::forward::{self, ForwardOptions, InvalidPolicy};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Args)]
pub struct ForwardArgs {
    /// `kafka.<property>=value` (consumer; kafka.bootstrap.servers and
    /// kafka.group.id are required) and `topic=NAME` (default application_log).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Graylog GELF input: tcp://HOST:PORT, tls://HOST:PORT or udp://HOST:PORT.
    #[arg(long)]
    to: String,
    /// What to do with messages that are not valid GELF.
    #[arg(long, value_parser = ["skip", "wrap"], default_value = "skip")]
    invalid: String,
    /// CA file to verify the Graylog TLS certificate.
    #[arg(long)]
    tls_ca: Option<String>,
    /// Client certificate (PEM) for TLS.
    #[arg(long)]
    tls_cert: Option<String>,
    /// Client key (PEM) for TLS.
    #[arg(long)]
    tls_key: Option<String>,
    /// Do not verify the server certificate (testing only).
    #[arg(long)]
    tls_insecure: bool,
    /// Largest UDP datagram; longer messages are sent as GELF chunks.
    #[arg(long, default_value_t = 1420)]
    udp_chunk_size: usize,
    /// Gzip UDP messages.
    #[arg(long)]
    gzip: bool,
    /// Commit offsets after this many messages (or every --commit-interval-ms).
    #[arg(long, default_value_t = 1000)]
    commit_every: usize,
    #[arg(long, default_value_t = 1000)]
    commit_interval_ms: u64,
    /// GELF TCP has no acknowledgement: a message written is kept, and sent
    /// again after any connection loss, until Graylog's TCP acknowledged
    /// this many bytes after it (more than its receive buffer holds
    /// unread: 2 MiB for Graylog's default recv_buffer_size of 1 MiB) ...
    #[arg(long, default_value_t = 8 << 20)]
    resend_window_bytes: u64,
    /// ... or Graylog closed the connection after the forwarder's close,
    /// which the forwarder asks for (and then reconnects) once the oldest
    /// message kept was sent this many seconds ago.
    #[arg(long, default_value_t = 30)]
    confirm_after_s: u64,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 10)]
    stats_interval_s: u64,
}

pub fn forward(a: ForwardArgs) -> Result<i32, String> {
    let mut kafka = BTreeMap::new();
    let mut topic = "application_log".to_string();
    for s in &a.set {
        let (k, v) = split_kv(s)?;
        match k.strip_prefix("kafka.") {
            Some(p) if !p.is_empty() => {
                kafka.insert(p.to_string(), v);
            }
            _ if k == "topic" => topic = v,
            _ => {
                return Err(format!(
                    "parameter `{k}`: forward takes kafka.<property> and topic"
                ))
            }
        }
    }
    if !kafka.contains_key("bootstrap.servers") {
        return Err("parameter `kafka.bootstrap.servers` is required".into());
    }
    if !(64..=65000).contains(&a.udp_chunk_size) {
        return Err("--udp-chunk-size must be 64 to 65000".into());
    }
    let opts = ForwardOptions {
        kafka,
        topic,
        target: Target::parse(&a.to)?,
        tls: TlsOptions {
            ca_file: a.tls_ca,
            cert_file: a.tls_cert,
            key_file: a.tls_key,
            insecure: a.tls_insecure,
        },
        udp: UdpOptions {
            chunk_size: a.udp_chunk_size,
            gzip: a.gzip,
        },
        invalid: if a.invalid == "wrap" {
            InvalidPolicy::Wrap
        } else {
            InvalidPolicy::Skip
        },
        commit_every: a.commit_every.max(1),
        commit_interval: Duration::from_millis(a.commit_interval_ms),
        stats_interval: Duration::from_secs(a.stats_interval_s.max(1)),
        host: mesos_gelf_logger::config::hostname(),
        hold_bytes: a.resend_window_bytes,
        confirm_after: Duration::from_secs(a.confirm_after_s.max(1)),
    };
    forward::run(&opts, super::stop_on_signals())?;
    Ok(0)
}
