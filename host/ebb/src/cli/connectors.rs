//! `ebb connectors …`: list, describe, load, reload and unload connector instances
//! on a running host.

use super::{Client, Remote, print_table, s};
use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum ConnectorsCommand {
    /// Lists the loaded instances (the default).
    List,
    /// Describes one instance: its actions, capabilities, version and live grants.
    Get { name: String },
    /// Loads a new instance from a component in the host's plugins folder. The
    /// component is validated before it serves anything, and pinned by sha256.
    Load {
        name: String,
        /// The instance's settings as a TOML file with the keys of a
        /// `[connectors.<name>]` table. The flags below add to it.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The component, relative to the host's plugins folder.
        #[arg(long)]
        component: Option<String>,
        /// A connector setting, `key=value` (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// A SQL connection whose DSN is in an environment variable of the host,
        /// `name=VARIABLE` (repeatable).
        #[arg(long = "sql", value_name = "NAME=VARIABLE")]
        sql: Vec<String>,
        /// An origin the connector may call over HTTP (repeatable).
        #[arg(long = "http-allow", value_name = "ORIGIN")]
        http: Vec<String>,
        /// Approve requests automatically instead of asking a person.
        #[arg(long)]
        auto_approve: bool,
    },
    /// Loads a new version of an instance and swaps it in; calls in flight finish
    /// on the old one. Without flags the configured component is read again.
    Reload {
        name: String,
        /// A new component, relative to the host's plugins folder.
        #[arg(long)]
        component: Option<String>,
        /// The sha256 the new component must have.
        #[arg(long)]
        sha256: Option<String>,
    },
    /// Unloads an instance. Refused while it has live grants unless told what to do
    /// with them.
    Unload {
        name: String,
        /// Revoke its live grants first; it goes once every revocation is verified.
        #[arg(long, conflicts_with = "hand_over")]
        revoke: bool,
        /// Hand its live grants to this instance (another version of the same
        /// connector).
        #[arg(long, value_name = "INSTANCE")]
        hand_over: Option<String>,
        /// With --revoke: wait until it is gone, showing progress.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

fn pair(s: &str, what: &str) -> anyhow::Result<(String, String)> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .with_context(|| format!("{what} `{s}` must look like name=value"))
}

/// Runs `ebb connectors …`.
pub async fn connectors(remote: Remote, command: Option<ConnectorsCommand>) -> anyhow::Result<()> {
    let json_out = remote.json;
    let client = Client::new(remote)?;
    let print = |v: &Value| -> anyhow::Result<bool> {
        if json_out {
            println!("{}", serde_json::to_string_pretty(v)?);
        }
        Ok(json_out)
    };
    match command.unwrap_or(ConnectorsCommand::List) {
        ConnectorsCommand::List => {
            let v = client.get("/v1/connectors").await?;
            if !print(&v)? {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        vec![
                            s(&c["name"]),
                            s(&c["info"]["name"]),
                            s(&c["info"]["version"]),
                            s(&c["info"]["system"]),
                            s(&c["sha256"]).chars().take(12).collect(),
                            s(&c["source"]),
                            if c["draining"] == true {
                                "draining"
                            } else {
                                ""
                            }
                            .into(),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "name",
                        "connector",
                        "version",
                        "system",
                        "sha256",
                        "source",
                        "",
                    ],
                    &rows,
                );
            }
        }
        ConnectorsCommand::Get { name } => {
            let v = client.get(&format!("/v1/connectors/{name}")).await?;
            if !print(&v)? {
                describe(&v);
            }
        }
        ConnectorsCommand::Load {
            name,
            file,
            component,
            settings,
            sql,
            http,
            auto_approve,
        } => {
            let mut body = match &file {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let table: toml::Table =
                        toml::from_str(&text).with_context(|| format!("in {}", path.display()))?;
                    serde_json::to_value(table)?
                }
                None => json!({}),
            };
            let Some(obj) = body.as_object_mut() else {
                bail!("the instance settings must be a table");
            };
            if let Some(c) = component {
                obj.insert("component".into(), c.into());
            }
            if !obj.contains_key("component") {
                bail!("say which component to load: --component <file> (or in --file)");
            }
            for setting in &settings {
                let (k, v) = pair(setting, "--config")?;
                obj.entry("config").or_insert_with(|| json!({}))[&k] = v.into();
            }
            for conn in &sql {
                let (k, v) = pair(conn, "--sql")?;
                obj.entry("sql").or_insert_with(|| json!({}))[&k] = json!({ "dsn-env": v });
            }
            for origin in http {
                let allow = obj.entry("http").or_insert_with(|| json!({}));
                match allow.get_mut("allow").and_then(Value::as_array_mut) {
                    Some(list) => list.push(origin.into()),
                    None => allow["allow"] = json!([origin]),
                }
            }
            if auto_approve {
                obj.entry("lifecycle").or_insert_with(|| json!({}))["approval"] = "auto".into();
            }
            let v = client.post(&format!("/v1/connectors/{name}"), body).await?;
            if !print(&v)? {
                println!("loaded {name}");
                describe(&v);
            }
        }
        ConnectorsCommand::Reload {
            name,
            component,
            sha256,
        } => {
            let mut body = json!({});
            if let Some(c) = component {
                body["component"] = c.into();
            }
            if let Some(h) = sha256 {
                body["sha256"] = h.into();
            }
            let v = client
                .post(&format!("/v1/connectors/{name}/reload"), body)
                .await?;
            if !print(&v)? {
                println!(
                    "reloaded {name}: {} -> {}",
                    short(&v["previous_sha256"]),
                    short(&v["connector"]["sha256"])
                );
            }
        }
        ConnectorsCommand::Unload {
            name,
            revoke,
            hand_over,
            wait,
            timeout,
        } => {
            let query = match (&hand_over, revoke) {
                (Some(to), _) => format!("?live=hand-over&to={to}"),
                (None, true) => "?live=revoke".into(),
                (None, false) => String::new(),
            };
            let v = client
                .send(
                    reqwest::Method::DELETE,
                    &format!("/v1/connectors/{name}{query}"),
                    None,
                )
                .await?;
            if v["state"] == "draining" && wait {
                eprintln!("{name}: draining, {} live grant(s)", s(&v["live_grants"]));
                wait_gone(&client, &name, timeout).await?;
                let gone = json!({ "state": "unloaded", "live_grants": 0 });
                if !print(&gone)? {
                    println!("unloaded {name}");
                }
            } else if !print(&v)? {
                match v["state"].as_str() {
                    Some("draining") => println!(
                        "{name} is draining: {} live grant(s) being revoked; it goes when \
                         every revocation is verified (use --wait to watch)",
                        s(&v["live_grants"])
                    ),
                    _ => println!("unloaded {name}"),
                }
            }
        }
    }
    Ok(())
}

fn short(v: &Value) -> String {
    s(v).chars().take(12).collect()
}

fn describe(v: &Value) {
    let info = &v["info"];
    println!(
        "{} — {} {} ({})",
        s(&v["name"]),
        s(&info["name"]),
        s(&info["version"]),
        s(&info["system"])
    );
    println!("{}", s(&info["description"]));
    println!("sha256: {}", s(&v["sha256"]));
    if let Some(source) = v["source"].as_str() {
        println!("source: {source}");
    }
    if let Some(live) = v["live_grants"].as_u64() {
        println!("live grants: {live}");
    }
    if v["draining"] == true {
        println!("draining: takes no new requests");
    }
    let caps: Vec<&str> = info["capabilities"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, on)| **on == true)
        .map(|(k, _)| k.as_str())
        .collect();
    println!("capabilities: {}", caps.join(", "));
    let rows: Vec<Vec<String>> = info["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            vec![
                s(&a["name"]),
                s(&a["resource_syntax"]),
                s(&a["description"]),
            ]
        })
        .collect();
    print_table(&["action", "resource", "description"], &rows);
}

/// Polls a draining instance until it is gone, printing its live grants as they fall.
async fn wait_gone(client: &Client, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        match client.get(&format!("/v1/connectors/{name}")).await {
            Ok(v) => {
                let live = v["live_grants"].as_u64();
                if live != last {
                    eprintln!("{name}: {} live grant(s)", live.unwrap_or(0));
                    last = live;
                }
            }
            Err(e) if e.to_string().starts_with("404") => return Ok(()),
            Err(e) => return Err(e),
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{name} is still draining after {}",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
