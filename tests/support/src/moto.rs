//! A throwaway AWS IAM/STS: moto's server (PyPI `moto[server]`, installed by
//! `scripts/test-servers.sh`) on a free loopback port, with authentication turned
//! on after `tests/servers/aws/admin.py` created the `ebb-admin` user the aws-iam
//! connector is lent. Keys are judged with boto3 (`tests/servers/aws/probe.py`),
//! independently of the connector's own SigV4 code.

use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running moto server, stopped on drop.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    port: u16,
    admin: (String, String),
}

fn python() -> PathBuf {
    crate::require::repo().join(".ebb/moto/bin/python")
}

impl Moto {
    /// Starts a server, creates the connector's admin user and turns auth on.
    pub fn start() -> anyhow::Result<Self> {
        let bin = crate::require::repo().join(".ebb/moto/bin/moto_server");
        if !bin.exists() {
            bail!("moto is not installed; run scripts/test-servers.sh");
        }
        let port = crate::free_port()?;
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting moto_server")?;
        let mut moto = Self {
            child,
            port,
            admin: (String::new(), String::new()),
        };
        if !crate::wait_for_port(port, Duration::from_secs(20)) {
            bail!("moto_server did not start on port {port}");
        }
        let out = Command::new(python())
            .arg(crate::require::repo().join("tests/servers/aws/admin.py"))
            .arg(moto.endpoint())
            .output()?;
        if !out.status.success() {
            bail!(
                "preparing moto failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let key: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        moto.admin = (
            key["access_key_id"]
                .as_str()
                .context("no key id")?
                .to_owned(),
            key["secret_access_key"]
                .as_str()
                .context("no secret")?
                .to_owned(),
        );
        Ok(moto)
    }

    /// `http://127.0.0.1:<port>`: the IAM and STS endpoint, and the origin to allow.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The connector's admin key: (id, secret).
    pub fn admin_key(&self) -> (&str, &str) {
        (&self.admin.0, &self.admin.1)
    }

    /// Whether the key may perform `action`, asked with boto3.
    pub async fn allows(&self, key_id: &str, secret: &str, action: &str) -> anyhow::Result<bool> {
        let out = tokio::process::Command::new(python())
            .arg(crate::require::repo().join("tests/servers/aws/probe.py"))
            .arg(self.endpoint())
            .arg(action)
            .env("AWS_ACCESS_KEY_ID", key_id)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .output()
            .await?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(3) => Ok(false),
            _ => bail!(
                "the probe could not tell: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// The IAM users under `/ebb/` (what grants left behind), asked as the admin.
    pub async fn ebb_users(&self) -> anyhow::Result<Vec<String>> {
        let out = self
            .run_as(
                self.admin_key(),
                "print('\\n'.join(u['UserName'] for u in iam.list_users(PathPrefix='/ebb/')['Users']))",
            )
            .await?;
        Ok(out
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// Runs a Python snippet with boto3 as the key `(id, secret)`, with `iam` (an
    /// IAM client on this server) and `json` in scope; returns what it printed.
    pub async fn run_as(
        &self,
        (id, secret): (&str, &str),
        snippet: &str,
    ) -> anyhow::Result<String> {
        let script = format!(
            "import boto3,json,sys\n\
             iam=boto3.client('iam',endpoint_url=sys.argv[1],region_name='us-east-1')\n{snippet}\n"
        );
        let out = tokio::process::Command::new(python())
            .args(["-c", &script, &self.endpoint()])
            .env("AWS_ACCESS_KEY_ID", id)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .output()
            .await?;
        if !out.status.success() {
            bail!("boto3 failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
