//! The sandbox files `stdout` / `stderr`, byte for byte, rotated like Mesos'
//! logrotate logger: `stdout` is the live file, `stdout.1` the newest old
//! one, up to `max_files` files in all, each at most `max_size` bytes.
//!
//! The task owns the sandbox, so everything happens relative to a directory
//! fd opened once (`openat`, `renameat`, `unlinkat`: a renamed or replaced
//! path cannot redirect us), every open uses `O_NOFOLLOW | O_NONBLOCK` and
//! must yield a regular file: a planted symlink, FIFO or device is removed
//! (the entry itself, never its target) and replaced by a fresh file, and
//! cannot make us block. A write error (sandbox disk full) loses those bytes
//! for the file only, is counted, and the next chunk tries again.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

pub struct SandboxFile {
    dir: PathBuf,
    /// The sandbox directory, opened once.
    dir_fd: Option<OwnedFd>,
    name: &'static str,
    max_size: u64,
    max_files: u32,
    file: Option<File>,
    size: u64,
    pub lost_bytes: u64,
    pub last_error: Option<String>,
}

fn os_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

impl SandboxFile {
    pub fn new(dir: &Path, name: &'static str, max_size: u64, max_files: u32) -> SandboxFile {
        SandboxFile {
            dir: dir.to_path_buf(),
            dir_fd: None,
            name,
            max_size: max_size.max(1),
            max_files: max_files.max(1),
            file: None,
            size: 0,
            lost_bytes: 0,
            last_error: None,
        }
    }

    fn entry(&self, i: u32) -> CString {
        let n = if i == 0 {
            self.name.to_string()
        } else {
            format!("{}.{i}", self.name)
        };
        CString::new(n).expect("no NUL in file names")
    }

    fn dir_fd(&mut self) -> std::io::Result<i32> {
        if self.dir_fd.is_none() {
            let c = CString::new(self.dir.as_os_str().as_encoded_bytes())
                .map_err(std::io::Error::other)?;
            // SAFETY: c is a valid C string.
            let fd = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(os_err());
            }
            // SAFETY: a fresh fd we own.
            self.dir_fd = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        Ok(self.dir_fd.as_ref().expect("dir fd").as_raw_fd())
    }

    fn open(&mut self) -> std::io::Result<()> {
        let dfd = self.dir_fd()?;
        let name = self.entry(0);
        for attempt in 0..2 {
            let flags = libc::O_WRONLY
                | libc::O_APPEND
                | libc::O_CREAT
                | libc::O_CLOEXEC
                | libc::O_NOFOLLOW
                | libc::O_NONBLOCK;
            // SAFETY: valid dir fd and C string.
            let fd = unsafe { libc::openat(dfd, name.as_ptr(), flags, 0o644 as libc::c_uint) };
            let opened = if fd >= 0 {
                // SAFETY: a fresh fd we own.
                Ok(unsafe { File::from_raw_fd(fd) })
            } else {
                Err(os_err())
            };
            let planted = match &opened {
                Ok(f) => !f.metadata()?.file_type().is_file(),
                Err(e) => {
                    e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENXIO)
                }
            };
            if planted && attempt == 0 {
                // A symlink, FIFO or device put there by the task: drop the
                // entry (never what it points to) and create our own file.
                drop(opened);
                // SAFETY: valid dir fd and C string.
                unsafe { libc::unlinkat(dfd, name.as_ptr(), 0) };
                continue;
            }
            let f = opened?;
            if planted {
                return Err(std::io::Error::other(format!(
                    "{}/{} is not a regular file",
                    self.dir.display(),
                    self.name
                )));
            }
            // Back to blocking writes on the regular file.
            // SAFETY: fcntl on an fd we own.
            unsafe {
                let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
            }
            self.size = f.metadata()?.len();
            self.file = Some(f);
            return Ok(());
        }
        unreachable!()
    }

    /// `stdout.N-1` → `stdout.N` …, `stdout` → `stdout.1`; the oldest goes.
    /// renameat/unlinkat act on the entries themselves, never on link targets.
    fn rotate(&mut self) {
        self.file = None;
        self.size = 0;
        let Ok(dfd) = self.dir_fd() else { return };
        let unlink = |n: &CString| unsafe { libc::unlinkat(dfd, n.as_ptr(), 0) };
        if self.max_files == 1 {
            unlink(&self.entry(0));
            return;
        }
        unlink(&self.entry(self.max_files - 1));
        for i in (0..self.max_files - 1).rev() {
            let (from, to) = (self.entry(i), self.entry(i + 1));
            // SAFETY: valid dir fd and C strings.
            unsafe { libc::renameat(dfd, from.as_ptr(), dfd, to.as_ptr()) };
        }
    }

    /// Appends raw bytes, rotating at `max_size`. Never fails: losses are
    /// counted in `lost_bytes` and described in `last_error`.
    pub fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.file.is_none() {
                if let Err(e) = self.open() {
                    self.lose(
                        data.len(),
                        format!("cannot open {}/{}: {e}", self.dir.display(), self.name),
                    );
                    return;
                }
            }
            if self.size >= self.max_size {
                self.rotate();
                continue;
            }
            let room = (self.max_size - self.size) as usize;
            let n = room.min(data.len());
            let f = self.file.as_mut().expect("open");
            match f.write_all(&data[..n]) {
                Ok(()) => self.size += n as u64,
                Err(e) => {
                    self.file = None;
                    self.lose(
                        n,
                        format!("cannot write {}/{}: {e}", self.dir.display(), self.name),
                    );
                }
            }
            data = &data[n..];
        }
    }

    fn lose(&mut self, n: usize, msg: String) {
        self.lost_bytes += n as u64;
        self.last_error = Some(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_caps_file_count() {
        let d = tempfile::tempdir().unwrap();
        let mut s = SandboxFile::new(d.path(), "stdout", 10, 3);
        for _ in 0..10 {
            s.write(b"0123456");
        }
        let mut names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["stdout", "stdout.1", "stdout.2"]);
        for n in &names {
            assert!(std::fs::metadata(d.path().join(n)).unwrap().len() <= 10);
        }
        // 70 bytes written: the newest 30 remain, 10 per file, in order.
        let all = b"0123456".repeat(10);
        assert_eq!(
            std::fs::read(d.path().join("stdout")).unwrap(),
            &all[60..70]
        );
        assert_eq!(
            std::fs::read(d.path().join("stdout.1")).unwrap(),
            &all[50..60]
        );
        assert_eq!(
            std::fs::read(d.path().join("stdout.2")).unwrap(),
            &all[40..50]
        );
    }

    #[test]
    fn planted_fifo_cannot_hang_us_and_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let fifo = CString::new(d.path().join("stderr").as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let mut s = SandboxFile::new(d.path(), "stderr", 1000, 2);
        let t0 = std::time::Instant::now();
        s.write(b"line\n");
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(1),
            "blocked on a FIFO"
        );
        let m = std::fs::symlink_metadata(d.path().join("stderr")).unwrap();
        assert!(m.file_type().is_file());
        assert_eq!(std::fs::read(d.path().join("stderr")).unwrap(), b"line\n");
    }

    #[test]
    fn rotation_moves_planted_links_without_touching_their_targets() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("stdout.1")).unwrap();
        let mut s = SandboxFile::new(d.path(), "stdout", 10, 2);
        s.write(b"0123456789abc");
        // stdout.1 (the link) was the oldest and was unlinked; the victim
        // file is untouched.
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(
            std::fs::read(d.path().join("stdout.1")).unwrap(),
            b"0123456789"
        );
        assert_eq!(std::fs::read(d.path().join("stdout")).unwrap(), b"abc");
    }

    #[test]
    fn planted_symlink_is_replaced_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("stderr")).unwrap();
        let mut s = SandboxFile::new(d.path(), "stderr", 1000, 2);
        s.write(b"line\n");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(d.path().join("stderr")).unwrap(), b"line\n");
        assert!(!std::fs::symlink_metadata(d.path().join("stderr"))
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
