//! Group commit: one writer per host (a thread of its own, with its own
//! connection, opened with `plan_cache_mode=force_custom_plan`) takes every
//! commit and audit append waiting and applies them in one transaction — the
//! head row locked once, then one statement per table for the whole group
//! (arrays through `UNNEST`).
//!
//! A commit whose version moved is refused alone (`Conflict`) and the rest of the
//! group goes on. If the group's transaction fails, each of its commits is tried
//! again in a transaction of its own, so one bad commit cannot fail the others;
//! a commit is acknowledged only after its transaction committed.

use crate::sql::{corrupt, db_error, db_ts, pool_error, wall_clock};
use ebb_core::audit::{AuditEvent, Chain, Head, NewEvent};
use ebb_core::store::{Commit, Error, GrantRecord, Result, Sealed};
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

/// The most commits in one transaction.
const GROUP: usize = 512;

pub(crate) enum Op {
    Commit(Box<Commit>),
    Append(NewEvent),
}

pub(crate) enum Done {
    Commit(Box<GrantRecord>, AuditEvent),
    Append(AuditEvent),
}

pub(crate) struct Job {
    pub op: Op,
    pub reply: oneshot::Sender<Result<Done>>,
}

pub(crate) struct Writer {
    pool: deadpool_postgres::Pool,
    chain: Chain,
    host: String,
}

/// The rows one group writes.
#[derive(Default)]
struct Rows {
    grants: HashMap<String, GrantRow>,
    credentials: HashMap<String, Option<Vec<u8>>>,
    events: Vec<(i64, Option<String>, Vec<u8>)>,
    /// The earliest due entry the group writes, announced to every host's
    /// scheduler (`NOTIFY ebb_due`).
    notify: Option<i64>,
}

struct GrantRow {
    version: i64,
    state: &'static str,
    connector: String,
    subject: String,
    requested_by: String,
    escalated: bool,
    due_at: Option<i64>,
    lease_host: Option<String>,
    lease_due: Option<i64>,
    record: Vec<u8>,
    tag: Vec<u8>,
}

impl Writer {
    pub(crate) fn new(pool: deadpool_postgres::Pool, chain: Chain, host: String) -> Self {
        Self { pool, chain, host }
    }

    pub(crate) async fn run(self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.recv().await {
            let mut jobs = vec![first];
            while jobs.len() < GROUP {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            metrics::histogram!("ebb_store_group_commits").record(jobs.len() as f64);
            let ops: Vec<&Op> = jobs.iter().map(|j| &j.op).collect();
            let results = match self.apply(&ops).await {
                Ok(results) => results,
                Err(e) if jobs.len() == 1 => vec![Err(e)],
                Err(e) => {
                    tracing::warn!(error = %ebb_core::error_chain(&e), commits = jobs.len(),
                        "a group commit failed; committing its members one by one");
                    let mut results = Vec::with_capacity(jobs.len());
                    for op in &ops {
                        results.push(match self.apply(&[op]).await {
                            Ok(mut one) => one.pop().unwrap_or(Err(Error::FlusherStopped)),
                            Err(e) => Err(e),
                        });
                    }
                    results
                }
            };
            for (job, result) in jobs.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
    }

    /// Applies `ops` in one transaction; per-op refusals (a moved version) are
    /// in the returned list, a failure of the transaction is the error.
    async fn apply(&self, ops: &[&Op]) -> Result<Vec<Result<Done>>> {
        let mut client = self.pool.get().await.map_err(pool_error("committing"))?;
        let tx = client
            .transaction()
            .await
            .map_err(db_error("starting a commit"))?;
        let head = tx
            .query_one(
                &tx.prepare_cached(
                    "SELECT seq, hash, records FROM ebb_head WHERE id = 1 FOR UPDATE",
                )
                .await
                .map_err(db_error("preparing a statement"))?,
                &[],
            )
            .await
            .map_err(db_error("locking the audit head"))?;
        let mut seq = u64::try_from(head.get::<_, i64>(0)).unwrap_or(0);
        let mut hash: String = head.get(1);
        let mut records = u64::try_from(head.get::<_, i64>(2)).unwrap_or(0);
        let ids: Vec<&str> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Commit(c) => Some(c.record.grant.id.as_str()),
                Op::Append(_) => None,
            })
            .collect();
        // Each grant's stored version, its row locked until the group commits.
        let mut current: HashMap<String, u64> = HashMap::new();
        if !ids.is_empty() {
            let rows = tx
                .query(
                    &tx.prepare_cached("SELECT id, version FROM ebb_grants WHERE id = ANY($1) ORDER BY id FOR UPDATE").await.map_err(db_error("preparing a statement"))?,
                    &[&ids],
                )
                .await
                .map_err(db_error("reading grants to commit"))?;
            for row in rows {
                current.insert(row.get(0), u64::try_from(row.get::<_, i64>(1)).unwrap_or(0));
            }
        }
        let now = wall_clock();
        let mut rows = Rows::default();
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Append(event) => {
                    let mut event = event.clone();
                    event.host = Some(self.host.clone());
                    let event = self.chain.seal(event, now, seq, &hash);
                    seq = event.seq;
                    hash.clone_from(&event.hash);
                    rows.push_event(&event)?;
                    results.push(Ok(Done::Append(event)));
                }
                Op::Commit(commit) => {
                    let Commit {
                        record,
                        sealed,
                        event,
                        lease_until,
                        earlier,
                    } = (**commit).clone();
                    let mut record = record;
                    let id = record.grant.id.clone();
                    let stored = current.get(&id).copied();
                    let refused = match (stored, record.version) {
                        (None, 0) => None,
                        (None, _) => Some(Error::Conflict(id.clone())),
                        (Some(_), 0) => Some(Error::Exists(id.clone())),
                        (Some(v), mine) if v != mine => Some(Error::Conflict(id.clone())),
                        _ => None,
                    };
                    if let Some(refused) = refused {
                        results.push(Err(refused));
                        continue;
                    }
                    record.version += 1;
                    if stored.is_none() {
                        records += 1;
                    }
                    current.insert(id.clone(), record.version);
                    let bytes = ebb_core::encoding::encode_record(&record)
                        .map_err(corrupt(format!("grant {id}")))?;
                    let tag = self.chain.record_tag(&id, &bytes);
                    // Steps passed through on the way to the record: linked
                    // first, naming the grant but not bound to a record.
                    for mut step in earlier {
                        step.grant_id.get_or_insert_with(|| id.clone());
                        step.record = None;
                        step.host = Some(self.host.clone());
                        let step = self.chain.seal(step, now, seq, &hash);
                        seq = step.seq;
                        hash.clone_from(&step.hash);
                        rows.push_event(&step)?;
                    }
                    let mut event = event;
                    event.grant_id.get_or_insert_with(|| id.clone());
                    event.record = Some(hex::encode(tag));
                    event.host = Some(self.host.clone());
                    let event = self.chain.seal(event, now, seq, &hash);
                    seq = event.seq;
                    hash.clone_from(&event.hash);
                    rows.push_event(&event)?;
                    let (due_at, lease_host, lease_due) = match (record.due_at, lease_until) {
                        (Some(due), Some(lease)) => (
                            Some(db_ts(lease)),
                            Some(self.host.clone()),
                            Some(db_ts(due)),
                        ),
                        (Some(due), None) => (Some(db_ts(due)), None, None),
                        (None, _) => (None, None, None),
                    };
                    if let Some(at) = due_at {
                        rows.notify = Some(rows.notify.map_or(at, |n| n.min(at)));
                    }
                    rows.grants.insert(
                        id.clone(),
                        GrantRow {
                            version: i64::try_from(record.version).unwrap_or(i64::MAX),
                            state: record.state.as_str(),
                            connector: record.connector.clone(),
                            subject: record.grant.subject.id.clone(),
                            requested_by: record.requested_by.clone(),
                            escalated: record.escalated_at.is_some(),
                            due_at,
                            lease_host,
                            lease_due,
                            record: bytes,
                            tag: tag.to_vec(),
                        },
                    );
                    match sealed {
                        Sealed::Keep => {}
                        Sealed::Set(bytes) => {
                            rows.credentials.insert(id.clone(), Some(bytes));
                        }
                        Sealed::Shred => {
                            rows.credentials.insert(id.clone(), None);
                        }
                    }
                    results.push(Ok(Done::Commit(Box::new(record), event)));
                }
            }
        }
        let head = self.chain.head(seq, &hash, records);
        rows.write(&tx, &head).await?;
        tx.commit().await.map_err(db_error("committing"))?;
        Ok(results)
    }
}

/// A group's grant rows by column, for one `UNNEST` insert.
#[derive(Default)]
struct GrantColumns<'a> {
    id: Vec<&'a str>,
    version: Vec<i64>,
    state: Vec<&'a str>,
    connector: Vec<&'a str>,
    subject: Vec<&'a str>,
    requested_by: Vec<&'a str>,
    escalated: Vec<bool>,
    due_at: Vec<Option<i64>>,
    lease_host: Vec<Option<&'a str>>,
    lease_due: Vec<Option<i64>>,
    record: Vec<&'a [u8]>,
    tag: Vec<&'a [u8]>,
}

impl Rows {
    fn push_event(&mut self, event: &AuditEvent) -> Result<()> {
        let bytes =
            serde_json::to_vec(event).map_err(corrupt(format!("audit event {}", event.seq)))?;
        self.events
            .push((db_ts(event.seq), event.grant_id.clone(), bytes));
        Ok(())
    }

    /// One statement per table for the whole group, then the head (and the
    /// notification), all sent at once: the server runs them in order, and the
    /// group waits for one round trip, not one per statement.
    async fn write(&self, tx: &deadpool_postgres::Transaction<'_>, head: &Head) -> Result<()> {
        type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;
        let prepare = |sql: &'static str| async move {
            tx.prepare_cached(sql)
                .await
                .map_err(db_error("preparing a statement"))
        };
        let mut cols = GrantColumns::default();
        for (id, g) in &self.grants {
            cols.id.push(id);
            cols.version.push(g.version);
            cols.state.push(g.state);
            cols.connector.push(&g.connector);
            cols.subject.push(&g.subject);
            cols.requested_by.push(&g.requested_by);
            cols.escalated.push(g.escalated);
            cols.due_at.push(g.due_at);
            cols.lease_host.push(g.lease_host.as_deref());
            cols.lease_due.push(g.lease_due);
            cols.record.push(&g.record);
            cols.tag.push(&g.tag);
        }
        let (set, shred): (Vec<_>, Vec<_>) =
            self.credentials.iter().partition(|(_, v)| v.is_some());
        let set_ids: Vec<&str> = set.iter().map(|(id, _)| id.as_str()).collect();
        let set_sealed: Vec<&[u8]> = set.iter().filter_map(|(_, v)| v.as_deref()).collect();
        let shred_ids: Vec<&str> = shred.iter().map(|(id, _)| id.as_str()).collect();
        let seqs: Vec<i64> = self.events.iter().map(|e| e.0).collect();
        let event_grants: Vec<Option<&str>> = self.events.iter().map(|e| e.1.as_deref()).collect();
        let bodies: Vec<&[u8]> = self.events.iter().map(|e| e.2.as_slice()).collect();
        let (head_seq, head_records) = (db_ts(head.seq), db_ts(head.records.unwrap_or(0)));
        let head_mac = head.mac.clone().unwrap_or_default();

        let mut statements: Vec<(tokio_postgres::Statement, Params<'_>)> = Vec::new();
        if !self.grants.is_empty() {
            statements.push((
                prepare(
                    "INSERT INTO ebb_grants (id, version, state, connector, subject, requested_by, \
                     escalated, due_at, lease_host, lease_due, record, tag) \
                     SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], \
                     $6::text[], $7::bool[], $8::int8[], $9::text[], $10::int8[], $11::bytea[], $12::bytea[]) \
                     ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, state = EXCLUDED.state, \
                     connector = EXCLUDED.connector, subject = EXCLUDED.subject, \
                     requested_by = EXCLUDED.requested_by, escalated = EXCLUDED.escalated, \
                     due_at = EXCLUDED.due_at, lease_host = EXCLUDED.lease_host, \
                     lease_due = EXCLUDED.lease_due, record = EXCLUDED.record, tag = EXCLUDED.tag",
                )
                .await?,
                vec![
                    &cols.id,
                    &cols.version,
                    &cols.state,
                    &cols.connector,
                    &cols.subject,
                    &cols.requested_by,
                    &cols.escalated,
                    &cols.due_at,
                    &cols.lease_host,
                    &cols.lease_due,
                    &cols.record,
                    &cols.tag,
                ],
            ));
        }
        if !set_ids.is_empty() {
            statements.push((
                prepare(
                    "INSERT INTO ebb_credentials (grant_id, sealed) \
                     SELECT * FROM UNNEST($1::text[], $2::bytea[]) \
                     ON CONFLICT (grant_id) DO UPDATE SET sealed = EXCLUDED.sealed",
                )
                .await?,
                vec![&set_ids, &set_sealed],
            ));
        }
        if !shred_ids.is_empty() {
            statements.push((
                prepare("DELETE FROM ebb_credentials WHERE grant_id = ANY($1)").await?,
                vec![&shred_ids],
            ));
        }
        if !seqs.is_empty() {
            statements.push((
                prepare(
                    "INSERT INTO ebb_audit (seq, grant_id, event) \
                     SELECT * FROM UNNEST($1::int8[], $2::text[], $3::bytea[])",
                )
                .await?,
                vec![&seqs, &event_grants, &bodies],
            ));
        }
        statements.push((
            prepare("UPDATE ebb_head SET seq = $1, hash = $2, records = $3, mac = $4 WHERE id = 1")
                .await?,
            vec![&head_seq, &head.hash, &head_records, &head_mac],
        ));
        let earliest = self.notify.map(|at| at.to_string());
        if let Some(at) = &earliest {
            // Schedulers sleeping past it (on any host) wake at commit.
            statements.push((prepare("SELECT pg_notify('ebb_due', $1)").await?, vec![at]));
        }
        futures_util::future::try_join_all(
            statements
                .iter()
                .map(|(statement, params)| tx.execute(statement, params)),
        )
        .await
        .map_err(db_error("writing a group of commits"))?;
        Ok(())
    }
}
