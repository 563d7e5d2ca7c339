//! `mesos-gelf`: run a command through the logging pipeline, publish a
//! spool, or (hidden) act as a container's companion.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
