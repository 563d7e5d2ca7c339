//! The agent never pays for our bugs (issue 13): a panic in the publisher
//! thread is caught, logged, counted and the publisher restarted from the
//! spool; a panic inside a call from the agent (through the C++ shim)
//! becomes an error for that one call. Needs the `fault-injection` feature
//! (scripts/test.sh turns it on); without it this says it is skipped.

mod support;

#[cfg(not(feature = "fault-injection"))]
#[test]
fn fault_injection_tests_skipped() {
    let line =
        "panic tests SKIPPED: build with --features fault-injection (scripts/test.sh does)\n";
    unsafe { libc::write(2, line.as_ptr() as *const libc::c_void, line.len()) };
}

/// One test: the fault points are chosen by an environment variable, which
/// is process-wide, so the cases run one after the other.
#[cfg(feature = "fault-injection")]
#[test]
fn panics_in_the_publisher_or_a_bridge_call_never_reach_the_agent() {
    use mesos_gelf_logger::config::Config;
    use mesos_gelf_logger::logger::Logger;
    use std::io::Write;
    use std::time::Duration;
    use support::*;

    let broker = Broker::start();
    let d = tempfile::tempdir().unwrap();
    // 1. The publisher panics once: restarted from the spool, nothing lost.
    std::env::set_var("GELF_FAULT_INJECT", "publisher");
    let spool = d.path().join("spool");
    let mut l = Logger::new(
        Config::from_pairs(&[
            ("kafka.bootstrap.servers", broker.addr().as_str()),
            ("spool_dir", spool.to_str().unwrap()),
            ("topic", "panics"),
        ])
        .unwrap(),
        bin(),
    )
    .unwrap();
    l.initialize(None).unwrap();
    let sbx = d.path().join("sbx");
    std::fs::create_dir_all(&sbx).unwrap();
    let json = serde_json::json!({"directory": sbx.display().to_string()}).to_string();
    let p = l.prepare("c-panic", &json, None).unwrap();
    let mut out = std::fs::File::from(p.stdout);
    for i in 1..=1000 {
        writeln!(out, "{i}").unwrap();
    }
    drop(out);
    let mut w = SeqWatch::new(&[("c-panic", 1000)]);
    consume_until(
        &broker.addr(),
        "panics",
        Duration::from_secs(60),
        Duration::ZERO,
        |m| w.add(m),
    );
    assert_eq!(l.metrics().snapshot()["publisher_restarts"], 1);
    drop(l);
    // 2. prepare() panics inside the bridge: the C++ caller gets an error
    // for that container, the process lives on, the next call works.
    std::env::set_var("GELF_FAULT_INJECT", "prepare");
    let spool2 = d.path().join("spool2");
    let cfg = d.path().join("c.json");
    std::fs::write(&cfg, &json).unwrap();
    let spec = format!(
        "param\tkafka.bootstrap.servers\t{}\nparam\tspool_dir\t{}\nparam\tcompanion_path\t{}\ncontainer\tc-bridge\t{}\tx\\n\t\n",
        broker.addr(),
        spool2.display(),
        bin().display(),
        cfg.display()
    );
    let report = shim_selftest(&spec);
    assert!(
        report.contains("prepare_error\tc-bridge") && report.contains("internal error (panic"),
        "{report}"
    );
    std::env::remove_var("GELF_FAULT_INJECT");
    let report = shim_selftest(&spec);
    assert!(report.contains("prepared\tc-bridge"), "{report}");
}
