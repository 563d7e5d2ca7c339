//! The publisher's resume position, persisted atomically.

use std::path::Path;

/// A position in a container's spool: the segment and the byte offset of
/// the next frame to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// Longer than any checkpoint ("<u64> <u64> <8 hex>\n" is at most 50 bytes).
const MAX_LEN: u64 = 128;

fn body(p: Position) -> String {
    format!("{} {}", p.segment, p.offset)
}

/// Persists `p` as the container's checkpoint.
pub fn store(dir: &Path, p: Position) -> std::io::Result<()> {
    let b = body(p);
    let line = format!("{b} {:08x}\n", crc32c::crc32c(b.as_bytes()));
    super::write_replace(dir, super::CHECKPOINT_FILE, line.as_bytes())
}

/// Loads the checkpoint. `Ok(None)` when there is none; `Err` with a
/// message when it is unreadable (the caller starts over: duplicates, no loss).
pub fn load(dir: &Path) -> Result<Option<Position>, String> {
    use std::io::Read;
    // The directory belongs to the task's user: no links, no FIFOs, and
    // never more than a checkpoint's worth of bytes.
    let mut text = String::new();
    let read = super::open_untrusted(&dir.join(super::CHECKPOINT_FILE))
        .and_then(|f| f.take(MAX_LEN).read_to_string(&mut text));
    match read {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read checkpoint ({e}); starting from the oldest segment"
            ))
        }
    }
    let parts: Vec<&str> = text.split_whitespace().collect();
    let parsed = (|| {
        if parts.len() != 3 {
            return None;
        }
        let p = Position {
            segment: parts[0].parse().ok()?,
            offset: parts[1].parse().ok()?,
        };
        let crc = u32::from_str_radix(parts[2], 16).ok()?;
        (crc == crc32c::crc32c(body(p).as_bytes())).then_some(p)
    })();
    parsed.map(Some).ok_or_else(|| {
        format!(
            "checkpoint in {} is corrupt; starting from the oldest segment",
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_corruption() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load(d.path()).unwrap(), None);
        let p = Position {
            segment: 3,
            offset: 4096,
        };
        store(d.path(), p).unwrap();
        assert_eq!(load(d.path()).unwrap(), Some(p));
        std::fs::write(d.path().join("checkpoint"), "3 4097 deadbeef\n").unwrap();
        assert!(load(d.path()).is_err());
    }
}
