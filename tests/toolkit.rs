//! The operator's toolkit (issue 15): `mesos-gelf spool status | cat |
//! replay`, retained spools, the release tarball, and spools of every
//! format version read forever (tests/fixtures/spool-v1 was written by the
//! release that introduced it).

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;

fn spool_cmd(args: &[&str]) -> Ran {
    run_bounded(
        Command::new(bin()).arg("spool").args(args),
        Duration::from_secs(60),
    )
}

/// Copies a directory tree (the fixtures are read-only inputs).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

fn fixture_v1(root: &Path) -> PathBuf {
    let spool = root.join("spool");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spool-v1"),
        &spool,
    );
    spool
}

/// A spool left by `run` when Kafka never came: `n` lines of container `id`.
fn left_spool(root: &Path, id: &str, n: u64) -> PathBuf {
    let spool = root.join("spool");
    let key = mesos_gelf_logger::spool::container_key(id);
    let dead = format!("127.0.0.1:{}", free_port());
    let mut c = Command::new(bin())
        .args(["run", "--container-id", id, "--sandbox"])
        .arg(root.join(&key))
        .args(["--set", &format!("spool_dir={}", spool.display())])
        .args(["--set", &format!("kafka.bootstrap.servers={dead}")])
        .args(["--", "seq", "1", &n.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for_file(
        &spool.join(&key).join("data/done"),
        Duration::from_secs(30)
    ));
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    assert!(wait_child(&mut c, Duration::from_secs(30)).is_some());
    spool
}

#[test]
fn status_cat_and_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let spool = left_spool(d.path(), "c-small", 10);
    left_spool(d.path(), "c-big", 5000);
    let ran = spool_cmd(&["status", "--json", "--spool-dir", spool.to_str().unwrap()]);
    ran.assert_code(0);
    let v: Value = serde_json::from_slice(&ran.stdout).unwrap();
    let rows = v["containers"].as_array().unwrap();
    assert_eq!(rows[0]["container_id"], "c-big", "sorted by backlog");
    assert_eq!(rows[0]["pending_records"], 5000);
    assert_eq!(rows[1]["pending_records"], 10);
    assert_eq!(rows[0]["companion"], "finished");
    assert!(rows[0]["oldest_pending_ms"].as_u64().is_some());
    assert_eq!(v["totals"]["pending_records"], 5010);
    // The table: one row per container, and totals.
    let ran = spool_cmd(&["status", "--spool-dir", spool.to_str().unwrap()]);
    ran.assert_code(0);
    let out = String::from_utf8_lossy(&ran.stdout).into_owned();
    assert!(out.lines().nth(1).unwrap().starts_with("c-big"), "{out}");
    assert!(out.contains("2 containers, 5010 records"), "{out}");
    // cat: raw lines, a seq range, and the exact GELF.
    let ran = spool_cmd(&[
        "cat",
        "c-big",
        "--from-seq",
        "4999",
        "--spool-dir",
        spool.to_str().unwrap(),
    ]);
    ran.assert_code(0);
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "4999\n5000\n");
    let ran = spool_cmd(&[
        "cat",
        "c-small",
        "--gelf",
        "--to-seq",
        "2",
        "--spool-dir",
        spool.to_str().unwrap(),
    ]);
    ran.assert_code(0);
    let g = gelf_lines(&ran.stdout);
    assert_eq!(g.len(), 2);
    assert_eq!(
        (g[1]["short_message"].as_str(), g[1]["_seq"].as_u64()),
        (Some("2"), Some(2))
    );
    assert_eq!(g[1]["_container_id"], "c-small");
    // Errors: one line, status 2.
    let foreign = d.path().join("foreign");
    std::fs::create_dir_all(foreign.join("x")).unwrap();
    for (args, needle) in [
        (
            vec!["status", "--spool-dir", "/nonexistent/spool"],
            "does not exist",
        ),
        (
            vec!["status", "--spool-dir", foreign.to_str().unwrap()],
            "not a mesos-gelf spool",
        ),
        (
            vec!["cat", "c-none", "--spool-dir", spool.to_str().unwrap()],
            "no container c-none",
        ),
    ] {
        let ran = spool_cmd(&args);
        ran.assert_code(2);
        let err = ran.stderr();
        assert!(
            err.contains(needle) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    // A damaged segment: what can be read is shown, then one line, status 2.
    let seg = spool.join("c-small/data/seg-00000000000000000001.spool");
    let mut b = std::fs::read(&seg).unwrap();
    let n = b.len();
    b[n - 3] ^= 0xff;
    std::fs::write(&seg, b).unwrap();
    let ran = spool_cmd(&["cat", "c-small", "--spool-dir", spool.to_str().unwrap()]);
    ran.assert_code(2);
    assert!(ran.stderr().contains("corrupt frame"), "{}", ran.stderr());
    assert!(String::from_utf8_lossy(&ran.stdout).starts_with("1\n2\n"));
}

#[test]
fn retained_spools_can_be_replayed_after_delivery() {
    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    let ran = run_bounded(
        Command::new(bin())
            .args(["run", "--container-id", "c-retained", "--sandbox"])
            .arg(d.path().join("sbx"))
            .args(["--set", &format!("spool_dir={}", spool.display())])
            .args([
                "--set",
                &format!("kafka.bootstrap.servers={}", broker.addr()),
            ])
            .args(["--set", "topic=first", "--set", "spool_retain=1h"])
            .args(["--", "seq", "1", "3000"]),
        Duration::from_secs(60),
    );
    ran.assert_code(0);
    let mut w = SeqWatch::new(&[("c-retained", 3000)]);
    consume_until(
        &broker.addr(),
        "first",
        Duration::from_secs(60),
        Duration::ZERO,
        |m| w.add(m),
    );
    // Delivered, yet kept for an hour.
    let st = spool_json(&spool);
    let row = &st["containers"][0];
    assert_eq!(row["pending_records"], 0, "{st}");
    assert!(row["retained_bytes"].as_u64().unwrap() > 10_000, "{st}");
    // A publisher on the spool (with the same spool_retain) does not ship
    // it again, nor wait for it.
    let ran = run_bounded(
        Command::new(bin())
            .args(["publish", "--until-empty", "--spool-dir"])
            .arg(&spool)
            .args([
                "--set",
                &format!("kafka.bootstrap.servers={}", broker.addr()),
            ])
            .args(["--set", "spool_retain=1h"]),
        Duration::from_secs(60),
    );
    ran.assert_code(0);
    // The topic was lost: send a range again.
    let ran = spool_cmd(&[
        "replay",
        "c-retained",
        "--topic",
        "replayed",
        "--from-seq",
        "1001",
        "--to-seq",
        "2000",
        "--spool-dir",
        spool.to_str().unwrap(),
        "--set",
        &format!("kafka.bootstrap.servers={}", broker.addr()),
    ]);
    ran.assert_code(0);
    assert!(
        ran.stderr().contains("replayed 1000 of 1000 records"),
        "{}",
        ran.stderr()
    );
    let mut seen = std::collections::BTreeSet::new();
    let msgs = consume_until(
        &broker.addr(),
        "replayed",
        Duration::from_secs(60),
        Duration::from_secs(1),
        |m| {
            seen.insert(m.json()["_seq"].as_u64().unwrap());
            seen.len() == 1000
        },
    );
    assert_eq!(msgs.len(), 1000);
    assert_eq!(seen, (1001..=2000).collect());
}

fn spool_json(spool: &Path) -> Value {
    let ran = spool_cmd(&["status", "--json", "--spool-dir", spool.to_str().unwrap()]);
    ran.assert_code(0);
    serde_json::from_slice(&ran.stdout).unwrap()
}

/// tests/fixtures/spool-v1 was written by the release that made format 1;
/// every later release must read it the same way. Never regenerate it.
#[test]
fn the_version_1_spool_fixture_is_read_forever() {
    let d = tempfile::tempdir().unwrap();
    let spool = fixture_v1(d.path());
    let ran = run_bounded(
        Command::new(bin())
            .args(["publish", "--until-empty", "--spool-dir"])
            .arg(&spool)
            .args(["--set", "host=fixture-host"]),
        Duration::from_secs(60),
    );
    ran.assert_code(0);
    let msgs = gelf_lines(&ran.stdout);
    let got: Vec<(String, String, u64)> = msgs
        .iter()
        .map(|m| {
            (
                m["_stream"].as_str().unwrap().to_string(),
                m["short_message"].as_str().unwrap().to_string(),
                m["_seq"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = [
        ("stdout", "First record", 1),
        ("stdout", "Second {\"k\":1}", 2),
        (
            "stdout",
            "Xaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            3,
        ),
        ("stdout", "aaaaaaaaaaaaaaaaaaaaaaaaaa", 4),
        ("stdout", "Unterminated", 5),
        ("stderr", "Err line", 1),
    ];
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut want_sorted: Vec<(String, String, u64)> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), *c))
        .collect();
    want_sorted.sort();
    assert_eq!(got_sorted, want_sorted);
    let first = msgs
        .iter()
        .find(|m| m["_seq"] == 1 && m["_stream"] == "stdout")
        .unwrap();
    assert_eq!(first["full_message"], "First record\n  continued");
    assert_eq!(first["_container_id"], "fixture-v1");
    assert_eq!(first["host"], "fixture-host");
    let part = msgs.iter().find(|m| m["_seq"] == 3).unwrap();
    assert_eq!(
        (
            part["_line_part"].as_u64(),
            part["_line_continues"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert!(!spool.join("fixture-v1").exists(), "shipped and removed");
}

#[test]
fn a_newer_spool_format_is_refused_kept_and_never_ends_publish_with_0() {
    let d = tempfile::tempdir().unwrap();
    // meta.json of a newer version.
    let spool = fixture_v1(d.path());
    let meta = spool.join("fixture-v1/meta.json");
    let text = std::fs::read_to_string(&meta).unwrap();
    std::fs::write(&meta, text.replace("\"version\": 1", "\"version\": 2")).unwrap();
    let ran = run_bounded(
        Command::new(bin())
            .args(["publish", "--until-empty", "--spool-dir"])
            .arg(&spool),
        Duration::from_secs(60),
    );
    // Never 0 while records wait (issue 32: it exited 0).
    ran.assert_code(3);
    assert!(
        ran.stderr()
            .contains("1 container spool(s) in a newer format"),
        "{}",
        ran.stderr()
    );
    assert!(ran.stdout.is_empty(), "nothing of it shipped");
    assert!(
        ran.stderr().contains("newer spool format"),
        "{}",
        ran.stderr()
    );
    assert!(
        spool
            .join("fixture-v1/data/seg-00000000000000000001.spool")
            .exists(),
        "kept"
    );
    // status and cat say why it waits (they showed an ordinary backlog).
    let sp = spool.to_str().unwrap();
    let status = spool_cmd(&["status", "--spool-dir", sp]);
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(shown.contains("fixture-v1: newer spool format"), "{shown}");
    let cat = spool_cmd(&["cat", "fixture-v1", "--spool-dir", sp]);
    assert!(
        cat.stderr().contains("newer spool format"),
        "{}",
        cat.stderr()
    );
    // A segment of a newer version behind a readable one.
    let d2 = tempfile::tempdir().unwrap();
    let spool = fixture_v1(d2.path());
    let seg = spool.join("fixture-v1/data/seg-00000000000000000002.spool");
    std::fs::write(&seg, b"MGSPOOL2whatever comes next").unwrap();
    let ran = run_bounded(
        Command::new(bin())
            .args(["publish", "--until-empty", "--spool-dir"])
            .arg(&spool),
        Duration::from_secs(60),
    );
    ran.assert_code(3);
    assert!(
        ran.stderr().contains("upgrade mesos-gelf to ship them"),
        "{}",
        ran.stderr()
    );
    assert_eq!(
        gelf_lines(&ran.stdout).len(),
        6,
        "the readable segment ships"
    );
    assert!(
        ran.stderr().contains("newer than this mesos-gelf reads"),
        "{}",
        ran.stderr()
    );
    assert!(seg.exists(), "the newer segment is kept");
}

#[test]
fn the_release_tarball_holds_what_an_operator_needs() {
    if std::env::var_os("MESOS_LAB").is_none() {
        let line = "package test SKIPPED: no Mesos found (MESOS_LAB), see README\n";
        unsafe { libc::write(2, line.as_ptr() as *const libc::c_void, line.len()) };
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/package.sh"))
        .arg("--no-build")
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tarball = root.join(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap()
            .trim(),
    );
    let name = tarball.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("mesos-gelf-logger-")
            && name.contains("-mesos-1.11.0-linux-")
            && name.ends_with(".tar.gz"),
        "{name}"
    );
    let d = tempfile::tempdir().unwrap();
    assert!(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(d.path())
        .status()
        .unwrap()
        .success());
    let top = d.path().join(name.trim_end_matches(".tar.gz"));
    for f in [
        "lib/libmesos_gelf_logger.so",
        "bin/mesos-gelf",
        "bin/mesos-gelf-companion",
        "etc/modules.json",
        "etc/PARAMETERS.md",
        "systemd/mesos-gelf-forward.service",
        "marathon/mesos-gelf-forward.json",
        "INSTALL.md",
    ] {
        assert!(top.join(f).is_file(), "{f} missing");
    }
    let nm = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(top.join("lib/libmesos_gelf_logger.so"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&nm.stdout).contains(" org_mesos_gelf_GelfContainerLogger"));
    assert!(Command::new(top.join("bin/mesos-gelf"))
        .arg("--version")
        .status()
        .unwrap()
        .success());
    // modules.json: valid, and every parameter there or named in _comment.
    let m: Value =
        serde_json::from_slice(&std::fs::read(top.join("etc/modules.json")).unwrap()).unwrap();
    let params = m["libraries"][0]["modules"][0]["parameters"]
        .as_array()
        .unwrap();
    let comment = m["_comment"].as_str().unwrap();
    for (k, _, _) in mesos_gelf_logger::config::PARAMETERS {
        assert!(
            params.iter().any(|p| p["key"] == *k) || comment.contains(k),
            "modules.json says nothing of {k}"
        );
    }
    let pairs: Vec<(String, String)> = params
        .iter()
        .map(|p| {
            (
                p["key"].as_str().unwrap().into(),
                p["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    mesos_gelf_logger::config::Config::from_pairs(&pairs).expect("the example validates");
    let _: Value = serde_json::from_slice(
        &std::fs::read(top.join("marathon/mesos-gelf-forward.json")).unwrap(),
    )
    .unwrap();
    let unit = std::fs::read_to_string(top.join("systemd/mesos-gelf-forward.service")).unwrap();
    assert!(unit.contains("ExecStart=") && unit.contains("forward"));
}

#[test]
fn cat_takes_the_container_the_id_names_before_a_directory_of_that_name() {
    // helper-6: `a b` has the directory `a_b--h<hash>`; a container whose
    // id is that very name got a directory of its own, but `spool cat`
    // and `spool replay` of that id picked `a b`'s records, silently.
    // And `./c-one` or `c-one/` were taken as the directory `c-one`.
    let d = tempfile::tempdir().unwrap();
    let hashed = mesos_gelf_logger::spool::container_key("a b");
    assert_ne!(hashed, "a b");
    let spool = left_spool(d.path(), "a b", 3);
    left_spool(d.path(), &hashed, 5);
    left_spool(d.path(), "c-one", 2);
    let cat = |name: &str| {
        let ran = spool_cmd(&["cat", name, "--spool-dir", spool.to_str().unwrap()]);
        (
            ran.status.and_then(|s| s.code()),
            String::from_utf8_lossy(&ran.stdout).into_owned(),
        )
    };
    assert_eq!(cat("a b"), (Some(0), "1\n2\n3\n".to_string()));
    assert_eq!(cat(&hashed), (Some(0), "1\n2\n3\n4\n5\n".to_string()));
    // The directory name of a container still reaches it.
    let own = mesos_gelf_logger::spool::container_key(&hashed);
    assert_eq!(cat(&own), (Some(0), "1\n2\n3\n4\n5\n".to_string()));
    assert_eq!(cat("c-one"), (Some(0), "1\n2\n".to_string()));
    assert_eq!(cat("./c-one").0, Some(2));
    assert_eq!(cat("c-one/").0, Some(2));
    // An id with a newline and an escape sequence shows them escaped in
    // the status table: no forged row, no raw terminal codes. (`run`
    // refuses such an id; the module's prepare takes what the agent gives.)
    {
        let id = "line1\nFAKE row\u{1b}[31m";
        let sbx = d.path().join("odd");
        std::fs::create_dir_all(&sbx).unwrap();
        let cfg = mesos_gelf_logger::config::Config::from_pairs(&[(
            "spool_dir",
            spool.to_str().unwrap(),
        )])
        .unwrap();
        let logger = mesos_gelf_logger::logger::Logger::new(cfg, bin()).unwrap();
        let j = serde_json::json!({"directory": sbx.display().to_string()});
        let p = logger.prepare(id, &j.to_string(), None).unwrap();
        std::io::Write::write_all(&mut std::fs::File::from(p.stdout), b"1\n").unwrap();
        drop(p.stderr);
        let key = mesos_gelf_logger::spool::container_key(id);
        assert!(wait_for_file(
            &spool.join(key).join("data/done"),
            Duration::from_secs(30)
        ));
    }
    let ran = spool_cmd(&["status", "--spool-dir", spool.to_str().unwrap()]);
    ran.assert_code(0);
    let out = String::from_utf8_lossy(&ran.stdout).into_owned();
    assert!(!out.lines().any(|l| l.starts_with("FAKE")), "{out}");
    assert!(!out.contains('\u{1b}'), "{out}");
    assert!(out.contains("line1\\nFAKE row\\u{1b}"), "{out}");
}

/// `spool cat ... | head`: the reader closing the pipe ends cat quietly,
/// as a shell reports SIGPIPE (it printed `writing: Broken pipe`).
#[test]
fn spool_cat_into_a_closed_pipe_ends_quietly_with_141() {
    use std::io::{BufRead, BufReader};
    let d = tempfile::tempdir().unwrap();
    let spool = left_spool(d.path(), "c-pipe", 200_000);
    let mut c = Command::new(bin())
        .args(["spool", "cat", "c-pipe", "--spool-dir"])
        .arg(&spool)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "1\n");
    let st = wait_child(&mut c, Duration::from_secs(60)).expect("cat ended");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut c.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(st.code(), Some(141), "{err}");
    assert!(err.is_empty(), "{err}");
}
