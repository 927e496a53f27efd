//! A throwaway MariaDB server: `mariadbd` from Debian's packages on a free loopback
//! port with its own data folder, the event scheduler on. The account the connector
//! is lent is `ebbadmin` with what the mariadb connector needs; database `shop`
//! holds `orders` and `payroll` with rows; database `ebb_events` is where the
//! connector may schedule its lock events.

use anyhow::{Context, bail};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The lent account's password.
pub const ADMIN_PASSWORD: &str = "mariadb-test-ebbadmin";

pub(crate) fn installed() -> bool {
    std::path::Path::new("/usr/sbin/mariadbd").exists()
        && std::path::Path::new("/usr/bin/mariadb-install-db").exists()
}

/// A running server, stopped and deleted on drop.
#[derive(Debug)]
pub struct MariaDb {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl MariaDb {
    /// Initialises a data folder, starts the server and waits until it answers.
    pub fn start() -> anyhow::Result<Self> {
        let port = crate::free_port()?;
        let dir = std::env::temp_dir().join(format!("ebb-mariadb-{port}"));
        std::fs::create_dir_all(&dir)?;
        let os_user = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?
            .trim()
            .to_owned();
        // A temporary folder of its own: concurrent installs sharing /tmp collide on
        // their bootstrap temporary tables (seen: 2 of 4 parallel installs failed).
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        let install = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--user={os_user}"))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .stdin(Stdio::null())
            .output()
            .context("mariadb-server is not installed; run scripts/setup.sh")?;
        if !install.status.success() {
            let out = String::from_utf8_lossy(&install.stdout);
            let err = String::from_utf8_lossy(&install.stderr);
            let tail: Vec<&str> = out.lines().chain(err.lines()).rev().take(8).collect();
            bail!(
                "mariadb-install-db failed: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .arg(format!("--user={os_user}"))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--event-scheduler=ON",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting mariadbd")?;
        let server = Self { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.sql("SELECT 1").is_err() {
            if Instant::now() > deadline {
                bail!("mariadbd did not start on port {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        server.sql(&format!(
            "CREATE DATABASE shop; CREATE DATABASE ebb_events; \
             CREATE TABLE shop.orders (id INT PRIMARY KEY, amount_cents INT); \
             INSERT INTO shop.orders VALUES (1, 1200), (2, 4500); \
             CREATE TABLE shop.payroll (name TEXT, salary INT); \
             INSERT INTO shop.payroll VALUES ('ceo', 1000000); \
             CREATE USER 'ebbadmin'@'%' IDENTIFIED BY '{ADMIN_PASSWORD}'; \
             GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO 'ebbadmin'@'%'; \
             GRANT SELECT ON mysql.* TO 'ebbadmin'@'%'; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON shop.* TO 'ebbadmin'@'%' WITH GRANT OPTION; \
             GRANT EVENT ON ebb_events.* TO 'ebbadmin'@'%';"
        ))?;
        Ok(server)
    }

    /// The lent account's URL, as the operator would lend it.
    pub fn admin_url(&self) -> String {
        format!("mysql://ebbadmin:{ADMIN_PASSWORD}@127.0.0.1:{}/", self.port)
    }

    /// A URL for `user` with `password` (for probes).
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("mysql://{user}:{password}@127.0.0.1:{}/", self.port)
    }

    /// Runs SQL as root over the server's socket; returns what it printed.
    pub fn sql(&self, sql: &str) -> anyhow::Result<String> {
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.dir.join("sock").display()))
            .args(["-uroot", "-N", "-B", "-e", sql])
            .output()?;
        if !out.status.success() {
            bail!("mariadb: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The accounts whose names start with `ebb_` (what grants left behind).
    pub fn ebb_accounts(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .sql("SELECT user FROM mysql.user WHERE user LIKE 'ebb\\_%' ORDER BY user")?
            .lines()
            .map(str::to_owned)
            .collect())
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        crate::kill_group(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
