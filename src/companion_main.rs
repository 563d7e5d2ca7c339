//! `mesos-gelf-companion`: the per-container companion alone, without the
//! Kafka client, TLS or the command-line front doors, so that each of the
//! hundreds of companions on an agent costs as little memory as it can.
//! It takes the same arguments as `mesos-gelf companion` (the word
//! `companion` first is accepted), so either binary can be `companion_path`.

use mesos_gelf_logger::companion::{self, CompanionArgs, Unspooled};
use std::path::PathBuf;

fn main() {
    companion::ignore_signals();
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("companion") {
        args.next();
    }
    let (mut spool, mut unspooled, mut sandbox, mut cgroup_procs) = (None, None, None, None);
    let (mut stdout_fd, mut stderr_fd, mut lock_fd) = (3, 4, None);
    while let Some(a) = args.next() {
        // `--name=value` as well as `--name value`, as clap takes them in
        // `mesos-gelf companion` (a negative fd must be written `=-1`).
        let (a, mut inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (a, None),
        };
        let mut val = || inline.take().or_else(|| args.next()).unwrap_or_default();
        match a.as_str() {
            "--spool" => spool = Some(PathBuf::from(val())),
            "--unspooled" => unspooled = Unspooled::from_arg(&val()).ok(),
            "--sandbox" => sandbox = Some(PathBuf::from(val())),
            "--stdout-fd" => stdout_fd = val().parse().unwrap_or(3),
            "--stderr-fd" => stderr_fd = val().parse().unwrap_or(4),
            "--lock-fd" => lock_fd = val().parse().ok(),
            "--cgroup-procs" => cgroup_procs = Some(PathBuf::from(val())),
            "--version" => {
                println!("mesos-gelf-companion {}", env!("CARGO_PKG_VERSION"));
                return;
            }
            // Unknown arguments are ignored: the pipes are drained anyway.
            _ => {}
        }
    }
    let Some(sandbox) = sandbox else {
        eprintln!("usage: mesos-gelf-companion [companion] --sandbox DIR [--spool DIR] ...");
        std::process::exit(2);
    };
    let keep: Vec<i32> = [stdout_fd, stderr_fd].into_iter().chain(lock_fd).collect();
    companion::close_other_fds(&keep);
    companion::run(&CompanionArgs {
        spool,
        unspooled,
        sandbox,
        stdout_fd,
        stderr_fd,
        cgroup_procs,
    });
}

/// Keeps libstdc++ out of this binary (1.4 MB of RSS and 56 KB private
/// dirty in every companion). The `cxx` crate's runtime object is linked
/// into every binary of this package, and its static initializer constructs
/// `std::ios_base::Init`; nothing else in the companion is C++. Defining
/// those two symbols here (and the C++ personality routine, named by the
/// object's unwind tables) lets `--as-needed` (build.rs) drop libstdc++.
/// None of them can run C++ code: the companion calls no C++.
mod no_libstdcxx {
    use std::ffi::c_void;

    /// `std::ios_base::Init::Init()`: iostreams are never used here.
    #[no_mangle]
    extern "C" fn _ZNSt8ios_base4InitC1Ev(_this: *mut c_void) {}

    /// `std::ios_base::Init::~Init()`.
    #[no_mangle]
    extern "C" fn _ZNSt8ios_base4InitD1Ev(_this: *mut c_void) {}

    /// Only an exception unwinding through C++ frames calls this, and no
    /// C++ frame ever runs in the companion: abort rather than guess.
    #[no_mangle]
    extern "C" fn __gxx_personality_v0() -> ! {
        std::process::abort()
    }
}
