//! JIT access to RabbitMQ: a user per grant with exactly the granted virtual-host
//! permissions, over the management HTTP API through `wasi:http`.
//!
//! A permission is `configure`, `write` or `read` on `<vhost>/<name>`, where `name`
//! is a queue or exchange name or a `prefix*` pattern (letters, digits, `._:-`).
//! The grant's permissions on one vhost become that user's three regular
//! expressions there (`^(?:orders\.in|orders\.out)$`, `^$` for none).
//!
//! `revoke` deletes the user and closes every connection it has open: deleting a
//! user stops new logins, and the connections are closed explicitly so no session
//! outlives it. `verify-revoked` asks the broker, never the connector's memory: the
//! user, its permissions, its connections, and whether the issued password still
//! authenticates (the management API answers "Not management user" to a valid
//! login without the management tag and "Login failed" to a bad one). RabbitMQ
//! has no expiry for users or passwords: the connector does not claim
//! `downstream-expiry`, and the host's scheduler is what ends a grant on time.
//!
//! The broker closes a deleted user's connections itself; the management API
//! lists connections from statistics that lag by `collect_statistics_interval`
//! (5 s by default), so give this connector a `propagation-delay-ms` of at least
//! that: `verify-revoked` then sees a connection opened just before the revoke.
//!
//! The operator's administrator credentials stay in the host, which adds them to
//! requests for the API's origin (`[connectors.<name>.http.basic-auth."<origin>"]`);
//! the connector's own probes carry the grantee's credentials instead. Settings
//! (`[connectors.<name>.config]`):
//! - `api`: the management API's base URL, e.g. `http://127.0.0.1:15672`.
//! - `allowed-vhosts`: comma-separated vhosts (or `prefix*`) a grant may name.
//! - `allowed-names`: comma-separated names (or `prefix*`) a grant may name.
//!   Nothing is allowed until both are set.

use base64::Engine as _;
use ebb_connector_sdk::http::{Request, Response};
use ebb_connector_sdk::{
    Capabilities, Connector, ConnectorInfo, Credential, Error, Grant, InventoryItem, Issued,
    Permission, Residue, ResidueKind, Verdict, config, export_connector, log,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;

struct RabbitMq;

const ACTIONS: [(&str, &str); 3] = [
    (
        "configure",
        "declare and delete the named queues or exchanges",
    ),
    (
        "write",
        "publish to the named exchanges, bind to the named queues",
    ),
    (
        "read",
        "consume from the named queues, bind from the named exchanges",
    ),
];

/// The user a grant gets: `ebb_` and the grant id, lower-cased.
fn user_name(grant_id: &str) -> Result<String, Error> {
    if grant_id.is_empty()
        || grant_id.len() > 100
        || !grant_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(Error::Invalid(format!(
            "grant id `{grant_id}` cannot name a RabbitMQ user"
        )));
    }
    Ok(format!("ebb_{}", grant_id.to_ascii_lowercase()))
}

/// One vhost's three permission expressions.
#[derive(Default)]
struct VhostRules {
    configure: Vec<String>,
    write: Vec<String>,
    read: Vec<String>,
}

impl VhostRules {
    fn expression(names: &[String]) -> String {
        if names.is_empty() {
            return "^$".into();
        }
        let alternatives: Vec<String> = names
            .iter()
            .map(|n| match n.strip_suffix('*') {
                Some(prefix) => format!("{}.*", regex_escape(prefix)),
                None => regex_escape(n),
            })
            .collect();
        format!("^(?:{})$", alternatives.join("|"))
    }

    fn body(&self) -> Value {
        json!({
            "configure": Self::expression(&self.configure),
            "write": Self::expression(&self.write),
            "read": Self::expression(&self.read),
        })
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The grant's permissions by vhost, or why they cannot be granted.
fn rules(permissions: &[Permission]) -> Result<BTreeMap<String, VhostRules>, Error> {
    if permissions.is_empty() {
        return Err(Error::Invalid(
            "a grant needs at least one permission".into(),
        ));
    }
    let vhosts = config::list("allowed-vhosts", "");
    let names = config::list("allowed-names", "");
    let mut by_vhost: BTreeMap<String, VhostRules> = BTreeMap::new();
    for p in permissions {
        let action = p.action.to_ascii_lowercase();
        if !ACTIONS.iter().any(|(a, _)| *a == action) {
            return Err(Error::Invalid(format!(
                "unknown action `{}`; this connector grants configure, write, read",
                p.action
            )));
        }
        let Some((vhost, name)) = p.resource.trim().rsplit_once('/') else {
            return Err(Error::Invalid(format!(
                "`{}` is not `<vhost>/<name>`",
                p.resource
            )));
        };
        let vhost = if vhost.is_empty() { "/" } else { vhost };
        let plain = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        };
        if !plain(name.strip_suffix('*').unwrap_or(name)) && name != "*" {
            return Err(Error::Invalid(format!(
                "`{name}` is not a name or `prefix*` (letters, digits, `._:-`)"
            )));
        }
        if !vhosts.iter().any(|a| config::within(vhost, a)) {
            return Err(Error::Invalid(format!(
                "vhost `{vhost}` is not in this connector's allowed-vhosts"
            )));
        }
        if !names.iter().any(|a| within_pattern(name, a)) {
            return Err(Error::Invalid(format!(
                "`{name}` is not within this connector's allowed-names"
            )));
        }
        let rules = by_vhost.entry(vhost.to_owned()).or_default();
        let list = match action.as_str() {
            "configure" => &mut rules.configure,
            "write" => &mut rules.write,
            _ => &mut rules.read,
        };
        if !list.iter().any(|n| n == name) {
            list.push(name.to_owned());
        }
    }
    Ok(by_vhost)
}

/// Whether the name or pattern `name` stays within `allowed`: a `prefix*` request
/// must not reach past an allowed prefix.
fn within_pattern(name: &str, allowed: &str) -> bool {
    match (name.strip_suffix('*'), allowed.strip_suffix('*')) {
        (Some(prefix), Some(allowed)) => prefix.starts_with(allowed),
        (Some(_), None) => false,
        (None, _) => config::within(name, allowed),
    }
}

/// Percent-encodes one path segment (a vhost is often `/`).
fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn api(path: &str) -> Result<String, Error> {
    let base = config::require("api")?;
    Ok(format!("{}/api/{path}", base.trim_end_matches('/')))
}

/// The broker's answer to a failed call, as the contract's error.
fn failure(what: &str, response: &Response) -> Error {
    let message = format!("{what}: HTTP {} {}", response.status, response.text());
    match response.status {
        401 | 403 => Error::Denied(message),
        400 => Error::Invalid(message),
        s if s >= 500 => Error::Unavailable(message),
        _ => Error::Internal(message),
    }
}

/// Sends a request with the operator's credentials (added by the host) and
/// returns the response when its status is one of `ok`.
fn call(request: Request, what: &str, ok: &[u16]) -> Result<Response, Error> {
    let response = request.header("accept", "application/json").send()?;
    if ok.contains(&response.status) {
        Ok(response)
    } else {
        Err(failure(what, &response))
    }
}

fn put_json(path: &str, body: &Value, what: &str) -> Result<(), Error> {
    call(
        Request::put(&api(path)?)
            .header("content-type", "application/json")
            .body(body.to_string()),
        what,
        &[200, 201, 204],
    )
    .map(drop)
}

fn user_exists(user: &str) -> Result<bool, Error> {
    let r = call(
        Request::get(&api(&format!("users/{}", segment(user)))?),
        "reading the user",
        &[200, 404],
    )?;
    Ok(r.status == 200)
}

/// The names of the connections `user` has open.
fn connections(user: &str) -> Result<Vec<String>, Error> {
    let r = call(
        Request::get(&api("connections?columns=name,user")?),
        "listing connections",
        &[200],
    )?;
    let all: Value = serde_json::from_slice(&r.body)
        .map_err(|e| Error::Internal(format!("connection list: {e}")))?;
    Ok(all
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["user"] == user)
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect())
}

/// Whether `user`/`password` still authenticates. A valid login without the
/// management tag is refused as "Not management user", a bad one as "Login failed".
fn authenticates(user: &str, password: &str) -> Result<bool, Error> {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let response = Request::get(&api("whoami")?)
        .header("authorization", format!("Basic {basic}"))
        .send()?;
    match response.status {
        200 => Ok(true),
        401 => {
            let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
            Ok(body["reason"]
                .as_str()
                .is_some_and(|r| r.contains("Not management user")))
        }
        _ => Err(failure("probing the login", &response)),
    }
}

impl Connector for RabbitMq {
    fn describe() -> ConnectorInfo {
        let mut info = ConnectorInfo::new("rabbitmq", env!("CARGO_PKG_VERSION"), "RabbitMQ 3.8+")
            .with_description(
                "A per-grant user with exactly the requested vhost permissions; revoke \
                 deletes it and closes its connections",
            )
            .with_capabilities(
                Capabilities::REVOCABLE
                    | Capabilities::TERMINATES_SESSIONS
                    | Capabilities::CAN_VERIFY
                    | Capabilities::CAN_VERIFY_ISSUED,
            );
        for (name, description) in ACTIONS {
            info = info.with_action(name, description, "<vhost>/<name or prefix*>");
        }
        info
    }

    fn validate(permissions: Vec<Permission>) -> Result<(), Error> {
        rules(&permissions).map(drop)
    }

    fn issue(grant: Grant) -> Result<Issued, Error> {
        let rules = rules(&grant.permissions)?;
        let user = user_name(&grant.id)?;
        let password = ebb_connector_sdk::random::password(40)?;
        // PUT replaces: a retried issue sets a new password and the same rules.
        put_json(
            &format!("users/{}", segment(&user)),
            &json!({ "password": password, "tags": "" }),
            "creating the user",
        )?;
        for (vhost, rules) in &rules {
            put_json(
                &format!("permissions/{}/{}", segment(vhost), segment(&user)),
                &rules.body(),
                "setting the user's permissions",
            )?;
        }
        Ok(Issued::new(
            format!("user={user}"),
            Credential::new([("user", user.as_str()), ("password", password.as_str())]),
        ))
    }

    fn revoke(grant: Grant, _: Option<String>, _: Option<Credential>) -> Result<(), Error> {
        let user = user_name(&grant.id)?;
        // No new logins first, then no live connection.
        call(
            Request::delete(&api(&format!("users/{}", segment(&user)))?),
            "deleting the user",
            &[200, 204, 404],
        )?;
        let mut closed = 0;
        for name in connections(&user)? {
            call(
                Request::delete(&api(&format!("connections/{}", segment(&name)))?)
                    .header("x-reason", "Ebb grant revoked"),
                "closing a connection",
                &[200, 204, 404],
            )?;
            closed += 1;
        }
        log::info(&format!(
            "deleted user {user} for grant {}; closed {closed} connection(s)",
            grant.id
        ));
        Ok(())
    }

    fn verify_revoked(
        grant: Grant,
        _handle: Option<String>,
        credential: Option<Credential>,
    ) -> Result<Verdict, Error> {
        let user = user_name(&grant.id)?;
        let mut residue = Vec::new();
        if user_exists(&user)? {
            residue.push(Residue::new(
                ResidueKind::EntitlementPresent,
                format!("user {user} exists"),
            ));
        }
        let open = connections(&user)?;
        if !open.is_empty() {
            residue.push(Residue::new(
                ResidueKind::SessionOpen,
                format!(
                    "{} connection(s) of {user} open: {}",
                    open.len(),
                    open.join(", ")
                ),
            ));
        }
        if let Some(password) = credential.as_ref().and_then(|c| c.get("password"))
            && authenticates(&user, password)?
        {
            residue.push(Residue::new(
                ResidueKind::CredentialAccepted,
                format!("the issued password of {user} still authenticates"),
            ));
        }
        Ok(Verdict::from_residue(residue))
    }

    fn verify_issued(grant: Grant, _handle: String, credential: Credential) -> Result<(), Error> {
        let user = user_name(&grant.id)?;
        match authenticates(&user, credential.get("password").unwrap_or_default())? {
            true => Ok(()),
            false => Err(Error::Unavailable(
                "the new user cannot authenticate yet".into(),
            )),
        }
    }

    /// Every user named `ebb_…`.
    fn inventory() -> Result<Vec<InventoryItem>, Error> {
        let r = call(
            Request::get(&api("users?columns=name")?),
            "listing users",
            &[200],
        )?;
        let users: Value = serde_json::from_slice(&r.body)
            .map_err(|e| Error::Internal(format!("user list: {e}")))?;
        Ok(users
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u["name"].as_str())
            .filter_map(|name| {
                let id = name.strip_prefix("ebb_")?.to_ascii_uppercase();
                Some(InventoryItem::new(id, format!("user {name}")))
            })
            .collect())
    }
}

export_connector!(RabbitMq);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_match_exactly_the_names() {
        assert_eq!(VhostRules::expression(&[]), "^$");
        assert_eq!(
            VhostRules::expression(&["orders.in".into(), "jobs:*".into()]),
            "^(?:orders\\.in|jobs\\:.*)$"
        );
    }

    #[test]
    fn vhosts_are_one_path_segment() {
        assert_eq!(segment("/"), "%2F");
        assert_eq!(segment("ebb_01j"), "ebb_01j");
    }

    #[test]
    fn patterns_stay_within_their_allowance() {
        assert!(within_pattern("jobs:*", "jobs:*"));
        assert!(within_pattern("jobs:a*", "jobs:*"));
        assert!(!within_pattern("jobs*", "jobs:*"));
        assert!(!within_pattern("jobs:*", "jobs:a"));
        assert!(within_pattern("jobs:a", "jobs:*"));
    }
}
