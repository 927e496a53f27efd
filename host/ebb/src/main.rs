//! The `ebb` binary: the server (`ebb serve`, feature `server`) and a CLI.

use anyhow::Context;
use clap::{Parser, Subcommand};
use ebb::cli;
#[cfg(feature = "server")]
use server::{ConnectorCommand, serve};

/// The server's allocator (see BENCHMARKS.md, issue 16): under load glibc's
/// malloc made the async workers wait on its arena locks.
#[cfg(feature = "server")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "ebb",
    version,
    about = "Just-in-time access that proves it is gone"
)]
struct Cli {
    /// On failure, print the error with every cause and, if RUST_BACKTRACE is set,
    /// a backtrace (otherwise: one line).
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the host: loads the configured connectors and serves.
    #[cfg(feature = "server")]
    Serve {
        /// The configuration file.
        #[arg(long, short, env = "EBB_CONFIG", default_value = "ebb.toml")]
        config: std::path::PathBuf,
        /// Serve even though the store failed its check at start (an audit event
        /// records the override and what failed). Only after finding out why.
        #[arg(long)]
        accept_unverified_store: bool,
    },
    /// Works with connector components locally.
    #[cfg(feature = "server")]
    Connector {
        #[command(subcommand)]
        command: ConnectorCommand,
    },
    /// Requests, approves, issues and ends grants over the API.
    Grant {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(subcommand)]
        command: cli::GrantCommand,
    },
    /// Reads and verifies the audit log over the API.
    Audit {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(subcommand)]
        command: cli::AuditCommand,
    },
    /// Lists, describes, loads, reloads and unloads the host's connectors.
    Connectors {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(subcommand)]
        command: Option<cli::ConnectorsCommand>,
    },
    /// Lists or reloads the Cedar policies in force.
    Policy {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(subcommand)]
        command: cli::PolicyCommand,
    },
    /// Scans downstream systems: `ebb scan standing` checks what subjects can
    /// already do without a grant; `ebb scan orphans` finds what Ebb's naming
    /// scheme left downstream with no live grant.
    Scan {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(subcommand)]
        command: cli::ScanCommand,
    },
    /// Reports an anomaly: revokes a grant, or all of a subject's grants, now.
    Anomaly {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(flatten)]
        args: cli::AnomalyArgs,
    },
    /// Makes API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Generates a random token and prints it with the `[[tokens]]` entry to
    /// configure (which holds only its hash).
    New {
        /// Who will hold it.
        #[arg(long)]
        name: String,
        /// Roles: requester, approver, operator, auditor (repeat or comma-separate).
        #[arg(long, value_delimiter = ',', required = true)]
        role: Vec<String>,
    },
    /// Prints the sha256 of a token read from standard input.
    Hash,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let debug = cli.debug;
    match start(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if debug => {
            eprintln!("error: {e:?}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            // One line a person can act on: the error and its causes, no backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EBB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        #[cfg(feature = "server")]
        Command::Serve {
            config,
            accept_unverified_store,
        } => serve(config, accept_unverified_store).await,
        Command::Grant { remote, command } => cli::grant(remote, command).await,
        Command::Audit { remote, command } => cli::audit(remote, command).await,
        Command::Connectors { remote, command } => cli::connectors(remote, command).await,
        Command::Policy { remote, command } => cli::policy(remote, command).await,
        Command::Scan { remote, command } => cli::scan(remote, command).await,
        Command::Anomaly { remote, args } => cli::anomaly(remote, args).await,
        Command::Token { command } => match command {
            TokenCommand::New { name, role } => {
                let mut bytes = [0u8; 32];
                rand::fill(&mut bytes);
                let token = format!("ebb_{}", hex::encode(bytes));
                println!("token (shown once; give it to {name}):\n  {token}\n");
                println!(
                    "[[tokens]]\nname = {name:?}\nsha256 = {:?}\nroles = {role:?}",
                    ebb::token::hash_token(&token)
                );
                Ok(())
            }
            TokenCommand::Hash => {
                let mut token = String::new();
                std::io::stdin().read_line(&mut token)?;
                println!("{}", ebb::token::hash_token(token.trim()));
                Ok(())
            }
        },
        #[cfg(feature = "server")]
        Command::Connector { command } => server::connector(command).await,
    }
}

/// What only the server build has: `ebb serve` and `ebb connector …` (wasmtime,
/// Cedar, sled).
#[cfg(feature = "server")]
mod server {
    use anyhow::Context;
    use clap::Subcommand;
    use ebb::api::{self, AppState, Tokens};
    use ebb_core::seal::{HostKey, Sealer};
    use ebb_engine::approval::{Alerts, ApprovalGate};
    use ebb_engine::config::{
        Config, ConnectorConfig, ConnectorSpec, RuntimeConfig, StartCheck, StoreEngine, StoreKind,
    };
    use ebb_engine::identity::Verifier;
    use ebb_engine::lifecycle::{Clock, EngineConfig, Lifecycle};
    use ebb_engine::loader::Loader;
    use ebb_engine::registry::Registry;
    use ebb_runtime::conformance::Outcome;
    use ebb_runtime::{CacheKey, Digest, Runtime};
    use ebb_store_kv::{Engine, KvStore};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    #[derive(Debug, Subcommand)]
    pub(crate) enum ConnectorCommand {
        /// Loads a component with nothing lent and prints what `describe` answers.
        Describe {
            component: PathBuf,
            /// Print JSON instead of text.
            #[arg(long)]
            json: bool,
        },
        /// Prints a component's sha256, the value to pin in the configuration.
        Digest { component: PathBuf },
        /// Runs the conformance kit against a real downstream system: issue, the
        /// credential works, verify finds it, revoke, verify says revoked, revoke twice,
        /// revoke without the handle, verify a never-issued grant. Exits 1 on failure.
        Test {
            component: PathBuf,
            /// The instance's settings (the keys of a `[connectors.<name>]` table,
            /// `component` aside), e.g. `config` and `sql`.
            #[arg(long)]
            config: Option<PathBuf>,
            /// The permission to grant, `action:resource` (or `action=resource` when
            /// the action has a colon, e.g. `s3:GetObject=arn:aws:s3:::reports/*`).
            #[arg(long, short = 'p')]
            permission: String,
            /// How long revocation may take to show downstream.
            #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
            settle: std::time::Duration,
            /// Print JSON instead of text.
            #[arg(long)]
            json: bool,
        },
    }

    pub(crate) async fn connector(command: ConnectorCommand) -> anyhow::Result<()> {
        match command {
            ConnectorCommand::Describe { component, json } => {
                let runtime = Runtime::new(&RuntimeConfig::default())?;
                let connector = runtime
                    .load("describe", &ConnectorSpec::new(&component))
                    .await?;
                let info = connector.info();
                if json {
                    println!("{}", serde_json::to_string_pretty(info)?);
                } else {
                    println!("{} {} — {}", info.name, info.version, info.system);
                    println!("{}", info.description);
                    println!("sha256: {}", connector.digest());
                    println!("capabilities: {:?}", info.capabilities);
                    for action in &info.actions {
                        println!(
                            "  {:<10} {} ({})",
                            action.name, action.description, action.resource_syntax
                        );
                    }
                }
                Ok(())
            }
            ConnectorCommand::Test {
                component,
                config,
                permission,
                settle,
                json,
            } => {
                let mut table: toml::Table = match &config {
                    Some(path) => toml::from_str(
                        &std::fs::read_to_string(path)
                            .with_context(|| format!("reading {}", path.display()))?,
                    )
                    .with_context(|| format!("in {}", path.display()))?,
                    None => toml::Table::new(),
                };
                table.insert(
                    "component".into(),
                    toml::Value::String(component.display().to_string()),
                );
                let instance =
                    ConnectorConfig::parse_toml(&toml::to_string(&table)?, Path::new("."))?;
                let granted = ebb_core::contract::Permission::parse(&permission)
                    .map_err(anyhow::Error::msg)?;
                let runtime = Runtime::new(&RuntimeConfig::default())?;
                let spec = instance.spec();
                let connector = runtime.load("conformance", &spec).await?;
                // The host's own probe for a bundled system, built from what the
                // instance is lent; without one the kit proves less, and says so.
                let probe = ebb_runtime::conformance::builtin_probe(connector.info(), &spec)?;
                let report = ebb_runtime::conformance::run(
                    &connector,
                    &ebb_runtime::conformance::Case {
                        granted,
                        other: None,
                        settle,
                    },
                    probe.as_deref(),
                )
                .await;
                let outcome = report.outcome();
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &serde_json::json!({ "outcome": outcome, "report": report })
                        )?
                    );
                } else {
                    print!("{report}");
                    let failed = report.checks.iter().filter(|c| !c.passed).count();
                    println!(
                        "\n{}: {} checks, {failed} failed, {} unverified: {}",
                        report.connector,
                        report.checks.len(),
                        report.skipped.len(),
                        match outcome {
                            Outcome::Passed => "passed",
                            Outcome::Unverified =>
                                "UNVERIFIED (the connector's word was not checked downstream)",
                            Outcome::Failed => "FAILED",
                        }
                    );
                }
                match outcome {
                    Outcome::Passed => Ok(()),
                    Outcome::Failed => std::process::exit(1),
                    Outcome::Unverified => std::process::exit(2),
                }
            }
            ConnectorCommand::Digest { component } => {
                let bytes = std::fs::read(&component)
                    .with_context(|| format!("reading {}", component.display()))?;
                println!("{}", Digest::of(&bytes));
                Ok(())
            }
        }
    }

    /// The store's check at start: a store edited while the host was stopped (an
    /// event, a grant record, the head) is refused unless the operator overrides,
    /// and the override is itself audited. With `check` at `while-serving`, a store
    /// that checks the records it reads is checked while the host serves instead
    /// ([`Lifecycle::check_store_while_serving`]); returns whether it is.
    async fn check_store(
        store: &dyn ebb_core::store::Store,
        accept: bool,
        check: StartCheck,
    ) -> anyhow::Result<bool> {
        if check == StartCheck::WhileServing && store.checks_records_as_read() {
            tracing::info!(
                "the store is checked while the host serves; until its records pass, each is checked as it is read"
            );
            return Ok(true);
        }
        let started = std::time::Instant::now();
        let report = store
            .verify_at_start()
            .await
            .context("checking the store")?;
        let Some(problem) = &report.problem else {
            tracing::info!(
                events = report.events,
                records = report.records,
                ms = started.elapsed().as_millis() as u64,
                "the store passed its check at start"
            );
            return Ok(false);
        };
        if !accept {
            anyhow::bail!(
                "the store failed its check at start and will not be served: {problem}. \
                 It was changed outside this host (or by a host with another key). Restore it \
                 from a backup, or, once you know why, start with --accept-unverified-store \
                 (the override is recorded in the audit log)"
            );
        }
        tracing::error!(
            problem,
            "serving a store that failed its check at start (--accept-unverified-store)"
        );
        store.trust_records();
        store
            .append_audit(
                ebb_core::audit::NewEvent::new("store.check-overridden", "operator")
                    .detail(serde_json::json!({ "problem": problem })),
            )
            .await
            .context("recording the override in the audit log")?;
        Ok(false)
    }

    /// The configured store: the embedded one in its folder, or the shared one on
    /// PostgreSQL (its DSN from the environment).
    async fn open_store(
        config: &ebb_engine::config::StoreConfig,
        key: &HostKey,
        host_id: &str,
    ) -> anyhow::Result<Arc<dyn ebb_core::store::Store>> {
        let chain_key = key.derive("audit-chain");
        match config.kind {
            StoreKind::Embedded => {
                std::fs::create_dir_all(&config.path)
                    .with_context(|| format!("creating {}", config.path.display()))?;
                let engine = match config.engine {
                    StoreEngine::Sled => Engine::Sled,
                    StoreEngine::Fjall => Engine::Fjall,
                };
                Ok(KvStore::open_with(engine, &config.path, chain_key)?)
            }
            StoreKind::Postgres => {
                let dsn = std::env::var(&config.dsn_env).with_context(|| {
                    format!(
                        "the store's DSN variable {} is not set (a PostgreSQL store takes its DSN from the environment)",
                        config.dsn_env
                    )
                })?;
                let store = ebb_store_postgres::PgStore::open(
                    ebb_store_postgres::PgOptions {
                        dsn,
                        ca_file: config.ca_file.clone(),
                        host_id: host_id.to_owned(),
                        pool_size: config.pool_size,
                        lease_ms: config.lease_ms,
                    },
                    chain_key,
                )
                .await?;
                Ok(store)
            }
        }
    }

    /// This host's name among the hosts of its store: `[store] host-id`, or the
    /// machine's host name.
    fn host_id(config: &ebb_engine::config::StoreConfig) -> anyhow::Result<String> {
        match &config.host_id {
            Some(id) => Ok(id.clone()),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .context("no [store] host-id is set and the host name cannot be read"),
        }
    }

    /// A shared store's claims are short and renewed while this host lives (a dead
    /// host's work is taken over within the lease); the embedded store's are long,
    /// since a restart voids them.
    fn engine_config(store: &ebb_engine::config::StoreConfig) -> EngineConfig {
        match store.kind {
            StoreKind::Embedded => EngineConfig::default(),
            StoreKind::Postgres => EngineConfig {
                lease_ms: store.lease_ms,
                ..EngineConfig::default()
            },
        }
    }

    pub(crate) async fn serve(
        config_path: PathBuf,
        accept_unverified_store: bool,
    ) -> anyhow::Result<()> {
        let config = Config::load(&config_path)?;
        let metrics = ebb::metrics::install()?;
        let key = match &config.store.key_env {
            Some(var) => HostKey::from_hex(
                &std::env::var(var)
                    .with_context(|| format!("the host key variable {var} is not set"))?,
            )?,
            None => HostKey::load_or_create(&config.store.key_file)?,
        };
        let host_id = host_id(&config.store)?;
        let store = open_store(&config.store, &key, &host_id).await?;
        let check_while_serving = check_store(
            store.as_ref(),
            accept_unverified_store,
            config.store.check_at_start,
        )
        .await?;
        let runtime =
            Runtime::with_cache_key(&config.runtime, CacheKey::new(key.derive("runtime-cache")))?;
        let registry = Arc::new(Registry::new(runtime));
        let lifecycle = Lifecycle::new(
            store,
            Sealer::new(&key),
            registry,
            Clock::system(),
            engine_config(&config.store),
        );
        // Connectors first, then the scheduler: work recovered from the last run needs them.
        let loader = Loader::new(lifecycle.clone(), config.plugins.clone());
        loader.load_configured(&config.connectors).await;
        if let Some(dir) = &config.plugins.dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the plugins folder {}", dir.display()))?;
            loader.reconcile().await;
        }
        let _watcher = loader.watch().context("watching the plugins folder")?;
        // Unloads that were draining when the host stopped go on draining.
        loader
            .resume_drains()
            .await
            .context("resuming draining unloads")?;
        lifecycle.start().await?;
        if config.tokens.is_empty() {
            tracing::warn!(
                "no API tokens are configured: every API call will be refused (see `ebb token new`)"
            );
        }
        // Policies are validated against the loaded connectors' actions; a host whose
        // policies do not load refuses to start rather than decide without them.
        let alerts = Alerts::new(config.alerts.webhooks.clone());
        lifecycle.set_alerts(alerts.clone());
        // Subjects seen in requests have their standing access checked again hourly.
        let _standing = ebb_engine::standing::spawn(lifecycle.clone());
        // Every connector's inventory is compared with the grants hourly.
        let _orphans = ebb_engine::orphans::spawn(lifecycle.clone());
        // The audit chain is checked while serving, not only at start.
        let _chain = lifecycle.watch_audit_chain(std::time::Duration::from_secs(600));
        // The store, if it was not checked before serving.
        let _check = check_while_serving
            .then(|| lifecycle.check_store_while_serving(accept_unverified_store));
        let approval = Arc::new(
            ApprovalGate::new(config.policy.as_ref(), lifecycle.registry(), alerts)
                .map_err(|e| anyhow::anyhow!("policies: {e}"))?,
        );
        // Anomaly flags raised before a restart still hold.
        approval
            .keep_flags_in(lifecycle.store().clone(), lifecycle.clock().now_ms())
            .await
            .context("reading the anomaly flags")?;
        let identity = if config.identity.issuers.is_empty() {
            None
        } else {
            let verifier = Arc::new(
                Verifier::new(&config.identity)
                    .await
                    .context("identity providers")?,
            );
            verifier.spawn_refresh();
            Some(verifier)
        };
        let membership = ebb::api::cluster::Membership {
            host_id,
            started_at: lifecycle.clock().now_ms(),
            shared: config.store.kind == StoreKind::Postgres,
        };
        let state = AppState {
            lifecycle: lifecycle.clone(),
            loader,
            approval,
            identity,
            tokens: Arc::new(Tokens::new(&config.tokens)?),
            guard: ebb::api::guard::Guard::start(
                lifecycle.audit_log().clone(),
                ebb::api::guard::WINDOW,
            ),
            metrics: Some(metrics),
            membership: Arc::new(membership),
        };
        // The other hosts of a shared store see what this one serves.
        let _heartbeat = state
            .membership
            .shared
            .then(|| ebb::api::cluster::spawn_heartbeat(state.clone()));
        // ... and serve the same connectors and policies.
        let _sync = state.membership.shared.then(|| {
            let mut policies = Vec::new();
            if let Some(p) = &config.policy {
                policies.push(p.path.clone());
                policies.extend(p.break_glass.as_ref().map(|b| b.path.clone()));
            }
            ebb::api::cluster::spawn_sync(state.clone(), config.plugins.dir.clone(), policies)
        });
        let _policy_watcher = match &config.policy {
            Some(p) if p.watch => {
                let mut paths = vec![p.path.clone()];
                paths.extend(p.break_glass.as_ref().map(|b| b.path.clone()));
                Some(
                    api::policy::watch(state.clone(), paths)
                        .context("watching the policy files")?,
                )
            }
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("listening on {}", config.server.listen))?;
        let mut app = api::router(state.clone());
        let console = if config.console.enabled {
            let console = Arc::new(
                ebb::console::Console::new(&config.console, config.server.listen)
                    .context("the console")?,
            );
            app = app.merge(ebb::console::router(state, console.clone()));
            tracing::info!(url = %console.url(), "the web console is served");
            Some(console)
        } else {
            None
        };
        tracing::info!(listen = %config.server.listen, "ebb is serving");
        ebb::serve::serve(
            listener,
            app,
            ebb::serve::Limits {
                header_read_timeout: config.server.header_read_timeout,
                max_connections: config.server.max_connections,
            },
            async move {
                shutdown_signal().await;
                // Live-update streams would hold the graceful shutdown open.
                if let Some(console) = console {
                    console.close();
                }
            },
        )
        .await
        .context("serving the API")?;
        tracing::info!("draining in-flight work");
        lifecycle.shutdown().await?;
        tracing::info!("stopped");
        Ok(())
    }

    /// Ctrl-C or SIGTERM.
    async fn shutdown_signal() {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            () = ctrl_c => {}
            () = term => {}
        }
    }
}
