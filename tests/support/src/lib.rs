//! Starts real downstream systems on loopback for Ebb's tests. Nothing here is a
//! fake: each type runs the real server from the distribution's packages.

pub mod api;
pub mod browser;
pub mod cli;
pub mod ldap;
pub mod mariadb;
pub mod moto;
pub mod oidc;
pub mod postgres;
pub mod rabbitmq;
pub mod redis;
pub mod require;
pub mod served;
pub mod tls;

pub use browser::Browser;
pub use ldap::Ldap;
pub use mariadb::MariaDb;
pub use moto::Moto;
pub use oidc::Oidc;
pub use postgres::Postgres;
pub use rabbitmq::RabbitMq;
pub use redis::Redis;

/// Milliseconds since the Unix epoch, as grants count time.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `ebb serve --config <config>` from the binary at `bin` (a test's
/// `env!("CARGO_BIN_EXE_ebb")`), output discarded; add environment or a log and
/// spawn it.
pub fn serve_command(bin: &str, config: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new(bin);
    command
        .args(["serve", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    command
}

/// A loopback port free at the time of asking.
/// Stops a server started in a process group of its own (`process_group(0)`): every
/// process of the group, then the child itself is reaped.
pub(crate) fn kill_group(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
}

pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something listens on loopback `port`; false if nothing does within
/// `limit`.
pub fn wait_for_port(port: u16, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// A running `ebb serve` for a test, in a fresh folder of its own; stopped and the
/// folder removed on drop.
#[derive(Debug)]
pub struct Host {
    pub dir: std::path::PathBuf,
    pub port: u16,
    /// `http://127.0.0.1:<port>`.
    pub api: String,
    child: std::process::Child,
}

impl Host {
    /// Writes `ebb.toml` — `[server]` on a free loopback port plus `server` (more
    /// keys of that table), `[store]` in the folder, then `rest` — starts `ebb
    /// serve` from `bin` (a test's `env!("CARGO_BIN_EXE_ebb")`) and waits until it
    /// listens.
    pub fn start(bin: &str, tag: &str, server: &str, rest: &str) -> anyhow::Result<Self> {
        Self::start_on(bin, tag, free_port()?, &[], server, rest)
    }

    /// [`Host::start`] on `port`, with `env` set for the host (secrets the
    /// configuration names by variable).
    pub fn start_on(
        bin: &str,
        tag: &str,
        port: u16,
        env: &[(&str, &str)],
        server: &str,
        rest: &str,
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("ebb-{tag}-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("ebb.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\n{server}\n[store]\npath = \"{}\"\nkey-file = \"{}\"\n{rest}\n",
                dir.join("data").display(),
                dir.join("host.key").display(),
            ),
        )?;
        let mut command = serve_command(bin, &config);
        command.envs(env.iter().copied());
        let child = command.spawn()?;
        let host = Self {
            api: format!("http://127.0.0.1:{port}"),
            dir,
            port,
            child,
        };
        if !wait_for_port(port, std::time::Duration::from_secs(10)) {
            anyhow::bail!("the host did not start listening on port {port}");
        }
        Ok(host)
    }
}

impl Host {
    /// Sends SIGTERM and waits up to `limit` for the host to exit; true if it did.
    pub fn terminate(&mut self, limit: std::time::Duration) -> anyhow::Result<bool> {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(true);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(false)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process (an `ebb serve` a test starts and kills itself) that is killed
/// and reaped when dropped, so a test that fails half-way leaves no host running.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;

    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A folder under the system's temporary folder that is deleted when dropped, so
/// test runs do not leave their stores and configuration behind.
#[derive(Debug)]
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// Creates `ebb-<tag>-<random>`.
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("ebb-{tag}-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A component that behaves exactly like `bytes` but has another sha256: a custom
/// section appended to the component.
pub fn another_version(bytes: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"ebb-test-version";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}
