//! inotify on the spool root (new containers) and on each container's
//! directory (new frames, new segments, `done`), so the publisher reacts
//! within milliseconds instead of polling.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub struct Watcher {
    fd: RawFd,
    root_wd: i32,
    /// watch descriptor → container key
    dirs: HashMap<i32, String>,
}

/// What changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Something appeared in the spool root (rescan it).
    Root,
    /// A container's directory changed.
    Container(String),
    /// The kernel dropped events (rescan everything).
    Overflow,
}

impl Watcher {
    pub fn new(root: &Path) -> std::io::Result<Watcher> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut w = Watcher {
            fd,
            root_wd: -1,
            dirs: HashMap::new(),
        };
        w.root_wd = w.add(root, libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_ONLYDIR)?;
        Ok(w)
    }

    fn add(&self, path: &Path, mask: u32) -> std::io::Result<i32> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: c is a valid C string; fd is our inotify instance.
        let wd = unsafe { libc::inotify_add_watch(self.fd, c.as_ptr(), mask) };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(wd)
    }

    /// Watches a container's directory; an error (the user's inotify
    /// watch limit, most often) leaves the publisher polling it instead.
    pub fn watch_container(&mut self, dir: &Path, key: &str) -> std::io::Result<()> {
        // IN_DELETE: a segment the companion unlinked may be one the
        // reader holds open, whose space only the publisher can free.
        let mask = libc::IN_MODIFY
            | libc::IN_CREATE
            | libc::IN_MOVED_TO
            | libc::IN_DELETE
            | libc::IN_ONLYDIR
            | libc::IN_DONT_FOLLOW;
        let wd = self.add(dir, mask)?;
        self.dirs.insert(wd, key.to_string());
        Ok(())
    }

    pub fn unwatch(&mut self, key: &str) {
        self.dirs.retain(|wd, k| {
            if k == key {
                // SAFETY: removing our own watch.
                unsafe { libc::inotify_rm_watch(self.fd, *wd) };
                false
            } else {
                true
            }
        });
    }

    /// Waits up to `timeout_ms` for events (0: just collect what is there),
    /// or for `wake` (the sink's wake-up pipe, emptied here) to be readable.
    pub fn wait(&mut self, timeout_ms: i32, wake: Option<RawFd>, out: &mut Vec<Event>) {
        let mut p = [
            libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                // A negative fd is ignored by poll.
                fd: wake.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        if unsafe { libc::poll(p.as_mut_ptr(), 2, timeout_ms) } <= 0 {
            return;
        }
        if p[1].revents != 0 {
            super::wake::drain(p[1].fd);
        }
        if p[0].revents == 0 {
            return;
        }
        let mut buf = [0u8; 16384];
        loop {
            // SAFETY: buf is valid for its length.
            let n =
                unsafe { libc::read(self.fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n <= 0 {
                return;
            }
            let mut off = 0usize;
            while off + std::mem::size_of::<libc::inotify_event>() <= n as usize {
                // SAFETY: the kernel wrote whole events; read_unaligned copes with alignment.
                let ev: libc::inotify_event = unsafe {
                    std::ptr::read_unaligned(buf.as_ptr().add(off) as *const libc::inotify_event)
                };
                off += std::mem::size_of::<libc::inotify_event>() + ev.len as usize;
                if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                    out.push(Event::Overflow);
                } else if ev.wd == self.root_wd {
                    out.push(Event::Root);
                } else if let Some(k) = self.dirs.get(&ev.wd) {
                    out.push(Event::Container(k.clone()));
                }
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // SAFETY: closing our own fd.
        unsafe { libc::close(self.fd) };
    }
}
