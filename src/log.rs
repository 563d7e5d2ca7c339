//! Where our log lines go: standard error by default; the agent module
//! routes them to the agent's glog through a function the shim registers.

use std::sync::RwLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info = 0,
    Warning = 1,
    Error = 2,
}

type Sink = fn(i32, &str);

static SINK: RwLock<Option<Sink>> = RwLock::new(None);

/// Routes log lines to `f(level, message)` (0 info, 1 warning, 2 error).
pub fn set_sink(f: Sink) {
    *SINK.write().unwrap_or_else(|e| e.into_inner()) = Some(f);
}

pub fn emit(level: Level, msg: &str) {
    let sink = *SINK.read().unwrap_or_else(|e| e.into_inner());
    match sink {
        Some(f) => f(level as i32, msg),
        None => {
            let tag = match level {
                Level::Info => "I",
                Level::Warning => "W",
                Level::Error => "E",
            };
            eprintln!("mesos-gelf {tag}: {msg}");
        }
    }
}

pub fn info(msg: &str) {
    emit(Level::Info, msg)
}
pub fn warn(msg: &str) {
    emit(Level::Warning, msg)
}
pub fn error(msg: &str) {
    emit(Level::Error, msg)
}
