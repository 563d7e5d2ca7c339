//! The container logger: what Mesos' `ContainerLogger` does, in Rust.
//!
//! [`Logger::initialize`] starts the publisher thread (which also resumes
//! every spool left by a previous agent process), and [`Logger::prepare`]
//! sets up one container: metadata file, two pipes, the companion. The
//! agent module (through the cxx bridge) and `mesos-gelf run` both use this
//! type; neither re-implements a step.

use crate::config::Config;
use crate::log;
use crate::metadata;
use crate::privileges::RunAs;
use crate::publisher::metrics::Metrics;
use crate::publisher::{Handle, Options};
use crate::spool::{container_key, ContainerMeta};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The write ends handed to the container (stdout, stderr), and what the
/// caller should log.
#[derive(Debug)]
pub struct Prepared {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub spool: PathBuf,
    /// False when the spool could not be made: sandbox files only.
    pub shipped: bool,
    pub warnings: Vec<String>,
}

/// A container that started without a spool: the publisher sends this
/// notice for it (best effort: kept in memory only, as the disk is the
/// problem).
#[derive(Debug, Clone)]
pub struct Orphan {
    pub identity: crate::metadata::Identity,
    pub settings: crate::config::ContainerSettings,
    pub text: String,
}

pub struct Logger {
    /// Notices for containers that have no spool, for the publisher.
    orphans: Arc<std::sync::Mutex<Vec<Orphan>>>,
    config: Arc<Config>,
    spool_dir: PathBuf,
    companion: PathBuf,
    publisher: Option<Handle>,
    /// The publisher's numbers; they exist before it starts and outlive
    /// it, so the agent's gauges can read them at any time.
    metrics: Arc<Metrics>,
}

/// The companion to start from `dir`: the lean `mesos-gelf-companion` when
/// it is there (no Kafka client or TLS: a fraction of the memory), else
/// `mesos-gelf` itself (its `companion` subcommand).
pub fn default_companion(dir: &Path) -> PathBuf {
    let lean = dir.join("mesos-gelf-companion");
    if lean.is_file() {
        lean
    } else {
        dir.join("mesos-gelf")
    }
}

/// The default spool root for the agent module.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/mesos-gelf/spool";

fn pipe_cloexec() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh fds we now own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A larger pipe absorbs bursts while the companion is busy with the disk.
    // SAFETY: fcntl on our own fd; failure is harmless.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    Ok((r, w))
}

/// The `cgroup.procs` of the systemd slice companions should live in, when
/// the host runs systemd (as Mesos 1.11 does for its own companions).
fn systemd_cgroup_procs(config: &Config) -> Option<PathBuf> {
    if !Path::new("/run/systemd/system").exists() {
        return None;
    }
    let h = &config.cgroups_hierarchy;
    [
        h.join("systemd")
            .join(&config.systemd_slice)
            .join("cgroup.procs"),
        h.join(&config.systemd_slice).join("cgroup.procs"),
    ]
    .into_iter()
    .find(|p| p.exists())
}

impl Logger {
    /// Validated parameters in; nothing is started yet. `companion` is the
    /// `mesos-gelf` binary (see `companion_path`).
    pub fn new(config: Config, companion: PathBuf) -> Result<Logger, String> {
        let spool_dir = config
            .spool_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR));
        if !companion.is_file() {
            return Err(format!(
                "parameter `companion_path`: {} is not a file (install the mesos-gelf binary there or set companion_path)",
                companion.display()
            ));
        }
        Ok(Logger {
            config: Arc::new(config),
            spool_dir,
            companion,
            publisher: None,
            metrics: Arc::new(Metrics::default()),
            orphans: Default::default(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn spool_dir(&self) -> &Path {
        &self.spool_dir
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn publisher(&self) -> Option<&Handle> {
        self.publisher.as_ref()
    }

    /// Creates the spool root (mode 0700: only root passes; companions enter
    /// their `data/` before they drop privileges) and starts the publisher
    /// thread: in the agent with [`Options::agent`], for `run` with options
    /// of its own.
    ///
    /// In the agent a spool directory that cannot be made is not fatal:
    /// the agent starts, containers get their sandbox files only, and the
    /// publisher keeps trying. `run` gets the error.
    pub fn initialize(&mut self, opts: Option<Options>) -> Result<(), String> {
        if let Err(e) = std::fs::create_dir_all(&self.spool_dir) {
            let msg = format!(
                "parameter `spool_dir`: cannot create {}: {e}",
                self.spool_dir.display()
            );
            if opts.is_some() {
                return Err(msg);
            }
            log::error(&msg);
        }
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&self.spool_dir, std::fs::Permissions::from_mode(0o700));
        // A floor as large as the filesystem leaves no room for any spool.
        if let Some((_, size)) = crate::spool::writer::fs_space(&self.spool_dir) {
            let floor = self.config.defaults.spool_min_free.bytes(size);
            if size > 0 && floor >= size {
                let msg = format!(
                    "parameter `spool_min_free`: {} MB is not less than the {} MB of the filesystem holding {}: nothing could be spooled, every line would be lost",
                    floor >> 20,
                    size >> 20,
                    self.spool_dir.display()
                );
                if opts.is_some() {
                    return Err(msg);
                }
                log::error(&msg);
            }
        }
        if self.publisher.is_none() {
            let mut opts = opts.unwrap_or_else(|| {
                Options::agent(&self.spool_dir, Arc::new(AtomicBool::new(false)))
            });
            opts.orphans = self.orphans.clone();
            self.publisher = Some(Handle::spawn(
                self.config.clone(),
                opts,
                self.metrics.clone(),
            )?);
        }
        Ok(())
    }

    /// Takes the publisher thread's handle (to wait for it).
    pub fn take_publisher(&mut self) -> Option<Handle> {
        self.publisher.take()
    }

    /// Sets up one container and returns its stdout/stderr write ends.
    /// `sandbox` overrides `ContainerConfig.directory` (for `run`).
    pub fn prepare(
        &self,
        container_id: &str,
        config_json: &str,
        sandbox: Option<&Path>,
    ) -> Result<Prepared, String> {
        let parsed = metadata::parse(container_id, config_json, &self.config.env_prefix)
            .map_err(|e| e.to_string())?;
        let mut identity = parsed.identity;
        let mut warnings: Vec<String> = parsed.warnings;
        if let Some(s) = sandbox {
            identity.sandbox = s.display().to_string();
        }
        let (settings, w) = self.config.defaults.resolve(
            &self.config.env_prefix,
            &parsed.override_env,
            &parsed.all_labels,
        );
        warnings.extend(w);
        // Segments are the budget's unit: it drops whole ones and never the
        // two being read and written, so they stay small against it.
        let mut settings = settings;
        settings.spool_segment_size = settings.spool_segment_size.min(
            (self.config.spool_max_total_size / crate::config::SEGMENTS_PER_BUDGET)
                .max(crate::config::MIN_SEGMENT),
        );
        let sandbox_dir = PathBuf::from(&identity.sandbox);
        if !sandbox_dir.is_dir() {
            return Err(format!(
                "sandbox directory {} does not exist",
                sandbox_dir.display()
            ));
        }
        let run_as = self.run_as(identity.user.as_deref(), &mut warnings);
        let key = container_key(container_id);
        let meta = ContainerMeta {
            identity,
            settings,
            run_as,
        };
        // A spool that cannot be made (disk full, read-only, permissions)
        // never fails the task: it starts with its sandbox files only, and
        // the loss is reported (agent log, metrics, and a notice to Kafka
        // once the publisher can send one).
        let dir = self.spool_dir.join(&key);
        let unspooled = match self.make_container_dir(&key, &meta) {
            Ok(_) => None,
            Err(e) => {
                Metrics::add(&self.metrics.containers_unspooled, 1);
                let text = format!(
                    "container {container_id} started without a spool ({e}): its sandbox files are written, its lines are not shipped"
                );
                log::error(&text);
                let text = format!("mesos-gelf: {text}");
                if let Ok(mut o) = self.orphans.lock() {
                    if o.len() < 1000 {
                        o.push(Orphan {
                            identity: meta.identity.clone(),
                            settings: meta.settings.clone(),
                            text,
                        });
                    }
                }
                Some(crate::companion::Unspooled {
                    sandbox_max_size: meta.settings.sandbox_max_size,
                    sandbox_max_files: meta.settings.sandbox_max_files,
                    run_as: meta.run_as.clone(),
                })
            }
        };

        let (out_r, out_w) = pipe_cloexec().map_err(|e| format!("pipe: {e}"))?;
        let (err_r, err_w) = pipe_cloexec().map_err(|e| format!("pipe: {e}"))?;
        self.spawn_companion(
            (unspooled.is_none()).then_some(dir.as_path()),
            unspooled.as_ref(),
            &sandbox_dir,
            out_r.as_raw_fd(),
            err_r.as_raw_fd(),
        )?;
        drop((out_r, err_r));
        for w in &warnings {
            log::warn(&format!("container {container_id}: {w}"));
        }
        Ok(Prepared {
            stdout: out_w,
            stderr: err_w,
            spool: dir,
            shipped: unspooled.is_none(),
            warnings,
        })
    }

    /// `<spool_dir>/<key>/` with its `meta.json` and `data/`, built under a
    /// temporary name and renamed into place, so the publisher never sees a
    /// half-made container (see `publisher::adopt`). A container id seen
    /// again (`run --container-id`) reuses its directory.
    fn make_container_dir(&self, key: &str, meta: &ContainerMeta) -> Result<PathBuf, String> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = self.spool_dir.join(key);
        let tmp = self.spool_dir.join(format!(
            "{}{key}-{}-{}",
            crate::spool::PREPARING_PREFIX,
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let write = |d: &Path| -> Result<(), String> {
            make_spool_dirs(d, meta.run_as.as_ref())?;
            meta.store(d)
                .map_err(|e| format!("cannot write {}/meta.json: {e}", dir.display()))
        };
        if let Err(e) = write(&tmp) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if std::fs::rename(&tmp, &dir).is_err() {
            // The directory exists already (a reused id): update it in place.
            let _ = std::fs::remove_dir_all(&tmp);
            write(&dir)?;
        }
        Ok(dir)
    }

    /// The user the companion should run as, if we are root and asked to.
    fn run_as(&self, user: Option<&str>, warnings: &mut Vec<String>) -> Option<RunAs> {
        // SAFETY: geteuid cannot fail.
        if !self.config.drop_privileges || unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let user = user.filter(|u| !u.is_empty() && *u != "root")?;
        match crate::privileges::lookup(user) {
            Ok(r) => Some(r),
            Err(e) => {
                warnings.push(format!("{e}: its companion runs as the agent's user"));
                None
            }
        }
    }

    /// Starts `mesos-gelf companion` detached: own session, reparented to
    /// init (double fork, so the agent never has to reap it), holding only
    /// the two read ends as fds 3 and 4.
    fn spawn_companion(
        &self,
        spool: Option<&Path>,
        unspooled: Option<&crate::companion::Unspooled>,
        sandbox: &Path,
        out_r: RawFd,
        err_r: RawFd,
    ) -> Result<(), String> {
        let mut cmd = Command::new(&self.companion);
        cmd.arg("companion");
        if let Some(s) = spool {
            cmd.arg("--spool").arg(s);
        }
        if let Some(u) = unspooled {
            cmd.arg("--unspooled").arg(u.to_arg());
        }
        cmd.arg("--sandbox")
            .arg(sandbox)
            .args(["--stdout-fd", "3", "--stderr-fd", "4"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        if let Some(p) = systemd_cgroup_procs(&self.config) {
            cmd.arg("--cgroup-procs").arg(p);
        }
        // The companion's life is an flock on `data/companion.lock`, taken
        // here before the second fork (so it is held before prepare()
        // returns) and kept on fd 5 for as long as the companion lives: the
        // publisher takes it only once the companion is gone (see
        // `crate::spool::companion_alive`). The file is made and locked
        // under a name of its own, then renamed into place: a publisher
        // looking between the creation and the flock would have taken an
        // unlocked `companion.lock` for a dead companion.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let c_path = |p: std::path::PathBuf| {
            std::ffi::CString::new(p.into_os_string().into_encoded_bytes())
                .map_err(|e| format!("spool path: {e}"))
        };
        let lock_path = match spool {
            Some(s) => {
                let data = crate::spool::data_dir(s);
                let unique = format!(
                    "{}.{}-{}",
                    crate::spool::COMPANION_LOCK,
                    std::process::id(),
                    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                );
                Some((
                    c_path(data.join(unique))?,
                    c_path(data.join(crate::spool::COMPANION_LOCK))?,
                ))
            }
            None => None,
        };
        if lock_path.is_some() {
            cmd.args(["--lock-fd", "5"]);
        }
        let lock_pause = libc::timespec {
            tv_sec: (crate::fault::delay_ms("companion-lock") / 1000) as libc::time_t,
            tv_nsec: 0,
        };
        // SAFETY: only async-signal-safe calls (fcntl/dup2/close_range/signal/setsid/fork/_exit/open/flock/rename/unlink/nanosleep) after fork.
        unsafe {
            cmd.pre_exec(move || {
                // Move the read ends to 3 and 4 without clobbering either.
                let a = libc::fcntl(out_r, libc::F_DUPFD, 10);
                let b = libc::fcntl(err_r, libc::F_DUPFD, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Nothing else of the agent's reaches the companion, not even
                // fds opened without close-on-exec by some library: mark them
                // all close-on-exec (closing them here would also close std's
                // exec-error pipe, and exec failures would go unreported).
                const CLOSE_RANGE_CLOEXEC: u32 = 4;
                if libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, CLOSE_RANGE_CLOEXEC) != 0 {
                    for fd in 5..4096 {
                        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                    }
                }
                // Ignored signals stay ignored across exec: no window in which
                // the agent's process group dying could kill the companion.
                for sig in [
                    libc::SIGTERM,
                    libc::SIGINT,
                    libc::SIGHUP,
                    libc::SIGPIPE,
                    libc::SIGQUIT,
                ] {
                    libc::signal(sig, libc::SIG_IGN);
                }
                if let Some((tmp, path)) = &lock_path {
                    let l = libc::open(
                        tmp.as_ptr(),
                        libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                        0o600,
                    );
                    if l < 0 || libc::flock(l, libc::LOCK_EX | libc::LOCK_NB) != 0 {
                        let e = std::io::Error::last_os_error();
                        libc::unlink(tmp.as_ptr());
                        return Err(e);
                    }
                    if lock_pause.tv_sec > 0 {
                        libc::nanosleep(&lock_pause, std::ptr::null_mut());
                    }
                    if libc::rename(tmp.as_ptr(), path.as_ptr()) != 0 || libc::dup2(l, 5) < 0 {
                        let e = std::io::Error::last_os_error();
                        libc::unlink(tmp.as_ptr());
                        return Err(e);
                    }
                    if l != 5 {
                        libc::close(l);
                    }
                }
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                match libc::fork() {
                    -1 => Err(std::io::Error::last_os_error()),
                    0 => Ok(()),
                    _ => libc::_exit(0),
                }
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start companion {}: {e}", self.companion.display()))?;
        let _ = child.wait();
        Ok(())
    }
}

/// `<key>/` (root, 0700, holds meta.json) and `<key>/data/` (the companion's
/// user, 0700): the companion can write the spool, the task cannot reach it.
fn make_spool_dirs(dir: &Path, run_as: Option<&RunAs>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let data = crate::spool::data_dir(dir);
    std::fs::create_dir_all(&data)
        .map_err(|e| format!("cannot create spool {}: {e}", data.display()))?;
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    // 0700: only root may pass; the companion enters `data/` before it
    // drops to the task's user (see companion::run), the task never can.
    mode(dir, 0o700).map_err(|e| format!("chmod {}: {e}", dir.display()))?;
    mode(&data, 0o700).map_err(|e| format!("chmod {}: {e}", data.display()))?;
    if let Some(r) = run_as {
        // lchown: `data` was just made by root in a root-only directory, but
        // never let a link there hand a file to the task's user.
        std::os::unix::fs::lchown(&data, Some(r.uid), Some(r.gid))
            .map_err(|e| format!("chown {} to {}: {e}", data.display(), r.user))?;
    }
    Ok(())
}

impl Drop for Logger {
    fn drop(&mut self) {
        // Stops the publisher thread (checkpoints persisted); companions keep
        // running and a new Logger resumes their spools.
        self.publisher.take();
    }
}
