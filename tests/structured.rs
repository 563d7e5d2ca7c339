//! Structured lines to GELF fields, and every line intact in Graylog
//! (issue 19): glog levels and times, JSON and logfmt fields, hostile
//! structured input, and lines Graylog would otherwise drop. Every message
//! here passes `support::assert_gelf` (strict GELF 1.1 and Graylog's own
//! decoding rules), through `gelf_lines`.

mod support;

use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use support::*;

/// `mesos-gelf run` of a shell script with `sets`, every message checked.
fn run_sh(sets: &[&str], script: &str) -> Vec<Value> {
    let d = tempfile::tempdir().unwrap();
    let mut c = Command::new(bin());
    c.args(["run", "--sandbox"]).arg(d.path());
    for s in sets {
        c.args(["--set", s]);
    }
    let ran = run_bounded(c.args(["--", "sh", "-c", script]), Duration::from_secs(60));
    ran.assert_code(0);
    gelf_lines(&ran.stdout)
}

fn by_text<'a>(msgs: &'a [Value], text: &str) -> &'a Value {
    msgs.iter()
        .find(|m| m["short_message"] == text)
        .unwrap_or_else(|| panic!("no {text:?} in {msgs:#?}"))
}

#[test]
fn lines_graylog_would_drop_get_a_visible_stand_in() {
    let f = shared("fixtures/lines/blank_after_trim.bin");
    let msgs = run_sh(&[], &format!("cat {}", f.display()));
    let texts: Vec<&str> = msgs
        .iter()
        .map(|m| m["short_message"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            r#"(blank line: "   ")"#,
            r#"(blank line: "\t")"#,
            r#"(blank line: "\0")"#,
            r#"(blank line: "\u{1b}")"#,
            r#"(blank line: " \u{1} ")"#,
            "(empty line)",
        ],
        "one message per line, each kept by Graylog"
    );
}

#[test]
fn the_executors_glog_lines_arrive_at_their_own_levels_and_times() {
    let f = shared("fixtures/lines/mesos_executor_glog.txt");
    // As the executor writes them: on the task's stderr.
    let msgs = run_sh(&[], &format!("cat {} >&2", f.display()));
    let v = by_text(
        &msgs,
        "Executor registered on agent 657ffcbc-fc82-445b-afde-18a0aedc650f-S0",
    );
    assert_eq!(v["level"], 6, "info, not an error");
    assert_eq!(v["_src_file"], "exec.cpp");
    assert_eq!(v["_src_line"], 237);
    assert_eq!(v["_thread_id"], 20742);
    // The prefix's local time (this host's zone), microseconds kept.
    let ts = v["timestamp"].as_f64().unwrap();
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let t = ts as libc::time_t;
    unsafe { libc::localtime_r(&t, &mut tm) };
    assert_eq!(
        (tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec),
        (11, 25, 8, 32, 35)
    );
    assert!((ts.fract() - 0.417428).abs() < 1e-5, "{ts}");
    assert_eq!(by_text(&msgs, "Shutting down")["level"], 6);
    // A W record whose text is on the following lines keeps the line.
    let w = msgs
        .iter()
        .find(|m| {
            m["short_message"]
                .as_str()
                .unwrap()
                .starts_with("W1125 07:36:54")
        })
        .unwrap();
    assert_eq!(w["level"], 4);
    // glog's RAW line: warning level, a zero date keeps the arrival time.
    let raw = msgs
        .iter()
        .find(|m| {
            m["short_message"]
                .as_str()
                .unwrap()
                .starts_with("RAW: Received signal")
        })
        .unwrap();
    assert_eq!(raw["level"], 4);
    // Not glog: stderr's level, unchanged.
    for t in [
        "WARNING: Logging before InitGoogleLogging() is written to STDERR",
        "**************************************************",
    ] {
        assert_eq!(by_text(&msgs, t)["level"], 3, "{t}");
    }
    // parse=none: everything on stderr is an error, as before.
    let none = run_sh(&["parse=none"], &format!("cat {} >&2", f.display()));
    assert!(none.iter().all(|m| m["level"] == 3));
}

#[test]
fn json_app_logs_become_fields_and_cannot_spoof() {
    let f = shared("fixtures/lines/json_app_logs.txt");
    let msgs = run_sh(&["parse=json"], &format!("cat {}", f.display()));
    let v = by_text(&msgs, "request served");
    assert_eq!(v["level"], 6);
    assert_eq!(v["_path"], "/api/cart");
    assert_eq!(v["_status"], "200", "numbers as strings by default");
    assert_eq!(v["_duration_ms"], "12.5");
    let v = by_text(&msgs, "payment declined");
    assert_eq!(v["level"], 3);
    assert_eq!(v["_error_code"], "card_declined", "nested keys flattened");
    assert_eq!(v["_order_id"], "981234");
    let v = by_text(&msgs, "app tries to spoof gelf");
    assert_eq!(
        v["host"].as_str().unwrap(),
        mesos_gelf_logger::config::hostname()
    );
    assert_eq!(v["_log_host"], "evil");
    assert_eq!(v["_log_id"], "x");
    assert_eq!(v["level"], 0);
    by_text(&msgs, "{\"truncated json");
    // parse_numbers=keep.
    let keep = run_sh(
        &["parse=json", "parse_numbers=keep"],
        &format!("cat {}", f.display()),
    );
    assert_eq!(by_text(&keep, "request served")["_status"], 200);
}

#[test]
fn hostile_json_is_capped_renamed_or_passed_through() {
    let d = tempfile::tempdir().unwrap();
    let deep = format!("{}\"x\"{}", "{\"a\":".repeat(50), "}".repeat(50));
    let many = format!(
        "{{{}}}",
        (0..10_000)
            .map(|i| format!("\"k{i}\":{i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let lines = [
        deep.clone(),
        many.clone(),
        r#"{"msg":"dup","k":"first","k":"second"}"#.to_string(),
        r#"{"msg":"order","z_y":"written first","z.y":"written second"}"#.to_string(),
        r#"{"msg":"huge","n":123456789012345678901234567890,"f":1e308}"#.to_string(),
        r#"{"msg":"names","_id":1,"id":2,"source":3,"message":4,"version":5,"host":6,"a.b":7,"a_b":8,"gl2_x":9,"_seq":10,"container_id":11,"label_x":12}"#.to_string(),
        format!("{{\"msg\":\"big\",\"v\":\"{}\"}}", "v".repeat(100_000)),
        r#"{"msg":"blank values","empty":"","spaces":"   ","t":true,"n":null,"arr":[1,{"a":2}]}"#.to_string(),
    ];
    let mut file = lines.join("\n").into_bytes();
    file.extend_from_slice(b"\n{\"msg\":\"bad \xff utf8 \xc3\"}\n");
    // A JSON line longer than max_line_bytes arrives in parts: none is JSON.
    file.extend_from_slice(
        format!("{{\"msg\":\"split\",\"v\":\"{}\"}}\n", "s".repeat(200_000)).as_bytes(),
    );
    let input = d.path().join("in");
    std::fs::write(&input, &file).unwrap();
    let msgs = run_sh(
        &["parse=json", "max_line_bytes=150000"],
        &format!("cat {}", input.display()),
    );
    // Nesting past 8 levels: the rest as JSON text, counted.
    let v = msgs
        .iter()
        .find(|m| {
            m.as_object()
                .unwrap()
                .keys()
                .any(|k| k.starts_with("_a_a_a"))
        })
        .expect("deep");
    let (k, text) = v
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.starts_with("_a_a_a"))
        .unwrap();
    assert_eq!(k.matches('a').count(), 8, "{k}");
    assert!(
        text.as_str().unwrap().starts_with("{\"a\":"),
        "the rest as JSON text"
    );
    assert!(v["_parse_cut"].as_u64().unwrap() >= 1);
    // 10,000 keys: 100 fields, the rest counted.
    let v = msgs.iter().find(|m| m["_k0"].is_string()).expect("many");
    let n = v
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("_k"))
        .count();
    assert_eq!(n, 100);
    assert_eq!(v["_parse_cut"], 9_900);
    assert_eq!(by_text(&msgs, "dup")["_k"], "second", "the last duplicate");
    // Two names that meet: the one written first wins, whatever their
    // alphabetical order.
    assert_eq!(by_text(&msgs, "order")["_z_y"], "written first");
    let h = by_text(&msgs, "huge");
    assert!(h["_n"].is_string() && h["_f"].is_string());
    let v = by_text(&msgs, "names");
    for (k, want) in [
        ("_log_id", "1"), // `_id` and `id` meet as log_id: the first wins
        ("_log_source", "3"),
        ("_log_message", "4"),
        ("_log_version", "5"),
        ("_log_host", "6"),
        ("_a_b", "7"), // `a.b` and `a_b` meet: the first wins
        ("_log_gl2_x", "9"),
        ("_log_seq", "10"),
        ("_log_container_id", "11"),
        ("_log_label_x", "12"),
    ] {
        assert_eq!(v[k], want, "{k}: {v}");
    }
    assert_eq!(v["_parse_cut"], 2);
    let big = by_text(&msgs, "big");
    assert!(big["_v"].as_str().unwrap().len() <= 32_766);
    assert_eq!(big["_parse_cut"], 1, "the value was cut");
    let b = by_text(&msgs, "blank values");
    assert_eq!(b["_empty"], "(empty)");
    assert_eq!(b["_spaces"], r#"(blank: "   ")"#);
    assert_eq!(b["_t"], "true");
    assert!(b.get("_n").is_none());
    assert_eq!(b["_arr"], r#"[1,{"a":2}]"#);
    assert_eq!(by_text(&msgs, "bad \u{fffd} utf8 \u{fffd}")["level"], 6);
    let parts: Vec<&Value> = msgs
        .iter()
        .filter(|m| m["_line_part"].is_number())
        .collect();
    assert!(parts.len() >= 2 && parts.iter().all(|m| m.get("_v").is_none()));
}

#[test]
fn kept_numbers_are_exact_or_strings() {
    // parse_numbers=keep: what Graylog can store as a long or a double stays
    // a number, digit for digit; anything else arrives as its exact text.
    let line = r#"{"msg":"keep","big":123456789012345678901234567890,"i":-5,"u":18446744073709551615,"f":1.5,"inf":1e999,"exact":9007199254740993,"neg":-9223372036854775808,"tiny":1e-400,"sub":4e-310,"long":0.12345678901234567891,"zero":0.0e5,"small":2.5e-300}"#;
    let msgs = run_sh(
        &["parse=json", "parse_numbers=keep"],
        &format!("echo '{line}'"),
    );
    let v = by_text(&msgs, "keep");
    assert_eq!(v["_big"], "123456789012345678901234567890");
    assert_eq!(v["_u"], "18446744073709551615");
    assert_eq!(
        v["_inf"], "1e+999",
        "the same number, as serde_json writes it"
    );
    assert_eq!(v["_i"].as_i64(), Some(-5));
    assert_eq!(v["_f"].as_f64(), Some(1.5));
    assert_eq!(v["_exact"].as_i64(), Some(9_007_199_254_740_993));
    assert_eq!(v["_neg"].as_i64(), Some(i64::MIN));
    // A double cannot hold these as written (issue 32: 1e-400 became 0.0):
    // their text.
    assert_eq!(v["_tiny"], "1e-400");
    assert_eq!(v["_sub"], "4e-310");
    assert_eq!(v["_long"], "0.12345678901234567891");
    assert_eq!(v["_zero"].as_f64(), Some(0.0));
    assert_eq!(v["_small"].as_f64(), Some(2.5e-300));
}

#[test]
fn logfmt_and_parser_order() {
    let line = r#"time=2026-11-23T10:00:00Z level=warn msg="disk almost full" path=/var used=93%"#;
    let msgs = run_sh(
        &["parse=glog,json,logfmt"],
        &format!("echo '{line}'; echo 'plain text'"),
    );
    let v = by_text(&msgs, "disk almost full");
    assert_eq!(v["level"], 4);
    assert_eq!(v["_path"], "/var");
    assert_eq!(v["_used"], "93%");
    // The time is far from now: the arrival time, the original kept.
    assert_eq!(v["_time"], "2026-11-23T10:00:00Z");
    assert_eq!(by_text(&msgs, "plain text")["level"], 6);
}

#[test]
fn a_joined_multiline_record_is_parsed_by_its_first_line() {
    let script = "printf 'E1125 08:32:35.417428 7 main.cc:9] crashed\\n  at frame 1\\n  at frame 2\\nI1125 08:32:36.000000 7 main.cc:10] next\\n' >&2";
    let msgs = run_sh(&["multiline_start=^[IWEF][0-9]{4} "], script);
    let v = by_text(&msgs, "crashed");
    assert_eq!(v["level"], 3);
    assert!(v["full_message"].as_str().unwrap().contains("at frame 2"));
    assert_eq!(by_text(&msgs, "next")["level"], 6);
}
