//! ContainerConfig JSON → container identity, from an allowlist of fields.
//!
//! The shim hands us the `mesos::slave::ContainerConfig` protobuf as JSON
//! (snake_case names, see ../shared/MESOS.md). We read only what identifies
//! the writer of a line: ids, names, the Marathon app, the user and labels.
//! Environment variables are read for three known names only
//! (`MARATHON_APP_ID`, `MARATHON_APP_VERSION`, `MESOS_TASK_ID`) and for
//! per-task overrides (`<env_prefix>*`, returned separately and never put in
//! a record); every other value, secrets included, is never copied.
//!
//! Failure policy:
//! - not JSON, not an object, no string `directory`: an error naming the
//!   problem (we cannot write a sandbox we do not know);
//! - an identity field of the wrong type: skipped with a warning, the rest is
//!   used, and the ids are taken from the sandbox path where possible;
//! - hostile labels: empty keys dropped, values over [`MAX_LABEL_VALUE`]
//!   bytes truncated, at most [`MAX_LABELS`] labels and [`MAX_LABEL_BYTES`]
//!   in total (a warning says how many were dropped);
//! - an identity string (ids, names, app, user) over [`MAX_FIELD_VALUE`]
//!   bytes is truncated, with a warning. Every record repeats the identity,
//!   so together these bound its size: at most 9 × 1 KiB + 16 KiB.

use serde_json::{Map, Value};
use std::fmt;

pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_VALUE: usize = 1024;
pub const MAX_LABEL_BYTES: usize = 16 * 1024;
pub const MAX_FIELD_VALUE: usize = 1024;

/// Cuts `v` to at most `max` bytes (on a char boundary) plus a visible
/// marker; returns whether it was cut.
fn truncate_value(v: &mut String, max: usize) -> bool {
    if v.len() <= max {
        return false;
    }
    v.truncate(v.floor_char_boundary(max));
    v.push_str("…[truncated]");
    true
}

/// Who wrote a line. Serialised into the spool's `meta.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The container id; nested containers as `parent.child` (outermost first).
    pub container_id: String,
    /// The chain of parent container ids, outermost first (empty if top-level).
    pub parents: Vec<String>,
    pub framework_id: Option<String>,
    pub executor_id: Option<String>,
    pub task_id: Option<String>,
    pub task_name: Option<String>,
    pub agent_id: Option<String>,
    pub app: Option<String>,
    pub app_version: Option<String>,
    pub user: Option<String>,
    pub container_class: Option<String>,
    /// Task labels over executor labels, in their original order.
    pub labels: Vec<(String, String)>,
    /// The sandbox directory (`ContainerConfig.directory`).
    pub sandbox: String,
}

/// The result of reading a ContainerConfig.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub identity: Identity,
    /// `<env_prefix>*` variables (name, value) and every label, for overrides.
    pub override_env: Vec<(String, String)>,
    pub all_labels: Vec<(String, String)>,
    /// Problems that did not prevent use (logged by the caller).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataError(pub String);

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "container config: {}", self.0)
    }
}

impl std::error::Error for MetadataError {}

/// Reads `obj[k1][k2]...` as a string; records a warning on a wrong type.
fn string_at(root: &Value, path: &[&str], warnings: &mut Vec<String>) -> Option<String> {
    let mut v = root;
    for (i, k) in path.iter().enumerate() {
        match v {
            Value::Object(m) => match m.get(*k) {
                Some(n) => v = n,
                None => return None,
            },
            Value::Null => return None,
            other => {
                warnings.push(format!(
                    "`{}` should be an object, found {}; ignored",
                    path[..i].join("."),
                    kind(other)
                ));
                return None;
            }
        }
    }
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => {
            warnings.push(format!(
                "`{}` should be a string, found {}; ignored",
                path.join("."),
                kind(other)
            ));
            None
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn object_at<'a>(root: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut v = root;
    for k in path {
        v = v.as_object()?.get(*k)?;
    }
    Some(v)
}

/// Reads a `Labels` message (`{"labels": [{"key", "value"}]}`).
fn labels_at(root: &Value, path: &[&str], warnings: &mut Vec<String>) -> Vec<(String, String)> {
    let Some(v) = object_at(root, path) else {
        return Vec::new();
    };
    let name = path.join(".");
    let Some(list) = v
        .as_object()
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_array)
    else {
        warnings.push(format!(
            "`{name}` should be {{\"labels\": [...]}}, found {}; ignored",
            kind(v)
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in list {
        let key = item.get("key").and_then(Value::as_str);
        let value = match item.get("value") {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s,
            Some(other) => {
                warnings.push(format!(
                    "label {:?} in `{name}`: its value should be a string, found {}; kept with an empty value",
                    key.unwrap_or(""),
                    kind(other)
                ));
                ""
            }
        };
        match key {
            Some(k) => out.push((k.to_string(), value.to_string())),
            None => warnings.push(format!("a label in `{name}` has no string key; ignored")),
        }
    }
    out
}

/// Reads `environment.variables` of a CommandInfo: only name/value pairs of
/// type VALUE (SECRET values are references, never read).
fn env_at(root: &Value, path: &[&str]) -> Vec<(String, String)> {
    let Some(vars) = object_at(root, path)
        .and_then(|c| c.get("environment"))
        .and_then(|e| e.get("variables"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    vars.iter()
        .filter(|v| v.get("type").and_then(Value::as_str).unwrap_or("VALUE") == "VALUE")
        .filter_map(|v| {
            Some((
                v.get("name")?.as_str()?.to_string(),
                v.get("value")?.as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Ids found in a sandbox path
/// `.../slaves/<agent>/frameworks/<fw>/executors/<ex>/runs/<cid>[/containers/<child>...]`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PathIds {
    pub agent_id: Option<String>,
    pub framework_id: Option<String>,
    pub executor_id: Option<String>,
    /// Container ids along the path, outermost first.
    pub containers: Vec<String>,
}

pub fn ids_from_sandbox(dir: &str) -> PathIds {
    let parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
    let mut ids = PathIds::default();
    let mut i = 0;
    while i + 1 < parts.len() {
        let (k, v) = (parts[i], parts[i + 1].to_string());
        match k {
            "slaves" | "agents" => ids.agent_id = Some(v),
            "frameworks" => ids.framework_id = Some(v),
            "executors" => ids.executor_id = Some(v),
            "runs" | "containers" => ids.containers.push(v),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    ids
}

/// Keeps labels within the caps; returns how many were dropped or truncated.
fn cap_labels(labels: Vec<(String, String)>, warnings: &mut Vec<String>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let (mut empty, mut over, mut truncated, mut total) = (0usize, 0usize, 0usize, 0usize);
    for (k, mut v) in labels {
        if k.trim().is_empty() {
            empty += 1;
            continue;
        }
        if out.iter().any(|(ok, _)| *ok == k) {
            continue;
        }
        if truncate_value(&mut v, MAX_LABEL_VALUE) {
            truncated += 1;
        }
        if out.len() >= MAX_LABELS || total + k.len() + v.len() > MAX_LABEL_BYTES {
            over += 1;
            continue;
        }
        total += k.len() + v.len();
        out.push((k, v));
    }
    if empty > 0 {
        warnings.push(format!("{empty} label(s) with an empty key dropped"));
    }
    if truncated > 0 {
        warnings.push(format!(
            "{truncated} label value(s) longer than {MAX_LABEL_VALUE} bytes truncated"
        ));
    }
    if over > 0 {
        warnings.push(format!(
            "{over} label(s) dropped: at most {MAX_LABELS} labels and {MAX_LABEL_BYTES} bytes per container"
        ));
    }
    out
}

/// Parses the ContainerConfig JSON for the container `container_id`
/// (nested: `parent.child`, as the shim joins the `ContainerID` chain).
pub fn parse(
    container_id: &str,
    config_json: &str,
    env_prefix: &str,
) -> Result<Parsed, MetadataError> {
    let root: Value = serde_json::from_str(config_json).map_err(|e| {
        MetadataError(format!(
            "not valid JSON ({e}); the shim must pass ContainerConfig as JSON"
        ))
    })?;
    let obj: &Map<String, Value> = root
        .as_object()
        .ok_or_else(|| MetadataError(format!("expected a JSON object, found {}", kind(&root))))?;
    let sandbox = match obj.get("directory") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(other) => {
            return Err(MetadataError(format!(
                "`directory` (the sandbox path) should be a non-empty string, found {}",
                kind(other)
            )))
        }
        None => {
            return Err(MetadataError(
                "`directory` (the sandbox path) is missing".into(),
            ))
        }
    };
    let mut w = Vec::new();
    let path_ids = ids_from_sandbox(&sandbox);

    // Environment: task's over the container command's over the executor's.
    let mut env: Vec<(String, String)> = Vec::new();
    for p in [
        &["executor_info", "command"][..],
        &["command_info"][..],
        &["task_info", "command"][..],
    ] {
        for (k, v) in env_at(&root, p) {
            env.retain(|(ek, _)| *ek != k);
            env.push((k, v));
        }
    }
    let env_get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());

    let mut parents: Vec<String> = container_id
        .split('.')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if container_id.is_empty() || parents.is_empty() {
        return Err(MetadataError("the container id is empty".into()));
    }
    parents.pop();

    let executor_id = string_at(&root, &["executor_info", "executor_id", "value"], &mut w)
        .or_else(|| path_ids.executor_id.clone());
    let framework_id = string_at(&root, &["executor_info", "framework_id", "value"], &mut w)
        .or_else(|| path_ids.framework_id.clone());
    let agent_id = string_at(&root, &["task_info", "slave_id", "value"], &mut w)
        .or_else(|| path_ids.agent_id.clone());
    let task_id = string_at(&root, &["task_info", "task_id", "value"], &mut w)
        .or_else(|| env_get("MESOS_TASK_ID"));
    let task_name = string_at(&root, &["task_info", "name"], &mut w);
    let user = string_at(&root, &["user"], &mut w);
    let container_class = string_at(&root, &["container_class"], &mut w);

    // Labels: task labels over executor labels.
    let mut all_labels = labels_at(&root, &["executor_info", "labels"], &mut w);
    for (k, v) in labels_at(&root, &["task_info", "labels"], &mut w) {
        all_labels.retain(|(ek, _)| *ek != k);
        all_labels.push((k, v));
    }
    let override_env: Vec<(String, String)> = if env_prefix.is_empty() {
        Vec::new()
    } else {
        env.iter()
            .filter(|(k, _)| k.starts_with(env_prefix))
            .cloned()
            .collect()
    };
    let shipped: Vec<(String, String)> = all_labels
        .iter()
        .filter(|(k, _)| !k.starts_with("gelf."))
        .cloned()
        .collect();
    let labels = cap_labels(shipped, &mut w);

    let mut identity = Identity {
        container_id: container_id.to_string(),
        parents,
        framework_id,
        executor_id,
        task_id,
        task_name,
        agent_id,
        app: env_get("MARATHON_APP_ID"),
        app_version: env_get("MARATHON_APP_VERSION"),
        user,
        container_class,
        labels,
        sandbox,
    };
    identity.cap_fields(&mut w);
    Ok(Parsed {
        identity,
        override_env,
        all_labels,
        warnings: w,
    })
}

impl Identity {
    /// Adds what was found later about a nested container's task (see
    /// `crate::nested`): its id, name and labels (over the executor's),
    /// capped as at prepare time. Returns its `gelf.*` override labels.
    pub fn add_task(
        &mut self,
        id: String,
        name: Option<String>,
        labels: Vec<(String, String)>,
        warnings: &mut Vec<String>,
    ) -> Vec<(String, String)> {
        self.task_id = Some(id);
        if name.is_some() {
            self.task_name = name;
        }
        let (overrides, shipped): (Vec<_>, Vec<_>) = labels
            .into_iter()
            .partition(|(k, _)| k.starts_with("gelf."));
        let mut all = std::mem::take(&mut self.labels);
        for (k, v) in shipped {
            all.retain(|(ek, _)| *ek != k);
            all.push((k, v));
        }
        self.labels = cap_labels(all, warnings);
        self.cap_fields(warnings);
        overrides
    }

    /// Truncates identity strings over [`MAX_FIELD_VALUE`] bytes, naming
    /// each in a warning. (The container id and sandbox come from the agent,
    /// not the task, and are left alone.)
    fn cap_fields(&mut self, warnings: &mut Vec<String>) {
        for (name, field) in [
            ("framework_id", &mut self.framework_id),
            ("executor_id", &mut self.executor_id),
            ("task_id", &mut self.task_id),
            ("task_name", &mut self.task_name),
            ("agent_id", &mut self.agent_id),
            ("app", &mut self.app),
            ("app_version", &mut self.app_version),
            ("user", &mut self.user),
            ("container_class", &mut self.container_class),
        ] {
            if let Some(v) = field {
                let len = v.len();
                if truncate_value(v, MAX_FIELD_VALUE) {
                    warnings.push(format!(
                        "`{name}` is {len} bytes; truncated to {MAX_FIELD_VALUE}"
                    ));
                }
            }
        }
    }

    /// Serialises for the spool's metadata file.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("container_id".into(), self.container_id.clone().into());
        m.insert("parents".into(), self.parents.clone().into());
        let opt = |m: &mut Map<String, Value>, k: &str, v: &Option<String>| {
            if let Some(v) = v {
                m.insert(k.into(), Value::String(v.clone()));
            }
        };
        opt(&mut m, "framework_id", &self.framework_id);
        opt(&mut m, "executor_id", &self.executor_id);
        opt(&mut m, "task_id", &self.task_id);
        opt(&mut m, "task_name", &self.task_name);
        opt(&mut m, "agent_id", &self.agent_id);
        opt(&mut m, "app", &self.app);
        opt(&mut m, "app_version", &self.app_version);
        opt(&mut m, "user", &self.user);
        opt(&mut m, "container_class", &self.container_class);
        m.insert(
            "labels".into(),
            Value::Array(
                self.labels
                    .iter()
                    .map(|(k, v)| Value::Array(vec![k.clone().into(), v.clone().into()]))
                    .collect(),
            ),
        );
        m.insert("sandbox".into(), self.sandbox.clone().into());
        Value::Object(m)
    }

    pub fn from_json(v: &Value) -> Result<Identity, MetadataError> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
        let container_id =
            s("container_id").ok_or_else(|| MetadataError("meta: no container_id".into()))?;
        Ok(Identity {
            container_id,
            parents: v
                .get("parents")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            framework_id: s("framework_id"),
            executor_id: s("executor_id"),
            task_id: s("task_id"),
            task_name: s("task_name"),
            agent_id: s("agent_id"),
            app: s("app"),
            app_version: s("app_version"),
            user: s("user"),
            container_class: s("container_class"),
            labels: v
                .get("labels")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|p| {
                            Some((
                                p.get(0)?.as_str()?.to_string(),
                                p.get(1)?.as_str()?.to_string(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            sandbox: s("sandbox").unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_path_ids() {
        let ids = ids_from_sandbox(
            "/var/lib/mesos/slaves/A-S3/frameworks/F-0000/executors/ex.1/runs/P/containers/C",
        );
        assert_eq!(ids.agent_id.as_deref(), Some("A-S3"));
        assert_eq!(ids.framework_id.as_deref(), Some("F-0000"));
        assert_eq!(ids.executor_id.as_deref(), Some("ex.1"));
        assert_eq!(ids.containers, vec!["P".to_string(), "C".to_string()]);
    }

    #[test]
    fn minimal_config_and_errors() {
        let p = parse("c1", r#"{"directory":"/tmp/x"}"#, "GELF_LOGGER_").unwrap();
        assert_eq!(p.identity.sandbox, "/tmp/x");
        assert!(p.identity.framework_id.is_none());
        assert!(parse("c1", "[]", "G_").unwrap_err().0.contains("object"));
        assert!(parse("", r#"{"directory":"/x"}"#, "G_").is_err());
        assert!(parse("c", r#"{"directory":7}"#, "G_")
            .unwrap_err()
            .0
            .contains("found a number"));
    }

    #[test]
    fn a_label_value_that_is_not_a_string_is_kept_empty_with_a_warning() {
        let cfg = serde_json::json!({
            "directory": "/tmp/x",
            "task_info": {"name": "t", "task_id": {"value": "t1"}, "labels": {"labels": [
                {"key": "obj", "value": {"a": 1}},
                {"key": "num", "value": 7},
                {"key": "ok", "value": "v"},
            ]}},
        });
        let p = parse("c1", &cfg.to_string(), "G_").unwrap();
        let find = |k: &str| p.all_labels.iter().find(|(x, _)| x == k).cloned();
        assert_eq!(find("obj"), Some(("obj".into(), String::new())));
        assert_eq!(find("ok"), Some(("ok".into(), "v".into())));
        let said: Vec<&String> = p
            .warnings
            .iter()
            .filter(|w| w.contains("should be a string"))
            .collect();
        assert_eq!(said.len(), 2, "{:?}", p.warnings);
        assert!(
            said[0].contains("\"obj\"") && said[0].contains("object"),
            "{said:?}"
        );
    }

    #[test]
    fn long_identity_strings_are_truncated_on_a_char_boundary() {
        let name = "é".repeat(5000); // 10,000 bytes, 2 per char
        let cfg = serde_json::json!({
            "directory": "/tmp/x",
            "user": "u".repeat(MAX_FIELD_VALUE),
            "task_info": {"name": name, "task_id": {"value": "t1"}},
        });
        let p = parse("c1", &cfg.to_string(), "G_").unwrap();
        let n = p.identity.task_name.unwrap();
        assert!(n.ends_with("…[truncated]"));
        assert_eq!(n.len(), MAX_FIELD_VALUE + "…[truncated]".len());
        assert!(n.starts_with("éé"));
        assert_eq!(
            p.identity.user.unwrap().len(),
            MAX_FIELD_VALUE,
            "at the cap: kept"
        );
        assert_eq!(p.identity.task_id.as_deref(), Some("t1"));
        assert_eq!(
            p.warnings,
            ["`task_name` is 10000 bytes; truncated to 1024"]
        );
    }
}
