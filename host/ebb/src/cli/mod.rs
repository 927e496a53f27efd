//! The `ebb` CLI over the admin API: `ebb grant …`, `ebb audit …`,
//! `ebb connectors …`. Human tables by default, `--json` for scripts.
//!
//! The API address and token come from `--api`/`EBB_API` and `--token`/`EBB_TOKEN`.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::time::Duration;

mod connectors;
pub use connectors::{ConnectorsCommand, connectors};

/// How to reach the API.
#[derive(Debug, Args)]
pub struct Remote {
    /// The host's API.
    #[arg(
        long,
        env = "EBB_API",
        default_value = "http://127.0.0.1:8700",
        global = true
    )]
    pub api: String,
    /// A bearer token (see `ebb token new`).
    #[arg(long, env = "EBB_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// Requests a grant for a task. Prints the credential if it is issued at once.
    Request {
        /// The connector instance.
        #[arg(long)]
        connector: String,
        /// `action:resource`, e.g. `select:public.invoices`, or `action=resource` when
        /// the action has a colon, e.g. `s3:GetObject=arn:aws:s3:::reports/*`
        /// (repeatable).
        #[arg(long = "permission", short = 'p', required = true)]
        permissions: Vec<String>,
        /// How long, e.g. `15m`.
        #[arg(long)]
        ttl: String,
        /// The task it is for.
        #[arg(long)]
        task: String,
        /// Why (mandatory for --break-glass).
        #[arg(long)]
        reason: Option<String>,
        /// Through the break-glass path: its own policies, a shorter TTL, alerts.
        #[arg(long)]
        break_glass: bool,
    },
    /// Approves someone else's request.
    Approve {
        id: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Denies a request.
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Issues an approved grant and prints its credential (shown once).
    Issue { id: String },
    /// The task is done: revoke now.
    Complete {
        id: String,
        /// Wait until revocation is verified, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// The task failed: revoke now.
    Fail {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Revokes a grant.
    Revoke {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Shows one grant.
    Get { id: String },
    /// Lists grants.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        connector: Option<String>,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// What was requested, granted, and what remains, with the audit trail.
    Report { id: String },
    /// Waits until a grant is closed (verified or denied), showing progress.
    Wait {
        id: String,
        /// Give up after this long.
        #[arg(long, default_value = "5m")]
        timeout: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Checks the whole audit chain.
    Verify,
    /// Lists audit events.
    List {
        #[arg(long)]
        grant: Option<String>,
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

pub(crate) struct Client {
    http: reqwest::Client,
    remote: Remote,
}

impl Client {
    pub(crate) fn new(remote: Remote) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?,
            remote,
        })
    }

    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.remote.api.trim_end_matches('/'));
        let mut req = self.http.request(method, &url);
        if let Some(token) = &self.remote.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let response = req.send().await.with_context(|| format!("calling {url}"))?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = value["error"]["message"]
                .as_str()
                .unwrap_or("no error message");
            bail!("{status}: {message}");
        }
        Ok(value)
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
}

pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub(crate) fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!(
        "{}",
        line(headers.iter().map(|h| h.to_uppercase()).collect())
    );
    for row in rows {
        println!("{}", line(row.clone()));
    }
}

fn grant_row(g: &Value) -> Vec<String> {
    let permissions = g["grant"]["permissions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| format!("{}:{}", s(&p["action"]), s(&p["resource"])))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    vec![
        s(&g["grant"]["id"]),
        s(&g["state"]),
        s(&g["connector"]),
        s(&g["grant"]["subject"]["id"]),
        permissions,
        s(&g["grant"]["task"]),
    ]
}

const GRANT_HEADERS: [&str; 6] = ["id", "state", "connector", "subject", "permissions", "task"];

fn print_grant(g: &Value) {
    print_table(&GRANT_HEADERS, &[grant_row(g)]);
    if let Some(err) = g["last_error"].as_str() {
        println!("last error: {err}");
    }
    if let Some(residue) = g["residue"].as_array().filter(|r| !r.is_empty()) {
        for r in residue {
            let place = r["location"]
                .as_str()
                .map(|l| format!(" (in {l})"))
                .unwrap_or_default();
            println!("residue: {} — {}{place}", s(&r["kind"]), s(&r["detail"]));
            if let Some(step) = r["remedy"].as_str() {
                println!("  to remove it by hand: {step}");
            }
        }
    }
}

fn print_issued(v: &Value) {
    print_grant(&v["grant"]);
    if let Some(credential) = v["credential"].as_object() {
        println!("\ncredential (shown once):");
        for (name, value) in credential {
            println!("  {name}: {}", s(value));
        }
    }
}

/// Polls until the grant is closed, printing each state it passes through.
async fn wait_closed(client: &Client, id: &str, timeout: Duration) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let g = client.get(&format!("/v1/grants/{id}")).await?;
        let state = s(&g["state"]);
        if state != last {
            let attempts = g["attempts"].as_u64().unwrap_or(0);
            let extra = if attempts > 0 {
                format!(" (attempt {attempts})")
            } else {
                String::new()
            };
            eprintln!("{id}: {state}{extra}");
            last = state.clone();
        }
        match state.as_str() {
            "verified" | "denied" => return Ok(g),
            _ if tokio::time::Instant::now() > deadline => {
                bail!(
                    "grant {id} is still {state} after {}",
                    humantime::format_duration(timeout)
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

fn parse_permission(p: &str) -> anyhow::Result<Value> {
    let p = ebb_core::Permission::parse(p).map_err(anyhow::Error::msg)?;
    Ok(json!({ "action": p.action, "resource": p.resource }))
}

/// Prints a value as JSON or with the given human printer.
type Printer<'a> = dyn Fn(&Value, &dyn Fn(&Value)) + 'a;

/// Runs `ebb grant …`.
pub async fn grant(remote: Remote, command: GrantCommand) -> anyhow::Result<()> {
    let json_out = remote.json;
    let client = Client::new(remote)?;
    let out = |v: &Value, human: &dyn Fn(&Value)| {
        if json_out {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            human(v);
        }
    };
    match command {
        GrantCommand::Request {
            connector,
            permissions,
            ttl,
            task,
            reason,
            break_glass,
        } => {
            let permissions = permissions
                .iter()
                .map(|p| parse_permission(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let path = if break_glass {
                "/v1/grants/break-glass"
            } else {
                "/v1/grants"
            };
            let v = client
                .post(path, json!({ "connector": connector, "permissions": permissions, "ttl": ttl, "task": task, "reason": reason }))
                .await?;
            out(&v, &|v| {
                print_issued(v);
                if v["credential"].is_null() {
                    println!(
                        "\nwaiting for approval; then: ebb grant issue {}",
                        s(&v["grant"]["grant"]["id"])
                    );
                }
            });
        }
        GrantCommand::Approve { id, note } => {
            let v = client
                .post(
                    &format!("/v1/grants/{id}/approve"),
                    json!({ "reason": note }),
                )
                .await?;
            out(&v, &print_grant);
        }
        GrantCommand::Deny { id, reason } => {
            let v = client
                .post(
                    &format!("/v1/grants/{id}/deny"),
                    json!({ "reason": reason }),
                )
                .await?;
            out(&v, &print_grant);
        }
        GrantCommand::Issue { id } => {
            let v = client
                .post(&format!("/v1/grants/{id}/issue"), json!({}))
                .await?;
            out(&v, &print_issued);
        }
        GrantCommand::Complete { id, wait } => {
            end(&client, &id, "complete", None, wait, &out).await?
        }
        GrantCommand::Fail { id, reason, wait } => {
            end(&client, &id, "fail", reason, wait, &out).await?
        }
        GrantCommand::Revoke { id, reason, wait } => {
            end(&client, &id, "revoke", reason, wait, &out).await?
        }
        GrantCommand::Get { id } => {
            let v = client.get(&format!("/v1/grants/{id}")).await?;
            out(&v, &print_grant);
        }
        GrantCommand::List {
            state,
            connector,
            subject,
            limit,
        } => {
            let mut query = vec![format!("limit={limit}")];
            for (k, v) in [
                ("state", state),
                ("connector", connector),
                ("subject", subject),
            ] {
                if let Some(v) = v {
                    query.push(format!("{k}={v}"));
                }
            }
            let v = client
                .get(&format!("/v1/grants?{}", query.join("&")))
                .await?;
            out(&v, &|v| {
                let rows: Vec<Vec<String>> = v["grants"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(grant_row)
                    .collect();
                print_table(&GRANT_HEADERS, &rows);
            });
        }
        GrantCommand::Report { id } => {
            let v = client.get(&format!("/v1/grants/{id}/report")).await?;
            out(&v, &|v| {
                print_grant(&v["grant"]);
                println!("may still have access: {}", s(&v["may_have_access"]));
                let rows: Vec<Vec<String>> = v["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        vec![
                            s(&e["seq"]),
                            s(&e["kind"]),
                            s(&e["actor"]),
                            s(&e["from"]),
                            s(&e["to"]),
                        ]
                    })
                    .collect();
                println!();
                print_table(&["seq", "event", "actor", "from", "to"], &rows);
            });
        }
        GrantCommand::Wait { id, timeout } => {
            let timeout = humantime::parse_duration(&timeout).context("timeout")?;
            let v = wait_closed(&client, &id, timeout).await?;
            out(&v, &print_grant);
        }
    }
    Ok(())
}

async fn end(
    client: &Client,
    id: &str,
    action: &str,
    reason: Option<String>,
    wait: bool,
    out: &Printer<'_>,
) -> anyhow::Result<()> {
    let mut v = client
        .post(
            &format!("/v1/grants/{id}/{action}"),
            json!({ "reason": reason }),
        )
        .await?;
    if wait {
        v = wait_closed(client, id, Duration::from_secs(300)).await?;
    }
    out(&v, &print_grant);
    Ok(())
}

/// `ebb policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Lists the policies in force.
    List,
    /// Loads the policy files again (a broken file is refused with the error; the
    /// policies in force stay).
    Reload,
}

/// Runs `ebb policy …`.
pub async fn policy(remote: Remote, command: PolicyCommand) -> anyhow::Result<()> {
    let json_out = remote.json;
    let client = Client::new(remote)?;
    let v = match command {
        PolicyCommand::List => client.get("/v1/policies").await?,
        PolicyCommand::Reload => client.post("/v1/policies/reload", json!({})).await?,
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if v["configured"] == false {
        println!("no policies configured: each connector's lifecycle.approval decides");
    } else {
        for id in v["ids"].as_array().into_iter().flatten() {
            println!("{}", s(id));
        }
    }
    Ok(())
}

/// `ebb scan …`.
#[derive(Debug, Subcommand)]
pub enum ScanCommand {
    /// Checks again what every subject seen in a request can do downstream without
    /// a grant; new findings are audited and alerted.
    Standing,
    /// Compares what every connector's naming scheme says Ebb created downstream
    /// with the live grants; orphans are audited, alerted and, where the connector
    /// says `orphans = "revoke"`, revoked by id.
    Orphans,
}

/// Runs `ebb scan …`.
pub async fn scan(remote: Remote, command: ScanCommand) -> anyhow::Result<()> {
    let json_out = remote.json;
    let client = Client::new(remote)?;
    let v = match command {
        ScanCommand::Standing => client.post("/v1/standing/scan", json!({})).await?,
        ScanCommand::Orphans => client.post("/v1/orphans/scan", json!({})).await?,
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if matches!(command, ScanCommand::Orphans) {
        print_orphans(&v);
        return Ok(());
    }
    let entries = v.as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        println!("no subject has asked for a grant yet");
    }
    for e in entries {
        let subject = s(&e["subject"]["id"]);
        let connector = s(&e["connector"]);
        match e["findings"].as_array() {
            Some(found) if found.is_empty() => println!("{connector}  {subject}: none"),
            Some(found) => {
                println!("{connector}  {subject}: {} finding(s)", found.len());
                for f in found {
                    println!("    {}", s(f));
                }
            }
            None => println!(
                "{connector}  {subject}: unknown ({})",
                s(&e["unknown_because"])
            ),
        }
    }
    Ok(())
}

fn print_orphans(report: &Value) {
    for c in report["connectors"].as_array().into_iter().flatten() {
        match c["skipped_because"].as_str() {
            Some(why) => println!("{}: not scanned ({why})", s(&c["connector"])),
            None => println!("{}: {} item(s) listed", s(&c["connector"]), c["listed"]),
        }
    }
    let orphans = report["orphans"].as_array().cloned().unwrap_or_default();
    if orphans.is_empty() {
        println!("no orphans");
    }
    for o in orphans {
        println!(
            "ORPHAN {}  grant {}  {}{}",
            s(&o["connector"]),
            s(&o["grant_id"]),
            s(&o["detail"]),
            o["verdict"]
                .as_str()
                .map(|v| format!("  (revoked by id: {v})"))
                .unwrap_or_default()
        );
    }
}

/// `ebb anomaly report`: revokes a grant, or a subject's grants, at once.
#[derive(Debug, Args)]
pub struct AnomalyArgs {
    /// A grant to revoke.
    #[arg(long, required_unless_present = "subject")]
    grant: Option<String>,
    /// A subject whose grants are all revoked and who is flagged for policy.
    #[arg(long)]
    subject: Option<String>,
    /// What was seen.
    #[arg(long)]
    reason: String,
}

/// Runs `ebb anomaly`.
pub async fn anomaly(remote: Remote, args: AnomalyArgs) -> anyhow::Result<()> {
    let json_out = remote.json;
    let client = Client::new(remote)?;
    let v = client
        .post(
            "/v1/anomalies",
            json!({ "grant": args.grant, "subject": args.subject, "reason": args.reason, "source": "ebb-cli" }),
        )
        .await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let revoked: Vec<String> = v["revoked"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        println!("revoking {} grant(s): {}", revoked.len(), revoked.join(" "));
        if let Some(subject) = v["flagged_subject"].as_str() {
            println!("flagged {subject} as anomalous");
        }
    }
    Ok(())
}

pub async fn audit(remote: Remote, command: AuditCommand) -> anyhow::Result<()> {
    let json_out = remote.json;
    let client = Client::new(remote)?;
    let v = match command {
        AuditCommand::Verify => client.get("/v1/audit/verify").await?,
        AuditCommand::List {
            grant,
            after,
            limit,
        } => {
            let mut path = format!("/v1/audit?after={after}&limit={limit}");
            if let Some(g) = grant {
                path.push_str(&format!("&grant={g}"));
            }
            client.get(&path).await?
        }
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if let Some(events) = v.as_array() {
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                vec![
                    s(&e["seq"]),
                    s(&e["kind"]),
                    s(&e["actor"]),
                    s(&e["grant_id"]),
                    s(&e["to"]),
                ]
            })
            .collect();
        print_table(&["seq", "event", "actor", "grant", "to"], &rows);
    } else {
        match v["problem"].as_str() {
            None => println!("audit chain intact: {} events", s(&v["events"])),
            Some(problem) => bail!(
                "audit chain BROKEN after {} events: {problem}",
                s(&v["events"])
            ),
        }
    }
    Ok(())
}
