//! JIT access to Redis through ACL users.
//!
//! `issue` creates an ACL user named from the grant id (`ebb_<id>`) with a random
//! password, allowed exactly the requested commands on exactly the requested key
//! patterns (`ACL SETUSER … reset on >password -@all +cmd ~pattern resetchannels`;
//! `reset` first, so a retried issue replaces everything). `revoke` deletes the user
//! with `ACL DELUSER`, which also disconnects its live connections (`ACL SETUSER
//! off` would not). `verify-revoked` asks Redis: does the user exist, is any
//! connection of it open, does the credential still authenticate?
//!
//! A permission is `<command>` on `<key pattern>`, e.g. `get` on `cache:*`.
//!
//! Settings (`[connectors.<name>.config]`):
//! - `connection`: the lent Redis connection (default `main`).
//! - `allowed-commands`: comma-separated commands a grant may name (default
//!   `get, mget, exists, ttl, hget, hgetall, lrange, smembers`).
//! - `allowed-keys`: comma-separated key patterns (`prefix*` or exact keys) a grant's
//!   patterns must fall within. Nothing is allowed until this is set.
//! - `allow-minting` (default `false`): whether a grant may name a command that
//!   creates access or changes the server for others (`ACL`, `CONFIG`, `MODULE`,
//!   `REPLICAOF`, `MIGRATE`, …). Without it such commands are not offered even if
//!   listed in `allowed-commands`, so an ACL user or other standing access cannot
//!   be made with a grant: what it leaves would outlive it.
//!
//! The lent connection's user needs `+acl +client|list` (and the host's
//! `allow-commands` must include `ACL` and `CLIENT`). Redis does not replicate ACL
//! changes: lend the connector each node it must manage.

use ebb_connector_sdk::redis::{self, AuthOutcome, Reply};
use ebb_connector_sdk::{
    Capabilities, Connector, ConnectorInfo, Credential, Error, Grant, InventoryItem, Issued,
    Permission, Residue, ResidueKind, Subject, Verdict, config, export_connector,
};

const DEFAULT_COMMANDS: &str = "get, mget, exists, ttl, hget, hgetall, lrange, smembers";

/// Commands whose effect outlives the grant: new users or passwords, server
/// configuration, loaded code, replication to or data moved to another server.
const MINTING: &[&str] = &[
    "acl",
    "config",
    "debug",
    "failover",
    "migrate",
    "module",
    "psync",
    "replconf",
    "replicaof",
    "slaveof",
    "sync",
];

fn minting_allowed() -> bool {
    config::get_or("allow-minting", "false").eq_ignore_ascii_case("true")
}

/// The commands a grant may name: `allowed-commands`, less the minting ones
/// unless the config allows them.
fn grantable() -> Vec<String> {
    let minting = minting_allowed();
    list("allowed-commands", DEFAULT_COMMANDS)
        .into_iter()
        .filter(|c| minting || !MINTING.contains(&c.as_str()))
        .collect()
}

struct Redis;

fn connection() -> String {
    config::get_or("connection", "main")
}

fn list(setting: &str, default: &str) -> Vec<String> {
    config::list(setting, default)
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect()
}

/// The user a grant gets: `ebb_` and the grant id, lowercased, from a safe alphabet.
fn user_name(grant_id: &str) -> Result<String, Error> {
    if grant_id.is_empty()
        || grant_id.len() > 100
        || !grant_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(Error::Invalid(format!(
            "grant id `{grant_id}` cannot name a Redis user"
        )));
    }
    Ok(format!("ebb_{}", grant_id.to_ascii_lowercase()))
}

/// `(command, key pattern)` for each permission, or why not.
fn checked(permissions: &[Permission]) -> Result<Vec<(String, String)>, Error> {
    if permissions.is_empty() {
        return Err(Error::Invalid(
            "a grant needs at least one permission".into(),
        ));
    }
    let commands = grantable();
    let keys = list("allowed-keys", "");
    permissions
        .iter()
        .map(|p| {
            let command = p.action.to_ascii_lowercase();
            if !minting_allowed() && MINTING.contains(&command.as_str()) {
                return Err(Error::Invalid(format!(
                    "`{command}` can create access that would outlive the grant; this \
                     connector does not allow-minting"
                )));
            }
            if !commands.contains(&command) {
                return Err(Error::Invalid(format!(
                    "unknown command `{}`; this connector grants {}",
                    p.action,
                    commands.join(", ")
                )));
            }
            let pattern = p.resource.trim();
            // Only plain globs: no ACL syntax (`%R~`, `&`, spaces) can ride along.
            if pattern.is_empty()
                || !pattern
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b":_-./*".contains(&b))
            {
                return Err(Error::Invalid(format!(
                    "`{}` is not a key pattern (use letters, digits, `:_-./` and `*`)",
                    p.resource
                )));
            }
            // A `*` other than at the end could reach past the allowed prefix.
            if pattern.trim_end_matches('*').contains('*') {
                return Err(Error::Invalid(format!(
                    "`{pattern}`: `*` only at the end of a key pattern"
                )));
            }
            if !keys.iter().any(|allowed| config::within(pattern, allowed)) {
                return Err(Error::Invalid(format!(
                    "`{pattern}` is not within this connector's allowed-keys"
                )));
            }
            Ok((command, pattern.to_owned()))
        })
        .collect()
}

/// Every ACL user's name.
fn acl_users(conn: &str) -> Result<Vec<String>, Error> {
    Ok(match redis::command(conn, &["ACL", "USERS"])? {
        Reply::Array(names) => names,
        _ => Vec::new(),
    })
}

/// Whether the grant may mint (it names `ACL` or another minting command).
fn grant_mints(grant: &Grant) -> bool {
    grant
        .permissions
        .iter()
        .any(|p| MINTING.contains(&p.action.to_ascii_lowercase().as_str()))
}

/// ACL users that exist now but not when the grant was issued (the handle's
/// `before=` list), other than Ebb's own: what a grant allowed to mint made.
fn minted_users(conn: &str, handle: Option<&str>) -> Result<Vec<Residue>, Error> {
    let Some(before) = handle.and_then(|h| h.split(';').find_map(|kv| kv.strip_prefix("before=")))
    else {
        return Ok(vec![
            Residue::new(
                ResidueKind::Other,
                "the grant could create ACL users, and the list of users at issue was lost with \
             issue's reply: nothing can tell which users it made",
            )
            .remedy("compare ACL USERS with the users you expect and ACL DELUSER the others"),
        ]);
    };
    let before: Vec<&str> = before.split(',').collect();
    Ok(acl_users(conn)?
        .into_iter()
        .filter(|u| !u.starts_with("ebb_") && !before.contains(&u.as_str()))
        .map(|u| {
            Residue::new(
                ResidueKind::DerivedCredential,
                format!("ACL user {u} was created while the grant was active"),
            )
            .remedy(format!("if it is not yours: ACL DELUSER {u}"))
        })
        .collect())
}

/// Whether the user still exists.
fn user_exists(conn: &str, user: &str) -> Result<bool, Error> {
    Ok(!matches!(
        redis::command(conn, &["ACL", "GETUSER", user])?,
        Reply::Nil
    ))
}

/// Open connections authenticated as the user.
fn sessions(conn: &str, user: &str) -> Result<usize, Error> {
    let needle = format!(" user={user} ");
    Ok(match redis::command(conn, &["CLIENT", "LIST"])? {
        Reply::Text(text) | Reply::Status(text) => text
            .lines()
            .filter(|l| format!(" {l} ").contains(&needle))
            .count(),
        _ => 0,
    })
}

impl Connector for Redis {
    fn describe() -> ConnectorInfo {
        let mut info = ConnectorInfo::new("redis", env!("CARGO_PKG_VERSION"), "redis")
            .with_description(
                "Per-grant Redis ACL users with exactly the granted commands and key patterns",
            );
        for command in grantable() {
            info = info.with_action(
                &command,
                &format!("run {} on the granted keys", command.to_ascii_uppercase()),
                "a key pattern within allowed-keys, e.g. cache:*",
            );
        }
        info.with_capabilities(
            Capabilities::REVOCABLE
                | Capabilities::TERMINATES_SESSIONS
                | Capabilities::CAN_VERIFY
                | Capabilities::CAN_VERIFY_ISSUED,
        )
    }

    fn validate(permissions: Vec<Permission>) -> Result<(), Error> {
        checked(&permissions).map(drop)
    }

    /// Every ACL user named `ebb_…`.
    fn inventory() -> Result<Vec<InventoryItem>, Error> {
        Ok(acl_users(&connection())?
            .into_iter()
            .filter_map(|u| {
                let id = u.strip_prefix("ebb_")?.to_ascii_uppercase();
                Some(InventoryItem::new(id, format!("ACL user {u}")))
            })
            .collect())
    }

    fn issue(grant: Grant) -> Result<Issued, Error> {
        let rules = checked(&grant.permissions)?;
        let conn = connection();
        // A grant that may mint keeps the users that existed before it, so that
        // verify-revoked can tell which ones it made (names are not secrets).
        let before = if grant_mints(&grant) {
            format!(";before={}", acl_users(&conn)?.join(","))
        } else {
            String::new()
        };
        let user = user_name(&grant.id)?;
        let password = ebb_connector_sdk::random::password(40)?;
        let secret = format!(">{password}");
        let mut args = vec![
            "ACL",
            "SETUSER",
            user.as_str(),
            "reset",
            "on",
            secret.as_str(),
            "-@all",
            "resetchannels",
        ];
        let rules: Vec<(String, String)> = rules
            .into_iter()
            .map(|(command, pattern)| (format!("+{command}"), format!("~{pattern}")))
            .collect();
        for (command, pattern) in &rules {
            args.push(command);
            args.push(pattern);
        }
        redis::command(&conn, &args)?;
        Ok(Issued::new(
            format!("user={user}{before}"),
            Credential::new([("user", user.as_str()), ("password", password.as_str())]),
        ))
    }

    fn revoke(grant: Grant, _: Option<String>, _: Option<Credential>) -> Result<(), Error> {
        let user = user_name(&grant.id)?;
        // Deleting a missing user answers 0: revoking twice is fine.
        redis::command(&connection(), &["ACL", "DELUSER", &user])?;
        Ok(())
    }

    fn verify_revoked(
        grant: Grant,
        handle: Option<String>,
        credential: Option<Credential>,
    ) -> Result<Verdict, Error> {
        let conn = connection();
        let user = user_name(&grant.id)?;
        let mut residue = Vec::new();
        if grant_mints(&grant) {
            residue.extend(minted_users(&conn, handle.as_deref())?);
        }
        if user_exists(&conn, &user)? {
            residue.push(Residue::new(
                ResidueKind::EntitlementPresent,
                format!("ACL user {user} still exists"),
            ));
        }
        let open = sessions(&conn, &user)?;
        if open > 0 {
            residue.push(Residue::new(
                ResidueKind::SessionOpen,
                format!("{open} connection(s) of {user} still open"),
            ));
        }
        if let Some(password) = credential.as_ref().and_then(|c| c.get("password"))
            && let AuthOutcome::Accepted = redis::auth_probe(&conn, &user, password)?
        {
            residue.push(Residue::new(
                ResidueKind::CredentialAccepted,
                format!("AUTH as {user} with the issued password still succeeds"),
            ));
        }
        Ok(Verdict::from_residue(residue))
    }

    fn verify_issued(grant: Grant, _handle: String, credential: Credential) -> Result<(), Error> {
        let user = user_name(&grant.id)?;
        let password = credential.get("password").unwrap_or_default();
        match redis::auth_probe(&connection(), &user, password)? {
            AuthOutcome::Accepted => Ok(()),
            AuthOutcome::Refused(why) => Err(Error::Unavailable(format!(
                "the new user cannot authenticate yet: {why}"
            ))),
        }
    }

    fn standing_access(_subject: Subject) -> Result<Vec<Residue>, Error> {
        Err(Error::Unsupported(
            "Redis ACL users carry no subject; standing access is not reported".into(),
        ))
    }
}

export_connector!(Redis);
