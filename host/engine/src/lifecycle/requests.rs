//! Caller-driven steps: request, approve, deny, issue (with verify-issued) and
//! revoke. Each takes the grant's lock, commits its transition, and syncs before it
//! answers or before the connector is called.

use super::*;

/// Each permission names an action the connector declares, and there is one at least.
fn check_actions(slot: &Slot, connector: &str, permissions: &[Permission]) -> Result<()> {
    if permissions.is_empty() {
        return Err(Error::Invalid(
            "a grant needs at least one permission".into(),
        ));
    }
    let connected = slot.connector();
    let info = connected.info();
    for p in permissions {
        if !info.actions.iter().any(|a| a.name == p.action) {
            return Err(Error::Invalid(format!(
                "connector `{connector}` has no action `{}` (it has: {})",
                p.action,
                info.actions
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(())
}

impl Lifecycle {
    /// Checks a request's permissions before anyone is asked to approve them: the
    /// actions are the connector's, and its `validate` (answered without calling the
    /// downstream system) accepts the resources and its configuration allows them. A
    /// refusal is the requester's `Invalid`; a 0.1.0 connector cannot validate, so
    /// only the action names are checked for it.
    pub async fn validate(&self, connector: &str, permissions: &[Permission]) -> Result<()> {
        let slot = self.slot(connector)?;
        check_actions(&slot, connector, permissions)?;
        match slot.call(Pool::Request).await.validate(permissions).await {
            Ok(()) => Ok(()),
            Err(CallError::Connector(ebb_core::contract::ConnectorError::Invalid(why))) => Err(
                Error::Invalid(format!("connector `{connector}` cannot grant this: {why}")),
            ),
            Err(CallError::Connector(ebb_core::contract::ConnectorError::Unsupported(_))) => Ok(()),
            Err(e) => Err(Error::Validate(e)),
        }
    }

    /// Records a request and applies `decision`.
    pub async fn request(
        &self,
        new: NewGrant,
        requested_by: &str,
        decision: Decision,
    ) -> Result<GrantRecord> {
        let slot = self.slot(&new.connector)?;
        if slot.is_draining() {
            return Err(Error::Draining(new.connector));
        }
        check_actions(&slot, &new.connector, &new.permissions)?;
        if new.ttl_ms == 0 {
            return Err(Error::Invalid("ttl must be greater than zero".into()));
        }
        let max_ttl_ms = slot.policy().max_ttl_ms;
        if new.ttl_ms > max_ttl_ms {
            return Err(Error::Invalid(format!(
                "ttl of {} ms is over the maximum of {} ms for connector `{}`",
                new.ttl_ms, max_ttl_ms, new.connector
            )));
        }
        let now = self.now();
        let id = ulid::Ulid::new().to_string();
        let mut record = GrantRecord::requested(
            Grant {
                id: id.clone(),
                subject: new.subject,
                permissions: new.permissions,
                not_after: 0,
                task: new.task,
            },
            new.connector,
            new.ttl_ms,
            now,
            requested_by.to_owned(),
            new.reason,
        );
        record.approvals_required = new.approvals_required.max(1);
        record.break_glass = new.break_glass;
        // An automatic approval that never lands (the host died in between) has no
        // one waiting for it: let it lapse as soon as its issue window would.
        record.due_at = Some(
            now + match &decision {
                Decision::Approve {
                    issue_within_ms: Some(w),
                    ..
                } => *w,
                _ => self.inner.config.approval_window_ms,
            },
        );
        let detail = json!({
            "connector": record.connector,
            "subject": record.grant.subject.id,
            "permissions": record.grant.permissions,
            "ttl_ms": record.ttl_ms,
            "task": record.grant.task,
            "reason": record.reason,
            "approvals_required": record.approvals_required,
            "break_glass": record.break_glass,
            "policy": new.decided_by,
        });
        let mut requested = event("grant.requested", requested_by, &record).detail(detail);
        requested.to = Some(GrantState::Requested);
        // A decision taken with the request (by policy) is committed with it: one
        // commit, the request's event first, then the decision's.
        let _lock = self.inner.locks.lock(&id).await;
        let record = match decision {
            // Waits for approval until its window closes: a due time the
            // scheduler is told of, as with every step.
            Decision::Pending => {
                self.commit_step(record, requested, Sealed::Keep, None, Vec::new())
                    .await?
            }
            Decision::Approve {
                by,
                note,
                issue_within_ms,
            } => {
                self.approve_locked(record, vec![requested], &by, note, issue_within_ms)
                    .await?
            }
            Decision::Deny { by, reason } => {
                self.deny_locked(record, vec![requested], &by, &reason)
                    .await?
            }
        };
        // Acknowledged means durable: the caller is told only what survives a crash.
        self.inner.store.sync().await?;
        Ok(record)
    }

    /// Approves a requested grant. The requester can never approve it, nor can one
    /// person approve twice; a grant that needs N approvals is approved by the Nth.
    pub async fn approve(&self, id: &str, by: &str, note: Option<String>) -> Result<GrantRecord> {
        let _lock = self.inner.locks.lock(id).await;
        let record = self.load(id).await?;
        if record.requested_by == by || record.grant.subject.id == by {
            return Err(Error::SelfApproval);
        }
        if record.approvals.iter().any(|a| a.by == by) {
            return Err(Error::AlreadyApproved(by.to_owned()));
        }
        let have = u32::try_from(record.approvals.len()).unwrap_or(u32::MAX) + 1;
        let record = if record.state == GrantState::Requested && have < record.approvals_required {
            let now = self.now();
            let required = record.approvals_required;
            self.transition(
                record,
                Event::RecordApproval,
                by,
                json!({ "note": note, "approvals": have, "approvals_required": required }),
                Sealed::Keep,
                |r| {
                    r.approvals.push(Approval {
                        by: by.to_owned(),
                        at: now,
                        note,
                    });
                },
            )
            .await?
        } else {
            self.approve_locked(record, Vec::new(), by, note, None)
                .await?
        };
        // Acknowledged means durable: a lost approval or denial after a crash would
        // let the grant be decided again, differently.
        self.inner.store.sync().await?;
        Ok(record)
    }

    /// Approves `record`; `earlier`: events of steps committed with the approval
    /// (the request, when policy approves it at once).
    pub(super) async fn approve_locked(
        &self,
        record: GrantRecord,
        earlier: Vec<NewEvent>,
        by: &str,
        note: Option<String>,
        issue_within_ms: Option<u64>,
    ) -> Result<GrantRecord> {
        let now = self.now();
        let window = issue_within_ms.unwrap_or(self.inner.config.issue_window_ms);
        self.transition_leased(
            record,
            Event::Approve,
            by,
            json!({ "note": note }),
            Sealed::Keep,
            None,
            earlier,
            |r| {
                r.approvals.push(Approval {
                    by: by.to_owned(),
                    at: now,
                    note,
                });
                r.due_at = Some(now + window);
            },
        )
        .await
    }

    /// Denies a requested (or approved, not yet issued) grant.
    pub async fn deny(&self, id: &str, by: &str, reason: &str) -> Result<GrantRecord> {
        let _lock = self.inner.locks.lock(id).await;
        let record = self.load(id).await?;
        let record = self.deny_locked(record, Vec::new(), by, reason).await?;
        self.inner.store.sync().await?;
        Ok(record)
    }

    /// Denies `record`; `earlier` as for [`Lifecycle::approve_locked`].
    pub(super) async fn deny_locked(
        &self,
        record: GrantRecord,
        earlier: Vec<NewEvent>,
        by: &str,
        reason: &str,
    ) -> Result<GrantRecord> {
        self.transition_leased(
            record,
            Event::Deny,
            by,
            json!({ "reason": reason }),
            Sealed::Keep,
            None,
            earlier,
            |r| {
                r.due_at = None;
                r.last_error = Some(reason.to_owned());
            },
        )
        .await
    }

    /// Issues an approved grant and returns the credential — the only time it is
    /// ever returned.
    pub async fn issue(&self, id: &str, actor: &str) -> Result<(GrantRecord, Credential)> {
        let _lock = self.inner.locks.lock(id).await;
        // While this call runs, a shared store renews the intent's lease: no other
        // host compensates an issue still in progress. If this host dies, or the
        // outcome cannot be recorded, the lease runs out and the scheduler of
        // some host compensates.
        let _held = Held::new(&self.inner.store, id);
        let record = self.load(id).await?;
        if record.state != GrantState::Approved {
            return Err(IllegalTransition {
                from: record.state,
                event: Event::BeginIssue,
            }
            .into());
        }
        let slot = self.slot(&record.connector)?;
        // The slot and the version are taken together, before the intent names the
        // version: the call that follows is the one the intent describes.
        let connector = slot.call(Pool::Request).await;
        let now = self.now();
        let not_after = now + record.ttl_ms;
        // Intent: durable before the connector is called. The lease makes the
        // scheduler compensate if this process dies before the outcome is recorded.
        let lease = now + self.inner.config.lease_ms;
        let digest = connector.digest().to_string();
        let record = self
            .transition_leased(
                record,
                Event::BeginIssue,
                actor,
                json!({ "not_after": not_after, "connector_version": digest }),
                Sealed::Keep,
                Some(lease),
                Vec::new(),
                |r| {
                    r.grant.not_after = not_after;
                    r.issued_at = Some(now);
                    r.issued_by_digest = Some(digest.clone());
                    r.due_at = Some(now);
                },
            )
            .await?;
        self.inner.store.sync().await?;

        let outcome = connector.issue(&record.grant).await;
        let can_verify_issued = connector.info().capabilities.can_verify_issued;
        let revokes_by_value = connector.info().capabilities.revokes_by_value;
        drop(connector);
        if let Err(e) = &outcome {
            count_error(&record.connector, "issue", e);
        }
        let issued = match outcome {
            Ok(issued) => issued,
            Err(e) => {
                let record = self
                    .transition(
                        record,
                        Event::IssueFailed,
                        actor,
                        json!({ "error": e.to_string() }),
                        Sealed::Keep,
                        |r| r.last_error = Some(e.to_string()),
                    )
                    .await?;
                self.begin_revoke(record, Trigger::Compensation, "ebb", None)
                    .await?;
                self.inner.store.sync().await?;
                return Err(Error::Issue(e));
            }
        };
        let sealed = serde_json::to_vec(&issued.credential)
            .map_err(|e| Error::Seal(e.into()))
            .and_then(|plain| {
                let plain = zeroize::Zeroizing::new(plain);
                self.inner.sealer.seal(id, &plain).map_err(Error::Seal)
            })?;
        let record = self
            .transition(
                record,
                Event::IssueSucceeded,
                actor,
                json!({ "handle": issued.handle, "downstream_expires_at": issued.expires_at }),
                Sealed::Set(sealed),
                |r| {
                    r.handle = Some(issued.handle.clone());
                    r.downstream_expires_at = issued.expires_at;
                    r.last_error = None;
                    r.due_at = Some(not_after);
                },
            )
            .await?;
        // Usually no sync here, on purpose: if this commit is lost in a crash, the
        // grant is still `issuing` after restart and is compensated (revoked by grant
        // id), so nothing can exist downstream that the store does not know about;
        // the requester's credential just stops working early. Not so for a
        // connector that revokes by the credential's value (an OAuth token): without
        // the sealed copy nobody could revoke it, so it is durable before it is
        // handed out.
        if revokes_by_value {
            self.inner.store.sync().await?;
        }

        let policy = slot.policy();
        if policy.verify_issued
            && can_verify_issued
            && let Err(e) = self.verify_issued(&slot, &record, &issued).await
        {
            let record = self.load(id).await?;
            self.begin_revoke(
                record,
                Trigger::TaskFailed,
                "ebb",
                Some("the issued credential did not work"),
            )
            .await?;
            self.inner.store.sync().await?;
            return Err(Error::VerifyIssued(e));
        }
        Ok((record, issued.credential))
    }

    /// Retries `verify-issued` while it says "not yet", up to the policy's timeout.
    pub(super) async fn verify_issued(
        &self,
        slot: &Slot,
        record: &GrantRecord,
        issued: &ebb_core::contract::Issued,
    ) -> Result<(), CallError> {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(slot.policy().verify_issued_timeout_ms);
        let mut delay = Duration::from_millis(50);
        loop {
            let result = slot
                .call(Pool::Request)
                .await
                .verify_issued(&record.grant, &issued.handle, &issued.credential)
                .await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() && tokio::time::Instant::now() + delay < deadline => {
                    tracing::debug!(grant = %record.grant.id, error = %e, "issued credential not usable yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts revoking grant `id` for `trigger`. Idempotent: a grant already being
    /// revoked, or closed, is returned as it is.
    pub async fn revoke(
        &self,
        id: &str,
        trigger: Trigger,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<GrantRecord> {
        let _lock = self.inner.locks.lock(id).await;
        // With the credential: a revocation handed to a job needs it, and the job
        // takes both from here rather than reading them back.
        let (record, sealed) = self
            .inner
            .store
            .get_with_credential(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.to_owned()))?;
        let record = match record.state {
            GrantState::Active => {
                // Handed to a job of this host at once, under a lease committed with
                // the intent: no claim, no wait for the scheduler's next round. Without
                // a free job the intent is due now and the scheduler claims it.
                let job = self.free_job();
                let lease = job
                    .as_ref()
                    .map(|_| self.now() + self.inner.config.lease_ms);
                let record = self
                    .begin_revoke_leased(record, trigger, actor, reason, lease)
                    .await?;
                if let Some(permit) = job {
                    // The job starts once this call lets go of the grant, from the
                    // record just committed (the credential was kept as it was).
                    let handed = Handed {
                        record: record.clone(),
                        sealed,
                    };
                    self.run_job(id.to_owned(), permit, Some(handed));
                }
                record
            }
            GrantState::Requested | GrantState::Approved => {
                self.deny_locked(
                    record,
                    Vec::new(),
                    actor,
                    reason.unwrap_or("withdrawn before issuance"),
                )
                .await?
            }
            _ => {
                self.inner
                    .audit
                    .record(event("grant.revoke-requested", actor, &record).detail(
                        json!({ "trigger": trigger, "reason": reason, "state": record.state }),
                    ))
                    .await?;
                record
            }
        };
        self.inner.store.sync().await?;
        Ok(record)
    }

    pub(super) async fn begin_revoke(
        &self,
        record: GrantRecord,
        trigger: Trigger,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<GrantRecord> {
        self.begin_revoke_leased(record, trigger, actor, reason, None)
            .await
    }

    /// [`Lifecycle::begin_revoke`], the due entry held by this host until
    /// `lease_until` when the work is handed to one of its jobs.
    async fn begin_revoke_leased(
        &self,
        record: GrantRecord,
        trigger: Trigger,
        actor: &str,
        reason: Option<&str>,
        lease_until: Option<Timestamp>,
    ) -> Result<GrantRecord> {
        let now = self.now();
        self.transition_leased(
            record,
            Event::BeginRevoke(trigger),
            actor,
            json!({ "trigger": trigger, "reason": reason }),
            Sealed::Keep,
            lease_until,
            Vec::new(),
            |r| {
                if r.trigger.is_none() || r.revoke_started_at.is_none() {
                    r.trigger = Some(trigger);
                    r.revoke_started_at = Some(now);
                }
                r.due_at = Some(now);
            },
        )
        .await
    }
}
