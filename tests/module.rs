//! The agent module without Mesos: the C++ driver that calls the bridge
//! exactly as cpp/logger.cpp does, the Rust logger across an agent restart
//! with 50 containers, bad container configs, and fd hygiene.

mod support;

use mesos_gelf_logger::config::Config;
use mesos_gelf_logger::logger::Logger;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::*;

/// A copy of a ContainerConfig fixture whose sandbox lives under `root`,
/// keeping the Mesos layout so ids can still be read from the path.
fn localized_fixture(fixture: &Path, root: &Path, out: &Path) -> (PathBuf, String) {
    let text = std::fs::read_to_string(fixture).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    let dir = v["directory"].as_str().unwrap().to_string();
    let local = root.join(dir.trim_start_matches('/'));
    std::fs::create_dir_all(&local).unwrap();
    // As the agent does: the sandbox belongs to the task's user.
    if let Some(user) = v["user"].as_str() {
        if let Ok(r) = mesos_gelf_logger::privileges::lookup(user) {
            std::os::unix::fs::chown(&local, Some(r.uid), Some(r.gid)).unwrap();
        }
    }
    v["directory"] = Value::String(local.display().to_string());
    std::fs::write(out, v.to_string()).unwrap();
    (local, dir)
}

fn wait_spool_empty(spool: &Path, limit: Duration) {
    let t0 = Instant::now();
    while std::fs::read_dir(spool)
        .unwrap()
        .flatten()
        .any(|e| e.path().is_dir())
    {
        assert!(t0.elapsed() < limit, "spool not drained within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cpp_driver_prepares_each_fixture_like_the_shim() {
    use std::os::unix::fs::PermissionsExt;
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    // Companions run as the fixtures' users (nobody, www-data): they must be
    // able to reach their sandbox and spool, as on an agent.
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spool = d.path().join("spool");
    let mut spec = format!(
        "param\tkafka.bootstrap.servers\t{}\nparam\ttopic\tshim\nparam\tspool_dir\t{}\nparam\tcompanion_path\t{}\n",
        broker.addr(),
        spool.display(),
        bin().display()
    );
    let cases = [
        (
            "marathon_command_task.json",
            "b7c1e2d3-4f5a-6b7c-8d9e-0f1a2b3c4d5e",
        ),
        (
            "custom_executor.json",
            "5d6e7f80-9a1b-4c2d-8e3f-4a5b6c7d8e9f",
        ),
        (
            "docker_containerizer_task.json",
            "b0c1d2e3-f405-4617-8829-3a4b5c6d7e8f",
        ),
        (
            "nested_task_group_container.json",
            "11223344-5566-4778-8899-aabbccddeeff.99887766-5544-4332-8110-ffeeddccbbaa",
        ),
    ];
    let mut sandboxes = Vec::new();
    for (i, (f, id)) in cases.iter().enumerate() {
        let cfg = d.path().join(format!("cfg{i}.json"));
        let (local, _) = localized_fixture(
            &shared(&format!("fixtures/container_config/{f}")),
            &d.path().join("work"),
            &cfg,
        );
        sandboxes.push(local);
        spec.push_str(&format!(
            "container\t{id}\t{}\tout {i} a\\nout {i} b\\n\terr {i}\\n\n",
            cfg.display()
        ));
    }
    spec.push_str(&format!(
        "container\tbad-1\t{}\tx\ty\n",
        shared("fixtures/container_config/bad/not_json.txt").display()
    ));
    spec.push_str(&format!("wait_empty\t{}\t60000\n", spool.display()));
    let report = shim_selftest(&spec);
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines[0], "created", "{report}");
    assert_eq!(lines[1], "initialized", "{report}");
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("prepared\t")).count(),
        4,
        "{report}"
    );
    let bad = lines
        .iter()
        .find(|l| l.starts_with("prepare_error\tbad-1"))
        .expect(&report);
    assert!(bad.contains("not valid JSON"), "{bad}");
    assert_eq!(*lines.last().unwrap(), "empty", "{report}");
    for (i, s) in sandboxes.iter().enumerate() {
        assert_eq!(
            std::fs::read_to_string(s.join("stdout")).unwrap(),
            format!("out {i} a\nout {i} b\n")
        );
        assert_eq!(
            std::fs::read_to_string(s.join("stderr")).unwrap(),
            format!("err {i}\n")
        );
    }
    // 4 containers x 3 lines; the Marathon task's 3 go to its own topic.
    let msgs = consume(&broker.addr(), "shim", 9, Duration::from_secs(60));
    assert_eq!(msgs.len(), 9);
    let by_id: BTreeMap<String, Vec<Value>> =
        msgs.iter()
            .map(|m| m.json())
            .fold(BTreeMap::new(), |mut acc, v| {
                assert_gelf(&v);
                acc.entry(v["_container_id"].as_str().unwrap().to_string())
                    .or_default()
                    .push(v);
                acc
            });
    let custom = &by_id["5d6e7f80-9a1b-4c2d-8e3f-4a5b6c7d8e9f"][0];
    assert_eq!(
        custom["_executor_id"],
        "thermos-www-data-prod-hello-0-2f4e6a8c"
    );
    assert_eq!(
        custom["_agent_id"],
        "8e3d5c2a-7b1f-4d6e-a9c8-0f1e2d3c4b5a-S3"
    );
    let docker_err = by_id["b0c1d2e3-f405-4617-8829-3a4b5c6d7e8f"]
        .iter()
        .find(|v| v["_stream"] == "stderr")
        .unwrap();
    assert_eq!(docker_err["level"], 4, "label override gelf.level_stderr");
    let nested =
        &by_id["11223344-5566-4778-8899-aabbccddeeff.99887766-5544-4332-8110-ffeeddccbbaa"][0];
    assert_eq!(
        nested["_parent_container_id"],
        "11223344-5566-4778-8899-aabbccddeeff"
    );
    // The Marathon task asked for its own topic (GELF_LOGGER_TOPIC).
    assert_eq!(by_id.len(), 3, "{:?}", by_id.keys());
    let own = consume(
        &broker.addr(),
        "storefront_logs",
        3,
        Duration::from_secs(60),
    );
    assert_eq!(own.len(), 3, "GELF_LOGGER_TOPIC override");
    let m = own[0].json();
    assert_marathon_identity(&m);
    assert_eq!(own[0].key, b"b7c1e2d3-4f5a-6b7c-8d9e-0f1a2b3c4d5e");
}

#[test]
fn cpp_driver_rejects_bad_parameters_at_create() {
    let spec =
        "param\tkafka.bootstrap.servers\t127.0.0.1:9\nparam\tsandbox_max_files\tmany\ninit\n";
    let report = shim_selftest(spec);
    assert!(
        report.starts_with("create_error\tparameter `sandbox_max_files`"),
        "{report}"
    );
    let report = shim_selftest("param\ttopic\tx\ninit\n");
    assert!(
        report.contains("`kafka.bootstrap.servers` is required"),
        "{report}"
    );
    let report =
        shim_selftest("param\tkafka.bootstrap.servers\th:1\nparam\tkafka.bogus.prop\t1\ninit\n");
    assert!(
        report.contains("invalid Kafka configuration") && report.contains("bogus.prop"),
        "{report}"
    );
    let report = shim_selftest(
        "param\tkafka.bootstrap.servers\th:1\nparam\tcompanion_path\t/nonexistent\ninit\n",
    );
    assert!(report.contains("parameter `companion_path`"), "{report}");
}

fn module_config(addr: &str, spool: &Path, topic: &str) -> Config {
    Config::from_pairs(&[
        ("kafka.bootstrap.servers", addr),
        ("topic", topic),
        ("spool_dir", spool.to_str().unwrap()),
    ])
    .unwrap()
}

#[test]
fn fifty_containers_survive_an_agent_restart() {
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let mut logger = Logger::new(module_config(&broker.addr(), &spool, "restart"), bin()).unwrap();
    logger.initialize(None).unwrap();
    let mut pipes = Vec::new();
    for i in 0..50 {
        let sbx = d.path().join(format!("sbx{i}"));
        std::fs::create_dir_all(&sbx).unwrap();
        let json = serde_json::json!({"directory": sbx.display().to_string()}).to_string();
        let p = logger.prepare(&format!("c{i:02}"), &json, None).unwrap();
        pipes.push((std::fs::File::from(p.stdout), std::fs::File::from(p.stderr)));
    }
    let write = |pipes: &mut Vec<(std::fs::File, std::fs::File)>, phase: &str| {
        for (out, _) in pipes.iter_mut() {
            for j in 0..100 {
                writeln!(out, "{phase} {j}").unwrap();
            }
        }
    };
    write(&mut pipes, "before");
    std::thread::sleep(Duration::from_millis(500));
    drop(logger); // the agent dies; companions keep draining the pipes
    write(&mut pipes, "during");
    let mut logger = Logger::new(module_config(&broker.addr(), &spool, "restart"), bin()).unwrap();
    logger.initialize(None).unwrap(); // a new agent resumes every spool
    write(&mut pipes, "after");
    drop(pipes);
    wait_spool_empty(&spool, Duration::from_secs(120));
    let msgs = consume(&broker.addr(), "restart", 15_000, Duration::from_secs(120));
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in &msgs {
        let v = m.json();
        seen.entry(v["_container_id"].as_str().unwrap().into())
            .or_default()
            .insert(v["short_message"].as_str().unwrap().into());
    }
    assert_eq!(seen.len(), 50);
    for (cid, lines) in &seen {
        assert_eq!(
            lines.len(),
            300,
            "{cid}: every line before, during and after the restart"
        );
    }
    drop(logger);
}

fn proc_fds(pid: u32) -> Vec<(i32, String, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let fd: i32 = e.file_name().to_str().unwrap().parse().unwrap();
        let target = std::fs::read_link(e.path())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
            .unwrap_or(0);
        out.push((fd, target, flags));
    }
    out.sort();
    out
}

fn find_companion(spool_dir: &Path) -> Option<u32> {
    companion_pids(&spool_dir.display().to_string())
        .first()
        .copied()
}

#[test]
fn fd_hygiene_companion_holds_only_read_ends_and_eof_arrives() {
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let sbx = d.path().join("sbx");
    std::fs::create_dir_all(&sbx).unwrap();
    let logger = Logger::new(module_config("127.0.0.1:9", &spool, "t"), bin()).unwrap();
    let json = serde_json::json!({"directory": sbx.display().to_string()}).to_string();
    let p = logger.prepare("fd-check", &json, None).unwrap();
    // Only the two write ends are handed over (we keep no read end), and
    // they are close-on-exec (the agent dups them into the container).
    let ours = proc_fds(std::process::id());
    for fd in [p.stdout.as_raw_fd(), p.stderr.as_raw_fd()] {
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert!(fl & libc::FD_CLOEXEC != 0);
        let pipe = &ours.iter().find(|f| f.0 == fd).unwrap().1;
        assert!(pipe.starts_with("pipe:"));
        assert_eq!(
            ours.iter().filter(|f| &f.1 == pipe).count(),
            1,
            "a second fd on {pipe}"
        );
    }
    let pid = find_companion(&p.spool).expect("companion running");
    // Steady state, once the dynamic loader is done with its own files.
    let t0 = Instant::now();
    let fds = loop {
        let fds = proc_fds(pid);
        if fds.len() == 6 || t0.elapsed() > Duration::from_secs(5) {
            break fds;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let numbers: Vec<i32> = fds.iter().map(|f| f.0).collect();
    assert_eq!(numbers, [0, 1, 2, 3, 4, 5], "{fds:?}");
    for (fd, target, flags) in &fds {
        if *fd <= 2 {
            assert_eq!(target, "/dev/null");
        } else if *fd == 5 {
            // Its life: the flock the publisher checks (see spool::companion_alive).
            assert!(target.ends_with("/data/companion.lock"), "{target}");
        } else {
            assert!(target.starts_with("pipe:"), "{target}");
            assert_eq!(
                flags & libc::O_ACCMODE as u32,
                libc::O_RDONLY as u32,
                "fd {fd} must be a read end"
            );
        }
    }
    // Its own session, reparented away from us (the agent never reaps it).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let (ppid, sid): (u32, u32) = (fields[1].parse().unwrap(), fields[3].parse().unwrap());
    assert_ne!(ppid, std::process::id());
    let our_sid = unsafe { libc::getsid(0) } as u32;
    assert_ne!(
        sid, our_sid,
        "companion is in a session of its own, not the agent's"
    );
    // The container exits: EOF reaches the companion, which finishes.
    drop(p);
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "companion did not see EOF"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(spool.join("fd-check/data/done").exists());
}

#[test]
fn companion_ignores_the_signals_of_a_dying_agent() {
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let sbx = d.path().join("sbx");
    std::fs::create_dir_all(&sbx).unwrap();
    let logger = Logger::new(module_config("127.0.0.1:9", &spool, "t"), bin()).unwrap();
    let json = serde_json::json!({"directory": sbx.display().to_string()}).to_string();
    let p = logger.prepare("sig-check", &json, None).unwrap();
    let pid = find_companion(&p.spool).unwrap_or_else(|| {
        let ps = std::process::Command::new("ps")
            .args(["-eo", "pid,ppid,stat,args"])
            .output()
            .unwrap();
        panic!(
            "no companion for {}; done={}\n{}",
            p.spool.display(),
            p.spool.join("done").exists(),
            String::from_utf8_lossy(&ps.stdout)
        )
    });
    let mut out = std::fs::File::from(p.stdout);
    writeln!(out, "one").unwrap();
    for s in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGPIPE] {
        unsafe { libc::kill(pid as i32, s) };
    }
    std::thread::sleep(Duration::from_millis(200));
    writeln!(out, "two").unwrap();
    drop(out);
    drop(p.stderr);
    assert!(wait_for_file(
        &spool.join("sig-check/data/done"),
        Duration::from_secs(10)
    ));
    assert_eq!(
        std::fs::read_to_string(sbx.join("stdout")).unwrap(),
        "one\ntwo\n"
    );
}

fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn wait_uid(pid: u32, want: u32) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if uid_of(pid) == Some(want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn companion_runs_as_the_containers_user_and_cannot_alter_its_identity() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root, as the agent (and CI) has"
    );
    let nobody = mesos_gelf_logger::privileges::lookup("nobody").unwrap();
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spool = d.path().join("spool");
    let sbx = d.path().join("sbx");
    std::fs::create_dir_all(&sbx).unwrap();
    // Mesos hands the sandbox to the task's user.
    std::os::unix::fs::chown(&sbx, Some(nobody.uid), Some(nobody.gid)).unwrap();
    let mut logger = Logger::new(module_config("127.0.0.1:9", &spool, "t"), bin()).unwrap();
    logger.initialize(None).unwrap();
    let json =
        serde_json::json!({"directory": sbx.display().to_string(), "user": "nobody"}).to_string();
    let p = logger.prepare("priv-check", &json, None).unwrap();
    let pid = find_companion(&p.spool).expect("companion");
    assert!(
        wait_uid(pid, nobody.uid),
        "companion uid {:?}, want {}",
        uid_of(pid),
        nobody.uid
    );
    let data = spool.join("priv-check/data");
    // The task (same user) cannot reach its spool by any path, nor through
    // the companion's /proc entries (not dumpable after setuid).
    for attempt in [
        format!("ls {}", data.display()),
        format!("touch {}/planted", data.display()),
        format!("cat {}/meta.json", spool.join("priv-check").display()),
        format!("ls /proc/{pid}/cwd/"),
        format!("ls /proc/{pid}/fd/"),
    ] {
        assert!(!as_task(&nobody, &attempt), "the task could: {attempt}");
    }
    // Controls: the task can list its sandbox, and root sees the companion
    // working in data/.
    assert!(as_task(&nobody, &format!("ls {}", sbx.display())));
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        data.canonicalize().unwrap()
    );
    let mut out = std::fs::File::from(p.stdout);
    writeln!(out, "hello from nobody").unwrap();
    drop(out);
    drop(p.stderr);
    let t0 = Instant::now();
    // Written to the sandbox, and the spool finished (or already published
    // and removed).
    let finished = || {
        let written = !std::fs::read_to_string(sbx.join("stdout"))
            .unwrap_or_default()
            .is_empty();
        written && (data.join("done").exists() || !data.exists())
    };
    while !finished() {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    let f = std::fs::metadata(sbx.join("stdout")).unwrap();
    assert_eq!(
        f.uid(),
        nobody.uid,
        "sandbox files belong to the task's user"
    );
    assert_eq!(
        std::fs::read_to_string(sbx.join("stdout")).unwrap(),
        "hello from nobody\n"
    );
    let key = std::fs::metadata(spool.join("priv-check")).unwrap();
    assert_eq!(
        (key.uid(), key.mode() & 0o777),
        (0, 0o700),
        "identity dir: root only"
    );
    assert_eq!(std::fs::metadata(&spool).unwrap().mode() & 0o777, 0o700);
    let meta = std::fs::metadata(spool.join("priv-check/meta.json")).unwrap();
    assert_eq!(
        meta.uid(),
        0,
        "meta.json is root's: the task cannot alter it"
    );
    if let Ok(m) = std::fs::metadata(&data) {
        assert_eq!(
            (m.uid(), m.mode() & 0o777),
            (nobody.uid, 0o700),
            "data/: the task's user only"
        );
    }
    drop(logger);
}

#[test]
fn a_user_unknown_on_the_host_keeps_the_agents_user_with_a_warning() {
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let sbx = d.path().join("sbx");
    std::fs::create_dir_all(&sbx).unwrap();
    let logger = Logger::new(module_config("127.0.0.1:9", &spool, "t"), bin()).unwrap();
    let json = serde_json::json!({"directory": sbx.display().to_string(), "user": "no-such-user-mesos-gelf"}).to_string();
    let p = logger.prepare("unknown-user", &json, None).unwrap();
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("does not exist") && w.contains("agent's user")),
        "{:?}",
        p.warnings
    );
    let mut out = std::fs::File::from(p.stdout);
    writeln!(out, "still logged").unwrap();
    drop(out);
    drop(p.stderr);
    assert!(wait_for_file(
        &spool.join("unknown-user/data/done"),
        Duration::from_secs(10)
    ));
    assert_eq!(
        std::fs::read_to_string(sbx.join("stdout")).unwrap(),
        "still logged\n"
    );
}

/// Runs `script` with `sh -e` as the task's user: what a hostile task can
/// do. Returns whether it succeeded.
fn as_task(user: &mesos_gelf_logger::privileges::RunAs, script: &str) -> bool {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("sh")
        .args(["-ec", script])
        .current_dir("/")
        .uid(user.uid)
        .gid(user.gid)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn a_task_planting_links_and_fifos_in_its_spool_cannot_redirect_leak_or_stall_the_publisher() {
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root, as the agent has"
    );
    let nobody = mesos_gelf_logger::privileges::lookup("nobody").unwrap();
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spool = d.path().join("spool");
    // A root-owned file the task would like the root publisher to overwrite.
    let victim = d.path().join("victim");
    std::fs::write(&victim, "keep\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut logger = Logger::new(module_config(&broker.addr(), &spool, "hostile"), bin()).unwrap();
    logger.initialize(None).unwrap();
    let prepare = |id: &str, user: Option<&str>| {
        let sbx = d.path().join(format!("sbx-{id}"));
        std::fs::create_dir_all(&sbx).unwrap();
        if user.is_some() {
            std::os::unix::fs::chown(&sbx, Some(nobody.uid), Some(nobody.gid)).unwrap();
        }
        let mut cfg = serde_json::json!({"directory": sbx.display().to_string()});
        if let Some(u) = user {
            cfg["user"] = u.into();
        }
        let p = logger.prepare(id, &cfg.to_string(), None).unwrap();
        (std::fs::File::from(p.stdout), std::fs::File::from(p.stderr))
    };
    let lines = |out: &mut std::fs::File, what: &str, from: u32, to: u32| {
        let text: String = (from..=to).map(|i| format!("{what} {i}\n")).collect();
        out.write_all(text.as_bytes()).unwrap();
    };
    // A root task whose spool the hostile task would like shipped as its own.
    let (mut other, other_err) = prepare("other", None);
    let (mut bad, bad_err) = prepare("bad", Some("nobody"));
    let data = spool.join("bad/data");
    // The task cannot reach its data/ (see the test above). Defence in depth:
    // should it get there anyway, as through the 0711 directories earlier
    // versions made, the root publisher still trusts nothing in it.
    for p in [&spool, &spool.join("bad")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let other_seg = spool.join("other/data/seg-00000000000000000001.spool");
    lines(&mut other, "other", 1, 100);

    // 1. Before writing, the task plants its checkpoint's temporary file as a
    //    link to the victim; the publisher checkpoints within 200 ms of
    //    delivering.
    assert!(as_task(
        &nobody,
        &format!(
            "cd {}; ln -s {} checkpoint.tmp",
            data.display(),
            victim.display()
        ),
    ));
    lines(&mut bad, "bad", 1, 100);
    assert_eq!(
        consume(&broker.addr(), "hostile", 200, Duration::from_secs(60)).len(),
        200
    );
    let t0 = Instant::now();
    while !std::fs::symlink_metadata(data.join("checkpoint")).is_ok_and(|m| m.is_file()) {
        assert!(t0.elapsed() < Duration::from_secs(10), "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");

    // 2. Then a FIFO and a link to the other container's segment as its next
    //    segments, and a FIFO as its checkpoint; then it exits.
    assert!(as_task(
        &nobody,
        &format!(
            "cd {}; mkfifo seg-00000000000000000050.spool; \
             ln -s {} seg-00000000000000000060.spool; \
             rm -f checkpoint; mkfifo checkpoint",
            data.display(),
            other_seg.display()
        ),
    ));
    assert!(other_seg.exists(), "the other container is still live");
    drop((bad, bad_err));
    // The bad container's spool is finished and removed; nothing stalled.
    let t0 = Instant::now();
    while spool.join("bad").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the publisher never finished the bad container"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The other container is still served.
    lines(&mut other, "other", 101, 150);
    drop((other, other_err));
    let msgs = consume(&broker.addr(), "hostile", 250, Duration::from_secs(60));
    let mut by_container: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &msgs {
        let v = m.json();
        by_container
            .entry(v["_container_id"].as_str().unwrap().to_string())
            .or_default()
            .push(v["short_message"].as_str().unwrap().to_string());
    }
    let want =
        |what: &str, n: u32| -> Vec<String> { (1..=n).map(|i| format!("{what} {i}")).collect() };
    assert_eq!(by_container["bad"], want("bad", 100), "its own lines only");
    assert_eq!(by_container["other"], want("other", 150));
    assert_eq!(msgs.len(), 250);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
    let m: Value = logger.publisher().unwrap().metrics.snapshot();
    assert!(m["records_dropped/torn"].as_u64().unwrap() >= 2, "{m}");
    drop(logger);
}

/// Two agents (or an agent and `mesos-gelf publish`) on one spool: the
/// second one's publisher does not ship while the first holds the spool,
/// says so once, and takes over when the first exits. Its tasks still
/// start and spool meanwhile, and nothing is shipped twice.
#[test]
fn a_second_agent_on_the_same_spool_waits_for_the_first_and_takes_over() {
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let mut first = Logger::new(module_config(&broker.addr(), &spool, "second"), bin()).unwrap();
    first.initialize(None).unwrap();
    let mut second = Logger::new(module_config(&broker.addr(), &spool, "second"), bin()).unwrap();
    second.initialize(None).unwrap();
    let active = |l: &Logger| {
        l.publisher()
            .unwrap()
            .metrics
            .publisher_active
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(active(&first), 1);
    assert_eq!(active(&second), 0, "the second one waits");
    let write = |l: &Logger, id: &str| {
        let sbx = d.path().join(id);
        std::fs::create_dir_all(&sbx).unwrap();
        let json = serde_json::json!({"directory": sbx.display().to_string()}).to_string();
        let p = l.prepare(id, &json, None).unwrap();
        let mut out = std::fs::File::from(p.stdout);
        for i in 1..=1000 {
            writeln!(out, "{i}").unwrap();
        }
    };
    write(&second, "c-by-second");
    write(&first, "c-by-first");
    let mut w = SeqWatch::new(&[("c-by-second", 1000), ("c-by-first", 1000)]);
    consume_until(
        &broker.addr(),
        "second",
        Duration::from_secs(60),
        Duration::ZERO,
        |m| w.add(m),
    );
    drop(first);
    let t0 = std::time::Instant::now();
    while active(&second) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(30), "never took over");
        std::thread::sleep(Duration::from_millis(50));
    }
    write(&second, "c-after");
    let mut w = SeqWatch::new(&[
        ("c-by-second", 1000),
        ("c-by-first", 1000),
        ("c-after", 1000),
    ]);
    let msgs = consume_until(
        &broker.addr(),
        "second",
        Duration::from_secs(60),
        Duration::from_secs(1),
        |m| w.add(m),
    );
    assert_eq!(msgs.len(), 3000, "nothing twice");
    drop(second);
}
