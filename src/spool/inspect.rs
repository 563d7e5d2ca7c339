//! What a spool holds, for an operator (`mesos-gelf spool status`): read
//! only, without the publisher's lock, through the same frame decoder.

use super::checkpoint::{self, Position};
use super::notice::LossReason;
use super::record::{decode_frame, Decoded, Stream};
use super::{data_dir, list_segments, segment_path, ContainerMeta, DONE_FILE, MAGIC};
use serde_json::{json, Value};
use std::path::Path;

/// One container's spool.
#[derive(Debug, Default)]
pub struct Status {
    pub key: String,
    pub container_id: String,
    pub task_id: Option<String>,
    pub app: Option<String>,
    pub framework_id: Option<String>,
    pub topic: Option<String>,
    pub checkpoint: Option<Position>,
    /// Records and bytes after the checkpoint (not yet delivered).
    pub pending_records: u64,
    pub pending_bytes: u64,
    /// Age of the oldest pending record, milliseconds.
    pub oldest_pending_ms: Option<u64>,
    /// Delivered data kept for replay.
    pub retained_bytes: u64,
    /// The publisher's own notices (losses it recorded, a companion that
    /// died) not yet delivered: `publisher-notices.json`.
    pub pending_notices: u64,
    /// Losses by reason (the largest totals any notice or the publisher
    /// recorded for this container).
    pub losses: Vec<(LossReason, u64)>,
    /// `running`, `finished`, `died`, `unknown`.
    pub companion: &'static str,
    /// Corrupt frames found while reading.
    pub torn: u64,
    pub problem: Option<String>,
}

impl Status {
    pub fn to_json(&self) -> Value {
        json!({
            "container": self.key,
            "container_id": self.container_id,
            "task_id": self.task_id,
            "app": self.app,
            "framework_id": self.framework_id,
            "topic": self.topic,
            "checkpoint": self.checkpoint.map(|p| format!("{}:{}", p.segment, p.offset)),
            "pending_records": self.pending_records,
            "pending_bytes": self.pending_bytes,
            "pending_notices": self.pending_notices,
            "oldest_pending_ms": self.oldest_pending_ms,
            "retained_bytes": self.retained_bytes,
            "losses": self.losses.iter().map(|(r, n)| (r.name().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "companion": self.companion,
            "torn_frames": self.torn,
            "problem": self.problem,
        })
    }
}

fn merge(losses: &mut Vec<(LossReason, u64)>, r: LossReason, n: u64) {
    match losses.iter_mut().find(|(x, _)| *x == r) {
        Some((_, m)) => *m = (*m).max(n),
        None => losses.push((r, n)),
    }
}

/// The status of the container spool `dir` (`<spool_dir>/<key>`).
pub fn status(dir: &Path, now_us: i64) -> Status {
    let key = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut st = Status {
        key: key.clone(),
        container_id: key,
        ..Default::default()
    };
    match ContainerMeta::load(dir) {
        Ok(m) => {
            st.container_id = m.identity.container_id;
            st.task_id = m.identity.task_id;
            st.app = m.identity.app;
            st.framework_id = m.identity.framework_id;
            st.topic = Some(m.settings.topic);
        }
        Err(e) => st.problem = Some(e),
    }
    let data = data_dir(dir);
    st.checkpoint = checkpoint::load(&data).ok().flatten();
    let from = st.checkpoint.unwrap_or_default();
    for seg in list_segments(&data).unwrap_or_default() {
        let path = segment_path(&data, seg);
        let mut bytes = Vec::new();
        if let Ok(f) = super::open_untrusted(&path) {
            use std::io::Read;
            let _ = f.take(1 << 31).read_to_end(&mut bytes);
        }
        if seg < from.segment {
            st.retained_bytes += bytes.len() as u64;
            continue;
        }
        if bytes.len() < MAGIC.len() {
            continue;
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            st.torn += 1;
            continue;
        }
        let mut at = MAGIC.len();
        if seg == from.segment && from.offset as usize > at {
            st.retained_bytes += from.offset;
            at = from.offset as usize;
        }
        while at < bytes.len() {
            match decode_frame(&bytes[at..]) {
                Decoded::Frame(r, len) => {
                    at += len;
                    if r.stream == Stream::Notice {
                        for (reason, n) in super::notice::parse(&r.payload).totals {
                            merge(&mut st.losses, reason, n);
                        }
                    }
                    st.pending_records += 1;
                    st.pending_bytes += r.payload.len() as u64;
                    if st.oldest_pending_ms.is_none() {
                        st.oldest_pending_ms = Some(((now_us - r.ts_micros).max(0) / 1000) as u64);
                    }
                }
                // A short tail is being written; anything else is torn.
                Decoded::Short(_) => break,
                Decoded::Bad => {
                    st.torn += 1;
                    break;
                }
            }
        }
    }
    // The publisher's own notices keep their totals.
    if let Ok(b) = std::fs::read(dir.join("publisher-notices.json")) {
        if let Ok(v) = serde_json::from_slice::<Value>(&b) {
            let count = |k: &str| v[k].as_array().map_or(0, |a| a.len() as u64);
            st.pending_notices = count("pending") + count("losses");
            if let Some(t) = v["totals"].as_object() {
                for (k, n) in t {
                    if let (Some(r), Some(n)) = (LossReason::from_name(k), n.as_u64()) {
                        if n > 0 {
                            merge(&mut st.losses, r, n);
                        }
                    }
                }
            }
        }
    }
    st.companion = if data.join(DONE_FILE).exists() {
        "finished"
    } else {
        match super::companion_alive(&data) {
            Some(true) => "running",
            Some(false) => "died",
            None => "unknown",
        }
    };
    st
}

/// Whether `root` looks like a spool directory of ours (it holds our lock
/// file, metrics or a container directory with `meta.json`).
pub fn is_spool_root(root: &Path) -> bool {
    if root.join(super::lock::LOCK_FILE).exists() || root.join("metrics.json").exists() {
        return true;
    }
    std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.path().join(super::META_FILE).is_file())
        })
        .unwrap_or(false)
}
