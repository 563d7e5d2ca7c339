//! Faults with real filesystems: a full spool filesystem and a full sandbox
//! filesystem (small tmpfs mounts; the tests run as root, as CI does).
//! Each states what happens: the container never blocks, the other side
//! keeps everything, and the loss is counted and reported in the stream.

mod support;

use mesos_gelf_logger::config::ContainerSettings;
use mesos_gelf_logger::metadata::Identity;
use mesos_gelf_logger::spool::record::Stream;
use mesos_gelf_logger::spool::{ContainerMeta, Next, Position, Record, SpoolReader};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs of `kb` KiB mounted for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, kb: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kb}k"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(
            st.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Tmpfs(dir.to_path_buf())
    }

    /// Fills the filesystem but for about `leave` bytes.
    fn fill(&self, leave: u64) -> PathBuf {
        let ballast = self.0.join("ballast");
        let mut f = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        drop(f);
        let len = std::fs::metadata(&ballast).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&ballast)
            .unwrap()
            .set_len(len.saturating_sub(leave))
            .unwrap();
        ballast
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn read_all(dir: &Path) -> Vec<Record> {
    let mut r = SpoolReader::at(dir, Position::default());
    let mut out = Vec::new();
    loop {
        match r.read_next().unwrap() {
            Next::Record(rec, _) => out.push(rec),
            Next::Pending | Next::Finished => return out,
        }
    }
}

fn meta(spool: &Path, sandbox: &Path) {
    ContainerMeta {
        identity: Identity {
            container_id: "c".into(),
            sandbox: sandbox.display().to_string(),
            ..Default::default()
        },
        settings: ContainerSettings {
            spool_segment_size: 64 * 1024,
            ..Default::default()
        },
        run_as: None,
    }
    .store(spool)
    .unwrap();
}

fn lines(from: u64, to: u64) -> String {
    (from..=to)
        .map(|i| format!("line {i:07} {}\n", "x".repeat(80)))
        .collect()
}

fn wait_done(spool: &Path) {
    assert!(
        support::wait_for_file(&spool.join("data/done"), Duration::from_secs(30)),
        "companion did not finish"
    );
}

#[test]
fn spool_filesystem_full_sandbox_still_written_container_never_blocks_loss_reported() {
    let root = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&root.path().join("spoolfs"), 1024);
    let spool = fs.0.join("c");
    let sandbox = root.path().join("sandbox");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::create_dir_all(&sandbox).unwrap();
    meta(&spool, &sandbox);
    let ballast = fs.fill(64 * 1024);
    let (mut out, err, mut child) = support::start_companion(&spool, &sandbox);
    drop(err);
    // 5 MB into a spool with 64 KB free: the writes all complete at once.
    let t0 = Instant::now();
    if let Err(e) = out.write_all(lines(1, 50_000).as_bytes()) {
        panic!(
            "container write failed ({e}); companion: {:?}",
            child.wait()
        );
    }
    let write_time = t0.elapsed();
    assert!(
        write_time < Duration::from_secs(10),
        "the container was blocked ({write_time:?})"
    );
    std::thread::sleep(Duration::from_millis(300));
    // Space comes back (the publisher deleted delivered segments).
    std::fs::remove_file(&ballast).unwrap();
    out.write_all(lines(50_001, 50_010).as_bytes()).unwrap();
    drop(out);
    assert!(child.wait().unwrap().success());
    wait_done(&spool);
    assert_eq!(
        std::fs::read(sandbox.join("stdout")).unwrap(),
        lines(1, 50_010).as_bytes(),
        "the sandbox has every byte"
    );
    let recs = read_all(&spool.join("data"));
    let data: Vec<&Record> = recs.iter().filter(|r| r.stream == Stream::Stdout).collect();
    let notice = recs
        .iter()
        .find(|r| r.stream == Stream::Notice)
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .expect("a loss notice once space came back");
    let failed: u64 = notice
        .split("failed=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect(&notice);
    assert!(
        notice.contains("could not be written to the spool"),
        "{notice}"
    );
    assert!(failed > 0);
    // Everything is either in the spool or counted as lost (the notices'
    // own failed writes count too).
    assert!(
        data.len() as u64 + failed >= 50_010,
        "kept {} + failed {failed}",
        data.len()
    );
    assert_eq!(
        data.last().unwrap().seq,
        50_010,
        "the newest lines made it once space returned"
    );
    eprintln!("spool full: container wrote 5 MB in {write_time:?}; {} records kept, {failed} counted as lost", data.len());
}

#[test]
fn sandbox_filesystem_full_spool_still_written_container_never_blocks_loss_reported() {
    let root = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&root.path().join("sandboxfs"), 1024);
    let sandbox = fs.0.clone();
    let spool = root.path().join("spool/c");
    std::fs::create_dir_all(&spool).unwrap();
    meta(&spool, &sandbox);
    fs.fill(64 * 1024);
    let (mut out, err, mut child) = support::start_companion(&spool, &sandbox);
    drop(err);
    let t0 = Instant::now();
    out.write_all(lines(1, 50_000).as_bytes()).unwrap();
    let write_time = t0.elapsed();
    assert!(
        write_time < Duration::from_secs(10),
        "the container was blocked ({write_time:?})"
    );
    drop(out);
    assert!(child.wait().unwrap().success());
    wait_done(&spool);
    let recs = read_all(&spool.join("data"));
    let data = recs.iter().filter(|r| r.stream == Stream::Stdout).count();
    assert_eq!(data, 50_000, "every line is spooled (and shipped)");
    let notice = recs
        .iter()
        .find(|r| r.stream == Stream::Notice)
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .expect("a sandbox loss notice");
    assert!(
        notice.contains("could not write") && notice.contains("sandbox"),
        "{notice}"
    );
    let kept = std::fs::metadata(sandbox.join("stdout"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(kept < 5_000_000);
    eprintln!("sandbox full: container wrote 5 MB in {write_time:?}; sandbox kept {kept} bytes; all 50000 records spooled; notice: {notice}");
}
