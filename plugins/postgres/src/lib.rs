//! JIT *permissions* in PostgreSQL, not JIT users.
//!
//! `issue` creates a role named from the grant id (`ebb_<id>`) with `LOGIN`, a random
//! password (sent to the server only as its SCRAM-SHA-256 verifier) and
//! `VALID UNTIL` the grant's end, and grants it exactly the requested
//! table privileges — never membership in another role. `revoke` stops new logins,
//! terminates every backend of the role (by name and by oid: a dropped role's live
//! session keeps running with `usename` NULL), drops what it owns and drops it.
//! `verify-revoked` asks PostgreSQL: is the role there, is any backend of it alive,
//! does the credential still log in, and does it still own or hold anything in any
//! database?
//!
//! The grant's footprint: any role may create objects where PUBLIC may (schemas
//! with CREATE for PUBLIC, temporary tables), so a grantee can copy what it may read
//! into a table of its own and share it. `revoke` drops everything the role owns
//! and every privilege it holds (`DROP OWNED`, never `REASSIGN OWNED`: nothing the
//! grantee made is handed to the admin role) in the lent database, then in every
//! other database where the shared catalog (`pg_shdepend`) shows it owns or holds
//! something and a connection `db:<database>` is lent. Each step commits on its
//! own, so a role that cannot be dropped yet (objects in a database no connection
//! reaches) has still lost every privilege Ebb could take; `verify-revoked` then
//! reports each database that blocks it with the manual step.
//!
//! Settings (`[connectors.<name>.config]`):
//! - `connection`: the lent SQL connection to use (default `main`).
//! - Connections named `db:<database>` (optional): lent connections to other
//!   databases of the same server, used to remove what a grantee made there.
//! - `allowed-resources`: comma-separated `schema.table` or `schema.*` patterns a grant
//!   may name. Nothing is allowed until this is set.
//! - `connection-limit`: the role's connection limit (default 4).
//! - `standing-role:<subject id>`: the base role whose standing access
//!   `standing-access` reports for that subject (default: the subject id itself).
//!
//! The admin connection's role needs `CREATEROLE`, `pg_signal_backend`, and the table
//! privileges it hands out `WITH GRANT OPTION`.

mod names;

use ebb_connector_sdk::sql::{self, LoginOutcome, Value, quote_ident, quote_literal};
use ebb_connector_sdk::{
    Capabilities, Connector, ConnectorInfo, Credential, Error, Grant, InventoryItem, Issued,
    Permission, Residue, ResidueKind, Subject, Verdict, config, export_connector, log,
};
use names::{Handle, TableRef, role_name, timestamp_literal};

/// Concurrent GRANTs (or DROP OWNED) on the same table or schema update the same ACL
/// row, and PostgreSQL fails one with `XX000 tuple concurrently updated`. Every batch
/// that changes ACLs first takes this transaction-scoped advisory lock, so they run
/// one at a time (each takes milliseconds). The key spells "ebbACL".
const ACL_LOCK: &str = "select pg_advisory_xact_lock(111550735239500);\n";

const ACTIONS: [(&str, &str); 5] = [
    ("select", "read rows"),
    ("insert", "add rows"),
    ("update", "change rows"),
    ("delete", "remove rows"),
    ("truncate", "empty the table"),
];

struct Postgres;

fn connection() -> String {
    config::get_or("connection", "main")
}

fn role_oid(conn: &str, role: &str) -> Result<Option<i64>, Error> {
    let rows = sql::query(
        conn,
        "select oid from pg_roles where rolname = $1",
        &[role.into()],
    )?;
    Ok(rows
        .rows
        .first()
        .and_then(|r| r.first())
        .and_then(Value::as_i64))
}

/// Live backends of the role, matched by name and (when known) by oid.
fn backends(conn: &str, role: &str, oid: Option<i64>) -> Result<Vec<i64>, Error> {
    let rows = sql::query(
        conn,
        "select pid from pg_stat_activity where usename = $1 or usesysid = $2",
        &[role.into(), Value::Int(oid.unwrap_or(0))],
    )?;
    Ok(rows
        .rows
        .iter()
        .filter_map(|r| r.first().and_then(Value::as_i64))
        .collect())
}

/// Terminates the role's backends and waits (up to 5 s each) until they are gone.
fn terminate(conn: &str, role: &str, oid: Option<i64>) -> Result<usize, Error> {
    let rows = sql::query(
        conn,
        "select pg_terminate_backend(pid, 5000) from pg_stat_activity \
         where (usename = $1 or usesysid = $2) and pid <> pg_backend_pid()",
        &[role.into(), Value::Int(oid.unwrap_or(0))],
    )?;
    Ok(rows.rows.len())
}

/// What a role still owns or holds in one database, from the shared catalog.
struct Footprint {
    /// `None` for cluster-wide objects (a database, a tablespace).
    database: Option<String>,
    owned: i64,
    privileges: i64,
}

impl Footprint {
    /// The residue, with the step that removes it by hand.
    fn residue(&self, role: &str) -> Residue {
        let place = match &self.database {
            Some(db) => db.clone(),
            None => "cluster-wide".to_owned(),
        };
        let step = match &self.database {
            Some(db) => format!(
                "connect to database {db} as a superuser and run DROP OWNED BY {role}; \
                 then DROP ROLE {role} (or lend a connection `db:{db}` and Ebb does it)"
            ),
            None => {
                format!("give what {role} owns cluster-wide a new owner, then DROP ROLE {role}")
            }
        };
        let what = match (self.owned, self.privileges) {
            (0, p) => format!("holds {p} privilege(s)"),
            (o, 0) => format!("owns {o} object(s), made with the grant,"),
            (o, p) => {
                format!("owns {o} object(s), made with the grant, and holds {p} privilege(s)")
            }
        };
        // Objects the grantee made outlive the grant unless dropped; privileges alone
        // are the entitlement itself.
        let kind = if self.owned > 0 {
            ResidueKind::OwnedObject
        } else {
            ResidueKind::EntitlementPresent
        };
        Residue::new(kind, format!("role {role} {what}"))
            .at(place)
            .remedy(step)
    }
}

/// Where the role owns objects or holds privileges, database by database
/// (`pg_shdepend` is shared, so every database is seen from this one).
fn footprint(conn: &str, oid: i64) -> Result<Vec<Footprint>, Error> {
    let rows = sql::query(
        conn,
        "select d.datname, count(*) filter (where s.deptype = 'o'), \
                count(*) filter (where s.deptype <> 'o') \
         from pg_shdepend s left join pg_database d on d.oid = s.dbid \
         where s.refclassid = 'pg_authid'::regclass and s.refobjid = $1 \
         group by d.datname order by d.datname",
        &[Value::Int(oid)],
    )?;
    Ok(rows
        .rows
        .iter()
        .map(|r| Footprint {
            database: r.first().and_then(Value::as_str).map(str::to_owned),
            owned: r.get(1).and_then(Value::as_i64).unwrap_or(0),
            privileges: r.get(2).and_then(Value::as_i64).unwrap_or(0),
        })
        .collect())
}

/// Drops everything `role` owns and every privilege it holds — in the lent
/// database, then in each other database it left something in where a
/// `db:<database>` connection is lent — and then the role. Each step is its own
/// transaction: a role that cannot be dropped yet keeps nothing that was removed.
///
/// The common case — nothing outside the lent database — takes one transaction:
/// `DROP ROLE` succeeds only when the role owns and holds nothing anywhere in the
/// cluster, so if it fails (2BP01), that transaction rolls back and the step-by-step
/// path runs.
fn remove_footprint(conn: &str, role: &str, oid: i64) -> Result<(), Error> {
    let ident = quote_ident(role);
    // On PostgreSQL 15+ DROP OWNED needs membership in the role.
    let at_once = format!(
        "grant {ident} to current_user;\n{ACL_LOCK}drop owned by {ident};\ndrop role {ident};"
    );
    match sql::execute_batch(conn, &at_once) {
        Ok(()) => return Ok(()),
        // 42704 undefined_object: dropped concurrently; already gone is success.
        Err(sql::SqlError::Rejected(db)) if db.code == "42704" => return Ok(()),
        Err(sql::SqlError::Rejected(db)) if db.code == "2BP01" => {}
        Err(e) => return Err(e.into()),
    }
    sql::execute_batch(conn, &format!("grant {ident} to current_user"))?;
    let drop_owned = format!("{ACL_LOCK}drop owned by {ident};");
    sql::execute_batch(conn, &drop_owned)?;
    let here = sql::query(conn, "select current_database()", &[])?;
    let here = here
        .rows
        .first()
        .and_then(|r| r.first())
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    for place in footprint(conn, oid)? {
        let Some(database) = place.database.filter(|d| *d != here) else {
            continue;
        };
        match sql::execute_batch(&format!("db:{database}"), &drop_owned) {
            Ok(()) => log::info(&format!("dropped what {role} owned in database {database}")),
            // No connection there: verify-revoked reports it with the manual step.
            Err(sql::SqlError::UnknownConnection(_)) => {}
            Err(e) => log::warn(&format!(
                "could not drop what {role} owns in database {database}: {}",
                sql::describe(&e)
            )),
        }
    }
    match sql::execute_batch(conn, &format!("drop role {ident}")) {
        Ok(()) => Ok(()),
        // 42704 undefined_object: dropped concurrently; already gone is success.
        Err(sql::SqlError::Rejected(db)) if db.code == "42704" => Ok(()),
        // 2BP01 dependent_objects_still_exist: objects elsewhere. The role can log in
        // nowhere and holds nothing here; verify-revoked says where the rest is.
        Err(sql::SqlError::Rejected(db)) if db.code == "2BP01" => {
            log::warn(&format!(
                "role {role} cannot be dropped yet: {}",
                db.message
            ));
            sql::execute_batch(conn, &format!("revoke {ident} from current_user"))?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn check_permissions(permissions: &[Permission]) -> Result<Vec<(String, TableRef)>, Error> {
    if permissions.is_empty() {
        return Err(Error::Invalid(
            "a grant needs at least one permission".into(),
        ));
    }
    let allowed = config::get("allowed-resources").unwrap_or_default();
    permissions
        .iter()
        .map(|p| {
            let action = p.action.to_ascii_lowercase();
            if !ACTIONS.iter().any(|(a, _)| *a == action) {
                return Err(Error::Invalid(format!(
                    "unknown action `{}`; this connector grants {}",
                    p.action,
                    ACTIONS.map(|(a, _)| a).join(", ")
                )));
            }
            let table = TableRef::parse(&p.resource)?;
            if !table.allowed_by(&allowed) {
                return Err(Error::Invalid(format!(
                    "`{}` is not in this connector's allowed-resources",
                    p.resource
                )));
            }
            Ok((action, table))
        })
        .collect()
}

impl Connector for Postgres {
    fn describe() -> ConnectorInfo {
        let mut info = ConnectorInfo::new("postgres", env!("CARGO_PKG_VERSION"), "PostgreSQL 13+")
            .with_description(
                "A per-grant login role with exactly the requested table privileges, \
                 VALID UNTIL the grant's end; revoke ends its sessions and drops it",
            )
            .with_capabilities(
                Capabilities::REVOCABLE
                    | Capabilities::DOWNSTREAM_EXPIRY
                    | Capabilities::TERMINATES_SESSIONS
                    | Capabilities::CAN_VERIFY
                    | Capabilities::CAN_VERIFY_ISSUED
                    | Capabilities::REPORTS_STANDING_ACCESS,
            );
        for (name, description) in ACTIONS {
            info = info.with_action(name, description, "schema.table");
        }
        info
    }

    fn validate(permissions: Vec<Permission>) -> Result<(), Error> {
        check_permissions(&permissions).map(drop)
    }

    /// Every role named `ebb_…` but the connector's own: Ebb's naming scheme,
    /// whatever the host remembers.
    fn inventory() -> Result<Vec<InventoryItem>, Error> {
        let rows = sql::query(
            &connection(),
            "select rolname from pg_roles where rolname like 'ebb\\_%' \
             and rolname not in (current_user, session_user) order by rolname",
            &[],
        )?;
        Ok(rows
            .rows
            .iter()
            .filter_map(|r| r.first().and_then(Value::as_str))
            .map(|role| InventoryItem::new(names::grant_id(role), format!("role {role}")))
            .collect())
    }

    fn issue(grant: Grant) -> Result<Issued, Error> {
        let conn = connection();
        let permissions = check_permissions(&grant.permissions)?;
        if grant.not_after <= ebb_connector_sdk::now_ms() {
            return Err(Error::Invalid("the grant has already ended".into()));
        }
        let role = role_name(&grant.id)?;
        let password = ebb_connector_sdk::random::password(40)?;
        let limit: u32 = config::get_or("connection-limit", "4")
            .parse()
            .map_err(|_| Error::Invalid("connection-limit must be a number".into()))?;
        let ident = quote_ident(&role);
        // One batch is one transaction: a failed GRANT leaves no role behind.
        let mut ddl = String::from(ACL_LOCK);
        ddl.push_str(&match role_oid(&conn, &role)? {
            // A retried issue: the first reply was lost, so its password is unknown.
            // Replace it; the lost one stops working.
            Some(_) => format!("alter role {ident} login"),
            None => format!(
                "create role {ident} login noinherit nosuperuser nocreatedb nocreaterole \
                 noreplication nobypassrls"
            ),
        });
        // The server gets a SCRAM verifier, never the password: it crosses no
        // connection, lands in no server log and in no statement text.
        ddl.push_str(&format!(
            " connection limit {limit} password {} valid until {};\n",
            quote_literal(&ebb_connector_sdk::scram::verifier(&password)?)?,
            quote_literal(&timestamp_literal(grant.not_after))?
        ));
        for (action, table) in &permissions {
            ddl.push_str(&format!(
                "grant usage on schema {} to {ident};\ngrant {action} on table {} to {ident};\n",
                quote_ident(&table.schema),
                table.quoted()
            ));
        }
        ddl.push_str(&format!(
            "comment on role {ident} is {};",
            quote_literal(&format!("ebb grant {} for task: {}", grant.id, grant.task))?
        ));
        sql::execute_batch(&conn, &ddl).map_err(|e| match &e {
            // 42P01 undefined_table, 3F000 invalid_schema_name.
            sql::SqlError::Rejected(db) if db.code == "42P01" || db.code == "3F000" => {
                Error::Invalid(sql::describe(&e))
            }
            _ => Error::from(e),
        })?;
        let oid = role_oid(&conn, &role)?
            .ok_or_else(|| Error::Internal(format!("role {role} vanished right after creation")))?;
        log::info(&format!(
            "issued role {role} (oid {oid}) for grant {}",
            grant.id
        ));
        Ok(Issued::new(
            Handle { role: &role, oid }.to_string(),
            Credential::new([("user", role.as_str()), ("password", password.as_str())]),
        )
        .expiring_at(grant.not_after))
    }

    fn revoke(grant: Grant, handle: Option<String>, _: Option<Credential>) -> Result<(), Error> {
        let conn = connection();
        let role = role_name(&grant.id)?;
        let handle = handle.as_deref().map(Handle::parse).transpose()?;
        let current = role_oid(&conn, &role)?;
        let oid = current.or(handle.map(|h| h.oid));
        let ident = quote_ident(&role);
        if current.is_some() {
            // First stop new logins, so no session can start while we end the others.
            sql::execute_batch(&conn, &format!("alter role {ident} nologin password null"))?;
        }
        let ended = terminate(&conn, &role, oid)?;
        if let Some(oid) = role_oid(&conn, &role)? {
            remove_footprint(&conn, &role, oid)?;
        }
        // A backend may have finished authenticating just before NOLOGIN; end it too.
        let late = terminate(&conn, &role, oid)?;
        log::info(&format!(
            "revoked role {role} for grant {}: ended {} session(s)",
            grant.id,
            ended + late
        ));
        Ok(())
    }

    fn verify_revoked(
        grant: Grant,
        handle: Option<String>,
        credential: Option<Credential>,
    ) -> Result<Verdict, Error> {
        let conn = connection();
        let role = role_name(&grant.id)?;
        let handle = handle.as_deref().map(Handle::parse).transpose()?;
        let mut residue = Vec::new();
        let current = role_oid(&conn, &role)?;
        if let Some(oid) = current {
            residue.push(Residue::new(
                ResidueKind::EntitlementPresent,
                format!("role {role} (oid {oid}) still exists"),
            ));
            for place in footprint(&conn, oid)? {
                residue.push(place.residue(&role));
            }
        }
        let oid = current.or(handle.map(|h| h.oid));
        for pid in backends(&conn, &role, oid)? {
            residue.push(Residue::new(
                ResidueKind::SessionOpen,
                format!("backend pid {pid} of role {role} is still connected"),
            ));
        }
        if let Some(credential) = credential {
            let user = credential.get("user").unwrap_or(&role);
            let password = credential.get("password").unwrap_or_default();
            if let LoginOutcome::Accepted = sql::login_probe(&conn, user, password)? {
                residue.push(Residue::new(
                    ResidueKind::CredentialAccepted,
                    format!("login as {user} with the issued password still succeeds"),
                ));
            }
        }
        Ok(Verdict::from_residue(residue))
    }

    fn verify_issued(grant: Grant, _handle: String, credential: Credential) -> Result<(), Error> {
        let conn = connection();
        let role = role_name(&grant.id)?;
        let password = credential.get("password").unwrap_or_default();
        if let LoginOutcome::Refused(reason) = sql::login_probe(&conn, &role, password)? {
            return Err(Error::Unavailable(format!(
                "login as {role} not accepted yet: {reason}"
            )));
        }
        for (action, table) in check_permissions(&grant.permissions)? {
            let rows = sql::query(
                &conn,
                "select has_table_privilege($1, $2, $3)",
                &[
                    role.as_str().into(),
                    table.quoted().into(),
                    action.as_str().into(),
                ],
            )?;
            if rows
                .rows
                .first()
                .and_then(|r| r.first())
                .and_then(Value::as_bool)
                != Some(true)
            {
                return Err(Error::Unavailable(format!(
                    "role {role} does not have {action} on {} yet",
                    table.quoted()
                )));
            }
        }
        Ok(())
    }

    fn standing_access(subject: Subject) -> Result<Vec<Residue>, Error> {
        let conn = connection();
        let base = config::get(&format!("standing-role:{}", subject.id)).unwrap_or(subject.id);
        let rows = sql::query(
            &conn,
            "select rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication \
             from pg_roles where rolname = $1",
            &[base.as_str().into()],
        )?;
        let Some(attrs) = rows.rows.first() else {
            return Ok(Vec::new());
        };
        let mut residue = Vec::new();
        for (i, name) in [
            "superuser",
            "createrole",
            "createdb",
            "bypassrls",
            "replication",
        ]
        .iter()
        .enumerate()
        {
            if attrs.get(i).and_then(Value::as_bool) == Some(true) {
                residue.push(Residue::new(
                    ResidueKind::EntitlementPresent,
                    format!("role {base} has {name}"),
                ));
            }
        }
        let members = sql::query(
            &conn,
            "select g.rolname from pg_auth_members m \
             join pg_roles g on g.oid = m.roleid join pg_roles r on r.oid = m.member \
             where r.rolname = $1 order by 1",
            &[base.as_str().into()],
        )?;
        for row in &members.rows {
            if let Some(group) = row.first().and_then(Value::as_str) {
                residue.push(Residue::new(
                    ResidueKind::EntitlementPresent,
                    format!("role {base} is a member of {group}"),
                ));
            }
        }
        let privileges = sql::query(
            &conn,
            "select quote_ident(n.nspname) || '.' || quote_ident(c.relname), p.priv \
             from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             cross join (values ('select'), ('insert'), ('update'), ('delete'), ('truncate')) p(priv) \
             where c.relkind in ('r', 'p', 'v', 'm', 'f') \
               and n.nspname not in ('pg_catalog', 'information_schema') \
               and n.nspname not like 'pg_toast%' \
               and has_table_privilege($1, c.oid, p.priv) \
             order by 1, 2",
            &[base.as_str().into()],
        )?;
        for row in &privileges.rows {
            if let (Some(table), Some(privilege)) = (
                row.first().and_then(Value::as_str),
                row.get(1).and_then(Value::as_str),
            ) {
                residue.push(Residue::new(
                    ResidueKind::EntitlementPresent,
                    format!("role {base} can {privilege} on {table} outside any grant"),
                ));
            }
        }
        Ok(residue)
    }
}

export_connector!(Postgres);
