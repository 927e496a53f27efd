//! Admin queries over the store: a grant, its report, live grants of a connector,
//! escalated grants, and hand-over to another instance.

use super::*;

impl Lifecycle {
    /// The grant `id`.
    pub async fn get(&self, id: &str) -> Result<GrantRecord> {
        self.load(id).await
    }

    /// What was requested, what was granted, what remains, and its audit trail.
    pub async fn report(&self, id: &str) -> Result<GrantReport> {
        let grant = self.load(id).await?;
        let events = self
            .inner
            .store
            .audit(&AuditQuery {
                grant_id: Some(id.to_owned()),
                after_seq: 0,
                limit: 10_000,
            })
            .await?;
        Ok(GrantReport {
            may_have_access: grant.state.may_have_access(),
            grant,
            events,
        })
    }

    /// Grants of connector instance `connector` that still need it: every grant not
    /// closed, and closed grants still being re-verified.
    ///
    /// Reads the grants in the open states (through the store's state index) and
    /// the closed ones that still have work (re-verification, through the due
    /// index): what it costs grows with the live grants, not with every grant ever.
    pub async fn live_grants(&self, connector: &str) -> Result<Vec<GrantRecord>> {
        let mut live = Vec::new();
        for state in GrantState::ALL {
            if matches!(state, GrantState::Denied | GrantState::Verified) {
                continue;
            }
            live.extend(
                self.grants_matching(store::ListFilter {
                    state: Some(state),
                    connector: Some(connector.to_owned()),
                    ..Default::default()
                })
                .await?,
            );
        }
        for id in self.inner.store.with_work().await? {
            if let Some(r) = self.inner.store.get(&id).await?
                && r.connector == connector
                && r.due_at.is_some()
                && matches!(r.state, GrantState::Denied | GrantState::Verified)
            {
                live.push(r);
            }
        }
        live.sort_by(|a, b| a.grant.id.cmp(&b.grant.id));
        Ok(live)
    }

    /// Every grant `filter` matches (its `after` and `limit` aside), page by page.
    pub async fn grants_matching(&self, filter: store::ListFilter) -> Result<Vec<GrantRecord>> {
        let mut filter = store::ListFilter {
            after: None,
            limit: 1000,
            ..filter
        };
        let mut all = Vec::new();
        loop {
            let page = self.inner.store.list(&filter).await?;
            all.extend(page.grants);
            match page.next {
                Some(next) => filter.after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// Hands grant `id` to connector instance `to`: from now on its calls
    /// (revocation, verification) go there. Waits for work in flight on the grant.
    pub async fn hand_over(&self, id: &str, to: &str, actor: &str) -> Result<GrantRecord> {
        let _lock = self.inner.locks.lock(id).await;
        let mut record = self.load(id).await?;
        if record.connector == to {
            return Ok(record);
        }
        let from = std::mem::replace(&mut record.connector, to.to_owned());
        record.updated_at = self.now();
        let handed = event("grant.handed-over", actor, &record)
            .detail(json!({ "from": from, "to": to, "state": record.state }));
        let (record, _) = self
            .inner
            .store
            .commit(Commit {
                record,
                sealed: Sealed::Keep,
                event: handed,
                lease_until: None,
                earlier: Vec::new(),
            })
            .await?;
        self.changed(&record);
        self.due_moved(record.due_at);
        Ok(record)
    }

    /// Grants whose revocation is still not verified after the attempt budget.
    pub async fn escalated(&self) -> Result<Vec<GrantRecord>> {
        Ok(self
            .inner
            .store
            .list(&store::ListFilter {
                state: Some(GrantState::Escalated),
                limit: 1000,
                ..Default::default()
            })
            .await?
            .grants)
    }
}
