//! Sending a connector's checked HTTP request: to the address the egress check
//! resolved and judged, never to a second lookup of the name. For HTTPS the TLS
//! handshake still names the origin's host (SNI) and verifies its certificate
//! against the web PKI roots plus the operator's own CA file, if given; so a
//! rebinding resolver gains nothing — there is no second resolution to rebind.

use anyhow::Context;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

/// How long connecting and the TLS handshake may take when the request sets no
/// limit of its own (the call's deadline bounds everything else).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// The TLS client configuration of one connector: the web PKI roots, plus the
/// certificates in `ca_file` (PEM).
pub(crate) fn tls_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    Ok(Arc::new(client_config(tls_roots(ca_file, true)?)?))
}

/// Trust anchors: the certificates in `ca_file` (PEM), with or without the web
/// PKI roots.
pub(crate) fn tls_roots(
    ca_file: Option<&Path>,
    web_pki: bool,
) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    if web_pki {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = ca_file {
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
            roots
                .add(cert)
                .with_context(|| format!("a certificate in {}", path.display()))?;
        }
    }
    Ok(roots)
}

/// A rustls client trusting `roots`, with the ring provider and safe defaults.
pub(crate) fn client_config(roots: rustls::RootCertStore) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Sends `request` over a new connection to `addr`; with `tls`, a TLS session to
/// the named host is run over it first.
pub(crate) async fn send(
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    addr: SocketAddr,
    tls: Option<(Arc<rustls::ClientConfig>, &str)>,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(CONNECT_TIMEOUT);
    let first_byte_timeout = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(CONNECT_TIMEOUT);
    let tcp = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => HttpError::ConnectionRefused,
            _ => HttpError::Connect(e),
        })?;
    let stream: Box<dyn Stream> = match tls {
        Some((config, host)) => {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|_| HttpError::HttpRequestUriInvalid)?;
            let tls = tokio::time::timeout(
                connect_timeout,
                tokio_rustls::TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| HttpError::ConnectionTimeout)?
            .map_err(|e| {
                tracing::warn!(host, error = %e, "outbound HTTPS: TLS handshake failed");
                HttpError::TlsCertificateError
            })?;
            Box::new(tls)
        }
        None => Box::new(tcp),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(HttpError::from)?;
    let driver = tokio::spawn(connection);
    // The request line carries the path only; the Host header names the origin.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = path.parse().map_err(|_| HttpError::HttpRequestUriInvalid)?;
    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| HttpError::ConnectionReadTimeout)?
        .map_err(HttpError::from)?;
    let io = async move {
        match driver.await {
            Ok(result) => result.map_err(HttpError::from),
            Err(_) => Err(HttpError::ConnectionTerminated),
        }
    };
    Ok((
        response.map(|body| body.map_err(HttpError::from).boxed_unsync()),
        Box::new(io) as IoFuture,
    ))
}
