//! A throwaway Redis server: `redis-server` from Debian's packages on a free
//! loopback port, no persistence, the `default` user protected by a password.
//! The `ebb` admin user the redis connector is lent is created with exactly what
//! the connector needs (`+acl +client|list +ping`), and a few keys are seeded.

use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `default` user's password.
pub const DEFAULT_PASSWORD: &str = "redis-test-default";
/// The `ebb` admin user's password.
pub const ADMIN_PASSWORD: &str = "redis-test-ebb-admin";

/// A running Redis server, stopped and deleted on drop.
#[derive(Debug)]
pub struct Redis {
    child: Child,
    dir: PathBuf,
    port: u16,
    /// The TLS port and the CA's PEM file, for a server started with TLS.
    tls: Option<(u16, PathBuf)>,
}

impl Redis {
    /// Starts a server and waits until it answers.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(false)
    }

    /// Starts a server that also listens with TLS, on [`Redis::tls_url`], with a
    /// certificate for `127.0.0.1` from a new CA ([`Redis::ca_file`]).
    pub fn start_tls() -> anyhow::Result<Self> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> anyhow::Result<Self> {
        let port = crate::free_port()?;
        let dir = std::env::temp_dir().join(format!("ebb-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut command = Command::new("redis-server");
        let tls = if tls {
            let ca = crate::tls::TestCa::new()?;
            let (cert, key) = ca.server_cert(&["127.0.0.1"])?;
            let (ca_file, cert_file, key_file) = (
                dir.join("ca.pem"),
                dir.join("server.crt"),
                dir.join("server.key"),
            );
            std::fs::write(&ca_file, ca.pem())?;
            std::fs::write(&cert_file, cert)?;
            std::fs::write(&key_file, key)?;
            let tls_port = crate::free_port()?;
            command
                .args([
                    "--tls-port",
                    &tls_port.to_string(),
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(&cert_file)
                .arg("--tls-key-file")
                .arg(&key_file)
                .arg("--tls-ca-cert-file")
                .arg(&ca_file);
            Some((tls_port, ca_file))
        } else {
            None
        };
        let child = command
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--requirepass", DEFAULT_PASSWORD, "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("redis-server is not installed; run scripts/setup.sh")?;
        let redis = Self {
            child,
            dir,
            port,
            tls,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.run(&["PING"]).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not start on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        redis.run(&[
            "ACL",
            "SETUSER",
            "ebb",
            "on",
            &format!(">{ADMIN_PASSWORD}"),
            "+acl",
            "+client|list",
            "+ping",
        ])?;
        for (k, v) in [("cache:a", "1"), ("cache:b", "2"), ("secret:x", "s")] {
            redis.run(&["SET", k, v])?;
        }
        Ok(redis)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of the `ebb` admin user, as the operator would lend it.
    pub fn admin_url(&self) -> String {
        format!("redis://ebb:{ADMIN_PASSWORD}@127.0.0.1:{}", self.port)
    }

    /// The `ebb` admin user's `rediss://` URL, for a server started with TLS.
    pub fn tls_url(&self) -> Option<String> {
        self.tls
            .as_ref()
            .map(|(port, _)| format!("rediss://ebb:{ADMIN_PASSWORD}@127.0.0.1:{port}"))
    }

    /// The CA that signed the TLS certificate, for a server started with TLS.
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().map(|(_, ca)| ca.as_path())
    }

    fn client(&self) -> anyhow::Result<redis::Connection> {
        let url = format!("redis://default:{DEFAULT_PASSWORD}@127.0.0.1:{}", self.port);
        Ok(redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(5))?)
    }

    /// Runs one command as the `default` user.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<redis::Value> {
        let mut cmd = redis::cmd(args.first().copied().unwrap_or("PING"));
        for a in &args[1..] {
            cmd.arg(*a);
        }
        Ok(cmd.query(&mut self.client()?)?)
    }

    /// The ACL users whose names start with `ebb_` (what grants left behind).
    pub fn ebb_users(&self) -> anyhow::Result<Vec<String>> {
        let users: Vec<String> = redis::cmd("ACL").arg("USERS").query(&mut self.client()?)?;
        Ok(users
            .into_iter()
            .filter(|u| u.starts_with("ebb_"))
            .collect())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
