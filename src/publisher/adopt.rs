//! Discovery: which entries of the spool root are container spools, and
//! adopting them (identity from `meta.json`, reader at the checkpoint).
//!
//! The spool root holds only what we put there, and we touch only that:
//! - `<key>/` with `meta.json` or `data/`: a container spool. `prepare()`
//!   builds it under a temporary name and renames it into place, so it
//!   appears whole;
//! - `.prep-*`: a container being prepared; left behind only if the agent
//!   died inside `prepare()`, and then removed after [`HALF_DONE_GRACE`];
//! - `publisher.lock`, `metrics.json`: files of the publisher.
//!
//! Anything else (`lost+found` of a dedicated filesystem, a stray file, an
//! operator's directory) is never waited for and never deleted; it is
//! mentioned once in the log.

use super::*;

/// How long a half-prepared container directory (no `meta.json`, no data)
/// is left alone before it is removed.
pub const HALF_DONE_GRACE: Duration = Duration::from_secs(300);
/// Foreign entries remembered (and so logged only once).
const IGNORED_MAX: usize = 1024;

/// What an entry of the spool root is.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Container,
    Preparing,
    Foreign,
}

fn classify(name: &str, path: &Path) -> Entry {
    if name.starts_with(crate::spool::PREPARING_PREFIX) {
        return Entry::Preparing;
    }
    let ours = crate::spool::key_like(name)
        && (path.join(crate::spool::META_FILE).exists() || crate::spool::data_dir(path).is_dir());
    if ours {
        Entry::Container
    } else {
        Entry::Foreign
    }
}

fn has_data(dir: &Path) -> bool {
    let data = crate::spool::data_dir(dir);
    data.join(crate::spool::DONE_FILE).exists()
        || list_segments(&data).map(|s| !s.is_empty()).unwrap_or(false)
}

/// The age of a directory by its modification time.
fn age(path: &Path) -> Duration {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default()
}

impl Publisher {
    pub(super) fn scan_root(&mut self) {
        let Ok(rd) = std::fs::read_dir(&self.opts.spool_dir) else {
            return;
        };
        for e in rd.flatten() {
            let key = e.file_name().to_string_lossy().into_owned();
            // DirEntry::file_type does not follow symlinks: a link is ignored.
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let ours = [
                    crate::spool::lock::LOCK_FILE,
                    "metrics.json",
                    "metrics.json.tmp",
                ];
                if !ours.contains(&key.as_str())
                    && self.ignored.len() < IGNORED_MAX
                    && self.ignored.insert(key.clone())
                {
                    log::info(&format!(
                        "ignoring {} in the spool directory: not a container spool of ours (never waited for, never deleted)",
                        e.path().display()
                    ));
                }
                continue;
            }
            if self.containers.contains_key(&key)
                || self.unready.contains_key(&key)
                || self.retained.contains(&key)
                || self.ignored.contains(&key)
            {
                continue;
            }
            match classify(&key, &e.path()) {
                Entry::Container => {
                    // Only hurries adoption; a failure is covered by the rescan.
                    let _ = self.watcher.watch_container(&e.path(), &key);
                    self.unready.insert(key.clone(), Instant::now());
                    self.try_adopt(&key);
                }
                Entry::Preparing => {
                    if age(&e.path()) > HALF_DONE_GRACE {
                        log::info(&format!(
                            "removing {}: a container's spool left half-prepared (the agent stopped inside prepare)",
                            e.path().display()
                        ));
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
                Entry::Foreign => {
                    if self.ignored.len() < IGNORED_MAX && self.ignored.insert(key.clone()) {
                        log::info(&format!(
                            "ignoring {} in the spool directory: not a container spool of ours (never waited for, never deleted)",
                            e.path().display()
                        ));
                    }
                }
            }
        }
        let keys: Vec<String> = self.unready.keys().cloned().collect();
        for k in keys {
            self.try_adopt(&k);
        }
    }

    /// True when a directory still waiting for its `meta.json` has data
    /// (worth waiting for before `exit_when_empty` ends the run).
    pub(super) fn unready_with_data(&self) -> bool {
        self.unready
            .keys()
            .any(|k| has_data(&self.opts.spool_dir.join(k)))
    }

    /// Starts publishing a container once its metadata is readable (or,
    /// failing that, once it has data: then under a fallback identity).
    pub(super) fn try_adopt(&mut self, key: &str) {
        let dir = self.opts.spool_dir.join(key);
        if !dir.is_dir() {
            self.unready.remove(key);
            self.watcher.unwatch(key);
            return;
        }
        let meta = match ContainerMeta::load(&dir) {
            Ok(m) => m,
            Err(e) if e.contains(crate::spool::meta::NEWER) => {
                // Written by a newer release: left alone (never waited for
                // by --until-empty), kept, said once.
                self.unready.remove(key);
                self.watcher.unwatch(key);
                if self.ignored.len() < IGNORED_MAX && self.ignored.insert(key.to_string()) {
                    log::error(&format!("{}: {e}", dir.display()));
                }
                self.newer.insert(key.to_string());
                return;
            }
            Err(e) => {
                let since = self.unready.get(key).copied().unwrap_or_else(Instant::now);
                if !has_data(&dir) {
                    // Half-prepared (an older version, or a failed write):
                    // nothing to ship; removed once it is clearly abandoned.
                    if since.elapsed() > HALF_DONE_GRACE && age(&dir) > HALF_DONE_GRACE {
                        log::info(&format!(
                            "removing {}: a container spool without metadata or data for {} s",
                            dir.display(),
                            HALF_DONE_GRACE.as_secs()
                        ));
                        let _ = std::fs::remove_dir_all(&dir);
                        self.unready.remove(key);
                        self.watcher.unwatch(key);
                    }
                    return;
                }
                if since.elapsed() < Duration::from_secs(2) {
                    return;
                }
                log::error(&format!("{e}; publishing {key} under a fallback identity"));
                ContainerMeta {
                    identity: crate::metadata::Identity {
                        container_id: key.to_string(),
                        ..Default::default()
                    },
                    settings: self.config.defaults.clone(),
                    run_as: None,
                }
            }
        };
        self.unready.remove(key);
        let data = crate::spool::data_dir(&dir);
        let watched = match self.watcher.watch_container(&data, key) {
            Ok(()) => true,
            Err(e) => {
                // One key for all containers: at the watch limit, every new
                // container would say the same.
                self.health.warn("inotify-watch", || {
                    format!(
                        "{}: cannot watch for new records ({e}; raise fs.inotify.max_user_watches): looking every {} ms instead",
                        data.display(),
                        RECHECK_EVERY.as_millis()
                    )
                });
                false
            }
        };
        let (reader, warning) = SpoolReader::open(&data);
        if let Some(w) = warning {
            self.health.warn(&format!("{key}\0checkpoint-read"), || w);
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        let acked = reader.position();
        // The ledger: from the start, or resumed with the account stored at
        // the last checkpoint (a spool of an older release has none).
        let stored = ledger::Ledger::load(&dir);
        let (mut ledger, account, ledger_known) = if acked == crate::spool::Position::default() {
            (ledger::Ledger::new(true), Default::default(), true)
        } else if let Some(a) = stored {
            (ledger::Ledger::resume(&a), a, true)
        } else {
            (ledger::Ledger::new(false), Default::default(), false)
        };
        // What a previous publisher's unacknowledged notices name is named
        // (they are sent again from the file), not a gap to report.
        let notices = notices::Notices::load(&dir);
        for l in notices.pending_losses() {
            if let Some(stream) = l.stream {
                ledger.notice(stream, &ledger::Ranges::from_pairs(&l.seqs), None);
            }
        }
        let encoder = Encoder::new(&self.config, &meta.identity, &meta.settings);
        self.slots.insert(slot, key.to_string());
        self.containers.insert(
            key.to_string(),
            Container {
                key: key.to_string(),
                dir: dir.clone(),
                slot,
                reader,
                encoder,
                topic: meta.settings.topic.clone(),
                msg_key: message_key(&meta.identity.container_id),
                generation: 0,
                next_index: 0,
                inflight: VecDeque::new(),
                acked,
                stored: acked,
                acked_since_store: 0,
                last_store: Instant::now(),
                may_have_data: true,
                watched,
                last_try: Instant::now(),
                finished: false,
                retry_at: None,
                held: None,
                inflight_bytes: 0,
                failing: None,
                backoff: RETRY_BACKOFF,
                loss_totals: Default::default(),
                loss_trimmed: account.trimmed,
                notices_corrected: account.notices_corrected,
                corrected: Default::default(),
                ledger,
                acked_seqs: account.acked,
                ledger_known,
                torn_counted: 0,
                nested: crate::nested::lookup_for(&meta.identity).map(|lookup| NestedWait {
                    lookup,
                    since: Instant::now(),
                    last_try: None,
                }),
                identity: meta.identity,
                settings: meta.settings,
                notices,
                companion_gone: false,
                refused: false,
                last_read: Instant::now(),
                rewound_ts: None,
                spool_bytes: 0,
                size_dirty: true,
                pinned: Vec::new(),
            },
        );
        self.metrics
            .containers_active
            .store(self.containers.len() as u64, Ordering::Relaxed);
    }
}

impl Publisher {
    /// Notices companions that died (SIGKILL, the OOM killer) before they
    /// finished their spool: what they spooled is shipped, the end is
    /// marked for them (`done`), and the loss is reported, as a notice on
    /// the container's stream and in the agent log. Without this the
    /// container would wait for more data forever.
    pub(super) fn check_companions(&mut self) {
        for c in self.containers.values_mut() {
            let data = c.reader.dir().to_path_buf();
            if c.companion_gone || data.join(crate::spool::DONE_FILE).exists() {
                continue;
            }
            if crate::spool::companion_alive(&data) != Some(false) {
                continue;
            }
            // It may have finished between the two looks.
            if data.join(crate::spool::DONE_FILE).exists() {
                continue;
            }
            c.companion_gone = true;
            Metrics::add(&self.metrics.companions_died, 1);
            let _ = crate::spool::mark_done(&data);
            c.may_have_data = true;
            let k = c.key.clone();
            let text = format!(
                "mesos-gelf: the companion of container {k} (the process that writes its sandbox files and spool) died before the container's output ended; what it had spooled is shipped; lost without a notice naming them: the lines it held in memory and had not spooled yet, the losses of its last second it had not reported yet (e.g. rate-limited lines, which are in the sandbox files), and anything the task wrote after that; the task got SIGPIPE (EPIPE) at its next write"
            );
            self.health
                .warn(&format!("{k}\0companion-died"), || text.clone());
            c.notices.add_text(text);
        }
    }
}

/// The Kafka message key: the container id, which keeps a container's
/// records in one partition and in order. Capped at 128 bytes, as librdkafka
/// counts the key against `message.max.bytes` (ids are UUIDs, far shorter).
fn message_key(container_id: &str) -> Vec<u8> {
    container_id.as_bytes()[..container_id.len().min(128)].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_entries_are_containers() {
        let d = tempfile::tempdir().unwrap();
        let mk = |n: &str| {
            let p = d.path().join(n);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let p = mk("lost+found");
        assert_eq!(classify("lost+found", &p), Entry::Foreign);
        let p = mk("operator-notes");
        assert_eq!(classify("operator-notes", &p), Entry::Foreign);
        let p = mk("c1/data");
        assert_eq!(classify("c1", p.parent().unwrap()), Entry::Container);
        let p = mk(".prep-c2-1");
        assert_eq!(classify(".prep-c2-1", &p), Entry::Preparing);
        assert_eq!(message_key(&"x".repeat(300)).len(), 128);
    }
}
