//! A throwaway PostgreSQL cluster: `initdb` into a temporary folder, started with
//! `pg_ctl` on a free loopback port with password (SCRAM) authentication over TCP, so
//! that a revoked role's login really fails. As root, the server runs as the
//! `postgres` user (PostgreSQL refuses to run as root).
//!
//! The cluster is seeded with:
//! - `ebb_admin` (password [`ADMIN_PASSWORD`]): `CREATEROLE`, `pg_signal_backend`, and
//!   every privilege on the `public` tables `WITH GRANT OPTION` — what the postgres
//!   connector's operator would configure;
//! - tables `public.invoices`, `public.customers` and `public.salaries` with rows;
//! - `svc_billing`, a base role with standing `select` on `public.customers`.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The superuser's password.
pub const SUPERUSER_PASSWORD: &str = "postgres-test-superuser";
/// `ebb_admin`'s password.
pub const ADMIN_PASSWORD: &str = "ebb-admin-test-password";

const SEED: &str = "
create role ebb_admin login createrole password 'ebb-admin-test-password';
grant pg_signal_backend to ebb_admin;
create table public.invoices (id int primary key, amount_cents int not null);
insert into public.invoices values (1, 1200), (2, 4500);
create table public.customers (id int primary key, name text not null);
insert into public.customers values (1, 'Ada'), (2, 'Grace');
create table public.salaries (id int primary key, cents int not null);
insert into public.salaries values (1, 99999);
grant all on all tables in schema public to ebb_admin with grant option;
create role svc_billing login password 'svc-billing-test';
grant select on public.customers to svc_billing;
";

/// A running PostgreSQL server, stopped and deleted on drop.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    /// `fsync` on (benchmarks of durable commits); off for tests, where a
    /// machine crash is not what is tested.
    durable: bool,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub(crate) fn find_bin() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("EBB_PG_BIN") {
        let dir = PathBuf::from(dir);
        if !dir.join("initdb").exists() {
            bail!("EBB_PG_BIN={} has no initdb", dir.display());
        }
        return Ok(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (no /usr/lib/postgresql); run scripts/setup.sh")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no PostgreSQL server binaries under /usr/lib/postgresql")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Postgres {
    /// Creates, starts and seeds a new cluster. Blocks for about a second.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(false)
    }

    /// [`Postgres::start`] with `fsync` on: commits are on disk when they return,
    /// as on a production server (for benchmarks).
    pub fn start_durable() -> anyhow::Result<Self> {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> anyhow::Result<Self> {
        let bin = find_bin()?;
        let dir = std::env::temp_dir().join(format!(
            "ebb-pg-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let as_postgres = is_root();
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD)?;
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir))?;
        }
        let pg = Self {
            bin,
            port: crate::free_port()?,
            dir,
            as_postgres,
            durable,
        };
        pg.run_pg(
            "initdb",
            &[
                "-D",
                &pg.data().to_string_lossy(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
                "--no-sync",
            ],
        )?;
        pg.start_server()?;
        pg.psql(SEED)?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn run_pg(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).current_dir(&self.dir);
        run(&mut cmd).with_context(|| format!("running {tool}"))
    }

    /// Starts the server (again, after [`Postgres::stop`]).
    pub fn start_server(&self) -> anyhow::Result<()> {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync={} -c max_connections=200",
            self.port,
            self.dir.display(),
            if self.durable { "on" } else { "off" },
        );
        // More server settings for a profiling run, e.g.
        // `-c shared_preload_libraries=pg_stat_statements`.
        if let Ok(extra) = std::env::var("EBB_PG_OPTIONS") {
            options.push(' ');
            options.push_str(&extra);
        }
        self.run_pg(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-o",
                &options,
                "-l",
                &self.dir.join("server.log").to_string_lossy(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        )
    }

    /// Turns TLS on with a certificate for `127.0.0.1` and `localhost` from a new
    /// CA, and accepts TCP clients only over TLS (`hostssl`). Returns the CA's
    /// PEM file, as an operator would give it to Ebb.
    pub fn require_tls(&self) -> anyhow::Result<PathBuf> {
        let ca = crate::tls::TestCa::new()?;
        let (cert, key) = ca.server_cert(&["127.0.0.1", "localhost"])?;
        let cert_file = self.data().join("ebb-server.crt");
        let key_file = self.data().join("ebb-server.key");
        std::fs::write(&cert_file, cert)?;
        std::fs::write(&key_file, key)?;
        std::fs::set_permissions(
            &key_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        if self.as_postgres {
            run(Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&cert_file)
                .arg(&key_file))?;
        }
        std::fs::write(
            self.data().join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )?;
        // One statement per call: ALTER SYSTEM does not run in a transaction.
        self.psql(&format!(
            "alter system set ssl_cert_file = '{}'",
            cert_file.display()
        ))?;
        self.psql(&format!(
            "alter system set ssl_key_file = '{}'",
            key_file.display()
        ))?;
        self.psql("alter system set ssl = on")?;
        self.psql("select pg_reload_conf()")?;
        let ca_file = self.dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem())?;
        Ok(ca_file)
    }

    /// A streaming-replication standby of this server, on a port of its own, that
    /// this server waits for on every commit (`synchronous_standby_names = '*'`):
    /// what the primary acknowledged, the standby has. Blocks until it streams.
    pub fn standby(&self) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "ebb-pg-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        if self.as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir))?;
        }
        let standby = Self {
            bin: self.bin.clone(),
            port: crate::free_port()?,
            dir,
            as_postgres: self.as_postgres,
            durable: self.durable,
        };
        standby.run_pg(
            "pg_basebackup",
            &[
                "-d",
                &format!(
                    "host=127.0.0.1 port={} user=postgres password={SUPERUSER_PASSWORD}",
                    self.port
                ),
                "-D",
                &standby.data().to_string_lossy(),
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ],
        )?;
        standby.start_server()?;
        self.psql("alter system set synchronous_standby_names = '*'")?;
        self.psql("select pg_reload_conf()")?;
        for _ in 0..300 {
            let state = self.psql("select sync_state from pg_stat_replication")?;
            if state.trim() == "sync" {
                return Ok(standby);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        bail!("the standby did not become synchronous")
    }

    /// Promotes this standby to primary (`pg_ctl promote`), waiting until it is.
    pub fn promote(&self) -> anyhow::Result<()> {
        self.run_pg(
            "pg_ctl",
            &["-D", &self.data().to_string_lossy(), "-w", "promote"],
        )
    }

    /// Stops the server at once (for outage tests); the data stays.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.run_pg(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
    }

    /// Runs SQL as the superuser over the Unix socket, in database `postgres`.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        self.psql_in("postgres", sql)
    }

    /// Runs SQL as the superuser over the Unix socket, in `database`.
    pub fn psql_in(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let exe = self.bin.join("psql");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The loopback TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A key-value DSN for `user` with `password` over TCP.
    pub fn dsn(&self, user: &str, password: &str) -> String {
        self.dsn_in("postgres", user, password)
    }

    /// A key-value DSN for `user` with `password` over TCP, to `database`.
    pub fn dsn_in(&self, database: &str, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname={database} user={user} password={password}",
            self.port
        )
    }

    /// A database of its own for Ebb's shared store (`ebbstore`, owned by the role
    /// `store_owner`), created on first use; its DSN.
    pub fn store_dsn(&self) -> anyhow::Result<String> {
        let exists = self.psql("select 1 from pg_database where datname = 'ebbstore'")?;
        if exists.trim().is_empty() {
            self.psql("create role store_owner login password 'store-pw'")?;
            self.psql("create database ebbstore owner store_owner")?;
        }
        Ok(self.dsn_in("ebbstore", "store_owner", "store-pw"))
    }

    /// The DSN an operator would lend the postgres connector.
    pub fn admin_dsn(&self) -> String {
        self.dsn("ebb_admin", ADMIN_PASSWORD)
    }

    /// The admin DSN to another database of the server.
    pub fn admin_dsn_in(&self, database: &str) -> String {
        self.dsn_in(database, "ebb_admin", ADMIN_PASSWORD)
    }

    /// Connects over TCP as `user`; the connection is driven on a spawned task.
    pub async fn connect(
        &self,
        user: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        self.connect_in("postgres", user, password).await
    }

    /// Connects over TCP as `user` to `database`; the connection is driven on a
    /// spawned task.
    pub async fn connect_in(
        &self,
        database: &str,
        user: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(
            &self.dsn_in(database, user, password),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Connects as the superuser.
    pub async fn superuser(&self) -> tokio_postgres::Client {
        match self.connect("postgres", SUPERUSER_PASSWORD).await {
            Ok(client) => client,
            Err(e) => {
                eprintln!("cannot connect as superuser: {e}");
                std::process::abort()
            }
        }
    }

    /// Roles whose name starts with `ebb_` other than `ebb_admin`: what grants left.
    pub fn ebb_roles(&self) -> anyhow::Result<Vec<String>> {
        let out = self.psql(
            "select rolname from pg_roles where rolname like 'ebb\\_%' and rolname <> 'ebb_admin' order by 1",
        )?;
        Ok(out
            .lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// The server's folder (data, socket, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}{}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
