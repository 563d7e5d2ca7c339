//! The pipeline end to end on one machine: `mesos-gelf run` of real child
//! processes, through real pipes, the real companion process and spool, to
//! GELF on standard output and the sandbox files.

mod support;

use serde_json::Value;
use support::*;

fn sandbox() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn run_in(
    sbx: &std::path::Path,
    extra: &[&str],
    cmd: &[&str],
) -> (Vec<Value>, std::process::Output) {
    let s = sbx.to_str().unwrap();
    let mut args = vec!["--sandbox", s];
    args.extend_from_slice(extra);
    let out = run(&args, cmd);
    let msgs = gelf_lines(&out.stdout);
    for m in &msgs {
        assert_gelf(m);
    }
    (msgs, out)
}

#[test]
fn runs_own_environment_carries_the_commands_overrides() {
    // helper-1: `GELF_LOGGER_TOPIC=x mesos-gelf run ...` was ignored (and
    // a bad value not warned about): the command inherits run's
    // environment, so its overrides are the task's.
    let d = sandbox();
    let out = std::process::Command::new(bin())
        .args(["run", "--sandbox"])
        .arg(d.path())
        .args(["--", "sh", "-c", "echo hi; echo oops >&2"])
        .env("GELF_LOGGER_LEVEL_STDOUT", "2")
        .env("GELF_LOGGER_TOPIC", "..")
        .env("GELF_LOGGER", "no name")
        .output()
        .unwrap();
    assert!(out.status.success());
    let msgs = gelf_lines(&out.stdout);
    msgs.iter().for_each(assert_gelf);
    assert_eq!(by_stream(&msgs, "stdout")[0]["level"], 2, "{msgs:?}");
    assert_eq!(by_stream(&msgs, "stderr")[0]["level"], 3);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("GELF_LOGGER_TOPIC") && err.contains(".."),
        "the bad override is named: {err}"
    );
}

#[test]
fn a_free_space_floor_the_filesystem_cannot_give_is_refused_before_the_command_runs() {
    // helper-2: spool_min_free=1GB on a 64 MB filesystem was accepted and
    // every line lost, reported as a damaged segment.
    let d = sandbox();
    let fs = Tmpfs::mount(&d.path().join("fs"), 4096);
    let marker = d.path().join("ran");
    let out = std::process::Command::new(bin())
        .args(["run", "--sandbox"])
        .arg(d.path().join("sbx"))
        .args([
            "--set",
            &format!("spool_dir={}", fs.0.join("spool").display()),
        ])
        .args(["--set", "spool_min_free=1GB"])
        .args(["--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spool_min_free"), "{err}");
    assert!(!marker.exists(), "the command ran");
}

#[test]
fn one_line_each_stream_levels_and_sandbox_files() {
    let d = sandbox();
    let (msgs, out) = run_in(d.path(), &[], &["sh", "-c", "echo hi; echo oops >&2"]);
    assert!(out.status.success());
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    let o = by_stream(&msgs, "stdout");
    let e = by_stream(&msgs, "stderr");
    assert_eq!(o[0]["short_message"], "hi");
    assert_eq!(o[0]["level"], 6);
    assert_eq!(o[0]["_seq"], 1);
    assert_eq!(e[0]["short_message"], "oops");
    assert_eq!(e[0]["level"], 3);
    assert_eq!(std::fs::read(d.path().join("stdout")).unwrap(), b"hi\n");
    assert_eq!(std::fs::read(d.path().join("stderr")).unwrap(), b"oops\n");
}

#[test]
fn exit_status_is_the_commands() {
    let d = sandbox();
    let (_, out) = run_in(d.path(), &[], &["sh", "-c", "echo x; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let (_, out) = run_in(d.path(), &[], &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15));
    let (_, out) = run_in(d.path(), &[], &["/nonexistent/cmd"]);
    assert_eq!(out.status.code(), Some(127));
}

#[test]
fn a_million_lines_exactly_once_in_order_per_stream() {
    let d = sandbox();
    let (msgs, out) = run_in(
        d.path(),
        &[],
        &[
            "sh",
            "-c",
            "seq 1 1000000 & seq 1 20000 | sed 's/^/err /' >&2; wait",
        ],
    );
    assert!(out.status.success());
    let o = by_stream(&msgs, "stdout");
    let e = by_stream(&msgs, "stderr");
    assert_eq!(o.len(), 1_000_000);
    assert_eq!(e.len(), 20_000);
    for (i, m) in o.iter().enumerate() {
        assert_eq!(m["_seq"].as_u64(), Some(i as u64 + 1));
        assert_eq!(m["short_message"].as_str().unwrap(), (i + 1).to_string());
    }
    for (i, m) in e.iter().enumerate() {
        assert_eq!(m["_seq"].as_u64(), Some(i as u64 + 1));
        assert_eq!(
            m["short_message"].as_str().unwrap(),
            format!("err {}", i + 1)
        );
    }
    let expected: String = (1..=1_000_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(
        std::fs::read(d.path().join("stdout")).unwrap(),
        expected.as_bytes()
    );
}

/// The default companion, `mesos-gelf-companion`, maps no C++ runtime
/// (src/companion_main.rs says why that matters), and a burst of the
/// shortest lines, many records per byte read, still arrives exactly once
/// and in order (the companion hands a read over in small pieces).
#[test]
fn lean_companion_has_no_cxx_runtime_and_ships_a_burst_of_empty_lines() {
    let lean = bin().with_file_name("mesos-gelf-companion");
    let d = sandbox();
    // Started by hand without --spool: sandbox files only, and nothing in
    // its working directory (it once left a segment and `done` there).
    let cwd = tempfile::tempdir().unwrap();
    let mut c = std::process::Command::new(&lean)
        .arg("--sandbox")
        .arg(d.path())
        .args(["--stdout-fd", "0", "--stderr-fd=-1"])
        .current_dir(cwd.path())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its maps name its own binary once the exec is done and the dynamic
    // loader has mapped every library it needs.
    let maps_path = format!("/proc/{}/maps", c.id());
    let t0 = std::time::Instant::now();
    let maps = loop {
        let m = std::fs::read_to_string(&maps_path).unwrap_or_default();
        if m.contains("mesos-gelf-companion") && m.contains("libc.so") {
            break m;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "the companion never mapped its binary and libc: {m}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(!maps.contains("libstdc++"), "libstdc++ is mapped: {maps}");
    std::io::Write::write_all(&mut c.stdin.take().unwrap(), b"by hand\n").unwrap();
    assert!(c.wait().unwrap().success());
    assert_eq!(
        std::fs::read(d.path().join("stdout")).unwrap(),
        b"by hand\n"
    );
    let left: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "written into its working directory: {left:?}"
    );

    let d = sandbox();
    let (msgs, out) = run_in(
        d.path(),
        &[],
        &[
            "sh",
            "-c",
            "yes '' | head -n 200000; yes x | head -n 200000",
        ],
    );
    assert!(out.status.success());
    let o = by_stream(&msgs, "stdout");
    assert_eq!(o.len(), 400_000);
    for (i, m) in o.iter().enumerate() {
        assert_eq!(m["_seq"].as_u64(), Some(i as u64 + 1));
        let want = if i < 200_000 { "(empty line)" } else { "x" };
        assert_eq!(m["short_message"], want, "record {}", i + 1);
    }
    assert_eq!(
        std::fs::metadata(d.path().join("stdout")).unwrap().len(),
        600_000
    );
}

#[test]
fn output_without_trailing_newline_is_flushed_at_eof() {
    let d = sandbox();
    let (msgs, _) = run_in(d.path(), &[], &["printf", "first\nlast without newline"]);
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[1]["short_message"], "last without newline");
    assert_eq!(msgs[1]["_unterminated"], 1);
    assert!(msgs[0].get("_unterminated").is_none());
    assert_eq!(
        std::fs::read(d.path().join("stdout")).unwrap(),
        b"first\nlast without newline"
    );
}

#[test]
fn an_unterminated_line_is_shipped_after_the_idle_timeout() {
    let d = sandbox();
    let (msgs, _) = run_in(
        d.path(),
        &["--set", "idle_flush_ms=100"],
        &["sh", "-c", "printf 'Password: '; sleep 1; echo ok"],
    );
    let texts: Vec<&str> = msgs
        .iter()
        .map(|m| m["short_message"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["Password: ", "ok"]);
    assert_eq!(msgs[0]["_unterminated"], 1);
    assert_eq!(msgs[0]["_line_part"], 1);
    assert_eq!(msgs[1]["_line_part"], 2);
    assert_eq!(msgs[1]["_line_continues"], 0);
}

#[test]
fn giant_lines_are_split_into_parts_and_sandbox_is_byte_identical() {
    let d = sandbox();
    // 1 MB line, then a short one; max_line_bytes 64KB.
    let (msgs, _) = run_in(
        d.path(),
        &["--set", "max_line_bytes=65536"],
        &[
            "sh",
            "-c",
            "head -c 1048576 /dev/zero | tr '\\0' 'x'; echo; echo short",
        ],
    );
    assert_eq!(msgs.len(), 17, "16 parts + 1 line");
    for (i, m) in msgs[..16].iter().enumerate() {
        assert_eq!(m["_line_part"], i as u64 + 1);
        assert_eq!(m["_line_continues"], u8::from(i < 15));
        assert_eq!(m["short_message"].as_str().unwrap().len(), 65536);
    }
    assert_eq!(msgs[16]["short_message"], "short");
    assert!(msgs[16].get("_line_part").is_none());
    let sbx = std::fs::read(d.path().join("stdout")).unwrap();
    assert_eq!(sbx.len(), 1048576 + 1 + 6);
}

fn run_fixture(name: &str, extra: &[&str]) -> (tempfile::TempDir, Vec<Value>) {
    let d = sandbox();
    let f = shared(&format!("fixtures/lines/{name}"));
    let (msgs, out) = run_in(d.path(), extra, &["cat", f.to_str().unwrap()]);
    assert!(out.status.success());
    // Whatever the bytes, the sandbox file holds them unchanged.
    assert_eq!(
        std::fs::read(d.path().join("stdout")).unwrap(),
        std::fs::read(&f).unwrap()
    );
    (d, msgs)
}

fn texts(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["short_message"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn fixture_ansi_colors_are_kept_as_escaped_text() {
    let (_d, msgs) = run_fixture("ansi_colors.txt", &[]);
    assert_eq!(
        texts(&msgs),
        [
            "\u{1b}[32mINFO\u{1b}[0m server started on :8080",
            "\u{1b}[1;31mERROR\u{1b}[0m connection refused"
        ]
    );
}

#[test]
fn fixture_crlf_drops_one_trailing_cr_only() {
    let (_d, msgs) = run_fixture("crlf.txt", &[]);
    assert_eq!(
        texts(&msgs),
        [
            "windows line one",
            "windows line two",
            "(empty line)",
            "bare cr\rin middle"
        ]
    );
}

#[test]
fn fixture_invalid_utf8_becomes_replacement_characters() {
    let (_d, msgs) = run_fixture("invalid_utf8.bin", &[]);
    let t = texts(&msgs);
    assert_eq!(t.len(), 5);
    assert_eq!(t[0], "ok line");
    assert_eq!(t[1], "\u{fffd}\u{fffd} broken \u{fffd}( sequence");
    assert_eq!(t[2], "\u{fffd}\u{fffd}\u{fffd}");
    assert_eq!(t[3], "valid € euro");
    assert_eq!(t[4], "truncated multibyte at end \u{fffd}");
    assert_eq!(msgs[4]["_unterminated"], 1);
}

#[test]
fn fixture_nul_bytes_are_escaped_not_cut() {
    let (_d, msgs) = run_fixture("nul_bytes.bin", &[]);
    // A line of NULs only would be blank after Graylog's trim (and the
    // message dropped): it ships as a visible stand-in.
    assert_eq!(
        texts(&msgs),
        ["before\0after nul", r#"(blank line: "\0\0\0")"#, "plain"]
    );
}

#[test]
fn fixture_json_app_logs_cannot_spoof_gelf_fields() {
    let (_d, msgs) = run_fixture("json_app_logs.txt", &[]);
    assert_eq!(msgs.len(), 4);
    let spoof = &msgs[2];
    assert!(spoof["short_message"]
        .as_str()
        .unwrap()
        .contains("app tries to spoof gelf"));
    assert_ne!(spoof["host"], "evil");
    assert_eq!(spoof["level"], 6);
    assert!(spoof.get("_id").is_none());
    assert_eq!(msgs[3]["short_message"], "{\"truncated json");
}

#[test]
fn fixture_stacktraces_join_with_multiline_start() {
    let (_d, msgs) = run_fixture(
        "stacktraces.txt",
        &["--set", r"multiline_start=^(\d{4}-\d\d-\d\d |Traceback)"],
    );
    assert_eq!(msgs.len(), 4, "{msgs:#?}");
    assert!(msgs[0]["short_message"]
        .as_str()
        .unwrap()
        .ends_with("Checkout failed for order 981234"));
    let full = msgs[0]["full_message"].as_str().unwrap();
    assert_eq!(full.lines().count(), 10);
    assert!(full.contains("Caused by: java.util.concurrent.TimeoutException"));
    assert!(msgs[1].get("full_message").is_none());
    assert_eq!(
        msgs[2]["short_message"],
        "Traceback (most recent call last):"
    );
    assert!(msgs[2]["full_message"]
        .as_str()
        .unwrap()
        .ends_with("KeyError: 'order_id'"));
    assert!(msgs[3]["short_message"]
        .as_str()
        .unwrap()
        .ends_with("Health - ok"));
    // Without the rule every line is its own record.
    let (_d, msgs) = run_fixture("stacktraces.txt", &[]);
    assert_eq!(msgs.len(), 18);
}

#[test]
fn sandbox_files_rotate_and_the_count_is_capped() {
    let d = sandbox();
    let (msgs, _) = run_in(
        d.path(),
        &[
            "--set",
            "sandbox_max_size=4KB",
            "--set",
            "sandbox_max_files=3",
        ],
        &["seq", "1", "20000"],
    );
    assert_eq!(msgs.len(), 20000, "rotation never loses shipped lines");
    let mut names: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("stdout"))
        .collect();
    names.sort();
    assert_eq!(names, ["stdout", "stdout.1", "stdout.2"]);
    let mut tail = Vec::new();
    for n in ["stdout.2", "stdout.1", "stdout"] {
        let b = std::fs::read(d.path().join(n)).unwrap();
        assert!(b.len() <= 4096);
        tail.extend(b);
    }
    let all: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert!(
        all.as_bytes().ends_with(&tail),
        "the newest bytes are kept, in order"
    );
    assert_eq!(
        std::fs::metadata(d.path().join("stdout.1")).unwrap().len(),
        4096
    );
}

fn run_config(fixture: &str, container_id: &str) -> (Vec<Value>, std::process::Output) {
    run_config_with(fixture, container_id, &[])
}

fn run_config_with(
    fixture: &str,
    container_id: &str,
    extra: &[&str],
) -> (Vec<Value>, std::process::Output) {
    let d = sandbox();
    let cfg = shared(&format!("fixtures/container_config/{fixture}"));
    let mut args = vec![
        "--container-config",
        cfg.to_str().unwrap(),
        "--container-id",
        container_id,
    ];
    args.extend_from_slice(extra);
    run_in(
        d.path(),
        &args,
        &["sh", "-c", "echo to-stdout; echo to-stderr >&2"],
    )
}

#[test]
fn container_config_marathon_command_task() {
    let (msgs, out) = run_config(
        "marathon_command_task.json",
        "b7c1e2d3-4f5a-6b7c-8d9e-0f1a2b3c4d5e",
    );
    assert!(out.status.success());
    assert_eq!(msgs.len(), 2);
    let m = &by_stream(&msgs, "stdout")[0];
    assert_marathon_identity(m);
    assert_eq!(
        m["_task_id"],
        "prod_web.6f1d2a4e-8c0b-11ef-9a3e-0242ac110002"
    );
    assert_eq!(m["_task_name"], "web.prod");
    assert_eq!(m["_app"], "/prod/web");
    assert_eq!(m["_app_version"], "2026-11-20T09:14:03.512Z");
    assert_eq!(m["_user"], "nobody");
    assert_eq!(m["_label_team"], "storefront");
    assert_eq!(m["_label_tier"], "frontend");
    assert_eq!(m["_label_HAPROXY_GROUP"], "external");
    let all = String::from_utf8_lossy(&out.stdout);
    for secret in [
        "hunter2",
        "DATABASE_PASSWORD",
        "api-token",
        "31050",
        "agent-17",
    ] {
        assert!(!all.contains(secret), "{secret} leaked");
    }
}

#[test]
fn container_config_docker_task_label_override_sets_stderr_level() {
    let (msgs, out) = run_config(
        "docker_containerizer_task.json",
        "b0c1d2e3-f405-4617-8829-3a4b5c6d7e8f",
    );
    assert!(out.status.success());
    let e = &by_stream(&msgs, "stderr")[0];
    assert_eq!(e["level"], 4, "label gelf.level_stderr=4");
    assert_eq!(e["_app"], "/prod/nginx");
    assert_eq!(e["_task_name"], "nginx.prod");
    assert_eq!(e["_user"], "root");
    assert!(
        e.get("_label_gelf.level_stderr").is_none(),
        "override labels are settings, not fields"
    );
}

#[test]
fn oversized_identity_is_capped_so_every_record_stays_small() {
    let d = sandbox();
    let big = "x".repeat(200_000);
    let labels: Vec<Value> = (0..500)
        .map(|i| serde_json::json!({"key": format!("k{i}"), "value": "v".repeat(2000)}))
        .collect();
    let cfg = serde_json::json!({
        "directory": d.path().join("sbx"),
        "user": "nobody",
        "executor_info": {
            "executor_id": {"value": big},
            "framework_id": {"value": "fw-1"},
        },
        "task_info": {
            "name": big,
            "task_id": {"value": big},
            "labels": {"labels": labels},
        },
        "command_info": {"environment": {"variables": [
            {"name": "MARATHON_APP_ID", "type": "VALUE", "value": big},
            {"name": "MARATHON_APP_VERSION", "type": "VALUE", "value": big},
        ]}},
    });
    let path = d.path().join("config.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let (msgs, out) = run_in(
        &d.path().join("sbx"),
        &[
            "--container-config",
            path.to_str().unwrap(),
            "--container-id",
            "c-big",
        ],
        &["echo", "hello"],
    );
    assert!(out.status.success());
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m["short_message"], "hello");
    for f in [
        "_executor_id",
        "_task_name",
        "_task_id",
        "_app",
        "_app_version",
    ] {
        let v = m[f].as_str().unwrap();
        assert!(v.starts_with("xxx") && v.ends_with("…[truncated]"), "{f}");
        assert!(v.len() <= 1024 + 16, "{f}: {}", v.len());
    }
    assert_eq!(m["_framework_id"], "fw-1");
    // 5 capped fields + 16 KiB of labels: the record stays far below 1 MB.
    let size = m.to_string().len();
    assert!(size < 24 * 1024, "{size} bytes");
    let err = String::from_utf8_lossy(&out.stderr);
    for f in ["executor_id", "task_name", "task_id", "app`", "app_version"] {
        assert!(err.contains(&format!("`{f}")), "warning for {f}: {err}");
    }
    assert!(err.contains("label(s) dropped"), "{err}");
}

/// The `_label_*` fields a record carries, sorted.
fn label_fields(m: &Value) -> Vec<String> {
    let mut v: Vec<String> = m
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("_label_"))
        .cloned()
        .collect();
    v.sort();
    v
}

#[test]
fn labels_parameter_keeps_all_none_or_the_listed_labels() {
    const MARATHON: &str = "b7c1e2d3-4f5a-6b7c-8d9e-0f1a2b3c4d5e";
    let cases: [(&str, &[&str]); 4] = [
        (
            "all",
            &["_label_HAPROXY_GROUP", "_label_team", "_label_tier"],
        ),
        ("none", &[]),
        // Names are matched exactly; unknown names are no error.
        (
            "team, HAPROXY_GROUP,missing",
            &["_label_HAPROXY_GROUP", "_label_team"],
        ),
        ("TEAM", &[]),
    ];
    for (filter, want) in cases {
        let set = format!("labels={filter}");
        let (msgs, out) = run_config_with("marathon_command_task.json", MARATHON, &["--set", &set]);
        assert!(out.status.success(), "labels={filter}");
        assert_eq!(msgs.len(), 2);
        for m in &msgs {
            assert_eq!(label_fields(m), want, "labels={filter}");
            // Identity never depends on the label filter.
            assert_marathon_identity(m);
            assert_eq!(m["_app"], "/prod/web");
        }
        if filter == "none" {
            assert!(!String::from_utf8_lossy(&out.stdout).contains("storefront"));
        }
    }
    // `gelf.*` override labels are settings: they apply with labels=none.
    let (msgs, out) = run_config_with(
        "docker_containerizer_task.json",
        "b0c1d2e3-f405-4617-8829-3a4b5c6d7e8f",
        &["--set", "labels=none"],
    );
    assert!(out.status.success());
    let e = &by_stream(&msgs, "stderr")[0];
    assert_eq!(e["level"], 4, "gelf.level_stderr=4 still applies");
}

#[test]
fn container_config_custom_executor_without_task() {
    let (msgs, out) = run_config(
        "custom_executor.json",
        "5d6e7f80-9a1b-4c2d-8e3f-4a5b6c7d8e9f",
    );
    assert!(out.status.success());
    let m = &msgs[0];
    assert_eq!(m["_executor_id"], "thermos-www-data-prod-hello-0-2f4e6a8c");
    assert_eq!(
        m["_framework_id"],
        "0c9e8d7f-6a5b-4c3d-2e1f-0a9b8c7d6e5f-0001"
    );
    assert_eq!(
        m["_agent_id"], "8e3d5c2a-7b1f-4d6e-a9c8-0f1e2d3c4b5a-S3",
        "from the sandbox path"
    );
    assert_eq!(m["_label_source"], "www-data.prod.hello.0");
    assert_eq!(m["_user"], "www-data");
    assert!(m.get("_task_id").is_none());
}

#[test]
fn container_config_nested_task_group_container() {
    let (msgs, out) = run_config(
        "nested_task_group_container.json",
        "11223344-5566-4778-8899-aabbccddeeff.99887766-5544-4332-8110-ffeeddccbbaa",
    );
    assert!(out.status.success());
    let m = &msgs[0];
    assert_eq!(
        m["_parent_container_id"],
        "11223344-5566-4778-8899-aabbccddeeff"
    );
    assert_eq!(m["_executor_id"], "instance-pod_checkout.9a8b7c6d");
    assert_eq!(
        m["_framework_id"],
        "4a5c3f0e-2b1d-4c8e-9f7a-1e2d3c4b5a69-0000"
    );
    assert_eq!(m["_agent_id"], "8e3d5c2a-7b1f-4d6e-a9c8-0f1e2d3c4b5a-S3");
    assert_eq!(m["_task_id"], "pod_checkout.instance-9a8b7c6d.worker");
    assert_eq!(m["_app"], "/prod/checkout");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cr3t"));
}

#[test]
fn bad_container_configs_fail_clearly_or_fall_back() {
    // Unusable: a clear error naming the problem, exit status 2, nothing run.
    for (f, want) in [
        ("bad/not_json.txt", "not valid JSON"),
        (
            "bad/empty_object.json",
            "`directory` (the sandbox path) is missing",
        ),
        (
            "bad/missing_directory.json",
            "`directory` (the sandbox path) is missing",
        ),
    ] {
        let (msgs, out) = run_config(f, "c1");
        assert_eq!(out.status.code(), Some(2), "{f}");
        assert!(msgs.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{f}: {err}");
    }
    // Wrong types: the field is skipped with a warning; ids from the path.
    let (msgs, out) = run_config("bad/wrong_types.json", "c2");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("executor_info.executor_id` should be an object"),
        "{err}"
    );
    assert!(err.contains("task_info.labels"), "{err}");
    assert_eq!(
        msgs[0]["_executor_id"],
        "prod_web.6f1d2a4e-8c0b-11ef-9a3e-0242ac110002"
    );
    assert!(
        msgs[0].get("_label_team").is_some(),
        "executor labels still apply"
    );
    // Hostile labels: shipped within the caps, names sanitised, never `_id`.
    let (msgs, out) = run_config("bad/hostile_labels.json", "c3");
    assert!(out.status.success());
    let m = msgs[0].as_object().unwrap();
    let labels: Vec<&String> = m.keys().filter(|k| k.starts_with("_label_")).collect();
    assert!(labels.len() <= 64, "{}", labels.len());
    assert!(m.contains_key("_label__id") && m.contains_key("_label_id"));
    assert!(m.contains_key("_label_has_space") && m.contains_key("_label_dotted_key-name"));
    assert!(m["_label_long"].as_str().unwrap().len() < 1100);
    assert!(msgs[0].to_string().len() < 32 * 1024);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("empty key dropped")
            && err.contains("truncated")
            && err.contains("label(s) dropped"),
        "{err}"
    );
}

#[test]
fn bad_parameters_are_rejected_naming_the_parameter() {
    let d = sandbox();
    let out = run(
        &[
            "--sandbox",
            d.path().to_str().unwrap(),
            "--set",
            "max_line_bytes=lots",
        ],
        &["true"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("parameter `max_line_bytes`"));
    let out = run(
        &[
            "--sandbox",
            d.path().to_str().unwrap(),
            "--set",
            "no_such_thing=1",
        ],
        &["true"],
    );
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("parameter `no_such_thing`: unknown parameter"));
}
