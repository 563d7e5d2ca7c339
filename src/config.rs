//! Parameters: parsing, defaults, validation and per-container overrides.
//!
//! Every front door (the agent module, `mesos-gelf run`, `mesos-gelf publish`)
//! takes the same flat list of string key/value pairs, as Mesos passes module
//! parameters. [`Config::from_pairs`] validates them all at once and names the
//! offending parameter in its error, so a bad modules file stops the agent at
//! load with a message an operator can act on. Unknown keys are errors.
//!
//! Two key families are open-ended:
//! - `kafka.<property>`: passed verbatim to librdkafka (validated by it when
//!   the producer is built);
//! - `field.<name>`: a static GELF additional field `_<name>` on every record.
//!
//! Per-container overrides ([`ContainerSettings::resolve`]) come from the
//! task's environment (`<env_prefix><NAME>`, default `GELF_LOGGER_`) and from
//! labels `gelf.<name>`; a bad override is reported and ignored, never fatal.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// A parameter error: which key, and what is wrong with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "parameter `{}`: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Which labels become `_label_<key>` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelFilter {
    All,
    None,
    Only(Vec<String>),
}

impl LabelFilter {
    pub fn allows(&self, key: &str) -> bool {
        match self {
            LabelFilter::All => true,
            LabelFilter::None => false,
            LabelFilter::Only(keys) => keys.iter().any(|k| k == key),
        }
    }
}

/// Settings that may differ per container (module defaults, then overrides).
/// They are written into the spool's metadata file, which both the companion
/// and the publisher read, so a container keeps its settings across an agent
/// restart.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSettings {
    pub topic: String,
    /// Sandbox files only; nothing is spooled or shipped.
    pub disable: bool,
    pub level_stdout: u8,
    pub level_stderr: u8,
    pub multiline_start: Option<String>,
    pub multiline_max_bytes: usize,
    pub multiline_timeout_ms: u64,
    pub max_line_bytes: usize,
    pub idle_flush_ms: u64,
    pub sandbox_max_size: u64,
    pub sandbox_max_files: u32,
    pub spool_max_size: u64,
    pub spool_segment_size: u64,
    /// Free space kept on the spool filesystem (agent-wide; copied here so
    /// the companion enforces it too).
    pub spool_min_free: MinFree,
    /// Lines and bytes per second shipped for this container (0: no limit),
    /// with a burst of `rate_limit_burst` seconds' worth.
    pub rate_limit_lines: u64,
    pub rate_limit_bytes: u64,
    pub rate_limit_burst: u64,
    /// Parsers tried on each line (glog, json, logfmt), in order.
    pub parse: Vec<crate::gelf::parse::Parser>,
}

/// A segment is at most this share of the agent-wide budget (and each
/// companion keeps it so against the room on its filesystem): the budget
/// and the free-space floor drop whole segments and never the two being
/// read and written, and a segment the publisher still reads keeps its
/// space after it is deleted. With 8 MB segments on a 16 MB filesystem a
/// Kafka outage lost every line (helper-2).
pub const SEGMENTS_PER_BUDGET: u64 = 16;
/// ... but no smaller than this.
pub const MIN_SEGMENT: u64 = 64 << 10;

/// `spool_min_free`: an amount, or a share of the spool filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinFree {
    Bytes(u64),
    Percent(u8),
}

impl MinFree {
    /// Bytes to keep free on a filesystem of `fs_size` bytes.
    pub fn bytes(self, fs_size: u64) -> u64 {
        match self {
            MinFree::Bytes(n) => n,
            MinFree::Percent(p) => fs_size / 100 * u64::from(p),
        }
    }

    pub fn parse(s: &str) -> Result<MinFree, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(n) if n <= 90 => Ok(MinFree::Percent(n)),
                _ => Err(format!("`{s}` is not a percentage from 0% to 90%")),
            };
        }
        parse_size(t).map(MinFree::Bytes)
    }

    pub fn text(self) -> String {
        match self {
            MinFree::Bytes(n) => n.to_string(),
            MinFree::Percent(p) => format!("{p}%"),
        }
    }
}

/// Names that may be overridden per container, as `gelf.<name>` labels or
/// `<env_prefix><NAME>` environment variables.
pub const OVERRIDABLE: &[&str] = &[
    "topic",
    "disable",
    "level_stdout",
    "level_stderr",
    "multiline_start",
    "max_line_bytes",
    "sandbox_max_size",
    "sandbox_max_files",
    "rate_limit_lines",
    "rate_limit_bytes",
    "rate_limit_burst",
    "parse",
];

/// The validated module / command parameters.
#[derive(Debug, Clone)]
pub struct Config {
    pub spool_dir: Option<PathBuf>,
    pub host: String,
    pub static_fields: BTreeMap<String, String>,
    pub kafka: BTreeMap<String, String>,
    pub labels: LabelFilter,
    pub env_prefix: String,
    pub companion_path: Option<PathBuf>,
    pub systemd_slice: String,
    pub cgroups_hierarchy: PathBuf,
    pub max_in_flight_bytes: usize,
    pub max_message_bytes: usize,
    /// Agent-wide cap on all spools together.
    pub spool_max_total_size: u64,
    /// Keep delivered segments this long (for `mesos-gelf spool replay`);
    /// zero: delete them once delivered.
    pub spool_retain: std::time::Duration,
    /// Keys whose value becomes `short_message` (JSON, logfmt).
    pub parse_message_keys: Vec<String>,
    pub parse_numbers: crate::gelf::parse::Numbers,
    pub metrics_interval_ms: u64,
    /// Run each companion as its container's user (when we are root).
    pub drop_privileges: bool,
    pub defaults: ContainerSettings,
}

/// Every plain (non-prefixed) parameter with its default and a one-line
/// description; README's parameter table is written from this list.
pub const PARAMETERS: &[(&str, &str, &str)] = &[
    ("spool_dir", "/var/lib/mesos-gelf/spool (module); a temporary directory (run)", "Root of the on-disk spool: one directory per container."),
    ("spool_max_size", "256MB", "Per-container spool cap; past it the oldest unsent records are dropped (the newest always kept) and each drop reported with its _seq range."),
    ("spool_segment_size", "8MB", "Size at which the companion starts a new spool segment (capped at spool_max_size/4, and at a sixteenth of spool_max_total_size and of the spool filesystem's room above spool_min_free, 64KB at least)."),
    ("spool_max_total_size", "4GB", "Agent-wide cap on all spools; past it the publisher drops the oldest unsent data of the container that holds the most, and reports it."),
    ("spool_min_free", "5%", "Free space kept on the spool filesystem (a size or a percentage); enforced like spool_max_total_size, and by each companion before it writes; one not less than the filesystem is refused at start (logged in the agent)."),
    ("rate_limit_lines", "0 (off)", "Lines per second shipped per container; lines over it stay in the sandbox files, are not shipped, and are reported."),
    ("rate_limit_bytes", "0 (off)", "Bytes per second shipped per container, as rate_limit_lines."),
    ("rate_limit_burst", "10", "Seconds' worth of the rate limits a container may send at once (token bucket)."),
    ("spool_retain", "0 (off)", "Keep delivered spool data this long (e.g. 6h) for `mesos-gelf spool replay`; within the size caps, retained data goes first."),
    ("parse", "glog", "Parsers tried on each line, first match wins: none, or a list of glog, json, logfmt (see Structured lines)."),
    ("parse_message_keys", "msg,message,short_message", "JSON/logfmt keys whose value becomes short_message, first present wins."),
    ("parse_numbers", "string", "Parsed numbers ship as strings (a key keeps one type in Graylog), or `keep` them as numbers."),
    ("sandbox_max_size", "10MB", "Rotate <sandbox>/stdout and stderr past this size."),
    ("sandbox_max_files", "5", "Keep at most this many files per stream (stdout, stdout.1 ...)."),
    ("max_line_bytes", "65536", "Longer lines are split into parts marked _line_part / _line_continues (at most a quarter of spool_max_size)."),
    ("idle_flush_ms", "500", "An unterminated line is shipped after this much silence."),
    ("multiline_start", "(off)", "Regex for the first line of a record; other lines are joined to it (stack traces)."),
    ("multiline_max_bytes", "262144", "Largest joined multiline record; past it a new record starts (at most a quarter of spool_max_size)."),
    ("multiline_timeout_ms", "1000", "A joined record is shipped after this much silence."),
    ("level_stdout", "6", "GELF level (syslog severity 0-7) of stdout lines."),
    ("level_stderr", "3", "GELF level of stderr lines."),
    ("topic", "application_log", "Kafka topic: 1-249 of [a-zA-Z0-9._-], not `.` or `..`."),
    ("disable", "false", "Keep sandbox files only; ship nothing (meant as a per-task override)."),
    ("host", "this machine's hostname", "GELF `host` field."),
    ("labels", "all", "Which task/executor labels become _label_<key>: all, none, or a comma list."),
    ("env_prefix", "GELF_LOGGER_", "Prefix of per-task override environment variables."),
    ("companion_path", "mesos-gelf-companion (else mesos-gelf) next to the library / the running binary", "The binary started as each container's companion (mesos-gelf-companion, or mesos-gelf)."),
    ("systemd_slice", "mesos_executors.slice", "cgroup the companion moves to when the host runs systemd, so an agent restart does not kill it."),
    ("cgroups_hierarchy", "/sys/fs/cgroup", "Where cgroups are mounted (as the agent's --cgroups_hierarchy)."),
    ("drop_privileges", "true (module); false (run)", "Run each companion as ContainerConfig.user (when the agent is root); an unknown user keeps the agent's user, with a warning."),
    ("max_in_flight_bytes", "8MB", "Publisher bound on encoded bytes handed to the sink but not yet acknowledged (at least 64KB; one container takes at most half; a smaller window costs throughput, see \"Performance\")."),
    ("max_message_bytes", "900000", "Largest GELF message produced; larger ones are cut (_truncated); container fields take at most half of it (see GELF fields)."),
    ("metrics_interval_ms", "10000", "How often the publisher writes <spool_dir>/metrics.json (agent-wide numbers and per-container detail)."),
    ("kafka.<property>", "see README", "Any librdkafka producer property, passed verbatim."),
    ("field.<name>", "", "Static additional GELF field _<name> on every record."),
];

impl Default for ContainerSettings {
    fn default() -> Self {
        ContainerSettings {
            topic: "application_log".into(),
            disable: false,
            level_stdout: 6,
            level_stderr: 3,
            multiline_start: None,
            multiline_max_bytes: 256 * 1024,
            multiline_timeout_ms: 1000,
            max_line_bytes: 64 * 1024,
            idle_flush_ms: 500,
            sandbox_max_size: 10 * 1024 * 1024,
            sandbox_max_files: 5,
            spool_max_size: 256 * 1024 * 1024,
            spool_segment_size: 8 * 1024 * 1024,
            spool_min_free: MinFree::Percent(5),
            rate_limit_lines: 0,
            rate_limit_bytes: 0,
            rate_limit_burst: 10,
            parse: vec![crate::gelf::parse::Parser::Glog],
        }
    }
}

/// Parses a size such as `4096`, `64KB`, `10MB`, `1GB` (binary multiples, as
/// Mesos' `Bytes` does; `KiB`/`MiB`/`GiB` are accepted too).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "`{s}` is not a size (expected e.g. 4096, 64KB, 10MB)"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (number too large)"))?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => {
            // Quoted as written (`0x10000` read as unit `X10000` misled).
            return Err(format!(
                "`{s}`: unknown size unit `{}` (use a decimal number with B, KB, MB or GB)",
                unit.trim()
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// A duration such as `0`, `90s`, `30m`, `6h`, `2d` (a bare number is
/// seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 0, 90s, 30m, 6h, 2d)"))?;
    let mult = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("`{s}`: unknown unit `{other}` (use s, m, h or d)")),
    };
    n.checked_mul(mult)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is too long"))
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(format!("`{s}` is not a boolean (true/false)")),
    }
}

fn parse_level(s: &str) -> Result<u8, String> {
    match s.trim().parse::<u8>() {
        Ok(n) if n <= 7 => Ok(n),
        _ => Err(format!("`{s}` is not a syslog level 0-7")),
    }
}

fn parse_num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.trim().parse().map_err(|_| format!("`{s}` is not {what}"))
}

fn parse_regex(s: &str) -> Result<Option<String>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    regex::bytes::Regex::new(s)
        .map(|_| Some(s.to_string()))
        .map_err(|e| format!("invalid regex: {e}"))
}

/// A Kafka topic name as the broker accepts it: 1 to 249 characters of
/// `[a-zA-Z0-9._-]`, and neither `.` nor `..` (Kafka refuses both).
pub fn check_topic(value: &str) -> Result<String, String> {
    let v = value.trim();
    if v.is_empty()
        || v.len() > 249
        || v == "."
        || v == ".."
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!(
            "`{value}` is not a Kafka topic name (1-249 of [a-zA-Z0-9._-], not `.` or `..`)"
        ));
    }
    Ok(v.to_string())
}

/// Checks that a static field / label-derived field name is usable.
fn check_field_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || !name.bytes().all(crate::gelf::is_field_byte) {
        return Err(err(
            key,
            "field names may only use letters, digits, `_` and `-`",
        ));
    }
    if crate::gelf::names::reserved(name) {
        return Err(err(
            key,
            format!("`_{name}` is reserved by Graylog (or a name it sets itself)"),
        ));
    }
    Ok(())
}

impl ContainerSettings {
    /// Applies one parameter that belongs to the per-container settings.
    /// Returns Ok(false) when `key` is not a per-container setting.
    fn apply(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "topic" => self.topic = check_topic(value)?,
            "disable" => self.disable = parse_bool(value)?,
            "level_stdout" => self.level_stdout = parse_level(value)?,
            "level_stderr" => self.level_stderr = parse_level(value)?,
            "multiline_start" => self.multiline_start = parse_regex(value)?,
            "multiline_max_bytes" => {
                self.multiline_max_bytes = parse_size(value)?.clamp(1024, 64 << 20) as usize
            }
            "multiline_timeout_ms" => {
                self.multiline_timeout_ms = parse_num(value, "a number of milliseconds")?
            }
            "max_line_bytes" => {
                let n = parse_size(value)?;
                if !(64..=(64 << 20)).contains(&n) {
                    return Err(format!("`{value}` is out of range (64 bytes to 64MB)"));
                }
                self.max_line_bytes = n as usize;
            }
            "idle_flush_ms" => self.idle_flush_ms = parse_num(value, "a number of milliseconds")?,
            "sandbox_max_size" => {
                let n = parse_size(value)?;
                if n < 1024 {
                    return Err(format!("`{value}` is too small (at least 1KB)"));
                }
                self.sandbox_max_size = n;
            }
            "sandbox_max_files" => {
                let n: u32 = parse_num(value, "a whole number")?;
                if !(1..=1000).contains(&n) {
                    return Err(format!("`{value}` is out of range (1 to 1000)"));
                }
                self.sandbox_max_files = n;
            }
            "spool_max_size" => {
                let n = parse_size(value)?;
                if n < 64 * 1024 {
                    return Err(format!("`{value}` is too small (at least 64KB)"));
                }
                self.spool_max_size = n;
            }
            "spool_min_free" => self.spool_min_free = MinFree::parse(value)?,
            "parse" => self.parse = crate::gelf::parse::Parser::list(value)?,
            "rate_limit_lines" => self.rate_limit_lines = parse_num(value, "a whole number")?,
            "rate_limit_bytes" => self.rate_limit_bytes = parse_size(value)?,
            "rate_limit_burst" => {
                let n: u64 = parse_num(value, "a whole number of seconds")?;
                if !(1..=3600).contains(&n) {
                    return Err(format!("`{value}` is out of range (1 to 3600 seconds)"));
                }
                self.rate_limit_burst = n;
            }
            "spool_segment_size" => {
                let n = parse_size(value)?;
                if n < 4096 {
                    return Err(format!("`{value}` is too small (at least 4KB)"));
                }
                self.spool_segment_size = n;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Segment size actually used: at most a quarter of the cap, so dropping
    /// the oldest segment frees a bounded share of the spool.
    pub fn effective_segment_size(&self) -> u64 {
        self.spool_segment_size
            .min(self.spool_max_size / 4)
            .max(4096)
    }

    /// The largest record (line, part or joined multiline record) the
    /// companion makes: `max_line_bytes` and `multiline_max_bytes`, but never
    /// more than a quarter of `spool_max_size`, so that the cap can always
    /// keep the newest records whole. Longer lines come in parts.
    pub fn record_limit(&self) -> usize {
        ((self.spool_max_size / 4).saturating_sub(64) as usize).max(64)
    }

    /// Applies per-container overrides: environment variables
    /// `<env_prefix><NAME>` first, then labels `gelf.<name>` (labels win).
    /// Returns the warnings for overrides that were ignored.
    pub fn resolve(
        &self,
        env_prefix: &str,
        env: &[(String, String)],
        labels: &[(String, String)],
    ) -> (ContainerSettings, Vec<String>) {
        let mut out = self.clone();
        let mut warnings = Vec::new();
        let mut candidates: Vec<(String, String, String)> = Vec::new();
        for (k, v) in env {
            if let Some(name) = k.strip_prefix(env_prefix) {
                candidates.push((
                    name.to_ascii_lowercase(),
                    v.clone(),
                    format!("environment {k}"),
                ));
            }
        }
        for (k, v) in labels {
            if let Some(name) = k.strip_prefix("gelf.") {
                candidates.push((name.to_ascii_lowercase(), v.clone(), format!("label {k}")));
            }
        }
        for (name, value, origin) in candidates {
            if !OVERRIDABLE.contains(&name.as_str()) {
                warnings.push(format!(
                    "ignored override {origin}: `{name}` cannot be set per task (allowed: {})",
                    OVERRIDABLE.join(", ")
                ));
                continue;
            }
            let mut trial = out.clone();
            match trial.apply(&name, &value) {
                Ok(_) => out = trial,
                Err(e) => warnings.push(format!("ignored override {origin}: {e}")),
            }
        }
        (out, warnings)
    }
}

/// This machine's hostname (the GELF `host` default).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end]) {
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    "localhost".into()
}

impl Config {
    /// Validates a full parameter list. Later duplicates of a key win, as
    /// with `--set` on a command line.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: &[(K, V)],
    ) -> Result<Config, ConfigError> {
        let mut c = Config {
            spool_dir: None,
            host: hostname(),
            static_fields: BTreeMap::new(),
            kafka: BTreeMap::new(),
            labels: LabelFilter::All,
            env_prefix: "GELF_LOGGER_".into(),
            companion_path: None,
            systemd_slice: "mesos_executors.slice".into(),
            cgroups_hierarchy: PathBuf::from("/sys/fs/cgroup"),
            max_in_flight_bytes: 8 << 20,
            max_message_bytes: 900_000,
            spool_max_total_size: 4 << 30,
            spool_retain: std::time::Duration::ZERO,
            parse_message_keys: crate::gelf::parse::Settings::default().message_keys,
            parse_numbers: crate::gelf::parse::Numbers::String,
            metrics_interval_ms: 10_000,
            drop_privileges: true,
            defaults: ContainerSettings::default(),
        };
        for (k, v) in pairs {
            let (key, value) = (k.as_ref().trim(), v.as_ref());
            if let Some(prop) = key.strip_prefix("kafka.") {
                if prop.is_empty() {
                    return Err(err(
                        key,
                        "missing the librdkafka property name after `kafka.`",
                    ));
                }
                // librdkafka takes ` , ` and then waits for ever on "No
                // brokers configured".
                if prop == "bootstrap.servers" && value.split(',').all(|s| s.trim().is_empty()) {
                    return Err(err(key, "names no broker (host:port[,host:port...])"));
                }
                c.kafka.insert(prop.to_string(), value.to_string());
                continue;
            }
            if let Some(name) = key.strip_prefix("field.") {
                check_field_name(key, name)?;
                if value.len() > crate::gelf::names::MAX_VALUE_BYTES {
                    return Err(err(
                        key,
                        "longer than 32,766 bytes (Graylog cannot index it)",
                    ));
                }
                c.static_fields.insert(name.to_string(), value.to_string());
                continue;
            }
            match c.defaults.apply(key, value) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(m) => return Err(err(key, m)),
            }
            match key {
                "spool_dir" => {
                    if value.trim().is_empty() {
                        return Err(err(key, "must not be empty"));
                    }
                    c.spool_dir = Some(PathBuf::from(value.trim()));
                }
                "host" => {
                    if value.trim().is_empty() {
                        return Err(err(key, "must not be empty"));
                    }
                    if value.chars().any(crate::log::unfit) {
                        return Err(err(
                            key,
                            "must hold no control or invisible formatting characters",
                        ));
                    }
                    c.host = value.trim().to_string();
                }
                "labels" => {
                    c.labels = match value.trim() {
                        "all" => LabelFilter::All,
                        "none" | "" => LabelFilter::None,
                        list => LabelFilter::Only(
                            list.split(',')
                                .map(|s| s.trim().to_string())
                                .filter(|s| !s.is_empty())
                                .collect(),
                        ),
                    }
                }
                "env_prefix" => c.env_prefix = value.trim().to_string(),
                "companion_path" => c.companion_path = Some(PathBuf::from(value.trim())),
                "systemd_slice" => {
                    let v = value.trim();
                    if v.is_empty() || v.contains('/') || v.contains("..") {
                        return Err(err(key, "must be a plain unit name such as mesos_executors.slice"));
                    }
                    c.systemd_slice = v.to_string();
                }
                "cgroups_hierarchy" => c.cgroups_hierarchy = PathBuf::from(value.trim()),
                "drop_privileges" => c.drop_privileges = parse_bool(value).map_err(|m| err(key, m))?,
                "max_in_flight_bytes" => {
                    let n = parse_size(value).map_err(|m| err(key, m))?;
                    if n < 64 * 1024 {
                        return Err(err(key, "too small (at least 64KB)"));
                    }
                    c.max_in_flight_bytes = n as usize;
                }
                "parse_message_keys" => {
                    let keys: Vec<String> = value
                        .split(',')
                        .map(|k| k.trim().to_string())
                        .filter(|k| !k.is_empty())
                        .collect();
                    if keys.is_empty() {
                        return Err(err(key, "needs at least one key (e.g. msg,message)"));
                    }
                    c.parse_message_keys = keys;
                }
                "parse_numbers" => {
                    c.parse_numbers = match value.trim() {
                        "string" => crate::gelf::parse::Numbers::String,
                        "keep" => crate::gelf::parse::Numbers::Keep,
                        _ => return Err(err(key, "must be `string` or `keep`")),
                    }
                }
                "spool_retain" => c.spool_retain = parse_duration(value).map_err(|m| err(key, m))?,
                "spool_max_total_size" => {
                    let n = parse_size(value).map_err(|m| err(key, m))?;
                    if n < 1 << 20 {
                        return Err(err(key, "too small (at least 1MB)"));
                    }
                    c.spool_max_total_size = n;
                }
                "max_message_bytes" => {
                    let n = parse_size(value).map_err(|m| err(key, m))?;
                    if !(1024..=(1 << 30)).contains(&n) {
                        return Err(err(key, "out of range (1KB to 1GB)"));
                    }
                    c.max_message_bytes = n as usize;
                }
                "metrics_interval_ms" => {
                    c.metrics_interval_ms = parse_num(value, "a number of milliseconds")
                        .map_err(|m| err(key, m))?
                }
                _ => {
                    return Err(err(
                        key,
                        "unknown parameter (see README's parameter table; librdkafka properties take the prefix `kafka.`)",
                    ))
                }
            }
        }
        Ok(c)
    }

    /// True when a Kafka sink is configured (else `run` prints GELF to stdout).
    pub fn has_kafka(&self) -> bool {
        self.kafka.contains_key("bootstrap.servers")
    }
}

/// Splits a `key=value` command-line argument.
pub fn split_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not key=value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README's parameter table is this list, row for row.
    #[test]
    fn readme_parameter_table_matches_the_code() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        for (name, default, what) in PARAMETERS {
            let row = format!("| `{name}` | {default} | {what} |");
            assert!(readme.contains(&row), "README lacks the row:\n{row}");
        }
    }

    #[test]
    fn sizes_parse_like_mesos_bytes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64KB").unwrap(), 65536);
        assert_eq!(parse_size("10MB").unwrap(), 10 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("10XB").unwrap_err().contains("unit"));
        assert!(
            parse_size("0x10000").unwrap_err().contains("unit `x10000`"),
            "the unit as written"
        );
        assert_eq!(parse_duration("6h").unwrap().as_secs(), 21_600);
        assert_eq!(parse_duration("0").unwrap().as_secs(), 0);
        assert!(parse_duration("6 weeks").is_err());
    }

    #[test]
    fn unknown_and_bad_parameters_name_the_key() {
        let e = Config::from_pairs(&[("sandbox_max_fils", "3")]).unwrap_err();
        assert_eq!(e.key, "sandbox_max_fils");
        assert!(e.to_string().contains("unknown parameter"));
        let e = Config::from_pairs(&[("level_stdout", "9")]).unwrap_err();
        assert_eq!(e.key, "level_stdout");
        let e = Config::from_pairs(&[("multiline_start", "([a-")]).unwrap_err();
        assert!(e.message.contains("regex"), "{e}");
        let e = Config::from_pairs(&[("field.id", "x")]).unwrap_err();
        assert!(e.message.contains("reserved"));
        let e = Config::from_pairs(&[("field.bad name", "x")]).unwrap_err();
        assert_eq!(e.key, "field.bad name");
        let e = Config::from_pairs(&[("topic", "no spaces")]).unwrap_err();
        assert_eq!(e.key, "topic");
        for bad in [".", "..", " .. ", &"t".repeat(250)] {
            let e = Config::from_pairs(&[("topic", bad)]).unwrap_err();
            assert_eq!(e.key, "topic", "{bad}");
        }
        assert!(Config::from_pairs(&[("topic", "...")]).is_ok());
        for blank in [" ", " , ", ",,", "\t,"] {
            let e = Config::from_pairs(&[("kafka.bootstrap.servers", blank)]).unwrap_err();
            assert_eq!(e.key, "kafka.bootstrap.servers", "{blank:?}");
        }
        assert!(Config::from_pairs(&[("kafka.bootstrap.servers", "h:1, ")]).is_ok());
        for bad in ["a\nb", "a\u{1b}[2J", "a\u{2028}b"] {
            let e = Config::from_pairs(&[("host", bad)]).unwrap_err();
            assert_eq!(e.key, "host", "{bad:?}");
        }
    }

    #[test]
    fn kafka_and_field_prefixes_are_collected() {
        let c = Config::from_pairs(&[
            ("kafka.bootstrap.servers", "h:9092"),
            ("field.dc", "eu1"),
            ("labels", "team,tier"),
        ])
        .unwrap();
        assert!(c.has_kafka());
        assert_eq!(c.static_fields["dc"], "eu1");
        assert!(c.labels.allows("tier") && !c.labels.allows("x"));
    }

    #[test]
    fn overrides_apply_and_bad_ones_are_ignored_with_a_warning() {
        let base = ContainerSettings::default();
        let env = vec![
            (
                "GELF_LOGGER_TOPIC".to_string(),
                "storefront_logs".to_string(),
            ),
            ("GELF_LOGGER_LEVEL_STDOUT".to_string(), "eleven".to_string()),
            ("GELF_LOGGER_SPOOL_DIR".to_string(), "/tmp".to_string()),
            ("GELF_LOGGER_DISABLE".to_string(), "maybe".to_string()),
            ("DATABASE_PASSWORD".to_string(), "x".to_string()),
        ];
        let labels = vec![
            ("gelf.level_stderr".to_string(), "4".to_string()),
            ("gelf.topic".to_string(), "..".to_string()),
        ];
        let (s, w) = base.resolve("GELF_LOGGER_", &env, &labels);
        assert_eq!(s.topic, "storefront_logs");
        assert_eq!(s.level_stderr, 4);
        assert_eq!(s.level_stdout, 6);
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(w
            .iter()
            .any(|m| m.contains("gelf.topic") && m.contains("`..`")));
        assert!(w.iter().any(|m| m.contains("GELF_LOGGER_LEVEL_STDOUT")));
        assert!(w.iter().any(|m| m.contains("cannot be set per task")));
    }
}
