//! Connections: the driver's configuration and TLS from the options, the pool,
//! and the `LISTEN ebb_due` connection that wakes this host's scheduler.

use anyhow::Context as _;
use ebb_core::contract::Timestamp;
use ebb_core::store::DueSignal;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How a host reaches the shared store.
#[derive(Clone)]
pub struct PgOptions {
    /// The connection string (key/value or URL; several hosts and
    /// `target_session_attrs=read-write` find the primary after a failover).
    /// Holds the password: never logged.
    pub dsn: String,
    /// The CA that signed the server's certificate: TLS is then required and the
    /// server's name verified (`sslmode=verify-full`).
    pub ca_file: Option<PathBuf>,
    /// This host's name in leases and `ebb_hosts`: stable across restarts, so
    /// that a restarted host takes back its own leases at once.
    pub host_id: String,
    /// Connections in the pool (reads and the writer).
    pub pool_size: usize,
    /// How long a lease lasts unless its host renews it. The host renews its
    /// leases while it lives (every quarter of this), so this is how long a dead
    /// host's work waits before another host takes it.
    pub lease_ms: u64,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("dsn", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .field("host_id", &self.host_id)
            .field("pool_size", &self.pool_size)
            .field("lease_ms", &self.lease_ms)
            .finish()
    }
}

/// The driver's configuration and TLS connector. `sslmode=verify-full` (or
/// `verify-ca`, or a `ca_file`) requires TLS and verifies the server's
/// certificate and name against the CA file (or the web PKI without one);
/// `require` verifies too — rustls offers no unverified TLS, and an unverified
/// "prefer" protects against nothing. Without any of these, no TLS.
pub(crate) fn client_config(
    options: &PgOptions,
) -> anyhow::Result<(tokio_postgres::Config, MakeRustlsConnect)> {
    // The driver knows `disable`, `prefer` and `require`; the verifying modes
    // are ours (every TLS connection here verifies).
    let mut verify = false;
    let dsn = ["verify-full", "verify-ca"]
        .iter()
        .fold(options.dsn.clone(), |dsn, mode| {
            let from = format!("sslmode={mode}");
            if dsn.contains(&from) {
                verify = true;
                dsn.replace(&from, "sslmode=require")
            } else {
                dsn
            }
        });
    let mut config: tokio_postgres::Config = dsn.parse().map_err(|_| {
        anyhow::anyhow!("the store's DSN is not a valid PostgreSQL connection string")
    })?;
    config.application_name(format!("ebb {}", options.host_id));
    config.connect_timeout(Duration::from_secs(5));
    config.keepalives_idle(Duration::from_secs(10));
    let tls = verify || options.ca_file.is_some() || config.get_ssl_mode() == SslMode::Require;
    let mut roots = rustls::RootCertStore::empty();
    if tls {
        config.ssl_mode(SslMode::Require);
        match &options.ca_file {
            Some(path) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("reading the CA file {}", path.display()))?
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("parsing the CA file {}", path.display()))?;
                anyhow::ensure!(
                    !certs.is_empty(),
                    "the CA file {} holds no certificate",
                    path.display()
                );
                for cert in certs {
                    roots.add(cert).context("a certificate in the CA file")?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
    } else {
        config.ssl_mode(SslMode::Disable);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((config, MakeRustlsConnect::new(client)))
}

/// The pool every read and the writer draw from. Connections are checked before
/// reuse, so after a failover the dead primary's connections are replaced.
pub(crate) fn pool(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    size: usize,
) -> anyhow::Result<deadpool_postgres::Pool> {
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(size.max(2))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()
        .context("building the store's connection pool")
}

/// What a notification's payload says is due: a due time in ms, or (empty, as
/// hosts before the payload sent, or unreadable) 0, possibly now.
fn announced_due(payload: &str) -> Timestamp {
    payload.parse().unwrap_or(0)
}

/// Listens for `NOTIFY ebb_due` and announces its due times to `due_changed`,
/// reconnecting (and announcing 0 once: a notification may have been missed)
/// until the store is gone.
pub(crate) async fn listen(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    due_changed: Weak<DueSignal>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if due_changed.strong_count() == 0 {
            return;
        }
        match listen_once(&config, tls.clone(), &due_changed).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "the store's notification connection failed; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// One listening connection; `Ok` once the store is gone.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
    due_changed: &Weak<DueSignal>,
) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;
    let (client, mut connection) = config.connect(tls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send(announced_due(n.payload())).is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client.batch_execute("LISTEN ebb_due").await?;
    // Anything that changed while this connection was being made.
    match due_changed.upgrade() {
        Some(announced) => announced.announce(0),
        None => return Ok(()),
    }
    let mut check = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            got = rx.recv() => match (got, due_changed.upgrade()) {
                (Some(at), Some(announced)) => announced.announce(at),
                (Some(_), None) => return Ok(()),
                (None, _) => break,
            },
            _ = check.tick() => {
                if due_changed.strong_count() == 0 {
                    return Ok(());
                }
                // A dead server is noticed here, not only at the next notification.
                client.simple_query("SELECT 1").await?;
            }
        }
    }
    match driver.await {
        Ok(Ok(())) => anyhow::bail!("the notification connection closed"),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(e.into()),
    }
}
