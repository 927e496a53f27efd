//! `ebb:connector/ldap`: searches and modifications run by the host on LDAP
//! connections the operator configured (ldap3). The host holds the bind DN's
//! password; the connector names a connection.
//!
//! Each operation opens a connection, binds as the lent DN, runs, and unbinds:
//! grants touch a directory a handful of times, and a fresh bind never carries a
//! previous call's state. Every operation is bounded by the connection's
//! `timeout-ms`.
//!
//! TLS: an `ldaps://` URL, or `starttls = true` on `ldap://`, verifies the
//! server's certificate against the connection's `ca-file` (or the web PKI roots
//! without one). A password is never sent over plain `ldap://` to a host other
//! than loopback.

use super::CallState;
use crate::bindings::ldap::{
    Attribute, BindOutcome, Entry, Error, Host, LdapError, Modification, ModifyOp, Scope,
};
use crate::lend::{LdapConnectionConfig, Secret};
use ldap3::{LdapConnAsync, LdapConnSettings, Mod, SearchEntry};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroize;

/// The most entries one search may return to a connector.
const MAX_ENTRIES: usize = 10_000;

/// One named connection: where and as whom to bind.
pub(crate) struct LdapConnection {
    url: String,
    bind_dn: String,
    password: Secret,
    settings: LdapConnSettings,
    timeout: Duration,
}

impl std::fmt::Debug for LdapConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapConnection")
            .field("url", &self.url)
            .field("bind_dn", &self.bind_dn)
            .finish_non_exhaustive()
    }
}

impl LdapConnection {
    pub fn new(config: &LdapConnectionConfig) -> anyhow::Result<Self> {
        let url = config.url.clone();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| anyhow::anyhow!("the url is not an ldap:// or ldaps:// URL"))?;
        anyhow::ensure!(
            matches!(scheme, "ldap" | "ldaps"),
            "the url is not an ldap:// or ldaps:// URL"
        );
        let authority = rest.split('/').next().unwrap_or_default();
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => authority.split(':').next().unwrap_or_default(),
        };
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let tls = scheme == "ldaps" || config.starttls;
        anyhow::ensure!(
            tls || loopback,
            "ldap:// to {host} would send the bind password in clear: use ldaps:// or starttls = true"
        );
        let timeout = Duration::from_millis(config.timeout_ms);
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(timeout)
            .set_starttls(config.starttls);
        if tls {
            let roots =
                super::egress::tls_roots(config.ca_file.as_deref(), config.ca_file.is_none())?;
            settings = settings.set_config(Arc::new(super::egress::client_config(roots)?));
        }
        Ok(Self {
            url,
            bind_dn: config.bind_dn.clone(),
            password: config.resolve_password()?,
            settings,
            timeout,
        })
    }

    /// Connects and binds as `dn`; the driver task ends with the connection.
    async fn bind_as(
        &self,
        dn: &str,
        password: &str,
    ) -> Result<Result<ldap3::Ldap, String>, Error> {
        let (conn, mut ldap) = LdapConnAsync::with_settings(self.settings.clone(), &self.url)
            .await
            .map_err(|e| Error::Unavailable(format!("cannot connect: {e}")))?;
        ldap3::drive!(conn);
        ldap.with_timeout(self.timeout);
        let result = ldap.simple_bind(dn, password).await.map_err(unavailable)?;
        // 49: invalid credentials; 48: inappropriate authentication (an empty
        // password); 53: unwilling to perform (a locked account on some servers).
        match result.rc {
            0 => Ok(Ok(ldap)),
            48 | 49 | 53 => {
                let _ = ldap.unbind().await;
                Ok(Err(result.text))
            }
            rc => Err(Error::Rejected(LdapError {
                code: rc,
                message: result.text,
            })),
        }
    }

    async fn admin(&self) -> Result<ldap3::Ldap, Error> {
        match self.bind_as(&self.bind_dn, self.password.expose()).await? {
            Ok(ldap) => Ok(ldap),
            Err(why) => Err(Error::Rejected(LdapError {
                code: 49,
                message: format!("the lent bind DN was refused: {why}"),
            })),
        }
    }

    async fn search(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attributes: Vec<String>,
    ) -> Result<Vec<Entry>, Error> {
        let mut ldap = self.admin().await?;
        let scope = match scope {
            Scope::Base => ldap3::Scope::Base,
            Scope::OneLevel => ldap3::Scope::OneLevel,
            Scope::Subtree => ldap3::Scope::Subtree,
        };
        let attrs: Vec<&str> = if attributes.is_empty() {
            vec!["1.1"]
        } else {
            attributes.iter().map(String::as_str).collect()
        };
        let result = ldap
            .search(base, scope, filter, attrs)
            .await
            .map_err(unavailable)?;
        let _ = ldap.unbind().await;
        let (entries, done) = (result.0, result.1);
        // 32: no such object (the base does not exist) is an empty answer.
        if done.rc == 32 {
            return Ok(Vec::new());
        }
        if done.rc != 0 {
            return Err(Error::Rejected(LdapError {
                code: done.rc,
                message: done.text,
            }));
        }
        if entries.len() > MAX_ENTRIES {
            return Err(Error::Unavailable(format!(
                "the search returned {} entries, more than the limit of {MAX_ENTRIES}",
                entries.len()
            )));
        }
        Ok(entries
            .into_iter()
            .map(|e| {
                let e = SearchEntry::construct(e);
                let mut attributes: Vec<Attribute> = e
                    .attrs
                    .into_iter()
                    .map(|(name, values)| Attribute { name, values })
                    .collect();
                attributes.sort_by(|a, b| a.name.cmp(&b.name));
                Entry {
                    dn: e.dn,
                    attributes,
                }
            })
            .collect())
    }

    async fn modify(&self, dn: &str, changes: Vec<Modification>) -> Result<(), Error> {
        let mut ldap = self.admin().await?;
        let mods: Vec<Mod<String>> = changes
            .into_iter()
            .map(|m| {
                let values: HashSet<String> = m.values.into_iter().collect();
                match m.op {
                    ModifyOp::Add => Mod::Add(m.attribute, values),
                    ModifyOp::Delete => Mod::Delete(m.attribute, values),
                    ModifyOp::Replace => Mod::Replace(m.attribute, values),
                }
            })
            .collect();
        let result = ldap.modify(dn, mods).await.map_err(unavailable)?;
        let _ = ldap.unbind().await;
        match result.rc {
            0 => Ok(()),
            rc => Err(Error::Rejected(LdapError {
                code: rc,
                message: result.text,
            })),
        }
    }

    async fn bind_probe(
        &self,
        dn: &str,
        password: &str,
        read: Option<&str>,
    ) -> Result<BindOutcome, Error> {
        // An empty password is an unauthenticated bind that "succeeds": never a proof.
        if password.is_empty() {
            return Ok(BindOutcome::Refused(
                "an empty password proves nothing".into(),
            ));
        }
        match self.bind_as(dn, password).await? {
            Ok(mut ldap) => {
                let readable = match read {
                    None => None,
                    Some(entry) => {
                        let found = ldap
                            .search(entry, ldap3::Scope::Base, "(objectClass=*)", vec!["1.1"])
                            .await
                            .map_err(unavailable)?;
                        // 32: no such object — also what an ACL shows a reader it denies.
                        Some(found.1.rc == 0 && !found.0.is_empty())
                    }
                };
                let _ = ldap.unbind().await;
                Ok(BindOutcome::Accepted(readable))
            }
            Err(why) => Ok(BindOutcome::Refused(why)),
        }
    }
}

fn unavailable(e: ldap3::LdapError) -> Error {
    Error::Unavailable(e.to_string())
}

impl CallState {
    fn ldap(&self, name: &str) -> Result<&LdapConnection, Error> {
        self.lent.ldap.get(name).ok_or_else(|| {
            Error::UnknownConnection(format!(
                "no ldap connection named `{name}` is lent to connector `{}`",
                self.lent.name
            ))
        })
    }

    async fn bounded<T>(
        &mut self,
        connection: &str,
        op: impl AsyncFnOnce(&LdapConnection) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let conn = self.ldap(connection)?;
        match tokio::time::timeout(conn.timeout * 2, op(conn)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Unavailable(format!(
                "the LDAP operation took longer than {} ms",
                (conn.timeout * 2).as_millis()
            ))),
        }
    }
}

impl Host for CallState {
    async fn search(
        &mut self,
        connection: String,
        base: String,
        scope: Scope,
        filter: String,
        attributes: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Entry>, Error>> {
        Ok(self
            .bounded(&connection, async |c| {
                c.search(&base, scope, &filter, attributes).await
            })
            .await)
    }

    async fn modify(
        &mut self,
        connection: String,
        dn: String,
        changes: Vec<Modification>,
    ) -> wasmtime::Result<Result<(), Error>> {
        Ok(self
            .bounded(&connection, async |c| c.modify(&dn, changes).await)
            .await)
    }

    async fn bind_probe(
        &mut self,
        connection: String,
        dn: String,
        mut password: String,
        read: Option<String>,
    ) -> wasmtime::Result<Result<BindOutcome, Error>> {
        let result = self
            .bounded(&connection, async |c| {
                c.bind_probe(&dn, &password, read.as_deref()).await
            })
            .await;
        password.zeroize();
        Ok(result)
    }
}
