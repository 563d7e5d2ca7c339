//! The sandbox files `stdout` / `stderr`, byte for byte, rotated like Mesos'
//! logrotate logger: `stdout` is the live file, `stdout.1` the newest old
//! one, up to `max_files` files in all, each at most `max_size` bytes.
//!
//! The task owns the sandbox, so every open uses `O_NOFOLLOW | O_NONBLOCK`
//! and checks for a regular file: a planted symlink or FIFO is removed (the
//! link itself, never its target) and replaced by a fresh file. Renames and
//! unlinks never follow links. A write error (sandbox disk full) loses those
//! bytes for the file only, is counted, and the next chunk tries again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub struct SandboxFile {
    dir: PathBuf,
    name: &'static str,
    max_size: u64,
    max_files: u32,
    file: Option<File>,
    size: u64,
    pub lost_bytes: u64,
    pub last_error: Option<String>,
}

impl SandboxFile {
    pub fn new(dir: &Path, name: &'static str, max_size: u64, max_files: u32) -> SandboxFile {
        SandboxFile {
            dir: dir.to_path_buf(),
            name,
            max_size: max_size.max(1),
            max_files: max_files.max(1),
            file: None,
            size: 0,
            lost_bytes: 0,
            last_error: None,
        }
    }

    fn path(&self, i: u32) -> PathBuf {
        if i == 0 {
            self.dir.join(self.name)
        } else {
            self.dir.join(format!("{}.{i}", self.name))
        }
    }

    fn open(&mut self) -> std::io::Result<()> {
        let path = self.path(0);
        for attempt in 0..2 {
            let r = OpenOptions::new()
                .append(true)
                .create(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&path);
            let planted = match &r {
                Ok(f) => !f.metadata()?.file_type().is_file(),
                Err(e) => e.raw_os_error() == Some(libc::ELOOP),
            };
            if planted && attempt == 0 {
                // A symlink, FIFO or device put there by the task: drop the
                // entry (never what it points to) and create our own file.
                drop(r);
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let f = r?;
            if planted {
                return Err(std::io::Error::other(format!(
                    "{} is not a regular file",
                    path.display()
                )));
            }
            // Back to blocking writes on the regular file.
            // SAFETY: fcntl on an fd we own.
            unsafe {
                use std::os::fd::AsRawFd;
                let fd = f.as_raw_fd();
                let fl = libc::fcntl(fd, libc::F_GETFL);
                libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
            }
            self.size = f.metadata()?.len();
            self.file = Some(f);
            return Ok(());
        }
        unreachable!()
    }

    fn rotate(&mut self) {
        self.file = None;
        if self.max_files == 1 {
            let _ = std::fs::remove_file(self.path(0));
        } else {
            let _ = std::fs::remove_file(self.path(self.max_files - 1));
            for i in (0..self.max_files - 1).rev() {
                let _ = std::fs::rename(self.path(i), self.path(i + 1));
            }
        }
        self.size = 0;
    }

    /// Appends raw bytes, rotating at `max_size`. Never fails: losses are
    /// counted in `lost_bytes` and described in `last_error`.
    pub fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.file.is_none() {
                if let Err(e) = self.open() {
                    self.lose(
                        data.len(),
                        format!("cannot open {}: {e}", self.path(0).display()),
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
                    self.lose(n, format!("cannot write {}: {e}", self.path(0).display()));
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
