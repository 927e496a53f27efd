//! The shared store: PostgreSQL, for several hosts serving one organisation.
//!
//! Tables (`migrations/`, applied by the host with refinery; a host refuses a
//! schema newer than it knows):
//!
//! | table             | what                                                    |
//! |-------------------|---------------------------------------------------------|
//! | `ebb_grants`      | each grant's record (bytes as tagged: `ebb_core::encoding`'s binary form, JSON if written before it), its tag, the columns queries need, and its due entry: `due_at`, with `lease_host`/`lease_due` while a host holds it |
//! | `ebb_credentials` | sealed credentials, deleted when shredded               |
//! | `ebb_audit`       | the audit chain, by `seq`                               |
//! | `ebb_head`        | the chain's keyed head (one row), counting the records  |
//! | `ebb_meta`        | the key check, the last verified head                   |
//! | `ebb_state`       | host state (anomaly flags, draining instances)          |
//! | `ebb_hosts`       | the hosts serving this database and their heartbeats    |
//!
//! **One chain, several writers.** Every write that appends an event locks the head
//! row (`SELECT … FOR UPDATE`) in its transaction, so the hosts' transactions
//! append in one total order and the chain verifies as on the embedded store.
//! Commits are grouped: one writer per host — a thread of its own with its own
//! connection — takes every commit waiting and applies them in one transaction
//! (one head lock, one statement per table), so the lock is held once per group,
//! not once per grant.
//!
//! **Due work** is claimed with `FOR UPDATE SKIP LOCKED`: the claimed rows' due
//! moves to a lease that names the claiming host. A host that dies holds its
//! leases until they run out; then any host claims the work. At start a host
//! voids only its own leases. Hosts wake each other with `NOTIFY ebb_due`.
//!
//! **Erasure.** A shredded credential's row is deleted. PostgreSQL keeps the dead
//! row version until VACUUM reclaims it, and its WAL and backups keep it longer:
//! the sealed bytes are still encrypted under the host key, but the embedded
//! store's guarantee (the per-credential key zeroed in place) does not hold here.
//!
//! Key types: [`PgStore`], [`PgOptions`].
//!
//! **Architecture invariant:** like every store, it knows `ebb-core` and its
//! database, nothing else; it never decides a transition.

use ebb_core::audit::{AuditEvent, Chain, ChainReport, GENESIS, Head, NewEvent, verify_chain_from};
use ebb_core::contract::Timestamp;
use ebb_core::state::GrantState;
use ebb_core::store::{
    AuditQuery, Commit, Error, GrantRecord, HostStatus, ListFilter, Page, Result, SharedFile, Store,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

mod connect;
mod sql;
mod writer;

pub use connect::PgOptions;
use sql::{corrupt, db_error, db_ts, pool_error, ts, wall_clock};

use writer::{Done, Job, Op};

refinery::embed_migrations!("migrations");

/// The store on PostgreSQL.
pub struct PgStore {
    pool: deadpool_postgres::Pool,
    chain: Chain,
    host: String,
    writer: mpsc::Sender<Job>,
    /// Grants this host works on now (with how many holds): only their leases
    /// are renewed.
    held: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// The due times announced by `NOTIFY ebb_due` from any host (and 0 after the
    /// listener reconnects: something may have been missed).
    due_changed: Arc<ebb_core::store::DueSignal>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// Commits waiting for the writer; a caller past this many waits its turn.
const QUEUE: usize = 4096;

/// The key-check entry: a MAC under the chain key, the same on every host that
/// holds the cluster's key.
const KEY_CHECK: &str = "key-check";
/// The advisory lock under which a host migrates the schema.
const MIGRATION_LOCK: i64 = 0x6562_625f_6d69_6772;
/// Events or records read at once by the checks.
const PAGE: u64 = 10_000;
/// The head the last good check verified.
const VERIFIED: &str = "verified";

impl PgStore {
    /// Connects, migrates the schema (refusing one newer than this host knows),
    /// checks that this host's key is the one the database was written with, and
    /// starts the writer and the `NOTIFY` listener. `chain_key` keys the audit
    /// chain (derived from the host key, shared by every host).
    pub async fn open(options: PgOptions, chain_key: [u8; 32]) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context as _;
        let (config, tls) = connect::client_config(&options)?;
        // Migrations on a connection of their own.
        {
            let (mut client, connection) = config
                .connect(tls.clone())
                .await
                .context("connecting to the store's PostgreSQL")?;
            let task = tokio::spawn(connection);
            migrate(&mut client).await?;
            drop(client);
            let _ = task.await;
        }
        let pool = connect::pool(config.clone(), tls.clone(), options.pool_size)?;
        let chain = Chain::new(chain_key);
        check_key(&pool, &chain).await?;
        let due_changed = Arc::new(ebb_core::store::DueSignal::default());
        tokio::spawn(connect::listen(
            config.clone(),
            tls.clone(),
            Arc::downgrade(&due_changed),
        ));
        let (tx, rx) = mpsc::channel(QUEUE);
        let store = Arc::new(Self {
            pool: pool.clone(),
            chain: chain.clone(),
            host: options.host_id.clone(),
            writer: tx,
            due_changed,
            held: std::sync::Mutex::default(),
        });
        // The writer runs on a thread of its own with its own connection, so its
        // round trips are not queued behind the callers' tasks on the workers.
        // Its statements are planned for each group's ids: a generic plan
        // chosen while the table was small would scan the table for ever after.
        let mut writer_config = config.clone();
        let writer_options = match writer_config.get_options() {
            Some(o) => format!("{o} -c plan_cache_mode=force_custom_plan"),
            None => "-c plan_cache_mode=force_custom_plan".to_owned(),
        };
        writer_config.options(&writer_options);
        let writer_pool = connect::pool(writer_config, tls.clone(), 1)?;
        let writer = writer::Writer::new(writer_pool, chain, options.host_id.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the store's writer")?;
        std::thread::Builder::new()
            .name("ebb-pg-writer".into())
            .spawn(move || runtime.block_on(writer.run(rx)))
            .context("starting the store's writer")?;
        tokio::spawn(keep_leases(Arc::downgrade(&store), options.lease_ms));
        Ok(store)
    }

    /// This host's name in leases.
    pub fn host_id(&self) -> &str {
        &self.host
    }

    async fn client(&self, what: &'static str) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error(what))
    }

    /// Runs `sql` on a pooled connection, prepared once per connection (the
    /// server parses and plans it once, and each run is one round trip).
    async fn rows(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let client = self.client(what).await?;
        let statement = client.prepare_cached(sql).await.map_err(db_error(what))?;
        client
            .query(&statement, params)
            .await
            .map_err(db_error(what))
    }

    /// [`PgStore::rows`] for at most one row.
    async fn row(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        let client = self.client(what).await?;
        let statement = client.prepare_cached(sql).await.map_err(db_error(what))?;
        client
            .query_opt(&statement, params)
            .await
            .map_err(db_error(what))
    }

    /// [`PgStore::rows`] for exactly one row.
    async fn one(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row> {
        let client = self.client(what).await?;
        let statement = client.prepare_cached(sql).await.map_err(db_error(what))?;
        client
            .query_one(&statement, params)
            .await
            .map_err(db_error(what))
    }

    /// [`PgStore::rows`] for a statement without rows: how many it changed.
    async fn exec(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64> {
        let client = self.client(what).await?;
        let statement = client.prepare_cached(sql).await.map_err(db_error(what))?;
        client
            .execute(&statement, params)
            .await
            .map_err(db_error(what))
    }

    async fn write(&self, op: Op) -> Result<Done> {
        let (reply, done) = oneshot::channel();
        self.writer
            .send(Job { op, reply })
            .await
            .map_err(|_| Error::FlusherStopped)?;
        done.await.map_err(|_| Error::FlusherStopped)?
    }

    async fn stored_head(&self, client: &impl deadpool_postgres::GenericClient) -> Result<Head> {
        let row = client
            .query_opt(
                "SELECT seq, hash, records, mac FROM ebb_head WHERE id = 1",
                &[],
            )
            .await
            .map_err(db_error("reading the audit head"))?;
        Ok(match row {
            Some(row) => Head {
                seq: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
                hash: row.get(1),
                records: Some(u64::try_from(row.get::<_, i64>(2)).unwrap_or(0)),
                mac: Some(row.get(3)),
            },
            None => Head::genesis(&self.chain),
        })
    }

    async fn checkpoint(
        &self,
        client: &impl deadpool_postgres::GenericClient,
    ) -> Result<Option<Head>> {
        let row = client
            .query_opt("SELECT value FROM ebb_meta WHERE key = $1", &[&VERIFIED])
            .await
            .map_err(db_error("reading the verified head"))?;
        Ok(row
            .and_then(|r| serde_json::from_slice::<Head>(r.get::<_, &[u8]>(0)).ok())
            .filter(|h| self.chain.head_is_genuine(h)))
    }

    async fn events_between(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        after: u64,
        end: u64,
    ) -> Result<Vec<Result<AuditEvent>>> {
        let rows = client
            .query(
                "SELECT seq, event FROM ebb_audit WHERE seq > $1 AND seq <= $2 ORDER BY seq",
                &[&db_ts(after), &db_ts(end)],
            )
            .await
            .map_err(db_error("reading audit events"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                serde_json::from_slice::<AuditEvent>(r.get::<_, &[u8]>(1))
                    .map_err(corrupt(format!("audit event {seq}")))
            })
            .collect())
    }

    /// The events after the checkpoint (or the whole chain) up to `head`.
    async fn check_events(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        head: &Head,
        from_checkpoint: bool,
    ) -> Result<ChainReport> {
        let (from_seq, from_hash) = match from_checkpoint {
            true => match self.checkpoint(client).await? {
                Some(c) if c.seq <= head.seq && c.seq > 0 => {
                    let at = client
                        .query_opt(
                            "SELECT event FROM ebb_audit WHERE seq = $1",
                            &[&db_ts(c.seq)],
                        )
                        .await
                        .map_err(db_error("reading an audit event"))?
                        .and_then(|r| {
                            serde_json::from_slice::<AuditEvent>(r.get::<_, &[u8]>(0)).ok()
                        });
                    if at.is_none_or(|e| e.hash != c.hash || !self.chain.event_is_genuine(&e)) {
                        return Ok(ChainReport {
                            events: 0,
                            records: 0,
                            problem: Some(format!(
                                "event seq {} was verified before and has been altered or removed since",
                                c.seq
                            )),
                        });
                    }
                    (c.seq, c.hash)
                }
                _ => (0, GENESIS.to_owned()),
            },
            false => (0, GENESIS.to_owned()),
        };
        // Page by page: a large chain is never held in memory at once. Each page
        // is checked up to its last event; the last page against the head.
        let (mut from_seq, mut from_hash) = (from_seq, from_hash);
        let mut checked = 0;
        loop {
            let end = from_seq.saturating_add(PAGE).min(head.seq);
            let events = self.events_between(client, from_seq, end).await?;
            let last = match events.last() {
                Some(Ok(e)) if end < head.seq => Some((e.seq, e.hash.clone())),
                _ => None,
            };
            let page_head = match &last {
                Some((seq, hash)) => self.chain.head(*seq, hash, 0),
                None => head.clone(),
            };
            let mut report = verify_chain_from(
                &self.chain,
                (from_seq, &from_hash),
                events
                    .into_iter()
                    .map(|e| e.map_err(|e| ebb_core::error_chain(&e))),
                Some(&page_head),
            );
            checked += report.events;
            match last {
                Some((seq, hash)) if report.is_intact() => (from_seq, from_hash) = (seq, hash),
                _ => {
                    report.events = checked;
                    return Ok(report);
                }
            }
        }
    }

    /// Every grant record against its tag and, with `latest_event`, against the
    /// latest event of its grant; and their number against the head's count.
    async fn check_records(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        head: &Head,
        latest_event: bool,
    ) -> Result<(u64, Option<String>)> {
        // Page by page, in one snapshot (the caller's transaction).
        let sql = if latest_event {
            "SELECT g.id, g.record, g.tag, \
             (SELECT a.event FROM ebb_audit a WHERE a.grant_id = g.id ORDER BY a.seq DESC LIMIT 1) \
             FROM ebb_grants g WHERE g.id > $1 ORDER BY g.id LIMIT $2"
        } else {
            "SELECT g.id, g.record, g.tag, NULL::bytea \
             FROM ebb_grants g WHERE g.id > $1 ORDER BY g.id LIMIT $2"
        };
        let mut checked = 0;
        let mut after = String::new();
        loop {
            let rows = client
                .query(sql, &[&after, &db_ts(PAGE)])
                .await
                .map_err(db_error("reading grant records"))?;
            for row in &rows {
                let id: &str = row.get(0);
                let record: &[u8] = row.get(1);
                let stored: &[u8] = row.get(2);
                checked += 1;
                let tag = self.chain.record_tag(id, record);
                if stored != &tag[..] {
                    return Ok((
                        checked,
                        Some(format!(
                            "grant record {id} was altered outside the host: its tag does not match"
                        )),
                    ));
                }
                if !latest_event {
                    continue;
                }
                let Some(event) = row.get::<_, Option<&[u8]>>(3) else {
                    return Ok((
                        checked,
                        Some(format!("grant record {id} has no audit event")),
                    ));
                };
                let event: AuditEvent = serde_json::from_slice(event)
                    .map_err(corrupt(format!("latest event of {id}")))?;
                if let Some(bound) = &event.record
                    && *bound != hex::encode(tag)
                {
                    return Ok((
                        checked,
                        Some(format!(
                            "grant record {id} is not the one its latest audit event (seq {}) committed: an older record was put back",
                            event.seq
                        )),
                    ));
                }
            }
            match rows.last() {
                Some(row) if rows.len() as u64 == PAGE => after = row.get::<_, String>(0),
                _ => break,
            }
        }
        let expected = head.records.unwrap_or(0);
        let problem = (checked != expected).then(|| {
            format!(
                "the store holds {checked} grant records but recorded {expected}: records were {}",
                if checked < expected {
                    "removed"
                } else {
                    "added"
                }
            )
        });
        Ok((checked, problem))
    }

    /// Records `head` as verified, only forward.
    async fn set_checkpoint(&self, head: &Head) -> Result<()> {
        let bytes = serde_json::to_vec(head).map_err(corrupt(VERIFIED.into()))?;
        self.exec(
            "recording the verified head",
            "INSERT INTO ebb_meta (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&VERIFIED, &bytes],
        )
        .await?;
        Ok(())
    }

    /// A full or incremental check in one snapshot: head, events and records
    /// agree with each other even while other hosts commit.
    async fn check(
        &self,
        from_checkpoint: bool,
        latest_event: bool,
    ) -> Result<(ChainReport, Head)> {
        let mut client = self.client("checking the audit chain").await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db_error("checking the audit chain"))?;
        let head = self.stored_head(&tx).await?;
        let mut report = self.check_events(&tx, &head, from_checkpoint).await?;
        if report.is_intact() {
            let (records, problem) = self.check_records(&tx, &head, latest_event).await?;
            report.records = records;
            report.problem = problem;
        }
        tx.commit()
            .await
            .map_err(db_error("checking the audit chain"))?;
        Ok((report, head))
    }

    /// Moves this host's leases on the grants it works on to `until` (rows a
    /// commit holds are skipped: the commit sets their due itself).
    async fn renew_leases(&self, until: Timestamp) -> Result<u64> {
        let held: Vec<String> = {
            let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            held.keys().cloned().collect()
        };
        if held.is_empty() {
            return Ok(0);
        }
        self.exec(
            "renewing leases",
            "UPDATE ebb_grants SET due_at = $2 WHERE id = ANY(ARRAY( \
             SELECT id FROM ebb_grants WHERE id = ANY($3) AND lease_host = $1 \
              AND due_at < $2 ORDER BY id FOR UPDATE SKIP LOCKED))",
            &[&self.host, &db_ts(until), &held],
        )
        .await
    }
}

/// While the store lives: renews this host's leases on the grants it works on
/// (see `Store::hold`), so that work in flight here is not handed to another host.
/// Leases of a host that died, or of work that stopped, run out within `lease_ms`.
async fn keep_leases(store: std::sync::Weak<PgStore>, lease_ms: u64) {
    let every = std::time::Duration::from_millis((lease_ms / 4).max(50));
    loop {
        tokio::time::sleep(every).await;
        let Some(store) = store.upgrade() else { return };
        let now = wall_clock();
        if let Err(e) = store.renew_leases(now + lease_ms).await {
            tracing::warn!(error = %ebb_core::error_chain(&e), "renewing this host's leases failed");
        }
    }
}

/// Applies the migrations this host knows, after refusing a schema it does not.
async fn migrate(client: &mut tokio_postgres::Client) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // Hosts starting together migrate one at a time (the lock goes with the
    // connection if this host dies).
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("waiting for other hosts' migrations")?;
    let runner = migrations::runner();
    let known = runner
        .get_migrations()
        .iter()
        .map(|m| m.version())
        .max()
        .unwrap_or(0);
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await
        .context("reading the store's schema version")?
        .get(0);
    if exists {
        let applied: Option<i32> = client
            .query_one("SELECT max(version) FROM refinery_schema_history", &[])
            .await
            .context("reading the store's schema version")?
            .get(0);
        if let Some(applied) = applied
            && i64::from(applied) > i64::from(known)
        {
            anyhow::bail!(
                "the store's schema is at version {applied}, newer than this host knows ({known}): upgrade this host before it serves this database"
            );
        }
    }
    runner
        .set_abort_divergent(true)
        .set_abort_missing(true)
        .run_async(client)
        .await
        .context("migrating the store's schema")?;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .context("ending the migration")?;
    Ok(())
}

/// Refuses a host whose key is not the one the database was written with: it
/// could neither open the credentials the others sealed nor extend their chain.
async fn check_key(pool: &deadpool_postgres::Pool, chain: &Chain) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let client = pool.get().await.context("connecting to the store")?;
    let mine = chain.record_tag("ebb/key-check", b"").to_vec();
    client
        .execute(
            "INSERT INTO ebb_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&KEY_CHECK, &mine],
        )
        .await
        .context("recording the key check")?;
    let theirs: Vec<u8> = client
        .query_one("SELECT value FROM ebb_meta WHERE key = $1", &[&KEY_CHECK])
        .await
        .context("reading the key check")?
        .get(0);
    anyhow::ensure!(
        theirs == mine,
        "this host's key is not the key the store was written with: every host of a cluster must hold the same host key (it seals the credentials and keys the audit chain)"
    );
    let genesis = Head::genesis(chain);
    client
        .execute(
            "INSERT INTO ebb_head (id, seq, hash, records, mac) VALUES (1, 0, $1, 0, $2) \
             ON CONFLICT (id) DO NOTHING",
            &[&genesis.hash, &genesis.mac.unwrap_or_default()],
        )
        .await
        .context("creating the audit head")?;
    Ok(())
}

fn decode_record(id: &str, bytes: &[u8]) -> Result<GrantRecord> {
    ebb_core::encoding::decode_record(bytes).map_err(corrupt(format!("grant {id}")))
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn get(&self, id: &str) -> Result<Option<GrantRecord>> {
        let row = self
            .row(
                "reading a grant",
                "SELECT record FROM ebb_grants WHERE id = $1",
                &[&id],
            )
            .await?;
        row.map(|r| decode_record(id, r.get(0))).transpose()
    }

    async fn commit(&self, commit: Commit) -> Result<(GrantRecord, AuditEvent)> {
        match self.write(Op::Commit(Box::new(commit))).await? {
            Done::Commit(record, event) => Ok((*record, event)),
            Done::Append(_) => unreachable!("the writer answers a commit with a commit"),
        }
    }

    async fn append_audit(&self, event: NewEvent) -> Result<AuditEvent> {
        match self.write(Op::Append(event)).await? {
            Done::Append(event) => Ok(event),
            Done::Commit(..) => unreachable!("the writer answers an append with an append"),
        }
    }

    async fn claim_due(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> Result<Vec<String>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .rows(
                "claiming due grants",
                // The locked ids as an array (an InitPlan), so the update finds
                // its rows through the primary key: a join to the subquery let the
                // planner scan the whole table for each claim.
                "UPDATE ebb_grants SET due_at = $2, lease_host = $3, \
                 lease_due = COALESCE(lease_due, due_at) \
                 WHERE id = ANY(ARRAY(SELECT id FROM ebb_grants WHERE due_at <= $1 \
                       ORDER BY due_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)) \
                 RETURNING id",
                &[&db_ts(now), &db_ts(lease_until), &self.host, &limit],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn reschedule(&self, id: &str, due: Option<Timestamp>) -> Result<()> {
        // Other hosts may be asleep until a later due: wake them.
        self.rows(
            "rescheduling a grant",
            "WITH moved AS (UPDATE ebb_grants SET due_at = $2, lease_host = NULL, \
                 lease_due = NULL WHERE id = $1 RETURNING due_at) \
                 SELECT pg_notify('ebb_due', due_at::text) FROM moved WHERE due_at IS NOT NULL",
            &[&id, &due.map(db_ts)],
        )
        .await?;
        Ok(())
    }

    fn hold(&self, id: &str) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        *held.entry(id.to_owned()).or_default() += 1;
    }

    fn unhold(&self, id: &str) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                held.remove(id);
            }
        }
    }

    async fn release_claim(&self, id: &str) -> Result<()> {
        self.rows(
            "releasing a claim",
            "WITH released AS (UPDATE ebb_grants SET due_at = lease_due, lease_host = NULL, \
                 lease_due = NULL WHERE id = $1 AND lease_host = $2 RETURNING due_at) \
                 SELECT pg_notify('ebb_due', due_at::text) FROM released WHERE due_at IS NOT NULL",
            &[&id, &self.host],
        )
        .await?;
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<Timestamp>> {
        let row = self
            .one(
                "reading the due index",
                "SELECT min(due_at) FROM ebb_grants WHERE due_at IS NOT NULL",
                &[],
            )
            .await?;
        Ok(ts(row.get(0)))
    }

    async fn release_leases(&self) -> Result<usize> {
        let n = self.exec("releasing leases", "UPDATE ebb_grants SET due_at = lease_due, lease_host = NULL, lease_due = NULL \
                 WHERE id = ANY(ARRAY(SELECT id FROM ebb_grants WHERE lease_host = $1 ORDER BY id FOR UPDATE))",
                &[&self.host]).await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn due_changed(&self) -> Timestamp {
        self.due_changed.next().await
    }

    async fn sealed_credential(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let row = self
            .row(
                "reading a credential",
                "SELECT sealed FROM ebb_credentials WHERE grant_id = $1",
                &[&id],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn get_with_credential(
        &self,
        id: &str,
    ) -> Result<Option<(GrantRecord, Option<Vec<u8>>)>> {
        let row = self
            .row(
                "reading a grant and its credential",
                "SELECT g.record, c.sealed FROM ebb_grants g \
                 LEFT JOIN ebb_credentials c ON c.grant_id = g.id WHERE g.id = $1",
                &[&id],
            )
            .await?;
        row.map(|r| Ok((decode_record(id, r.get(0))?, r.get(1))))
            .transpose()
    }

    async fn list(&self, filter: &ListFilter) -> Result<Page> {
        let limit = filter.limit.clamp(1, 1000);
        let state = filter.state.map(GrantState::as_str);
        let rows = self
            .rows(
                "listing grants",
                "SELECT id, record FROM ebb_grants \
                 WHERE ($1::text IS NULL OR id > $1) \
                 AND ($2::text IS NULL OR state = $2) \
                 AND ($3::text IS NULL OR connector = $3) \
                 AND ($4::text IS NULL OR subject = $4) \
                 AND ($5::text IS NULL OR requested_by = $5) \
                 ORDER BY id LIMIT $6",
                &[
                    &filter.after,
                    &state,
                    &filter.connector,
                    &filter.subject,
                    &filter.requested_by,
                    &(i64::try_from(limit).unwrap_or(1000) + 1),
                ],
            )
            .await?;
        let mut page = Page::default();
        for row in rows.iter().take(limit) {
            let id: &str = row.get(0);
            page.grants.push(decode_record(id, row.get(1))?);
        }
        if rows.len() > limit {
            page.next = page.grants.last().map(|g| g.grant.id.clone());
        }
        Ok(page)
    }

    async fn with_work(&self) -> Result<Vec<String>> {
        let rows = self
            .rows(
                "listing grants with work",
                "SELECT id FROM ebb_grants WHERE due_at IS NOT NULL ORDER BY id",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let limit = i64::try_from(query.limit.clamp(1, 10_000)).unwrap_or(10_000);
        let after = db_ts(query.after_seq);
        let what = "reading audit events";
        let rows = match &query.grant_id {
            Some(grant) => {
                self.rows(
                    what,
                    "SELECT seq, event FROM ebb_audit WHERE grant_id = $1 AND seq > $2 \
                     ORDER BY seq LIMIT $3",
                    &[grant, &after, &limit],
                )
                .await?
            }
            None => {
                self.rows(
                    what,
                    "SELECT seq, event FROM ebb_audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&after, &limit],
                )
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                serde_json::from_slice(r.get::<_, &[u8]>(1))
                    .map_err(corrupt(format!("audit event {seq}")))
            })
            .collect()
    }

    async fn verify_audit(&self) -> Result<ChainReport> {
        Ok(self.check(false, true).await?.0)
    }

    async fn verify_at_start(&self) -> Result<ChainReport> {
        let (report, head) = self.check(true, false).await?;
        if report.is_intact() {
            self.set_checkpoint(&head).await?;
        }
        Ok(report)
    }

    async fn verify_new_events(&self) -> Result<ChainReport> {
        let mut client = self.client("checking new audit events").await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db_error("checking new audit events"))?;
        let head = self.stored_head(&tx).await?;
        let report = self.check_events(&tx, &head, true).await?;
        let checkpoint = self.checkpoint(&tx).await?;
        tx.commit()
            .await
            .map_err(db_error("checking new audit events"))?;
        if report.is_intact() && checkpoint.is_none_or(|c| c.seq < head.seq) {
            self.set_checkpoint(&head).await?;
        }
        Ok(report)
    }

    async fn counts(&self) -> Result<BTreeMap<GrantState, u64>> {
        let rows = self
            .rows(
                "counting grants",
                "SELECT state, count(*) FROM ebb_grants GROUP BY state",
                &[],
            )
            .await?;
        let mut counts: BTreeMap<GrantState, u64> =
            GrantState::ALL.into_iter().map(|s| (s, 0)).collect();
        for row in &rows {
            let name: &str = row.get(0);
            if let Some(state) = GrantState::ALL.into_iter().find(|s| s.as_str() == name) {
                counts.insert(state, u64::try_from(row.get::<_, i64>(1)).unwrap_or(0));
            }
        }
        Ok(counts)
    }

    async fn escalations(&self) -> Result<BTreeMap<String, u64>> {
        let rows = self
            .rows(
                "counting escalations",
                "SELECT connector, count(*) FROM ebb_grants WHERE escalated GROUP BY connector",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), u64::try_from(r.get::<_, i64>(1)).unwrap_or(0)))
            .collect())
    }

    /// A commit is durable when it returns: its transaction has committed (with
    /// the server's `synchronous_commit`, on a synchronous standby too).
    async fn sync(&self) -> Result<()> {
        Ok(())
    }

    async fn health(&self) -> Result<()> {
        self.one("checking the store", "SELECT 1", &[]).await?;
        Ok(())
    }

    async fn put_state(&self, key: &str, value: Option<&[u8]>) -> Result<()> {
        let what = "writing host state";
        match value {
            Some(value) => {
                self.exec(
                    what,
                    "INSERT INTO ebb_state (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[&key.as_bytes(), &value],
                )
                .await?
            }
            None => {
                self.exec(
                    what,
                    "DELETE FROM ebb_state WHERE key = $1",
                    &[&key.as_bytes()],
                )
                .await?
            }
        };
        Ok(())
    }

    async fn heartbeat(&self, status: &HostStatus) -> Result<()> {
        let connectors =
            serde_json::to_value(&status.connectors).map_err(corrupt("host status".into()))?;
        self.exec(
            "recording a heartbeat",
            "INSERT INTO ebb_hosts (id, version, started_at, heartbeat_at, connectors, policies) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, \
                 started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at, \
                 connectors = EXCLUDED.connectors, policies = EXCLUDED.policies",
            &[
                &status.id,
                &status.version,
                &db_ts(status.started_at),
                &db_ts(status.heartbeat_at),
                &connectors,
                &status.policies,
            ],
        )
        .await?;
        Ok(())
    }

    async fn hosts(&self) -> Result<Vec<HostStatus>> {
        let rows = self
            .rows(
                "reading the hosts",
                "SELECT id, version, started_at, heartbeat_at, connectors, policies \
                 FROM ebb_hosts ORDER BY id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.get(0);
                Ok(HostStatus {
                    version: r.get(1),
                    started_at: ts(r.get(2)).unwrap_or(0),
                    heartbeat_at: ts(r.get(3)).unwrap_or(0),
                    connectors: serde_json::from_value(r.get(4))
                        .map_err(corrupt(format!("host {id}")))?,
                    policies: r.get(5),
                    id,
                })
            })
            .collect()
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn shared_files(&self, area: &str) -> Result<Vec<SharedFile>> {
        let rows = self
            .rows(
                "reading shared files",
                "SELECT name, sha256 FROM ebb_files WHERE area = $1 ORDER BY name",
                &[&area],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| SharedFile {
                name: r.get(0),
                sha256: r.get(1),
            })
            .collect())
    }

    async fn shared_content(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        let row = self
            .row(
                "reading a shared file",
                "SELECT content FROM ebb_blobs WHERE sha256 = $1",
                &[&sha256],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn share_file(&self, area: &str, name: &str, content: Option<&[u8]>) -> Result<()> {
        use sha2::Digest as _;
        let mut client = self.client("sharing a file").await?;
        let tx = client
            .transaction()
            .await
            .map_err(db_error("sharing a file"))?;
        let sha = match content {
            Some(bytes) => {
                let sha = hex::encode(sha2::Sha256::digest(bytes));
                tx.execute(
                    "INSERT INTO ebb_blobs (sha256, content) VALUES ($1, $2) \
                     ON CONFLICT (sha256) DO NOTHING",
                    &[&sha, &bytes],
                )
                .await
                .map_err(db_error("sharing a file"))?;
                Some(sha)
            }
            None => None,
        };
        tx.execute(
            "INSERT INTO ebb_files (area, name, sha256, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (area, name) DO UPDATE SET sha256 = EXCLUDED.sha256, \
             updated_at = EXCLUDED.updated_at",
            &[&area, &name, &sha, &db_ts(wall_clock())],
        )
        .await
        .map_err(db_error("sharing a file"))?;
        tx.commit().await.map_err(db_error("sharing a file"))?;
        Ok(())
    }

    async fn states(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let rows = self
            .rows(
                "reading host state",
                "SELECT key, value FROM ebb_state \
                 WHERE substring(key FROM 1 FOR length($1::bytea)) = $1::bytea ORDER BY key",
                &[&prefix.as_bytes()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let key: &[u8] = r.get(0);
                (String::from_utf8_lossy(key).into_owned(), r.get(1))
            })
            .collect())
    }
}
