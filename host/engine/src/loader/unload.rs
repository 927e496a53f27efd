//! Unloading an instance: refused with live grants, or after handing them to
//! another instance of the same connector, or by revoking them while it drains.

use super::*;

/// The host-state prefix of instances being drained: `draining/<name>` = actor.
const DRAINING: &str = "draining/";

impl Loader {
    /// Takes up the unloads that were draining when the host stopped: each such
    /// instance (loaded again from the plugins folder) drains again, taking no new
    /// requests, and goes once its grants are revoked and verified.
    pub async fn resume_drains(self: &Arc<Self>) -> Result<usize, LoadError> {
        let store = self.lifecycle.store().clone();
        let drains = store
            .states(DRAINING)
            .await
            .map_err(crate::lifecycle::Error::from)?;
        let mut resumed = 0;
        for (key, actor) in drains {
            let Some(name) = key.strip_prefix(DRAINING) else {
                continue;
            };
            let actor = String::from_utf8_lossy(&actor).into_owned();
            match self.registry().get(name) {
                Some(slot) => {
                    slot.set_draining(true);
                    resumed += 1;
                    tracing::info!(connector = name, "resuming an unload that was draining");
                    let loader = self.clone();
                    let name = name.to_owned();
                    tokio::spawn(async move { loader.finish_drain(&name, &actor).await });
                }
                // Gone already: nothing to drain.
                None => store
                    .put_state(&key, None)
                    .await
                    .map_err(crate::lifecycle::Error::from)?,
            }
        }
        Ok(resumed)
    }

    /// Unloads instance `name`; see [`UnloadMode`].
    pub async fn unload(
        self: &Arc<Self>,
        name: &str,
        mode: UnloadMode,
        actor: &str,
    ) -> Result<Unloaded, LoadError> {
        let _change = self.changes.lock().await;
        let slot = self
            .registry()
            .get(name)
            .ok_or_else(|| LoadError::NotFound(name.to_owned()))?;
        if self.origins_read().get(name) == Some(&Source::Config) {
            return Err(LoadError::Conflict(format!(
                "connector `{name}` is defined in the configuration file: remove it there \
                 and restart (it would come back on the next start)"
            )));
        }
        match mode {
            UnloadMode::Refuse => {
                let live = self.live(name).await?;
                if !live.is_empty() {
                    return Err(LoadError::Conflict(format!(
                        "connector `{name}` has {} live grant(s): unload with live=revoke to \
                         revoke them first, or live=hand-over&to=<instance> to hand them to \
                         another version",
                        live.len()
                    )));
                }
                self.remove(name, actor).await?;
                Ok(Unloaded::Removed)
            }
            UnloadMode::HandOver(to) => {
                let target = self.hand_over_target(&slot, &to)?;
                slot.set_draining(true);
                let result = self.hand_over_all(name, &target, actor).await;
                if let Err(e) = result {
                    slot.set_draining(false);
                    return Err(e);
                }
                self.remove(name, actor).await?;
                Ok(Unloaded::Removed)
            }
            UnloadMode::Revoke => {
                slot.set_draining(true);
                let live = self.revoke_live(name, actor).await?;
                if live == 0 {
                    self.remove(name, actor).await?;
                    return Ok(Unloaded::Removed);
                }
                // Kept in the store (made durable by the audit record below), so
                // that a restart takes the drain up again rather than serving anew.
                self.lifecycle
                    .store()
                    .put_state(&format!("{DRAINING}{name}"), Some(actor.as_bytes()))
                    .await
                    .map_err(crate::lifecycle::Error::from)?;
                self.audit(NewEvent::new("connector.draining", actor).detail(json!({
                    "connector": name,
                    "live_grants": live,
                })))
                .await;
                let loader = self.clone();
                let name = name.to_owned();
                let actor = actor.to_owned();
                tokio::spawn(async move { loader.finish_drain(&name, &actor).await });
                Ok(Unloaded::Draining { live })
            }
        }
    }

    pub(super) fn hand_over_target(&self, slot: &Slot, to: &str) -> Result<Arc<Slot>, LoadError> {
        if to == slot.name() {
            return Err(LoadError::Invalid(
                "a connector cannot hand its grants to itself".into(),
            ));
        }
        let target = self
            .registry()
            .get(to)
            .ok_or_else(|| LoadError::Invalid(format!("no connector named `{to}` is loaded")))?;
        if target.is_draining() {
            return Err(LoadError::Conflict(format!(
                "connector `{to}` is being unloaded itself"
            )));
        }
        let (from_kind, to_kind) = (
            slot.connector().info().name.clone(),
            target.connector().info().name.clone(),
        );
        if from_kind != to_kind {
            return Err(LoadError::Invalid(format!(
                "connector `{to}` is a `{to_kind}` connector, but `{}` is `{from_kind}`: \
                 grants can only be handed to another version of the same connector",
                slot.name()
            )));
        }
        Ok(target)
    }

    /// Hands every live grant to `target`, scanning until none is left (a request
    /// admitted just before draining began may land after the first scan).
    pub(super) async fn hand_over_all(
        &self,
        name: &str,
        target: &Slot,
        actor: &str,
    ) -> Result<(), LoadError> {
        loop {
            let live = self.live(name).await?;
            if live.is_empty() {
                return Ok(());
            }
            for grant in live {
                self.lifecycle
                    .hand_over(&grant.grant.id, target.name(), actor)
                    .await?;
            }
        }
    }

    /// The grants that still need instance `name` (a scan of the store's grants
    /// with work).
    pub async fn live(&self, name: &str) -> Result<Vec<ebb_core::store::GrantRecord>, LoadError> {
        self.lifecycle
            .live_grants(name)
            .await
            .map_err(LoadError::from)
    }

    /// Starts revoking every live grant not already on its way out; returns how many
    /// are live.
    pub(super) async fn revoke_live(&self, name: &str, actor: &str) -> Result<usize, LoadError> {
        let live = self.live(name).await?;
        for grant in &live {
            if matches!(
                grant.state,
                GrantState::Requested | GrantState::Approved | GrantState::Active
            ) {
                self.lifecycle
                    .revoke(
                        &grant.grant.id,
                        Trigger::Manual,
                        actor,
                        Some("connector unloaded"),
                    )
                    .await?;
            }
        }
        Ok(self.live(name).await?.len())
    }

    /// Waits until a draining instance has no live grant, then removes it. The scans
    /// run without holding `changes`; only the removal takes it, and checks again.
    pub(super) async fn finish_drain(&self, name: &str, actor: &str) {
        let draining = || self.registry().get(name).is_some_and(|s| s.is_draining());
        loop {
            tokio::time::sleep(DRAIN_POLL).await;
            // Reloaded, unloaded or cancelled meanwhile: nothing left to do here.
            if !draining() {
                return;
            }
            match self.revoke_live(name, actor).await {
                Ok(0) => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(connector = name, error = %e, "draining: will try again");
                    continue;
                }
            }
            let _change = self.changes.lock().await;
            if !draining() {
                return;
            }
            if self.live(name).await.is_ok_and(|live| live.is_empty()) {
                if let Err(e) = self.remove(name, actor).await {
                    tracing::error!(connector = name, error = %e, "could not finish unloading");
                }
                return;
            }
        }
    }

    /// Removes instance `name` and its plugins-folder file. Caller holds `changes`.
    pub(super) async fn remove(&self, name: &str, actor: &str) -> Result<(), LoadError> {
        // No longer draining, whatever happens to the file below.
        self.lifecycle
            .store()
            .put_state(&format!("{DRAINING}{name}"), None)
            .await
            .map_err(crate::lifecycle::Error::from)?;
        let from_dir = matches!(self.origins_read().get(name), Some(Source::Dir { .. }));
        if let (true, Some(dir)) = (from_dir, &self.plugins.dir) {
            let file = dir.join(format!("{name}.toml"));
            match tokio::fs::remove_file(&file).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LoadError::Io {
                        what: "removing",
                        path: file,
                        source,
                    });
                }
            }
        }
        let removed = self.registry().remove(name);
        self.set_origin(name, None);
        let digest = removed.map(|s| s.connector().digest().to_string());
        tracing::info!(connector = name, "connector unloaded");
        self.audit(
            NewEvent::new("connector.unloaded", actor)
                .detail(json!({ "connector": name, "sha256": digest })),
        )
        .await;
        Ok(())
    }
}
