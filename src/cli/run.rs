//! `mesos-gelf run`: one container on this machine, through the agent's path.

use clap::Args;
use mesos_gelf_logger::logger::Logger;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

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
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
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
    let _tmp;
    if config.spool_dir.is_none() {
        let t = tempfile::Builder::new()
            .prefix("mesos-gelf-spool-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary spool: {e}"))?;
        config.spool_dir = Some(t.path().to_path_buf());
        _tmp = t;
    }
    let sandbox = a.sandbox.unwrap_or_else(|| PathBuf::from("sandbox"));
    std::fs::create_dir_all(&sandbox)
        .map_err(|e| format!("cannot create sandbox {}: {e}", sandbox.display()))?;
    let sandbox = std::fs::canonicalize(&sandbox).map_err(|e| e.to_string())?;
    let json = match &a.container_config {
        Some(f) => {
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?
        }
        None => serde_json::json!({ "directory": sandbox.display().to_string() }).to_string(),
    };
    let container_id = a.container_id.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!("run-{}-{}", std::process::id(), t.as_millis())
    });
    let exe = std::env::current_exe().map_err(|e| format!("cannot find our own binary: {e}"))?;
    let companion = config.companion_path.clone().unwrap_or(exe);
    let mut logger = Logger::new(config, companion)?;
    let prepared = logger.prepare(&container_id, &json, Some(&sandbox))?;
    logger.initialize(true)?;
    let status = Command::new(&a.cmd[0])
        .args(&a.cmd[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::from(prepared.stdout))
        .stderr(Stdio::from(prepared.stderr))
        .status();
    let code = match status {
        Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
        Err(e) => {
            eprintln!("mesos-gelf: cannot run {}: {e}", a.cmd[0]);
            127
        }
    };
    // The pipes are closed (the child is gone); wait until the companion has
    // finished and every record is delivered.
    logger.wait_publisher();
    Ok(code)
}
