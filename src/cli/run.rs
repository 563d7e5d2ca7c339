//! `mesos-gelf run`: one container on this machine, through the agent's path.
//!
//! It behaves like a wrapper a shell user expects:
//! - exit status: the command's (128+N when a signal N killed it), once
//!   every line is delivered;
//! - SIGINT, SIGTERM, SIGHUP are forwarded to the command (except a
//!   terminal's own, which already reached the command's process group);
//!   `run` then waits for the command, delivers what it can within
//!   [`GRACE`], and if records remain says where the spool is and which
//!   `publish` command ships it (exit 128+signal). A second signal stops
//!   waiting at once;
//! - a closed standard output (`run ... | head -1`) ends it with a message,
//!   SIGTERM to the command and exit 141 (as a shell reports SIGPIPE);
//! - a permanent Kafka error (TLS, authentication, authorization, invalid
//!   topic) for `--give-up-after` seconds: the command keeps running (a
//!   logger never kills a task for its own sake), its lines stay in the
//!   spool, and `run` exits 3 after the command with the `publish` command;
//! - when the command has exited but something it started keeps its stdout
//!   or stderr open, `run` says once which process it is waiting for.

use clap::Args;
use mesos_gelf_logger::log::printable;
use mesos_gelf_logger::logger::Logger;
use mesos_gelf_logger::publisher::{Options, GIVE_UP_AFTER};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// After a signal, how long `run` keeps delivering once the command ended.
pub const GRACE: Duration = Duration::from_secs(5);
/// Exit status when lines remain undelivered for a reason other than a
/// signal (Kafka gave a permanent error, or records were left in the spool).
pub const EXIT_UNDELIVERED: i32 = 3;
/// Exit status when standard output was closed (128 + SIGPIPE).
pub const EXIT_STDOUT_CLOSED: i32 = 141;

#[derive(Args)]
pub struct RunArgs {
    /// Parameters as key=value (same names as the module's), repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// ContainerConfig JSON to take the identity from (as the shim passes it).
    #[arg(long, value_name = "FILE")]
    container_config: Option<PathBuf>,
    /// Sandbox directory for stdout/stderr (default ./sandbox).
    #[arg(long, value_name = "DIR")]
    sandbox: Option<PathBuf>,
    /// Container id (default: run-<pid>-<time>).
    #[arg(long)]
    container_id: Option<String>,
    /// Stop waiting for Kafka after this many seconds of a permanent error
    /// (TLS, authentication, authorization, invalid topic, refused
    /// records); the lines stay
    /// in the spool and the `publish` command that ships them is printed.
    #[arg(long, value_name = "SECONDS", default_value_t = GIVE_UP_AFTER.as_secs())]
    give_up_after: u64,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

static SIGNALS: AtomicU32 = AtomicU32::new(0);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// A signal to forward (0: none): one a process sent us, not the
/// terminal's (that one reached the command's process group already).
static TO_FORWARD: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    const SI_KERNEL: i32 = 0x80;
    // SAFETY: the kernel passes a valid siginfo with SA_SIGINFO.
    let code = if info.is_null() {
        0
    } else {
        unsafe { (*info).si_code }
    };
    LAST_SIGNAL.store(sig, Ordering::SeqCst);
    if code != SI_KERNEL {
        TO_FORWARD.store(sig, Ordering::SeqCst);
    }
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to atomics.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(s, &sa, std::ptr::null_mut());
        }
    }
}

/// The inode of a pipe end.
fn pipe_inode(fd: i32) -> Option<u64> {
    // SAFETY: fstat on an fd we own into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st.st_ino)
}

/// True once the container's companion has written its `done` marker:
/// both pipes reached EOF, nobody holds a write end any more.
fn companion_done(container_dir: &std::path::Path) -> bool {
    mesos_gelf_logger::spool::data_dir(container_dir)
        .join(mesos_gelf_logger::spool::DONE_FILE)
        .exists()
}

/// Processes (other than us) holding a write end of one of these pipes.
fn pipe_writers(inodes: &[u64]) -> Vec<(u32, String)> {
    let me = std::process::id();
    let names: Vec<String> = inodes.iter().map(|i| format!("pipe:[{i}]")).collect();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                return false;
            };
            let is_ours = names.iter().any(|n| link.as_os_str() == n.as_str());
            // The companion holds the read ends: only writers count.
            is_ours
                && std::fs::read_to_string(p.path().join("fdinfo").join(fd.file_name()))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("flags:"))
                            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                    })
                    .is_some_and(|f| f & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32)
        });
        if holds {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            out.push((pid, comm.trim().to_string()));
        }
    }
    out
}

fn describe_status(code: i32) -> String {
    if code > 128 {
        format!("killed by signal {}", code - 128)
    } else {
        format!("status {code}")
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// How the wait ended.
enum End {
    /// Everything delivered.
    Delivered,
    /// The publisher gave up (true: the output closed; else a permanent error).
    Failed(bool),
    /// A signal: stopped waiting for delivery.
    Interrupted(i32),
}

/// The companion drops to the config's `user`: a sandbox `run` made is
/// given to that user, as the agent gives a task its sandbox (it was
/// root's, mode 0755, and not one byte of the task's output reached it).
fn give_sandbox_to_user(sandbox: &std::path::Path, json: &str) {
    let user = serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.get("user")?.as_str().map(String::from));
    // SAFETY: geteuid has no preconditions.
    let Some(user) = user.filter(|_| unsafe { libc::geteuid() } == 0) else {
        return;
    };
    // An unknown user: prepare() says so and keeps our user.
    if let Ok(r) = mesos_gelf_logger::privileges::lookup(&user) {
        if let Err(e) = std::os::unix::fs::chown(sandbox, Some(r.uid), Some(r.gid)) {
            eprintln!(
                "mesos-gelf: cannot give the sandbox {} to {}: {e}",
                sandbox.display(),
                printable(&user)
            );
        }
    }
}

pub fn run(a: RunArgs) -> Result<i32, String> {
    let mut config = super::config_from_sets(&a.set)?;
    // A local tool: the sandbox is yours, whatever user the config names.
    if !a
        .set
        .iter()
        .any(|s| s.trim_start().starts_with("drop_privileges="))
    {
        config.drop_privileges = false;
    }
    // A private spool unless one is given: run publishes only its container.
    let mut tmp = None;
    if config.spool_dir.is_none() {
        match tempfile::Builder::new()
            .prefix("mesos-gelf-spool-")
            .tempdir()
        {
            Ok(t) => {
                config.spool_dir = Some(t.path().to_path_buf());
                tmp = Some(t);
            }
            // The command runs anyway (sandbox files only): see below.
            Err(e) => {
                eprintln!("mesos-gelf: cannot create a temporary spool ({e})");
                config.spool_dir = Some(std::env::temp_dir().join(format!(
                    "mesos-gelf-spool-unavailable-{}",
                    std::process::id()
                )));
            }
        }
    }
    let spool_root = config.spool_dir.clone().expect("set above");
    let sandbox = a.sandbox.unwrap_or_else(|| PathBuf::from("sandbox"));
    let made = !sandbox.exists();
    std::fs::create_dir_all(&sandbox)
        .map_err(|e| format!("cannot create sandbox {}: {e}", sandbox.display()))?;
    let sandbox = std::fs::canonicalize(&sandbox).map_err(|e| e.to_string())?;
    let json = match &a.container_config {
        Some(f) => {
            let json = std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read {}: {e}", f.display()))?;
            if made && config.drop_privileges {
                give_sandbox_to_user(&sandbox, &json);
            }
            json
        }
        // The command inherits our environment, so its per-task overrides
        // (`GELF_LOGGER_TOPIC=...`, `env_prefix`) are ours, as a task's are
        // in its ContainerConfig; nothing else of it is passed.
        None => {
            let variables: Vec<serde_json::Value> = std::env::vars()
                .filter(|(k, _)| {
                    k.starts_with(&config.env_prefix) && k.len() > config.env_prefix.len()
                })
                .map(|(k, v)| serde_json::json!({"name": k, "type": "VALUE", "value": v}))
                .collect();
            serde_json::json!({
                "directory": sandbox.display().to_string(),
                "command_info": {"environment": {"variables": variables}},
            })
            .to_string()
        }
    };
    let container_id = a.container_id.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!("run-{}-{}", std::process::id(), t.as_millis())
    });
    // It is printed in our messages: a newline or an escape in it could
    // forge a line of ours (helper-9).
    // Nor may a line or paragraph separator, or a bidirectional override
    // (U+202E shows the rest of a line reversed).
    let unfit = mesos_gelf_logger::log::unfit;
    if container_id.is_empty()
        || container_id.chars().any(unfit)
        || container_id == "."
        || container_id == ".."
    {
        return Err(format!(
            "--container-id {container_id:?}: must be non-empty, not . or .., and hold no control or invisible formatting characters (newline, tab, escape, U+2028, U+202E)"
        ));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find our own binary: {e}"))?;
    let companion = config.companion_path.clone().unwrap_or_else(|| {
        exe.parent()
            .map(mesos_gelf_logger::logger::default_companion)
            .filter(|p| p.is_file())
            .unwrap_or(exe)
    });
    let mut logger = Logger::new(config, companion)?;
    // The publisher first: a spool another publisher holds is refused
    // before anything runs. A spool that cannot be made is not: the
    // command runs with its sandbox files only, and `run` exits 3.
    let mut failure: Option<(String, bool)> = None;
    if let Err(e) = logger.initialize(Some(Options {
        spool_dir: spool_root.clone(),
        exit_when_empty: Arc::new(AtomicBool::new(false)),
        stop: Arc::new(AtomicBool::new(false)),
        wait_for_lock: false,
        give_up_after: Some(Duration::from_secs(a.give_up_after)),
        // Its own command's output stays open while the command runs,
        // however quiet it is: never a reason to end.
        give_up_while_open: false,
        orphans: Default::default(),
    })) {
        // Only a spool directory that cannot be made lets the command run
        // without shipping; anything else (another publisher holds the
        // spool) is refused before it runs.
        let spool_problem = [
            "parameter `spool_dir`",
            "cannot create spool_dir",
            "cannot watch spool_dir",
        ]
        .iter()
        .any(|p| e.starts_with(p));
        if !spool_problem {
            return Err(e);
        }
        eprintln!(
            "mesos-gelf: {}; running {} with its sandbox files only: its lines are not shipped",
            printable(&e),
            printable(&a.cmd[0])
        );
        failure = Some((e, false));
    }
    let prepared = logger.prepare(&container_id, &json, Some(&sandbox))?;
    if !prepared.shipped && failure.is_none() {
        failure = Some(("the container's spool could not be made".into(), false));
    }
    // Unspooled: nothing for a publisher to wait for.
    let publisher = logger.take_publisher().filter(|_| prepared.shipped);
    if let Some(p) = &publisher {
        p.finish_when_empty();
    }
    let inodes: Vec<u64> = [prepared.stdout.as_raw_fd(), prepared.stderr.as_raw_fd()]
        .into_iter()
        .filter_map(pipe_inode)
        .collect();
    install_signal_handlers();
    let spawned = Command::new(&a.cmd[0])
        .args(&a.cmd[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::from(prepared.stdout))
        .stderr(Stdio::from(prepared.stderr))
        .spawn();
    let mut spawned_error = None;
    let mut child: Option<Child> = match spawned {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("mesos-gelf: cannot run {}: {e}", a.cmd[0]);
            spawned_error = Some(e.kind());
            None
        }
    };
    // As a shell: 126 found but not executable, 127 not found.
    let not_run = match &spawned_error {
        Some(k) if *k == std::io::ErrorKind::PermissionDenied => 126,
        _ => 127,
    };
    let mut code: Option<i32> = child.is_none().then_some(not_run);
    let mut exited_at = child.is_none().then(Instant::now);
    let mut publisher = publisher;
    let mut delivered = false;
    let mut seen_signals = 0;
    let mut signal: Option<i32> = None;
    let mut deadline: Option<Instant> = None;
    let mut said_waiting = false;
    let mut last_scan: Option<Instant> = None;
    let forward = |child: &Option<Child>, sig: i32| {
        if let Some(c) = child {
            // SAFETY: signalling our own child, which we have not reaped.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    };
    let end = loop {
        let n = SIGNALS.load(Ordering::SeqCst);
        if n != seen_signals {
            seen_signals = n;
            signal.get_or_insert(LAST_SIGNAL.load(Ordering::SeqCst));
            let fwd = TO_FORWARD.swap(0, Ordering::SeqCst);
            if fwd != 0 {
                forward(&child, fwd);
            }
            if n >= 2 {
                deadline = Some(Instant::now());
            } else if code.is_some() {
                deadline = Some(Instant::now() + GRACE);
            }
        }
        if let Some(c) = child.as_mut() {
            if let Ok(Some(s)) = c.try_wait() {
                code = Some(s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)));
                exited_at = Some(Instant::now());
                child = None;
                if signal.is_some() {
                    deadline.get_or_insert(Instant::now() + GRACE);
                }
            }
        }
        if publisher.as_ref().is_some_and(|p| p.is_finished()) {
            match publisher.take().expect("running").join() {
                Ok(()) => delivered = true,
                Err(why) => {
                    let closed = why.starts_with("standard output closed");
                    eprintln!("mesos-gelf: {}", printable(&why));
                    if child.is_some() {
                        if closed {
                            eprintln!("mesos-gelf: stopping {} (SIGTERM)", a.cmd[0]);
                            forward(&child, libc::SIGTERM);
                            deadline = Some(Instant::now() + GRACE);
                        } else {
                            eprintln!(
                                "mesos-gelf: {} keeps running; its lines stay in the spool",
                                a.cmd[0]
                            );
                        }
                    }
                    failure = Some((why, closed));
                }
            }
        }
        if code.is_some() {
            if delivered {
                break End::Delivered;
            }
            if let Some((_, closed)) = &failure {
                break End::Failed(*closed);
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break match (signal, &failure) {
                (Some(s), _) => End::Interrupted(s),
                (None, Some((_, closed))) => End::Failed(*closed),
                (None, None) => End::Delivered,
            };
        }
        // Who holds the output open, looked for once a second (a scan of
        // every process's fds) and only while the companion has not ended:
        // once it has, the output is closed and only delivery is left.
        if let (Some(t), false, Some(_)) = (exited_at, said_waiting, &publisher) {
            if t.elapsed() > Duration::from_secs(1)
                && last_scan.is_none_or(|s| s.elapsed() >= Duration::from_secs(1))
                && !companion_done(&prepared.spool)
            {
                last_scan = Some(Instant::now());
                let writers = pipe_writers(&inodes);
                if !writers.is_empty() {
                    said_waiting = true;
                    let list: Vec<String> = writers
                        .iter()
                        .map(|(pid, comm)| format!("pid {pid} ({comm})"))
                        .collect();
                    eprintln!(
                        "mesos-gelf: {} exited ({}); waiting for its output to close: still held open by {}",
                        a.cmd[0],
                        describe_status(code.unwrap_or(0)),
                        list.join(", ")
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Stop the publisher if it still runs (checkpoints are persisted).
    if let Some(p) = publisher.take() {
        p.stop.store(true, Ordering::Relaxed);
        let _ = p.join();
    }
    if let Some(c) = &child {
        eprintln!(
            "mesos-gelf: {} (pid {}) is still running; not waiting for it",
            a.cmd[0],
            c.id()
        );
    }
    let remaining = prepared.spool.exists();
    // Records still waiting: never exit 0 (the command's status) for them,
    // whatever ended the wait.
    let mut undelivered = false;
    if remaining {
        if let Some(t) = tmp.take() {
            let _ = t.keep();
        }
        let sets: Vec<String> = a
            .set
            .iter()
            .filter(|s| !s.trim_start().starts_with("spool_dir="))
            .map(|s| format!(" --set {}", shell_quote(s)))
            .collect();
        // Say what is left exactly: records not delivered yet, or only an
        // output that is still open (a process holds it).
        let st = mesos_gelf_logger::spool::inspect::status(
            &prepared.spool,
            mesos_gelf_logger::spool::record::now_micros(),
        );
        // Lost lines are said too: "delivered" must not cover them.
        let lost: u64 = st.losses.iter().map(|(_, n)| n).sum();
        let lost = if lost > 0 {
            let by: Vec<String> = st
                .losses
                .iter()
                .map(|(r, n)| format!("{}={n}", r.name()))
                .collect();
            format!(
                " ({lost} lines lost so far, each named by a notice: {})",
                by.join(", ")
            )
        } else {
            String::new()
        };
        undelivered = st.pending_records > 0;
        let what = if st.pending_records > 0 {
            format!(
                "{} undelivered records of {container_id}{lost} remain",
                st.pending_records
            )
        } else if st.pending_notices > 0 {
            format!(
                "no line of {container_id} waits{lost}, but {} of its loss notices wait to be delivered",
                st.pending_notices
            )
        } else if st.companion == "running" {
            format!(
                "every line of {container_id} written so far was delivered or named lost{lost}, but its output is still open (companion {}); what it writes from now on goes",
                st.companion
            )
        } else {
            format!(
                "nothing of {container_id} waits{lost} (companion {}); what is left is",
                st.companion
            )
        };
        eprintln!(
            "mesos-gelf: {what} in the spool {}; ship them with:\n  mesos-gelf publish --spool-dir {} --until-empty{}",
            spool_root.display(),
            shell_quote(&spool_root.display().to_string()),
            sets.concat()
        );
    }
    Ok(match end {
        End::Delivered if undelivered => EXIT_UNDELIVERED,
        End::Delivered => code.unwrap_or(0),
        End::Interrupted(sig) if remaining => 128 + sig,
        End::Interrupted(sig) => code.unwrap_or(128 + sig),
        End::Failed(true) => EXIT_STDOUT_CLOSED,
        End::Failed(false) => EXIT_UNDELIVERED,
    })
}
