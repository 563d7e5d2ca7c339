//! Deliveries wake the publisher: librdkafka writes a byte to a pipe when
//! its main queue (delivery reports, client errors) receives something
//! while nobody polls it, and the publisher waits on that pipe beside
//! inotify (`Watcher::wait`).
//!
//! Without it the publisher looked for acknowledgements every 5 ms while
//! anything was in flight: up to 5 ms of its own on every line's latency
//! (the p99 target is 10 ms, with `linger.ms=5` before it), and 200
//! wake-ups a second of a quiet stream.
//!
//! librdkafka writes at most one byte per stretch between two polls (it
//! resets that when the queue is polled), to a non-blocking pipe: a full
//! pipe never blocks its threads, and a byte not written only means the
//! publisher's fallback wait (50 ms) ends the wait instead.

use rdkafka::bindings as rdsys;
use std::os::fd::RawFd;

pub struct Wake {
    queue: *mut rdsys::rd_kafka_queue_t,
    read: RawFd,
    write: RawFd,
}

// SAFETY: librdkafka queue handles may be used from any thread; the fds
// are plain integers owned by this value.
unsafe impl Send for Wake {}

impl Wake {
    /// Wake-ups for the main queue of `rk`; None if no pipe can be made
    /// (out of descriptors): the publisher then looks every 5 ms as before.
    ///
    /// # Safety
    /// `rk` is a live client that outlives the returned value.
    pub unsafe fn new(rk: *mut rdsys::rd_kafka_t) -> Option<Wake> {
        let mut fds = [-1; 2];
        // SAFETY: a valid array of two ints.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return None;
        }
        // SAFETY: a live client (the caller's promise).
        let queue = unsafe { rdsys::rd_kafka_queue_get_main(rk) };
        if queue.is_null() {
            // SAFETY: our own fds.
            unsafe {
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
            return None;
        }
        // SAFETY: a live queue handle; librdkafka copies the payload.
        unsafe { rdsys::rd_kafka_queue_io_event_enable(queue, fds[1], b"1".as_ptr().cast(), 1) };
        Some(Wake {
            queue,
            read: fds[0],
            write: fds[1],
        })
    }

    /// The end to wait on: readable when the queue has something.
    pub fn fd(&self) -> RawFd {
        self.read
    }

    /// The queue still holds something (a poll serves one event at a time).
    pub fn pending(&self) -> bool {
        // SAFETY: a live queue handle.
        unsafe { rdsys::rd_kafka_queue_length(self.queue) > 0 }
    }
}

/// Empties a wake-up pipe (non-blocking) after it was found readable.
pub fn drain(fd: RawFd) {
    let mut buf = [0u8; 64];
    // SAFETY: buf is valid for its length; a non-blocking read ends with
    // EAGAIN once the pipe is empty (or 0 at EOF).
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

impl Drop for Wake {
    fn drop(&mut self) {
        // SAFETY: a live queue handle (the client outlives this value): no
        // more writes once disabled, then the handle and the fds go.
        unsafe {
            rdsys::rd_kafka_queue_io_event_enable(self.queue, -1, std::ptr::null(), 0);
            rdsys::rd_kafka_queue_destroy(self.queue);
            libc::close(self.read);
            libc::close(self.write);
        }
    }
}
