//! JIT access to MySQL and MariaDB: an account per grant (`'ebb_<grant id>'@'%'`)
//! with exactly the granted table privileges, through the host's `mysql` capability.
//!
//! `issue` creates the account with a random password and `PASSWORD EXPIRE INTERVAL`
//! the grant's length in days (the server's own backstop; it counts whole days), and
//! grants exactly `SELECT`/`INSERT`/`UPDATE`/`DELETE` on the named tables. With
//! `lock-with-event-in = "<database>"` it also schedules an event in that database
//! that locks the account at `not-after` to the second — the server then ends new
//! logins on time even while the host is down (it needs `event_scheduler=ON` and
//! the `EVENT` privilege there), and the connector claims `downstream-expiry`.
//!
//! `revoke` drops the account and then kills every connection it still has:
//! `DROP USER` alone leaves a live session connected and running statements.
//! `verify-revoked` asks the server, never the connector's memory: the account in
//! `mysql.user`, its sessions in the process list, and whether the issued password
//! still logs in (a login probe on a fresh connection).
//!
//! A permission is `select`, `insert`, `update` or `delete` on `database.table`.
//! Settings (`[connectors.<name>.config]`):
//! - `connection` (default `main`): the lent `mysql` connection.
//! - `allowed-resources`: comma-separated `database.table` or `database.*` a grant
//!   may name. Nothing is allowed until it is set.
//! - `lock-with-event-in`: see above.
//!
//! The lent account needs `CREATE USER`, `PROCESS`, `CONNECTION ADMIN` (or `SUPER`)
//! to kill others' sessions, `SELECT` on `mysql.user`, and each privilege it grants
//! `WITH GRANT OPTION`.

use ebb_connector_sdk::mysql::{self, quote_ident, quote_string};
use ebb_connector_sdk::sql::{LoginOutcome, SqlError, Value};
use ebb_connector_sdk::{
    Capabilities, Connector, ConnectorInfo, Credential, Error, Grant, InventoryItem, Issued,
    Permission, Residue, ResidueKind, Verdict, config, export_connector, log,
};

struct MariaDb;

const ACTIONS: [(&str, &str); 4] = [
    ("select", "read rows of the table"),
    ("insert", "add rows to the table"),
    ("update", "change rows of the table"),
    ("delete", "remove rows of the table"),
];

/// The account's host part: any client address (the grant, not the address, is
/// what is being limited).
const HOST: &str = "%";

fn connection() -> String {
    config::get_or("connection", "main")
}

/// The account name for a grant: `ebb_` and the lower-cased id. Ebb's ids are
/// ULIDs (26 characters), within MySQL's 32; MariaDB allows 80.
fn user_name(grant_id: &str) -> Result<String, Error> {
    if grant_id.is_empty()
        || grant_id.len() > 76
        || !grant_id.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(Error::Invalid(format!(
            "grant id `{grant_id}` cannot name a MySQL account (1-76 letters or digits)"
        )));
    }
    Ok(format!("ebb_{}", grant_id.to_ascii_lowercase()))
}

fn account(user: &str) -> Result<String, Error> {
    Ok(format!("{}@{}", quote_string(user)?, quote_string(HOST)?))
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
}

/// `(privilege, database, table)` for each permission, or why not.
fn checked(permissions: &[Permission]) -> Result<Vec<(String, String, String)>, Error> {
    if permissions.is_empty() {
        return Err(Error::Invalid(
            "a grant needs at least one permission".into(),
        ));
    }
    let allowed = config::list("allowed-resources", "");
    permissions
        .iter()
        .map(|p| {
            let action = p.action.to_ascii_lowercase();
            if !ACTIONS.iter().any(|(a, _)| *a == action) {
                return Err(Error::Invalid(format!(
                    "unknown action `{}`; this connector grants select, insert, update, delete",
                    p.action
                )));
            }
            let resource = p.resource.trim();
            let Some((db, table)) = resource.split_once('.') else {
                return Err(Error::Invalid(format!(
                    "`{resource}` is not `database.table`"
                )));
            };
            if !is_identifier(db) || !is_identifier(table) {
                return Err(Error::Invalid(format!(
                    "`{resource}` is not `database.table` (letters, digits, `_`, `$`)"
                )));
            }
            let within = allowed.iter().any(|a| match a.split_once('.') {
                Some((adb, "*")) => adb == db,
                Some(_) => a == resource,
                None => false,
            });
            if !within {
                return Err(Error::Invalid(format!(
                    "`{resource}` is not in this connector's allowed-resources"
                )));
            }
            Ok((action, db.to_owned(), table.to_owned()))
        })
        .collect()
}

fn execute(statement: &str) -> Result<u64, Error> {
    mysql::execute(&connection(), statement, &[]).map_err(mysql::classify)
}

/// The ids of the connections `user` has open.
fn sessions(user: &str) -> Result<Vec<i64>, Error> {
    let rows = mysql::query(
        &connection(),
        "SELECT id FROM information_schema.processlist WHERE user = ?",
        &[Value::Text(user.into())],
    )
    .map_err(mysql::classify)?;
    Ok(rows
        .rows
        .iter()
        .filter_map(|r| r.first())
        .filter_map(|v| match v {
            Value::Int(i) => Some(*i),
            Value::Text(t) => t.parse().ok(),
            _ => None,
        })
        .collect())
}

/// Kills every connection of `user`; one that ended meanwhile is no failure.
fn kill_sessions(user: &str) -> Result<usize, Error> {
    let mut killed = 0;
    for id in sessions(user)? {
        match mysql::execute(&connection(), &format!("KILL CONNECTION {id}"), &[]) {
            Ok(_) => killed += 1,
            // 1094: unknown thread id (it ended on its own).
            Err(SqlError::Rejected(db)) if db.code == "1094" => {}
            Err(e) => return Err(mysql::classify(e)),
        }
    }
    Ok(killed)
}

fn event_name(user: &str) -> Option<String> {
    let db = config::get("lock-with-event-in")?;
    Some(format!(
        "{}.{}",
        quote_ident(&db),
        quote_ident(&format!("{user}_lock"))
    ))
}

impl Connector for MariaDb {
    fn describe() -> ConnectorInfo {
        let mut capabilities = Capabilities::REVOCABLE
            | Capabilities::TERMINATES_SESSIONS
            | Capabilities::CAN_VERIFY
            | Capabilities::CAN_VERIFY_ISSUED;
        if config::get("lock-with-event-in").is_some() {
            capabilities |= Capabilities::DOWNSTREAM_EXPIRY;
        }
        let mut info = ConnectorInfo::new(
            "mariadb",
            env!("CARGO_PKG_VERSION"),
            "MariaDB 10.4+ / MySQL 5.7+",
        )
        .with_description(
            "A per-grant account with exactly the requested table privileges; revoke \
             drops it and kills its sessions",
        )
        .with_capabilities(capabilities);
        for (name, description) in ACTIONS {
            info = info.with_action(name, description, "database.table");
        }
        info
    }

    fn validate(permissions: Vec<Permission>) -> Result<(), Error> {
        checked(&permissions).map(drop)
    }

    fn issue(grant: Grant) -> Result<Issued, Error> {
        let privileges = checked(&grant.permissions)?;
        let now = ebb_connector_sdk::now_ms();
        if grant.not_after <= now {
            return Err(Error::Invalid("the grant has already ended".into()));
        }
        let user = user_name(&grant.id)?;
        let account = account(&user)?;
        let password = ebb_connector_sdk::random::password(40)?;
        let days = (grant.not_after - now).div_ceil(86_400_000).max(1);
        // A retried issue finds the account and sets a new password (the earlier one
        // went with the lost reply).
        execute(&format!(
            "CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {} PASSWORD EXPIRE INTERVAL {days} DAY",
            quote_string(&password)?
        ))?;
        execute(&format!(
            "ALTER USER {account} IDENTIFIED BY {} PASSWORD EXPIRE INTERVAL {days} DAY",
            quote_string(&password)?
        ))?;
        for (privilege, db, table) in &privileges {
            execute(&format!(
                "GRANT {} ON {}.{} TO {account}",
                privilege.to_ascii_uppercase(),
                quote_ident(db),
                quote_ident(table)
            ))?;
        }
        if let Some(event) = event_name(&user) {
            execute(&format!(
                "CREATE EVENT IF NOT EXISTS {event} ON SCHEDULE AT FROM_UNIXTIME({}) \
                 ON COMPLETION NOT PRESERVE DO ALTER USER {account} ACCOUNT LOCK",
                grant.not_after.div_ceil(1000)
            ))?;
        }
        Ok(Issued::new(
            format!("user={user};host={HOST}"),
            Credential::new([("user", user.as_str()), ("password", password.as_str())]),
        )
        .expiring_at(grant.not_after))
    }

    fn revoke(grant: Grant, _: Option<String>, _: Option<Credential>) -> Result<(), Error> {
        let user = user_name(&grant.id)?;
        // No new logins first, then no live session: DROP USER leaves sessions running.
        execute(&format!("DROP USER IF EXISTS {}", account(&user)?))?;
        let killed = kill_sessions(&user)?;
        if let Some(event) = event_name(&user) {
            execute(&format!("DROP EVENT IF EXISTS {event}"))?;
        }
        log::info(&format!(
            "dropped account {user} for grant {}; killed {killed} session(s)",
            grant.id
        ));
        Ok(())
    }

    fn verify_revoked(
        grant: Grant,
        _handle: Option<String>,
        credential: Option<Credential>,
    ) -> Result<Verdict, Error> {
        let conn = connection();
        let user = user_name(&grant.id)?;
        let mut residue = Vec::new();
        let accounts = mysql::query(
            &conn,
            "SELECT host FROM mysql.user WHERE user = ?",
            &[Value::Text(user.clone())],
        )
        .map_err(mysql::classify)?;
        for row in &accounts.rows {
            let host = row.first().and_then(Value::as_str).unwrap_or("?");
            residue.push(Residue::new(
                ResidueKind::EntitlementPresent,
                format!("account '{user}'@'{host}' exists"),
            ));
        }
        let open = sessions(&user)?;
        if !open.is_empty() {
            residue.push(Residue::new(
                ResidueKind::SessionOpen,
                format!(
                    "{} session(s) of {user} running (ids {})",
                    open.len(),
                    open.iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if let Some(password) = credential.as_ref().and_then(|c| c.get("password"))
            && let LoginOutcome::Accepted =
                mysql::login_probe(&conn, &user, password).map_err(mysql::classify)?
        {
            residue.push(Residue::new(
                ResidueKind::CredentialAccepted,
                format!("{user} still logs in with the issued password"),
            ));
        }
        Ok(Verdict::from_residue(residue))
    }

    fn verify_issued(grant: Grant, _handle: String, credential: Credential) -> Result<(), Error> {
        let user = user_name(&grant.id)?;
        match mysql::login_probe(
            &connection(),
            &user,
            credential.get("password").unwrap_or_default(),
        )
        .map_err(mysql::classify)?
        {
            LoginOutcome::Accepted => Ok(()),
            LoginOutcome::Refused(why) => Err(Error::Unavailable(format!(
                "the new account cannot log in yet: {why}"
            ))),
        }
    }

    /// Every account named `ebb_…` but the connector's own.
    fn inventory() -> Result<Vec<InventoryItem>, Error> {
        let rows = mysql::query(
            &connection(),
            "SELECT user, host FROM mysql.user WHERE user LIKE 'ebb\\_%' \
             AND user <> SUBSTRING_INDEX(CURRENT_USER(), '@', 1) ORDER BY user",
            &[],
        )
        .map_err(mysql::classify)?;
        Ok(rows
            .rows
            .iter()
            .filter_map(|r| {
                let user = r.first().and_then(Value::as_str)?;
                let host = r.get(1).and_then(Value::as_str).unwrap_or(HOST);
                let id = user.strip_prefix("ebb_")?.to_ascii_uppercase();
                Some(InventoryItem::new(id, format!("account '{user}'@'{host}'")))
            })
            .collect())
    }
}

export_connector!(MariaDb);
