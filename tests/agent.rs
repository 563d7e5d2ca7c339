//! The module in a real Mesos 1.11 agent (issue 12): a master and an agent
//! on loopback load the module built by this `cargo test` (with the Mesos
//! shim: `MESOS_CXXFLAGS` set, see README), and real tasks run through it.
//!
//! Mesos is found through `MESOS_LAB` (a lab built by
//! `../shared/mesos-lab/setup.sh`: `bin/mesos-master`, `bin/mesos-agent`,
//! the launcher dir, `bin/mesos_lab_driver` and `group_driver.py` to launch
//! tasks). Without it every test here prints one line,
//! `agent tests SKIPPED: no Mesos found, see README`, past the test
//! harness's output capture, and returns.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const MODULE: &str = "org_mesos_gelf_GelfContainerLogger";

/// Where the Mesos binaries and task drivers are.
struct Lab {
    dir: PathBuf,
}

/// The lab, or None after saying loudly that the tests are skipped.
fn lab() -> Option<Lab> {
    match std::env::var_os("MESOS_LAB").map(PathBuf::from) {
        Some(dir) if dir.join("bin/mesos-agent").is_file() => Some(Lab { dir }),
        other => {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                let line = match other {
                    Some(d) => format!(
                        "agent tests SKIPPED: no Mesos found (MESOS_LAB={} has no bin/mesos-agent), see README\n",
                        d.display()
                    ),
                    None => "agent tests SKIPPED: no Mesos found, see README\n".to_string(),
                };
                // Straight to fd 2: the harness captures eprintln! of passing tests.
                unsafe { libc::write(2, line.as_ptr() as *const libc::c_void, line.len()) };
            });
            None
        }
    }
}

/// The module library this `cargo test` built; it must hold the shim.
fn module_so() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let so = [
        deps.join("libmesos_gelf_logger.so"),
        deps.join("../libmesos_gelf_logger.so"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .expect("libmesos_gelf_logger.so next to the test binary");
    let nm = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&so)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&nm.stdout).contains(MODULE),
        "{} was built without the Mesos shim: build the tests with MESOS_CXXFLAGS (source $MESOS_LAB/mesos-flags.sh), see README",
        so.display()
    );
    so
}

fn free_ports() -> (u16, u16) {
    // Distinct: free_port steps through its range.
    (free_port(), free_port())
}

/// A master and an agent with the module loaded; everything stopped on drop.
struct Cluster {
    lab: PathBuf,
    run: tempfile::TempDir,
    master: Child,
    agent: Option<Child>,
    master_port: u16,
    agent_port: u16,
    spool: PathBuf,
    /// Extra agent flags.
    agent_args: Vec<String>,
}

impl Cluster {
    /// Starts master and agent; `params` go into modules.json after the
    /// defaults (broker, spool, companion).
    fn start(lab: &Lab, broker: &str, params: &[(&str, &str)]) -> Cluster {
        let mut c = Cluster::start_unchecked(lab, broker, params);
        c.wait_registered();
        c
    }

    fn start_unchecked(lab: &Lab, broker: &str, params: &[(&str, &str)]) -> Cluster {
        Cluster::start_with(lab, broker, params, &[])
    }

    /// Like `start_unchecked`, with extra agent flags (a later one wins).
    fn start_with(
        lab: &Lab,
        broker: &str,
        params: &[(&str, &str)],
        agent_args: &[String],
    ) -> Cluster {
        let run = tempfile::Builder::new()
            .prefix("mesos-gelf-agent-")
            .tempdir()
            .unwrap();
        // Tasks may run as another user (`--user nobody`): let them reach
        // their sandboxes under the work dir.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(run.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let spool = run.path().join("spool");
        let mut ps = vec![
            json!({"key": "kafka.bootstrap.servers", "value": broker}),
            json!({"key": "spool_dir", "value": spool.display().to_string()}),
            json!({"key": "companion_path", "value": env!("CARGO_BIN_EXE_mesos-gelf-companion")}),
            json!({"key": "metrics_interval_ms", "value": "200"}),
        ];
        ps.extend(params.iter().map(|(k, v)| json!({"key": k, "value": v})));
        // `MODULE:<path>` in the extra flags: another library file.
        let library = agent_args
            .iter()
            .find_map(|a| a.strip_prefix("MODULE:").map(PathBuf::from))
            .unwrap_or_else(module_so);
        let modules = json!({"libraries": [{"file": library.display().to_string(),
            "modules": [{"name": MODULE, "parameters": ps}]}]});
        std::fs::write(run.path().join("modules.json"), modules.to_string()).unwrap();
        let (mp, ap) = free_ports();
        let master = Command::new(lab.dir.join("bin/mesos-master"))
            .args([
                "--ip=127.0.0.1",
                &format!("--port={mp}"),
                "--hostname=localhost",
            ])
            .arg(format!(
                "--work_dir={}",
                run.path().join("master").display()
            ))
            .arg("--registry=in_memory")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(run.path().join("master.log")).unwrap())
            .spawn()
            .unwrap();
        let mut c = Cluster {
            agent_args: agent_args.to_vec(),
            lab: lab.dir.clone(),
            run,
            master,
            agent: None,
            master_port: mp,
            agent_port: ap,
            spool,
        };
        c.start_agent();
        c
    }

    /// `bin/` of the lab, unless the extra flags name another.
    fn launcher_dir(&self) -> PathBuf {
        self.agent_args
            .iter()
            .find_map(|a| a.strip_prefix("--launcher_dir=").map(PathBuf::from))
            .unwrap_or_else(|| self.lab.join("bin"))
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.run.path().join("agent.log")).unwrap_or_default()
    }

    fn work_dir(&self) -> PathBuf {
        self.run.path().join("agent")
    }

    fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.run.path().join("agent.log"))
            .unwrap();
        let agent = Command::new(self.lab.join("bin/mesos-agent"))
            .arg(format!("--master=127.0.0.1:{}", self.master_port))
            .args([
                "--ip=127.0.0.1",
                &format!("--port={}", self.agent_port),
                "--hostname=localhost",
            ])
            .arg(format!("--work_dir={}", self.work_dir().display()))
            .arg(format!(
                "--runtime_dir={}",
                self.run.path().join("agent-run").display()
            ))
            .args(["--launcher=posix", "--isolation=posix/cpu,posix/mem"])
            .arg(format!("--launcher_dir={}", self.launcher_dir().display()))
            .args([
                "--systemd_enable_support=false",
                "--resources=cpus:4;mem:2048;disk:1024",
            ])
            .arg(format!(
                "--modules=file://{}",
                self.run.path().join("modules.json").display()
            ))
            .arg(format!("--container_logger={MODULE}"))
            .args(self.agent_args.iter().filter(|a| {
                !a.starts_with("--launcher_dir=")
                    && !a.starts_with("ENV:")
                    && !a.starts_with("MODULE:")
            }))
            // `ENV:K=V` entries are the agent's environment.
            .envs(
                self.agent_args
                    .iter()
                    .filter_map(|a| a.strip_prefix("ENV:").and_then(|kv| kv.split_once('='))),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(agent);
    }

    /// Waits until the agent (re)registered; panics with its log if it died.
    fn wait_registered(&mut self) {
        let t0 = Instant::now();
        let before = self.agent_log().matches("egistered with master").count();
        loop {
            if self.agent_log().matches("egistered with master").count() > before
                || (before == 0 && self.agent_log().contains("egistered with master"))
            {
                return;
            }
            if let Some(a) = self.agent.as_mut() {
                if let Ok(Some(st)) = a.try_wait() {
                    panic!("the agent exited ({st}):\n{}", tail(&self.agent_log(), 30));
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the agent did not register:\n{}",
                tail(&self.agent_log(), 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    /// GET /metrics/snapshot on the agent.
    fn metrics(&self) -> Value {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.agent_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /metrics/snapshot HTTP/1.0\r\nHost: localhost\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {resp}"))
    }

    fn gauge(&self, name: &str) -> f64 {
        self.metrics()[format!("containerizer/logger/gelf/{name}")]
            .as_f64()
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    /// Launches one command task (the lab's driver: task id `lab-task-1`,
    /// name `mesos-lab-task`, a new framework each time).
    fn task(&self, args: &[&str], command: &str) -> Command {
        let mut c = Command::new(self.lab.join("bin/mesos_lab_driver"));
        c.args(["--master", &format!("127.0.0.1:{}", self.master_port)])
            .args(["--timeout", "120", "--command", command])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        c
    }

    /// Runs a task to its end; returns the driver's output.
    fn run_task(&self, args: &[&str], command: &str) -> String {
        let out = self.task(args, command).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "task did not finish: {text}\nagent log:\n{}",
            tail(&self.agent_log(), 30)
        );
        text
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Executors first (the agent logs their pids), then agent, master.
        let log = self.agent_log();
        for part in log.split("Forked child with pid '").skip(1) {
            if let Some(pid) = part.split('\'').next().and_then(|p| p.parse::<i32>().ok()) {
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        if let Some(mut a) = self.agent.take() {
            unsafe { libc::kill(a.id() as i32, libc::SIGTERM) };
            if wait_child(&mut a, Duration::from_secs(10)).is_none() {
                let _ = a.kill();
                let _ = a.wait();
            }
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The value after `key ` on the driver's output line starting `prefix`.
fn driver_field(out: &str, prefix: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `{prefix}` in driver output: {out}"))
        .to_string()
}

/// Every message of `topic` until `done` holds for one of them (then 1 s
/// more), as JSON.
fn gelf_until(broker: &Broker, topic: &str, mut done: impl FnMut(&Value) -> bool) -> Vec<Value> {
    consume_until(
        &broker.addr(),
        topic,
        Duration::from_secs(120),
        Duration::from_secs(1),
        |m| done(&m.json()),
    )
    .iter()
    .map(|m| {
        let v = m.json();
        assert_gelf(&v);
        v
    })
    .collect()
}

#[test]
fn a_task_reaches_the_sandbox_and_kafka_with_every_identity_field_and_no_secret() {
    let Some(lab) = lab() else { return };
    let broker = Broker::start();
    let c = Cluster::start(&lab, &broker.addr(), &[("topic", "ids")]);
    let out = c.run_task(
        &[
            "--env",
            "DB_PASSWORD=hunter2-very-secret",
            "--env",
            "MARATHON_APP_ID=/shop/web",
            "--label",
            "team=blue",
        ],
        "echo to-stdout; echo to-stderr >&2",
    );
    let framework = driver_field(&out, "[driver] registered framework ");
    let agent = driver_field(&out, "[driver] launching task on agent ");
    let msgs = gelf_until(&broker, "ids", |v| v["short_message"] == "to-stderr");
    let line = |text: &str| {
        msgs.iter()
            .find(|v| v["short_message"] == text)
            .unwrap_or_else(|| panic!("{text} not shipped: {msgs:?}"))
            .clone()
    };
    let (o, e) = (line("to-stdout"), line("to-stderr"));
    assert_eq!(
        (o["_stream"].as_str(), o["level"].as_u64()),
        (Some("stdout"), Some(6))
    );
    assert_eq!(
        (e["_stream"].as_str(), e["level"].as_u64()),
        (Some("stderr"), Some(3))
    );
    for v in [&o, &e] {
        assert_eq!(v["_framework_id"], framework.as_str());
        assert_eq!(v["_agent_id"], agent.as_str());
        assert_eq!(v["_task_id"], "lab-task-1");
        assert_eq!(v["_task_name"], "mesos-lab-task");
        assert_eq!(v["_executor_id"], "lab-task-1");
        assert_eq!(v["_app"], "/shop/web");
        assert_eq!(v["_label_team"], "blue");
    }
    // The container id is the sandbox's run directory, and the sandbox
    // files hold the lines too (the Mesos UI and CLI read them).
    let cid = o["_container_id"].as_str().unwrap();
    let sandbox = c
        .work_dir()
        .join("slaves")
        .join(&agent)
        .join("frameworks")
        .join(&framework)
        .join("executors/lab-task-1/runs")
        .join(cid);
    assert_eq!(
        std::fs::read_to_string(sandbox.join("stdout")).unwrap(),
        "to-stdout\n"
    );
    assert!(std::fs::read_to_string(sandbox.join("stderr"))
        .unwrap()
        .contains("to-stderr\n"));
    // The command executor's own glog lines (on the task's stderr) arrive
    // at their own levels, not as errors, with its source file and line.
    let starting = msgs
        .iter()
        .find(|v| {
            v["short_message"]
                .as_str()
                .unwrap()
                .starts_with("Starting task")
        })
        .unwrap_or_else(|| panic!("the executor's lines: {msgs:?}"));
    assert_eq!(starting["_stream"], "stderr");
    assert_eq!(starting["level"], 6, "{starting}");
    assert!(starting["_src_file"].as_str().unwrap().ends_with(".cpp"));
    let executor_lines: Vec<&Value> = msgs.iter().filter(|v| v["_src_file"].is_string()).collect();
    assert!(executor_lines.len() >= 5, "{executor_lines:?}");
    assert!(
        executor_lines.iter().all(|v| v["level"] != 3),
        "no executor info line shipped as an error: {executor_lines:?}"
    );
    let all: String = msgs.iter().map(|v| v.to_string()).collect();
    assert!(!all.contains("hunter2"), "a secret reached Kafka");
}

#[test]
fn overrides_and_disable_through_a_real_task_info() {
    let Some(lab) = lab() else { return };
    let broker = Broker::start();
    let c = Cluster::start(&lab, &broker.addr(), &[("topic", "base")]);
    c.run_task(
        &[
            "--env",
            "GELF_LOGGER_TOPIC=over",
            "--label",
            "gelf.level_stderr=4",
        ],
        "echo ovr-out; echo ovr-err >&2",
    );
    let msgs = gelf_until(&broker, "over", |v| v["short_message"] == "ovr-err");
    let err = msgs
        .iter()
        .find(|v| v["short_message"] == "ovr-err")
        .unwrap();
    assert_eq!(err["level"], 4, "label override of the stderr level");
    assert!(
        err.get("_label_gelf.level_stderr").is_none(),
        "settings are not fields"
    );
    // disable: the sandbox has the lines, Kafka nothing of that container.
    let out = c.run_task(&["--label", "gelf.disable=true"], "echo quiet-line");
    c.run_task(&[], "echo marker-line");
    let base = gelf_until(&broker, "base", |v| v["short_message"] == "marker-line");
    assert!(
        !base.iter().any(|v| v["short_message"] == "quiet-line"),
        "a disabled container shipped"
    );
    let framework = driver_field(&out, "[driver] registered framework ");
    let stdout = glob_one(&c.work_dir(), &framework, "stdout");
    assert_eq!(std::fs::read_to_string(stdout).unwrap(), "quiet-line\n");
}

/// The one `<sandbox>/<file>` of a framework's single executor run.
fn glob_one(work: &Path, framework: &str, file: &str) -> PathBuf {
    let fw = std::fs::read_dir(work.join("slaves"))
        .unwrap()
        .flatten()
        .map(|a| a.path().join("frameworks").join(framework))
        .find(|p| p.is_dir())
        .unwrap();
    let runs = fw.join("executors/lab-task-1/runs");
    let run = std::fs::read_dir(&runs)
        .unwrap()
        .flatten()
        .find(|e| e.file_name() != "latest")
        .unwrap();
    run.path().join(file)
}

#[test]
fn a_bad_parameter_stops_the_agent_and_its_log_names_it() {
    let Some(lab) = lab() else { return };
    let mut c = Cluster::start_unchecked(&lab, "127.0.0.1:1", &[("sandbox_max_files", "zero")]);
    let st = wait_child(c.agent.as_mut().unwrap(), Duration::from_secs(60));
    assert!(st.is_some_and(|s| !s.success()), "the agent kept running");
    c.agent = None;
    let log = c.agent_log();
    assert!(
        log.contains("parameter `sandbox_max_files`"),
        "{}",
        tail(&log, 20)
    );
}

/// Copies (hard-links where it can) the lab's `bin/` and `lib/` to `to`,
/// readable by every user, and returns the agent flags that use them.
fn world_readable_copy(lab: &Path, to: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).unwrap();
    for sub in ["bin", "lib"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
        for e in std::fs::read_dir(lab.join(sub)).unwrap().flatten() {
            let src = std::fs::canonicalize(e.path()).unwrap();
            let dst = to.join(sub).join(e.file_name());
            if std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst).unwrap();
            }
        }
    }
    let env =
        json!({"LD_LIBRARY_PATH": to.join("lib").display().to_string(), "PATH": "/usr/bin:/bin"});
    vec![
        format!("--launcher_dir={}", to.join("bin").display()),
        format!("--executor_environment_variables={env}"),
    ]
}

fn uid_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn with_user_nobody_the_companion_runs_as_nobody_and_its_spool_is_private() {
    let Some(lab) = lab() else { return };
    let broker = Broker::start();
    // The executor runs as nobody too: it must reach the launcher binaries
    // and libmesos, which the lab may keep under a private home directory.
    let copy = tempfile::Builder::new()
        .prefix("mesos-gelf-lab-")
        .tempdir()
        .unwrap();
    let dirs = world_readable_copy(&lab.dir, copy.path());
    let mut c = Cluster::start_with(&lab, &broker.addr(), &[("topic", "nobody")], &dirs);
    c.wait_registered();
    let nobody = mesos_gelf_logger::privileges::lookup("nobody").unwrap();
    let mut driver = c
        .task(
            &["--user", "nobody"],
            "echo as-nobody; sleep 3; echo done-nobody",
        )
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let pid = loop {
        if let Some(p) = companion_pids(&c.spool.display().to_string()).first() {
            break *p;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no companion");
        std::thread::sleep(Duration::from_millis(50));
    };
    let t0 = Instant::now();
    while uid_of(pid) != Some(nobody.uid) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "companion uid {:?}",
            uid_of(pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dirs: Vec<PathBuf> = std::fs::read_dir(&c.spool)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1);
    let key = std::fs::metadata(&dirs[0]).unwrap();
    assert_eq!((key.uid(), key.permissions().mode() & 0o777), (0, 0o700));
    let data = std::fs::metadata(dirs[0].join("data")).unwrap();
    assert_eq!(
        (data.uid(), data.permissions().mode() & 0o777),
        (nobody.uid, 0o700)
    );
    let st = wait_child(&mut driver, Duration::from_secs(120));
    let mut out = String::new();
    driver
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(
        st.is_some_and(|s| s.success()),
        "{out}\n{}",
        tail(&c.agent_log(), 20)
    );
    let msgs = gelf_until(&broker, "nobody", |v| v["short_message"] == "done-nobody");
    assert!(msgs
        .iter()
        .any(|v| v["short_message"] == "as-nobody" && v["_user"] == "nobody"));
}

#[test]
fn agent_sigkill_and_restart_under_a_writing_task_loses_no_line() {
    let Some(lab) = lab() else { return };
    let broker = Broker::start();
    let mut c = Cluster::start(&lab, &broker.addr(), &[("topic", "restart")]);
    // 30,000 lines over about 3 s, framework checkpointing on.
    let script = "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); echo $i; \
                  [ $((i % 1000)) -eq 0 ] && sleep 0.1; done; echo written";
    let mut driver = c.task(&["--checkpoint", "1"], script).spawn().unwrap();
    let t0 = Instant::now();
    while c.gauge("records_published") < 2000.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the task is not writing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.kill_agent();
    std::thread::sleep(Duration::from_secs(3));
    c.start_agent();
    c.wait_registered();
    let st = wait_child(&mut driver, Duration::from_secs(150));
    let mut out = String::new();
    driver
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(
        st.is_some_and(|s| s.success()),
        "task: {out}\n{}",
        tail(&c.agent_log(), 20)
    );
    let mut seen = BTreeSet::new();
    let mut count = 0usize;
    gelf_until(&broker, "restart", |v| {
        if let Some(n) = v["short_message"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
        {
            if v["_stream"] == "stdout" {
                seen.insert(n);
                count += 1;
            }
        }
        seen.len() == 30_000
    });
    let dups = count - seen.len();
    assert!(dups <= 12_000, "{dups} duplicates");
    eprintln!("agent SIGKILL + restart: 30000 of 30000 lines, {dups} duplicates");
}

#[test]
fn metrics_snapshot_matches_kafka_and_reachability_follows_a_frozen_broker() {
    let Some(lab) = lab() else { return };
    let broker = Broker::start();
    let c = Cluster::start(&lab, &broker.addr(), &[("topic", "counted")]);
    c.run_task(&[], "seq 1 1000");
    let msgs = gelf_until(&broker, "counted", |v| {
        v["_stream"] == "stdout" && v["_seq"] == 1000
    });
    // Every container's spool is finished and removed: the counts settle.
    let t0 = Instant::now();
    while c.gauge("containers_active") > 0.0 || c.gauge("records_in_flight") > 0.0 {
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(100));
    }
    let all = consume_until(
        &broker.addr(),
        "counted",
        Duration::from_secs(60),
        Duration::from_secs(2),
        |_| true,
    );
    assert!(all.len() >= msgs.len());
    assert_eq!(
        c.gauge("records_published") as usize,
        all.len(),
        "published = in Kafka"
    );
    assert_eq!(c.gauge("kafka_reachable"), 1.0);
    assert_eq!(c.gauge("publisher_active"), 1.0);
    // Delivery latency, as the agent shows it: while a task writes for
    // 5 s, the 200 ms windows report real figures (a window without
    // deliveries reports 0).
    let mut driver = c
        .task(
            &[],
            "i=0; while [ $i -lt 50 ]; do i=$((i+1)); echo lat $i; sleep 0.1; done",
        )
        .spawn()
        .unwrap();
    // One snapshot gives the three of one window (each gauge is read on
    // its own, so a window may rarely end between two of them: looked at
    // again then).
    let t0 = Instant::now();
    let mut seen = Vec::new();
    loop {
        let m = c.metrics();
        let f = |n: &str| {
            m[format!("containerizer/logger/gelf/delivery_latency_{n}_us")]
                .as_f64()
                .unwrap_or_else(|| panic!("no metric delivery_latency_{n}_us"))
        };
        let (p50, p99, max) = (f("p50"), f("p99"), f("max"));
        if max > 0.0 {
            seen.push((p50, p99, max));
            if 0.0 < p50 && p50 <= p99 && p99 <= max && max < 60e6 {
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no consistent delivery latency while the task wrote: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(wait_child(&mut driver, Duration::from_secs(120)).is_some_and(|s| s.success()));
    // Freeze the broker under a writing task: reachable falls to 0 (the
    // task is not slowed), and comes back once the broker does.
    broker.freeze();
    let mut driver = c
        .task(
            &[],
            "i=0; while [ $i -lt 60 ]; do i=$((i+1)); echo tick $i; sleep 0.5; done",
        )
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while c.gauge("kafka_reachable") != 0.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "reachable never fell"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(c.gauge("oldest_pending_age_ms") > 0.0 || c.gauge("records_in_flight") > 0.0);
    broker.thaw();
    let t0 = Instant::now();
    while c.gauge("kafka_reachable") != 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "reachable never came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(wait_child(&mut driver, Duration::from_secs(120)).is_some_and(|s| s.success()));
}

#[test]
fn nested_task_group_tasks_carry_their_own_task_ids_names_and_labels() {
    let Some(lab) = lab() else { return };
    let broker = Broker::start();
    let c = Cluster::start(&lab, &broker.addr(), &[("topic", "nested")]);
    let out = Command::new("python3")
        .arg(lab.dir.join("group_driver.py"))
        .arg(format!("127.0.0.1:{}", c.master_port))
        .args(["--timeout", "120", "--label", "team=green"])
        .args(["--task", "t1=echo from-t1", "--task", "t2=echo from-t2 >&2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", tail(&c.agent_log(), 30));
    let msgs = gelf_until(&broker, "nested", |v| v["short_message"] == "from-t2");
    let mut found = 0;
    for (line, task, name) in [("from-t1", "group-t1", "t1"), ("from-t2", "group-t2", "t2")] {
        let v = msgs
            .iter()
            .find(|v| v["short_message"] == line)
            .unwrap_or_else(|| panic!("{line}: {msgs:?}"));
        assert_eq!(v["_task_id"], task, "{v}");
        assert_eq!(v["_task_name"], name, "{v}");
        assert_eq!(v["_label_team"], "green", "{v}");
        assert_eq!(v["_executor_id"], "group-executor");
        assert!(
            v["_container_id"].as_str().unwrap().contains('.'),
            "nested: {v}"
        );
        assert!(v["_parent_container_id"].is_string());
        found += 1;
    }
    assert_eq!(found, 2);
}

#[test]
fn a_full_spool_filesystem_never_fails_a_task_launch() {
    let Some(lab) = lab() else { return };
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&d.path().join("spoolfs"), 256);
    fs.fill(0);
    let c = Cluster::start(
        &lab,
        &broker.addr(),
        &[("topic", "full"), ("spool_dir", fs.0.to_str().unwrap())],
    );
    let out = c.run_task(&[], "echo launched-anyway");
    let framework = driver_field(&out, "[driver] registered framework ");
    let stdout = glob_one(&c.work_dir(), &framework, "stdout");
    assert_eq!(
        std::fs::read_to_string(stdout).unwrap(),
        "launched-anyway\n"
    );
    assert_eq!(c.gauge("containers_unspooled"), 1.0);
    assert!(c.agent_log().contains("started without a spool"));
    // Its notice reaches Kafka (the publisher runs: Kafka is up).
    gelf_until(&broker, "full", |v| {
        v["_stream"] == "mesos-gelf-publisher"
            && v["short_message"]
                .as_str()
                .unwrap()
                .contains("without a spool")
    });
}

/// A panic inside `prepare()` (fault injection, test builds only) fails
/// that container's launch with a message, never the agent.
#[cfg(feature = "fault-injection")]
#[test]
fn a_panic_in_prepare_fails_one_launch_not_the_agent() {
    let Some(lab) = lab() else { return };
    let broker = Broker::start();
    let mut c = Cluster::start_with(
        &lab,
        &broker.addr(),
        &[("topic", "panic")],
        &["ENV:GELF_FAULT_INJECT=prepare".to_string()],
    );
    c.wait_registered();
    let env = std::fs::read(format!("/proc/{}/environ", c.agent.as_ref().unwrap().id())).unwrap();
    assert!(
        String::from_utf8_lossy(&env).contains("GELF_FAULT_INJECT=prepare"),
        "the agent's environment"
    );
    let out = c.task(&[], "echo never").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "{text}\n{}",
        tail(&c.agent_log(), 40)
    );
    assert!(
        text.contains("TASK_FAILED") && text.contains("internal error"),
        "{text}"
    );
    // The agent is alive and answers.
    assert!(c.agent.as_mut().unwrap().try_wait().unwrap().is_none());
    assert_eq!(c.gauge("publisher_active"), 1.0);
}

/// The module loads only into the Mesos it was built for: a library that
/// says it was built for another version is refused at start, and the
/// agent's log names both versions.
#[test]
fn a_module_built_for_another_mesos_version_is_refused_naming_both() {
    let Some(lab) = lab() else { return };
    let original = std::fs::read(module_so()).unwrap();
    // The same library, its version strings changed from 1.11.0: an older
    // and a newer Mesos.
    for other in ["1.10.9", "1.12.0"] {
        let d = tempfile::tempdir().unwrap();
        let so = d.path().join("libmesos_gelf_logger.so");
        let mut b = original.clone();
        let (from, to) = (b"1.11.0\0".to_vec(), format!("{other}\0").into_bytes());
        let mut n = 0;
        for i in 0..b.len().saturating_sub(from.len()) {
            if b[i..i + from.len()] == from[..] {
                b[i..i + to.len()].copy_from_slice(&to);
                n += 1;
            }
        }
        assert!(n >= 1, "no version string in the library");
        std::fs::write(&so, b).unwrap();
        let mut c = Cluster::start_with(
            &lab,
            "127.0.0.1:1",
            &[],
            &[format!("MODULE:{}", so.display())],
        );
        let st = wait_child(c.agent.as_mut().unwrap(), Duration::from_secs(60));
        assert!(
            st.is_some_and(|s| !s.success()),
            "the agent started with a {other} module"
        );
        c.agent = None;
        let log = c.agent_log();
        let refused = log
            .lines()
            .find(|l| l.contains("Error verifying module 'org_mesos_gelf_GelfContainerLogger'"))
            .unwrap_or_else(|| panic!("{}", tail(&log, 20)));
        assert!(
            refused.contains("1.11.0")
                && refused.contains(&format!("compiled with version {other}")),
            "{refused}"
        );
    }
}

/// The upgrade an operator does (README, INSTALL.md): new files installed
/// over the old ones while tasks run, the agent restarted; the old
/// companion keeps writing, the new publisher ships everything.
#[test]
fn an_upgrade_under_a_running_task_loses_no_line() {
    let Some(lab) = lab() else { return };
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let install = d.path().join("modules");
    std::fs::create_dir_all(&install).unwrap();
    let companion = install.join("mesos-gelf");
    std::fs::copy(bin(), &companion).unwrap();
    let mut c = Cluster::start(
        &lab,
        &broker.addr(),
        &[
            ("topic", "upgrade"),
            ("companion_path", companion.to_str().unwrap()),
        ],
    );
    let script = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); echo $i; \
                  [ $((i % 1000)) -eq 0 ] && sleep 0.1; done";
    let mut driver = c.task(&["--checkpoint", "1"], script).spawn().unwrap();
    let t0 = Instant::now();
    while c.gauge("records_published") < 2000.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the task is not writing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // `install` over the old binary: a new file renamed into place.
    let staged = install.join(".mesos-gelf.new");
    std::fs::copy(bin(), &staged).unwrap();
    std::fs::rename(&staged, &companion).unwrap();
    let old = c.agent.take().unwrap();
    unsafe { libc::kill(old.id() as i32, libc::SIGTERM) };
    let mut old = old;
    assert!(wait_child(&mut old, Duration::from_secs(30)).is_some());
    c.start_agent();
    c.wait_registered();
    let st = wait_child(&mut driver, Duration::from_secs(150));
    assert!(
        st.is_some_and(|s| s.success()),
        "{}",
        tail(&c.agent_log(), 20)
    );
    let mut seen = BTreeSet::new();
    gelf_until(&broker, "upgrade", |v| {
        if v["_stream"] == "stdout" {
            seen.insert(v["_seq"].as_u64().unwrap());
        }
        seen.len() == 20_000
    });
}
