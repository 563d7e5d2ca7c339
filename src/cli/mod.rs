//! Command-line front doors. Each builds the same pipeline objects as the
//! agent module (`Config`, `Logger`, `Publisher`); none re-implements a step.

mod forward;
mod run;
mod spool;

use clap::{Parser, Subcommand};
use mesos_gelf_logger::companion::{self, CompanionArgs};
use mesos_gelf_logger::config::{split_kv, Config};
use mesos_gelf_logger::publisher::{self, metrics::Metrics, Options, Publisher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "mesos-gelf",
    version,
    about = "Mesos container logs to GELF on Kafka"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run CMD with its stdout/stderr going through the agent's pipeline
    /// (pipes -> companion -> sandbox + spool -> publisher). Without
    /// kafka.bootstrap.servers, GELF goes to standard output, one per line.
    Run(run::RunArgs),
    /// Publish every container spool under a spool directory (standalone).
    Publish {
        /// Parameters as key=value (same names as the module's).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// The spool root (also settable as spool_dir).
        #[arg(long)]
        spool_dir: Option<PathBuf>,
        /// Exit once the spool holds no container (all delivered).
        #[arg(long)]
        until_empty: bool,
        /// With --until-empty: exit 3 after this many seconds of a permanent
        /// Kafka error (TLS, authentication, authorization, invalid topic,
        /// records the broker refuses)
        /// blocking every container left.
        #[arg(long, value_name = "SECONDS", default_value_t = publisher::GIVE_UP_AFTER.as_secs())]
        give_up_after: u64,
    },
    /// Inspect a spool: what is waiting, its records, send them again.
    #[command(subcommand)]
    Spool(spool::SpoolCmd),
    /// Forward a Kafka topic to Graylog over GELF TCP/TLS/UDP.
    Forward(forward::ForwardArgs),
    /// Print every parameter with its default and meaning (README's table,
    /// the packaged modules.json).
    Parameters {
        /// As a modules.json whose parameters are every default.
        #[arg(long)]
        modules_json: bool,
        /// Path of the module library in that modules.json.
        #[arg(long, default_value = "/usr/lib/mesos/modules/libmesos_gelf_logger.so")]
        library: String,
    },
    /// Own a container's pipes (started by prepare; not for people).
    #[command(hide = true)]
    Companion {
        #[arg(long)]
        spool: Option<PathBuf>,
        /// No spool could be made: sandbox files only
        /// (`sandbox_max_size:sandbox_max_files:user:uid:gid`, user `-`).
        #[arg(long)]
        unspooled: Option<String>,
        #[arg(long)]
        sandbox: PathBuf,
        #[arg(long, default_value_t = 3)]
        stdout_fd: i32,
        #[arg(long, default_value_t = 4)]
        stderr_fd: i32,
        #[arg(long)]
        cgroup_procs: Option<PathBuf>,
        /// The fd holding the companion's lock (kept open for life).
        #[arg(long)]
        lock_fd: Option<i32>,
    },
}

/// Parses `--set key=value` pairs into a validated Config (librdkafka
/// properties included, when Kafka is configured).
pub fn config_from_sets(sets: &[String]) -> Result<Config, String> {
    let pairs = sets
        .iter()
        .map(|s| split_kv(s))
        .collect::<Result<Vec<_>, _>>()?;
    let config = Config::from_pairs(&pairs).map_err(|e| e.to_string())?;
    if config.has_kafka() {
        publisher::kafka::validate(&config.kafka)?;
    }
    Ok(config)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// A flag set by SIGTERM or SIGINT (the handler only stores to an atomic; a
/// watcher thread copies it into the returned flag).
pub fn stop_on_signals() -> Arc<AtomicBool> {
    for s in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(s, on_signal as *const () as libc::sighandler_t) };
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || loop {
        if STOP.load(Ordering::Relaxed) {
            flag.store(true, Ordering::Relaxed);
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    });
    stop
}

fn publish(
    sets: &[String],
    spool_dir: Option<PathBuf>,
    until_empty: bool,
    give_up_after: u64,
) -> Result<i32, String> {
    let mut config = config_from_sets(sets)?;
    if let Some(d) = spool_dir {
        config.spool_dir = Some(d);
    }
    let dir = config
        .spool_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(mesos_gelf_logger::logger::DEFAULT_SPOOL_DIR));
    // A spool to empty that is not there is a mistyped path: the publisher
    // would make it and report success. (Without --until-empty it is made
    // and watched, as the agent's publisher does before the first task.)
    if until_empty && !dir.is_dir() {
        return Err(format!(
            "spool directory {} does not exist: nothing to publish",
            dir.display()
        ));
    }
    let stop = stop_on_signals();
    let config = Arc::new(config);
    let mut p = Publisher::new(
        config.clone(),
        Options {
            spool_dir: dir,
            exit_when_empty: Arc::new(AtomicBool::new(until_empty)),
            stop,
            wait_for_lock: false,
            give_up_after: until_empty.then(|| std::time::Duration::from_secs(give_up_after)),
            give_up_while_open: true,
            orphans: Default::default(),
        },
        publisher::sink_factory(&config),
        Arc::new(Metrics::default()),
    )?;
    match p.run() {
        Ok(()) => Ok(0),
        Err(why) => {
            eprintln!("mesos-gelf: {}", mesos_gelf_logger::log::printable(&why));
            Ok(run::EXIT_UNDELIVERED)
        }
    }
}

/// README's parameter table, or a modules.json with every parameter at
/// its default (those without a plain default are left out, and listed in
/// a `_comment`).
fn parameters(modules_json: bool, library: &str) {
    use mesos_gelf_logger::config::PARAMETERS;
    if !modules_json {
        println!("| parameter | default | meaning |\n|---|---|---|");
        for (k, d, m) in PARAMETERS {
            println!("| `{k}` | {d} | {m} |");
        }
        return;
    }
    let mut params: Vec<serde_json::Value> = vec![serde_json::json!({
        "key": "kafka.bootstrap.servers", "value": "kafka-1.example.net:9092,kafka-2.example.net:9092"
    })];
    let mut others = Vec::new();
    for (k, d, m) in PARAMETERS {
        // The default's first word, when it is a value the module takes.
        let v = match *k {
            "companion_path" => Some(
                std::path::Path::new(library)
                    .with_file_name("mesos-gelf")
                    .display()
                    .to_string(),
            ),
            "host" => None,
            _ => d
                .split_whitespace()
                .next()
                .filter(|t| !t.starts_with('(') && !k.contains('<'))
                .filter(|t| mesos_gelf_logger::config::Config::from_pairs(&[(*k, *t)]).is_ok())
                .map(String::from),
        };
        match v {
            Some(v) => params.push(serde_json::json!({"key": k, "value": v})),
            None => others.push(format!("{k} ({d}): {m}")),
        }
    }
    let v = serde_json::json!({
        "_comment": format!(
            "mesos-gelf-logger {}: every parameter at its default; see PARAMETERS.md. Also: {}",
            env!("CARGO_PKG_VERSION"),
            others.join("; ")
        ),
        "libraries": [{
            "file": library,
            "modules": [{"name": "org_mesos_gelf_GelfContainerLogger", "parameters": params}]
        }]
    });
    println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(a) => run::run(a),
        Cmd::Publish {
            set,
            spool_dir,
            until_empty,
            give_up_after,
        } => publish(&set, spool_dir, until_empty, give_up_after),
        Cmd::Forward(a) => forward::forward(a),
        Cmd::Spool(c) => spool::main(c),
        Cmd::Parameters {
            modules_json,
            library,
        } => {
            parameters(modules_json, &library);
            Ok(0)
        }
        Cmd::Companion {
            spool,
            unspooled,
            sandbox,
            stdout_fd,
            stderr_fd,
            cgroup_procs,
            lock_fd,
        } => {
            companion::ignore_signals();
            let keep: Vec<i32> = [stdout_fd, stderr_fd].into_iter().chain(lock_fd).collect();
            companion::close_other_fds(&keep);
            // A bad value (never from prepare) still drains the pipes.
            let unspooled = unspooled.and_then(|u| companion::Unspooled::from_arg(&u).ok());
            companion::run(&CompanionArgs {
                spool,
                unspooled,
                sandbox,
                stdout_fd,
                stderr_fd,
                cgroup_procs,
            });
            Ok(0)
        }
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mesos-gelf: {}", mesos_gelf_logger::log::printable(&e));
            2
        }
    }
}
