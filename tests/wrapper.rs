//! `mesos-gelf run` as a shell user expects a wrapper to behave: a closed
//! stdout ends it, signals reach the command, an interrupted run says
//! where its lines are and how to ship them, and a leftover process that
//! holds the output open is named (issue 18).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

#[test]
fn a_closed_stdout_ends_run_with_141_and_stops_the_command() {
    let d = tempfile::tempdir().unwrap();
    let mut c = Command::new(bin())
        .args(["run", "--sandbox"])
        .arg(d.path())
        .args(["--", "seq", "1", "100000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -1`: read one line, then close the pipe.
    let mut first = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("\"short_message\":\"1\""), "{first}");
    let st = wait_child(&mut c, Duration::from_secs(60));
    if st.is_none() {
        let _ = c.kill();
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut c.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(st.and_then(|s| s.code()), Some(141), "{err}");
    assert!(err.contains("standard output closed"), "{err}");
    assert!(err.len() < 4096, "{err}");
}

/// Sends SIGTERM to `run` once its command has made `ready`, and waits
/// for it (killed, and None, if it has not ended within 60 s).
fn sigterm_once_ready(
    c: &mut std::process::Child,
    ready: &std::path::Path,
) -> Option<std::process::ExitStatus> {
    assert!(
        wait_for_file(ready, Duration::from_secs(30)),
        "the command never made {}",
        ready.display()
    );
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let st = wait_child(c, Duration::from_secs(60));
    if st.is_none() {
        let _ = c.kill();
    }
    st
}

#[test]
fn sigterm_is_forwarded_and_undelivered_lines_are_left_with_the_command_to_ship_them() {
    let d = tempfile::tempdir().unwrap();
    let got = d.path().join("got-term");
    let ready = d.path().join("ready");
    // Kafka is not there: nothing can be delivered.
    let dead = format!("127.0.0.1:{}", free_port());
    let script = format!(
        "trap 'echo got-term > {}; exit 0' TERM; echo one; echo two; touch {}; while :; do sleep 0.1; done",
        got.display(),
        ready.display()
    );
    let mut c = Command::new(bin())
        .args(["run", "--container-id", "c-term", "--sandbox"])
        .arg(d.path().join("sbx"))
        .args(["--set", &format!("kafka.bootstrap.servers={dead}")])
        .args(["--set", "topic=interrupted", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = sigterm_once_ready(&mut c, &ready);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut c.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(st.and_then(|s| s.code()), Some(143), "{err}");
    assert_eq!(
        std::fs::read_to_string(&got).unwrap().trim(),
        "got-term",
        "the command got the SIGTERM"
    );
    let spool = err
        .split("--spool-dir ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no publish command: {err}"))
        .to_string();
    assert!(
        std::path::Path::new(&spool).join("c-term").is_dir(),
        "{err}"
    );
    // The printed command, pointed at a broker that is up, ships them.
    let broker = Broker::start();
    let ran = run_bounded(
        Command::new(bin())
            .args(["publish", "--until-empty", "--spool-dir", &spool])
            .args([
                "--set",
                &format!("kafka.bootstrap.servers={}", broker.addr()),
            ]),
        Duration::from_secs(60),
    );
    ran.assert_code(0);
    let mut w = SeqWatch::new(&[("c-term", 2)]);
    consume_until(
        &broker.addr(),
        "interrupted",
        Duration::from_secs(60),
        Duration::ZERO,
        |m| w.add(m),
    );
    let _ = std::fs::remove_dir_all(&spool);
}

#[test]
fn sigint_with_everything_delivered_exits_with_the_commands_status() {
    let d = tempfile::tempdir().unwrap();
    let ready = d.path().join("ready");
    let script = format!(
        "trap 'exit 7' INT; echo a; touch {}; while :; do sleep 0.1; done",
        ready.display()
    );
    let mut c = Command::new(bin())
        .args(["run", "--sandbox"])
        .arg(d.path().join("sbx"))
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_for_file(&ready, Duration::from_secs(30)));
    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    let st = wait_child(&mut c, Duration::from_secs(30));
    if st.is_none() {
        let _ = c.kill();
    }
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut c.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(st.and_then(|s| s.code()), Some(7));
    assert_eq!(gelf_lines(&out)[0]["short_message"], "a");
}

#[test]
fn a_leftover_process_holding_the_output_is_named_once() {
    let d = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let ran = run_bounded(
        Command::new(bin())
            .args(["run", "--sandbox"])
            .arg(d.path())
            .args(["--", "sh", "-c", "sleep 4 & echo started"]),
        Duration::from_secs(60),
    );
    ran.assert_code(0);
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "waited for the output to close"
    );
    let err = ran.stderr();
    assert_eq!(
        err.matches("still held open by").count(),
        1,
        "said once: {err}"
    );
    assert!(err.contains("(sleep)"), "{err}");
    assert_eq!(gelf_lines(&ran.stdout)[0]["short_message"], "started");
}

#[test]
fn a_command_quiet_for_longer_than_give_up_after_is_waited_for() {
    // `--give-up-after` is for permanent Kafka errors. A task quiet for
    // longer (3 s against 1), and a process it left behind that writes
    // later, are still its output: `run` waits for them as a pipe would
    // (helper-4: `run` gave up after 30 s of quiet while the command ran,
    // exited 3 and left its later lines in the spool).
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let ran = run_bounded(
        Command::new(bin())
            .args(["run", "--give-up-after", "1", "--sandbox"])
            .arg(d.path().join("sbx"))
            .args(["--set", &format!("spool_dir={}", spool.display())])
            .args([
                "--",
                "sh",
                "-c",
                "echo a; sleep 3; echo b; (sleep 3; echo c) &",
            ]),
        Duration::from_secs(120),
    );
    let err = ran.stderr();
    ran.assert_code(0);
    let got: Vec<String> = gelf_lines(&ran.stdout)
        .iter()
        .map(|g| g["short_message"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(got, ["a", "b", "c"], "{err}");
    assert!(!err.contains("giving up"), "{err}");
}
#[test]
fn a_command_that_cannot_run_exits_like_a_shell_would() {
    // 127 not found, 126 found but not executable; said on stderr.
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    for (cmd, code) in [
        (d.path().join("no-such-command"), 127),
        (script.clone(), 126),
    ] {
        let ran = run_bounded(
            Command::new(bin())
                .args(["run", "--sandbox"])
                .arg(d.path().join("sbx"))
                .arg("--")
                .arg(&cmd),
            Duration::from_secs(60),
        );
        ran.assert_code(code);
        assert!(
            ran.stderr().contains("cannot run") && ran.stderr().contains(cmd.to_str().unwrap()),
            "{}",
            ran.stderr()
        );
    }
}

/// `run` on a loaded machine (stress run 4 of cf02e3e, 2026-12-02): its
/// publisher thread, descheduled between reading the spool directory's
/// events and looking whether it may end, found the flag `run` sets after
/// prepare() and no container yet, and ended: `run` exited 0 with the
/// command's line unshipped in the spool. `GELF_FAULT_DELAY` widens that
/// gap the way the CPU hog did.
#[cfg(feature = "fault-injection")]
#[test]
fn run_ships_the_line_even_when_its_publisher_is_slow_to_look() {
    let d = tempfile::tempdir().unwrap();
    let ran = run_bounded(
        Command::new(bin())
            .env("GELF_FAULT_DELAY", "exit-check=700")
            .args(["run", "--sandbox"])
            .arg(d.path().join("sbx"))
            .args([
                "--set",
                &format!("spool_dir={}", d.path().join("spool").display()),
            ])
            .args(["--", "echo", "the-one-line"]),
        Duration::from_secs(60),
    );
    ran.assert_code(0);
    let shipped = gelf_lines(&ran.stdout);
    assert!(
        shipped.iter().any(|m| m["short_message"] == "the-one-line"),
        "run exited 0 without shipping the line: stdout {:?}, stderr {}",
        String::from_utf8_lossy(&ran.stdout),
        ran.stderr()
    );
}

/// A companion is "dead" once its lock can be taken. Its lock file used to
/// be created and then locked, two steps: a publisher looking in between
/// (every 2 s, for every container) took it for a dead companion, marked
/// its spool done and named the task's lines lost. Now the lock is held
/// before the file has its name. `GELF_FAULT_DELAY` holds the spawn
/// between the two steps for 5 s.
#[cfg(feature = "fault-injection")]
#[test]
fn a_companion_being_started_is_never_taken_for_a_dead_one() {
    let d = tempfile::tempdir().unwrap();
    let ran = run_bounded(
        Command::new(bin())
            .env("GELF_FAULT_DELAY", "companion-lock=5000")
            .args(["run", "--sandbox"])
            .arg(d.path().join("sbx"))
            .args([
                "--set",
                &format!("spool_dir={}", d.path().join("spool").display()),
            ])
            .args([
                "--",
                "sh",
                "-c",
                "for i in 1 2 3; do echo line-$i; sleep 0.5; done",
            ]),
        Duration::from_secs(60),
    );
    ran.assert_code(0);
    assert!(!ran.stderr().contains("died"), "{}", ran.stderr());
    let shipped: Vec<String> = gelf_lines(&ran.stdout)
        .iter()
        .filter_map(|m| m["short_message"].as_str().map(str::to_string))
        .collect();
    for i in 1..=3 {
        assert!(
            shipped.contains(&format!("line-{i}")),
            "line-{i} not shipped: {shipped:?}; stderr {}",
            ran.stderr()
        );
    }
}

#[test]
fn unusual_container_ids_each_ship_under_their_own_name() {
    // helper-5: a spool directory was the id with every other byte made
    // `_`, so `.hidden` was taken for a foreign entry and never shipped
    // (run exited 3, and the `publish` it suggested exited 0), a 245-byte
    // id had no spool (file name too long), and `metrics.json` or
    // `publisher.lock` met the publisher's own files.
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let ids = [
        ".hidden".to_string(),
        "../../escape".to_string(),
        "a b".to_string(),
        "metrics.json".to_string(),
        "publisher.lock".to_string(),
        "b".repeat(255),
        "€".repeat(100),
    ];
    for (i, id) in ids.iter().enumerate() {
        let ran = run_bounded(
            Command::new(bin())
                .args(["run", "--container-id", id, "--sandbox"])
                .arg(d.path().join(format!("sbx{i}")))
                .args(["--set", &format!("spool_dir={}", spool.display())])
                .args(["--", "echo", &format!("hello-{i}")]),
            Duration::from_secs(120),
        );
        ran.assert_code(0);
        let got = gelf_lines(&ran.stdout);
        assert_eq!(got.len(), 1, "{id:?}: {}", ran.stderr());
        assert_eq!(got[0]["short_message"], format!("hello-{i}"), "{id:?}");
        assert_eq!(got[0]["_container_id"], id.as_str(), "{id:?}");
    }
}

#[test]
fn two_ids_that_clean_to_one_name_keep_their_own_spools() {
    // helper-5: `x€` and `x___` shared the spool `x___`; the second
    // container took over the first one's unsent lines, which then shipped
    // under its identity with `_seq` starting again.
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let dead = format!("127.0.0.1:{}", free_port());
    // Each is interrupted while Kafka is away: its line stays spooled.
    for (i, id) in ["x€", "x___"].iter().enumerate() {
        let ready = d.path().join(format!("ready{i}"));
        let mut c = Command::new(bin())
            .args(["run", "--container-id", id, "--sandbox"])
            .arg(d.path().join(format!("sbx{i}")))
            .args(["--set", &format!("kafka.bootstrap.servers={dead}")])
            .args(["--set", "topic=collide"])
            .args(["--set", &format!("spool_dir={}", spool.display())])
            .args(["--", "sh", "-c"])
            .arg(format!(
                "echo from-{i}; touch {}; while :; do sleep 0.1; done",
                ready.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let st = sigterm_once_ready(&mut c, &ready);
        assert_eq!(st.and_then(|s| s.code()), Some(143), "{id}");
    }
    let broker = Broker::start();
    let ran = run_bounded(
        Command::new(bin())
            .args(["publish", "--until-empty", "--spool-dir"])
            .arg(&spool)
            .args([
                "--set",
                &format!("kafka.bootstrap.servers={}", broker.addr()),
            ]),
        Duration::from_secs(120),
    );
    ran.assert_code(0);
    let mut w = SeqWatch::new(&[("x€", 1), ("x___", 1)]);
    let msgs = consume_until(
        &broker.addr(),
        "collide",
        Duration::from_secs(60),
        Duration::ZERO,
        |m| w.add(m),
    );
    assert!(w.complete(), "{}", ran.stderr());
    for m in &msgs {
        let v = m.json();
        let want = if v["_container_id"] == "x€" {
            "from-0"
        } else {
            "from-1"
        };
        assert_eq!(v["short_message"], want, "{v}");
        assert_eq!(v["_seq"], 1, "{v}");
    }
}

#[test]
fn publish_until_empty_on_a_missing_spool_directory_is_an_error() {
    // helper-5: a mistyped --spool-dir was made, and publish reported
    // success (exit 0) having shipped nothing.
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("no-such-spool");
    let ran = run_bounded(
        Command::new(bin())
            .args(["publish", "--until-empty", "--spool-dir"])
            .arg(&missing)
            .args(["--set", "kafka.bootstrap.servers=127.0.0.1:9"]),
        Duration::from_secs(60),
    );
    ran.assert_code(2);
    assert!(ran.stderr().contains("does not exist"), "{}", ran.stderr());
    assert!(!missing.exists(), "not made");
}

#[test]
fn a_container_id_with_control_characters_is_refused_not_printed_raw() {
    // helper-9: `run` printed the id raw in its last message, so a newline
    // and an escape in it forged a line of ours.
    let d = tempfile::tempdir().unwrap();
    let ran = run_bounded(
        Command::new(bin())
            .current_dir(d.path())
            .args([
                "run",
                "--container-id",
                "evil\nmesos-gelf: all delivered\x1b[31m",
            ])
            .args(["--", "echo", "hi"]),
        Duration::from_secs(60),
    );
    ran.assert_code(2);
    let err = ran.stderr();
    assert!(err.contains("no control"), "{err}");
    assert!(!err.contains('\x1b') && err.lines().count() == 1, "{err:?}");
    assert!(ran.stdout.is_empty(), "the command did not run");
    // Nor invisible formatting: a line separator, a right-to-left override.
    for id in ["a\u{2028}b", "a\u{202e}b", "."] {
        let ran = run_bounded(
            Command::new(bin()).current_dir(d.path()).args([
                "run",
                "--container-id",
                id,
                "--",
                "echo",
                "hi",
            ]),
            Duration::from_secs(60),
        );
        ran.assert_code(2);
        assert!(ran.stderr().contains("--container-id"), "{}", ran.stderr());
    }
}

/// Values a task controls (an override in its environment, a label, an
/// invalid regex whose error spans lines) are logged escaped: they can
/// neither forge a line of ours nor send an escape to the terminal
/// (issue 32: `GELF_LOGGER_TOPIC=$'bad\nmesos-gelf E: forged\x1b[2J'`
/// printed a forged line and cleared the screen).
#[test]
fn values_a_task_controls_are_logged_escaped_never_raw() {
    let forged = "bad\nmesos-gelf E: forged line\u{1b}[2J\u{2028}x";
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("config.json");
    let labels = serde_json::json!([
        {"key": "gelf.topic", "value": forged},
        {"key": "gelf.multiline_start", "value": "(unclosed"},
    ]);
    std::fs::write(
        &cfg,
        serde_json::json!({
            "directory": d.path().join("sandbox").display().to_string(),
            "task_info": {"name": "t", "task_id": {"value": "t"}, "labels": {"labels": labels}}
        })
        .to_string(),
    )
    .unwrap();
    let by_env = Command::new(bin())
        .args(["run", "--sandbox"])
        .arg(d.path().join("sandbox-env"))
        .args(["--", "sh", "-c", "echo hello"])
        .env("GELF_LOGGER_TOPIC", forged)
        .env("GELF_LOGGER_MULTILINE_START", "(unclosed")
        .output()
        .unwrap();
    let by_label = Command::new(bin())
        .current_dir(d.path())
        .args(["run", "--container-config"])
        .arg(&cfg)
        .args(["--", "sh", "-c", "echo hello"])
        .output()
        .unwrap();
    for (how, out) in [("environment", by_env), ("labels", by_label)] {
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{how}: {err}");
        assert!(
            err.contains("forged line"),
            "{how}: the bad value is named: {err}"
        );
        assert!(err.contains("invalid regex"), "{how}: {err}");
        for line in err.lines() {
            assert!(
                line.starts_with("mesos-gelf W: ") || line.starts_with("mesos-gelf I: "),
                "{how}: a line not ours: {line:?} in {err}"
            );
            assert!(
                !line.contains("\u{1b}") && !line.contains("\u{2028}"),
                "{how}: raw escape in {line:?}"
            );
        }
        // Every line shipped still arrives under the default topic.
        assert_eq!(gelf_lines(&out.stdout).len(), 1, "{how}");
    }
}

/// `run --set drop_privileges=true` with a config naming a user: the
/// sandbox `run` makes is that user's, as the agent gives a task its
/// sandbox (issue 32: it was root's 0755, and the companion, as `nobody`,
/// wrote not one byte of it).
#[test]
fn a_sandbox_run_makes_for_a_user_is_that_users() {
    use std::os::unix::fs::MetadataExt;
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root to change users");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        d.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let sandbox = d.path().join("sandbox");
    let cfg = d.path().join("config.json");
    std::fs::write(
        &cfg,
        serde_json::json!({"directory": sandbox.display().to_string(), "user": "nobody"})
            .to_string(),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["run", "--set", "drop_privileges=true", "--sandbox"])
        .arg(&sandbox)
        .arg("--container-config")
        .arg(&cfg)
        .args(["--", "sh", "-c", "echo hello"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let nobody = mesos_gelf_logger::privileges::lookup("nobody").unwrap();
    assert_eq!(std::fs::metadata(&sandbox).unwrap().uid(), nobody.uid);
    assert_eq!(
        std::fs::read_to_string(sandbox.join("stdout")).unwrap(),
        "hello\n",
        "{err}"
    );
    assert!(!err.contains("sandbox_write"), "{err}");
}
