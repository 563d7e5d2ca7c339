//! One publisher per spool: an exclusive `flock` on the spool directory
//! itself, held for as long as a publisher runs; the holder's pid is in
//! `<spool_dir>/publisher.lock`.
//!
//! Two publishers on one spool would each ship every record (and race on
//! checkpoints), so a second one, whether `mesos-gelf publish`, `run` with
//! that `spool_dir`, or a second agent, is refused with the holder's pid.
//! The lock is on the directory, not on a file in it, so deleting
//! `publisher.lock` cannot let a second publisher in. `flock` belongs to the
//! open file description: it is released when the holder exits or is
//! killed, a second opener in the same process conflicts too, and the fd is
//! close-on-exec, so no companion or task inherits it. Read-only tools take
//! no lock.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "publisher.lock";

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct SpoolLock {
    _dir: File,
    pub path: PathBuf,
}

/// Why the lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another publisher holds it (its pid, when it wrote one).
    Held(Option<u32>),
    Io(std::io::Error),
}

impl LockError {
    /// One line for an operator.
    pub fn describe(&self, spool_dir: &Path) -> String {
        match self {
            LockError::Held(Some(pid)) => format!(
                "spool {} is being published by another publisher (pid {pid}, see {}); only one publisher may ship a spool",
                spool_dir.display(),
                spool_dir.join(LOCK_FILE).display()
            ),
            LockError::Held(None) => format!(
                "spool {} is being published by another publisher (it holds a lock on the directory; its pid, normally in {}, is missing); only one publisher may ship a spool",
                spool_dir.display(),
                spool_dir.join(LOCK_FILE).display()
            ),
            LockError::Io(e) => format!(
                "cannot lock spool {} ({}): {e}",
                spool_dir.display(),
                spool_dir.join(LOCK_FILE).display()
            ),
        }
    }
}

impl SpoolLock {
    /// Takes the lock without waiting, and writes our pid next to it.
    pub fn acquire(spool_dir: &Path) -> Result<SpoolLock, LockError> {
        let path = spool_dir.join(LOCK_FILE);
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_DIRECTORY)
            .open(spool_dir)
            .map_err(LockError::Io)?;
        // SAFETY: flock on our own fd.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(LockError::Io(e));
            }
            let mut s = String::new();
            if let Ok(f) = super::open_untrusted(&path) {
                let _ = f.take(32).read_to_string(&mut s);
            }
            return Err(LockError::Held(s.trim().parse().ok()));
        }
        // The pid, for the refusal message of the next one (best effort: a
        // full disk does not stop publishing).
        let pid = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .and_then(|mut f| {
                f.set_len(0)?;
                f.rewind()?;
                f.write_all(format!("{}\n", std::process::id()).as_bytes())
            });
        if let Err(e) = pid {
            crate::log::warn(&format!("cannot write {}: {e}", path.display()));
        }
        Ok(SpoolLock { _dir: dir, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let d = tempfile::tempdir().unwrap();
        let first = SpoolLock::acquire(d.path()).unwrap();
        match SpoolLock::acquire(d.path()) {
            Err(LockError::Held(Some(pid))) => assert_eq!(pid, std::process::id()),
            other => panic!("{other:?}"),
        }
        let msg = LockError::Held(Some(7)).describe(d.path());
        assert!(msg.contains("pid 7"), "{msg}");
        // Deleting the pid file does not let a second one in.
        std::fs::remove_file(d.path().join(LOCK_FILE)).unwrap();
        assert!(matches!(
            SpoolLock::acquire(d.path()),
            Err(LockError::Held(None))
        ));
        drop(first);
        SpoolLock::acquire(d.path()).unwrap();
    }
}
