//! Where the forwarder writes GELF: TCP (each message followed by a NUL
//! byte, GELF's TCP framing), TLS (the same over TLS) or UDP (GELF chunking
//! above the datagram size, optional gzip).

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslStream, SslVerifyMode};
use std::io::{BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A parsed `--to` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp(String),
    Tls(String),
    Udp(String),
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| {
            format!("--to `{s}`: expected tcp://HOST:PORT, tls://HOST:PORT or udp://HOST:PORT")
        })?;
        if rest
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(format!("--to `{s}`: missing or bad port"));
        }
        match scheme {
            "tcp" => Ok(Target::Tcp(rest.into())),
            "tls" => Ok(Target::Tls(rest.into())),
            "udp" => Ok(Target::Udp(rest.into())),
            _ => Err(format!(
                "--to `{s}`: unknown scheme `{scheme}` (tcp, tls or udp)"
            )),
        }
    }
}

/// TLS options for `tls://`.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// Skip certificate verification (testing only).
    pub insecure: bool,
}

/// UDP options.
#[derive(Debug, Clone)]
pub struct UdpOptions {
    pub chunk_size: usize,
    pub gzip: bool,
}

/// GELF's chunk header: magic (2), message id (8), sequence (1), count (1).
const CHUNK_HEADER: usize = 12;
/// GELF allows at most 128 chunks per message.
pub const MAX_CHUNKS: usize = 128;

/// Splits one message into GELF UDP chunks (or returns it whole if it fits).
pub fn chunks(payload: &[u8], chunk_size: usize, id: [u8; 8]) -> Result<Vec<Vec<u8>>, String> {
    if payload.len() <= chunk_size {
        return Ok(vec![payload.to_vec()]);
    }
    let body = chunk_size - CHUNK_HEADER;
    let n = payload.len().div_ceil(body);
    if n > MAX_CHUNKS {
        return Err(format!(
            "{} bytes need {n} UDP chunks (GELF allows {MAX_CHUNKS})",
            payload.len()
        ));
    }
    Ok(payload
        .chunks(body)
        .enumerate()
        .map(|(i, part)| {
            let mut c = Vec::with_capacity(CHUNK_HEADER + part.len());
            c.extend_from_slice(&[0x1e, 0x0f]);
            c.extend_from_slice(&id);
            c.push(i as u8);
            c.push(n as u8);
            c.extend_from_slice(part);
            c
        })
        .collect())
}

/// The TCP socket under the buffers, counting the bytes handed to the kernel
/// (after TLS, so they compare with what the peer's TCP acknowledges).
#[derive(Debug)]
pub struct Counted {
    stream: TcpStream,
    written: u64,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.stream.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

impl Counted {
    /// Bytes the peer's TCP has acknowledged: those written less those still
    /// in the kernel's send queue (SIOCOUTQ counts sent-but-unacknowledged
    /// and unsent bytes).
    fn acked(&self) -> Option<u64> {
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int for a TCP socket.
        let r = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        (r == 0).then(|| self.written.saturating_sub(queued.max(0) as u64))
    }
}

enum Conn {
    Tcp(BufWriter<Counted>),
    Tls(Box<BufWriter<SslStream<Counted>>>),
    Udp(UdpSocket),
}

/// A connected destination.
pub struct Output {
    conn: Conn,
    udp: UdpOptions,
    next_id: u64,
}

fn tcp_connect(addr: &str) -> Result<TcpStream, String> {
    let mut last = format!("cannot resolve {addr}");
    for a in addr.to_socket_addrs().map_err(|e| format!("{addr}: {e}"))? {
        match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
                return Ok(s);
            }
            Err(e) => last = format!("connect {addr}: {e}"),
        }
    }
    Err(last)
}

impl Output {
    pub fn connect(target: &Target, tls: &TlsOptions, udp: &UdpOptions) -> Result<Output, String> {
        let conn = match target {
            Target::Tcp(a) => Conn::Tcp(BufWriter::with_capacity(
                256 * 1024,
                Counted {
                    stream: tcp_connect(a)?,
                    written: 0,
                },
            )),
            Target::Tls(a) => {
                let mut b = SslConnector::builder(SslMethod::tls()).map_err(|e| e.to_string())?;
                if let Some(ca) = &tls.ca_file {
                    b.set_ca_file(ca).map_err(|e| format!("TLS CA {ca}: {e}"))?;
                }
                if let Some(c) = &tls.cert_file {
                    b.set_certificate_chain_file(c)
                        .map_err(|e| format!("TLS certificate {c}: {e}"))?;
                }
                if let Some(k) = &tls.key_file {
                    b.set_private_key_file(k, SslFiletype::PEM)
                        .map_err(|e| format!("TLS key {k}: {e}"))?;
                }
                if tls.insecure {
                    b.set_verify(SslVerifyMode::NONE);
                }
                let host = a.rsplit_once(':').map(|(h, _)| h).unwrap_or(a);
                let s = b
                    .build()
                    .connect(
                        host,
                        Counted {
                            stream: tcp_connect(a)?,
                            written: 0,
                        },
                    )
                    .map_err(|e| format!("TLS handshake with {a}: {e}"))?;
                Conn::Tls(Box::new(BufWriter::with_capacity(256 * 1024, s)))
            }
            Target::Udp(a) => {
                let sock = UdpSocket::bind(if a.starts_with('[') {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                })
                .map_err(|e| format!("udp socket: {e}"))?;
                sock.connect(a).map_err(|e| format!("udp {a}: {e}"))?;
                Conn::Udp(sock)
            }
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        Ok(Output {
            conn,
            udp: udp.clone(),
            next_id: seed ^ (std::process::id() as u64) << 32,
        })
    }

    /// Queues one message. Err means the connection is gone.
    /// For UDP, Ok(false) means the message cannot be sent (too many chunks).
    pub fn send(&mut self, msg: &[u8]) -> Result<bool, String> {
        match &mut self.conn {
            Conn::Tcp(w) => w
                .write_all(msg)
                .and_then(|_| w.write_all(&[0]))
                .map(|_| true)
                .map_err(|e| e.to_string()),
            Conn::Tls(w) => w
                .write_all(msg)
                .and_then(|_| w.write_all(&[0]))
                .map(|_| true)
                .map_err(|e| e.to_string()),
            Conn::Udp(s) => {
                let data = if self.udp.gzip {
                    let mut z =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    z.write_all(msg).map_err(|e| e.to_string())?;
                    z.finish().map_err(|e| e.to_string())?
                } else {
                    msg.to_vec()
                };
                self.next_id = self
                    .next_id
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let parts = match chunks(&data, self.udp.chunk_size, self.next_id.to_be_bytes()) {
                    Ok(p) => p,
                    Err(_) => return Ok(false),
                };
                for p in parts {
                    s.send(&p).map_err(|e| e.to_string())?;
                }
                Ok(true)
            }
        }
    }

    /// Pushes everything queued to the kernel. That is not delivery: see
    /// `acked` and `close_read_by_peer`, and `tail` for what is committed.
    pub fn flush(&mut self) -> Result<(), String> {
        match &mut self.conn {
            Conn::Tcp(w) => w.flush().map_err(|e| e.to_string()),
            Conn::Tls(w) => w.flush().map_err(|e| e.to_string()),
            Conn::Udp(_) => Ok(()),
        }
    }

    fn counted(&self) -> Option<&Counted> {
        match &self.conn {
            Conn::Tcp(w) => Some(w.get_ref()),
            Conn::Tls(w) => Some(w.get_ref().get_ref()),
            Conn::Udp(_) => None,
        }
    }

    /// Bytes handed to the kernel so far on this connection (after
    /// `flush`, every queued message is in it). None for UDP.
    pub fn written(&self) -> Option<u64> {
        self.counted().map(|c| c.written)
    }

    /// Bytes of this connection the peer's TCP has acknowledged. That is
    /// not proof that Graylog read them (they may wait in its receive
    /// buffer), only that they left ours. None for UDP.
    pub fn acked(&self) -> Option<u64> {
        self.counted().and_then(Counted::acked)
    }

    fn stream(&self) -> Option<&TcpStream> {
        self.counted().map(|c| &c.stream)
    }

    /// Whether Graylog has closed or reset the connection, looked at
    /// without waiting: writes alone would not notice while there is
    /// nothing to send. Some(why) when it has. GELF inputs never send, so
    /// any byte is ignored.
    pub fn peer_gone(&self) -> Option<String> {
        let stream = self.stream()?;
        let mut b = [0u8; 1];
        // SAFETY: a one-byte buffer; MSG_PEEK | MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                b.as_mut_ptr() as *mut libc::c_void,
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => Some("Graylog closed the connection".into()),
            n if n > 0 => None,
            _ => {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => None,
                    _ => Some(e.to_string()),
                }
            }
        }
    }

    /// Ends the connection so that its end proves what was read: flushes,
    /// closes our direction (TLS close_notify, then FIN) and waits up to
    /// `limit` (or `stop`) for Graylog to close its side. It sees our FIN
    /// only after reading every byte before it, and a Linux peer that
    /// closes with bytes unread resets instead; so its FIN after ours
    /// means it read everything sent. A peer that had closed its side
    /// first proves nothing. Never proof for UDP.
    pub fn close_read_by_peer(mut self, limit: Duration, stop: &AtomicBool) -> Proof {
        if let Err(e) = self.flush() {
            return Proof::Failed(e);
        }
        if let Some(why) = self.peer_gone() {
            return Proof::Failed(format!("{why} before ours was closed"));
        }
        let stream = match &mut self.conn {
            Conn::Tcp(w) => &mut w.get_mut().stream,
            Conn::Tls(w) => {
                let _ = w.get_mut().shutdown();
                &mut w.get_mut().get_mut().stream
            }
            Conn::Udp(_) => return Proof::Failed("UDP has no acknowledgement".into()),
        };
        if let Err(e) = stream.shutdown(Shutdown::Write) {
            return Proof::Failed(e.to_string());
        }
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        while t0.elapsed() < limit && !stop.load(Ordering::Relaxed) {
            match stream.read(&mut buf) {
                Ok(0) => return Proof::Read,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted
                            | std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Proof::Failed(e.to_string()),
            }
        }
        Proof::NoAnswer
    }
}

/// What the end of a connection showed (`Output::close_read_by_peer`).
#[derive(Debug, PartialEq, Eq)]
pub enum Proof {
    /// Graylog closed after our FIN: it read everything sent.
    Read,
    /// It did not close within the limit (still reading, or stalled).
    NoAnswer,
    /// The connection failed (reset, closed first): nothing is shown.
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            Target::parse("tcp://g:12201").unwrap(),
            Target::Tcp("g:12201".into())
        );
        assert_eq!(
            Target::parse("udp://[::1]:12201").unwrap(),
            Target::Udp("[::1]:12201".into())
        );
        assert!(Target::parse("http://g:1").is_err());
        assert!(Target::parse("tcp://g").is_err());
    }

    #[test]
    fn chunking_follows_gelf() {
        let msg = vec![7u8; 5000];
        let c = chunks(&msg, 1420, *b"abcdefgh").unwrap();
        assert_eq!(c.len(), 4);
        for (i, ch) in c.iter().enumerate() {
            assert_eq!(&ch[..2], &[0x1e, 0x0f]);
            assert_eq!(&ch[2..10], b"abcdefgh");
            assert_eq!(ch[10] as usize, i);
            assert_eq!(ch[11], 4);
            assert!(ch.len() <= 1420);
        }
        let joined: Vec<u8> = c.iter().flat_map(|ch| ch[12..].to_vec()).collect();
        assert_eq!(joined, msg);
        assert!(chunks(&vec![0u8; 200_000], 1420, [0; 8]).is_err());
        assert_eq!(
            chunks(b"small", 1420, [0; 8]).unwrap(),
            vec![b"small".to_vec()]
        );
    }
}
