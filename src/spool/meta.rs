//! `meta.json`: a container's identity and resolved settings, written by
//! `prepare()` before its companion starts, read by the companion (sandbox
//! and line settings) and by the publisher (GELF fields, topic, levels).

use crate::config::ContainerSettings;
use crate::metadata::Identity;
use crate::privileges::RunAs;
use serde_json::{json, Value};
use std::path::Path;

/// The spool format this release writes, and the newest it reads. Every
/// release reads every earlier version (tests/fixtures/spool-v*).
pub const FORMAT_VERSION: u64 = 1;
/// How errors about a newer spool format start (adoption leaves those
/// spools alone instead of publishing them under a fallback identity).
pub const NEWER: &str = "newer spool format";

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerMeta {
    pub identity: Identity,
    pub settings: ContainerSettings,
    /// The user the companion drops to (None: stays as started).
    pub run_as: Option<RunAs>,
}

impl ContainerMeta {
    pub fn to_json(&self) -> Value {
        let s = &self.settings;
        json!({
            "version": FORMAT_VERSION,
            "run_as": self.run_as.as_ref().map(RunAs::to_json),
            "identity": self.identity.to_json(),
            "settings": {
                "topic": s.topic,
                "disable": s.disable,
                "level_stdout": s.level_stdout,
                "level_stderr": s.level_stderr,
                "multiline_start": s.multiline_start,
                "multiline_max_bytes": s.multiline_max_bytes,
                "multiline_timeout_ms": s.multiline_timeout_ms,
                "max_line_bytes": s.max_line_bytes,
                "idle_flush_ms": s.idle_flush_ms,
                "sandbox_max_size": s.sandbox_max_size,
                "sandbox_max_files": s.sandbox_max_files,
                "spool_max_size": s.spool_max_size,
                "spool_segment_size": s.spool_segment_size,
                "spool_min_free": s.spool_min_free.text(),
                "rate_limit_lines": s.rate_limit_lines,
                "rate_limit_bytes": s.rate_limit_bytes,
                "rate_limit_burst": s.rate_limit_burst,
                "parse": s.parse.iter().map(|p| p.name()).collect::<Vec<_>>().join(","),
            }
        })
    }

    pub fn from_json(v: &Value) -> Result<ContainerMeta, String> {
        let version = v.get("version").and_then(Value::as_u64).unwrap_or(1);
        if version > FORMAT_VERSION {
            return Err(format!(
                "{NEWER}: meta.json is version {version}, this mesos-gelf reads up to {FORMAT_VERSION}; upgrade mesos-gelf (the spool is kept)"
            ));
        }
        let identity = Identity::from_json(v.get("identity").ok_or("meta.json: no identity")?)
            .map_err(|e| e.to_string())?;
        let s = v.get("settings").ok_or("meta.json: no settings")?;
        let d = ContainerSettings::default();
        let u = |k: &str, dv: u64| s.get(k).and_then(Value::as_u64).unwrap_or(dv);
        let settings = ContainerSettings {
            topic: s
                .get("topic")
                .and_then(Value::as_str)
                .unwrap_or(&d.topic)
                .to_string(),
            disable: s.get("disable").and_then(Value::as_bool).unwrap_or(false),
            level_stdout: u("level_stdout", d.level_stdout as u64).min(7) as u8,
            level_stderr: u("level_stderr", d.level_stderr as u64).min(7) as u8,
            multiline_start: s
                .get("multiline_start")
                .and_then(Value::as_str)
                .map(String::from),
            multiline_max_bytes: u("multiline_max_bytes", d.multiline_max_bytes as u64) as usize,
            multiline_timeout_ms: u("multiline_timeout_ms", d.multiline_timeout_ms),
            max_line_bytes: u("max_line_bytes", d.max_line_bytes as u64).max(64) as usize,
            idle_flush_ms: u("idle_flush_ms", d.idle_flush_ms),
            sandbox_max_size: u("sandbox_max_size", d.sandbox_max_size),
            sandbox_max_files: u("sandbox_max_files", d.sandbox_max_files as u64) as u32,
            spool_max_size: u("spool_max_size", d.spool_max_size),
            spool_segment_size: u("spool_segment_size", d.spool_segment_size),
            spool_min_free: s
                .get("spool_min_free")
                .and_then(Value::as_str)
                .and_then(|t| crate::config::MinFree::parse(t).ok())
                .unwrap_or(d.spool_min_free),
            rate_limit_lines: u("rate_limit_lines", d.rate_limit_lines),
            rate_limit_bytes: u("rate_limit_bytes", d.rate_limit_bytes),
            rate_limit_burst: u("rate_limit_burst", d.rate_limit_burst).max(1),
            // Spools from before parsing existed parse nothing.
            parse: match s.get("parse").and_then(Value::as_str) {
                Some(p) => crate::gelf::parse::Parser::list(p).unwrap_or_default(),
                None => Vec::new(),
            },
        };
        let run_as = v.get("run_as").and_then(RunAs::from_json);
        Ok(ContainerMeta {
            identity,
            settings,
            run_as,
        })
    }

    pub fn store(&self, dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(&self.to_json()).expect("JSON");
        super::write_atomic(dir, super::META_FILE, &text)
    }

    pub fn load(dir: &Path) -> Result<ContainerMeta, String> {
        let path = dir.join(super::META_FILE);
        let bytes =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        ContainerMeta::from_json(&v)
    }
}
