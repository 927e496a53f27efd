//! The plugins folder: reconciling it with what is loaded, and watching it.

use super::*;

impl Loader {
    /// Brings the loaded instances in line with the plugins folder: loads new files,
    /// reloads changed ones, unloads removed ones (unless they have live grants).
    pub async fn reconcile(&self) {
        let Some(dir) = self.plugins.dir.clone() else {
            return;
        };
        let _change = self.changes.lock().await;
        let files = match instance_files(&dir).await {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot read the plugins folder");
                return;
            }
        };
        for (name, file) in &files {
            let origin = { self.origins_read().get(name).cloned() };
            if origin == Some(Source::Config) {
                tracing::error!(
                    connector = %name,
                    file = %file.display(),
                    "ignored: an instance of this name is defined in the configuration file"
                );
                continue;
            }
            // Each file and its component are read once; nothing is compiled unless
            // one of them changed.
            let prepared = async {
                let (text, table) = read_instance(&dir, name).await?;
                let config = parse_instance(&table, &dir)?;
                let bytes = read_component(&config).await?;
                let fingerprint = fingerprint(&text, &Digest::of(&bytes).to_string());
                if matches!(&origin, Some(Source::Dir { fingerprint: f }) if *f == fingerprint) {
                    return Ok(None);
                }
                let connector = self.prepare_bytes(name, &config, &bytes).await?;
                Ok::<_, LoadError>(Some((config, connector, fingerprint)))
            };
            match prepared.await {
                Ok(None) => {}
                Ok(Some((config, connector, fingerprint))) => {
                    self.installed(
                        name,
                        connector,
                        config,
                        Some(Source::Dir { fingerprint }),
                        "plugins-dir",
                        "plugins-dir",
                    )
                    .await;
                }
                Err(e) => self.load_failed(name, "plugins-dir", &e).await,
            }
        }
        let gone: Vec<String> = self
            .origins_read()
            .iter()
            .filter(|(name, o)| matches!(o, Source::Dir { .. }) && !files.contains_key(*name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            match self.live(&name).await {
                Ok(live) if live.is_empty() => {
                    if let Err(e) = self.remove(&name, "plugins-dir").await {
                        tracing::error!(connector = %name, error = %e, "could not unload");
                    }
                }
                Ok(live) => tracing::error!(
                    connector = %name,
                    live = live.len(),
                    "its file was removed from the plugins folder, but it has live grants: \
                     it stays loaded until they are closed (or unload it through the API)"
                ),
                Err(e) => {
                    tracing::error!(connector = %name, error = %e, "could not count live grants")
                }
            }
        }
    }

    /// Watches the plugins folder and reconciles after each burst of changes. The
    /// watch lasts as long as the returned watcher is kept.
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<Option<notify::RecommendedWatcher>> {
        use notify::Watcher as _;
        let Some(dir) = self.plugins.dir.clone() else {
            return Ok(None);
        };
        if !self.plugins.watch {
            return Ok(None);
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            })?;
        watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        let loader = self.clone();
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                tokio::time::sleep(SETTLE).await;
                while rx.try_recv().is_ok() {}
                loader.reconcile().await;
            }
        });
        tracing::info!(dir = %dir.display(), "watching the plugins folder");
        Ok(Some(watcher))
    }
}
