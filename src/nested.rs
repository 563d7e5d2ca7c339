//! The task of a nested container (a task group's task under the default
//! executor), found after `prepare()`.
//!
//! A nested container's `ContainerConfig` has no `task_info`: the agent calls
//! the logger with the command, the user and the sandbox only (see
//! `LAUNCH_NESTED_CONTAINER` in the agent's `http.cpp`). What identifies the
//! task is left behind shortly after:
//! - the default executor links `<executor sandbox>/tasks/<task id>` to
//!   `<executor sandbox>/containers/<container id>` right after the launch
//!   (for the web UI). This gives the task id. Only the link's last two
//!   components are compared, so a sandbox seen under another mount point
//!   (`/mnt/mesos/sandbox`) still matches;
//! - with framework checkpointing, the agent keeps the task as a `Task`
//!   protobuf in `<work_dir>/meta/slaves/<agent>/frameworks/<framework>/
//!   executors/<executor>/runs/<executor container>/tasks/<task id>/task.info`
//!   (4-byte length, then the message). This gives its name and labels.
//!
//! What cannot be had: the name and labels without checkpointing, and
//! anything for a nested container launched by a custom executor that
//! makes no such link. Such records ship without `_task_id`.

use crate::metadata::Identity;
use std::path::{Path, PathBuf};

/// Where to look for one nested container's task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// `<executor sandbox>`: the top-level container's sandbox.
    pub executor_sandbox: PathBuf,
    /// This container's own id (the last of the chain).
    pub container: String,
    /// `<work_dir>/meta/.../runs/<executor container>/tasks`, when the ids
    /// needed to build it are known.
    pub meta_tasks: Option<PathBuf>,
}

/// The task found for a nested container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Task {
    pub id: String,
    /// From the checkpointed `Task` (None without checkpointing).
    pub name: Option<String>,
    pub labels: Vec<(String, String)>,
}

/// A lookup for `id` if it is a nested container whose task is unknown and
/// whose sandbox has the agent's layout (`.../runs/<top>/containers/<id>`).
pub fn lookup_for(id: &Identity) -> Option<Lookup> {
    if id.parents.is_empty() || id.task_id.is_some() {
        return None;
    }
    let sandbox = Path::new(&id.sandbox);
    let container = id.container_id.rsplit('.').next()?.to_string();
    // Walk up `containers/<id>` pairs to the executor's `runs/<top>`.
    let mut dir = sandbox;
    loop {
        let name = dir.file_name()?.to_str()?;
        let parent = dir.parent()?;
        match parent.file_name()?.to_str()? {
            "containers" => dir = parent.parent()?,
            "runs" if name == id.parents[0] => break,
            _ => return None,
        }
    }
    let executor_sandbox = dir.to_path_buf();
    let meta_tasks = (|| {
        let s = id.sandbox.as_str();
        let work_dir = &s[..s.find("/slaves/")?];
        Some(
            Path::new(work_dir)
                .join("meta/slaves")
                .join(id.agent_id.as_ref()?)
                .join("frameworks")
                .join(id.framework_id.as_ref()?)
                .join("executors")
                .join(id.executor_id.as_ref()?)
                .join("runs")
                .join(&id.parents[0])
                .join("tasks"),
        )
    })();
    Some(Lookup {
        executor_sandbox,
        container,
        meta_tasks,
    })
}

/// The task, once the executor has linked it (None: not yet).
pub fn resolve(l: &Lookup) -> Option<Task> {
    let rd = std::fs::read_dir(l.executor_sandbox.join("tasks")).ok()?;
    for e in rd.flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let mut comps = target.components().rev();
        let last = comps.next().and_then(|c| c.as_os_str().to_str());
        let before = comps.next().and_then(|c| c.as_os_str().to_str());
        if last == Some(l.container.as_str()) && before == Some("containers") {
            let id = e.file_name().to_string_lossy().into_owned();
            let mut task = Task {
                id: id.clone(),
                ..Default::default()
            };
            if let Some(dir) = &l.meta_tasks {
                if let Some((name, labels)) = read_task_info(&dir.join(&id).join("task.info")) {
                    task.name = Some(name);
                    task.labels = labels;
                }
            }
            return Some(task);
        }
    }
    None
}

/// Name and labels from a checkpointed `mesos::Task` (`name` = 1,
/// `labels` = 11 holding `Label { key = 1, value = 2 }` as field 1).
fn read_task_info(path: &Path) -> Option<(String, Vec<(String, String)>)> {
    use std::io::Read;
    let f = crate::spool::open_untrusted(path).ok()?;
    let mut bytes = Vec::new();
    f.take(1 << 20).read_to_end(&mut bytes).ok()?;
    let len = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let msg = bytes.get(4..4 + len)?;
    let mut name = None;
    let mut labels = Vec::new();
    for (field, value) in fields(msg)? {
        match (field, value) {
            (1, Value::Bytes(b)) => name = Some(String::from_utf8_lossy(b).into_owned()),
            (11, Value::Bytes(b)) => {
                for (f, label) in fields(b)? {
                    if let (1, Value::Bytes(l)) = (f, label) {
                        let (mut k, mut v) = (None, String::new());
                        for (lf, lv) in fields(l)? {
                            match (lf, lv) {
                                (1, Value::Bytes(x)) => {
                                    k = Some(String::from_utf8_lossy(x).into_owned())
                                }
                                (2, Value::Bytes(x)) => v = String::from_utf8_lossy(x).into_owned(),
                                _ => {}
                            }
                        }
                        if let Some(k) = k {
                            labels.push((k, v));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Some((name?, labels))
}

enum Value<'a> {
    Varint,
    Fixed,
    Bytes(&'a [u8]),
}

fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The top-level fields of a protobuf message (None if malformed).
fn fields(b: &[u8]) -> Option<Vec<(u64, Value<'_>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let key = varint(b, &mut at)?;
        let value = match key & 7 {
            0 => {
                varint(b, &mut at)?;
                Value::Varint
            }
            1 => {
                at = at.checked_add(8).filter(|&a| a <= b.len())?;
                Value::Fixed
            }
            2 => {
                let n = varint(b, &mut at)? as usize;
                let end = at.checked_add(n).filter(|&e| e <= b.len())?;
                let v = &b[at..end];
                at = end;
                Value::Bytes(v)
            }
            5 => {
                at = at.checked_add(4).filter(|&a| a <= b.len())?;
                Value::Fixed
            }
            _ => return None,
        };
        out.push((key >> 3, value));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of a `task.info` the lab agent wrote for task group task
    /// `group-t1` (name `t1`, label team=blue).
    const TASK_INFO: &[u8] = b"\xc5\x00\x00\x00\x0a\x02t1\x12\x0a\x0a\x08group-t1\x1a\x2b\x0a\x29fb64d0c2-0b00-40a9-b568-f817af64b62b-0000\x22\x10\x0a\x0egroup-executor\x2a\x29\x0a\x27fb64d0c2-0b00-40a9-b568-f817af64b62b-S0\x30\x06\x3a\x1b\x0a\x04cpus\x10\x00\x1a\x09\x09\x9a\x99\x99\x99\x99\x99\xb9\x3f\x32\x01*\x5a\x03\x0a\x01*\x3a\x1a\x0a\x03mem\x10\x00\x1a\x09\x09\x00\x00\x00\x00\x00\x00\x40\x40\x32\x01*\x5a\x03\x0a\x01*\x5a\x0e\x0a\x0c\x0a\x04team\x12\x04blue";

    #[test]
    fn finds_the_task_through_the_executors_link_and_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let work = d.path();
        let exec = work.join("slaves/S0/frameworks/F/executors/group-executor/runs/P");
        let sbx = exec.join("containers/C");
        std::fs::create_dir_all(&sbx).unwrap();
        let id = Identity {
            container_id: "P.C".into(),
            parents: vec!["P".into()],
            agent_id: Some("S0".into()),
            framework_id: Some("F".into()),
            executor_id: Some("group-executor".into()),
            sandbox: sbx.display().to_string(),
            ..Default::default()
        };
        let l = lookup_for(&id).expect("a nested container");
        assert_eq!(l.executor_sandbox, exec);
        assert_eq!(resolve(&l), None, "not linked yet");
        std::fs::create_dir_all(exec.join("tasks")).unwrap();
        // Linked through another mount point of the same sandbox.
        std::os::unix::fs::symlink(
            "/mnt/mesos/sandbox/containers/C",
            exec.join("tasks/group-t1"),
        )
        .unwrap();
        std::os::unix::fs::symlink("/mnt/mesos/sandbox/containers/X", exec.join("tasks/other"))
            .unwrap();
        assert_eq!(
            resolve(&l),
            Some(Task {
                id: "group-t1".into(),
                name: None,
                labels: vec![]
            })
        );
        let meta =
            work.join("meta/slaves/S0/frameworks/F/executors/group-executor/runs/P/tasks/group-t1");
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(meta.join("task.info"), TASK_INFO).unwrap();
        let t = resolve(&l).unwrap();
        assert_eq!(t.name.as_deref(), Some("t1"));
        assert_eq!(t.labels, vec![("team".to_string(), "blue".to_string())]);
        // Truncated or garbage checkpoints are ignored, never a panic.
        for cut in 0..TASK_INFO.len() {
            std::fs::write(meta.join("task.info"), &TASK_INFO[..cut]).unwrap();
            assert_eq!(resolve(&l).unwrap().id, "group-t1");
        }
    }

    #[test]
    fn top_level_containers_and_known_tasks_need_no_lookup() {
        let mut id = Identity {
            container_id: "P".into(),
            sandbox: "/w/slaves/S/frameworks/F/executors/E/runs/P".into(),
            ..Default::default()
        };
        assert_eq!(lookup_for(&id), None);
        id.container_id = "P.C".into();
        id.parents = vec!["P".into()];
        id.task_id = Some("t".into());
        id.sandbox.push_str("/containers/C");
        assert_eq!(lookup_for(&id), None);
    }
}
