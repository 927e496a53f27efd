//! A throwaway OAuth 2.0 authorization server: oidc-provider (npm, installed by
//! `scripts/test-servers.sh`) run by `tests/servers/oidc/server.mjs` on a free
//! loopback port, state in memory. Clients: `ebb` (opaque tokens), `ebb-jwt`
//! (self-contained JWT access tokens) and `probe`, a resource server that
//! introspects tokens to judge them independently of the connector.

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The secret of the `ebb` and `ebb-jwt` clients.
pub const CLIENT_SECRET: &str = "oidc-test-client-secret-5f2a9c0e";
/// The secret of the `probe` client.
pub const PROBE_SECRET: &str = "oidc-test-probe-secret-81d3b7aa";

/// A running oidc-provider, stopped on drop.
#[derive(Debug)]
pub struct Oidc {
    child: Child,
    port: u16,
}

pub(crate) fn server_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../servers/oidc")
}

impl Oidc {
    /// Starts a server whose client-credentials tokens live `token_ttl_secs`.
    pub fn start(token_ttl_secs: u64) -> anyhow::Result<Self> {
        Self::start_with(token_ttl_secs, None)
    }

    /// Starts a server that also knows Ebb's web console as client `ebb-console`
    /// (secret [`CLIENT_SECRET`]) redirecting to `redirect_uri`, and lets people
    /// sign in on its login page: `alice` (groups `ebb-approvers`, `ebb-operators`),
    /// `bob` (`ebb-approvers`), `carol` (`ebb-requesters`), `dave` (`ebb-auditors`).
    pub fn start_for_console(redirect_uri: &str) -> anyhow::Result<Self> {
        Self::start_with(300, Some(redirect_uri))
    }

    fn start_with(token_ttl_secs: u64, console_redirect: Option<&str>) -> anyhow::Result<Self> {
        let dir = server_dir();
        if !dir.join("node_modules/oidc-provider").is_dir() {
            bail!("oidc-provider is not installed; run scripts/test-servers.sh");
        }
        let port = crate::free_port()?;
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(&dir)
            .env("OIDC_PORT", port.to_string())
            .env("OIDC_CLIENT_SECRET", CLIENT_SECRET)
            .env("OIDC_PROBE_SECRET", PROBE_SECRET)
            .env("OIDC_TOKEN_TTL", token_ttl_secs.to_string())
            .env("OIDC_CONSOLE_REDIRECT", console_redirect.unwrap_or(""))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("node is not installed; run scripts/setup.sh")?;
        let stdout = child.stdout.take().context("no stdout")?;
        // Dropped (and so stopped) on any early return below.
        let server = Self { child, port };
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        // Keep draining: a closed pipe would kill the server at its next message.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        if !line.starts_with("ready") {
            bail!("oidc-provider did not start: {line}");
        }
        if !crate::wait_for_port(port, Duration::from_secs(10)) {
            bail!("oidc-provider does not listen on port {port}");
        }
        Ok(server)
    }

    /// `http://127.0.0.1:<port>`, the origin to allow.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The URL of `path` on the server (`/token`, `/token/revocation`, ...).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }

    /// Introspects `token` as the `probe` resource server (RFC 7662).
    pub async fn introspect(&self, token: &str) -> anyhow::Result<serde_json::Value> {
        let response = reqwest::Client::new()
            .post(self.url("/token/introspection"))
            .basic_auth("probe", Some(PROBE_SECRET))
            .form(&[("token", token)])
            .send()
            .await?;
        Ok(response.json().await?)
    }

    /// Whether `token` is active and carries `scope`, as a resource server sees it.
    pub async fn allows(&self, token: &str, scope: &str) -> anyhow::Result<bool> {
        let answer = self.introspect(token).await?;
        if let Some(error) = answer.get("error") {
            bail!("introspection failed: {error}");
        }
        Ok(answer["active"].as_bool() == Some(true)
            && answer["scope"]
                .as_str()
                .is_some_and(|s| s.split(' ').any(|x| x == scope)))
    }
}

impl Drop for Oidc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
