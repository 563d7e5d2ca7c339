//! Discovery: which entries of the spool root are container spools, and
//! adopting them (identity from `meta.json`, reader at the checkpoint).

use super::*;

impl Publisher {
    pub(super) fn scan_root(&mut self) {
        let Ok(rd) = std::fs::read_dir(&self.opts.spool_dir) else {
            return;
        };
        for e in rd.flatten() {
            // DirEntry::file_type does not follow symlinks: a link is ignored.
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let key = e.file_name().to_string_lossy().into_owned();
            if !self.containers.contains_key(&key) {
                if !self.unready.contains_key(&key) {
                    self.watcher.watch_container(&e.path(), &key);
                    self.unready.insert(key.clone(), Instant::now());
                }
                self.try_adopt(&key);
            }
        }
        let keys: Vec<String> = self.unready.keys().cloned().collect();
        for k in keys {
            self.try_adopt(&k);
        }
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
            Err(e) => {
                let data = crate::spool::data_dir(&dir);
                let has_data = data.join(crate::spool::DONE_FILE).exists()
                    || list_segments(&data).map(|s| !s.is_empty()).unwrap_or(false);
                let waited = self
                    .unready
                    .get(key)
                    .map(|t| t.elapsed() > Duration::from_secs(2))
                    .unwrap_or(true);
                if !(has_data && waited) {
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
        self.watcher.watch_container(&data, key);
        let (reader, warning) = SpoolReader::open(&data);
        if let Some(w) = warning {
            log::warn(&w);
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        let acked = reader.position();
        let encoder = Encoder::new(&self.config, &meta.identity, &meta.settings);
        self.slots.insert(slot, key.to_string());
        self.containers.insert(
            key.to_string(),
            Container {
                key: key.to_string(),
                dir,
                slot,
                reader,
                encoder,
                topic: meta.settings.topic.clone(),
                msg_key: meta.identity.container_id.clone().into_bytes(),
                generation: 0,
                next_index: 0,
                inflight: VecDeque::new(),
                acked,
                stored: acked,
                acked_since_store: 0,
                last_store: Instant::now(),
                may_have_data: true,
                last_try: Instant::now(),
                finished: false,
                retry_at: None,
                held: None,
            },
        );
        self.metrics
            .containers_active
            .store(self.containers.len() as u64, Ordering::Relaxed);
    }
}
