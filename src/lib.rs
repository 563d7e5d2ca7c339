//! mesos-gelf-logger: an Apache Mesos `ContainerLogger` that keeps the
//! sandbox `stdout`/`stderr` files and ships every line as GELF 1.1 to Kafka.
//!
//! Where things live:
//! - [`config`]: parameters, validation, per-task overrides;
//! - [`metadata`]: ContainerConfig JSON → who wrote a line ([`nested`]:
//!   the task of a nested container, found after `prepare()`);
//! - [`companion`]: the per-container process (pipes → sandbox + spool);
//! - [`spool`]: the on-disk hand-off (format documented there);
//! - [`gelf`]: the GELF encoder;
//! - [`publisher`]: spool → sink (Kafka or stdout), at least once;
//! - [`logger`]: `initialize` / `prepare`, shared by the module and `run`;
//! - [`bridge`]: what the C++ shim may call.

pub mod bridge;
pub mod companion;
pub mod config;
pub mod fault;
pub mod forward;
pub mod gelf;
pub mod log;
pub mod logger;
pub mod metadata;
pub mod nested;
pub mod privileges;
pub mod publisher;
pub mod spool;
