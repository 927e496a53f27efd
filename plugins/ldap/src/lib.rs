//! JIT group membership in an LDAP directory: "add this service account to
//! `cn=db-admins`" for one task, through the host's `ldap` capability.
//!
//! A permission is `member` on a group's DN, one of the operator's
//! `allowed-groups`. The account is the subject's, mapped by the operator
//! (`account:<subject id> = "<dn>"`): the connector never invents a DN from what a
//! requester asserts. `issue` adds the account to each group's `member`; the
//! credential is the account's own (nothing new is handed out, so the credential
//! names only the DN). `revoke` removes those values.
//!
//! `verify-revoked` asks the directory for the *effective* membership, not the one
//! value `revoke` removed: a direct `member` value, or a path through nested groups
//! (the account is in `cn=oncall`, which is itself a member of the target group) —
//! either is residue, named with the path and the step that removes it. A nested
//! path is access the grant did not create but its removal does not end: it is
//! also what `standing-access` reports, so policy can refuse a grant that reduces
//! nothing. Groups are searched under `groups-base`, at most 10 levels deep.
//!
//! Capabilities: LDAP has no expiry for a group value, so no `downstream-expiry`;
//! a membership is checked by the server on every operation, so removing it
//! takes effect at once (`terminates-sessions`: there is no session of the grant's
//! own to end). If the account already was a direct member, `issue` treats the
//! value as its own (an `issue` retried after a lost reply looks the same), and
//! `revoke` removes it: the safe direction; request-time `standing-access`
//! reports such a membership first.
//!
//! The account's own view: with `probe-entry` (an entry only the allowed groups'
//! effective members may read) and the account's password lent as the secret
//! `account-password:<subject id>`, `verify-revoked` also binds as the account and
//! tries to read that entry — access by any path the directory's ACLs allow, nested
//! groups or not, is residue while it works. The password enters the sandbox for
//! the call (the `secrets` trade-off); without it, effective membership is what is
//! checked.
//!
//! Settings (`[connectors.<name>.config]`): `connection` (default `main`),
//! `groups-base`, `allowed-groups` (`;`-separated DNs: DNs contain commas),
//! `account:<subject id>`, and `probe-entry`.

use ebb_connector_sdk::ldap::{self, BindOutcome, LdapFailure, Modification, ModifyOp, Scope};
use ebb_connector_sdk::{
    Capabilities, Connector, ConnectorInfo, Credential, Error, Grant, Issued, Permission, Residue,
    ResidueKind, Subject, Verdict, config, export_connector, log, secrets,
};
use std::collections::{BTreeSet, VecDeque};

struct LdapGroups;

/// How deep nested groups are followed.
const MAX_DEPTH: usize = 10;

fn connection() -> String {
    config::get_or("connection", "main")
}

/// A DN compared as LDAP compares them here: case-insensitive, spaces around `,`
/// and `=` dropped.
fn normal(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| rdn.split('=').map(str::trim).collect::<Vec<_>>().join("="))
        .collect::<Vec<_>>()
        .join(",")
        .to_ascii_lowercase()
}

fn allowed_groups() -> Vec<String> {
    config::get_or("allowed-groups", "")
        .split(';')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The group DNs the permissions name, each allowed.
fn groups(permissions: &[Permission]) -> Result<Vec<String>, Error> {
    if permissions.is_empty() {
        return Err(Error::Invalid(
            "a grant needs at least one permission".into(),
        ));
    }
    let allowed = allowed_groups();
    let mut out = Vec::new();
    for p in permissions {
        if p.action != "member" {
            return Err(Error::Invalid(format!(
                "unknown action `{}`; this connector grants `member`",
                p.action
            )));
        }
        let Some(group) = allowed.iter().find(|g| normal(g) == normal(&p.resource)) else {
            return Err(Error::Invalid(format!(
                "`{}` is not one of this connector's allowed-groups",
                p.resource
            )));
        };
        if !out.contains(group) {
            out.push(group.clone());
        }
    }
    Ok(out)
}

/// The account DN the operator mapped to `subject`.
fn account(subject: &Subject) -> Result<String, Error> {
    config::get(&format!("account:{}", subject.id)).ok_or_else(|| {
        Error::Invalid(format!(
            "no account is mapped to subject `{}` (config `account:{}`)",
            subject.id, subject.id
        ))
    })
}

/// Whether `member` is a direct value of `group`'s `member`.
fn direct(group: &str, member: &str) -> Result<bool, Error> {
    let found = ldap::search(
        &connection(),
        group,
        Scope::Base,
        &format!("(member={})", ldap::escape(member)),
        &[],
    )?;
    Ok(!found.is_empty())
}

/// The groups under `groups-base` that list `dn` as a member.
fn parents(dn: &str) -> Result<Vec<String>, Error> {
    let base = config::require("groups-base")?;
    Ok(ldap::search(
        &connection(),
        &base,
        Scope::Subtree,
        &format!("(member={})", ldap::escape(dn)),
        &[],
    )?
    .into_iter()
    .map(|e| e.dn)
    .collect())
}

/// Every path from `account` up to `group` through nested groups (each path is
/// the chain of intermediate groups, empty for a direct membership).
fn paths(account: &str, group: &str) -> Result<Vec<Vec<String>>, Error> {
    let target = normal(group);
    let mut found = Vec::new();
    let mut queue: VecDeque<Vec<String>> = VecDeque::from([Vec::new()]);
    let mut seen = BTreeSet::from([normal(account)]);
    while let Some(path) = queue.pop_front() {
        if path.len() > MAX_DEPTH {
            continue;
        }
        let from = path.last().map_or(account, String::as_str);
        for parent in parents(from)? {
            if normal(&parent) == target {
                found.push(path.clone());
            } else if seen.insert(normal(&parent)) {
                let mut longer = path.clone();
                longer.push(parent);
                queue.push_back(longer);
            }
        }
    }
    Ok(found)
}

/// The residue of `account`'s effective membership in `group`.
fn membership(account: &str, group: &str) -> Result<Vec<Residue>, Error> {
    Ok(paths(account, group)?
        .into_iter()
        .map(|path| match path.first() {
            None => Residue::new(
                ResidueKind::EntitlementPresent,
                format!("{account} is a member of {group}"),
            )
            .at(group)
            .remedy(format!("remove the value {account} from member of {group}")),
            Some(first) => Residue::new(
                ResidueKind::EntitlementPresent,
                format!(
                    "{account} is an effective member of {group} through nested group(s) {}",
                    path.join(" → ")
                ),
            )
            .at(group)
            .remedy(format!(
                "remove {account} from {first}, or {} from {group}",
                path.last().map_or(first.as_str(), String::as_str)
            )),
        })
        .collect())
}

/// With `probe-entry` and the account's password lent: whether the account still
/// binds and reads the entry only the groups' members may read.
fn still_reads(subject: &Subject, account: &str) -> Result<Option<Residue>, Error> {
    let Some(entry) = config::get("probe-entry") else {
        return Ok(None);
    };
    let Some(password) = secrets::get(&format!("account-password:{}", subject.id)) else {
        return Ok(None);
    };
    Ok(
        match ldap::bind_probe(&connection(), account, &password, Some(&entry))? {
            BindOutcome::Accepted(Some(true)) => Some(
                Residue::new(
                    ResidueKind::EntitlementPresent,
                    format!("{account} still binds and reads {entry}"),
                )
                .at(entry),
            ),
            BindOutcome::Accepted(_) | BindOutcome::Refused(_) => None,
        },
    )
}

fn change(op: ModifyOp, account: &str) -> Modification {
    Modification {
        op,
        attribute: "member".into(),
        values: vec![account.to_owned()],
    }
}

impl Connector for LdapGroups {
    fn describe() -> ConnectorInfo {
        ConnectorInfo::new("ldap", env!("CARGO_PKG_VERSION"), "LDAP v3 (groupOfNames)")
            .with_description(
                "Adds the subject's account to a group for the grant; revoke removes it; \
                 verify checks effective membership through nested groups",
            )
            .with_action(
                "member",
                "membership of the group",
                "a group DN from allowed-groups",
            )
            .with_capabilities(
                Capabilities::REVOCABLE
                    | Capabilities::TERMINATES_SESSIONS
                    | Capabilities::CAN_VERIFY
                    | Capabilities::CAN_VERIFY_ISSUED
                    | Capabilities::REPORTS_STANDING_ACCESS,
            )
    }

    fn validate(permissions: Vec<Permission>) -> Result<(), Error> {
        groups(&permissions).map(drop)
    }

    fn issue(grant: Grant) -> Result<Issued, Error> {
        let groups = groups(&grant.permissions)?;
        let account = account(&grant.subject)?;
        for group in &groups {
            match ldap::modify(&connection(), group, &[change(ModifyOp::Add, &account)]) {
                // 20: the value exists (a retried issue, or a membership it had).
                Ok(()) | Err(LdapFailure::Rejected(ldap::LdapError { code: 20, .. })) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Issued::new(
            format!("account={account};groups={}", groups.len()),
            Credential::new([("account", account.as_str())]),
        ))
    }

    fn revoke(grant: Grant, _: Option<String>, _: Option<Credential>) -> Result<(), Error> {
        let groups = groups(&grant.permissions)?;
        let account = account(&grant.subject)?;
        for group in &groups {
            match ldap::modify(&connection(), group, &[change(ModifyOp::Delete, &account)]) {
                // 16: no such value (already removed); 32: no such group.
                Ok(()) | Err(LdapFailure::Rejected(ldap::LdapError { code: 16 | 32, .. })) => {}
                Err(e) => return Err(e.into()),
            }
        }
        log::info(&format!(
            "removed {account} from {} group(s) for grant {}",
            groups.len(),
            grant.id
        ));
        Ok(())
    }

    fn verify_revoked(
        grant: Grant,
        _handle: Option<String>,
        _credential: Option<Credential>,
    ) -> Result<Verdict, Error> {
        let account = account(&grant.subject)?;
        let mut residue = Vec::new();
        for group in groups(&grant.permissions)? {
            residue.extend(membership(&account, &group)?);
        }
        residue.extend(still_reads(&grant.subject, &account)?);
        Ok(Verdict::from_residue(residue))
    }

    fn verify_issued(grant: Grant, _handle: String, _: Credential) -> Result<(), Error> {
        let account = account(&grant.subject)?;
        for group in groups(&grant.permissions)? {
            if !direct(&group, &account)? {
                return Err(Error::Unavailable(format!(
                    "{account} is not yet listed in {group}"
                )));
            }
        }
        Ok(())
    }

    /// Effective memberships of the subject's account in the allowed groups.
    fn standing_access(subject: Subject) -> Result<Vec<Residue>, Error> {
        let Ok(account) = account(&subject) else {
            return Ok(Vec::new());
        };
        let mut residue = Vec::new();
        for group in allowed_groups() {
            residue.extend(membership(&account, &group)?);
        }
        Ok(residue)
    }
}

export_connector!(LdapGroups);

#[cfg(test)]
mod tests {
    #[test]
    fn dns_compare_without_case_or_spaces() {
        assert_eq!(
            super::normal("CN=DB-Admins, ou=Groups,dc=ebb"),
            "cn=db-admins,ou=groups,dc=ebb"
        );
    }
}
