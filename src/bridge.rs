//! The one `#[cxx::bridge]`: what the C++ shim may call, nothing more.
//!
//! C++ → Rust: create the logger from the module parameters, initialize it,
//! prepare a container (plain strings in, two fds out), read metrics.
//! Rust → C++: our log lines into the agent's glog, through a C function
//! pointer the shim registers (`mesos_gelf_set_log`). Tests also call the
//! C entry `mesos_gelf_shim_selftest`, the C++ test driver CI runs in place of a Mesos agent (it
//! drives `ShimCore` exactly as `cpp/logger.cpp` does).
//! Errors cross as `rust::Error` exceptions whose `what()` is our message.

use crate::config::Config;
use crate::logger::Logger;
use std::os::fd::IntoRawFd;
use std::path::PathBuf;

#[cxx::bridge(namespace = "mesos_gelf")]
pub mod ffi {
    /// One module parameter, as Mesos gives it.
    struct Param {
        key: String,
        value: String,
    }

    /// The write ends for the container's stdout and stderr.
    struct ContainerFds {
        out_fd: i32,
        err_fd: i32,
    }

    extern "Rust" {
        type ModuleLogger;

        /// Validates the parameters; errors name the parameter. From then on
        /// our log lines go to the function the shim registered with
        /// `mesos_gelf_set_log` (the agent's glog in the module).
        fn create_logger(params: &Vec<Param>) -> Result<Box<ModuleLogger>>;
        /// Starts the publisher thread; resumes spools left by a previous agent.
        fn initialize(self: &mut ModuleLogger) -> Result<()>;
        /// `container_id`: the ContainerID chain joined with `.`, outermost first.
        /// `config_json`: ContainerConfig as JSON.
        fn prepare(
            self: &ModuleLogger,
            container_id: &str,
            config_json: &str,
        ) -> Result<ContainerFds>;
        fn metrics_json(self: &ModuleLogger) -> String;
        /// Names of the agent metrics, fixed for the life of the process.
        fn metric_names(self: &ModuleLogger) -> Vec<String>;
        /// Metric `index` of `metric_names`: one atomic load, never blocks
        /// (called on libprocess threads for /metrics/snapshot).
        fn metric_value(self: &ModuleLogger, index: usize) -> f64;
    }

    unsafe extern "C++" {
        include!("mesos-gelf-logger/include/shim_core.hpp");

    }
}

/// The logger as the module holds it.
pub struct ModuleLogger {
    inner: Logger,
}

/// The directory of the loaded library (the agent's modules directory).
fn library_dir() -> Option<PathBuf> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the address; info is a valid out-pointer.
    let ok = unsafe { libc::dladdr(library_dir as *const libc::c_void, &mut info) };
    if ok == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr returned a NUL-terminated path.
    let p = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    let path = PathBuf::from(p.to_string_lossy().into_owned());
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    path.parent().map(|d| d.to_path_buf())
}

/// The C++ side's log function (glog in the module), set by
/// `ShimCore::create` through [`mesos_gelf_set_log`]. A plain C function
/// pointer rather than a cxx `extern "C++"` call: so nothing in this
/// library calls into C++ by itself, and the lean companion binary, which
/// links the same library, needs no C++ runtime.
static C_LOG: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

type CLogFn = unsafe extern "C" fn(i32, *const u8, usize);

/// Called by the C++ shim before it creates the logger: our log lines go
/// to `f(level, bytes, len)` from then on (0 info, 1 warning, 2 error).
#[no_mangle]
pub extern "C" fn mesos_gelf_set_log(f: Option<CLogFn>) {
    C_LOG.store(
        f.map_or(0, |f| f as usize),
        std::sync::atomic::Ordering::SeqCst,
    );
    crate::log::set_sink(log_to_agent);
}

fn log_to_agent(level: i32, msg: &str) {
    let p = C_LOG.load(std::sync::atomic::Ordering::SeqCst);
    if p == 0 {
        eprintln!("mesos-gelf: {}", crate::log::printable(msg));
        return;
    }
    // SAFETY: only ever set from a valid `CLogFn` by mesos_gelf_set_log.
    let f: CLogFn = unsafe { std::mem::transmute::<usize, CLogFn>(p) };
    // SAFETY: the pointer and length describe `msg`, alive for the call.
    unsafe { f(level, msg.as_ptr(), msg.len()) };
}

/// Runs a call from the agent; a panic (a bug of ours) becomes an error for
/// that one call, never an abort of the agent (cxx aborts on a panic that
/// crosses into C++).
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = format!(
            "{what} failed: internal error (panic: {}); the agent carries on",
            crate::publisher::panic_text(&p)
        );
        crate::log::error(&msg);
        Err(msg)
    })
}

#[allow(clippy::ptr_arg)] // the signature cxx generates for `&Vec<Param>`
fn create_logger(params: &Vec<ffi::Param>) -> Result<Box<ModuleLogger>, String> {
    guarded("creating the logger", || create_logger_inner(params))
}

fn create_logger_inner(params: &[ffi::Param]) -> Result<Box<ModuleLogger>, String> {
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_str()))
        .collect();
    let config = Config::from_pairs(&pairs).map_err(|e| e.to_string())?;
    if !config.has_kafka() {
        return Err("parameter `kafka.bootstrap.servers` is required by the agent module".into());
    }
    // Fail at load, not at the first container, on bad librdkafka properties.
    crate::publisher::kafka::validate(&config.kafka)?;
    let companion = match &config.companion_path {
        Some(p) => p.clone(),
        None => library_dir()
            .map(|d| crate::logger::default_companion(&d))
            .ok_or("parameter `companion_path`: cannot locate the library's directory; set it")?,
    };
    let inner = Logger::new(config, companion)?;
    Ok(Box::new(ModuleLogger { inner }))
}

impl ModuleLogger {
    fn initialize(&mut self) -> Result<(), String> {
        guarded("initialize", || self.initialize_inner())
    }

    fn initialize_inner(&mut self) -> Result<(), String> {
        self.inner.initialize(None)?;
        crate::log::info(&format!(
            "mesos-gelf logger ready: spool {}, topic {}",
            self.inner.spool_dir().display(),
            self.inner.config().defaults.topic
        ));
        Ok(())
    }

    fn prepare(&self, container_id: &str, config_json: &str) -> Result<ffi::ContainerFds, String> {
        guarded(&format!("prepare of container {container_id}"), || {
            crate::fault::hit("prepare");
            self.prepare_inner(container_id, config_json)
        })
    }

    fn prepare_inner(
        &self,
        container_id: &str,
        config_json: &str,
    ) -> Result<ffi::ContainerFds, String> {
        let p = self
            .inner
            .prepare(container_id, config_json, None)
            .map_err(|e| format!("container {container_id}: {e}"))?;
        Ok(ffi::ContainerFds {
            // The shim hands them to Mesos, which closes them.
            out_fd: p.stdout.into_raw_fd(),
            err_fd: p.stderr.into_raw_fd(),
        })
    }

    fn metrics_json(&self) -> String {
        guarded("metrics", || {
            Ok(self.inner.metrics().snapshot().to_string())
        })
        .unwrap_or_else(|_| "{}".into())
    }

    fn metric_names(&self) -> Vec<String> {
        guarded("metric names", || {
            Ok(crate::publisher::metrics::Metrics::names().to_vec())
        })
        .unwrap_or_default()
    }

    fn metric_value(&self, index: usize) -> f64 {
        guarded("a metric", || {
            Ok(self.inner.metrics().value(index).unwrap_or(0) as f64)
        })
        .unwrap_or(0.0)
    }
}
