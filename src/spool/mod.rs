//! The on-disk spool: the hand-off between a container's companion (writer)
//! and the publisher (reader), and the durability boundary.
//!
//! # Layout
//!
//! ```text
//! <spool_dir>/                   root, 0700
//!   <container key>/             root, 0700: nobody but root passes
//!     meta.json                  identity + settings + run_as; written by prepare()
//!                                before the companion starts; the task cannot alter it
//!     data/                      the container user (the companion runs as it), 0700;
//!                                the companion enters it before dropping to that
//!                                user and reaches it only as its working directory
//!       seg-<20 digits>.spool    segments, numbered from 1, append-only, one writer
//!       checkpoint               the publisher's resume position (atomic rename)
//!       done                     the companion wrote its last record; holds
//!                                `stdout=<last seq> stderr=<last seq>\n` (best
//!                                effort: an empty `done` still means done, and
//!                                a spool from before 0.1 has it empty)
//!       done.reserve             room for `done`'s content, made at start (a
//!                                full filesystem may not give a new file bytes)
//! ```
//!
//! The container key is the container id (`parent.child` for nested ones),
//! with anything outside `[A-Za-z0-9._-]` replaced by `_`.
//!
//! # Segment format
//!
//! A segment starts with the 8-byte magic `MGSPOOL1`, followed by frames:
//!
//! ```text
//! u32 LE  body length (24 + payload length, at most MAX_BODY)
//! u32 LE  CRC-32C of the body
//! body:
//!   u8    stream      1 stdout, 2 stderr, 3 notice (written by mesos-gelf itself)
//!   u8    flags       see record::flags
//!   u16   reserved    0
//!   u32   part        1-based part number of a split line, 0 when not split
//!   u64   seq         per-stream sequence number, from 1
//!   i64   timestamp   microseconds since the epoch, taken when the bytes were read
//!   ...   payload     the line, without its `\n` (and trailing `\r`)
//! ```
//!
//! A companion never reopens a segment: it starts a new one when the current
//! one passes the segment size, after a write error, and at every start.
//! So a frame that is short or fails its CRC is *pending* while its segment is
//! the newest and the companion has not written `done`, and *torn* otherwise:
//! the reader then counts it and continues with the next segment. A torn
//! frame is never returned.
//!
//! # Checkpoint
//!
//! `checkpoint` holds `<segment> <offset> <crc32c hex>\n`: the position of the
//! first frame not yet acknowledged by the sink. It is replaced atomically
//! (write `checkpoint.tmp`, rename). An unreadable checkpoint means "start at
//! the oldest segment": duplicates, never loss. Segments below the
//! checkpoint's are deleted by the publisher.
//!
//! # Durability
//!
//! The spool survives the death of any process (companion, publisher,
//! agent): what was written is in the page cache, in order. It is not
//! made to survive a power loss or a kernel crash: companions never fsync
//! segments (a sync per write would slow every container), so neither
//! does the publisher fsync the checkpoint and ledger it rewrites up to
//! 25 times a second per busy container (an fsync there blocked the one
//! publisher thread for 1-5 ms each, 7-10% of its time at 100k lines/s,
//! and was the tail of the delivery latency). After a power loss the
//! checkpoint may be older than the data (duplicates) or unreadable
//! (start at the oldest segment: duplicates), and lines not yet written
//! back are gone, as with any unsynced file. `meta.json` and `done` are
//! synced: each is written once per container.
//!
//! # Trust
//!
//! `data/` belongs to the task's user, though the task cannot reach it (its
//! parent is root's 0700). Should one get there anyway (a spool from a
//! version that made the parent 0711, a changed mode), the publisher, which
//! runs as root in the agent, still trusts nothing in it: every file it
//! opens there goes through [`open_untrusted`] (no
//! symlink, no FIFO, regular files only) and every file it creates through
//! [`write_atomic`] or [`write_replace`] (`O_CREAT | O_EXCL | O_NOFOLLOW`). A planted link can
//! therefore never make root read, truncate or write anything else, and a
//! planted FIFO cannot stall the publisher. A non-regular segment is skipped
//! as torn; a non-regular checkpoint reads as corrupt.

pub mod checkpoint;
pub mod inspect;
pub mod lock;
pub mod meta;
pub mod notice;
pub mod reader;
pub mod record;
pub mod writer;

pub use checkpoint::Position;
pub use meta::ContainerMeta;
pub use reader::{Next, SpoolReader};
pub use record::{Record, Stream};
pub use writer::SpoolWriter;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"MGSPOOL1";
pub const DATA_DIR: &str = "data";

/// Where a container's segments, checkpoint and `done` live.
pub fn data_dir(container_dir: &Path) -> PathBuf {
    container_dir.join(DATA_DIR)
}
pub const META_FILE: &str = "meta.json";
/// Prefix of a container directory still being prepared (renamed into
/// place once whole).
pub const PREPARING_PREFIX: &str = ".prep-";
pub const DONE_FILE: &str = "done";
/// Held (flock) by the companion for as long as it lives.
pub const COMPANION_LOCK: &str = "companion.lock";

/// Whether the companion writing `data` is alive: Some(false) once its
/// lock can be taken (it died, by any means), None when there is no lock
/// (a spool from an older version: unknown).
pub fn companion_alive(data: &Path) -> Option<bool> {
    use std::os::fd::AsRawFd;
    let f = open_untrusted(&data.join(COMPANION_LOCK)).ok()?;
    // SAFETY: flock on our own fd; closing the file releases it.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    Some(r != 0)
}
pub const CHECKPOINT_FILE: &str = "checkpoint";

/// Longest container id used as its directory name as it is: with
/// `.prep-` before it and `-<pid>-<n>` after, the temporary name stays far
/// below the 255 bytes a file name may have.
const KEY_VERBATIM_MAX: usize = 160;
/// Of an id that is not used as it is, this much (cleaned) stays readable.
const KEY_PREFIX_MAX: usize = 100;
/// Root entries of the publisher's (`publisher.lock`, `metrics.json` and
/// their `.tmp`): an id with one of these names must not take its place.
const ROOT_FILES: &[&str] = &[lock::LOCK_FILE, "metrics.json"];

/// A name the publisher takes for a container spool (given `meta.json` or
/// `data/` inside): letters, digits, `.`, `_` and `-`, not starting with
/// `.` (so never `.prep-*`, `.`, `..` or a hidden entry).
pub fn key_like(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && name.bytes().all(key_byte)
}

fn key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._-".contains(&b)
}

/// The directory name for a container id: one name per id, and a name the
/// publisher takes for a container spool.
///
/// An id of letters, digits, `.`, `_` and `-` (every Mesos UUID, and
/// `parent.child` of nested containers) is its own name. Any other id
/// (other bytes, a leading `.`, longer than 160 bytes, a publisher file's
/// name, or one that looks like such a name) becomes its cleaned start
/// with `--h` and 16 hex digits of a hash of the whole id after it, so
/// `a b` and `a_b`, or `x€` and `x___`, get spools of their own (before,
/// both wrote one spool, and the first one's lines shipped under the
/// second's identity), `.hidden` is not taken for a half-prepared or
/// foreign entry, and a 255-byte id still has a spool. The hash (FNV-1a,
/// 64 bits) keeps ids apart by chance, not against a chosen collision.
pub fn container_key(container_id: &str) -> String {
    let verbatim = key_like(container_id)
        && container_id.len() <= KEY_VERBATIM_MAX
        && !ROOT_FILES.iter().any(|f| {
            container_id
                .strip_prefix(f)
                .is_some_and(|r| r.is_empty() || r == ".tmp")
        })
        && !looks_hashed(container_id);
    if verbatim {
        return container_id.to_string();
    }
    let mut key: String = container_id
        .bytes()
        .take(KEY_PREFIX_MAX)
        .map(|b| if key_byte(b) { b as char } else { '_' })
        .collect();
    if key.starts_with('.') {
        key.replace_range(..1, "_");
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{key}--h{h:016x}")
}

/// Ends the way `container_key` ends a hashed name (`--h` + 16 hex).
fn looks_hashed(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 19 && {
        let tail = &b[b.len() - 19..];
        tail.starts_with(b"--h") && tail[3..].iter().all(u8::is_ascii_hexdigit)
    }
}

pub fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("seg-{index:020}.spool"))
}

/// Segment numbers present in `dir`, ascending.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix("seg-")
            .and_then(|r| r.strip_suffix(".spool"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Creates the empty `done` marker. Empty on purpose: it needs no data
/// blocks, so it can be written even when the spool's filesystem is full.
pub fn mark_done(dir: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(dir.join(DONE_FILE))
        .map(|_| ())
}

/// Where the companion keeps room for its `done` marker's content.
const DONE_RESERVE: &str = "done.reserve";

/// Makes the room [`mark_done_at`] writes into, while there is room: on a
/// full filesystem a new file may be created but get no bytes, and the
/// last `_seq`s are what lets the publisher name a lost tail.
pub fn reserve_done(dir: &Path) {
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(dir.join(DONE_RESERVE))
        .and_then(|mut f| std::io::Write::write_all(&mut f, &[b' '; 64]));
}

/// Marks a spool complete with the last `_seq` of stdout and stderr, so
/// the publisher can tell a lost tail from an end: written into the room
/// [`reserve_done`] made, then renamed to `done`. The content is best
/// effort (an empty `done` still means done).
pub fn mark_done_at(dir: &Path, last: [u64; 2]) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    let text = format!("stdout={} stderr={}\n", last[0], last[1]);
    let reserve = dir.join(DONE_RESERVE);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&reserve)
        .and_then(|mut f| {
            f.rewind()?;
            // Overwrites bytes already allocated; the padding is spaces.
            f.write_all(text.as_bytes())
        })
        .and_then(|()| std::fs::rename(&reserve, dir.join(DONE_FILE)));
    if written.is_ok() {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(dir.join(DONE_FILE))?;
    let _ = f.write_all(text.as_bytes());
    Ok(())
}

/// The last `_seq`s a `done` marker names (None: none named).
pub fn done_seqs(dir: &Path) -> Option<[u64; 2]> {
    use std::io::Read;
    let mut s = String::new();
    open_untrusted(&dir.join(DONE_FILE))
        .ok()?
        .take(64)
        .read_to_string(&mut s)
        .ok()?;
    parse_seqs(&s)
}

/// `stdout=N stderr=M` (the form of `done` and of the publisher's stored
/// account): both numbers, or None.
pub fn parse_seqs(s: &str) -> Option<[u64; 2]> {
    let mut out = [None, None];
    for kv in s.split_whitespace() {
        match kv.split_once('=') {
            Some(("stdout", v)) => out[0] = v.parse().ok(),
            Some(("stderr", v)) => out[1] = v.parse().ok(),
            _ => {}
        }
    }
    Some([out[0]?, out[1]?])
}

/// Opens `path` for reading in a directory another user may control: never
/// follows a symlink (`O_NOFOLLOW`), never blocks on a FIFO (`O_NONBLOCK`),
/// and accepts only a regular file. A link or a special file is an
/// `InvalidInput` error naming it.
pub fn open_untrusted(path: &Path) -> std::io::Result<std::fs::File> {
    let refuse = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file; not opened", path.display()),
        )
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                refuse()
            } else {
                e
            }
        })?;
    if !f.metadata()?.is_file() {
        return Err(refuse());
    }
    Ok(f)
}

/// Writes `data` to `dir/name` atomically (temporary file, fsync, rename).
///
/// Safe in a directory the task's user owns: the temporary file is created
/// with `O_EXCL | O_NOFOLLOW` after unlinking whatever had its name (unlink
/// never follows a link), so a planted `name.tmp -> /etc/passwd` is removed,
/// never written through; if one is planted again in between, this write
/// fails instead. `rename` replaces the entry `name`, never a link's target.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    replace(dir, name, data, true)
}

/// [`write_atomic`] without the fsync, for what the publisher rewrites
/// many times a second (the checkpoint, the ledger): atomic against a
/// crash of any process (the kernel keeps the order of the writes and
/// renames), not against losing power (see "Durability" above).
pub fn write_replace(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    replace(dir, name, data, false)
}

fn replace(dir: &Path, name: &str, data: &[u8], sync: bool) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(data)?;
        if sync {
            f.sync_data()?;
        }
    }
    std::fs::rename(&tmp, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the publisher's discovery takes for a container spool's name
    /// (`publisher::adopt::classify`, before it looks inside).
    fn key_like(k: &str) -> bool {
        !k.is_empty()
            && !k.starts_with('.')
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    }

    #[test]
    fn every_container_id_gets_a_name_of_its_own_that_the_publisher_takes() {
        // Mesos UUIDs and nested ids are their own names, as before.
        for id in [
            "8d2b7a2e-1f4c-4b8e-9a51-0c1d2e3f4a5b",
            "8d2b7a2e-1f4c-4b8e-9a51-0c1d2e3f4a5b.debug-1",
            "c1",
            "a_b",
        ] {
            assert_eq!(container_key(id), id);
        }
        let long_ok = "b".repeat(KEY_VERBATIM_MAX);
        let ids: Vec<String> = [
            "a b",
            "a:b",
            "a_b",
            "x€",
            "x___",
            ".hidden",
            "..",
            ".",
            "../../escape",
            "..,",
            ".prep-x",
            "metrics.json",
            "metrics.json.tmp",
            "publisher.lock",
            "publisher.lock.tmp",
            "metrics.jsonx",
            "a/b",
            "a\\b",
            "",
            "\u{0}",
            "x--h0123456789abcdef",
            "x--h0123456789abcdeg",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            long_ok.clone(),
            "b".repeat(KEY_VERBATIM_MAX + 1),
            "b".repeat(255),
            "€".repeat(100),
            "€".repeat(101),
        ])
        .chain((0u8..=255).map(|b| format!("id{}", b as char)))
        .collect();
        let mut seen = std::collections::HashMap::new();
        for id in &ids {
            let k = container_key(id);
            assert!(key_like(&k), "{id:?} -> {k:?} is not taken for a container");
            assert!(!k.starts_with(PREPARING_PREFIX), "{id:?} -> {k:?}");
            assert!(
                !ROOT_FILES
                    .iter()
                    .any(|f| k == *f || k == format!("{f}.tmp")),
                "{id:?} -> {k:?}"
            );
            // `.prep-<key>-<pid>-<n>` fits a file name (255 bytes).
            assert!(
                k.len() + PREPARING_PREFIX.len() + 32 <= 255,
                "{id:?} -> {} bytes",
                k.len()
            );
            if let Some(other) = seen.insert(k.clone(), id.clone()) {
                assert_eq!(&other, id, "two ids share the name {k:?}");
            }
            assert_eq!(container_key(id), k, "stable");
        }
        assert_eq!(container_key(&long_ok), long_ok);
        // An id that looks hashed is hashed itself, so it meets no other.
        assert_ne!(
            container_key("x--h0123456789abcdef"),
            "x--h0123456789abcdef"
        );
        assert_eq!(
            container_key("x--h0123456789abcdeg"),
            "x--h0123456789abcdeg"
        );
        assert_eq!(container_key("metrics.jsonx"), "metrics.jsonx");
    }
}
