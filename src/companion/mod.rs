//! The companion: one process per container that owns the read ends of the
//! container's stdout and stderr pipes until both reach EOF.
//!
//! It is started by `prepare()` (agent module or `mesos-gelf run`) in its own
//! session, detached from the agent (double fork), so it keeps draining the
//! pipes when the agent restarts or dies. For each chunk it reads it:
//! 1. appends the raw bytes to `<sandbox>/stdout|stderr` ([`sandbox`]);
//! 2. cuts them into records ([`lines`]) and appends those to the spool.
//!
//! It never stops reading because of anything downstream: the spool drops
//! its oldest segment at the cap, write errors are counted, and every loss is
//! reported by a notice record in the stream itself. It ignores SIGTERM,
//! SIGINT, SIGHUP and SIGPIPE (the agent's process group dying must not cut
//! a container's logs) and exits only at EOF on both pipes.

pub mod lines;
pub mod rate;
pub mod sandbox;

use crate::spool::notice::{self, Loss, LossReason};
use crate::spool::record::{now_micros, Record, Stream};
use crate::spool::{ContainerMeta, SpoolWriter};
use lines::Assembler;
use sandbox::SandboxFile;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

/// Where the companion reads and writes.
#[derive(Debug, Clone)]
pub struct CompanionArgs {
    /// The container's spool directory (None: unspooled, see `unspooled`).
    pub spool: Option<PathBuf>,
    /// Set when prepare() could not make the spool: sandbox files only,
    /// with these settings and this user.
    pub unspooled: Option<Unspooled>,
    pub sandbox: PathBuf,
    pub stdout_fd: RawFd,
    pub stderr_fd: RawFd,
    /// `cgroup.procs` file to join (systemd slice), if any.
    pub cgroup_procs: Option<PathBuf>,
}

/// What an unspooled companion needs that `meta.json` would have said.
#[derive(Debug, Clone)]
pub struct Unspooled {
    pub sandbox_max_size: u64,
    pub sandbox_max_files: u32,
    pub run_as: Option<crate::privileges::RunAs>,
}

impl Unspooled {
    /// As a command-line argument: `size:files:user:uid:gid` (or `-` for
    /// the user part). User names cannot hold `:`.
    pub fn to_arg(&self) -> String {
        let who = match &self.run_as {
            Some(r) => format!("{}:{}:{}", r.user, r.uid, r.gid),
            None => "-".into(),
        };
        format!("{}:{}:{who}", self.sandbox_max_size, self.sandbox_max_files)
    }

    pub fn from_arg(s: &str) -> Result<Unspooled, String> {
        let p: Vec<&str> = s.split(':').collect();
        let bad = || format!("`{s}` is not size:files:user:uid:gid");
        let (size, files) = (p.first().ok_or_else(bad)?, p.get(1).ok_or_else(bad)?);
        let run_as = match p.get(2..) {
            Some(["-"]) => None,
            Some([user, uid, gid]) => Some(crate::privileges::RunAs {
                user: user.to_string(),
                uid: uid.parse().map_err(|_| bad())?,
                gid: gid.parse().map_err(|_| bad())?,
            }),
            _ => return Err(bad()),
        };
        Ok(Unspooled {
            sandbox_max_size: size.parse().map_err(|_| bad())?,
            sandbox_max_files: files.parse().map_err(|_| bad())?,
            run_as,
        })
    }
}

struct Input {
    fd: RawFd,
    open: bool,
    sandbox: SandboxFile,
    asm: Assembler,
}

/// The companion's `oom_score_adj` when started by root (the range is
/// -1000..1000; tasks start at 0, so under memory pressure the kernel picks
/// a task first).
pub const OOM_SCORE_ADJ: &str = "-500";

/// Ignores the signals an agent's death or a terminal would send us.
pub fn ignore_signals() {
    for s in [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGPIPE,
        libc::SIGQUIT,
    ] {
        // SAFETY: installing SIG_IGN is always sound.
        unsafe { libc::signal(s, libc::SIG_IGN) };
    }
}

/// Closes every fd above 2 except `keep` (a companion holds no write end and
/// nothing of the agent's).
pub fn close_other_fds(keep: &[RawFd]) {
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(d) => d
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => (3..1024).collect(),
    };
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing an fd number; the read_dir handle is gone.
            unsafe { libc::close(fd) };
        }
    }
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd we were handed.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

fn join_cgroup(procs: &Path) {
    let _ = std::fs::write(procs, format!("{}\n", std::process::id()));
}

/// Frames are written before the queue would pass this much (and after
/// every read), so the spool writer's buffer never grows past it: a burst
/// costs a companion no more memory than a quiet stream.
const FLUSH_BYTES: usize = 64 * 1024;

/// A read is cut into pieces of this size for the line assembler, and each
/// piece's records are handed over before the next: a 64 KB read of empty
/// lines would otherwise be 65,536 records (3 MB) in hand at once.
const FEED_BYTES: usize = 4 * 1024;

/// Records in hand between two hand-overs (at most one per byte of a
/// piece); the vector is shrunk back to this after a larger batch.
const RECORDS_KEPT: usize = 1024;

/// Moves finished records into the spool writer's buffer (written at the
/// next flush, which also happens once the buffer is large); records over
/// the rate limit are recorded as losses instead.
fn hand_over(
    records: &mut Vec<Record>,
    writer: Option<&mut SpoolWriter>,
    limit: &mut Option<rate::RateLimit>,
    pool: &mut Assembler,
) {
    match writer {
        Some(w) => {
            for r in records.drain(..) {
                if let Some(l) = limit.as_mut() {
                    if !l.admit(r.payload.len(), r.ts_micros) {
                        w.record_loss(Loss {
                            reason: LossReason::RateLimit,
                            stream: Some(r.stream),
                            records: 1,
                            bytes: r.payload.len() as u64,
                            seqs: vec![(r.seq, r.seq)],
                        });
                        pool.recycle(r.payload);
                        continue;
                    }
                }
                if w.pending_bytes() > 0
                    && w.pending_bytes() + Record::frame_len(r.payload.len()) > FLUSH_BYTES
                {
                    w.flush();
                }
                w.append(&r);
                pool.recycle(r.payload);
            }
        }
        None => records.clear(),
    }
    if records.capacity() > RECORDS_KEPT {
        records.shrink_to(RECORDS_KEPT);
    }
}

/// The segment size: the container's, and at most a sixteenth of the room
/// on the spool filesystem above `spool_min_free` (see
/// [`crate::config::SEGMENTS_PER_BUDGET`]).
fn segment_size(settings: &crate::config::ContainerSettings, data: &Path) -> u64 {
    let s = settings.effective_segment_size();
    match crate::spool::writer::fs_space(data) {
        Some((_, size)) if size > 0 => {
            let room = size.saturating_sub(settings.spool_min_free.bytes(size));
            s.min((room / crate::config::SEGMENTS_PER_BUDGET).max(crate::config::MIN_SEGMENT))
        }
        _ => s,
    }
}

/// Runs until both pipes reach EOF. Never returns an error: whatever fails
/// downstream is counted and reported, and the pipes are drained regardless.
pub fn run(args: &CompanionArgs) {
    if let Some(p) = &args.cgroup_procs {
        join_cgroup(p);
    }
    let meta = match &args.spool {
        Some(s) => ContainerMeta::load(s),
        None => Err("no spool".into()),
    };
    let (settings, mut meta_error) = match (&meta, &args.unspooled) {
        (Ok(m), _) => (m.settings.clone(), None),
        // Started by hand with neither (`--sandbox` alone): the sandbox
        // files only. There is no spool to write, and the working
        // directory is not one (it once got segments and a `done`).
        (Err(_), None) if args.spool.is_none() => {
            eprintln!(
                "mesos-gelf companion: no --spool given: sandbox files only, nothing shipped"
            );
            (
                crate::config::ContainerSettings {
                    disable: true,
                    ..Default::default()
                },
                None,
            )
        }
        (Err(_), Some(u)) => (
            crate::config::ContainerSettings {
                disable: true,
                sandbox_max_size: u.sandbox_max_size,
                sandbox_max_files: u.sandbox_max_files,
                ..Default::default()
            },
            None,
        ),
        (Err(e), None) => (
            crate::config::ContainerSettings::default(),
            Some(format!(
                "started without its metadata ({e}); using defaults"
            )),
        ),
    };
    // The spool's `data/` is reached through the working directory only,
    // entered while we may still be root: `<spool>/<key>/` is root's 0700,
    // so after the drop neither this process nor the task (same user) can
    // reach `data/` by any path. The task cannot fill, read or plant
    // anything in its spool; we are not dumpable after setuid, so it cannot
    // borrow our cwd through /proc either. The sandbox path is made
    // absolute first, as the working directory changes.
    let sandbox = std::path::absolute(&args.sandbox).unwrap_or_else(|_| args.sandbox.clone());
    let data = match &args.spool {
        Some(s) => match std::env::set_current_dir(crate::spool::data_dir(s)) {
            Ok(()) => PathBuf::from("."),
            Err(_) => crate::spool::data_dir(s),
        },
        None => PathBuf::from("."),
    };
    // A poor target for the OOM killer (while we may still lower it): its
    // death would cost the task its logs, and then SIGPIPE.
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let _ = std::fs::write("/proc/self/oom_score_adj", OOM_SCORE_ADJ);
    }
    // Before anything in the sandbox or the spool is opened.
    let run_as = match &meta {
        Ok(m) => m.run_as.clone(),
        Err(_) => args.unspooled.as_ref().and_then(|u| u.run_as.clone()),
    };
    if let Some(r) = run_as.as_ref() {
        if let Err(e) = crate::privileges::drop_to(r) {
            meta_error = Some(format!(
                "cannot run as {} ({e}), running as the agent's user",
                r.user
            ));
        }
    }
    // A record never takes more than a quarter of the spool cap, so the cap
    // can always keep the newest records (longer lines come in parts).
    let record_max = settings.record_limit();
    let multiline = settings.multiline_start.as_deref().and_then(|re| {
        regex::bytes::Regex::new(re).ok().map(|r| {
            (
                r,
                settings.multiline_max_bytes.min(record_max),
                settings.multiline_timeout_ms,
            )
        })
    });
    let mut writer = if settings.disable {
        None
    } else {
        SpoolWriter::open(
            &data,
            segment_size(&settings, &data),
            settings.spool_max_size,
        )
        .ok()
        .map(|mut w| {
            w.set_min_free(settings.spool_min_free);
            w
        })
    };
    let mut notice_seq = 0u64;
    let mut limit = rate::RateLimit::new(&settings, now_micros());
    let mut inputs: Vec<Input> = [
        (args.stdout_fd, Stream::Stdout, "stdout"),
        (args.stderr_fd, Stream::Stderr, "stderr"),
    ]
    .into_iter()
    .map(|(fd, stream, name)| {
        set_nonblocking(fd);
        Input {
            fd,
            open: fd >= 0,
            sandbox: SandboxFile::new(
                &sandbox,
                name,
                settings.sandbox_max_size,
                settings.sandbox_max_files,
            ),
            asm: Assembler::new(
                stream,
                settings.max_line_bytes.min(record_max),
                settings.idle_flush_ms,
                multiline.clone(),
            ),
        }
    })
    .collect();
    if let (Some(w), Some(e)) = (writer.as_mut(), meta_error) {
        notice_seq += 1;
        w.append(&notice::record(
            notice_seq,
            format!("mesos-gelf companion: {e}"),
            None,
            &[],
        ));
    }
    let mut sandbox_reported = [0u64; 2];
    let mut buf = vec![0u8; 64 * 1024];
    let mut records: Vec<Record> = Vec::with_capacity(RECORDS_KEPT);
    while inputs.iter().any(|i| i.open) {
        let now = now_micros();
        let deadline = inputs.iter().filter_map(|i| i.asm.deadline()).min();
        let lines_due_ms = deadline.map(|d| (d - now).max(0) / 1000 + 1);
        let notice_due_ms = writer
            .as_ref()
            .and_then(|w| w.notice_due_in())
            .map(|d| d.as_millis() as i64 + 1);
        let timeout_ms: i32 = match lines_due_ms.into_iter().chain(notice_due_ms).min() {
            Some(ms) => ms.min(60_000) as i32,
            None => -1,
        };
        let mut pfds: Vec<libc::pollfd> = inputs
            .iter()
            .map(|i| libc::pollfd {
                fd: if i.open { i.fd } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: pfds is a valid array of pollfd.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            continue;
        }
        for (i, p) in inputs.iter_mut().zip(&pfds) {
            if !i.open || p.revents == 0 {
                continue;
            }
            // Read what is there now, bounded so one stream cannot starve the other.
            for _ in 0..16 {
                // SAFETY: buf is valid for its length.
                let n =
                    unsafe { libc::read(i.fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
                if n > 0 {
                    let chunk = &buf[..n as usize];
                    i.sandbox.write(chunk);
                    let ts = now_micros();
                    for piece in chunk.chunks(FEED_BYTES) {
                        i.asm.feed(piece, ts, &mut records);
                        hand_over(&mut records, writer.as_mut(), &mut limit, &mut i.asm);
                    }
                    if (n as usize) < buf.len() {
                        break;
                    }
                } else if n == 0 {
                    i.open = false;
                    i.asm.finish(&mut records);
                    // SAFETY: closing our own read end.
                    unsafe { libc::close(i.fd) };
                    break;
                } else {
                    let e = std::io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EAGAIN) | Some(libc::EINTR) => {}
                        _ => {
                            i.open = false;
                            i.asm.finish(&mut records);
                        }
                    }
                    break;
                }
            }
        }
        let now = now_micros();
        for i in inputs.iter_mut() {
            i.asm.tick(now, &mut records);
        }
        hand_over(
            &mut records,
            writer.as_mut(),
            &mut limit,
            &mut inputs[0].asm,
        );
        if let Some(w) = writer.as_mut() {
            for (i, input) in inputs.iter().enumerate() {
                let lost = input.sandbox.lost_bytes;
                if lost > sandbox_reported[i] {
                    w.sandbox_error = input.sandbox.last_error.clone();
                    w.record_loss(Loss {
                        reason: LossReason::SandboxWrite,
                        stream: Some(input.asm.stream()),
                        records: 0,
                        bytes: lost - sandbox_reported[i],
                        seqs: Vec::new(),
                    });
                    sandbox_reported[i] = lost;
                }
            }
            w.flush();
            let notices = w.take_loss_notices(&mut notice_seq, false);
            if !notices.is_empty() {
                for n in &notices {
                    w.append(n);
                }
                w.flush();
            }
        }
    }
    // Losses are reported in the stream (notice records); nothing else
    // reads a companion's exit.
    match writer {
        Some(w) => {
            let last = [inputs[0].asm.seq(), inputs[1].asm.seq()];
            let _ = w.finish(&mut notice_seq, last);
        }
        None if args.spool.is_some() => {
            let _ = crate::spool::mark_done(&data);
        }
        None => {}
    }
}
