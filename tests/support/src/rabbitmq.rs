//! A throwaway RabbitMQ node: `rabbitmq-server` from Debian's packages as a private
//! node (its own name, ports, database and logs under a temporary folder) with the
//! management plugin on loopback. The administrator the connector is lent is
//! `ebb-admin`; a vhost `ebb` holds the queues `orders.in`, `orders.out` and
//! `payroll`, with a message in each.

use anyhow::{Context, bail};
use serde_json::Value;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The administrator's name and password.
pub const ADMIN: (&str, &str) = ("ebb-admin", "rabbitmq-test-admin");
/// The vhost the tests grant on.
pub const VHOST: &str = "ebb";

/// Where Debian puts the server's own start script.
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

pub(crate) fn installed() -> bool {
    std::path::Path::new(SERVER).exists()
}

/// A running node, stopped (with every process it started) and deleted on drop.
#[derive(Debug)]
pub struct RabbitMq {
    child: Child,
    dir: PathBuf,
    amqp_port: u16,
    api_port: u16,
}

impl RabbitMq {
    /// Starts a node and waits until its management API answers (several seconds:
    /// it is an Erlang VM).
    pub async fn start() -> anyhow::Result<Self> {
        let (amqp_port, api_port, dist_port) = (
            crate::free_port()?,
            crate::free_port()?,
            crate::free_port()?,
        );
        let dir = std::env::temp_dir().join(format!("ebb-rabbitmq-{amqp_port}"));
        std::fs::create_dir_all(dir.join("mnesia"))?;
        std::fs::create_dir_all(dir.join("log"))?;
        std::fs::write(dir.join("enabled_plugins"), "[rabbitmq_management].\n")?;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{amqp_port}\n\
                 management.tcp.port = {api_port}\n\
                 management.tcp.ip = 127.0.0.1\n\
                 loopback_users = none\n\
                 default_user = {}\n\
                 default_pass = {}\n\
                 default_user_tags.administrator = true\n",
                ADMIN.0, ADMIN.1
            ),
        )?;
        let child = Command::new(SERVER)
            .current_dir(&dir)
            .env("HOME", &dir)
            .env("RABBITMQ_NODENAME", format!("ebb{amqp_port}@localhost"))
            .env("RABBITMQ_NODE_PORT", amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("rabbitmq-server is not installed; run scripts/setup.sh")?;
        let node = Self {
            child,
            dir,
            amqp_port,
            api_port,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while node.get("overview").await.is_err() {
            if tokio::time::Instant::now() > deadline {
                bail!("rabbitmq-server did not answer on port {api_port}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        node.put(&format!("vhosts/{VHOST}"), &serde_json::json!({}))
            .await?;
        node.put(
            &format!("permissions/{VHOST}/{}", ADMIN.0),
            &serde_json::json!({ "configure": ".*", "write": ".*", "read": ".*" }),
        )
        .await?;
        for queue in ["orders.in", "orders.out", "payroll"] {
            node.put(
                &format!("queues/{VHOST}/{queue}"),
                &serde_json::json!({ "durable": false }),
            )
            .await?;
            node.post(
                &format!("exchanges/{VHOST}/amq.default/publish"),
                &serde_json::json!({
                    "properties": {}, "routing_key": queue,
                    "payload": format!("a message in {queue}"), "payload_encoding": "string",
                }),
            )
            .await?;
        }
        Ok(node)
    }

    /// The management API's origin, to allow and lend basic auth for.
    pub fn api_origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// The AMQP port on loopback.
    pub fn amqp_port(&self) -> u16 {
        self.amqp_port
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/{path}", self.api_origin())
    }

    /// GETs a management API path as the administrator.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let r = reqwest::Client::new()
            .get(self.url(path))
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("GET {path}: {}", r.status());
        }
        Ok(r.json().await?)
    }

    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<()> {
        let r = request
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "{what}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// PUTs JSON to a management API path as the administrator.
    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<()> {
        let request = reqwest::Client::new().put(self.url(path)).json(body);
        self.send(request, &format!("PUT {path}")).await
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<()> {
        let request = reqwest::Client::new().post(self.url(path)).json(body);
        self.send(request, &format!("POST {path}")).await
    }

    /// The users whose names start with `ebb_` (what grants left behind).
    pub async fn ebb_users(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .get("users")
            .await?
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u["name"].as_str())
            .filter(|n| n.starts_with("ebb_"))
            .map(str::to_owned)
            .collect())
    }

    /// How many connections `user` has open, as the broker lists them.
    pub async fn connections_of(&self, user: &str) -> anyhow::Result<usize> {
        Ok(self
            .get("connections")
            .await?
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["user"] == user)
            .count())
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        // The start script, the Erlang VM and its helpers share one process group.
        crate::kill_group(&mut self.child);
        // The start script forks: whatever left the group goes by its node name.
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &format!("ebb{}@localhost", self.amqp_port)])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
