//! What the scheduler does for a due grant: [`Lifecycle::work`] dispatches on the
//! state to revoke, verify, re-verify or compensate, holding the grant's lock.

use super::*;

impl Lifecycle {
    /// Does whatever is due for grant `id`. Called by the scheduler.
    pub(super) async fn work(&self, id: &str) -> Result<()> {
        self.work_step(id, false, None).await
    }

    /// [`Lifecycle::work`] from what the caller that handed the work over just
    /// committed. If the grant moved before the job held it, its first commit is
    /// refused (`Conflict`): nothing was committed from the stale record, so the
    /// work starts again from the store.
    pub(super) async fn work_handed(&self, id: &str, handed: Handed) -> Result<()> {
        match self.work_step(id, false, Some(handed)).await {
            Err(Error::Store(store::Error::Conflict(_))) => self.work(id).await,
            outcome => outcome,
        }
    }

    /// [`Lifecycle::work`], or with `now` the grant's next step at once, whenever
    /// it is due (its downstream system just came back). `handed`: the record and
    /// sealed credential as a caller just committed them, in place of reading
    /// them again (see [`Lifecycle::work_handed`]).
    pub(super) async fn work_step(
        &self,
        id: &str,
        now: bool,
        handed: Option<Handed>,
    ) -> Result<()> {
        // Wait for whoever holds the grant (an API call finishing `issue`, say), then
        // act on its state as it is then. Skipping instead would leave the claimed
        // grant parked until its lease ran out.
        let _lock = self.inner.locks.lock(id).await;
        // The credential comes with the record: revoke and verify need it, and a
        // job that goes from one to the other opens it once.
        let (mut record, sealed) = match handed {
            Some(handed) => (handed.record, handed.sealed),
            None => self
                .inner
                .store
                .get_with_credential(id)
                .await?
                .ok_or_else(|| Error::NotFound(id.to_owned()))?,
        };
        let mut credential = JobCredential::Sealed(sealed);
        // Claimed, but is it still due? Another job may have moved it on while this
        // one waited (e.g. a step committed "due now" and the scheduler claimed it
        // again), or a voided lease woke it early. Put the index entry back at the
        // grant's own due time, and do nothing.
        let waiting_on_downstream = now
            && matches!(
                record.state,
                GrantState::Revoking
                    | GrantState::Revoked
                    | GrantState::Residual
                    | GrantState::Escalated
            );
        if !waiting_on_downstream && record.due_at.is_none_or(|due| due > self.now()) {
            self.reschedule(id, record.due_at).await?;
            lease_left(false);
            return Ok(());
        }
        // A revocation whose verification is due at once is not committed alone:
        // its event waits here and is committed with the verification's outcome.
        let mut pending = None;
        loop {
            record = match record.state {
                GrantState::Requested => {
                    self.deny_locked(
                        record,
                        Vec::new(),
                        "ebb",
                        "not approved within the approval window",
                    )
                    .await?;
                    return Ok(());
                }
                GrantState::Approved => {
                    self.deny_locked(
                        record,
                        Vec::new(),
                        "ebb",
                        "not issued within the issue window",
                    )
                    .await?;
                    return Ok(());
                }
                GrantState::Issuing => {
                    // The host stopped (or the call hung) between intent and outcome:
                    // something may exist downstream that no one will ever use.
                    self.transition(
                        record,
                        Event::IssueFailed,
                        "ebb",
                        json!({ "error": "the outcome of issue is unknown (host restarted or call lost)" }),
                        Sealed::Keep,
                        |r| r.last_error = Some("issue outcome unknown".into()),
                    ).await?
                }
                GrantState::IssueFailed => {
                    self.begin_revoke(record, Trigger::Compensation, "ebb", None)
                        .await?
                }
                GrantState::Active => {
                    self.begin_revoke(record, Trigger::Expiry, "ebb", None)
                        .await?
                }
                GrantState::Residual | GrantState::Escalated => {
                    let trigger = record.trigger.unwrap_or(Trigger::Expiry);
                    self.begin_revoke(record, trigger, "ebb", None).await?
                }
                GrantState::Revoking => {
                    let (record, step) = self.do_revoke(record, &mut credential).await?;
                    if step.is_some() {
                        pending = step;
                        record
                    } else if record.state == GrantState::Revoked
                        && record.due_at.is_some_and(|d| d <= self.now())
                    {
                        record
                    } else {
                        return Ok(());
                    }
                }
                GrantState::Revoked | GrantState::Verified => {
                    let record = self
                        .do_verify(record, &mut credential, pending.take())
                        .await?;
                    if record.state == GrantState::Residual
                        && record.due_at.is_some_and(|d| d <= self.now())
                    {
                        record
                    } else {
                        return Ok(());
                    }
                }
                GrantState::Denied => return Ok(()),
            };
        }
    }

    /// The credential for a job's revoke or verify call, opened on first use; if it
    /// cannot be unsealed (the host key changed, the sealed value is corrupt) the
    /// call goes ahead without it — by grant id, as after a lost issue reply — and
    /// the failure is audited and counted, never just logged. A connector that can
    /// only act by the credential's value then fails its call, which retries and
    /// escalates.
    async fn credential_or_by_id(&self, id: &str, held: &mut JobCredential) -> Option<Credential> {
        if let JobCredential::Sealed(sealed) = held {
            let opened = match sealed.take() {
                Some(sealed) => self.open_or_by_id(id, &sealed).await,
                None => None,
            };
            *held = JobCredential::Opened(opened);
        }
        match held {
            JobCredential::Opened(credential) => credential.clone(),
            JobCredential::Sealed(_) => None,
        }
    }

    async fn open_or_by_id(&self, id: &str, sealed: &[u8]) -> Option<Credential> {
        match self.open(id, sealed) {
            Ok(credential) => Some(credential),
            Err(e) => {
                let why = ebb_core::error_chain(&e);
                tracing::error!(grant = %id, error = %why, "cannot unseal the credential: revoking and verifying by grant id");
                metrics::counter!("ebb_unseal_failures_total").increment(1);
                let _recorded = self
                    .inner
                    .audit
                    .record(
                        NewEvent::new("credential.unseal-failed", "ebb")
                            .grant(id)
                            .detail(json!({ "error": why, "proceeding": "by grant id" })),
                    )
                    .await;
                None
            }
        }
    }

    /// The grant's credential, unsealed, while the store still holds it.
    pub(super) async fn credential(&self, id: &str) -> Result<Option<Credential>> {
        let Some(sealed) = self.inner.store.sealed_credential(id).await? else {
            return Ok(None);
        };
        self.open(id, &sealed).map(Some)
    }

    fn open(&self, id: &str, sealed: &[u8]) -> Result<Credential> {
        let plain =
            zeroize::Zeroizing::new(self.inner.sealer.open(id, sealed).map_err(Error::Seal)?);
        serde_json::from_slice::<Credential>(&plain).map_err(|e| Error::Seal(e.into()))
    }

    /// Calls `revoke`; success moves to `revoked`, failure retries or escalates.
    /// A success whose verification is due at once (no propagation delay) is not
    /// committed: the record comes back as `revoked` with the step's event, for
    /// the verification to commit with its own outcome. If the host stops in
    /// between, the grant is still `revoking` and is revoked again (`revoke` is
    /// idempotent), then verified.
    pub(super) async fn do_revoke(
        &self,
        record: GrantRecord,
        credential: &mut JobCredential,
    ) -> Result<(GrantRecord, Option<NewEvent>)> {
        let slot = match self.slot(&record.connector) {
            Ok(slot) => slot,
            Err(e) => {
                return self
                    .failed(record, &e.to_string(), false, None)
                    .await
                    .map(|r| (r, None));
            }
        };
        let credential = self.credential_or_by_id(&record.grant.id, credential).await;
        let (outcome, version) = {
            // The version that serves this call, recorded with its outcome.
            let connector = busy_or(&slot, Pool::Background, &record.connector).await?;
            let started = std::time::Instant::now();
            let outcome = connector
                .revoke(&record.grant, record.handle.as_deref(), credential.as_ref())
                .await;
            metrics::histogram!("ebb_revoke_seconds", "connector" => record.connector.clone())
                .record(started.elapsed().as_secs_f64());
            (outcome, connector.digest().to_string())
        };
        if let Err(e) = &outcome {
            count_error(&record.connector, "revoke", e);
        }
        match outcome {
            Ok(()) => {
                let now = self.now();
                let delay = slot.policy().propagation_delay_ms;
                let (record, step) = self.step(
                    record,
                    Event::RevokeSucceeded,
                    "ebb",
                    json!({ "connector_version": version }),
                    |r| {
                        r.revoked_at = Some(now);
                        r.last_error = None;
                        r.due_at = Some(now + delay);
                    },
                )?;
                if delay == 0 {
                    return Ok((record, Some(step)));
                }
                self.commit_pending(record, Some(step))
                    .await
                    .map(|r| (r, None))
            }
            Err(e) => {
                self.watch_if_down(&slot, &record.grant.id, &e);
                self.failed(record, &e.to_string(), e.is_retryable(), Some(&version))
                    .await
                    .map(|r| (r, None))
            }
        }
    }

    /// Calls `verify-revoked`; `revoked` closes (or re-verifies) the grant, residue
    /// sends it back to revocation, errors retry. `pending`: the revocation's step,
    /// taken but not committed ([`Lifecycle::do_revoke`]): committed with a
    /// `revoked` verdict, or on its own before any other outcome.
    pub(super) async fn do_verify(
        &self,
        record: GrantRecord,
        credential: &mut JobCredential,
        pending: Option<NewEvent>,
    ) -> Result<GrantRecord> {
        let slot = match self.slot(&record.connector) {
            Ok(slot) => slot,
            Err(e) => {
                let record = self.commit_pending(record, pending).await?;
                return self.failed(record, &e.to_string(), false, None).await;
            }
        };
        let connector = match busy_or(&slot, Pool::Verify, &record.connector).await {
            Ok(connector) => connector,
            Err(busy) => {
                self.commit_pending(record, pending).await?;
                return Err(busy);
            }
        };
        let version = connector.digest().to_string();
        if !connector.info().capabilities.can_verify {
            let record = self.commit_pending(record, pending).await?;
            return self
                .failed(
                    record,
                    "the connector cannot verify revocation; an operator must confirm it by hand",
                    false,
                    Some(&version),
                )
                .await;
        }
        let credential = self.credential_or_by_id(&record.grant.id, credential).await;
        let outcome = {
            let started = std::time::Instant::now();
            let outcome = connector
                .verify_revoked(&record.grant, record.handle.as_deref(), credential.as_ref())
                .await;
            metrics::histogram!("ebb_verify_seconds", "connector" => record.connector.clone())
                .record(started.elapsed().as_secs_f64());
            outcome
        };
        let revokes_by_value = connector.info().capabilities.revokes_by_value;
        drop(connector);
        if let Err(e) = &outcome {
            count_error(&record.connector, "verify-revoked", e);
        }
        let now = self.now();
        let policy = slot.policy();
        match outcome {
            Ok(Verdict::Revoked) if record.state == GrantState::Verified => {
                let record = self.commit_pending(record, pending).await?;
                let until = record.reverify_until.unwrap_or(now);
                let next = now + policy.reverify_every_ms;
                let last = next >= until;
                self.transition(
                    record,
                    Event::Reverify,
                    "ebb",
                    json!({ "verdict": "revoked", "connector_version": version }),
                    if last { Sealed::Shred } else { Sealed::Keep },
                    |r| {
                        r.due_at = (!last).then_some(next);
                    },
                )
                .await
            }
            Ok(Verdict::Revoked) => {
                let window = policy.reverify_window_ms;
                let every = policy.reverify_every_ms;
                // The secret has no further use once removal is proven — except to a
                // connector that can only re-verify by the credential's value, until
                // the re-verification window closes.
                let sealed = if window > 0 && revokes_by_value {
                    Sealed::Keep
                } else {
                    Sealed::Shred
                };
                self.transition_leased(
                    record,
                    Event::VerifiedRevoked,
                    "ebb",
                    json!({ "verdict": "revoked", "connector_version": version }),
                    sealed,
                    None,
                    pending.into_iter().collect(),
                    |r| {
                        r.verified_at = Some(now);
                        r.residue.clear();
                        r.attempts = 0;
                        r.last_error = None;
                        r.reverify_until = (window > 0).then_some(now + window);
                        r.due_at = (window > 0 && every < window).then_some(now + every);
                    },
                )
                .await
            }
            Ok(Verdict::Residual(residue)) => {
                let record = self.commit_pending(record, pending).await?;
                self.found_residue(record, residue, &policy, &version).await
            }
            Err(e) => {
                self.watch_if_down(&slot, &record.grant.id, &e);
                let record = self.commit_pending(record, pending).await?;
                self.failed(record, &e.to_string(), e.is_retryable(), Some(&version))
                    .await
            }
        }
    }
}

/// A job's credential: as read with its record, then opened for the job's first
/// call that needs it. Nothing in a job replaces it (only `issue` seals one), and
/// the commits that shred it end the job, so it stays what the store holds.
pub(super) enum JobCredential {
    Sealed(Option<Vec<u8>>),
    Opened(Option<Credential>),
}

/// How long background work waits for a call slot of its connector before it
/// steps aside ([`Error::ConnectorBusy`]): long enough that a busy but working
/// connector's grants are served in turn, short enough that the jobs of a hung
/// one keep cycling instead of holding every job other connectors need.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// A call on `slot` from `pool`, waiting at most [`BUSY_WAIT`].
async fn busy_or(
    slot: &crate::registry::Slot,
    pool: Pool,
    connector: &str,
) -> Result<crate::registry::Call> {
    if let Some(call) = slot.try_call(pool) {
        return Ok(call);
    }
    tokio::time::timeout(BUSY_WAIT, slot.call(pool))
        .await
        .map_err(|_| Error::ConnectorBusy(connector.to_owned()))
}
